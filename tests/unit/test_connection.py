"""Sans-I/O tests of MasterConnection and WorkerConnection (wire-format.md 6.1, 7, 8).

No sockets, no clocks, no sleeps: a master and a worker are paired and the bytes
one side queues are pumped into the other, whole, byte by byte or in random
chunks; time is passed in as ``now``.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from aiodq.codec.events import (
    Close,
    ConfigMessage,
    ConnectionClosed,
    ErrorMessage,
    Event,
    FullGradient,
    Gradient,
    Heartbeat,
    Hello,
    ModelMessage,
    Snapshot,
    SnapshotGradient,
    Welcome,
)
from aiodq.codec.frames import FrameReader, encode_frame
from aiodq.codec.lowp import quantize_gradient, quantize_model
from aiodq.codec.messages import DecodeContext, decode_message, encode_message
from aiodq.codec.payload import plan_vector
from aiodq.codec.qsgd import quantize_qsgd
from aiodq.codec.registry import Encoding, MessageType
from aiodq.codec.sparse import quantize_sparse
from aiodq.codec.vectors import (
    DenseQuantized,
    EqualsSnapshot,
    QSGDVector,
    RawVector,
    SparseQuantized,
    Vector,
    ZeroVector,
)
from aiodq.config import ConnectionConfig
from aiodq.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from aiodq.protocol.connection import ConnectionState, MasterConnection, WorkerConnection


def encoding_of(vector: Vector) -> Encoding:
    """The encoding a default connection sends ``vector`` in to a peer that announced every encoding."""
    return plan_vector(vector, dense_rice=True).encoding


D = 64
ALL_ENCODINGS = frozenset(range(9))  # 0 RAW_F32 .. 7 QSGD and 8 DENSE_RICE (wire-format.md 5.2)
Conn = MasterConnection | WorkerConnection

# -- helpers ------------------------------------------------------------------


def whole(data: bytes) -> Iterator[bytes]:
    """Feed everything at once."""
    yield data


def bytewise(data: bytes) -> Iterator[bytes]:
    """Feed one byte at a time."""
    for i in range(len(data)):
        yield data[i : i + 1]


def random_chunks(seed: int) -> Callable[[bytes], Iterator[bytes]]:
    """Feed in random chunks (never empty: b"" would mean end of stream)."""
    rng = random.Random(seed)

    def split(data: bytes) -> Iterator[bytes]:
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 40)
            yield data[pos : pos + step]
            pos += step

    return split


FEEDERS: dict[str, Callable[[bytes], Iterator[bytes]]] = {
    "whole": whole,
    "bytewise": bytewise,
    "chunks-1": random_chunks(1),
    "chunks-2": random_chunks(2),
    "chunks-3": random_chunks(3),
}


def feed(
    conn: Conn, data: bytes, now: float = 0.0, split: Callable[[bytes], Iterator[bytes]] = whole
) -> list[Event]:
    """Feed ``data`` into ``conn`` and collect every event."""
    events: list[Event] = []
    for piece in split(data):
        assert piece
        conn.receive_data(piece, now)
        while (event := conn.next_event()) is not None:
            events.append(event)
    return events


def pump(
    src: Conn, dst: Conn, now: float = 0.0, split: Callable[[bytes], Iterator[bytes]] = whole
) -> list[Event]:
    """Move the bytes ``src`` has queued into ``dst`` and return ``dst``'s events."""
    return feed(dst, src.data_to_send(), now, split)


def frames_of(data: bytes) -> list[Event]:
    """Decode a byte stream independently of any connection."""
    reader = FrameReader(DecodeContext().limits)
    reader.feed(data)
    events = []
    while (frame := reader.next_frame()) is not None:
        events.append(decode_message(frame, DecodeContext()))
    assert reader.buffered == 0
    return events


def count_frames(data: bytes) -> dict[str, int]:
    """Bytes per message type name plus "header", parsed by hand (wire-format.md 3)."""
    table: dict[str, int] = {}
    pos = 0
    while pos < len(data):
        _version, kind, _flags, length = struct.unpack_from("<BBBI", data, pos)
        name = MessageType(kind).name
        table[name] = table.get(name, 0) + length
        table["header"] = table.get("header", 0) + 7
        pos += 7 + length
    assert pos == len(data)
    return table


def raw(dim: int = D, seed: int = 0, dtype: type = np.float64) -> RawVector:
    return RawVector(np.random.default_rng(seed).standard_normal(dim).astype(dtype))


def handshake(
    now: float = 0.0,
    *,
    hello: Hello | None = None,
    welcome: Welcome | None = None,
    master_config: ConnectionConfig | None = None,
    worker_config: ConnectionConfig | None = None,
) -> tuple[MasterConnection, WorkerConnection]:
    master = MasterConnection(master_config, now=now)
    worker = WorkerConnection(worker_config, now=now)
    hello = hello or Hello(name="w0")
    welcome = welcome or Welcome(worker_id=7)
    worker.send(hello, now)
    assert pump(worker, master, now) == [hello]
    master.send(welcome, now)
    assert pump(master, worker, now) == [welcome]
    return master, worker


def ready(now: float = 0.0, dim: int = D, **kwargs: object) -> tuple[MasterConnection, WorkerConnection]:
    master, worker = handshake(now, **kwargs)  # type: ignore[arg-type]
    config = ConfigMessage(dim=dim, algorithm="asylpg", params={"mu": 0.5})
    master.send(config, now)
    assert pump(master, worker, now) == [config]
    assert master.state is worker.state is ConnectionState.READY
    return master, worker


def exchange(src: Conn, dst: Conn, *events: Event, now: float = 0.0) -> None:
    """``src`` sends ``events``; ``dst`` must receive exactly them."""
    for event in events:
        src.send(event, now)
    assert pump(src, dst, now) == list(events)


def in_epoch(epoch: int = 0, **kwargs: object) -> tuple[MasterConnection, WorkerConnection]:
    """READY, with the snapshot phase of ``epoch`` done."""
    master, worker = ready(**kwargs)  # type: ignore[arg-type]
    exchange(master, worker, Snapshot(epoch=epoch, vector=raw()))
    exchange(
        worker,
        master,
        SnapshotGradient(epoch=epoch, samples=10, loss=1.5, correct=3, vector=raw(seed=1)),
    )
    return master, worker


def with_model(
    epoch: int = 0, version: int = 5, **kwargs: object
) -> tuple[MasterConnection, WorkerConnection]:
    """In an epoch, with MODEL (epoch, version) outstanding."""
    master, worker = in_epoch(epoch, **kwargs)
    exchange(master, worker, ModelMessage(epoch=epoch, version=version, vector=EqualsSnapshot(D)))
    return master, worker


def assert_send_rejected(conn: Conn, event: Event, code: ErrorCode | None = None) -> None:
    """send() raises LocalProtocolError, queues nothing and leaves the state as it was."""
    state, epoch, outstanding = conn.state, conn.epoch, conn.outstanding_model
    pending = conn.data_to_send()
    with pytest.raises(LocalProtocolError) as info:
        conn.send(event, 0.0)
    if code is not None:
        assert info.value.code == code
    assert conn.data_to_send() == b""
    assert (conn.state, conn.epoch, conn.outstanding_model) == (state, epoch, outstanding)
    assert pending == b""


def assert_receive_rejected(conn: Conn, data: bytes, code: ErrorCode) -> None:
    """Receiving ``data`` raises RemoteProtocolError(code) and queues CLOSE(code)."""
    conn.receive_data(data, 0.0)
    with pytest.raises(RemoteProtocolError) as info:
        while conn.next_event() is not None:
            pass
    assert info.value.code == code
    sent = frames_of(conn.data_to_send())
    assert len(sent) == 1
    assert isinstance(sent[0], Close)
    assert sent[0].code == code
    assert conn.state is ConnectionState.CLOSED
    assert conn.next_event() is None


