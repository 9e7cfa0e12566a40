"""Property tests of the wire codec (wire-format.md 3, 4, 5, 7, 9, 10).

- decode(encode(x)) == x for every message and every vector encoding;
- any chunking of a stream of frames gives the same events;
- garbage (random bytes, mutated, truncated or padded frames) raises only
  CodecError from the codec and only RemoteProtocolError from a connection,
  and decoding stays within the memory the limits allow.
"""

from __future__ import annotations

import contextlib
import math
import tracemalloc

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiodq.codec.cursor import MAX_VARINT, Cursor, uvarint
from aiodq.codec.events import (
    Close,
    ConfigMessage,
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
from aiodq.codec.messages import DecodeContext, decode_message, encode_message
from aiodq.codec.payload import decode_vector, encode_vector, plan_vector
from aiodq.codec.registry import Encoding
from aiodq.codec.vectors import (
    MAX_QSGD_LEVELS,
    DenseQuantized,
    EqualsSnapshot,
    QSGDVector,
    RawVector,
    SparseQuantized,
    Vector,
    ZeroVector,
)
from aiodq.config import Limits
from aiodq.errors import CodecError, RemoteProtocolError
from aiodq.protocol.connection import ConnectionState, MasterConnection, WorkerConnection

SETTINGS = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DIMS = st.integers(1, 300)
COUNTERS = st.integers(0, MAX_VARINT)
SMALL_COUNTERS = st.integers(0, 1000)
F32_SCALES = st.floats(
    min_value=2.0**-126, max_value=2.0**100, width=32, allow_nan=False, allow_infinity=False
)

# -- vector strategies (wire-format.md 5) -------------------------------------


@st.composite
def raw_vectors(draw: st.DrawFn, dim: int | None = None, dtype: type | None = None) -> RawVector:
    n = draw(DIMS) if dim is None else dim
    kind = draw(st.sampled_from([np.float32, np.float64])) if dtype is None else dtype
    width = 32 if kind == np.float32 else 64
    values = draw(
        st.lists(st.floats(allow_nan=False, allow_infinity=False, width=width), min_size=n, max_size=n)
    )
    return RawVector(np.array(values, dtype=kind))


@st.composite
def dense_vectors(draw: st.DrawFn, dim: int | None = None) -> DenseQuantized:
    n = draw(DIMS) if dim is None else dim
    bits = draw(st.integers(1, 16))
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = draw(st.lists(st.integers(low, high), min_size=n, max_size=n))
    if not any(codes):  # WF-5.5-4: the zero vector is ZERO, not DENSE
        codes[draw(st.integers(0, n - 1))] = draw(st.integers(low, high).filter(bool))
    return DenseQuantized(bits=bits, scale=draw(F32_SCALES), codes=np.array(codes, dtype=np.int64))


@st.composite
def dense_rice_vectors(draw: st.DrawFn, dim: int | None = None) -> DenseQuantized:
    """Codes like a quantized model's or gradient's, mostly small, asking for DENSE_RICE (5.8)."""
    n = draw(st.one_of(DIMS, st.integers(24, 300))) if dim is None else dim  # Rice wins at larger d
    bits = draw(st.integers(1, 16))
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    spread = draw(st.integers(0, bits - 1))  # codes mostly within +-2^spread
    small = st.integers(max(low, -(1 << spread)), min(high, (1 << spread) - 1))
    code = st.one_of(st.just(0), st.just(0), small, st.sampled_from([low, high]))
    codes = draw(st.lists(code, min_size=n, max_size=n))
    if not any(codes):  # WF-5.8-5 step 10: the zero vector is ZERO
        codes[draw(st.integers(0, n - 1))] = low
    return DenseQuantized(bits=bits, scale=draw(F32_SCALES), codes=np.array(codes, dtype=np.int64))


@st.composite
def sparse_vectors(draw: st.DrawFn, dim: int | None = None) -> SparseQuantized:
    n = draw(DIMS) if dim is None else dim
    bits = draw(st.integers(1, 16))
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    indices = sorted(draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n)))
    nonzero = st.integers(low, high).filter(bool)
    codes = draw(st.lists(nonzero, min_size=len(indices), max_size=len(indices)))
    return SparseQuantized(
        dim=n, bits=bits, scale=draw(F32_SCALES), indices=np.array(indices), codes=np.array(codes)
    )


