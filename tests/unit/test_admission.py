"""Who may join (protocol/admission.py): the rejoin back-off (wire-format.md 7.1-10), by which a worker
removed for what it sent waits before its shard may join again, and how the master's log names workers.

Sans I/O: the rule itself, then the real coordinator and worker sessions over in-memory bytes
(test_coordinator's Cluster, whose clock moves 1 s per step).
"""

from __future__ import annotations

import dataclasses
import logging
import re
import zipfile
from typing import Any

import numpy as np
import pytest
from test_coordinator import Cluster, config, small_a9a
from test_hardening import _overflowing_reports, once, rewrite, shard_of

from aiodq.codec.events import Close, ErrorMessage, Gradient, Heartbeat, Hello, SnapshotGradient
from aiodq.codec.messages import encode_message
from aiodq.codec.vectors import DenseQuantized
from aiodq.config import ConnectionConfig, MasterConfig
from aiodq.errors import ErrorCode
from aiodq.net.checkpoint import load, read_limit, save
from aiodq.net.logbook import Logbook, worker_name
from aiodq.protocol.accounting import MAX_ERRORS, MAX_REASON_CHARS, MAX_UNJOINED_ERRORS, UNASSIGNED, Ledger
from aiodq.protocol.admission import (
    FORGIVEN_AFTER,
    LONGEST_BACKOFF,
    Admission,
    ConnectionRate,
    RejoinBackoff,
    oldest_of_busiest,
    penalised,
)
from aiodq.protocol.connection import MasterConnection
from aiodq.protocol.coordinator import Phase
from aiodq.protocol.deadlines import SNAPSHOT_FLOOR
from aiodq.protocol.guard import MAX_PEER_ERRORS, Refusal
from aiodq.protocol.members import Member
from aiodq.protocol.session import WorkerSession
from aiodq.protocol.trainconfig import TrainConfig

REMOVED = "was removed for LIMIT_EXCEEDED"


def test_the_back_off_doubles_per_removal_up_to_the_longest_and_is_forgiven_later() -> None:
    backoff = RejoinBackoff(1.0)
    now, waits = 100.0, []
    for _ in range(9):
        waits.append(backoff.start(1, REMOVED, now))
        now += 0.5  # removed again while still kept out: the wait doubles
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    assert LONGEST_BACKOFF == 60.0
    # The last wait ended at now - 0.5 + 60; a removal FORGIVEN_AFTER later starts from 1 s again.
    last_end = now - 0.5 + 60.0
    assert backoff.start(1, REMOVED, last_end + FORGIVEN_AFTER - 0.1) == 60.0
    later = last_end + FORGIVEN_AFTER - 0.1 + 60.0 + FORGIVEN_AFTER
    assert backoff.start(1, REMOVED, later) == 1.0


def test_a_claim_is_refused_with_try_later_only_while_its_back_off_lasts() -> None:
    backoff = RejoinBackoff(1.0)
    backoff.start(1, "was removed for MALFORMED_FRAME", 10.0)
    refusal = backoff.refuse(1, 10.25)
    assert refusal is not None and refusal.code is ErrorCode.TRY_LATER
    assert refusal.reason == (
        "the worker of shard 1 was removed for MALFORMED_FRAME; join again in 0.8 s (back-off 1 s)"
    )
    assert backoff.refuse(1, 11.0) is None  # its back-off is over
    assert backoff.refuse(0, 10.25) is None and backoff.refuse(None, 10.25) is None  # other claims
    backoff.start(None, "was removed for INVALID_PAYLOAD", 10.0)
    backoff.start(None, "was removed for UNEXPECTED_MESSAGE", 10.5)
    refusal = backoff.refuse(None, 10.5)
    assert refusal is not None and refusal.reason == (
        "a worker claiming no shard was removed for UNEXPECTED_MESSAGE; join again in 2.0 s (back-off 2 s)"
    )


def _member(shard: int | None) -> Member:
    member = Member(MasterConnection(ConnectionConfig()))
    member.join(None if shard is None else (shard, 2))
    return member