def forge(event: Event, version: int = 1) -> bytes:
    """Encode ``event`` without any connection's checks."""
    return encode_message(event, version)


# -- symmetric events over a whole session ------------------------------------


def session_script() -> list[tuple[str, list[Event]]]:
    """A full session: ("m" | "w", events sent in one turn)."""
    rng = np.random.default_rng(2024)
    snapshot = rng.standard_normal(D)
    model = snapshot + 0.01 * rng.standard_normal(D)
    gradient = rng.standard_normal(D)

    relative = quantize_model(model, snapshot, 0.1, rng)
    assert relative.relative and isinstance(relative.vector, DenseQuantized)
    absolute = quantize_model(model, snapshot, 0.1, rng, centre="zero")
    assert not absolute.relative and isinstance(absolute.vector, DenseQuantized)
    dense = quantize_gradient(gradient, 4, rng)
    assert isinstance(dense, DenseQuantized)
    # Uniform codes: Rice coding is not smaller, so they travel as DENSE even to a peer with DENSE_RICE.
    uniform_codes = DenseQuantized(bits=4, scale=0.25, codes=rng.integers(-8, 8, D) | 1)
    assert encoding_of(uniform_codes) is Encoding.DENSE
    rice = quantize_sparse(gradient, 2.0, 4, rng)
    assert isinstance(rice, SparseQuantized) and encoding_of(rice) is Encoding.SPARSE_RICE
    bitmap = quantize_sparse(gradient, 40.0, 8, rng)
    assert isinstance(bitmap, SparseQuantized) and encoding_of(bitmap) is Encoding.SPARSE_BITMAP
    qsgd = quantize_qsgd(gradient, 4, rng)
    assert isinstance(qsgd, QSGDVector)
    zero = quantize_gradient(np.zeros(D), 4, rng)
    assert isinstance(zero, ZeroVector)
    # DENSE_RICE (wire-format.md 5.8): the same quantized codes, Rice-coded because that is smaller.
    rice_model = quantize_model(model, snapshot, 0.01, rng).vector
    assert encoding_of(rice_model) is Encoding.DENSE_RICE
    rice_gradient = quantize_gradient(gradient * (np.arange(D) % 8 == 0), 8, rng)
    assert isinstance(rice_gradient, DenseQuantized)
    assert encoding_of(rice_gradient) is Encoding.DENSE_RICE

    grads: list[Vector] = [
        uniform_codes,
        rice,
        bitmap,
        qsgd,
        zero,
        raw(seed=5, dtype=np.float32),
        raw(seed=6),
        rice_gradient,
    ]
    models: list[tuple[Vector, bool]] = [
        (EqualsSnapshot(D), False),
        (relative.vector, True),
        (absolute.vector, False),
        (raw(seed=7, dtype=np.float32), True),
        (raw(seed=8), False),
        (ZeroVector(D), False),
        (uniform_codes, True),
        (rice_model, True),
    ]
    script: list[tuple[str, list[Event]]] = [
        ("w", [Hello(min_version=1, max_version=1, encodings=ALL_ENCODINGS, name="worker-1")]),
        ("m", [Welcome(version=1, worker_id=3, encodings=ALL_ENCODINGS)]),
        (
            "m",
            [
                ConfigMessage(
                    dim=D, algorithm="asylpg", params={"mu": 0.1, "bits": 4, "relative": True, "x": "y"}
                )
            ],
        ),
        ("m", [Heartbeat(), Snapshot(epoch=0, vector=RawVector(snapshot))]),
        (
            "w",
            [Heartbeat(), SnapshotGradient(epoch=0, samples=100, loss=12.25, correct=80, vector=raw(seed=2))],
        ),
        ("m", [FullGradient(epoch=0, vector=raw(seed=3))]),
    ]
    for version, ((mvec, rel), gvec) in enumerate(zip(models, grads, strict=True)):
        script.append(("m", [ModelMessage(epoch=0, version=version, vector=mvec, relative=rel)]))
        script.append(("w", [Gradient(epoch=0, version=version, vector=gvec)]))
    script += [
        ("m", [ErrorMessage(code=int(ErrorCode.STALE_GRADIENT), epoch=0, version=2, reason="too old")]),
        ("w", [ErrorMessage(code=int(ErrorCode.INTERNAL_ERROR), reason="oops \u00e9")]),
        # A SNAPSHOT crossing an in-flight GRADIENT (wire-format.md 8.2).
        (
            "m",
            [
                ModelMessage(epoch=0, version=9, vector=dense_model(rng)),
                Snapshot(epoch=4, vector=raw(seed=9)),
            ],
        ),
        ("w", [Gradient(epoch=0, version=9, vector=dense)]),
        ("w", [SnapshotGradient(epoch=4, samples=100, loss=0.5, correct=99, vector=raw(seed=10))]),
        (
            "m",
            [
                FullGradient(epoch=4, vector=raw(seed=11)),
                ModelMessage(epoch=4, version=10, vector=EqualsSnapshot(D)),
            ],
        ),
        ("w", [Gradient(epoch=4, version=10, vector=qsgd), Heartbeat()]),
        ("w", [Close(code=0, reason="done")]),
    ]
    return script


def dense_model(rng: np.random.Generator) -> DenseQuantized:
    return DenseQuantized(bits=6, scale=0.25, codes=rng.integers(-32, 32, D))


def run_session(
    split: Callable[[bytes], Iterator[bytes]],
) -> tuple[
    list[Event], list[Event], list[Event], list[Event], MasterConnection, WorkerConnection, bytes, bytes
]:
    master, worker = MasterConnection(), WorkerConnection()
    sent = {"m": [], "w": []}  # type: dict[str, list[Event]]
    received = {"m": [], "w": []}  # type: dict[str, list[Event]]
    streams = {"m": bytearray(), "w": bytearray()}
    conns: dict[str, Conn] = {"m": master, "w": worker}
    t = 0.0
    for side, events in session_script():
        other = "w" if side == "m" else "m"
        for event in events:
            t += 0.01
            conns[side].send(event, t)
            sent[side].append(event)
        # The receiver may answer (a CLOSE answers a CLOSE): pump until both are quiet.
        src, dst = side, other
        while True:
            data = conns[src].data_to_send()
            if not data:
                break
            streams[src] += data
            received[dst] += feed(conns[dst], data, t, split)
            src, dst = dst, src
    for side in ("m", "w"):
        conns[side].receive_data(b"", t)
        while (event := conns[side].next_event()) is not None:
            received[side].append(event)
    return (
        sent["m"],
        sent["w"],
        received["m"],
        received["w"],
        master,
        worker,
        bytes(streams["m"]),
        bytes(streams["w"]),
    )


@pytest.mark.parametrize("mode", list(FEEDERS))
def test_session_events_are_symmetric(mode: str) -> None:
    """wire-format.md 7: every message one side sends arrives as an equal event, however the bytes are cut."""
    master_sent, worker_sent, master_got, worker_got, master, worker, _, _ = run_session(FEEDERS[mode])
    closed = ConnectionClosed(clean=True, code=0)
    assert master_got == [*worker_sent, closed]
    # The worker also gets the master's answer to its CLOSE (wire-format.md 8.4).
    assert worker_got == [*master_sent, Close(code=0), closed]
    assert master.state is worker.state is ConnectionState.CLOSED


