"""The asynchronous cluster over real TCP on 127.0.0.1: every algorithm, staleness, bits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aiodq.protocol.algorithms import ALGORITHMS, TrainConfig

from .cluster import A9A, bits_to_target, logistic_optimum, train

L2 = 1e-4


@pytest.fixture(scope="module")
def optimum() -> float:
    """F* of l2-regularised logistic regression on the bundled a9a, by scipy L-BFGS."""
    return logistic_optimum(A9A, L2)


# Gaps to F* after the stated epochs (algorithms.md 5-8).  Measured on 2026-12-04 in one process:
# 0.00095 to 0.0014 after 6 epochs (0.0019 to 0.0021 after 4, too close to 0.005 to cut), and
# Sparse-AsyLPG, whose variance grows like d / phi, 0.0040 after 10.
CASES = {
    "asylpg": (6, 0.005),
    "sparse-asylpg": (10, 0.01),
    "acc-asylpg": (6, 0.005),
    "asyfpg": (6, 0.005),
    "acc-asyfpg": (6, 0.005),
    "qsvrg": (6, 0.005),
    "model-only": (6, 0.005),
}


def test_every_algorithm_has_a_case() -> None:
    """Each algorithm selectable by name is covered by the convergence test."""
    assert set(CASES) == set(ALGORITHMS)


#: One run per algorithm, shared by the convergence test and the bits comparison (a module's
#: tests run in file order, so the comparison reuses the runs; run alone, it trains them itself).
RUNS: dict[str, dict[str, Any]] = {}


async def case_run(algorithm: str) -> dict[str, Any]:
    """The summary of ``algorithm``'s run over TCP with its CASES epochs; trained once per module."""
    if algorithm not in RUNS:
        epochs, _ = CASES[algorithm]
        summary, results = await train(TrainConfig(algorithm=algorithm, epochs=epochs, l2=L2))
        assert all(result.ok for result in results), results
        RUNS[algorithm] = summary
    return RUNS[algorithm]


@pytest.mark.asyncio
@pytest.mark.parametrize("algorithm", sorted(CASES))
async def test_algorithm_reaches_the_optimum_over_tcp(algorithm: str, optimum: float) -> None:
    """algorithms.md 5-8: each algorithm trains logistic regression on a9a to within its gap of F*."""
    epochs, gap = CASES[algorithm]
    summary = await case_run(algorithm)
    final = summary["trace"][-1]["loss"]
    assert (final - optimum) / optimum <= gap, (final, optimum)
    assert summary["staleness"]["max"] <= summary["staleness"]["tau"]
    assert len(summary["trace"]) == epochs + 1


@pytest.mark.asyncio
async def test_slow_worker_never_exceeds_the_staleness_bound() -> None:
    """algorithms.md 9: with a slow worker, no applied update is staler than tau; the rest are dropped."""
    tau = 2
    config = TrainConfig(algorithm="asylpg", epochs=2, tau=tau, updates_per_epoch=300)
    summary, results = await train(config, slow={0: 0.02})
    staleness = summary["staleness"]
    assert staleness["max"] <= tau
    assert all(int(k) <= tau for k in staleness["histogram"])
    assert staleness["dropped"].get("stale", 0) > 0, staleness
    assert all(result.ok for result in results)


@pytest.mark.asyncio
async def test_quantized_algorithms_need_fewer_bits_than_full_precision(optimum: float) -> None:
    """The paper's claim: the same loss with fewer transmitted bits than the full-precision counterpart.

    Bits to F* (1 + 5e-3), read at the epoch ends of the convergence runs (every one reaches it:
    their gaps are at most 5e-3, Sparse-AsyLPG's within its ten epochs as measured).
    """
    target = optimum * 1.005
    bits = {algorithm: bits_to_target(await case_run(algorithm), target) for algorithm in sorted(CASES)}
    assert all(value is not None for value in bits.values()), bits
    for algorithm, spec in ALGORITHMS.items():
        if algorithm != spec.baseline:
            assert bits[algorithm] < bits[spec.baseline], (algorithm, bits)


@pytest.mark.asyncio
async def test_byte_counters_match_bytes_counted_at_the_socket() -> None:
    """algorithms.md 10: the master's wire counters equal the bytes a TCP relay counts in each direction."""
    counted = {"up": 0, "down": 0}
    servers = []
    relays: list[asyncio.Task[Any]] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        try:
            while chunk := await reader.read(1 << 16):
                counted[direction] += len(chunk)
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def port_of(host: str, port: int) -> int:
        async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            relays.append(task)
            upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
            await asyncio.gather(pipe(reader, upstream_writer, "up"), pipe(upstream_reader, writer, "down"))

        server = await asyncio.start_server(relay, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    config = TrainConfig(algorithm="sparse-asylpg", epochs=2)
    summary, results = await train(config, workers=3, port_of=port_of)
    # Every relay ends when both of its streams have ended: then it has counted every byte.
    await asyncio.wait_for(asyncio.gather(*relays), 30)
    for server in servers:
        server.close()
        await server.wait_closed()
    totals = summary["traffic"]["total_bytes"]
    assert totals["up"] == counted["up"]
    assert totals["down"] == counted["down"]
    assert all(result.ok for result in results)