def test_which_departures_start_a_back_off() -> None:
    """Removals for what the worker sent; not timeouts, refusals that do not blame it, or a session
    the worker or its transport ended, however soon after joining (a back-off for those was tried:
    honest workers that refuse a run's CONFIG were told TRY_LATER instead of why)."""
    admission = Admission(TrainConfig(), 2, MasterConfig(rejoin_backoff=1.0))
    member, now = _member(1), 5.0

    def refused() -> str | None:
        refusal = admission.refuse(Hello(shard=(1, 2)), {}, now)
        return None if refusal is None else refusal.reason.split(";")[0]

    quiet: list[Refusal | int | None] = [
        Refusal(ErrorCode.INVALID_PAYLOAD, "out of line", blames_sender=False),
        Refusal(ErrorCode.TIMEOUT, "no SNAPSHOT_GRADIENT within 10 s"),
        int(ErrorCode.TIMEOUT),  # a connection's own timeout
        int(ErrorCode.NO_ERROR),  # the master's CLOSE at the end of training answered
        int(ErrorCode.GOING_AWAY),
    ]
    for cause in quiet:
        admission.departed(member, cause, now)
        assert refused() is None, cause
    for _ in range(3):
        admission.departed(_member(1), None, now)  # it left on its own, at once
        assert refused() is None
    for cause, says in (
        (Refusal(ErrorCode.LIMIT_EXCEEDED, "more than 256 ERROR messages"), "was removed for LIMIT_EXCEEDED"),
        (int(ErrorCode.MALFORMED_FRAME), "was removed for MALFORMED_FRAME"),
    ):
        now += 100.0
        admission.departed(_member(1), cause, now)
        assert refused() == f"the worker of shard 1 {says}"


def test_no_back_off_when_switched_off_and_the_first_may_be_the_longest() -> None:
    backoff = RejoinBackoff(0.0)
    assert backoff.start(1, REMOVED, 0.0) == 0.0
    assert backoff.refuse(1, 0.0) is None
    assert not any(penalised(code) for code in (ErrorCode.TIMEOUT, ErrorCode.GOING_AWAY, ErrorCode.NO_ERROR))
    assert all(penalised(code) for code in (ErrorCode.LIMIT_EXCEEDED, ErrorCode.MALFORMED_FRAME))
    # A first back-off longer than the usual longest is kept as the cap.
    long = RejoinBackoff(100.0)
    assert [long.start(0, REMOVED, t) for t in (0.0, 1.0)] == [100.0, 100.0]
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
        "the worker of shard 1 was removed for LIMIT_EXCEEDED; join again in 9.0 s (back-off 10 s)",
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


def test_a_flood_of_refused_hellos_leaves_the_removal_it_follows_in_the_errors_kept() -> None:
    """result.json keeps the latest MAX_ERRORS errors with their text, at most MAX_UNJOINED_ERRORS of
    them of connections that never joined: 120 HELLOs refused with TRY_LATER after a removal leave the
    removal's LIMIT_EXCEEDED there, beside the latest 50 refusals; the counters have every one.
    (Before, the 120 refusals pushed out every other entry.)"""
    cluster, now = _flooded_out(1000.0)
    coordinator = cluster.coordinator
    hello = encode_message(Hello(shard=(1, 2)))
    refused = []
    for _ in range(120):
        refused.append(worker_id := coordinator.connect(now))
        coordinator.receive_data(worker_id, hello, now)
        assert not coordinator.is_member(worker_id)
    summary = coordinator.summary()
    codes = [(e["code"], e["joined"]) for e in summary["errors"]]
    # Before the flood the list held the flooder's last 99 ERRORs and its removal; each refusal then
    # pushed out the oldest entry until 50 were refusals, and from then on the oldest refusal.
    kept = MAX_ERRORS - MAX_UNJOINED_ERRORS
    expected = [("60000", True)] * (kept - 1) + [("LIMIT_EXCEEDED", True)] + [("TRY_LATER", False)] * 50
    assert codes == expected and MAX_UNJOINED_ERRORS == 50
    assert [e["worker"] for e in summary["errors"][kept:]] == refused[-MAX_UNJOINED_ERRORS:]
    assert summary["error_counts"] == {"LIMIT_EXCEEDED": 1, "TRY_LATER": 120}
    # 60000 is no assigned code: counted as such (its number stays in each entry's text above).
    assert summary["peer_error_counts"] == {UNASSIGNED: MAX_PEER_ERRORS + 1}


