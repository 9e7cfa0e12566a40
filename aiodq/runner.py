"""``aiodq run``, ``aiodq master`` and ``aiodq worker``: processes, progress, results.

``run_local`` starts a :class:`~aiodq.master.Master` in this process and M
worker processes (``python -m aiodq worker``) on 127.0.0.1, shows live progress
with rich, and writes ``result.json`` and ``loss_vs_bits.png`` into the output
folder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from . import checkpoint as checkpoint_file
from .algorithms import TrainConfig, initial_model
from .checkpoint import Checkpoint, CheckpointError
from .config import ConnectionConfig
from .coordinator import ModelRecord
from .data import Dataset, load_dataset, shard
from .master import Master
from .worker import WorkerResult, run_worker

__all__ = [
    "RunError",
    "load_records",
    "master_main",
    "run_local",
    "save_records",
    "use_uvloop",
    "worker_main",
    "write_results",
]


class RunError(RuntimeError):
    """A run could not complete: the message says why."""


def use_uvloop() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return uvloop's loop factory where uvloop is installed, else None (the default loop).

    Setting the environment variable ``AIODQ_NO_UVLOOP=1`` selects the default loop.
    """
    if os.environ.get("AIODQ_NO_UVLOOP"):
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional at run time
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_coroutine(coroutine: Any) -> Any:
    """Run ``coroutine`` on a new event loop, uvloop's where available."""
    with asyncio.Runner(loop_factory=use_uvloop()) as runner:
        return runner.run(coroutine)


# -- results ------------------------------------------------------------------


def write_results(summary: dict[str, Any], out: Path) -> tuple[Path, Path | None]:
    """Write ``result.json`` and ``loss_vs_bits.png`` into ``out``; return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    result = out / "result.json"
    result.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    plot = out / "loss_vs_bits.png"
    try:
        import matplotlib  # noqa: PLC0415 - the plot is optional; keep import cost off the hot path

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return result, None
    trace = summary["trace"]
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot([max(r["bits"], 1) for r in trace], [r["loss"] for r in trace], marker="o")
    axis.set_xscale("log")
    axis.set_xlabel("bits transmitted (both directions)")
    axis.set_ylabel("training loss F(x_snap)")
    axis.set_title(f"{summary['config']['algorithm']} on {summary.get('dataset', '?')}")
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(plot, dpi=120)
    plt.close(figure)
    return result, plot


#: What a model records file holds, in its metadata (written with :mod:`aiodq.checkpoint`).
_RECORDS = "model records"
_RECORD_COLUMNS = ("version", "epoch", "bytes_total", "time", "models")


def save_records(records: list[ModelRecord], path: Path) -> None:
    """Write the master's model records to one ``.npz`` file, atomically (:func:`aiodq.checkpoint.save`)."""
    arrays = {
        "version": np.array([r.version for r in records], dtype=np.int64),
        "epoch": np.array([r.epoch for r in records], dtype=np.int64),
        "bytes_total": np.array([r.bytes_total for r in records], dtype=np.int64),
        "time": np.array([r.time for r in records], dtype=np.float64),
        "models": (
            np.array([r.model for r in records], dtype=np.float64)
            if records
            else np.zeros((0, 0), dtype=np.float64)
        ),
    }
    checkpoint_file.save(path, Checkpoint(arrays, {"content": _RECORDS}))


def load_records(path: Path) -> list[ModelRecord]:
    """Read records written by :func:`save_records`.

    Raises:
        RunError: if the file is missing or not a records file.
    """
    try:
        saved = checkpoint_file.load(path)
    except CheckpointError as exc:
        raise RunError(f"{path}: not a model records file ({exc})") from exc
    if saved.meta.get("content") != _RECORDS or any(name not in saved.arrays for name in _RECORD_COLUMNS):
        raise RunError(f"{path}: not a model records file")
    version, epoch, bytes_total, times, models = (saved.arrays[name] for name in _RECORD_COLUMNS)
    if (
        not (len(version) == len(epoch) == len(bytes_total) == len(times) == models.shape[0])
        or models.ndim != 2
    ):
        raise RunError(f"{path}: not a model records file (columns of different lengths)")
    return [
        ModelRecord(int(v), int(e), int(b), float(t), models[i])
        for i, (v, e, b, t) in enumerate(zip(version, epoch, bytes_total, times, strict=True))
    ]


