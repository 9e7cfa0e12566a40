"""What an admitted worker's single message can no longer do to the master (issue 10, docs/security.md).

Sans I/O: the real coordinator and worker sessions over in-memory bytes (test_coordinator's
Cluster); one worker's outgoing messages are rewritten on the way.  Each test states the attack
and checks that the message is refused, that the worker is told why, and that the others finish
training with a finite model whose loss is close to an honest run's.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from test_coordinator import Cluster, config, small_a9a

from aiodq.codec.events import ErrorMessage, Event, Gradient, Heartbeat, SnapshotGradient
from aiodq.codec.frames import FrameReader
from aiodq.codec.messages import DecodeContext, decode_message, encode_message
from aiodq.codec.vectors import DenseQuantized, RawVector, ZeroVector
from aiodq.config import ConnectionConfig, Limits, MasterConfig
from aiodq.errors import CheckpointError, ErrorCode
from aiodq.net.checkpoint import RECORDS_READ_LIMIT, load, read_limit, records_in, save
from aiodq.protocol.algorithms import TrainConfig
from aiodq.protocol.coordinator import DIVERGED_AFTER, Phase
from aiodq.protocol.dataset import shard
from aiodq.protocol.deadlines import MEDIAN_SLACK, SNAPSHOT_FLOOR, SNAPSHOT_SLACK, Deadlines
from aiodq.protocol.guard import LONE_GRACE, LONE_OUTLIER, Divergence, Guard, Refusal
from aiodq.protocol.recovery import Checkpoint
from aiodq.protocol.result import RunResult
from aiodq.protocol.session import WorkerSession
from aiodq.protocol.simulate import simulate

D = 123


def rewrite(target: int, change: Callable[[Event], Event | None]) -> Callable[[int, bytes], bytes]:
    """A tamper hook: worker ``target``'s messages pass through ``change`` (None drops one)."""

    def tamper(index: int, data: bytes) -> bytes:
        if index != target:
            return data
        reader = FrameReader(Limits())
        reader.feed(data)
        out = b""
        while (frame := reader.next_frame()) is not None:
            event = decode_message(
                frame, DecodeContext(dim=D) if frame.type not in (1, 2, 3) else DecodeContext()
            )
            changed = change(event)
            if changed is not None:
                out += encode_message(changed, frame.version)
        return out

    return tamper


def once(kind: type, make: Callable[[Any], Event], *, skip: int = 0) -> Callable[[Event], Event | None]:
    """Change the (skip+1)-th event of ``kind`` with ``make``; pass everything else."""
    seen = 0

    def change(event: Event) -> Event | None:
        nonlocal seen
        if isinstance(event, kind):
            seen += 1
            if seen == skip + 1:
                return make(event)
        return event

    return change


def honest_loss(train: TrainConfig) -> float:
    cluster = Cluster(train, small_a9a(), 3)
    cluster.run()
    return cluster.coordinator.trace[-1].loss


def check_others_finished(cluster: Cluster, train: TrainConfig, bad: int, code: ErrorCode) -> None:
    coordinator = cluster.coordinator
    assert coordinator.done and coordinator.failure is None
    assert np.isfinite(coordinator.state.x).all()
    assert len(coordinator.trace) == train.epochs + 1
    session = cluster.sessions[bad]
    assert session.ended is not None and session.ended[0] == code, session.ended
    assert coordinator.trace[-1].loss <= honest_loss(train) * 1.02


# -- the snapshot phase ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attack", "code"),
    [
        (lambda e: dataclasses.replace(e, samples=2**63 - 1), ErrorCode.INVALID_PAYLOAD),  # epoch of 1.4e17
        (lambda e: dataclasses.replace(e, correct=e.samples + 1), ErrorCode.INVALID_PAYLOAD),
        (lambda e: dataclasses.replace(e, loss=1e300), ErrorCode.INVALID_PAYLOAD),  # the trace's F
        (lambda e: dataclasses.replace(e, vector=RawVector(np.full(D, 1e200))), ErrorCode.NON_FINITE),
        (lambda e: dataclasses.replace(e, vector=RawVector(np.full(D, 1e30))), ErrorCode.INVALID_PAYLOAD),
    ],
    ids=["samples-2^63", "correct>samples", "loss-1e300", "gradient-1e200", "gradient-1e30"],
)
def test_one_poisoned_snapshot_report_is_refused(
    attack: Callable[[SnapshotGradient], Event], code: ErrorCode
) -> None:
    """SNAPSHOT_GRADIENT: impossible counts, absurd loss or gradient: the report and its sender go."""
    train = config(epochs=2)
    cluster = Cluster(train, small_a9a(), 3)
    cluster.tamper = rewrite(0, once(SnapshotGradient, attack, skip=1))  # epoch 1's report
    cluster.run()
    check_others_finished(cluster, train, 0, code)
    coordinator = cluster.coordinator
    assert coordinator.state.updates_per_epoch == train.updates_per_epoch
    assert all(r.accuracy <= 1 and abs(r.loss) < 10 for r in coordinator.trace)


def test_two_reports_refused_in_one_phase_are_both_removed() -> None:
    """An attack review: the first of two refusals removed its worker, and that removal judged the
    reports left anew, where the two-report rule has nothing to compare with in the first phase: the
    second refused report was taken into F and g_snap.  Here worker 0 reports a loss 1,000 times
    the others' and worker 1 a gradient 10**4 times theirs, both at epoch 0: out of line with the
    median of the three (worker 2's, honest), both go, and the phase is worker 2's shard alone."""
    train = config(epochs=1)
    cluster = Cluster(train, small_a9a(), 3)
    high_loss = rewrite(0, once(SnapshotGradient, lambda e: dataclasses.replace(e, loss=1000 * e.loss)))
    steep = rewrite(
        1, once(SnapshotGradient, lambda e: dataclasses.replace(e, vector=RawVector(1e4 * e.vector.values)))
    )
    cluster.tamper = lambda index, data: steep(index, high_loss(index, data))
    cluster.run()
    coordinator = cluster.coordinator
    for bad in (0, 1):
        ended = cluster.sessions[bad].ended
        assert ended is not None and ended[0] == ErrorCode.INVALID_PAYLOAD, (bad, ended)
    assert {error[0] for error in coordinator.errors} == {cluster.ids[0], cluster.ids[1]}
    own = len(shard(2000, 3, 2))  # worker 2's samples
    assert [record.samples for record in coordinator.trace] == [own, own]
    assert coordinator.done and coordinator.failure is None


def test_one_false_report_of_three_gets_no_honest_one_refused() -> None:
    """An attack review: each report was judged against the median of the others', with three
    workers the mean of two, one of them the liar's: losses 50, 50 and -50 a sample (a user model)
    had both honest workers refused.  The median of all three lies between the honest two."""
    mine = Guard(dataclasses.replace(config(), model="mine:Loss"), factor=100.0, workers=3, samples=None)
    assert mine.outliers(_reports(50.0, 50.0, -50.0, epoch=0)) == {}  # |-50 - 50| <= 100 x 50
    assert list(mine.outliers(_reports(0.69, 0.69, -700.0, epoch=0))) == [2]  # |-700 - 0.69| > 69
    assert list(mine.outliers(_reports(0.69, 700.0, 0.69, epoch=0))) == [1]


def test_a_worker_objective_whose_fingerprint_fails_refuses_the_run() -> None:
    """A review: an exception out of a worker objective's fingerprint() left WorkerSession.receive_data
    (simulate raised it); it ends the session with INVALID_CONFIG, saying so."""
    dataset = small_a9a(300)

    class Digest:
        def __init__(self, features: Any, labels: Any) -> None:
            self.inner = TrainConfig().built_in(features, labels)
            self.samples, self.dim, self.name = self.inner.samples, self.inner.dim, "mine:Digest"

        def initial(self, rng: Any) -> Any:
            return np.zeros(self.dim)

        def loss_grad(self, x: Any, rows: Any = None) -> Any:
            return self.inner.loss_grad(x, rows)

        def fingerprint(self) -> str:
            if self.samples < dataset.samples:  # a worker's share: its digest fails
                raise RuntimeError("cannot digest on this device")
            return "whole"

    coordinator = simulate(TrainConfig(model="mine:Digest", epochs=1), dataset, 2, objective=Digest)
    said = {(code, reason, side) for _, code, reason, side, _ in coordinator.errors}
    failed = "Digest.fingerprint() failed: RuntimeError: cannot digest on this device"
    assert said == {("INVALID_CONFIG", failed, "worker")}, said
    assert not coordinator.done and coordinator.trace == []


def test_a_silent_worker_cannot_hold_the_snapshot_phase_open() -> None:
    """A worker that sends HEARTBEATs but never its SNAPSHOT_GRADIENT is cut off at the deadline."""
    train = config(epochs=2)
    cluster = Cluster(train, small_a9a(), 3, master_config=MasterConfig(snapshot_timeout=5.0))
    cluster.tamper = rewrite(0, once(SnapshotGradient, lambda e: Heartbeat(), skip=1))
    cluster.run()
    coordinator = cluster.coordinator
    assert coordinator.phase is Phase.SNAPSHOT and not coordinator.done  # waiting for worker 0
    deadline = coordinator.get_timer()
    assert deadline is not None
    cluster.now = deadline
    coordinator.handle_timer(deadline)
    cluster.run()
    check_others_finished(cluster, train, 0, ErrorCode.TIMEOUT)


# -- the inner loop ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 16])
def test_a_dense_gradient_of_another_width_removes_its_sender(bits: int) -> None:
    """DENSE gradients only at the configured width (8 here): a 1- or 16-bit one is refused."""
    train = config(epochs=2)
    codes = np.resize(np.array([-1, 0] if bits == 1 else [-32768, 7], dtype=np.int16), D)
    attack = once(
        Gradient, lambda e: dataclasses.replace(e, vector=DenseQuantized(bits, 2.0**-10, codes)), skip=5
    )
    cluster = Cluster(train, small_a9a(), 3)
    cluster.tamper = rewrite(0, attack)
    cluster.run()
    check_others_finished(cluster, train, 0, ErrorCode.INVALID_PAYLOAD)
    assert cluster.coordinator.dropped["refused"] == 1


@pytest.mark.parametrize("algorithm", ["asylpg", "qsvrg"])
def test_zero_gradients_for_models_other_than_the_snapshot_are_refused(algorithm: str) -> None:
    """With l2 > 0 an honest alpha is zero only at x_snap: a worker always answering ZERO is removed.
    QSVRG's Q(alpha + g_snap) too: QSGD with s = 16 levels rounds a nonzero vector to zero with
    probability below e^-16 (an attack's ZEROs were applied as 1,927 of 4,072 updates)."""
    train = config(epochs=2, algorithm=algorithm)
    cluster = Cluster(train, small_a9a(), 3)
    cluster.tamper = rewrite(
        0, lambda e: dataclasses.replace(e, vector=ZeroVector(D)) if isinstance(e, Gradient) else e
    )
    cluster.run()
    check_others_finished(cluster, train, 0, ErrorCode.INVALID_PAYLOAD)


def test_without_an_l2_term_zero_gradients_are_accepted() -> None:
    """l2 = 0: alpha is zero wherever the mini-batch gradient does not change (a hinge loss between
    kinks), so ZERO answers for any model are honest: applied, and nobody is removed."""
    train = config(epochs=2, l2=0.0)
    cluster = Cluster(train, small_a9a(), 3)
    cluster.tamper = rewrite(
        0, lambda e: dataclasses.replace(e, vector=ZeroVector(D)) if isinstance(e, Gradient) else e
    )
    cluster.run()
    coordinator = cluster.coordinator
    assert coordinator.done and coordinator.failure is None
    assert not coordinator.errors and coordinator.dropped["refused"] == 0
    assert cluster.sessions[0].ended is None or cluster.sessions[0].ended[0] == ErrorCode.NO_ERROR


def test_zero_gradient_at_the_snapshot_is_accepted() -> None:
    """The first MODEL of an epoch is the snapshot: ZERO is the honest answer, and it is applied."""
    cluster = Cluster(config(epochs=1), small_a9a(), 2)
    cluster.run()
    assert cluster.coordinator.done and not cluster.coordinator.errors
    assert cluster.coordinator.applied_staleness  # the runs above used ZERO answers too


def test_without_the_guard_an_overflowing_update_removes_its_sender() -> None:
    """guard = 0: an update taking x beyond a MODEL's range is refused and its sender removed."""
    train = config(epochs=2)
    huge = DenseQuantized(8, float(np.finfo(np.float32).max), np.full(D, 127, dtype=np.int8))
    cluster = Cluster(train, small_a9a(), 3, master_config=MasterConfig(guard=0))
    cluster.tamper = rewrite(0, once(Gradient, lambda e: dataclasses.replace(e, vector=huge), skip=3))
    cluster.run()
    check_others_finished(cluster, train, 0, ErrorCode.INVALID_PAYLOAD)
    assert cluster.coordinator.dropped["overflow"] == 1


