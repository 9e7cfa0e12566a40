"""``aiodq experiment``: the paper's experiments on real data (the lab extra, imported only when run)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..launch.local import resolve_worker_nice
from .commands import EXIT_FAILED
from .logs import setup_logging
from .outfolder import hold

__all__ = ["cmd_experiment"]


def _experiment_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``aiodq experiment``'s coding switches and ``--bits`` as TrainConfig overrides.

    The switches: ``--no-entropy-coding``, ``--adaptive-coding``, ``--aligned-codes`` and
    ``--no-sparse-gradients``.

    Raises:
        UsageError: for both coding switches at once, or bits outside 2..16.
    """
    if args.adaptive_coding and not args.entropy_coding:
        raise UsageError("--adaptive-coding chooses when to Rice-code: leave out --no-entropy-coding")
    overrides: dict[str, Any] = {"aligned_codes": True} if args.aligned_codes else {}
    if args.adaptive_coding:
        overrides["adaptive_coding"] = True
    elif not args.entropy_coding:
        overrides["entropy_coding"] = False
    if not args.sparse_gradients:
        overrides["sparse_gradients"] = False
    if args.bits is not None:
        if not 2 <= args.bits <= 16:
            raise UsageError(f"--bits must be between 2 and 16, got {args.bits}")
        overrides["bits"] = args.bits
    return overrides


def _prepare(out: Path, names: list[str]) -> None:
    """Make ``out`` and hold it, before any run; check that each ``out/NAME`` can be a folder.

    A researcher's trial: an ``--out`` that was a file failed after every run, with a traceback, and two
    commands at once into one folder kept one's results.  Now a folder that cannot be made is one line
    (exit 2), and another command holding ``out`` is refused.  Earlier results are moved aside as each
    experiment starts (:func:`~aiodq.lab.experiments.run_experiment`), not here.

    Raises:
        UsageError: if a folder cannot be made, or another command holds ``out``.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: cannot make the folder ({exc.strerror or exc})") from None
    hold(out)
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: cannot write into it (permission denied)")
    for name in names:
        folder = out / name
        if (folder.is_symlink() and not folder.exists()) or (folder.exists() and not folder.is_dir()):
            raise UsageError(f"--out {out}: {folder} is not a folder: move it, or give another --out")


def cmd_experiment(args: argparse.Namespace) -> int:
    """``aiodq experiment``: the paper's experiments (the lab extra)."""
    from ..lab.experiments import EXPERIMENTS, Context, ExperimentError, run_experiment  # noqa: PLC0415 (lab)

    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    if args.quick and (args.data or args.datasets):
        raise UsageError("--quick runs on the bundled a9a: leave out --data and --datasets")
    data = Path(args.data) if args.data else None
    if data is not None and not data.is_dir():
        raise UsageError(f"--data {data}: not a folder")
    datasets = tuple(name.strip() for name in args.datasets.split(",") if name.strip())
    if args.datasets and not datasets:
        raise UsageError(f"--datasets {args.datasets!r} names no dataset (leave it out for every one found)")
    if twice := sorted({name for name in datasets if datasets.count(name) > 1}):
        raise UsageError(f"--datasets names {', '.join(twice)} twice")
    try:
        resolve_worker_nice(args.worker_nice, "a nice increment")
    except ValueError as exc:
        raise UsageError(f"--worker-nice: {exc}") from exc
    setup_logging(logging.WARNING)
    out = Path(args.out)
    context = Context(
        data=data,
        out=out,
        quick=args.quick,
        datasets=datasets,
        repeats=args.repeats,
        log=lambda line: print(line, flush=True),
        overrides=_experiment_overrides(args),
        worker_nice=args.worker_nice,
    )
    try:
        context.specs()  # (a data folder without the datasets: said before any folder is touched)
        _prepare(out, list(EXPERIMENTS) if args.name == "all" else [args.name])
        run_experiment(args.name, context)
    except ExperimentError as exc:
        print(f"aiodq experiment: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0