def _float32_equivalent_bits(summary: dict[str, Any]) -> int:
    """Payload bits the same vector messages would take in float32."""
    dim = summary["dim"]
    messages = summary["traffic"]["messages"]
    vector_kinds = ("SNAPSHOT", "SNAPSHOT_GRADIENT", "FULL_GRADIENT", "MODEL", "GRADIENT")
    count = sum(messages.get(d, {}).get(kind, 0) for d in ("down", "up") for kind in vector_kinds)
    return int(32 * dim * count)


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    """The summary table: (label, value) rows."""
    final = summary["trace"][-1]
    totals = summary["traffic"]["total_bytes"]
    payload = summary["traffic"]["payload_bits"]
    payload_bits = sum(v for table in payload.values() for v in table.values())
    float32_bits = _float32_equivalent_bits(summary)
    staleness = summary["staleness"]
    return [
        ("algorithm", summary["config"]["algorithm"]),
        ("dataset", str(summary.get("dataset", ""))),
        ("workers", str(summary["workers"])),
        ("epochs", str(summary["config"]["epochs"])),
        ("final training loss", f"{final['loss']:.6f}"),
        ("final training accuracy", f"{final['accuracy']:.4f}"),
        ("bits master -> workers", f"{8 * totals['down']:,}"),
        ("bits workers -> master", f"{8 * totals['up']:,}"),
        ("bits total", f"{8 * totals['both']:,}"),
        ("vector payload vs float32", f"{payload_bits / float32_bits:.4f}" if float32_bits else "-"),
        ("applied updates", f"{summary['version']:,}"),
        ("staleness mean / max (tau)", f"{staleness['mean']:.2f} / {staleness['max']} ({staleness['tau']})"),
        ("dropped gradients", json.dumps(staleness["dropped"])),
        ("wall time", f"{summary['wall_time']:.2f} s"),
    ]


# -- aiodq run ----------------------------------------------------------------


def _worker_command(
    host: str, port: int, index: int, workers: int, *, data: str | None, seed: int
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "aiodq",
        "worker",
        "--connect",
        f"{host}:{port}",
        "--shard",
        f"{index}/{workers}",
    ]
    command += ["--seed", str(seed)]
    if data is not None:
        command += ["--data", data]
    return command


