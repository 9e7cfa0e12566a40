"""Hardening over real TCP on 127.0.0.1 (issue 10): what strangers and admitted workers cannot do.

Each test runs a Master with well-behaved workers next to the hostile peers, and checks both that
the master holds (bounded memory, logs and files; no stall; a prompt exit) and that the workers'
training is unaffected.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import socket
import struct
import sys
import tracemalloc
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiodq.codec.events import Close, Hello
from aiodq.codec.messages import encode_message
from aiodq.codec.registry import MessageType
from aiodq.config import ConnectionConfig, MasterConfig
from aiodq.errors import CheckpointError, ErrorCode, RunError
from aiodq.net import checkpoint as checkpoint_file
from aiodq.net.master import Master
from aiodq.net.worker import run_worker
from aiodq.protocol.accounting import MAX_ERRORS
from aiodq.protocol.algorithms import TrainConfig
from aiodq.protocol.recovery import Checkpoint

from .cluster import A9A, aiodq, free_port, wait_until
from .rel_peers import Process, finish, raw_peer, read_to_end, start_workers, wait_for_text

SECRET = b"correct horse battery staple 0123456789"
TIMEOUT = 60.0
X0 = np.zeros(A9A.features_count)
#: A forged log line, as a stranger would hide it in a CLOSE reason.
FORGED = "\n2026-12-03 12:00:00,000 aiodq.master INFO epoch 3: loss 0.000001"


def trained(summary: dict[str, Any], results: list[Any], epochs: int) -> None:
    assert all(getattr(r, "ok", False) for r in results), results
    assert summary["failure"] is None
    assert len(summary["trace"]) == epochs + 1
    assert summary["trace"][-1]["loss"] < summary["trace"][0]["loss"]


def _capped_master(connection: ConnectionConfig, cap: int) -> Master:
    """A master of two epochs for one worker, with ``cap`` places in aiodq's handshake."""
    config = MasterConfig(max_unauthenticated=cap)
    return Master(TrainConfig(epochs=2), X0, workers=1, connection_config=connection, master_config=config)


@pytest.mark.asyncio
async def test_connections_beyond_the_handshake_cap_cut_the_oldest_short() -> None:
    """max_unauthenticated: one connection beyond it cuts short the oldest of the address with the most in
    aiodq's handshake (before 2026-12-07 the new one was refused: see the next test)."""
    cap = 3
    connection = ConnectionConfig(secret=SECRET, handshake_timeout=2.0)
    async with _capped_master(connection, cap) as master:
        host, port = master.address
        silent = []
        for _ in range(8):  # (one after the other: each is in the handshake before the next comes)
            silent.append(asyncio.create_task(raw_peer(host, port, b"", wait=10)))
            count = len(silent)
            await wait_until(
                lambda n=count: master.accepted == n and master.connections == min(n, cap), 10, "it served"
            )
        outcomes = await finish(silent, 20)
        # The last cap are cut off by the handshake timeout, the older ones at once, as the next came.
        assert [o.code == ErrorCode.TIMEOUT for o in outcomes] == [False] * (8 - cap) + [True] * cap, outcomes
        assert all(o.cut_off and o.seconds < 1.5 for o in outcomes[: 8 - cap]), outcomes
        # Then a worker gets in and trains.
        results = await finish(start_workers(host, port, [0], 1, connection_config=connection), TIMEOUT)
        summary = (await master.wait(TIMEOUT)).to_json()
    trained(summary, results, 2)
    assert summary["refused_connections"]["handshake cut short for a newer connection"] == 8 - cap
    assert summary["unadmitted"]["connections"] == 8


@pytest.mark.asyncio
async def test_silent_strangers_holding_every_handshake_place_cannot_keep_a_worker_out() -> None:
    """An attack review: 64 silent connections without the secret, renewed as the master dropped them at
    its handshake timeout (7 a second), held every place in aiodq's handshake; the workers, holding the
    secret, were refused at accept every time and gave up.  A new connection now cuts the oldest short."""
    cap = 3
    connection = ConnectionConfig(secret=SECRET, handshake_timeout=30.0)
    async with _capped_master(connection, cap) as master:
        host, port = master.address
        silent = [asyncio.create_task(raw_peer(host, port, b"", wait=40)) for _ in range(cap)]
        await wait_until(lambda: master.connections == cap, 10, "the strangers holding every place")
        try:
            worker = start_workers(host, port, [0], 1, connection_config=connection, retry_for=5.0)
            results = await finish(worker, TIMEOUT)
            summary = (await master.wait(TIMEOUT)).to_json()
        finally:
            for task in silent:
                task.cancel()
    trained(summary, results, 2)
    assert summary["refused_connections"]["handshake cut short for a newer connection"] == 1, summary


@pytest.mark.asyncio
async def test_a_master_runs_one_run() -> None:
    """An embedding trial: a second start() bound a second listener that close() left accepting, a start
    after close() replaced the finished run's result, and a nested ``async with`` closed the outer run.
    Each is a RuntimeError now, and the first run goes on; a bad ``workers`` fails at construction."""
    master = Master(TrainConfig(epochs=1), X0, workers=1)
    # An API audit: result() and elapsed before start() failed on a bare assertion.
    for before_start in (master.result, lambda: master.elapsed, lambda: master.address):
        with pytest.raises(RuntimeError, match=r"^the master (has not started|is not listening); call start"):
            before_start()
    async with master:
        address = master.address
        with pytest.raises(RuntimeError, match=r"^this Master was started before: a Master runs one run"):
            await master.start()
        with pytest.raises(RuntimeError, match=r"^this Master was started before"):
            async with master:
                pass
        assert master.address == address and not master.coordinator.done  # (the first run's, open)
        results = await finish(start_workers(*address, [0], 1), TIMEOUT)
        summary = (await master.wait(TIMEOUT)).to_json()
    trained(summary, results, 1)
    with pytest.raises(RuntimeError, match=r"^this Master was started before"):
        await master.start()
    assert master.result().to_json()["trace"] == summary["trace"]
    with pytest.raises(TypeError, match=r"^workers must be an integer, 1 or more, got '2'$"):
        Master(TrainConfig(epochs=1), X0, workers="2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"^need at least one worker, got workers=0$"):
        Master(TrainConfig(epochs=1), X0, workers=0)
    # A review: a start that failed (its port taken) may be tried again; a numpy integer is a count.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        retried = Master(TrainConfig(epochs=1), X0, workers=np.int64(1), port=port)
        with pytest.raises(OSError):
            await retried.start()
    await retried.start()  # the port is free now
    try:
        assert retried.address[1] == port and type(retried.coordinator.expected_workers) is int
    finally:
        await retried.close()
    # And a Master closed before it started is closed: no listener comes of a start after that (and the
    # error says closed, not started: a newcomer's audit).
    closed = Master(TrainConfig(epochs=1), X0, workers=1)
    await closed.close()
    with pytest.raises(RuntimeError, match=r"^this Master was closed before: a Master runs one run"):
        await closed.start()


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        ({"port": 70_000}, "port must be an integer from 0 to 65535 (0: any free port), got 70000"),
        ({"port": -1}, "port must be an integer from 0 to 65535 (0: any free port), got -1"),
        ({"port": "7070"}, "port must be an integer from 0 to 65535 (0: any free port), got '7070'"),
        ({"samples": -5}, "samples must be a positive integer (the whole dataset's) or None, got -5"),
        ({"samples": 0}, "samples must be a positive integer (the whole dataset's) or None, got 0"),
        ({"blas_threads": 0}, "blas_threads must be a positive integer or None (leave them), got 0"),
        ({"checkpoint_interval": float("nan")}, "checkpoint_interval must be positive, got nan"),
        ({"checkpoint_interval": "60"}, "checkpoint_interval must be positive, got '60'"),
    ],
)
def test_a_masters_arguments_that_could_not_work_are_refused_at_once(
    arguments: dict[str, Any], said: str
) -> None:
    """An API audit: port=70000 listened on 4464 (getaddrinfo wraps it), samples=-5 had every worker
    refused at the join timeout, blas_threads=0 was taken."""
    with pytest.raises(ValueError) as info:
        Master(TrainConfig(epochs=1), X0, workers=1, **arguments)
    assert str(info.value) == said