def test_strangers_closing_with_every_unassigned_code_add_one_key_and_a_bounded_checkpoint(
    tmp_path: Any,
) -> None:
    """An audit: 65,512 connections, each a CLOSE with another code no version assigns and a reason of
    1,024 control characters (no HELLO, so no secret needed), made as many keys in peer_error_counts
    (1.36 MB of result.json) and a checkpoint past its read limit, which --resume then refused.  The
    codes are counted under one key; the texts kept are the latest 50 strangers' (MAX_UNJOINED_ERRORS),
    and in the checkpoint each control character takes the 6 bytes of its JSON escape, not 4 times that
    (a str array's 4 bytes a character)."""
    cluster = Cluster(config(epochs=2), small_a9a(), 2)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.INNER)
    reason = "\x01" * 1024
    for code in range(30_000, 32_000):
        stranger = coordinator.connect(cluster.now)
        coordinator.receive_data(stranger, encode_message(Close(code=code, reason=reason)), cluster.now)
        coordinator.receive_data(stranger, b"", cluster.now)
    summary = coordinator.summary()
    assert summary["peer_error_counts"] == {UNASSIGNED: 2000}
    strangers = [e for e in summary["errors"] if not e["joined"]]
    assert [e["code"] for e in strangers] == [str(code) for code in range(31_950, 32_000)]
    path = tmp_path / "run.ckpt"
    save(path, coordinator.checkpoint(cluster.now))
    with zipfile.ZipFile(path) as archive:
        meta_bytes = archive.getinfo("meta.npy").file_size
    escaped = MAX_UNJOINED_ERRORS * 1024 * len("\\u0001")  # 307,200 bytes of escaped reasons
    assert escaped < meta_bytes < escaped + 100_000, meta_bytes  # (4 x escaped, 1.2 MB, before)
    restored = Cluster(config(epochs=2), small_a9a(), 2, connect=False).coordinator
    restored.restore(load(path, max_bytes=read_limit(123, 2)), 0.0)
    assert restored.summary()["peer_error_counts"] == {UNASSIGNED: 2000}
    # A text beyond MAX_REASON_CHARS (a master that accepts longer reasons) is kept cut, saying so.
    ledger = Ledger()
    ledger.add_error(0, "PROTOCOL_ERROR", "x" * 5000, sent=True)
    assert ledger.errors[0][2] == "x" * MAX_REASON_CHARS + f"... ({5000 - MAX_REASON_CHARS} more characters)"
    assert MAX_REASON_CHARS == 1024


def test_errors_of_workers_that_joined_still_push_out_the_oldest_of_any_kind() -> None:
    """The cap on unjoined entries only protects the others: MAX_ERRORS errors of joined workers
    after 10 unjoined ones leave the latest MAX_ERRORS, all joined."""
    ledger = Ledger()
    for i in range(10):
        ledger.add_error(i, "TRY_LATER", "wait", joined=False)
    for i in range(MAX_ERRORS):
        ledger.add_error(100 + i, "PROTOCOL_ERROR", "bad")
    assert [entry[0] for entry in ledger.errors] == list(range(100, 100 + MAX_ERRORS))
    ledger.add_error(7, "TRY_LATER", "wait", joined=False)
    assert ledger.errors[-1] == (7, "TRY_LATER", "wait", "master", False)
    assert ledger.errors[0][0] == 101 and len(ledger.errors) == MAX_ERRORS
    assert ledger.error_counts == {"TRY_LATER": 11, "PROTOCOL_ERROR": MAX_ERRORS}


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


