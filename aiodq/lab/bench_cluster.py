"""``aiodq bench cluster``: the time an applied update costs each side of a cluster, by coding.

A master and ``workers`` workers run in one process, in memory: the real coordinator and
worker sessions exchange real wire bytes (:func:`aiodq.protocol.simulate.deliver`), with
no sockets and no event loop.  Every call into the master's side
(``Coordinator.receive_data`` and ``data_to_send``) and into the workers' side
(``WorkerSession.receive_data``, ``data_to_send`` and ``prepare``) is timed
(``time.perf_counter``, in one thread: its CPU time when nothing else runs), and counted while
the master is in its inner loop with ``warm_up`` to ``warm_up + updates`` updates applied.
The report gives, per variant, the median over ``repeats`` runs of the master's and the
workers' milliseconds per applied update, their sum, and the ratio of each to AsyFPG's.

The variants are those of ``aiodq experiment coding`` whose choice does not depend on
the clock (AsyFPG; AsyLPG Rice-coded where smaller, at fixed width, and byte-aligned),
on a dataset's settings of :data:`aiodq.lab.runs.DATASETS`.  What this leaves out is
what a cluster on 127.0.0.1 adds to every update: the system calls, the event loops and
the switches between processes sharing the cores (docs/benchmarks.md compares the two).
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from ..data import DataError, load_dataset
from ..errors import UsageError
from ..protocol.coordinator import Coordinator, Phase
from ..protocol.dataset import Dataset
from ..protocol.session import WorkerSession
from ..protocol.simulate import build_cluster, deliver
from .bench import _check_out, _report, machine, steady_allocator
from .coding import VARIANTS
from .runs import DATASETS, QUICK, Context, DatasetSpec

__all__ = ["CLUSTER_VARIANTS", "bench_cluster", "main_cluster"]

#: The coding variants measured (:data:`aiodq.lab.coding.VARIANTS` without the adaptive ones,
#: whose choice follows the clock, which an in-memory cluster does not have).
CLUSTER_VARIANTS = tuple(name for name, _, fields in VARIANTS if not fields["adaptive_coding"])

#: Each variant's table label and TrainConfig fields, by name.
_VARIANTS = {name: (label, fields) for name, label, fields in VARIANTS}


class _Clock:
    """The seconds spent in timed calls while the master's inner loop is in the counted range."""

    def __init__(
        self, coordinator: Coordinator, first: int, last: int, timer: Callable[[], float] = time.perf_counter
    ) -> None:
        self._coordinator, self._first, self._last, self._timer = coordinator, first, last, timer
        self.master = 0.0
        self.workers = 0.0

    def counting(self) -> bool:
        state = self._coordinator.state
        return self._coordinator.phase is Phase.INNER and self._first <= state.version < self._last

    @contextlib.contextmanager
    def timing(self, side: str) -> Iterator[None]:
        """Add the time the block takes to ``side`` (``"master"`` or ``"workers"``), if counting."""
        if not self.counting():
            yield
            return
        start = self._timer()
        try:
            yield
        finally:
            spent = self._timer() - start
            if side == "master":
                self.master += spent
            else:
                self.workers += spent


class _TimedMaster:
    """A coordinator as :func:`deliver` sees it (:class:`MasterSide`), its traffic timed."""

    def __init__(self, coordinator: Coordinator, clock: _Clock) -> None:
        self._coordinator, self._clock = coordinator, clock

    def connect(self, now: float) -> int:
        return self._coordinator.connect(now)

    def data_to_send(self) -> dict[int, bytes]:
        with self._clock.timing("master"):
            return self._coordinator.data_to_send()

    def receive_data(self, worker_id: int, data: bytes | None, now: float, budget: int = -1) -> bool:
        with self._clock.timing("master"):
            return self._coordinator.receive_data(worker_id, data, now, budget)


class _TimedWorker:
    """A worker session as :func:`deliver` sees it (:class:`WorkerSide`), timed."""

    def __init__(self, session: WorkerSession, clock: _Clock) -> None:
        self._session, self._clock = session, clock

    @property
    def closed(self) -> bool:
        return self._session.closed

    def data_to_send(self) -> bytes:
        with self._clock.timing("workers"):
            return self._session.data_to_send()

    def prepare(self, now: float) -> None:
        with self._clock.timing("workers"):
            self._session.prepare(now)

    def receive_data(self, data: bytes, now: float) -> None:
        with self._clock.timing("workers"):
            self._session.receive_data(data, now)


def _one_run(
    context: Context,
    spec: DatasetSpec,
    dataset: Dataset,
    variant: str,
    *,
    workers: int,
    warm_up: int,
    updates: int,
) -> tuple[float, float, int, dict[str, int]]:
    """One in-memory run of a variant: (master s, workers s, d, dropped) over ``updates`` counted updates."""
    _, fields = _VARIANTS[variant]
    config = replace(context.config(spec, dataset, **fields), epochs=1, updates_per_epoch=warm_up + updates)
    coordinator, sessions = build_cluster(config, dataset, workers)
    clock = _Clock(coordinator, warm_up, warm_up + updates)
    deliver(_TimedMaster(coordinator, clock), [_TimedWorker(s, clock) for s in sessions])
    counted = max(0, min(coordinator.state.version, warm_up + updates) - warm_up)
    if coordinator.failure is not None or counted < updates:
        reason = coordinator.failure or "the run ended early"
        raise UsageError(f"the {variant} run applied {counted} of {updates} counted updates: {reason}")
    return clock.master, clock.workers, coordinator.dim, dict(coordinator.dropped)