def test_session_covers_every_message_and_encoding() -> None:
    """wire-format.md 5, 7: the session script exercises every message type and every vector encoding."""
    events = [e for _, turn in session_script() for e in turn]
    assert {type(e) for e in events} == {
        Hello,
        Welcome,
        ConfigMessage,
        Snapshot,
        SnapshotGradient,
        FullGradient,
        ModelMessage,
        Gradient,
        Heartbeat,
        ErrorMessage,
        Close,
    }
    model_encodings = {(encoding_of(e.vector), e.relative) for e in events if isinstance(e, ModelMessage)}
    assert (Encoding.EQUALS_SNAPSHOT, False) in model_encodings
    assert (Encoding.DENSE, True) in model_encodings
    assert (Encoding.DENSE_RICE, True) in model_encodings
    gradient_encodings = {encoding_of(e.vector) for e in events if isinstance(e, Gradient)}
    assert gradient_encodings == {
        Encoding.DENSE,
        Encoding.DENSE_RICE,
        Encoding.SPARSE_BITMAP,
        Encoding.SPARSE_RICE,
        Encoding.QSGD,
        Encoding.ZERO,
        Encoding.RAW_F32,
        Encoding.RAW_F64,
    }


def test_session_is_independent_of_chunking() -> None:
    """wire-format.md 3: any split of the byte stream yields the same events and the same bytes."""
    reference = run_session(whole)
    for mode, split in FEEDERS.items():
        result = run_session(split)
        assert result[:4] == reference[:4], mode
        assert result[6:] == reference[6:], mode


# -- versions (wire-format.md 6.1) -------------------------------------------


def test_hello_range_including_1_negotiates_1() -> None:
    """wire-format.md 6.1: HELLO offering 1..3 negotiates version 1, the highest common one."""
    master, worker = MasterConnection(), WorkerConnection()
    hello = Hello(min_version=1, max_version=3)
    worker.send(hello, 0.0)
    assert pump(worker, master) == [hello]
    assert master.negotiated_version == 1
    master.send(Welcome(version=1), 0.0)
    assert pump(master, worker) == [Welcome(version=1)]
    assert master.version == worker.version == 1
    assert master.state is worker.state is ConnectionState.CONFIGURING


def test_hello_without_common_version_is_rejected() -> None:
    """wire-format.md 6.1, 9: HELLO offering only 2..3 -> UNSUPPORTED_VERSION and a CLOSE carrying it."""
    worker = WorkerConnection()
    worker.send(Hello(min_version=2, max_version=3), 0.0)
    master = MasterConnection()
    assert_receive_rejected(master, worker.data_to_send(), ErrorCode.UNSUPPORTED_VERSION)


def test_welcome_with_version_not_offered_cannot_be_sent() -> None:
    """wire-format.md 6.1: the master MUST choose a version the worker offered."""
    master, worker = MasterConnection(), WorkerConnection()
    exchange(worker, master, Hello(min_version=1, max_version=1))
    assert_send_rejected(master, Welcome(version=2), ErrorCode.UNSUPPORTED_VERSION)


def test_welcome_with_version_not_offered_is_rejected() -> None:
    """wire-format.md 6.1: a WELCOME version the worker did not offer -> UNSUPPORTED_VERSION."""
    worker = WorkerConnection()
    worker.send(Hello(min_version=1, max_version=1), 0.0)
    worker.data_to_send()
    assert_receive_rejected(worker, forge(Welcome(version=2)), ErrorCode.UNSUPPORTED_VERSION)


def test_wrong_header_version_after_negotiation() -> None:
    """wire-format.md 6.1: after WELCOME every frame MUST carry the negotiated version."""
    master, worker = ready()
    assert_receive_rejected(worker, forge(Heartbeat(), version=2), ErrorCode.UNSUPPORTED_VERSION)
    assert_receive_rejected(master, forge(Heartbeat(), version=0), ErrorCode.UNSUPPORTED_VERSION)


def test_hello_header_version_is_1() -> None:
    """wire-format.md 6.1: HELLO and WELCOME always carry header version 1."""
    data = bytearray(forge(Hello(min_version=1, max_version=3)))
    assert data[0] == 1
    data[0] = 2
    assert_receive_rejected(MasterConnection(), bytes(data), ErrorCode.UNSUPPORTED_VERSION)


# -- order rules (wire-format.md 8.1) -----------------------------------------

M, W = "master", "worker"
SENDER = {
    MessageType.HELLO: {W},
    MessageType.WELCOME: {M},
    MessageType.CONFIG: {M},
    MessageType.SNAPSHOT: {M},
    MessageType.SNAPSHOT_GRADIENT: {W},
    MessageType.FULL_GRADIENT: {M},
    MessageType.MODEL: {M},
    MessageType.GRADIENT: {W},
    MessageType.HEARTBEAT: {M, W},
    MessageType.ERROR: {M, W},
    MessageType.CLOSE: {M, W},
}
STAGES = ("handshake", "configuring", "ready")
ALLOWED_IN = {
    MessageType.HELLO: {"handshake"},
    MessageType.WELCOME: {"handshake"},
    MessageType.CONFIG: {"configuring"},
    MessageType.SNAPSHOT: {"ready"},
    MessageType.SNAPSHOT_GRADIENT: {"ready"},
    MessageType.FULL_GRADIENT: {"ready"},
    MessageType.MODEL: {"ready"},
    MessageType.GRADIENT: {"ready"},
    MessageType.HEARTBEAT: {"configuring", "ready"},
    MessageType.ERROR: {"configuring", "ready"},
    MessageType.CLOSE: {"handshake", "configuring", "ready"},
}


def sample_event(message_type: MessageType) -> Event:
    return {
        MessageType.HELLO: Hello(),
        MessageType.WELCOME: Welcome(),
        MessageType.CONFIG: ConfigMessage(dim=D, algorithm="asylpg"),
        MessageType.SNAPSHOT: Snapshot(epoch=0, vector=raw()),
        MessageType.SNAPSHOT_GRADIENT: SnapshotGradient(
            epoch=0, samples=1, loss=0.0, correct=0, vector=raw()
        ),
        MessageType.FULL_GRADIENT: FullGradient(epoch=0, vector=raw()),
        MessageType.MODEL: ModelMessage(epoch=0, version=0, vector=EqualsSnapshot(D)),
        MessageType.GRADIENT: Gradient(epoch=0, version=0, vector=ZeroVector(D)),
        MessageType.HEARTBEAT: Heartbeat(),
        MessageType.ERROR: ErrorMessage(code=7),
        MessageType.CLOSE: Close(),
    }[message_type]


def at_stage(stage: str) -> tuple[MasterConnection, WorkerConnection]:
    if stage == "handshake":
        return MasterConnection(), WorkerConnection()
    if stage == "configuring":
        return handshake()
    return ready()


# The AUTH messages are the connection's own; tests/unit/test_auth.py covers them.
ILLEGAL = [
    (message_type, role, stage)
    for message_type in SENDER
    for role in (M, W)
    for stage in STAGES
    if role not in SENDER[message_type] or stage not in ALLOWED_IN[message_type]
]


@pytest.mark.parametrize(
    ("message_type", "role", "stage"),
    ILLEGAL,
    ids=[f"{t.name}-{r}-{s}" for t, r, s in ILLEGAL],
)
def test_message_in_wrong_state_or_role(message_type: MessageType, role: str, stage: str) -> None:
    """wire-format.md 8.1: a message sent by the wrong role or in the wrong state is refused both ways."""
    event = sample_event(message_type)
    master, worker = at_stage(stage)
    sender, receiver = (master, worker) if role == M else (worker, master)
    assert_send_rejected(sender, event, ErrorCode.UNEXPECTED_MESSAGE)
    assert_receive_rejected(receiver, forge(event), ErrorCode.UNEXPECTED_MESSAGE)


