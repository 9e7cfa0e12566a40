"""The ``aiodq`` command line (docs/usage.md).

Commands:

- ``aiodq run``: the main job. One master here and M worker processes on
  127.0.0.1 train a model (default: logistic regression on the bundled a9a),
  with live progress, a summary table, ``result.json`` and a loss-against-bits
  plot in ``--out``.
- ``aiodq master --listen HOST:PORT`` and ``aiodq worker --connect HOST:PORT
  --shard I/M``: the same, as separate processes on any hosts.
- ``aiodq demo``: an in-memory codec and protocol demonstration.
- ``aiodq bench codec``, ``aiodq bench master`` and ``aiodq bench worker``: benchmarks, JSON on stdout
  (extra ``aiodq[lab]``).
- ``aiodq experiment NAME --data DIR``: the paper's experiments on real data
  (table1, mu, timing, workers, network, all); ``--quick`` on the bundled a9a (extra ``aiodq[lab]``).

Exit status: 0 on success, 1 when a run fails (a worker process dies, the
master is unreachable), 2 for bad options or unreadable data.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import select
import signal
import stat
import sys
import threading
import time
from collections.abc import Sequence
from typing import NoReturn

from ..config import MasterConfig
from ..errors import SignalStop, StoppedError, UsageError, stop_said
from ..net.checkpoint import finished_run, resumable
from ..version import __version__
from .demo import demo
from .options import (
    add_checkpoint_options,
    add_dataclass_options,
    add_network_options,
    add_training_options,
    connect_address,
    file_path,
    finite_float,
    folder,
    parse_address,
    parse_shard,
    ray_address,
    seed,
)
from .outfolder import release

try:
    from .commands import EXIT_USAGE, cmd_master, cmd_run, cmd_worker
    from .experiment import cmd_experiment
    from .logs import say
except ImportError as exc:  # scipy: the cli extra (with its data extra) is not installed
    _MISSING: str | None = f"{exc.name} is not installed" if exc.name else str(exc)  # (said whole: a review)
    EXIT_USAGE = 2

    def say(command: str, message: str, *, level: int = 0) -> None:  # (aiodq demo: no log to add it to)
        print(f"aiodq {command}: {message}", file=sys.stderr)

else:
    # rich is imported where it prints (commands.print_summary, the live progress): look it up here.
    _MISSING = None if importlib.util.find_spec("rich") else "rich is not installed"

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse's parser (its commands' too), whose errors are one line, as the commands' own are.

    argparse prints the usage first: 30 lines for ``aiodq run`` before the error (a newcomer trial).
    """

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    description = (__doc__ or "").split("\n\n")[0].replace("``", "")  # (the docstring's markup)
    parser = _Parser(prog="aiodq", description=description)
    parser.add_argument("--version", action="version", version=f"aiodq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="train on a local cluster: one master, M worker processes")
    add_training_options(run)
    run.add_argument("--workers", type=int, default=4, help="number of worker processes M (default 4)")
    run.add_argument(
        "--data",
        default=None,
        help="LIBSVM file, MNIST CSV(.gz), or MNIST-format folder: train-* to train on, t10k-* to test "
        "(default: bundled a9a)",
    )
    run.add_argument(
        "--out",
        type=folder,
        default="aiodq-out",
        help="folder for result.json, model.npz and the plot (default aiodq-out)",
    )
    run.add_argument(
        "--launcher",
        choices=("local", "ray"),
        default="local",
        help="local: worker processes on 127.0.0.1 (default); ray: the master and the workers as Ray actors "
        "(the ray extra; docs/ray.md)",
    )
    run.add_argument(
        "--ray-address",
        type=ray_address,
        default=None,
        help="--launcher ray: the Ray cluster to join (auto, or HOST:PORT; default: $RAY_ADDRESS, else a new "
        "local instance)",
    )
    run.add_argument(
        "--worker-cpus",
        type=finite_float,
        default=None,
        help="--launcher ray: CPUs each worker actor reserves (default 1)",
    )
    run.add_argument(
        "--ray-bind",
        default=None,
        help="--launcher ray: the address the master actor listens on (default: its node's IP; 127.0.0.1 "
        "on a local instance)",
    )
    run.add_argument(
        "--ray-master-node",
        default=None,
        help="--launcher ray: where the master actor runs: head, a node's IP or ID (default: this node)",
    )
    run.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="restart a worker process that fails, up to this many times in all (default 0: a failed "
        "worker fails the run)",
    )
    run.add_argument(
        "--worker-nice",
        type=int,
        default=None,
        help="--launcher local: run the workers this many nice steps below the master, which every "
        "update passes through (0 to 19; default 4)",
    )
    add_checkpoint_options(run.add_argument_group("checkpoints"))
    run.add_argument("--no-progress", action="store_true", help="no live progress display")
    run.add_argument(
        "--timeout", type=finite_float, default=3600.0, help="give up after this many seconds (default 3600)"
    )
    add_dataclass_options(run.add_argument_group("master"), MasterConfig)

    master = commands.add_parser("master", help="serve as the master of a cluster")
    add_training_options(master)
    master.add_argument(
        "--listen", type=parse_address, required=True, help="HOST:PORT to listen on (port 0: any)"
    )
    master.add_argument("--workers", type=int, required=True, help="number of workers M to wait for")
    master.add_argument("--data", default=None, help="the dataset, read for its shape (default: bundled a9a)")
    master.add_argument(
        "--out", type=folder, default=None, help="folder for result.json, model.npz, the plot and aiodq.log"
    )
    master.add_argument(
        "--record-every",
        type=int,
        default=0,
        help="keep a model copy every N applied updates and at every snapshot phase (default 0: none)",
    )
    master.add_argument(
        "--records",
        type=file_path,
        default=None,
        help="write the model copies to this .npz file when training ends",
    )
    add_dataclass_options(master.add_argument_group("master"), MasterConfig)
    add_network_options(master, master=True)

    worker = commands.add_parser("worker", help="join a cluster as one worker")
    worker.add_argument(
        "--connect",
        type=connect_address,
        default=None,
        help="the master's HOST:PORT (default: $AIODQ_MASTER_ADDR and $AIODQ_MASTER_PORT)",
    )
    worker.add_argument(
        "--shard",
        type=parse_shard,
        default=None,
        help="I/M: this worker holds shard I of M (default: $AIODQ_RANK/$AIODQ_WORLD_SIZE, "
        "else $SLURM_PROCID/$SLURM_NTASKS)",
    )
    worker.add_argument("--data", default=None, help="the dataset (default: bundled a9a)")
    worker.add_argument(
        "--seed", type=seed, default=0, help="the sharding seed; the master's --seed (default 0)"
    )
    worker.add_argument(
        "--model",
        default=None,
        help="your objective as MODULE:NAME, as the master's --model (default: the built-in model it names)",
    )
    worker.add_argument(
        "--nice",
        type=int,
        default=0,
        help="lower this process's CPU priority by N nice steps (0 to 19), for a worker sharing cores "
        "with its master (default 0)",
    )
    add_network_options(worker, master=False)

    demo_parser = commands.add_parser("demo", help="in-memory codec and protocol demonstration")
    demo_parser.add_argument("--dim", type=int, default=10_000, help="model dimension (default 10000)")
    demo_parser.add_argument("--bits", type=int, default=8, help="gradient bits b, 2 to 16 (default 8)")
    demo_parser.add_argument("--mu", type=finite_float, default=0.5, help="model precision mu (default 0.5)")
    demo_parser.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")

    bench = commands.add_parser("bench", help="benchmarks")
    benches = bench.add_subparsers(dest="bench", required=True)
    codec = benches.add_parser("codec", help="encode/decode speed and wire size, JSON on stdout")
    codec.add_argument("--dims", default="1e4,1e5,1e6", help="comma-separated dimensions")
    codec.add_argument("--bits", default="2,4,8", help="comma-separated bit widths")
    codec.add_argument("--repeats", type=int, default=None, help="repetitions per case (default 31/101)")
    codec.add_argument("--seed", type=seed, default=0)
    codec.add_argument("--out", default=None, help="also write the JSON report to this file")
    master_bench = benches.add_parser("master", help="applied updates per second over TCP, JSON on stdout")
    master_bench.add_argument("--dims", default="1e3,1e5,1e6", help="comma-separated dimensions")
    master_bench.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts")
    master_bench.add_argument(
        "--updates", type=int, default=0, help="updates per case (default: by dimension)"
    )
    master_bench.add_argument("--out", default=None, help="also write the JSON report to this file")
    worker_bench = benches.add_parser(
        "worker", help="a worker's step per algorithm: computation against codec, JSON on stdout"
    )
    worker_bench.add_argument("--dims", default="1e4,1e5,1e6", help="comma-separated dimensions")
    worker_bench.add_argument("--algorithms", default="all", help="comma-separated algorithms (default: all)")
    worker_bench.add_argument("--repeats", type=int, default=None, help="steps per case (default 31/101)")
    worker_bench.add_argument(
        "--nnz-per-row", type=int, default=32, help="nonzero features per synthetic sample (default 32)"
    )
    worker_bench.add_argument("--seed", type=seed, default=0)
    worker_bench.add_argument("--out", default=None, help="also write the JSON report to this file")

    cluster_bench = benches.add_parser(
        "cluster",
        help="ms per applied update on each side of an in-memory cluster, by coding; JSON on stdout",
    )
    cluster_bench.add_argument(
        "--dataset",
        default="bundled",
        help="bundled (the bundled a9a), or a9a, w8a, debdesc, mnist from --data",
    )
    cluster_bench.add_argument("--data", default=None, help="the data folder, as for aiodq experiment")
    cluster_bench.add_argument(
        "--variants", default="all", help="comma-separated: asyfpg, rice, fixed, aligned (default: all)"
    )
    cluster_bench.add_argument("--workers", type=int, default=4, help="workers M (default 4)")
    cluster_bench.add_argument(
        "--warm-up", type=int, default=100, help="applied updates before counting (default 100)"
    )
    cluster_bench.add_argument(
        "--updates", type=int, default=1000, help="applied updates counted (default 1000)"
    )
    cluster_bench.add_argument("--repeats", type=int, default=3, help="runs per variant; medians (default 3)")
    cluster_bench.add_argument("--out", default=None, help="also write the JSON report to this file")

    experiment = commands.add_parser(
        "experiment", help="the paper's experiments on real data (docs/results.md)"
    )
    experiment.add_argument(
        "name",
        choices=["all", "table1", "mu", "timing", "workers", "network", "coding"],
        help="which experiment",
    )
    experiment.add_argument(
        "--data",
        default=None,
        help="the data folder: libsvm/a9a, libsvm/w8a, libsvm/debdesc.gz, mnist/... (e.g. ../shared/data)",
    )
    experiment.add_argument(
        "--datasets",
        default="",
        help="comma-separated: a9a, w8a, debdesc, mnist (default: every one in --data)",
    )
    experiment.add_argument(
        "--out", type=folder, default="aiodq-experiments", help="output folder (default aiodq-experiments)"
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
    experiment.add_argument(
        "--adaptive-coding",
        action="store_true",
        help="every run Rice-codes only while that makes it faster (TrainConfig.adaptive_coding)",
    )
    experiment.add_argument(
        "--aligned-codes",
        action="store_true",
        help="fixed-width codes byte-aligned in every run (TrainConfig.aligned_codes)",
    )
    experiment.add_argument(
        "--no-sparse-gradients",
        dest="sparse_gradients",
        action="store_false",
        help="every run sends its dense gradients' codes dense, never in their sparse form "
        "(TrainConfig.sparse_gradients; to measure what the sparse form does)",
    )
    experiment.add_argument(
        "--bits",
        type=int,
        default=None,
        help="gradient bits b in every run, 2 to 16 (default: each dataset's own, 4; the mu experiment's "
        "b study still sets its own)",
    )
    experiment.add_argument(
        "--worker-nice",
        type=int,
        default=None,
        help="run the workers this many nice steps below the master, on 127.0.0.1 and in the network lab "
        "(0 to 19; default 4, as aiodq run)",
    )
    return parser


def _shard_values_joined(argv: list[str]) -> list[str]:
    """``--shard -1/2`` as ``--shard=-1/2``, so that the message says what is wrong with the shard.

    argparse takes a value that starts with ``-`` and is not a number for an option (``expected one
    argument``).
    """
    joined: list[str] = []
    for token in argv:
        option = joined[-1] if joined else ""
        if len(option) >= 4 and "--shard".startswith(option) and token.startswith("-") and "/" in token:
            joined[-1] = f"{option}={token}"  # (argparse takes an abbreviation: --shar, say)
        else:
            joined.append(token)
    return joined


def _command_names() -> frozenset[str]:
    """The commands, from the parser itself, for a stop's line before one began."""
    parser = _parser()
    subparsers = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return frozenset(name for action in subparsers for name in action.choices)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    Ctrl-C (SIGINT) stops a command even if it was started with SIGINT ignored, as a shell
    without job control starts its background commands: ``aiodq run``'s worker processes,
    spawned through uvloop (libuv resets every signal), stop on it whatever, and the run then
    ended as a worker's failure (a newcomer's ``kill -INT`` of a background run's process group).
    """
    main_thread = threading.current_thread() is threading.main_thread()  # (only it may set handlers)
    ignored = main_thread and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # SIGTERM and SIGHUP stop a command as Ctrl-C does, with its line and status, also outside the
    # event loop (whose own handlers cancel the run): an audit's SIGTERM as the results were written
    # ended the command with no word.
    # One ignored at the start (nohup's SIGHUP, say) stays so.
    stops = [s for s in (signal.SIGTERM, signal.SIGHUP) if signal.getsignal(s) is not signal.SIG_IGN]
    kept = {signum: signal.signal(signum, SignalStop.handler) for signum in stops} if main_thread else {}
    try:
        return _main(argv)
    except KeyboardInterrupt as exc:  # (before any command began: its options or data were being read)
        said, status = stop_said(exc)
        words = list(sys.argv[1:] if argv is None else argv)
        named = f" {words[0]}" if words and words[0] in _command_names() else ""  # (an audit: "aiodq:" alone)
        print(f"aiodq{named}: {said}", file=sys.stderr)
        return status
    finally:
        for signum, handler in kept.items():
            signal.signal(signum, handler)
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _main(argv: Sequence[str] | None) -> int:
    parser = _parser()
    given = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(_shard_values_joined(given))
    args.argv = given  # for the log's first line
    args.started = time.time()  # (a checkpoint written since is this command's: _kept)
    if _MISSING is not None and args.command != "demo":
        print(
            f"aiodq {args.command}: needs the command line's extra ({_MISSING}): pip install 'aiodq[cli]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "master":
            return cmd_master(args)
        if args.command == "worker":
            return cmd_worker(args)
        if args.command == "demo":
            if not 2 <= args.bits <= 16 or args.dim < 1 or not args.mu > 0:
                raise UsageError("need 2 <= --bits <= 16, --dim >= 1 and --mu > 0")
            print(json.dumps(demo(args.dim, args.bits, args.mu, args.seed), indent=2))
            return 0
        if args.command == "experiment":
            return cmd_experiment(args)
        if args.bench == "worker":
            from ..lab.bench_worker import main_worker  # noqa: PLC0415 - the lab extra

            return main_worker(args)
        if args.bench == "cluster":
            from ..lab.bench_cluster import main_cluster  # noqa: PLC0415 - the lab extra

            return main_cluster(args)
        from ..lab.bench import main_codec, main_master  # noqa: PLC0415 - the lab extra

        return main_codec(args) if args.bench == "codec" else main_master(args)
    except UsageError as exc:  # (logged too, where a log is open: a Ray audit found aiodq.log without it)
        say(args.command, str(exc))
        return EXIT_USAGE
    except (KeyboardInterrupt, StoppedError) as exc:
        said, status = stop_said(exc)
        say(args.command, f"{said}{_kept(args)}")
        return status
    except BrokenPipeError as exc:
        if not _stdout_broken():  # another pipe (a FIFO given as --out, say): an error like any other
            print(f"aiodq {args.command}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        # The reader went away (``aiodq demo | head``): nothing more to say, and nowhere to say it.
        # Python's advice: point stdout at devnull, so that the flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except MemoryError as exc:
        print(f"aiodq {args.command}: out of memory{f' ({exc})' if str(exc) else ''}", file=sys.stderr)
        return 1
    finally:
        release()  # (the --out folder the command held, if any)


def _stdout_broken() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (poll: an error or hang-up on it)."""
    try:
        descriptor = sys.stdout.fileno()
        kind = os.fstat(descriptor).st_mode
    except (AttributeError, OSError, ValueError):  # (a stdout with no descriptor: captured, say)
        return False
    if not (stat.S_ISFIFO(kind) or stat.S_ISSOCK(kind)):  # (a terminal that hung up raises no EPIPE)
        return False
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def _written_since(path: str, started: float) -> bool:
    """Whether ``path`` was written since ``started`` (by this command: an older one is another run's)."""
    try:
        return os.stat(path).st_mtime >= started
    except OSError:
        return False


def _kept(args: argparse.Namespace) -> str:
    """Where a stopped run's checkpoint keeps it (the master wrote it as it closed); empty if none does."""
    path = getattr(args, "checkpoint", None)
    if not path:
        return ""
    from ..launch.common import checkpoint_note  # noqa: PLC0415 - loaded by the commands already

    if (
        _written_since(path, args.started)
        and finished_run(path)
        and not getattr(args, "results_written", False)
    ):
        return f"; training had finished: --resume gives its results again from the checkpoint {path}"
    return checkpoint_note(path, resumable(path))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