def bench_cluster(
    spec: DatasetSpec,
    dataset: Dataset,
    variants: tuple[str, ...] = CLUSTER_VARIANTS,
    *,
    workers: int = 4,
    warm_up: int = 100,
    updates: int = 1000,
    repeats: int = 3,
) -> dict[str, Any]:
    """Run the benchmark on ``dataset`` with ``spec``'s settings; return its report (module docstring)."""
    steady = steady_allocator()
    context = Context(data=None, out=Path("."), log=lambda line: print(line, file=sys.stderr))
    cases: list[dict[str, Any]] = []
    dim = 0
    with threadpool_limits(1, user_api="blas"):
        for variant in variants:
            runs = [
                _one_run(context, spec, dataset, variant, workers=workers, warm_up=warm_up, updates=updates)
                for _ in range(repeats)
            ]
            dim = runs[0][2]
            master = statistics.median(m / updates * 1e3 for m, _, _, _ in runs)
            side = statistics.median(w / updates * 1e3 for _, w, _, _ in runs)
            total = statistics.median((m + w) / updates * 1e3 for m, w, _, _ in runs)
            cases.append(
                {
                    "variant": variant,
                    "label": _VARIANTS[variant][0],
                    "applied_updates": updates,  # every run applied them all (_one_run checks)
                    "master_ms": round(master, 4),
                    "workers_ms": round(side, 4),
                    "total_ms": round(total, 4),
                    # Gradients the master did not apply, over each whole run (the delivery order is
                    # seeded, so every variant's runs drop alike); the workers' time includes them.
                    "dropped": [run[3] for run in runs],
                }
            )
    baseline = next((case for case in cases if case["variant"] == "asyfpg"), None)
    for case in cases:
        for part in ("master", "workers", "total"):
            case[f"{part}_against_asyfpg"] = (
                round(case[f"{part}_ms"] / baseline[f"{part}_ms"], 3) if baseline else None
            )
    return {
        "benchmark": "cluster",
        "machine": machine(),
        "steady_allocator": steady,
        "dataset": spec.name,
        "d": dim,
        "workers": workers,
        "warm_up": warm_up,
        "updates": updates,
        "repeats": repeats,
        "note": "ms per applied update on each side of an in-memory cluster (real coordinator, sessions "
        "and wire bytes; no sockets, no event loop, one BLAS thread), medians over repeats; the dataset's "
        "settings of aiodq experiment",
        "cases": cases,
    }


def main_cluster(args: Any) -> int:
    """Entry point of ``aiodq bench cluster``.

    Raises:
        UsageError: for a bad option value or data that cannot be read.
    """
    if args.dataset == "bundled":
        if args.data is not None:
            raise UsageError("--data applies to a named --dataset, not to the bundled a9a")
        spec, path = QUICK, None
    elif args.dataset in DATASETS:
        if args.data is None:
            raise UsageError(f"--dataset {args.dataset} needs --data, the data folder (e.g. ../shared/data)")
        spec = DATASETS[args.dataset]
        assert spec.train is not None
        path = Path(args.data) / spec.train
    else:
        raise UsageError(f"--dataset: unknown {args.dataset!r} (bundled, or one of {', '.join(DATASETS)})")
    names = CLUSTER_VARIANTS
    if args.variants.strip() != "all":
        names = tuple(name.strip() for name in args.variants.split(","))
    unknown = [repr(name) for name in names if name not in CLUSTER_VARIANTS]
    if unknown:
        raise UsageError(f"--variants: unknown {', '.join(unknown)} (one of {', '.join(CLUSTER_VARIANTS)})")
    if len(set(names)) != len(names):
        raise UsageError("--variants: a variant is named twice")
    for option, value, most in (
        ("--workers", args.workers, 1024),
        ("--warm-up", args.warm_up, 10**7),
        ("--updates", args.updates, 10**7),
        ("--repeats", args.repeats, 1000),
    ):
        if not 1 <= value <= most:
            raise UsageError(f"{option} must be between 1 and {most}")
    _check_out(args.out)
    try:
        dataset = load_dataset(path)
    except DataError as exc:
        raise UsageError(str(exc)) from exc
    if args.workers > dataset.samples:
        raise UsageError(
            f"--workers {args.workers}: more workers than the {dataset.samples} samples to share"
        )
    report = bench_cluster(
        spec,
        dataset,
        names,
        workers=args.workers,
        warm_up=args.warm_up,
        updates=args.updates,
        repeats=args.repeats,
    )
    return _report(report, args.out)