def test_legal_matrix_is_accepted() -> None:
    """wire-format.md 8.1: the complement of the illegal matrix, for control messages, is accepted."""
    for stage in STAGES:
        for role in (M, W):
            for message_type in (MessageType.HEARTBEAT, MessageType.ERROR, MessageType.CLOSE):
                if stage not in ALLOWED_IN[message_type]:
                    continue
                master, worker = at_stage(stage)
                sender, receiver = (master, worker) if role == M else (worker, master)
                event = sample_event(message_type)
                sender.send(event, 0.0)
                assert pump(sender, receiver) == [event]


def test_nothing_may_be_sent_after_close() -> None:
    """wire-format.md 8.4: after sending CLOSE a side sends nothing else."""
    master, _worker = in_epoch()
    master.close(0.0)
    assert master.state is ConnectionState.CLOSING
    master.data_to_send()
    for message_type, senders in SENDER.items():  # the AUTH messages are never sent by the application
        if "master" in senders:
            assert_send_rejected(master, sample_event(message_type), ErrorCode.UNEXPECTED_MESSAGE)


def test_peer_may_finish_sending_while_closing() -> None:
    """wire-format.md 8.4: after sending CLOSE a side still accepts the peer's messages until its CLOSE."""
    master, worker = with_model(version=1)
    master.close(0.0)
    closing = master.data_to_send()
    gradient = Gradient(epoch=0, version=1, vector=ZeroVector(D))
    worker.send(gradient, 0.0)
    assert pump(worker, master) == [gradient]
    assert feed(worker, closing) == [Close()]
    assert pump(worker, master) == [Close()]
    assert master.state is worker.state is ConnectionState.CLOSED


def test_welcome_before_hello_is_refused() -> None:
    """wire-format.md 8.1: in HANDSHAKE the worker sends HELLO and the master answers it with WELCOME."""
    assert_send_rejected(MasterConnection(), Welcome(), ErrorCode.UNEXPECTED_MESSAGE)
    assert_receive_rejected(WorkerConnection(), forge(Welcome()), ErrorCode.UNEXPECTED_MESSAGE)


def test_second_hello_is_refused() -> None:
    """wire-format.md 7.1, 8.1: HELLO is the worker's first message and is sent once."""
    worker = WorkerConnection()
    worker.send(Hello(), 0.0)
    master = MasterConnection()
    assert feed(master, worker.data_to_send()) == [Hello()]
    assert_send_rejected(worker, Hello(), ErrorCode.UNEXPECTED_MESSAGE)
    assert_receive_rejected(master, forge(Hello()), ErrorCode.UNEXPECTED_MESSAGE)


def test_receive_procedure_order() -> None:
    """WF-7-1: role before state before flags before body: a bad GRADIENT in CONFIGURING is UNEXPECTED."""
    master, _ = handshake()
    bad_body = encode_frame(1, MessageType.GRADIENT, 0x80, [b"\xff\xff"])
    assert_receive_rejected(master, bad_body, ErrorCode.UNEXPECTED_MESSAGE)
    master, _ = ready()
    # Reserved flag in READY: MALFORMED_FRAME, before the body is looked at.
    assert_receive_rejected(
        master, encode_frame(1, MessageType.HEARTBEAT, 0x01, []), ErrorCode.MALFORMED_FRAME
    )
    # WF-7-1 example: unannounced encoding and wrong epoch -> UNSUPPORTED_ENCODING (decoding first).
    dense_at_most = frozenset({0, 1, 2, 3, 4})
    only = ConnectionConfig(encodings=dense_at_most)
    master, _worker = with_model(version=3, master_config=only, welcome=Welcome(encodings=dense_at_most))
    qsgd = QSGDVector(s=1, norm=1.0, levels=np.ones(D, dtype=np.int64))
    assert_receive_rejected(
        master, forge(Gradient(epoch=9, version=3, vector=qsgd)), ErrorCode.UNSUPPORTED_ENCODING
    )


def test_version_before_negotiation_must_be_1() -> None:
    """WF-6.1-8: before negotiating, any frame whose header version is not 1 -> UNSUPPORTED_VERSION."""
    assert_receive_rejected(MasterConnection(), forge(Close(), version=2), ErrorCode.UNSUPPORTED_VERSION)
    assert_receive_rejected(WorkerConnection(), forge(Heartbeat(), version=3), ErrorCode.UNSUPPORTED_VERSION)


# -- epochs and versions (wire-format.md 8.2) ---------------------------------


@pytest.mark.parametrize(
    ("epoch", "version", "code"),
    [
        (0, 6, ErrorCode.FUTURE_VERSION),
        (0, 4, ErrorCode.VERSION_MISMATCH),
        (1, 5, ErrorCode.UNKNOWN_EPOCH),
    ],
    ids=["future", "older", "wrong-epoch"],
)
def test_gradient_must_answer_the_outstanding_model(epoch: int, version: int, code: ErrorCode) -> None:
    """wire-format.md 8.2: a GRADIENT names the epoch and version of the MODEL it answers."""
    master, worker = with_model(epoch=0, version=5)
    bad = Gradient(epoch=epoch, version=version, vector=ZeroVector(D))
    assert_send_rejected(worker, bad, code)
    assert_receive_rejected(master, forge(bad), code)


def test_gradient_without_model_is_refused() -> None:
    """wire-format.md 8.2: a GRADIENT answers a MODEL; without one it is unexpected."""
    master, worker = in_epoch()
    bad = Gradient(epoch=0, version=0, vector=ZeroVector(D))
    assert_send_rejected(worker, bad, ErrorCode.UNEXPECTED_MESSAGE)
    assert_receive_rejected(master, forge(bad), ErrorCode.UNEXPECTED_MESSAGE)


def test_model_version_never_decreases() -> None:
    """wire-format.md 8.2: MODEL versions on a connection never decrease (equal is allowed)."""
    master, worker = with_model(version=5)
    exchange(worker, master, Gradient(epoch=0, version=5, vector=ZeroVector(D)))
    bad = ModelMessage(epoch=0, version=4, vector=EqualsSnapshot(D))
    assert_send_rejected(master, bad, ErrorCode.VERSION_MISMATCH)
    assert_receive_rejected(worker, forge(bad), ErrorCode.VERSION_MISMATCH)
    master, worker = with_model(version=5)
    exchange(worker, master, Gradient(epoch=0, version=5, vector=ZeroVector(D)))
    exchange(master, worker, ModelMessage(epoch=0, version=5, vector=EqualsSnapshot(D)))


def test_model_before_previous_answered_is_refused() -> None:
    """wire-format.md 8.2: one MODEL at a time: the next waits for the GRADIENT."""
    master, worker = with_model(version=1)
    bad = ModelMessage(epoch=0, version=2, vector=EqualsSnapshot(D))
    assert_send_rejected(master, bad, ErrorCode.UNEXPECTED_MESSAGE)
    assert_receive_rejected(worker, forge(bad), ErrorCode.UNEXPECTED_MESSAGE)


def test_model_for_other_epoch_is_refused() -> None:
    """wire-format.md 8.2: a MODEL names the current epoch."""
    master, worker = in_epoch(epoch=2)
    bad = ModelMessage(epoch=1, version=0, vector=EqualsSnapshot(D))
    assert_send_rejected(master, bad, ErrorCode.UNKNOWN_EPOCH)
    assert_receive_rejected(worker, forge(bad), ErrorCode.UNKNOWN_EPOCH)


def test_full_gradient_twice_is_refused() -> None:
    """wire-format.md 8.2: FULL_GRADIENT is sent at most once per epoch."""
    master, worker = in_epoch()
    exchange(master, worker, FullGradient(epoch=0, vector=raw()))
    bad = FullGradient(epoch=0, vector=raw())
    assert_send_rejected(master, bad, ErrorCode.UNEXPECTED_MESSAGE)
    assert_receive_rejected(worker, forge(bad), ErrorCode.UNEXPECTED_MESSAGE)


