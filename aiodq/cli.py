"""The ``aiodq`` command line (docs/usage.md).

Commands:

- ``aiodq run``: the main job. One master here and M worker processes on
  127.0.0.1 train a model (default: logistic regression on the bundled a9a),
  with live progress, a summary table, ``result.json`` and a loss-against-bits
  plot in ``--out``.
- ``aiodq master --listen HOST:PORT`` and ``aiodq worker --connect HOST:PORT
  --shard I/M``: the same, as separate processes on any hosts.
- ``aiodq demo``: an in-memory codec and protocol demonstration.
- ``aiodq bench codec`` and ``aiodq bench master``: benchmarks, JSON on stdout.
- ``aiodq experiment NAME --data DIR``: the paper's experiments on real data
  (table1, mu, timing, workers, network, all); ``--quick`` on the bundled a9a.

Exit status: 0 on success, 1 when a run fails (a worker process dies, the
master is unreachable), 2 for bad options or unreadable data.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .algorithms import ALGORITHMS, TrainConfig
from .auth import load_secret
from .bench import main_codec
from .checkpoint import CheckpointError
from .config import ConnectionConfig, Limits
from .connection import MasterConnection, WorkerConnection
from .events import Config, Event, Gradient, Hello, Model, Snapshot, SnapshotGradient, Welcome
from .quant.lowp import quantize_gradient, quantize_model
from .quant.qsgd import quantize_qsgd
from .quant.sparse import quantize_sparse
from .tls import client_context, server_context
from .vectors import RawVector
from .wire.messages import encode_message

__all__ = ["main"]

EXIT_FAILED = 1
EXIT_USAGE = 2


class UsageError(Exception):
    """Bad options or unreadable input: exit status 2."""


# -- demo ---------------------------------------------------------------------


def _pump(
    sender: MasterConnection | WorkerConnection, receiver: MasterConnection | WorkerConnection
) -> list[Event]:
    receiver.receive_data(sender.data_to_send(), 0.0)
    events = []
    while (event := receiver.next_event()) is not None:
        events.append(event)
    return events


def demo(dim: int, bits: int, mu: float, seed: int) -> dict[str, object]:
    """Handshake and snapshot phase between an in-memory master and worker, then message sizes.

    The MODEL is sent through the master's connection; the GRADIENT variants
    are only encoded, to compare their sizes.
    """
    rng = np.random.default_rng(seed)
    samples = 256
    features = rng.standard_normal((samples, dim)) / np.sqrt(dim)
    labels = np.where(features @ rng.standard_normal(dim) > 0, 1.0, -1.0)

    def gradient(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        margins = labels * (features @ x)
        result: npt.NDArray[np.float64] = -(features.T @ (labels / (1.0 + np.exp(margins)))) / samples
        return result

    master, worker = MasterConnection(), WorkerConnection()
    worker.send(Hello(name="demo-worker"), 0.0)
    _pump(worker, master)
    master.send(Welcome(version=1, worker_id=0), 0.0)
    master.send(Config(dim=dim, algorithm="asylpg", params={"bits": bits, "mu": mu}), 0.0)
    _pump(master, worker)
    snapshot = np.zeros(dim)
    master.send(Snapshot(epoch=0, vector=RawVector(snapshot)), 0.0)
    _pump(master, worker)
    worker.send(
        SnapshotGradient(
            epoch=0,
            samples=samples,
            loss=samples * np.log(2.0),
            correct=0,
            vector=RawVector(gradient(snapshot) * samples),
        ),
        0.0,
    )
    _pump(worker, master)
    x = snapshot - 0.5 * gradient(snapshot)
    payload = quantize_model(x, snapshot, mu, rng)
    master.send(Model(epoch=0, version=1, vector=payload.vector, relative=payload.relative), 0.0)
    rows: list[dict[str, object]] = [
        {"message": f"MODEL ({type(payload.vector).__name__}, mu={mu})", "bytes": len(master.data_to_send())}
    ]
    alpha = gradient(x) - gradient(snapshot)
    for name, vector in [
        (f"GRADIENT dense b={bits}", quantize_gradient(alpha, bits, rng)),
        (f"GRADIENT sparse phi=d/20 b={bits}", quantize_sparse(alpha, dim / 20, bits, rng)),
        ("GRADIENT QSGD s=16", quantize_qsgd(alpha, 16, rng)),
        ("GRADIENT float32", RawVector(alpha.astype(np.float32))),
    ]:
        error = float(np.linalg.norm(vector.to_dense() - alpha)) / max(float(np.linalg.norm(alpha)), 1e-300)
        size = len(encode_message(Gradient(epoch=0, version=1, vector=vector)))
        rows.append({"message": name, "bytes": size, "relative_error": round(error, 4)})
    return {"dim": dim, "float32_bytes": 4 * dim, "messages": rows}


# -- options ------------------------------------------------------------------


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"expected I/M with 0 <= I < M, got {text!r}")
    return int(index), int(count)


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    defaults = TrainConfig()
    group = parser.add_argument_group("training")
    group.add_argument(
        "--algorithm",
        default=defaults.algorithm,
        choices=sorted(ALGORITHMS),
        help=f"algorithm (default {defaults.algorithm})",
    )
    group.add_argument(
        "--epochs", type=int, default=defaults.epochs, help=f"epochs S (default {defaults.epochs})"
    )
    group.add_argument(
        "--updates-per-epoch",
        type=int,
        default=defaults.updates_per_epoch,
        help="applied updates per epoch m (default 0: one pass, n / batch)",
    )
    group.add_argument(
        "--step", type=float, default=0.0, help="step size eta (default 0: 0.5, or 0.2 for sparse-asylpg)"
    )
    group.add_argument(
        "--batch", type=int, default=defaults.batch, help=f"mini-batch size B (default {defaults.batch})"
    )
    group.add_argument(
        "--bits", type=int, default=defaults.bits, help=f"gradient bits b, 2-16 (default {defaults.bits})"
    )
    group.add_argument(
        "--mu", type=float, default=defaults.mu, help=f"model precision mu (default {defaults.mu})"
    )
    group.add_argument(
        "--phi",
        type=float,
        default=defaults.phi,
        help=f"sparsity budget as a fraction of d, Sparse-AsyLPG (default {defaults.phi})",
    )
    group.add_argument(
        "--tau", type=int, default=defaults.tau, help=f"staleness bound tau (default {defaults.tau})"
    )
    group.add_argument(
        "--qsgd-levels",
        type=int,
        default=defaults.qsgd_levels,
        help=f"QSGD levels s, QSVRG (default {defaults.qsgd_levels})",
    )
    group.add_argument("--l2", type=float, default=defaults.l2, help=f"L2 weight (default {defaults.l2})")
    group.add_argument(
        "--l1", type=float, default=defaults.l1, help=f"L1 weight, proximal (default {defaults.l1})"
    )
    group.add_argument(
        "--model",
        default=defaults.model,
        choices=["logistic", "softmax", "mlp"],
        help=f"model (default {defaults.model}; use softmax or mlp for MNIST)",
    )
    group.add_argument(
        "--hidden", type=int, default=defaults.hidden, help=f"MLP hidden units (default {defaults.hidden})"
    )
    group.add_argument(
        "--seed", type=int, default=defaults.seed, help=f"random seed (default {defaults.seed})"
    )
    group.add_argument(
        "--no-entropy-coding",
        dest="entropy_coding",
        action="store_false",
        help="send quantized codes at fixed width (DENSE) even where Rice coding (DENSE_RICE) is smaller",
    )


def _add_network_options(parser: argparse.ArgumentParser, *, master: bool) -> None:
    defaults = ConnectionConfig()
    limits = defaults.limits
    group = parser.add_argument_group("network and security")
    group.add_argument(
        "--secret-file",
        default=None,
        help="file holding the shared secret (default: $AIODQ_SECRET; none: no authentication)",
    )
    if master:
        group.add_argument("--tls-cert", default=None, help="TLS certificate chain (PEM) of the master")
        group.add_argument("--tls-key", default=None, help="TLS private key (PEM) of the master")
        group.add_argument(
            "--tls-client-ca", default=None, help="require client certificates signed by this CA (mTLS)"
        )
    else:
        group.add_argument(
            "--tls", action="store_true", help="connect with TLS (implied by the other --tls options)"
        )
        group.add_argument(
            "--tls-ca", default=None, help="CA (PEM) to check the master's certificate against"
        )
        group.add_argument("--tls-cert", default=None, help="client certificate (PEM), for mutual TLS")
        group.add_argument("--tls-key", default=None, help="client private key (PEM), for mutual TLS")
        group.add_argument(
            "--tls-server-name", default=None, help="name to check the master's certificate for"
        )
        group.add_argument(
            "--retry-for",
            type=float,
            default=30.0,
            help="keep reconnecting with backoff for this many seconds (default 30; 0: never)",
        )
    group.add_argument(
        "--handshake-timeout",
        type=float,
        default=defaults.handshake_timeout,
        help=f"seconds to complete the handshake (default {defaults.handshake_timeout:g})",
    )
    group.add_argument(
        "--idle-timeout",
        type=float,
        default=defaults.idle_timeout,
        help=f"seconds of peer silence before closing (default {defaults.idle_timeout:g})",
    )
    group.add_argument(
        "--heartbeat-interval",
        type=float,
        default=defaults.heartbeat_interval,
        help=f"seconds of own silence before a heartbeat (default {defaults.heartbeat_interval:g})",
    )
    group.add_argument(
        "--max-frame-bytes",
        type=int,
        default=limits.max_frame_bytes,
        help=f"largest frame body accepted (default {limits.max_frame_bytes})",
    )
    group.add_argument(
        "--max-dimension",
        type=int,
        default=limits.max_dimension,
        help=f"largest vector dimension accepted (default {limits.max_dimension})",
    )
    if master:
        group.add_argument("--checkpoint", default=None, help="checkpoint file, written atomically")
        group.add_argument(
            "--checkpoint-interval", type=float, default=60.0, help="seconds between checkpoints (default 60)"
        )
        group.add_argument("--resume", action="store_true", help="continue from --checkpoint")


def _connection_config(args: argparse.Namespace) -> ConnectionConfig:
    try:
        secret = load_secret(args.secret_file)
        limits = Limits(max_frame_bytes=args.max_frame_bytes, max_dimension=args.max_dimension)
        return ConnectionConfig(
            limits=limits,
            handshake_timeout=args.handshake_timeout,
            idle_timeout=args.idle_timeout,
            heartbeat_interval=args.heartbeat_interval,
            secret=secret,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _config(args: argparse.Namespace) -> TrainConfig:
    try:
        return TrainConfig(
            algorithm=args.algorithm,
            epochs=args.epochs,
            updates_per_epoch=args.updates_per_epoch,
            step=args.step,
            batch=args.batch,
            bits=args.bits,
            mu=args.mu,
            phi=args.phi,
            tau=args.tau,
            qsgd_levels=args.qsgd_levels,
            l2=args.l2,
            l1=args.l1,
            model=args.model,
            hidden=args.hidden,
            seed=args.seed,
            entropy_coding=args.entropy_coding,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiodq", description=(__doc__ or "").split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train on a local cluster: one master, M worker processes")
    _add_training_options(run)
    run.add_argument("--workers", type=int, default=4, help="number of worker processes M (default 4)")
    run.add_argument(
        "--data", default=None, help="LIBSVM file, MNIST CSV(.gz), or MNIST IDX folder (default: bundled a9a)"
    )
    run.add_argument(
        "--out", default="aiodq-out", help="folder for result.json and the plot (default aiodq-out)"
    )
    run.add_argument("--no-progress", action="store_true", help="no live progress display")
    run.add_argument(
        "--timeout", type=float, default=3600.0, help="give up after this many seconds (default 3600)"
    )

    master = commands.add_parser("master", help="serve as the master of a cluster")
    _add_training_options(master)
    master.add_argument("--listen", type=_address, required=True, help="HOST:PORT to listen on (port 0: any)")
    master.add_argument("--workers", type=int, required=True, help="number of workers M to wait for")
    master.add_argument("--data", default=None, help="the dataset, read for its shape (default: bundled a9a)")
    master.add_argument("--out", default=None, help="folder for result.json and the plot")
    master.add_argument(
        "--record-every",
        type=int,
        default=0,
        help="keep a model copy every N applied updates and at every snapshot phase (default 0: none)",
    )
    master.add_argument(
        "--records", default=None, help="write the model copies to this .npz file when training ends"
    )
    _add_network_options(master, master=True)

    worker = commands.add_parser("worker", help="join a cluster as one worker")
    worker.add_argument("--connect", type=_address, required=True, help="the master's HOST:PORT")
    worker.add_argument("--shard", type=_shard, required=True, help="I/M: this worker holds shard I of M")
    worker.add_argument("--data", default=None, help="the dataset (default: bundled a9a)")
    worker.add_argument(
        "--seed", type=int, default=0, help="the sharding seed; the master's --seed (default 0)"
    )
    _add_network_options(worker, master=False)

    demo_parser = commands.add_parser("demo", help="in-memory codec and protocol demonstration")
    demo_parser.add_argument("--dim", type=int, default=10_000, help="model dimension (default 10000)")
    demo_parser.add_argument("--bits", type=int, default=8, help="gradient bits b, 2 to 16 (default 8)")
    demo_parser.add_argument("--mu", type=float, default=0.5, help="model precision mu (default 0.5)")
    demo_parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    bench = commands.add_parser("bench", help="benchmarks")
    benches = bench.add_subparsers(dest="bench", required=True)
    codec = benches.add_parser("codec", help="encode/decode speed and wire size, JSON on stdout")
    codec.add_argument("--dims", default="1e4,1e5,1e6", help="comma-separated dimensions")
    codec.add_argument("--bits", default="2,4,8", help="comma-separated bit widths")
    codec.add_argument("--repeats", type=int, default=None, help="repetitions per case (default 31/101)")
    codec.add_argument("--seed", type=int, default=0)
    codec.add_argument("--out", default=None, help="also write the JSON report to this file")
    master_bench = benches.add_parser("master", help="applied updates per second over TCP, JSON on stdout")
    master_bench.add_argument("--dims", default="1e3,1e5,1e6", help="comma-separated dimensions")
    master_bench.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts")
    master_bench.add_argument(
        "--updates", type=int, default=0, help="updates per case (default: by dimension)"
    )
    master_bench.add_argument("--out", default=None, help="also write the JSON report to this file")

    experiment = commands.add_parser(
        "experiment", help="the paper's experiments on real data (docs/results.md)"
    )
    experiment.add_argument(
        "name", choices=["all", "table1", "mu", "timing", "workers", "network"], help="which experiment"
    )
    experiment.add_argument(
        "--data",
        default=None,
        help="the data folder: libsvm/a9a, libsvm/w8a, mnist/... (e.g. ../shared/data)",
    )
    experiment.add_argument(
        "--datasets", default="", help="comma-separated: a9a, w8a, mnist (default: every one in --data)"
    )
    experiment.add_argument(
        "--out", default="aiodq-experiments", help="output folder (default aiodq-experiments)"
    )
    experiment.add_argument(
        "--quick", action="store_true", help="bundled a9a, few epochs: checks the runner, not the results"
    )
    experiment.add_argument("--repeats", type=int, default=1, help="seeds per setting; medians (default 1)")
    experiment.add_argument(
        "--no-entropy-coding",
        dest="entropy_coding",
        action="store_false",
        help="fixed-width codes (DENSE) in every run, as the paper counts bits",
    )
    return parser


# -- commands -------------------------------------------------------------------


def _print_summary(summary: dict[str, object], command: str) -> None:
    from rich.console import Console  # noqa: PLC0415 - rich only for the CLI's output
    from rich.table import Table  # noqa: PLC0415

    from .runner import summary_rows  # noqa: PLC0415

    table = Table(title=f"aiodq {command}: summary", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    for label, value in summary_rows(summary):
        table.add_row(label, value)
    Console().print(table)


def _setup_logging(stderr_level: int, logfile: Path | None = None) -> None:
    """Log aiodq's records to stderr at ``stderr_level`` and, if given, everything to ``logfile``."""
    logger = logging.getLogger("aiodq")
    logger.setLevel(logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s")
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(stderr_level)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(logfile, mode="w", encoding="utf-8")
        handler.setFormatter(formatter)
        logger.addHandler(handler)


def _cmd_run(args: argparse.Namespace) -> int:
    from .runner import RunError, load_data_or_fail, run_coroutine, run_local, write_results  # noqa: PLC0415

    config = _config(args)
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    try:
        dataset = load_data_or_fail(args.data)
    except RunError as exc:
        raise UsageError(str(exc)) from exc
    if dataset.samples < args.workers:
        raise UsageError(f"{dataset.samples} samples cannot be shared by {args.workers} workers")
    data_path = str(Path(args.data).resolve()) if args.data is not None else None
    _setup_logging(logging.WARNING, Path(args.out) / "aiodq.log")
    try:
        summary = run_coroutine(
            run_local(
                config, dataset, data_path, args.workers, progress=not args.no_progress, timeout=args.timeout
            )
        )
    except RunError as exc:
        print(f"aiodq run: {exc}", file=sys.stderr)
        return EXIT_FAILED
    result, plot = write_results(summary, Path(args.out))
    _print_summary(summary, "run")
    print(f"wrote {result}" + (f" and {plot}" if plot else "") + f"; log in {Path(args.out) / 'aiodq.log'}")
    return 0


def _cmd_master(args: argparse.Namespace) -> int:
    from .runner import RunError, load_data_or_fail, master_main, run_coroutine, write_results  # noqa: PLC0415

    config = _config(args)
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    try:
        dataset = load_data_or_fail(args.data)
    except RunError as exc:
        raise UsageError(str(exc)) from exc
    host, port = args.listen
    connection_config = _connection_config(args)
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
    _setup_logging(logging.INFO, Path(args.out) / "aiodq.log" if args.out else None)
    options = {
        "connection_config": connection_config,
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
        print(f"aiodq master: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.out:
        write_results(summary, Path(args.out))
    _print_summary(summary, "master")
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from .runner import RunError, load_data_or_fail, run_coroutine, worker_main  # noqa: PLC0415

    try:
        dataset = load_data_or_fail(args.data)
    except RunError as exc:
        raise UsageError(str(exc)) from exc
    host, port = args.connect
    index, count = args.shard
    connection_config = _connection_config(args)
    use_tls = args.tls or args.tls_ca or args.tls_cert or args.tls_key or args.tls_server_name
    try:
        context = client_context(args.tls_ca, args.tls_cert, args.tls_key) if use_tls else None
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if args.retry_for < 0:
        raise UsageError("--retry-for must not be negative")
    _setup_logging(logging.WARNING)
    options = {
        "connection_config": connection_config,
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
            f"aiodq worker: cannot reach the master at {host}:{port}: {exc.strerror or exc}", file=sys.stderr
        )
        return EXIT_FAILED
    if not result.ok:
        print(f"aiodq worker: session ended with code {result.code}: {result.reason}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from .experiments import Context, ExperimentError, run_experiment  # noqa: PLC0415

    if args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    if args.quick and (args.data or args.datasets):
        raise UsageError("--quick runs on the bundled a9a: leave out --data and --datasets")
    data = Path(args.data) if args.data else None
    if data is not None and not data.is_dir():
        raise UsageError(f"--data {data}: not a folder")
    datasets = tuple(name for name in args.datasets.split(",") if name)
    _setup_logging(logging.WARNING)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "master":
            return _cmd_master(args)
        if args.command == "worker":
            return _cmd_worker(args)
        if args.command == "demo":
            if not 2 <= args.bits <= 16 or args.dim < 1 or not args.mu > 0:
                raise UsageError("need 2 <= --bits <= 16, --dim >= 1 and --mu > 0")
            print(json.dumps(demo(args.dim, args.bits, args.mu, args.seed), indent=2))
            return 0
        if args.command == "experiment":
            return _cmd_experiment(args)
        if args.bench == "codec":
            return main_codec(args)
        from .bench import main_master  # noqa: PLC0415

        return main_master(args)
    except UsageError as exc:
        print(f"aiodq {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("aiodq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
