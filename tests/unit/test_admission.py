"""Who may join (protocol/admission.py): the rejoin back-off (wire-format.md 7.1-10), by which a worker
removed for what it sent waits before its shard may join again, and how the master's log names workers.

Sans I/O: the rule itself, then the real coordinator and worker sessions over in-memory bytes
(test_coordinator's Cluster, whose clock moves 1 s per step).
"""

from __future__ import annotations

from typing import Any

import pytest
from test_coordinator import Cluster, config, small_a9a
from test_hardening import once, rewrite, shard_of

from aiodq.codec.events import ErrorMessage, Heartbeat, SnapshotGradient
from aiodq.codec.messages import encode_message
from aiodq.config import MasterConfig
from aiodq.errors import ErrorCode
from aiodq.net.logbook import worker_name
from aiodq.protocol.admission import FORGIVEN_AFTER, LONGEST_BACKOFF, RejoinBackoff, penalised
from aiodq.protocol.coordinator import Phase
from aiodq.protocol.guard import MAX_PEER_ERRORS
from aiodq.protocol.session import WorkerSession


def test_the_back_off_doubles_per_removal_up_to_the_longest_and_is_forgiven_later() -> None:
    backoff = RejoinBackoff(1.0)
    now, waits = 100.0, []
    for _ in range(9):
        waits.append(backoff.removed(1, ErrorCode.LIMIT_EXCEEDED, now))
        now += 0.5  # removed again while still kept out: the wait doubles
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert LONGEST_BACKOFF == 60.0
    # The last wait ended at now - 0.5 + 60; a removal FORGIVEN_AFTER later starts from 1 s again.
    last_end = now - 0.5 + 60.0
    assert backoff.removed(1, ErrorCode.LIMIT_EXCEEDED, last_end + FORGIVEN_AFTER - 0.1) == 60.0
    later = last_end + FORGIVEN_AFTER - 0.1 + 60.0 + FORGIVEN_AFTER
    assert backoff.removed(1, ErrorCode.LIMIT_EXCEEDED, later) == 1.0


def test_a_claim_is_refused_with_try_later_only_while_its_back_off_lasts() -> None:
    backoff = RejoinBackoff(1.0)
    backoff.removed(1, ErrorCode.MALFORMED_FRAME, 10.0)
    refusal = backoff.refuse(1, 10.25)
    assert refusal is not None and refusal.code is ErrorCode.TRY_LATER
    assert refusal.reason == (
        "the worker of shard 1 was removed once, last for MALFORMED_FRAME; join again in 0.8 s (back-off 1 s)"
    )
    assert backoff.refuse(1, 11.0) is None  # its back-off is over
    assert backoff.refuse(0, 10.25) is None and backoff.refuse(None, 10.25) is None  # other claims
    backoff.removed(None, ErrorCode.INVALID_PAYLOAD, 10.0)
    backoff.removed(None, ErrorCode.INVALID_PAYLOAD, 10.5)
    refusal = backoff.refuse(None, 10.5)
    assert refusal is not None and refusal.reason.startswith(
        "a worker claiming no shard was removed 2 times, last for INVALID_PAYLOAD; join again in 2.0 s"
    )


def test_no_back_off_when_switched_off_or_for_removals_that_say_nothing_of_what_was_sent() -> None:
    backoff = RejoinBackoff(0.0)
    assert backoff.removed(1, ErrorCode.LIMIT_EXCEEDED, 0.0) == 0.0
    assert backoff.refuse(1, 0.0) is None
    assert not any(penalised(code) for code in (ErrorCode.TIMEOUT, ErrorCode.GOING_AWAY, ErrorCode.NO_ERROR))
    assert all(penalised(code) for code in (ErrorCode.LIMIT_EXCEEDED, ErrorCode.MALFORMED_FRAME))
    # A first back-off longer than the usual longest is kept as the cap.
    long = RejoinBackoff(100.0)
    assert [long.removed(0, ErrorCode.PROTOCOL_ERROR, t) for t in (0.0, 1.0)] == [100.0, 100.0]
    with pytest.raises(ValueError, match="rejoin_backoff"):
        MasterConfig(rejoin_backoff=-1.0)


def _claiming(dataset: Any, index: int, claim: tuple[int, int] | None) -> WorkerSession:
    return WorkerSession(*shard_of(dataset, 2, index), name=f"w{index}", shard=claim)


def _flooded_out(backoff: float) -> tuple[Cluster, float]:
    """Two workers claiming shards 0/2 and 1/2 in the inner loop; shard 1's sends one ERROR too many."""
    dataset = small_a9a()
    cluster = Cluster(
        config(epochs=1), dataset, 2, connect=False, master_config=MasterConfig(rejoin_backoff=backoff)
    )
    cluster.sessions = [_claiming(dataset, i, (i, 2)) for i in range(2)]
    cluster.ids = [None, None]
    for index in range(2):
        cluster.connect(index)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.INNER)
    flooder = cluster.ids[1]
    assert flooder is not None
    error = encode_message(ErrorMessage(code=60000, reason="noise"))
    coordinator.receive_data(flooder, error * (MAX_PEER_ERRORS + 1), cluster.now)
    assert not coordinator.is_member(flooder)
    cluster.frozen = {1}
    return cluster, cluster.now