def test_full_gradient_after_model_is_refused() -> None:
    """wire-format.md 8.2: FULL_GRADIENT comes before the epoch's first MODEL."""
    master, worker = with_model(version=0)
    exchange(worker, master, Gradient(epoch=0, version=0, vector=ZeroVector(D)))
    bad = FullGradient(epoch=0, vector=raw())
    assert_send_rejected(master, bad, ErrorCode.UNEXPECTED_MESSAGE)
    assert_receive_rejected(worker, forge(bad), ErrorCode.UNEXPECTED_MESSAGE)


def test_model_during_snapshot_phase_is_refused() -> None:
    """wire-format.md 8.2: no MODEL or FULL_GRADIENT until the SNAPSHOT is answered."""
    master, worker = ready()
    exchange(master, worker, Snapshot(epoch=0, vector=raw()))
    for bad in (
        ModelMessage(epoch=0, version=0, vector=EqualsSnapshot(D)),
        FullGradient(epoch=0, vector=raw()),
    ):
        assert_send_rejected(master, bad, ErrorCode.UNEXPECTED_MESSAGE)
    assert_receive_rejected(worker, forge(FullGradient(epoch=0, vector=raw())), ErrorCode.UNEXPECTED_MESSAGE)


@pytest.mark.parametrize("epoch", [3, 2], ids=["equal", "lower"])
def test_snapshot_epoch_must_increase(epoch: int) -> None:
    """wire-format.md 8.2: SNAPSHOT epochs are strictly increasing."""
    master, worker = in_epoch(epoch=3)
    bad = Snapshot(epoch=epoch, vector=raw())
    assert_send_rejected(master, bad, ErrorCode.UNKNOWN_EPOCH)
    assert_receive_rejected(worker, forge(bad), ErrorCode.UNKNOWN_EPOCH)


def test_snapshot_may_skip_epochs() -> None:
    """wire-format.md 8.2: a SNAPSHOT epoch only has to be larger, not the next integer."""
    master, worker = in_epoch(epoch=3)
    exchange(master, worker, Snapshot(epoch=10, vector=raw()))
    assert master.epoch == worker.epoch == 10


def test_snapshot_while_snapshot_pending_is_refused() -> None:
    """wire-format.md 8.2: a new SNAPSHOT waits for the previous SNAPSHOT_GRADIENT."""
    master, worker = ready()
    exchange(master, worker, Snapshot(epoch=0, vector=raw()))
    bad = Snapshot(epoch=1, vector=raw())
    assert_send_rejected(master, bad, ErrorCode.UNEXPECTED_MESSAGE)
    assert_receive_rejected(worker, forge(bad), ErrorCode.UNEXPECTED_MESSAGE)


def test_snapshot_gradient_for_wrong_epoch_is_refused() -> None:
    """wire-format.md 8.2: SNAPSHOT_GRADIENT names the epoch of the SNAPSHOT it answers."""
    master, worker = ready()
    exchange(master, worker, Snapshot(epoch=2, vector=raw()))
    bad = SnapshotGradient(epoch=1, samples=1, loss=0.0, correct=0, vector=raw())
    assert_send_rejected(worker, bad, ErrorCode.UNKNOWN_EPOCH)
    assert_receive_rejected(master, forge(bad), ErrorCode.UNKNOWN_EPOCH)


def test_snapshot_crossing_gradient_is_legal() -> None:
    """wire-format.md 8.2: a SNAPSHOT may cross a GRADIENT in flight; the old GRADIENT is still accepted."""
    master, worker = with_model(epoch=0, version=5)
    master.send(Snapshot(epoch=1, vector=raw()), 0.0)
    worker.send(Gradient(epoch=0, version=5, vector=ZeroVector(D)), 0.0)
    # The messages cross: each side receives after having sent.
    assert pump(master, worker) == [Snapshot(epoch=1, vector=raw())]
    assert pump(worker, master) == [Gradient(epoch=0, version=5, vector=ZeroVector(D))]
    answer = SnapshotGradient(epoch=1, samples=1, loss=0.0, correct=0, vector=raw())
    exchange(worker, master, answer)
    exchange(master, worker, ModelMessage(epoch=1, version=6, vector=EqualsSnapshot(D)))


def test_snapshot_gradient_before_owed_gradient_is_refused() -> None:
    """wire-format.md 8.2: after a crossing SNAPSHOT the worker answers the old MODEL first."""
    master, worker = with_model(epoch=0, version=5)
    exchange(master, worker, Snapshot(epoch=1, vector=raw()))
    bad = SnapshotGradient(epoch=1, samples=1, loss=0.0, correct=0, vector=raw())
    assert_send_rejected(worker, bad, ErrorCode.UNEXPECTED_MESSAGE)
    assert_receive_rejected(master, forge(bad), ErrorCode.UNEXPECTED_MESSAGE)


# -- encodings and dimensions (wire-format.md 5, 7) ---------------------------


def test_sending_unannounced_encoding_is_refused() -> None:
    """wire-format.md 7.1, 7.2: a side only sends encodings the peer announced it decodes."""
    no_dense = frozenset(range(8)) - {int(Encoding.DENSE)}
    master, worker = in_epoch(hello=Hello(encodings=no_dense), welcome=Welcome(encodings=no_dense))
    dense = DenseQuantized(bits=2, scale=1.0, codes=np.ones(D, dtype=np.int8))
    assert_send_rejected(
        master, ModelMessage(epoch=0, version=0, vector=dense), ErrorCode.UNSUPPORTED_ENCODING
    )
    exchange(master, worker, ModelMessage(epoch=0, version=0, vector=EqualsSnapshot(D)))
    assert_send_rejected(worker, Gradient(epoch=0, version=0, vector=dense), ErrorCode.UNSUPPORTED_ENCODING)
    exchange(worker, master, Gradient(epoch=0, version=0, vector=ZeroVector(D)))


def test_receiving_unannounced_encoding_is_refused() -> None:
    """wire-format.md 5, 9: a vector in an encoding this side did not announce -> UNSUPPORTED_ENCODING."""
    raw_set = frozenset({0, 1, 2, 3})
    only_raw = ConnectionConfig(encodings=raw_set)
    announce = {"hello": Hello(encodings=raw_set), "welcome": Welcome(encodings=raw_set)}
    master, worker = in_epoch(worker_config=only_raw, master_config=only_raw, **announce)
    dense = DenseQuantized(bits=2, scale=1.0, codes=np.ones(D, dtype=np.int8))
    assert_receive_rejected(
        worker, forge(ModelMessage(epoch=0, version=0, vector=dense)), ErrorCode.UNSUPPORTED_ENCODING
    )
    master, worker = with_model(version=0, worker_config=only_raw, master_config=only_raw, **announce)
    qsgd = QSGDVector(s=1, norm=1.0, levels=np.ones(D, dtype=np.int64))
    assert_receive_rejected(
        master, forge(Gradient(epoch=0, version=0, vector=qsgd)), ErrorCode.UNSUPPORTED_ENCODING
    )


def _rice_codes() -> np.ndarray:
    """Mostly-zero 4-bit codes of dimension D: Rice-coded they take 17 bytes instead of 32 (5.8)."""
    codes = np.zeros(D, dtype=np.int64)
    codes[[0, 9, 20, 41, 63]] = [-8, 1, -1, 2, 7]
    return codes


def _descriptor(frame: bytes) -> int:
    """The vector descriptor of a MODEL or GRADIENT frame with one-byte epoch and version."""
    return frame[7 + 2]


