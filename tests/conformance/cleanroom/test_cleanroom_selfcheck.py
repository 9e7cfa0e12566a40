"""Self-check tests of the clean-room implementation, built from the spec's Appendix A and rules."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import random
import struct

import pytest

from . import wire
from .endpoint import (
    Master,
    SessionReport,
    Timers,
    Worker,
    _failure_reason,
    _truncate_utf8,
    master_proof,
    worker_proof,
)
from .wire import ReceiveContext, WireError


def h(text: str) -> bytes:
    """Hex (with spaces and newlines) to bytes."""
    return bytes.fromhex("".join(text.split()))


def ctx(**kwargs) -> ReceiveContext:
    return ReceiveContext(**kwargs)


def decode_one(data: bytes, **kwargs) -> dict:
    messages = wire.decode_stream(data, ctx(**kwargs))
    assert len(messages) == 1
    return messages[0]


def fails(data: bytes, code: str, rule: str | None = None, **kwargs) -> WireError:
    with pytest.raises(WireError) as info:
        wire.decode_stream(data, ctx(**kwargs))
    assert info.value.code == code, info.value
    if rule is not None:
        assert info.value.rule == rule, info.value
    assert not info.value.local
    return info.value


def frame(msg_type: int, body: bytes, flags: int = 0, version: int = 1) -> bytes:
    return struct.pack("<BBBI", version, msg_type, flags, len(body)) + body


def gradient(payload: bytes, epoch: int = 1, version: int = 7) -> bytes:
    return frame(0x08, bytes([epoch, version]) + payload)


# =============================================================================================
# Appendix A: every worked example, byte for byte, in both directions
# =============================================================================================

A1 = h("""01 01 00 42 00 00 00 85 a5 6d 61 67 69 63 a5 61 69 6f 64 71 ab 6d 69 6e 5f 76 65 72 73 69
6f 6e 01 ab 6d 61 78 5f 76 65 72 73 69 6f 6e 01 a9 65 6e 63 6f 64 69 6e 67 73 98 00 01 02
03 04 05 06 07 a4 6e 61 6d 65 a2 77 31""")
A2 = h("""01 02 00 27 00 00 00 83 a7 76 65 72 73 69 6f 6e 01 a9 77 6f 72 6b 65 72 5f 69 64 03 a9 65
6e 63 6f 64 69 6e 67 73 97 00 01 02 04 05 06 07""")
A3 = h("""01 03 00 39 00 00 00 83 a3 64 69 6d 05 a9 61 6c 67 6f 72 69 74 68 6d a6 61 73 79 6c 70 67
a6 70 61 72 61 6d 73 83 a4 62 69 74 73 04 a2 6d 75 cb 3f e0 00 00 00 00 00 00 a6 73 70 61
72 73 65 c2""")
A4 = h("01 04 00 0b 00 00 00 01 00 02 00 00 80 3f 00 00 00 bf")
A5 = h("""01 05 00 1e 00 00 00 01 ac 02 00 00 00 00 00 00 f0 69 40 10 02 00 00 00 00 00 00 d0 3f 00
00 00 00 00 00 00 40""")
A6 = h("01 06 00 0b 00 00 00 01 00 02 00 00 00 3f 00 00 80 bf")
A7 = h("01 08 00 0b 00 00 00 01 07 43 05 00 00 80 3e e1 87 00")
A8 = h("01 08 00 0d 00 00 00 01 07 52 0c 03 00 00 00 3f 3b 01 62 00")
A9 = h("01 08 00 0d 00 00 00 01 07 63 40 02 00 00 00 3e d5 03 23 21")
A10 = h("01 08 00 0d 00 00 00 01 07 70 06 04 00 00 00 40 95 05 06 0a")
A11 = h("01 08 00 04 00 00 00 01 07 20 05")
A12 = h("01 07 01 0a 00 00 00 01 08 42 04 00 00 80 3d c1 07")
A13 = h("01 07 00 04 00 00 00 02 08 30 04")
A14_HEARTBEAT = h("01 09 00 00 00 00 00")
A14_ERROR = h("01 0a 00 09 00 00 00 0e 00 01 03 73 74 61 6c 65")
A14_CLOSE = h("01 0b 00 05 00 00 00 00 00 62 79 65")
A14_CLOSE_ANSWER = h("01 0b 00 02 00 00 00 00 00")
A16 = h("01 08 00 0e 00 00 00 01 07 83 10 00 00 80 3e 01 aa d9 d3 9b dd")
A16_AS_DENSE = h("01 08 00 10 00 00 00 01 07 43 10 00 00 80 3e f0 e2 f0 e0 2f e0 0f fe")

A16_CODES = [0, -1, 2, -2, 0, -1, 0, -2, -1, 2, 0, -2, -1, 0, -2, -1]

EXAMPLES = [
    (
        "A.1",
        A1,
        {
            "type": "HELLO",
            "min_version": 1,
            "max_version": 1,
            "encodings": [0, 1, 2, 3, 4, 5, 6, 7],
            "name": "w1",
        },
    ),
    ("A.2", A2, {"type": "WELCOME", "version": 1, "worker_id": 3, "encodings": [0, 1, 2, 4, 5, 6, 7]}),
    (
        "A.3",
        A3,
        {
            "type": "CONFIG",
            "dim": 5,
            "algorithm": "asylpg",
            "params": {"bits": 4, "mu": 0.5, "sparse": False},
        },
    ),
    (
        "A.4",
        A4,
        {"type": "SNAPSHOT", "epoch": 1, "vector": {"encoding": "RAW_F32", "dim": 2, "values": [1.0, -0.5]}},
    ),
    (
        "A.5",
        A5,
        {
            "type": "SNAPSHOT_GRADIENT",
            "epoch": 1,
            "samples": 300,
            "correct": 0,
            "loss": 207.5,
            "vector": {"encoding": "RAW_F64", "dim": 2, "values": [0.25, 2.0]},
        },
    ),
    (
        "A.6",
        A6,
        {
            "type": "FULL_GRADIENT",
            "epoch": 1,
            "vector": {"encoding": "RAW_F32", "dim": 2, "values": [0.5, -1.0]},
        },
    ),
    (
        "A.7",
        A7,
        {
            "type": "GRADIENT",
            "epoch": 1,
            "version": 7,
            "vector": {"encoding": "DENSE", "dim": 5, "bits": 4, "scale": 0.25, "codes": [1, -2, 7, -8, 0]},
        },
    ),
    (
        "A.8",
        A8,
        {
            "type": "GRADIENT",
            "epoch": 1,
            "version": 7,
            "vector": {
                "encoding": "SPARSE_BITMAP",
                "dim": 12,
                "bits": 3,
                "scale": 0.5,
                "indices": [1, 5, 6],
                "codes": [3, -1, -4],
            },
        },
    ),
    (
        "A.9",
        A9,
        {
            "type": "GRADIENT",
            "epoch": 1,
            "version": 7,
            "vector": {
                "encoding": "SPARSE_RICE",
                "dim": 64,
                "bits": 4,
                "scale": 0.125,
                "indices": [3, 40],
                "codes": [5, -3],
            },
        },
    ),
    (
        "A.10",
        A10,
        {
            "type": "GRADIENT",
            "epoch": 1,
            "version": 7,
            "vector": {"encoding": "QSGD", "dim": 6, "s": 4, "norm": 2.0, "levels": [0, 1, -2, 4, 0, -1]},
        },
    ),
    ("A.11", A11, {"type": "GRADIENT", "epoch": 1, "version": 7, "vector": {"encoding": "ZERO", "dim": 5}}),
    (
        "A.12",
        A12,
        {
            "type": "MODEL",
            "epoch": 1,
            "version": 8,
            "relative": True,
            "vector": {"encoding": "DENSE", "dim": 4, "bits": 3, "scale": 0.0625, "codes": [1, 0, -1, 3]},
        },
    ),
    (
        "A.13",
        A13,
        {
            "type": "MODEL",
            "epoch": 2,
            "version": 8,
            "relative": False,
            "vector": {"encoding": "EQUALS_SNAPSHOT", "dim": 4},
        },
    ),
    ("A.14 HEARTBEAT", A14_HEARTBEAT, {"type": "HEARTBEAT"}),
    ("A.14 ERROR", A14_ERROR, {"type": "ERROR", "code": 14, "epoch": 1, "version": 3, "reason": "stale"}),
    ("A.14 CLOSE", A14_CLOSE, {"type": "CLOSE", "code": 0, "reason": "bye"}),
    ("A.14 CLOSE answer", A14_CLOSE_ANSWER, {"type": "CLOSE", "code": 0, "reason": ""}),
    (
        "A.16",
        A16,
        {
            "type": "GRADIENT",
            "epoch": 1,
            "version": 7,
            "vector": {"encoding": "DENSE_RICE", "dim": 16, "bits": 4, "scale": 0.25, "codes": A16_CODES},
        },
    ),
    (
        "A.16 as DENSE",
        A16_AS_DENSE,
        {
            "type": "GRADIENT",
            "epoch": 1,
            "version": 7,
            "vector": {"encoding": "DENSE", "dim": 16, "bits": 4, "scale": 0.25, "codes": A16_CODES},
        },
    ),
]


@pytest.mark.parametrize("label,data,message", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_appendix_a_decode(label: str, data: bytes, message: dict) -> None:
    vector = message.get("vector")
    dim = vector["dim"] if vector else None
    assert decode_one(data, dimension=dim) == message


@pytest.mark.parametrize("label,data,message", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_appendix_a_encode(label: str, data: bytes, message: dict) -> None:
    assert wire.encode_message(message) == data


def test_a1_default_hello_announces_dense_rice() -> None:
    data = wire.encode_message(
        {"type": "HELLO", "min_version": 1, "max_version": 1, "encodings": list(range(9)), "name": "w1"}
    )
    assert data[3:7] == h("43 00 00 00")
    assert h("99 00 01 02 03 04 05 06 07 08") in data
    assert len(data) == 7 + 67


def test_a1_hello_encoder_sorts_and_dedups_sets() -> None:
    assert (
        wire.encode_message(
            {
                "type": "HELLO",
                "min_version": 1,
                "max_version": 1,
                "encodings": [7, 6, 5, 4, 3, 2, 1, 0, 0],
                "name": "w1",
            }
        )
        == A1
    )


def test_decoded_values_of_examples() -> None:
    grad = decode_one(A7)["vector"]
    assert wire.vector_to_list(grad) == [0.25, -0.5, 1.75, -2.0, 0.0]
    sparse = wire.vector_to_list(decode_one(A8)["vector"])
    assert sparse == [0, 1.5, 0, 0, 0, -0.5, -2.0, 0, 0, 0, 0, 0]
    rice = wire.vector_to_list(decode_one(A9)["vector"])
    assert rice[3] == 0.625 and rice[40] == -0.375 and sum(map(abs, rice)) == 1.0
    assert wire.vector_to_list(decode_one(A10)["vector"]) == [0, 0.5, -1.0, 2.0, 0, -0.5]
    assert wire.vector_to_list(decode_one(A11)["vector"]) == [0.0] * 5
    model = decode_one(A12)
    snap = [1.0, 2.0, 3.0, 4.0]
    assert wire.vector_to_list(model["vector"]) == [0.0625, 0, -0.0625, 0.1875]
    assert wire.vector_to_list(model["vector"], snap, relative=True) == [1.0625, 2.0, 2.9375, 4.1875]
    assert wire.vector_to_list(decode_one(A13)["vector"], snap) == snap
    assert wire.vector_to_list(decode_one(A16)["vector"]) == [c * 0.25 for c in A16_CODES]


def test_a9_and_a16_block_sizes() -> None:
    # A.9: R(k) for k = 0..16 over the gaps [3, 36].
    assert wire.rice_block_sizes([3, 36], 2, 16) == [7, 5, 4, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6]
    # A.8: R(0) = 2 is the minimum and not below B = 2.
    assert min(wire.rice_block_sizes([1, 3, 0], 3, 16)) == 2
    # A.16: R(k) for k = 0..3 over the zigzag values.
    zs = [0, 1, 4, 3, 0, 1, 0, 3, 1, 4, 0, 3, 1, 0, 3, 1]
    assert wire.rice_block_sizes(zs, 16, 3) == [7, 6, 8, 9]


def test_a16_dense_rice_choice_helper() -> None:
    vec = wire.make_dense_vector(4, 0.25, A16_CODES, rice=True)
    assert vec["encoding"] == "DENSE_RICE"
    msg = {"type": "GRADIENT", "epoch": 1, "version": 7, "vector": vec}
    assert wire.encode_message(msg) == A16
    # To a peer that did not announce 8, the same codes go as DENSE (5.8-4).
    vec = wire.make_dense_vector(4, 0.25, A16_CODES, rice=True, peer_encodings=range(8))
    assert wire.encode_message({**msg, "vector": vec}) == A16_AS_DENSE


def test_a8_a9_sparse_choice_helper() -> None:
    assert wire.make_sparse_vector(12, 3, 0.5, [1, 5, 6], [3, -1, -4])["encoding"] == "SPARSE_BITMAP"
    assert wire.make_sparse_vector(64, 4, 0.125, [3, 40], [5, -3])["encoding"] == "SPARSE_RICE"


# A.15, "the decoder alone gives these results".
A15 = [
    ("01 08 00 01 00 00 10", None, "FRAME_TOO_LARGE", None),
    ("01 08 01 04 00 00 00 01 07 20 05", 5, "MALFORMED_FRAME", None),
    ("01 08 00 0c 00 00 00 01 07 43 85 00 00 00 80 3e e1 87 00", 5, "MALFORMED_FRAME", None),
    ("01 08 00 0b 00 00 00 01 07 43 05 00 00 80 3e e1 87 10", 5, "INVALID_PAYLOAD", None),
    ("01 08 00 0b 00 00 00 01 07 43 05 00 00 80 3e 00 00 00", 5, "INVALID_PAYLOAD", None),
    ("01 08 00 04 00 00 00 01 07 21 05", 5, "MALFORMED_FRAME", None),
    ("01 08 00 04 00 00 00 01 07 20 05", 6, "WRONG_DIMENSION", None),
    ("01 07 00 0d 00 00 00 01 07 52 0c 03 00 00 00 3f 3b 01 62 00", 12, "UNSUPPORTED_ENCODING", None),
    ("01 04 00 0b 00 00 00 01 00 02 00 00 c0 7f 00 00 00 bf", 2, "NON_FINITE", None),
    (
        "01 08 00 12 00 00 00 01 07 53 40 02 00 00 00 3e d5 08 00 00 00 00 01 00 00",
        64,
        "INVALID_PAYLOAD",
        None,
    ),
    ("01 08 00 0d 00 00 00 01 07 63 40 02 00 00 00 3e d5 04 43 09", 64, "INVALID_PAYLOAD", None),
    ("01 08 00 0d 00 00 00 01 07 70 06 03 00 00 00 40 95 05 06 0a", 6, "INVALID_PAYLOAD", None),
    ("01 08 00 0d 00 00 00 01 07 70 06 04 00 00 00 40 95 05 06 1a", 6, "INVALID_PAYLOAD", None),
    ("01 07 01 04 00 00 00 02 08 30 04", 4, "INVALID_PAYLOAD", None),
    ("01 08 00 0f 00 00 00 01 07 83 10 00 00 80 3e 00 85 d8 28 8c 46 01", 16, "INVALID_PAYLOAD", None),
    ("01 08 00 0f 00 00 00 01 07 83 10 00 00 80 3e 01 aa d9 d3 9b dd 00", 16, "INVALID_PAYLOAD", None),
    ("01 08 00 0e 00 00 00 01 07 83 10 00 00 80 3e 01 aa d9 d3 9b dd", 16, "UNSUPPORTED_ENCODING", range(8)),
]


@pytest.mark.parametrize("hexdata,dim,code,announced", A15, ids=[f"A.15 row {i + 1}" for i in range(17)])
def test_appendix_a15(hexdata: str, dim: int | None, code: str, announced) -> None:
    fails(h(hexdata), code, dimension=dim, encodings=announced)


def test_a15_rule_ids() -> None:
    """The requirement IDs cited by A.15 match the rule this implementation reports."""
    assert fails(h(A15[1][0]), "MALFORMED_FRAME", dimension=5).rule == "WF-3-6"
    assert fails(h(A15[2][0]), "MALFORMED_FRAME", dimension=5).rule == "WF-4.2-2"
    assert fails(h(A15[3][0]), "INVALID_PAYLOAD", dimension=5).rule == "WF-5.1-3"
    assert fails(h(A15[4][0]), "INVALID_PAYLOAD", dimension=5).rule == "WF-5.5-4"
    assert fails(h(A15[9][0]), "INVALID_PAYLOAD", dimension=64).rule == "WF-5.6-9"
    assert fails(h(A15[10][0]), "INVALID_PAYLOAD", dimension=64).rule == "WF-5.6-10"
    assert fails(h(A15[13][0]), "INVALID_PAYLOAD", dimension=4).rule == "WF-7.7-6"
    assert fails(h(A15[14][0]), "INVALID_PAYLOAD", dimension=16).rule == "WF-5.8-5"


def test_a15_frame_too_large_needs_only_the_header() -> None:
    decoder = wire.StreamDecoder(ctx())
    with pytest.raises(WireError) as info:
        decoder.feed(h("01 08 00 01 00 00 10"))
    assert info.value.code == "FRAME_TOO_LARGE"


# =============================================================================================
# Section 3: frames
# =============================================================================================


def test_frame_too_large_comes_before_type_and_version() -> None:
    fails(h("07 ff 07 41 00 00 00"), "FRAME_TOO_LARGE", max_frame_bytes=64)
    assert decode_one(h("01 09 00 00 00 00 00"), max_frame_bytes=64) == {"type": "HEARTBEAT"}


def test_frame_exactly_at_limit_is_accepted() -> None:
    body = bytes([0, 0]) + b"x" * 62
    assert decode_one(frame(0x0B, body), max_frame_bytes=64)["reason"] == "x" * 62
    fails(frame(0x0B, body + b"x"), "FRAME_TOO_LARGE", max_frame_bytes=64)


@pytest.mark.parametrize("msg_type", [0x00, 0x0F, 0x10, 0xFF])
def test_unknown_message_type(msg_type: int) -> None:
    fails(frame(msg_type, b""), "UNKNOWN_MESSAGE_TYPE")


def test_partial_frame_at_end_of_stream() -> None:
    for cut in range(1, len(A7)):
        fails(A7[:cut], "MALFORMED_FRAME", "WF-3-5", dimension=5)
    # An unknown type whose body has not fully arrived is a partial frame, not a type error.
    fails(h("01 ff 00 05 00 00 00 01"), "MALFORMED_FRAME", "WF-3-5")


def test_split_points_do_not_matter() -> None:
    stream = A7 + A14_HEARTBEAT + A9
    expected = wire.decode_stream(stream)
    for step in (1, 2, 3, 5, 7, 11):
        decoder = wire.StreamDecoder()
        got: list[dict] = []
        for start in range(0, len(stream), step):
            got += decoder.feed(stream[start : start + step])
        decoder.end()
        assert got == expected


@pytest.mark.parametrize("msg_type", range(1, 15))
def test_undefined_flag_bits(msg_type: int) -> None:
    defined = 0x01 if msg_type == 0x07 else 0
    for bit in range(8):
        if (1 << bit) & defined:
            continue
        fails(frame(msg_type, b"", flags=1 << bit), "MALFORMED_FRAME", "WF-3-6")


def test_decode_frame_with_header_version_check() -> None:
    body = A7[7:]
    with pytest.raises(WireError) as info:
        wire.decode_frame(2, 0x08, 0, body, ctx(header_version=1))
    assert info.value.code == "UNSUPPORTED_VERSION"
    assert wire.decode_frame(2, 0x08, 0, body)["type"] == "GRADIENT"
    # HELLO is always version 1 (6.1-2)
    with pytest.raises(WireError):
        wire.decode_frame(2, 0x01, 0, A1[7:], ctx(header_version=2))


# =============================================================================================
# Section 4: primitive fields
# =============================================================================================


@pytest.mark.parametrize(
    "value,encoded",
    [
        (0, "00"),
        (127, "7f"),
        (128, "80 01"),
        (300, "ac 02"),
        (2**63 - 1, "ff ff ff ff ff ff ff ff 7f"),
    ],
)
def test_varint_table(value: int, encoded: str) -> None:
    assert wire.encode_varint(value) == h(encoded)
    assert wire.decode_varint(h(encoded)) == (value, len(h(encoded)))


@pytest.mark.parametrize(
    "data,rule",
    [
        ("80 00", "WF-4.2-2"),
        ("ff 00", "WF-4.2-2"),
        ("80 80 00", "WF-4.2-2"),
        ("80", "WF-4.2-4"),
        ("", "WF-4.2-4"),
        ("ff ff ff ff ff ff ff ff 80 01", "WF-4.2-3"),
        ("80 80 80 80 80 80 80 80 80", "WF-4.2-3"),
    ],
)
def test_varint_errors(data: str, rule: str) -> None:
    with pytest.raises(WireError) as info:
        wire.decode_varint(h(data))
    assert (info.value.code, info.value.rule) == ("MALFORMED_FRAME", rule)


def test_varint_sender_limits() -> None:
    with pytest.raises(WireError) as info:
        wire.encode_varint(2**63)
    assert info.value.local and info.value.rule == "WF-4.2-5"
    with pytest.raises(WireError):
        wire.encode_varint(-1)


def test_varint_in_message_fields() -> None:
    fails(frame(0x08, h("80 00 07 20 05")), "MALFORMED_FRAME", "WF-4.2-2")
    fails(frame(0x08, h("01 80")), "MALFORMED_FRAME", "WF-4.2-4")


def test_bit_packing_example() -> None:
    # 5.1: the 4-bit codes 1, -2, 7 pack into e1 07.
    vec = {"encoding": "DENSE", "dim": 3, "bits": 4, "scale": 1.0, "codes": [1, -2, 7]}
    assert wire.encode_vector(vec)[-2:] == h("e1 07")


# =============================================================================================
# Section 5: vector payloads, checks in the documented order
# =============================================================================================

SCALE_025 = h("00 00 80 3e")
NAN32 = h("00 00 c0 7f")
INF32 = h("00 00 80 7f")
NEG_ZERO32 = h("00 00 00 80")
ZERO32 = h("00 00 00 00")
NEG32 = h("00 00 80 be")


def test_descriptor_checks_in_order() -> None:
    fails(gradient(b""), "MALFORMED_FRAME", "WF-5.2-3")  # descriptor missing
    fails(gradient(h("91 05")), "UNSUPPORTED_ENCODING", "WF-12-2")  # reserved, low nibble nonzero
    fails(gradient(h("f0")), "UNSUPPORTED_ENCODING")  # reserved before the missing dimension
    fails(gradient(h("31 05")), "UNSUPPORTED_ENCODING", "WF-6.2-3")  # EQUALS_SNAPSHOT in GRADIENT
    fails(gradient(h("21 05")), "UNSUPPORTED_ENCODING", encodings=[0, 1])  # not announced first
    fails(gradient(h("21 05")), "MALFORMED_FRAME", "WF-5.2-1")
    fails(gradient(h("20 85 00")), "MALFORMED_FRAME", "WF-4.2-2")
    fails(gradient(h("20 00")), "INVALID_PAYLOAD", "WF-5.2-2")
    fails(gradient(h("20 00")), "INVALID_PAYLOAD", dimension=5)  # d = 0 before WRONG_DIMENSION
    fails(gradient(h("20 06")), "LIMIT_EXCEEDED", max_dimension=5, dimension=5)
    fails(gradient(h("20 06")), "WRONG_DIMENSION", dimension=5)
    fails(gradient(h("20 05 00")), "MALFORMED_FRAME", "WF-5.4-3")


@pytest.mark.parametrize(
    "msg_type,allowed",
    [
        (0x04, {0, 1}),
        (0x05, {0, 1}),
        (0x06, {0, 1}),
        (0x07, {0, 1, 2, 3, 4, 8}),
        (0x08, {0, 1, 2, 4, 5, 6, 7, 8}),
    ],
)
def test_encoding_table(msg_type: int, allowed: set[int]) -> None:
    prefix = {0x04: b"\x01", 0x05: b"\x01\x01\x01" + bytes(8), 0x06: b"\x01"}.get(msg_type, b"\x01\x01")
    for enc in range(16):
        data = frame(msg_type, prefix + bytes([enc << 4]))  # dimension missing
        if enc in allowed:
            fails(data, "MALFORMED_FRAME")
        else:
            fails(data, "UNSUPPORTED_ENCODING")


def test_raw_checks() -> None:
    fails(gradient(h("00 02") + bytes(7)), "MALFORMED_FRAME", "WF-5.3-2")
    fails(gradient(h("00 02") + bytes(9)), "MALFORMED_FRAME", "WF-5.3-2")
    fails(gradient(h("10 01") + bytes(4)), "MALFORMED_FRAME", "WF-5.3-2")
    fails(gradient(h("00 01") + INF32), "NON_FINITE", "WF-5.3-3")
    fails(gradient(h("10 01 00 00 00 00 00 00 f8 ff")), "NON_FINITE")
    # A NaN is NON_FINITE only once the length is right.
    fails(gradient(h("00 02") + NAN32), "MALFORMED_FRAME")
    neg = decode_one(gradient(h("00 01") + NEG_ZERO32))["vector"]["values"][0]
    assert str(neg) == "-0.0"
    assert wire.encode_message(decode_one(gradient(h("00 01") + NEG_ZERO32))) == gradient(
        h("00 01") + NEG_ZERO32
    )
    sub = decode_one(gradient(h("00 01 01 00 00 00")))["vector"]["values"][0]
    assert sub == 2.0**-149


def test_dense_check_order() -> None:
    base = h("43 05")
    fails(gradient(base + h("00 00 80")), "MALFORMED_FRAME", "WF-5.5-3")
    fails(gradient(base + NAN32), "NON_FINITE", "WF-5.5-2")
    fails(gradient(base + INF32 + h("e1")), "NON_FINITE")
    fails(gradient(base + ZERO32 + h("e1 87 00")), "INVALID_PAYLOAD", "WF-5.5-2")
    fails(gradient(base + NEG_ZERO32), "INVALID_PAYLOAD", "WF-5.5-2")
    fails(gradient(base + NEG32), "INVALID_PAYLOAD", "WF-5.5-2")
    fails(gradient(base + SCALE_025 + h("e1 87")), "MALFORMED_FRAME", "WF-5.5-3")
    fails(gradient(base + SCALE_025 + h("e1 87 10 ff")), "INVALID_PAYLOAD", "WF-5.1-3")
    fails(gradient(base + SCALE_025 + h("e1 87 00 ff")), "MALFORMED_FRAME", "WF-5.5-3")
    fails(gradient(base + SCALE_025 + h("00 00 00 ff")), "MALFORMED_FRAME", "WF-5.5-3")
    fails(gradient(base + SCALE_025 + h("00 00 00")), "INVALID_PAYLOAD", "WF-5.5-4")
    # A positive subnormal scale is allowed; the most negative code too.
    vec = decode_one(gradient(h("4f 01 01 00 00 00 00 80")))["vector"]
    assert vec["scale"] == 2.0**-149 and vec["codes"] == [-32768]


def test_sparse_common_check_order() -> None:
    d12 = h("52 0c")
    fails(gradient(d12 + h("80")), "MALFORMED_FRAME", "WF-4.2-4")
    fails(gradient(d12 + h("00")), "INVALID_PAYLOAD", "WF-5.6-8")
    fails(gradient(d12 + h("0d")), "INVALID_PAYLOAD", "WF-5.6-8")
    fails(gradient(d12 + h("03 00 00")), "MALFORMED_FRAME", "WF-5.6-8")
    fails(gradient(d12 + h("03") + NAN32), "NON_FINITE")
    fails(gradient(d12 + h("03") + ZERO32), "INVALID_PAYLOAD", "WF-5.5-2")
    fails(gradient(d12 + h("03 00 00 00 3f 3b")), "MALFORMED_FRAME", "WF-5.6-8")
    fails(gradient(d12 + h("03 00 00 00 3f 3b 03 62 00")), "INVALID_PAYLOAD", "WF-5.1-3")
    fails(gradient(d12 + h("03 00 00 00 3f 38 01 62 00")), "INVALID_PAYLOAD", "WF-5.6-2")


def test_sparse_bitmap_check_order() -> None:
    head = h("52 0c 03 00 00 00 3f 3b 01")
    fails(gradient(head + h("62")), "MALFORMED_FRAME", "WF-5.6-9")
    fails(gradient(head + h("62 00 00")), "MALFORMED_FRAME", "WF-5.6-9")
    fails(gradient(head + h("62 10")), "INVALID_PAYLOAD", "WF-5.6-9")  # bit 12 is padding
    fails(gradient(head + h("62 01")), "INVALID_PAYLOAD", "WF-5.6-9")  # 4 bits set, n = 3
    assert decode_one(gradient(head + h("62 00")))["vector"]["indices"] == [1, 5, 6]
    # Bit 11 is a real coordinate, not padding.
    vec = decode_one(gradient(head + h("42 08")))["vector"]
    assert vec["indices"] == [1, 6, 11]


def test_sparse_rice_check_order() -> None:
    head = h("63 40 02 00 00 00 3e d5")
    fails(gradient(head), "MALFORMED_FRAME", "WF-5.6-10")
    fails(gradient(head + h("11 23 21")), "INVALID_PAYLOAD", "WF-5.6-10")  # k = 17
    fails(gradient(head + h("10 00 00 00")), "MALFORMED_FRAME", "WF-5.6-10")  # k = 16 needs 4 bytes
    fails(gradient(head + h("03 23 21 00 00 00 00 00")), "INVALID_PAYLOAD", "WF-5.6-10")  # >= B
    fails(gradient(head + h("03 23 20")), "INVALID_PAYLOAD", "WF-5.6-10")  # one 1 bit
    fails(gradient(head + h("03 23 23")), "INVALID_PAYLOAD", "WF-5.6-10")  # three 1 bits
    fails(gradient(head + h("03 23 21 00")), "INVALID_PAYLOAD", "WF-5.6-10")  # trailing zero byte
    fails(gradient(head + h("03 e3 21")), "INVALID_PAYLOAD", "WF-5.1-3")  # remainder padding
    # last index: gaps [3, 63 + ...] -> q1 = 8 -> i1 = 3 + 1 + 64 + 4 = 72 >= 64
    fails(gradient(head + h("03 23 01 02")), "INVALID_PAYLOAD", "WF-5.6-10")
    fails(gradient(head + h("04 43 09")), "INVALID_PAYLOAD", "WF-5.6-10")  # k != k*


def test_sparse_rice_appended_byte_is_invalid_payload() -> None:
    fails(A9[:3] + bytes([A9[3] + 1]) + A9[4:] + b"\x01", "INVALID_PAYLOAD")


def test_qsgd_check_order() -> None:
    d6 = h("70 06")
    fails(gradient(d6 + h("80")), "MALFORMED_FRAME", "WF-4.2-4")
    fails(gradient(d6 + h("00") + h("00 00 00 40 95 05 06 0a")), "INVALID_PAYLOAD", "WF-5.7-4")
    fails(gradient(d6 + h("80 80 04") + h("00 00 00 40 95 05 06 0a")), "INVALID_PAYLOAD")  # 65536
    fails(gradient(d6 + h("04 00 00 00")), "MALFORMED_FRAME", "WF-5.7-4")
    fails(gradient(d6 + h("04") + NAN32), "NON_FINITE")
    fails(gradient(d6 + h("04") + NEG32), "INVALID_PAYLOAD", "WF-5.5-2")
    norm = h("04 00 00 00 40")
    # E = 2, bound = ceil(6 * 6 / 8) + 3 = 8 bytes
    fails(gradient(d6 + norm + h("95 05 06 0a 00 00 00 00 00")), "INVALID_PAYLOAD", "WF-5.7-4")
    fails(gradient(d6 + norm + h("95")), "INVALID_PAYLOAD", "WF-5.7-4")  # fewer than d ones
    fails(gradient(d6 + norm + h("95 0d 06 0a")), "INVALID_PAYLOAD", "WF-5.7-4")  # padding
    # N = [3, 0, 0, 0, 0, 0] > E = 2: bits 0 0 0 1 1 1 1 1 | 1
    fails(gradient(d6 + norm + h("f8 01 00 0a")), "INVALID_PAYLOAD", "WF-5.7-4")
    fails(gradient(d6 + norm + h("95 05")), "INVALID_PAYLOAD", "WF-5.7-4")  # mantissas missing
    fails(gradient(d6 + norm + h("95 05 26 0a")), "INVALID_PAYLOAD", "WF-5.7-4")  # mantissa pad
    # all levels zero: six 1 bits, no mantissa, no sign
    fails(gradient(d6 + norm + h("3f")), "INVALID_PAYLOAD", "WF-5.7-5")
    fails(gradient(d6 + norm + h("95 05 06")), "INVALID_PAYLOAD", "WF-5.7-4")  # sign missing
    fails(gradient(d6 + norm + h("95 05 06 0a 00")), "INVALID_PAYLOAD", "WF-5.7-4")  # extra
    fails(gradient(d6 + norm + h("95 05 06 1a")), "INVALID_PAYLOAD", "WF-5.7-4")  # sign padding


def test_qsgd_value_order_of_operations() -> None:
    norm = struct.unpack("<f", struct.pack("<f", 0.1))[0]
    vec = {"encoding": "QSGD", "dim": 2, "s": 3, "norm": norm, "levels": [1, -3]}
    assert wire.vector_to_list(vec) == [(1 * norm) / 3, (-3 * norm) / 3]  # (l * norm) / s [WF-5.7-1]


def test_dense_rice_check_order() -> None:
    base = h("83 10")
    fails(gradient(base + h("00 00 80")), "MALFORMED_FRAME", "WF-5.8-5")
    fails(gradient(base + NAN32 + h("01")), "NON_FINITE")
    fails(gradient(base + ZERO32 + h("01")), "INVALID_PAYLOAD", "WF-5.5-2")
    fails(gradient(base + SCALE_025), "MALFORMED_FRAME", "WF-5.8-5")
    fails(gradient(base + SCALE_025 + h("04 aa")), "INVALID_PAYLOAD", "WF-5.8-5")  # k >= b
    fails(gradient(base + SCALE_025 + h("01 aa")), "MALFORMED_FRAME", "WF-5.8-5")
    fails(gradient(base + SCALE_025 + h("01 aa d9 d3 9b dd 00 00")), "INVALID_PAYLOAD", "WF-5.8-5")
    fails(gradient(base + SCALE_025 + h("01 aa d9 d3 9b 5d")), "INVALID_PAYLOAD", "WF-5.8-5")
    fails(gradient(base + SCALE_025 + h("01 aa d9 d3 9b dd 00")), "INVALID_PAYLOAD", "WF-5.8-5")


def test_dense_rice_more_rules() -> None:
    # d = 16, b = 4: all codes zero -> k = 0, 16 one bits = ff ff; block 1 + 0 + 2 = 3 < 8.
    fails(gradient(h("83 10") + SCALE_025 + h("00 ff ff")), "INVALID_PAYLOAD", "WF-5.8-5")
    # A zigzag value of 2^b = 16: code 16 -> z: q = 16 with k = 0: 16 zeros then a one, then 15 ones.
    unary = wire._BitWriter()
    unary.unary(16)
    for _ in range(15):
        unary.unary(0)
    fails(gradient(h("83 10") + SCALE_025 + b"\x00" + unary.getvalue()), "INVALID_PAYLOAD", "WF-5.8-5")
    # b = 1 can never be DENSE_RICE: the block is never smaller than the DENSE codes.
    with pytest.raises(WireError):
        wire.encode_vector({"encoding": "DENSE_RICE", "dim": 16, "bits": 1, "scale": 1.0, "codes": [-1] * 16})
    assert wire.make_dense_vector(1, 1.0, [-1] * 16, rice=True)["encoding"] == "DENSE"


# =============================================================================================
# Sender side refusals (WF-9-3)
# =============================================================================================


@pytest.mark.parametrize(
    "vector,message_type,rule",
    [
        (
            {
                "encoding": "SPARSE_BITMAP",
                "dim": 12,
                "bits": 3,
                "scale": 0.5,
                "indices": [1, 5, 6],
                "codes": [3, -1, -4],
            },
            "MODEL",
            "WF-6.2-3",
        ),
        (
            {
                "encoding": "SPARSE_BITMAP",
                "dim": 64,
                "bits": 4,
                "scale": 0.125,
                "indices": [3, 40],
                "codes": [5, -3],
            },
            "GRADIENT",
            "WF-5.6-7",
        ),
        (
            {
                "encoding": "SPARSE_RICE",
                "dim": 12,
                "bits": 3,
                "scale": 0.5,
                "indices": [1, 5, 6],
                "codes": [3, -1, -4],
            },
            "GRADIENT",
            "WF-5.6-7",
        ),
        ({"encoding": "DENSE", "dim": 2, "bits": 3, "scale": 0.1, "codes": [1, 2]}, "GRADIENT", "WF-5.5-2"),
        ({"encoding": "DENSE", "dim": 2, "bits": 3, "scale": 1.0, "codes": [0, 0]}, "GRADIENT", "WF-5.5-4"),
        ({"encoding": "DENSE", "dim": 2, "bits": 3, "scale": 1.0, "codes": [4, 0]}, "GRADIENT", "WF-5.1-4"),
        ({"encoding": "RAW_F32", "dim": 1, "values": [0.1]}, "GRADIENT", "WF-5.3-1"),
        ({"encoding": "RAW_F64", "dim": 1, "values": [float("nan")]}, "GRADIENT", "WF-5.3-3"),
        ({"encoding": "QSGD", "dim": 2, "s": 2, "norm": 1.0, "levels": [3, 0]}, "GRADIENT", "WF-5.7-2"),
        ({"encoding": "QSGD", "dim": 2, "s": 2, "norm": 1.0, "levels": [0, 0]}, "GRADIENT", "WF-5.7-5"),
        ({"encoding": "ZERO", "dim": 0}, "GRADIENT", "WF-5.2-2"),
    ],
)
def test_encoder_refusals(vector: dict, message_type: str, rule: str) -> None:
    with pytest.raises(WireError) as info:
        wire.encode_message({"type": message_type, "epoch": 1, "version": 1, "vector": vector})
    assert info.value.local and info.value.code == "PROTOCOL_ERROR" and info.value.rule == rule


def test_encoder_refuses_relative_zero() -> None:
    with pytest.raises(WireError) as info:
        wire.encode_message(
            {
                "type": "MODEL",
                "epoch": 1,
                "version": 1,
                "relative": True,
                "vector": {"encoding": "EQUALS_SNAPSHOT", "dim": 4},
            }
        )
    assert info.value.rule == "WF-7.7-5"


# =============================================================================================
# Section 7: control messages (msgpack)
# =============================================================================================


def control(msg_type: int, body: bytes) -> bytes:
    return frame(msg_type, body)


def mp(value) -> bytes:
    out = bytearray()
    wire._mp_pack(value, out)
    return bytes(out)


HELLO_MAP = {"magic": "aiodq", "min_version": 1, "max_version": 1, "encodings": [0, 1], "name": ""}


def test_control_body_limits() -> None:
    body = mp({**HELLO_MAP, "name": "x" * 100})
    fails(control(0x01, body), "LIMIT_EXCEEDED", "WF-7-5", max_control_bytes=64)
    fails(control(0x01, b"\xc1" * 65), "LIMIT_EXCEEDED", max_control_bytes=64)  # before parsing


@pytest.mark.parametrize(
    "body,why",
    [
        ("", "empty body"),
        ("85 a5 6d 61 67 69 63", "truncated"),
        ("c1", "never-used byte"),
        ("81 01 02", "int key"),
        ("81 c0 02", "nil key"),
        ("81 90 02", "array key"),
        ("81 a1 ff 01", "invalid UTF-8 key"),
        ("81 a1 61 d4 01 00", "fixext value"),
        ("81 a1 61 c7 01 01 00", "ext8 value"),
        ("80 00", "trailing byte"),
        ("81 a1 61 dc ff ff", "array length above max_control_bytes"),
        ("81 a1 61 db 00 01 00 01", "str length above max_control_bytes"),
        ("81 a1 61 a3 ed a0 80", "UTF-8 surrogate"),
    ],
)
def test_msgpack_malformed(body: str, why: str) -> None:
    fails(control(0x01, h(body)), "MALFORMED_FRAME", "WF-7-6")


def test_msgpack_nesting_depth() -> None:
    def nested(levels: int) -> bytes:  # top-level map + (levels - 1) arrays
        return h("81 a1 61") + b"\x91" * (levels - 2) + b"\x90"

    err = fails(control(0x03, nested(1025)), "MALFORMED_FRAME", max_control_bytes=4096)
    assert "1024" in err.detail
    # 1024 levels are well-formed msgpack: the failure is the missing keys, not the nesting.
    fails(control(0x03, nested(1024)), "INVALID_CONFIG", max_control_bytes=4096)


def test_msgpack_non_canonical_accepted() -> None:
    body = h(
        "85 a5 6d 61 67 69 63 d9 05 61 69 6f 64 71 ab 6d 69 6e 5f 76 65 72 73 69 6f 6e cc 01"
        " ab 6d 61 78 5f 76 65 72 73 69 6f 6e d3 00 00 00 00 00 00 00 01"
        " a9 65 6e 63 6f 64 69 6e 67 73 dc 00 03 07 00 07 a4 6e 61 6d 65 a0"
    )
    assert decode_one(control(0x01, body)) == {
        "type": "HELLO",
        "min_version": 1,
        "max_version": 1,
        "encodings": [0, 7],
        "name": "",
    }


def test_control_unknown_duplicate_and_bin_keys() -> None:
    body = bytearray(mp({**HELLO_MAP, "extra": [1, {"x": None}]}))
    body[0] += 2  # two more pairs: a bin key and a duplicate name
    body += h("c4 05 6d 61 67 69 63 c0") + mp("name") + mp("last")
    assert decode_one(control(0x01, bytes(body)))["name"] == "last"


def test_hello_validation() -> None:
    def bad(changes: dict, code: str = "INVALID_CONFIG", drop: str | None = None) -> WireError:
        m = {**HELLO_MAP, **changes}
        if drop:
            del m[drop]
        return fails(control(0x01, mp(m)), code)

    assert bad({"magic": "aiodQ"}).rule == "WF-7.1-5"
    assert bad({}, drop="magic").rule == "WF-7.1-5"
    assert bad({"magic": b"aiodq", "min_version": "x"}).rule == "WF-7.1-5"  # magic first
    bad({"min_version": 0})
    bad({"min_version": 2, "max_version": 1})
    bad({"max_version": 256})
    bad({"min_version": True})
    bad({"max_version": 1.0})
    bad({"encodings": [16]})
    bad({"encodings": [-1]})
    bad({"encodings": [False]})
    bad({"encodings": "01"})
    bad({"name": "x" * 256})
    bad({"name": b"w1"})
    bad({}, drop="name")
    bad({}, drop="encodings")
    fails(control(0x01, mp([1, 2])), "INVALID_CONFIG", "WF-7-7")
    ok = decode_one(control(0x01, mp({**HELLO_MAP, "encodings": [15, 9, 9, 0], "name": "é" * 127})))
    assert ok["encodings"] == [0, 9, 15]


def test_welcome_validation() -> None:
    base = {"version": 1, "worker_id": 2**63 - 1, "encodings": []}
    assert decode_one(control(0x02, mp(base)))["worker_id"] == 2**63 - 1
    for changes in (
        {"version": 0},
        {"version": 256},
        {"worker_id": 2**63},
        {"worker_id": -1},
        {"encodings": [16]},
        {"version": "1"},
    ):
        fails(control(0x02, mp({**base, **changes})), "INVALID_CONFIG")
    fails(control(0x02, mp({"version": 1, "worker_id": 0})), "INVALID_CONFIG")


def test_config_validation_order() -> None:
    base = {"dim": 5, "algorithm": "asylpg", "params": {}}
    fails(control(0x03, mp({**base, "dim": 0})), "INVALID_CONFIG", "WF-7.3-3")
    fails(control(0x03, mp({**base, "dim": True})), "INVALID_CONFIG", "WF-7.3-3")
    fails(
        control(0x03, mp({**base, "dim": 6, "algorithm": ""})), "LIMIT_EXCEEDED", "WF-7.3-4", max_dimension=5
    )
    fails(control(0x03, mp({**base, "algorithm": ""})), "INVALID_CONFIG", "WF-7.3-5")
    fails(control(0x03, mp({**base, "params": []})), "INVALID_CONFIG", "WF-7.3-5")
    for value in (None, b"x", [1], {"a": 1}, float("inf"), float("nan")):
        fails(control(0x03, mp({**base, "params": {"p": value}})), "INVALID_CONFIG", "WF-7.3-5")
    body = bytearray(mp({**base, "params": {}}))
    body[-1] = 0x81
    body += h("c4 01 70 01")  # bin key in params
    fails(control(0x03, bytes(body)), "INVALID_CONFIG", "WF-7.3-5")
    # float32 parameters are accepted on receipt (7-10).
    body = bytearray(mp({**base, "params": {}}))
    body[-1] = 0x81
    body += mp("mu") + h("ca 3f 00 00 00")
    assert decode_one(control(0x03, bytes(body)))["params"] == {"mu": 0.5}
    # Duplicate params keys: the last occurrence is used, an overridden bad value is ignored (7-9).
    body = bytearray(mp({**base, "params": {}}))
    body[-1] = 0x83
    body += mp("a") + mp(None) + mp("b") + mp(2) + mp("a") + mp(1)
    assert decode_one(control(0x03, bytes(body)))["params"] == {"a": 1, "b": 2}


# =============================================================================================
# ERROR, CLOSE, HEARTBEAT and AUTH bodies
# =============================================================================================


def test_error_and_close_bodies() -> None:
    fails(frame(0x0A, h("0e")), "MALFORMED_FRAME", "WF-7.10-3")
    fails(frame(0x0A, h("0e 00 01")), "MALFORMED_FRAME", "WF-4.2-4")
    fails(frame(0x0A, h("0e 00 01 80 00")), "MALFORMED_FRAME", "WF-4.2-2")
    fails(frame(0x0B, h("00")), "MALFORMED_FRAME")
    fails(frame(0x0B, h("00 00") + b"\xff" * 5), "LIMIT_EXCEEDED", "WF-7.10-3", max_reason_bytes=4)
    fails(frame(0x0B, h("00 00 ff")), "MALFORMED_FRAME", "WF-7.10-3")
    assert decode_one(frame(0x0B, h("ff ff")))["code"] == 65535  # unregistered codes accepted
    assert decode_one(frame(0x0A, h("15 00 00 00")))["code"] == 21
    fails(frame(0x09, b"\x00"), "MALFORMED_FRAME", "WF-7.9-2")


def test_auth_bodies() -> None:
    assert decode_one(frame(0x0C, bytes(32)))["nonce"] == bytes(32)
    response = decode_one(frame(0x0D, bytes(range(64))))
    assert response["nonce"] == bytes(range(32)) and response["mac"] == bytes(range(32, 64))
    for msg_type, size in ((0x0C, 32), (0x0D, 64), (0x0E, 32)):
        fails(frame(msg_type, bytes(size - 1)), "MALFORMED_FRAME")
        fails(frame(msg_type, bytes(size + 1)), "MALFORMED_FRAME")
        data = frame(msg_type, bytes(size))
        assert wire.encode_message(decode_one(data)) == data


# =============================================================================================
# Round trips and canonical form
# =============================================================================================


def random_vector(rng: random.Random, encoding: str) -> dict:
    d = rng.randint(1, 70)
    bits = rng.randint(1, 16)
    scale = rng.choice([0.25, 2.0**-149, 3.0, struct.unpack("<f", struct.pack("<f", 1e-3))[0]])
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1

    def small_code() -> int:
        return max(lo, min(hi, int(rng.gauss(0, 2))))

    if encoding in ("RAW_F32", "RAW_F64"):
        values = [rng.uniform(-5, 5) for _ in range(d)]
        if encoding == "RAW_F32":
            values = [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]
        return {"encoding": encoding, "dim": d, "values": values}
    if encoding in ("ZERO", "EQUALS_SNAPSHOT"):
        return {"encoding": encoding, "dim": d}
    if encoding in ("DENSE", "DENSE_RICE"):
        codes = [small_code() if rng.random() < 0.8 else rng.randint(lo, hi) for _ in range(d)]
        if not any(codes):
            codes[0] = hi if hi else lo
        vec = wire.make_dense_vector(bits, scale, codes, rice=encoding == "DENSE_RICE")
        return vec
    if encoding in ("SPARSE_BITMAP", "SPARSE_RICE"):
        n = rng.randint(1, max(1, d // rng.choice([1, 2, 8, 30])))
        indices = sorted(rng.sample(range(d), n))
        choices = [c for c in (lo, -1, 1, hi) if c and lo <= c <= hi]
        codes = [rng.choice(choices) for _ in range(n)]
        return wire.make_sparse_vector(d, bits, scale, indices, codes)
    s = rng.randint(1, 65535) if rng.random() < 0.3 else rng.randint(1, 8)
    levels = [rng.randint(-s, s) if rng.random() < 0.5 else 0 for _ in range(d)]
    if not any(levels):
        levels[-1] = -s
    return {"encoding": "QSGD", "dim": d, "s": s, "norm": scale, "levels": levels}


@pytest.mark.parametrize("encoding", list(wire.ENCODINGS))
def test_random_round_trips(encoding: str) -> None:
    rng = random.Random(1234 + wire.ENCODINGS[encoding])
    for _ in range(150):
        vector = random_vector(rng, encoding)
        msg_type = "MODEL" if vector["encoding"] == "EQUALS_SNAPSHOT" else "GRADIENT"
        message = {
            "type": msg_type,
            "epoch": rng.randint(0, 2**63 - 1),
            "version": rng.randint(0, 300),
            "vector": vector,
        }
        if msg_type == "MODEL":
            message["relative"] = False
        data = wire.encode_message(message)
        decoded = decode_one(data, dimension=vector["dim"])
        assert decoded == message
        assert wire.encode_message(decoded) == data


def test_mutated_frames_are_rejected_or_canonical() -> None:
    """Any binary frame that decodes re-encodes to the same bytes (5-2); others raise WireError."""
    rng = random.Random(99)
    seeds = [A4, A5, A6, A7, A8, A9, A10, A11, A12, A13, A16, A16_AS_DENSE, A14_ERROR, A14_CLOSE]
    for _ in range(6000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            action = rng.random()
            pos = rng.randrange(7, len(data)) if len(data) > 7 else 7
            if action < 0.6 and len(data) > 7:
                data[pos] ^= 1 << rng.randrange(8)
            elif action < 0.8:
                data.insert(pos, rng.randrange(256))
            elif len(data) > 8:
                del data[pos]
        struct.pack_into("<I", data, 3, len(data) - 7)
        try:
            messages = wire.decode_stream(bytes(data))
        except WireError:
            continue
        assert wire.encode_message(messages[0]) == bytes(data)


# =============================================================================================
# Endpoint: sections 6, 7.12-7.14 and 8
# =============================================================================================


def counter_nonces(start: int):
    state = {"n": start}

    def source(size: int) -> bytes:
        state["n"] += 1
        return bytes([state["n"]]) * size

    return source


HELLO = {"type": "HELLO", "min_version": 1, "max_version": 1, "encodings": list(range(9)), "name": "w"}
WELCOME = {"type": "WELCOME", "version": 1, "worker_id": 3, "encodings": list(range(9))}
CONFIG = {"type": "CONFIG", "dim": 2, "algorithm": "asylpg", "params": {}}
RAW2 = {"encoding": "RAW_F32", "dim": 2, "values": [1.0, -0.5]}
DENSE2 = {"encoding": "DENSE", "dim": 2, "bits": 4, "scale": 0.25, "codes": [1, -2]}


def snapshot(epoch: int) -> dict:
    return {"type": "SNAPSHOT", "epoch": epoch, "vector": RAW2}


def snapshot_gradient(epoch: int) -> dict:
    return {
        "type": "SNAPSHOT_GRADIENT",
        "epoch": epoch,
        "samples": 10,
        "correct": 3,
        "loss": 1.5,
        "vector": RAW2,
    }


def model(epoch: int, version: int, vector: dict = DENSE2, relative: bool = False) -> dict:
    return {"type": "MODEL", "epoch": epoch, "version": version, "relative": relative, "vector": vector}


def grad(epoch: int, version: int, vector: dict = DENSE2) -> dict:
    return {"type": "GRADIENT", "epoch": epoch, "version": version, "vector": vector}


def ready_pair(**kwargs) -> tuple[Master, Worker]:
    master, worker = Master(**kwargs.get("master", {})), Worker(**kwargs.get("worker", {}))
    assert master.receive(worker.send(HELLO)) == [HELLO]
    assert worker.receive(master.send(WELCOME)) == [WELCOME]
    assert worker.receive(master.send(CONFIG)) == [CONFIG]
    assert master.state == worker.state == "READY"
    return master, worker


def transfer(sender, receiver, message: dict) -> list[dict]:
    return receiver.receive(sender.send(message))


def assert_failed(endpoint, code: str, rule: str | None = None, close_sent: bool = True) -> None:
    assert endpoint.state == "CLOSED"
    assert endpoint.error is not None and endpoint.error.code == code, endpoint.error
    if rule:
        assert endpoint.error.rule == rule, endpoint.error
    out = endpoint.data_to_send()
    if close_sent:
        close = decode_one(out)
        assert close["type"] == "CLOSE" and close["code"] == wire.ERROR_CODES[code]
    else:
        assert out == b""


def test_full_session_and_clean_close() -> None:
    master, worker = ready_pair()
    assert transfer(master, worker, snapshot(0)) == [snapshot(0)]
    assert transfer(worker, master, snapshot_gradient(0)) == [snapshot_gradient(0)]
    fg = {"type": "FULL_GRADIENT", "epoch": 0, "vector": RAW2}
    assert transfer(master, worker, fg) == [fg]
    for version in (1, 1, 4):
        assert transfer(master, worker, model(0, version)) == [model(0, version)]
        assert transfer(worker, master, grad(0, version)) == [grad(0, version)]
    assert transfer(master, worker, {"type": "HEARTBEAT"}) == [{"type": "HEARTBEAT"}]
    err = {"type": "ERROR", "code": 14, "epoch": 0, "version": 4, "reason": "stale"}
    assert transfer(master, worker, err) == [err]
    data = master.close(0, "bye")
    assert data == A14_CLOSE and master.state == "CLOSING"
    assert worker.receive(data) == [{"type": "CLOSE", "code": 0, "reason": "bye"}]
    assert worker.state == "CLOSED"
    answer = worker.data_to_send()
    assert answer == A14_CLOSE_ANSWER
    assert master.receive(answer) == [{"type": "CLOSE", "code": 0, "reason": ""}]
    assert master.state == "CLOSED" and master.data_to_send() == b""
    assert master.error is None and worker.error is None


def test_examples_in_a_session_byte_for_byte() -> None:
    master = Master()
    worker = Worker()
    hello = {"type": "HELLO", "min_version": 1, "max_version": 1, "encodings": list(range(8)), "name": "w1"}
    assert worker.send(hello) == A1
    assert master.receive(A1) == [hello]
    welcome = {"type": "WELCOME", "version": 1, "worker_id": 3, "encodings": [0, 1, 2, 4, 5, 6, 7]}
    assert master.send(welcome) == A2
    worker.receive(A2)
    assert master.send(EXAMPLES[2][2]) == A3
    assert worker.receive(A3) == [EXAMPLES[2][2]]
    assert worker.dimension == 5 and worker.state == "READY"


def test_handshake_state_names() -> None:
    master, worker = Master(), Worker()
    assert master.state == worker.state == "HANDSHAKE"
    master.receive(worker.send(HELLO))
    assert master.state == "HANDSHAKE"
    worker.receive(master.send(WELCOME))
    assert master.state == worker.state == "CONFIGURING"


def test_receive_order_state_before_body() -> None:
    """7-1 example: GRADIENT in CONFIGURING with a malformed body -> UNEXPECTED_MESSAGE."""
    master, worker = Master(), Worker()
    master.receive(worker.send(HELLO))
    master.send(WELCOME)
    master.receive(frame(0x08, h("01")))
    assert_failed(master, "UNEXPECTED_MESSAGE", "WF-8.1-1")


def test_receive_order_encoding_before_sequencing() -> None:
    """7-1 example: unannounced encoding and wrong epoch -> UNSUPPORTED_ENCODING."""
    master = Master()
    worker = Worker()
    master.receive(worker.send({**HELLO, "encodings": [0, 1, 2, 3, 4]}))
    worker.receive(master.send({**WELCOME, "encodings": [0, 1, 2, 3, 4]}))
    worker.receive(master.send(CONFIG))
    worker.receive(master.send(snapshot(0)))
    master.receive(worker.send(snapshot_gradient(0)))
    worker.receive(master.send(model(0, 1)))
    qsgd = {"encoding": "QSGD", "dim": 2, "s": 1, "norm": 1.0, "levels": [1, 0]}
    master.receive(wire.encode_message(grad(5, 1, qsgd)))
    assert_failed(master, "UNSUPPORTED_ENCODING", "WF-6.2-3")


def test_receive_order_version_before_role_and_state() -> None:
    master = Master()
    master.receive(frame(0x02, mp({"version": 1, "worker_id": 0, "encodings": []}), version=2))
    assert_failed(master, "UNSUPPORTED_VERSION", "WF-6.1-2")
    master = Master()
    master.receive(frame(0x02, mp({"version": 1, "worker_id": 0, "encodings": []})))
    assert_failed(master, "UNEXPECTED_MESSAGE", "WF-8.1-1")
    worker = Worker()
    worker.receive(frame(0x09, b"", version=2))  # not negotiated yet: must be 1 [WF-6.1-8]
    assert_failed(worker, "UNSUPPORTED_VERSION", "WF-6.1-8")


def test_receive_order_type_and_size_first() -> None:
    worker = Worker(limits=ReceiveContext(max_frame_bytes=64))
    worker.receive(h("09 ee 00 ff 00 00 00"))
    assert_failed(worker, "FRAME_TOO_LARGE", "WF-3-3")
    worker = Worker()
    worker.receive(h("09 ee 00 00 00 00 00"))
    assert_failed(worker, "UNKNOWN_MESSAGE_TYPE")


def test_receive_order_state_before_flags() -> None:
    worker = Worker()
    worker.receive(frame(0x07, b"", flags=0x02))
    assert_failed(worker, "UNEXPECTED_MESSAGE")
    _master, worker = ready_pair()
    worker.receive(frame(0x04, wire.encode_message(snapshot(0))[7:], flags=0x01))
    assert_failed(worker, "MALFORMED_FRAME", "WF-3-6")


def test_role_checks() -> None:
    worker = Worker()
    worker.receive(A1)
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-8.1-1")
    master, worker = ready_pair()
    master.receive(wire.encode_message(snapshot(3)))
    assert_failed(master, "UNEXPECTED_MESSAGE", "WF-8.1-1")


def test_second_hello_and_unsolicited_welcome() -> None:
    master = Master()
    master.receive(A1 + A1)
    assert_failed(master, "UNEXPECTED_MESSAGE", "WF-7.1-4")
    worker = Worker()
    worker.receive(A2)
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-7.2-4")
    worker = Worker()
    worker.send(HELLO)
    with pytest.raises(WireError) as info:
        worker.send(HELLO)
    assert info.value.local and info.value.code == "UNEXPECTED_MESSAGE"
    with pytest.raises(WireError) as info:
        Master().send(WELCOME)
    assert info.value.code == "UNEXPECTED_MESSAGE"


def test_version_negotiation() -> None:
    master = Master(versions=[1])
    master.receive(worker_hello := Worker().send({**HELLO, "min_version": 2, "max_version": 5}))
    assert worker_hello
    assert_failed(master, "UNSUPPORTED_VERSION", "WF-7.1-7")
    master = Master(versions=[1, 2, 3])
    worker = Worker(versions=[1, 2])
    master.receive(worker.send({**HELLO, "min_version": 1, "max_version": 2}))
    assert master.best_version() == 2
    with pytest.raises(WireError) as info:
        master.send({**WELCOME, "version": 3})
    assert info.value.code == "UNSUPPORTED_VERSION" and info.value.local
    welcome = master.send({**WELCOME, "version": 2})
    assert welcome[0] == 1  # WELCOME always carries header version 1
    worker.receive(welcome)
    assert worker.negotiated_version == 2
    config = master.send(CONFIG)
    assert config[0] == 2  # negotiated version from now on [WF-6.1-7]
    worker.receive(config)
    assert worker.state == "READY"
    worker.receive(frame(0x09, b"", version=1))
    assert_failed(worker, "UNSUPPORTED_VERSION", "WF-6.1-7")
    # A worker refuses a WELCOME version outside its offer.
    worker = Worker(versions=[1, 2])
    master = Master(versions=[1, 2])
    master.receive(worker.send({**HELLO, "min_version": 1, "max_version": 1}))
    worker.receive(frame(0x02, mp({"version": 2, "worker_id": 0, "encodings": []})))
    assert_failed(worker, "UNSUPPORTED_VERSION", "WF-6.1-6")


def test_announced_encodings() -> None:
    master = Master()
    worker = Worker(encodings=range(8))
    with pytest.raises(WireError) as info:
        worker.send(HELLO)
    assert info.value.code == "UNSUPPORTED_ENCODING" and info.value.rule == "WF-6.2-5"
    master.receive(worker.send({**HELLO, "encodings": list(range(8))}))
    worker.receive(master.send(WELCOME))
    worker.receive(master.send({**CONFIG, "dim": 16}))
    raw16 = {"encoding": "RAW_F32", "dim": 16, "values": [0.0] * 16}
    worker.receive(master.send({"type": "SNAPSHOT", "epoch": 0, "vector": raw16}))
    master.receive(worker.send({**snapshot_gradient(0), "vector": raw16}))
    rice = wire.make_dense_vector(4, 0.25, A16_CODES, rice=True)
    with pytest.raises(WireError) as info:
        master.send(model(0, 1, rice))
    assert info.value.code == "UNSUPPORTED_ENCODING" and info.value.rule == "WF-6.2-2"
    assert master.state == "READY" and master.outstanding is None  # nothing changed
    dense = wire.make_dense_vector(4, 0.25, A16_CODES, rice=True, peer_encodings=master.peer_encodings)
    assert transfer(master, worker, model(0, 1, dense))[0]["vector"]["encoding"] == "DENSE"
    # The worker accepts only what it announced: a DENSE_RICE MODEL fails there.
    worker.receive(wire.encode_message(model(0, 1, rice)))  # a MODEL is outstanding, too
    assert_failed(worker, "UNSUPPORTED_ENCODING", "WF-6.2-3")  # step 7 before step 8


def test_unannounced_encoding_is_reported_before_sequencing() -> None:
    master = Master()
    worker = Worker()
    master.receive(worker.send({**HELLO, "encodings": list(range(8))}))
    worker.receive(master.send(WELCOME))
    worker.receive(master.send({**CONFIG, "dim": 16}))
    rice = wire.make_dense_vector(4, 0.25, A16_CODES, rice=True)
    worker.receive(wire.encode_message(model(9, 1, rice)))  # also before any SNAPSHOT
    assert_failed(worker, "UNSUPPORTED_ENCODING", "WF-6.2-3")


def test_local_refusals_in_ready() -> None:
    master, worker = ready_pair()
    for sender, message, code in [
        (worker, grad(0, 0), "UNEXPECTED_MESSAGE"),
        (worker, snapshot_gradient(0), "UNEXPECTED_MESSAGE"),
        (master, model(0, 0), "UNEXPECTED_MESSAGE"),
        (master, {"type": "CONFIG", "dim": 2, "algorithm": "a", "params": {}}, "UNEXPECTED_MESSAGE"),
        (
            master,
            {"type": "SNAPSHOT", "epoch": 0, "vector": {"encoding": "ZERO", "dim": 2}},
            "PROTOCOL_ERROR",
        ),
        (
            master,
            {"type": "SNAPSHOT", "epoch": 0, "vector": {"encoding": "RAW_F32", "dim": 1, "values": [1.0]}},
            "WRONG_DIMENSION",
        ),
        (master, {"type": "GRADIENT", "epoch": 0, "version": 0, "vector": DENSE2}, "UNEXPECTED_MESSAGE"),
        (
            master,
            {"type": "ERROR", "code": 1, "epoch": 0, "version": 0, "reason": "x" * 1025},
            "LIMIT_EXCEEDED",
        ),
        (master, {"type": "AUTH_CHALLENGE", "nonce": bytes(32)}, "PROTOCOL_ERROR"),
    ]:
        with pytest.raises(WireError) as info:
            sender.send(message)
        assert info.value.local and info.value.code == code, (message, info.value)
    assert master.state == worker.state == "READY"


def test_sequencing_snapshot_and_models() -> None:
    master, worker = ready_pair()
    transfer(master, worker, snapshot(5))
    # worker-side receive checks
    worker.receive(wire.encode_message(snapshot(6)))
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-8.2-3")

    master, worker = ready_pair()
    transfer(master, worker, snapshot(5))
    transfer(worker, master, snapshot_gradient(5))
    worker.receive(wire.encode_message(snapshot(5)))
    assert_failed(worker, "UNKNOWN_EPOCH", "WF-8.2-1")

    master, worker = ready_pair()
    worker.receive(wire.encode_message(model(0, 0)))
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-8.2-6")

    master, worker = ready_pair()
    transfer(master, worker, snapshot(5))
    transfer(worker, master, snapshot_gradient(5))
    worker.receive(wire.encode_message(model(4, 0)))
    assert_failed(worker, "UNKNOWN_EPOCH", "WF-8.2-6")

    master, worker = ready_pair()
    transfer(master, worker, snapshot(5))
    transfer(worker, master, snapshot_gradient(5))
    transfer(master, worker, model(5, 9))
    transfer(worker, master, grad(5, 9))
    worker.receive(wire.encode_message(model(5, 8)))
    assert_failed(worker, "VERSION_MISMATCH", "WF-8.2-2")

    master, worker = ready_pair()
    transfer(master, worker, snapshot(5))
    transfer(worker, master, snapshot_gradient(5))
    transfer(master, worker, model(5, 9))
    worker.receive(wire.encode_message(model(5, 1)))  # outstanding before version
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-8.2-6")


def test_sequencing_full_gradient() -> None:
    fg = {"type": "FULL_GRADIENT", "epoch": 5, "vector": RAW2}
    master, worker = ready_pair()
    transfer(master, worker, snapshot(5))
    worker.receive(wire.encode_message(fg))
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-8.2-5")

    master, worker = ready_pair()
    transfer(master, worker, snapshot(5))
    transfer(worker, master, snapshot_gradient(5))
    transfer(master, worker, model(5, 1))
    worker.receive(wire.encode_message({**fg, "epoch": 4}))  # epoch before "after a MODEL"
    assert_failed(worker, "UNKNOWN_EPOCH", "WF-8.2-5")

    master, worker = ready_pair()
    transfer(master, worker, snapshot(5))
    transfer(worker, master, snapshot_gradient(5))
    transfer(master, worker, fg)
    worker.receive(wire.encode_message(fg))
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-8.2-5")


def test_sequencing_master_side() -> None:
    master, worker = ready_pair()
    master.receive(wire.encode_message(snapshot_gradient(0)))
    assert_failed(master, "UNEXPECTED_MESSAGE", "WF-8.2-4")

    master, worker = ready_pair()
    transfer(master, worker, snapshot(2))
    master.receive(wire.encode_message(snapshot_gradient(1)))
    assert_failed(master, "UNKNOWN_EPOCH", "WF-8.2-4")

    for sent, answered, code in [
        ((2, 5), (1, 5), "UNKNOWN_EPOCH"),
        ((2, 5), (2, 6), "FUTURE_VERSION"),
        ((2, 5), (2, 4), "VERSION_MISMATCH"),
    ]:
        master, worker = ready_pair()
        transfer(master, worker, snapshot(2))
        transfer(worker, master, snapshot_gradient(2))
        transfer(master, worker, model(*sent))
        master.receive(wire.encode_message(grad(*answered)))
        assert_failed(master, code, "WF-8.2-7")

    master, worker = ready_pair()
    master.receive(wire.encode_message(grad(0, 0)))
    assert_failed(master, "UNEXPECTED_MESSAGE", "WF-8.2-7")


def test_snapshot_crossing_gradient() -> None:
    """8.2-9: MODEL(0, 1), SNAPSHOT(1), then GRADIENT(0, 1), SNAPSHOT_GRADIENT(1), MODEL(1, >= 1)."""
    master, worker = ready_pair()
    transfer(master, worker, snapshot(0))
    transfer(worker, master, snapshot_gradient(0))
    transfer(master, worker, model(0, 1))
    transfer(master, worker, snapshot(1))
    with pytest.raises(WireError) as info:
        worker.send(snapshot_gradient(1))
    assert info.value.code == "UNEXPECTED_MESSAGE" and info.value.rule == "WF-8.2-4"
    assert transfer(worker, master, grad(0, 1)) == [grad(0, 1)]
    assert transfer(worker, master, snapshot_gradient(1)) == [snapshot_gradient(1)]
    assert transfer(master, worker, model(1, 1)) == [model(1, 1)]
    # The master refuses a SNAPSHOT_GRADIENT that overtakes the GRADIENT.
    master, worker = ready_pair()
    transfer(master, worker, snapshot(0))
    transfer(worker, master, snapshot_gradient(0))
    transfer(master, worker, model(0, 1))
    transfer(master, worker, snapshot(1))
    master.receive(wire.encode_message(snapshot_gradient(1)))
    assert_failed(master, "UNEXPECTED_MESSAGE", "WF-8.2-4")


def test_relative_and_equals_snapshot_models() -> None:
    master, worker = ready_pair()
    transfer(master, worker, snapshot(0))
    transfer(worker, master, snapshot_gradient(0))
    rel = transfer(master, worker, model(0, 1, DENSE2, relative=True))[0]
    assert wire.vector_to_list(rel["vector"], worker.snapshot, relative=True) == [1.25, -1.0]
    transfer(worker, master, grad(0, 1))
    eq = transfer(master, worker, model(0, 1, {"encoding": "EQUALS_SNAPSHOT", "dim": 2}))[0]
    assert wire.vector_to_list(eq["vector"], worker.snapshot) == [1.0, -0.5]
    transfer(worker, master, grad(0, 1))
    worker.receive(h("01 07 01 04 00 00 00 00 02 30 02"))
    assert_failed(worker, "INVALID_PAYLOAD", "WF-7.7-6")


def test_close_crossing_close() -> None:
    master, worker = ready_pair()
    from_master = master.close(0, "m")
    from_worker = worker.close(19, "going away")
    assert master.receive(from_worker)[0]["code"] == 19
    assert worker.receive(from_master)[0]["reason"] == "m"
    assert master.state == worker.state == "CLOSED"
    assert master.data_to_send() == worker.data_to_send() == b""
    assert master.error is None and worker.error is None


def test_gradient_crossing_close_is_accepted() -> None:
    master, worker = ready_pair()
    transfer(master, worker, snapshot(0))
    transfer(worker, master, snapshot_gradient(0))
    transfer(master, worker, model(0, 1))
    close = master.close()
    g = worker.send(grad(0, 1))
    assert master.receive(g) == [grad(0, 1)]  # checked against READY [WF-8.1-2]
    assert master.outstanding is None
    with pytest.raises(WireError):
        master.send(model(0, 2))  # nothing is sent in CLOSING
    worker.receive(close)
    assert master.receive(worker.data_to_send())[0]["type"] == "CLOSE"
    assert master.state == "CLOSED" and master.error is None


def test_violation_in_closing_closes_silently() -> None:
    master, _worker = ready_pair()
    master.close()
    master.receive(wire.encode_message(grad(0, 0)))
    assert_failed(master, "UNEXPECTED_MESSAGE", close_sent=False)


def test_close_crossing_handshake() -> None:
    # The worker gives up right after HELLO; the master's WELCOME crosses its CLOSE.
    master, worker = Master(), Worker()
    hello = worker.send(HELLO)
    worker_close = worker.close(19)
    master.receive(hello)
    welcome = master.send(WELCOME)
    assert master.state == "CONFIGURING"
    assert master.receive(worker_close)[0]["code"] == 19
    master_answer = master.data_to_send()
    assert master_answer == A14_CLOSE_ANSWER and master.state == "CLOSED"
    assert worker.receive(welcome + master_answer) == [WELCOME, {"type": "CLOSE", "code": 0, "reason": ""}]
    assert worker.state == "CLOSED" and worker.error is None
    assert worker.negotiated_version == 1


def test_close_crossing_config_advances_the_checked_state() -> None:
    """WF-8.1-2 (amended): a CONFIG that crosses the worker's CLOSE moves the checked state to READY,
    so the SNAPSHOT after it is accepted too.  (Replaces the frozen-state reading, NOTES.md.)"""
    master, worker = Master(), Worker()
    master.receive(worker.send(HELLO))
    worker.receive(master.send(WELCOME))
    worker_close = worker.close()
    assert worker.state == "CLOSING" and worker.session_state == "CONFIGURING"
    config = master.send(CONFIG)
    snap = master.send(snapshot(0))
    assert worker.receive(config) == [CONFIG]
    assert worker.state == "CLOSING" and worker.session_state == "READY"
    assert worker.receive(snap) == [snapshot(0)]
    assert worker.state == "CLOSING" and worker.error is None and worker.data_to_send() == b""
    master.receive(worker_close)
    assert master.state == "CLOSED"
    assert worker.receive(master.data_to_send())[0]["type"] == "CLOSE"
    assert worker.state == "CLOSED" and worker.error is None and worker.data_to_send() == b""


def test_close_during_handshake_uses_version_1_and_bytes_after_close_ignored() -> None:
    master = Master()
    assert master.receive(A14_CLOSE + b"\xff\xff garbage") == [{"type": "CLOSE", "code": 0, "reason": "bye"}]
    assert master.data_to_send() == A14_CLOSE_ANSWER
    assert master.receive(b"more") == []
    with pytest.raises(WireError):
        master.send(WELCOME)


def test_failure_stops_processing_and_keeps_earlier_messages() -> None:
    _master, worker = ready_pair()
    got = worker.receive(A14_HEARTBEAT + frame(0x09, b"x") + A14_HEARTBEAT)
    assert got == [{"type": "HEARTBEAT"}]
    assert_failed(worker, "MALFORMED_FRAME", "WF-7.9-2")
    assert worker.receive(A14_HEARTBEAT) == []


def test_end_of_stream() -> None:
    master, worker = ready_pair()
    assert worker.receive(A14_HEARTBEAT[:3]) == []
    worker.eof()
    assert worker.end_of_stream
    assert_failed(worker, "MALFORMED_FRAME", "WF-3-5")
    master, worker = ready_pair()
    assert worker.receive(b"") == []
    assert worker.state == "CLOSED" and worker.data_to_send() == b"" and worker.error is None
    # In CLOSING a partial frame at end of stream fails silently.
    master, worker = ready_pair()
    master.close()
    master.receive(b"\x01")
    master.eof()
    assert_failed(master, "MALFORMED_FRAME", close_sent=False)


def test_failure_reason_is_truncated_at_a_character_boundary() -> None:
    worker = Worker(limits=ReceiveContext(max_reason_bytes=6))
    worker.receive(frame(0x0F, b""))
    close = decode_one(worker.data_to_send())
    assert close["code"] == 4 and len(close["reason"].encode()) <= 6
    assert _truncate_utf8("aé€", 4) == "aé"
    assert _truncate_utf8("aé€", 5) == "aé"
    assert _truncate_utf8("aé€", 6) == "aé€"


# ----------------------------------------------------------------------------- shared secret

SECRET = b"0123456789abcdef"


def auth_pair(master_secret=SECRET, worker_secret=SECRET) -> tuple[Master, Worker]:
    return (
        Master(secret=master_secret, nonce_source=counter_nonces(0x10)),
        Worker(secret=worker_secret, nonce_source=counter_nonces(0x20)),
    )


def test_shared_secret_handshake() -> None:
    master, worker = auth_pair()
    assert master.receive(worker.send(HELLO)) == []  # HELLO held [WF-7.12-1]
    challenge = master.data_to_send()
    nm = bytes([0x11]) * 32
    assert challenge == frame(0x0C, nm)
    with pytest.raises(WireError):
        master.send(WELCOME)  # not verified yet
    assert worker.receive(challenge) == []
    response = worker.data_to_send()
    nw = bytes([0x21]) * 32
    pw = hmac.new(SECRET, b"aiodq-v1 worker" + nm + nw, hashlib.sha256).digest()
    assert pw == worker_proof(SECRET, nm, nw)
    assert response == frame(0x0D, nw + pw)
    assert master.receive(response) == [HELLO]
    confirm = master.data_to_send()
    assert confirm == frame(0x0E, master_proof(SECRET, nm, nw))
    assert worker.receive(confirm) == []
    assert worker.receive(master.send(WELCOME)) == [WELCOME]
    assert worker.receive(master.send(CONFIG)) == [CONFIG]
    assert master.state == worker.state == "READY"


def test_auth_wrong_secret() -> None:
    master, worker = auth_pair(worker_secret=b"x" * 16)
    master.receive(worker.send(HELLO))
    worker.receive(master.data_to_send())
    master.receive(worker.data_to_send())
    assert_failed(master, "AUTH_FAILED", "WF-7.13-2")


def test_auth_wrong_master_proof() -> None:
    master, worker = auth_pair()
    master.receive(worker.send(HELLO))
    worker.receive(master.data_to_send())
    worker.data_to_send()
    worker.receive(frame(0x0E, bytes(32)))
    assert_failed(worker, "AUTH_FAILED", "WF-7.14-1")


def test_auth_worker_without_secret() -> None:
    master, worker = auth_pair(worker_secret=None)
    master.receive(worker.send(HELLO))
    worker.receive(master.data_to_send())
    assert_failed(worker, "AUTH_FAILED", "WF-7.12-3")
    worker = Worker()
    worker.send(HELLO)
    worker.receive(frame(0x0C, bytes(31)))  # length before the missing secret
    assert_failed(worker, "MALFORMED_FRAME", "WF-7.12-3")


def test_auth_master_skips_handshake() -> None:
    master, worker = auth_pair(master_secret=None)
    master.receive(worker.send(HELLO))
    worker.receive(master.send(WELCOME))
    assert_failed(worker, "AUTH_FAILED", "WF-7.14-2")


def test_auth_ordering_errors() -> None:
    master = Master()
    master.receive(A1)
    master.receive(frame(0x0D, bytes(64)))
    assert_failed(master, "UNEXPECTED_MESSAGE", "WF-7.13-2")
    master = Master()
    master.receive(frame(0x0D, bytes(63)))  # state allows it: length is checked first
    assert_failed(master, "MALFORMED_FRAME", "WF-7.13-2")
    master, worker = auth_pair()
    master.receive(worker.send(HELLO))
    challenge = master.data_to_send()
    worker.receive(challenge + challenge)
    assert wire.decode_stream(worker.data_to_send())[0]["type"] == "AUTH_RESPONSE"
    assert worker.error.code == "UNEXPECTED_MESSAGE" and worker.error.rule == "WF-7.12-3"
    worker = Worker(secret=SECRET)
    worker.send(HELLO)
    worker.receive(frame(0x0E, bytes(32)))
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-7.14-1")
    master, worker = ready_pair()
    worker.receive(frame(0x0C, bytes(32)))  # AUTH only in HANDSHAKE
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-8.1-1")


def test_secret_must_be_16_bytes() -> None:
    with pytest.raises(ValueError):
        Master(secret=b"short")


# ----------------------------------------------------------------------------- timers


def test_handshake_timeout() -> None:
    worker = Worker(now=100.0)
    worker.send(HELLO, now=100.0)
    assert worker.poll(109.9) == b""
    data = worker.poll(110.0)
    assert decode_one(data) == {"type": "CLOSE", "code": 15, "reason": data[9:].decode()}
    assert worker.state == "CLOSED" and worker.error.code == "TIMEOUT"


def test_worker_handshake_timer_runs_until_config() -> None:
    master, worker = Master(), Worker()
    master.receive(worker.send(HELLO, now=0), now=0)
    worker.receive(master.send(WELCOME, now=1), now=1)
    assert master.poll(10.5).startswith(h("01 09"))  # master is done: heartbeat only
    data = worker.poll(10.0)
    assert decode_one(data)["code"] == 15 and worker.error.rule == "WF-8.3-1"


def test_heartbeat_and_idle_timeout() -> None:
    _master, worker = ready_pair()
    assert worker.poll(4.9) == b""
    assert worker.poll(5.0) == A14_HEARTBEAT
    assert worker.poll(9.0) == b""
    assert worker.poll(10.0) == A14_HEARTBEAT
    assert worker.next_deadline() == 15.0
    worker.receive(A14_HEARTBEAT, now=20.0)
    assert worker.data_to_send() == A14_HEARTBEAT  # due at 15, sent when time reached 20
    assert worker.poll(49.9) == A14_HEARTBEAT
    data = worker.poll(50.0)
    assert decode_one(data)["code"] == 15 and worker.error.rule == "WF-8.3-3"


def test_close_timeout_despite_trickling_bytes() -> None:
    master, _worker = ready_pair()
    master.close(now=0.0)
    # One byte a second of a frame that never completes.  Its length, 65,536, is within the session
    # frame limit (WF-10-5; before it, this test trickled a header declaring 0x09090909 bytes, which
    # the session limit now refuses on the header).
    trickle = h("01 09 00 00 00 01 00") + b"\x09" * 2
    for t in range(1, 10):
        master.receive(trickle[t - 1 : t], now=float(t))
    assert master.state == "CLOSING" and master.error is None
    assert master.poll(10.0) == b""
    assert master.state == "CLOSED" and master.timed_out


def test_timer_validation() -> None:
    with pytest.raises(ValueError):
        Timers(heartbeat_interval=30.0, idle_timeout=30.0)


def test_section_8_2_order_wins_over_section_7_grouping() -> None:
    """7.5-3 / 7.7-7 list UNEXPECTED_MESSAGE first; 8.2-4 / 8.2-6 put the epoch check earlier."""
    master, worker = ready_pair()
    transfer(master, worker, snapshot(0))
    transfer(worker, master, snapshot_gradient(0))
    transfer(master, worker, model(0, 1))
    transfer(master, worker, snapshot(1))  # phase open and a MODEL outstanding
    master.receive(wire.encode_message(snapshot_gradient(7)))
    assert_failed(master, "UNKNOWN_EPOCH", "WF-8.2-4")
    master, worker = ready_pair()
    transfer(master, worker, snapshot(0))
    transfer(worker, master, snapshot_gradient(0))
    transfer(master, worker, model(0, 1))
    worker.receive(wire.encode_message(model(3, 1)))  # outstanding and wrong epoch
    assert_failed(worker, "UNKNOWN_EPOCH", "WF-8.2-6")


def test_second_hello_with_bad_body_fails_on_the_body() -> None:
    """The handshake ordering is checked after the body (WF-7-1 step 8, amended)."""
    master = Master()
    master.receive(A1 + frame(0x01, mp({**HELLO_MAP, "magic": "nope"})))
    assert_failed(master, "INVALID_CONFIG", "WF-7.1-5")


# =============================================================================================
# The amended specification: one block per amended or new requirement
# =============================================================================================

CLOSE_BYE = {"type": "CLOSE", "code": 0, "reason": "bye"}
CLOSE_ANSWER = {"type": "CLOSE", "code": 0, "reason": ""}


def welcome_frame(version: int = 1, encodings: list[int] | None = None) -> bytes:
    return frame(0x02, mp({"version": version, "worker_id": 0, "encodings": encodings or []}))


def test_abstract_nine_encodings() -> None:
    """Abstract (amended): nine vector encodings, descriptors 0..8."""
    assert sorted(wire.ENCODINGS.values()) == list(range(9))


# ----------------------------------------------------------------------------- WF-3-5, 7.11-4, 8.4-5


def test_bytes_after_received_close_never_fail_the_endpoint() -> None:
    # CLOSE, then 3 bytes of a header in the same read, then the end of the stream.
    master = Master()
    assert master.receive(A14_CLOSE + h("01 08 00")) == [CLOSE_BYE]
    assert master.data_to_send() == A14_CLOSE_ANSWER
    assert master.eof() == []
    assert master.state == "CLOSED" and master.error is None and master.data_to_send() == b""
    assert not master.end_of_stream  # CLOSED processes no input, the end of stream included
    # Whole invalid frames and a partial one, over several reads, after the CLOSE.
    _master, worker = ready_pair()
    assert worker.receive(A14_CLOSE + frame(0xEE, b"") + frame(0x09, b"x")) == [CLOSE_BYE]
    assert worker.data_to_send() == A14_CLOSE_ANSWER
    assert worker.receive(frame(0x0F, b"") + b"\x01\x08") == []
    worker.eof()
    assert worker.error is None and worker.data_to_send() == b""


def test_bytes_after_close_in_closing_are_ignored() -> None:
    master, worker = ready_pair()
    worker.receive(master.close())
    answer = worker.data_to_send()
    assert master.receive(answer + h("01 0b 00 02 00")) == [CLOSE_ANSWER]
    master.eof()
    assert master.state == "CLOSED" and master.error is None and master.data_to_send() == b""


def test_decoder_stop_at_close_option() -> None:
    assert wire.decode_stream(A14_CLOSE + h("01 08"), stop_at_close=True) == [CLOSE_BYE]
    assert wire.decode_stream(A14_CLOSE + frame(0xEE, b""), stop_at_close=True) == [CLOSE_BYE]
    # Default: the stand-alone decoder has no state (A.15: steps 1, 2, 6, 7) and goes on.
    fails(A14_CLOSE + h("01 08"), "MALFORMED_FRAME", "WF-3-5")
    fails(A14_CLOSE + frame(0xEE, b""), "UNKNOWN_MESSAGE_TYPE")
    decoder = wire.StreamDecoder(ctx(), stop_at_close=True)
    assert decoder.feed(A14_HEARTBEAT + A14_CLOSE[:4]) == [{"type": "HEARTBEAT"}]
    assert decoder.feed(A14_CLOSE[4:] + b"\xff") == [CLOSE_BYE]
    assert decoder.closed and decoder.feed(b"\x00" * 20) == []
    decoder.end()


# ----------------------------------------------------------------------------- WF-5.8-4, b = 1


@pytest.mark.parametrize("d", [1, 7, 8, 9, 64, 100])
def test_dense_rice_never_used_with_one_bit_codes(d: int) -> None:
    codes = [-1 if i % 3 == 0 else 0 for i in range(d)]  # one-bit codes are -1 and 0
    with pytest.raises(WireError) as info:
        wire.encode_vector({"encoding": "DENSE_RICE", "dim": d, "bits": 1, "scale": 1.0, "codes": codes})
    assert info.value.local and info.value.code == "PROTOCOL_ERROR" and info.value.rule == "WF-5.8-4"
    assert wire.make_dense_vector(1, 1.0, codes, rice=True)["encoding"] == "DENSE"
    # The reason given by 5.8-4: k* = 0 (k < b = 1) and R(0) >= 1 + ceil(d/8) > ceil(d*1/8).
    zigzag = [1 if c else 0 for c in codes]
    assert wire.rice_block_sizes(zigzag, d, 0)[0] >= 1 + (d + 7) // 8


def test_dense_rice_one_bit_is_rejected_in_the_order_of_5_8_5() -> None:
    d8 = h("80 08")  # DENSE_RICE, bits - 1 = 0, d = 8
    fails(gradient(d8 + SCALE_025), "MALFORMED_FRAME", "WF-5.8-5")  # step 2: k byte missing
    fails(gradient(d8 + SCALE_025 + h("01 ff")), "INVALID_PAYLOAD", "WF-5.8-5")  # step 3: k >= b
    fails(gradient(d8 + SCALE_025 + h("00 ff")), "INVALID_PAYLOAD", "WF-5.8-5")  # step 5: 2 >= 1
    fails(gradient(d8 + SCALE_025 + h("00")), "INVALID_PAYLOAD", "WF-5.8-5")  # step 5: 1 >= 1
    # d = 100: ceil(100/8) = 13; 11 unary bytes pass step 5 (12 < 13) but hold 88 one bits (step 6).
    fails(gradient(h("80 64") + SCALE_025 + b"\x00" + b"\xff" * 11), "INVALID_PAYLOAD", "WF-5.8-5")
    # The same one-bit value as DENSE is valid: code -1 is bit 1.
    vec = decode_one(gradient(h("40 08") + SCALE_025 + h("01")))["vector"]
    assert vec == {"encoding": "DENSE", "dim": 8, "bits": 1, "scale": 0.25, "codes": [-1] + [0] * 7}


# ----------------------------------------------------------------------------- WF-7-1, 7.14-2


def test_welcome_secret_check_comes_first() -> None:
    """7.14-2 (amended): once the WELCOME body has decoded, AUTH_FAILED comes before 7.2-4 and 6.1-6."""
    worker = Worker(secret=SECRET)  # never sent HELLO
    worker.receive(welcome_frame())
    assert_failed(worker, "AUTH_FAILED", "WF-7.14-2")
    worker = Worker(secret=SECRET, versions=[1, 2])
    worker.send(HELLO)  # offers 1..1
    worker.receive(welcome_frame(version=2))
    assert_failed(worker, "AUTH_FAILED", "WF-7.14-2")
    master, worker = auth_pair()  # AUTH_CHALLENGE answered, AUTH_CONFIRM not yet received
    master.receive(worker.send(HELLO))
    worker.receive(master.data_to_send())
    assert wire.decode_stream(worker.data_to_send())[0]["type"] == "AUTH_RESPONSE"
    worker.receive(welcome_frame())
    assert_failed(worker, "AUTH_FAILED", "WF-7.14-2")
    # The body is step 7, before any of them.
    worker = Worker(secret=SECRET)
    worker.receive(welcome_frame(version=0))
    assert_failed(worker, "INVALID_CONFIG", "WF-7.2-5")
    # Without a secret: 7.2-4 (no HELLO) before 6.1-6 (the version).
    worker = Worker()
    worker.receive(welcome_frame(version=2))
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-7.2-4")
    # After a valid AUTH_CONFIRM, the version check applies.
    master, worker = auth_pair()
    master.receive(worker.send(HELLO))
    worker.receive(master.data_to_send())
    master.receive(worker.data_to_send())
    worker.receive(master.data_to_send())
    worker.receive(welcome_frame(version=2))
    assert_failed(worker, "UNSUPPORTED_VERSION", "WF-6.1-6")


def test_handshake_order_is_a_step_8_check() -> None:
    """7-1 step 8 (amended): the handshake order is checked once the body has decoded."""
    # Second HELLO: 7.1-4 before 7.1-7 (the subsection's order).
    master = Master(versions=[1])
    master.receive(A1 + frame(0x01, mp({**HELLO_MAP, "min_version": 2, "max_version": 3})))
    assert_failed(master, "UNEXPECTED_MESSAGE", "WF-7.1-4")
    # AUTH_CHALLENGE before HELLO: length, then the missing secret, then the order (7.12-3).
    worker = Worker(secret=SECRET)
    worker.receive(frame(0x0C, bytes(32)))
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-7.12-3")
    worker = Worker()
    worker.receive(frame(0x0C, bytes(32)))
    assert_failed(worker, "AUTH_FAILED", "WF-7.12-3")
    worker = Worker()
    worker.receive(frame(0x0C, bytes(33)))
    assert_failed(worker, "MALFORMED_FRAME", "WF-7.12-3")
    # AUTH_CONFIRM that answers no AUTH_RESPONSE, with a bad length: the length first (7.14-1).
    worker = Worker(secret=SECRET)
    worker.send(HELLO)
    worker.receive(frame(0x0E, bytes(31)))
    assert_failed(worker, "MALFORMED_FRAME", "WF-7.14-1")
    # AUTH_RESPONSE without a challenge: 65 bytes is MALFORMED_FRAME, 64 bytes UNEXPECTED_MESSAGE.
    master = Master(secret=SECRET)
    master.receive(frame(0x0D, bytes(65)))
    assert_failed(master, "MALFORMED_FRAME", "WF-7.13-2")
    master = Master(secret=SECRET)
    master.receive(frame(0x0D, bytes(64)))
    assert_failed(master, "UNEXPECTED_MESSAGE", "WF-7.13-2")


def test_steps_2_to_9_wait_for_the_whole_frame() -> None:
    """7-1 (amended): an unknown type whose body is cut by the end of the stream is 3-5."""
    worker = Worker()
    assert worker.receive(h("01 ee 00 03 00 00 00 01")) == []
    assert worker.state == "HANDSHAKE" and worker.error is None
    worker.eof()
    assert_failed(worker, "MALFORMED_FRAME", "WF-3-5")
    # Same for a wrong header version and a wrong state.
    master = Master()
    master.receive(h("07 08 00 02 00 00 00 01"))
    assert master.error is None
    master.eof()
    assert_failed(master, "MALFORMED_FRAME", "WF-3-5")


# ----------------------------------------------------------------------------- section 1


def test_heartbeat_and_error_once_welcome_exchanged() -> None:
    master, worker = Master(), Worker()
    with pytest.raises(WireError) as info:
        worker.send({"type": "HEARTBEAT"})  # HANDSHAKE
    assert info.value.local and info.value.code == "UNEXPECTED_MESSAGE"
    master.receive(worker.send(HELLO))
    worker.receive(master.send(WELCOME))
    assert worker.state == master.state == "CONFIGURING"
    err = {"type": "ERROR", "code": 16, "epoch": 0, "version": 0, "reason": ""}
    assert worker.receive(master.send({"type": "HEARTBEAT"}) + master.send(err)) == [
        {"type": "HEARTBEAT"},
        err,
    ]
    assert master.receive(worker.send({"type": "HEARTBEAT"})) == [{"type": "HEARTBEAT"}]
    master = Master()
    master.receive(A1 + A14_HEARTBEAT)
    assert_failed(master, "UNEXPECTED_MESSAGE", "WF-8.1-1")


# ----------------------------------------------------------------------------- WF-8.1-2, CLOSING


def test_welcome_config_and_snapshot_crossing_a_close_sent_in_handshake() -> None:
    master, worker = Master(), Worker()
    hello = worker.send(HELLO)
    worker_close = worker.close(19, "bye")
    assert worker.state == "CLOSING" and worker.session_state == "HANDSHAKE"
    master.receive(hello)
    crossing = master.send(WELCOME) + master.send(CONFIG) + master.send(snapshot(0))
    assert worker.receive(crossing) == [WELCOME, CONFIG, snapshot(0)]
    assert worker.state == "CLOSING" and worker.session_state == "READY"
    assert worker.negotiated_version == 1 and worker.dimension == 2 and worker.snapshot == RAW2
    assert worker.data_to_send() == b""  # nothing is sent in CLOSING, no HEARTBEAT either
    master.receive(worker_close)
    assert master.data_to_send() == A14_CLOSE_ANSWER
    assert worker.receive(A14_CLOSE_ANSWER) == [CLOSE_ANSWER]
    assert worker.state == "CLOSED" and worker.error is None and worker.data_to_send() == b""


def test_closing_checks_stay_complete() -> None:
    """In CLOSING each frame is still checked in full, against the advanced state; failures are
    silent (no CLOSE: one was sent already)."""
    master, worker = Master(), Worker()
    hello = worker.send(HELLO)
    worker.close()
    master.receive(hello)
    welcome = master.send(WELCOME)
    worker.receive(welcome)
    assert worker.session_state == "CONFIGURING"
    worker.receive(welcome)  # a second WELCOME: not allowed in CONFIGURING
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-8.1-1", close_sent=False)

    master, worker = Master(), Worker()
    master.receive(worker.send(HELLO))
    worker.receive(master.send(WELCOME))
    worker.close()
    config = master.send(CONFIG)
    worker.receive(config + config)  # a second CONFIG: not allowed in READY
    assert_failed(worker, "UNEXPECTED_MESSAGE", "WF-8.1-1", close_sent=False)

    master, worker = Master(), Worker()
    master.receive(worker.send(HELLO))
    worker.receive(master.send(WELCOME))
    worker.close()
    worker.receive(master.send(CONFIG))
    raw3 = {"encoding": "RAW_F32", "dim": 3, "values": [1.0, 2.0, 3.0]}
    worker.receive(wire.encode_message({"type": "SNAPSHOT", "epoch": 0, "vector": raw3}))
    assert_failed(worker, "WRONG_DIMENSION", "WF-5.2-4", close_sent=False)  # 5.2-4 in CLOSING too

    # The master's own transitions come from its sends: closed in CONFIGURING, it stays there.
    master, worker = Master(), Worker()
    master.receive(worker.send(HELLO))
    worker.receive(master.send(WELCOME))
    master.close()
    assert master.session_state == "CONFIGURING"
    assert master.receive(worker.send({"type": "HEARTBEAT"})) == [{"type": "HEARTBEAT"}]
    master.receive(wire.encode_message(grad(0, 0)))
    assert_failed(master, "UNEXPECTED_MESSAGE", "WF-8.1-1", close_sent=False)


def test_no_automatic_answers_in_closing() -> None:
    # A master with a secret: a HELLO crossing its CLOSE gets no AUTH_CHALLENGE and is held.
    master, worker = auth_pair()
    master.close()
    assert master.receive(worker.send(HELLO)) == []
    assert master.data_to_send() == b"" and master.state == "CLOSING" and master.error is None
    # A worker with a secret: an AUTH_CHALLENGE crossing its CLOSE gets no AUTH_RESPONSE.
    master, worker = auth_pair()
    master.receive(worker.send(HELLO))
    challenge = master.data_to_send()
    worker.close()
    assert worker.receive(challenge) == [] and worker.data_to_send() == b""
    assert worker.state == "CLOSING" and worker.error is None
    # A master with a secret: a valid AUTH_RESPONSE crossing its CLOSE gets no AUTH_CONFIRM.
    master, worker = auth_pair()
    master.receive(worker.send(HELLO))
    worker.receive(master.data_to_send())
    master.close()
    assert master.receive(worker.data_to_send()) == [HELLO]  # verified (NOTES.md, N8)
    assert master.data_to_send() == b"" and master.error is None
    # No HEARTBEAT, even with the checked state READY.
    master, worker = ready_pair()
    master.close(now=0.0)
    assert master.poll(6.0) == b"" and master.state == "CLOSING"
    # No answer to the peer's CLOSE.
    assert master.receive(wire.encode_message(CLOSE_ANSWER), now=6.5) == [CLOSE_ANSWER]
    assert master.data_to_send() == b"" and master.state == "CLOSED"


def test_auth_confirm_and_welcome_crossing_the_workers_close() -> None:
    master, worker = auth_pair()
    master.receive(worker.send(HELLO))
    worker.receive(master.data_to_send())
    assert master.receive(worker.data_to_send()) == [HELLO]
    worker.close()
    crossing = master.data_to_send() + master.send(WELCOME)  # AUTH_CONFIRM, then WELCOME
    assert worker.receive(crossing) == [WELCOME]
    assert worker.session_state == "CONFIGURING" and worker.error is None
    # Without the confirmation, the crossing WELCOME fails with AUTH_FAILED (silently).
    master, worker = auth_pair()
    master.receive(worker.send(HELLO))
    challenge = master.data_to_send()
    worker.close()
    worker.receive(challenge + welcome_frame())
    assert_failed(worker, "AUTH_FAILED", "WF-7.14-2", close_sent=False)


def test_closing_ends_at_idle_or_close_timeout() -> None:
    """8.4-4 (amended): CLOSING reads until the peer's CLOSE, the end of the stream, the idle
    timeout or the close timeout; the handshake timer does not end it."""
    timers = Timers(handshake_timeout=20.0, heartbeat_interval=1.0, idle_timeout=5.0)
    master, _worker = ready_pair(master={"timers": timers}, worker={"timers": timers})
    master.close(now=1.0)
    assert master.next_deadline() == 5.0  # idle: last bytes received at 0
    assert master.poll(4.9) == b"" and master.state == "CLOSING"
    assert master.poll(5.0) == b"" and master.state == "CLOSED" and master.timed_out
    # A worker that closed in HANDSHAKE: the close timeout (10 after its CLOSE), not the
    # handshake timeout (10 after the start), ends CLOSING.
    worker = Worker(now=0.0)
    worker.send(HELLO, now=0.0)
    worker.close(now=4.0)
    assert worker.poll(10.0) == b"" and worker.state == "CLOSING"
    assert worker.poll(14.0) == b"" and worker.state == "CLOSED"


# ----------------------------------------------------------------------------- WF-8.4-6


def test_report_of_a_clean_close() -> None:
    master, worker = ready_pair()
    assert master.report is None and worker.report is None
    data = master.close(19, "shutting down")
    assert master.report is None  # CLOSING: the session has not ended
    worker.receive(data)
    assert worker.report == SessionReport(True, 19)
    master.receive(worker.data_to_send())
    assert master.report == SessionReport(True, 19) and master.report.code_name == "GOING_AWAY"
    # Crossing CLOSEs: each reports the first CLOSE it sent or received.
    master, worker = ready_pair()
    from_master, from_worker = master.close(0), worker.close(19)
    master.receive(from_worker)
    worker.receive(from_master)
    assert master.report == (True, 0) and worker.report == (True, 19)
    assert master.report.code_name == "NO_ERROR"


def test_report_of_a_failure() -> None:
    master, worker = ready_pair()
    worker.receive(frame(0x09, b"x"))
    assert worker.report == (False, 5)  # sent CLOSE(MALFORMED_FRAME), never reads the answer
    master.receive(worker.data_to_send())
    assert master.report == (True, 5)  # received CLOSE(5), answered it: both have sent CLOSE
    # A failure in CLOSING: the CLOSE it had sent decides the code.
    master, _worker = ready_pair()
    master.close(19)
    master.receive(wire.encode_message(grad(0, 0)))
    assert master.error.code == "UNEXPECTED_MESSAGE" and master.report == (False, 19)
    # An unregistered code is reported as it is.
    master = Master()
    master.receive(frame(0x0B, h("2c 01")))
    assert master.report == (True, 300) and master.report.code_name is None


def test_report_of_timers_and_end_of_stream() -> None:
    worker = Worker()
    worker.poll(10.0)  # handshake timeout
    assert worker.report == (False, 15) and worker.report.code_name == "TIMEOUT"
    _master, worker = ready_pair()
    worker.poll(30.0)  # idle timeout
    assert worker.report == (False, 15)
    master, _worker = ready_pair()
    master.close(now=0.0)
    master.poll(10.0)  # close timeout: the CLOSE sent earlier gives the code
    assert master.report == (False, 0)
    _master, worker = ready_pair()
    worker.eof()
    assert worker.report == (False, None)  # the stream ended without any CLOSE
    _master, worker = ready_pair()
    worker.receive(b"\x01")
    worker.eof()
    assert worker.report == (False, 5)
    master, _worker = ready_pair()
    master.close(19)
    master.eof()
    assert master.report == (False, 19)


# ----------------------------------------------------------------------------- WF-10-3


def test_handshake_frame_limit_value() -> None:
    assert wire.handshake_frame_limit(ReceiveContext()) == 65536
    assert wire.handshake_frame_limit(ReceiveContext(max_control_bytes=100, max_reason_bytes=200)) == 220
    assert wire.handshake_frame_limit(ReceiveContext(max_reason_bytes=70000)) == 70020
    assert wire.handshake_frame_limit(ReceiveContext(max_frame_bytes=100, max_control_bytes=4096)) == 100
    assert ReceiveContext().frame_limit() == 2**28
    assert ReceiveContext(before_handshake=True).frame_limit() == 65536


def test_handshake_frame_limit_at_the_master() -> None:
    master = Master()
    assert master.receive(h("01 01 00 00 00 01 00")) == []  # 65536: waits for the body
    assert master.error is None
    master = Master()
    master.receive(h("01 01 00 01 00 01 00"))  # 65537: fails on the header alone
    assert_failed(master, "FRAME_TOO_LARGE", "WF-10-3")
    master = Master(limits=ReceiveContext(max_control_bytes=100, max_reason_bytes=200))
    assert master.receive(h("01 0b 00 dc 00 00 00")) == []  # 220
    master = Master(limits=ReceiveContext(max_control_bytes=100, max_reason_bytes=200))
    master.receive(h("01 0b 00 dd 00 00 00"))  # 221
    assert_failed(master, "FRAME_TOO_LARGE", "WF-10-3")
    master = Master(limits=ReceiveContext(max_frame_bytes=100))
    master.receive(h("01 0b 00 65 00 00 00"))  # 101 > max_frame_bytes itself
    assert_failed(master, "FRAME_TOO_LARGE", "WF-3-3")
    # A master with a secret that verified the worker but has not sent WELCOME: still limited.
    master, worker = auth_pair()
    master.receive(worker.send(HELLO))
    worker.receive(master.data_to_send())
    master.receive(worker.data_to_send())
    assert wire.decode_stream(master.data_to_send())[0]["type"] == "AUTH_CONFIRM"
    master.receive(h("01 09 00 01 00 01 00"))
    assert_failed(master, "FRAME_TOO_LARGE", "WF-10-3")
    # Once it has sent WELCOME, max_frame_bytes applies.
    master, worker = Master(), Worker()
    master.receive(worker.send(HELLO))
    master.send(WELCOME)
    assert master.receive(h("01 09 00 01 00 01 00")) == [] and master.error is None
    # A master that closed before its WELCOME never completes its handshake.
    master = Master()
    master.receive(A1)
    master.close()
    master.receive(h("01 0b 00 01 00 01 00"))
    assert_failed(master, "FRAME_TOO_LARGE", "WF-10-3", close_sent=False)


def test_handshake_frame_limit_at_the_worker() -> None:
    master, worker = Master(), Worker()
    master.receive(worker.send(HELLO))
    worker.receive(master.send(WELCOME))
    worker.receive(h("01 09 00 01 00 01 00"))  # CONFIGURING: the handshake is not complete yet
    assert_failed(worker, "FRAME_TOO_LARGE", "WF-10-3")
    # After CONFIG, a SNAPSHOT of 72004 body bytes (RAW_F64, d = 9000) is accepted.
    raw = {"encoding": "RAW_F64", "dim": 9000, "values": [0.5] * 9000}
    for closing in (False, True):
        master, worker = Master(), Worker()
        master.receive(worker.send(HELLO))
        worker.receive(master.send(WELCOME))
        if closing:
            worker.close()  # a crossing CONFIG completes the handshake too
        worker.receive(master.send({**CONFIG, "dim": 9000}))
        data = master.send({"type": "SNAPSHOT", "epoch": 0, "vector": raw})
        assert len(data) - 7 == 1 + 1 + 2 + 8 * 9000 > 65536
        assert worker.receive(data)[0]["vector"] == raw
        assert worker.error is None


def test_oversized_control_body_before_the_handshake() -> None:
    """With max_reason_bytes = 0 the handshake limit is max_control_bytes: an oversized HELLO fails
    on its header (10-3) in a connection; the stand-alone decoder reports 7-5."""
    limits = {"max_control_bytes": 64, "max_reason_bytes": 0}
    data = control(0x01, mp({**HELLO_MAP, "name": "x" * 100}))
    assert len(data) - 7 > 64
    master = Master(limits=ReceiveContext(**limits))
    master.receive(data[:7])
    assert_failed(master, "FRAME_TOO_LARGE", "WF-10-3")
    fails(data, "LIMIT_EXCEEDED", "WF-7-5", **limits)
    fails(data, "FRAME_TOO_LARGE", "WF-10-3", before_handshake=True, **limits)


# ----------------------------------------------------------------------------- WF-7-6, ext


@pytest.mark.parametrize(
    "ext",
    ["c7 00 01", "c8 00 00 01", "c9 00 00 00 00 01", "c7 00 ff"],
    ids=["ext8", "ext16", "ext32", "ext8 type -1"],
)
@pytest.mark.parametrize("msg_type", [0x01, 0x02, 0x03])
def test_zero_length_ext_is_malformed(ext: str, msg_type: int) -> None:
    fails(control(msg_type, h(ext)), "MALFORMED_FRAME", "WF-7-6")  # top level
    fails(control(msg_type, h("81 a1 61") + h(ext)), "MALFORMED_FRAME", "WF-7-6")
    # Anywhere in the body: inside the value of a key the receiver would ignore.
    body = bytearray(mp(HELLO_MAP))
    body[0] += 1
    body += mp("x") + h("91") + h(ext)
    fails(control(msg_type, bytes(body)), "MALFORMED_FRAME", "WF-7-6")
    # Inside CONFIG's params.
    body = bytearray(mp({"dim": 5, "algorithm": "a", "params": {}}))
    body[-1] = 0x81
    body += mp("p") + h(ext)
    fails(control(msg_type, bytes(body)), "MALFORMED_FRAME", "WF-7-6")


# ----------------------------------------------------------------------------- WF-7-8


def test_top_level_bin_keys_are_ignored() -> None:
    # A bin key that spells "name" neither overrides the str key ...
    body = bytearray(mp(HELLO_MAP))
    body[0] += 1
    body += h("c4 04 6e 61 6d 65") + mp("from bin")
    assert decode_one(control(0x01, bytes(body)))["name"] == ""
    # ... nor supplies a missing one.
    without_name = {k: v for k, v in HELLO_MAP.items() if k != "name"}
    body = bytearray(mp(without_name))
    body[0] += 1
    body += h("c4 04 6e 61 6d 65") + mp("w")
    fails(control(0x01, bytes(body)), "INVALID_CONFIG", "WF-7.1-6")
    # WELCOME and CONFIG: bin keys placed last are ignored, whatever their value.
    body = bytearray(mp({"version": 1, "worker_id": 4, "encodings": [0]}))
    body[0] += 1
    body += h("c4 07 76 65 72 73 69 6f 6e") + mp(0)
    assert decode_one(control(0x02, bytes(body)))["version"] == 1
    body = bytearray(mp({"dim": 5, "algorithm": "a", "params": {}}))
    body[0] += 1
    body += h("c4 03 64 69 6d") + h("81 c4 01 61 01")  # a nested bin key inside an ignored value
    assert decode_one(control(0x03, bytes(body)))["dim"] == 5


def test_params_keys_must_be_str() -> None:
    base = mp({"dim": 5, "algorithm": "a", "params": {}})
    # A bin key fails even if a str occurrence of the same name comes later (7-8, 7.3-5).
    body = bytearray(base)
    body[-1] = 0x82
    body += h("c4 01 61") + mp(1) + mp("a") + mp(2)
    fails(control(0x03, bytes(body)), "INVALID_CONFIG", "WF-7.3-5")
    # Key types that are neither str nor bin fail the msgpack parse (7-6) first.
    for key in ("01", "c0", "c3", "90", "cb 3f f0 00 00 00 00 00 00"):
        body = bytearray(base)
        body[-1] = 0x81
        body += h(key) + mp(1)
        fails(control(0x03, bytes(body)), "MALFORMED_FRAME", "WF-7-6")


# ----------------------------------------------------------------------------- WF-7-10


def test_unsorted_and_repeated_encodings_are_a_set() -> None:
    hello = decode_one(control(0x01, mp({**HELLO_MAP, "encodings": [8, 3, 0, 3, 15, 8]})))
    assert hello["encodings"] == [0, 3, 8, 15]
    welcome = decode_one(welcome_frame(encodings=[4, 4, 0, 1]))
    assert welcome["encodings"] == [0, 1, 4]
    # In a connection the master records the set and sends only what it holds (6.2-2).
    master = Master()
    got = master.receive(control(0x01, mp({**HELLO_MAP, "encodings": [1, 0, 1, 9, 0]})))
    assert got[0]["encodings"] == [0, 1, 9] and master.peer_encodings == {0, 1, 9}
    master.send(WELCOME)
    master.send(CONFIG)
    master.send(snapshot(0))
    master.receive(wire.encode_message(snapshot_gradient(0)))
    with pytest.raises(WireError) as info:
        master.send(model(0, 1, DENSE2))
    assert info.value.code == "UNSUPPORTED_ENCODING" and info.value.rule == "WF-6.2-2"
    assert master.send(model(0, 1, RAW2))
    worker = Worker()
    worker.send(HELLO)
    worker.receive(welcome_frame(encodings=[4, 4, 0, 1]))
    assert worker.peer_encodings == {0, 1, 4} and worker.state == "CONFIGURING"


# ----------------------------------------------------------------------------- WF-10-4, reasons


def test_failure_reasons_stay_within_1024_bytes() -> None:
    err = WireError("MALFORMED_FRAME", "WF-3-5", "é" * 1000)
    reason = _failure_reason(err, 4096)
    # "WF-3-5: " is 8 bytes; each "é" 2: (1024 - 8) / 2 = 508 characters fit.
    assert reason == "WF-3-5: " + "é" * 508
    assert _failure_reason(err, 10) == "WF-3-5: é"
    worker = Worker(limits=ReceiveContext(max_reason_bytes=4096))
    worker.receive(frame(0x0F, b""))
    close = decode_one(worker.data_to_send(), max_reason_bytes=4096)
    assert close["code"] == 4 and len(close["reason"].encode()) <= 1024


# =============================================================================================
# The amended specification, third session: WF-7.1-9 (shard), codes 21/22 (WF-9-1), WF-10-5
# =============================================================================================

# HELLO claiming shard 2 of 4, written byte by byte from the msgpack rules of 7-4 (shortest forms,
# keys in table order, `shard` last, 7.1-2):
HELLO_SHARD_2_OF_4 = h(
    "01 01 00 45 00 00 00"  # header: version 1, HELLO, flags 0, body length 69
    " 86"  # fixmap, 6 entries
    " a5 6d 61 67 69 63  a5 61 69 6f 64 71"  # "magic": "aiodq"
    " ab 6d 69 6e 5f 76 65 72 73 69 6f 6e  01"  # "min_version": 1
    " ab 6d 61 78 5f 76 65 72 73 69 6f 6e  01"  # "max_version": 1
    " a9 65 6e 63 6f 64 69 6e 67 73  92 00 01"  # "encodings": fixarray [0, 1]
    " a4 6e 61 6d 65  a2 77 32"  # "name": "w2"
    " a5 73 68 61 72 64  92 02 04"  # "shard": fixarray [2, 4] (positive fixints)
)
HELLO_SHARD_MESSAGE = {
    "type": "HELLO",
    "min_version": 1,
    "max_version": 1,
    "encodings": [0, 1],
    "name": "w2",
    "shard": [2, 4],
}
# The body up to and including "name": "w2", as a fixmap of 5, to append other sixth entries to.
HELLO_W2_5_KEYS = h(
    "85 a5 6d 61 67 69 63 a5 61 69 6f 64 71 ab 6d 69 6e 5f 76 65 72 73 69 6f 6e 01"
    " ab 6d 61 78 5f 76 65 72 73 69 6f 6e 01 a9 65 6e 63 6f 64 69 6e 67 73 92 00 01"
    " a4 6e 61 6d 65 a2 77 32"
)
SHARD_KEY = h("a5 73 68 61 72 64")  # "shard"


def hello_with(extra: bytes, entries: int = 1) -> bytes:
    """A HELLO frame: the five keys of HELLO_W2_5_KEYS, then ``entries`` more map entries."""
    body = bytearray(HELLO_W2_5_KEYS)
    body[0] += entries
    return control(0x01, bytes(body) + extra)


def test_error_codes_21_and_22() -> None:
    """Section 9 (amended): 21 SHARD_TAKEN and 22 WORLD_SIZE_MISMATCH.  (Code 23 and the
    unassigned range of WF-9-1, amended again in the fourth session: test_error_code_23_try_later.)"""
    assert wire.ERROR_CODES["SHARD_TAKEN"] == 21 and wire.ERROR_CODES["WORLD_SIZE_MISMATCH"] == 22
    assert wire.CODE_NAMES[21] == "SHARD_TAKEN" and wire.CODE_NAMES[22] == "WORLD_SIZE_MISMATCH"
    assert WireError("SHARD_TAKEN", "WF-7.1-9").value == 21
    # CLOSE and ERROR carrying them, and unassigned 24 / 65535, decode alike (WF-9-1, 7.10-4).
    assert decode_one(h("01 0b 00 02 00 00 00 15 00")) == {"type": "CLOSE", "code": 21, "reason": ""}
    assert decode_one(h("01 0b 00 04 00 00 00 16 00 34 2f")) == {"type": "CLOSE", "code": 22, "reason": "4/"}
    assert decode_one(h("01 0b 00 02 00 00 00 18 00"))["code"] == 24
    assert decode_one(h("01 0a 00 04 00 00 00 ff ff 00 00"))["code"] == 65535
    assert SessionReport(False, 21).code_name == "SHARD_TAKEN"
    assert SessionReport(False, 24).code_name is None


def test_hello_shard_by_hand() -> None:
    """WF-7.1-2, 7.1-9: `shard` is the sixth key, after `name`; decode and encode byte for byte."""
    assert decode_one(HELLO_SHARD_2_OF_4) == HELLO_SHARD_MESSAGE
    assert wire.encode_message(HELLO_SHARD_MESSAGE) == HELLO_SHARD_2_OF_4
    assert wire.encode_message({**HELLO_SHARD_MESSAGE, "shard": (2, 4)}) == HELLO_SHARD_2_OF_4
    # No claim: the key is absent on the wire and in the plain data; None means no claim too.
    without = {k: v for k, v in HELLO_SHARD_MESSAGE.items() if k != "shard"}
    five = control(0x01, HELLO_W2_5_KEYS)
    assert wire.encode_message(without) == five == wire.encode_message({**without, "shard": None})
    assert "shard" not in decode_one(five)
    assert decode_one(A1).keys() == {"type", "min_version", "max_version", "encodings", "name"}


@pytest.mark.parametrize(
    "shard,encoded",
    [
        ([0, 1], "92 00 01"),
        ([127, 128], "92 7f cc 80"),
        ([255, 256], "92 cc ff cd 01 00"),
        ([65535, 65536], "92 cd ff ff ce 00 01 00 00"),
        ([2**31 - 2, 2**31 - 1], "92 ce 7f ff ff fe ce 7f ff ff ff"),  # the largest claim
    ],
)
def test_hello_shard_int_formats(shard: list[int], encoded: str) -> None:
    """7-4: shortest msgpack ints (fixint, cc, cd, ce; big-endian); 2^31 - 1 needs uint32."""
    data = hello_with(SHARD_KEY + h(encoded))
    assert wire.encode_message({**HELLO_SHARD_MESSAGE, "shard": shard}) == data
    assert decode_one(data)["shard"] == shard


@pytest.mark.parametrize(
    "value,why",
    [
        ("92 04 04", "index = count"),
        ("92 05 04", "index > count"),
        ("92 00 00", "count 0"),
        ("92 ff 04", "index -1 (negative fixint)"),
        ("92 d0 80 04", "index -128 (int8)"),
        ("92 00 ce 80 00 00 00", "count 2^31"),
        ("92 00 cf ff ff ff ff ff ff ff ff", "count 2^64 - 1"),
        ("92 00 ff", "count -1"),
        ("91 01", "one entry"),
        ("93 01 04 00", "three entries"),
        ("90", "empty array"),
        ("03", "an int, not an array"),
        ("c0", "nil"),
        ("80", "a map"),
        ("82 a1 30 01 a1 31 04", "a map {'0': 1, '1': 4}"),
        ("a3 31 2f 34", "a str"),
        ("c4 02 01 04", "a bin"),
        ("92 cb 3f f0 00 00 00 00 00 00 04", "a float64 index"),
        ("92 01 ca 40 80 00 00", "a float32 count"),
        ("92 c3 04", "a bool index"),
        ("92 01 c3", "a bool count"),
        ("92 a1 31 a1 34", "str entries"),
        ("92 92 00 01 04", "a nested array"),
        ("92 c0 04", "a nil entry"),
    ],
)
def test_malformed_shard_is_invalid_config(value: str, why: str) -> None:
    """WF-7.1-9: not an array of exactly two ints with 0 <= index < count <= 2^31 - 1."""
    err = fails(hello_with(SHARD_KEY + h(value)), "INVALID_CONFIG", "WF-7.1-9")
    assert err.value == 18


def test_shard_key_edge_cases() -> None:
    """7-10 (any int encoding), 7-9 (last occurrence wins), 7-8 (bin keys ignored), N16 (order)."""
    # Non-shortest ints are accepted: int64 index, uint8 count.
    data = hello_with(SHARD_KEY + h("92 d3 00 00 00 00 00 00 00 02 cc 04"))
    assert decode_one(data)["shard"] == [2, 4]
    assert wire.encode_message(decode_one(data)) == HELLO_SHARD_2_OF_4  # canonical when re-sent
    # array16 header for the two entries.
    assert decode_one(hello_with(SHARD_KEY + h("dc 00 02 02 04")))["shard"] == [2, 4]
    # Repeated key: only the last occurrence is checked (7-9).
    assert decode_one(hello_with(SHARD_KEY + h("03") + SHARD_KEY + h("92 02 04"), 2))["shard"] == [2, 4]
    fails(hello_with(SHARD_KEY + h("92 02 04") + SHARD_KEY + h("03"), 2), "INVALID_CONFIG", "WF-7.1-9")
    # A bin key "shard" is an unknown key: ignored, whatever its value, and it claims nothing.
    bin_shard = h("c4 05 73 68 61 72 64")
    assert "shard" not in decode_one(hello_with(bin_shard + h("03")))
    assert decode_one(hello_with(bin_shard + h("03") + SHARD_KEY + h("92 02 04"), 2))["shard"] == [2, 4]
    # `shard` placed before `name` is still read (receivers take any key order, 7-10).
    body = mp(
        {
            "magic": "aiodq",
            "min_version": 1,
            "max_version": 1,
            "encodings": [0, 1],
            "shard": [2, 4],
            "name": "w2",
        }
    )
    assert decode_one(control(0x01, body)) == HELLO_SHARD_MESSAGE
    # Check order: magic first (7.1-5), then the five keys (7.1-6), then shard (7.1-9).
    bad_shard = {**HELLO_MAP, "shard": 3}
    fails(control(0x01, mp({**bad_shard, "magic": "x"})), "INVALID_CONFIG", "WF-7.1-5")
    fails(control(0x01, mp({**bad_shard, "name": 1})), "INVALID_CONFIG", "WF-7.1-6")
    fails(control(0x01, mp({**bad_shard, "min_version": 2})), "INVALID_CONFIG", "WF-7.1-6")
    fails(control(0x01, mp(bad_shard)), "INVALID_CONFIG", "WF-7.1-9")


@pytest.mark.parametrize(
    "shard",
    [[4, 4], [0, 0], [-1, 4], [0, 2**31], [1], (1, 4, 0), 3, "1/4", [True, 4], [1, 4.0], {"0": 1}],
    ids=repr,
)
def test_encoder_refuses_malformed_shard(shard: object) -> None:
    """WF-9-3: a claim that 7.1-9 forbids cannot be encoded (PROTOCOL_ERROR, local)."""
    with pytest.raises(WireError) as info:
        wire.encode_message({**HELLO_SHARD_MESSAGE, "shard": shard})
    assert info.value.local and info.value.code == "PROTOCOL_ERROR" and info.value.rule == "WF-7.1-9"
    worker = Worker()
    with pytest.raises(WireError):
        worker.send({**HELLO, "shard": shard})
    assert worker.send(HELLO)  # the refused HELLO did not count as sent (7.1-4)


def test_master_endpoint_and_shard_claims() -> None:
    """In a connection: a malformed claim fails the master (INVALID_CONFIG, CLOSE at version 1); a
    valid one reaches the application, which may refuse admission with CLOSE 21/22 (7.1-9)."""
    master = Master()
    master.receive(control(0x01, mp({**HELLO_MAP, "shard": [4, 4]})))
    assert_failed(master, "INVALID_CONFIG", "WF-7.1-9")
    # Step 7 (the body) comes before step 8: no common version, or a second HELLO.
    master = Master()
    master.receive(control(0x01, mp({**HELLO_MAP, "min_version": 2, "max_version": 3, "shard": [1]})))
    assert_failed(master, "INVALID_CONFIG", "WF-7.1-9")
    master = Master()
    master.receive(control(0x01, mp(HELLO_MAP)))
    master.receive(control(0x01, mp({**HELLO_MAP, "shard": [1]})))
    assert_failed(master, "INVALID_CONFIG", "WF-7.1-9")
    # A valid claim: the worker sends it, the master hands it over with the HELLO.
    for code, name in ((22, "WORLD_SIZE_MISMATCH"), (21, "SHARD_TAKEN")):
        master, worker = Master(), Worker()
        hello = {**HELLO, "shard": [2, 4]}
        data = worker.send(hello)
        assert decode_one(data)["shard"] == [2, 4]
        assert master.receive(data) == [hello]
        # The master application (not modelled by the endpoint) refuses admission before WELCOME.
        close = master.close(code, "shard 2 of 4")
        assert close == frame(0x0B, struct.pack("<H", code) + b"shard 2 of 4")  # header version 1
        assert worker.receive(close) == [{"type": "CLOSE", "code": code, "reason": "shard 2 of 4"}]
        assert worker.report == (True, code) and worker.report.code_name == name
        master.receive(worker.data_to_send())
        assert master.report == (True, code)
    # With a shared secret the claim reaches the application only once the worker is verified.
    master, worker = auth_pair()
    assert master.receive(worker.send({**HELLO, "shard": [0, 1]})) == []
    worker.receive(master.data_to_send())
    assert master.receive(worker.data_to_send()) == [{**HELLO, "shard": [0, 1]}]


# ----------------------------------------------------------------------------- WF-10-5


def header(msg_type: int, length: int, version: int = 1) -> bytes:
    return struct.pack("<BBBI", version, msg_type, 0, length)


def test_session_frame_limit_value() -> None:
    limit = wire.session_frame_limit
    assert limit(ReceiveContext(), 123) == 65536  # the spec's example: defaults and d = 123
    assert limit(ReceiveContext(), 8184) == 65536  # 8·8184 + 64 = 65,536
    assert limit(ReceiveContext(), 8185) == 65544
    assert limit(ReceiveContext(), 10000) == 80064
    assert limit(ReceiveContext(), 2**24) == 8 * 2**24 + 64 < 2**28
    assert limit(ReceiveContext(), 2**25) == 2**28  # capped by max_frame_bytes
    small = {"max_control_bytes": 64, "max_reason_bytes": 16}
    assert limit(ReceiveContext(**small), 10) == 144  # 8·10 + 64
    assert limit(ReceiveContext(**small), 1) == 72
    # The reason term: max_reason_bytes + 32, above the handshake limit's + 20.
    assert limit(ReceiveContext(max_control_bytes=64, max_reason_bytes=500), 1) == 532
    assert wire.handshake_frame_limit(ReceiveContext(max_control_bytes=64, max_reason_bytes=500)) == 520
    assert limit(ReceiveContext(max_frame_bytes=1000), 1000) == 1000
    # frame_limit(): opt-in, needs the dimension; the handshake limit wins while it applies.
    assert ReceiveContext(dimension=10000).frame_limit() == 2**28
    assert ReceiveContext(session_limit=True).frame_limit() == 2**28
    assert ReceiveContext(dimension=10000, session_limit=True).frame_limit() == 80064
    assert ReceiveContext(dimension=10000, session_limit=True, before_handshake=True).frame_limit() == 65536
    # The limit is never below the handshake frame limit, for any limits.
    rng = random.Random(105)
    for _ in range(500):
        c = ReceiveContext(
            max_frame_bytes=rng.randint(64, 2**32 - 1),
            max_control_bytes=rng.randint(64, 2**20),
            max_reason_bytes=rng.randint(0, 2**20),
        )
        d = rng.randint(1, 2**26)
        assert wire.handshake_frame_limit(c) <= limit(c, d) <= c.max_frame_bytes


def test_no_message_of_the_session_reaches_the_limit() -> None:
    """WF-10-5's bound: the longest messages of a session fit, with the receiver's limits."""
    for lim, d in (
        (ReceiveContext(), 10000),
        (ReceiveContext(max_control_bytes=64, max_reason_bytes=16), 10),
    ):
        c = dataclasses.replace(lim, dimension=d, session_limit=True)
        big = 2**63 - 1
        raw64 = {"encoding": "RAW_F64", "dim": d, "values": [1.0] * d}
        longest = [
            {
                "type": "SNAPSHOT_GRADIENT",
                "epoch": big,
                "samples": big,
                "correct": big,
                "loss": 0.5,
                "vector": raw64,
            },
            {"type": "MODEL", "epoch": big, "version": big, "relative": True, "vector": raw64},
            {
                "type": "ERROR",
                "code": 65535,
                "epoch": big,
                "version": big,
                "reason": "r" * lim.max_reason_bytes,
            },
            {"type": "CLOSE", "code": 65535, "reason": "r" * lim.max_reason_bytes},
        ]
        for message in longest:
            data = wire.encode_message(message)
            assert len(data) - 7 <= c.frame_limit()
            assert wire.decode_stream(data, c)[0]["type"] == message["type"]


def pair_with_dim(dim: int, limits: ReceiveContext | None = None, **master_kwargs) -> tuple[Master, Worker]:
    """A master and a worker in READY with CONFIG `dim` (a small HELLO, so that it fits 64-byte limits)."""
    master = Master(limits=limits, **master_kwargs)
    worker = Worker(limits=limits)
    master.receive(worker.send({**HELLO, "encodings": [0, 1], "name": ""}))
    worker.receive(master.send({**WELCOME, "encodings": [0, 1]}))
    assert worker.receive(master.send({**CONFIG, "dim": dim}))[0]["dim"] == dim
    assert master.error is None and worker.error is None
    return master, worker


@pytest.mark.parametrize(
    "limits,dim,limit",
    [
        (None, 10000, 80064),  # 8·d + 64 with the default limits
        (ReceiveContext(max_control_bytes=64, max_reason_bytes=16), 10, 144),  # 8·d + 64
        (ReceiveContext(max_control_bytes=64, max_reason_bytes=500), 1, 532),  # max_reason_bytes + 32
        (None, 2, 65536),  # the handshake frame limit
    ],
)
@pytest.mark.parametrize("side", ["master", "worker"])
def test_session_frame_limit_boundary(limits, dim: int, limit: int, side: str) -> None:
    """WF-10-5: after CONFIG, a header declaring exactly the limit is accepted (the receiver waits
    for the body) and one byte more fails with FRAME_TOO_LARGE on the header alone."""
    for length, ok in ((limit, True), (limit + 1, False)):
        master, worker = pair_with_dim(dim, limits)
        receiver = master if side == "master" else worker
        msg_type = 0x08 if side == "master" else 0x07
        assert receiver.receive(header(msg_type, length)) == []
        if ok:
            assert receiver.error is None and receiver.state == "READY"
        else:
            assert_failed(receiver, "FRAME_TOO_LARGE", "WF-10-5")


def test_session_frame_limit_only_once_the_dimension_is_known() -> None:
    # Master in CONFIGURING (WELCOME sent, no CONFIG yet): max_frame_bytes applies.
    master, worker = Master(), Worker()
    master.receive(worker.send(HELLO))
    master.send(WELCOME)
    assert master.receive(header(0x09, 2**28)) == [] and master.error is None
    # The same header after CONFIG (d = 2): the session limit, 65,536.
    master, worker = ready_pair()
    master.receive(header(0x09, 2**28))
    assert_failed(master, "FRAME_TOO_LARGE", "WF-10-5")
    # Above max_frame_bytes itself it is still WF-3-3.
    master, worker = pair_with_dim(1000, ReceiveContext(max_frame_bytes=1000))
    master.receive(header(0x09, 1001))
    assert_failed(master, "FRAME_TOO_LARGE", "WF-3-3")
    # Turned off: max_frame_bytes again.
    master, worker = pair_with_dim(2, None, session_frame_limit=False)
    assert master.receive(header(0x09, 2**28)) == [] and master.error is None


def test_session_frame_limit_at_a_closing_worker() -> None:
    """The worker knows d once it has received CONFIG, also a CONFIG crossing its CLOSE (N21)."""
    master, worker = Master(), Worker()
    master.receive(worker.send(HELLO))
    worker.receive(master.send(WELCOME))
    worker.close()
    worker.receive(master.send(CONFIG))
    assert worker.state == "CLOSING" and worker.session_state == "READY"
    assert worker.receive(header(0x04, 65536)) == [] and worker.error is None
    worker = Worker()
    master = Master()
    master.receive(worker.send(HELLO))
    worker.receive(master.send(WELCOME))
    worker.close()
    worker.receive(master.send(CONFIG))
    worker.receive(header(0x04, 65537))
    assert_failed(worker, "FRAME_TOO_LARGE", "WF-10-5", close_sent=False)


def test_a_header_is_checked_once() -> None:
    """N20: a frame whose header passed step 1 is not refused later because the limit fell."""
    splitter = wire.FrameSplitter(ReceiveContext())
    splitter.push(header(0x09, 100) + b"x" * 50)
    assert splitter.pop() is None
    splitter.ctx = ReceiveContext(max_frame_bytes=64)
    splitter.push(b"x" * 50 + header(0x09, 100))
    assert splitter.pop() == wire.RawFrame(1, 0x09, 0, b"x" * 100)
    with pytest.raises(WireError) as info:
        splitter.pop()  # the next header meets the new limit
    assert info.value.code == "FRAME_TOO_LARGE"
    # In a connection: a master in CONFIGURING has the header of a 100,000-byte HEARTBEAT, then
    # sends CONFIG (d = 2, limit 65,536); the frame completes and fails on its body, not its length.
    master, worker = Master(), Worker()
    master.receive(worker.send(HELLO))
    master.send(WELCOME)
    assert master.receive(header(0x09, 100000) + b"\0" * 10) == []
    master.send(CONFIG)
    master.receive(b"\0" * 99990)
    assert_failed(master, "MALFORMED_FRAME", "WF-7.9-2")
    # A header completed in the same read as the CONFIG that makes d known meets the session limit.
    master, worker = Master(), Worker()
    master.receive(worker.send(HELLO))
    worker.receive(master.send(WELCOME))
    worker.receive(master.send(CONFIG) + header(0x04, 65537))
    assert_failed(worker, "FRAME_TOO_LARGE", "WF-10-5")


def test_stand_alone_decoder_session_limit_is_opt_in() -> None:
    """N22: the decoder without a connection applies WF-10-5 only with session_limit=True."""
    data = header(0x08, 80065)
    fails(data, "MALFORMED_FRAME", "WF-3-5", dimension=10000)  # waits for the body, stream ends
    fails(data, "FRAME_TOO_LARGE", "WF-10-5", dimension=10000, session_limit=True)
    fails(header(0x08, 80064), "MALFORMED_FRAME", "WF-3-5", dimension=10000, session_limit=True)


# =============================================================================================
# The amended specification, fourth session: WF-7.1-10 (rejoin back-off), code 23 (WF-9-1)
# =============================================================================================


def test_error_code_23_try_later() -> None:
    """Section 9 (amended): 23 TRY_LATER, raised by 7.1-10; WF-9-1: 24..65535 are unassigned."""
    assert wire.ERROR_CODES["TRY_LATER"] == 23 and wire.CODE_NAMES[23] == "TRY_LATER"
    assert sorted(wire.CODE_NAMES) == list(range(24))  # 0..23 registered, none above
    assert len(wire.ERROR_CODES) == 24
    err = WireError("TRY_LATER", "WF-7.1-10")
    assert err.code == "TRY_LATER" and err.value == 23 and err.rule == "WF-7.1-10"
    # CLOSE(TRY_LATER, "1.0 s") by hand (7.11, 4.1): version 1, type 0x0b, flags 0, length 7,
    # code 23 as a little-endian u16 (17 00), then the reason's UTF-8 bytes, no length prefix.
    close = h("01 0b 00 07 00 00 00 17 00 31 2e 30 20 73")
    assert decode_one(close) == {"type": "CLOSE", "code": 23, "reason": "1.0 s"}
    assert wire.encode_message({"type": "CLOSE", "code": 23, "reason": "1.0 s"}) == close
    # ERROR carrying 23 (7.10-4 accepts every code; 7.1-10 sends it only in CLOSE).
    error = h("01 0a 00 04 00 00 00 17 00 00 00")
    assert decode_one(error) == {"type": "ERROR", "code": 23, "epoch": 0, "version": 0, "reason": ""}
    assert SessionReport(True, 23).code_name == "TRY_LATER"
    # The first and the last unassigned value (WF-9-1): accepted, reported without a name.
    for code, u16 in ((24, "18 00"), (65535, "ff ff")):
        assert decode_one(h("01 0b 00 02 00 00 00 " + u16)) == {"type": "CLOSE", "code": code, "reason": ""}
        assert decode_one(h("01 0a 00 04 00 00 00 " + u16 + " 00 00"))["code"] == code
        assert code not in wire.CODE_NAMES
        assert SessionReport(True, code).code_name is None
        master = Master()
        assert master.receive(h("01 0b 00 02 00 00 00 " + u16))[0]["code"] == code
        assert master.error is None and master.report == (True, code)


@pytest.mark.parametrize("shard", [[1, 4], None], ids=["shard 1 of 4", "no claim"])
def test_try_later_refuses_a_hello_before_welcome(shard: list[int] | None) -> None:
    """WF-7.1-10: the master application may refuse a HELLO before WELCOME with CLOSE(TRY_LATER),
    the reason saying how long is left.  It is an ordinary CLOSE (8.4-1), not a failure: no error
    on either side, the worker answers CLOSE(NO_ERROR) (7.11-3) and both report a clean end with
    code 23 (8.4-6).  A worker without a claim can be refused too (non-claimers share one back-off).
    The worker MAY retry: on a new connection, since this session is over (8.1-3, 7.1-4)."""
    hello = HELLO if shard is None else {**HELLO, "shard": shard}
    master, worker = Master(), Worker()
    assert master.receive(worker.send(hello)) == [hello]
    # The back-off itself (who was removed, when, for how long) is the application's (NOTES N23).
    close = master.close(23, "0.8 s left")
    assert close == frame(0x0B, h("17 00") + b"0.8 s left")  # header version 1: nothing negotiated
    assert master.state == "CLOSING" and master.error is None
    assert worker.receive(close) == [{"type": "CLOSE", "code": 23, "reason": "0.8 s left"}]
    assert worker.state == "CLOSED" and worker.error is None
    assert worker.report == (True, 23) and worker.report.code_name == "TRY_LATER"
    answer = worker.data_to_send()
    assert answer == h("01 0b 00 02 00 00 00 00 00")  # CLOSE(NO_ERROR, ""), A.14
    assert master.receive(answer) == [{"type": "CLOSE", "code": 0, "reason": ""}]
    assert master.state == "CLOSED" and master.error is None
    assert master.report == (True, 23) and master.report.code_name == "TRY_LATER"
    with pytest.raises(WireError):
        worker.send(hello)  # no second HELLO on the refused connection
    # The retry: a new connection, the same HELLO, admitted this time.
    master, worker = Master(), Worker()
    assert master.receive(worker.send(hello)) == [hello]
    assert worker.receive(master.send(WELCOME)) == [WELCOME]
    assert master.state == worker.state == "CONFIGURING"


def test_try_later_with_a_shared_secret() -> None:
    """With a secret, the HELLO reaches the application only once the worker is verified (7.12-1),
    so a TRY_LATER refusal comes after AUTH_RESPONSE and before WELCOME, still as a plain CLOSE."""
    master, worker = auth_pair()
    hello = {**HELLO, "shard": [3, 4]}
    assert master.receive(worker.send(hello)) == []
    worker.receive(master.data_to_send())  # AUTH_CHALLENGE
    assert master.receive(worker.data_to_send()) == [hello]  # AUTH_RESPONSE verified
    worker.receive(master.data_to_send())  # AUTH_CONFIRM
    assert worker.error is None
    close = master.close(23, "59 s left")
    assert worker.receive(close) == [{"type": "CLOSE", "code": 23, "reason": "59 s left"}]
    assert worker.report == (True, 23) and worker.error is None
    master.receive(worker.data_to_send())
    assert master.report == (True, 23) and master.error is None
