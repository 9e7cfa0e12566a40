"""Who may join a run, sans I/O: shard claims, the rejoin back-off, the encodings the run sends.

:class:`Admission` refuses a HELLO before WELCOME (wire-format.md 7.1-9, 7.1-10, 6.2-6); the
refusals themselves are :mod:`aiodq.protocol.guard`'s, but for the back-off's, which is here.

The rejoin back-off: a worker removed for what it sent waits before its shard may join again.
Without it an admitted worker removed for a flood of ERRORs, say, could rejoin at once, over and
over, each session costing the master a handshake and a copy of x_snap (docs/security.md).  The
master remembers the shard each removed worker claimed (wire-format.md 7.1-9; every worker that
claims none shares one record) and refuses a HELLO claiming it, before WELCOME, with TRY_LATER
until the back-off has passed (7.1-10).  The back-off starts at ``MasterConfig.rejoin_backoff``
(1 s; 0: none) and doubles with each removal of the same claim, up to :data:`LONGEST_BACKOFF`; a
claim with none for :data:`FORGIVEN_AFTER` after its back-off ended starts again from the first.

Only removals that blame the worker start one (:attr:`~aiodq.protocol.guard.Refusal.blames_sender`
and :func:`penalised`): not a timeout, a report out of line with the others' (an honest worker's is,
against a liar's), a report or update that the model's state makes overflow, or the master's own
failure; nor a session the worker or its transport ended (security.md says why not).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..codec.events import Hello
from ..config import MasterConfig
from ..errors import ErrorCode, code_name
from .guard import Refusal, refuse_claim, refuse_encodings
from .members import Member
from .trainconfig import TrainConfig

__all__ = ["FORGIVEN_AFTER", "LONGEST_BACKOFF", "Admission", "RejoinBackoff", "penalised"]

#: The longest back-off, in seconds (or the first, if longer).
LONGEST_BACKOFF = 60.0
#: Seconds after a back-off ends with no new one for the claim after which the next one starts from
#: the first again.
FORGIVEN_AFTER = 300.0

#: Codes of removals that start no back-off: they say nothing about what the worker sent.
_NOT_PENALISED = frozenset({ErrorCode.NO_ERROR, ErrorCode.TIMEOUT, ErrorCode.GOING_AWAY})


def penalised(code: int) -> bool:
    """True if the master's removing a worker with ``code`` starts a back-off."""
    return code not in _NOT_PENALISED


@dataclass(slots=True)
class _Record:
    until: float
    seconds: float
    event: str


class RejoinBackoff:
    """The back-off of each shard claim (None: no claim) whose worker was removed for what it sent."""

    __slots__ = ("_first", "_longest", "_records")

    def __init__(self, first: float) -> None:
        """``first``: the first back-off of a claim, in seconds; 0 for none."""
        self._first, self._longest = first, max(first, LONGEST_BACKOFF)
        self._records: dict[int | None, _Record] = {}

    def start(self, shard: int | None, event: str, now: float) -> float:
        """Start the back-off of ``shard``, whose worker ``event``; return its length in seconds.

        ``event`` completes the reason, as in ``"was removed for LIMIT_EXCEEDED"``.  Each back-off
        of a claim is twice its last, unless that ended :data:`FORGIVEN_AFTER` ago.
        """
        if not self._first:
            return 0.0
        record = self._records.get(shard)
        if record is None or now >= record.until + FORGIVEN_AFTER:
            seconds = self._first
        else:
            seconds = min(self._longest, 2.0 * record.seconds)
        self._records[shard] = _Record(now + seconds, seconds, event)
        return seconds

    def refuse(self, shard: int | None, now: float) -> Refusal | None:
        """TRY_LATER for a HELLO claiming ``shard`` at ``now`` while its back-off lasts, else None."""
        record = self._records.get(shard)
        if record is None or now >= record.until:
            return None
        who = "a worker claiming no shard" if shard is None else f"the worker of shard {shard}"
        return Refusal(
            ErrorCode.TRY_LATER,
            f"{who} {record.event}; join again in {record.until - now:.1f} s (back-off {record.seconds:g} s)",
        )


class Admission:
    """The checks of a HELLO before WELCOME, and the back-offs that removals call for."""

    __slots__ = ("_backoff", "_config", "_workers")

    def __init__(self, config: TrainConfig, workers: int, master_config: MasterConfig) -> None:
        self._config, self._workers = config, workers
        self._backoff = RejoinBackoff(master_config.rejoin_backoff)

    def refuse(self, hello: Hello, held: dict[int, int], now: float) -> Refusal | None:
        """Why ``hello`` may not join at ``now`` (``held``: the shard of each member, by worker id), or None.

        In order: the shard claim (7.1-9), its back-off (7.1-10), the encodings (6.2-6).
        """
        shard = None if hello.shard is None else hello.shard[0]
        return (
            refuse_claim(hello.shard, self._workers, held)
            or self._backoff.refuse(shard, now)
            or refuse_encodings(self._config, hello.encodings)
        )

    def departed(self, member: Member, cause: Refusal | int | None, now: float) -> None:
        """A member's session ended at ``now``; start its claim's back-off if the way it ended calls for one.

        ``cause``: the refusal the master removed it with, or the code of the master's failure on
        its input; None if it ended otherwise (the worker or its transport ended it, a timeout, the
        end of the run).  A removal for what it sent starts one, but for those a refusal does not
        blame it for (:attr:`~aiodq.protocol.guard.Refusal.blames_sender`).
        """
        if isinstance(cause, Refusal):
            if cause.blames_sender and penalised(cause.code):
                self._backoff.start(member.shard, f"was removed for {cause.code.name}", now)
        elif cause is not None and penalised(cause):
            self._backoff.start(member.shard, f"was removed for {code_name(cause)}", now)