@pytest.mark.asyncio
async def test_arguments_of_the_wrong_type_are_a_type_error_naming_them() -> None:
    """A newcomer's audit: Master({"algorithm": ...}) raised AttributeError ('dict' object has no attribute
    'seed') from deep inside, as did master_config={...}; run_worker's port "x" failed in getaddrinfo."""
    for arguments, said in (
        ({"config": {"algorithm": "asylpg"}}, "config must be a TrainConfig, got a dict"),
        ({"master_config": {"guard": 0}}, "master_config must be a MasterConfig or None, got a dict"),
        ({"connection_config": {}}, "connection_config must be a ConnectionConfig or None, got a dict"),
    ):
        given = {"config": TrainConfig(epochs=1), **arguments}
        with pytest.raises(TypeError, match=f"^{re.escape(said)}$"):
            Master(model=X0, workers=1, **given)
    with socket.socket() as unused:  # a port given as os.environ's text is taken (a review: it was, before)
        unused.bind(("127.0.0.1", 0))
        free = str(unused.getsockname()[1])
    with pytest.raises(OSError):  # (refused: no master there; not a ValueError)
        await run_worker("127.0.0.1", free, np.ones((2, 2)), np.ones(2))  # type: ignore[arg-type]
    for port in ("x", 0, 70_000, 1.5, True, "0", "70000", " 80"):
        with pytest.raises(
            ValueError, match=r"^port must be an integer from 1 to 65535 \(the master's\), got "
        ):
            await run_worker("127.0.0.1", port, np.ones((2, 2)), np.ones(2))  # type: ignore[arg-type]
    with pytest.raises(
        TypeError, match=r"^connection_config must be a ConnectionConfig or None, got a dict$"
    ):
        await run_worker("127.0.0.1", 1, np.ones((2, 2)), np.ones(2), connection_config={})  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_wait_that_could_not_end_as_asked_is_refused() -> None:
    """An API audit: wait() before start() blocked until its timeout (forever without one), and
    timeout=nan waited, then said 'did not finish within nan s'; a negative one raised TimeoutError."""
    master = Master(TrainConfig(epochs=1), X0, workers=1)
    for wait in (master.wait, master.trained):
        with pytest.raises(RuntimeError, match=r"^the master has not started: call start\(\) first"):
            await wait()
    # numpy's integers are taken as Python's (a review: np.int64(0) passed the check, then failed the listen).
    async with Master(
        TrainConfig(epochs=1), X0, workers=1, port=np.int64(0), samples=np.int64(300)
    ) as numpy_port:
        assert numpy_port.address[1] > 0
    # Nor after a start that failed (a review: the coordinator it had made let the wait block).
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        failed = Master(TrainConfig(epochs=1), X0, workers=1, port=taken.getsockname()[1])
        with pytest.raises(OSError):
            await failed.start()
    with pytest.raises(RuntimeError, match=r"^the master has not started"):
        await failed.wait()
    async with master:
        for timeout in (float("nan"), -1.0, "5"):
            with pytest.raises(ValueError, match=r"^timeout must be a number of seconds, 0 or more, or None"):
                await master.wait(timeout)  # type: ignore[arg-type]
        with pytest.raises(TimeoutError, match=r"^the run did not finish within 0 s"):
            await master.trained(0)


@pytest.mark.asyncio
async def test_masters_whose_lifetimes_overlap_put_blas_back_as_it_was() -> None:
    """An API audit: A starts, B starts, A closes (B ran uncapped from then), B closes (BLAS stayed at
    one thread in the application after both).  The limit holds while any master runs, and the last
    one to close puts back what the first found."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas() -> list[int]:
        return [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]

    if not blas():
        pytest.skip("numpy here is built with no BLAS threadpoolctl can see")
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = blas()
        assert before and all(threads == 2 for threads in before), before
        first, second = (Master(TrainConfig(epochs=1), X0, workers=1) for _ in range(2))
        await first.start()
        assert all(threads == 1 for threads in blas())
        await second.start()
        await first.close()
        assert all(threads == 1 for threads in blas())  # (2 here before: B uncapped)
        await second.close()
        assert blas() == before  # (1 here before)
        await second.close()  # a second close changes nothing
        assert blas() == before
        # Holders of different limits: the one still running keeps its own (a review: it got the other's).
        ones, twos = (
            Master(TrainConfig(epochs=1), X0, workers=1),
            Master(TrainConfig(epochs=1), X0, workers=1, blas_threads=2),
        )
        with threadpoolctl.threadpool_limits(3, user_api="blas"):
            await ones.start()
            await twos.start()
            assert all(threads == 2 for threads in blas())
            await twos.close()
            assert all(threads == 1 for threads in blas())
            await ones.close()
            assert all(threads == 3 for threads in blas())


@pytest.mark.asyncio
async def test_a_worker_started_for_another_built_in_model_is_refused() -> None:
    """An operator trial: ``aiodq worker --model softmax`` joined a logistic master, trained logistic and
    exited 0.  INVALID_CONFIG now, as for a model of your own; started for the master's, it trains."""
    async with Master(TrainConfig(epochs=1), X0, workers=1) as master:
        host, port = master.address
        other = await run_worker(host, port, A9A.features, A9A.labels, model="softmax")
        assert other.code == ErrorCode.INVALID_CONFIG
        assert other.reason == "the master trains 'logistic', this worker was started for 'softmax'"
        good = await run_worker(host, port, A9A.features, A9A.labels, model="logistic")
        summary = (await master.wait(TIMEOUT)).to_json()
    assert good.ok and summary["failure"] is None


class _FailsOnItsShard:
    """Least squares whose whole-shard pass fails (a label out of range, say): the contract check, on two
    rows, passes; the answer to SNAPSHOT does not."""

    def __init__(self, features: Any, labels: Any) -> None:
        self.a, self.b = features, np.asarray(labels, dtype=np.float64)
        self.samples, self.dim = features.shape

    def initial(self, rng: Any) -> Any:
        return np.zeros(self.dim)

    def loss_grad(self, x: Any, rows: Any = None) -> tuple[float, Any]:
        if rows is None:
            raise IndexError("Target 10 is out of bounds.")
        residual = self.a[rows] @ x - self.b[rows]
        return 0.5 * float(residual @ residual), np.asarray(self.a[rows].T @ residual)


