"""aiodq.protocol.coordinator: the master's epochs over in-memory sessions (algorithms.md 5, 9, 10).

No sockets and no sleeps: :class:`Cluster` moves the bytes between a real
:class:`Coordinator` and real :class:`WorkerSession` objects in a fixed
round-robin order, and time is a counter passed in as ``now``.
:func:`aiodq.protocol.simulate.simulate` (seeded random delivery order) is used for the
whole-run properties.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from collections import deque
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pytest

from aiodq.codec.events import Gradient
from aiodq.codec.frames import HEADER_SIZE, FrameReader
from aiodq.codec.messages import encode_message
from aiodq.codec.registry import MessageType
from aiodq.codec.vectors import DenseQuantized, RawVector, Vector
from aiodq.config import Limits, MasterConfig
from aiodq.data import load_bundled_a9a
from aiodq.errors import ErrorCode
from aiodq.protocol.algorithms import TrainConfig
from aiodq.protocol.coordinator import Coordinator, Phase
from aiodq.protocol.dataset import Dataset, shard
from aiodq.protocol.guard import Guard
from aiodq.protocol.result import RunResult
from aiodq.protocol.session import WorkerSession
from aiodq.protocol.simulate import build_cluster, simulate

# Small runs keep the whole file to a few seconds: 50 applied updates per epoch.
UPDATES = 50


@cache
def a9a() -> Dataset:
    """The bundled a9a training set (loaded once)."""
    return load_bundled_a9a()


def small_a9a(rows: int = 2000) -> Dataset:
    """The first ``rows`` samples of a9a, for step-by-step tests."""
    return a9a().rows(np.arange(rows))


def config(**kwargs: object) -> TrainConfig:
    """A short run."""
    values: dict[str, object] = {"epochs": 2, "updates_per_epoch": UPDATES, "batch": 32, "tau": 4}
    values.update(kwargs)
    return TrainConfig(**values)  # type: ignore[arg-type]


class Cluster:
    """A coordinator and worker sessions joined by in-memory byte queues, delivered round-robin."""

    def __init__(
        self,
        train: TrainConfig,
        dataset: Dataset,
        workers: int,
        *,
        connect: bool = True,
        master_config: MasterConfig | None = None,
        record_every: int = 0,
    ) -> None:
        self.coordinator, self.sessions = build_cluster(
            train, dataset, workers, master_config=master_config, record_every=record_every
        )
        self.ids: list[int | None] = [None] * len(self.sessions)
        self.now = 0.0
        #: Worker indexes whose traffic is held back (a stalled or vanished worker).
        self.frozen: set[int] = set()
        #: Bytes moved, per direction.
        self.moved = {"up": 0, "down": 0}
        #: Optional rewrite of a worker's outgoing bytes: ``(index, data) -> data``.
        self.tamper: Callable[[int, bytes], bytes] | None = None
        if connect:
            for index in range(len(self.sessions)):
                self.connect(index)

    def connect(self, index: int) -> None:
        """Open the transport of worker ``index``."""
        self.ids[index] = self.coordinator.connect(self.now)

    def add_session(self, session: WorkerSession) -> int:
        """Add one more worker session (not built by build_cluster) and connect it."""
        self.sessions.append(session)
        self.ids.append(None)
        self.connect(len(self.sessions) - 1)
        return len(self.sessions) - 1

    def index_of(self, worker_id: int) -> int:
        """The session index of a coordinator worker id."""
        return self.ids.index(worker_id)

    def step(self) -> bool:
        """Deliver every queued chunk once, in a fixed order; return True if anything moved."""
        moved = False
        self.now += 1.0
        for index, session in enumerate(self.sessions):
            worker_id = self.ids[index]
            if index in self.frozen or worker_id is None:
                continue
            data = session.data_to_send()
            if data:
                if self.tamper is not None:
                    data = self.tamper(index, data)
                self.moved["up"] += len(data)
                self.coordinator.receive_data(worker_id, data, self.now)
                moved = True
        for worker_id, data in self.coordinator.data_to_send().items():
            index = self.index_of(worker_id)
            self.moved["down"] += len(data)
            if index not in self.frozen:
                self.sessions[index].receive_data(data, self.now)
            moved = True
        return moved

    def run(self, until: Callable[[], bool] | None = None, limit: int = 100_000) -> None:
        """Step until nothing moves (or ``until()`` holds)."""
        for _ in range(limit):
            if until is not None and until():
                return
            if not self.step():
                return
        raise AssertionError("the cluster did not settle")


# -- phases ----------------------------------------------------------------------------------------


def test_phases_joining_snapshot_inner_done() -> None:
    """The coordinator waits in JOINING until M workers joined, then SNAPSHOT, INNER, and DONE."""
    cluster = Cluster(config(epochs=1), small_a9a(), 3, connect=False)
    coordinator = cluster.coordinator
    assert coordinator.phase is Phase.JOINING
    cluster.connect(0)
    cluster.connect(1)
    cluster.run()
    assert coordinator.phase is Phase.JOINING
    assert coordinator.live_workers == 2
    assert coordinator.trace == []
    cluster.connect(2)
    cluster.run(until=lambda: coordinator.phase is not Phase.JOINING)
    assert coordinator.phase is Phase.SNAPSHOT
    assert coordinator.live_workers == 3
    cluster.run(until=lambda: coordinator.phase is not Phase.SNAPSHOT)
    assert coordinator.phase is Phase.INNER
    assert len(coordinator.trace) == 1
    assert coordinator.trace[0].samples == 2000
    cluster.run()
    assert coordinator.phase is Phase.DONE
    assert coordinator.done
    assert coordinator.finished_at is not None
    for session in cluster.sessions:
        assert session.ended is not None
        assert session.ended[0] == ErrorCode.NO_ERROR


def test_snapshot_phase_waits_for_every_worker() -> None:
    """The snapshot phase ends only when every joined worker sent SNAPSHOT_GRADIENT."""
    cluster = Cluster(config(), small_a9a(), 3)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.SNAPSHOT)
    cluster.frozen = {1}
    cluster.run()
    assert coordinator.phase is Phase.SNAPSHOT
    cluster.frozen = set()
    cluster.run(until=lambda: coordinator.phase is not Phase.SNAPSHOT)
    assert coordinator.phase is Phase.INNER


def test_trace_has_one_record_per_epoch_plus_final() -> None:
    """A run of S epochs records S + 1 snapshots (the last evaluates the final model), m updates each."""
    train = config(epochs=3)
    coordinator = simulate(train, a9a(), 4)
    assert coordinator.done
    trace = coordinator.trace
    assert [r.epoch for r in trace] == [0, 1, 2, 3]
    assert [r.version for r in trace] == [0, UPDATES, 2 * UPDATES, 3 * UPDATES]
    assert all(r.samples == a9a().samples for r in trace)
    assert coordinator.state.version == 3 * UPDATES
    bytes_seen = [r.bytes_total for r in trace]
    assert bytes_seen == sorted(bytes_seen)
    assert bytes_seen[0] > 0
    times = [r.time for r in trace]
    assert times == sorted(times)


def test_deliver_through_timing_wrappers_runs_as_simulate() -> None:
    """``aiodq bench cluster`` times each side through wrappers passed to deliver: the run is the same.

    Same settings and delivery seed: the same final model bit for bit, the same trace and traffic,
    and the wrappers saw the inner loop (both sides' counted time is positive).
    """
    from aiodq.lab.bench_cluster import _Clock, _TimedMaster, _TimedWorker  # noqa: PLC0415 - the lab extra
    from aiodq.protocol.simulate import deliver  # noqa: PLC0415

    train = config(epochs=2)
    plain = simulate(train, a9a(), 3, seed=5)
    coordinator, sessions = build_cluster(train, a9a(), 3)
    clock = _Clock(coordinator, 10, UPDATES + 10)
    deliver(_TimedMaster(coordinator, clock), [_TimedWorker(s, clock) for s in sessions], seed=5)
    assert coordinator.done and plain.done
    assert np.array_equal(coordinator.state.x, plain.state.x)
    assert [(r.version, r.loss, r.bytes_total) for r in coordinator.trace] == [
        (r.version, r.loss, r.bytes_total) for r in plain.trace
    ]
    assert clock.master > 0 and clock.workers > 0


def test_bench_cluster_times_exactly_the_calls_of_its_window() -> None:
    """The bench's clock counts the calls made while updates 10 to 39 are applied, and no other.

    With a timer that advances by one per reading, each counted call adds exactly 1, so the totals
    are the numbers of counted calls.  A spy between the wrappers and the coordinator records, for
    every call of either side, the version at entry; the window, derived here from those versions
    alone, holds every call entered with 10 <= version < 40 (the epoch has 60 updates, so no
    snapshot phase falls inside it).  30 of the master's calls in it apply an update.
    """
    from aiodq.lab.bench_cluster import _Clock, _TimedMaster, _TimedWorker  # noqa: PLC0415 - the lab extra
    from aiodq.protocol.simulate import deliver  # noqa: PLC0415

    train = config(epochs=1, updates_per_epoch=60)
    coordinator, sessions = build_cluster(train, a9a(), 3)
    ticks = itertools.count()
    clock = _Clock(coordinator, 10, 40, timer=lambda: float(next(ticks)))
    calls: list[tuple[str, int, int]] = []  # (side, version at entry, version at exit)

    def spied(side: str, call: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any) -> Any:
            before = coordinator.state.version
            try:
                return call(*args)
            finally:
                calls.append((side, before, coordinator.state.version))

        return run

    class Spy:
        def __init__(self, inner: Any, side: str, names: tuple[str, ...]) -> None:
            self._inner = inner
            for name in names:
                setattr(self, name, spied(side, getattr(inner, name)))

        @property
        def closed(self) -> bool:
            return bool(self._inner.closed)

    master = Spy(coordinator, "master", ("data_to_send", "receive_data"))
    master.connect = coordinator.connect  # type: ignore[attr-defined] # not timed
    workers = [Spy(s, "workers", ("data_to_send", "prepare", "receive_data")) for s in sessions]
    deliver(_TimedMaster(master, clock), [_TimedWorker(w, clock) for w in workers])  # type: ignore[arg-type]
    assert coordinator.done and coordinator.state.version == 60
    window = [(side, before, after) for side, before, after in calls if 10 <= before < 40]
    assert clock.master == sum(side == "master" for side, _, _ in window) > 0
    assert clock.workers == sum(side == "workers" for side, _, _ in window) > 0
    assert sum(side == "master" and after > before for side, before, after in window) == 30
    assert len(window) < len(calls)  # calls outside the window were made, and not counted


@pytest.mark.parametrize("name", ["asylpg", "sparse-asylpg", "acc-asylpg", "asyfpg", "qsvrg"])
def test_loss_decreases_on_a9a(name: str) -> None:
    """Training on a9a lowers F from log 2 at x = 0, each epoch no worse than the last (within 1%)."""
    coordinator = simulate(config(algorithm=name, epochs=3), a9a(), 4)
    losses = [r.loss for r in coordinator.trace]
    assert len(losses) == 4
    assert losses[0] == pytest.approx(math.log(2.0) + 0.0, rel=1e-9)  # x0 = 0, R(0) = 0
    for before, after in itertools.pairwise(losses):
        assert after <= before * 1.01
    assert losses[-1] < 0.45
    assert coordinator.trace[-1].accuracy > 0.78


def test_first_snapshot_loss_is_the_full_objective() -> None:
    """F(x_snap) in the trace equals the loss over all n samples computed directly."""
    train = config(epochs=1, l2=0.01)
    coordinator = simulate(train, a9a(), 3)
    # Directly: at x = 0 every sample costs log 2 and none is on the right side (margin 0).
    loss, correct = a9a().samples * np.log(2.0), 0
    assert coordinator.trace[0].loss == pytest.approx(loss / a9a().samples, rel=1e-12)
    assert coordinator.trace[0].accuracy == correct / a9a().samples


def test_a_result_taken_during_a_snapshot_phase_gives_the_last_evaluated_snapshot() -> None:
    """Between an epoch's end and the next phase's end the master's snapshot is already the next one;
    a result taken then (a run stopped there) gives the one whose F the trace ends with."""
    dataset = small_a9a()
    cluster = Cluster(config(l2=0.01), dataset, 2)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: len(coordinator.trace) == 2 and coordinator.phase is Phase.INNER)
    cluster.run(until=lambda: coordinator.phase is Phase.SNAPSHOT)  # epoch 2's phase, not finished
    model = RunResult.of(coordinator).model
    assert not np.array_equal(model, coordinator.state.snapshot)
    margins = dataset.labels * (dataset.features @ model)  # F, directly (docs/algorithms.md 1.1)
    loss = np.logaddexp(0.0, -margins).mean() + 0.005 * model @ model
    assert loss == pytest.approx(coordinator.trace[-1].loss, rel=1e-9)


# -- staleness -------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau", [0, 1, 3])
def test_applied_staleness_never_exceeds_tau(tau: int) -> None:
    """No applied update has t - D > tau (algorithms.md 9)."""
    coordinator = simulate(config(tau=tau), a9a(), 4, seed=tau)
    assert coordinator.applied_staleness
    assert max(coordinator.applied_staleness) <= tau
    assert sum(coordinator.applied_staleness.values()) == coordinator.state.version


def test_slow_worker_gradients_dropped_as_stale() -> None:
    """With a 20x slower worker and tau = 1, some gradients are dropped as stale; training still ends."""
    coordinator = simulate(config(tau=1), a9a(), 4, slow={0: 20})
    assert coordinator.done
    assert coordinator.dropped["stale"] > 0
    assert max(coordinator.applied_staleness) <= 1
    summary = coordinator.summary()
    assert summary["staleness"]["dropped"]["stale"] == coordinator.dropped["stale"]
    assert summary["staleness"]["max"] <= 1


# -- workers leaving and arriving ------------------------------------------------------------------


def test_disconnect_during_snapshot_does_not_block() -> None:
    """A worker lost during the snapshot phase is not waited for; the phase completes with fewer samples."""
    dataset = small_a9a()
    cluster = Cluster(config(), dataset, 3)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.SNAPSHOT)
    cluster.frozen = {2}
    cluster.run()
    assert coordinator.phase is Phase.SNAPSHOT
    worker_id = cluster.ids[2]
    assert worker_id is not None
    coordinator.disconnect(worker_id, cluster.now)
    assert coordinator.phase is Phase.INNER
    missing = shard(dataset.samples, 3, 2, seed=0).shape[0]
    assert coordinator.trace[0].samples == dataset.samples - missing
    assert coordinator.live_workers == 2
    cluster.run()
    assert coordinator.done
    assert len(coordinator.trace) == 3
    assert all(np.isfinite(r.loss) for r in coordinator.trace)


def test_a_worker_leaving_after_shutdown_ends_no_snapshot_phase() -> None:
    """After shutdown, a worker's exit during a snapshot phase ends no phase: the trace gains no record
    of F over the samples of the workers that happened to report (nor does the model change)."""
    cluster = Cluster(config(), small_a9a(), 3)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.SNAPSHOT)
    cluster.frozen = {2}
    cluster.run()  # workers 0 and 1 have reported; 2 is held back
    assert coordinator.phase is Phase.SNAPSHOT and coordinator.trace == []
    x = coordinator.state.x.copy()
    coordinator.shutdown(cluster.now)
    worker_id = cluster.ids[2]
    assert worker_id is not None
    coordinator.disconnect(worker_id, cluster.now)  # without the shutdown, the phase would end here
    assert coordinator.phase is Phase.SNAPSHOT and coordinator.trace == []
    assert np.array_equal(coordinator.state.x, x)


def test_every_worker_leaving_returns_to_joining() -> None:
    """If every worker leaves during a snapshot phase, the coordinator waits for workers again."""
    cluster = Cluster(config(), small_a9a(), 2)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.SNAPSHOT)
    for worker_id in list(cluster.ids):
        assert worker_id is not None
        coordinator.disconnect(worker_id, cluster.now)
    assert coordinator.phase is Phase.JOINING
    assert coordinator.trace == []


def test_extra_worker_refused_going_away() -> None:
    """A worker beyond M is refused with CLOSE GOING_AWAY; the M members train to the end."""
    dataset = small_a9a()
    cluster = Cluster(config(epochs=1), dataset, 2)
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.SNAPSHOT)
    extra = WorkerSession(dataset.features[:10], dataset.labels[:10], name="extra")
    index = cluster.add_session(extra)
    cluster.run()
    assert extra.ended is not None
    assert extra.ended[0] == ErrorCode.GOING_AWAY
    assert extra.closed
    assert extra.config is None
    assert extra.gradients_sent == 0
    assert coordinator.done
    assert coordinator.trace[0].samples == dataset.samples
    extra_id = cluster.ids[index]
    assert extra_id in coordinator.closed_workers()


def test_worker_after_done_refused() -> None:
    """A worker that arrives after training finished is refused with GOING_AWAY."""
    dataset = small_a9a()
    cluster = Cluster(config(epochs=1), dataset, 1)
    cluster.run()
    assert cluster.coordinator.done
    late = WorkerSession(dataset.features[:10], dataset.labels[:10], name="late")
    cluster.add_session(late)
    cluster.run()
    assert late.ended is not None
    assert late.ended[0] == ErrorCode.GOING_AWAY


# -- non-finite gradients --------------------------------------------------------------------------


def nan_gradient_tamper(target: int) -> Callable[[int, bytes], bytes]:
    """Rewrite the first RAW_F32 GRADIENT of worker ``target`` so one coordinate is NaN."""
    done = False

    def tamper(index: int, data: bytes) -> bytes:
        nonlocal done
        if index != target or done:
            return data
        reader = FrameReader(Limits())
        reader.feed(data)
        out = bytearray()
        while (frame := reader.next_frame()) is not None:
            raw = struct.pack("<BBBI", frame.version, frame.type, frame.flags, len(frame.body))
            body = frame.body
            # Only a RAW_F32 gradient of d = 123 coordinates is this long; its last 4 bytes are a value.
            if frame.type == MessageType.GRADIENT and not done and len(body) > 4 * 123:
                body = body[:-4] + struct.pack("<f", math.nan)
                done = True
            assert len(raw) == HEADER_SIZE
            out += raw + body
        return bytes(out)

    return tamper


def test_nan_gradient_on_the_wire_closes_with_non_finite() -> None:
    """A GRADIENT carrying NaN fails that connection with NON_FINITE; x stays finite and the others finish."""
    cluster = Cluster(config(algorithm="asyfpg", epochs=1), small_a9a(), 3)
    coordinator = cluster.coordinator
    cluster.tamper = nan_gradient_tamper(0)
    cluster.run()
    assert coordinator.done
    assert np.isfinite(coordinator.state.x).all()
    assert [(w, c, by) for w, c, _, by, _ in coordinator.errors] == [(cluster.ids[0], "NON_FINITE", "master")]
    bad = cluster.sessions[0]
    assert bad.ended is not None
    assert bad.ended[0] == ErrorCode.NON_FINITE
    assert all(np.isfinite(r.loss) for r in coordinator.trace)


def huge_gradient(algorithm: str) -> Vector:
    """A gradient in the run's own encoding and width whose values are finite but huge."""
    if algorithm in ("asyfpg", "acc-asyfpg", "model-only"):
        return RawVector(np.full(123, 1e38, dtype=np.float32))
    # wire-format.md 11: a DENSE coordinate can reach 2^15 x the largest float32; here 127 x 3.4e38.
    return DenseQuantized(8, float(np.finfo(np.float32).max), np.full(123, 127, dtype=np.int8))


def forge_huge_gradient(cluster: Cluster, vector: Vector | None = None) -> tuple[int, bytes]:
    """Hold worker 0 back and answer its outstanding MODEL with a finite but huge gradient."""
    coordinator = cluster.coordinator
    cluster.run(until=lambda: coordinator.phase is Phase.INNER)
    cluster.frozen = {0}
    cluster.step()  # worker 0's MODEL leaves the master but is never delivered
    worker_id = cluster.ids[0]
    assert worker_id is not None
    outstanding = coordinator._workers[worker_id].connection.outstanding_model
    assert outstanding is not None
    epoch, version = outstanding
    # Finite, so the codec accepts it (wire-format.md 5.3), but x - eta u is far out of range.
    huge = vector if vector is not None else huge_gradient(coordinator.config.algorithm)
    return worker_id, encode_message(Gradient(epoch=epoch, version=version, vector=huge), 1)


def frame_types(data: bytes) -> list[int]:
    """The message types of the frames in ``data``."""
    reader = FrameReader(Limits())
    reader.feed(data)
    types = []
    while (frame := reader.next_frame()) is not None:
        types.append(frame.type)
    return types


def test_non_finite_update_does_not_raise_or_warn() -> None:
    """A finite gradient that would overflow the model makes the coordinator neither raise nor warn."""
    cluster = Cluster(config(algorithm="asyfpg", epochs=1), small_a9a(), 2)
    worker_id, frame = forge_huge_gradient(cluster)
    # pytest turns warnings into errors (pyproject.toml), so a RuntimeWarning fails here too.
    cluster.coordinator.receive_data(worker_id, frame, cluster.now)
    assert np.isfinite(cluster.coordinator.state.x).all()


@pytest.mark.parametrize("name", ["asyfpg", "asylpg", "acc-asylpg"])
def test_outlier_update_answered_with_error(name: str) -> None:
    """The guard: an update far out of line is not applied; an ERROR and a fresh MODEL go back."""
    cluster = Cluster(config(algorithm=name, epochs=1), small_a9a(), 2)
    coordinator = cluster.coordinator
    worker_id, frame = forge_huge_gradient(cluster)
    x_before = coordinator.state.x.copy()
    version = coordinator.state.version
    coordinator.receive_data(worker_id, frame, cluster.now)
    assert coordinator.dropped["outlier"] == 1
    np.testing.assert_array_equal(coordinator.state.x, x_before)
    assert np.isfinite(coordinator.state.x).all()
    assert coordinator.state.version == version
    types = frame_types(coordinator.data_to_send()[worker_id])
    assert types == [MessageType.ERROR, MessageType.MODEL]
    # The rest of the run is unaffected.
    cluster.frozen = {0}
    coordinator.disconnect(worker_id, cluster.now)
    cluster.run()
    assert coordinator.done
    assert all(np.isfinite(r.loss) for r in coordinator.trace)


# -- traffic and summary ---------------------------------------------------------------------------


def test_traffic_totals_match_connection_counters() -> None:
    """Traffic totals equal the bytes the connections counted, which equal the bytes moved."""
    cluster = Cluster(config(algorithm="sparse-asylpg"), small_a9a(), 3)
    coordinator = cluster.coordinator
    cluster.run()
    assert coordinator.done
    traffic = coordinator.traffic()
    master_sent = master_received = 0
    for worker in coordinator._workers.values():
        master_sent += sum(worker.connection.bytes_sent.values())
        master_received += sum(worker.connection.bytes_received.values())
    assert traffic.total("down") == master_sent == cluster.moved["down"]
    assert traffic.total("up") == master_received == cluster.moved["up"]
    assert traffic.total() == master_sent + master_received
    worker_received = sum(sum(s.connection.bytes_received.values()) for s in cluster.sessions)
    worker_sent = sum(sum(s.connection.bytes_sent.values()) for s in cluster.sessions)
    assert worker_received == master_sent
    assert worker_sent == master_received
    # Forgetting closed workers keeps their counters in the totals.
    before = traffic.as_dict()
    for worker_id in coordinator.closed_workers():
        coordinator.forget(worker_id)
    assert coordinator.traffic().as_dict() == before


def test_traffic_by_kind() -> None:
    """Bytes are split by direction and message kind, headers apart, and GRADIENT payload bits are counted."""
    coordinator = simulate(config(), a9a(), 3)
    traffic = coordinator.traffic()
    kinds_up = {kind for (direction, kind) in traffic.wire_bytes if direction == "up"}
    kinds_down = {kind for (direction, kind) in traffic.wire_bytes if direction == "down"}
    assert {"HELLO", "SNAPSHOT_GRADIENT", "GRADIENT", "header"} <= kinds_up
    assert {"WELCOME", "CONFIG", "SNAPSHOT", "MODEL", "CLOSE", "header"} <= kinds_down
    messages = sum(v for (d, _), v in traffic.messages.items() if d == "up")
    assert traffic.wire_bytes["up", "header"] == HEADER_SIZE * messages
    assert traffic.messages["up", "GRADIENT"] >= coordinator.state.version
    assert traffic.payload_bits["up", "GRADIENT"] > 0
    # 3 phases x 3 workers; the snapshot phase is full precision, float32 (algorithms.md 5).
    assert traffic.payload_bits["down", "SNAPSHOT"] == 3 * 3 * 123 * 32
    assert traffic.payload_bits["up", "SNAPSHOT_GRADIENT"] == 3 * 3 * 123 * 32


def test_summary_json_and_keys() -> None:
    """summary() is JSON-serialisable and has the documented keys."""
    coordinator = simulate(config(tau=1), a9a(), 4, slow={0: 20})
    summary = coordinator.summary()
    text = json.dumps(summary)
    assert json.loads(text) == summary
    assert set(summary) == {
        "config",
        "dim",
        "workers",
        "updates_per_epoch",
        "version",
        "trace",
        "traffic",
        "staleness",
        "errors",
        "error_counts",
        "peer_error_counts",
        "failure",
        "unadmitted",
    }
    assert summary["dim"] == 123
    assert summary["workers"] == 4
    assert summary["updates_per_epoch"] == UPDATES
    assert summary["config"] == coordinator.config.to_params()
    assert len(summary["trace"]) == 3
    for record in summary["trace"]:
        assert set(record) == {"epoch", "loss", "accuracy", "bytes", "bits", "time", "version", "samples"}
        assert record["bits"] == 8 * record["bytes"]
    assert set(summary["traffic"]) == {"wire_bytes", "messages", "payload_bits", "total_bytes"}
    assert summary["traffic"]["total_bytes"]["both"] == coordinator.traffic().total()
    staleness = summary["staleness"]
    assert set(staleness) == {"tau", "applied", "histogram", "mean", "max", "dropped"}
    assert staleness["tau"] == 1
    assert staleness["applied"] == summary["version"]
    assert sum(staleness["histogram"].values()) == staleness["applied"]
    assert all(int(k) <= 1 for k in staleness["histogram"])


def test_coordinator_needs_a_worker() -> None:
    """A coordinator for zero workers is a ValueError."""
    with pytest.raises(ValueError, match="worker"):
        Coordinator(TrainConfig(), np.zeros(3), workers=0)


def test_late_joiner_still_owing_a_snapshot_when_the_next_phase_starts() -> None:
    """Coordinator._send_snapshot: a worker owing an old SNAPSHOT answer gets the new one after it."""
    dataset = load_bundled_a9a()
    config = TrainConfig(algorithm="asylpg", epochs=3, updates_per_epoch=40)
    coordinator, sessions = build_cluster(config, dataset, 2)
    ids = [coordinator.connect(0.0) for _ in sessions]
    rows = shard(dataset.samples, 3, 2)
    late: WorkerSession | None = None
    queues: dict[int, deque[bytes]] = {}

    def pump(held: set[int], until: Any = lambda: False) -> None:
        """Deliver everything except what the sessions in ``held`` send, until ``until()`` holds."""
        for _ in range(100_000):
            if until():
                return
            moved = False
            for worker_id, data in coordinator.data_to_send().items():
                target = late if worker_id == late_id else sessions[ids.index(worker_id)]
                assert target is not None
                target.receive_data(data, 0.0)
                moved = True
            everyone = list(zip(ids, sessions, strict=True)) + ([(late_id, late)] if late else [])
            for worker_id, session in everyone:
                data = session.data_to_send()
                if data:
                    queues.setdefault(worker_id, deque()).append(data)
            for worker_id, queue in queues.items():
                while queue and worker_id not in held:
                    coordinator.receive_data(worker_id, queue.popleft(), 0.0)
                    moved = True
            if not moved or coordinator.done:
                return

    late_id = -1
    pump(set(), lambda: coordinator.phase is Phase.INNER)  # the two join; epoch 0's inner loop starts
    assert coordinator.phase is Phase.INNER and coordinator.state.epoch == 0
    coordinator.expected_workers = 3  # room for one more, as after a worker left
    # Shards of n/2 and n/3 in one run: only a master that does not know n accepts both.
    coordinator.guard = Guard(config, factor=100.0, workers=3, samples=None)
    late_id = coordinator.connect(0.0)
    late = WorkerSession(dataset.features[rows], dataset.labels[rows], name="late")
    pump({late_id}, lambda: coordinator.state.epoch >= 1)  # the late worker's answer is held back
    assert coordinator.state.epoch >= 1  # the next phase started while it still owed the answer
    pump(set())  # now everything flows
    assert coordinator.done
    assert not coordinator.errors
    assert late.gradients_sent > 0
    # The two first workers split the data in halves; the late one adds its own shard.
    assert coordinator.trace[-1].samples == dataset.samples + rows.shape[0]


# -- the worker's overlap (WorkerSession.prepare) ------------------------------------


def _mini_batch_calls(monkeypatch: pytest.MonkeyPatch, limit: int | None = None) -> list[int]:
    """Count the objective's mini-batch evaluations; beyond ``limit`` of them, the objective fails.

    The logistic model loses its grad_difference here, so that a step takes loss_grad at x_hat and
    at x_snap and preparing computes the second (with it, preparing only draws the mini-batch).
    """
    from aiodq.protocol import algorithms  # noqa: PLC0415
    from aiodq.protocol.objectives import LogisticRegression  # noqa: PLC0415

    monkeypatch.delattr(LogisticRegression, "grad_difference")

    calls = [0]
    original = algorithms.WorkerState._loss_grad

    def counting(self: Any, x: Any, rows: Any, **options: Any) -> Any:
        if rows is not None:
            calls[0] += 1
            if limit is not None and calls[0] > limit:
                raise RuntimeError("out of memory")
        return original(self, x, rows, **options)

    monkeypatch.setattr(algorithms.WorkerState, "_loss_grad", counting)
    return calls


def _simulate_keeping_sessions(monkeypatch: pytest.MonkeyPatch, train: TrainConfig) -> tuple[Any, list[Any]]:
    """:func:`simulate`, and the worker sessions it made."""
    sessions: list[WorkerSession] = []

    def build(*args: Any, **kwargs: Any) -> Any:
        coordinator, built = build_cluster(*args, **kwargs)
        sessions.extend(built)
        return coordinator, built

    monkeypatch.setattr("aiodq.protocol.simulate.build_cluster", build)
    return simulate(train, a9a(), 1, seed=1), sessions


def test_a_failure_while_preparing_costs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Preparing is work done ahead, not owed: an objective that fails only on the extra
    evaluations preparing adds leaves the run as it is without preparing."""
    with monkeypatch.context() as without:
        without.setattr(WorkerSession, "prepare", lambda self, now: None)
        calls = _mini_batch_calls(without)
        plain = simulate(config(epochs=1), a9a(), 1, seed=1)
    needed = calls[0]
    assert plain.done and needed == 2 * UPDATES  # two gradients per step, none prepared
    calls = _mini_batch_calls(monkeypatch, limit=needed)
    prepared, sessions = _simulate_keeping_sessions(monkeypatch, config(epochs=1))
    # Prepared: after the first SNAPSHOT_GRADIENT and after every GRADIENT; the last of those
    # (at the old snapshot) and the one after the final SNAPSHOT_GRADIENT fail, and are dropped.
    assert calls[0] == needed + 2
    assert prepared.done and [record.epoch for record in prepared.trace] == [0, 1]
    assert sessions[0].ended == (int(ErrorCode.NO_ERROR), "training complete")
    assert not sessions[0].failed
    np.testing.assert_array_equal(prepared.state.x, plain.state.x)


def test_prepare_only_after_a_send_and_never_once_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing is prepared before this side sent anything, nor once the connection is closed."""
    calls = _mini_batch_calls(monkeypatch)
    _, sessions = build_cluster(config(epochs=1), a9a(), 1)
    sessions[0].prepare(0.0)  # nothing sent yet, no CONFIG
    assert calls[0] == 0
    finished, sessions = _simulate_keeping_sessions(monkeypatch, config(epochs=1))
    assert finished.done and sessions[0].closed
    before = calls[0]
    state = sessions[0].state
    assert state is not None
    state._next_rows = state._next_at_snapshot = None  # as if a step had just used them
    sessions[0]._may_prepare = True  # and it had just sent: but it is closed
    sessions[0].prepare(0.0)
    assert calls[0] == before


def test_model_records_keep_the_bytes_by_kind() -> None:
    """Each model copy carries the bytes so far by direction and kind, adding up to its total."""
    coordinator = simulate(config(epochs=1), a9a(), 2, seed=3, record_every=10)
    records = coordinator.records
    assert len(records) > 3
    for record in records:
        assert sum(record.wire_bytes.values()) == record.bytes_total
    last = records[-1].wire_bytes
    assert last["down/SNAPSHOT"] > 0 and last["up/GRADIENT"] > 0 and last["down/header"] > 0
    final = coordinator.traffic().by_kind()
    assert all(final[kind] >= count for kind, count in last.items())


def test_a_result_is_ok_only_once_every_epoch_ran() -> None:
    """RunResult.ok: no failure and a trace that reaches the last epoch; a result taken before training
    ended is not ok, though its failure is None (an operator trial read ok=True off a run that never
    trained)."""
    dataset = load_bundled_a9a()
    train = config(epochs=2, updates_per_epoch=20)
    coordinator, _ = build_cluster(train, dataset, 2)
    early = RunResult.of(coordinator)
    assert early.failure is None and early.trace == [] and not early.ok
    finished = RunResult.of(simulate(train, dataset, 2))
    assert finished.ok and [record.epoch for record in finished.trace] == [0, 1, 2]
    part_way = RunResult(finished.config, finished.model, finished.iterate, finished.trace[:2], None, {})
    assert not part_way.ok
