"""The paper's experiments on real data: ``aiodq experiment NAME`` (docs/results.md).

Every training run is a real cluster: a :class:`~aiodq.master.Master` in this
process and M worker processes on 127.0.0.1 (or, for ``network``, master and
workers in network namespaces joined by shaped links, :mod:`aiodq.netlab`).
The master keeps a copy of its model every few updates
(:class:`~aiodq.coordinator.ModelRecord`) together with the bytes on the wire
so far, both directions, everything counted; after the run each copy is
evaluated on the full training set.  Evaluation sends nothing and is not
counted.  "Bits to target" is the bit count of the first copy whose training
objective F(x) = (1/n) sum f_i(x) + R(x) is at or below the target.

Experiments:

- ``table1``: bits and time to target for every algorithm on each dataset, and
  each one's saving against its full-precision counterpart; loss against bits
  and against time, all algorithms in one figure per dataset.
- ``mu``: bits to target and final loss of AsyLPG for mu in
  {0.05, 0.1, 0.25, 0.5, 1, 2} and for gradient bits b in {2, 4, 8}.
- ``timing``: computation against encoding time per epoch, per algorithm.
- ``workers``: 4 workers against 8.
- ``network``: time to target on shaped links (needs root; skipped otherwise).
- ``all``: every one of them.

``--quick`` runs each on the bundled a9a with fewer epochs, to check the
runner end to end in under three minutes; its figures are not the results.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.optimize
from threadpoolctl import threadpool_limits

from .algorithms import ALGORITHMS, MasterState, TrainConfig, WorkerState, initial_model
from .config import DEFAULT_LIMITS
from .coordinator import ModelRecord
from .data import DataError, Dataset, load_dataset, load_mnist_idx, shard
from .events import Gradient
from .events import Model as ModelMessage
from .models import Model, make_model
from .wire.frames import FrameReader
from .wire.messages import DecodeContext, decode_message, encode_message

__all__ = [
    "DATASETS",
    "EXPERIMENTS",
    "Context",
    "DatasetSpec",
    "ExperimentError",
    "Point",
    "RunResult",
    "epoch_timing",
    "evaluate",
    "local_runner",
    "optimum",
    "run_experiment",
    "to_target",
]

#: Algorithms in the order of the paper's Table 1, and each one's full-precision counterpart.
TABLE_ALGORITHMS = ("asyfpg", "qsvrg", "model-only", "asylpg", "sparse-asylpg", "acc-asyfpg", "acc-asylpg")
MU_VALUES = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
BIT_VALUES = (2, 4, 8)


class ExperimentError(RuntimeError):
    """An experiment cannot run (missing data, a failed run): the message says why."""


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """One dataset of the experiments and the settings it is trained with."""

    #: Short name: ``a9a``, ``w8a``, ``mnist``.
    name: str
    #: The training file, relative to the data folder (None: the bundled a9a).
    train: str | None
    #: The test set (MNIST IDX images and labels), relative to the data folder, if any.
    test: tuple[str, str] | None
    #: Training settings shared by every algorithm (TrainConfig fields).
    settings: dict[str, Any]
    #: Settings of one algorithm that differ from ``settings``, by algorithm name.
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: An absolute target for the training objective (the paper's 0.05 for MNIST) ...
    target_loss: float | None = None
    #: ... or a relative gap to the optimum F* (logistic regression): target = F* (1 + gap).
    target_gap: float | None = None
    #: What the settings are, in words, for the results.
    describe: str = ""


def _lr_settings(epochs: int) -> dict[str, Any]:
    return {"model": "logistic", "epochs": epochs, "l2": 1e-4, "step": 0.5, "bits": 4, "mu": 0.5, "batch": 64}


#: The datasets, as docs/results.md describes them.  m is two passes over the data per epoch
#: (SVRG's customary m = 2n / B), which halves the share of the full-precision snapshot phase
#: in every algorithm's traffic against one pass (it stays large for the quantized variants on
#: the 5,000-image MNIST set; docs/results.md).
DATASETS: dict[str, DatasetSpec] = {
    "a9a": DatasetSpec(
        "a9a",
        "libsvm/a9a",
        None,
        _lr_settings(12),
        {"sparse-asylpg": {"phi": 0.25}},
        target_gap=1e-3,
        describe="logistic regression (d = 123), l2 = 1e-4, eta = 0.5, B = 64, b = 4, mu = 0.5 "
        "(Sparse-AsyLPG: phi = d/4); target F* (1 + 1e-3)",
    ),
    "w8a": DatasetSpec(
        "w8a",
        "libsvm/w8a",
        None,
        {**_lr_settings(12), "step": 2.0},
        {"sparse-asylpg": {"phi": 0.25}},
        target_gap=1e-3,
        describe="logistic regression (d = 300), l2 = 1e-4, eta = 2, B = 64, b = 4, mu = 0.5 "
        "(Sparse-AsyLPG: phi = d/4); target F* (1 + 1e-3)",
    ),
    "mnist": DatasetSpec(
        "mnist",
        "mnist/mnist_5k.csv.gz",
        ("mnist/t10k-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz"),
        {"model": "mlp", "hidden": 100, "epochs": 12, "l2": 1e-5, "step": 0.2, "bits": 4, "mu": 0.5},
        target_loss=0.05,
        describe="784-100-10 MLP, l2 = 1e-5, eta = 0.2, B = 64, b = 4, mu = 0.5; target loss 0.05",
    ),
}

#: The quick mode's dataset: the bundled a9a, few epochs.
QUICK = DatasetSpec(
    "a9a-bundled",
    None,
    None,
    _lr_settings(4),
    DATASETS["a9a"].overrides,
    target_gap=1e-2,
    describe="quick mode: bundled a9a, 4 epochs, target F* (1 + 1e-2)",
)


# -- evaluation -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Point:
    """One evaluated model copy."""

    #: Model version t.
    version: int
    #: Epoch s.
    epoch: int
    #: Bits on the wire so far, both directions.
    bits: int
    #: Seconds since the first snapshot phase began (all workers joined).
    time: float
    #: Training objective F(x) on the full training set.
    loss: float


def evaluate(config: TrainConfig, dataset: Dataset, records: Sequence[ModelRecord]) -> list[Point]:
    """F(x) on the full training set for every recorded model (not communication, not counted)."""
    if not records:
        return []
    model = make_model(config.model, dataset.features_count, dataset.classes, config.hidden)
    regularizer = config.regularizer
    start = records[0].time
    points = []
    for record in records:
        loss_sum, _, _ = model.loss_grad(record.model, dataset.features, dataset.labels)
        loss = loss_sum / dataset.samples + regularizer.value(record.model)
        points.append(
            Point(record.version, record.epoch, 8 * record.bytes_total, record.time - start, float(loss))
        )
    return points


def to_target(points: Sequence[Point], target: float) -> Point | None:
    """The first point whose loss is at or below ``target``, or None if the run never got there."""
    return next((p for p in points if p.loss <= target), None)


def optimum(dataset: Dataset, config: TrainConfig) -> float:
    """F* = min_x (1/n) sum f_i(x) + l2/2 ||x||^2 for a convex model (logistic or softmax regression).

    Found by scipy's L-BFGS-B to a tight tolerance from x = 0, with the same
    loss and gradient code the workers use.

    Raises:
        ExperimentError: for a non-convex model, an L1 term, or if L-BFGS-B does not converge.
    """
    if config.model not in ("logistic", "softmax") or config.l1:
        raise ExperimentError(f"no optimum for {config.model} with l1 = {config.l1}: give an absolute target")
    model = make_model(config.model, dataset.features_count, dataset.classes, config.hidden)
    n, l2 = dataset.samples, config.l2

    def objective(x: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        loss, grad, _ = model.loss_grad(x, dataset.features, dataset.labels)
        return loss / n + 0.5 * l2 * float(x @ x), grad / n + l2 * x

    result = scipy.optimize.minimize(
        objective,
        np.zeros(model.dim),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20_000, "gtol": 1e-11, "ftol": 1e-15},
    )
    # L-BFGS-B may stop on a failed line search at machine precision: accept that only
    # where the gradient is tiny.
    if not result.success and float(np.abs(result.jac).max()) > 1e-7:
        raise ExperimentError(f"L-BFGS-B did not find F* on {dataset.name}: {result.message}")
    return float(result.fun)


# -- runs ---------------------------------------------------------------------------


@dataclass(slots=True)
class RunResult:
    """One training run, evaluated."""

    #: The run's configuration.
    config: TrainConfig
    #: Number of workers M.
    workers: int
    #: The evaluated model copies.
    points: list[Point]
    #: The master's summary (trace, traffic, staleness, wall time).
    summary: dict[str, Any]
    #: The last model the master recorded (x_snap of the final snapshot phase).
    final_model: npt.NDArray[np.float64] | None = None

    def reached(self, target: float) -> Point | None:
        """See :func:`to_target`."""
        return to_target(self.points, target)

    def as_dict(self, target: float) -> dict[str, Any]:
        """A JSON-ready record: settings, figures to target, the loss curve."""
        hit = self.reached(target)
        traffic = self.summary["traffic"]
        return {
            "algorithm": self.config.algorithm,
            "config": self.config.to_params(),
            "workers": self.workers,
            "target": target,
            "bits_to_target": hit.bits if hit else None,
            "time_to_target": hit.time if hit else None,
            "epoch_at_target": hit.epoch if hit else None,
            "final_loss": self.points[-1].loss if self.points else None,
            "total_bits": 8 * traffic["total_bytes"]["both"],
            "wall_time": self.summary.get("wall_time"),
            "updates": self.summary["version"],
            "staleness": self.summary["staleness"],
            "wire_bytes": traffic["wire_bytes"],
            "points": [asdict(p) for p in self.points],
        }


Runner = Callable[[TrainConfig, int], RunResult]


def _updates_per_epoch(dataset: Dataset, config: TrainConfig) -> int:
    return 2 * math.ceil(dataset.samples / config.batch)


def _record_every(dataset: Dataset, config: TrainConfig) -> int:
    """Eight model copies per epoch of the run's own m (0 in the config: one pass, n / B)."""
    updates = config.updates_per_epoch or math.ceil(dataset.samples / config.batch)
    return max(1, updates // 8)


def local_runner(dataset: Dataset, data_path: str | None, *, progress: bool = False) -> Runner:
    """Runs on 127.0.0.1: the master here, the workers as processes (:func:`aiodq.runner.run_local`)."""
    from .runner import RunError, run_coroutine, run_local  # noqa: PLC0415 - runner imports rich

    def run(config: TrainConfig, workers: int) -> RunResult:
        records: list[ModelRecord] = []
        try:
            summary = run_coroutine(
                run_local(
                    config,
                    dataset,
                    data_path,
                    workers,
                    progress=progress,
                    record_every=_record_every(dataset, config),
                    records=records,
                )
            )
        except RunError as exc:
            raise ExperimentError(f"{config.algorithm} on {dataset.name}: {exc}") from exc
        final = records[-1].model if records else None
        return RunResult(config, workers, evaluate(config, dataset, records), summary, final)

    return run


# -- the experiments -----------------------------------------------------------------


@dataclass(slots=True)
class Context:
    """What every experiment gets: the data, the output folder, the options."""

    #: The data folder (``../shared/data`` layout), or None for the bundled a9a only.
    data: Path | None
    #: The output folder; each experiment writes into ``out / NAME``.
    out: Path
    #: Quick mode: bundled a9a, few epochs.
    quick: bool = False
    #: Datasets to use (names of :data:`DATASETS`); empty: every one whose files exist.
    datasets: tuple[str, ...] = ()
    #: Seeds per configuration; figures are medians over them.
    repeats: int = 1
    #: Print progress lines.
    log: Callable[[str], None] = print
    #: TrainConfig fields set in every run, over the datasets' settings (e.g. ``entropy_coding=False``).
    overrides: dict[str, Any] = field(default_factory=dict)
    _loaded: dict[str, tuple[Dataset, str | None, float]] = field(default_factory=dict)
    #: F* by dataset name, for the datasets whose target is a gap to the optimum.
    optima: dict[str, float] = field(default_factory=dict)
    #: Test sets by dataset name, loaded once.
    test_sets: dict[str, Dataset] = field(default_factory=dict)

    def specs(self) -> list[DatasetSpec]:
        """The datasets this run uses."""
        if self.quick:
            return [QUICK]
        if self.data is None:
            raise ExperimentError(
                "the experiments need the data folder (--data ../shared/data); "
                "--quick runs on the bundled a9a"
            )
        names = self.datasets or tuple(
            name for name, spec in DATASETS.items() if spec.train and (self.data / spec.train).exists()
        )
        unknown = [n for n in names if n not in DATASETS]
        if unknown:
            raise ExperimentError(f"unknown dataset {unknown[0]!r}: choose from {', '.join(DATASETS)}")
        if not names:
            raise ExperimentError(f"{self.data}: none of {', '.join(DATASETS)} is there")
        return [DATASETS[n] for n in names]

    def load(self, spec: DatasetSpec) -> tuple[Dataset, str | None, float]:
        """The dataset, its path for the workers, and the target loss."""
        if spec.name not in self._loaded:
            path = None
            if spec.train is not None:
                assert self.data is not None
                path = str((self.data / spec.train).resolve())
            try:
                dataset = load_dataset(path)
            except DataError as exc:
                raise ExperimentError(str(exc)) from exc
            if spec.target_loss is not None:
                target = spec.target_loss
            else:
                assert spec.target_gap is not None
                best = optimum(dataset, self.config(spec, dataset))
                self.optima[spec.name] = best
                target = best * (1 + spec.target_gap)
                self.log(f"{spec.name}: F* = {best:.8f}, target {target:.8f}")
            self._loaded[spec.name] = (dataset, path, target)
        return self._loaded[spec.name]

    def config(self, spec: DatasetSpec, dataset: Dataset, **overrides: Any) -> TrainConfig:
        """The dataset's settings (with the algorithm's own), m = 2n / B, and ``overrides``."""
        algorithm = overrides.get("algorithm", spec.settings.get("algorithm", "asylpg"))
        settings = {**spec.settings, **spec.overrides.get(algorithm, {}), **self.overrides, **overrides}
        base = TrainConfig(**settings)
        return replace(base, updates_per_epoch=_updates_per_epoch(dataset, base))

    def runs(
        self, spec: DatasetSpec, configs: Sequence[TrainConfig], workers: int = 4
    ) -> list[list[RunResult]]:
        """Every configuration over ``repeats`` seeds, on the local cluster."""
        dataset, path, target = self.load(spec)
        runner = local_runner(dataset, path)
        results = []
        for config in configs:
            repeats = []
            for seed in range(self.repeats):
                started = time.perf_counter()
                result = runner(replace(config, seed=config.seed + seed), workers)
                hit = result.reached(target)
                self.log(
                    f"  {spec.name} {config.algorithm:<14} M={workers} seed {config.seed + seed}: "
                    + (
                        f"target at {hit.bits / 1e6:.2f} Mbit, {hit.time:.2f} s"
                        if hit
                        else "target not reached"
                    )
                    + f"; final loss {result.points[-1].loss:.6f} ({time.perf_counter() - started:.1f} s)"
                )
                repeats.append(result)
            results.append(repeats)
        return results


def _median(values: Sequence[float | None]) -> float | None:
    """The median, or None if any run missed the target (a missed run is not averaged away)."""
    if not values or any(v is None for v in values):
        return None
    return float(statistics.median([v for v in values if v is not None]))


def _summarise(repeats: list[RunResult], target: float) -> dict[str, Any]:
    """Medians over the seeds of one setting; a figure is None unless every seed reached the target."""
    hits = [r.reached(target) for r in repeats]
    return {
        "algorithm": repeats[0].config.algorithm,
        "bits_to_target": _median([h.bits if h else None for h in hits]),
        "time_to_target": _median([h.time if h else None for h in hits]),
        "final_loss": _median([r.points[-1].loss if r.points else None for r in repeats]),
        "reached": sum(h is not None for h in hits),
        "runs": len(repeats),
    }


def _saving(rows: dict[str, dict[str, Any]], name: str, key: str = "bits_to_target") -> float | None:
    """The full-precision counterpart's figure over this algorithm's (None if either missed)."""
    baseline = rows.get(ALGORITHMS[name].baseline)
    mine = rows.get(name)
    if baseline is None or mine is None or baseline[key] is None or not mine[key]:
        return None
    return float(baseline[key] / mine[key])


def _reach(row: dict[str, Any], value: str) -> str:
    """``value``, or how many seeds reached the target when not all did."""
    if row["reached"] == row["runs"]:
        return value
    return f"not reached ({row['reached']}/{row['runs']} seeds did)" if row["reached"] else "not reached"


def _write(out: Path, name: str, payload: dict[str, Any], markdown: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    (out / f"{name}.md").write_text(markdown, encoding="utf-8")


def _times(value: float | None) -> str:
    """A ratio as ``12.34x``, or ``-`` where a run missed the target."""
    return "-" if value is None else f"{value:.2f}x"


def _num(value: float | None, digits: int) -> str:
    """``value`` to ``digits`` places, or ``-`` for None."""
    return "-" if value is None else f"{value:.{digits}f}"


def _fmt(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    """``value / scale`` to ``digits`` places, or ``not reached`` for None."""
    return "not reached" if value is None else f"{value / scale:.{digits}f}"


def _plot_curves(
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
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _test_accuracy(context: Context, spec: DatasetSpec, run: RunResult) -> float | None:
    """The final model's accuracy on the dataset's test set, if it has one."""
    if spec.test is None or context.data is None or run.final_model is None:
        return None
    images, labels = (context.data / part for part in spec.test)
    if not (images.exists() and labels.exists()):
        return None
    if spec.name not in context.test_sets:
        try:
            context.test_sets[spec.name] = load_mnist_idx(images, labels, name=f"{spec.name}-test")
        except DataError as exc:
            raise ExperimentError(f"{spec.name} test set: {exc}") from exc
    test = context.test_sets[spec.name]
    config = run.config
    model = make_model(config.model, test.features_count, test.classes, config.hidden)
    _, _, correct = model.loss_grad(run.final_model, test.features, test.labels)
    return float(correct / test.samples)


def experiment_table1(context: Context) -> dict[str, Any]:
    """Table 1: bits and time to target per algorithm and dataset, with savings."""
    out = context.out / "table1"
    report: dict[str, Any] = {"datasets": {}}
    lines = ["# Table 1: bits to target", ""]
    if context.overrides:
        lines += [f"Every run with {', '.join(f'{k} = {v}' for k, v in context.overrides.items())}.", ""]
    for spec in context.specs():
        dataset, _, target = context.load(spec)
        context.log(f"table1: {spec.name} ({dataset.samples} samples, d from the model), target {target:.6f}")
        configs = [context.config(spec, dataset, algorithm=name) for name in TABLE_ALGORITHMS]
        results = context.runs(spec, configs)
        rows = {repeats[0].config.algorithm: _summarise(repeats, target) for repeats in results}
        for name, row in rows.items():
            row["saving_bits"] = _saving(rows, name)
            row["saving_time"] = _saving(rows, name, "time_to_target")
            row["baseline"] = ALGORITHMS[name].baseline
        first = {repeats[0].config.algorithm: repeats[0] for repeats in results}
        for repeats in results:
            accuracies = [_test_accuracy(context, spec, run) for run in repeats]
            rows[repeats[0].config.algorithm]["test_accuracy"] = (
                None if None in accuracies else statistics.median(a for a in accuracies if a is not None)
            )
        _plot_curves(
            out / f"{spec.name}_loss.png",
            f"{spec.name}: {spec.describe}",
            first,
            target,
            context.optima.get(spec.name),
        )
        report["datasets"][spec.name] = {
            "describe": spec.describe,
            "samples": dataset.samples,
            "dim": results[0][0].summary["dim"],
            "target": target,
            "rows": rows,
            "runs": {name: run.as_dict(target) for name, run in first.items()},
        }
        lines += [
            f"## {spec.name}: {spec.describe}",
            "",
            f"n = {dataset.samples}, d = {results[0][0].summary['dim']}, 4 workers, "
            f"target loss {target:.6f}, "
            f"median of {context.repeats} run(s) per row.",
            "",
            "| algorithm | Mbit to target | against | bits saving | s to target | time saving | final loss "
            "| test accuracy |",
            "|---|---:|---|---:|---:|---:|---:|---:|",
        ]
        for name, row in rows.items():
            accuracy = row["test_accuracy"]
            lines.append(
                f"| {name} | {_reach(row, _fmt(row['bits_to_target'], 1e6))} | {row['baseline']} | "
                f"{_times(row['saving_bits'])} | {_reach(row, _fmt(row['time_to_target']))} | "
                f"{_times(row['saving_time'])} | "
                f"{_num(row['final_loss'], 6)} | {_num(accuracy, 4)} |"
            )
        lines += ["", f"![loss against bits and time]({spec.name}_loss.png)", ""]
    _write(out, "table1", report, "\n".join(lines) + "\n")
    return report


def experiment_mu(context: Context) -> dict[str, Any]:
    """AsyLPG's bits to target and final loss against mu, and against the gradient bits b."""
    out = context.out / "mu"
    report: dict[str, Any] = {"datasets": {}}
    lines = ["# The mu study and the gradient bits", ""]
    mus = MU_VALUES[2:5] if context.quick else MU_VALUES
    for spec in context.specs():
        dataset, _, target = context.load(spec)
        context.log(f"mu: {spec.name}, target {target:.6f}")
        reference = _summarise(
            context.runs(spec, [context.config(spec, dataset, algorithm="asyfpg")])[0], target
        )
        sweeps: dict[str, list[dict[str, Any]]] = {"mu": [], "bits": []}
        for key, values in (("mu", mus), ("bits", BIT_VALUES)):
            configs = [context.config(spec, dataset, algorithm="asylpg", **{key: value}) for value in values]
            for value, repeats in zip(values, context.runs(spec, configs), strict=True):
                row = _summarise(repeats, target)
                row[key] = value
                bits = row["bits_to_target"]
                row["saving_bits"] = (
                    reference["bits_to_target"] / bits if bits and reference["bits_to_target"] else None
                )
                sweeps[key].append(row)
        report["datasets"][spec.name] = {"target": target, "asyfpg": reference, **sweeps}
        lines += [f"## {spec.name}: {spec.describe}", ""]
        lines.append(f"AsyFPG reference: {_fmt(reference['bits_to_target'], 1e6)} Mbit to target.")
        for key, label in (("mu", "mu (b fixed)"), ("bits", "b (mu fixed)")):
            lines += [
                "",
                f"| {label} | Mbit to target | saving vs AsyFPG | final loss |",
                "|---:|---:|---:|---:|",
            ]
            for row in sweeps[key]:
                lines.append(
                    f"| {row[key]} | {_fmt(row['bits_to_target'], 1e6)} | {_times(row['saving_bits'])} | "
                    f"{row['final_loss']:.6f} |"
                )
        lines.append("")
        _plot_sweeps(out / f"{spec.name}_mu.png", spec.name, sweeps)
        lines += [f"![mu and b]({spec.name}_mu.png)", ""]
    _write(out, "mu", report, "\n".join(lines) + "\n")
    return report


def _plot_sweeps(path: Path, name: str, sweeps: dict[str, list[dict[str, Any]]]) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, key, label in zip(axes, ("mu", "bits"), ("mu", "gradient bits b"), strict=True):
        rows = sweeps[key]
        xs = [row[key] for row in rows]
        ys = [row["bits_to_target"] / 1e6 if row["bits_to_target"] else math.nan for row in rows]
        axis.plot(xs, ys, marker="o")
        axis.set_xscale("log", base=2)
        axis.set_xlabel(label)
        axis.set_ylabel("Mbit to target")
        axis.grid(True, which="both", alpha=0.3)
    figure.suptitle(f"AsyLPG on {name}: bits to target")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def epoch_timing(config: TrainConfig, dataset: Dataset, workers: int, *, epochs: int = 1) -> dict[str, Any]:
    """Seconds per epoch of computation and of encoding, measured in this process, one update at a time.

    Computation: the worker's step (``WorkerState.variance_reduced``: rebuilding x_hat from the
    decoded model, the two mini-batch gradients) and the master's update (``MasterState.apply``,
    which expands the decoded gradient).  Encoding: the model quantizer and the gradient
    compressor, and framing and decoding both messages to vector values (DENSE_RICE included).
    The snapshot phase (full-precision sums, identical for all algorithms) is left out.  Each
    call replays the first ``epochs`` epochs from x_0.

    Returns:
        ``computation`` and ``encoding`` in seconds per epoch, and ``updates``, the epoch's m.
    """
    model = make_model(config.model, dataset.features_count, dataset.classes, config.hidden)
    master = MasterState(config, initial_model(config, dataset.features_count, dataset.classes))
    part = dataset.rows(shard(dataset.samples, workers, 0, seed=config.seed))
    worker = WorkerState(config, model, part.features, part.labels, 0)
    context = DecodeContext(dim=model.dim)
    compute = encode = 0.0
    # One BLAS thread, as in every worker process (aiodq.runner.worker_main).
    with threadpool_limits(1, user_api="blas"):
        for _ in range(epochs):
            seconds = _timed_epoch(master, worker, model=model, dataset=dataset, context=context)
            compute += seconds[0]
            encode += seconds[1]
    return {"computation": compute / epochs, "encoding": encode / epochs, "updates": master.updates_per_epoch}


def _timed_epoch(
    master: MasterState, worker: WorkerState, *, model: Model, dataset: Dataset, context: DecodeContext
) -> tuple[float, float]:
    """One epoch of :func:`epoch_timing`; returns its ``(computation, encoding)`` seconds."""
    clock = time.perf_counter
    compute = encode = 0.0
    _, gradient_sum, _ = model.loss_grad(master.snapshot, dataset.features, dataset.labels)
    worker.snapshot_phase(master.snapshot)
    master.finish_snapshot_phase(gradient_sum, 0.0, dataset.samples)
    worker.set_full_gradient(master.full_gradient)
    while not master.epoch_done:
        t0 = clock()
        vector, relative = master.model_message()
        down = encode_message(
            ModelMessage(epoch=master.epoch, version=master.version, vector=vector, relative=relative)
        )
        received = _decode(down, context)
        assert isinstance(received, ModelMessage)
        t1 = clock()
        alpha = worker.variance_reduced(received.vector, received.relative)
        t2 = clock()
        up = encode_message(
            Gradient(epoch=master.epoch, version=master.version, vector=worker.compress(alpha))
        )
        gradient = _decode(up, context)
        assert isinstance(gradient, Gradient)
        t3 = clock()
        master.apply(gradient.vector, gradient.version)
        t4 = clock()
        encode += (t1 - t0) + (t3 - t2)
        compute += (t2 - t1) + (t4 - t3)
    master.end_epoch()
    return compute, encode


def _decode(data: bytes, context: DecodeContext) -> Any:
    reader = FrameReader(DEFAULT_LIMITS)
    reader.feed(data)
    frame = reader.next_frame()
    assert frame is not None
    return decode_message(frame, context)


def experiment_timing(context: Context) -> dict[str, Any]:
    """Computation against encoding time per epoch, per algorithm (median over 3 epochs' measurements)."""
    out = context.out / "timing"
    report: dict[str, Any] = {"datasets": {}}
    lines = ["# Computation against encoding time per epoch", ""]
    for spec in context.specs():
        dataset, _, _ = context.load(spec)
        rows = {}
        for name in TABLE_ALGORITHMS:
            config = context.config(spec, dataset, algorithm=name)
            samples = [epoch_timing(config, dataset, 4) for _ in range(1 if context.quick else 3)]
            rows[name] = {
                "computation": statistics.median(s["computation"] for s in samples),
                "encoding": statistics.median(s["encoding"] for s in samples),
                "updates": samples[0]["updates"],
            }
            context.log(
                f"timing: {spec.name} {name:<14} computation {rows[name]['computation']:.3f} s, "
                f"encoding {rows[name]['encoding']:.3f} s per epoch"
            )
        report["datasets"][spec.name] = rows
        lines += [
            f"## {spec.name}: {spec.describe}",
            "",
            f"m = {next(iter(rows.values()))['updates']} updates per epoch, measured in one process "
            "with one BLAS thread, as in every worker process.",
            "",
            "| algorithm | computation s/epoch | encoding s/epoch | encoding share |",
            "|---|---:|---:|---:|",
        ]
        for name, row in rows.items():
            share = row["encoding"] / (row["encoding"] + row["computation"])
            lines.append(f"| {name} | {row['computation']:.3f} | {row['encoding']:.3f} | {share:.0%} |")
        lines.append("")
    _write(out, "timing", report, "\n".join(lines) + "\n")
    return report


def experiment_workers(context: Context) -> dict[str, Any]:
    """4 workers against 8: bits and time to target, updates per second, staleness."""
    out = context.out / "workers"
    report: dict[str, Any] = {"datasets": {}}
    lines = ["# 4 workers against 8", ""]
    counts = (2, 4) if context.quick else (4, 8)
    for spec in context.specs():
        dataset, _, target = context.load(spec)
        rows = []
        for workers in counts:
            configs = [
                context.config(spec, dataset, algorithm=name) for name in ("asyfpg", "asylpg", "acc-asylpg")
            ]
            for repeats in context.runs(spec, configs, workers=workers):
                row = _summarise(repeats, target)
                run = repeats[0]
                row["workers"] = workers
                elapsed = run.points[-1].time if run.points else 0.0
                row["updates_per_second"] = run.summary["version"] / elapsed if elapsed > 0 else None
                row["staleness_mean"] = run.summary["staleness"]["mean"]
                row["applied"] = run.summary["staleness"]["applied"]
                row["staleness_max"] = run.summary["staleness"]["max"]
                row["dropped"] = run.summary["staleness"]["dropped"]
                rows.append(row)
        report["datasets"][spec.name] = {"target": target, "rows": rows}
        lines += [
            f"## {spec.name}: {spec.describe}",
            "",
            "| M | algorithm | Mbit to target | s to target | final loss | updates/s | mean staleness | max "
            "| applied | dropped |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['workers']} | {row['algorithm']} | "
                f"{_reach(row, _fmt(row['bits_to_target'], 1e6))} | "
                f"{_reach(row, _fmt(row['time_to_target']))} | {_num(row['final_loss'], 6)} | "
                f"{_num(row['updates_per_second'], 0)} | {row['staleness_mean']:.2f} | "
                f"{row['staleness_max']} | {row['applied']} | {json.dumps(row['dropped'])} |"
            )
        lines.append("")
    _write(out, "workers", report, "\n".join(lines) + "\n")
    return report


def experiment_network(context: Context) -> dict[str, Any]:
    """Time to target on shaped links in network namespaces (root only; skipped otherwise)."""
    from . import netlab  # noqa: PLC0415 - Linux-only tooling

    out = context.out / "network"
    reason = netlab.namespaces_unavailable()
    if reason is not None:
        context.log(f"network: skipped, {reason}")
        report: dict[str, Any] = {"skipped": reason}
        _write(out, "network", report, f"# Shaped network\n\nSkipped: {reason}\n")
        return report
    report = {"datasets": {}}
    lines = ["# Time to target on shaped links", ""]
    links = [netlab.Link(100.0)] if context.quick else [netlab.Link(100.0), netlab.Link(1000.0)]
    names = ("asyfpg", "asylpg") if context.quick else TABLE_ALGORITHMS
    specs = context.specs()
    if not context.quick and not context.datasets:
        specs = [s for s in specs if s.name == "mnist"] or specs
    for spec in specs:
        dataset, path, target = context.load(spec)
        rows: list[dict[str, Any]] = []
        curves: dict[str, dict[str, RunResult]] = {}
        for link in links:
            runs = curves.setdefault(link.describe(), {})
            for name in names:
                config = context.config(spec, dataset, algorithm=name)
                records_out = out / f"{spec.name}-{name}-{int(link.rate_mbit)}mbit"
                try:
                    summary, records = netlab.run_cluster(
                        config,
                        workers=4,
                        link=link,
                        data=path,
                        out=records_out,
                        record_every=_record_every(dataset, config),
                    )
                except (netlab.NetLabError, ValueError) as exc:
                    raise ExperimentError(f"network: {name} on {link.describe()}: {exc}") from exc
                run = RunResult(config, 4, evaluate(config, dataset, records), summary)
                row = _summarise([run], target)
                row["link"] = link.describe()
                row["rate_mbit"] = link.rate_mbit
                rows.append(row)
                runs[name] = run
                context.log(
                    f"network: {spec.name} {name:<14} {link.describe()}: "
                    + (
                        f"target in {row['time_to_target']:.2f} s"
                        if row["time_to_target"] is not None
                        else "target not reached"
                    )
                )
        for row in rows:
            baseline = next(
                (r for r in rows if r["algorithm"] == "asyfpg" and r["rate_mbit"] == row["rate_mbit"]), None
            )
            mine = row["time_to_target"]
            row["sooner_than_asyfpg"] = (
                baseline["time_to_target"] / mine
                if baseline and baseline["time_to_target"] is not None and mine
                else None
            )
        report["datasets"][spec.name] = {
            "target": target,
            "rows": rows,
            "runs": {
                link: {name: run.as_dict(target) for name, run in runs.items()}
                for link, runs in curves.items()
            },
        }
        figures = []
        for shaped in links:
            figure = f"{spec.name}_network_{shaped.rate_mbit:g}mbit.png"
            label = shaped.describe()
            _plot_curves(
                out / figure,
                f"{spec.name}, every link {label}",
                curves[label],
                target,
                context.optima.get(spec.name),
            )
            figures.append(figure)
        lines += [
            f"## {spec.name}: {spec.describe}",
            "",
            "Master and 4 workers in separate network namespaces, a star through a bridge, every link "
            "shaped both ways.",
            "",
            "| link | algorithm | s to target | sooner than AsyFPG | Mbit to target | final loss |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['link']} | {row['algorithm']} | {_fmt(row['time_to_target'])} | "
                f"{_times(row['sooner_than_asyfpg'])} | {_fmt(row['bits_to_target'], 1e6)} | "
                f"{row['final_loss']:.6f} |"
            )
        lines += ["", *(f"![loss on shaped links]({figure})" for figure in figures), ""]
    _write(out, "network", report, "\n".join(lines) + "\n")
    return report


#: Every experiment by name.
EXPERIMENTS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "table1": experiment_table1,
    "mu": experiment_mu,
    "timing": experiment_timing,
    "workers": experiment_workers,
    "network": experiment_network,
}


def run_experiment(name: str, context: Context) -> dict[str, dict[str, Any]]:
    """Run one experiment, or ``all``; return their reports by name.

    Raises:
        ExperimentError: for an unknown name, missing data or a failed run.
    """
    if name != "all" and name not in EXPERIMENTS:
        raise ExperimentError(f"unknown experiment {name!r}: choose all or one of {', '.join(EXPERIMENTS)}")
    names = list(EXPERIMENTS) if name == "all" else [name]
    context.specs()  # fail early on a missing data folder or dataset
    reports = {}
    for each in names:
        started = time.perf_counter()
        reports[each] = EXPERIMENTS[each](context)
        context.log(f"{each}: done in {time.perf_counter() - started:.1f} s, written to {context.out / each}")
    return reports
