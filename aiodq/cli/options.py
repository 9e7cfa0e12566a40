"""Command-line options: built from the config dataclasses' fields, each defined once.

A field declared with :func:`aiodq.config.option` becomes ``--field-name`` (a
boolean that defaults to True becomes ``--no-field-name``); its help text, type,
default and choices come from the field.  The few options that are not config
fields (addresses, shards, files) are defined here, once, and shared by the
commands that take them.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import re
import warnings
from collections.abc import Mapping
from typing import Any, TypeVar

from ..config import ConnectionConfig, Limits
from ..errors import UnusedOptionWarning, UsageError
from ..net.secrets import load_secret
from ..protocol.algorithms import TrainConfig
from ..protocol.trainconfig import SEED_LIMIT

__all__ = [
    "add_checkpoint_options",
    "add_dataclass_options",
    "add_network_options",
    "add_training_options",
    "checkpoint_options",
    "connect_address",
    "connection_config",
    "finite_float",
    "from_args",
    "parse_address",
    "parse_shard",
    "ray_address",
    "rendezvous",
    "train_config",
]

_Config = TypeVar("_Config")


def parse_address(text: str, *, least: int = 0) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 hosts in brackets, ``[::1]:7000``) to ``(host, port)``; a port from ``least``.

    Brackets hold an IPv6 address and a host with a colon is one, nothing else (a deploy audit: the
    host ``aiodq-master:tcp://10.96.0.12`` was taken, and retried until ``--retry-for`` ran out); the
    host is a name the resolver takes (labels of 1 to 63 characters: ``a..b`` failed in getaddrinfo's IDNA
    codec, a traceback) and has no spaces; the port is ASCII digits.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not host or not re.fullmatch("[0-9]+", port):  # (str.isdigit: '²' and '٣' too)
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if len(port.lstrip("0")) > 5 or not least <= int(port) <= 65535:  # (int() of 4,301 digits raises)
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be between {least} and 65535")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if re.search(r"\s", host):  # (a review: 'my host' was told about IPv6 brackets)
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}: a host has no spaces")
    ipv6 = bracketed and _is_ipv6(host) and _is_zone(host.partition("%")[2])
    if re.search(r"[\[\]]", host) or bracketed is not ipv6 or (":" in host and not ipv6):
        raise argparse.ArgumentTypeError(
            f"expected HOST:PORT, got {text!r}: an IPv6 address goes in brackets, [::1]:7000"
        )
    if not ipv6 and not _is_host_name(host):
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}: {host!r} is no host name")
    return host, int(port)


def connect_address(text: str) -> tuple[str, int]:
    """``--connect``'s HOST:PORT: :func:`parse_address` with a port from 1 (0 is no master's)."""
    return parse_address(text, least=1)


def _is_host_name(text: str) -> bool:
    """Whether ``text`` is a name (or IPv4 address) the resolver takes: IDNA, labels of 1 to 63 characters."""
    try:  # (the codec maps the ideographic full stop to '.', so 'example.com\u3002' ends in a dot too)
        name = text.encode("idna").removesuffix(b".")
    except UnicodeError:
        return False
    return 0 < len(name) <= 253 and all(1 <= len(label) <= 63 for label in name.split(b"."))


def _is_zone(zone: str) -> bool:
    """Whether an IPv6 address's zone (after ``%``) is none, or an interface's name or index.

    (A review: ``%a..b`` failed in getaddrinfo's IDNA codec, or was dropped silently.)
    """
    name = re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,14}", zone)
    return not zone or (name is not None and ".." not in zone)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def parse_shard(text: str) -> tuple[int, int]:
    """``I/M`` to ``(I, M)`` with ``0 <= I < M``."""
    index, sep, count = text.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"expected I/M with 0 <= I < M, got {text!r}")
    return int(index), int(count)


def rendezvous(
    connect: tuple[str, int] | None, shard: tuple[int, int] | None, environ: Mapping[str, str]
) -> tuple[tuple[str, int], tuple[int, int]]:
    """The master's address and this worker's shard: the options, else the environment.

    ``AIODQ_MASTER_ADDR`` and ``AIODQ_MASTER_PORT`` give the address; ``AIODQ_RANK`` and
    ``AIODQ_WORLD_SIZE`` the shard, else SLURM's ``SLURM_PROCID`` and ``SLURM_NTASKS`` (for
    ``srun``: one task per worker).  Launchers in the style of torchrun, Kubernetes indexed
    Jobs (``AIODQ_RANK=$JOB_COMPLETION_INDEX``) and sbatch scripts set these.

    Raises:
        UsageError: if neither the option nor the environment says, or a variable is malformed.
    """
    if connect is None:
        host, port = environ.get("AIODQ_MASTER_ADDR"), environ.get("AIODQ_MASTER_PORT")
        if not host or not port:
            raise UsageError("give --connect HOST:PORT, or set AIODQ_MASTER_ADDR and AIODQ_MASTER_PORT")
        if not re.fullmatch("[0-9]+", port):
            links = (  # (Kubernetes' service links: <SERVICE>_PORT=tcp://IP:PORT)
                " (Kubernetes sets AIODQ_MASTER_PORT so for a Service named aiodq-master: set the variable "
                "yourself, or enableServiceLinks: false)"
            )
            also = links if port.startswith("tcp://") else ""
            raise UsageError(f"AIODQ_MASTER_PORT: expected a port number, got {port!r}{also}")
        if len(port.lstrip("0")) > 5 or not 1 <= int(port) <= 65535:
            raise UsageError(f"AIODQ_MASTER_PORT: the port must be between 1 and 65535, got {port[:20]!r}")
        bare = ":" in host and not host.startswith("[")  # (a bare IPv6 address, as torchrun's MASTER_ADDR)
        try:
            connect = connect_address(f"[{host}]:{port}" if bare else f"{host}:{port}")
        except argparse.ArgumentTypeError:
            also = " (the port goes in AIODQ_MASTER_PORT)" if re.search(r"[^:]:[0-9]+$", host) else ""
            raise UsageError(f"AIODQ_MASTER_ADDR: {host!r} is no host name or IP address{also}") from None
    if shard is None:
        for rank_name, size_name in (("AIODQ_RANK", "AIODQ_WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
            rank, size = environ.get(rank_name), environ.get(size_name)
            if rank is not None and size is not None:
                try:
                    shard = parse_shard(f"{rank}/{size}")
                except argparse.ArgumentTypeError as exc:
                    raise UsageError(f"{rank_name}/{size_name}: {exc}") from None
                break
        else:
            raise UsageError(
                "give --shard I/M, or set AIODQ_RANK and AIODQ_WORLD_SIZE (or run under srun: "
                "SLURM_PROCID and SLURM_NTASKS)"
            )
    return connect, shard


def finite_float(text: str) -> float:
    """An option's value as a finite float (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def folder(text: str) -> str:
    """An ``--out`` folder: not empty (a newcomer trial's ``--out ""`` wrote into the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give a folder (. for the current one)")
    return text


def file_path(text: str) -> str:
    """A file's path (``--checkpoint``, ``--start-from``): not empty (``""`` named the folder ``.``)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path: give a file's path (such as ./run.ckpt)")
    return text


