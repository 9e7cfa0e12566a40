"""The commands behind ``aiodq run``, ``aiodq master``, ``aiodq worker`` and ``aiodq experiment``."""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path

from ..config import MasterConfig
from ..data import load_test_dataset
from ..errors import (
    TRAINING_COMPLETE,
    CheckpointError,
    DataError,
    RunError,
    StoppedError,
    UsageError,
    code_name,
    stop_said,
)
from ..launch.common import check_shares
from ..launch.local import (
    load_data_or_fail,
    lower_priority,
    master_main,
    resolve_worker_nice,
    run_cluster,
    run_coroutine,
    worker_main,
)
from ..launch.models import check_test_set, load_factory, objective_for, read_start
from ..launch.processes import die_with_parent
from ..launch.results import RESULT_FILES, check_out
from ..net import checkpoint as checkpoint_file
from ..net.checkpoint import resumable
from ..net.tls import client_context, server_context
from ..net.worker import describe_os_error, format_address
from ..protocol.algorithms import TrainConfig
from ..protocol.dataset import Dataset
from ..protocol.objectives import BUILT_IN, Objective, fixed_fingerprint
from .finish import EXIT_FAILED, EarlyResults, finish, stopped_finishing
from .logs import add_logfile, held_logs, log_start, say, setup_logging, tell
from .options import checkpoint_options, connection_config, from_args, rendezvous, train_config
from .outfolder import (
    LOG,
    NEW_LOG,
    checkpoint_beside_results,
    found,
    hold,
    keep,
    log_for,
    undo_refused_start,
)

__all__ = ["EXIT_FAILED", "EXIT_USAGE", "cmd_master", "cmd_run", "cmd_worker"]

EXIT_USAGE = 2


def _dataset_for(
    config: TrainConfig, path: str | None, workers: int
) -> tuple[Dataset, Objective, Dataset | None, str]:
    """The training set at ``path``, the model's objective on it, the test set (if any), its fingerprint.

    The fingerprint is taken before the objective is built: a factory of your own may change the
    arrays it is given in place, and the workers take theirs before theirs (a review: every run of
    such a model was refused as "other data").

    The test set (:func:`~aiodq.data.load_test_dataset`) is read now, so that a broken one
    is reported before training; it only ever gives the summary's test figures.

    Raises:
        UsageError: if it cannot be read, is too small for ``workers``, or the model cannot
            be loaded or cannot learn from its labels.
    """
    try:
        dataset = load_data_or_fail(path)
    except RunError as exc:
        raise UsageError(str(exc)) from exc
    if workers < 1:
        raise UsageError("--workers must be at least 1")
    check_shares(dataset.samples, workers)
    fingerprint = dataset.fingerprint()
    objective = objective_for(config, dataset, training_set=True)
    try:
        test = load_test_dataset(path, n_features=dataset.features.shape[1])
    except DataError as exc:
        raise UsageError(f"the test set: {exc}") from exc
    if test is not None:
        check_test_set(config, dataset, test)
    return dataset, objective, test, fingerprint


def _output_folder(out: str | None) -> Path | None:
    """``--out``, created, checked and held before the run (its results are not lost at the end).

    Held (:func:`~aiodq.cli.outfolder.hold`) until the command ends: a second run is refused it.
    """
    if out is None:
        return None
    try:
        folder = check_out(Path(out))
    except RunError as exc:
        raise UsageError(str(exc)) from exc
    hold(folder)
    return folder


def _checked_checkpoint(path: str | None, out: Path, option: str = "--checkpoint") -> None:
    """Refuse a checkpoint (or start) path that is one of the files the run writes into ``out``."""
    if path is None:
        return
    target = os.path.realpath(path)  # (not Path.resolve: a link loop raises there, and fails later here)
    for name in (*RESULT_FILES, LOG, NEW_LOG):
        if target == os.path.realpath(out / name):
            also = ": copy it elsewhere first, or give another --out" if option == "--start-from" else ""
            raise UsageError(f"{option} {path}: the run writes its {name} there (--out {out}){also}")