def test_a_worker_cut_off_at_the_snapshot_deadline_waits_its_back_off() -> None:
    """Holding a snapshot phase to its deadline (HEARTBEATs instead of the report) starts the shard's
    back-off, unlike other timeouts (it did not, and an audit's worker held every phase so); once it has
    passed, the shard joins again and the run finishes."""
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
    cluster.run(until=lambda: cluster.sessions[again].ended is not None)
    ended = cluster.sessions[again].ended
    assert ended is not None and ended[0] == ErrorCode.TRY_LATER
    cluster.now += 10.0
    later = cluster.add_session(_claiming(dataset, 1, (1, 2)))
    cluster.run()
    assert finished(cluster.sessions[later])
    assert coordinator.done and coordinator.failure is None


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


def finished(session: WorkerSession) -> bool:
    """The session ended as a run's end ends it: CLOSE with NO_ERROR."""
    return session.ended is not None and session.ended[0] == ErrorCode.NO_ERROR


def _claiming_cluster(backoff: float, *, workers: int = 2, guard: float = 100.0) -> Cluster:
    dataset = small_a9a()
    master_config = MasterConfig(rejoin_backoff=backoff, guard=guard)
    cluster = Cluster(config(epochs=2), dataset, workers, connect=False, master_config=master_config)
    cluster.sessions = [
        WorkerSession(*shard_of(dataset, workers, i), name=f"w{i}", shard=(i, workers))
        for i in range(workers)
    ]
    cluster.ids = [None] * workers
    for index in range(workers):
        cluster.connect(index)
    return cluster


def test_a_worker_removed_as_out_of_line_rejoins_at_once() -> None:
    """A report out of line with the others' says nothing certain about its sender (the others may
    lie: a re-attack had an honest worker removed this way until the back-off locked it out), so it
    starts no back-off: the same shard joins again at the next step and the run finishes."""
    cluster = _claiming_cluster(10.0, workers=3)
    inflate = once(SnapshotGradient, lambda e: dataclasses.replace(e, loss=e.loss * 1e4), skip=1)
    cluster.tamper = rewrite(2, inflate)
    _rejoins_at_once(cluster, 2, ErrorCode.INVALID_PAYLOAD)
    assert any(
        "snapshot report out of line" in reason for _, _, reason, *_ in cluster.coordinator.ledger.errors
    )


def test_the_order_of_the_refusals_before_welcome() -> None:
    """wire-format.md 7.1-10: WORLD_SIZE_MISMATCH, then SHARD_TAKEN, then TRY_LATER, then
    UNSUPPORTED_ENCODING, for a HELLO that qualifies for several."""
    admission = Admission(TrainConfig(), 2, MasterConfig(rejoin_backoff=1.0))
    admission.departed(_member(1), Refusal(ErrorCode.LIMIT_EXCEEDED, "flood"), 0.0)  # shard 1: in back-off
    held = {7: 1}  # (and held again, by worker 7)
    few = frozenset({0})  # RAW_F32 only: not what an asylpg run sends

    def code(shard: tuple[int, int], held: dict[int, int], encodings: frozenset[int] | None = None) -> str:
        hello = Hello(shard=shard) if encodings is None else Hello(shard=shard, encodings=encodings)
        refusal = admission.refuse(hello, held, 0.5)
        return "admitted" if refusal is None else refusal.code.name

    assert code((1, 3), held, few) == "WORLD_SIZE_MISMATCH"
    assert code((1, 2), held, few) == "SHARD_TAKEN"
    assert code((1, 2), {}, few) == "TRY_LATER"
    assert code((0, 2), {}, few) == "UNSUPPORTED_ENCODING"
    assert code((0, 2), {}) == "admitted"