def ray_address(text: str) -> str:
    """``--ray-address``: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``, the port in range when given.

    (A Ray user's audit: an impossible port waited out the whole --timeout before it failed.)
    """
    port = re.search(r":0*([0-9]+)$", text)
    if not text.strip() or (port is not None and not (len(port[1]) <= 5 and 1 <= int(port[1]) <= 65535)):
        raise argparse.ArgumentTypeError(f"expected auto, HOST:PORT or ray://HOST:PORT, got {text!r}")
    return text


def seed(text: str) -> int:
    """A random seed (argparse type): an integer from 0 to 2**64 - 1, as :class:`TrainConfig` takes."""
    value = _integer(text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"a seed is an integer from 0 to 2**64 - 1, got {text}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def add_dataclass_options(group: argparse._ArgumentGroup, cls: type[Any], prefix: str = "") -> None:
    """Add one option per field of ``cls`` declared with :func:`aiodq.config.option`."""
    for item in dataclasses.fields(cls):
        meta = item.metadata
        if "help" not in meta or not meta.get("cli", True):
            continue
        flag = "--" + item.name.replace("_", "-")
        dest = prefix + item.name
        default = item.default
        if isinstance(default, bool):
            if default:
                group.add_argument(
                    "--no-" + item.name.replace("_", "-"),
                    dest=dest,
                    action="store_false",
                    help=f"turn off what is on by default: {meta['help']}",
                )
            else:
                group.add_argument(flag, dest=dest, action="store_true", help=meta["help"])
            continue
        kind = _integer if isinstance(default, int) else finite_float if isinstance(default, float) else str
        group.add_argument(
            flag,
            dest=dest,
            type=kind,
            default=default,
            choices=meta.get("choices"),
            help=f"{meta['help']} (default {default})",
        )


def from_args(cls: type[_Config], args: argparse.Namespace, prefix: str = "", **extra: Any) -> _Config:
    """Build ``cls`` from the options :func:`add_dataclass_options` added.

    Raises:
        UsageError: if a value is out of range.
    """
    values = {
        item.name: getattr(args, prefix + item.name)
        for item in dataclasses.fields(cls)  # type: ignore[arg-type]
        if hasattr(args, prefix + item.name)
    }
    try:
        return cls(**values, **extra)
    except ValueError as exc:
        # The fields the command line set, named as its options (a newcomer read 'heartbeat_interval
        # must be shorter than idle_timeout' for --heartbeat-interval 40).
        said = str(exc)
        for name in values:
            said = re.sub(rf"(?<![\w-]){name}\b", "--" + name.replace("_", "-"), said)
        raise UsageError(said) from exc


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Every :class:`~aiodq.protocol.algorithms.TrainConfig` field, as an option."""
    add_dataclass_options(parser.add_argument_group("training"), TrainConfig)


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The :class:`~aiodq.protocol.algorithms.TrainConfig` the options describe.

    Raises:
        UsageError: for ``--bias`` or ``--hidden`` with a model they do not shape (a newcomer
            trial: taken silently, and result.json then said ``bias: true`` of a user model), or an
            option of other algorithms than ``--algorithm`` (an operator trial: ``--exact-budget``
            with asylpg, taken silently).
    """
    with warnings.catch_warnings():
        # (Refused below, or named by the checkpoint --resume resumes.)
        warnings.simplefilter("ignore", UnusedOptionWarning)
        config = from_args(TrainConfig, args)
    for name, kind, which, actual in config.unused_options():
        option = "--" + name.replace("_", "-")
        if kind == "model":
            raise UsageError(f"{option}: for --model {which}, not {actual}")
        if not getattr(args, "resume", False):
            # A checkpoint written before this check may name such an option, and must be resumed
            # with the options it names (restore compares them).
            raise UsageError(f"{option}: for --algorithm {which}, not {actual}: leave it out")
    return config


def add_network_options(parser: argparse.ArgumentParser, *, master: bool) -> None:
    """Security, TLS, timeouts and limits; the checkpoint options on the master."""
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
            type=finite_float,
            default=30.0,
            help="keep reconnecting with backoff for this many seconds (default 30; 0: never)",
        )
    add_dataclass_options(group, ConnectionConfig)
    add_dataclass_options(group, Limits)
    if master:
        add_checkpoint_options(parser.add_argument_group("checkpoints"))