def test_a_diverging_run_ends_with_a_failure_instead_of_hanging() -> None:
    """--l2 10 --step 1 (issue 10): updates grow ninefold; the run ends, saying it diverged."""
    train = TrainConfig(epochs=3, l2=10.0, step=1.0, updates_per_epoch=200, batch=32, tau=4)
    coordinator = simulate(train, small_a9a(), 3)
    assert coordinator.done
    assert coordinator.failure is not None and "diverged" in coordinator.failure
    assert coordinator.dropped["outlier"] >= DIVERGED_AFTER * 3
    assert np.isfinite(coordinator.state.x).all()
    assert coordinator.summary()["failure"] == coordinator.failure


def test_a_lone_worker_sending_outliers_is_removed_and_the_run_does_not_end_as_diverged() -> None:
    """An attack: with the other worker gone for a moment (a crash, a restart), an admitted worker
    whose every update was out of line ended a healthy run as diverged (and its checkpoint as
    finished).  Of a run of two workers or more, one worker's refusals alone never end it: that
    worker is removed, with a rejoin back-off (LONE_OUTLIER), and the run waits for workers."""
    train = config(epochs=3)
    cluster = Cluster(train, small_a9a(), 2)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.INNER and coordinator.state.version > 10)
    huge = DenseQuantized(8, float(np.finfo(np.float32).max), np.full(D, 127, dtype=np.int8))
    cluster.tamper = rewrite(
        0, lambda e: dataclasses.replace(e, vector=huge) if isinstance(e, Gradient) else e
    )
    honest = cluster.ids[1]
    assert honest is not None
    cluster.frozen = {1}
    coordinator.receive_data(honest, b"", cluster.now)  # the honest worker's connection ends
    cluster.run(until=lambda: cluster.sessions[0].ended is not None, limit=10_000)
    assert not coordinator.done and coordinator.failure is None
    assert cluster.sessions[0].ended == (ErrorCode.INVALID_PAYLOAD, LONE_OUTLIER.reason)
    assert coordinator.dropped["outlier"] == DIVERGED_AFTER and coordinator.live_workers == 0
    # Judged against the updates before it, as the model's state can make an honest worker's: no back-off
    # (wire-format.md 7.1).
    assert not LONE_OUTLIER.blames_sender


def test_a_lone_workers_refusals_end_the_run_as_diverged_after_the_grace() -> None:
    """A review: a run that really diverges with one of its M >= 2 workers connected would have that
    worker removed and rejoin for ever.  Lone workers' updates refused for LONE_GRACE seconds, none
    applied in between, end the run as diverged; an update applied starts the count again."""
    divergence = Divergence(2)
    refused = [DIVERGED_AFTER]
    assert divergence.outlier(refused, 7, now=100.0) is LONE_OUTLIER
    assert divergence.outlier(refused, 7, now=100.0 + LONE_GRACE - 0.1) is LONE_OUTLIER  # rejoined
    failure = divergence.outlier(refused, 7, now=100.0 + LONE_GRACE)
    said = (
        "every worker's updates are out of line since version 7: the run diverged (or the guard is too tight)"
    )
    assert failure == said
    divergence.applied()
    assert divergence.outlier(refused, 9, now=200.0) is LONE_OUTLIER  # the count started again
    assert divergence.outlier([DIVERGED_AFTER - 1], 9, now=300.0) is None  # not yet four
    assert isinstance(Divergence(1).outlier(refused, 9, now=0.0), str)  # M = 1: one worker is every worker
    assert isinstance(Divergence(3).outlier(refused * 2, 9, now=0.0), str)  # two workers'


def test_a_result_says_how_many_samples_its_final_loss_leaves_out() -> None:
    """An API audit: a run whose worker left before the last snapshot phase read ok=True with a loss over
    half the data.  RunResult.missing_samples says how many of the n samples the final loss leaves out."""
    train = config(epochs=2)
    data = small_a9a()
    cluster = Cluster(train, data, 2)
    coordinator = cluster.coordinator
    assert RunResult.of(coordinator).missing_samples == 0  # (no trace yet)
    cluster.run(until=lambda: len(coordinator.trace) == 2 and coordinator.phase is Phase.INNER)
    assert RunResult.of(coordinator).missing_samples == 0
    left = cluster.ids[1]
    assert left is not None
    cluster.frozen = {1}
    coordinator.receive_data(left, b"", cluster.now)  # worker 1 leaves for good
    cluster.run(until=lambda: coordinator.done)
    result = RunResult.of(coordinator)
    assert result.ok and result.samples == data.samples
    assert result.missing_samples == len(shard(data.samples, 2, 1)) == data.samples - result.trace[-1].samples
    assert dataclasses.replace(result, samples=None).missing_samples == 0  # n unknown: nothing to say


def test_a_lone_workers_refused_snapshot_reports_end_the_run_only_after_the_grace() -> None:
    """An attack review: with the other worker gone during a snapshot phase, a lone worker reporting 1,000
    times its loss ended a healthy run as diverged (every report of the phase out of line), as would a
    non-finite report.  Of M >= 2, one report alone ends the run only after LONE_GRACE seconds of such
    phases with no report standing."""
    refusal = Refusal(ErrorCode.INVALID_PAYLOAD, "out of line")
    lone, pair = _reports(0.5, epoch=3), _reports(0.5, 0.5, epoch=3)
    divergence = Divergence(2)
    assert divergence.reports({0: refusal}, lone, 3, now=10.0) is None
    assert divergence.reports({0: refusal}, lone, 3, now=10.0 + LONE_GRACE - 0.1) is None
    said = divergence.reports({0: refusal}, lone, 3, now=10.0 + LONE_GRACE)
    assert said is not None and said.startswith("every snapshot report at epoch 3 is out of line")
    assert Divergence(2).reports({0: refusal, 1: refusal}, pair, 3, now=0.0) is not None  # two: at once
    assert Divergence(1).reports({0: refusal}, lone, 3, now=0.0) is not None  # M = 1: at once
    again = Divergence(2)
    assert again.reports({0: refusal}, lone, 3, now=0.0) is None
    assert again.reports({}, lone, 4, now=20.0) is None  # a report stood: the count starts again
    assert again.reports({0: refusal}, lone, 5, now=40.0) is None
    # A non-finite report from the one worker a phase waited for: the same grace.
    unfinite = Divergence(2)
    unfinite.awaiting(3, 1)
    unfinite.report(3, 3, Refusal(ErrorCode.NON_FINITE, "not finite"))
    assert unfinite.unreported(3, now=0.0) is None
    assert unfinite.unreported(3, now=LONE_GRACE) is not None


@pytest.mark.parametrize("workers", [1, 2])
def test_a_run_diverging_between_snapshots_ends_with_a_failure(workers: int) -> None:
    """Step 10^4: with one or two workers the snapshot reports are judged against the previous
    phase's; all out of line is the model's doing, and the run ends instead of removing the
    workers, which would rejoin with the same reports for ever."""
    train = TrainConfig(epochs=3, l2=0.0, step=1e4, updates_per_epoch=200, batch=32, tau=4)
    coordinator = simulate(train, small_a9a(), workers)
    assert coordinator.done
    assert coordinator.failure is not None and "diverged" in coordinator.failure, coordinator.failure
    assert "snapshot report" in coordinator.failure
    assert len(coordinator.trace) >= 1 and np.isfinite(coordinator.trace[-1].loss)


def _overflowing_reports(indexes: set[int]) -> Callable[[int, bytes], bytes]:
    """A tamper hook: the epoch-1 SNAPSHOT_GRADIENTs of workers ``indexes`` carry float64 sums of 1e200,
    finite but with a norm past the float64 range (what an overflowing x_snap gives a float64 peer)."""
    hooks = {
        index: rewrite(
            index,
            lambda e: (
                dataclasses.replace(e, vector=RawVector(np.full(D, 1e200)))
                if isinstance(e, SnapshotGradient) and e.epoch == 1
                else e
            ),
        )
        for index in indexes
    }
    return lambda index, data: hooks[index](index, data) if index in hooks else data


def test_a_run_whose_snapshot_overflows_ends_as_diverged() -> None:
    """Every worker's snapshot report at epoch 1 is refused on arrival as not finite: it is x_snap that
    overflows, and the run ends as diverged; before, the workers were removed, the phase went back to
    waiting for workers, and rejoining ones reported the same for ever."""
    cluster = Cluster(config(epochs=3), small_a9a(), 3)
    cluster.tamper = _overflowing_reports({0, 1, 2})
    cluster.run()
    coordinator = cluster.coordinator
    assert coordinator.done
    assert coordinator.failure == (
        "every snapshot report at epoch 1 is not finite: the run diverged (is the step size too large?)"
    )
    assert [code for _, code, *_ in coordinator.errors] == ["NON_FINITE"] * 3
    assert [record.epoch for record in coordinator.trace] == [0]


def test_one_worker_with_non_finite_reports_does_not_end_the_run() -> None:
    """One worker's non-finite report among finite ones: that worker is removed, the run goes on."""
    cluster = Cluster(config(epochs=3), small_a9a(), 3)
    cluster.tamper = _overflowing_reports({1})
    cluster.run()
    coordinator = cluster.coordinator
    assert coordinator.done and coordinator.failure is None
    assert [code for _, code, *_ in coordinator.errors] == ["NON_FINITE"]
    assert [record.epoch for record in coordinator.trace] == [0, 1, 2, 3]


def test_a_non_finite_report_and_an_honest_worker_leaving_do_not_end_the_run() -> None:
    """A review's case: worker 1's report is refused as not finite, then honest worker 0 leaves before
    reporting.  One refusal of M = 2 says nothing of x_snap: the phase waits for workers again."""
    cluster = Cluster(config(epochs=3), small_a9a(), 2)
    coordinator = cluster.coordinator
    cluster.tamper = _overflowing_reports({1})
    cluster.run(until=lambda: coordinator.phase is Phase.SNAPSHOT and coordinator.state.epoch == 1)
    cluster.frozen = {0}  # worker 0 has not reported
    cluster.run()
    assert [code for _, code, *_ in coordinator.errors] == ["NON_FINITE"]
    worker_id = cluster.ids[0]
    assert worker_id is not None
    coordinator.disconnect(worker_id, cluster.now)
    assert not coordinator.done and coordinator.phase is Phase.JOINING


def test_an_overflow_with_a_worker_gone_for_good_still_ends_as_diverged() -> None:
    """A second review's case: M = 3, one worker gone in epoch 0; at epoch 1 both reports the phase waits
    for are not finite.  The phase waited for two: the run ends as diverged at once (it waited out the
    join timeout, then blamed the workers)."""
    cluster = Cluster(config(epochs=3), small_a9a(), 3)
    coordinator = cluster.coordinator
    cluster.tamper = _overflowing_reports({0, 1})
    cluster.run(until=lambda: coordinator.phase is Phase.INNER and coordinator.state.version > 3)
    cluster.frozen = {2}
    worker_id = cluster.ids[2]
    assert worker_id is not None
    coordinator.disconnect(worker_id, cluster.now)
    cluster.run()
    assert coordinator.done
    assert coordinator.failure == (
        "every snapshot report at epoch 1 is not finite: the run diverged (is the step size too large?)"
    )


def test_a_report_whose_float32_squares_overflow_is_finite() -> None:
    """Snapshot sums of 1e20 in float32 are finite: their squares overflow float32, not their norm."""
    guard = Guard(config(), factor=100.0, workers=2, samples=None)
    report = SnapshotGradient(
        epoch=0, loss=1.0, samples=10, correct=5, vector=RawVector(np.full(D, 1e20, np.float32))
    )
    assert guard.refuse_report(report) is None


@pytest.mark.parametrize(
    ("losses", "failure"),
    [
        ([0.69, 0.5, 6.9e5], None),  # 10^6 times max(|F_0|, 1) = 10^6: below
        ([0.69, 0.5, 1.0000001e6], "the training objective at epoch 2 is 1e+06, over 1e+06 times the first"),
        ([10.0, 20.0, 1.00001e7], "the training objective at epoch 2 is 1e+07, over 1e+06 times the first"),
        ([10.0, 9e6], None),
        ([0.69, math.inf], "the training objective at epoch 1 is not finite: the run diverged"),
    ],
)
def test_a_loss_a_million_times_the_first_ends_the_run(losses: list[float], failure: str | None) -> None:
    """F(x_snap) past 10^6 max(|F(x_0)|, 1) (or not finite): the run has diverged."""
    said = [Divergence.loss(epoch, loss, losses[0]) for epoch, loss in enumerate(losses)]
    assert said[:-1] == [None] * (len(losses) - 1)
    assert said[-1] == failure if failure is None else said[-1] is not None and said[-1].startswith(failure)


def _reports(*losses: float, epoch: int = 1, norm: float = 1.0) -> dict[int, SnapshotGradient]:
    """Reports of 1,000 samples each, by worker id 0, 1, ...: per-sample losses ``losses``."""
    vector = RawVector(np.full(D, 1000 * norm / math.sqrt(D)))
    return {
        worker: SnapshotGradient(epoch=epoch, samples=1000, correct=800, loss=1000 * loss, vector=vector)
        for worker, loss in enumerate(losses)
    }