def test_dense_rice_to_a_peer_that_did_not_announce_it_goes_as_dense() -> None:
    """WF-5.8-4, 12-2: a vector that would go Rice-coded reaches a peer that announced only 0..7 as DENSE."""
    before_5_8 = frozenset(range(8))
    master, worker = in_epoch(hello=Hello(encodings=before_5_8), welcome=Welcome(encodings=ALL_ENCODINGS))
    assert master.peer_encodings == before_5_8 and worker.peer_encodings == ALL_ENCODINGS
    vector = DenseQuantized(bits=4, scale=0.25, codes=_rice_codes())
    assert encoding_of(vector) is Encoding.DENSE_RICE  # Rice-coded to a peer that announced it
    model = ModelMessage(epoch=0, version=0, vector=vector, relative=True)
    master.send(model, 0.0)
    frame = master.data_to_send()
    assert _descriptor(frame) >> 4 == Encoding.DENSE and _descriptor(frame) == 0x43
    assert frame == forge(ModelMessage(epoch=0, version=0, vector=vector, relative=True))
    [received] = feed(worker, frame)
    assert received == model
    assert isinstance(received, ModelMessage) and isinstance(received.vector, DenseQuantized)
    # The master announced 8: the same vector from the worker travels as DENSE_RICE.
    gradient = Gradient(epoch=0, version=0, vector=vector)
    worker.send(gradient, 0.0)
    frame = worker.data_to_send()
    assert _descriptor(frame) == 0x83
    assert feed(master, frame) == [gradient]


def test_dense_rice_to_a_peer_that_announced_it() -> None:
    """WF-5.8-4, 5.8-6: with 8 announced, dense codes travel as DENSE_RICE where smaller."""
    with_rice = frozenset(range(9))
    master, worker = in_epoch(hello=Hello(encodings=with_rice), welcome=Welcome(encodings=with_rice))
    vector = DenseQuantized(bits=4, scale=0.25, codes=_rice_codes())
    for relative in (False, True):
        model = ModelMessage(epoch=0, version=relative, vector=vector, relative=relative)
        master.send(model, 0.0)
        frame = master.data_to_send()
        assert _descriptor(frame) == 0x83
        assert len(frame) < len(forge(ModelMessage(epoch=0, version=0, vector=vector)))
        [received] = feed(worker, frame)
        assert received == model
        assert isinstance(received, ModelMessage) and isinstance(received.vector, DenseQuantized)
        gradient = Gradient(epoch=0, version=relative, vector=vector)
        worker.send(gradient, 0.0)
        frame = worker.data_to_send()
        assert _descriptor(frame) == 0x83
        assert feed(master, frame) == [gradient]
    # Where Rice coding is not smaller (uniform codes), the same request gives plain DENSE.
    uniform = np.random.default_rng(0).integers(-8, 8, D)
    master.send(ModelMessage(epoch=0, version=2, vector=DenseQuantized(4, 0.25, uniform)), 0.0)
    assert _descriptor(master.data_to_send()) == 0x43


def test_dense_rice_not_announced_by_the_receiver_is_refused() -> None:
    """WF-6.2-3: a DENSE_RICE vector to a side that announced only 0..7 -> UNSUPPORTED_ENCODING."""
    before_5_8 = frozenset(range(8))
    config = ConnectionConfig(encodings=before_5_8)
    _master, worker = in_epoch(worker_config=config, hello=Hello(encodings=before_5_8))
    vector = DenseQuantized(bits=4, scale=0.25, codes=_rice_codes())
    data = encode_message(ModelMessage(epoch=0, version=0, vector=vector), dense_rice=True)
    assert _descriptor(data) == 0x83
    assert_receive_rejected(worker, data, ErrorCode.UNSUPPORTED_ENCODING)


def test_wrong_dimension_is_refused_on_receive() -> None:
    """wire-format.md 7.3, 9: after CONFIG every vector has exactly d coordinates -> WRONG_DIMENSION."""
    master, worker = ready()
    assert_receive_rejected(worker, forge(Snapshot(epoch=0, vector=raw(D + 1))), ErrorCode.WRONG_DIMENSION)
    master, worker = with_model(version=0)
    bad = Gradient(epoch=0, version=0, vector=ZeroVector(D - 1))
    assert_receive_rejected(master, forge(bad), ErrorCode.WRONG_DIMENSION)


def test_wrong_dimension_is_refused_on_send() -> None:
    """wire-format.md 7.3: a side MUST NOT send a vector whose dimension differs from CONFIG's d."""
    master, worker = ready()
    assert_send_rejected(master, Snapshot(epoch=0, vector=raw(D + 1)), ErrorCode.WRONG_DIMENSION)
    master, worker = with_model(version=0)
    assert_send_rejected(
        worker, Gradient(epoch=0, version=0, vector=ZeroVector(D - 1)), ErrorCode.WRONG_DIMENSION
    )


# -- timers (wire-format.md 8.3) ----------------------------------------------


def test_get_timer_values() -> None:
    """wire-format.md 8.3: the next deadline is the earliest of handshake, heartbeat and idle timers."""
    config = ConnectionConfig(handshake_timeout=10.0, heartbeat_interval=5.0, idle_timeout=30.0)
    master = MasterConnection(config, now=100.0)
    worker = WorkerConnection(config, now=100.0)
    assert master.get_timer() == worker.get_timer() == 110.0
    worker.send(Hello(), 101.0)
    feed(master, worker.data_to_send(), 101.0)
    master.send(Welcome(), 102.0)
    feed(worker, master.data_to_send(), 102.0)
    # Master: heartbeat 102 + 5.  Worker: still in the handshake until CONFIG, heartbeat 101 + 5.
    assert master.get_timer() == 107.0
    assert worker.get_timer() == 106.0
    master.send(ConfigMessage(dim=D, algorithm="a"), 103.0)
    feed(worker, master.data_to_send(), 104.0)
    assert master.get_timer() == 108.0
    assert worker.get_timer() == 106.0
    worker.send(Heartbeat(), 120.0)
    assert worker.get_timer() == 125.0  # idle would be 104 + 30 = 134
    worker.receive_data(b"", 121.0)
    assert worker.next_event() == ConnectionClosed(clean=False, code=None)
    assert worker.get_timer() is None


def test_handle_timer_before_deadline_does_nothing() -> None:
    """wire-format.md 8.3: handle_timer before the deadline sends nothing and changes nothing."""
    master, worker = MasterConnection(now=0.0), WorkerConnection(now=0.0)
    master.handle_timer(9.999)
    assert master.data_to_send() == b""
    assert master.next_event() is None
    assert master.state is ConnectionState.HANDSHAKE
    master, worker = ready(now=0.0)
    deadline = master.get_timer()
    assert deadline == 5.0
    master.handle_timer(deadline - 0.001)
    worker.handle_timer(deadline - 0.001)
    assert master.data_to_send() == worker.data_to_send() == b""
    assert master.next_event() is None and worker.next_event() is None
    assert master.get_timer() == worker.get_timer() == deadline


@pytest.mark.parametrize("side", [M, W])
def test_handshake_timeout(side: str) -> None:
    """wire-format.md 8.3: handshake not done by the deadline -> CLOSE(TIMEOUT), ConnectionClosed(TIMEOUT)."""
    conn: Conn = MasterConnection(now=0.0) if side == M else WorkerConnection(now=0.0)
    conn.handle_timer(10.0)
    sent = frames_of(conn.data_to_send())
    assert len(sent) == 1 and isinstance(sent[0], Close)
    assert sent[0].code == ErrorCode.TIMEOUT
    assert conn.next_event() == ConnectionClosed(clean=False, code=int(ErrorCode.TIMEOUT))
    assert conn.next_event() is None
    assert conn.state is ConnectionState.CLOSED
    assert conn.get_timer() is None


