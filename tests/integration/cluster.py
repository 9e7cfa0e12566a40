"""Helpers for the cluster tests: an independent optimum, a TCP cluster in one event loop, the CLI."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.optimize
from scipy.special import log_expit

from aiodq.data import load_bundled_a9a
from aiodq.net.master import Master
from aiodq.net.worker import WorkerResult, run_worker
from aiodq.protocol.algorithms import TrainConfig
from aiodq.protocol.dataset import Dataset, shard
from aiodq.protocol.session import WorkerSession

A9A = load_bundled_a9a()
ROOT = Path(__file__).resolve().parents[2]


async def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; raise TimeoutError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        await asyncio.sleep(0.01)


#: 300 a9a samples, and :func:`edited_fixture`'s copy of them.
A9A_HEAD = ROOT / "tests" / "fixtures" / "a9a-head-300"


def edited_fixture(folder: Path) -> Path:
    """A copy of :data:`A9A_HEAD` in ``folder`` with one value changed: the same shape, other data."""
    lines = A9A_HEAD.read_text().splitlines(keepends=True)
    assert lines[0].startswith("-1 3:1 ")
    other = folder / "a9a-edited"
    other.write_text(lines[0].replace("3:1", "3:0.5", 1) + "".join(lines[1:]))
    return other


def poll_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """:func:`wait_until` for code outside an event loop (processes, files)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the command name (which may hold spaces) start after the last ")".
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def autogroup_nice(pid: int | str = "self") -> int | None:
    """The nice value of a process's autogroup, None where it has none.

    /proc/PID/autogroup reads "/autogroup-123 nice 0"; it is missing on kernels without
    autogroups, and empty for a process in the root group (a session the kernel did not give a
    group of its own, as in some containers).
    """
    try:
        fields = Path(f"/proc/{pid}/autogroup").read_text().split()
    except OSError:
        return None
    return int(fields[-1]) if fields else None


def aiodq(*args: str, timeout: float = 120.0, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run ``python -m aiodq ARGS`` (from the repository root by default); capture its output."""
    return subprocess.run(
        [sys.executable, "-m", "aiodq", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def master_and_one_worker(
    master: list[str], worker: list[str], err: Path, *, cwd: Path = ROOT, timeout: float = 120.0
) -> tuple[int, subprocess.CompletedProcess[str]]:
    """``aiodq master --listen 127.0.0.1:0 --workers 1 MASTER`` (its stderr into ``err``), then ``aiodq worker
    --connect ADDRESS --shard 0/1 WORKER``: the master's exit status and the worker's run."""
    command = [sys.executable, "-m", "aiodq", "master", "--listen", "127.0.0.1:0", "--workers", "1", *master]
    with err.open("wb") as stream:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stream, cwd=cwd)
        try:
            assert process.stdout is not None
            address = process.stdout.readline().decode().split("listening on ")[1].split(",")[0]
            ran = aiodq("worker", "--connect", address, "--shard", "0/1", *worker, timeout=timeout, cwd=cwd)
            return process.wait(timeout=60), ran
        finally:
            process.kill()
            process.wait()
            if process.stdout is not None:
                process.stdout.close()


def logistic_optimum(dataset: Dataset, l2: float) -> float:
    """min_x (1/n) sum log(1 + exp(-y a.x)) + l2/2 ||x||^2 by scipy's L-BFGS, written apart from aiodq."""
    features, labels, n = dataset.features, dataset.labels, dataset.samples

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        margins = labels * (features @ x)
        loss = -log_expit(margins).sum() / n + 0.5 * l2 * x @ x
        grad = features.T @ (-labels * np.exp(log_expit(-margins))) / n + l2 * x
        return float(loss), np.asarray(grad)

    result = scipy.optimize.minimize(
        objective,
        np.zeros(dataset.features_count),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 10_000, "gtol": 1e-12, "ftol": 1e-15},
    )
    assert result.success, result.message
    return float(result.fun)


async def slow_worker(host: str, port: int, part: Dataset, delay: float) -> WorkerResult:
    """A worker that waits ``delay`` seconds before every answer, so its gradients are stale."""
    reader, writer = await asyncio.open_connection(host, port)
    session = WorkerSession(part.features, part.labels, name="slow")
    loop = asyncio.get_running_loop()
    try:
        while not session.closed:
            data = session.data_to_send()
            if data:
                await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
            chunk = await reader.read(1 << 16)
            session.receive_data(chunk, loop.time())
            if not chunk:
                break
        data = session.data_to_send()
        if data:
            writer.write(data)
    finally:
        writer.close()
    code, reason = session.ended or (-1, "no close")
    return WorkerResult(code, reason, session.gradients_sent)


async def train(
    config: TrainConfig,
    *,
    workers: int = 4,
    dataset: Dataset = A9A,
    slow: dict[int, float] | None = None,
    port_of: Any = None,
    timeout: float = 120.0,
) -> tuple[dict[str, Any], list[WorkerResult]]:
    """Master and worker coroutines over real TCP on 127.0.0.1 (port 0); every await bounded."""
    slow = slow or {}
    x0 = np.zeros(dataset.features_count)
    async with Master(config, x0, workers=workers, host="127.0.0.1", port=0) as master:
        host, port = master.address
        target = port if port_of is None else await port_of(host, port)
        tasks = []
        for index in range(workers):
            part = dataset.rows(shard(dataset.samples, workers, index, seed=config.seed))
            if index in slow:
                tasks.append(asyncio.create_task(slow_worker(host, target, part, slow[index])))
            else:
                tasks.append(asyncio.create_task(run_worker(host, target, part.features, part.labels)))
        summary = (await master.wait(timeout)).to_json()
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout)
    return summary, list(results)


def bits_to_target(summary: dict[str, Any], target: float) -> int | None:
    """Bits on the wire (both directions) before the first snapshot whose loss is at most ``target``."""
    for record in summary["trace"]:
        if record["loss"] <= target:
            return int(record["bits"])
    return None


def alive(pid: int) -> bool:
    """True if process ``pid`` exists and is not a zombie (from /proc)."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


#: A user objective, written as a user would (the tests' own copy of examples/least_squares.py).
LEAST_SQUARES = """
import numpy as np

class LeastSquares:
    def __init__(self, features, labels):
        self.a, self.b = features, np.asarray(labels, dtype=np.float64)
        self.samples, self.dim = features.shape

    def initial(self, rng):
        return np.zeros(self.dim)

    def loss_grad(self, x, rows=None):
        a, b = (self.a, self.b) if rows is None else (self.a[rows], self.b[rows])
        residual = a @ x - b
        return 0.5 * float(residual @ residual), np.asarray(a.T @ residual)
"""