@pytest.mark.asyncio
async def test_a_wait_that_times_out_says_where_the_run_stands_and_the_last_error() -> None:
    """A torch trial: every worker's objective failed, and wait(timeout=20) ended, 20 s later, with "the
    run did not finish within 20 s" alone.  It says the phase, the workers connected and the last error."""
    features, labels = A9A.features[:200].toarray(), A9A.labels[:200]
    config = TrainConfig(model="fails", epochs=1, step=0.01)
    async with Master(config, _FailsOnItsShard(features, labels), workers=2) as master:
        host, port = master.address
        workers = [
            run_worker(host, port, objective=_FailsOnItsShard(part, labels[i::2]), retry_for=0)
            for i, part in enumerate((features[0::2], features[1::2]))
        ]
        assert all(result.failed for result in await asyncio.gather(*workers))
        with pytest.raises(TimeoutError) as raised:
            await master.wait(0.1)  # (nobody is left to train: the timeout is certain)
        assert re.fullmatch(
            r"the run did not finish within 0.1 s \(joining, 0 of 2 workers connected; the last error: "
            r"worker \d+ sent INTERNAL_ERROR: cannot answer SNAPSHOT: IndexError: Target 10 is out of "
            r"bounds\. \(at .*\)\)",
            str(raised.value),
        ), raised.value


@pytest.mark.asyncio
async def test_a_worker_reconnecting_to_a_run_that_is_over_ends_saying_how_it_ended() -> None:
    """An operator trial: a diverged run's workers reconnected (GOING_AWAY may mean a master that comes
    back), were closed before HELLO was answered, and ended on that and a TLS hint.  The session that
    trained says how training ended; the refused reconnection follows it."""

    async def over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()  # what a master whose run is over does to a connection

    async with Master(TrainConfig(epochs=1000), X0, workers=1) as master:
        host, port = master.address
        worker = asyncio.create_task(
            run_worker(host, port, A9A.features[:200], A9A.labels[:200], retry_for=3)
        )
        await wait_until(lambda: master.coordinator.state.version > 5, TIMEOUT, "training")
        master.stop_training()  # GOING_AWAY, and its listener closes
        await wait_until(lambda: not master._listener.sockets, TIMEOUT, "the listener closed")
        async with await asyncio.start_server(over, host, port):  # (its port: the worker reconnects there)
            result = await asyncio.wait_for(worker, TIMEOUT)
    assert result.code == ErrorCode.GOING_AWAY and result.configured, result
    assert result.reason.startswith("the master is shutting down; then, reconnecting: PROTOCOL_ERROR: "), (
        result
    )
    assert (
        "before answering HELLO (a master whose run is over closes every connection at once" in result.reason
    )


@pytest.mark.asyncio
async def test_a_worker_pointed_at_another_kind_of_server_says_so_and_does_not_retry() -> None:
    """An operator trial: a worker connected to an HTTP server read "HTTP" as a frame header of 774,975,312
    bytes, said FRAME_TOO_LARGE with nothing else, and retried it for all of --retry-for."""
    connections = 0

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        await reader.read()  # until the worker closes
        writer.close()

    async with await asyncio.start_server(http, "127.0.0.1", 0) as server:
        host, port = server.sockets[0].getsockname()[:2]
        result = await asyncio.wait_for(
            run_worker(host, port, A9A.features, A9A.labels, retry_for=60), TIMEOUT
        )
    assert result.code == ErrorCode.FRAME_TOO_LARGE, result
    assert result.reason.endswith(" (before HELLO was answered: is the peer an aiodq master?)"), result.reason
    assert connections == 1


@pytest.mark.asyncio
async def test_a_frame_larger_than_any_handshake_message_is_refused_on_its_header() -> None:
    """WF-10-3: before the handshake, a header declaring 256 MiB gets FRAME_TOO_LARGE at once,
    though max_frame_bytes allows it; nothing of it is buffered."""
    async with Master(TrainConfig(epochs=1), X0, workers=1) as master:
        host, port = master.address
        header = struct.pack("<BBBI", 1, MessageType.HELLO, 0, (1 << 28) - 1)
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(raw_peer(host, port, header + bytes(1000), wait=5) for _ in range(4))), 20
        )
        results = await finish(start_workers(host, port, [0], 1), TIMEOUT)
        summary = (await master.wait(TIMEOUT)).to_json()
    trained(summary, results, 1)
    assert all(o.code == ErrorCode.FRAME_TOO_LARGE and o.seconds < 2 for o in outcomes), outcomes
    # Their bytes are not the run's traffic.
    assert summary["unadmitted"]["connections"] == 4
    assert summary["traffic"]["wire_bytes"]["up"].get("HELLO", 0) < 200


async def _flood(host: str, port: int, count: int, reason: str) -> None:
    """``count`` strangers, 50 at a time: connect, HELLO, CLOSE with ``reason``, read to the end."""
    payload = encode_message(Hello(name="flood")) + encode_message(Close(code=5, reason=reason))

    async def one() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            return
        try:
            writer.write(payload)
            await writer.drain()
            await read_to_end(reader, 10)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    for start in range(0, count, 50):
        await asyncio.gather(*(one() for _ in range(min(50, count - start))))


@pytest.mark.asyncio
async def test_a_flood_of_strangers_leaves_bounded_records_and_no_forged_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """2,000 unauthenticated HELLO + CLOSE (1 KiB reasons with a forged log line): the errors kept,
    the summary, the checkpoint and the log stay bounded; peer text is escaped; training is unaffected.
    (With no connection rate, the default: strangers from many addresses get as far as these.)"""
    caplog.set_level(logging.INFO, logger="aiodq")
    path = tmp_path / "run.ckpt"
    reason = (FORGED * 20)[:1000]
    connection = ConnectionConfig(secret=SECRET)
    async with Master(
        TrainConfig(epochs=2), X0, workers=2, connection_config=connection, checkpoint=path
    ) as master:
        host, port = master.address
        await _flood(host, port, 2000, reason)
        await wait_until(lambda: master.accepted >= 2000, 30, "the flood's connections")
        assert master.coordinator is not None
        await wait_until(lambda: master.coordinator.pending == 0, 30, "the flood's connections closed")
        master.write_checkpoint()
        checkpoint_size = path.stat().st_size
        tasks = start_workers(host, port, [0, 1], 2, connection_config=connection)
        results = await finish(tasks, TIMEOUT)
        summary = (await master.wait(TIMEOUT)).to_json()
    trained(summary, results, 2)
    assert sum(summary["error_counts"].values()) + sum(summary["peer_error_counts"].values()) >= 2000
    assert len(summary["errors"]) <= MAX_ERRORS
    assert len(json.dumps(summary)) < 1 << 20
    assert checkpoint_size < 1 << 20
    assert summary["unadmitted"]["connections"] >= 2000
    assert summary["unadmitted"]["bytes"] >= 2000 * 1000
    assert summary["traffic"]["wire_bytes"]["up"].get("CLOSE", 0) < 1000
    records = [r for r in caplog.records if r.name.startswith("aiodq")]
    messages = [r.getMessage() for r in records]
    assert len(records) < 100, len(records)
    assert all("\n" not in m and "\r" not in m for m in messages)
    assert not any(m.startswith("2026-12-03") or m.startswith("epoch 3: loss 0.000001") for m in messages)
    assert any("more protocol errors" in m for m in messages), messages[-5:]


