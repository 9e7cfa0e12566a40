"""The experiments' building blocks: datasets and their settings, runs, evaluation and the context.

A run is a real cluster (:func:`local_runner`); its model records are evaluated
afterwards on the full training set (:func:`evaluate`), and the bits and time
to a target are read off the evaluated points (:func:`to_target`).
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.optimize

from ..data import load_dataset
from ..errors import DataError, RunError, UnusedOptionWarning, UsageError
from ..launch.local import RESTART_HINT, run_cluster, run_coroutine
from ..launch.models import objective_for
from ..launch.results import free_suffix
from ..protocol.accounting import ModelRecord
from ..protocol.algorithms import TrainConfig
from ..protocol.dataset import Dataset
from ..protocol.objectives import Objective
from ..version import __version__

__all__ = [
    "DATASETS",
    "TABLE_ALGORITHMS",
    "Context",
    "DatasetSpec",
    "ExperimentError",
    "Point",
    "RunResult",
    "evaluate",
    "local_runner",
    "optimum",
    "record_every",
    "strict_json",
    "to_target",
]

#: Algorithms in the order of the paper's Table 1, and each one's full-precision counterpart.
TABLE_ALGORITHMS = ("asyfpg", "qsvrg", "model-only", "asylpg", "sparse-asylpg", "acc-asyfpg", "acc-asylpg")
MU_VALUES = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
#: The gradient bits of the b study; 5 and 6 because on debdesc b = 4 costs updates (docs/results.md).
BIT_VALUES = (2, 4, 5, 6, 8)
#: Sparse-AsyLPG's budgets in the phi sweep, as fractions of d: d/100, d/20, d/4.
PHI_VALUES = (0.01, 0.05, 0.25)


class ExperimentError(RunError):
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
    #: Model copies kept per epoch: the resolution of "bits to target" (a record interval).
    records_per_epoch: int = 8


def _lr_settings(epochs: int) -> dict[str, Any]:
    return {"model": "logistic", "epochs": epochs, "l2": 1e-4, "step": 0.5, "bits": 4, "mu": 0.5, "batch": 64}


#: debdesc's step and epochs (docs/results.md, "Settings": in the simulator, the step that brings
#: the slower of AsyFPG and AsyLPG to the target in the fewest updates).
DEBDESC_STEP = 16.0
DEBDESC_EPOCHS = 5

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
    "debdesc": DatasetSpec(
        "debdesc",
        "libsvm/debdesc.gz",
        None,
        {**_lr_settings(DEBDESC_EPOCHS), "step": DEBDESC_STEP},
        {"sparse-asylpg": {"phi": 0.05}},
        target_gap=1e-3,
        describe=f"logistic regression (d = 20,958, sparse TF-IDF text, the size of the paper's real-sim), "
        f"l2 = 1e-4, eta = {DEBDESC_STEP:g}, B = 64, b = 4, mu = 0.5 (Sparse-AsyLPG: phi = d/20); "
        "target F* (1 + 1e-3)",
        records_per_epoch=64,
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
    _lr_settings(3),
    DATASETS["a9a"].overrides,
    target_gap=1e-2,
    describe="quick mode: bundled a9a, 3 epochs, target F* (1 + 1e-2)",
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
    #: The bytes so far by direction and kind (``"down/MODEL"`` ...; :class:`ModelRecord`).
    wire_bytes: dict[str, int] = field(default_factory=dict, compare=False)


def _objective(config: TrainConfig, dataset: Dataset) -> Objective:
    """The run's objective on the whole of ``dataset`` (its labels mapped as the model reads them)."""
    try:
        return objective_for(config, dataset, training_set=True)
    except UsageError as exc:
        raise ExperimentError(str(exc)) from exc


def evaluate(config: TrainConfig, dataset: Dataset, records: Sequence[ModelRecord]) -> list[Point]:
    """F(x) on the full training set for every recorded model (not communication, not counted)."""
    if not records:
        return []
    model = _objective(config, dataset)
    regularizer = config.regularizer
    start = records[0].time
    points = []
    for record in records:
        loss_sum, _ = model.loss_grad(record.model)
        loss = loss_sum / dataset.samples + regularizer.value(record.model)
        points.append(
            Point(
                record.version,
                record.epoch,
                8 * record.bytes_total,
                record.time - start,
                float(loss),
                record.wire_bytes,
            )
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
    model = _objective(config, dataset)
    n, l2 = dataset.samples, config.l2

    def objective(x: npt.NDArray[np.float64]) -> tuple[float, npt.NDArray[np.float64]]:
        loss, grad = model.loss_grad(x)
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
            "version_at_target": hit.version if hit else None,
            "final_loss": self.points[-1].loss if self.points else None,
            "total_bits": 8 * traffic["total_bytes"]["both"],
            "wall_time": self.summary.get("wall_time"),
            "updates": self.summary["version"],
            "staleness": self.summary["staleness"],
            "wire_bytes": traffic["wire_bytes"],
            "wire_bytes_to_target": hit.wire_bytes if hit else None,
            "points": [{k: v for k, v in asdict(p).items() if k != "wire_bytes"} for p in self.points],
            # With adaptive_coding: what the master chose and measured (docs/algorithms.md 10).
            **(
                {"adaptive_coding": self.summary["adaptive_coding"]}
                if "adaptive_coding" in self.summary
                else {}
            ),
        }


