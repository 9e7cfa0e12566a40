"""Targeted codec tests: frames, varints, vector payloads and their sizes (wire-format.md 3, 4.2, 5, 10)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from aiodq.codec.bitcodes import MAX_RICE_K, QuotientSums, rice_choose, unary_encode
from aiodq.codec.cursor import MAX_VARINT, Cursor, uvarint
from aiodq.codec.events import Gradient, Heartbeat, ModelMessage, Snapshot
from aiodq.codec.frames import HEADER_SIZE, FrameReader, encode_frame
from aiodq.codec.lowp import quantize_gradient
from aiodq.codec.messages import DecodeContext, decode_message, encode_message
from aiodq.codec.payload import (
    _dense_rice_choose,
    decode_vector,
    dense_rice_choose,
    encode_vector,
    plan_vector,
    unzigzag,
    zigzag,
)
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
from aiodq.config import Limits
from aiodq.errors import CodecError, ErrorCode


def encoding_of(vector: Vector, *, dense_rice: bool = False) -> Encoding:
    """The encoding the codec chooses for ``vector`` (wire-format.md 5)."""
    return plan_vector(vector, dense_rice=dense_rice).encoding


def rice_encoded(vector: Vector) -> bytes:
    """The payload of ``vector`` sent by a side that prefers DENSE_RICE (5.8)."""
    return b"".join(encode_vector(vector, plan_vector(vector, dense_rice=True)))


LIMITS = Limits()


def roundtrip(vector: Vector, limits: Limits = LIMITS, *, dense_rice: bool = False) -> Vector:
    """Encode then decode a vector payload, checking every byte is consumed."""
    data = b"".join(encode_vector(vector, plan_vector(vector, dense_rice=dense_rice)))
    cursor = Cursor(data)
    decoded = decode_vector(cursor, limits, expected_dim=vector.dim)
    assert cursor.remaining == 0
    return decoded.vector


def decode_payload(data: bytes, limits: Limits = LIMITS) -> Vector:
    return decode_vector(Cursor(data), limits).vector


def one_frame(data: bytes, limits: Limits = LIMITS) -> object:
    reader = FrameReader(limits)
    reader.feed(data)
    frame = reader.next_frame()
    assert frame is not None and reader.buffered == 0
    return decode_message(frame, DecodeContext(limits=limits))


# -- frames (wire-format.md 3) ------------------------------------------------


def test_frame_header_layout() -> None:
    """wire-format.md 3: version, type, flags, then the body length as u32 little-endian."""
    body = bytes(range(256)) + b"\x01\x02"
    frame = encode_frame(1, 0x08, 0x01, [body[:100], body[100:]])
    assert frame[:HEADER_SIZE] == bytes([1, 0x08, 0x01, 0x02, 0x01, 0x00, 0x00])
    assert frame[HEADER_SIZE:] == body
    assert encode_message(Heartbeat()) == bytes([1, MessageType.HEARTBEAT, 0, 0, 0, 0, 0])
    model = encode_message(ModelMessage(epoch=1, version=2, vector=RawVector(np.ones(3)), relative=True))
    assert model[1] == MessageType.MODEL and model[2] == 0x01
    assert int.from_bytes(model[3:7], "little") == len(model) - HEADER_SIZE


def test_frame_reader_hands_out_whole_frames_only() -> None:
    """wire-format.md 3: a frame is consumed only once whole; byte-by-byte feeding gives the same frames."""
    stream = (
        encode_frame(1, 9, 0, []) + encode_frame(1, 10, 0, [b"abc"]) + encode_frame(3, 200, 7, [b"z" * 70])
    )
    for step in (1, 2, 7, 8, len(stream)):
        reader = FrameReader(LIMITS)
        frames = []
        for pos in range(0, len(stream), step):
            reader.feed(stream[pos : pos + step])
            while (frame := reader.next_frame()) is not None:
                frames.append(frame)
        assert [(f.version, f.type, f.flags, f.body) for f in frames] == [
            (1, 9, 0, b""),
            (1, 10, 0, b"abc"),
            (3, 200, 7, b"z" * 70),
        ]
        assert reader.buffered == 0


def test_decoding_the_bytes_of_a_frame_is_a_type_error_saying_what_to_do() -> None:
    """An API audit: encode_message's bytes given to decode_message raised AttributeError."""
    data = encode_message(Heartbeat())
    with pytest.raises(TypeError, match=r"^decoding takes a Frame \(FrameReader.next_frame\(\)\), not bytes"):
        decode_message(data, DecodeContext())  # type: ignore[arg-type]
    reader = FrameReader(LIMITS)
    reader.feed(data)
    frame = reader.next_frame()
    assert frame is not None and decode_message(frame, DecodeContext()) == Heartbeat()


def test_frame_limit_checked_from_header_alone() -> None:
    """wire-format.md 3, 10: a declared length over the limit fails after the 7 header bytes alone."""
    limits = Limits(max_frame_bytes=64)
    header = bytes([1, MessageType.SNAPSHOT, 0]) + (65).to_bytes(4, "little")
    reader = FrameReader(limits)
    reader.feed(header[:6])
    assert reader.next_frame() is None
    reader.feed(header[6:])
    with pytest.raises(CodecError) as info:
        reader.next_frame()
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE
    huge = bytes([1, MessageType.SNAPSHOT, 0]) + (0xFFFF_FFFF).to_bytes(4, "little")
    reader = FrameReader(Limits())
    reader.feed(huge)
    with pytest.raises(CodecError) as info:
        reader.next_frame()
    assert info.value.code == ErrorCode.FRAME_TOO_LARGE