@pytest.mark.asyncio
async def test_connections_from_one_address_beyond_its_rate_are_closed_as_they_arrive(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With connection_rate 2, 500 strangers from 127.0.0.1: past the burst (2 M + 16 = 20) and 2 a
    second, each is closed at once, before its handshake; honest workers from the same address,
    retrying once the flood is over, still train."""
    caplog.set_level(logging.WARNING, logger="aiodq")
    connection = ConnectionConfig(secret=SECRET)
    loop = asyncio.get_running_loop()
    limited = MasterConfig(connection_rate=2.0)
    async with Master(
        TrainConfig(epochs=2), X0, workers=2, connection_config=connection, master_config=limited
    ) as master:
        host, port = master.address
        began = loop.time()
        await _flood(host, port, 500, "flood")
        await wait_until(lambda: master.accepted >= 500, 30, "the flood's connections")
        seconds = loop.time() - began
        tasks = start_workers(host, port, [0, 1], 2, connection_config=connection, retry_for=30)
        results = await finish(tasks, TIMEOUT)
        summary = (await master.wait(TIMEOUT)).to_json()
    trained(summary, results, 2)
    # The token bucket's bound: 20 at once, 2 a second since (the master's clock started earlier,
    # so the flood's own time bounds it from above).
    handshakes = summary["unadmitted"]["connections"]  # (the workers' refused attempts never got one)
    assert handshakes <= 20 + 2 * seconds + 1, (handshakes, seconds)
    refused = summary["refused_connections"]["too many new connections from one address"]
    assert refused >= 500 - (20 + 2 * seconds + 1), (refused, seconds)
    # The log names the address it refused last (an operator's first question).
    assert "too many new connections from one address" in caplog.text
    assert "(the last from 127.0.0.1)" in caplog.text


@pytest.mark.asyncio
async def test_a_join_that_the_connection_rate_held_off_says_so_in_the_failure() -> None:
    """Workers that --connection-rate keeps out (a churner shares their address) never join: the
    run's failure says how many connections were refused and why, not only that none joined."""
    limited = MasterConfig(connection_rate=0.01, join_timeout=2.0)
    async with Master(TrainConfig(epochs=2), X0, workers=2, master_config=limited) as master:
        host, port = master.address
        await _flood(host, port, 60, "churn")  # the burst is 2 M + 16 = 20: 40 or so refused
        result = await master.wait(TIMEOUT)
    refused = result.to_json()["refused_connections"]["too many new connections from one address"]
    assert refused >= 30, refused
    assert result.failure is not None
    assert result.failure.startswith("0 of 2 workers joined within 2 s (--join-timeout); "), result.failure
    assert result.failure.endswith(
        f"; {refused} connections were refused as too many new connections from one address "
        "(--connection-rate), the last from 127.0.0.1"
    ), result.failure


@pytest.mark.asyncio
async def test_a_finished_master_exits_whatever_strangers_hold_open() -> None:
    """Strangers that reconnect whenever closed, and idle connections opened during training, cannot
    keep a finished master alive: wait() returns within 10 s of the end of training."""
    stop = asyncio.Event()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    pesters: list[asyncio.Task[int]] = []

    async def pester(host: str, port: int) -> int:
        rounds = 0
        while not stop.is_set():
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            except (OSError, TimeoutError):
                await asyncio.wait([asyncio.create_task(stop.wait())], timeout=0.05)
                continue
            rounds += 1
            await read_to_end(reader, 30)
            writer.close()
        return rounds

    loop = asyncio.get_running_loop()
    try:
        # 20 short epochs: training lasts well past the 200 idle connections below (checked).
        async with Master(TrainConfig(epochs=20, updates_per_epoch=100), X0, workers=1) as master:
            host, port = master.address
            assert master.coordinator is not None
            pesters = [asyncio.create_task(pester(host, port)) for _ in range(3)]
            tasks = start_workers(host, port, [0], 1)
            await wait_until(lambda: master.coordinator.live_workers == 1, TIMEOUT, "the worker joined")
            # During training: more idle connections than the handshake cap lets in.
            for _ in range(200):
                idle.append(await asyncio.wait_for(asyncio.open_connection(host, port), 5))
            assert not master.coordinator.done, "training ended before the idle connections were open"
            await wait_until(lambda: master.coordinator.done, TIMEOUT, "the end of training")
            done_at = loop.time()
            summary = (await master.wait(10.0)).to_json()
            exited_after = loop.time() - done_at
            results = await finish(tasks, TIMEOUT)
    finally:
        stop.set()
        for _, writer in idle:
            writer.close()
        await finish(pesters, 40)
    trained(summary, results, 20)
    assert exited_after < 10.0
    assert summary["refused_connections"], summary["refused_connections"]


@pytest.mark.asyncio
async def test_closing_a_master_mid_training_sends_going_away_without_callback_errors() -> None:
    """Master.close() in the middle of training: every worker gets CLOSE(GOING_AWAY), and no
    callback of the event loop fails (no 'Exception in callback ... CancelledError')."""
    loop = asyncio.get_running_loop()
    failures: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: failures.append(context))
    try:
        master = Master(TrainConfig(epochs=200), X0, workers=2)
        await master.start()
        host, port = master.address
        tasks = start_workers(host, port, [0, 1], 2)
        assert master.coordinator is not None
        await wait_until(lambda: master.coordinator.state.version > 50, TIMEOUT, "training under way")
        assert master.result().failure is None  # as it stands, training going on
        await master.close()
        results = await finish(tasks, TIMEOUT)
    finally:
        loop.set_exception_handler(None)
    assert [r.code for r in results] == [ErrorCode.GOING_AWAY] * 2, results
    assert not failures, failures
    # A stopped run is not taken for a finished one (a newcomer trial: failure None, as for success).
    stopped = master.result()
    assert not stopped.ok and stopped.failure == "stopped before training ended"
    assert stopped.to_json()["failure"] == stopped.failure


@pytest.mark.asyncio
async def test_a_failure_in_the_timers_is_logged_and_the_timers_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An unexpected exception out of the coordinator's handle_timer (a review found a peer's bad
    frame could raise there) must not end the master's timer task: the join timeout still ends a
    run that no worker joins."""
    master = Master(TrainConfig(epochs=1), X0, workers=1, master_config=MasterConfig(join_timeout=0.5))
    await master.start()
    try:
        assert master.coordinator is not None
        handle_timer, calls = master.coordinator.handle_timer, []

        def failing_once(now: float) -> None:
            calls.append(now)
            if len(calls) == 1:
                raise RuntimeError("a bug")
            handle_timer(now)

        master.coordinator.handle_timer = failing_once  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="aiodq.master"):
            result = await master.trained(TIMEOUT)
    finally:
        await master.close()
    assert "timers: unexpected RuntimeError: a bug" in caplog.text
    assert len(calls) >= 2
    assert result.failure == "0 of 1 workers joined within 0.5 s (--join-timeout)"


@pytest.mark.asyncio
async def test_a_checkpoint_that_cannot_be_written_fails_at_start(tmp_path: Path) -> None:
    """A checkpoint path that cannot be written is a CheckpointError at start, not a silent loss."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="cannot write the checkpoint"):
        async with Master(TrainConfig(epochs=1), X0, workers=1, checkpoint=blocker / "run.ckpt"):
            pass


@pytest.mark.asyncio
async def test_stale_temporary_checkpoints_are_removed_at_start(tmp_path: Path) -> None:
    """The .tmp files that writes killed mid-way left are removed when a master starts."""
    path = tmp_path / "run.ckpt"
    stale = [tmp_path / f".run.ckpt.{i}abc_xyz.tmp" for i in range(3)]  # (as tempfile.mkstemp names them)
    for file in stale:
        file.write_bytes(b"x" * 1000)
    other = tmp_path / ".other.ckpt.1abc_xyz.tmp"
    other.write_bytes(b"keep")
    async with Master(TrainConfig(epochs=1), X0, workers=1, checkpoint=path) as master:
        assert not any(file.exists() for file in stale)
        assert other.exists() and path.exists()
        results = await finish(start_workers(*master.address, [0], 1), TIMEOUT)
        await master.wait(TIMEOUT)
    assert results[0].ok