def test_worker_waiting_for_config_times_out() -> None:
    """wire-format.md 8.3: the worker's handshake lasts until CONFIG."""
    master, worker = handshake(now=0.0)
    assert worker.get_timer() == 5.0  # heartbeat first
    worker.handle_timer(9.9)
    assert frames_of(worker.data_to_send()) == [Heartbeat()]
    worker.handle_timer(10.0)
    sent = frames_of(worker.data_to_send())
    assert isinstance(sent[-1], Close) and sent[-1].code == ErrorCode.TIMEOUT
    assert worker.next_event() == ConnectionClosed(clean=False, code=int(ErrorCode.TIMEOUT))
    # The master has no handshake timer once it sent WELCOME.
    master.handle_timer(10.0)
    assert frames_of(master.data_to_send()) == [Heartbeat()]
    assert master.state is ConnectionState.CONFIGURING


def test_heartbeat_after_sending_silence() -> None:
    """wire-format.md 8.3: HEARTBEAT after heartbeat_interval without sending; receiving does not reset it."""
    master, worker = ready(now=0.0)
    exchange(worker, master, Heartbeat(), now=3.0)  # master receives, but has not sent since 0
    assert master.get_timer() == 5.0
    master.handle_timer(5.0)
    assert pump(master, worker, 5.0) == [Heartbeat()]
    assert master.get_timer() == 10.0
    master.send(ErrorMessage(code=1), 7.0)  # any send resets the interval
    pump(master, worker, 7.0)
    assert master.get_timer() == 12.0


def test_idle_timeout() -> None:
    """wire-format.md 8.3: a peer silent for idle_timeout is declared dead: CLOSE(TIMEOUT)."""
    master, _worker = ready(now=0.0)
    beats = []
    while True:
        deadline = master.get_timer()
        assert deadline is not None
        master.handle_timer(deadline)
        sent = frames_of(master.data_to_send())
        assert len(sent) == 1
        if isinstance(sent[0], Close):
            break
        assert sent[0] == Heartbeat()
        beats.append(deadline)
    assert beats == [5.0, 10.0, 15.0, 20.0, 25.0]
    assert deadline == 30.0
    assert sent[0].code == ErrorCode.TIMEOUT
    # The local event says why, as the CLOSE does (an operator trial read "TIMEOUT: timed out" on the
    # master's side and "TIMEOUT: stream ended" on the worker's).
    why = "peer silent for longer than the idle timeout"
    assert sent[0].reason == why
    closed = master.next_event()
    assert closed == ConnectionClosed(clean=False, code=int(ErrorCode.TIMEOUT))
    assert isinstance(closed, ConnectionClosed) and closed.reason == why
    assert master.next_event() is None


def test_receiving_postpones_idle_timeout() -> None:
    """wire-format.md 8.3: the idle timer counts from the last byte received."""
    master, worker = ready(now=0.0)
    exchange(worker, master, Heartbeat(), now=20.0)
    master.handle_timer(30.0)
    assert frames_of(master.data_to_send()) == [Heartbeat()]
    assert master.state is ConnectionState.READY
    master.handle_timer(50.0)
    assert frames_of(master.data_to_send())[0].code == ErrorCode.TIMEOUT  # type: ignore[union-attr]


# -- closing (wire-format.md 8.4) ---------------------------------------------


def test_close_is_answered_by_close() -> None:
    """wire-format.md 8.4: a side receiving CLOSE answers with CLOSE and then stops sending."""
    master, worker = in_epoch()
    worker.close(0.0, ErrorCode.GOING_AWAY, "bye")
    assert worker.state is ConnectionState.CLOSING
    assert pump(worker, master) == [Close(code=int(ErrorCode.GOING_AWAY), reason="bye")]
    answer = frames_of(master.data_to_send())
    assert len(answer) == 1 and isinstance(answer[0], Close)
    assert master.state is ConnectionState.CLOSED
    feed(worker, encode_message(answer[0]))
    assert worker.state is ConnectionState.CLOSED
    assert worker.data_to_send() == b""  # no answer to the answer


def test_clean_close_then_eof_gives_one_connection_closed() -> None:
    """wire-format.md 8.4: after the CLOSE exchange and EOF each side gets one ConnectionClosed(clean)."""
    master, worker = ready()
    master.close(0.0)
    assert pump(master, worker) == [Close()]
    assert pump(worker, master) == [Close()]
    for conn in (master, worker):
        conn.receive_data(b"", 1.0)
        assert conn.next_event() == ConnectionClosed(clean=True, code=0)
        assert conn.next_event() is None
        conn.receive_data(b"", 2.0)
        assert conn.next_event() is None


def test_eof_without_close() -> None:
    """wire-format.md 8.4: a stream ending without CLOSE gives ConnectionClosed(clean=False, code=None)."""
    master, _worker = ready()
    master.receive_data(b"", 1.0)
    assert master.next_event() == ConnectionClosed(clean=False, code=None)
    assert master.next_event() is None
    assert master.state is ConnectionState.CLOSED


@pytest.mark.parametrize("cut", [1, 6, 7, 20])
def test_eof_inside_frame(cut: int) -> None:
    """wire-format.md 3: the stream ending inside a frame -> MALFORMED_FRAME."""
    _master, worker = ready()
    data = forge(Snapshot(epoch=0, vector=raw()))
    worker.receive_data(data[:cut], 0.0)
    assert worker.next_event() is None
    worker.receive_data(b"", 0.0)
    with pytest.raises(RemoteProtocolError) as info:
        worker.next_event()
    assert info.value.code == ErrorCode.MALFORMED_FRAME
    assert frames_of(worker.data_to_send())[0].code == ErrorCode.MALFORMED_FRAME  # type: ignore[union-attr]


def test_after_remote_error_connection_is_dead() -> None:
    """wire-format.md 8.4, 9: after a peer's violation next_event returns None and send raises."""
    _master, worker = in_epoch()
    assert_receive_rejected(worker, forge(Snapshot(epoch=0, vector=raw())), ErrorCode.UNKNOWN_EPOCH)
    worker.receive_data(forge(Heartbeat()), 1.0)
    assert worker.next_event() is None
    for event in (Heartbeat(), Close(), Gradient(epoch=0, version=0, vector=ZeroVector(D))):
        assert_send_rejected(worker, event)
    worker.close(1.0)  # close() after the end is a no-op
    assert worker.data_to_send() == b""
    worker.receive_data(b"", 2.0)
    assert worker.next_event() is None


def test_bytes_after_close_are_ignored() -> None:
    """WF-7.11-4: after receiving CLOSE every following byte on the stream is ignored."""
    _master, worker = ready()
    worker.receive_data(forge(Close(code=19, reason="bye")) + b"\x00garbage" + forge(Heartbeat()), 0.0)
    assert worker.next_event() == Close(code=19, reason="bye")
    assert worker.next_event() is None
    assert frames_of(worker.data_to_send()) == [Close()]  # WF-7.11-3: NO_ERROR, empty reason


def test_failure_while_closing_sends_nothing() -> None:
    """WF-8.4-3: a receiver failing in CLOSING sends no second CLOSE."""
    master, _worker = ready()
    master.close(0.0)
    master.data_to_send()
    master.receive_data(forge(Hello()), 0.0)
    with pytest.raises(RemoteProtocolError) as info:
        master.next_event()
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert master.data_to_send() == b""
    assert master.state is ConnectionState.CLOSED