@st.composite
def qsgd_vectors(draw: st.DrawFn, dim: int | None = None) -> QSGDVector:
    n = draw(DIMS) if dim is None else dim
    s = draw(st.one_of(st.integers(1, 16), st.integers(1, MAX_QSGD_LEVELS)))
    levels = draw(st.lists(st.integers(-s, s), min_size=n, max_size=n))
    if not any(levels):  # WF-5.7-5: the zero vector is ZERO, not QSGD
        levels[draw(st.integers(0, n - 1))] = draw(st.integers(-s, s).filter(bool))
    return QSGDVector(s=s, norm=draw(F32_SCALES), levels=np.array(levels, dtype=np.int64))


def zero_vectors(dim: int | None = None) -> st.SearchStrategy[ZeroVector]:
    return st.builds(ZeroVector, DIMS if dim is None else st.just(dim))


def equals_vectors(dim: int | None = None) -> st.SearchStrategy[EqualsSnapshot]:
    return st.builds(EqualsSnapshot, DIMS if dim is None else st.just(dim))


def model_vectors(dim: int | None = None) -> st.SearchStrategy[tuple[Vector, bool]]:
    flagged = st.one_of(raw_vectors(dim), dense_vectors(dim), dense_rice_vectors(dim))
    return st.one_of(
        st.tuples(flagged, st.booleans()),
        st.tuples(st.one_of(zero_vectors(dim), equals_vectors(dim)), st.just(False)),
    )


def gradient_vectors(dim: int | None = None) -> st.SearchStrategy[Vector]:
    return st.one_of(
        raw_vectors(dim),
        zero_vectors(dim),
        dense_vectors(dim),
        dense_rice_vectors(dim),
        sparse_vectors(dim),
        qsgd_vectors(dim),
    )


# -- event strategies (wire-format.md 7) --------------------------------------

TEXT = st.text(max_size=40)
ENCODING_SETS = st.frozensets(st.integers(0, 15))
PARAM_VALUES = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    low = draw(st.integers(1, 255))
    high = draw(st.integers(low, 255))
    name = draw(st.text(max_size=60).filter(lambda s: len(s.encode()) <= 255))
    return Hello(min_version=low, max_version=high, encodings=draw(ENCODING_SETS), name=name)


def events(dim: int | None = None) -> st.SearchStrategy[Event]:
    """Every message type; with ``dim``, vectors of that dimension."""
    reasons = st.text(max_size=100)
    return st.one_of(
        hellos(),
        st.builds(Welcome, version=st.integers(1, 255), worker_id=COUNTERS, encodings=ENCODING_SETS),
        st.builds(
            ConfigMessage,
            dim=st.integers(1, 1 << 24) if dim is None else st.just(dim),
            algorithm=st.text(min_size=1, max_size=20),
            params=st.dictionaries(TEXT, PARAM_VALUES, max_size=5),
        ),
        st.builds(Snapshot, epoch=COUNTERS, vector=raw_vectors(dim)),
        st.builds(
            SnapshotGradient,
            epoch=COUNTERS,
            samples=COUNTERS,
            loss=st.floats(allow_nan=False, allow_infinity=False),
            correct=COUNTERS,
            vector=raw_vectors(dim),
        ),
        st.builds(FullGradient, epoch=COUNTERS, vector=raw_vectors(dim)),
        st.builds(
            lambda epoch, version, pair: ModelMessage(
                epoch=epoch, version=version, vector=pair[0], relative=pair[1]
            ),
            COUNTERS,
            COUNTERS,
            model_vectors(dim),
        ),
        st.builds(Gradient, epoch=COUNTERS, version=COUNTERS, vector=gradient_vectors(dim)),
        st.builds(Heartbeat),
        st.builds(
            ErrorMessage, code=st.integers(0, 0xFFFF), epoch=COUNTERS, version=COUNTERS, reason=reasons
        ),
        st.builds(Close, code=st.integers(0, 0xFFFF), reason=reasons),
    )


