"""A worker's session against a master that misbehaves (sans I/O): what the worker answers, and how it ends.

The master here is a list of frames written by hand with the codec, as an attacker in the
master's place would write them.
"""

from __future__ import annotations

import struct

import numpy as np

from aiodq.codec.events import Close, ConfigMessage, FullGradient, ModelMessage, Snapshot, Welcome
from aiodq.codec.messages import encode_message
from aiodq.codec.registry import Encoding, MessageType
from aiodq.codec.vectors import RawVector, ZeroVector
from aiodq.data import load_bundled_a9a
from aiodq.errors import ErrorCode
from aiodq.protocol.algorithms import TrainConfig
from aiodq.protocol.session import ANSWERS_WAITING, WorkerSession

A9A = load_bundled_a9a()
D = A9A.features.shape[1]


def frame_types(data: bytes) -> list[MessageType]:
    """The message types of the whole frames in ``data`` (wire-format.md 4: 7-byte headers)."""
    types, at = [], 0
    while at < len(data):
        _, kind, _, length = struct.unpack_from("<BBBI", data, at)
        types.append(MessageType(kind))
        at += 7 + length
    assert at == len(data)
    return types


def configured(session: WorkerSession, config: TrainConfig | None = None) -> bytes:
    """WELCOME and CONFIG for ``session``: the bytes of a master that admitted it."""
    params = (config or TrainConfig()).to_params()
    return encode_message(Welcome(version=1, worker_id=0)) + encode_message(
        ConfigMessage(dim=D, algorithm=str(params["algorithm"]), params=params)
    )


def test_messages_behind_answers_not_taken_wait_until_they_are() -> None:
    """An attack review: one read of 18,000 MODELs of 12 bytes queued 18,000 gradients (1.4 GB at d =
    12,602) before any was written.  At most ANSWERS_WAITING answers now wait to be taken."""
    session = WorkerSession(A9A.features[:200], A9A.labels[:200], name="w")
    assert frame_types(session.data_to_send()) == [MessageType.HELLO]
    models = 50
    burst = configured(session) + encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(D))))
    burst += encode_message(FullGradient(epoch=0, vector=RawVector(np.zeros(D))))
    burst += b"".join(
        encode_message(ModelMessage(epoch=0, version=v, vector=ZeroVector(D), relative=False))
        for v in range(models)
    )
    session.receive_data(burst, 0.0)
    sent = [frame_types(session.data_to_send())]
    while session.pending:
        session.resume(0.0)
        sent.append(frame_types(session.data_to_send()))
    # The SNAPSHOT's answer and the first MODELs', then ANSWERS_WAITING GRADIENTs at a time: none lost.
    first = ANSWERS_WAITING - 1
    expected = [[MessageType.SNAPSHOT_GRADIENT] + [MessageType.GRADIENT] * first]
    left = models - first
    expected += [[MessageType.GRADIENT] * ANSWERS_WAITING] * (left // ANSWERS_WAITING)
    expected += [[MessageType.GRADIENT] * (left % ANSWERS_WAITING)] if left % ANSWERS_WAITING else []
    assert sent == expected, sent
    assert session.gradients_sent == models and not session.closed


def test_until_the_answers_are_taken_more_bytes_compute_nothing() -> None:
    """Later bytes, and the timers, queue behind the MODEL that waits; taking the answers lets it go."""
    session = WorkerSession(A9A.features[:200], A9A.labels[:200])
    session.data_to_send()
    snapshot = encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(D))))
    full = encode_message(FullGradient(epoch=0, vector=RawVector(np.zeros(D))))
    model = encode_message(ModelMessage(epoch=0, version=0, vector=ZeroVector(D), relative=False))
    session.receive_data(configured(session) + snapshot + full + model * ANSWERS_WAITING, 0.0)
    assert session.pending and session.gradients_sent == ANSWERS_WAITING - 1
    session.receive_data(model, 1.0)  # the answers not taken: nothing more is computed
    session.handle_timer(1.0)  # (nor by the timers)
    assert session.pending and session.gradients_sent == ANSWERS_WAITING - 1
    session.data_to_send()
    session.receive_data(b"\x01", 2.0)  # taken: bytes handle the MODELs that waited (the byte: a frame begun)
    assert session.gradients_sent == ANSWERS_WAITING + 1 and not session.pending