Runner = Callable[[TrainConfig, int], RunResult]


def _updates_per_epoch(dataset: Dataset, config: TrainConfig) -> int:
    return 2 * math.ceil(dataset.samples / config.batch)


def record_every(dataset: Dataset, config: TrainConfig, per_epoch: int = 8) -> int:
    """Updates between model copies: ``per_epoch`` copies per epoch of the run's own m (0: n / B)."""
    updates = config.updates_per_epoch or math.ceil(dataset.samples / config.batch)
    return max(1, updates // per_epoch)


def local_runner(
    dataset: Dataset,
    data_path: str | None,
    *,
    progress: bool = False,
    records_per_epoch: int = 8,
    worker_nice: int | None = None,
) -> Runner:
    """Runs on 127.0.0.1: the master here, the workers as processes (:func:`aiodq.launch.local.run_local`).

    ``worker_nice``: the workers' nice steps below the master (None: the launcher's default, 4).
    """

    def run(config: TrainConfig, workers: int) -> RunResult:
        records: list[ModelRecord] = []
        try:
            result = run_coroutine(
                run_cluster(
                    config,
                    dataset,
                    data_path,
                    _objective(config, dataset),
                    workers=workers,
                    progress=progress,
                    timeout=3600.0,
                    master_config=None,
                    record_every=record_every(dataset, config, records_per_epoch),
                    records=records,
                    worker_nice=worker_nice,
                )
            )
            summary = result.to_json()
        except RunError as exc:  # (its hint names options that aiodq experiment does not have)
            said = str(exc).removesuffix(RESTART_HINT)
            raise ExperimentError(f"{config.algorithm} on {dataset.name}: {said}") from exc
        final = records[-1].model if records else None
        return RunResult(config, workers, evaluate(config, dataset, records), summary, final)

    return run


def strict_json(value: Any) -> Any:
    """``value`` for strict JSON: numpy's numbers as Python's, NaN and infinities as None, recursively."""
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    return None if isinstance(value, float) and not math.isfinite(value) else value


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
    #: The workers' nice steps below the master, on 127.0.0.1 and in the network lab (None: 4).
    worker_nice: int | None = None
    _loaded: dict[str, tuple[Dataset, str | None, float]] = field(default_factory=dict)
    #: F* by dataset name, for the datasets whose target is a gap to the optimum.
    optima: dict[str, float] = field(default_factory=dict)
    #: Test sets by dataset name, loaded once.
    test_sets: dict[str, Dataset] = field(default_factory=dict)
    #: Every run so far by (dataset, configuration with its seed, workers), shared by :meth:`runs`.
    done: dict[tuple[str, TrainConfig, int], RunResult] = field(default_factory=dict)
    #: Where :meth:`keep` appends each run as it ends (``OUT/NAME/runs.jsonl``); None: nowhere.
    record: Path | None = None
    _kept: set[tuple[str, TrainConfig, int, tuple[tuple[str, str], ...]]] = field(default_factory=set)

    def begin(self, name: str) -> None:
        """Make ``OUT/NAME`` for experiment ``name``, its earlier results moved aside; start its runs.jsonl.

        Earlier results go to ``NAME.earlier`` (or ``.earlier.N``, the first N free): a researcher's
        trial following results.md's commands in order had the first one's results replaced without a
        word.  Moved as the experiment starts: one refused or failing before leaves the rest as they were.

        Raises:
            ExperimentError: if the folder cannot be made.
        """
        folder = self.out / name
        try:
            if folder.is_dir() and any(folder.iterdir()):
                aside = self.out / (name + free_suffix(self.out, [name]))
                folder.rename(aside)
                self.log(f"{name}: moved the earlier results aside to {aside}")
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ExperimentError(f"cannot make {folder} ({exc.strerror or exc})") from exc
        self.record = folder / "runs.jsonl"
        self._kept.clear()

    def keep(self, spec: DatasetSpec, result: RunResult, target: float, **where: str) -> None:
        """Append ``result`` (:meth:`RunResult.as_dict`, its dataset, ``where``) to :attr:`record` as it ends.

        The tables are written when an experiment ends; a researcher's trial stopped one after six
        runs and lost them all.  A run kept here stays: one JSON line each (non-finite numbers as
        null), written before the next run.  A run shared with an earlier experiment is kept again
        in this one's file, once.
        """
        key = (spec.name, result.config, result.workers, tuple(where.items()))  # (not id(): ids are reused)
        if self.record is None or key in self._kept:
            return
        self._kept.add(key)
        line = json.dumps(strict_json({"dataset": spec.name, **where, **result.as_dict(target)}))
        with self.record.open("a", encoding="utf-8") as stream:
            stream.write(line + "\n")

    def describe(self, spec: DatasetSpec, *, rows_set_bits: bool = False) -> str:
        """``spec``'s description, with the gradient bits every run is given (``--bits``) in place of its own.

        ``rows_set_bits``: the table's rows set b themselves where they say so (the b study).
        """
        bits = self.overrides.get("bits")
        if bits is None:
            return spec.describe
        given = f"b = {bits} (--bits{'; the b study sets its own' if rows_set_bits else ''})"
        described, replaced = re.subn(r"\bb = \d+", given, spec.describe, count=1)
        return described if replaced else f"{spec.describe}; {given}"

    def settings(self) -> dict[str, Any]:
        """How the experiment was asked for, for its JSON report: the overrides, seeds and workers' nice."""
        return {
            "overrides": dict(self.overrides),
            "repeats": self.repeats,
            "worker_nice": self.worker_nice,
            "quick": self.quick,
            "aiodq": __version__,
        }

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
        # Every one named is there, before any runs (a lab audit: a9a's ran, then w8a was missing, no report).
        files = [self.data / train for n in names if (train := DATASETS[n].train)]
        if missing := [file for file in files if not file.exists()]:
            raise ExperimentError(f"{missing[0]}: no such file or folder (--datasets)")
        if not names:
            looked = ", ".join(str(self.data / spec.train) for spec in DATASETS.values() if spec.train)
            raise ExperimentError(f"{self.data}: none of {', '.join(DATASETS)} is there (looked: {looked})")
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
        """The dataset's settings (with the algorithm's own), m = 2n / B, and ``overrides``.

        Of the dataset's settings, those the algorithm never reads are left out (AsyFPG's b = 4 and
        mu: :meth:`TrainConfig.unused_options`); ``overrides`` are kept whatever, and warn.
        """
        algorithm = overrides.get("algorithm", spec.settings.get("algorithm", "asylpg"))
        settings = {**spec.settings, **spec.overrides.get(algorithm, {}), **self.overrides}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UnusedOptionWarning)
            unused = {name for name, *_ in TrainConfig(**{**settings, **overrides}).unused_options()}
        base = TrainConfig(**{**{k: v for k, v in settings.items() if k not in unused}, **overrides})
        return replace(base, updates_per_epoch=_updates_per_epoch(dataset, base))

    def runs(
        self,
        spec: DatasetSpec,
        configs: Sequence[TrainConfig],
        workers: int = 4,
        *,
        share: bool = True,
        vary: str | None = None,
    ) -> list[list[RunResult]]:
        """Every configuration over ``repeats`` seeds, on the local cluster.

        A run whose dataset, configuration (seed included) and worker count were already run
        in this context is not run again: its result is shared (``aiodq experiment all``
        asks for table1's AsyFPG, AsyLPG and Sparse-AsyLPG defaults again in ``mu``).  With
        ``share=False`` every run is made now and not kept for sharing: ``workers`` compares
        updates per second, which depend on the machine's load at the time, so its 4- and
        8-worker runs are made one after the other.  ``coding`` makes its own runs too.  ``vary``: the
        field the configurations sweep, named in each progress line (a researcher's trial could not
        tell the mu study's lines apart).
        """
        dataset, path, target = self.load(spec)
        runner = local_runner(
            dataset, path, records_per_epoch=spec.records_per_epoch, worker_nice=self.worker_nice
        )
        results = []
        for config in configs:
            repeats = []
            for seed in range(self.repeats):
                seeded = replace(config, seed=config.seed + seed)
                key = (spec.name, seeded, workers)
                started = time.perf_counter()
                shared = share and key in self.done
                result = self.done[key] if shared else runner(seeded, workers)
                if share:
                    self.done[key] = result
                self.keep(spec, result, target)
                hit = result.reached(target)
                swept = "" if vary is None else f" {vary}={getattr(config, vary)}"
                self.log(
                    f"  {spec.name} {config.algorithm:<14}{swept} M={workers} seed {seeded.seed}: "
                    + (
                        f"target at {hit.bits / 1e6:.2f} Mbit, {hit.time:.2f} s"
                        if hit
                        else "target not reached"
                    )
                    + f"; final loss {result.points[-1].loss:.6f} "
                    + ("(the same run as before)" if shared else f"({time.perf_counter() - started:.1f} s)")
                )
                repeats.append(result)
            results.append(repeats)
        return results