DEFAULT_CONTEXT = DecodeContext()


def decode_stream(data: bytes, context: DecodeContext = DEFAULT_CONTEXT) -> list[Event]:
    reader = FrameReader(context.limits)
    reader.feed(data)
    out = []
    while (frame := reader.next_frame()) is not None:
        out.append(decode_message(frame, context))
    assert reader.buffered == 0
    return out


# -- round trips --------------------------------------------------------------


@settings(SETTINGS, max_examples=600)
@given(event=events(), version=st.integers(1, 255))
def test_decode_encode_roundtrip(event: Event, version: int) -> None:
    """wire-format.md 5, 7: decode(encode(x)) == x for every message and vector encoding."""
    data = encode_message(event, version)
    assert decode_stream(data) == [event]
    # wire-format.md 6.1: HELLO and WELCOME carry version 1, the others the given one.
    assert data[0] == (1 if isinstance(event, Hello | Welcome) else version)


@settings(SETTINGS, max_examples=300)
@given(vector=gradient_vectors())
def test_encoding_is_canonical(vector: Vector) -> None:
    """wire-format.md 5: re-encoding a decoded vector gives the same bytes (one encoding per value)."""
    data = encode_message(Gradient(epoch=0, version=0, vector=vector))
    (decoded,) = decode_stream(data)
    assert encode_message(decoded) == data


def _dense_rice_size(codes: np.ndarray, bits: int) -> tuple[int, int]:
    """(k*, R(k*)) straight from wire-format.md 5.8-2 and 5.8-4, with Python integers."""
    values = [2 * int(c) if c >= 0 else -2 * int(c) - 1 for c in codes]
    d = len(values)
    sizes = [1 + math.ceil(d * k / 8) + math.ceil((sum(z >> k for z in values) + d) / 8) for k in range(bits)]
    return sizes.index(min(sizes)), min(sizes)


@settings(SETTINGS, max_examples=250)
@given(vector=dense_rice_vectors())
def test_dense_rice_roundtrip(vector: DenseQuantized) -> None:
    """wire-format.md 5.8: Rice-coded where smaller; decode(encode(v)) == v; re-encoding is byte-exact."""
    plan = plan_vector(vector, dense_rice=True)
    data = b"".join(encode_vector(vector, plan))
    cursor = Cursor(data)
    decoded = decode_vector(cursor, Limits(), expected_dim=vector.dim)
    assert cursor.remaining == 0
    assert decoded.vector == vector and decoded.encoding is plan.encoding
    assert decoded.payload_bits == plan.payload_bits == vector.dim * vector.bits + 32
    assert isinstance(decoded.vector, DenseQuantized)
    assert decoded.vector.bits == vector.bits and decoded.vector.scale == vector.scale
    assert decoded.vector.codes.tolist() == vector.codes.tolist()
    assert b"".join(encode_vector(decoded.vector, plan_vector(decoded.vector, dense_rice=True))) == data
    # 5.8-4: DENSE_RICE with k = k* exactly when that block is smaller than the DENSE codes.
    k, size = _dense_rice_size(vector.codes, vector.bits)
    if size < math.ceil(vector.dim * vector.bits / 8):
        assert data[0] == Encoding.DENSE_RICE << 4 | (vector.bits - 1)
        head = 1 + len(uvarint(vector.dim)) + 4
        assert data[head] == k and len(data) == head + size
    else:
        assert data[0] >> 4 == Encoding.DENSE
    # The same value as plain DENSE (5-2): equal vectors, and a frame round trip of both.
    assert decode_vector(Cursor(b"".join(encode_vector(vector))), Limits()).vector == vector
    for dense_rice in (True, False):
        frame = encode_message(Gradient(epoch=1, version=2, vector=vector), dense_rice=dense_rice)
        (event,) = decode_stream(frame, DecodeContext(dim=vector.dim))
        assert event == Gradient(epoch=1, version=2, vector=vector)
        assert encode_message(event, dense_rice=dense_rice) == frame