def test_idle_timeout_while_closing_sends_nothing() -> None:
    """WF-8.3-3: in CLOSING the idle timeout ends the wait without sending CLOSE."""
    slow_close = ConnectionConfig(handshake_timeout=60.0)  # the close timeout comes after the idle one
    master, _worker = ready(now=0.0, master_config=slow_close)
    master.close(1.0)
    master.data_to_send()
    assert master.get_timer() == 30.0  # no heartbeat in CLOSING
    master.handle_timer(30.0)
    assert master.data_to_send() == b""
    assert master.next_event() == ConnectionClosed(clean=False, code=int(ErrorCode.TIMEOUT))


def test_close_timeout_ends_closing_whatever_the_peer_trickles() -> None:
    """WF-8.3-6: a peer that keeps sending bytes cannot hold a closing connection past the close timeout."""
    master, _worker = ready(now=0.0)
    master.close(1.0)
    master.data_to_send()
    assert master.get_timer() == 11.0  # the close timeout: the handshake timeout after our CLOSE
    for now in (3.0, 6.0, 9.0):
        master.receive_data(b"\x01", now)  # one byte of a frame that never completes
        assert master.next_event() is None
    master.handle_timer(11.0)
    assert master.data_to_send() == b""
    assert master.next_event() == ConnectionClosed(clean=False, code=int(ErrorCode.TIMEOUT))
    assert master.state is ConnectionState.CLOSED


def test_close_code_of_peer_is_reported() -> None:
    """wire-format.md 8.4: ConnectionClosed carries the code of the CLOSE that ended the session."""
    master, worker = ready()
    worker.close(0.0, ErrorCode.GOING_AWAY)
    pump(worker, master)
    pump(master, worker)
    master.receive_data(b"", 0.0)
    worker.receive_data(b"", 0.0)
    assert (
        master.next_event()
        == worker.next_event()
        == ConnectionClosed(clean=True, code=int(ErrorCode.GOING_AWAY))
    )


# -- byte counters ------------------------------------------------------------


def test_byte_counters_match_exchanged_bytes() -> None:
    """Byte accounting: bytes_sent and bytes_received per message type equal the bytes on the wire."""
    _, _, _, _, master, worker, master_stream, worker_stream = run_session(random_chunks(7))
    assert worker.bytes_received == count_frames(master_stream)
    assert master.bytes_received == count_frames(worker_stream)
    assert master.bytes_sent == count_frames(master_stream)
    assert worker.bytes_sent == count_frames(worker_stream)


def test_byte_counters_before_close() -> None:
    """Byte accounting: per-type counters of sender and receiver agree and match the wire, without CLOSE."""
    master, worker = in_epoch()
    streams = {M: bytearray(), W: bytearray()}
    gradient = quantize_gradient(raw().values, 3, np.random.default_rng(0))
    for src, dst, name, event in [
        (master, worker, M, FullGradient(epoch=0, vector=raw())),
        (master, worker, M, ModelMessage(epoch=0, version=0, vector=EqualsSnapshot(D))),
        (worker, master, W, Gradient(epoch=0, version=0, vector=gradient)),
        (worker, master, W, Heartbeat()),
    ]:
        src.send(event, 0.0)
        data = src.data_to_send()
        streams[name] += data
        feed(dst, data)
    assert worker.bytes_received == master.bytes_sent
    assert master.bytes_received == worker.bytes_sent
    assert count_frames(bytes(streams[M]))["FULL_GRADIENT"] == master.bytes_sent["FULL_GRADIENT"]
    assert count_frames(bytes(streams[W]))["GRADIENT"] == worker.bytes_sent["GRADIENT"]


def test_byte_counters_include_error_close() -> None:
    """Byte accounting: the CLOSE queued after a peer's violation is counted in bytes_sent."""
    _master, worker = ready()
    before = sum(worker.bytes_sent.values())
    worker.receive_data(forge(Hello()), 0.0)
    with pytest.raises(RemoteProtocolError):
        worker.next_event()
    data = worker.data_to_send()
    assert sum(worker.bytes_sent.values()) - before == len(data)


# -- WF-10-5: the session frame limit ---------------------------------------------------------------


@pytest.mark.parametrize("side", ["master", "worker"])
def test_after_config_a_frame_longer_than_the_session_limit_is_refused_on_its_header(side: str) -> None:
    """With d known, a header declaring more than max(handshake limit, 8 d + 64, ...) is FRAME_TOO_LARGE."""
    dim = 100_000
    master, worker = ready(dim=dim)
    receiver = master if side == "master" else worker
    limit = ConnectionConfig().limits.session_frame_bytes(dim)
    assert limit == 8 * dim + 64  # above the 65,536-byte handshake limit, below 2^28
    message_type = MessageType.SNAPSHOT_GRADIENT if side == "master" else MessageType.SNAPSHOT
    # A header declaring exactly the limit is waited on (the body has not come yet).
    receiver.receive_data(struct.pack("<BBBI", 1, message_type, 0, limit), 0.0)
    assert receiver.next_event() is None
    assert receiver.state is ConnectionState.READY
    # One byte more, on a fresh session: refused as soon as the header is in.
    master, worker = ready(dim=dim)
    receiver = master if side == "master" else worker
    assert_receive_rejected(
        receiver, struct.pack("<BBBI", 1, message_type, 0, limit + 1), ErrorCode.FRAME_TOO_LARGE
    )


def test_the_largest_message_of_a_session_fits_its_limit() -> None:
    """SNAPSHOT_GRADIENT with RAW_F64 and every varint at 9 bytes is within 8 d + 64 (the derived bound)."""
    for dim in (1, 123, 70_000):
        vector = RawVector(np.full(dim, 1e300))
        event = SnapshotGradient(
            epoch=2**63 - 1, samples=2**63 - 1, correct=2**63 - 1, loss=1e300, vector=vector
        )
        body = len(encode_message(event, 1)) - 7
        assert body <= 8 * dim + 64
        assert body <= ConnectionConfig().limits.session_frame_bytes(dim)


def test_a_run_of_heartbeats_is_read_in_bulk_as_one_event() -> None:
    """100,000 HEARTBEATs (an attack review's flood cost the master 18 us each) are one event; the
    counters count every frame, and what follows the run is read as usual, in order."""
    master, _ = ready()
    heartbeat = encode_message(Heartbeat())
    error = encode_message(ErrorMessage(code=60000, reason="after"))
    master.receive_data(heartbeat * 100_000 + error + heartbeat * 3, 1.0)
    events = []
    while (event := master.next_event()) is not None:
        events.append(event)
    assert events == [Heartbeat(), ErrorMessage(code=60000, reason="after"), Heartbeat()]
    assert master.messages_received["HEARTBEAT"] == 100_003
    assert master.bytes_received["HEARTBEAT"] == 0
    assert master.state is ConnectionState.READY
    # A HEARTBEAT of another version is still checked frame by frame, and refused.
    master.receive_data(bytes([2]) + heartbeat[1:], 2.0)
    with pytest.raises(RemoteProtocolError) as info:
        master.next_event()
    assert info.value.code == ErrorCode.UNSUPPORTED_VERSION


def test_a_refused_peer_gets_close_and_nothing_more_is_read() -> None:
    """refuse(): the application's refusal closes as a failure does (wire-format.md 8.4-3): CLOSE with
    the code, CLOSED at once, and what the peer sends after it is not parsed (a re-attack: a refused
    worker's flood of ERRORs was still decoded, one by one, until its own CLOSE came)."""
    master, _ = ready()
    master.refuse(ErrorCode.LIMIT_EXCEEDED, "too many")
    assert master.state is ConnectionState.CLOSED
    assert frames_of(master.data_to_send()) == [Close(code=int(ErrorCode.LIMIT_EXCEEDED), reason="too many")]
    master.receive_data(encode_message(ErrorMessage(code=60000, reason="x")) * 1000, 1.0)
    assert master.next_event() is None
    assert master.messages_received.get("ERROR", 0) == 0
