"""A worker's computations off the event loop's thread (aiodq.net.offload), against fake and real masters.

Each case is one a review of the off-loop worker found wrong and reproduced: what the worker reads
while it computes, what outlives a cancelled worker, what a preparation holds up, the context a
computation runs in, and an answer computed after the master has gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import threading
import time

import numpy as np
import pytest

from aiodq import Master, MasterConfig
from aiodq.codec.events import ConfigMessage, ModelMessage, Snapshot, Welcome
from aiodq.codec.messages import encode_message
from aiodq.codec.vectors import EqualsSnapshot, RawVector
from aiodq.config import ConnectionConfig
from aiodq.net.worker import run_worker
from aiodq.protocol.algorithms import TrainConfig

from .cluster import wait_until
from .test_worker_hardening import _SlowSquares, read_frame, worker_against


class _SlowSteps(_SlowSquares):
    """Quick snapshot phases and start checks; ``step_time`` seconds a mini-batch (the model's cost)."""

    def __init__(self, step_time: float) -> None:
        super().__init__(0.0)
        self.step_time = step_time

    def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        if rows is not None and len(rows) > 2:  # (the start checks read two rows)
            time.sleep(self.step_time)
        return super().loss_grad(x, rows)


def _configure(writer: asyncio.StreamWriter, model: str, **params: object) -> None:
    """WELCOME, CONFIG (asylpg, d = 5, ``model``) and the first SNAPSHOT: a master that admitted it."""
    config = TrainConfig(epochs=1, model=model, **params).to_params()  # type: ignore[arg-type]
    writer.write(encode_message(Welcome(version=1, worker_id=0)))
    writer.write(encode_message(ConfigMessage(dim=5, algorithm="asylpg", params=config)))  # type: ignore[arg-type]
    writer.write(encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(5)))))