@pytest.mark.parametrize(
    ("first", "last", "failed"),
    [
        ((0.69, 0.69, 0.69), (480.0, 470.0, 0.69), "medians"),  # the review's wreck; the attacker reports low
        ((0.69, 0.69, 0.69), (1.39, 1.39, 1.39), "medians"),  # more than twice
        ((0.69, 0.69, 0.69), (1.37, 1.37, 1.37), None),  # within twice
        ((0.69, 0.69, 0.69), (0.33, 0.33, 34.0), None),  # one false report in the last phase (M = 3)
        ((0.69, 0.69, 0.01), (1.0, 1.0, 1.0), None),  # one false report in the first phase (M = 3)
        ((0.69, 0.69), (0.33, 69.0), None),  # with two: the lower of the last (F 34.7, 50x: under 204x)
        ((0.69, 69.0), (0.33, 0.33), None),  # and the higher of the first
        ((0.01, 0.69), (0.33, 69.0), None),  # a low first lie and a high last one: F 34.7 against 0.35, 99x
        ((0.69, 0.69), (48_129.0, 0.69), "F"),  # the review's M = 2 wreck: F 24,065, the attacker at 0.69
        ((-5.0, -5.0, -5.0), (0.5, 0.5, 0.5), "medians"),  # a user's negative losses: more than |first| above
        ((-5.0, -5.0, -5.0), (-0.5, -0.5, -0.5), None),
        ((0.0, 0.0, 0.0), (3.0, 3.0, 3.0), None),  # a first F of 0: no scale to judge by
    ],
)
def test_a_run_that_ends_far_above_where_it_began_did_not_train(
    first: tuple[float, ...], last: tuple[float, ...], failed: str | None
) -> None:
    """After the final phase: the lower median of its per-sample losses more than |start| above the
    first phase's upper median, or F itself more than 2 (f + 2) times |F_0| above F_0, is a failure,
    not a trained run; one false report within f times the other's cannot make it one (three workers:
    medians; two: the lower last, the higher first, and F at most about (f + 2) / 2 times the honest)."""
    guard = Guard(config(), factor=100.0, workers=len(first), samples=None)
    guard.phase_finished(_reports(*first, epoch=0))
    guard.phase_finished(_reports(*last, epoch=6))
    f_0, f_last = sum(first) / len(first), sum(last) / len(last)  # F: the reports' per-sample mean
    said = guard.untrained(6, f_last, f_0)
    if failed is None:
        assert said is None
    elif failed == "medians":
        start, end = sorted(first)[len(first) // 2], sorted(last)[(len(last) - 1) // 2]
        assert said == (
            "the workers' median loss a sample (F: their mean, plus the regulariser) rose from "
            f"{start:.4g} at the first epoch to {end:.4g} at the last, epoch 6: the run did not train (is "
            "the step size too large? or a worker's updates took it there: docs/security.md)"
        )
    else:
        assert said == (
            f"the training objective rose from {f_0:.4g} at the first epoch to {f_last:.4g} at the last, "
            "epoch 6, more than 204 times: the run did not train (is the step size too large? or a worker's "
            "updates took it there: docs/security.md)"
        )


def test_a_resumed_runs_guard_judges_the_end_by_the_traces_first_loss() -> None:
    """A guard restored with its run (from a checkpoint) never saw epoch 0: the trace's first F stands in."""
    guard = Guard(config(), factor=100.0, workers=2, samples=None)
    guard.phase_finished(_reports(2.0, 2.0, epoch=4))
    assert guard.untrained(4, 2.0, 0.69) is not None
    assert guard.untrained(4, 2.0, 1.2) is None


def test_a_diverging_simulated_run_ends_as_untrained_through_the_coordinator() -> None:
    """The coordinator asks the guard after the final phase: a step too large for the small a9a
    (F rises, but stays far below 10^6 times where it began) ends the run as failed."""
    train = TrainConfig(model="logistic", epochs=3, l2=0.1, step=4.0, updates_per_epoch=50, batch=32)
    coordinator = simulate(train, small_a9a(), 3)
    losses = [record.loss for record in coordinator.trace]
    assert coordinator.done and losses[-1] > 2 * losses[0], losses
    assert coordinator.failure is not None and "the run did not train" in coordinator.failure, losses


def test_an_unexpected_failure_closes_only_that_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """No message can make the coordinator raise: a failure while handling one closes that peer only."""
    train = config(epochs=1)
    cluster = Cluster(train, small_a9a(), 3)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.INNER)
    real = coordinator._gradient
    calls = 0

    def failing(worker_id: int, *args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("planted")
        real(worker_id, *args)

    monkeypatch.setattr(coordinator, "_gradient", failing)
    cluster.run()
    assert coordinator.done
    assert [code for _, code, *_ in coordinator.errors] == ["INTERNAL_ERROR"]
    assert "planted" in coordinator.errors[0][2]


# -- checkpoints --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        lambda c: c.arrays.__setitem__("x", np.full(D, np.nan)),
        lambda c: c.arrays.__setitem__("x", np.full(D, 1e200)),
        lambda c: c.meta["state"].__setitem__("version", -1),
        lambda c: c.meta.pop("phase"),
        lambda c: c.meta.__setitem__("elapsed", "soon"),
        lambda c: c.meta["state"].__setitem__("theta", 7.0),
        lambda c: c.arrays.pop("snapshot"),
        lambda c: c.meta["state"]["rng"]["state"].__setitem__("state", [1, 2]),
        lambda c: c.arrays.__setitem__("evaluated", np.full(D, np.inf)),
        lambda c: c.meta["guard"].__setitem__("previous", [0.69, math.nan]),
        lambda c: c.meta["guard"].__setitem__("first", [0.69, -1.0]),
        lambda c: c.meta["guard"].__setitem__("first", "0.69"),
        lambda c: c.meta["guard"].pop("previous"),
    ],
    ids=[
        "nan-model",
        "huge-model",
        "negative-version",
        "no-phase",
        "elapsed-text",
        "theta-7",
        "no-snapshot",
        "rng-state-short",
        "inf-evaluated",
        "guard-nan",
        "guard-negative-norm",
        "guard-text",
        "guard-half",
    ],
)
def test_a_damaged_checkpoint_is_refused_with_one_line(damage: Callable[[Any], object]) -> None:
    """restore(): every value is checked before any is used; a damaged checkpoint is a CheckpointError."""
    train = config(epochs=2)
    cluster = Cluster(train, small_a9a(), 2)
    cluster.run(
        until=lambda: cluster.coordinator.phase is Phase.INNER and cluster.coordinator.state.version > 3
    )
    checkpoint = cluster.coordinator.checkpoint(cluster.now)
    damage(checkpoint)
    fresh = Cluster(train, small_a9a(), 2, connect=False)
    with pytest.raises(CheckpointError) as info:
        fresh.coordinator.restore(checkpoint, 0.0)
    assert "\n" not in str(info.value)
    assert fresh.coordinator.state.version == 0  # nothing of it was used


def test_a_checkpoint_without_a_later_option_resumes_and_one_of_another_run_does_not() -> None:
    """A checkpoint written before ``aligned_codes`` existed names no such field: it resumes a run
    that leaves the option at its default.  Another value of a field it names is another run."""
    train = config(epochs=2)
    cluster = Cluster(train, small_a9a(), 2)
    cluster.run(
        until=lambda: cluster.coordinator.phase is Phase.INNER and cluster.coordinator.state.version > 3
    )
    checkpoint = cluster.coordinator.checkpoint(cluster.now)
    del checkpoint.meta["config"]["aligned_codes"]
    del checkpoint.meta["config"]["sparse_gradients"]  # a checkpoint of a version before either
    fresh = Cluster(train, small_a9a(), 2, connect=False)
    fresh.coordinator.restore(checkpoint, 0.0)
    assert fresh.coordinator.state.version == cluster.coordinator.state.version
    for field, value, says in (
        ("bits", train.bits + 1, f"another configuration: bits {train.bits + 1} there, {train.bits} here$"),
        ("aligned_codes", True, "another configuration: aligned_codes True there, False here$"),
        ("algorithm", 7, "names no configuration"),  # not an algorithm: no configuration at all
    ):
        other = cluster.coordinator.checkpoint(cluster.now)
        other.meta["config"][field] = value
        refused = Cluster(train, small_a9a(), 2, connect=False)
        with pytest.raises(CheckpointError, match=says):
            refused.coordinator.restore(other, 0.0)
        assert refused.coordinator.state.version == 0
    other = cluster.coordinator.checkpoint(cluster.now)
    other.meta["config"].update(step=train.step * 2, epochs=3)
    with pytest.raises(CheckpointError) as info:
        Cluster(train, small_a9a(), 2, connect=False).coordinator.restore(other, 0.0)
    step = f"step {train.step * 2!r} there, {train.step!r} here"
    # Unfinished, the run wrote no model.npz yet (a crash-recovery trial was pointed at none): finish it.
    hint = (
        "; resume it with --epochs 3 to finish it, then start a new run from the model.npz it writes "
        "(--start-from OUT/model.npz)"
    )
    assert str(info.value).endswith(f"epochs 3 there, 2 here; {step}{hint}")
    other.meta["phase"] = "done"  # finished: its model.npz is the place to start from
    with pytest.raises(CheckpointError) as info:
        Cluster(train, small_a9a(), 2, connect=False).coordinator.restore(other, 0.0)
    hint = (
        "; to train on from where it stands, start a new run from the model.npz its run wrote "
        "(--start-from OUT/model.npz; not from the checkpoint)"
    )
    assert str(info.value).endswith(f"epochs 3 there, 2 here; {step}{hint}")
    wider = cluster.coordinator.checkpoint(cluster.now)
    wider.meta["dim"] += 1
    with pytest.raises(CheckpointError, match=r"model has 124 parameters, this run's 123$"):
        Cluster(train, small_a9a(), 2, connect=False).coordinator.restore(wider, 0.0)


def test_a_checkpoint_keeps_which_side_raised_each_error_and_an_earlier_ones_still_resume() -> None:
    """result.json's ``error_counts`` (the master's codes) and ``peer_error_counts`` (the workers'
    ERROR and CLOSE codes) survive a resume.  A checkpoint of a version that kept no side (errors
    of three entries, no ``peer_error_counts``) resumes with every code counted as the master's."""
    cluster = Cluster(config(epochs=2), small_a9a(), 2)
    cluster.run(until=lambda: cluster.coordinator.phase is Phase.INNER)
    coordinator, worker_id = cluster.coordinator, cluster.ids[0]
    assert worker_id is not None
    coordinator.receive_data(worker_id, encode_message(ErrorMessage(code=14, reason="late")) * 2, cluster.now)
    coordinator.ledger.add_error(worker_id, "TIMEOUT", "timed out")  # (as the master records its own)
    checkpoint = coordinator.checkpoint(cluster.now)
    fresh = Cluster(config(epochs=2), small_a9a(), 2, connect=False)
    fresh.coordinator.restore(checkpoint, 0.0)
    summary = fresh.coordinator.summary()
    assert summary["peer_error_counts"] == {"STALE_GRADIENT": 2}
    assert summary["error_counts"] == {"TIMEOUT": 1}
    assert [e["raised_by"] for e in summary["errors"]] == ["worker", "worker", "master"]
    earlier = coordinator.checkpoint(cluster.now)
    earlier.meta["errors"] = [entry[:3] for entry in earlier.meta["errors"]]
    earlier.meta["error_counts"] = {"STALE_GRADIENT": 2, "TIMEOUT": 1}
    del earlier.meta["peer_error_counts"]
    resumed = Cluster(config(epochs=2), small_a9a(), 2, connect=False)
    resumed.coordinator.restore(earlier, 0.0)
    summary = resumed.coordinator.summary()
    assert summary["error_counts"] == {"STALE_GRADIENT": 2, "TIMEOUT": 1}
    assert summary["peer_error_counts"] == {}
    assert [e["raised_by"] for e in summary["errors"]] == ["master"] * 3
    damaged = coordinator.checkpoint(cluster.now)
    damaged.meta["errors"][0][3] = "someone"
    with pytest.raises(CheckpointError, match="an error raised by"):
        Cluster(config(epochs=2), small_a9a(), 2, connect=False).coordinator.restore(damaged, 0.0)


def test_a_checkpoint_keeps_which_errors_were_of_connections_that_never_joined() -> None:
    """An error of a connection refused before WELCOME resumes as such (result.json's ``joined``); a
    checkpoint of the version before, whose entries have four fields, resumes with every one joined."""
    cluster = Cluster(config(epochs=2), small_a9a(), 2)
    cluster.run(until=lambda: cluster.coordinator.phase is Phase.INNER)
    cluster.coordinator.ledger.add_error(98, "TIMEOUT", "timed out")
    cluster.coordinator.ledger.add_error(99, "TRY_LATER", "wait", joined=False)

    def resumed_joined(checkpoint: Checkpoint) -> list[bool]:
        fresh = Cluster(config(epochs=2), small_a9a(), 2, connect=False)
        fresh.coordinator.restore(checkpoint, 0.0)
        return [e["joined"] for e in fresh.coordinator.summary()["errors"]]

    assert resumed_joined(cluster.coordinator.checkpoint(cluster.now)) == [True, False]
    earlier = cluster.coordinator.checkpoint(cluster.now)
    earlier.meta["errors"] = [entry[:4] for entry in earlier.meta["errors"]]
    assert resumed_joined(earlier) == [True, True]
    damaged = cluster.coordinator.checkpoint(cluster.now)
    damaged.meta["errors"][1][4] = "no"
    with pytest.raises(CheckpointError, match="an error whose 'joined' is 'no'"):
        resumed_joined(damaged)
    damaged.meta["errors"][1].append(True)
    with pytest.raises(CheckpointError, match="an error raised by"):
        resumed_joined(damaged)


