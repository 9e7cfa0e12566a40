"""What a run leaves behind: ``result.json``, the loss-against-bits plot, model records, the summary table."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError, RunError
from ..net import checkpoint as checkpoint_file
from ..protocol.accounting import ModelRecord
from ..protocol.recovery import Checkpoint

__all__ = ["check_out", "load_records", "save_records", "summary_rows", "write_results"]


def check_out(out: Path) -> Path:
    """Create the output folder ``out`` if needed and check that files can be written in it.

    Called before a run starts, so that a run's results are not lost at its end.

    Raises:
        RunError: if the folder cannot be created or written.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise RunError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from None
    return out


def _json_ready(value: Any) -> Any:
    """``value`` with non-finite floats as strings ("inf", "nan"): result.json stays strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(item) for item in value]
    return value


def write_results(summary: dict[str, Any], out: Path) -> tuple[Path, Path | None]:
    """Write ``result.json`` and ``loss_vs_bits.png`` into ``out``; return their paths.

    Raises:
        RunError: if they cannot be written.
    """
    result = check_out(out) / "result.json"
    try:
        result.write_text(
            json.dumps(_json_ready(summary), indent=2, allow_nan=False) + "\n", encoding="utf-8"
        )
    except OSError as exc:
        raise RunError(f"cannot write {result}: {exc.strerror or exc}") from None
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
    try:
        figure.savefig(plot, dpi=120)
    except OSError as exc:
        raise RunError(f"cannot write {plot}: {exc.strerror or exc}") from None
    finally:
        plt.close(figure)
    return result, plot


#: What a model records file holds, in its metadata (written with :mod:`aiodq.net.checkpoint`).
_RECORDS = "model records"
_RECORD_COLUMNS = ("version", "epoch", "bytes_total", "time", "models")


def save_records(records: list[ModelRecord], path: Path) -> None:
    """Write the master's model records to one ``.npz`` file, atomically (``aiodq.net.checkpoint.save``)."""
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
