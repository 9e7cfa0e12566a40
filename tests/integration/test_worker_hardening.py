"""The asyncio worker against a master that misbehaves on the socket: every wait ends.

Each fake master here is a raw asyncio server on 127.0.0.1 written with the codec, as an
attacker in the master's place would write it (an attack review of the worker side found
each of these waits unbounded).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import ssl
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import scipy.sparse

from aiodq.codec.events import Close, ConfigMessage, Heartbeat, Snapshot, Welcome
from aiodq.codec.messages import encode_message
from aiodq.codec.vectors import RawVector
from aiodq.config import ConnectionConfig
from aiodq.errors import ErrorCode
from aiodq.net.worker import WorkerResult, run_worker
from aiodq.protocol.algorithms import TrainConfig

from .cluster import wait_until

QUICK = ConnectionConfig(handshake_timeout=1.0, heartbeat_interval=0.5, idle_timeout=2.0)


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(7)
    return header + await reader.readexactly(struct.unpack_from("<I", header, 3)[0])


async def close_and_wait(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, close: Close) -> None:
    """Send ``close``, then read until the worker has gone."""
    writer.write(encode_message(close))
    await writer.drain()
    await reader.read()
    writer.close()


async def worker_against(
    master: Any, features: Any, labels: Any, *, timeout: float, **options: Any
) -> WorkerResult:
    """``run_worker`` against the fake ``master`` (a connection handler) on 127.0.0.1, within ``timeout``."""
    server = await asyncio.start_server(master, "127.0.0.1", 0)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        return await asyncio.wait_for(run_worker(host, port, features, labels, **options), timeout=timeout)


def big_run(dim: int) -> tuple[object, np.ndarray, dict[str, object]]:
    """A worker's share of a logistic regression of ``dim`` features, and the run's parameters."""
    features = scipy.sparse.random(16, dim, density=1e-4, format="csr", random_state=np.random.default_rng(0))
    return features, np.tile([1.0, -1.0], 8), TrainConfig(epochs=1).to_params()


async def configure_and_snapshot(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, dim: int, params: dict[str, object]
) -> None:
    await read_frame(reader)  # HELLO
    writer.write(encode_message(Welcome(version=1, worker_id=0)))
    writer.write(encode_message(ConfigMessage(dim=dim, algorithm="asylpg", params=params)))  # type: ignore[arg-type]
    writer.write(encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(dim)))))
    await writer.drain()


@pytest.mark.asyncio
async def test_a_master_that_stops_reading_ends_the_session() -> None:
    """The worker's answer (12 MB of full precision) fills the socket's buffers of a master that reads nothing
    more but keeps sending HEARTBEATs: the drain waited for ever (an attack review: 55 s and counting)."""
    dim = 3_000_000
    features, labels, params = big_run(dim)
    over = asyncio.Event()

    async def master(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await configure_and_snapshot(reader, writer, dim, params)
        while not over.is_set():  # alive, reading nothing
            writer.write(encode_message(Heartbeat()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(over.wait(), 0.3)
        writer.transport.abort()

    server = await asyncio.start_server(master, "127.0.0.1", 0)
    async with server:  # (the master is told to go before the server closes: 3.12 waits for its handlers)
        host, port = server.sockets[0].getsockname()[:2]
        began = time.monotonic()
        result = await asyncio.wait_for(
            run_worker(host, port, features, labels, connection_config=QUICK), timeout=60
        )
        took = time.monotonic() - began
        over.set()
    assert result.code == ErrorCode.TIMEOUT and result.configured, result
    assert result.reason == "the master took nothing this worker sent for 2 s", result
    assert took < 30, took


@pytest.mark.asyncio
async def test_a_master_that_reads_slowly_is_waited_for() -> None:
    """A review: a master reading the 12 MB answer at 2 MB/s, its HEARTBEATs unread meanwhile, was cut off at
    the idle timeout (2 s here) by a drain that looked for progress every second."""
    dim = 3_000_000
    features, labels, params = big_run(dim)

    async def master(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await configure_and_snapshot(reader, writer, dim, params)
        header = await reader.readexactly(7)  # the SNAPSHOT_GRADIENT's, then its body at 2 MB/s
        left = struct.unpack_from("<I", header, 3)[0]
        while left:
            writer.write(encode_message(Heartbeat()))
            left -= len(await reader.readexactly(min(left, 1 << 18)))
            await asyncio.sleep(0.125)  # (the slow reader under test, not a wait for a condition)
        await close_and_wait(reader, writer, Close(code=0, reason="training complete"))

    result = await worker_against(master, features, labels, timeout=90, connection_config=QUICK)
    assert result.code == ErrorCode.NO_ERROR and result.reason == "training complete", result


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("config", "retry_for", "said"),
    [
        # asyncio's own TLS handshake timeout is 60 s: the worker gives the connection its handshake timeout.
        (QUICK, 0.0, r"not connected within the handshake timeout \(1 s\)"),
        # A review: --retry-for 5 gave up at 6.9 s, its last attempt given the whole handshake timeout.
        (
            ConnectionConfig(handshake_timeout=10.0),
            1.5,
            r"not connected within what was left of retry_for \(1\.5 s\)",
        ),
    ],
    ids=["handshake-timeout", "retry-for"],
)
async def test_a_master_that_never_answers_tls_is_not_waited_for_beyond_the_worker_s_limits(
    config: ConnectionConfig, retry_for: float, said: str
) -> None:
    accepted = asyncio.Event()
    handlers: list[asyncio.Task[Any]] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        accepted.set()
        try:
            await reader.read()  # until the worker goes
        finally:
            writer.close()
            await writer.wait_closed()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        began = time.monotonic()
        with pytest.raises(TimeoutError, match=said):
            await asyncio.wait_for(
                run_worker(
                    host,
                    port,
                    np.ones((4, 3)),
                    np.ones(4),
                    ssl=ssl.create_default_context(),
                    connection_config=config,
                    retry_for=retry_for,
                ),
                timeout=30,
            )
        took = time.monotonic() - began
        # Every connection's handler ends (the worker closed them all) before the loop does: a CI run found
        # one left open, its socket warned of in the next test.  Then again a fresh-clone run, for a
        # connection the worker made as its time ran out, whose handler began after the wait had begun:
        # so the server stops accepting first, then the wait is until no accept is under way (asyncio's
        # task that makes an accepted connection's transport, and so its handler) and every handler ended.
        server.close()
        await server.wait_closed()

        def settled() -> bool:
            accepting = any("_accept_connection" in t.get_coro().__qualname__ for t in asyncio.all_tasks())
            return not accepting and all(handler.done() for handler in handlers)

        await wait_until(settled, 10, "every accepted connection handled to its end")
    assert accepted.is_set()
    # Sooner than the wait the worker's limit cuts short would have ended: asyncio's 60 s (beyond the outer
    # 30 s) for the handshake timeout; the 10 s handshake timeout for retry_for. (The retry-for case failed
    # once at a load average of 5.5 under a fixed bound of 5 s; which assertion, the run did not keep.)
    assert took < (config.handshake_timeout if retry_for else 30), took


@pytest.mark.asyncio
async def test_the_master_s_close_reason_is_escaped_before_it_is_printed() -> None:
    """An attack review forged a log line and cleared the terminal through a CLOSE's reason."""
    reason = "bye\n2026-12-07 aiodq.worker INFO training finished normally\x1b[2J"

    async def master(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)  # HELLO
        writer.write(encode_message(Welcome(version=1, worker_id=0)))
        await close_and_wait(reader, writer, Close(code=int(ErrorCode.INVALID_CONFIG), reason=reason))

    result = await worker_against(master, np.ones((4, 3)), np.ones(4), timeout=30)
    assert result.code == ErrorCode.INVALID_CONFIG
    assert result.reason == reason.encode("unicode_escape").decode("ascii"), result.reason
    assert "\n" not in result.reason and "\x1b" not in result.reason