def test_a_checkpoint_of_another_random_generator_is_refused() -> None:
    """The quantizer draws from SFC64; a checkpoint naming PCG64 (an earlier version's) is refused."""
    train = config(epochs=2)
    cluster = Cluster(train, small_a9a(), 2)
    cluster.run(
        until=lambda: cluster.coordinator.phase is Phase.INNER and cluster.coordinator.state.version > 3
    )
    checkpoint = cluster.coordinator.checkpoint(cluster.now)
    assert checkpoint.meta["state"]["rng"]["bit_generator"] == "SFC64"
    checkpoint.meta["state"]["rng"] = np.random.default_rng(0).bit_generator.state  # what 0.x wrote
    fresh = Cluster(train, small_a9a(), 2, connect=False)
    with pytest.raises(CheckpointError, match=r"'PCG64' random generator.*SFC64") as info:
        fresh.coordinator.restore(checkpoint, 0.0)
    assert "\n" not in str(info.value)
    assert fresh.coordinator.state.version == 0


def test_a_checkpoint_on_disk_restores_the_quantizer_stream(tmp_path: Any) -> None:
    """The SFC64 state goes through the checkpoint's JSON and back: the restored master draws the same."""
    train = config(epochs=2)
    cluster = Cluster(train, small_a9a(), 2)
    cluster.run(
        until=lambda: cluster.coordinator.phase is Phase.INNER and cluster.coordinator.state.version > 3
    )
    path = tmp_path / "run.ckpt"
    save(path, cluster.coordinator.checkpoint(cluster.now))
    fresh = Cluster(train, small_a9a(), 2, connect=False)
    fresh.coordinator.restore(load(path), 0.0)
    before, after = cluster.coordinator.state, fresh.coordinator.state
    assert after.version == before.version
    assert before.model_message()[0] == after.model_message()[0]


def test_a_resumed_master_judges_reports_by_the_phases_before_its_restart(tmp_path: Any) -> None:
    """With two workers a report is judged against the previous phase's figures; a master restarted
    from a checkpoint still has them (it had none, and let any report pass the first phase after a
    restart), and the first phase's floors.  A checkpoint of a version before the guard's memory
    resumes with a guard that starts afresh."""
    train = config(epochs=3)
    cluster = Cluster(train, small_a9a(), 2)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: len(coordinator.trace) == 2 and coordinator.phase is Phase.INNER)
    path = tmp_path / "run.ckpt"
    save(path, coordinator.checkpoint(cluster.now))
    # Logistic losses of a9a rows are about 0.3 to 0.7 a sample at this point and the mean gradients'
    # norms below 1: a report of 10^4 a sample is out of line at f = 100 whatever the phase.
    honest, lie = _reports(0.5, 10_000.0, epoch=2, norm=0.5), _reports(0.5, 0.5, epoch=2, norm=10_000.0)
    fresh = Cluster(train, small_a9a(), 2, connect=False)
    fresh.coordinator.restore(load(path), 0.0)
    assert set(fresh.coordinator.guard.outliers(honest)) == {1}
    assert set(fresh.coordinator.guard.outliers(lie)) == {0, 1}
    # The first phase's floors: every a9a row's logistic loss at x_0 = 0 is log 2.
    first, _ = fresh.coordinator.guard.memory()["first"] or (None, None)
    assert first == pytest.approx(math.log(2))
    older = load(path)
    del older.meta["guard"]
    afresh = Cluster(train, small_a9a(), 2, connect=False)
    afresh.coordinator.restore(older, 0.0)
    assert afresh.coordinator.guard.outliers(honest) == {}
    assert afresh.coordinator.guard.memory() == {"previous": None, "first": None}


def test_the_guards_memory_leaves_out_figures_that_overflowed() -> None:
    """A review: the pooled loss of finite reports can overflow, and a checkpoint holding it could not be
    resumed (its figures must be finite): such a figure is kept as none."""
    guard = Guard(config(), factor=100.0, workers=2, samples=None)
    guard.phase_finished(_reports(1e305, 1e305, epoch=0))  # 10^308 each, their sum beyond float64
    memory = guard.memory()
    assert memory["previous"] is None and memory["first"] == [1e305, pytest.approx(1.0)]


@pytest.mark.parametrize("phase", [Phase.SNAPSHOT, Phase.INNER])
def test_a_resumed_run_still_gives_the_last_evaluated_snapshot(tmp_path: Any, phase: Phase) -> None:
    """A checkpoint written in a snapshot phase (the master's snapshot already the next one) also holds
    the snapshot the trace's last loss evaluates: the result of the run it resumes gives that one."""
    train = config(epochs=3)
    cluster = Cluster(train, small_a9a(), 2)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: len(coordinator.trace) == 2 and coordinator.phase is Phase.INNER)
    version = coordinator.state.version
    cluster.run(until=lambda: coordinator.phase is phase and coordinator.state.version > version + 1)
    assert coordinator.phase is phase and len(coordinator.trace) == 2
    evaluated = RunResult.of(coordinator).model
    assert np.array_equal(evaluated, coordinator.state.snapshot) == (phase is Phase.INNER)
    path = tmp_path / "run.ckpt"
    save(path, coordinator.checkpoint(cluster.now))
    fresh = Cluster(train, small_a9a(), 2, connect=False)
    fresh.coordinator.restore(load(path), 0.0)
    assert np.array_equal(RunResult.of(fresh.coordinator).model, evaluated)
    assert np.array_equal(fresh.coordinator.state.snapshot, coordinator.state.snapshot)


@pytest.mark.parametrize("phase", [Phase.SNAPSHOT, Phase.INNER])
def test_a_checkpoint_keeps_the_model_records_and_the_resumed_run_goes_on_from_them(
    tmp_path: Any, phase: Phase
) -> None:
    """A crash-recovery trial: a run resumed with --records lacked the model copies taken before its
    checkpoint (a checkpoint kept none).  They are in the checkpoint now; the resumed run's records
    are those, then its own, one per version and epoch (a snapshot phase repeated from its
    checkpoint is not recorded twice); a checkpoint without them (an earlier version's) resumes with none."""
    train = config(epochs=3)
    cluster = Cluster(train, small_a9a(), 2, record_every=7)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: len(coordinator.trace) == 2 and coordinator.phase is Phase.INNER)
    version = coordinator.state.version
    cluster.run(until=lambda: coordinator.phase is phase and coordinator.state.version > version + 7)
    taken = [(r.version, r.epoch, r.bytes_total, r.wire_bytes) for r in coordinator.records]
    models = [r.model.copy() for r in coordinator.records]
    # One at each snapshot phase so far (at versions 0, n, 2n... for n updates an epoch) and one every 7
    # applied updates, none at an epoch's last update (the snapshot phase's follows).
    updates, now = coordinator.state.updates_per_epoch, coordinator.state.version
    expected = [v for v in range(0, now + 1, 7) if v % updates] + list(range(0, now + 1, updates))
    assert [v for v, *_ in taken] == sorted(expected)
    path = tmp_path / "run.ckpt"
    save(path, coordinator.checkpoint(cluster.now))
    assert load(path, arrays=False).meta["records"] == len(taken) > 5
    fresh = Cluster(train, small_a9a(), 2, connect=False, record_every=7)
    fresh.coordinator.restore(load(path), 0.0)
    for index in range(2):
        fresh.connect(index)
    kept = fresh.coordinator.records
    kinds = {kind for *_, wire in taken for kind in wire}  # (a kind a record lacks reads back as 0)
    assert [(r.version, r.epoch, r.bytes_total, r.wire_bytes) for r in kept] == [
        (v, e, b, {kind: wire.get(kind, 0) for kind in sorted(kinds)}) for v, e, b, wire in taken
    ]
    assert all(np.array_equal(r.model, m) for r, m in zip(kept, models, strict=True))
    fresh.run(until=lambda: fresh.coordinator.done)
    after = [(r.version, r.epoch) for r in fresh.coordinator.records]
    assert after[: len(taken)] == [(v, e) for v, e, *_ in taken]
    assert len(set(after)) == len(after) and after == sorted(after), after
    assert after[-1][1] == 3 and len(after) > len(taken)  # the last snapshot phase's, epoch 3
    older = load(path)
    del older.meta["records"], older.meta["records_wire_kinds"]
    for name in [name for name in older.arrays if name.startswith("records.")]:
        del older.arrays[name]
    afresh = Cluster(train, small_a9a(), 2, connect=False, record_every=7)
    afresh.coordinator.restore(older, 0.0)
    assert afresh.coordinator.records == []


def test_a_checkpoints_read_limit_counts_the_records_it_says_it_holds(tmp_path: Any) -> None:
    """A review: the read limit counted the records of the resuming run's own record_every, so a checkpoint
    with records resumed without it was refused as too large; and a limit from 2^20 records let a crafted
    file take terabytes.  The limit counts the records its metadata says it holds, at most 4 GiB."""
    train = config(epochs=2)
    cluster = Cluster(train, small_a9a(), 2, record_every=1)
    cluster.run(until=lambda: cluster.coordinator.state.version > 60)
    path = tmp_path / "run.ckpt"
    save(path, cluster.coordinator.checkpoint(cluster.now))
    held = len(cluster.coordinator.records)
    assert records_in(path, D) == held > 60
    load(path, max_bytes=read_limit(D, train.epochs, records_in(path, D)))  # resumed without record_every
    # Room for each record's model (8 bytes a parameter) and its figures, whatever the resuming run records.
    assert read_limit(D, train.epochs, held) - read_limit(D, train.epochs) == (8 * D + 1024) * held
    crafted = load(path)
    crafted.meta["records"] = 10**12
    save(path, crafted)
    assert records_in(path, D) == RECORDS_READ_LIMIT // (8 * D + 1024)
    assert records_in(tmp_path / "missing.ckpt", D) == 0


def test_damaged_model_records_in_a_checkpoint_are_refused(tmp_path: Any) -> None:
    """Records of another dimension, or columns of different lengths: refused with one line."""
    train = config(epochs=2)
    cluster = Cluster(train, small_a9a(), 2, record_every=5)
    cluster.run(until=lambda: cluster.coordinator.state.version > 12)
    saved = cluster.coordinator.checkpoint(cluster.now)
    for name, damaged in (
        ("records.models", saved.arrays["records.models"][:, :-1]),
        ("records.time", saved.arrays["records.time"][:-1]),
    ):
        broken = Checkpoint(dict(saved.arrays, **{name: damaged}), saved.meta)
        fresh = Cluster(train, small_a9a(), 2, connect=False)
        with pytest.raises(CheckpointError, match="the checkpoint is incomplete or damaged") as info:
            fresh.coordinator.restore(broken, 0.0)
        assert "\n" not in str(info.value)
        assert fresh.coordinator.state.version == 0 and fresh.coordinator.records == []


def test_checkpoint_values_of_the_wrong_kind_are_refused_not_converted() -> None:
    """A review resumed an x of bytes b"1.5" (every parameter became 1.5, exit 0), strings, structured and
    complex arrays; a trace loss of "abc" (the run hung) or NaN (copied into result.json); and a state or
    trace at epoch 99 of 6 (one more epoch trained, exit 0)."""
    train = config(epochs=2)
    cluster = Cluster(train, small_a9a(), 2)
    cluster.run(until=lambda: cluster.coordinator.state.version > 12)
    saved = cluster.coordinator.checkpoint(cluster.now)
    x = saved.arrays["x"]
    for damaged in (np.full(x.shape, b"1.5"), x.astype(str), x.astype(np.complex128), x.astype(np.int64)):
        broken = Checkpoint(dict(saved.arrays, x=damaged), saved.meta)
        fresh = Cluster(train, small_a9a(), 2, connect=False)
        with pytest.raises(CheckpointError, match="'x' is not of floating point numbers"):
            fresh.coordinator.restore(broken, 0.0)
        assert fresh.coordinator.state.version == 0
    for change, said in (
        (
            lambda meta: meta["trace"][0].update(loss="abc"),
            "trace record 0: loss 'abc' is not a finite number",
        ),
        (lambda meta: meta["trace"][0].update(loss=float("nan")), "loss nan is not a finite number"),
        (lambda meta: meta["trace"][0].update(epoch=True), "epoch True is not a count"),
        (lambda meta: meta["state"].update(epoch=99), "the checkpoint is at epoch 99, beyond the run's 2"),
        (
            lambda meta: meta["trace"][-1].update(epoch=99),
            "the checkpoint is at epoch 99, beyond the run's 2",
        ),
    ):
        meta = json.loads(json.dumps(saved.meta))
        change(meta)
        fresh = Cluster(train, small_a9a(), 2, connect=False)
        with pytest.raises(CheckpointError, match=re.escape(said)):
            fresh.coordinator.restore(Checkpoint(saved.arrays, meta), 0.0)
        assert fresh.coordinator.state.version == 0
    fresh = Cluster(train, small_a9a(), 2, connect=False)
    fresh.coordinator.restore(
        Checkpoint(dict(saved.arrays, x=x.astype(np.float32)), saved.meta), 0.0
    )  # (floats)
    assert fresh.coordinator.state.version == cluster.coordinator.state.version