def test_a_worker_that_held_a_snapshot_phase_to_its_deadline_waits_before_its_shard_rejoins() -> None:
    """An audit: a worker that answered the SNAPSHOT it got on joining in the inner loop, and not the
    next phase's, was waited for until the phase deadline (10 s at least), removed with TIMEOUT, and
    rejoined at once to do it again: every epoch took 10 s, 37 times the run's time.  That removal now
    starts the shard's back-off (TRY_LATER before WELCOME); once it has passed, the shard joins again
    and the run finishes with all three."""
    cluster = _claiming_cluster(10.0, workers=3)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: len(coordinator.trace) == 1 and coordinator.phase is Phase.SNAPSHOT)
    cluster.frozen = {2}  # silent from the second phase on
    cluster.run()
    assert coordinator.phase is Phase.SNAPSHOT
    cluster.now += SNAPSHOT_FLOOR
    coordinator.handle_timer(cluster.now)
    assert coordinator.phase is Phase.INNER and not coordinator.is_member(cluster.ids[2] or -1)
    removal = [entry for entry in coordinator.ledger.errors if entry[1] == "TIMEOUT"]
    assert [entry[2] for entry in removal] == [f"no SNAPSHOT_GRADIENT within {SNAPSHOT_FLOOR:g} s"]
    again = cluster.add_session(WorkerSession(*shard_of(small_a9a(), 3, 2), name="again", shard=(2, 3)))
    cluster.run(until=lambda: cluster.sessions[again].ended is not None)
    ended = cluster.sessions[again].ended
    assert ended is not None and ended[0] == ErrorCode.TRY_LATER and not coordinator.done
    cluster.now += 10.0
    later = cluster.add_session(WorkerSession(*shard_of(small_a9a(), 3, 2), name="later", shard=(2, 3)))
    cluster.run()
    assert coordinator.done and coordinator.failure is None and finished(cluster.sessions[later])
    assert coordinator.trace[-1].samples == small_a9a().samples  # all three shards in the last phase


def _rejoins_at_once(cluster: Cluster, index: int, code: ErrorCode) -> None:
    """Worker ``index`` (of a claiming cluster, 3 workers, a 10 s back-off) is removed with ``code``;
    the same shard joins again at the next step (no TRY_LATER) and the run finishes."""
    coordinator = cluster.coordinator
    cluster.run(until=lambda: cluster.sessions[index].ended is not None)
    assert cluster.sessions[index].ended is not None and cluster.sessions[index].ended[0] == code
    cluster.tamper = None
    again = cluster.add_session(
        WorkerSession(*shard_of(small_a9a(), 3, index), name="again", shard=(index, 3))
    )
    cluster.run(until=lambda: coordinator.is_member(cluster.ids[again] or -1) or coordinator.done)
    assert coordinator.is_member(cluster.ids[again] or -1)
    cluster.run()
    assert finished(cluster.sessions[again])
    assert coordinator.done and coordinator.failure is None
    assert "TRY_LATER" not in [code for _, code, *_ in coordinator.ledger.errors]


def test_a_worker_whose_report_overflows_rejoins_at_once() -> None:
    """A report whose gradient sum's norm is not finite: an honest worker's too, at an x_snap that
    overflows (guard.py), so no back-off."""
    cluster = _claiming_cluster(10.0, workers=3)
    cluster.tamper = _overflowing_reports({1})
    _rejoins_at_once(cluster, 1, ErrorCode.NON_FINITE)


def test_a_worker_whose_update_overflows_the_model_rejoins_at_once() -> None:
    """guard 0: an update that takes x out of a MODEL's range removes its sender (OVERFLOW), which
    others' updates may have brought there: no back-off."""
    cluster = _claiming_cluster(10.0, workers=3, guard=0.0)
    huge = DenseQuantized(8, float(np.finfo(np.float32).max), np.full(123, 127, dtype=np.int8))
    cluster.tamper = rewrite(0, once(Gradient, lambda e: dataclasses.replace(e, vector=huge), skip=3))
    _rejoins_at_once(cluster, 0, ErrorCode.INVALID_PAYLOAD)
    assert cluster.coordinator.dropped["overflow"] == 1


def test_a_worker_whose_message_the_master_failed_on_rejoins_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """INTERNAL_ERROR is the master's own failure, not the worker's: no back-off."""
    cluster = _claiming_cluster(10.0, workers=3)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.INNER)
    real, victim = coordinator._gradient, cluster.ids[2]

    def failing(worker_id: int, *args: Any) -> None:
        if worker_id == victim:
            raise RuntimeError("planted")
        real(worker_id, *args)

    monkeypatch.setattr(coordinator, "_gradient", failing)
    cluster.run(until=lambda: cluster.sessions[2].ended is not None)
    monkeypatch.setattr(coordinator, "_gradient", real)
    _rejoins_at_once(cluster, 2, ErrorCode.INTERNAL_ERROR)