@settings(SETTINGS, max_examples=200)
@given(
    dim=st.integers(1, 120),
    data=st.data(),
)
def test_roundtrip_with_configured_dimension(dim: int, data: st.DataObject) -> None:
    """wire-format.md 7.3: with a configured d, vectors of dimension d decode to themselves."""
    batch = data.draw(st.lists(events(dim), min_size=1, max_size=4))
    context = DecodeContext(dim=dim)
    stream = b"".join(encode_message(e) for e in batch)
    assert decode_stream(stream, context) == batch


@settings(SETTINGS, max_examples=300)
@given(
    batch=st.lists(events(), min_size=1, max_size=6),
    cuts=st.lists(st.integers(0, 1 << 20), max_size=30),
)
def test_chunking_invariance(batch: list[Event], cuts: list[int]) -> None:
    """wire-format.md 3: any split of a stream of frames yields the same events."""
    stream = b"".join(encode_message(e) for e in batch)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    reader = FrameReader(Limits())
    got: list[Event] = []
    start = 0
    for end in [*points, len(stream)]:
        reader.feed(stream[start:end])
        start = end
        while (frame := reader.next_frame()) is not None:
            got.append(decode_message(frame, DecodeContext()))
    assert got == batch
    assert reader.buffered == 0


# -- garbage robustness (wire-format.md 9, 10) --------------------------------

SMALL_LIMITS = Limits(max_dimension=1000, max_frame_bytes=4096, max_control_bytes=1024, max_reason_bytes=256)


def valid_frames(dim: int | None = None) -> st.SearchStrategy[bytes]:
    return st.lists(events(dim), min_size=1, max_size=3).map(lambda b: b"".join(encode_message(e) for e in b))


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid stream with byte flips, truncations, insertions and deletions."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
    return bytes(data)


@st.composite
def reframed(draw: st.DrawFn, dim: int | None = None) -> bytes:
    """One message whose body is mutated and re-framed with a consistent length and any header bytes."""
    event = draw(events(dim))
    body = encode_message(event)[7:]
    body = draw(mutated(st.just(body)))
    original = encode_message(event)
    version = draw(st.one_of(st.just(original[0]), st.integers(0, 255)))
    kind = draw(st.one_of(st.just(original[1]), st.integers(0, 255)))
    flags = draw(st.one_of(st.just(original[2]), st.integers(0, 255)))
    return encode_frame(version, kind, flags, [body])


def garbage(dim: int | None = None) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=200),
        st.binary(min_size=2, max_size=100).map(
            lambda b: bytes([1, b[0] % 12, 0]) + len(b[1:]).to_bytes(4, "little") + b[1:]
        ),
        mutated(valid_frames(dim)),
        reframed(dim),
        reframed(dim),
    )


def codec_decode_all(data: bytes, context: DecodeContext) -> None:
    """Feed ``data`` to a FrameReader and decode every frame; only CodecError may escape."""
    reader = FrameReader(context.limits)
    reader.feed(data)
    try:
        while (frame := reader.next_frame()) is not None:
            decode_message(frame, context)
    except CodecError:
        pass


@settings(SETTINGS, max_examples=600)
@given(data=garbage(), dim=st.one_of(st.none(), st.integers(1, 300)))
def test_codec_garbage_raises_only_codec_error(data: bytes, dim: int | None) -> None:
    """wire-format.md 9: bad bytes raise only CodecError (no IndexError, struct.error, numpy, msgpack)."""
    for limits in (Limits(), SMALL_LIMITS):
        codec_decode_all(data, DecodeContext(limits=limits, dim=dim))


@settings(SETTINGS, max_examples=400)
@given(data=garbage(dim=40))
def test_codec_garbage_with_matching_dimension(data: bytes) -> None:
    """wire-format.md 9: mutations of frames with the configured dimension raise only CodecError."""
    codec_decode_all(data, DecodeContext(dim=40))