@pytest.mark.asyncio
@pytest.mark.parametrize("retry_for", [float("nan"), -1.0, "5", True, float("inf"), 10**400])
async def test_a_retry_for_that_is_not_a_duration_is_refused(retry_for: object) -> None:
    """An attack review: retry_for=nan retried for ever (the command line refuses it)."""
    with pytest.raises(ValueError, match="retry_for must be a finite number of seconds, 0 or more"):
        await asyncio.wait_for(  # (bounded: without the check, nan retried for ever)
            run_worker("127.0.0.1", 9, np.ones((4, 3)), np.ones(4), retry_for=retry_for),
            timeout=10,
        )  # type: ignore[arg-type]


class _SlowSquares:
    """Least squares over 200 rows taking ``per_row`` seconds of wall time per row it reads: a heavy model."""

    dim, samples = 5, 200

    def __init__(self, per_row: float) -> None:
        rng = np.random.default_rng(11)
        self.a, self.b, self.per_row = rng.standard_normal((200, 5)), rng.standard_normal(200), per_row

    def initial(self, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(self.dim)

    def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        a, b = (self.a, self.b) if rows is None else (self.a[rows], self.b[rows])
        time.sleep(self.per_row * len(b))  # (the model's cost: the scenario, not a wait of the test's)
        residual = a @ x - b
        return 0.5 * float(residual @ residual), a.T @ residual


class _SlowDifference(_SlowSquares):
    """:class:`_SlowSquares` with ``grad_difference``: a step is one slow call, its preparation none."""

    def grad_difference(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
        time.sleep(self.per_row * 2 * len(rows))
        a = self.a[rows]
        return a.T @ (a @ (x - y))


class _SlowBatches(_SlowSquares):
    """A quick pass over the shard but 120 rows' time for a mini-batch: the snapshot phase tells nothing."""

    def __init__(self, per_row: float) -> None:
        super().__init__(0.0)
        self.batch_time = per_row * 120

    def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        if rows is not None and len(rows) > 2:  # (the start checks' rows are quick)
            time.sleep(self.batch_time)
        return super().loss_grad(x, rows)


@pytest.mark.asyncio
@pytest.mark.parametrize("model", [_SlowSquares, _SlowDifference, _SlowBatches])
async def test_a_model_slower_than_the_idle_timeout_trains_while_its_worker_heartbeats(model: type) -> None:
    """A review: a loss_grad of 35 s ran on the event loop's thread, the master heard nothing for its 30 s
    idle timeout and dropped the worker, at every epoch.  Here the idle timeout is 1 s, a snapshot
    phase takes 2 s and each step 1.2 s: the worker computes off the loop's thread and heartbeats, and
    the run ends as any other (one session, every update applied).  With grad_difference the preparation
    only draws rows (a review: its 0.4 ms was taken for the step's pace, and the steps ran in place); with
    a quick snapshot phase and slow mini-batches, the first step is not run in place either."""
    from aiodq import Master, MasterConfig  # noqa: PLC0415

    settings = ConnectionConfig(handshake_timeout=5.0, heartbeat_interval=0.1, idle_timeout=1.0)
    config = TrainConfig(algorithm="asyfpg", epochs=1, updates_per_epoch=3, batch=60, step=0.01)
    # The master runs on its own thread and loop: one sharing the worker's loop would stop with a worker
    # computing in place, and never see it silent (a review).
    ready: queue.Queue[tuple[str, int]] = queue.Queue()

    async def serve() -> Any:
        master = Master(
            config,
            _SlowSquares(0.0),
            workers=1,
            connection_config=settings,
            master_config=MasterConfig(join_timeout=30),
        )
        async with master:
            ready.put(master.address)
            return await master.wait(timeout=120)

    with ThreadPoolExecutor(1) as pool:
        serving = pool.submit(asyncio.run, serve())
        address = await asyncio.to_thread(ready.get, timeout=60)
        result = await run_worker(*address, objective=model(0.01), connection_config=settings)
        summary = await asyncio.wrap_future(serving)
    assert result.ok and result.gradients == 3, result
    assert summary.failure is None and not summary.summary["error_counts"], (
        summary.failure,
        summary.summary["errors"],
    )
    assert len(summary.trace) == 2 and summary.trace[-1].loss < summary.trace[0].loss


def test_a_worker_stopped_mid_computation_does_not_wait_for_it() -> None:
    """A review: the computation ran on asyncio's executor, whose threads asyncio.run joins: a worker
    cancelled during a snapshot phase of 35 s waited for it (16.7 s after SIGTERM).  Here the phase
    waits for an event the test sets only after asyncio.run has returned."""
    import threading  # noqa: PLC0415

    from aiodq import Master  # noqa: PLC0415

    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    class Held(_SlowSquares):
        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
            if rows is None:  # the worker's snapshot phase (the start checks take rows)
                started.set()
                release.wait(60)
                finished.set()
            return super().loss_grad(x, rows)

    async def run() -> None:
        async with Master(TrainConfig(epochs=1), _SlowSquares(0.0), workers=1) as master:
            worker = asyncio.create_task(run_worker(*master.address, objective=Held(0.0)))
            await wait_until(started.is_set, 60, "the worker's snapshot phase")
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            master.stop_training()

    try:
        asyncio.run(run())
        assert not finished.is_set()  # asyncio.run returned while the computation still ran
    finally:
        release.set()


@pytest.mark.asyncio
async def test_a_connection_reset_during_a_computation_is_said_as_one() -> None:
    """A review: a reset read while the worker computed off the loop's thread was kept as a plain end of the
    stream, and reported as 'the master closed the connection'.  The fake master resets the connection (an
    RST: SO_LINGER 0) while the worker's snapshot phase runs; the phase goes on 0.2 s after the reset."""
    import socket  # noqa: PLC0415
    import threading  # noqa: PLC0415

    started, reset = threading.Event(), threading.Event()

    class Held(_SlowSquares):
        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
            if rows is None:
                started.set()
                reset.wait(60)
                time.sleep(0.2)  # (the phase's computation after the reset: the scenario, not a wait)
            return super().loss_grad(x, rows)

    async def master(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)  # HELLO
        params = TrainConfig(epochs=1, model="held").to_params()
        writer.write(encode_message(Welcome(version=1, worker_id=0)))
        writer.write(encode_message(ConfigMessage(dim=5, algorithm="asylpg", params=params)))  # type: ignore[arg-type]
        writer.write(encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(5)))))
        await writer.drain()
        await wait_until(started.is_set, 60, "the worker's snapshot phase")
        raw = writer.get_extra_info("socket")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # an RST, while the worker computes
        await wait_until(lambda: raw.fileno() == -1, 10, "the master's socket closed (the reset sent)")
        reset.set()

    server = await asyncio.start_server(master, "127.0.0.1", 0)
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        try:
            result = await asyncio.wait_for(
                run_worker(host, port, objective=Held(0.0), model="held", retry_for=0), timeout=60
            )
        finally:
            reset.set()
    assert result.reason.startswith("connection lost (Connection reset by peer)"), result