def test_the_log_says_which_side_raised_each_code(caplog: pytest.LogCaptureFixture) -> None:
    """docs/security.md: ``worker 5 (shard 1/4): LIMIT_EXCEEDED: ...`` (the master's code),
    ``worker 5 (shard 1/4) says GOING_AWAY: ...`` (the worker's)."""
    cluster = _claiming_cluster(0.0)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.INNER)
    first, second = cluster.ids
    assert first is not None and second is not None
    logbook = Logbook(lambda: cluster.now)
    caplog.set_level(logging.INFO, logger="aiodq.master")
    coordinator.receive_data(first, encode_message(ErrorMessage(code=19, reason="bye")), cluster.now)
    coordinator.receive_data(second, bytes(16), cluster.now)  # not a frame: the master closes it
    logbook.progress(coordinator, {})
    lines = [record.getMessage() for record in caplog.records]
    assert f"worker {first} (shard 0/2) says GOING_AWAY: bye" in lines
    raised = [line for line in lines if line.startswith(f"worker {second} (shard 1/2)")]
    assert len(raised) == 1 and re.fullmatch(rf"worker {second} \(shard 1/2\): [A-Z_]+: .+", raised[0]), (
        raised
    )


# -- the connection rate by address --------------------------------------------------------------


def test_an_address_gets_its_burst_at_once_then_the_rate() -> None:
    """A bucket of 3 tokens refilled at 2 a second: 3 at t = 0, then one more every 0.5 s."""
    rate = ConnectionRate(2.0, 3)
    assert [rate.admit("10.0.0.1", 0.0) for _ in range(4)] == [True, True, True, False]
    assert not rate.admit("10.0.0.1", 0.4)  # 0.8 of a token
    assert rate.admit("10.0.0.1", 0.5)  # 1.0 (the refused attempts took none)
    assert not rate.admit("10.0.0.1", 0.5)
    assert [rate.admit("10.0.0.1", 10.0) for _ in range(4)] == [True, True, True, False]  # full again, not 20
    assert rate.admit("10.0.0.2", 0.5)  # another address has its own bucket


def test_ipv6_peers_count_by_their_64_and_mapped_ipv4_ones_by_the_address() -> None:
    rate = ConnectionRate(1.0, 2)
    assert rate.admit("2001:db8::1", 0.0) and rate.admit("2001:db8::ffff:2", 0.0)
    assert not rate.admit("2001:db8:0:0:abcd::3", 0.0)  # the same /64
    assert rate.admit("2001:db8:0:1::1", 0.0)  # the next /64
    assert rate.admit("192.0.2.7", 0.0) and rate.admit("::ffff:192.0.2.7", 0.0)
    assert not rate.admit("192.0.2.7", 0.0)
    # Link-local: every host of a link has fe80::/64, so each address counts alone, with its scope.
    assert rate.admit("fe80::1%eth0", 0.0) and rate.admit("fe80::1%eth0", 0.0)
    assert not rate.admit("fe80::1%eth0", 0.0)
    assert rate.admit("fe80::2%eth0", 0.0) and rate.admit("fe80::1%eth1", 0.0)
    # An IPv4 peer inside IPv6 (NAT64's 64:ff9b::/96, 6to4's 2002::/16) counts as that IPv4 address.
    assert rate.admit("198.51.100.9", 0.0) and rate.admit("64:ff9b::c633:6409", 0.0)
    assert not rate.admit("2002:c633:6409::1", 0.0)
    assert rate.admit("64:ff9b::c633:640a", 0.0)  # another IPv4 peer behind the same NAT64
    assert rate.admit("not an address", 0.0) and rate.admit("not an address", 0.0)
    assert not rate.admit("not an address", 0.0)


