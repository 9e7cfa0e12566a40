"""The experiments' reports: medians, savings, Markdown tables, JSON files and figures."""

from __future__ import annotations

import json
import math
import statistics
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..protocol.algorithms import ALGORITHMS
from .runs import TABLE_ALGORITHMS, RunResult, strict_json

__all__ = [
    "bits_account",
    "fmt",
    "median",
    "num",
    "pace",
    "plot_curves",
    "plot_sweeps",
    "reach",
    "saving",
    "summarise",
    "times",
    "write_report",
]


#: The parts of "bits to target", by the message kinds (``direction/kind``) they count.
_ACCOUNT = (
    ("models", ("down/MODEL",)),
    ("gradients", ("up/GRADIENT",)),
    ("snapshot phases", ("down/SNAPSHOT", "up/SNAPSHOT_GRADIENT", "down/FULL_GRADIENT")),
    ("frame headers", ("down/header", "up/header")),
)


def bits_account(run: dict[str, Any], dim: int) -> dict[str, Any] | None:
    """Where a run's bits to target went: the bytes by kind at the record that reached it.

    ``run`` is :meth:`RunResult.as_dict`.  Returns Mbit per part (``models``, ``gradients``,
    ``snapshot phases``, ``frame headers`` and ``control``: the handshake, CONFIG, HEARTBEAT,
    ERROR and CLOSE), the updates applied by then, and the model and gradient bits per coordinate per
    update; None if the run missed the target or its records lack the bytes by kind.
    """
    by_kind, version = run.get("wire_bytes_to_target"), run.get("version_at_target")
    if not by_kind or version is None:
        return None
    parts = {name: 8 * sum(by_kind.get(kind, 0) for kind in kinds) for name, kinds in _ACCOUNT}
    parts["control"] = 8 * sum(by_kind.values()) - sum(parts.values())
    updates = max(1, version)
    return {
        "updates": version,
        "mbit": {name: bits / 1e6 for name, bits in parts.items()},
        "model_bits_per_coordinate": parts["models"] / updates / dim,
        "gradient_bits_per_coordinate": parts["gradients"] / updates / dim,
    }


def median(values: Sequence[float | None]) -> float | None:
    """The median, or None if any run missed the target (a missed run is not averaged away)."""
    if not values or any(v is None for v in values):
        return None
    return float(statistics.median([v for v in values if v is not None]))


def summarise(repeats: list[RunResult], target: float) -> dict[str, Any]:
    """Medians over the seeds of one setting; a figure is None unless every seed reached the target."""
    hits = [r.reached(target) for r in repeats]
    return {
        "algorithm": repeats[0].config.algorithm,
        "bits_to_target": median([h.bits if h else None for h in hits]),
        "time_to_target": median([h.time if h else None for h in hits]),
        # Applied updates (the model version) at the target.
        "updates_to_target": median([h.version if h else None for h in hits]),
        "final_loss": median([r.points[-1].loss if r.points else None for r in repeats]),
        "reached": sum(h is not None for h in hits),
        "runs": len(repeats),
    }


def pace(repeats: list[RunResult]) -> dict[str, Any]:
    """Medians over the seeds of a setting's updates per second, staleness and drops (each reason's).

    Counts stay integers where their median is one.  (A lab audit: the workers experiment took these
    from the first seed only, beside medians.)
    """
    every = [r.summary["staleness"] for r in repeats]
    times = [r.points[-1].time if r.points else 0.0 for r in repeats]
    rates = [r.summary["version"] / t if t > 0 else None for r, t in zip(repeats, times, strict=True)]
    reasons = sorted({reason for staleness in every for reason in staleness["dropped"]})

    def count(values: list[int]) -> float | int | None:
        value = median(values)
        return int(value) if value is not None and value.is_integer() else value

    return {
        "updates_per_second": median(rates),
        "staleness_mean": median([staleness["mean"] for staleness in every]),
        "applied": count([staleness["applied"] for staleness in every]),
        "staleness_max": count([staleness["max"] for staleness in every]),
        "dropped": {reason: count([s["dropped"].get(reason, 0) for s in every]) for reason in reasons},
    }


