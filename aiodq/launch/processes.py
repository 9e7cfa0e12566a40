"""The local launcher's worker processes: started, their stderr read as it comes, stopped.

A worker's stderr goes through a pipe, so that a worker that fails can be reported with
what it wrote.  The pipe is read all along: a pipe nobody reads fills (64 KiB on Linux)
and then blocks the worker at its next write, in the middle of training.  Each line is
logged (``aiodq.launch``, INFO, ``worker N: ...``) and the last ones are kept for the
report of a failure.

The process is driven through the event loop's own subprocess protocol: its exit is
known when it happens (``process_exited``), even while a process it started still holds
its stderr open, which ``asyncio.subprocess.Process.wait`` waits for on asyncio's own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections import deque
from collections.abc import MutableMapping, Sequence
from typing import cast

from ..errors import RunError

__all__ = [
    "CANNOT_TRAIN",
    "PARENT",
    "WorkerProcess",
    "after_training",
    "die_with_parent",
    "ended",
    "exits",
    "parent_mark",
    "stop_workers",
]

_log = logging.getLogger("aiodq.launch")

#: Lines of a worker's stderr kept for the report of its failure.
TAIL_LINES = 40
#: A longer line is cut here (a line without an end would otherwise be kept whole in memory).
LONGEST_LINE = 4096
#: How long to wait, once a worker has exited, for the rest of its stderr (a process it
#: started may still hold the pipe open).
_STDERR_GRACE = 1.0


class _Protocol(asyncio.SubprocessProtocol):
    """Hands the loop's subprocess events to their :class:`WorkerProcess`."""

    def __init__(self, worker: WorkerProcess) -> None:
        self._worker = worker

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's process transport has the interface without the asyncio base class.)
        self._worker._transport = cast(asyncio.SubprocessTransport, transport)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self._worker._received(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        self._worker._stderr_closed()

    def process_exited(self) -> None:
        self._worker._process_exited()


#: The environment variable by which a launcher tells its worker processes its process id (and,
#: ``PID:nohup``, that it ignores SIGHUP: :func:`parent_mark`).
PARENT = "AIODQ_PARENT"


def parent_mark() -> str:
    """:data:`PARENT`'s value for this launcher's worker processes.

    Their SIGHUP is not inherited (uvloop's spawn resets every signal), so a launcher started with
    SIGHUP ignored (``nohup aiodq run``) says so, and its workers ignore it too (a review: a hang-up
    to the group would stop them, and the run with them).
    """
    return f"{os.getpid()}:nohup" if signal.getsignal(signal.SIGHUP) is signal.SIG_IGN else str(os.getpid())


def die_with_parent(environ: MutableMapping[str, str]) -> bool:
    """In a worker process a launcher started (``PARENT`` set): be sent SIGTERM when the launcher dies.

    A worker that outlived ``aiodq run`` killed with SIGKILL went on retrying for its ``--retry-for``
    (a durability attack: 26.5 s).  Linux's ``PR_SET_PDEATHSIG``; elsewhere nothing.  Returns False
    if the launcher is gone already (the worker should stop), True otherwise.  A launcher that
    ignores SIGHUP has its workers ignore it (:func:`parent_mark`).
    """
    parent, _, nohup = (environ.pop(PARENT, None) or "").partition(":")
    if nohup == "nohup":
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if not parent or not sys.platform.startswith("linux"):
        return True
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    return str(os.getppid()) == parent  # (it died before the call: this process has another parent now)


class WorkerProcess:
    """One worker process, its output (standard error and output, one pipe) read as it comes."""

    def __init__(self, index: int, workers: int) -> None:
        loop = asyncio.get_running_loop()
        self.index = index
        #: How the launcher's log and errors name it: by its shard, as the master's log does
        #: (``worker process 1/4``; the master's ``worker 5 (shard 1/4)`` is its connection).
        self.name = f"worker process {index}/{workers}"
        self._transport: asyncio.SubprocessTransport | None = None
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        self._pending = b""
        self._exited: asyncio.Future[int] = loop.create_future()
        self._stderr_done: asyncio.Future[None] = loop.create_future()

    @classmethod
    async def start(
        cls, index: int, workers: int, command: Sequence[str], env: dict[str, str]
    ) -> WorkerProcess:
        """Start ``command`` as worker ``index`` of ``workers`` (its shard), ending with this process.

        ``env`` gains :data:`PARENT` (:func:`parent_mark`): the worker ends with this process,
        however it ends (:func:`die_with_parent`).

        Raises:
            RunError: if the process cannot be started (no such program, too many open files...).
        """
        worker = cls(index, workers)
        loop = asyncio.get_running_loop()
        try:
            await loop.subprocess_exec(
                lambda: _Protocol(worker),
                *command,
                stdin=asyncio.subprocess.DEVNULL,
                # Its standard output too, in the same pipe and unbuffered: a model's print() in
                # loss_grad reaches the log (a review found it thrown away).
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={"PYTHONUNBUFFERED": "1", **env, PARENT: parent_mark()},
            )
        except OSError as exc:
            raise RunError(f"cannot start {worker.name}: {exc.strerror or exc}") from exc
        return worker

    @property
    def pid(self) -> int:
        """The process id."""
        assert self._transport is not None
        return self._transport.get_pid()

    @property
    def exited(self) -> asyncio.Future[int]:
        """Done when the process has exited, with its exit status (negative: the signal that ended it).

        A new future each time: awaiting it under a timeout or cancelling it leaves the process's own.
        """
        return asyncio.shield(self._exited)

    @property
    def has_exited(self) -> bool:
        """Whether the process has exited."""
        return self._exited.done()

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has exited (negative: killed by that signal), else None."""
        return self._exited.result() if self._exited.done() else None

    @property
    def interrupted(self) -> bool:
        """Whether the process ended on SIGINT (killed by it, or exiting 130 as ``aiodq worker`` does)."""
        return self.returncode in (130, -signal.SIGINT)

    @property
    def failed(self) -> bool:
        """Whether the process has exited with a status other than 0."""
        return self.returncode not in (None, 0)

    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the process, unless it has exited."""
        if self._transport is not None and not self._exited.done():
            with contextlib.suppress(ProcessLookupError):
                self._transport.send_signal(signum)

    async def stderr_tail(self) -> str:
        """The last lines the process wrote to stderr: all of them once the pipe has closed.

        Waits up to a second for the pipe to close once the process has exited.
        """
        if self._exited.done():
            await asyncio.wait([self._stderr_done], timeout=_STDERR_GRACE)
        return "\n".join(self._tail)

    async def finish_reading(self) -> None:
        """Wait up to a second for the rest of the stderr, then close the pipes."""
        await asyncio.wait([self._stderr_done], timeout=_STDERR_GRACE)
        if self._transport is not None:
            self._transport.close()  # the process has exited: this only closes its pipes

    # -- the protocol's events --------------------------------------------------------

    def _received(self, data: bytes) -> None:
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        if len(self._pending) > LONGEST_LINE:
            lines.append(self._pending[:LONGEST_LINE] + b" [cut]")
            self._pending = b""
        for raw in lines:
            self._line(raw)

    def _stderr_closed(self) -> None:
        if self._pending:
            self._line(self._pending)
            self._pending = b""
        if not self._stderr_done.done():
            self._stderr_done.set_result(None)

    def _process_exited(self) -> None:
        assert self._transport is not None
        status = self._transport.get_returncode()
        if not self._exited.done() and status is not None:
            self._exited.set_result(status)

    def _line(self, raw: bytes) -> None:
        text = raw.decode(errors="replace").rstrip()
        self._tail.append(text)
        _log.info("%s: %s", self.name, text)


def exits(workers: Sequence[WorkerProcess]) -> list[asyncio.Future[int]]:
    """The futures of the workers' exits, for ``asyncio.wait``, which never cancels them.

    (No shield piles up on them, as one would per wait in a loop with :attr:`WorkerProcess.exited`.)
    """
    return [worker._exited for worker in workers]


async def stop_workers(workers: Sequence[WorkerProcess], grace: float = 5.0) -> None:
    """Stop every worker still running: SIGTERM, then SIGKILL for any alive ``grace`` s later.

    Returns when every process has exited and its pipes are closed.  A stop cancelled during
    the grace (a second Ctrl-C, a caller's timeout) sends the SIGKILL at once, so that no worker
    that ignores SIGTERM outlives it.
    """
    for worker in workers:
        worker.send_signal(signal.SIGTERM)
    try:
        # asyncio.wait, not gather: a cancelled stop must not cancel the processes' own futures.
        if workers:
            await asyncio.wait(exits(workers), timeout=grace)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
    if workers:
        await asyncio.wait(exits(workers))
    await asyncio.gather(*(worker.finish_reading() for worker in workers))


def ended(status: int | None) -> str:
    """How a process ended, from its return code: ``exited with status 3``, ``killed by SIGKILL``."""
    if status is not None and status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
        return f"killed by signal {-status}"
    return f"exited with status {status}"


#: The exit status of an ``aiodq worker`` that cannot train the run (it refused CONFIG: its model, data or
#: split not the master's): the launcher does not start another in its place.
CANNOT_TRAIN = 2

#: How long the workers have to exit once training has ended and the master has closed.
_EXIT_GRACE = 30.0


async def after_training(processes: list[WorkerProcess]) -> None:
    """Wait for the workers to exit after a run that finished; a worker's trouble now is only logged.

    The model is trained and the master holds it: a worker that then exits with an error, or
    that does not exit within ``_EXIT_GRACE`` seconds (:func:`stop_workers` stops it), costs
    the run nothing, so it is reported as a warning instead of failing the run.
    """
    await asyncio.wait(exits(processes), timeout=_EXIT_GRACE)
    for worker in processes:
        if not worker.has_exited:
            _log.warning(
                "%s did not exit within %.0f s of the end of training; stopping it",
                worker.name,
                _EXIT_GRACE,
            )
        elif worker.failed:
            tail = (await worker.stderr_tail()).strip()
            _log.warning(
                "%s %s after training had finished: %s",
                worker.name,
                ended(worker.returncode),
                tail.splitlines()[-1] if tail else "",
            )
