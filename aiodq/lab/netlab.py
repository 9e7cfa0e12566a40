"""A real aiodq cluster across Linux network namespaces joined by shaped links.

The harness behind the network experiments: :class:`NetLab` builds a star of
network namespaces, one per host, each joined to a Linux bridge in a "switch"
namespace by a veth pair whose two ends are both shaped to the :class:`Link`'s
rate (and delay), like a NIC on a switch port.  :func:`aiodq.lab.netcluster.run_cluster` runs an
``aiodq master`` in host 0 and ``aiodq worker`` processes in hosts 1..M, so the
master's single link carries all the workers' traffic; the measurements there say
what a lab really delivers.

Building a lab needs root, ``ip`` and ``tc`` (iproute2), and a kernel with
network namespaces, veth, bridge and the ``tbf`` qdisc; a delay also needs
``netem``.  :func:`namespaces_unavailable` and :func:`delay_unavailable` say why
not, in one line, so callers skip instead of reporting a made-up figure.

Shaping (every link, both directions): a ``tbf`` qdisc at the root of the
host's veth end (egress from the host) and of the bridge's end (egress towards
the host).  ``tbf`` was chosen over ``htb`` because one queue per direction
needs no classes; both measured the same (about 96 Mbit/s of TCP payload on a
100 Mbit/s link, the rest being TCP/IP and Ethernet headers).  Its parameters:

- ``burst`` = max(64 KiB, 1 ms at the rate): at least the largest GSO/TSO
  packet (64 KiB), so ``tbf`` never has to split one, and enough tokens to
  keep the rate between two timer wake-ups;
- ``limit`` = ``burst`` + 5 ms at the rate: a shallow, switch-like buffer.
  A single TCP flow still reaches the rate (the round trip inside a lab is
  microseconds), while a full queue adds at most about 5 ms to the protocol's
  small messages instead of the bufferbloat of a deep queue;
- with ``delay_ms`` > 0, a ``netem`` qdisc is the ``tbf``'s child (the
  Mininet layout): packets wait ``delay_ms``, then leave at the rate.  Its
  packet limit covers the packets in flight during the delay plus the queue,
  with a margin for small packets (ACKs).

Delay semantics: ``delay_ms`` is the one-way delay of each link, in each
direction.  A message from one host to another crosses two links, so a
host-to-host round trip takes at least ``4 * delay_ms``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import weakref
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from ..errors import RunError

__all__ = [
    "Link",
    "NetLab",
    "NetLabError",
    "delay_unavailable",
    "namespaces_unavailable",
]

logger = logging.getLogger(__name__)

#: Seconds any single ``ip`` or ``tc`` command may take.
_COMMAND_TIMEOUT = 30.0
#: TCP port of the master inside host 0's private namespace.
MASTER_PORT = 47000
#: The largest GSO/TSO packet the kernel hands to a qdisc.
_GSO_MAX_BYTES = 65536
#: Ethernet frame of a full-size TCP segment (1500-byte MTU plus the 14-byte header).
_FULL_FRAME_BYTES = 1514
#: Queue of each shaped direction, in seconds at the link's rate (see the module docstring).
_QUEUE_SECONDS = 0.005
_PREFIX_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")
_counter = itertools.count()


class NetLabError(RunError):
    """A lab could not be built, or a process in it failed: the message says which and why."""


# -- probing -------------------------------------------------------------------


def _run(argv: list[str], timeout: float = _COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output; never raises for a non-zero status."""
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
    )


def _one_line(text: str) -> str:
    return " ".join(text.split()) or "no message"


def _probe(qdisc: list[str]) -> str | None:
    """Create a throwaway namespace with a bridge and a veth pair, attach ``qdisc``, clean up.

    Returns:
        None if every step worked, else the first failing command and its stderr on one line.
    """
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    name = f"aiodq-probe-{os.getpid()}-{next(_counter)}"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "-n", name, "link", "add", "br0", "type", "bridge"],
        ["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"],
        ["tc", "-n", name, "qdisc", "add", "dev", "eth0", "root", *qdisc],
        # ip netns exec needs a private mount namespace and a /sys remount.
        ["ip", "netns", "exec", name, sys.executable, "-c", ""],
    ]
    created = False
    try:
        for argv in steps:
            try:
                result = _run(argv)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"{' '.join(argv[:4])}: {exc}"
            if result.returncode != 0:
                return f"{' '.join(argv)}: {_one_line(result.stderr)}"
            created = True
        return None
    finally:
        # Deleting the namespace removes the bridge and the veth pair with it.
        if created:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                _run(["ip", "netns", "delete", name])


@functools.cache
def namespaces_unavailable() -> str | None:
    """Why this process cannot build a :class:`NetLab` without delay, or None if it can.

    Tries it for real (cached after the first call): a throwaway network
    namespace named after the pid, a bridge, a veth pair, a ``tbf`` qdisc and
    ``ip netns exec``, then deletes them.

    Returns:
        None when it all works, else a one-line reason such as ``"not root"``,
        ``"tc not found"`` or the failing command with its stderr.
    """
    return _probe(["tbf", "rate", "100mbit", "burst", "65536", "limit", "131072"])