def _npy(header: dict[str, Any], data: bytes) -> bytes:
    """An .npy v1 member: magic, header dict padded to 64 bytes, then ``data``."""
    text = repr(header).encode("latin1")
    pad = 64 - (10 + len(text) + 1) % 64
    text += b" " * pad + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ({"x.npy": _npy({"descr": "<f8", "fortran_order": False, "shape": (10**11,)}, bytes(8))}, "declares"),
        ({"meta.npy": b""}, "cannot read"),
    ],
    ids=["npy-shape-1e11", "empty-meta"],
)
def test_a_damaged_checkpoint_is_one_error(tmp_path: Path, members: dict[str, bytes], says: str) -> None:
    """An .npy header declaring 800 GB, or empty metadata: CheckpointError, never MemoryError."""
    path = tmp_path / "damaged.ckpt"
    meta = io.BytesIO()
    np.lib.format.write_array(meta, np.array("{}"))
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {"meta.npy": meta.getvalue(), **members}.items():
            archive.writestr(name, data)
    with pytest.raises(CheckpointError, match=says):
        checkpoint_file.load(path)


def test_metadata_as_earlier_versions_stored_it_still_reads(tmp_path: Path) -> None:
    """Metadata over 65,536 characters of JSON is UTF-8 bytes (a str array takes four bytes a
    character); a file whose metadata is a str array, as every earlier version wrote it, reads the
    same, and shorter metadata is still written so (earlier versions read only that: a review)."""
    meta = {"format": checkpoint_file.CHECKPOINT_FORMAT, "kind": "test", "text": "\x01 é \U0001f600"}
    for stored in (np.array(json.dumps(meta)), np.array(json.dumps(meta, ensure_ascii=False).encode())):
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, stored)
        with zipfile.ZipFile(tmp_path / "file.npz", "w") as archive:
            archive.writestr("meta.npy", buffer.getvalue())
        assert checkpoint_file.load(tmp_path / "file.npz").meta == meta
    checkpoint_file.save(tmp_path / "new.npz", Checkpoint({}, meta))
    with np.load(tmp_path / "new.npz") as archive:
        assert archive["meta"].dtype.kind == "U"
        assert json.loads(str(archive["meta"])) == meta  # as earlier versions read it
    assert checkpoint_file.load(tmp_path / "new.npz").meta == meta
    # One character more than the limit's JSON (its ASCII escapes counted): bytes, a quarter the size.
    limit = checkpoint_file.COMPATIBLE_META_CHARS
    for extra, kind in ((0, "U"), (1, "S")):
        base = {"format": checkpoint_file.CHECKPOINT_FORMAT, "text": ""}
        large = dict(base, text="\x01" * ((limit - len(json.dumps(base)) - 16) // 6))
        large["text"] += "a" * (limit - len(json.dumps(large)) + extra)
        assert len(json.dumps(large)) == limit + extra
        checkpoint_file.save(tmp_path / "large.npz", Checkpoint({}, large))
        with np.load(tmp_path / "large.npz") as archive:
            assert archive["meta"].dtype.kind == kind
            stored = archive["meta"].nbytes
        assert stored == (4 * (limit + extra) if kind == "U" else len(json.dumps(large, ensure_ascii=False)))
        assert checkpoint_file.load(tmp_path / "large.npz").meta == large
    with zipfile.ZipFile(tmp_path / "file.npz", "w") as archive:
        buffer = io.BytesIO()
        np.lib.format.write_array(buffer, np.zeros(3))
        archive.writestr("meta.npy", buffer.getvalue())
    with pytest.raises(CheckpointError, match="its metadata is a float64 array of shape"):
        checkpoint_file.load(tmp_path / "file.npz")


def test_deeply_nested_checkpoint_metadata_is_one_error(tmp_path: Path) -> None:
    """Metadata nested 200,000 deep (JSON's decoder recurses): CheckpointError, never RecursionError."""
    path = tmp_path / "deep.ckpt"
    meta = np.array("[" * 200_000 + "]" * 200_000)
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, meta)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("meta.npy", buffer.getvalue())
    with pytest.raises(CheckpointError, match="nested too deeply"):
        checkpoint_file.load(path)


def test_a_zip_bomb_checkpoint_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """load(max_bytes=): an archive whose members would take 1 GiB is refused from its directory."""
    bomb = tmp_path / "bomb.ckpt"
    with (
        zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive,
        archive.open("x.npy", "w", force_zip64=True) as member,
    ):
        # (What the member holds does not matter: the refusal comes from the archive's directory.)
        block = bytes(1 << 20)
        for _ in range(1024):
            member.write(block)
    assert bomb.stat().st_size < 4 << 20
    tracemalloc.start()
    with pytest.raises(CheckpointError, match="more than"):
        checkpoint_file.load(bomb, max_bytes=1 << 24)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20, peak


# -- the command line: one line, a non-zero status, no process left -----------------------------------


def _one_line(result: Any) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    return lines[-1]


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (["run", "--epochs", "1", "--out", "/proc/aiodq-out"], 2, "cannot write to the output folder"),
        (["run", "--out", "README.md"], 2, "output folder README.md: a file is where a folder must be"),
        (
            ["run", "--out", "README.md/out"],
            2,
            "output folder README.md/out: a file is where a folder must be",
        ),
        (["run", "--timeout", "nan"], 2, "--timeout"),
        (["run", "--guard", "1"], 2, "guard"),
        (["run", "--snapshot-timeout", "0"], 2, "--snapshot-timeout must be positive"),
        (  # the options' names, not the fields' (a newcomer read heartbeat_interval and idle_timeout)
            ["worker", "--connect", "127.0.0.1:9", "--shard", "0/1", "--heartbeat-interval", "40"],
            2,
            "aiodq worker: --heartbeat-interval must be shorter than --idle-timeout",
        ),
        (["run", "--model", "logistic", "--data", "tests/fixtures/mnist-like.csv"], 2, "no such file"),
        (["bench", "codec", "--dims", "x"], 2, "--dims"),
        (["bench", "codec", "--bits", "99"], 2, "--bits"),
        (["bench", "master", "--workers", "0"], 2, "--workers"),
        (
            ["master", "--listen", "127.0.0.1:0", "--workers", "1", "--checkpoint", "/proc/x.ckpt"],
            1,
            "checkpoint",
        ),
        (
            [
                "master",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--record-every",
                "5",
                "--records",
                "/proc/x.npz",
            ],
            2,
            "--records",
        ),
        (
            ["master", "--listen", "127.0.0.1:0", "--workers", "1", "--max-dimension", "100"],
            2,
            "aiodq master: the model has 123 parameters, above --max-dimension 100",
        ),
        (  # 8 d + 64 = 1,048 bytes for a RAW_F64 vector of the 123 a9a parameters (wire-format.md 10-4)
            ["master", "--listen", "127.0.0.1:0", "--workers", "1", "--max-frame-bytes", "1047"],
            2,
            "aiodq master: the model has 123 parameters, whose vectors take frames of up to 1,048 bytes, "
            "above --max-frame-bytes 1,047",
        ),
        (
            ["worker", "--connect", "127.0.0.1:9", "--shard", "0/1", "--tls-ca", "tests/fixtures/README.md"],
            2,
            "cannot load the TLS CA tests/fixtures/README.md: ",
        ),
        (
            [
                "master",
                "--listen",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--tls-cert",
                "tests/fixtures/README.md",
                "--tls-key",
                "/nonexistent/key.pem",
            ],
            2,
            "cannot read the TLS key /nonexistent/key.pem: No such file or directory",
        ),
        (
            ["run", "--data", "tests/fixtures/mnist-small/t10k-images-idx3-ubyte.gz"],
            2,
            "t10k-images-idx3-ubyte.gz: an MNIST IDX file, not LIBSVM text: give the folder that holds it",
        ),
        (
            ["master", "--listen", "127.0.0.1:0", "--workers", "2", "--join-timeout", "1"],
            1,
            "0 of 2 workers joined within 1 s (--join-timeout)",
        ),
    ],
)
def test_cli_errors_are_one_line(args: list[str], status: int, words: str) -> None:
    """Every error path prints one line naming the problem and exits non-zero, without a traceback."""
    result = aiodq(*args, timeout=120)
    assert result.returncode == status, (result.returncode, result.stderr[-2000:])
    assert words in _one_line(result), result.stderr[-2000:]


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["run", "--algorithm", "foo"],
            "aiodq run: error: argument --algorithm: invalid choice: 'foo' (choose from 'asylpg', "
            "'sparse-asylpg', 'acc-asylpg', 'asyfpg', 'acc-asyfpg', 'qsvrg', 'model-only') "
            "(see aiodq run --help)",
        ),
        (
            ["master", "--listen", "127.0.0.1"],
            "aiodq master: error: argument --listen: expected HOST:PORT, got '127.0.0.1' "
            "(see aiodq master --help)",
        ),
        (
            ["bogus"],
            "aiodq: error: argument command: invalid choice: 'bogus' (choose from 'run', 'master', "
            "'worker', 'demo', 'bench', 'experiment') (see aiodq --help)",
        ),
    ],
)
def test_an_option_error_is_one_line_without_the_usage(args: list[str], line: str) -> None:
    """A newcomer trial: argparse printed the usage, 30 lines for aiodq run, before the one line of error."""
    result = aiodq(*args, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [line], result.stderr


def test_a_run_diverging_in_its_first_epoch_fails_with_one_line_and_writes_no_model(tmp_path: Path) -> None:
    """aiodq run --l2 10 --step 1 on the bundled a9a (one worker: one order of updates) diverges in its
    first epoch: exit 1 with one line saying so, naming the step; no result.json or model.npz, whose
    model would be x_0 (a newcomer trial: a run diverged at once wrote it as its model), and the log says
    why."""
    out = tmp_path / "out"
    result = aiodq("run", "--l2", "10", "--step", "1", "--epochs", "3", "--workers", "1", "--no-progress",
                   "--out", str(out), timeout=300)  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "diverged" in _one_line(result) and "; the step was 1: a smaller --step may train" in _one_line(
        result
    )
    said = "the results were not written: the run never trained (no epoch ended: its model is the starting "
    said += "point)"
    assert f"aiodq run: {said}" in result.stderr.splitlines()
    assert sorted(p.name for p in out.iterdir()) == ["aiodq.log"]
    assert "diverged" in (out / "aiodq.log").read_text()


def test_softmax_on_binary_labels_trains(tmp_path: Path) -> None:
    """--model softmax on LIBSVM -1/+1 labels: the labels become classes 0/1 (no IndexError)."""
    result = aiodq("run", "--model", "softmax", "--epochs", "2", "--workers", "2", "--no-progress",
                   "--out", str(tmp_path), timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((tmp_path / "result.json").read_text())
    assert summary["trace"][-1]["accuracy"] > 0.8


def test_empty_secret_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """AIODQ_SECRET set but empty would silently mean no authentication: it is refused."""
    monkeypatch.setenv("AIODQ_SECRET", "")
    result = aiodq("worker", "--connect", "127.0.0.1:9", "--shard", "0/1", "--retry-for", "0")
    assert result.returncode == 2
    assert "AIODQ_SECRET is set but empty" in _one_line(result)


def test_a_readable_secret_file_is_warned_about(tmp_path: Path) -> None:
    """A secret file other users can read works, with a warning naming the fix."""
    secret = tmp_path / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o644)
    result = aiodq("worker", "--connect", "127.0.0.1:9", "--shard", "0/1", "--retry-for", "0",
                   "--secret-file", str(secret))  # fmt: skip
    assert result.returncode == 1
    assert f"chmod 600 {secret}" in result.stderr
    assert "cannot reach the master at 127.0.0.1:9" in _one_line(result)


@pytest.mark.skipif(sys.platform != "linux", reason="IPv6 loopback assumed on Linux")
def test_an_ipv6_listen_address_is_printed_as_connect_reads_it(tmp_path: Path) -> None:
    """--listen '[::1]:0' prints '[::1]:PORT', which --connect accepts."""
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    master = Process(tmp_path, "master", "master", "--listen", "[::1]:0", "--workers", "1", "--epochs", "1")
    try:
        text = asyncio.run(wait_for_text(lambda: master.stdout, "waiting for", 30))
        address = text.split("listening on ")[1].split(",")[0]
        assert address.startswith("[::1]:")
        worker = aiodq("worker", "--connect", address, "--shard", "0/1", timeout=120)
        assert worker.returncode == 0, worker.stderr[-2000:]
        assert asyncio.run(master.exited(60)) == 0
    finally:
        master.kill()


@pytest.mark.asyncio
async def test_a_finished_runs_checkpoint_resumes_as_it_ended(tmp_path: Path) -> None:
    """At the end the master checkpoints the run as done: resumed, it trains nothing and gives the
    result again at once (no worker needed), leaving the checkpoint as it is; it ended diverged, it
    says so again.  A done checkpoint of an earlier version, which kept no failure, is refused."""
    from aiodq.net.worker import run_worker  # noqa: PLC0415
    from aiodq.protocol.dataset import shard  # noqa: PLC0415

    path = tmp_path / "run.ckpt"
    config = TrainConfig(epochs=1, updates_per_epoch=30)
    data = A9A.rows(np.arange(2000))
    async with Master(config, np.zeros(123), workers=2, checkpoint=path) as master:
        host, port = master.address
        parts = [data.rows(shard(data.samples, 2, i)) for i in range(2)]
        workers = [asyncio.create_task(run_worker(host, port, p.features, p.labels)) for p in parts]
        result = await master.wait(timeout=60)
        await asyncio.gather(*workers)
    assert result.ok
    saved = checkpoint_file.load(path)
    assert saved.meta["phase"] == "done" and saved.meta["failure"] is None
    async with Master(config, np.zeros(123), workers=2, checkpoint=path, resume=True) as again:
        resumed = await again.trained(timeout=5)
        assert again.coordinator is not None and again.coordinator.live_workers == 0
    assert resumed.ok and np.array_equal(resumed.model, result.model) and resumed.trace == result.trace
    assert checkpoint_file.load(path).meta == saved.meta
    saved.meta["failure"] = "the run diverged: planted"
    checkpoint_file.save(path, saved)
    async with Master(config, np.zeros(123), workers=2, checkpoint=path, resume=True) as again:
        diverged = await again.trained(timeout=5)
    assert diverged.failure == diverged.summary["failure"] == "the run diverged: planted"
    del saved.meta["failure"]
    checkpoint_file.save(path, saved)
    earlier = Master(config, np.zeros(123), workers=2, checkpoint=path, resume=True)
    with pytest.raises(CheckpointError, match="already finished, and the version of aiodq that wrote"):
        await earlier.start()
    await earlier.close()


@pytest.mark.asyncio
async def test_a_fresh_start_over_an_unfinished_or_foreign_file_is_refused(tmp_path: Path) -> None:
    """Without --resume a master writes its first checkpoint at once: over a run that has not finished
    (a restart that forgot --resume) or over a file that is no checkpoint, it refuses instead; over a
    finished run's checkpoint it starts afresh."""
    path = tmp_path / "run.ckpt"
    config = TrainConfig(epochs=1)
    async with Master(config, X0, workers=1, checkpoint=path):
        pass  # closed while waiting for its worker: nothing trained, so a fresh start may replace it
    assert checkpoint_file.load(path).meta["phase"] == "joining"
    async with Master(config, X0, workers=1, checkpoint=path):
        pass
    saved = checkpoint_file.load(path)
    saved.meta["state"]["version"] = 7  # as if it had trained
    checkpoint_file.save(path, saved)
    unfinished = path.read_bytes()
    again = Master(config, X0, workers=1, checkpoint=path)
    with pytest.raises(CheckpointError, match=r"has not finished \(epoch 0, version 7\): resume it"):
        await again.start()
    await again.close()
    assert path.read_bytes() == unfinished
    foreign = tmp_path / "notes.txt"
    foreign.write_text("my notes")
    other = Master(config, X0, workers=1, checkpoint=foreign)
    with pytest.raises(CheckpointError, match=r"it is not overwritten: choose another checkpoint file$"):
        await other.start()  # (and not "remove it", as said before: it may be the user's data)
    await other.close()
    assert foreign.read_text() == "my notes"
    folder = Master(config, X0, workers=1, checkpoint=tmp_path)  # (a newcomer gave a results folder)
    with pytest.raises(CheckpointError, match=f"^the checkpoint {tmp_path} is a folder: give a file's path"):
        await folder.start()
    await folder.close()
    model_file = tmp_path / "model.npz"  # aiodq run's output, named by mistake
    checkpoint_file.save(model_file, Checkpoint({"model": X0}, {"kind": "aiodq model", "config": {}}))
    said = []
    for resume in (False, True):
        mistaken = Master(config, X0, workers=1, checkpoint=model_file, resume=resume)
        with pytest.raises(CheckpointError, match="not the checkpoint of a run") as refused:
            await mistaken.start()
        await mistaken.close()
        said.append(str(refused.value))
    # Not "remove it": it is the user's trained model (a newcomer's finding).
    assert said[0].endswith("(a run's model file); it is not overwritten: choose another checkpoint file")
    assert not any("remove it" in text for text in said), said
    meta = checkpoint_file.load(path)
    meta.meta["phase"] = "done"
    big = Checkpoint({**meta.arrays, "x": np.zeros(10**6)}, meta.meta)  # beyond this run's size limit
    checkpoint_file.save(path, big)
    async with Master(config, X0, workers=1, checkpoint=path):
        assert checkpoint_file.load(path).meta["phase"] == "joining"  # a fresh run's first checkpoint


@pytest.mark.asyncio
async def test_a_master_that_cannot_listen_leaves_the_blas_threads_as_they_were() -> None:
    from threadpoolctl import threadpool_info  # noqa: PLC0415

    def blas() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    before = blas()
    if not before or max(before) < 2:
        pytest.skip(f"BLAS runs {before} threads here: a cap of 1 would change nothing")
    with socket.socket() as holder:  # the port is taken
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = Master(TrainConfig(epochs=1), X0, workers=1, host="127.0.0.1", port=holder.getsockname()[1])
        with pytest.raises(OSError):
            await taken.start()
        assert blas() == before  # before close(): `async with` does not call it when start() fails
        await taken.close()
    assert blas() == before


@pytest.mark.asyncio
async def test_a_master_closed_mid_run_checkpoints_where_it_stands(tmp_path: Path) -> None:
    """SIGTERM, Ctrl-C or the caller's close mid-run: the checkpoint holds the last applied update,
    not the state of the last periodic checkpoint (an hour ago at the default interval), and resumes."""
    from aiodq.net.worker import run_worker  # noqa: PLC0415

    path = tmp_path / "run.ckpt"
    config = TrainConfig(epochs=50)
    data = A9A.rows(np.arange(2000))
    master = Master(config, np.zeros(123), workers=1, checkpoint=path, checkpoint_interval=3600)
    await master.start()
    try:
        host, port = master.address
        worker = asyncio.create_task(run_worker(host, port, data.features, data.labels))
        coordinator = master.coordinator
        assert coordinator is not None
        await wait_until(lambda: coordinator.state.version >= 40, TIMEOUT, "40 applied updates")
        assert checkpoint_file.load(path).meta["state"]["version"] == 0  # the one written at start
    finally:
        await master.close()
    stopped_at = coordinator.state.version
    await asyncio.gather(worker, return_exceptions=True)
    saved = checkpoint_file.load(path).meta
    assert saved["phase"] in ("snapshot", "inner") and saved["state"]["version"] == stopped_at >= 40
    again = Master(config, np.zeros(123), workers=1, checkpoint=path, resume=True)
    await again.start()
    try:
        assert again.coordinator is not None and again.coordinator.state.version == stopped_at
    finally:
        await again.close()


@pytest.mark.asyncio
async def test_resuming_on_other_data_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Every checkpoint names the data's fingerprint; --resume with another refuses before anything
    changes, the same one resumes, and a checkpoint that names none, or names its data by another
    recipe, resumes with a warning."""
    path = tmp_path / "run.ckpt"
    config = TrainConfig(epochs=2)
    mine, other = "blake2b:" + "a" * 32, "blake2b:" + "b" * 32
    first = Master(config, np.zeros(123), workers=1, checkpoint=path, data_fingerprint=mine)
    await first.start()
    await first.close()
    assert checkpoint_file.load(path).meta["data"] == mine
    assert first.checkpointed == (0, 0)
    written = path.read_bytes()
    refused = Master(config, np.zeros(123), workers=1, checkpoint=path, resume=True, data_fingerprint=other)
    with pytest.raises(CheckpointError) as info:
        await refused.start()
    await refused.close()
    assert str(info.value) == (
        f"the checkpoint {path} was written by a run on other data (fingerprint {mine}; this run's data: "
        f"{other}): resume it with the data it trained on"
    )
    assert path.read_bytes() == written  # the refused master wrote nothing over it
    same = Master(config, np.zeros(123), workers=2, checkpoint=path, resume=True, data_fingerprint=mine)
    with caplog.at_level(logging.WARNING, logger="aiodq.master"):
        await same.start()
    await same.close()
    assert "the checkpointed run had 1 workers, this one 2: its shards change from here" in caplog.text
    saved = checkpoint_file.load(path)
    del saved.meta["data"]  # as a checkpoint of an earlier version, or of a master told no fingerprint
    checkpoint_file.save(path, saved)
    unnamed = Master(config, np.zeros(123), workers=1, checkpoint=path, resume=True, data_fingerprint=other)
    with caplog.at_level(logging.WARNING, logger="aiodq.master"):
        await unnamed.start()
    await unnamed.close()
    assert "does not say what data it trained on: not checked" in caplog.text
    assert checkpoint_file.load(path).meta["data"] == other  # from now on it names this run's data
    saved = checkpoint_file.load(path)
    saved.meta["data"] = "blake3-v2:" + "c" * 64  # another version's recipe: the digests do not compare
    checkpoint_file.save(path, saved)
    later = Master(config, np.zeros(123), workers=1, checkpoint=path, resume=True, data_fingerprint=mine)
    with caplog.at_level(logging.WARNING, logger="aiodq.master"):
        await later.start()
    await later.close()
    assert f"names its data by another recipe (blake3-v2:{'c' * 64}): not checked" in caplog.text
    assert checkpoint_file.load(path).meta["data"] == mine


@pytest.mark.asyncio
async def test_the_checkpoint_lock_is_released_by_a_failed_start_and_a_cancelled_close(
    tmp_path: Path,
) -> None:
    """A master holds its checkpoint's lock from start to close: a start that fails at bind, and a
    close cancelled part way, let the next master have it (before, every later master was refused
    as "in use by another run" for the rest of the process)."""
    path = tmp_path / "run.ckpt"
    config = TrainConfig(epochs=2)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        failed = Master(config, np.zeros(123), workers=1, port=taken.getsockname()[1], checkpoint=path)
        with pytest.raises(OSError):
            await failed.start()
    finally:
        taken.close()
    holder = Master(config, np.zeros(123), workers=1, checkpoint=path)
    await holder.start()  # refused before: the failed start kept the lock
    refused = Master(config, np.zeros(123), workers=1, checkpoint=path, resume=True)
    with pytest.raises(CheckpointError, match="is in use by another run"):
        await refused.start()
    closing = asyncio.create_task(holder.close())
    await asyncio.sleep(0)  # one loop iteration: the close is under way, at its first wait
    assert not closing.done()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    written = path.read_bytes()
    holder.write_checkpoint()  # a master whose close did not finish has let go of the file for good
    assert path.read_bytes() == written
    after = Master(config, np.zeros(123), workers=1, checkpoint=path, resume=True)
    await after.start()  # refused before: the cancelled close kept the lock
    await after.close()


@pytest.mark.asyncio
async def test_a_finished_run_resumed_by_aiodq_master_leaves_its_records_file_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """aiodq master --records: a finished run's checkpoint holds no model records, so resuming it must
    not write its (empty) records over the file the run wrote (a review: 23 records became 0)."""
    from aiodq.launch.local import master_main  # noqa: PLC0415
    from aiodq.launch.results import load_records  # noqa: PLC0415
    from aiodq.net.worker import run_worker  # noqa: PLC0415
    from aiodq.protocol.objectives import make_objective  # noqa: PLC0415

    data = A9A.rows(np.arange(600))
    config = TrainConfig(epochs=1, updates_per_epoch=30)
    objective = make_objective("logistic", data.features, data.labels)
    path, records = tmp_path / "run.ckpt", tmp_path / "records.npz"
    options: dict[str, Any] = {"checkpoint": path, "record_every": 10, "records_path": records}
    port = free_port()
    first = asyncio.create_task(
        master_main(config, data, objective, host="127.0.0.1", port=port, workers=1, **options)
    )
    said: list[str] = []
    await wait_until(
        lambda: said.append(capsys.readouterr().out) or "listening on" in "".join(said) or first.done(),
        30,
        "aiodq master listening",
    )
    await run_worker("127.0.0.1", port, data.features, data.labels)
    await first
    written = load_records(records)
    assert len(written) > 0
    before = records.read_bytes()
    again = await master_main(
        config, data, objective, host="127.0.0.1", port=0, workers=1, resume=True, **options
    )
    assert again.ok and records.read_bytes() == before


@pytest.mark.asyncio
async def test_a_checkpoint_named_through_a_link_is_locked_and_written_where_the_link_points(
    tmp_path: Path,
) -> None:
    """Two masters given one checkpoint by two names (the file, a symbolic link to it) share one lock,
    and the link stays a link that the checkpoints are written through; a loop of links is refused
    with one line (a durability attack resumed through a link while the first master trained, and the
    link was replaced by a file; a loop raised a RuntimeError)."""
    (tmp_path / "real").mkdir()
    path, link = tmp_path / "real" / "run.ckpt", tmp_path / "link.ckpt"
    link.symlink_to(path)
    config = TrainConfig(epochs=2)
    holder = Master(config, np.zeros(123), workers=1, checkpoint=path)
    await holder.start()
    try:
        refused = Master(config, np.zeros(123), workers=1, checkpoint=link, resume=True)
        with pytest.raises(CheckpointError, match=f"the checkpoint {link} is in use by another run"):
            await refused.start()
    finally:
        await holder.close()
    through = Master(config, np.zeros(123), workers=1, checkpoint=link, resume=True)
    await through.start()
    through.write_checkpoint()
    await through.close()
    assert link.is_symlink() and path.is_file() and checkpoint_file.load(link).meta["phase"] == "joining"
    loop, other = tmp_path / "loop", tmp_path / "other"
    loop.symlink_to(other)
    other.symlink_to(loop)
    with pytest.raises(
        CheckpointError, match=f"cannot write the checkpoint {loop}: a loop of symbolic links"
    ):
        await Master(config, np.zeros(123), workers=1, checkpoint=loop).start()


@pytest.mark.asyncio
async def test_a_resume_that_cannot_write_its_checkpoint_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed master writes its checkpoint at once, as a fresh start does: one that cannot (a full
    disk) fails before it listens (a durability attack saw a resume on a full disk train to the end
    without a checkpoint, exit 0, leaving the checkpoint unfinished)."""
    path = tmp_path / "run.ckpt"
    config = TrainConfig(epochs=2)
    first = Master(config, np.zeros(123), workers=1, checkpoint=path)
    await first.start()
    await first.close()

    def full(target: object, *args: object, **kwargs: object) -> None:
        raise CheckpointError(f"cannot write the checkpoint {target}: No space left on device")

    monkeypatch.setattr(checkpoint_file, "save", full)
    resumed = Master(config, np.zeros(123), workers=1, checkpoint=path, resume=True)
    with pytest.raises(CheckpointError, match="No space left on device"):
        await resumed.start()
    await resumed.close()


@pytest.mark.asyncio
async def test_a_wait_that_times_out_says_so_and_the_run_goes_on() -> None:
    """Master.wait and Master.trained: a TimeoutError that says what did not happen (asyncio's is empty,
    which a newcomer's embedded master printed as a bare 'TimeoutError'); the master is still there."""
    async with Master(TrainConfig(epochs=1), np.zeros(123), workers=1) as master:
        for wait in (master.wait, master.trained):
            said = r"^the run did not finish within 0\.05 s \(joining, 0 of 1 workers connected\)$"
            with pytest.raises(TimeoutError, match=said):
                await wait(timeout=0.05)
        assert master.coordinator is not None and not master.coordinator.done


def test_another_programs_npz_is_named_as_such(tmp_path: Path) -> None:
    """aiodq.load_model on an .npz another program wrote (a newcomer trial: "'meta is not a file in the
    archive'")."""
    path = tmp_path / "weights.npz"
    np.savez(path, **{f"w{i}": np.zeros(2) for i in range(7)})
    from aiodq.launch.results import load_model  # noqa: PLC0415 (aiodq is the CLI helper here)

    with pytest.raises(RunError) as info:
        load_model(path)
    assert str(info.value) == (
        f"cannot read the model file {path}: an .npz archive without aiodq's metadata (its arrays: "
        "'w0', 'w1', 'w2', 'w3', 'w4' and 2 more)"
    )
