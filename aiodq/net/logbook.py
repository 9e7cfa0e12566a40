"""What the master logs, and how much: epochs, members, protocol errors, refusals (rate-limited).

A flood of strangers, or workers the master keeps removing and that keep coming back, must not
fill the log: protocol errors and joined/left lines are written one by one up to
``LINES_PER_INTERVAL`` per ``INTERVAL`` seconds, and counted in one line per interval beyond
that; connections refused before joining are only counted (docs/security.md).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import platform
import secrets
import socket
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import numpy as np

from ..protocol.coordinator import Coordinator
from ..protocol.deadlines import JOIN_TIMEOUT, last_error
from ..version import __version__

__all__ = [
    "INTERVAL",
    "LINES_PER_INTERVAL",
    "RATE_REFUSAL",
    "Logbook",
    "peer_host",
    "peer_name",
    "printable",
    "provenance",
    "standing",
]

_log = logging.getLogger("aiodq.master")

#: Seconds between the lines that count what was not logged one by one.
INTERVAL = 10.0
#: Protocol errors (and, apart, joined/left lines) logged one line each per interval.
LINES_PER_INTERVAL = 20
#: Why a connection beyond ``--connection-rate`` was refused (result.json's refused_connections).
RATE_REFUSAL = "too many new connections from one address"


def printable(text: str, limit: int = 200) -> str:
    """``text`` for one log line: control characters escaped (no forged lines), at most ``limit`` chars."""
    escaped = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return escaped if len(escaped) <= limit else escaped[: limit - 1] + "…"


def peer_name(writer: asyncio.StreamWriter) -> str:
    """``host:port`` of a connection's peer (``[host]:port`` for IPv6)."""
    peer = writer.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        host, port = str(peer[0]), int(peer[1])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return str(peer)


def peer_host(writer: asyncio.StreamWriter) -> str | None:
    """The address of a connection's peer (None if it has none: a Unix socket, say)."""
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else None


class _Budget:
    """At most ``LINES_PER_INTERVAL`` lines per ``INTERVAL`` seconds."""

    def __init__(self) -> None:
        self._since, self._lines = -math.inf, 0

    def take(self, now: float) -> bool:
        if now - self._since >= INTERVAL:
            self._since, self._lines = now, 0
        if self._lines < LINES_PER_INTERVAL:
            self._lines += 1
            return True
        return False


def worker_name(coordinator: Coordinator, worker_id: int) -> str:
    """How the log names a connection: ``worker 5``, with the shard it claimed (``worker 5 (shard 1/4)``).

    The number is the connection's, the master's WELCOME ``worker_id``; a worker that rejoins gets a
    new one, and keeps its shard.
    """
    if (shard := coordinator.shard_of(worker_id)) is None:
        return f"worker {worker_id}"
    return f"worker {worker_id} (shard {shard}/{coordinator.expected_workers})"