def test_an_honest_master_s_messages_are_all_handled_at_once() -> None:
    """A MODEL and the CLOSE after it in one read (the run's end): both handled, nothing waits."""
    session = WorkerSession(A9A.features[:200], A9A.labels[:200])
    session.data_to_send()
    snapshot = encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(D))))
    session.receive_data(configured(session) + snapshot, 0.0)
    assert frame_types(session.data_to_send()) == [MessageType.SNAPSHOT_GRADIENT]
    full = encode_message(FullGradient(epoch=0, vector=RawVector(np.zeros(D))))
    model = encode_message(ModelMessage(epoch=0, version=0, vector=ZeroVector(D), relative=False))
    session.receive_data(full + model + encode_message(Close(code=0, reason="training complete")), 1.0)
    assert not session.pending and session.gradients_sent == 1
    assert session.ended == (0, "training complete")
    assert frame_types(session.data_to_send()) == [MessageType.GRADIENT, MessageType.CLOSE]


def test_messages_left_at_the_stream_s_end_are_not_answered() -> None:
    """At the end of the stream no answer can leave: MODELs left in the buffer compute nothing."""
    session = WorkerSession(A9A.features[:200], A9A.labels[:200])
    session.data_to_send()
    snapshot = encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(D))))
    full = encode_message(FullGradient(epoch=0, vector=RawVector(np.zeros(D))))
    models = b"".join(
        encode_message(ModelMessage(epoch=0, version=v, vector=ZeroVector(D), relative=False))
        for v in range(20)
    )
    session.receive_data(configured(session) + snapshot + full + models, 0.0)
    assert session.pending and session.gradients_sent == ANSWERS_WAITING - 1
    session.receive_data(b"", 1.0)
    assert session.gradients_sent == ANSWERS_WAITING - 1 and not session.pending


def test_a_config_whose_algorithm_field_and_parameters_disagree_is_refused() -> None:
    """An attack review: CONFIG's own algorithm field was ignored ("qsvrg", "frobnicate": AsyLPG trained)."""
    for field, params in (("qsvrg", TrainConfig().to_params()), ("frobnicate", {})):
        session = WorkerSession(A9A.features[:200], A9A.labels[:200])
        session.data_to_send()
        welcome = encode_message(Welcome(version=1, worker_id=0))
        session.receive_data(
            welcome + encode_message(ConfigMessage(dim=D, algorithm=field, params=params)), 0.0
        )
        assert session.ended is not None and session.ended[0] == ErrorCode.INVALID_CONFIG, session.ended
        assert session.failed and session.config is None
        assert field in session.ended[1], session.ended
    # Parameters without an algorithm take the field's.
    session = WorkerSession(A9A.features[:200], A9A.labels[:200])
    session.data_to_send()
    params = {k: v for k, v in TrainConfig(algorithm="asyfpg").to_params().items() if k != "algorithm"}
    session.receive_data(
        welcome + encode_message(ConfigMessage(dim=D, algorithm="asyfpg", params=params)), 0.0
    )
    assert session.ended is None and session.config is not None and session.config.algorithm == "asyfpg"


def test_the_worker_s_own_refusal_is_not_replaced_by_what_follows_it() -> None:
    """An attack review: a refused CONFIG, then SNAPSHOTs: it ended UNEXPECTED_MESSAGE, not INVALID_CONFIG."""
    session = WorkerSession(A9A.features[:200], A9A.labels[:200])
    session.data_to_send()
    refused = encode_message(ConfigMessage(dim=D + 1, algorithm="asylpg", params=TrainConfig().to_params()))
    snapshot = encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(D + 1))))
    session.receive_data(encode_message(Welcome(version=1, worker_id=0)) + refused + snapshot + snapshot, 0.0)
    assert session.ended is not None and session.ended[0] == ErrorCode.INVALID_CONFIG, session.ended
    assert session.failed


