"""A worker's computations off the event loop's thread (docs/api.md, ``run_worker``).

A snapshot phase, and a step that takes :data:`OFFLOAD_STEP` or more, run on a daemon thread of
their own while the loop sends HEARTBEATs and holds what the master sends (:func:`compute`); one
computation at a time runs on an objective, across workers and sessions (:func:`on_daemon_thread`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable
from typing import Any

from ..codec.events import Heartbeat, ModelMessage, Snapshot
from ..protocol.connection import ConnectionState
from ..protocol.session import WorkerSession

__all__ = [
    "HELD_BYTES",
    "OFFLOAD_STEP",
    "READ_SIZE",
    "Pace",
    "after_earlier",
    "compute",
    "on_daemon_thread",
    "holds_end",
]

_log = logging.getLogger("aiodq.worker")

#: Bytes a worker reads at once.
READ_SIZE = 1 << 18
#: A step that took this long (seconds) runs off the event loop's thread next time.
OFFLOAD_STEP = 0.005
#: Bytes a worker holds for its session while it computes (then it stops reading).
HELD_BYTES = 4 * READ_SIZE


class Pace:
    """How long a worker's last step took to compute (seconds; None before its first), across its sessions."""

    __slots__ = ("step",)

    def __init__(self) -> None:
        self.step: float | None = None


async def compute(
    session: WorkerSession,
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    backlog: list[bytes],
    *,
    interval: float,
    now: Callable[[], float],
    pace: Pace,
) -> OSError | None:
    """Run the session's :attr:`~WorkerSession.work`, holding what the master sends meanwhile in ``backlog``.

    Returns how the connection was lost, if it was.  A snapshot phase (the objective over the
    whole shard), a step (or a step's model-free half, :meth:`~WorkerSession.prepare`) before the
    first step has been timed, when the last took :data:`OFFLOAD_STEP` or more (or as much by the
    last snapshot phase's time per row) or while an earlier computation on the objective still runs,
    run on a thread (:func:`on_daemon_thread`), and the worker sends a HEARTBEAT every ``interval``
    meanwhile, the first when its connection would have (a review: a ``loss_grad`` of 35 s ran on the
    loop's thread, and the master's 30 s idle timeout dropped the worker, at every epoch).  Quicker
    ones run here: the hop to a thread made a9a's updates 1.3x as long (docs/benchmarks.md).

    Bytes received meanwhile go to ``backlog`` while it holds less than :data:`HELD_BYTES` (a
    review's master sent MODELs of 11 bytes while each step ran on a thread, and a bound per
    computation let the backlog reach 301 MB in 4.5 s); the stream's end is held as ``b""``.  The
    wait ends early, the thread left to finish, when the stream ends (the owed work is dropped: a
    review's worker counted a gradient it answered after the master had gone) or, for a
    preparation, when anything comes (a review's master waited a mini-batch for the answer to its
    CLOSE, and timed out at the end of every run).
    """
    work = session.work
    assert work is not None
    reader, writer = streams
    snapshot, step = isinstance(work.event, Snapshot), isinstance(work.event, ModelMessage)
    owner = session.objective if session.objective is not None else session.state  # (what it writes to)
    began = now()
    if not snapshot and pace.step is not None and pace.step < OFFLOAD_STEP and not _busy(owner):
        work.run()
        if step:  # (not a preparation's: with grad_difference it only draws rows, a review's 0.4 ms)
            pace.step = now() - began
        return None
    computing = on_daemon_thread(work.run, owner)
    lost: OSError | None = None
    size, reading = sum(map(len, backlog)), None
    timer = session.connection.get_timer()
    beat = now() + interval if timer is None else min(now() + interval, timer)
    try:
        while not computing.done():
            if holds_end(backlog) or (work.event is None and backlog):
                return lost  # (the stream's end drops the owed work; a preparation is not waited for)
            if reading is None and size < HELD_BYTES:
                reading = asyncio.ensure_future(reader.read(READ_SIZE))
            waiting: set[asyncio.Future[Any]] = {computing} if reading is None else {computing, reading}
            await asyncio.wait(waiting, timeout=max(0.0, beat - now()), return_when=asyncio.FIRST_COMPLETED)
            if reading is not None and reading.done():
                try:
                    chunk = reading.result()
                except (ConnectionError, OSError) as exc:
                    chunk, lost = b"", exc
                reading = None
                backlog.append(chunk)
                size += len(chunk)
            if now() >= beat and not computing.done():
                beat = now() + interval
                if session.connection.state is ConnectionState.READY and not writer.is_closing():
                    session.connection.send(Heartbeat(), now())
                    writer.write(session.data_to_send())
    finally:
        if reading is not None:
            reading.cancel()  # (a read cancelled while it waits has taken nothing)
            await asyncio.wait({reading})  # (the reader is free again only once the read has ended)
            if not reading.cancelled() and reading.exception() is None:
                backlog.append(reading.result())  # (it ended with bytes before the cancellation came)
    took = now() - began
    state = session.state
    if step:
        pace.step = took
    elif snapshot and pace.step is not None and state is not None and state.samples:
        pace.step = max(pace.step, took * 2 * state.config.batch / state.samples)  # (a step reads 2 B rows)
    return lost