def test_limits_refuse_a_model_whose_vectors_they_would_refuse() -> None:
    """A RAW_F64 vector of d takes 8 d + 64 bytes of frame (wire-format.md 10-4): a master with less
    would refuse every honest snapshot report, and blame the worker (a newcomer's 100 for d = 123)."""
    Limits(max_frame_bytes=8 * 123 + 64, max_dimension=123).check_model(123)
    with pytest.raises(ValueError, match=r"^the model has 124 parameters, above max_dimension 123$"):
        Limits(max_dimension=123).check_model(124)
    with pytest.raises(ValueError) as info:
        Limits(max_frame_bytes=1047).check_model(123)
    assert str(info.value) == (
        "the model has 123 parameters, whose vectors take frames of up to 1,048 bytes, "
        "above max_frame_bytes 1,047"
    )
    with pytest.raises(ValueError, match=r"above --max-frame-bytes 1,047$"):
        Limits(max_frame_bytes=1047).check_model(123, options=True)


def test_limits_fitting_a_model_raise_only_what_its_sessions_need() -> None:
    """max_dimension to d and the frame limit to a RAW_F64 frame of d (8 d + 64 bytes), never lower;
    beyond the 32-bit frame length (d > (2**32 - 1 - 64) / 8) a model cannot travel at all."""
    assert Limits().fitting(123) == Limits()
    big = Limits().fitting((1 << 24) + 8)
    assert big.max_dimension == (1 << 24) + 8 and big.max_frame_bytes == 1 << 28  # 8 d + 64 < 2**28
    huge = Limits(max_reason_bytes=7).fitting(40_000_000)
    assert (huge.max_dimension, huge.max_frame_bytes, huge.max_reason_bytes) == (40_000_000, 320_000_064, 7)
    assert huge.session_frame_bytes(40_000_000) == 8 * 40_000_000 + 64
    largest = (0xFFFF_FFFF - 64) // 8
    assert Limits().fitting(largest).max_frame_bytes == 8 * largest + 64 <= 0xFFFF_FFFF
    for dim in (largest + 1, 0):
        with pytest.raises(ValueError, match="cannot travel in frames"):
            Limits().fitting(dim)


def test_frame_at_limit_is_accepted() -> None:
    """wire-format.md 10: a body of exactly max_frame_bytes is allowed."""
    limits = Limits(max_frame_bytes=64)
    reader = FrameReader(limits)
    reader.feed(encode_frame(1, 9, 0, [b"x" * 64])[:-1])
    assert reader.next_frame() is None
    reader.feed(b"x")
    frame = reader.next_frame()
    assert frame is not None and len(frame.body) == 64


# -- varints (wire-format.md 4.2) ---------------------------------------------

VARINTS = [
    (0, "00"),
    (1, "01"),
    (127, "7f"),
    (128, "8001"),
    (300, "ac02"),
    (16383, "ff7f"),
    (16384, "808001"),
    (MAX_VARINT, "ffffffffffffffff7f"),
]


@pytest.mark.parametrize(("value", "hex_bytes"), VARINTS)
def test_varint_known_encodings(value: int, hex_bytes: str) -> None:
    """wire-format.md 4.2: unsigned LEB128, shortest form, both directions."""
    assert uvarint(value).hex() == hex_bytes
    cursor = Cursor(bytes.fromhex(hex_bytes))
    assert cursor.uvarint("v") == value
    assert cursor.remaining == 0


def test_varint_boundaries_roundtrip() -> None:
    """wire-format.md 4.2: every 7-bit boundary round-trips and uses ceil(bits / 7) bytes."""
    for n in range(1, 64):
        for value in (2**n - 1, 2**n, 2**n + 1):
            if value > MAX_VARINT:
                continue
            data = uvarint(value)
            assert len(data) == max(1, math.ceil(value.bit_length() / 7))
            assert Cursor(data).uvarint("v") == value


@pytest.mark.parametrize("value", [-1, MAX_VARINT + 1, 2**64])
def test_varint_encode_out_of_range(value: int) -> None:
    """wire-format.md 4.2: a varint carries 0 .. 2**63 - 1."""
    with pytest.raises(ValueError):
        uvarint(value)


@pytest.mark.parametrize(
    "hex_bytes",
    [
        "8000",  # 0 in two bytes
        "8100",  # 1 in two bytes
        "ff8000",  # trailing zero group
        "80808080808080808001",  # 2**63: ten bytes
        "ffffffffffffffffff01",  # 2**64 - 1
        "ffffffffffffffff8f00",  # non-shortest and too long
        "80",  # truncated
        "ffff",  # truncated
        "",  # empty
    ],
)
def test_varint_decode_rejects_bad_forms(hex_bytes: str) -> None:
    """wire-format.md 4.2: non-shortest, over-long, overflowing or truncated varints -> MALFORMED_FRAME."""
    with pytest.raises(CodecError) as info:
        Cursor(bytes.fromhex(hex_bytes)).uvarint("v")
    assert info.value.code == ErrorCode.MALFORMED_FRAME


# -- vector encodings (wire-format.md 5) --------------------------------------

DIMS = [1, 7, 8, 9, 13, 100]


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_raw_roundtrip(dim: int, dtype: type) -> None:
    """wire-format.md 5.2: RAW_F32 and RAW_F64 carry every coordinate as IEEE-754 little-endian."""
    values = np.random.default_rng(dim).standard_normal(dim).astype(dtype)
    values[0] = -0.0 if dim > 1 else np.finfo(dtype).max
    vector = RawVector(values)
    decoded = roundtrip(vector)
    assert decoded == vector
    assert isinstance(decoded, RawVector) and decoded.values.dtype == dtype
    assert decoded.values.tobytes() == values.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    payload = b"".join(encode_vector(vector))
    assert payload[0] == (0x00 if dtype == np.float32 else 0x10)
    assert len(payload) == 1 + len(uvarint(dim)) + dim * np.dtype(dtype).itemsize


@pytest.mark.parametrize("dim", DIMS)
def test_zero_and_equals_snapshot_roundtrip(dim: int) -> None:
    """wire-format.md 5.3, 5.4: ZERO and EQUALS_SNAPSHOT are a descriptor and the dimension only."""
    assert b"".join(encode_vector(ZeroVector(dim))) == bytes([0x20]) + uvarint(dim)
    assert b"".join(encode_vector(EqualsSnapshot(dim))) == bytes([0x30]) + uvarint(dim)
    assert roundtrip(ZeroVector(dim)) == ZeroVector(dim)
    assert roundtrip(EqualsSnapshot(dim)) == EqualsSnapshot(dim)


