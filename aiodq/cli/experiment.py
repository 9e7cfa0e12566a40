"""``aiodq experiment``: the paper's experiments on real data (the lab extra, imported only when run)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..launch.local import resolve_worker_nice
from .commands import EXIT_FAILED
from .logs import setup_logging

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


def cmd_experiment(args: argparse.Namespace) -> int:
    """``aiodq experiment``: the paper's experiments (the lab extra)."""
    from ..lab.experiments import Context, ExperimentError, run_experiment  # noqa: PLC0415 - the lab extra

    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    if args.quick and (args.data or args.datasets):
        raise UsageError("--quick runs on the bundled a9a: leave out --data and --datasets")
    data = Path(args.data) if args.data else None
    if data is not None and not data.is_dir():
        raise UsageError(f"--data {data}: not a folder")
    datasets = tuple(name for name in args.datasets.split(",") if name)
    try:
        resolve_worker_nice(args.worker_nice, "a nice increment")
    except ValueError as exc:
        raise UsageError(f"--worker-nice: {exc}") from exc
    setup_logging(logging.WARNING)
    context = Context(
        data=data,
        out=Path(args.out),
        quick=args.quick,
        datasets=datasets,
        repeats=args.repeats,
        log=lambda line: print(line, flush=True),
        overrides=_experiment_overrides(args),
        worker_nice=args.worker_nice,
    )
    try:
        run_experiment(args.name, context)
    except ExperimentError as exc:
        print(f"aiodq experiment: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0