def holds_end(backlog: list[bytes]) -> bool:
    """True if ``backlog`` ends with the stream's end (``b""``), held while a computation ran."""
    return bool(backlog) and not backlog[-1]


#: The last computation started on each objective (or state), while it runs: ``id -> (it, done)``.
_RUNNING: dict[int, tuple[object, threading.Event]] = {}
_RUNNING_LOCK = threading.Lock()


def _busy(owner: object) -> bool:
    """True while a computation started on ``owner`` runs (a cancelled worker's, say)."""
    with _RUNNING_LOCK:
        return id(owner) in _RUNNING


def on_daemon_thread(run: Callable[[], None], owner: object) -> asyncio.Future[None]:
    """``run()`` on a new daemon thread, after every computation started earlier on ``owner``.

    The future is done when it returns.  Not asyncio's executor, whose threads ``asyncio.run``
    joins (a review: a stopped worker waited 16.7 s for its computation).  A computation outlives
    a cancelled worker, or one whose stream ended, and the next on the objective waits for it (a
    review's app restarted ``run_worker`` on the same objective, and two threads wrote its
    parameters).  It runs in a copy of the caller's context (numpy's error state, say).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    context = contextvars.copy_context()
    ended = threading.Event()
    with _RUNNING_LOCK:
        earlier = _RUNNING.get(id(owner))
        _RUNNING[id(owner)] = (owner, ended)

    def finished() -> None:
        if not done.done():
            done.set_result(None)

    def target() -> None:
        try:
            if earlier is not None:
                earlier[1].wait()
            context.run(run)
        finally:
            ended.set()
            with _RUNNING_LOCK:
                if _RUNNING.get(id(owner), (None, None))[1] is ended:
                    del _RUNNING[id(owner)]
            with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile: nobody waits)
                loop.call_soon_threadsafe(finished)

    try:
        threading.Thread(target=target, name="aiodq-worker-compute", daemon=True).start()
    except BaseException:  # (no thread: nothing may wait for it, a review's waited for ever)
        ended.set()
        with _RUNNING_LOCK:
            if _RUNNING.get(id(owner), (None, None))[1] is ended:  # (the one before it, if still running)
                if earlier is not None and not earlier[1].is_set():
                    _RUNNING[id(owner)] = earlier
                else:
                    del _RUNNING[id(owner)]
        raise
    return done


async def after_earlier(owner: object, *, say_after: float | None = None) -> None:
    """Return once no computation started earlier on ``owner`` runs (a cancelled worker's, say).

    The start checks and a session's own run on the loop's thread: with a thread of a cancelled
    worker's still in ``loss_grad``, the two would write the same parameters.  With ``say_after``,
    a wait that long is logged, once (a review: a session's end waited, without a word, for a
    ``loss_grad`` that never returned).
    """
    if not _busy(owner):
        return
    waiting = on_daemon_thread(lambda: None, owner)
    if say_after is not None and not (await asyncio.wait({waiting}, timeout=say_after))[0]:
        _log.warning("the session has ended: waiting for the objective's last computation to return")
    await waiting