@pytest.mark.parametrize("bits", range(1, 17))
@pytest.mark.parametrize("dim", DIMS)
def test_dense_roundtrip_every_width(bits: int, dim: int) -> None:
    """wire-format.md 5.5: DENSE packs dim codes of b bits (1..16), two's complement, zero padding."""
    rng = np.random.default_rng(bits * 1000 + dim)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = rng.integers(low, high + 1, dim)
    codes[0] = low
    if dim > 1:
        codes[-1] = high
    vector = DenseQuantized(bits=bits, scale=0.375, codes=codes)
    payload = b"".join(encode_vector(vector))
    assert payload[0] == 0x40 | (bits - 1)
    assert len(payload) == 1 + len(uvarint(dim)) + 4 + math.ceil(dim * bits / 8)
    used = dim * bits % 8
    if used:
        assert payload[-1] >> used == 0  # padding bits are zero
    decoded = roundtrip(vector)
    assert decoded == vector
    assert np.array_equal(decoded.to_dense(), vector.to_dense())


def test_dense_nonzero_padding_rejected() -> None:
    """wire-format.md 5.1: padding bits of a packed code stream MUST be zero."""
    vector = DenseQuantized(bits=3, scale=1.0, codes=np.array([1, -1, 2]))
    payload = bytearray(b"".join(encode_vector(vector)))
    payload[-1] |= 0x80
    with pytest.raises(CodecError) as info:
        decode_payload(bytes(payload))
    assert info.value.code == ErrorCode.INVALID_PAYLOAD


