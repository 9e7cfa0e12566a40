"""When the master stops waiting (sans I/O: the time comes in as arguments; docs/security.md).

- for workers to join: ``join_timeout`` after the start, or after every worker left;
- for a snapshot phase's reports: ``snapshot_timeout`` in the first phase, then
  ``SNAPSHOT_SLACK`` times the slowest report accepted in the last phase, but at most
  ``MEDIAN_SLACK`` times their upper median (and at least ``SNAPSHOT_FLOOR`` seconds, at
  most ``snapshot_timeout``), so that a worker that never answers holds up each phase for
  seconds, not minutes.  The median's bound: with three workers or more, one that answers
  each SNAPSHOT just before the deadline does not set the next one (an attack review: every
  phase took 0.9 times ``snapshot_timeout``, 270 s by default, against 0.4 s); so generous a
  bound that an honest worker tens of times slower than the others keeps its place (a
  review: the median alone, times 10, cut off a worker 60 times slower at every phase);
- for one worker's SNAPSHOT, whatever the phase: ``snapshot_timeout`` after it was sent (a
  worker that never answers would otherwise hold a place in the cluster for good).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..config import MasterConfig
from .members import Member

__all__ = ["JOIN_TIMEOUT", "MEDIAN_SLACK", "SNAPSHOT_FLOOR", "SNAPSHOT_SLACK", "Deadlines", "last_error"]

#: What a failure at the join deadline says of it (the master's log adds the refusals that may explain it).
JOIN_TIMEOUT = "(--join-timeout)"

#: A snapshot phase after the first waits this many times the last phase's slowest report...
SNAPSHOT_SLACK = 10.0
#: ...but at most this many times its typical one (the upper median)...
MEDIAN_SLACK = 100.0
#: ...and at least this many seconds (and at most ``MasterConfig.snapshot_timeout``).
SNAPSHOT_FLOOR = 10.0


def last_error(errors: Iterable[tuple[Any, ...]], before: str = "", after: str = "") -> str:
    """``the last error: worker W sent (or got) CODE: TEXT``, between ``before`` and ``after``.

    ("the last word" for a GOING_AWAY: a worker that stopped, not a fault.)

    Of the latest of ``errors`` (the ledger's (worker, code, reason, raised_by, joined)) of a worker
    that had joined; "" if there is none.
    """
    last = next((entry for entry in reversed(list(errors)) if entry[4]), None)
    if last is None:
        return ""
    text = "".join(c if c.isprintable() else "?" for c in str(last[2])[:300])
    said = "sent" if last[3] == "worker" else "got"
    # (An operator's audit: a worker's goodbye, GOING_AWAY as it stopped, read as an error.)
    kind = "the last word" if last[1] == "GOING_AWAY" else "the last error"
    return f"{before}{kind}: worker {last[0]} {said} {last[1]}: {text}{after}"


@dataclass(slots=True)
class Deadlines:
    """The coordinator's deadlines, moved on by its phases."""

    config: MasterConfig
    #: Since when the coordinator has been waiting for workers to join (None: it is not).
    joining_since: float | None
    #: When the current snapshot phase stops waiting (None: no phase, or it is over).
    snapshot_deadline: float | None = None
    #: When the current snapshot phase started...
    phase_started: float = 0.0
    #: ...and when its accepted reports came.
    answered: list[float] = field(default_factory=list)
    #: Seconds the slowest and the typical (upper median) accepted report of the last finished phase
    #: took (None: no phase yet).
    slowest_report: float | None = None
    typical_report: float | None = None
    #: True once every worker had left a running session (the join deadline then applies again).
    workers_left: bool = False

    def waiting_for_workers(self, now: float) -> None:
        """Every worker left a running session: the coordinator waits for workers to join again."""
        self.joining_since, self.snapshot_deadline, self.workers_left = now, None, True

    def worker_back(self) -> None:
        """A worker (re)joined a running session: the join deadline, if any, is off."""
        self.joining_since = None

    def snapshot_phase_started(self, now: float) -> None:
        """A snapshot phase starts: its deadline is set."""
        self.joining_since = None
        self.phase_started, self.answered = now, []
        self.snapshot_deadline = now + self.snapshot_wait()

    def report_accepted(self, now: float) -> None:
        """A report of the current phase was accepted."""
        self.answered.append(now)

    def snapshot_phase_finished(self) -> None:
        """The phase has its reports: the next one's deadline follows from their upper median."""
        self.snapshot_deadline = None
        took = [max(0.0, at - self.phase_started) for at in sorted(self.answered)] or [0.0]
        self.slowest_report, self.typical_report = took[-1], took[len(took) // 2]

    def stopped(self) -> None:
        """The run is over: nothing to wait for."""
        self.joining_since = self.snapshot_deadline = None

    def snapshot_wait(self) -> float:
        """How long the next snapshot phase waits for its reports (module docstring)."""
        timeout = self.config.snapshot_timeout
        if self.slowest_report is None or self.typical_report is None:
            return timeout
        wait = min(SNAPSHOT_SLACK * self.slowest_report, MEDIAN_SLACK * self.typical_report)
        return min(timeout, max(SNAPSHOT_FLOOR, wait))

    def snapshot_phase_due(self, now: float) -> float | None:
        """If the snapshot phase's deadline has passed: the seconds it waited (the deadline is spent)."""
        deadline = self.snapshot_deadline
        if deadline is None or now < deadline:
            return None
        self.snapshot_deadline = None
        return deadline - self.phase_started

    def join_due(self, now: float) -> bool:
        """True if the workers have not all joined within ``join_timeout``."""
        return self.joining_since is not None and now >= self.joining_since + self.config.join_timeout

    def unjoined(self, live: int, expected: int, errors: Iterable[tuple[Any, ...]]) -> str:
        """Why a run whose join deadline passed ended: at its start, or after every worker left.

        ``errors`` are the ledger's (worker, code, reason, raised_by, joined): the latest of a worker
        that had joined says what the last to leave ran into (a newcomer's workers all failed in
        their objective, and the run ended saying that 0 of 2 workers had joined).
        """
        waited = f"within {self.config.join_timeout:g} s {JOIN_TIMEOUT}"
        if not self.workers_left:
            return f"{live} of {expected} workers joined {waited}"
        why = last_error(errors, " (", ")")
        return f"every worker left{why}, and {live} of {expected} came back {waited}"

    def snapshot_owed_too_long(self, worker: Member, now: float) -> bool:
        """True if ``worker`` left a SNAPSHOT unanswered for ``snapshot_timeout``."""
        return (
            worker.snapshot_sent is not None and now >= worker.snapshot_sent_at + self.config.snapshot_timeout
        )

    def timers(self, workers: list[Member]) -> list[float]:
        """Every deadline still ahead."""
        timers = [
            w.snapshot_sent_at + self.config.snapshot_timeout for w in workers if w.snapshot_sent is not None
        ]
        if self.snapshot_deadline is not None:
            timers.append(self.snapshot_deadline)
        if self.joining_since is not None:
            timers.append(self.joining_since + self.config.join_timeout)
        return timers