def cmd_run(args: argparse.Namespace) -> int:
    """``aiodq run``: a cluster on this machine (or on Ray); summary, result.json, model.npz and the plot."""
    config = train_config(args)
    master_config = from_args(MasterConfig, args)
    saving = checkpoint_options(args)  # (--resume with --start-from refused before the file is read)
    with held_logs() as held:  # the label mapping, logged before aiodq.log may be written
        dataset, objective, test, fingerprint = _dataset_for(config, args.data, args.workers)
        given = args.start_from
        start = (
            None
            if given is None
            else read_start(
                given,
                config,
                objective.dim,
                data=dataset,
                fingerprint=fingerprint,
                fixed=fixed_fingerprint(objective),
            )
        )
        if master_config.connection_rate and args.launcher == "local":
            message = "--connection-rate: every local worker connects from 127.0.0.1, one address to it"
            say("run", message, level=logging.WARNING)  # (on stderr too: an audit saw it in aiodq.log only)
    # What it is, then where (a newcomer trial: --start-from out/result.json was told to copy it elsewhere).
    _checked_checkpoint(args.start_from, Path(args.out), "--start-from")  # (its model replaces that one)
    if not args.timeout > 0:
        raise UsageError("--timeout must be a positive number of seconds")
    if args.max_restarts < 0:
        raise UsageError("--max-restarts must not be negative")
    if args.worker_cpus is not None and not args.worker_cpus > 0:
        raise UsageError("--worker-cpus must be positive")
    if args.worker_nice is not None and args.launcher != "local":
        raise UsageError("--worker-nice applies to --launcher local only")
    ray_only = ("ray_address", "worker_cpus", "ray_bind", "ray_master_node")
    given = ["--" + name.replace("_", "-") for name in ray_only if getattr(args, name) is not None]
    if given and args.launcher != "ray":
        raise UsageError(f"{', '.join(given)}: for --launcher ray only")
    saving["start_from"] = start  # (read and checked before --out is made; None without --start-from)
    try:
        worker_nice = resolve_worker_nice(args.worker_nice, "a nice increment")
    except ValueError as exc:
        raise UsageError(f"--worker-nice: {exc}") from exc
    if args.launcher == "ray":
        from ..launch.ray import import_ray  # noqa: PLC0415 - ray is an extra, imported only here

        import_ray()  # before --out is made (a newcomer trial: without ray, a log was left there)
    log = log_for(Path(args.out), args.resume, saving["checkpoint"])
    missing = found(log, saving["checkpoint"])
    _checked_checkpoint(saving["checkpoint"], Path(args.out))  # before --out is made
    out = _output_folder(args.out)
    assert out is not None
    data_path = os.path.abspath(args.data) if args.data is not None else None  # (not resolved: ray.md)
    # Appended: the log of the results there (a stopped run's, say), or of runs that failed there since,
    # is kept (a newcomer trial lost a stopped run's log to the next run's).
    setup_logging(logging.WARNING, out / log.name, append=True)
    log_start(args.argv)
    for record in held:
        logging.getLogger(record.name).handle(record)
    try:
        if moved := checkpoint_beside_results(saving["checkpoint"], out, args.resume):
            say("run", moved, level=logging.WARNING)
    except CheckpointError as exc:
        say("run", str(exc))
        return EXIT_FAILED
    write_now = EarlyResults(out, test, dataset)
    try:
        if args.launcher == "ray":
            from ..launch.ray import run_ray  # noqa: PLC0415 - ray is an extra, imported only here

            launch = run_ray(
                config,
                data_path,
                workers=args.workers,
                address=args.ray_address,
                worker_cpus=1.0 if args.worker_cpus is None else args.worker_cpus,
                bind_host=args.ray_bind,
                master_node=args.ray_master_node,
                progress=not args.no_progress,
                timeout=args.timeout,
                master_config=master_config,
                max_restarts=args.max_restarts,
                finished=write_now,
                stopped=write_now.stopped,
                data_fingerprint=fingerprint,
                **saving,
            )
        else:
            launch = run_cluster(
                config,
                dataset,
                data_path,
                objective,
                workers=args.workers,
                progress=not args.no_progress,
                timeout=args.timeout,
                master_config=master_config,
                max_restarts=args.max_restarts,
                worker_nice=worker_nice,
                finished=write_now,
                stopped=write_now.stopped,
                data_fingerprint=fingerprint,
                **saving,
            )
        result = run_coroutine(launch)
    except (CheckpointError, RunError) as exc:
        write_now.say("run")
        if isinstance(exc, CheckpointError) and write_now.written is None:  # (mid-run, it is logged)
            # A refused start: said in a log that was there after its command line (an operator's audit
            # found the command line alone, a start with no outcome); a log the start made is removed.
            say("run", str(exc))
            undo_refused_start(missing)
        else:  # (the option that set a timeout, named: a newcomer trial)
            say("run", re.sub(r"^(the run did not finish within \S+ s)", r"\1 (--timeout)", str(exc)))
            write_now.keep("run", exc.result if isinstance(exc, RunError) else None)
        return EXIT_FAILED
    except (KeyboardInterrupt, StoppedError) as exc:
        write_now.say("run")
        write_now.keep("run", write_now.stood, stop_said(exc)[0])
        args.results_written = isinstance(write_now.written, str)  # (else main() says where they are)
        raise
    # Written again: the early files were a safeguard, and the result is complete only now (the
    # workers' last CLOSE frames in its traffic, and with Ray the summary's ray figures).  A stop
    # here says where those written as training ended are (a newcomer trial: a Ctrl-C as training
    # ended left complete results, and only "interrupted" said; a SIGTERM then ended the command unsaid).
    try:
        return finish(
            "run", result, out, test, dataset, early=write_now.written, checkpoint=saving["checkpoint"]
        )
    except KeyboardInterrupt:  # (Ctrl-C, SIGTERM, SIGHUP: they stop it where it is, saying so)
        stopped_finishing("run", write_now, args)
        raise