@pytest.mark.parametrize("bits", [1, 2, 5, 8, 11, 16])
@pytest.mark.parametrize("dim", DIMS)
def test_sparse_roundtrip(bits: int, dim: int) -> None:
    """wire-format.md 5.6: sparse vectors round-trip under either index encoding."""
    rng = np.random.default_rng(bits * 7 + dim)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for nnz in sorted({1, max(1, dim // 10), max(1, dim // 2), dim}):
        indices = np.sort(rng.choice(dim, nnz, replace=False))
        codes = rng.integers(low, high + 1, nnz)
        codes[codes == 0] = low
        vector = SparseQuantized(dim=dim, bits=bits, scale=2.0**-20, indices=indices, codes=codes)
        assert roundtrip(vector) == vector


@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("s", [1, 2, 7, 255, 0xFFFF])
def test_qsgd_roundtrip(dim: int, s: int) -> None:
    """wire-format.md 5.7: QSGD levels in Elias gamma code with separate signs round-trip."""
    rng = np.random.default_rng(dim + s)
    levels = rng.integers(-s, s + 1, dim)
    levels[0] = s
    if dim > 2:
        levels[1] = -s
        levels[2] = 0
    vector = QSGDVector(s=s, norm=3.5, levels=levels)
    assert roundtrip(vector) == vector


@pytest.mark.parametrize("dim", [1, 9, 100])
def test_all_zero_dense_and_qsgd_payloads_rejected(dim: int) -> None:
    """WF-5.4-4, 5.5-4, 5.7-5: ZERO is the only quantized zero vector; all-zero DENSE or QSGD is invalid."""
    dense = bytes([0x43]) + uvarint(dim) + np.float32(1.0).tobytes() + bytes(math.ceil(dim * 4 / 8))
    qsgd = bytes([0x70]) + uvarint(dim) + uvarint(3) + np.float32(1.0).tobytes()
    qsgd += np.packbits(np.ones(dim, dtype=np.uint8), bitorder="little").tobytes()
    for payload in (dense, qsgd):
        with pytest.raises(CodecError) as info:
            decode_payload(payload)
        assert info.value.code == ErrorCode.INVALID_PAYLOAD


@pytest.mark.parametrize("dim", [1, 5, 64, 1000])
def test_quantizer_outputs_roundtrip(dim: int) -> None:
    """wire-format.md 5: what the quantizers produce is what the codec carries, unchanged."""
    rng = np.random.default_rng(dim)
    g = rng.standard_normal(dim)
    for vector in (
        quantize_gradient(g, 2, rng),
        quantize_gradient(g, 8, rng),
        quantize_gradient(g, 16, rng),
        quantize_sparse(g, max(1.0, dim / 20), 4, rng),
        quantize_sparse(g, dim / 2, 3, rng),
        quantize_qsgd(g, 1, rng),
        quantize_qsgd(g, 300, rng),
    ):
        assert roundtrip(vector) == vector


def test_all_zero_quantizations_are_zero_vectors_on_the_wire() -> None:
    """wire-format.md 5.3: a quantization with no nonzero is sent as ZERO, not as an empty sparse vector."""
    rng = np.random.default_rng(0)
    zeros = np.zeros(37)
    for vector in (
        quantize_sparse(zeros, 5.0, 4, rng),
        quantize_gradient(zeros, 4, rng),
        quantize_qsgd(zeros, 4, rng),
    ):
        assert vector == ZeroVector(37)
        assert encoding_of(vector) is Encoding.ZERO
        frame = encode_message(Gradient(epoch=0, version=0, vector=vector))
        assert frame[HEADER_SIZE + 2] == Encoding.ZERO << 4
        assert one_frame(frame) == Gradient(epoch=0, version=0, vector=ZeroVector(37))
    with pytest.raises(ValueError):
        SparseQuantized(dim=37, bits=4, scale=1.0, indices=np.array([], dtype=np.int64), codes=np.array([]))


def test_sparse_with_zero_nonzero_count_rejected() -> None:
    """wire-format.md 5.6: a sparse payload's nonzero count is at least 1."""
    payload = bytes([0x53]) + uvarint(16) + uvarint(0) + np.float32(1.0).tobytes() + bytes(2)
    with pytest.raises(CodecError) as info:
        decode_payload(payload)
    assert info.value.code == ErrorCode.INVALID_PAYLOAD


# -- sparse index choice (wire-format.md 5.6) ---------------------------------


def rice_size(indices: list[int], k: int) -> int:
    """Rice index block size from the spec: k byte, k-bit remainders, unary quotients."""
    gaps = np.diff(np.array(indices), prepend=-1) - 1
    unary_bits = int((gaps >> k).sum()) + len(indices)
    return 1 + math.ceil(len(indices) * k / 8) + math.ceil(unary_bits / 8)


def best_rice(indices: list[int]) -> tuple[int, int]:
    sizes = [rice_size(indices, k) for k in range(17)]
    best = min(sizes)
    return sizes.index(best), best


def sparse(dim: int, indices: list[int]) -> SparseQuantized:
    return SparseQuantized(
        dim=dim, bits=2, scale=1.0, indices=np.array(indices), codes=-np.ones(len(indices), dtype=np.int64)
    )


@pytest.mark.parametrize(
    ("dim", "indices", "expected"),
    [
        (16, list(range(16)), Encoding.SPARSE_BITMAP),  # bitmap 2 < Rice 3
        (100, list(range(0, 100, 2)), Encoding.SPARSE_BITMAP),  # bitmap 13 < Rice 14
        (16, [0], Encoding.SPARSE_BITMAP),  # tie: bitmap 2 == Rice 2 -> bitmap
        (16, [3, 4], Encoding.SPARSE_BITMAP),  # tie again
        (24, [0], Encoding.SPARSE_RICE),  # Rice 2 < bitmap 3
        (1000, [5, 500, 999], Encoding.SPARSE_RICE),
        (1, [0], Encoding.SPARSE_BITMAP),
    ],
    ids=["bitmap-dense", "bitmap-half", "tie", "tie-2", "rice-small", "rice-sparse", "d1"],
)
def test_sparse_index_encoding_is_the_smaller(dim: int, indices: list[int], expected: Encoding) -> None:
    """wire-format.md 5.6: the bitmap wins unless a Rice block is strictly smaller; k is smallest best."""
    bitmap = math.ceil(dim / 8)
    k, rice = best_rice(indices)
    assert (rice < bitmap) == (expected is Encoding.SPARSE_RICE)
    vector = sparse(dim, indices)
    plan = plan_vector(vector)
    assert (plan.encoding, plan.k) == ((expected, k) if expected is Encoding.SPARSE_RICE else (expected, 0))
    payload = b"".join(encode_vector(vector))
    assert payload[0] >> 4 == expected
    head = 1 + len(uvarint(dim)) + len(uvarint(len(indices))) + 4 + math.ceil(len(indices) * 2 / 8)
    assert len(payload) == head + min(bitmap, rice)
    if expected is Encoding.SPARSE_RICE:
        assert payload[head] == k
    assert roundtrip(vector) == vector


def test_sparse_non_canonical_index_encoding_rejected() -> None:
    """wire-format.md 5.6: a bitmap where Rice is smaller, or Rice where it is not, -> INVALID_PAYLOAD."""
    # Bitmap for d = 24, index 0: Rice (2 bytes) would be smaller than the 3-byte bitmap.
    head = uvarint(24) + uvarint(1) + np.float32(1.0).tobytes() + bytes([0b11])
    with pytest.raises(CodecError) as info:
        decode_payload(bytes([0x51]) + head + bytes([1, 0, 0]))
    assert info.value.code == ErrorCode.INVALID_PAYLOAD
    # Rice for d = 16, index 0: a tie with the bitmap, which wins.
    head = uvarint(16) + uvarint(1) + np.float32(1.0).tobytes() + bytes([0b11])
    with pytest.raises(CodecError) as info:
        decode_payload(bytes([0x61]) + head + bytes([0, 0b1]))
    assert info.value.code == ErrorCode.INVALID_PAYLOAD
    # Rice with a non-optimal k for d = 1000, one index at 999.
    vector = sparse(1000, [999])
    k = plan_vector(vector).k
    good = b"".join(encode_vector(vector))
    assert decode_payload(good) == vector
    other_k = k + 1
    gap = 999
    remainder = (gap & ((1 << other_k) - 1)).to_bytes(math.ceil(other_k / 8), "little")
    quotient = gap >> other_k
    unary = np.packbits(np.r_[np.zeros(quotient, np.uint8), 1], bitorder="little").tobytes()
    head = bytes([0x61]) + uvarint(1000) + uvarint(1) + np.float32(1.0).tobytes() + bytes([0b11])
    with pytest.raises(CodecError) as info:
        decode_payload(head + bytes([other_k]) + remainder + unary)
    assert info.value.code == ErrorCode.INVALID_PAYLOAD


# -- DENSE_RICE (wire-format.md 5.8) -------------------------------------------


def spec_zigzag(code: int) -> int:
    """5.8-2 with Python integers: ``c >= 0`` -> ``2c``, ``c < 0`` -> ``-2c - 1``."""
    return 2 * code if code >= 0 else -2 * code - 1


def spec_rice_size(values: list[int], k: int) -> int:
    """R(k) of 5.8-4: the k byte, ``ceil(d k / 8)`` remainder bytes and the unary stream."""
    d = len(values)
    return 1 + math.ceil(d * k / 8) + math.ceil((sum(z >> k for z in values) + d) / 8)


def spec_rice_block(values: list[int], k: int) -> bytes:
    """The k byte, the k-bit remainders (5.1) and the unary quotients (5.8-3), bit by bit."""
    remainder_bits = [(z >> j) & 1 for z in values for j in range(k)]
    unary_bits = [bit for z in values for bit in [0] * (z >> k) + [1]]

    def to_bytes(bits: list[int]) -> bytes:
        out = bytearray(math.ceil(len(bits) / 8))
        for position, bit in enumerate(bits):
            out[position // 8] |= bit << (position % 8)
        return bytes(out)

    return bytes([k]) + to_bytes(remainder_bits) + to_bytes(unary_bits)


def mostly_zero_codes(rng: np.random.Generator, dim: int, bits: int, density: float = 0.2) -> np.ndarray:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = np.where(rng.random(dim) < density, rng.integers(-3, 4, dim), 0).clip(low, high)
    codes[0] = low
    codes[-1] = high if dim > 1 and high else low
    return codes


@pytest.mark.parametrize("bits", range(1, 17))
def test_zigzag_map_every_width(bits: int) -> None:
    """WF-5.8-2: 0, -1, 1, -2, ... -> 0, 1, 2, 3, ...; the b-bit codes map onto 0..2^b - 1 and back."""
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    codes = np.arange(low, high + 1, dtype=np.int64)
    values = zigzag(codes)
    assert values.tolist() == [spec_zigzag(int(c)) for c in codes]
    assert int(zigzag(np.array([low]))[0]) == (1 << bits) - 1
    assert int(zigzag(np.array([high]))[0]) == (1 << bits) - 2
    assert sorted(values.tolist()) == list(range(1 << bits))
    assert unzigzag(values).tolist() == codes.tolist()
    # The narrow dtypes the quantizers produce give the same values.
    narrow = codes.astype(np.int8 if bits <= 8 else np.int16)
    assert zigzag(narrow).tolist() == values.tolist()


def test_zigzag_order() -> None:
    """WF-5.8-2: the example sequence of the spec."""
    assert zigzag(np.array([0, -1, 1, -2, 2, -3, 3])).tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert unzigzag(np.arange(7, dtype=np.int64)).tolist() == [0, -1, 1, -2, 2, -3, 3]


def test_canonical_k_is_the_exhaustive_minimum() -> None:
    """WF-5.8-4: dense_rice_choose gives the smallest k in 0..b-1 with the smallest R(k) (ties: smaller k)."""
    rng = np.random.default_rng(58)
    ties = 0
    for _ in range(600):
        bits = int(rng.integers(1, 17))
        dim = int(rng.integers(1, 300))
        scale = int(rng.integers(0, bits))
        codes = rng.integers(-(1 << scale), 1 << scale, dim).clip(-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        codes[rng.random(dim) < rng.random()] = 0
        values = [spec_zigzag(int(c)) for c in codes]
        sizes = [spec_rice_size(values, k) for k in range(bits)]
        best = min(sizes)
        assert dense_rice_choose(zigzag(codes), bits) == (sizes.index(best), best)
        ties += sizes.count(best) > 1
    assert ties > 20  # the tie rule was exercised


def exhaustive_rice(values: np.ndarray, k_max: int) -> tuple[int, int]:
    """R(k) of wire-format.md 5.6 and 5.8-4 for every k in 0..k_max, the smallest first (ties: smaller k)."""
    count = values.shape[0]
    wide = values.astype(np.int64)
    sizes = [1 + -(-count * k // 8) + -(-(int((wide >> k).sum()) + count) // 8) for k in range(k_max + 1)]
    return sizes.index(min(sizes)), min(sizes)


def long_rice_values(rng: np.random.Generator, count: int, top: int) -> np.ndarray:
    """Non-negative integers below ``2**top``: geometric, mostly zero, spread, or with outliers."""
    shape = int(rng.integers(4))
    if shape == 0:
        values = rng.geometric(float(rng.uniform(0.02, 0.98)), count) - 1
    elif shape == 1:
        values = np.where(rng.random(count) < rng.uniform(0.5, 0.999), 0, rng.integers(1, 1 << top, count))
    elif shape == 2:
        values = rng.integers(0, 1 << int(rng.integers(1, top + 1)), count)
    else:
        values = rng.geometric(0.3, count) - 1
        values[rng.integers(0, count, 5)] = (1 << top) - 1
    return np.minimum(values, (1 << top) - 1)


def test_rice_search_is_the_exhaustive_minimum_on_long_vectors() -> None:
    """WF-5.6, 5.8-4 past the few-values case: the walk over k finds the exhaustive minimum, from any start.

    The expected (k, size) is every R(k) computed outright; the search is run from each
    possible first guess and, as a decoder runs it, seeded with the sum of the k it read.
    """
    rng = np.random.default_rng(5804)
    for _ in range(60):
        bits = int(rng.integers(2, 17))
        count = int(rng.integers(4097, 20000))
        values = long_rice_values(rng, count, bits)
        narrow = values.astype(np.uint8 if bits <= 8 else np.uint16)
        expected = exhaustive_rice(values, bits - 1)
        assert dense_rice_choose(narrow, bits) == expected
        for first in range(bits):
            assert _dense_rice_choose(narrow, bits, first) == expected
            known = {first: int((values.astype(np.int64) >> first).sum())}
            assert _dense_rice_choose(narrow, bits, first, known) == expected
        gaps = long_rice_values(rng, count, int(rng.integers(1, 24))).astype(np.int64)
        expected = exhaustive_rice(gaps, MAX_RICE_K)
        assert rice_choose(gaps) == expected
        k = int(rng.integers(0, MAX_RICE_K + 1))
        assert rice_choose(gaps, known={k: int((gaps >> k).sum())}) == expected


@pytest.mark.parametrize(
    ("values", "bits"),
    [
        ([0, 0, 0, 0, 0, 45], 8),  # past a flat g the ceilings still favour a k further right: (4, 5)
        ([2, 1, 5, 3, 2, 6, 5, 2, 4], 3),  # left of a rising g, k = 0 still ties the best size: (0, 6)
    ],
)
def test_rice_search_walks_past_where_the_bound_alone_would_stop(values: list[int], bits: int) -> None:
    """WF-5.8-4: the search stops only where the lower bound rules out every further k, not where g turns."""
    narrow = np.array(values, dtype=np.uint8)
    expected = exhaustive_rice(narrow, bits - 1)
    for first in range(bits):
        assert _dense_rice_choose(narrow, bits, first) == expected


@pytest.mark.parametrize(
    "shape",
    ["short", "one long", "a few long", "long in one group", "many long", "all long", "huge"],
)
def test_unary_stream_of_many_runs_is_the_bit_by_bit_code(shape: str) -> None:
    """WF-5.6, 5.8-3: above 4,096 code words, runs of every length, bit for bit.

    Runs of at most 30 take grouped prefix sums, any longer run the plain cumsum; the
    expected stream is written one bit at a time from the definition (q zero bits, then
    a one bit).
    """
    rng = np.random.default_rng(len(shape))
    count = 9001
    runs = np.minimum(rng.geometric(0.6, count) - 1, 30)
    if shape == "one long":
        runs[4444] = 31
    elif shape == "a few long":
        runs[rng.integers(0, count, 40)] = rng.integers(31, 300, 40)
        runs[-1] = 255
    elif shape == "long in one group":
        runs[8:16] = [31, 0, 400, 5, 31, 31, 1, 70000]
    elif shape == "many long":
        runs[rng.random(count) < 0.2] = 100
    elif shape == "all long":
        runs[:] = rng.integers(31, 100, count)
    elif shape == "huge":
        runs[[0, 17, 9000]] = [1 << 20, 1 << 17, 1 << 19]
    bits = [bit for q in runs.tolist() for bit in [0] * q + [1]]
    expected = bytearray(-(-len(bits) // 8))
    for position, bit in enumerate(bits):
        expected[position // 8] |= bit << (position % 8)
    for dtype in (np.int64, np.uint32):
        assert unary_encode(runs.astype(dtype)) == bytes(expected)
    if int(runs.max()) < 1 << 16:
        assert unary_encode(runs.astype(np.uint16)) == bytes(expected)


def _unary_by_definition(runs: np.ndarray) -> bytes:
    """Each run as q zero bits then a one bit, LSB-first, written one bit at a time."""
    bits = [bit for q in runs.tolist() for bit in [0] * q + [1]]
    expected = bytearray(-(-len(bits) // 8))
    for position, bit in enumerate(bits):
        expected[position // 8] |= bit << (position % 8)
    return bytes(expected)


@pytest.mark.parametrize("count", [1, 7, 300, 4095, 4096, 9001])
@pytest.mark.parametrize("zero_share", [1.0, 0.99, 0.9, 0.8, 0.75, 0.5])
@pytest.mark.parametrize("longest", [30, 31, 300])
def test_unary_stream_of_mostly_zero_runs_is_the_bit_by_bit_code(
    count: int, zero_share: float, longest: int
) -> None:
    """WF-5.6, 5.8-3: where most runs are zero the encoder writes the zero bits; the stream is the same.

    The shares straddle both switch points (one run in 4, or in 10, nonzero), with and without
    runs past the grouped prefix sums' 30, with more zero bits than runs (300 long: the one-bit
    path again) and reach an all-zero stream; uint64 runs too (np.repeat takes no uint64 counts).
    """
    rng = np.random.default_rng(count + int(zero_share * 100) + longest)
    runs = np.where(rng.random(count) < zero_share, 0, rng.integers(1, longest + 1, count))
    if zero_share < 1.0:
        runs[-1] = longest  # the last code word's zeros run up to the stream's last one bit
    expected = _unary_by_definition(runs)
    for dtype in (np.uint16, np.int64, np.uint64, *((np.uint8,) if longest < 256 else ())):
        assert unary_encode(runs.astype(dtype)) == expected


@pytest.mark.parametrize("count", [32768, 32769, 32771, 32772, 32775, 40006, 65537])
@pytest.mark.parametrize("longest", [1, 7, 8, 15])
def test_unary_stream_of_many_short_runs_is_the_bit_by_bit_code(count: int, longest: int) -> None:
    """WF-5.6: from 32,768 runs of at most 15, the encoder looks up four code words at a time (eight for
    runs of at most 7) and joins the groups by 64-bit words; the stream is the same, for every padding of
    the last group (counts 1 to 7 past a multiple of 8) and a last run of each length."""
    rng = np.random.default_rng(count * 16 + longest)
    runs = np.minimum(rng.geometric(0.45, count) - 1, longest)
    runs[rng.integers(0, count, 64)] = longest  # the longest code word, here and there
    runs[-1] = count % (longest + 1)
    expected = _unary_by_definition(runs)
    for dtype in (np.uint8, np.int64, np.uint64):
        assert unary_encode(runs.astype(dtype)) == expected


def test_quotient_sums_from_neighbours_equal_direct_sums() -> None:
    """S_k = sum(v >> k) however it is reached: directly, or through bit planes from either neighbour."""
    rng = np.random.default_rng(56)
    for dtype, top in ((np.uint8, 8), (np.uint16, 16), (np.int64, 40)):
        values = long_rice_values(rng, 5000, top).astype(dtype)
        direct = [int((values.astype(np.int64) >> k).sum()) for k in range(top + 2)]
        upward, downward = QuotientSums(values, {0: direct[0]}), QuotientSums(values, {top + 1: 0})
        assert [upward(k) for k in range(top + 2)] == direct
        assert [downward(k) for k in reversed(range(top + 2))] == direct[::-1]
        assert [QuotientSums(values)(k) for k in range(top + 2)] == direct
        assert [QuotientSums(values, top=top)(k) for k in range(top + 2)] == direct  # by planes near the top


@pytest.mark.parametrize("bits", range(2, 17))
@pytest.mark.parametrize("dim", [24, 40, 129, 1000])
def test_dense_rice_roundtrip(bits: int, dim: int) -> None:
    """WF-5.8-3, 5.8-4: mostly-zero codes go as DENSE_RICE with k*, byte for byte, and decode back."""
    rng = np.random.default_rng(bits * 100 + dim)
    codes = mostly_zero_codes(rng, dim, bits, density=0.1)
    vector = DenseQuantized(bits=bits, scale=0.125, codes=codes)
    values = [spec_zigzag(int(c)) for c in codes]
    sizes = [spec_rice_size(values, k) for k in range(bits)]
    k = sizes.index(min(sizes))
    assert min(sizes) < math.ceil(dim * bits / 8)
    plan = plan_vector(vector, dense_rice=True)
    assert plan.encoding is Encoding.DENSE_RICE and plan.k == k
    assert encoding_of(vector) is Encoding.DENSE  # only a sender that prefers it Rice-codes
    payload = rice_encoded(vector)
    head = bytes([0x80 | (bits - 1)]) + uvarint(dim) + np.float32(0.125).tobytes()
    assert payload == head + spec_rice_block(values, k)
    decoded = decode_vector(Cursor(payload), LIMITS, expected_dim=dim)
    assert decoded.vector == vector and decoded.encoding is Encoding.DENSE_RICE
    assert isinstance(decoded.vector, DenseQuantized) and decoded.vector.codes.tolist() == codes.tolist()
    assert rice_encoded(decoded.vector) == payload  # canonical: re-encodes to the same bytes


@pytest.mark.parametrize("bits", [2, 4, 8, 12, 16])
def test_dense_rice_falls_back_to_dense_when_not_smaller(bits: int) -> None:
    """WF-5.8-4: uniformly random codes are not smaller Rice-coded: the vector goes as plain DENSE."""
    rng = np.random.default_rng(bits)
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for dim in (1, 7, 64, 500):
        codes = rng.integers(low, high + 1, dim)
        codes[0] = low
        vector = DenseQuantized(bits=bits, scale=1.0, codes=codes)
        values = [spec_zigzag(int(c)) for c in codes]
        assert min(spec_rice_size(values, k) for k in range(bits)) >= math.ceil(dim * bits / 8)
        assert encoding_of(vector, dense_rice=True) is Encoding.DENSE
        payload = rice_encoded(vector)
        assert payload == b"".join(encode_vector(vector))
        assert payload[0] == 0x40 | (bits - 1)
        decoded = roundtrip(vector, dense_rice=True)
        assert decoded == vector and isinstance(decoded, DenseQuantized)


def test_dense_rice_never_for_one_bit_or_one_coordinate() -> None:
    """WF-5.8-4: with b = 1 (k = 0) or d = 1 the block is never below ceil(d b / 8): DENSE."""
    for dim in (1, 8, 64, 1000):
        codes = np.zeros(dim, dtype=np.int64)
        codes[-1] = -1
        one_bit = DenseQuantized(bits=1, scale=1.0, codes=codes)
        assert encoding_of(one_bit, dense_rice=True) is Encoding.DENSE
    for bits in range(1, 17):
        one = DenseQuantized(bits=bits, scale=1.0, codes=np.array([-1]))
        assert encoding_of(one, dense_rice=True) is Encoding.DENSE


def test_dense_rice_tie_with_dense_goes_to_dense() -> None:
    """WF-5.8-4: R(k*) must be strictly smaller; b = 2, d = 16, one code -1 gives 4 = 4 bytes."""
    codes = np.zeros(16, dtype=np.int64)
    codes[0] = -1
    assert dense_rice_choose(zigzag(codes), 2) == (0, 4)
    assert encoding_of(DenseQuantized(bits=2, scale=1.0, codes=codes), dense_rice=True) is Encoding.DENSE
    codes = np.zeros(24, dtype=np.int64)  # d = 24: 5 < 6 bytes
    codes[0] = -1
    vector = DenseQuantized(bits=2, scale=1.0, codes=codes)
    assert encoding_of(vector, dense_rice=True) is Encoding.DENSE_RICE


def test_dense_rice_does_not_change_the_value() -> None:
    """wire-format.md 5-2, 5.8: DENSE and DENSE_RICE carry the same value; only the bytes differ."""
    rng = np.random.default_rng(5)
    codes = mostly_zero_codes(rng, 64, 6)
    plain = DenseQuantized(bits=6, scale=0.5, codes=codes)
    assert encoding_of(plain) is Encoding.DENSE and encoding_of(plain, dense_rice=True) is Encoding.DENSE_RICE
    plain_bytes, rice_bytes = b"".join(encode_vector(plain)), rice_encoded(plain)
    assert len(rice_bytes) < len(plain_bytes)
    assert roundtrip(plain) == roundtrip(plain, dense_rice=True) == plain
    for relative in (False, True):
        model = ModelMessage(epoch=1, version=2, vector=plain, relative=relative)
        frame = encode_message(model, dense_rice=True)
        assert frame[HEADER_SIZE + 2] >> 4 == Encoding.DENSE_RICE
        assert one_frame(frame) == model


def test_dense_rice_payload_checks_in_order() -> None:
    """WF-5.8-5: each step's failure with its code (the conformance vectors have one per step)."""
    head = bytes([0x83]) + uvarint(16) + np.float32(1.0).tobytes()  # b = 4, d = 16: DENSE is 8 bytes
    cases = [
        (head[:-1], ErrorCode.MALFORMED_FRAME),  # 1: truncated scale
        (head[:-4] + np.float32(np.inf).tobytes() + b"\x00", ErrorCode.NON_FINITE),  # 1: 5.5-2
        (head, ErrorCode.MALFORMED_FRAME),  # 2: no k byte
        (head + b"\x04", ErrorCode.INVALID_PAYLOAD),  # 3: k = b
        (head + b"\x02" + bytes(3), ErrorCode.MALFORMED_FRAME),  # 4: 3 of 4 remainder bytes
        (head + b"\x00" + bytes(7), ErrorCode.INVALID_PAYLOAD),  # 5: 8 bytes, not below 8
        (head + b"\x00" + b"\xff\x7f", ErrorCode.INVALID_PAYLOAD),  # 6: 15 one bits
        (head + b"\x00" + b"\xff\xff\x00", ErrorCode.INVALID_PAYLOAD),  # 7: trailing zero byte
        (head + b"\x01" + b"\x01\x00" + b"\x00\xff\xff", ErrorCode.INVALID_PAYLOAD),  # 9: z = 17 >= 16
        (head + b"\x00" + b"\xff\xff", ErrorCode.INVALID_PAYLOAD),  # 10: every z zero
        (head + b"\x01" + b"\x01\x00" + b"\xff\xff", ErrorCode.INVALID_PAYLOAD),  # 11: k = 1, k* = 0
    ]
    for payload, code in cases:
        with pytest.raises(CodecError) as info:
            decode_payload(payload)
        assert info.value.code == code, payload.hex()
    # 8: remainder padding, b = 8, d = 12, k = 1 (12 bits, 4 padding bits).
    codes = np.array([0, 0, 0, -6, -3, 0, -2, -6, 1, -2, 0, -3])
    good = bytearray(rice_encoded(DenseQuantized(bits=8, scale=1.0, codes=codes)))
    start = 1 + 1 + 4
    assert good[start] == 1 and good[start + 2] >> 4 == 0
    assert decode_payload(bytes(good)) == DenseQuantized(bits=8, scale=1.0, codes=codes)
    good[start + 2] |= 0x10
    with pytest.raises(CodecError) as info:
        decode_payload(bytes(good))
    assert info.value.code == ErrorCode.INVALID_PAYLOAD


def test_worked_example_a16() -> None:
    """wire-format.md A.16: the GRADIENT with DENSE_RICE, 4 bits, k = 1, byte for byte."""
    codes = [0, -1, 2, -2, 0, -1, 0, -2, -1, 2, 0, -2, -1, 0, -2, -1]
    event = Gradient(epoch=1, version=7, vector=DenseQuantized(4, 0.25, np.array(codes)))
    frame = encode_message(event, dense_rice=True)
    assert frame.hex(" ") == "01 08 00 0e 00 00 00 01 07 83 10 00 00 80 3e 01 aa d9 d3 9b dd"
    assert one_frame(frame) == event
    plain = encode_message(Gradient(epoch=1, version=7, vector=DenseQuantized(4, 0.25, np.array(codes))))
    assert len(plain) == len(frame) + 2  # 8 DENSE code bytes against a 6-byte Rice block


# -- wire size targets --------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 1000, 10**6])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_dense_frame_size_target(dim: int, bits: int) -> None:
    """wire-format.md 5.5: a dense GRADIENT frame is at most ceil(d*b/8) + 4 + 16 bytes in all."""
    rng = np.random.default_rng(dim + bits)
    vector = quantize_gradient(rng.standard_normal(dim), bits, rng)
    assert isinstance(vector, DenseQuantized)
    frame = encode_message(Gradient(epoch=3, version=100, vector=vector))
    assert len(frame) <= math.ceil(dim * bits / 8) + 4 + 16
    assert one_frame(frame) == Gradient(epoch=3, version=100, vector=vector)


@pytest.mark.parametrize("dim", [1, 1000, 10**6])
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("density", [0.001, 0.05, 0.5])
def test_sparse_frame_size_target(dim: int, bits: int, density: float) -> None:
    """wire-format.md 5.6: a sparse frame is at most min(bitmap, Rice) + codes + scale + 16 bytes."""
    rng = np.random.default_rng(dim + bits)
    gradient = rng.standard_normal(dim)
    vector: Vector = ZeroVector(dim)
    while not isinstance(vector, SparseQuantized):  # a tiny budget may keep nothing: draw again
        vector = quantize_sparse(gradient, max(1.0, density * dim), bits, rng)
    indices = vector.indices.tolist()
    index_bytes = min(math.ceil(dim / 8), best_rice(indices)[1])
    frame = encode_message(Gradient(epoch=3, version=100, vector=vector))
    assert len(frame) <= index_bytes + math.ceil(vector.nnz * bits / 8) + 4 + 16
    assert one_frame(frame) == Gradient(epoch=3, version=100, vector=vector)


def test_snapshot_frame_size() -> None:
    """wire-format.md 5.2, 7.4: a float32 SNAPSHOT frame is 4 bytes a coordinate plus a small header."""
    vector = RawVector(np.ones(1000, dtype=np.float32))
    frame = encode_message(Snapshot(epoch=1, vector=vector))
    assert len(frame) == 7 + 1 + 1 + 2 + 4000


@pytest.mark.parametrize(
    ("dim", "span", "nnz", "k"), [(2_000, 900, 800, 0), (5_000, 5_000, 1_000, 2), (100_000, 100_000, 50, 10)]
)
def test_sparse_rice_payload_bits_counted_apart(dim: int, span: int, nnz: int, k: int) -> None:
    """SPARSE_RICE's analytic bits, summed here per gap in Python: b per code, 32 for the scale, and
    k remainder bits plus (g >> k) + 1 unary bits per gap; the plan and the decoder report the same."""
    rng = np.random.default_rng(dim + nnz)
    indices = np.sort(rng.choice(span, size=nnz, replace=False))  # all below span: Rice beats the bitmap
    codes = rng.choice([-15, -3, -1, 1, 2, 15], size=nnz)
    vector = SparseQuantized(dim, 5, 0.5, indices, codes)
    plan = plan_vector(vector)
    assert plan.encoding is Encoding.SPARSE_RICE and plan.k == k
    positions = [int(i) for i in indices]
    gaps = [positions[0]] + [b - a - 1 for a, b in itertools.pairwise(positions)]
    expected = nnz * 5 + 32 + sum(k + 1 + (gap >> k) for gap in gaps)
    assert plan.payload_bits == expected
    cursor = Cursor(b"".join(encode_vector(vector, plan)))
    decoded = decode_vector(cursor, LIMITS, expected_dim=dim)
    assert decoded.payload_bits == expected and decoded.vector == vector


def test_dense_rice_decode_of_no_values_is_empty_or_a_codec_error() -> None:
    """A review: count 0 raised IndexError (not reachable from the wire, where d >= 1)."""
    from aiodq.codec.bitcodes import dense_rice_decode  # noqa: PLC0415
    from aiodq.errors import CodecError  # noqa: PLC0415

    for bits, dtype in ((8, np.uint8), (12, np.uint16)):
        empty = dense_rice_decode(b"", b"", 0, 3, bits)
        assert empty.shape == (0,) and empty.dtype == dtype
    for remainders, unary in ((b"x", b""), (b"", b"\x01"), (b"", b"\x00")):
        with pytest.raises(CodecError):
            dense_rice_decode(remainders, unary, 0, 3, 8)