@functools.cache
def delay_unavailable() -> str | None:
    """Why a :class:`Link` with ``delay_ms > 0`` cannot be built here, or None if it can.

    Like :func:`namespaces_unavailable`, plus the ``netem`` qdisc that makes
    the delay (cached after the first call).

    Returns:
        None when delays work, else a one-line reason.
    """
    reason = namespaces_unavailable()
    if reason is not None:
        return reason
    reason = _probe(["netem", "delay", "1ms"])
    if reason is not None:
        return f"no netem qdisc for link delays ({reason})"
    return None


# -- links and labs ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Link:
    """The shaping of every host's link to the switch, the same in both directions."""

    #: Rate in Mbit/s (10**6 bits per second, Ethernet frames included).
    rate_mbit: float
    #: One-way delay of the link in milliseconds, in each direction (netem); 0 for none.
    delay_ms: float = 0.0

    def __post_init__(self) -> None:
        for name in ("rate_mbit", "delay_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not (math.isfinite(self.rate_mbit) and self.rate_mbit > 0):
            raise ValueError(f"rate_mbit must be positive, got {self.rate_mbit}")
        if not (math.isfinite(self.delay_ms) and self.delay_ms >= 0):
            raise ValueError(f"delay_ms must not be negative, got {self.delay_ms}")

    def describe(self) -> str:
        """The link in words, for example ``"100 Mbit/s, 0 ms"``."""
        return f"{self.rate_mbit:g} Mbit/s, {self.delay_ms:g} ms"

    @property
    def rate_bytes(self) -> float:
        """The rate in bytes per second."""
        return self.rate_mbit * 1e6 / 8

    def burst_bytes(self) -> int:
        """The ``tbf`` bucket: the largest GSO packet, or 1 ms at the rate if more."""
        return max(_GSO_MAX_BYTES, math.ceil(self.rate_bytes * 0.001))

    def limit_bytes(self) -> int:
        """The ``tbf`` queue: the bucket plus 5 ms at the rate."""
        return self.burst_bytes() + math.ceil(self.rate_bytes * _QUEUE_SECONDS)

    def netem_limit_packets(self) -> int:
        """The ``netem`` queue in packets: in flight during the delay plus the queue, times 4.

        The margin of 4 is for packets smaller than a full frame (ACKs, the
        protocol's small messages); netem's default of 1000 is the floor.
        """
        in_flight = self.rate_bytes * self.delay_ms / 1000 + self.limit_bytes()
        return max(1000, 4 * math.ceil(in_flight / _FULL_FRAME_BYTES))

    def qdisc_commands(self, namespace: str, device: str) -> list[list[str]]:
        """The ``tc`` commands that shape the egress of ``device`` in ``namespace``."""
        base = ["tc", "-n", namespace, "qdisc", "add", "dev", device]
        rate = f"{round(self.rate_mbit * 1e6)}bit"
        shaper = [*base, "root", "handle", "1:", "tbf", "rate", rate]
        shaper += ["burst", str(self.burst_bytes()), "limit", str(self.limit_bytes())]
        commands = [shaper]
        if self.delay_ms > 0:
            # netem replaces tbf's default bfifo child: delay first, then the rate.
            delay = f"{round(self.delay_ms * 1000)}us"
            limit = str(self.netem_limit_packets())
            netem = ["netem", "delay", delay, "limit", limit]
            commands.append([*base, "parent", "1:1", "handle", "10:", *netem])
        return commands


def _delete_namespaces(names: list[str]) -> None:
    """Delete the named namespaces (best effort; their veths, bridge and qdiscs go with them)."""
    while names:
        name = names.pop()
        try:
            result = _run(["ip", "netns", "delete", name])
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("cannot delete network namespace %s: %s", name, exc)
            continue
        if result.returncode != 0:
            logger.warning("cannot delete network namespace %s: %s", name, _one_line(result.stderr))


class NetLab:
    """A star of network namespaces: ``hosts`` hosts on one bridge, every link shaped both ways.

    Host 0 is meant for the master, hosts 1..hosts-1 for workers.  Host i has
    the address ``10.213.X.(i+1)/24`` on its ``eth0``, whose veth peer ``hI``
    is a port of the bridge ``br0`` in the switch namespace; X comes from the
    pid.  Everything is created inside the lab's own namespaces (nothing in
    the root namespace), so interface names only need to be unique within a
    namespace and stay far below the 15-character limit, and the addresses
    cannot clash with another lab's.  Namespace names are ``PREFIX-sw`` and
    ``PREFIX-hI``.

    Use it as a context manager, or call :meth:`close`; both remove every
    namespace the lab made, also after errors.  Processes started in a lab
    should be ended before it is closed: a namespace that still holds a
    process loses its name but lives on until the process exits.

    Args:
        hosts: Number of hosts, 1 to 253.
        link: Shaping of every host's link.
        prefix: Namespace name prefix (letters, digits, ``_.-``; up to 40
            characters); default ``dqPID-N`` with a per-process counter N.

    Raises:
        ValueError: if ``hosts`` or ``prefix`` is out of range.
        NetLabError: if namespaces (or, with a delay, netem) are unavailable,
            or a command fails; what was made is removed first.
    """

    def __init__(self, hosts: int, link: Link, *, prefix: str | None = None) -> None:
        if isinstance(hosts, bool) or not isinstance(hosts, int) or not 1 <= hosts <= 253:
            raise ValueError(f"hosts must be an integer from 1 to 253, got {hosts!r}")
        if prefix is None:
            prefix = f"dq{os.getpid()}-{next(_counter)}"
        elif not _PREFIX_PATTERN.fullmatch(prefix):
            raise ValueError(f"prefix must be 1-40 letters, digits, '_', '.' or '-', got {prefix!r}")
        #: Number of hosts.
        self.hosts = hosts
        #: Shaping of every link.
        self.link = link
        #: Namespace name prefix.
        self.prefix = prefix
        #: The lab's /24 (any value is safe: the addresses exist only inside the lab).
        self.subnet = f"10.213.{os.getpid() % 256}"
        self._created: list[str] = []
        # Deletes the namespaces if the lab is garbage-collected or the interpreter exits unclosed.
        self._finalizer = weakref.finalize(self, _delete_namespaces, self._created)
        reason = namespaces_unavailable()
        if reason is None and link.delay_ms > 0:
            reason = delay_unavailable()
        if reason is not None:
            self._finalizer.detach()
            raise NetLabError(f"cannot build a network lab: {reason}")
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    @property
    def switch_namespace(self) -> str:
        """The namespace holding the bridge."""
        return f"{self.prefix}-sw"

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the lab: the switch, then hosts 0..hosts-1."""
        return (self.switch_namespace, *(self.namespace(i) for i in range(self.hosts)))

    def _check_host(self, index: int) -> None:
        if not 0 <= index < self.hosts:
            raise IndexError(f"host {index} is not in 0..{self.hosts - 1}")

    def namespace(self, index: int) -> str:
        """The network namespace of host ``index``.

        Raises:
            IndexError: if there is no such host.
        """
        self._check_host(index)
        return f"{self.prefix}-h{index}"

    def address(self, index: int) -> str:
        """The IPv4 address of host ``index`` (reachable only from inside the lab).

        Raises:
            IndexError: if there is no such host.
        """
        self._check_host(index)
        return f"{self.subnet}.{index + 1}"

    def exec_args(self, index: int, argv: list[str]) -> list[str]:
        """``argv`` prefixed so that it runs in host ``index``'s namespace.

        ``ip netns exec`` replaces itself with the command, so the process id
        of the started process is the command's own.

        Raises:
            IndexError: if there is no such host.
        """
        return ["ip", "netns", "exec", self.namespace(index), *argv]

    def _command(self, argv: list[str]) -> None:
        try:
            result = _run(argv)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise NetLabError(f"{' '.join(argv)}: {exc}") from exc
        if result.returncode != 0:
            raise NetLabError(f"{' '.join(argv)}: {_one_line(result.stderr)}")

    def _add_namespace(self, name: str) -> None:
        self._command(["ip", "netns", "add", name])
        # Only namespaces this lab made are deleted: never a clashing one made by someone else.
        self._created.append(name)
        self._command(["ip", "-n", name, "link", "set", "lo", "up"])

    def _build(self) -> None:
        switch = self.switch_namespace
        self._add_namespace(switch)
        self._command(["ip", "-n", switch, "link", "add", "br0", "type", "bridge"])
        self._command(["ip", "-n", switch, "link", "set", "br0", "up"])
        for index in range(self.hosts):
            host, port = self.namespace(index), f"h{index}"
            self._add_namespace(host)
            # Made inside the host namespace with its peer placed straight into the switch's.
            peer = ["peer", "name", port, "netns", switch]
            self._command(["ip", "-n", host, "link", "add", "eth0", "type", "veth", *peer])
            self._command(["ip", "-n", host, "addr", "add", f"{self.address(index)}/24", "dev", "eth0"])
            self._command(["ip", "-n", switch, "link", "set", port, "master", "br0"])
            # Egress from the host, and egress from the switch towards the host.
            for namespace, device in ((host, "eth0"), (switch, port)):
                for argv in self.link.qdisc_commands(namespace, device):
                    self._command(argv)
            self._command(["ip", "-n", host, "link", "set", "eth0", "up"])
            self._command(["ip", "-n", switch, "link", "set", port, "up"])

    def close(self) -> None:
        """Delete every namespace of the lab (idempotent)."""
        self._finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NetLab(hosts={self.hosts}, link={self.link.describe()!r}, prefix={self.prefix!r})"