def add_checkpoint_options(parser: argparse._ArgumentGroup) -> None:
    """``--checkpoint``, ``--checkpoint-interval``, ``--resume`` and ``--start-from`` (master and run)."""
    parser.add_argument(
        "--checkpoint",
        type=file_path,
        default=None,
        help="checkpoint the run into this file (atomically), to continue it with --resume after a crash",
    )
    parser.add_argument(
        "--checkpoint-interval",
        type=finite_float,
        default=60.0,
        help="seconds between checkpoints (default 60)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run --checkpoint holds (same options and data)",
    )
    parser.add_argument(
        "--start-from",
        metavar="FILE",
        type=file_path,
        default=None,
        help="start from the model in a run's model.npz (or a vector in a .npy file) instead of "
        "the model's own starting point: a new run of --epochs more epochs",
    )


def checkpoint_options(args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint options as keyword arguments for the master.

    Raises:
        UsageError: for ``--resume`` without ``--checkpoint`` or with ``--start-from``, or an
            interval that is not positive.
    """
    if args.resume and not args.checkpoint:
        raise UsageError("--resume needs --checkpoint")
    if args.resume and args.start_from is not None:
        raise UsageError("--start-from starts a new run; --resume continues the checkpoint's")
    if not args.checkpoint_interval > 0:
        raise UsageError("--checkpoint-interval must be positive")
    return {
        "checkpoint": args.checkpoint,
        "checkpoint_interval": args.checkpoint_interval,
        "resume": args.resume,
    }


def connection_config(args: argparse.Namespace) -> ConnectionConfig:
    """The :class:`~aiodq.config.ConnectionConfig` the options describe, with the shared secret.

    Raises:
        UsageError: if a value is out of range or the secret file cannot be read.
    """
    try:
        secret = load_secret(args.secret_file)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    limits = from_args(Limits, args)
    return from_args(ConnectionConfig, args, limits=limits, secret=secret)