def test_no_rate_or_no_address_admits_everything() -> None:
    off = ConnectionRate(0.0, 1)
    assert all(off.admit("10.0.0.1", 0.0) for _ in range(1000))
    on = ConnectionRate(1.0, 1)
    assert all(on.admit(None, 0.0) for _ in range(1000))
    for rate, burst in ((-1.0, 1), (float("nan"), 1), (1.0, 0)):
        with pytest.raises(ValueError, match="a connection rate needs rate >= 0 and burst >= 1"):
            ConnectionRate(rate, burst)


def test_the_buckets_kept_are_bounded_and_the_emptiest_stay() -> None:
    """Past MAX_ADDRESSES the refilled buckets go; if none has refilled, the fullest half."""
    limit = ConnectionRate.MAX_ADDRESSES
    rate = ConnectionRate(1.0, 2)
    for index in range(limit):
        assert rate.admit(f"10.{index >> 16}.{(index >> 8) & 255}.{index & 255}", 0.0)
    assert rate.admit("10.0.0.0", 0.0) and not rate.admit("10.0.0.0", 0.0)  # emptied, kept
    assert rate.admit("192.0.2.1", 0.5)  # a new address past the limit: nothing has refilled
    assert len(rate._buckets) == limit // 2 + 1
    assert not rate.admit("10.0.0.0", 0.5)  # the emptiest bucket was kept (0.5 of a token)
    rate = ConnectionRate(1.0, 2)
    for index in range(limit):
        assert rate.admit(f"10.{index >> 16}.{(index >> 8) & 255}.{index & 255}", 0.0)
    assert rate.admit("192.0.2.2", 1.0)  # by now every bucket has refilled: all forgotten
    assert len(rate._buckets) == 1
    # With a few refilled, the fullest half goes still: not one pass over them all per new address.
    rate = ConnectionRate(1.0, 2)
    for index in range(limit):
        assert rate.admit(f"10.{index >> 16}.{(index >> 8) & 255}.{index & 255}", 0.0 if index else -1.0)
    assert rate.admit("192.0.2.3", 0.0)  # only 10.0.0.0 (admitted at -1.0) has refilled
    assert len(rate._buckets) == limit // 2 + 1


def test_the_connection_cut_short_is_the_oldest_of_the_busiest_address() -> None:
    """Beyond max_unauthenticated, a new connection cuts one in aiodq's handshake short: the oldest of the
    address with the most (an IPv6 one by its /64; ties to the address whose oldest came first)."""
    assert oldest_of_busiest({1: "10.0.0.9", 2: "10.0.0.7", 3: "10.0.0.7", 4: "10.0.0.9", 5: "10.0.0.7"}) == 2
    assert oldest_of_busiest({4: "10.0.0.9", 2: "10.0.0.7", 3: "10.0.0.9", 1: "10.0.0.7"}) == 1
    # Two peers of one /64 count together; a worker alone at its address is never the one cut.
    pending = {1: "192.0.2.1", 2: "2001:db8::1", 3: "2001:db8::2", 4: "192.0.2.1"}
    assert oldest_of_busiest(pending) == 1  # (a tie: 192.0.2.1's oldest came first)
    pending[5] = "2001:db8::ffff"
    assert oldest_of_busiest(pending) == 2
    assert oldest_of_busiest({7: None, 8: "198.51.100.4", 9: None}) == 7  # (no address: counted together)


def test_a_lost_worker_stays_a_warning_when_the_members_lines_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A review: past the members' rate limit (20 lines in 10 s) a lost worker was folded into the INFO
    count of those that left.  It is counted apart, and the count is a WARNING."""
    logbook = Logbook(lambda: 0.0)
    caplog.set_level(logging.INFO, logger="aiodq.master")
    for worker_id in range(22):
        logbook._members[worker_id] = f"worker {worker_id}"
    for worker_id in range(21):
        logbook.left(worker_id)  # 20 lines, then one counted
    logbook.left(21, lost=True)
    logbook.counts(force=True)
    counted = caplog.records[-1]
    assert counted.getMessage() == "workers left: 1 and lost: 1, not logged one by one", counted.getMessage()
    assert counted.levelno == logging.WARNING