async def run_local(
    config: TrainConfig,
    dataset: Dataset,
    data_path: str | None,
    workers: int,
    *,
    progress: bool = True,
    timeout: float = 3600.0,
    record_every: int = 0,
    records: list[ModelRecord] | None = None,
) -> dict[str, Any]:
    """One master here and ``workers`` worker processes on 127.0.0.1; return the summary.

    With ``record_every`` > 0 the master keeps model copies (see
    :class:`~aiodq.coordinator.ModelRecord`); they are appended to ``records``.

    Raises:
        RunError: if a worker process fails or the run times out.
    """
    from rich.console import Console  # noqa: PLC0415 - only the CLI needs rich
    from rich.live import Live  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    console = Console(stderr=True)
    x0 = initial_model(config, dataset.features_count, dataset.classes)
    # The local cluster authenticates too: a fresh secret, handed to the workers in their environment.
    secret = secrets.token_hex(32)
    connection_config = ConnectionConfig(secret=secret.encode())
    async with Master(
        config,
        x0,
        workers=workers,
        host="127.0.0.1",
        port=0,
        connection_config=connection_config,
        record_every=record_every,
    ) as master:
        host, port = master.address
        env = dict(os.environ, PYTHONUNBUFFERED="1", AIODQ_SECRET=secret)
        processes = [
            await asyncio.create_subprocess_exec(
                *_worker_command(host, port, i, workers, data=data_path, seed=config.seed),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                env=env,
            )
            for i in range(workers)
        ]
        waiter = asyncio.create_task(master.wait(timeout))
        exits = [asyncio.create_task(p.wait()) for p in processes]

        def table() -> Table:
            coordinator = master.coordinator
            assert coordinator is not None
            view = Table(title=f"aiodq run: {config.algorithm}, {workers} workers", expand=False)
            for column in ("epoch", "loss", "accuracy", "Mbit so far", "updates/s"):
                view.add_column(column, justify="right")
            elapsed = max(master.elapsed, 1e-9)
            for record in coordinator.trace[-8:]:
                view.add_row(
                    str(record.epoch),
                    f"{record.loss:.6f}",
                    f"{record.accuracy:.4f}",
                    f"{8 * record.bytes_total / 1e6:.3f}",
                    f"{record.version / max(record.time, 1e-9):.0f}",
                )
            view.caption = (
                f"version {coordinator.state.version}, {8 * coordinator.traffic().total() / 1e6:.3f} Mbit, "
                f"{coordinator.state.version / elapsed:.0f} updates/s, {elapsed:.1f} s"
            )
            return view

        try:
            with (
                Live(table(), console=console, refresh_per_second=4, transient=False)
                if progress
                else (contextlib.nullcontext()) as live
            ):
                while not waiter.done():
                    done_early = [
                        p for p, e in zip(processes, exits, strict=True) if e.done() and p.returncode != 0
                    ]
                    if done_early:
                        process = done_early[0]
                        assert process.stderr is not None
                        message = (await process.stderr.read()).decode(errors="replace").strip()
                        raise RunError(
                            f"worker process exited with status {process.returncode}: {message[-2000:]}"
                        )
                    await asyncio.wait(
                        [waiter, *[e for e in exits if not e.done()]],
                        timeout=0.25,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    if live is not None:
                        live.update(table())
            try:
                summary = waiter.result()
            except TimeoutError:
                raise RunError(f"the run did not finish within {timeout:.0f} s") from None
            await asyncio.wait_for(asyncio.gather(*exits), 30)
            failed = [p.returncode for p in processes if p.returncode != 0]
            if failed:
                raise RunError(f"worker processes exited with status {failed}")
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
            await asyncio.gather(*exits, return_exceptions=True)
            waiter.cancel()
        if records is not None and master.coordinator is not None:
            records.extend(master.coordinator.records)
    summary["dataset"] = dataset.name
    summary["data_path"] = data_path
    return summary


# -- aiodq master / aiodq worker ------------------------------------------------


async def master_main(
    config: TrainConfig,
    dataset: Dataset,
    host: str,
    port: int,
    workers: int,
    *,
    records_path: Path | None = None,
    **options: Any,
) -> dict[str, Any]:
    """``aiodq master``: serve until training finishes; return the summary.

    ``options`` go to :class:`~aiodq.master.Master` (TLS, connection config, checkpoints,
    ``record_every``); with ``records_path`` the model records are saved there
    (:func:`save_records`).
    """
    x0 = initial_model(config, dataset.features_count, dataset.classes)
    async with Master(config, x0, workers=workers, host=host, port=port, **options) as master:
        bound_host, bound_port = master.address
        print(
            f"aiodq master listening on {bound_host}:{bound_port}, waiting for {workers} workers", flush=True
        )
        summary = await master.wait()
        if records_path is not None and master.coordinator is not None:
            try:
                save_records(master.coordinator.records, records_path)
            except OSError as exc:
                raise RunError(f"cannot write the model records to {records_path}: {exc}") from exc
    summary["dataset"] = dataset.name
    return summary


async def worker_main(
    host: str, port: int, dataset: Dataset, *, index: int, workers: int, seed: int, **options: Any
) -> WorkerResult:
    """``aiodq worker``: train on shard ``index`` of ``workers`` until the master closes.

    ``options`` go to :func:`~aiodq.worker.run_worker` (TLS, connection config, retries).
    """
    rows = shard(dataset.samples, workers, index, seed=seed)
    part = dataset.rows(rows)
    # Several workers share the machine's cores: one BLAS thread each avoids oversubscription.
    threadpool_limits(1, user_api="blas")
    return await run_worker(
        host,
        port,
        part.features,
        part.labels,
        name=f"shard-{index}/{workers}",
        classes=dataset.classes,
        **options,
    )


def load_data_or_fail(path: str | None) -> Dataset:
    """Load a dataset, turning a bad file into :class:`RunError`."""
    from .data import DataError  # noqa: PLC0415

    try:
        return load_dataset(path)
    except DataError as exc:
        raise RunError(str(exc)) from exc