def test_a_finished_run_given_again_keeps_its_own_worker_count() -> None:
    """A review: a finished checkpoint resumed with --workers 3 gave "workers": 3 for a run of 2."""
    train = config(epochs=1)
    cluster = Cluster(train, small_a9a(), 2)
    cluster.run()
    assert cluster.coordinator.done
    saved = cluster.coordinator.checkpoint(cluster.now)
    again = Cluster(train, small_a9a(), 3, connect=False)
    again.coordinator.restore(saved, 0.0)
    assert again.coordinator.done and again.coordinator.summary()["workers"] == 2
    for damaged in ("2", 0, True):
        fresh = Cluster(train, small_a9a(), 3, connect=False)
        with pytest.raises(CheckpointError, match=re.escape(f"worker count {damaged!r} is not a count")):
            fresh.coordinator.restore(Checkpoint(saved.arrays, dict(saved.meta, workers=damaged)), 0.0)


# -- honest workers the guard and the deadlines must not punish (issue 10, attack report T4) ---------


def test_the_update_bound_follows_the_snapshot_gradient() -> None:
    """u = Q(alpha) + g_snap: the bound is at least f ||g_snap||, however small the recent updates were."""
    guard = Guard(config(), factor=100.0, workers=4, samples=None)
    for update in range(64):
        guard.applied(1e-6, update % 2)  # near the optimum every update is tiny
    g_snap = np.full(D, 0.01)  # a worker came back: its shard moves the full gradient
    bound = guard.max_update_norm(g_snap)
    assert bound is not None
    assert bound >= 100.0 * float(np.linalg.norm(g_snap))
    assert guard.max_update_norm(np.zeros(D)) == pytest.approx(100.0 * 1e-6)


def test_a_snapshot_gradient_of_zero_leaves_a_bound() -> None:
    """An attack review: a false report that cancels the others' makes g_snap 0 and with it every
    honest update, so no typical update was known either, and the bound was none: an update of norm
    1e33 was applied.  The bound is now at least f / 100 times the first phase's mean gradient norm
    (the upper median of its reports)."""
    guard = Guard(config(), factor=100.0, workers=3, samples=None)
    guard.phase_finished(_reports(0.69, 0.69, 0.69, epoch=0, norm=0.4))
    for update in range(6):
        guard.applied(0.0, update % 3)  # x = x_snap and g_snap = 0: each honest update is 0
    assert guard.max_update_norm(np.zeros(D)) == pytest.approx(100.0 * 1e-2 * 0.4)
    assert Guard(config(), factor=100.0, workers=3, samples=None).max_update_norm(np.zeros(D)) is None


def test_a_worker_back_after_many_epochs_does_not_end_the_run() -> None:
    """A worker away for 25 epochs near the optimum rejoins: training finishes, no 'diverged'.

    Its shard moves g_snap far beyond the recent (tiny) updates.  The attack report saw this
    after 95 epochs on all of a9a at the default guard factor 100; on 2,000 samples a factor of
    5 shows it after 25 (the median-only bound refused every update: 16 outliers, "diverged").
    """
    dataset = small_a9a()
    train = config(epochs=40)
    cluster = Cluster(train, dataset, 4, master_config=MasterConfig(guard=5.0))
    coordinator = cluster.coordinator
    cluster.run(until=lambda: len(coordinator.trace) == 3)
    away = cluster.ids[3]
    assert away is not None
    cluster.frozen = {3}
    coordinator.disconnect(away, cluster.now)
    cluster.run(until=lambda: len(coordinator.trace) == 28)
    assert coordinator.trace[-1].samples < dataset.samples
    back = WorkerSession(*shard_of(dataset, 4, 3), name="back")
    cluster.add_session(back)
    cluster.run()
    assert coordinator.done
    assert coordinator.failure is None, coordinator.failure
    assert coordinator.trace[-1].samples == dataset.samples
    assert coordinator.dropped["outlier"] == 0


def shard_of(dataset: Any, workers: int, index: int) -> tuple[Any, Any]:
    """The features and labels of shard ``index`` of ``workers``."""
    part = dataset.rows(shard(dataset.samples, workers, index, seed=0))
    return part.features, part.labels


def _second_leaves_in_the_inner_loop(cluster: Cluster) -> None:
    """Run until epoch 0's inner loop, then the second worker leaves (its traffic held from then on)."""
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.INNER)
    leaver = cluster.ids[1]
    assert leaver is not None
    cluster.frozen = {1}
    coordinator.disconnect(leaver, cluster.now)


def test_a_silent_late_joiner_holds_up_no_snapshot_phase() -> None:
    """A worker that joins in the inner loop and never answers SNAPSHOT is not waited for; it is cut off."""
    dataset = small_a9a()
    train = config(epochs=3)
    timeout = 20.0  # shorter than the connections' idle timeout (30 s), which would cut it off first
    cluster = Cluster(train, dataset, 2, master_config=MasterConfig(snapshot_timeout=timeout))
    coordinator = cluster.coordinator
    # An honest member leaves; a silent one takes its place during the inner loop.
    _second_leaves_in_the_inner_loop(cluster)
    silent = cluster.add_session(WorkerSession(*shard_of(dataset, 2, 1), name="silent"))
    cluster.run(until=lambda: coordinator.live_workers == 2)
    cluster.frozen = {1, silent}  # it got its SNAPSHOT and answers nothing from now on
    joined_at = cluster.now
    cluster.run(until=lambda: len(coordinator.trace) == 2)
    assert coordinator.phase is Phase.INNER  # the second phase did not wait for it
    # Its SNAPSHOT stays unanswered: snapshot_timeout after it was sent, it is cut off.
    silent_id = cluster.ids[silent]
    assert silent_id is not None
    assert coordinator.live_workers == 2
    coordinator.handle_timer(joined_at + timeout + 1.0)
    assert coordinator.live_workers == 1
    timed_out = (silent_id, "TIMEOUT", f"no SNAPSHOT_GRADIENT within {timeout:g} s", "master", True)
    assert timed_out in coordinator.ledger.errors
    cluster.run()
    assert coordinator.done and coordinator.failure is None


def test_a_phase_whose_awaited_workers_left_waits_for_one_owing_an_earlier_snapshot() -> None:
    """An attack review: a worker that joined in the inner loop still owed its SNAPSHOT's answer when
    the next phase began (not awaited there), and the one awaited left: the phase went back to
    waiting for M workers, the late joiner's answer got no SNAPSHOT in return, and the run stood
    still until --join-timeout failed it ("every worker left") with a live worker connected.  Now
    its answer gets it this phase's SNAPSHOT, and its report completes the phase."""
    dataset = small_a9a()
    cluster = Cluster(config(epochs=2), dataset, 2)
    coordinator = cluster.coordinator
    _second_leaves_in_the_inner_loop(cluster)
    held: list[bytes] = []

    def hold(index: int, data: bytes) -> bytes:
        if index != late or cluster.tamper is None:
            return data
        held.append(data)  # (its HELLO passes: the worker must join; b"" would be the end of its stream)
        return data if len(held) == 1 else encode_message(Heartbeat())

    cluster.tamper = hold
    late = cluster.add_session(WorkerSession(*shard_of(dataset, 2, 1), name="late"))
    late_id = cluster.ids[late]
    assert late_id is not None
    cluster.run(until=lambda: coordinator.phase is Phase.SNAPSHOT and coordinator.state.epoch == 1)
    assert len(held) == 2  # HELLO, then its answer to SNAPSHOT(0), held back
    awaited = cluster.ids[0]
    assert awaited is not None
    cluster.frozen = {0, 1}
    coordinator.disconnect(awaited, cluster.now)  # the one awaited leaves before it reports
    assert coordinator.phase is Phase.SNAPSHOT  # not back to waiting for M workers
    cluster.tamper = None
    coordinator.receive_data(late_id, held[1], cluster.now)
    cluster.run()
    assert coordinator.done and coordinator.failure is None
    samples = len(shard_of(dataset, 2, 1)[1])
    assert [record.samples for record in coordinator.trace[1:]] == [samples, samples]


def test_a_worker_silent_past_the_idle_timeout_is_recorded_with_the_reason() -> None:
    """An operator trial: the master's record of a connection it timed out said only "timed out"; it says
    which timeout now, as the CLOSE it sent does."""
    cluster = Cluster(config(epochs=3), small_a9a(), 2, master_config=MasterConfig(snapshot_timeout=600.0))
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.INNER)
    silent = cluster.ids[1]
    cluster.frozen = {1}  # no byte more from it, HEARTBEATs included
    coordinator.handle_timer(cluster.now + ConnectionConfig().idle_timeout + 1.0)
    said = [reason for worker, code, reason, *_ in coordinator.ledger.errors if worker == silent]
    assert said == ["peer silent for longer than the idle timeout"], coordinator.ledger.errors


def test_one_slow_answer_of_three_does_not_set_the_next_phases_wait() -> None:
    """An attack review: a worker that answered each SNAPSHOT just before the deadline set the next one
    (SLACK times the slowest report), and every phase took 0.9 times snapshot_timeout.  The wait is now
    at most MEDIAN_SLACK times the upper median of the report times; a review: not that median times
    SLACK alone, which cut off an honest worker 60 times slower than the others at every phase."""
    deadlines = Deadlines(MasterConfig(snapshot_timeout=3000.0), joining_since=None)
    deadlines.snapshot_phase_started(1000.0)
    assert deadlines.snapshot_deadline == 4000.0  # the first phase: snapshot_timeout
    for took in (2.0, 3.0, 250.0):
        deadlines.report_accepted(1000.0 + took)
    deadlines.snapshot_phase_finished()
    deadlines.snapshot_phase_started(5000.0)
    # min(10 x 250, 100 x 3) = 300 s: the slow one no longer sets it (10 x 250 = 2,500 s did) ...
    assert deadlines.snapshot_deadline == 5000.0 + MEDIAN_SLACK * 3.0
    for took in (0.4, 0.5, 30.0):
        deadlines.report_accepted(5000.0 + took)
    deadlines.snapshot_phase_finished()
    deadlines.snapshot_phase_started(6000.0)
    # ... and one 60 times slower keeps its place: min(10 x 30, 100 x 0.5) = 50 s, above its 30 s
    assert deadlines.snapshot_deadline == 6000.0 + MEDIAN_SLACK * 0.5
    for took in (0.4, 0.5, 0.6):
        deadlines.report_accepted(6000.0 + took)
    deadlines.snapshot_phase_finished()
    deadlines.snapshot_phase_started(7000.0)
    assert deadlines.snapshot_deadline == 7000.0 + SNAPSHOT_FLOOR  # 10 x 0.6 s is below the floor


def test_later_snapshot_phases_wait_in_proportion_to_the_reports() -> None:
    """The first phase waits snapshot_timeout; later ones SLACK times the last typical report, >= FLOOR
    (with two workers the upper median of their report times is the slower one's)."""
    train = config(epochs=3)
    cluster = Cluster(train, small_a9a(), 2, master_config=MasterConfig(snapshot_timeout=300.0))
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.SNAPSHOT)
    first = coordinator.deadlines.snapshot_deadline
    assert first is not None
    assert first - coordinator.deadlines.phase_started == 300.0
    started = cluster.now
    cluster.run(until=lambda: coordinator.phase is Phase.INNER)
    slowest = cluster.now - started  # the step clock: each delivery round is one second
    cluster.frozen = {1}
    cluster.run(until=lambda: coordinator.phase is Phase.SNAPSHOT)
    cluster.run()  # worker 1 is frozen: the phase waits for it
    deadline = coordinator.deadlines.snapshot_deadline
    assert deadline is not None
    expected = min(300.0, max(SNAPSHOT_FLOOR, SNAPSHOT_SLACK * slowest))
    assert deadline - coordinator.deadlines.phase_started == pytest.approx(expected, abs=SNAPSHOT_SLACK * 1.0)
    coordinator.handle_timer(deadline)
    assert coordinator.phase is not Phase.SNAPSHOT


def test_a_worker_removed_at_once_backs_off_instead_of_hammering(monkeypatch: pytest.MonkeyPatch) -> None:
    """Sessions the master ends at once (INVALID_PAYLOAD right after CONFIG): 0.1, 0.2, 0.4... up to 5 s."""
    import asyncio  # noqa: PLC0415

    from aiodq.net import worker as worker_module  # noqa: PLC0415

    ended = worker_module.WorkerResult(int(ErrorCode.INVALID_PAYLOAD), "refused", 1, False, True)
    delays: list[float] = []
    sessions = 0

    async def session(*args: Any, **kwargs: Any) -> Any:
        nonlocal sessions
        sessions += 1
        return ended

    async def sleep(delay: float) -> None:
        delays.append(delay)
        if len(delays) == 8:
            raise asyncio.CancelledError  # enough: stop the worker

    monkeypatch.setattr(worker_module, "_session", session)
    monkeypatch.setattr(worker_module.asyncio, "sleep", sleep)
    features, labels = np.zeros((4, 2)), np.ones(4)
    with pytest.raises(asyncio.CancelledError):
        asyncio.run(worker_module.run_worker("127.0.0.1", 9, features, labels, retry_for=3600.0))
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert sessions == 8


# -- shard claims (wire-format.md 7.1-9) -------------------------------------------------------------