def test_a_flooder_that_rejoins_at_once_is_refused_until_its_back_off_has_passed() -> None:
    """Its HELLO one step (1 s) after the removal, against a 10 s back-off: TRY_LATER before WELCOME.
    A HELLO at 10 s is admitted and the run finishes with both shards."""
    cluster, removed_at = _flooded_out(10.0)
    coordinator, dataset = cluster.coordinator, small_a9a()
    early = cluster.add_session(_claiming(dataset, 1, (1, 2)))
    cluster.run(until=lambda: cluster.sessions[early].ended is not None)
    assert cluster.now == removed_at + 1.0
    assert cluster.sessions[early].ended == (
        ErrorCode.TRY_LATER,
        "the worker of shard 1 was removed once, last for LIMIT_EXCEEDED; "
        "join again in 9.0 s (back-off 10 s)",
    )
    assert cluster.ids[early] is not None and not coordinator.is_member(cluster.ids[early])
    cluster.now = removed_at + 9.0  # the next HELLO arrives one step later: at the back-off's end
    again = cluster.add_session(_claiming(dataset, 1, (1, 2)))
    cluster.run()
    assert (
        cluster.sessions[again].ended is not None and cluster.sessions[again].ended[0] == ErrorCode.NO_ERROR
    )
    assert coordinator.done and coordinator.failure is None
    assert coordinator.trace[-1].samples == dataset.samples  # both shards in the last phase
    assert [code for _, code, *_ in coordinator.ledger.errors].count("TRY_LATER") == 1


def test_the_back_off_keeps_out_only_the_removed_claim_and_none_without_the_option() -> None:
    """During shard 1's back-off a worker claiming no shard still joins; with rejoin_backoff 0 the
    flooder's shard rejoins at once, as before."""
    cluster, _ = _flooded_out(10.0)
    stranger = cluster.add_session(_claiming(small_a9a(), 1, None))
    cluster.run(until=lambda: cluster.coordinator.is_member(cluster.ids[stranger] or -1))
    assert cluster.sessions[stranger].ended is None
    cluster, _ = _flooded_out(0.0)
    again = cluster.add_session(_claiming(small_a9a(), 1, (1, 2)))
    cluster.run(until=lambda: cluster.coordinator.is_member(cluster.ids[again] or -1))
    assert cluster.sessions[again].ended is None


def test_a_worker_cut_off_at_the_snapshot_deadline_rejoins_at_once() -> None:
    """A removal for a timeout says nothing about what the worker sent: no back-off."""
    dataset = small_a9a()
    master_config = MasterConfig(snapshot_timeout=5.0, rejoin_backoff=10.0)
    cluster = Cluster(config(epochs=2), dataset, 2, connect=False, master_config=master_config)
    cluster.sessions = [_claiming(dataset, i, (i, 2)) for i in range(2)]
    cluster.ids = [None, None]
    for index in range(2):
        cluster.connect(index)
    # Shard 1's second report never comes (HEARTBEATs instead): cut off at the deadline.
    cluster.tamper = rewrite(1, once(SnapshotGradient, lambda e: Heartbeat(), skip=1))
    cluster.run()
    coordinator = cluster.coordinator
    deadline = coordinator.get_timer()
    assert coordinator.phase is Phase.SNAPSHOT and deadline is not None
    cluster.now = deadline
    coordinator.handle_timer(deadline)
    assert coordinator.ledger.errors[-1][1] == "TIMEOUT" and coordinator.live_workers == 1
    again = cluster.add_session(_claiming(dataset, 1, (1, 2)))
    cluster.run()
    assert (
        cluster.sessions[again].ended is not None and cluster.sessions[again].ended[0] == ErrorCode.NO_ERROR
    )
    assert coordinator.done and coordinator.failure is None
    assert "TRY_LATER" not in [code for _, code, *_ in coordinator.ledger.errors]


def test_the_masters_log_names_a_worker_by_its_connection_and_its_shard() -> None:
    """usage.md: ``worker 1 (shard 1/2)``; a worker that claims no shard is ``worker 2``."""
    cluster, _ = _flooded_out(0.0)
    coordinator = cluster.coordinator
    first, flooder = cluster.ids[0], cluster.ids[1]
    assert first is not None and flooder is not None
    assert worker_name(coordinator, first) == f"worker {first} (shard 0/2)"
    # Removed but not yet forgotten: still named by its shard (its removal's log line comes after).
    assert worker_name(coordinator, flooder) == f"worker {flooder} (shard 1/2)"
    stranger = cluster.add_session(_claiming(small_a9a(), 1, None))
    cluster.run(until=lambda: coordinator.is_member(cluster.ids[stranger] or -1))
    assert worker_name(coordinator, cluster.ids[stranger] or -1) == f"worker {cluster.ids[stranger]}"