@settings(SETTINGS, max_examples=300)
@given(
    data=mutated(
        st.one_of(sparse_vectors(), qsgd_vectors(), dense_vectors(), dense_rice_vectors(), raw_vectors()).map(
            lambda v: b"".join(encode_vector(v))
        )
    )
)
def test_vector_payload_garbage_raises_only_codec_error(data: bytes) -> None:
    """wire-format.md 5, 9: mutated vector payloads raise only CodecError, whatever the limits."""
    for limits in (Limits(), SMALL_LIMITS):
        with contextlib.suppress(CodecError):
            decode_vector(Cursor(data), limits)


def ready_pair(dim: int) -> tuple[MasterConnection, WorkerConnection]:
    master, worker = MasterConnection(), WorkerConnection()
    worker.send(Hello(), 0.0)
    master.receive_data(worker.data_to_send(), 0.0)
    assert master.next_event() == Hello()
    master.send(Welcome(), 0.0)
    master.send(ConfigMessage(dim=dim, algorithm="asylpg"), 0.0)
    worker.receive_data(master.data_to_send(), 0.0)
    while worker.next_event() is not None:
        pass
    assert master.state is worker.state is ConnectionState.READY
    return master, worker


def connection_feed_all(conn: MasterConnection | WorkerConnection, data: bytes, eof: bool) -> None:
    """Feed garbage to a connection; only RemoteProtocolError may escape, after which it is dead."""
    conn.receive_data(data, 1.0)
    if eof:
        conn.receive_data(b"", 2.0)
    try:
        for _ in range(100):
            if conn.next_event() is None:
                break
    except RemoteProtocolError:
        assert conn.state is ConnectionState.CLOSED
        assert conn.next_event() is None


@settings(SETTINGS, max_examples=250)
@given(data=garbage(dim=40), eof=st.booleans())
def test_connection_garbage_raises_only_remote_protocol_error(data: bytes, eof: bool) -> None:
    """wire-format.md 9: a READY connection fed bad bytes raises only RemoteProtocolError."""
    master, worker = ready_pair(40)
    connection_feed_all(master, data, eof)
    connection_feed_all(worker, data, eof)


@settings(SETTINGS, max_examples=300)
@given(data=garbage(), eof=st.booleans())
def test_connection_garbage_in_handshake(data: bytes, eof: bool) -> None:
    """wire-format.md 9: a connection in the handshake fed bad bytes raises only RemoteProtocolError."""
    connection_feed_all(MasterConnection(), data, eof)
    connection_feed_all(WorkerConnection(), data, eof)


@settings(SETTINGS, max_examples=300)
@given(data=st.one_of(mutated(valid_frames()), reframed(), reframed(dim=1000)))
def test_decoder_memory_is_bounded_by_limits(data: bytes) -> None:
    """wire-format.md 10: with small limits, decoding any input allocates well under 1 MB."""
    context = DecodeContext(limits=SMALL_LIMITS, dim=None)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline, _ = tracemalloc.get_traced_memory()
        codec_decode_all(data, context)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - baseline - len(data) < 1 << 20


def test_declared_sizes_do_not_allocate() -> None:
    """wire-format.md 10: huge declared dimensions and counts are refused before any allocation."""
    bodies = [
        bytes([0x00]) + uvarint(10**9),  # RAW_F32 with d = 10**9, no values
        bytes([0x4F]) + uvarint(2**40) + b"\x00\x00\x80\x3f",  # DENSE 16 bits
        bytes([0x5F]) + uvarint(999) + uvarint(2**40) + b"\x00\x00\x80\x3f",  # sparse nnz > d
        bytes([0x70]) + uvarint(999) + uvarint(0xFFFF) + b"\x00\x00\x80\x3f" + b"\xff" * 2000,  # QSGD
        bytes([0x8F]) + uvarint(2**40) + b"\x00\x00\x80\x3f" + b"\x0f",  # DENSE_RICE, k = 15
        bytes([0x8F]) + uvarint(999) + b"\x00\x00\x80\x3f" + b"\x00" + b"\xff" * 1500,  # unary > d
    ]
    for body in bodies:
        frame = encode_frame(1, 0x08, 0, [uvarint(0), uvarint(0), body])
        tracemalloc.start()
        try:
            codec_decode_all(frame, DecodeContext(limits=SMALL_LIMITS))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20