def _claiming(dataset: Any, workers: int, index: int, claim: tuple[int, int] | None) -> WorkerSession:
    return WorkerSession(*shard_of(dataset, workers, index), name=f"w{index}", shard=claim)


def test_a_held_shard_or_another_world_size_is_refused_and_the_others_train() -> None:
    """A second claim of shard 0/2: SHARD_TAKEN; of 1/3: WORLD_SIZE_MISMATCH; the two members finish."""
    dataset = small_a9a()
    train = config(epochs=1)
    cluster = Cluster(train, dataset, 2, connect=False)
    coordinator = cluster.coordinator
    cluster.sessions = [_claiming(dataset, 2, 0, (0, 2))]
    cluster.ids = [None]
    cluster.connect(0)
    cluster.run()
    twin = cluster.add_session(_claiming(dataset, 2, 0, (0, 2)))
    stranger = cluster.add_session(_claiming(dataset, 2, 1, (1, 3)))
    cluster.run()
    assert cluster.sessions[twin].ended == (
        ErrorCode.SHARD_TAKEN,
        f"shard 0/2 is held by worker {cluster.ids[0]}",
    )
    assert cluster.sessions[stranger].ended == (
        ErrorCode.WORLD_SIZE_MISMATCH,
        "shard 1/3: this run has 2 workers (claim a shard I/2)",
    )
    assert coordinator.live_workers == 1
    cluster.add_session(_claiming(dataset, 2, 1, (1, 2)))
    cluster.run()
    assert coordinator.done and coordinator.failure is None
    assert coordinator.trace[-1].samples == dataset.samples  # not 2 x shard 0
    codes = [code for _, code, *_ in coordinator.ledger.errors]
    assert codes.count("SHARD_TAKEN") == 1 and codes.count("WORLD_SIZE_MISMATCH") == 1


@pytest.mark.parametrize("algorithm", ["asylpg", "asyfpg"])
def test_a_worker_that_cannot_decode_what_the_run_sends_is_refused_before_welcome(algorithm: str) -> None:
    """A HELLO without EQUALS_SNAPSHOT (or RAW_F64, or DENSE) in a run of quantized models: refused
    before WELCOME with UNSUPPORTED_ENCODING.  (An attack review: admitted, it made the master close
    the honest worker with INTERNAL_ERROR at every snapshot phase, its MODEL then failing to encode
    for the attacker, and with fewer encodings stall the run.)  A full-precision run needs RAW only;
    DENSE_RICE is optional, sent only to peers that announce it."""
    dataset = small_a9a()
    cluster = Cluster(dataclasses.replace(config(epochs=2), algorithm=algorithm), dataset, 2, connect=False)
    coordinator = cluster.coordinator
    cluster.sessions = [_claiming(dataset, 2, 0, (0, 2))]
    cluster.ids = [None]
    cluster.connect(0)
    everything_but = {code: frozenset(set(range(9)) - {code}) for code in (1, 3, 4, 8)}
    refused = {
        code: cluster.add_session(
            WorkerSession(
                *shard_of(dataset, 2, 1),
                name=f"without-{code}",
                shard=(1, 2),
                connection_config=ConnectionConfig(encodings=encodings),
            )
        )
        for code, encodings in everything_but.items()
    }
    cluster.run(until=lambda: all(cluster.sessions[i].ended is not None for i in refused.values() if i))
    quantized = algorithm == "asylpg"
    for code, index in refused.items():
        session = cluster.sessions[index]
        if code == 1 or (code in (3, 4) and quantized):
            name = {1: "RAW_F64", 3: "EQUALS_SNAPSHOT", 4: "DENSE"}[code]
            assert session.ended == (
                ErrorCode.UNSUPPORTED_ENCODING,
                f"this run ({algorithm}) sends vectors as {name}, which the worker did not announce",
            )
            assert session.worker_id is None  # no WELCOME
        else:  # it can decode what the run sends: the first such holds shard 1/2, the others find it taken
            assert session.worker_id is not None or session.ended[0] == ErrorCode.SHARD_TAKEN
    admitted = [code for code, index in refused.items() if cluster.sessions[index].worker_id is not None]
    assert admitted == ([3] if not quantized else [8])
    cluster.run()
    assert coordinator.done and coordinator.failure is None, coordinator.failure
    assert coordinator.trace[-1].samples == dataset.samples
    assert cluster.sessions[0].ended == (ErrorCode.NO_ERROR, cluster.sessions[0].ended[1])


def test_a_shard_split_with_another_seed_is_refused_before_it_trains() -> None:
    """A worker whose shard was split with seed 7 in a run of seed 0 leaves at CONFIG (INVALID_CONFIG, final):
    its samples would overlap another worker's and leave others out (an operator trial found 8,145 of a9a's
    samples counted twice and as many never used, with exit 0).  The run goes on with the shard present,
    as for any missing shard (security.md), and its trace says so."""
    dataset = small_a9a()
    cluster = Cluster(config(epochs=1), dataset, 2, connect=False)
    wrong = WorkerSession(*shard_of(dataset, 2, 1), name="w1", shard=(1, 2), shard_seed=7)
    cluster.sessions = [_claiming(dataset, 2, 0, (0, 2)), wrong]
    cluster.ids = [None, None]
    cluster.connect(0)
    cluster.connect(1)
    cluster.run()
    said = "this worker's shard 1/2 was split with seed 7, the master's run has seed 0: its samples would "
    assert wrong.failed and wrong.ended == (
        ErrorCode.INVALID_CONFIG,
        said + "overlap another worker's (start the worker with --seed 0)",
    )
    assert wrong.state is None and wrong.gradients_sent == 0
    assert cluster.coordinator.done and cluster.coordinator.failure is None
    assert [record.samples for record in cluster.coordinator.trace] == [1000, 1000]
    # The seed it was split with, given: no refusal (the check compares, it does not refuse every claim).
    fine = WorkerSession(*shard_of(dataset, 2, 1), name="w1", shard=(1, 2), shard_seed=0)
    again = Cluster(config(epochs=1), dataset, 2, connect=False)
    again.sessions = [_claiming(dataset, 2, 0, (0, 2)), fine]
    again.ids = [None, None]
    again.connect(0)
    again.connect(1)
    again.run()
    assert not fine.failed and fine.gradients_sent > 0
    assert again.coordinator.failure is None and again.coordinator.trace[-1].samples == dataset.samples


def test_a_worker_whose_data_is_not_the_masters_is_refused_before_it_trains() -> None:
    """A master that names its data (the fingerprint in CONFIG's params) and a worker given another
    fingerprint: INVALID_CONFIG (final), naming both.  The same fingerprint trains, and either side
    without one, or with one of another recipe, checks nothing."""
    dataset = small_a9a()
    mine, other = dataset.fingerprint(), "blake2b:" + "0" * 32

    def run(master_has: str | None, worker_has: str | None) -> WorkerSession:
        cluster = Cluster(config(epochs=1), dataset, 1, connect=False)
        cluster.coordinator.fingerprints["data"] = master_has
        session = WorkerSession(*shard_of(dataset, 1, 0), name="w0", data_fingerprint=worker_has)
        cluster.sessions, cluster.ids = [session], [None]
        cluster.connect(0)
        cluster.run()
        return session

    wrong = run(mine, other)
    assert wrong.failed and wrong.state is None and wrong.gradients_sent == 0
    assert wrong.ended == (
        ErrorCode.INVALID_CONFIG,
        f"this worker's data (fingerprint {other}) is not the master's ({mine}): start it with the data "
        "the master trains on (--data)",
    )
    # A fingerprint of another recipe (a later version's digest of the data) compares with nothing.
    later = "blake3-v2:" + "0" * 64
    for master_has, worker_has in ((mine, mine), (None, other), (mine, None), (mine, later), (later, mine)):
        session = run(master_has, worker_has)
        assert not session.failed and session.gradients_sent > 0, (master_has, worker_has)


def test_a_shard_is_free_again_once_its_holder_left() -> None:
    """The holder's connection is lost: the same shard may join again (a restarted worker)."""
    dataset = small_a9a()
    cluster = Cluster(config(epochs=2), dataset, 2, connect=False)
    coordinator = cluster.coordinator
    cluster.sessions = [_claiming(dataset, 2, i, (i, 2)) for i in range(2)]
    cluster.ids = [None, None]
    for index in range(2):
        cluster.connect(index)
    cluster.run(until=lambda: coordinator.phase is Phase.INNER)
    lost = cluster.ids[0]
    assert lost is not None
    cluster.frozen = {0}
    coordinator.disconnect(lost, cluster.now)
    again = cluster.add_session(_claiming(dataset, 2, 0, (0, 2)))
    cluster.run()
    assert cluster.sessions[again].ended is not None
    assert cluster.sessions[again].ended[0] == ErrorCode.NO_ERROR
    assert coordinator.done and coordinator.failure is None


def test_a_master_whose_workers_do_not_all_arrive_ends_at_the_join_timeout() -> None:
    """One of two workers joins: join_timeout after the start the run ends, failed, saying who came.

    (20 s: shorter than the connections' idle timeout, as the step clock carries no heartbeats.)
    """
    cluster = Cluster(config(), small_a9a(), 2, connect=False, master_config=MasterConfig(join_timeout=20.0))
    coordinator = cluster.coordinator
    cluster.connect(0)
    cluster.run()
    assert coordinator.phase is Phase.JOINING
    deadline = coordinator.get_timer()
    assert deadline is not None and deadline <= 20.0
    coordinator.handle_timer(19.0)
    assert not coordinator.done
    coordinator.handle_timer(20.0)
    assert coordinator.done
    assert coordinator.failure == "1 of 2 workers joined within 20 s (--join-timeout)"
    cluster.run()
    assert cluster.sessions[0].ended is not None
    assert cluster.sessions[0].ended[0] == ErrorCode.GOING_AWAY


def test_after_shutdown_no_worker_joins_and_no_deadline_ends_the_run() -> None:
    """A second review's cases: after shutdown a worker that retries is refused (GOING_AWAY), not sent
    x_snap to train on; and the join deadline, running or restarted by the workers' exits, no longer
    ends the stopped run as a join timeout."""
    cluster, _ = _all_left_mid_epoch(rejoin=False)  # every worker gone: the join deadline runs
    coordinator = cluster.coordinator
    version, records = coordinator.state.version, len(coordinator.trace)
    coordinator.shutdown(cluster.now)
    coordinator.handle_timer(cluster.now + 10**6)  # far past the join deadline (20 s)
    assert not coordinator.done and coordinator.failure is None
    again = cluster.add_session(_claiming(small_a9a(), 2, 0, (0, 2)))
    cluster.run()
    ended = cluster.sessions[again].ended
    assert ended is not None and ended[0] == ErrorCode.GOING_AWAY
    assert cluster.sessions[again].gradients_sent == 0
    assert (coordinator.state.version, len(coordinator.trace)) == (version, records)


def test_messages_of_a_removed_worker_already_on_their_way_are_ignored() -> None:
    """A worker removed mid-read: its next SNAPSHOT_GRADIENT or GRADIENT is dropped, not an INTERNAL_ERROR.

    (The outside attack saw "INTERNAL_ERROR ... MODEL after CLOSE" when a removed worker's report came in
    the same read as the message that got it removed.)
    """
    cluster = Cluster(config(), small_a9a(), 2)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.INNER)
    victim = cluster.ids[0]
    assert victim is not None
    report = SnapshotGradient(epoch=0, samples=1000, correct=0, loss=0.7, vector=RawVector(np.zeros(D)))
    gradient = Gradient(epoch=0, version=coordinator.state.version, vector=ZeroVector(D))
    coordinator._remove(victim, Refusal(ErrorCode.INVALID_PAYLOAD, "removed by the test"), cluster.now)
    version = coordinator.state.version
    for event in (report, gradient):
        coordinator._handle_safely(victim, event, cluster.now)
    assert [code for _, code, *_ in coordinator.ledger.errors] == ["INVALID_PAYLOAD"]
    assert coordinator.state.version == version
    cluster.frozen = {0}
    cluster.run()
    assert coordinator.done and coordinator.failure is None


def _two_claiming(master_config: MasterConfig | None = None) -> Cluster:
    """Two workers claiming shards 0/2 and 1/2, connected (not yet run)."""
    dataset = small_a9a()
    cluster = Cluster(config(epochs=2), dataset, 2, connect=False, master_config=master_config)
    cluster.sessions = [_claiming(dataset, 2, i, (i, 2)) for i in range(2)]
    cluster.ids = [None, None]
    for index in range(2):
        cluster.connect(index)
    return cluster


def _all_left_mid_epoch(rejoin: bool) -> tuple[Cluster, float]:
    """Two workers (shards claimed), join_timeout 20 s; both connections lost in the inner loop.

    With ``rejoin``, a worker on shard 0 joins again and is sent a model. Returns the cluster and
    when the last worker left.
    """
    dataset = small_a9a()
    cluster = _two_claiming(MasterConfig(join_timeout=20.0))
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.INNER and coordinator.state.version > 3)
    cluster.frozen = {0, 1}
    for worker_id in cluster.ids:
        assert worker_id is not None
        coordinator.disconnect(worker_id, cluster.now)
    left = cluster.now
    assert coordinator.phase is Phase.INNER and coordinator.live_workers == 0
    if rejoin:
        again = cluster.add_session(_claiming(dataset, 2, 0, (0, 2)))
        cluster.run(until=lambda: cluster.sessions[again].gradients_sent > 0)
    return cluster, left


