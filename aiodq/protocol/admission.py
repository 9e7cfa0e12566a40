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
and :func:`penalised`): not a timeout (but one that held a snapshot phase to its deadline,
:attr:`~aiodq.protocol.guard.Refusal.held_the_phase`), a report out of line with the others' (an
honest worker's is, against a liar's), a report or update that the model's state makes overflow, or
the master's own failure; nor a session the worker or its transport ended (security.md says why not).

A worker that joins and leaves by itself, over and over, starts no back-off (nothing it sent is
refused), and each session costs the master a handshake and a copy of x_snap.  :class:`ConnectionRate`
bounds that, and a flood of connections from strangers, by address: the master closes a new
connection at once when its address (an IPv6 one by its /64) has opened too many of late.  And when
``max_unauthenticated`` connections are in aiodq's handshake, a new one cuts one short:
:func:`oldest_of_busiest`, as the listener does for TLS handshakes.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..codec.events import Hello
from ..config import MasterConfig
from ..errors import ErrorCode, code_name
from .guard import Refusal, refuse_claim, refuse_encodings
from .members import Member
from .trainconfig import TrainConfig

__all__ = [
    "FORGIVEN_AFTER",
    "HANDSHAKE_CUT_SHORT",
    "LONGEST_BACKOFF",
    "Admission",
    "ConnectionRate",
    "RejoinBackoff",
    "address_key",
    "oldest_of_busiest",
    "penalised",
]

#: Why a connection in aiodq's handshake was cut short (beyond ``max_unauthenticated``: security.md).
HANDSHAKE_CUT_SHORT = "handshake cut short for a newer connection"
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
            if cause.blames_sender and (penalised(cause.code) or cause.held_the_phase):
                self._backoff.start(member.shard, f"was removed for {cause.code.name}", now)
        elif cause is not None and penalised(cause):
            self._backoff.start(member.shard, f"was removed for {code_name(cause)}", now)


class ConnectionRate:
    """New connections by peer address, a token bucket each: ``burst`` at once, then ``rate`` a second.

    An address starts with a full bucket; each connection admitted takes a token, and the bucket
    refills at ``rate`` tokens a second up to ``burst``.  IPv6 addresses count by their /64 (one
    host commonly holds a whole /64); IPv4 ones, and IPv4-mapped IPv6 ones, by the address.  A
    rate of 0 admits every connection.  The buckets of at most :data:`MAX_ADDRESSES` addresses are
    kept: past that, the full ones are forgotten (they would admit as a new one does), and if none
    is, the fullest half (an attacker with more addresses than that is bounded by the handshake
    limit instead, ``MasterConfig.max_unauthenticated``).
    """

    __slots__ = ("_buckets", "_burst", "_rate")

    #: The most addresses whose buckets are kept.
    MAX_ADDRESSES = 4096

    def __init__(self, rate: float, burst: int) -> None:
        if not rate >= 0 or burst < 1:
            raise ValueError(f"a connection rate needs rate >= 0 and burst >= 1, got {rate!r} and {burst!r}")
        self._rate, self._burst = rate, float(burst)
        #: Tokens left and the time they were counted, by address key.
        self._buckets: dict[str, tuple[float, float]] = {}

    def admit(self, address: str | None, now: float) -> bool:
        """Whether a connection from ``address`` (None: unknown, admitted) at ``now`` may be served."""
        if not self._rate or address is None:
            return True
        key = address_key(address)
        tokens, then = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return False
        if key not in self._buckets and len(self._buckets) >= self.MAX_ADDRESSES:
            self._forget(now)
        self._buckets[key] = (tokens - 1.0, now)
        return True

    def _forget(self, now: float) -> None:
        """Drop the buckets that have refilled, and at least the fullest half.

        So this runs at most once every :data:`MAX_ADDRESSES` / 2 new addresses, whatever they do.
        """
        level = {
            key: min(self._burst, tokens + (now - then) * self._rate)
            for key, (tokens, then) in self._buckets.items()
        }
        full = [key for key, tokens in level.items() if tokens >= self._burst]
        fullest = sorted(level, key=level.__getitem__)[len(level) // 2 :]
        for key in full if len(full) > len(fullest) else fullest:
            del self._buckets[key]


def address_key(address: str) -> str:
    """What a peer is counted by.

    An IPv4 address (also one inside an IPv6 one: mapped, 6to4 or the NAT64 prefix 64:ff9b::/96);
    a global IPv6 address's /64; a link-local one whole, with its scope id (every host on a link
    has fe80::/64); anything else as it is.
    """
    host, _, scope = address.partition("%")
    try:
        parsed = ipaddress.ip_address(host)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv4Address):
        return str(parsed)
    inside = parsed.ipv4_mapped or parsed.sixtofour
    if inside is None and parsed in _NAT64:
        inside = ipaddress.IPv4Address(int(parsed) & 0xFFFF_FFFF)
    if inside is not None:
        return str(inside)
    if parsed.is_link_local:
        return f"{parsed}%{scope}" if scope else str(parsed)
    return str(ipaddress.IPv6Network((parsed, 64), strict=False))


def oldest_of_busiest(pending: dict[int, str | None]) -> int:
    """The connection in aiodq's handshake to cut short for a new one: the oldest of the busiest address.

    ``pending`` maps each (numbered in the order they came) to its peer's address (None: one without,
    a Unix socket's), counted by :func:`address_key`; of the keys with the most, the one whose oldest
    came first.

    Strangers that hold the places with silent connections then cannot keep out a worker from
    another address, nor from their own, whose handshake takes milliseconds (an attack review: 64
    silent connections renewed at the handshake timeout, 7 a second, kept every worker out).

    Raises:
        ValueError: if ``pending`` is empty.
    """
    by_key: dict[str, list[int]] = {}
    for number in sorted(pending):
        address = pending[number]
        by_key.setdefault("" if address is None else address_key(address), []).append(number)
    return max(by_key.values(), key=lambda numbers: (len(numbers), -numbers[0]))[0]


#: The well-known NAT64 prefix (RFC 6052): the last 32 bits are the IPv4 peer's address.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
