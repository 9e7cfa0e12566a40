"""``aiodq experiment coding``: what each way of coding AsyLPG's codes costs in time to target.

Six variants, all on the dataset's settings: AsyFPG (the baseline), and AsyLPG with
its codes Rice-coded where smaller (the default), at fixed width
(``entropy_coding=False``), at fixed width byte-aligned (``aligned_codes=True``: 5 to 7
bits sent in 8), with adaptive coding (``adaptive_coding=True``: the master keeps
whichever of Rice coding and fixed width gives the faster updates, docs/algorithms.md
10), and with adaptive coding whose fixed width is byte-aligned.  Each runs on 127.0.0.1
and, where network namespaces can be made (root), on shaped links of 100 Mbit/s and
1 Gbit/s (:mod:`aiodq.lab.netlab`).  With ``--repeats N`` the variants run in turn for
each seed, so that a change in the machine's load falls on all of them alike.  The
report gives, per place, each variant's times to target, their median, the speed
against AsyFPG, the bits to target and what the adaptive master chose (docs/results.md,
"Adaptive coding").  ``--quick``: 127.0.0.1 only.
"""

from __future__ import annotations

import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..protocol.algorithms import TrainConfig
from ..protocol.dataset import Dataset
from . import netcluster, netlab
from .report import fmt, write_report
from .runs import Context, DatasetSpec, ExperimentError, RunResult, evaluate, local_runner, record_every

__all__ = ["VARIANTS", "experiment_coding", "network_run"]


def _coding(algorithm: str, *, rice: bool, adaptive: bool = False, aligned: bool = False) -> dict[str, Any]:
    return {
        "algorithm": algorithm,
        "entropy_coding": rice,
        "adaptive_coding": adaptive,
        "aligned_codes": aligned,
    }


#: The variants: name, what the table calls it, and the TrainConfig fields that make it.  Each
#: sets every coding field, so that ``--no-entropy-coding``, ``--adaptive-coding`` or
#: ``--aligned-codes`` given to the whole command cannot change a variant (they do not apply to
#: this experiment).
VARIANTS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("asyfpg", "AsyFPG", _coding("asyfpg", rice=True)),
    ("rice", "AsyLPG, Rice-coded where smaller", _coding("asylpg", rice=True)),
    ("fixed", "AsyLPG, fixed width", _coding("asylpg", rice=False)),
    ("aligned", "AsyLPG, fixed width byte-aligned", _coding("asylpg", rice=False, aligned=True)),
    ("adaptive", "AsyLPG, adaptive", _coding("asylpg", rice=True, adaptive=True)),
    (
        "adaptive-aligned",
        "AsyLPG, adaptive, byte-aligned",
        _coding("asylpg", rice=True, adaptive=True, aligned=True),
    ),
)


def network_run(
    config: TrainConfig,
    spec: DatasetSpec,
    dataset: Dataset,
    path: str | None,
    *,
    link: netlab.Link,
    out: Path,
    worker_nice: int | None = None,
) -> RunResult:
    """One run with master and 4 workers in network namespaces joined by ``link``, evaluated.

    Raises:
        ExperimentError: if the lab or the run fails.
    """
    try:
        summary, records = netcluster.run_cluster(
            config,
            workers=4,
            link=link,
            data=path,
            out=out,
            record_every=record_every(dataset, config, spec.records_per_epoch),
            worker_nice=worker_nice,
        )
    except (netlab.NetLabError, ValueError) as exc:
        raise ExperimentError(f"{config.algorithm} on {link.describe()}: {exc}") from exc
    return RunResult(config, 4, evaluate(config, dataset, records), summary)


