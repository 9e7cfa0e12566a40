"""The paper's experiments on real data: ``aiodq experiment NAME`` (docs/results.md).

Every training run is a real cluster: a :class:`~aiodq.net.master.Master` in this
process and M worker processes on 127.0.0.1 (or, for ``network``, master and
workers in network namespaces joined by shaped links, :mod:`aiodq.lab.netlab`).
The master keeps a copy of its model every few updates
(:class:`~aiodq.protocol.accounting.ModelRecord`) together with the bytes on the wire
so far, both directions, everything counted; after the run each copy is
evaluated on the full training set.  Evaluation sends nothing and is not
counted.  "Bits to target" is the bit count of the first copy whose training
objective F(x) = (1/n) sum f_i(x) + R(x) is at or below the target.

Experiments:

- ``table1``: bits and time to target for every algorithm on each dataset, and
  each one's saving against its full-precision counterpart; loss against bits
  and against time, all algorithms in one figure per dataset.
- ``mu``: bits, updates and time to target and final loss of AsyLPG for mu in
  {0.05, 0.1, 0.25, 0.5, 1, 2} and for gradient bits b in {2, 4, 5, 6, 8}, and of
  Sparse-AsyLPG for the budget phi in {d/100, d/20, d/4}.
- ``timing``: computation against encoding time per epoch, per algorithm.
- ``workers``: 4 workers against 8.
- ``network``: time to target on shaped links (needs root; skipped otherwise).
- ``coding``: time to target of AsyFPG and of AsyLPG Rice-coded, at fixed width and with
  adaptive coding, on 127.0.0.1 and on shaped links (:mod:`aiodq.lab.coding`).
- ``all``: every one of them.

``--quick`` runs each on the bundled a9a with fewer epochs, to check the
runner end to end in under three minutes; its figures are not the results.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from threadpoolctl import threadpool_limits

from ..codec.events import Gradient, ModelMessage
from ..codec.messages import DecodeContext, encode_message
from ..data import load_mnist_idx
from ..errors import DataError
from ..launch.models import objective_for
from ..protocol.algorithms import ALGORITHMS, MasterState, TrainConfig, WorkerState, initial_model
from ..protocol.dataset import Dataset, shard
from ..protocol.objectives import Objective
from . import netlab
from .bench import decode_frame
from .coding import experiment_coding, network_run
from .report import (
    bits_account,
    fmt,
    num,
    pace,
    plot_curves,
    plot_sweeps,
    reach,
    saving,
    summarise,
    times,
    write_report,
)
from .runs import (
    BIT_VALUES,
    DATASETS,
    MU_VALUES,
    PHI_VALUES,
    TABLE_ALGORITHMS,
    Context,
    DatasetSpec,
    ExperimentError,
    Point,
    RunResult,
    evaluate,
    local_runner,
    optimum,
    to_target,
)

__all__ = [
    "DATASETS",
    "EXPERIMENTS",
    "Context",
    "DatasetSpec",
    "ExperimentError",
    "Point",
    "RunResult",
    "TIMING_PARTS",
    "epoch_timing",
    "evaluate",
    "local_runner",
    "optimum",
    "run_experiment",
    "to_target",
]


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
    model = objective_for(config, test)
    correct = getattr(model, "correct", None)
    return None if correct is None else float(correct(run.final_model) / test.samples)


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
        rows = {repeats[0].config.algorithm: summarise(repeats, target) for repeats in results}
        for name, row in rows.items():
            row["saving_bits"] = saving(rows, name)
            row["saving_time"] = saving(rows, name, "time_to_target")
            row["baseline"] = ALGORITHMS[name].baseline
        first = {repeats[0].config.algorithm: repeats[0] for repeats in results}
        for repeats in results:
            accuracies = [_test_accuracy(context, spec, run) for run in repeats]
            rows[repeats[0].config.algorithm]["test_accuracy"] = (
                None if None in accuracies else statistics.median(a for a in accuracies if a is not None)
            )
        plot_curves(
            out / f"{spec.name}_loss.png",
            f"{spec.name}: {context.describe(spec)}",
            first,
            target,
            context.optima.get(spec.name),
        )
        report["datasets"][spec.name] = {
            "describe": context.describe(spec),
            "samples": dataset.samples,
            "dim": results[0][0].summary["dim"],
            "target": target,
            "rows": rows,
            "runs": {name: run.as_dict(target) for name, run in first.items()},
        }
        dim = results[0][0].summary["dim"]
        for name, run in report["datasets"][spec.name]["runs"].items():
            rows[name]["account"] = bits_account(run, dim)
        lines += [
            f"## {spec.name}: {context.describe(spec)}",
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
                f"| {name} | {reach(row, fmt(row['bits_to_target'], 1e6))} | {row['baseline']} | "
                f"{times(row['saving_bits'])} | {reach(row, fmt(row['time_to_target']))} | "
                f"{times(row['saving_time'])} | "
                f"{num(row['final_loss'], 6)} | {num(accuracy, 4)} |"
            )
        lines += ["", *_account_lines(report["datasets"][spec.name]), ""]
        lines += [f"![loss against bits and time]({spec.name}_loss.png)", ""]
    write_report(out, "table1", report, "\n".join(lines) + "\n", context.settings())
    return report


def _account_lines(dataset: dict[str, Any]) -> list[str]:
    """The "where the bits went" table of one dataset (first seed): its rows' ``account``."""
    lines = [
        "Where the bits to target went (first seed; the bytes by kind when the master recorded the "
        "model that reached the target; bits per coordinate are per applied update):",
        "",
        "| algorithm | Mbit to target | updates | models | gradients | snapshot phases | frame headers "
        "| control | model bits/coord | gradient bits/coord |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in dataset["runs"].items():
        account = dataset["rows"][name]["account"]
        if account is None:
            lines.append(f"| {name} | {reach(dataset['rows'][name], '-')} |" + " - |" * 8)
            continue
        mbit = account["mbit"]
        lines.append(
            f"| {name} | {run['bits_to_target'] / 1e6:.2f} | {account['updates']} | "
            + " | ".join(
                f"{mbit[part]:.2f}" for part in ("models", "gradients", "snapshot phases", "frame headers")
            )
            + f" | {mbit['control']:.3f} | {account['model_bits_per_coordinate']:.3f} | "
            f"{account['gradient_bits_per_coordinate']:.3f} |"
        )
    return lines


def experiment_mu(context: Context) -> dict[str, Any]:
    """Bits to target and final loss: AsyLPG against mu and the gradient bits b, Sparse-AsyLPG against phi."""
    out = context.out / "mu"
    report: dict[str, Any] = {"datasets": {}}
    lines = ["# The mu study, the gradient bits and the sparsity budget", ""]
    bit_values = (BIT_VALUES[0], BIT_VALUES[-1]) if context.quick else BIT_VALUES
    sweeps_of = (
        ("mu", "asylpg", MU_VALUES[3:5] if context.quick else MU_VALUES, "AsyLPG: mu (b fixed)"),
        ("bits", "asylpg", bit_values, "AsyLPG: b (mu fixed)"),
        ("phi", "sparse-asylpg", PHI_VALUES[1:] if context.quick else PHI_VALUES, "Sparse-AsyLPG: phi / d"),
    )
    for spec in context.specs():
        dataset, _, target = context.load(spec)
        context.log(f"mu: {spec.name}, target {target:.6f}")
        reference = summarise(
            context.runs(spec, [context.config(spec, dataset, algorithm="asyfpg")])[0], target
        )
        sweeps: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in sweeps_of}
        for key, algorithm, values, _ in sweeps_of:
            configs = [context.config(spec, dataset, algorithm=algorithm, **{key: value}) for value in values]
            for value, repeats in zip(values, context.runs(spec, configs, vary=key), strict=True):
                row = summarise(repeats, target)
                row[key] = value
                bits, seconds = row["bits_to_target"], row["time_to_target"]
                row["saving_bits"] = (
                    reference["bits_to_target"] / bits if bits and reference["bits_to_target"] else None
                )
                # AsyFPG's time to target over this row's: above 1, sooner than full precision.
                row["saving_time"] = (
                    reference["time_to_target"] / seconds if seconds and reference["time_to_target"] else None
                )
                sweeps[key].append(row)
        report["datasets"][spec.name] = {"target": target, "asyfpg": reference, **sweeps}
        lines += [f"## {spec.name}: {context.describe(spec, rows_set_bits=True)}", ""]
        lines.append(
            f"AsyFPG reference: {fmt(reference['bits_to_target'], 1e6)} Mbit, "
            f"{fmt(reference['updates_to_target'], digits=0)} updates and "
            f"{fmt(reference['time_to_target'])} s to target; median of {context.repeats} run(s) per row."
        )
        for key, _, _, label in sweeps_of:
            lines += [
                "",
                f"| {label} | Mbit to target | saving vs AsyFPG | updates to target | s to target "
                "| speed vs AsyFPG | final loss |",
                "|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for row in sweeps[key]:
                lines.append(
                    f"| {row[key]} | {reach(row, fmt(row['bits_to_target'], 1e6))} | "
                    f"{times(row['saving_bits'])} | {reach(row, fmt(row['updates_to_target'], digits=0))} | "
                    f"{reach(row, fmt(row['time_to_target']))} | {times(row['saving_time'])} | "
                    f"{row['final_loss']:.6f} |"
                )
        lines.append("")
        panels = [(key, label) for key, _, _, label in sweeps_of]
        plot_sweeps(out / f"{spec.name}_mu.png", spec.name, sweeps, panels)
        lines += [f"![mu, b and phi]({spec.name}_mu.png)", ""]
    write_report(out, "mu", report, "\n".join(lines) + "\n", context.settings())
    return report


#: The parts of an update :func:`epoch_timing` times, in the order they happen; ``True`` marks computation.
TIMING_PARTS = {
    "model_quantize": False,
    "model_encode": False,
    "model_decode": False,
    "worker_prepare": True,
    "worker_compute": True,
    "gradient_compress": False,
    "gradient_encode": False,
    "gradient_decode": False,
    "master_apply": True,
}


def epoch_timing(config: TrainConfig, dataset: Dataset, workers: int, *, epochs: int = 1) -> dict[str, Any]:
    """Seconds per epoch of computation and of encoding, measured in this process, one update at a time.

    Computation: the worker's step (``WorkerState.prepare`` and ``variance_reduced``: the
    mini-batch, rebuilding x_hat from the decoded model, the mini-batch gradients) and the
    master's update (``MasterState.apply``, which expands the decoded gradient).  Encoding: the
    model quantizer and the gradient compressor, and framing and decoding both messages to
    vector values, with entropy coding as the configuration sets it (DENSE_RICE where smaller,
    as the master and the workers send).  The snapshot phase (full-precision sums, identical
    for all algorithms) is left out.  Each call replays the first ``epochs`` epochs from x_0.

    Returns:
        ``computation`` and ``encoding`` in seconds per epoch, ``updates``, the epoch's m, and
        ``parts``: the median milliseconds per update of each of :data:`TIMING_PARTS`.
    """
    model = objective_for(config, dataset)
    master = MasterState(config, initial_model(config, model))
    mapped, _ = dataset.for_model(config.model)
    part = mapped.rows(shard(dataset.samples, workers, 0, seed=config.seed))
    worker = WorkerState(config, objective_for(config, part), 0)
    context = DecodeContext(dim=model.dim)
    parts: dict[str, list[float]] = {name: [] for name in TIMING_PARTS}
    # One BLAS thread, as in every worker process (aiodq.launch.local.worker_main).
    with threadpool_limits(1, user_api="blas"):
        for _ in range(epochs):
            _timed_epoch(master, worker, model=model, dataset=dataset, context=context, parts=parts)
    seconds = {name: sum(times) / epochs for name, times in parts.items()}
    return {
        "computation": sum(seconds[name] for name, compute in TIMING_PARTS.items() if compute),
        "encoding": sum(seconds[name] for name, compute in TIMING_PARTS.items() if not compute),
        "updates": master.updates_per_epoch,
        "parts": {name: 1e3 * statistics.median(times) for name, times in parts.items()},
    }


def _timed_epoch(
    master: MasterState,
    worker: WorkerState,
    *,
    model: Objective,
    dataset: Dataset,
    context: DecodeContext,
    parts: dict[str, list[float]],
) -> None:
    """One epoch of :func:`epoch_timing`; appends each update's seconds per part to ``parts``."""
    clock = time.perf_counter
    rice, aligned = master.config.entropy_coding, master.config.aligned_codes
    _, gradient_sum = model.loss_grad(master.snapshot)
    worker.snapshot_phase(master.snapshot)
    master.finish_snapshot_phase(gradient_sum, 0.0, dataset.samples)
    worker.set_full_gradient(master.full_gradient)
    while not master.epoch_done:
        times = [clock()]
        vector, relative = master.model_message()
        times.append(clock())
        down = encode_message(
            ModelMessage(epoch=master.epoch, version=master.version, vector=vector, relative=relative),
            dense_rice=rice,
            aligned=aligned,
        )
        times.append(clock())
        received = decode_frame(down, context)
        assert isinstance(received, ModelMessage)
        times.append(clock())
        worker.prepare()
        times.append(clock())
        alpha = worker.variance_reduced(received.vector, received.relative)
        times.append(clock())
        compressed = worker.compress(alpha)
        times.append(clock())
        up = encode_message(
            Gradient(epoch=master.epoch, version=master.version, vector=compressed),
            dense_rice=rice,
            aligned=aligned,
            sparse_gradient=rice and master.config.sparse_gradients,  # (as the cluster's: a lab audit)
        )
        times.append(clock())
        gradient = decode_frame(up, context)
        assert isinstance(gradient, Gradient)
        times.append(clock())
        master.apply(gradient.vector, gradient.version)
        times.append(clock())
        for name, start, stop in zip(TIMING_PARTS, times[:-1], times[1:], strict=True):
            parts[name].append(stop - start)
    master.end_epoch()


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
                "parts_ms": {
                    part: statistics.median(s["parts"][part] for s in samples) for part in TIMING_PARTS
                },
            }
            context.log(
                f"timing: {spec.name} {name:<14} computation {rows[name]['computation']:.3f} s, "
                f"encoding {rows[name]['encoding']:.3f} s per epoch"
            )
        report["datasets"][spec.name] = rows
        lines += [
            f"## {spec.name}: {context.describe(spec)}",
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
        lines += [
            "",
            "Each part of an update, median milliseconds (computation parts marked *):",
            "",
            "| algorithm | "
            + " | ".join(p + ("*" if c else "") for p, c in TIMING_PARTS.items())
            + " | sum |",
            "|---|" + "---:|" * (len(TIMING_PARTS) + 1),
        ]
        for name, row in rows.items():
            cells = [f"{row['parts_ms'][part]:.3f}" for part in TIMING_PARTS]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {sum(row['parts_ms'].values()):.3f} |")
        lines.append("")
    write_report(out, "timing", report, "\n".join(lines) + "\n", context.settings())
    return report


def experiment_workers(context: Context) -> dict[str, Any]:
    """4 workers against 8: bits and time to target, updates per second, staleness."""
    out = context.out / "workers"
    report: dict[str, Any] = {"datasets": {}}
    counts = (2, 4) if context.quick else (4, 8)
    lines = [f"# {counts[0]} workers against {counts[1]}", ""]  # (a lab audit: quick runs 2 and 4)
    names = ("asylpg",) if context.quick else ("asyfpg", "asylpg", "acc-asylpg")
    for spec in context.specs():
        dataset, _, target = context.load(spec)
        rows = []
        for workers in counts:
            configs = [context.config(spec, dataset, algorithm=name) for name in names]
            for repeats in context.runs(spec, configs, workers=workers, share=False):
                rows.append(summarise(repeats, target) | {"workers": workers} | pace(repeats))  # (medians)
        report["datasets"][spec.name] = {"target": target, "rows": rows}
        lines += [
            f"## {spec.name}: {context.describe(spec)}",
            "",
            "| M | algorithm | Mbit to target | s to target | final loss | updates/s | mean staleness | max "
            "| applied | dropped |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['workers']} | {row['algorithm']} | "
                f"{reach(row, fmt(row['bits_to_target'], 1e6))} | "
                f"{reach(row, fmt(row['time_to_target']))} | {num(row['final_loss'], 6)} | "
                f"{num(row['updates_per_second'], 0)} | {row['staleness_mean']:.2f} | "
                f"{row['staleness_max']} | {row['applied']} | {json.dumps(row['dropped'])} |"
            )
        lines.append("")
    write_report(out, "workers", report, "\n".join(lines) + "\n", context.settings())
    return report


def experiment_network(context: Context) -> dict[str, Any]:
    """Time to target on shaped links in network namespaces (root only; skipped otherwise)."""
    out = context.out / "network"
    reason = netlab.namespaces_unavailable()
    if reason is not None:
        report: dict[str, Any] = {"skipped": reason}
        if out.is_dir() and any(out.iterdir()):  # (a review: the skip report replaced shaped-link results)
            context.log(f"network: skipped, {reason}; what {out} holds is left as it was")
            return {**report, "left": True}
        context.log(f"network: skipped, {reason}")
        write_report(out, "network", report, f"# Shaped network\n\nSkipped: {reason}\n", context.settings())
        return report
    report = {"datasets": {}}
    lines = ["# Time to target on shaped links", ""]
    links = [netlab.Link(100.0)] if context.quick else [netlab.Link(100.0), netlab.Link(1000.0)]
    names = ("asyfpg", "asylpg") if context.quick else TABLE_ALGORITHMS
    specs = context.specs()
    if not context.quick and not context.datasets:
        specs = [s for s in specs if s.name in ("debdesc", "mnist")] or specs
    for spec in specs:
        dataset, path, target = context.load(spec)
        rows: list[dict[str, Any]] = []
        curves: dict[str, dict[str, RunResult]] = {}
        for link in links:
            runs = curves.setdefault(link.describe(), {})
            for name in names:
                config = context.config(spec, dataset, algorithm=name)
                place = out / f"{spec.name}-{name}-{int(link.rate_mbit)}mbit"
                seeded = [  # --repeats seeds, as Context.runs makes them (a lab audit: one, whatever it said)
                    network_run(
                        replace(config, seed=config.seed + s),
                        spec,
                        dataset,
                        path,
                        link=link,
                        out=place.with_name(f"{place.name}-{s}") if s else place,
                        worker_nice=context.worker_nice,
                    )
                    for s in range(context.repeats)
                ]
                row = summarise(seeded, target)
                row["link"] = link.describe()
                row["rate_mbit"] = link.rate_mbit
                rows.append(row)
                runs[name] = seeded[0]  # (the curves: the first seed's, as in the other experiments)
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
            plot_curves(
                out / figure,
                f"{spec.name}, every link {label}",
                curves[label],
                target,
                context.optima.get(spec.name),
            )
            figures.append(figure)
        lines += [
            f"## {spec.name}: {context.describe(spec)}",
            "",
            "Master and 4 workers in separate network namespaces, a star through a bridge, every link "
            "shaped both ways.",
            "",
            "| link | algorithm | s to target | sooner than AsyFPG | Mbit to target | final loss |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row['link']} | {row['algorithm']} | {fmt(row['time_to_target'])} | "
                f"{times(row['sooner_than_asyfpg'])} | {fmt(row['bits_to_target'], 1e6)} | "
                f"{row['final_loss']:.6f} |"
            )
        lines += ["", *(f"![loss on shaped links]({figure})" for figure in figures), ""]
    write_report(out, "network", report, "\n".join(lines) + "\n", context.settings())
    return report


#: Every experiment by name.
EXPERIMENTS: dict[str, Callable[[Context], dict[str, Any]]] = {
    "table1": experiment_table1,
    "mu": experiment_mu,
    "timing": experiment_timing,
    "workers": experiment_workers,
    "network": experiment_network,
    "coding": experiment_coding,
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
        if each != "network" or netlab.namespaces_unavailable() is None:  # (a skipped one writes no runs)
            context.begin(each)
        try:
            reports[each] = EXPERIMENTS[each](context)
        finally:
            context.record = None
        if not reports[each].get("left"):
            took = time.perf_counter() - started
            context.log(f"{each}: done in {took:.1f} s, written to {context.out / each}")
    return reports