@pytest.mark.asyncio
async def test_a_computing_worker_s_first_heartbeat_comes_when_its_connection_s_would_have() -> None:
    """A review: while computing off the loop's thread, the worker sent its first HEARTBEAT an interval after
    the computation began, not after its last frame: up to two intervals of silence (the review's master
    timed out 3 of 3 workers at a heartbeat of 0.5 s and an idle timeout of 0.6 s).  Here the fake master
    sends the SNAPSHOT 3 s after the worker's HELLO, its last frame, with heartbeats every 4 s: the first
    HEARTBEAT is due 4 s after the HELLO (7 s with the code before)."""
    import threading  # noqa: PLC0415

    release = threading.Event()

    class Held(_SlowSquares):
        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
            if rows is None:  # the snapshot phase, held until the master has heard a heartbeat
                release.wait(60)
            return super().loss_grad(x, rows)

    settings = ConnectionConfig(handshake_timeout=10.0, heartbeat_interval=4.0, idle_timeout=60.0)
    heard: list[float] = []

    async def master(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_frame(reader)  # HELLO
        hello = time.monotonic()
        params = TrainConfig(epochs=1, model="held").to_params()
        writer.write(encode_message(Welcome(version=1, worker_id=0)))
        writer.write(encode_message(ConfigMessage(dim=5, algorithm="asylpg", params=params)))  # type: ignore[arg-type]
        await writer.drain()
        await asyncio.sleep(3.0)  # (a master slow to send the SNAPSHOT: the scenario, not a wait)
        writer.write(encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(5)))))
        await writer.drain()
        frame = await asyncio.wait_for(read_frame(reader), 30)
        heard.append(time.monotonic() - hello)
        assert frame == encode_message(Heartbeat()), frame  # (the worker sends nothing else meanwhile)
        release.set()
        await close_and_wait(reader, writer, Close(code=int(ErrorCode.NO_ERROR), reason="test over"))

    try:
        await worker_against(
            master, None, None, timeout=60, objective=Held(0.0), model="held", connection_config=settings
        )
    finally:
        release.set()
    assert heard and heard[0] < 5.5, heard