def experiment_coding(context: Context) -> dict[str, Any]:
    """Time to target of AsyFPG and of AsyLPG's five codings, on 127.0.0.1 and on shaped links."""
    out = context.out / "coding"
    reason = None if context.quick else netlab.namespaces_unavailable()
    links = [] if context.quick or reason else [netlab.Link(1000.0), netlab.Link(100.0)]
    # Where each run goes: 127.0.0.1 (no link), then each shaped link, named by its description.
    where: list[tuple[str, netlab.Link | None]] = [("127.0.0.1", None), *((k.describe(), k) for k in links)]
    places = [place for place, _ in where]
    report: dict[str, Any] = {"places": places, "network_skipped": reason, "datasets": {}}
    lines = ["# Coding and time to target", ""]
    if reason:
        lines += [f"Shaped links skipped: {reason}.", ""]
    specs = context.specs()
    if not context.quick and not context.datasets:
        specs = [s for s in specs if s.name == "debdesc"] or specs
    for spec in specs:
        dataset, path, target = context.load(spec)
        runner = local_runner(
            dataset, path, records_per_epoch=spec.records_per_epoch, worker_nice=context.worker_nice
        )
        runs: dict[tuple[str, str], list[RunResult]] = {}
        for seed in range(context.repeats):
            for place, link in where:
                for name, _, fields in VARIANTS:
                    base = context.config(spec, dataset, **fields)
                    config = replace(base, seed=base.seed + seed)
                    if link is None:
                        run = runner(config, 4)
                    else:
                        folder = out / f"{spec.name}-{name}-{int(link.rate_mbit)}mbit-{seed}"
                        run = network_run(
                            config,
                            spec,
                            dataset,
                            path,
                            link=link,
                            out=folder,
                            worker_nice=context.worker_nice,
                        )
                    runs.setdefault((place, name), []).append(run)
                    context.keep(spec, run, target, place=place, variant=name)
                    hit = run.reached(target)
                    context.log(
                        f"coding: {spec.name} {place} {name:<16} seed {config.seed}: "
                        + (f"target in {hit.time:.2f} s" if hit else "target not reached")
                    )
        rows = [
            _row(place, name, label, runs[place, name], target)
            for place in places
            for name, label, _ in VARIANTS
        ]
        for row in rows:
            baseline = next(r for r in rows if r["place"] == row["place"] and r["variant"] == "asyfpg")
            mine, theirs = row["median_time"], baseline["median_time"]
            row["speed_against_asyfpg"] = theirs / mine if mine and theirs else None
        report["datasets"][spec.name] = {"target": target, "rows": rows}
        lines += [
            f"## {spec.name}: {context.describe(spec)}",
            "",
            f"Medians of {context.repeats} seed(s) per row; 4 workers.",
            "",
            "| where | variant | s to target, each seed | median | speed against AsyFPG | updates to target "
            "(median) | updates/s to target (median) | Mbit to target (median) | adaptive master's choice |",
            "|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        lines += [_line(row) for row in rows]
        lines.append("")
    write_report(out, "coding", report, "\n".join(lines) + "\n", context.settings())
    return report


def _row(place: str, name: str, label: str, runs: list[RunResult], target: float) -> dict[str, Any]:
    hits = [run.reached(target) for run in runs]
    times = [hit.time if hit else None for hit in hits]
    bits = [hit.bits for hit in hits if hit]
    reached = all(t is not None for t in times)
    # Time to target = updates to target / their pace: how many updates the target took, and how
    # fast they were applied (updates per second of training up to it).
    updates = [hit.version if hit else None for hit in hits]
    paces = [hit.version / hit.time if hit and hit.time > 0 else None for hit in hits]
    return {
        "place": place,
        "variant": name,
        "label": label,
        "times": times,
        "median_time": statistics.median(t for t in times if t is not None) if reached else None,
        "median_bits": statistics.median(bits) if reached else None,
        "updates": updates,
        "median_updates": statistics.median(u for u in updates if u is not None) if reached else None,
        "median_updates_per_second": (
            statistics.median(p for p in paces if p is not None)
            if all(p is not None for p in paces)
            else None
        ),
        "adaptive_coding": [run.summary.get("adaptive_coding") for run in runs],
        # The nice steps each run's workers were started at, as the launcher recorded them.
        "worker_nice": [run.summary.get("worker_nice") for run in runs],
    }


def _line(row: dict[str, Any]) -> str:
    times = " / ".join(fmt(t) for t in row["times"])
    speed = row["speed_against_asyfpg"]
    choices = [c for c in row["adaptive_coding"] if c]
    choice = "; ".join(
        f"{'Rice' if c['rice'] else 'fixed width'} at the end, {c['windows_rice']} Rice and "
        f"{c['windows_fixed']} fixed-width windows"
        for c in choices
    )
    return (
        f"| {row['place']} | {row['label']} | {times} | {fmt(row['median_time'])} | "
        f"{f'{speed:.2f}x' if speed else '-'} | {fmt(row['median_updates'], digits=0)} | "
        f"{fmt(row['median_updates_per_second'], digits=0)} | {fmt(row['median_bits'], 1e6)} | "
        f"{choice or '-'} |"
    )