def test_every_worker_gone_mid_epoch_ends_the_run_at_the_join_timeout_and_it_can_resume() -> None:
    """usage.md: --join-timeout applies after every worker left; the run is not finished, so its
    checkpoint keeps the phase it waited in and --resume takes it."""
    cluster, left = _all_left_mid_epoch(rejoin=False)
    coordinator = cluster.coordinator
    deadline = coordinator.get_timer()
    assert deadline is not None and deadline <= left + 20.0
    coordinator.handle_timer(left + 19.0)
    assert not coordinator.done
    coordinator.handle_timer(left + 20.0)
    assert coordinator.done
    # They had joined: the run says they left (it said "0 of 2 workers joined", a newcomer's puzzle).
    assert coordinator.failure == "every worker left, and 0 of 2 came back within 20 s (--join-timeout)"
    checkpoint = coordinator.checkpoint(left + 20.0)
    assert checkpoint.meta["phase"] == "inner"
    fresh = Cluster(config(epochs=2), small_a9a(), 2, connect=False)
    fresh.coordinator.restore(checkpoint, 0.0)  # accepted: not a finished run
    assert fresh.coordinator.state.version == coordinator.state.version


def test_every_worker_gone_in_a_snapshot_phase_is_said_so_at_the_join_timeout() -> None:
    """Workers that fail in their objective usually do so at a SNAPSHOT (their first pass over the
    shard): the phase goes back to joining, and the run still says that they left (a review found
    '0 of 2 workers joined' there)."""
    cluster = _two_claiming(MasterConfig(join_timeout=20.0))
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.SNAPSHOT)
    cluster.frozen = {0, 1}
    for worker_id in cluster.ids:
        assert worker_id is not None
        coordinator.disconnect(worker_id, cluster.now)
    assert coordinator.phase is Phase.JOINING and coordinator.live_workers == 0
    coordinator.handle_timer(cluster.now + 20.0)
    assert coordinator.failure == "every worker left, and 0 of 2 came back within 20 s (--join-timeout)"


def test_the_join_timeout_after_every_worker_left_names_the_last_error_of_one_that_had_joined() -> None:
    """The latest error of a worker that had joined (not a refused stranger's) is the run's failure's
    clue; reasons are cut to 300 characters and unprintable ones shown as '?'."""
    deadlines = Deadlines(MasterConfig(join_timeout=5.0), joining_since=0.0)
    assert deadlines.unjoined(1, 2, []) == "1 of 2 workers joined within 5 s (--join-timeout)"
    deadlines.waiting_for_workers(10.0)  # every worker left
    errors = [
        (3, "TIMEOUT", "timed out", "master", True),
        (5, "INTERNAL_ERROR", "cannot answer MODEL: RuntimeError: boom\n" + "x" * 400, "worker", True),
        (7, "TRY_LATER", "wait", "master", False),
    ]
    said = deadlines.unjoined(0, 2, errors)
    boom = "cannot answer MODEL: RuntimeError: boom?" + "x" * (300 - 40)  # 40 characters before the x's
    assert (
        said
        == f"every worker left (the last error: worker 5 sent INTERNAL_ERROR: {boom}), and 0 of 2 came back "
        "within 5 s (--join-timeout)"
    )
    assert deadlines.unjoined(1, 2, errors[:1]) == (
        "every worker left (the last error: worker 3 got TIMEOUT: timed out), and 1 of 2 came back "
        "within 5 s (--join-timeout)"
    )


def test_a_worker_back_before_the_join_timeout_keeps_the_run_going() -> None:
    cluster, left = _all_left_mid_epoch(rejoin=True)
    coordinator = cluster.coordinator
    coordinator.handle_timer(left + 20.0)
    assert not coordinator.done and coordinator.failure is None


def test_gradients_arriving_after_the_master_closed_are_ignored() -> None:
    """Master.close mid-run: CLOSE goes out, and a GRADIENT already on its way is neither applied
    nor answered (it was an INTERNAL_ERROR, 'MODEL after CLOSE', for every worker)."""
    cluster = Cluster(config(), small_a9a(), 2)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.INNER and coordinator.state.version > 3)
    version = coordinator.state.version
    worker_id = cluster.ids[0]
    assert worker_id is not None
    coordinator.shutdown(cluster.now)
    honest = DenseQuantized(coordinator.config.bits, 2.0**-20, np.ones(D, dtype=np.int8))
    gradient = Gradient(epoch=coordinator.state.epoch, version=version, vector=honest)
    coordinator._handle_safely(worker_id, gradient, cluster.now)
    assert coordinator.state.version == version
    assert not [code for _, code, *_ in coordinator.ledger.errors if code == "INTERNAL_ERROR"]


def test_a_workers_own_updates_do_not_raise_its_update_bound() -> None:
    """An attack review: a worker that answers every MODEL at once, each update just under the bound,
    filled the pooled median's window with its own updates, and the bound grew with each (a run of 3
    workers ended 'trained' at 2,400 times the honest loss).  Each source's median now counts once,
    and the median of three (the lower of two) is an honest worker's."""
    cluster = Cluster(config(algorithm="asylpg", epochs=1), small_a9a(), 3)
    coordinator = cluster.coordinator
    guard, state = coordinator.guard, coordinator.state
    cluster.run(until=lambda: coordinator.phase is Phase.INNER and state.version >= 12)
    cluster.frozen = {0}  # worker 0's connection becomes the attacker's; the others are not run again
    attacker = cluster.ids[0]
    assert attacker is not None
    connection = coordinator._workers[attacker].connection
    cluster.run(until=lambda: connection.outstanding_model is not None)
    bound = guard.max_update_norm(state.full_gradient)
    assert bound is not None
    for _ in range(16):  # (the epoch's m is 31: it goes on; under the pooled median the bound grew 90x)
        outstanding = connection.outstanding_model
        assert outstanding is not None
        # ||u|| = ||Q(alpha) + g_snap|| <= 0.9 bound + ||g_snap|| < bound (the bound is >= f ||g_snap||).
        scale = 0.9 * guard.max_update_norm(state.full_gradient) / (127 * math.sqrt(D))  # type: ignore[operator]
        vector = DenseQuantized(8, float(np.float32(scale)), np.full(D, 127, dtype=np.int8))
        version = state.version
        frame = encode_message(Gradient(epoch=outstanding[0], version=outstanding[1], vector=vector), 1)
        coordinator.receive_data(attacker, frame, cluster.now)
        assert state.version == version + 1  # applied: just under the bound
        coordinator.data_to_send()  # (its next MODEL, never delivered)
    assert guard.max_update_norm(state.full_gradient) == pytest.approx(bound)


def test_the_update_bound_is_the_median_of_the_connections_medians() -> None:
    """The typical update is each live connection's median, then their median (the lower of two); one
    connection alone sets no bound beyond f ||g_snap|| unless M = 1."""
    guard = Guard(config(), factor=100.0, workers=3, samples=None)
    zero = np.zeros(D)
    guard.applied(1.0, 5)
    guard.applied(3.0, 5)  # its median is 2
    assert guard.max_update_norm(zero) is None  # one connection of three: no reference yet
    guard.applied(50.0, 7)
    assert guard.max_update_norm(zero) == pytest.approx(100.0 * 2.0)  # the lower of 2 and 50
    guard.applied(0.5, 8)
    assert guard.max_update_norm(zero) == pytest.approx(100.0 * 2.0)  # median_low(0.5, 2, 50)
    alone = Guard(config(), factor=100.0, workers=1, samples=None)
    alone.applied(4.0, 0)
    assert alone.max_update_norm(zero) == pytest.approx(400.0)


def test_a_worker_that_reconnects_cannot_outnumber_the_others() -> None:
    """A source is a live connection (Guard.forget as the coordinator forgets one): reconnecting ten
    times with large updates leaves no ten sources behind to outvote the two honest ones."""
    guard = Guard(config(), factor=100.0, workers=3, samples=None)
    zero = np.zeros(D)
    guard.applied(1.0, 1)
    guard.applied(1.0, 2)
    for connection in range(100, 110):
        guard.applied(90.0, connection)
        guard.forget(connection)
    assert guard.max_update_norm(zero) == pytest.approx(100.0)
    guard.forget(1)
    assert guard.max_update_norm(zero) is None  # one live connection of three: no reference


def test_a_report_of_a_zero_gradient_does_not_get_the_others_refused() -> None:
    """An attack review: with two workers, one reporting a gradient sum of 0 (and a plausible loss)
    made the other's honest gradient out of line with it in every later phase; the gradient limit
    is now at least f / 100 times the first phase's (upper median)."""
    guard = Guard(config(), factor=100.0, workers=2, samples=2000)
    first = _reports(0.69, 0.69, epoch=0, norm=0.5)
    assert guard.outliers(first) == {}
    guard.phase_finished(first)
    liar = {0: _reports(0.5, norm=0.02)[0], 1: _reports(0.5, norm=0.0)[0]}
    for _ in range(3):
        assert guard.outliers(liar) == {}
        guard.phase_finished(liar)


def _phase_report(loss: float, norm: float = 1.0) -> SnapshotGradient:
    """A report of 1,000 samples: per-sample loss ``loss / 1000``, mean gradient norm ``norm``."""
    vector = RawVector(np.full(D, 1000 * norm / math.sqrt(D)))
    return SnapshotGradient(epoch=1, samples=1000, correct=800, loss=loss, vector=vector)


def test_with_two_workers_shards_of_other_scales_are_not_refused() -> None:
    """A trial of honest runs: two shards whose features differ 150-fold have mean gradient norms of
    0.394 and 59.1 per sample; judged against the other's report alone (a version of this guard), the
    second was refused at epoch 0 and half the data left every epoch after.  Against the previous
    phase's (both shares) neither is, in any phase."""
    guard = Guard(config(), factor=100.0, workers=2, samples=2000)
    reports = {0: _phase_report(693.0, norm=0.394), 1: _phase_report(693.0, norm=59.1)}
    for _ in range(3):
        assert guard.outliers(reports) == {}
        guard.phase_finished(reports)


def test_a_tiny_loss_report_does_not_get_the_others_honest_one_refused() -> None:
    """The loss may be off by f times 1e-2 of the first phase's per-sample loss whatever the
    reference: a worker that reports a loss of almost 0 cannot make the other's honest loss of 4 per
    sample (a model whose losses pass 1) out of line with it, which a floor of 1e-2 alone would."""
    guard = Guard(dataclasses.replace(config(), model="mine:Loss"), factor=100.0, workers=2, samples=2000)
    guard.phase_finished(_reports(5.0, 5.0, epoch=0))
    second = {0: _phase_report(4500.0), 1: _phase_report(1e-6)}
    assert guard.outliers(second) == {}
    guard.phase_finished(second)
    third = {0: _phase_report(4000.0), 1: _phase_report(1e-6)}
    assert guard.outliers(third) == {}  # |4 - 1e-9| <= 100 x max(1e-9, 1e-2, 1e-2 x 5)


def test_at_the_optimum_shards_gradients_are_not_out_of_line() -> None:
    """l2 = 0 at the optimum: the shards' gradients cancel in the sum but each stays; two reports
    judged against the previous phase must pass (the sum's norm, zero, made both out of line and the
    run 'diverged' while converging)."""
    guard = Guard(config(l2=0.0), factor=100.0, workers=2, samples=2000)
    shard_gradient = np.full(D, 0.3)

    def report(sign: float) -> SnapshotGradient:
        vector = RawVector(sign * 1000 * shard_gradient)
        return SnapshotGradient(epoch=1, samples=1000, correct=800, loss=300.0, vector=vector)

    reports = {0: report(1.0), 1: report(-1.0)}
    guard.phase_finished(reports)
    assert guard.outliers(reports) == {}


def test_a_peers_messages_are_handled_in_turns_of_the_budget() -> None:
    """receive_data with a budget handles at most that many of the buffered messages and says whether
    any are left; the shell gives the other connections their turn in between (an attack review: a
    flood of valid HEARTBEATs, handled 50,000 to a read, held an honest worker up 100-fold)."""
    cluster = Cluster(config(epochs=1), small_a9a(), 1)
    cluster.run(until=lambda: cluster.coordinator.phase is Phase.INNER)
    coordinator, worker_id = cluster.coordinator, cluster.ids[0]
    assert worker_id is not None
    # ERROR frames: valid from a worker at any time in READY, each handled (and recorded) on its own.
    flood = encode_message(ErrorMessage(code=60000, reason="noise")) * 40
    turns = [coordinator.receive_data(worker_id, flood, cluster.now, 16)]
    while turns[-1]:
        turns.append(coordinator.receive_data(worker_id, None, cluster.now, 16))
    # 40 messages in turns of 16: 16, 16, then 8 and nothing left (the third turn says so).
    assert turns == [True, True, False]
    assert coordinator.receive_data(worker_id, flood, cluster.now) is False  # no budget: all at once
    assert coordinator.is_member(worker_id)  # valid frames: the worker stays
    cluster.run()
    assert coordinator.done and coordinator.failure is None


