"""The wire format's registries: message types, frame flags and vector encodings (wire-format.md 3, 5, 7).

These are the spec's tables as values; every other codec module reads them
from here, so the codec's import graph has one direction: registry, then
values and fields, then payloads, then messages.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "ALLOWED_ENCODINGS",
    "ALL_ENCODINGS",
    "FLAG_RELATIVE",
    "QUANTIZED_ENCODINGS",
    "Encoding",
    "MessageType",
]


class MessageType(IntEnum):
    """Frame types (wire-format.md 7)."""

    #: "Worker to master: versions and encodings offered."
    HELLO = 0x01
    #: "Master to worker: version chosen, worker id, encodings."
    WELCOME = 0x02
    #: "Master to worker: the run configuration."
    CONFIG = 0x03
    #: "Master to worker: an epoch starts; the snapshot x_snap."
    SNAPSHOT = 0x04
    #: "Worker to master: local gradient sum and loss at x_snap."
    SNAPSHOT_GRADIENT = 0x05
    #: "Master to worker: the full gradient g_snap."
    FULL_GRADIENT = 0x06
    #: "Master to worker: a model to compute on."
    MODEL = 0x07
    #: "Worker to master: a gradient computed on a model."
    GRADIENT = 0x08
    #: "Either direction: proof of life."
    HEARTBEAT = 0x09
    #: "Either direction: one message rejected."
    ERROR = 0x0A
    #: "Either direction: end of session."
    CLOSE = 0x0B
    #: "Master to worker: prove you hold the secret; a 32-byte nonce."
    AUTH_CHALLENGE = 0x0C
    #: "Worker to master: the worker's nonce and its HMAC."
    AUTH_RESPONSE = 0x0D
    #: "Master to worker: the master's HMAC."
    AUTH_CONFIRM = 0x0E


#: MODEL flag: "the vector is x - x_snap, not x" (wire-format.md 7.7).
FLAG_RELATIVE = 0x01


class Encoding(IntEnum):
    """Vector encodings: the high nibble of the descriptor byte (wire-format.md 5)."""

    #: "Every coordinate as an IEEE-754 binary32, little-endian."
    RAW_F32 = 0
    #: "Every coordinate as an IEEE-754 binary64, little-endian."
    RAW_F64 = 1
    #: "The zero vector; no payload after the dimension."
    ZERO = 2
    #: "The model equals the receiver's snapshot; MODEL frames only."
    EQUALS_SNAPSHOT = 3
    #: "A scale and one b-bit two's complement code per coordinate."
    DENSE = 4
    #: "A scale, nonzero codes, and their positions as a bitmap."
    SPARSE_BITMAP = 5
    #: "A scale, nonzero codes, and their positions as Rice-coded gaps."
    SPARSE_RICE = 6
    #: "QSGD: a norm, s, and Elias-gamma-coded levels with their signs."
    QSGD = 7
    #: "A scale and one b-bit code per coordinate, Rice-coded after a zigzag map."
    DENSE_RICE = 8


#: Every vector encoding of wire-format.md 5.2: what HELLO and WELCOME announce by default.
ALL_ENCODINGS: frozenset[int] = frozenset(int(e) for e in Encoding)

#: Encodings whose descriptor's low nibble holds ``bits - 1`` (wire-format.md 5.2).
QUANTIZED_ENCODINGS = frozenset(
    {Encoding.DENSE, Encoding.SPARSE_BITMAP, Encoding.SPARSE_RICE, Encoding.DENSE_RICE}
)

_RAW = frozenset({Encoding.RAW_F32, Encoding.RAW_F64})
#: Encodings allowed in each vector-carrying message (wire-format.md 7).
ALLOWED_ENCODINGS: dict[MessageType, frozenset[Encoding]] = {
    MessageType.SNAPSHOT: _RAW,
    MessageType.SNAPSHOT_GRADIENT: _RAW,
    MessageType.FULL_GRADIENT: _RAW,
    MessageType.MODEL: _RAW | {Encoding.ZERO, Encoding.EQUALS_SNAPSHOT, Encoding.DENSE, Encoding.DENSE_RICE},
    MessageType.GRADIENT: _RAW
    | {
        Encoding.ZERO,
        Encoding.DENSE,
        Encoding.DENSE_RICE,
        Encoding.SPARSE_BITMAP,
        Encoding.SPARSE_RICE,
        Encoding.QSGD,
    },
}
