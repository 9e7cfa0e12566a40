"""The commands behind ``aiodq run``, ``aiodq master``, ``aiodq worker`` and ``aiodq experiment``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from ..config import MasterConfig
from ..errors import CheckpointError, RunError, UsageError, code_name
from ..launch.local import load_data_or_fail, master_main, run_coroutine, run_local, worker_main
from ..launch.results import check_out, summary_rows, write_results
from ..net.tls import client_context, server_context
from ..net.worker import describe_os_error, format_address
from ..protocol.algorithms import TrainConfig
from ..protocol.dataset import Dataset
from ..protocol.objectives import make_objective
from .options import connection_config, from_args, train_config

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "cmd_experiment", "cmd_master", "cmd_run", "cmd_worker"]

EXIT_FAILED = 1
EXIT_USAGE = 2


def print_summary(summary: dict[str, object], command: str) -> None:
    table = Table(title=f"aiodq {command}: summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in summary_rows(summary):
        table.add_row(label, value)
    Console().print(table)


_FORMAT = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")


def setup_logging(stderr_level: int, logfile: Path | None = None) -> None:
    """Log aiodq's records to stderr at ``stderr_level`` and, if given, everything to ``logfile``."""
    logger = logging.getLogger("aiodq")
    logger.setLevel(logging.INFO)
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(stderr_level)
    console.setFormatter(_FORMAT)
    logger.addHandler(console)
    if logfile is not None:
        add_logfile(logfile)


def add_logfile(logfile: Path) -> None:
    """Also log everything to ``logfile`` (its folder exists and is writable: :func:`_output_folder`)."""
    try:
        handler = logging.FileHandler(logfile, mode="w", encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write the log {logfile}: {exc.strerror or exc}") from exc
    handler.setFormatter(_FORMAT)
    logging.getLogger("aiodq").addHandler(handler)


def _dataset_for(config: TrainConfig, path: str | None, workers: int) -> Dataset:
    """The dataset at ``path``, checked against the model and the number of workers.

    Raises:
        UsageError: if it cannot be read, is too small for ``workers``, or the model cannot
            learn from its labels.
    """
    try:
        dataset = load_data_or_fail(path)
    except RunError as exc:
        raise UsageError(str(exc)) from exc
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    if dataset.samples < workers:
        raise UsageError(f"{dataset.samples} samples cannot be shared by {workers} workers")
    try:
        objective = make_objective(config.model, dataset.features_count, dataset.classes, config.hidden)
        objective.prepare_labels(dataset.labels)
    except ValueError as exc:
        raise UsageError(f"--model {config.model} on {dataset.name or path}: {exc}") from exc
    return dataset


def _output_folder(out: str | None) -> Path | None:
    """``--out``, created and checked before the run (its results are not lost at the end)."""
    if out is None:
        return None
    try:
        return check_out(Path(out))
    except RunError as exc:
        raise UsageError(str(exc)) from exc


def _finish(command: str, summary: dict[str, Any], out: Path | None) -> int:
    """Write the results, print the summary; a run that ended without finishing fails (status 1)."""
    written = ""
    if out is not None:
        try:
            result, plot = write_results(summary, out)
        except RunError as exc:
            print(f"aiodq {command}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        written = f"wrote {result}" + (f" and {plot}" if plot else "") + f"; log in {out / 'aiodq.log'}"
    print_summary(summary, command)
    if written:
        print(written)
    if summary.get("failure"):
        print(f"aiodq {command}: {summary['failure']}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``aiodq run``: a local cluster; summary, result.json and the plot."""
    config = train_config(args)
    master_config = from_args(MasterConfig, args)
    dataset = _dataset_for(config, args.data, args.workers)
    if not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    out = _output_folder(args.out)
    assert out is not None
    data_path = str(Path(args.data).resolve()) if args.data is not None else None
    setup_logging(logging.WARNING, out / "aiodq.log")
    try:
        summary = run_coroutine(
            run_local(
                config,
                dataset,
                data_path,
                args.workers,
                progress=not args.no_progress,
                timeout=args.timeout,
                master_config=master_config,
            )
        )
    except RunError as exc:
        print(f"aiodq run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return _finish("run", summary, out)


def cmd_master(args: argparse.Namespace) -> int:
    """``aiodq master``: serve one training run to remote workers."""
    config = train_config(args)
    master_config = from_args(MasterConfig, args)
    dataset = _dataset_for(config, args.data, args.workers)
    host, port = args.listen
    setup_logging(logging.INFO)
    network = connection_config(args)
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_client_ca and not args.tls_cert):
        raise UsageError("TLS needs both --tls-cert and --tls-key (and them for --tls-client-ca)")
    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint")
    if not args.checkpoint_interval > 0:
        raise UsageError("--checkpoint-interval must be positive")
    if args.record_every < 0:
        raise UsageError("--record-every must not be negative")
    if args.records and not args.record_every:
        raise UsageError("--records needs --record-every")
    try:
        context = server_context(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    out = _output_folder(args.out)
    if out is not None:
        add_logfile(out / "aiodq.log")
    options = {
        "master_config": master_config,
        "connection_config": network,
        "ssl": context,
        "checkpoint": args.checkpoint,
        "checkpoint_interval": args.checkpoint_interval,
        "resume": args.resume,
        "record_every": args.record_every,
    }
    records = Path(args.records) if args.records else None
    try:
        summary = run_coroutine(
            master_main(config, dataset, host, port, args.workers, records_path=records, **options)
        )
    except (CheckpointError, RunError) as exc:
        print(f"aiodq master: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(
            f"aiodq master: cannot listen on {format_address(host, port)}: {describe_os_error(exc)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return _finish("master", summary, out)


def cmd_worker(args: argparse.Namespace) -> int:
    """``aiodq worker``: train on one shard for a remote master."""
    try:
        dataset = load_data_or_fail(args.data)
    except RunError as exc:
        raise UsageError(str(exc)) from exc
    host, port = args.connect
    index, count = args.shard
    setup_logging(logging.WARNING)
    network = connection_config(args)
    use_tls = args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name
    try:
        context = client_context(args.tls_ca, args.tls_cert, args.tls_key) if use_tls else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.retry_for < 0:
        raise UsageError("--retry-for must not be negative")
    options = {
        "connection_config": network,
        "ssl": context,
        "server_hostname": args.tls_server_name,
        "retry_for": args.retry_for,
    }
    if dataset.samples < count:
        raise UsageError(f"{dataset.samples} samples cannot be split into {count} shards")
    try:
        result = run_coroutine(
            worker_main(host, port, dataset, index=index, workers=count, seed=args.seed, **options)
        )
    except OSError as exc:
        print(
            f"aiodq worker: cannot reach the master at {format_address(host, port)}: "
            f"{describe_os_error(exc)}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if not result.ok:
        print(f"aiodq worker: the session ended: {code_name(result.code)}: {result.reason}", file=sys.stderr)
        return EXIT_FAILED
    return 0


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
    setup_logging(logging.WARNING)
    context = Context(
        data=data,
        out=Path(args.out),
        quick=args.quick,
        datasets=datasets,
        repeats=args.repeats,
        log=lambda line: print(line, flush=True),
        overrides={} if args.entropy_coding else {"entropy_coding": False},
    )
    try:
        run_experiment(args.name, context)
    except ExperimentError as exc:
        print(f"aiodq experiment: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0