def test_a_worker_sending_errors_beyond_the_limit_is_removed() -> None:
    """ERROR messages are valid from a worker, and a reference worker sends none: up to
    MAX_PEER_ERRORS are recorded, the next removes the worker (LIMIT_EXCEEDED).  (A re-attack: a
    flood of them, 40,000 a second, still held training up to 2 epochs in 30 s against 145.)"""
    from aiodq.protocol.guard import MAX_PEER_ERRORS  # noqa: PLC0415

    cluster = Cluster(config(epochs=1), small_a9a(), 1)
    cluster.run(until=lambda: cluster.coordinator.phase is Phase.INNER)
    coordinator, worker_id = cluster.coordinator, cluster.ids[0]
    assert worker_id is not None
    error = encode_message(ErrorMessage(code=60000, reason="noise"))
    coordinator.receive_data(worker_id, error * MAX_PEER_ERRORS, cluster.now)
    assert coordinator.is_member(worker_id)
    coordinator.receive_data(worker_id, error, cluster.now)
    assert not coordinator.is_member(worker_id)
    assert coordinator.ledger.errors[-1][1:] == (
        "LIMIT_EXCEEDED",
        f"more than {MAX_PEER_ERRORS} ERROR messages in one session",
        "master",
        True,
    )
    # The ERRORs themselves are the worker's; the removal is the master's (result.json keeps them apart).
    assert coordinator.ledger.peer_error_counts == {
        "unassigned": MAX_PEER_ERRORS + 1
    }  # 60000: assigned to nothing
    assert coordinator.ledger.error_counts == {"LIMIT_EXCEEDED": 1}
    # What it sends after its CLOSE until it closes too is ignored, not counted (the re-attack's
    # result.json counted LIMIT_EXCEEDED 1.3 million times).
    seen = coordinator.ledger.errors_seen
    coordinator.receive_data(worker_id, error * 1000, cluster.now)
    assert coordinator.ledger.errors_seen == seen


def test_a_due_timer_between_turns_handles_a_turn_and_a_bad_frame_closes_the_peer() -> None:
    """The master's timer can run between a connection's turns, with messages still buffered (a
    review: its loop drained them all, and a bad frame among them raised out of handle_timer and
    ended the master's timer task).  It handles at most a turn of them; the bad frame closes that
    peer, recorded, and handle_timer returns."""
    cluster = Cluster(config(epochs=1), small_a9a(), 1)
    cluster.run(until=lambda: cluster.coordinator.phase is Phase.INNER)
    coordinator, worker_id = cluster.coordinator, cluster.ids[0]
    assert worker_id is not None
    flood = encode_message(ErrorMessage(code=60000, reason="noise")) * 40
    bad = bytes([1, 0xEE, 0, 0, 0, 0, 0])  # an unknown message type
    assert coordinator.receive_data(worker_id, flood + bad, cluster.now, 16) is True
    errors = len(coordinator.ledger.errors)
    due = coordinator.get_timer()
    assert due is not None
    coordinator.handle_timer(due)  # a turn: 16 more ERRORs, the bad frame not yet reached
    assert coordinator.is_member(worker_id)
    assert len(coordinator.ledger.errors) == errors + 16
    while coordinator.receive_data(worker_id, None, cluster.now, 16):
        pass
    assert not coordinator.is_member(worker_id)
    assert coordinator.ledger.errors[-1][1] == "UNKNOWN_MESSAGE_TYPE"
    # Straight into the timer: the bad frame first, raised nowhere.
    cluster = Cluster(config(epochs=1), small_a9a(), 1)
    cluster.run(until=lambda: cluster.coordinator.phase is Phase.INNER)
    coordinator, worker_id = cluster.coordinator, cluster.ids[0]
    assert worker_id is not None
    assert coordinator.receive_data(worker_id, bad, cluster.now, 0) is True  # buffered, not handled
    due = coordinator.get_timer()
    assert due is not None
    coordinator.handle_timer(due)
    assert not coordinator.is_member(worker_id)


def test_a_snapshot_report_far_below_the_others_or_negative_is_refused() -> None:
    """An attack review: a loss of -1e300 per report was accepted mid-run (the out-of-line check looked
    only upwards) and from the first phase (nothing to compare with), and every trace loss with it.
    Now a built-in model's report with a negative loss is refused on arrival, and a loss more than
    f times the reference's size below it (not only above) is out of line; a user model may have
    negative losses, judged against the others'."""

    def report(loss: float) -> SnapshotGradient:
        return SnapshotGradient(
            epoch=1, samples=1000, correct=800, loss=loss, vector=RawVector(np.full(D, 0.3))
        )

    guard = Guard(config(), factor=100.0, workers=3, samples=3000)
    refused = guard.refuse_report(report(-1e300))
    assert refused == Refusal(
        ErrorCode.INVALID_PAYLOAD, "loss -1e+300: the built-in logistic model's losses are not negative"
    )
    assert guard.refuse_report(report(0.0)) is None  # a shard it fits perfectly
    # Per sample about 0.69 (log 2): -80 is more than 100 times 0.69 below, +80 above.
    honest = {0: report(690.0), 1: report(700.0)}
    for loss in (-80_000.0, 80_000.0):
        out = guard.outliers({**honest, 2: report(loss)})
        assert list(out) == [2], loss
        assert out[2].reason.startswith(f"snapshot report out of line: loss {loss / 1000:.3g} ")
    assert guard.outliers({**honest, 2: report(0.0)}) == {}  # below, but within f times
    mine = Guard(dataclasses.replace(config(), model="mine:Loss"), factor=100.0, workers=3, samples=3000)
    assert mine.refuse_report(report(-1e300)) is None
    negative = {0: report(-690.0), 1: report(-700.0)}
    assert mine.outliers({**negative, 2: report(-650.0)}) == {}
    assert list(mine.outliers({**negative, 2: report(-1e300)})) == [2]


@pytest.mark.parametrize("member", ["meta", "meta.npy"])
def test_reading_only_the_metadata_is_bounded_too(member: str, tmp_path: Any) -> None:
    """load(arrays=False) and the fresh-start check count the metadata member, under either name
    np.load reads it by, against max_bytes before reading it (a 2 MB one here, 1 MB allowed)."""
    import zipfile  # noqa: PLC0415

    from aiodq.net.checkpoint import check_fresh_start  # noqa: PLC0415

    path = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(member, bytes(2 << 20))
    with pytest.raises(CheckpointError, match=f"take {2 << 20} bytes once read, more than {1 << 20}"):
        load(path, max_bytes=1 << 20, arrays=False)
    with pytest.raises(CheckpointError, match="it is not overwritten"):
        check_fresh_start(path, max_bytes=1 << 20)


def test_the_summary_says_a_run_failed_and_over_how_many_samples_its_loss_is() -> None:
    """A newcomer trial: a diverged run's summary table looked like a finished one's, and a loss over
    the samples of the workers left looked like an improvement.  The table now has a failure row and
    the epoch reached, and a loss over fewer samples than the run's says so."""
    from aiodq.launch.results import summary_rows  # noqa: PLC0415

    coordinator = simulate(config(epochs=2), small_a9a(), 2)
    summary = RunResult.of(coordinator, wall_time=1.0).to_json()
    rows = dict(summary_rows(summary))
    assert "failure" not in rows and rows["epochs"] == "2"
    assert rows["final training loss"] == f"{summary['trace'][-1]['loss']:.6f}"
    all_samples = summary["trace"][0]["samples"]
    summary["trace"][-1]["samples"] = all_samples // 2
    summary["failure"] = "the run diverged"
    rows = dict(summary_rows(summary))
    assert rows["failure"] == "the run diverged"
    assert rows["epochs"] == "2 of 2"
    half = f"{all_samples // 2:,} of {all_samples:,}"
    assert rows["final training loss"] == f"{summary['trace'][-1]['loss']:.6f} (over {half} samples)"
    # A run that failed before any snapshot phase ended has its failure row too (an operator's audit).
    summary |= {"trace": [], "failure": "0 of 2 workers joined within 1 s (--join-timeout)"}
    rows = dict(summary_rows(summary))
    assert rows["failure"] == summary["failure"]
    assert rows["epochs"] == "0 (no snapshot phase finished)"


def test_the_summary_table_prints_a_peers_text_as_it_is(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An attack review: a worker's CLOSE reason "bye [/]", in the failure row, was read as rich markup and
    aiodq master ended in a MarkupError's traceback, its verdict unsaid; "[red]" would have styled it."""
    from aiodq.cli.finish import print_summary  # noqa: PLC0415

    failure = (
        "every worker left (the last error: worker 0 sent 9999: bye [/] [red]x[/red] [link=http://a]b[/link]"
        " :fire:)"
    )
    summary = {
        "config": {"algorithm": "asylpg"}, "dataset": "[bold]a9a[/bold]", "workers": 2, "trace": [],
        "failure": failure, "wall_time": 1.0,
    }  # fmt: skip
    monkeypatch.setenv("COLUMNS", "300")  # (one line per row)
    print_summary(summary, "master")
    printed = capsys.readouterr().out
    assert "bye [/] [red]x[/red] [link=http://a]b[/link] :fire:)" in printed  # (no emoji: a review)
    assert "[bold]a9a[/bold]" in printed


def test_the_masters_epoch_line_says_when_its_loss_is_over_fewer_samples(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The log's epoch lines: a loss over the samples of the workers left says over how many."""
    import logging  # noqa: PLC0415

    from aiodq.net.logbook import Logbook  # noqa: PLC0415

    coordinator = simulate(config(epochs=2), small_a9a(), 2)
    trace = coordinator.trace
    trace[-1] = dataclasses.replace(trace[-1], samples=trace[0].samples // 2)
    with caplog.at_level(logging.INFO, logger="aiodq.master"):
        Logbook(lambda: 0.0).progress(coordinator, {})
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 3
    assert " over " not in lines[0] and " over " not in lines[1]
    half = f"{trace[0].samples // 2:,} of {trace[0].samples:,}"
    assert lines[2].startswith(f"epoch 2: loss {trace[-1].loss:.6f} over {half} samples, accuracy ")


def test_a_workers_goodbye_is_not_called_an_error() -> None:
    """An operator's audit: "every worker left (the last error: worker 2 sent GOING_AWAY: the worker is
    stopping)" called a worker's clean stop an error."""
    from aiodq.protocol.deadlines import last_error  # noqa: PLC0415

    bye = (2, "GOING_AWAY", "the worker is stopping", "worker", True)
    fault = (1, "TIMEOUT", "no SNAPSHOT_GRADIENT within 10 s", "master", True)
    assert (
        last_error([fault, bye], " (", ")")
        == " (the last word: worker 2 sent GOING_AWAY: the worker is stopping)"
    )
    assert (
        last_error([bye, fault]) == "the last error: worker 1 got TIMEOUT: no SNAPSHOT_GRADIENT within 10 s"
    )


def test_a_checkpoints_write_removes_only_its_own_stale_temporary_files(tmp_path: Any) -> None:
    """A durability audit: the writes of checkpoint "ck" removed ".ck.*.tmp", which matched the temporary
    file of "ck.seed1" being written beside it, whose write then failed (19 of 285). Only the names
    tempfile.mkstemp gives "ck"'s own are stale; a crash's leftover of "ck" is removed."""
    from aiodq.net.checkpoint import remove_stale  # noqa: PLC0415

    others = [tmp_path / ".ck.seed1.abcd1234.tmp", tmp_path / ".ck.npz.x_y_z_12.tmp", tmp_path / ".ck.a.tmp"]
    stale = tmp_path / ".ck.q1w2e3r4.tmp"
    for path in [*others, stale]:
        path.write_bytes(b"half")
    save(tmp_path / "ck", Checkpoint({"x": np.zeros(2)}, {"phase": "inner"}))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck", *(p.name for p in others)])
    assert remove_stale(tmp_path / "ck.seed1") == 1 and not others[0].exists()


def test_a_checkpoint_that_cannot_be_read_says_why_not_what_a_library_guessed(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A durability audit: damaged first bytes had numpy advise allow_pickle (an unsafe load of a damaged
    file); a read error (EIO) was "File is not a zip file", which reads as a damaged file to delete; a
    newer format did not say it was newer."""
    import io  # noqa: PLC0415

    import aiodq.net.checkpoint as checkpoint_module  # noqa: PLC0415

    path = tmp_path / "run.ckpt"
    save(path, Checkpoint({"x": np.zeros(3)}, {"phase": "inner"}))
    good = path.read_bytes()
    path.write_bytes(b"XK" + good[2:])
    with pytest.raises(CheckpointError) as flipped:
        load(path)
    assert "its first bytes are not an .npz archive's" in str(flipped.value)
    assert "pickle" not in str(flipped.value)
    with monkeypatch.context() as patched:
        patched.setattr(checkpoint_module, "CHECKPOINT_FORMAT", 2)  # written as format 2
        save(path, Checkpoint({"x": np.zeros(3)}, {"phase": "inner"}))
    with pytest.raises(
        CheckpointError, match=r"checkpoint format 2, expected 1 \(written by a newer aiodq\)$"
    ):
        load(path)

    class Failing(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint_module, "open_regular", lambda path: Failing(good))
    with pytest.raises(
        CheckpointError, match=r"^cannot read the checkpoint .*run\.ckpt: Input/output error$"
    ):
        load(path)