def saving(rows: dict[str, dict[str, Any]], name: str, key: str = "bits_to_target") -> float | None:
    """The full-precision counterpart's figure over this algorithm's (None if either missed)."""
    baseline = rows.get(ALGORITHMS[name].baseline)
    mine = rows.get(name)
    if baseline is None or mine is None or baseline[key] is None or not mine[key]:
        return None
    return float(baseline[key] / mine[key])


def reach(row: dict[str, Any], value: str) -> str:
    """``value``, or how many seeds reached the target when not all did."""
    if row["reached"] == row["runs"]:
        return value
    return f"not reached ({row['reached']}/{row['runs']} seeds did)" if row["reached"] else "not reached"


def write_report(
    out: Path, name: str, payload: dict[str, Any], markdown: str, settings: dict[str, Any] | None = None
) -> None:
    """Write ``name``.json and ``name``.md into ``out``; the JSON starts with ``settings``, if given.

    The JSON is strict (RFC 8259): a figure that is NaN or infinite is written as null, as in runs.jsonl.
    """
    out.mkdir(parents=True, exist_ok=True)
    if settings is not None:
        payload = {"settings": settings, **payload}
    (out / f"{name}.json").write_text(
        json.dumps(strict_json(payload), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    (out / f"{name}.md").write_text(markdown, encoding="utf-8")


def times(value: float | None) -> str:
    """A ratio as ``12.34x``, or ``-`` where a run missed the target."""
    return "-" if value is None else f"{value:.2f}x"


def num(value: float | None, digits: int) -> str:
    """``value`` to ``digits`` places, or ``-`` for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    """``value / scale`` to ``digits`` places, or ``not reached`` for None."""
    return "not reached" if value is None else f"{value / scale:.{digits}f}"


def plot_curves(
    path: Path, title: str, runs: dict[str, RunResult], target: float, optimum: float | None = None
) -> None:
    """Loss against bits and against time, one line per algorithm, in one PNG.

    With ``optimum`` the curves show the suboptimality F(x) - F*, on a log scale.
    """
    import matplotlib  # noqa: PLC0415 - plotting is for the experiments only

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, (by_bits, by_time) = plt.subplots(1, 2, figsize=(11, 4.2))
    palette = plt.get_cmap("tab10")
    for name, run in runs.items():
        bits = [max(p.bits, 1) for p in run.points]
        # F - F* can reach 0 (or round below it) at the end: keep it on the log scale.
        floor = (target - optimum) / 1000 if optimum is not None else 0.0
        losses = [max(p.loss - (optimum or 0.0), floor) for p in run.points]
        # One colour per algorithm in every figure; full precision dashed.
        algorithm = run.config.algorithm
        style = {
            "color": palette(TABLE_ALGORITHMS.index(algorithm) % 10)
            if algorithm in TABLE_ALGORITHMS
            else None,
            "linestyle": "--" if ALGORITHMS[algorithm].model == "float32" else "-",
            "linewidth": 1.4,
            "label": name,
        }
        by_bits.plot(bits, losses, **style)
        by_time.plot([p.time for p in run.points], losses, **style)
    for axis, label in ((by_bits, "bits transmitted, both directions"), (by_time, "seconds")):
        axis.axhline(target - (optimum or 0.0), color="grey", linestyle=":", linewidth=1)
        axis.set_yscale("log")
        axis.set_xlabel(label)
        axis.set_ylabel("training loss F(x)" if optimum is None else "F(x) - F*, training set")
        axis.grid(True, which="both", alpha=0.3)
    by_bits.set_xscale("log")
    by_bits.legend(fontsize=8)
    figure.suptitle(textwrap.fill(title, 120), fontsize=10)  # a long settings line wraps
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def plot_sweeps(
    path: Path, name: str, sweeps: dict[str, list[dict[str, Any]]], labels: list[tuple[str, str]]
) -> None:
    """Bits to target against each swept setting, one panel per ``(key, label)`` of ``labels``."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 3.8), squeeze=False)
    for axis, (key, label) in zip(axes[0], labels, strict=True):
        rows = sweeps[key]
        xs = [row[key] for row in rows]
        ys = [row["bits_to_target"] / 1e6 if row["bits_to_target"] else math.nan for row in rows]
        axis.plot(xs, ys, marker="o")
        axis.set_xscale("log", base=2)
        axis.set_xlabel(label)
        axis.set_ylabel("Mbit to target")
        axis.grid(True, which="both", alpha=0.3)
    figure.suptitle(f"{name}: bits to target")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
