"""Worker processes below their master: ``nice`` steps for a process, its threads and its session.

A local cluster's workers share the machine's cores with the master, and every update
passes through the master: a master that waits for a core behind a worker's computation
keeps every worker waiting (docs/results.md, "Workers below the master").
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

__all__ = ["DEFAULT_WORKER_NICE", "MAX_NICE", "check_nice", "lower_priority", "resolve_worker_nice"]

_log = logging.getLogger("aiodq.launch")

#: How much lower a local cluster's workers run than its master (``nice`` steps): see :func:`run_local`.
DEFAULT_WORKER_NICE = 4
#: The largest ``nice`` increment that means anything (Linux clamps nice values at 19).
MAX_NICE = 19


def check_nice(increment: object, what: str = "a nice increment") -> int:
    """Return ``increment`` if it is an int in 0..19 (not a bool).

    Raises:
        ValueError: otherwise, naming ``what``.
    """
    if isinstance(increment, bool) or not isinstance(increment, int) or not 0 <= increment <= MAX_NICE:
        raise ValueError(f"{what} must be an integer between 0 and {MAX_NICE}, got {increment!r}")
    return increment


def resolve_worker_nice(value: object, what: str = "worker_nice") -> int:
    """The workers' nice steps: ``value`` checked by :func:`check_nice`, or for None the default.

    The default is :data:`DEFAULT_WORKER_NICE` where processes can lower their priority
    (``os.nice``), else 0.

    Raises:
        ValueError: if ``value`` is neither None nor an integer in 0..19, naming ``what``.
    """
    if value is None:
        return DEFAULT_WORKER_NICE if hasattr(os, "nice") else 0
    return check_nice(value, what)


def lower_priority(increment: int) -> None:
    """Lower this process's CPU priority by ``increment`` nice steps (0: leave it).

    For a worker that shares cores with its master: every update passes through the
    master, so a worker's computation should not keep the master waiting for a core.
    Nice values clamp at 19: a process already at nice 17 goes down by 2 only.

    On Linux a nice value belongs to a thread, so the threads that exist at this call (a
    BLAS pool) are lowered too; threads started later inherit it.  And where the kernel
    groups processes by session (``sched_autogroup_enabled``, the default of most
    distributions; not inside a cpu cgroup other than the root one), CPU time is shared
    between sessions first and nice values rank processes only within one: a worker in
    the master's session (``aiodq run``'s) needs nothing more; a worker that leads a
    session of its own (started with ``setsid``, as the network lab starts them) lowers
    its session's group by ``increment`` too, and with it every process of that session
    (what a shell ran in the background before ``exec``-ing the worker, say).  A worker
    that does not lead its session never touches the group: a worker started by hand in
    another session keeps that session's share whatever its nice value.

    Raises:
        ValueError: if ``increment`` is not an integer in 0..19, or it is positive and
            the platform has no ``os.nice``.
    """
    check_nice(increment)
    if not increment:
        return
    if not hasattr(os, "nice"):
        raise ValueError("this platform cannot lower a process's priority (no os.nice)")
    value = os.nice(increment)
    _lower_threads(value)
    if os.getsid(0) == os.getpid():
        _lower_autogroup(increment)


def _lower_threads(value: int) -> None:
    """Set every other thread of this process whose nice value is below ``value`` to it (Linux)."""
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return  # no /proc: a platform where nice belongs to the process
    for tid in threads:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < value:
                os.setpriority(os.PRIO_PROCESS, tid, value)
        except ProcessLookupError:
            continue  # the thread has ended meanwhile
        except OSError as exc:  # refused by a security module, say: this thread keeps its priority
            _log.warning("could not lower thread %d's priority: %s", tid, exc)


#: Attempts at writing the autogroup's nice value: without CAP_SYS_ADMIN the kernel refuses a
#: write (EAGAIN) within 100 ms of anyone's last one, which workers started together run into.
_AUTOGROUP_TRIES = 20


def _lower_autogroup(increment: int) -> None:
    """Raise the nice value of this process's autogroup by ``increment`` (Linux with autogroups)."""
    path = Path("/proc/self/autogroup")
    try:
        fields = path.read_text().split()  # "/autogroup-123 nice 0"; empty in the root group
        current = int(fields[-1])
    except (OSError, IndexError, ValueError):
        return  # no autogroup here
    for attempt in range(_AUTOGROUP_TRIES):
        try:
            path.write_text(str(min(current + increment, MAX_NICE)))
            return
        except BlockingIOError:
            if attempt + 1 < _AUTOGROUP_TRIES:
                time.sleep(0.11)  # the kernel's rate limit: one write per 100 ms
        except OSError as exc:
            _log.warning("could not lower this session's autogroup (%s): its nice value has no effect", exc)
            return
    _log.warning("could not lower this session's autogroup (busy): its nice value has no effect")