def test_a_timeout_while_a_message_waits_still_says_how_the_session_ended() -> None:
    """A review: with a MODEL waiting, the idle timeout closed the connection and ``ended`` stayed None (the
    waiting MODEL was put back before the connection's own end was read)."""
    session = WorkerSession(A9A.features[:200], A9A.labels[:200])
    session.data_to_send()
    snapshot = encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(D))))
    full = encode_message(FullGradient(epoch=0, vector=RawVector(np.zeros(D))))
    model = encode_message(ModelMessage(epoch=0, version=0, vector=ZeroVector(D), relative=False))
    session.receive_data(configured(session) + snapshot + full + model * (ANSWERS_WAITING + 2), 0.0)
    assert session.pending
    session.handle_timer(1e6)  # long past the idle timeout, the answers not taken
    assert session.closed and not session.pending
    assert session.ended is not None and session.ended[0] == ErrorCode.TIMEOUT, session.ended


#: What each algorithm's workers send (docs/algorithms.md 5-8, wire-format.md 6.2-7): SNAPSHOT_GRADIENT in
#: RAW_F32 or RAW_F64, a gradient that quantizes to zero as ZERO, and the gradient's own encodings.
_WORKERS_SEND = {
    "asylpg": {"DENSE"},
    "acc-asylpg": {"DENSE"},
    "sparse-asylpg": {"SPARSE_RICE", "SPARSE_BITMAP"},
    "qsvrg": {"QSGD"},
    "asyfpg": set(),
    "acc-asyfpg": set(),
    "model-only": set(),
}


def test_a_welcome_that_cannot_carry_the_run_s_gradients_is_refused_at_config() -> None:
    """A review: a WELCOME without DENSE ended the worker on its first GRADIENT, as its own failure."""
    for algorithm, own in _WORKERS_SEND.items():
        needed = {Encoding[name] for name in own | {"RAW_F32", "RAW_F64", "ZERO"}}
        config = TrainConfig(algorithm=algorithm, seed=3)
        for left_out in [None, *sorted(needed)]:
            session = WorkerSession(A9A.features[:200], A9A.labels[:200])
            session.data_to_send()
            encodings = frozenset(int(e) for e in needed if e != left_out)
            params = config.to_params()
            session.receive_data(
                encode_message(Welcome(version=1, worker_id=0, encodings=encodings))
                + encode_message(ConfigMessage(dim=D, algorithm=algorithm, params=params)),
                0.0,
            )
            if left_out is None:  # exactly these suffice: DENSE_RICE and the sparse form are optional
                assert session.ended is None and session.config is not None, (algorithm, session.ended)
                continue
            assert session.ended is not None, (algorithm, left_out)
            code, reason = session.ended
            assert code == ErrorCode.UNSUPPORTED_ENCODING and session.failed, (algorithm, left_out, reason)
            assert left_out.name in reason and algorithm in reason, reason
            assert frame_types(session.data_to_send()) == [MessageType.CLOSE]