def _holds_records(path: Path) -> bool:
    """Whether ``path`` is a model records file, which ``--records`` may replace (unreadable: not one)."""
    try:
        return (
            checkpoint_file.kind_of(checkpoint_file.load(path, max_bytes=16 << 20, arrays=False).meta)
            == "records"
        )
    except CheckpointError:
        return False


def cmd_master(args: argparse.Namespace) -> int:
    """``aiodq master``: serve one training run to remote workers."""
    config = train_config(args)
    master_config = from_args(MasterConfig, args)
    dataset, objective, test, fingerprint = _dataset_for(config, args.data, args.workers)
    host, port = args.listen
    setup_logging(logging.INFO)
    network = connection_config(args)
    try:
        network.limits.check_model(objective.dim, options=True)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if (args.tls_cert is None) != (args.tls_key is None) or (args.tls_client_ca and not args.tls_cert):
        raise UsageError("TLS needs both --tls-cert and --tls-key (and them for --tls-client-ca)")
    saving = checkpoint_options(args)
    if args.out is not None:
        _checked_checkpoint(args.start_from, Path(args.out), "--start-from")
    if args.start_from is not None:
        saving["start_from"] = read_start(
            args.start_from, config, objective.dim, data=dataset, fingerprint=fingerprint,
            fixed=fixed_fingerprint(objective),
        )  # fmt: skip
    if args.record_every < 0:
        raise UsageError("--record-every must not be negative")
    if args.records and not args.record_every:
        raise UsageError("--records needs --record-every")
    try:
        context = server_context(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    log = None if args.out is None else log_for(Path(args.out), args.resume, saving["checkpoint"])
    records_lock = args.records and str(checkpoint_file.lock_path(args.records))  # (made below: undone too)
    missing = found(log, saving["checkpoint"], args.records, records_lock)
    records = Path(args.records) if args.records else None
    if args.out is not None:
        _checked_checkpoint(args.records, Path(args.out), "--records")  # before its folder is made
    if records is not None:
        if saving["checkpoint"] and os.path.realpath(records) == os.path.realpath(saving["checkpoint"]):
            raise UsageError(f"--records {records}: the run checkpoints there: give another file")
        if records.is_dir():
            raise UsageError(f"--records {records}: a folder, not a file")
        try:  # (an audit: two masters given one file wrote over each other's records)
            keep(checkpoint_file.lock(records, what="records file"))
        except CheckpointError as exc:
            raise UsageError(f"--records: {exc}") from None
        if records.exists() and not _holds_records(records):  # (an audit: a trained model.npz was replaced)
            said = "not a model records file; it is not overwritten: give another file"
            raise UsageError(f"--records {records}: {said}")
        try:
            check_out(records.parent)
        except RunError as exc:
            raise UsageError(f"--records: {exc}") from exc
    if args.out is not None:
        _checked_checkpoint(saving["checkpoint"], Path(args.out))  # before --out is made
    out = _output_folder(args.out)
    if out is not None and log is not None:
        add_logfile(out / log.name, append=True)  # (kept: as aiodq run's)
        log_start(args.argv)
    try:
        if out is not None and (moved := checkpoint_beside_results(saving["checkpoint"], out, args.resume)):
            say("master", moved, level=logging.WARNING)
    except CheckpointError as exc:
        say("master", str(exc))
        return EXIT_FAILED
    stood = resumable(saving["checkpoint"]) if records is not None and args.resume else None
    if stood is not None and not checkpoint_file.holds_records(saving["checkpoint"]):
        # (A crash-recovery trial found the copies before the checkpoint gone from the file, unsaid.)
        said = f"--records {records}: the model copies from version {stood[1]} on; an earlier version's"
        say(
            "master",
            f"{said} checkpoint keeps none, and those the interrupted run took are lost",
            level=logging.WARNING,
        )
    options = {
        "master_config": master_config,
        "connection_config": network,
        "ssl": context,
        **saving,
        "record_every": args.record_every,
        "data_fingerprint": fingerprint,
    }
    write_now = None if out is None else EarlyResults(out, test, dataset)
    try:
        result = run_coroutine(
            master_main(
                config,
                dataset,
                objective,
                host=host,
                port=port,
                workers=args.workers,
                records_path=records,
                finished=write_now,
                stopped=None if write_now is None else write_now.stopped,
                **options,
            )
        )
    except (CheckpointError, RunError) as exc:
        if write_now is not None:
            write_now.say("master")
        say("master", str(exc))
        if isinstance(exc, CheckpointError) and (write_now is None or write_now.written is None):
            undo_refused_start(missing)  # (a refused start: as aiodq run's)
        return EXIT_FAILED
    except (KeyboardInterrupt, StoppedError) as exc:
        if write_now is not None:
            write_now.say("master")
            write_now.keep("master", write_now.stood, stop_said(exc)[0])
            args.results_written = isinstance(write_now.written, str)
        raise
    except OSError as exc:
        say("master", f"cannot listen on {format_address(host, port)}: {describe_os_error(exc)}")
        return EXIT_FAILED
    early = write_now.written if write_now else None
    try:
        status = finish("master", result, out, test, dataset, early=early, checkpoint=saving["checkpoint"])
    except KeyboardInterrupt:
        stopped_finishing("master", write_now, args)
        raise
    if "records_error" in result.summary:
        say("master", result.summary["records_error"])
        return EXIT_FAILED
    return status


def cmd_worker(args: argparse.Namespace) -> int:
    """``aiodq worker``: train on one shard for a remote master."""
    if not die_with_parent(os.environ):
        say("worker", "the aiodq run that started this worker has ended")
        return EXIT_FAILED
    (host, port), (index, count) = rendezvous(args.connect, args.shard, os.environ)
    try:
        lower_priority(args.nice)
    except ValueError as exc:
        raise UsageError(f"--nice: {exc}") from exc
    try:
        dataset = load_data_or_fail(args.data)
    except RunError as exc:
        raise UsageError(str(exc)) from exc
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
    if args.model is not None and args.model not in BUILT_IN:
        load_factory(args.model)  # an import that fails is a usage error before connecting
    try:
        result = run_coroutine(
            worker_main(
                host, port, dataset, index=index, workers=count, seed=args.seed, model=args.model, **options
            )
        )
    except OSError as exc:
        notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))  # (how the last session ended)
        within = f" within --retry-for {args.retry_for:g} s" if notes else ""
        said = f"cannot reach the master at {format_address(host, port)}: {describe_os_error(exc)}"
        tell(f"aiodq worker: {said}{notes}{within}")
        return EXIT_FAILED
    if not result.ok:
        tell(f"aiodq worker: the session ended: {code_name(result.code)}: {result.reason}")
        return EXIT_USAGE if result.cannot_train else EXIT_FAILED  # (2: CANNOT_TRAIN, not restarted)
    if result.reason and result.reason != TRAINING_COMPLETE:  # (the master's verdict: the master reports it)
        tell(f"aiodq worker: the master ended training: {result.reason}")
    return 0