@pytest.mark.asyncio
async def test_a_master_flooding_models_is_read_no_further_than_the_bytes_held() -> None:
    """A review: the bytes held while a step ran on a thread were bounded per computation, not with those
    still waiting, and a master sending MODELs of 11 bytes while each step took 6 ms filled the worker's
    backlog to 301 MB in 4.5 s.  The worker now stops reading at 1 MB held, so the master's writes wait:
    it sends 1 MB, the read in flight and what the sockets' buffers take, and no more (with the code
    before, the 256 MB the fake master stops at)."""
    sent = 0
    stalled = asyncio.Event()

    async def master(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_frame(reader)  # HELLO
        _configure(writer, "steps", batch=8)

        async def sink() -> None:  # the worker's answers, read and dropped
            while await reader.read(1 << 16):
                pass

        answers = asyncio.ensure_future(sink())
        block = encode_message(ModelMessage(epoch=0, version=0, vector=EqualsSnapshot(5))) * 4096
        try:
            while sent < 256 << 20:
                writer.write(block)
                sent += len(block)
                try:
                    async with asyncio.timeout(
                        2.0
                    ):  # (the worker has stopped reading: what the test waits for)
                        await writer.drain()
                except TimeoutError:
                    break
        finally:
            stalled.set()
            answers.cancel()
            writer.transport.abort()

    server = await asyncio.start_server(master, "127.0.0.1", 0)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        worker = asyncio.create_task(run_worker(host, port, objective=_SlowSteps(0.006), model="steps"))
        try:
            await asyncio.wait_for(stalled.wait(), 120)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
    assert sent < 32 << 20, f"the master wrote {sent / 2**20:.0f} MB"


@pytest.mark.asyncio
async def test_a_worker_started_again_on_an_objective_a_cancelled_one_still_computes_on_waits_for_it() -> (
    None
):
    """A review: cancelled during a snapshot phase, ``run_worker`` left its thread in ``loss_grad``; started
    again on the same objective, its own computations ran beside it (a TorchObjective writes its parameters
    in place, and the master took the wrong sums for the new snapshot phase's).  Now the second worker's
    start checks and computations wait for the first's: ``loss_grad`` is never entered twice at once."""
    held, release = threading.Event(), threading.Event()
    lock = threading.Lock()
    inside = [0, 0]  # now, and the most at once

    class Counting(_SlowSquares):
        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
            with lock:
                inside[0] += 1
                inside[1] = max(inside)
            try:
                if rows is None and not held.is_set():  # the first snapshot phase: held until released
                    held.set()
                    release.wait(60)
                return super().loss_grad(x, rows)
            finally:
                with lock:
                    inside[0] -= 1

    def computing() -> int:
        return sum(thread.name == "aiodq-worker-compute" for thread in threading.enumerate())

    objective = Counting(0.0)
    config = TrainConfig(epochs=1, updates_per_epoch=4, step=0.01)
    try:
        async with Master(
            config, _SlowSquares(0.0), workers=1, master_config=MasterConfig(join_timeout=60)
        ) as master:
            first = asyncio.create_task(run_worker(*master.address, objective=objective))
            await wait_until(held.is_set, 60, "the first worker's snapshot phase")
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            second = asyncio.create_task(run_worker(*master.address, objective=objective))
            # Its start checks wait on a thread of their own (with the code before, they ran at once).
            await wait_until(lambda: computing() >= 2 or inside[1] >= 2, 60, "the second worker waiting")
            release.set()
            result = await asyncio.wait_for(second, 60)
            summary = await master.wait(timeout=60)
    finally:
        release.set()
    assert inside[1] == 1, "two computations ran on the objective at once"
    assert result.ok and summary.failure is None, (result, summary.failure)


@pytest.mark.asyncio
async def test_the_run_s_last_preparation_does_not_hold_up_the_master_s_close(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A review: after the run's last SNAPSHOT_GRADIENT the worker prepared a step no MODEL would ask for, on
    its thread (mini-batches of 2 s), and read the master's CLOSE only after it: the master's close timeout
    of 1 s ran out, and every such run ended with a TIMEOUT counted.  A preparation is now not waited for
    once the master sends anything; what it computed is used by the step after it, if one comes."""
    inside = [0]

    class Counting(_SlowSteps):
        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
            inside[0] += 1
            try:
                return super().loss_grad(x, rows)
            finally:
                inside[0] -= 1

    settings = ConnectionConfig(handshake_timeout=1.0, heartbeat_interval=0.2, idle_timeout=3.0)
    config = TrainConfig(algorithm="asylpg", epochs=1, updates_per_epoch=2, batch=60, step=0.01)
    async with Master(config, _SlowSquares(0.0), workers=1, connection_config=settings) as master:
        result = await asyncio.wait_for(
            run_worker(*master.address, objective=Counting(2.0), connection_config=settings), 120
        )
        # The preparation given up is waited for once the session has ended, said in the log: run_worker
        # returns with the objective free (a review: the application's own loss_grad ran beside it, a
        # TorchObjective's gradient wrong by 18.7).
        assert inside == [0]
        said = "the session has ended: waiting for the objective's last computation to return"
        assert said in caplog.messages, caplog.messages
        summary = await master.wait(timeout=60)
    assert result.ok and result.gradients == 2, result
    assert summary.failure is None and not summary.summary["error_counts"], summary.summary["errors"]


@pytest.mark.asyncio
async def test_an_offloaded_computation_runs_in_the_caller_s_context() -> None:
    """A review: the thread began without the caller's context, so numpy's error state and the application's
    context variables differed between a snapshot phase (always on a thread) and a quick step (on the loop's
    thread): under ``np.errstate(over="raise")`` an overflow failed the session only in the second."""
    variable: contextvars.ContextVar[str] = contextvars.ContextVar("variable", default="unset")
    seen: list[tuple[str, str]] = []

    class Looking(_SlowSquares):
        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
            if rows is None:  # the snapshot phase: on a thread
                seen.append((np.geterr()["over"], variable.get()))
            return super().loss_grad(x, rows)

    variable.set("the application's")
    with np.errstate(over="raise"):
        async with Master(TrainConfig(epochs=1, updates_per_epoch=2), _SlowSquares(0.0), workers=1) as master:
            result = await asyncio.wait_for(run_worker(*master.address, objective=Looking(0.0)), 60)
            await master.wait(timeout=60)
    assert result.ok, result
    assert seen and set(seen) == {("raise", "the application's")}, seen


@pytest.mark.asyncio
async def test_a_step_whose_master_goes_away_meanwhile_is_neither_answered_nor_counted() -> None:
    """A review: the stream's end, read while a step ran on a thread, was handed to the session after the
    step's answer, and the worker counted a gradient it 'sent' to a master that had gone (gradients=1).  The
    end of the stream now drops the owed step, as in place; the session, once ended, waits for the step's
    thread (a second thread, waiting on the first), and the test lets the step go on only then."""
    started, release, closed = threading.Event(), threading.Event(), asyncio.Event()

    class Held(_SlowSquares):
        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
            if rows is not None and len(rows) > 2 and np.any(x):  # the step at the master's model
                started.set()
                release.wait(60)
            return super().loss_grad(x, rows)

    async def master(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)  # HELLO
        _configure(writer, "held", batch=60)
        await read_frame(reader)  # SNAPSHOT_GRADIENT
        writer.write(encode_message(ModelMessage(epoch=0, version=0, vector=RawVector(np.ones(5)))))
        await writer.drain()
        await wait_until(started.is_set, 60, "the worker's step")
        writer.close()  # gone, while the worker computes
        closed.set()

    before = set(threading.enumerate())  # (threads other tests of this process left: not counted)

    def computing() -> int:
        return sum(t.name == "aiodq-worker-compute" and t not in before for t in threading.enumerate())

    worker = asyncio.ensure_future(
        worker_against(master, None, None, timeout=60, objective=Held(0.0), model="held")
    )
    try:
        # After the close: the step's thread, and one waiting for it; the worker has not returned.
        await wait_until(lambda: (closed.is_set() and computing() >= 2) or worker.done(), 60, "its end")
        assert not worker.done(), "run_worker returned while its dropped step still ran on the objective"
    finally:
        release.set()
    result = await worker
    assert result.gradients == 0, result
    assert result.reason == "the master closed the connection without CLOSE", result


@pytest.mark.asyncio
async def test_a_computation_whose_thread_cannot_start_leaves_nothing_to_wait_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A review: the computation was registered before its thread started, and a thread that could not start
    (no threads left) left every later computation on the objective, and run_worker's start, waiting for
    ever."""
    from aiodq.net import offload  # noqa: PLC0415

    owner = object()

    def cannot(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    with monkeypatch.context() as patched:
        patched.setattr(threading.Thread, "start", cannot)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            offload.on_daemon_thread(lambda: None, owner)
    await asyncio.wait_for(offload.after_earlier(owner), 10)  # (with the code before: for ever)
    # With one still running, the refused one leaves it registered (a review: it removed it, and the next
    # computation ran beside it).
    release = threading.Event()
    first = offload.on_daemon_thread(lambda: release.wait(60), owner)
    with monkeypatch.context() as patched:
        patched.setattr(threading.Thread, "start", cannot)
        with pytest.raises(RuntimeError, match="can't start new thread"):
            offload.on_daemon_thread(lambda: None, owner)
    assert id(owner) in offload._RUNNING and not first.done()  # (the first, held, still registered)
    release.set()
    await asyncio.wait_for(offload.after_earlier(owner), 10)
    await first
    assert id(owner) not in offload._RUNNING