def test_an_offloading_session_owes_its_computations_as_work_and_answers_as_one_that_does_not() -> None:
    """offload: a SNAPSHOT's and a MODEL's computations wait as ``work`` (the asyncio worker runs them on
    another thread); nothing after them is handled until ``complete``, preparing never replaces owed work
    (a first version's did, and a MODEL went unanswered), and the bytes sent are those of a session
    that computes in place."""
    config = TrainConfig(seed=4)
    snapshot = encode_message(Snapshot(epoch=0, vector=RawVector(np.linspace(-0.1, 0.1, D))))
    model = encode_message(ModelMessage(epoch=0, version=0, vector=RawVector(np.full(D, 0.05))))
    inline = WorkerSession(A9A.features[:200], A9A.labels[:200])
    inline.data_to_send()
    inline.receive_data(configured(inline, config) + snapshot + model, 0.0)
    expected = inline.data_to_send()
    assert frame_types(expected) == [MessageType.SNAPSHOT_GRADIENT, MessageType.GRADIENT]

    session = WorkerSession(A9A.features[:200], A9A.labels[:200], offload=True)
    session.data_to_send()
    session.receive_data(configured(session, config) + snapshot, 0.0)
    work = session.work
    assert work is not None and isinstance(work.event, Snapshot) and session.data_to_send() == b""
    session.receive_data(model, 0.0)  # behind the owed work: not handled yet
    assert session.work is work
    session.prepare(0.0)
    assert session.work is work
    work.run()
    session.complete(0.0)
    sent = session.data_to_send()
    assert frame_types(sent) == [MessageType.SNAPSHOT_GRADIENT]
    step = session.work  # the MODEL, now
    assert step is not None and isinstance(step.event, ModelMessage)
    step.run()
    session.complete(0.0)
    assert sent + session.data_to_send() == expected
    session.prepare(0.0)  # the next step's model-free half: owed as work that answers nothing
    assert session.work is not None and session.work.event is None


def test_an_offloaded_computation_that_fails_ends_the_session_as_in_place() -> None:
    """A failure inside the work is reported by ``complete`` as the session's own, naming the message."""

    class Failing:
        dim, samples = D, 2

        def initial(self, rng: np.random.Generator) -> np.ndarray:
            return np.zeros(D)

        def loss_grad(self, x: np.ndarray, rows: object = None) -> tuple[float, np.ndarray]:
            if rows is None:
                raise MemoryError("the shard does not fit")
            return float(len(rows)), np.full(D, float(len(rows)))  # type: ignore[arg-type]

    session = WorkerSession(objective=Failing(), offload=True)
    session.data_to_send()
    session.receive_data(configured(session, TrainConfig(model="failing")), 0.0)
    session.receive_data(encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(D)))), 0.0)
    assert session.work is not None
    session.work.run()
    session.complete(0.0)
    assert session.failed and session.ended is not None
    assert session.ended[1].startswith("cannot answer SNAPSHOT: MemoryError: the shard does not fit"), (
        session.ended
    )
    assert frame_types(session.data_to_send()) == [MessageType.CLOSE]


def test_at_the_stream_s_end_owed_work_is_dropped_and_what_follows_it_read() -> None:
    """A review: a MODEL held during a computation became owed work, the CLOSE behind it went unread and the
    session ended with ``ended`` None ('closed the connection without CLOSE'); as in place, nothing is
    answered once the stream has ended, and the master's reason is kept."""
    session = WorkerSession(A9A.features[:200], A9A.labels[:200], offload=True)
    session.data_to_send()
    model = encode_message(ModelMessage(epoch=0, version=0, vector=RawVector(np.full(D, 0.05))))
    close = encode_message(Close(code=int(ErrorCode.GOING_AWAY), reason="the master is stopping"))
    snapshot = encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(D))))
    session.receive_data(configured(session) + snapshot, 0.0)
    assert session.work is not None
    session.work.run()
    session.complete(0.0)
    session.receive_data(model + close, 0.0)  # the MODEL's computation is owed: the CLOSE waits behind it
    assert session.work is not None and session.ended is None
    session.receive_data(b"", 0.0)
    assert session.work is None
    assert session.ended == (int(ErrorCode.GOING_AWAY), "the master is stopping")


