"""A worker's side of a training session, sans I/O: connection plus computation.

:class:`WorkerSession` wraps a :class:`~aiodq.protocol.connection.WorkerConnection` and
a :class:`~aiodq.protocol.algorithms.WorkerState`: it answers SNAPSHOT with the sums over
its shard, MODEL with a quantized gradient, and stops at CLOSE.  The asyncio
worker (and the in-memory simulation) feed it bytes and send what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

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
from ..codec.vectors import full_precision
from ..config import ConnectionConfig
from ..errors import DataError, ErrorCode, NonFiniteError, RemoteProtocolError, raised_at
from .adaptive import answer_coding
from .algorithms import TrainConfig, WorkerState
from .connection import ConnectionState, WorkerConnection
from .dataset import as_samples, class_count, labels_for, other_data
from .objectives import (
    BUILT_IN,
    MLP,
    Objective,
    SoftmaxRegression,
    check_objective,
    fixed_fingerprint,
    objective_name,
)
from .start import check_contract

__all__ = ["ANSWERS_WAITING", "Work", "WorkerSession"]

#: Answers (SNAPSHOT_GRADIENT, GRADIENT) that may wait to be taken before a SNAPSHOT or MODEL waits too.
ANSWERS_WAITING = 4


class Work:
    """A computation a session with ``offload`` owes: :meth:`run` it anywhere, then ``complete`` the session.

    It touches the worker's state and objective only, never the connection: while it runs, the
    caller may send HEARTBEATs on the connection, but hands the session no received bytes.
    """

    __slots__ = ("_compute", "dropped", "error", "event", "result")

    def __init__(self, event: Snapshot | ModelMessage | None, compute: Callable[[], Any]) -> None:
        #: The message it answers (None: the next step's preparation, which answers nothing).
        self.event = event
        self._compute = compute
        self.result: Any = None
        self.error: BaseException | None = None
        #: Set when the session dropped it (the stream ended): :meth:`run` then computes nothing, if it
        #: has not begun (a review: a step queued behind a preparation ran in full, its master gone).
        self.dropped = False

    def run(self) -> None:
        """Compute; an exception is kept (:attr:`error`), for :meth:`WorkerSession.complete` to report.

        Any exception: one that is not an :class:`Exception` (``SystemExit``, say) is raised again by
        :meth:`WorkerSession.complete`, as it leaves an in-place computation (a review: on a thread it
        was lost, and the session ended on a TypeError of aiodq's own).
        """
        if self.dropped:
            return
        try:
            self.result = self._compute()
        except BaseException as exc:
            self.error = exc


def _more_classes(objective: Objective, dim: int) -> bool:
    """Whether the built-in softmax or MLP ``objective`` with more classes, else alike, has ``dim``."""
    layers: tuple[int, ...] = tuple(getattr(objective, "layers", ()))
    if isinstance(objective, SoftmaxRegression):  # d = (inputs + bias) C
        width = objective.inputs + int(objective.bias)
    elif isinstance(objective, MLP) and len(layers) >= 2:  # d = (inputs + 1) h + (h + 1) C
        width = layers[-2] + 1
    else:
        return False
    return dim > objective.dim and (dim - objective.dim) % width == 0


class WorkerSession:
    """One worker: its shard, its connection, and the algorithm's worker half."""

    def __init__(
        self,
        features: Any = None,
        labels: Any = None,
        *,
        objective: Objective | None = None,
        model: str | None = None,
        name: str = "",
        classes: int | None = None,
        label_values: Any = None,
        shard: tuple[int, int] | None = None,
        shard_seed: int | None = None,
        data_fingerprint: str | None = None,
        connection_config: ConnectionConfig | None = None,
        now: float = 0.0,
        offload: bool = False,
    ) -> None:
        """A worker with its samples, or with its own objective (which holds them).

        With ``offload``, the objective's computations (a SNAPSHOT's sums over the shard, a
        MODEL's gradient, :meth:`prepare`) are not done inside :meth:`receive_data`: they wait as
        :attr:`work` for the caller to run where it likes (the asyncio worker: on another thread,
        heartbeating meanwhile), and no further message is handled until :meth:`complete`.

        ``features`` and ``labels`` serve a built-in model, the one CONFIG names; an
        ``objective`` is trained whatever CONFIG names, if its dimension (and name) fit.
        ``classes`` and ``label_values`` (the distinct labels) describe the whole dataset,
        when these samples are one share of it: every worker then maps labels alike
        (:func:`~aiodq.protocol.dataset.labels_for`).  ``shard`` (index, count) is claimed in
        HELLO: the master refuses a shard another worker holds, or a count other than its M.
        ``shard_seed``: the seed the shard was split with (:func:`~aiodq.protocol.dataset.shard`);
        a CONFIG of another seed is refused (INVALID_CONFIG), as the shards of such workers
        overlap and leave samples out.  ``data_fingerprint``: that of the dataset the shard was
        cut from (:meth:`~aiodq.protocol.dataset.Dataset.fingerprint`); a CONFIG whose ``data``
        parameter names another is refused (INVALID_CONFIG).  None, or a CONFIG without it: no check.
        ``model``: the model ``objective`` is (a built-in's name, or the ``MODULE:NAME`` it was
        loaded from), for one without a ``name`` of its own: a CONFIG naming another model is
        refused (INVALID_CONFIG), even where the dimensions agree; with ``features`` and ``labels``,
        the built-in model this worker is for, and a CONFIG naming another is refused likewise.

        Raises:
            TypeError: for data or an objective of an unsupported type, before anything is sent.
            ValueError: for features and labels of mismatched shapes, or an objective whose
                ``loss_grad`` breaks its contract (means, not sums, say:
                :func:`~aiodq.protocol.start.check_contract`).
        """
        self.objective, self.model = objective, model
        if objective is not None:
            if features is not None or labels is not None:
                raise TypeError("give the worker either features and labels or an objective, not both")
            check_objective(objective)
            # Its loss_grad's contract, as the master checks its own (a trial: a worker objective of
            # means reported a loss 200 times too small, and the run ended ok at x_0).
            check_contract(objective)
            self.features, self.labels = None, None
            self.classes = classes
        else:
            self.features, self.labels = as_samples(features, labels)
            self.classes = classes
        self.label_values = None if label_values is None else np.unique(np.asarray(label_values))
        self.name = name
        self.shard, self.shard_seed, self.data_fingerprint = shard, shard_seed, data_fingerprint
        self.connection = WorkerConnection(connection_config, now=now)
        #: The run configuration, once CONFIG has arrived.
        self.config: TrainConfig | None = None
        #: The worker id the master gave.
        self.worker_id: int | None = None
        self.state: WorkerState | None = None
        #: Why the session ended: ``(code, reason)``, once it has.
        self.ended: tuple[int, str] | None = None
        #: Gradients sent.
        self.gradients_sent = 0
        #: True if this worker ended the session itself because it cannot go on (a configuration
        #: it cannot train, or its computation failed): reconnecting would not help.
        self.failed = False
        # True after sending a GRADIENT or SNAPSHOT_GRADIENT: a MODEL may follow (prepare).
        self._may_prepare = False
        self._at_end = False
        self._held: Event | None = None  # a SNAPSHOT or MODEL behind answers not yet taken
        self._answers = self._answers_taken = 0  # SNAPSHOT_GRADIENTs and GRADIENTs queued, and taken
        self.offload = offload
        #: The computation owed (with ``offload``): run it, then call :meth:`complete`.
        self.work: Work | None = None
        settings = connection_config or ConnectionConfig()
        self.connection_limits = settings.limits
        # It announces what its connection decodes (wire-format.md 6.2-5): all, unless configured.
        self.connection.send(
            Hello(name=name, shard=shard, encodings=settings.encodings or ALL_ENCODINGS), now
        )

    @property
    def closed(self) -> bool:
        """True once the session is over."""
        return self.connection.state is ConnectionState.CLOSED

    def receive_data(self, data: bytes, now: float) -> None:
        """Bytes from the master (``b""`` at end of stream); handle every whole message.

        But one: a SNAPSHOT or MODEL that comes while :data:`ANSWERS_WAITING` answers wait
        to be taken (:meth:`data_to_send`) waits (:attr:`pending`) until they have been, and
        :meth:`resume` handles it and what came after it.  An honest master sends at most a
        MODEL and the next epoch's SNAPSHOT before an answer reaches it; one read of 18,000
        MODELs of 12 bytes queued 18,000 gradients, 1.4 GB at d = 12,602 (an attack review).
        """
        self.connection.receive_data(data, now)
        if not data:
            self._at_end = True  # (the messages left are handled, none answered: no answer could leave)
            # Nor is owed work done: what follows it (the master's CLOSE, say) must be read to say why the
            # session ended (a review: behind a MODEL's owed work, a CLOSE went unread and `ended` None).
            if self.work is not None:
                self.work.dropped = True
            self.work = None
        self._take_events(now)

    def data_to_send(self) -> bytes:
        """Bytes for the master; then a SNAPSHOT or MODEL that waits (:attr:`pending`) may be handled."""
        self._answers_taken = self._answers
        return self.connection.data_to_send()

    @property
    def pending(self) -> bool:
        """True while a received SNAPSHOT or MODEL waits behind answers not yet taken: see :meth:`resume`."""
        return self._held is not None

    def resume(self, now: float) -> None:
        """Handle the message that waited (:attr:`pending`) and those after it: after :meth:`data_to_send`."""
        self._take_events(now)

    def complete(self, now: float) -> None:
        """After :attr:`work` has run: send its answer (or end the session as its failure says), go on."""
        work, self.work = self.work, None
        if work is None:
            return
        if work.error is not None and not isinstance(work.error, Exception):
            raise work.error
        state, event = self.state, work.event
        if event is not None and state is not None and self.connection.state is ConnectionState.READY:
            if work.error is not None:
                self._failed_answer(event, work.error, now)
            else:
                try:
                    self._reply(state, event, work.result, now)
                except Exception as exc:
                    self._failed_answer(event, exc, now)
        self._take_events(now)

    def _take_events(self, now: float) -> None:
        while self.work is None:
            event, self._held = self._held, None
            if event is None:
                try:
                    event = self.connection.next_event()
                except RemoteProtocolError as exc:
                    self.ended = self.ended or (int(exc.code), str(exc))
                    return
                if event is None:
                    return
            waiting = self._answers - self._answers_taken
            # (Not once the stream ended or the connection closed: nothing is answered then, and what
            # follows, the end's reason, must be read: a review's timer left `ended` None.)
            answerable = not self._at_end and not self.closed
            if waiting >= ANSWERS_WAITING and isinstance(event, Snapshot | ModelMessage) and answerable:
                self._held = event
                return
            self._handle(event, now)

    def prepare(self, now: float) -> None:
        """Do the next gradient's model-free work; call it after sending, while waiting for the MODEL.

        The mini-batch and its gradient at x_snap do not depend on the model
        (:meth:`~aiodq.protocol.algorithms.WorkerState.prepare`; only the mini-batch for an
        objective with ``grad_difference``, which takes both gradients after it), so computing them
        here takes them off the path from a MODEL to its GRADIENT without changing any
        value.  Only after this side sent a GRADIENT or a SNAPSHOT_GRADIENT, while the
        connection is open; once per send.  The work is done ahead of time, not owed: if
        the objective fails here, nothing is sent and nothing is kept, and the next MODEL
        computes it again (failing there as it would have without preparing).
        """
        state = self.state
        if not self._may_prepare or state is None or self.failed or self.work is not None:
            return  # (with work owed, a MODEL's say, that step computes its own half)
        self._may_prepare = False
        if self.connection.state is not ConnectionState.READY:
            return
        if self.offload:
            self.work = Work(None, state.prepare)  # (its failure: retried, and reported, by the next MODEL)
            return
        try:
            state.prepare()
        except Exception:  # retried, and reported, by the next MODEL's own step
            return

    def handle_timer(self, now: float) -> None:
        """Run the connection's timers."""
        self.connection.handle_timer(now)
        self._take_events(now)

    def _handle(self, event: Event, now: float) -> None:
        if isinstance(event, Welcome):
            self.worker_id = event.worker_id
        elif isinstance(event, ConfigMessage):
            self._configure(event, now)
        elif isinstance(event, Snapshot | FullGradient | ModelMessage):
            if self.state is None or self.connection.state is not ConnectionState.READY or self._at_end:
                return  # it crossed this side's CLOSE, or the stream ended: no answer is owed (8.1-2)
            state = self.state
            if self.offload and isinstance(event, Snapshot | ModelMessage):
                self.work = Work(event, lambda: self._compute(state, event))
                return
            try:
                self._reply(state, event, self._compute(state, event), now)
            except Exception as exc:
                self._failed_answer(event, exc, now)
        elif isinstance(event, Close):
            if self.ended is None:  # (the answer to this side's own CLOSE does not say why it ended)
                self.ended = (event.code, event.reason)
        elif isinstance(event, ConnectionClosed) and self.ended is None:
            self.ended = (
                event.code if event.code is not None else int(ErrorCode.PROTOCOL_ERROR),
                event.reason or "stream ended",  # (a local timeout's own reason: not "TIMEOUT: stream ended")
            )
        elif isinstance(event, ErrorMessage):
            pass  # a rejected gradient: the master sends a fresh model with it

    def _failed_answer(self, event: Event, exc: Exception, now: float) -> None:
        first_line = (str(exc).splitlines() or [""])[0]
        what = type(event).__name__.removesuffix("Message").upper()
        # (aiodq's check of the objective's values names the objective; the check's own line says nothing
        # more: a newcomer trial read "(at aiodq/protocol/algorithms.py:467)" as aiodq's fault)
        where = "" if isinstance(exc, NonFiniteError) else raised_at(exc)
        self._give_up(now, f"cannot answer {what}: {type(exc).__name__}: {first_line}{where}")

    @staticmethod
    def _compute(state: WorkerState, event: Snapshot | FullGradient | ModelMessage) -> Any:
        """The objective's part of an answer: touches ``state`` only (any thread, with ``offload``)."""
        if isinstance(event, Snapshot):
            return state.snapshot_phase(event.vector.values)
        if isinstance(event, FullGradient):
            state.set_full_gradient(event.vector.values)
            return None
        return state.gradient_message(event.vector, event.relative)

    def _reply(
        self, state: WorkerState, event: Snapshot | FullGradient | ModelMessage, result: Any, now: float
    ) -> None:
        """Send the answer :meth:`_compute` gave ``result`` for (none to a FULL_GRADIENT)."""
        if isinstance(event, Snapshot):
            loss, gradient, correct = result
            reply = SnapshotGradient(
                epoch=event.epoch,
                samples=state.samples,
                loss=loss,
                correct=correct,
                vector=full_precision(gradient),
            )
            self.connection.send(reply, now)
            self._answers += 1
            self._may_prepare = True
        elif isinstance(event, ModelMessage):
            vector = result
            if state.config.adaptive_coding:  # the master chose the coding by measured pace: answer in kind
                received = self.connection.last_received_encoding
                self.connection.dense_rice = answer_coding(received, self.connection.dense_rice)
            self.connection.send(Gradient(epoch=event.epoch, version=event.version, vector=vector), now)
            self.gradients_sent += 1
            self._answers += 1
            self._may_prepare = True

    def _give_up(self, now: float, reason: str, code: ErrorCode = ErrorCode.INTERNAL_ERROR) -> None:
        """Stop: this worker cannot go on; CLOSE with ``code`` and why (retrying would not help).

        Its computation failed (INTERNAL_ERROR), or it refuses the run's CONFIG.
        """
        self.failed = True
        limit = self.connection_limits.max_reason_bytes
        text = reason.encode()[:limit].decode("utf-8", errors="ignore")
        self.ended = (int(code), reason)
        self.connection.close(now, code, text)

    def _objective_for(self, config: TrainConfig) -> Objective:
        """The objective this worker trains for the run CONFIG describes.

        Raises:
            ValueError: if the worker cannot train that model; the text says why.
        """
        if self.objective is not None:
            own = objective_name(self.objective) or self.model
            if own is not None and own != config.model:
                raise ValueError(f"the master trains {config.model!r}, this worker's objective is {own!r}")
            return self.objective
        if self.model is not None and self.model != config.model:  # (an operator's worker trained it anyway)
            raise ValueError(
                f"the master trains {config.model!r}, this worker was started for {self.model!r}"
            )
        if config.model not in BUILT_IN:
            # Never import code that the network names: the worker must be given it.
            raise ValueError(
                f"the master trains the model {config.model!r}: start this worker with it "
                f"(aiodq worker --model {config.model}; in Python, run_worker(objective=..., "
                f"model={config.model!r}))"
            )
        assert self.features is not None and self.labels is not None
        try:
            labels, _ = labels_for(config.model, self.labels, self.label_values)
        except DataError as exc:
            raise ValueError(str(exc)) from exc
        # The number of classes of the whole dataset, from its distinct labels where given.
        every = labels if self.label_values is None else labels_for(config.model, self.label_values)[0]
        classes = self.classes or class_count(every)
        return config.built_in(self.features, labels, classes=classes)

    def _configure(self, event: ConfigMessage, now: float) -> None:
        try:
            params = dict(event.params)
            # The algorithm is named twice, in CONFIG's field and its parameters: they must agree (an attack
            # review: the field was ignored, and "frobnicate" trained AsyLPG).
            if params.setdefault("algorithm", event.algorithm) != event.algorithm:
                named = params["algorithm"]
                raise ValueError(
                    f"the CONFIG names the algorithm {event.algorithm!r}, its parameters {named!r}"
                )
            config = TrainConfig.from_params(params)
            data, own = event.params.get("data"), self.data_fingerprint
            if own is not None and isinstance(data, str) and other_data(own, data):
                raise ValueError(
                    f"this worker's data (fingerprint {own}) is not the master's ({data}): start it with "
                    "the data the master trains on (--data)"
                )
            if self.shard is not None and self.shard_seed is not None and config.seed != self.shard_seed:
                index, count = self.shard
                split = f"this worker's shard {index}/{count} was split with seed {self.shard_seed}"
                raise ValueError(
                    f"{split}, the master's run has seed {config.seed}: its samples would overlap another "
                    f"worker's (start the worker with --seed {config.seed})"
                )
            if self.objective is None and isinstance(theirs := params.get("objective"), str):
                raise ValueError(  # (a review: it trained the built-in model for a master given another)
                    f"the master trains its own objective ({theirs}), not the built-in {config.model} that "
                    "CONFIG names: give this worker the same (run_worker(objective=...))"
                )
            objective = self._objective_for(config)
            if objective.dim != event.dim:  # (first: the fingerprint holds the shapes, and said less)
                own = config.model
                if self.objective is not None:  # its own: named by itself, or by its type
                    own = objective_name(self.objective) or type(self.objective).__name__
                # (A newcomer's audit: a shard without the highest class built a smaller softmax.)
                counted = self.objective is None and self.classes is None and self.label_values is None
                hint = (
                    " (this worker counted the classes in its own labels: give run_worker the whole "
                    "dataset's, classes= or label_values=)"
                    if counted and _more_classes(objective, event.dim)
                    else ""
                )
                raise ValueError(
                    f"this worker's model {own} has {objective.dim} parameters, "
                    f"the master's {config.model} has {event.dim}{hint}"
                )
            fixed, own_fixed = event.params.get("fixed"), fixed_fingerprint(objective)
            if isinstance(fixed, str) and own_fixed is not None and own_fixed != fixed:
                # (A trial: frozen layers drawn apart in each process trained to 0.52 test accuracy, exit 0.)
                raise ValueError(
                    f"this worker's model holds other values than the master's where x does not reach "
                    f"(layers, loss, frozen parameters or buffers: fingerprint {own_fixed}, the master's "
                    f"{fixed}): build it alike in every process (seed torch, or load the same weights; "
                    "buffers computed from a process's own samples, or with another number of threads, "
                    "differ too: compute them once, save them and load them in every process)"
                )
            state = WorkerState(config, objective, self.worker_id or 0)
        except ValueError as exc:
            self._give_up(now, str(exc), ErrorCode.INVALID_CONFIG)
            return
        # wire-format.md 6.2-7: refused now, not on the first vector the master cannot decode.
        if names := config.spec.unannounced(self.connection.peer_encodings, worker=True):
            reason = f"this run ({config.algorithm}) has workers send {names}, not announced by the master"
            self._give_up(now, reason, ErrorCode.UNSUPPORTED_ENCODING)
            return
        self.config = config
        self.state = state
        self.connection.aligned_codes = config.aligned_codes
        # A master of an earlier version sends no "sparse_gradients" and takes dense codes only.
        self.connection.sparse_gradients = config.sparse_gradients and "sparse_gradients" in event.params