class Logbook:
    """The master's log, fed after every batch of events (:meth:`progress`)."""

    def __init__(self, clock: Callable[[], float], *, accuracy: bool = True) -> None:
        self._clock = clock
        self._accuracy = accuracy  # False: the objective counts no correct predictions (none logged)
        #: Connections refused or failed before joining, by why (result.json's refused_connections).
        self.refused: Counter[str] = Counter()
        #: The peer of the latest refusal by why, where the refusal names one (the log line says it).
        self._refused_from: dict[str, str] = {}
        self._refused_logged: Counter[str] = Counter()
        self._counted_at = -math.inf
        self._epochs = 0
        self._errors = 0
        self._members: dict[int, str] = {}  # each member's name in the log, by worker id
        self._error_budget, self._member_budget = _Budget(), _Budget()
        self._unlogged_errors = self._unlogged_errors_logged = 0
        self._unlogged_members: Counter[str] = Counter()

    def resumed(self, coordinator: Coordinator) -> None:
        """A run restored from a checkpoint: its epochs and errors were logged by the run that wrote them."""
        self._epochs = len(coordinator.trace)
        self._errors = coordinator.ledger.errors_seen

    def refuse(self, why: str, peer: str | None = None) -> None:
        """A connection refused (or a TLS handshake failed) before it could join; ``peer``: from where."""
        self.refused[why] += 1
        if peer is not None:
            self._refused_from[why] = peer
        self.counts()

    def failure(self, coordinator: Coordinator) -> dict[str, str]:
        """The run's failure, if its join deadline passed while ``--connection-rate`` refused connections.

        ``{"failure": ...}`` with the refusals added (a newcomer's workers, behind one address with
        a churner, never joined, and the run said only that 0 of 2 had joined); else ``{}``.
        """
        failure, refused = coordinator.failure, self.refused[RATE_REFUSAL]
        if failure is None or JOIN_TIMEOUT not in failure or not refused:
            return {}
        last = self._refused_from.get(RATE_REFUSAL)
        return {
            "failure": f"{failure}; {refused} connections were refused as {RATE_REFUSAL} (--connection-rate)"
            + (f", the last from {last}" if last else "")
        }

    def progress(self, coordinator: Coordinator, writers: dict[int, asyncio.StreamWriter]) -> None:
        """Log new epochs, workers that joined, and new protocol errors."""
        if len(coordinator.trace) > self._epochs:
            traffic = coordinator.traffic()
            # n where the master knows it (a newcomer's audit: a worker refused from the start was
            # missing from every phase, and no line said so), else the most any phase had.
            most = coordinator.guard.samples or max(record.samples for record in coordinator.trace)
            for record in coordinator.trace[self._epochs :]:
                # A shard missing from the phase: the loss is over the others' samples (security.md).
                over = f" over {record.samples:,} of {most:,} samples" if record.samples < most else ""
                _log.log(
                    logging.WARNING if over else logging.INFO,
                    "epoch %d: loss %.6f%s%s, version %d, %.1f s; bytes so far: down %d, up %d",
                    record.epoch,
                    record.loss,
                    over,
                    f", accuracy {record.accuracy:.4f}" if self._accuracy else "",
                    record.version,
                    record.time,
                    traffic.total("down"),
                    traffic.total("up"),
                )
            self._epochs = len(coordinator.trace)
        for worker_id, writer in writers.items():
            if worker_id not in self._members and coordinator.is_member(worker_id):
                self._members[worker_id] = name = worker_name(coordinator, worker_id)
                self._membership("joined", "%s joined from %s", name, peer_name(writer))
        seen = coordinator.ledger.errors_seen
        new = seen - self._errors
        if new > 0:
            now = self._clock()
            errors = coordinator.errors
            for worker_id, code, reason, by, _ in list(errors)[-min(new, len(errors)) :] if errors else []:
                if self._error_budget.take(now):
                    # GOING_AWAY is a peer that stops (Ctrl-C, SIGTERM, its own end): news, not an error.
                    level = logging.INFO if code == "GOING_AWAY" else logging.WARNING
                    name = worker_name(coordinator, worker_id)
                    said = "%s says %s: %s" if by == "worker" else "%s: %s: %s"
                    _log.log(level, said, name, code, printable(reason))
                    new -= 1
            self._unlogged_errors += new
            self._errors = seen
            self.counts()

    def left(self, worker_id: int, *, lost: bool = False) -> None:
        """A connection ended: a line if it was a member; a warning if ``lost`` (its session unclosed).

        An operator's audit: a worker killed (SIGKILL) was logged as "left", as one that said goodbye.
        """
        if (name := self._members.pop(worker_id, None)) is None:
            return
        if lost:
            said = "%s lost: its connection ended without a CLOSE (a crash, a kill or the network)"
            self._membership("lost", said, name, level=logging.WARNING)
        else:
            self._membership("left", "%s left", name)

    def _membership(self, kind: str, message: str, *args: object, level: int = logging.INFO) -> None:
        if self._member_budget.take(self._clock()):
            _log.log(level, message, *args)
        else:
            self._unlogged_members[kind] += 1

    def counts(self, *, force: bool = False) -> None:
        """At most one line per interval each: refused connections, errors and members not logged."""
        now = self._clock()
        if now - self._counted_at < INTERVAL and not force:
            return
        new = self.refused - self._refused_logged
        if new:
            _log.warning(
                "refused or failed before joining: %s",
                ", ".join(
                    f"{k}: {v}"
                    + (f" (the last from {self._refused_from[k]})" if k in self._refused_from else "")
                    for k, v in new.items()
                ),
            )
        unlogged = self._unlogged_errors - self._unlogged_errors_logged
        if unlogged:
            _log.warning(
                "%d more protocol errors, not logged one by one (counted by code in the summary)", unlogged
            )
        members = self._unlogged_members
        if members:
            # Lost ones counted at WARNING, as their lines are (a review: folded into an INFO count).
            _log.log(
                logging.WARNING if members["lost"] else logging.INFO,
                "workers %s, not logged one by one",
                " and ".join(f"{kind}: {count}" for kind, count in sorted(members.items()) if count),
            )
        if new or unlogged or members:
            members.clear()
            self._refused_logged = Counter(self.refused)
            self._unlogged_errors_logged = self._unlogged_errors
            self._counted_at = now


def standing(coordinator: Coordinator | None) -> str:
    """`` (PHASE, L of M workers connected; the last error: ...)``: where a run stands, for a message."""
    if coordinator is None:
        return ""
    live, expected = coordinator.live_workers, coordinator.expected_workers
    why = last_error(coordinator.ledger.errors, "; ")
    return f" ({coordinator.phase.value}, {live} of {expected} workers connected{why})"


def provenance() -> dict[str, Any]:
    """Where and how a run was made: aiodq, Python and numpy versions, command line, host, UTC start.

    ``id``: random, so that two runs started in the same second by the same command are told apart
    (a review: one's results were taken for the other's, and written over).
    """
    return {
        "id": secrets.token_hex(8),
        "aiodq": __version__,
        "command": list(sys.argv),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