def test_an_offloaded_computation_s_system_exit_leaves_complete_as_it_leaves_one_in_place() -> None:
    """A review: ``Work.run`` kept only an ``Exception``; a ``SystemExit`` from the objective ended the
    thread, left no result, and the session ended on a TypeError of aiodq's own line (in place, it leaves the
    worker).  It is kept and raised again by ``complete``, on the caller's thread; a preparation's too."""
    import pytest  # noqa: PLC0415

    class Quitting:
        dim, samples = D, 2

        def __init__(self, when: str) -> None:
            self.when = when

        def initial(self, rng: np.random.Generator) -> np.ndarray:
            return np.zeros(D)

        def loss_grad(self, x: np.ndarray, rows: object = None) -> tuple[float, np.ndarray]:
            step = rows is not None and len(rows) > 2  # type: ignore[arg-type]  # (the start checks read 2)
            if (rows is None and self.when == "snapshot") or (step and self.when == "preparation"):
                raise SystemExit("the objective gave up")
            return 0.0, np.zeros(D)

    for when in ("snapshot", "preparation"):
        session = WorkerSession(objective=Quitting(when), offload=True)
        session.data_to_send()
        session.receive_data(configured(session, TrainConfig(model="quitting", batch=8)), 0.0)
        session.receive_data(encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(D)))), 0.0)
        if when == "preparation":
            assert session.work is not None
            session.work.run()
            session.complete(0.0)
            session.data_to_send()
            session.prepare(0.0)
        work = session.work
        assert work is not None
        work.run()  # (on the asyncio worker's thread: nothing raised there)
        assert isinstance(work.error, SystemExit), (when, work.error)
        with pytest.raises(SystemExit, match="the objective gave up"):
            session.complete(0.0)


class _Counts:
    """Four samples whose loss and gradient are the rows' count (sums, as the start checks want); each call's
    count is noted, and with ``nan`` a mini-batch's gradient holds NaN."""

    dim, samples = D, 4

    def __init__(self, *, nan: bool = False) -> None:
        self.calls: list[int] = []
        self.nan = nan

    def initial(self, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(D)

    def loss_grad(self, x: np.ndarray, rows: object = None) -> tuple[float, np.ndarray]:
        count = self.samples if rows is None else len(rows)  # type: ignore[arg-type]
        self.calls.append(count)
        gradient = np.full(D, float(count))
        if self.nan and count > 2 and rows is not None:  # (a mini-batch: the start checks read 2 rows)
            gradient[0] = np.nan
        return float(count), gradient


def test_a_gradient_with_nan_is_said_of_the_objective_without_aiodq_s_line() -> None:
    """A newcomer trial: an objective whose mini-batch gradients held NaN ended its worker with the words
    '... (at aiodq/protocol/algorithms.py:467)', read as aiodq's fault: aiodq's check names the objective,
    and its own line says nothing more."""

    session = WorkerSession(objective=_Counts(nan=True))
    session.data_to_send()
    session.receive_data(configured(session, TrainConfig(model="nanlater", batch=8)), 0.0)
    session.receive_data(encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(D)))), 0.0)
    session.data_to_send()
    session.receive_data(encode_message(ModelMessage(epoch=0, version=0, vector=RawVector(np.ones(D)))), 0.0)
    assert session.failed and session.ended is not None
    assert session.ended[1] == (
        "cannot answer MODEL: NonFiniteError: _Counts.loss_grad gave a gradient with NaN or infinite values "
        "on a mini-batch: the run may be diverging (a smaller step), or the loss overflows"
    ), session.ended


def test_a_step_dropped_before_it_began_computes_nothing() -> None:
    """A review: at the stream's end the session dropped its owed step, but the asyncio worker's thread,
    queued behind a preparation, still ran it in full after its master had gone.  A dropped Work computes
    nothing."""
    objective = _Counts()
    session = WorkerSession(objective=objective, offload=True)
    session.data_to_send()
    session.receive_data(configured(session, TrainConfig(model="counting", batch=8)), 0.0)
    session.receive_data(encode_message(Snapshot(epoch=0, vector=RawVector(np.zeros(D)))), 0.0)
    assert session.work is not None
    session.work.run()
    session.complete(0.0)
    session.data_to_send()
    session.receive_data(encode_message(ModelMessage(epoch=0, version=0, vector=RawVector(np.ones(D)))), 0.0)
    step = session.work
    assert step is not None and isinstance(step.event, ModelMessage)
    session.receive_data(b"", 0.0)  # the stream ends before the step's thread began it
    assert session.work is None and step.dropped
    before = len(objective.calls)
    step.run()
    assert len(objective.calls) == before and step.result is None and step.error is None
