"""The master's control logic over all its worker connections, sans I/O (docs/algorithms.md 5, 9).

A :class:`Coordinator` owns one :class:`~aiodq.protocol.connection.MasterConnection` per worker and a
:class:`~aiodq.protocol.algorithms.MasterState`.  The shell (asyncio, or an in-memory simulation) hands
it bytes per worker and the time, and collects the bytes to send; the coordinator runs the epochs:

1. wait until ``workers`` workers have joined (HELLO, answered by WELCOME and CONFIG);
2. snapshot phase: SNAPSHOT to every worker, wait for every SNAPSHOT_GRADIENT,
   form g_snap and F(x_snap) (and send FULL_GRADIENT where the algorithm needs it);
3. inner loop: a MODEL to every worker; each GRADIENT is applied unless it is
   staler than tau, and its sender gets a fresh MODEL; after m applied updates
   the next epoch starts (gradients still in flight are dropped as late);
4. after the last epoch, one more snapshot phase evaluates the final model,
   then every worker gets CLOSE.

Staleness (docs/algorithms.md 9): a gradient computed on model version D and received at version t
is applied only if ``t - D <= tau``.  A worker that leaves is removed; a snapshot phase waits only for
those still connected, and one that rejoins re-enters at the next snapshot phase.  What an admitted
worker sends is checked by :mod:`aiodq.protocol.guard` (docs/security.md); the run ends as diverged
(:attr:`Coordinator.failure`) as :class:`~aiodq.protocol.guard.Divergence` says, or when F(x_snap) is not
finite.  No message of a peer makes the coordinator raise: an unexpected failure while handling one
closes that peer's connection (INTERNAL_ERROR).  After :meth:`shutdown` nothing changes model or trace.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from ..codec.events import (
    Close,
    ConfigMessage,
    ConnectionClosed,
    ErrorMessage,
    Event,
    FullGradient,
    Gradient,
    Hello,
    ModelMessage,
    Snapshot,
    SnapshotGradient,
    Welcome,
)
from ..codec.registry import ALL_ENCODINGS
from ..codec.vectors import EqualsSnapshot, RawVector, full_precision
from ..config import ConnectionConfig, MasterConfig
from ..errors import TRAINING_COMPLETE, CheckpointError, ErrorCode, RemoteProtocolError, code_name
from . import recovery
from .accounting import EpochRecord, Ledger, ModelRecord, Traffic
from .adaptive import CodingChooser
from .admission import Admission
from .algorithms import MasterState, TrainConfig
from .connection import ConnectionState, MasterConnection
from .deadlines import Deadlines
from .guard import DIVERGED_AFTER, OVERFLOW, Divergence, Guard, Refusal, count_error
from .members import Member, Phase, check_workers
from .recovery import Checkpoint
from .trainconfig import coding_options

__all__ = ["DIVERGED_AFTER", "Coordinator", "EpochRecord", "ModelRecord", "Phase", "Traffic"]

_CLOSING = (ConnectionState.CLOSING, ConnectionState.CLOSED)
_TIMER_TURN = 16  # events handled per due timer; the shell handles the rest in its turns


def _ledger_table(name: str, doc: str) -> Any:
    return property(lambda self: getattr(self.ledger, name), doc=doc)


class Coordinator:
    """Runs a training session over many worker connections, without doing I/O."""

    def __init__(
        self,
        config: TrainConfig,
        x0: npt.NDArray[np.floating[Any]],
        *,
        workers: int,
        connection_config: ConnectionConfig | None = None,
        now: float = 0.0,
        record_every: int = 0,
        master_config: MasterConfig | None = None,
        samples: int | None = None,
    ) -> None:
        """Configure; nothing is sent until workers connect.

        Args:
            config: the run's hyperparameters.
            x0: the initial model.
            workers: the number of workers M to wait for.
            connection_config: limits, timeouts and the shared secret of every connection.
            now: the shell's clock at creation.
            record_every: if positive, keep a :class:`ModelRecord` at the start of every snapshot phase and
                after every ``record_every``-th applied update, in :attr:`records` (checkpointed too).
            master_config: the guard factor, the snapshot deadline and admission limits.
            samples: n, the samples of the whole dataset, if known: each worker must then
                report one of the two shard sizes of n over M.
        """
        workers = check_workers(workers)
        if not isinstance(record_every, int) or isinstance(record_every, bool) or record_every < 0:
            raise ValueError("record_every must be a non-negative integer")
        self.config, self.master_config = config, (master := master_config or MasterConfig())
        self.guard = Guard(config, factor=self.master_config.guard, workers=workers, samples=samples)
        self.state = MasterState(config, x0)
        self.dim, self.expected_workers, self.phase = int(self.state.x.shape[0]), workers, Phase.JOINING
        self._connection_config = base = coding_options(config, connection_config or ConnectionConfig())
        self._announced = frozenset(base.encodings or ALL_ENCODINGS)
        self._workers: dict[int, Member] = {}
        self._next_id, self._started = 0, now
        self.deadlines = Deadlines(self.master_config, joining_since=now)  #: when waits end
        self._gradient_sum, self._bytes_at_snapshot, self._record_every = np.zeros(self.dim), 0, record_every
        self.ledger = Ledger()  #: the run's book: trace, records, staleness, drops, errors, traffic
        self.finished_at: float | None = None  # when the run ended
        self.failure: str | None = None  #: why the run ended before its epochs did (it diverged), or None
        self._divergence, self._admission = Divergence(workers), Admission(config, workers, master)
        coded = config.adaptive_coding and config.spec.model == "quantized"  # dense codes to choose for
        self._coding = CodingChooser() if coded else None  # adaptive.py
        #: True after :meth:`restore` of a mid-epoch checkpoint: the next snapshot phase only hands the
        #: workers x_snap again; the master keeps its x, g_snap and counters.
        self._resuming = False
        self._waited_in: Phase | None = None  # where a run that its workers left ended
        self._shut_down = self._judged = False  # (shutdown; _maybe_finish_snapshot_phase)
        #: Sent in CONFIG's params where not None: "data" (Dataset.fingerprint), "fixed" (fixed_fingerprint)
        #: and "objective" (net/arguments.py own_objective): docs/api.md says what each is.
        self.fingerprints: dict[str, str | None] = {"data": None, "fixed": None, "objective": None}

    # -- the shell's interface -------------------------------------------------

    def connect(self, now: float) -> int:
        """Register a new transport; return its worker id."""
        worker_id, self._next_id = self._next_id, self._next_id + 1
        self._workers[worker_id] = Member(MasterConnection(self._connection_config, now=now))
        return worker_id

    def receive_data(self, worker_id: int, data: bytes | None, now: float, budget: int = -1) -> bool:
        """Bytes from a worker (``b""`` at end of stream, None: none new); handle its whole messages.

        At most ``budget`` of them, if not -1, so that the shell can take turns between peers (a flood of
        one peer's valid frames then holds up no other): True if some may be left (call again with None).
        """
        if (worker := self._workers.get(worker_id)) is None:
            return False
        if data is not None:
            worker.connection.receive_data(data, now)
        while budget:
            try:
                event = worker.connection.next_event()
            except RemoteProtocolError as exc:
                self.ledger.add_error(worker_id, exc.code.name, str(exc), joined=worker.joined)
                self._drop_worker(worker_id, now, exc.code)
                return False
            if event is None:
                return False
            self._handle_safely(worker_id, event, now)
            if worker_id not in self._workers:
                return False
            budget -= 1
        return True

    def handle_timer(self, now: float) -> None:
        """Run the connections' timers (heartbeats, timeouts) and the snapshot deadline."""
        for worker_id, worker in list(self._workers.items()):
            if (timer := worker.connection.get_timer()) is not None and timer <= now:
                worker.connection.handle_timer(now)
                # Its events, then a turn of buffered ones; a protocol error closes the peer, not the timer.
                self.receive_data(worker_id, None, now, _TIMER_TURN)
        deadlines = self.deadlines
        waited = deadlines.snapshot_phase_due(now) if self.phase is Phase.SNAPSHOT else None
        if waited is not None:
            for worker_id, worker in list(self._workers.items()):
                if worker.awaiting_snapshot:
                    reason = f"no SNAPSHOT_GRADIENT within {waited:.3g} s"
                    self._remove(worker_id, Refusal(ErrorCode.TIMEOUT, reason, held_the_phase=True), now)
        if deadlines.join_due(now):  # joining, or in the inner loop once every worker left
            self._waited_in = self.phase  # the run can go on from here: its checkpoint says so
            self._finish(now, deadlines.unjoined(self.live_workers, self.expected_workers, self.errors))
            return
        for worker_id, worker in list(self._workers.items()):
            if deadlines.snapshot_owed_too_long(worker, now):
                reason = f"no SNAPSHOT_GRADIENT within {self.master_config.snapshot_timeout:g} s"
                self._remove(worker_id, Refusal(ErrorCode.TIMEOUT, reason), now)

    def get_timer(self) -> float | None:
        """The earliest connection timer, snapshot deadline or join deadline."""
        timers = [t for w in self._workers.values() if (t := w.connection.get_timer()) is not None]
        timers += self.deadlines.timers(list(self._workers.values()))
        return min(timers) if timers else None

    def data_to_send(self) -> dict[int, bytes]:
        """Bytes to write, per worker id (only workers with something to send)."""
        return {wid: data for wid, w in self._workers.items() if (data := w.connection.data_to_send())}

    def closed_workers(self) -> list[int]:
        """Workers whose session is over: the shell closes their transports, then :meth:`forget`s them."""
        return [wid for wid, w in self._workers.items() if w.connection.state is ConnectionState.CLOSED]

    def forget(self, worker_id: int) -> None:
        """Drop a closed worker's connection, keeping its traffic (a stranger's apart: not the run's)."""
        if (worker := self._workers.pop(worker_id, None)) is not None:
            self.ledger.retire(worker.connection, admitted=worker.admitted)
            self.guard.forget(worker_id)

    def disconnect(self, worker_id: int, now: float) -> bool:
        """The transport to a worker was lost; True if a member's stream ended with no CLOSE (Member.lost)."""
        self._drop_worker(worker_id, now)
        return (worker := self._workers.get(worker_id)) is not None and worker.lost

    def shutdown(self, now: float, reason: str = "the master is shutting down") -> None:
        """Send CLOSE with GOING_AWAY on every connection (training stops where it stands)."""
        self._shut_down = True  # no one joins, and the workers' exits that follow end no snapshot phase
        self.deadlines.stopped()
        for worker in self._workers.values():
            worker.connection.close(now, ErrorCode.GOING_AWAY, reason)

    def is_member(self, worker_id: int) -> bool:
        """True if the connection ``worker_id`` has joined the run and not left it."""
        return (worker := self._workers.get(worker_id)) is not None and worker.joined

    def shard_of(self, worker_id: int) -> int | None:
        """The shard index the connection ``worker_id`` claimed (None: none, or no such connection)."""
        return None if (worker := self._workers.get(worker_id)) is None else worker.shard

    @property
    def done(self) -> bool:
        """True once training finished and CLOSE went to every worker."""
        return self.phase is Phase.DONE

    @property
    def live_workers(self) -> int:
        """Workers that joined and are still connected."""
        return sum(1 for w in self._workers.values() if w.joined)

    @property
    def pending(self) -> int:
        """Connections that have not joined: in their handshake, or refused and closing."""
        return sum(1 for w in self._workers.values() if not w.admitted)

    def traffic(self) -> Traffic:
        """The run's bytes and payload bits so far: every connection that joined, past and present."""
        return self.ledger.traffic([w.connection for w in self._workers.values() if w.admitted])

    trace = _ledger_table("trace", "The per-epoch trace (list of EpochRecord).")
    records = _ledger_table("records", "Model copies for evaluation after the run (see ``record_every``).")
    applied_staleness = _ledger_table("applied_staleness", "Staleness t - D of every applied update.")
    dropped = _ledger_table("dropped", "Gradients not applied, by reason (stale, late, outlier, ...).")
    errors = _ledger_table("errors", "The latest protocol errors (see Ledger.errors).")

    # -- events -----------------------------------------------------------------

    def _handle_safely(self, worker_id: int, event: Event, now: float) -> None:
        """Handle one event; a failure the protocol does not foresee closes only this connection."""
        try:
            self._handle(worker_id, event, now)
        except Exception as exc:
            reason = f"internal error handling {type(event).__name__}: {type(exc).__name__}: {exc}"
            self._remove(worker_id, Refusal(ErrorCode.INTERNAL_ERROR, reason[:300], blames_sender=False), now)

    def _remove(self, worker_id: int, refusal: Refusal, now: float) -> None:
        """Close a worker's connection with ``refusal``'s code and record why."""
        worker = self._workers.get(worker_id)
        joined = worker is None or worker.joined  # False: a HELLO refused before WELCOME, say
        self.ledger.add_error(worker_id, refusal.code.name, refusal.reason, joined=joined)
        if worker is not None and worker.connection.state not in _CLOSING:
            worker.connection.refuse(refusal.code, refusal.reason)  # (8.4-3: nothing more read from it)
        self._drop_worker(worker_id, now, refusal)

    def _handle(self, worker_id: int, event: Event, now: float) -> None:
        worker = self._workers[worker_id]
        if isinstance(event, Hello):
            self._join(worker_id, worker, event, now)
        elif isinstance(event, SnapshotGradient | Gradient | ErrorMessage) and (
            not worker.joined or worker.connection.state in _CLOSING
        ):
            return  # messages already on their way from a removed worker, or one told CLOSE: ignored
        elif isinstance(event, SnapshotGradient):
            self._snapshot_gradient(worker_id, worker, event, now)
        elif isinstance(event, Gradient):
            self._gradient(worker_id, worker, event, now)
        elif isinstance(event, ErrorMessage):
            self.ledger.add_error(worker_id, code_name(event.code), event.reason, sent=True)
            if (refusal := count_error(worker)) is not None:
                self._remove(worker_id, refusal, now)
        elif isinstance(event, Close | ConnectionClosed):
            # A peer's CLOSE with an error code (AUTH_FAILED, say) and a local timeout are recorded, so
            # the master logs why (the end of a stream after our own CLOSE was recorded when sent).
            joined = worker.joined
            worker.lost = joined and isinstance(event, ConnectionClosed) and event.code is None
            if isinstance(event, Close) and event.code != ErrorCode.NO_ERROR:
                name = code_name(event.code)
                self.ledger.add_error(worker_id, name, event.reason, sent=True, joined=joined)
            elif isinstance(event, ConnectionClosed) and event.code == ErrorCode.TIMEOUT:
                self.ledger.add_error(
                    worker_id, ErrorCode.TIMEOUT.name, event.reason or "timed out", joined=joined
                )
            self._drop_worker(worker_id, now)

    def _join(self, worker_id: int, worker: Member, hello: Hello, now: float) -> None:
        connection = worker.connection
        if self.phase is Phase.DONE or self._shut_down:
            connection.close(now, ErrorCode.GOING_AWAY, "the cluster is full or finished")
            return
        held = {i: w.shard for i, w in self._workers.items() if w.joined and w.shard is not None}
        if (refusal := self._admission.refuse(hello, held, now)) is not None:
            return self._remove(worker_id, refusal, now)
        if self.live_workers >= self.expected_workers:
            connection.close(now, ErrorCode.GOING_AWAY, "the cluster is full or finished")
            return
        worker.join(hello.shard)
        version = connection.negotiated_version or 1
        connection.send(Welcome(version=version, worker_id=worker_id, encodings=self._announced), now)
        # A worker with other data, or with another model's fixed state, refuses it (WorkerSession).
        params = self.config.to_params() | {k: v for k, v in self.fingerprints.items() if v is not None}
        connection.send(ConfigMessage(dim=self.dim, algorithm=self.config.algorithm, params=params), now)
        if self.phase is Phase.JOINING and self.live_workers == self.expected_workers:
            self._start_snapshot_phase(now)
        elif self.phase in (Phase.SNAPSHOT, Phase.INNER):
            # A worker that (re)joins a running session: in a snapshot phase it takes part; in the inner
            # loop it gets x_snap first and then models, its shard in g_snap and F from the next phase on.
            worker.active, worker.awaiting_snapshot = True, self.phase is Phase.SNAPSHOT
            self.deadlines.worker_back()
            self._send_snapshot(worker, now)

    def _start_snapshot_phase(self, now: float) -> None:
        self.phase = Phase.SNAPSHOT
        self.deadlines.snapshot_phase_started(now)
        if self._coding is not None:  # the pause is not the coding's doing
            self._coding.interrupt()
        for worker in self._workers.values():
            worker.report = None
        traffic = self.traffic()
        self._bytes_at_snapshot = traffic.total()
        if self._record_every and not self._resuming:
            # (A phase that resumes a checkpointed epoch only hands x_snap out again.)
            self._record(self.state.snapshot, traffic, now)
        for worker in self._workers.values():
            if worker.joined:
                # One owing an earlier SNAPSHOT (joined in the inner loop) is not awaited: it joins on answer.
                worker.active = worker.awaiting_snapshot = worker.snapshot_sent is None
                self._send_snapshot(worker, now)
        self._divergence.awaiting(self.state.epoch, sum(w.awaiting_snapshot for w in self._workers.values()))
        self._maybe_finish_snapshot_phase(now)

    def _send_snapshot(self, worker: Member, now: float) -> None:
        """Send the current SNAPSHOT unless an older one is unanswered (a late joiner's; this one follows)."""
        if worker.snapshot_sent is not None:
            return
        state = self.state
        worker.snapshot_sent, worker.snapshot_sent_at = state.epoch, now
        worker.connection.send(Snapshot(epoch=state.epoch, vector=full_precision(state.snapshot)), now)

    def _snapshot_gradient(self, worker_id: int, worker: Member, event: SnapshotGradient, now: float) -> None:
        worker.snapshot_sent = None
        refusal = self.guard.refuse_report(event)
        self._divergence.report(event.epoch, self.state.epoch, refusal)
        if refusal is not None:
            return self._remove(worker_id, refusal, now)
        if event.epoch != self.state.epoch:
            # The answer to an older epoch's SNAPSHOT: its sums are out of date.
            if worker.joined and self.phase in (Phase.SNAPSHOT, Phase.INNER):
                self._send_snapshot(worker, now)
            return
        if self.phase is Phase.INNER:
            worker.awaiting_snapshot = False
            # A late joiner now holds x_snap: bring it into the inner loop.
            if self.state.spec.needs_full_gradient:
                worker.connection.send(
                    FullGradient(epoch=self.state.epoch, vector=full_precision(self.state.full_gradient)),
                    now,
                )
            self._send_model(worker, now)
            return
        if self.phase is not Phase.SNAPSHOT or not worker.joined:
            return
        # Awaited, or owing an earlier SNAPSHOT at the phase's start and in time after all.
        worker.active, worker.awaiting_snapshot = True, False
        worker.report = event
        self.deadlines.report_accepted(now)
        self._maybe_finish_snapshot_phase(now)

    def _maybe_finish_snapshot_phase(self, now: float) -> None:
        if self.phase is not Phase.SNAPSHOT or any(w.awaiting_snapshot for w in self._workers.values()):
            return
        # The reports are checked together (the guard compares them), then summed.
        reports = {wid: w.report for wid, w in self._workers.items() if w.joined and w.report is not None}
        refusals = self.guard.outliers(reports)
        if (failure := self._divergence.reports(refusals, reports, self.state.epoch, now)) is not None:
            return self._finish(now, failure)
        self._judged = True  # (each removal judged the reports left anew: the second refusal was lost)
        try:
            for worker_id, refusal in refusals.items():
                del reports[worker_id]
                self._workers[worker_id].report = None
                self._remove(worker_id, refusal, now)
        finally:
            self._judged = False
        active = [w for w in self._workers.values() if w.active and w.joined]
        if not active or not reports:
            # Every worker left during the phase: wait for workers to join again (unless x_snap overflows).
            if (failure := self._divergence.unreported(self.state.epoch, now)) is not None:
                return self._finish(now, failure)
            if any(w.joined and w.snapshot_sent is not None for w in self._workers.values()):
                return  # one owes an earlier SNAPSHOT: on its answer it gets this one, then is awaited
            self.phase = Phase.JOINING
            self.deadlines.waiting_for_workers(now)
            return
        self.deadlines.snapshot_phase_finished()
        self.guard.phase_finished(reports)
        self._gradient_sum[:] = 0.0
        for report in reports.values():
            self._gradient_sum += report.vector.values
        samples = sum(r.samples for r in reports.values())
        state = self.state
        if self._resuming:
            # A mid-epoch restart: the workers have x_snap again; x, g_snap and counters are the checkpoint's.
            self._resuming = False
            self._start_inner_loop(active, now)
            return
        loss = state.finish_snapshot_phase(
            self._gradient_sum, math.fsum(r.loss for r in reports.values()), samples
        )
        self.trace.append(
            EpochRecord(
                epoch=state.epoch,
                loss=loss,
                accuracy=sum(r.correct for r in reports.values()) / samples,
                bytes_total=self._bytes_at_snapshot,
                time=now - self._started,
                version=state.version,
                samples=samples,
            )
        )
        failure = Divergence.loss(state.epoch, loss, self.trace[0].loss)
        if final := state.epoch >= self.config.epochs:  # (then also: did it train? guard.py)
            failure = failure or self.guard.untrained(state.epoch, loss, self.trace[0].loss)
        if failure is not None:
            return self._finish(now, failure)
        if final:
            return self._finish(now)
        self._start_inner_loop(active, now)

    def _start_inner_loop(self, active: list[Member], now: float) -> None:
        state = self.state
        self.phase = Phase.INNER
        if state.spec.needs_full_gradient:
            full = FullGradient(epoch=state.epoch, vector=full_precision(state.full_gradient))
            for worker in active:
                worker.connection.send(full, now)
        for worker in active:
            self._send_model(worker, now)

    def _send_model(self, worker: Member, now: float) -> None:
        state = self.state
        if self._coding is not None:  # an adaptive run: Rice-code while it is the faster (adaptive.py)
            worker.connection.dense_rice = self._coding.rice
        vector, relative = state.model_message()
        # What the worker rebuilds equals x_snap (so a ZERO answer is plausible, guard.py).
        worker.model_equals_snapshot = isinstance(vector, EqualsSnapshot) or (
            isinstance(vector, RawVector)
            and np.array_equal(vector.values, np.zeros_like(vector.values) if relative else state.snapshot)
        )
        message = ModelMessage(epoch=state.epoch, version=state.version, vector=vector, relative=relative)
        worker.connection.send(message, now)
        worker.model_sent(worker.connection.last_sent_encoding)  # (what its answer will be coded as)

    def _gradient(self, worker_id: int, worker: Member, event: Gradient, now: float) -> None:
        state = self.state
        refusal = self.guard.refuse_gradient(event.vector, model_equals_snapshot=worker.model_equals_snapshot)
        if refusal is not None:
            # Not what this run's workers send: refused, and the worker with it.
            self.dropped["refused"] += 1
            self._remove(worker_id, refusal, now)
            return
        if self.phase is not Phase.INNER or event.epoch != state.epoch:
            self.dropped["late"] += 1
            return
        outcome = state.apply(
            event.vector, event.version, max_norm=self.guard.max_update_norm(state.full_gradient)
        )
        if outcome.applied:
            self.guard.applied(outcome.norm, worker_id)
            if self._coding is not None:
                self._coding.applied(now, rice=worker.sent_rice, workers=self.live_workers)
            for member in self._workers.values():
                member.refused = 0
            self._divergence.applied()
            self.applied_staleness[outcome.staleness] += 1
            if self._record_every and state.version % self._record_every == 0 and not state.epoch_done:
                self._record(state.x, self.traffic(), now)
        else:
            self.dropped[outcome.reason] += 1
            if outcome.reason == "outlier":
                worker.refused += 1
                refused = [w.refused for w in self._workers.values() if w.joined]
                verdict = self._divergence.outlier(refused, state.version, now)
                if isinstance(verdict, Refusal):  # a lone worker's (guard.LONE_OUTLIER)
                    return self._remove(worker_id, verdict, now)
                if verdict is not None:
                    return self._finish(now, verdict)
                # An ERROR about this GRADIENT; the session goes on (wire-format.md 7.10).
                reason = f"update norm {outcome.norm:.3g} is out of line with the recent ones"
                code = int(ErrorCode.INVALID_PAYLOAD)
                error = ErrorMessage(code=code, epoch=event.epoch, version=event.version, reason=reason)
                worker.connection.send(error, now)
            elif outcome.reason == "overflow":
                self._remove(worker_id, OVERFLOW, now)  # (a MODEL could not carry the model: guard.py)
                failure = self._divergence.overflow(self.live_workers, self.expected_workers, state.version)
                if failure is not None and self.phase is Phase.INNER:
                    self._finish(now, failure)
                return
        if state.epoch_done:
            state.end_epoch()
            self._start_snapshot_phase(now)
        else:
            self._send_model(worker, now)

    def _record(self, model: npt.NDArray[np.floating[Any]], traffic: Traffic, now: float) -> None:
        state, records = self.state, self.ledger.records
        if records and (records[-1].version, records[-1].epoch) == (state.version, state.epoch):
            return  # (a snapshot phase repeated from its checkpoint: recorded before)
        copy, seconds, by_kind = np.array(model, dtype=np.float64), now - self._started, traffic.by_kind()
        records.append(ModelRecord(state.version, state.epoch, traffic.total(), seconds, copy, by_kind))

    def _finish(self, now: float, failure: str | None = None) -> None:
        self.phase, self.finished_at, self.failure = Phase.DONE, now, failure
        self.deadlines.stopped()
        # A verdict (diverged, untrained) ends sessions normally: no master comes back for the run (an audit:
        # GOING_AWAY had workers retry for --retry-for).  One that waited for workers in vain can be resumed.
        code = ErrorCode.GOING_AWAY if failure and self._waited_in is not None else ErrorCode.NO_ERROR
        for worker in self._workers.values():
            worker.connection.close(now, code, failure[:200] if failure else TRAINING_COMPLETE)

    def _drop_worker(self, worker_id: int, now: float, cause: Refusal | int | None = None) -> None:
        if (worker := self._workers.get(worker_id)) is None:
            return
        was_member = worker.joined
        if was_member:  # (cause: why the master removed it; a back-off if for what it sent: admission.py)
            self._admission.departed(worker, cause, now)
        worker.joined = worker.active = worker.awaiting_snapshot = False
        worker.report = worker.snapshot_sent = None
        if worker.connection.state is not ConnectionState.CLOSED:
            worker.connection.close(now, ErrorCode.GOING_AWAY, "worker removed")
        if was_member and self.phase is Phase.SNAPSHOT and not (self._shut_down or self._judged):
            self._maybe_finish_snapshot_phase(now)
        elif was_member and self.phase is Phase.INNER and self.live_workers == 0 and not self._shut_down:
            self.deadlines.waiting_for_workers(now)  # --join-timeout applies again

    # -- checkpoints --------------------------------------------------------------

    def checkpoint(self, now: float) -> Checkpoint:
        """Everything needed to continue this run later (:mod:`aiodq.protocol.recovery`)."""
        return recovery.capture(
            self.config,
            self.state,
            self.ledger,
            self.traffic(),
            workers=self.expected_workers,
            # A resumed run that has not reached its inner loop again is still mid-epoch.
            phase=Phase.INNER.value if self._resuming else (self._waited_in or self.phase).value,
            elapsed=now - self._started,
            failure=self.failure,
            guard=self.guard.memory(),
        )

    def restore(self, checkpoint: Checkpoint, now: float) -> None:
        """Continue from ``checkpoint``: call before any worker connects.

        Losing only the work since the checkpoint: a checkpoint taken in the inner loop resumes that epoch
        where it stood, after the workers have been sent x_snap again; one taken in a snapshot phase repeats
        that phase; one taken at the run's end leaves it done, as it ended.

        Raises:
            CheckpointError: if the checkpoint is of another configuration, incomplete or damaged.
        """
        if self._workers:
            raise CheckpointError("restore() must come before any worker connects")
        resumed = recovery.restore(checkpoint, self.config, self.state)
        self.ledger, self._started, self._resuming = resumed.ledger, now - resumed.elapsed, resumed.mid_epoch
        self.guard.remember(*resumed.guard)
        if resumed.finished:  # as it ended, its own M too (a review read this master's in result.json)
            self.expected_workers = checkpoint.meta.get("workers", self.expected_workers)
            self._finish(now, resumed.failure)

    # -- results ----------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """The run's figures: trace, traffic, staleness and drops, as a JSON-ready dict."""
        return {
            "config": self.config.to_params(),
            "dim": self.dim,
            "workers": self.expected_workers,
            "updates_per_epoch": self.state.updates_per_epoch,
            "version": self.state.version,
            "traffic": self.traffic().as_dict(),
            "failure": self.failure,
            **({"adaptive_coding": self._coding.summary()} if self._coding is not None else {}),
            **self.ledger.report(self.config.tau),
        }
