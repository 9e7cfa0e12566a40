"""Clean-room codec for "the aiodq wire format, version 1" (frames, fields, vectors, messages).

Written from the specification text only (``/work/cleanroom-spec/wire-format.md``).  Comments cite
the requirement identifiers of that document, e.g. ``[WF-5.5-3]``.

Plain-data model
----------------
A *message* is a ``dict`` with a ``"type"`` key holding the spec's message name and the spec's
field names as the other keys (header version and flags are not message fields, except MODEL's
RELATIVE flag, which appears as ``"relative": bool``)::

    {"type": "HELLO", "min_version": int, "max_version": int, "encodings": list[int], "name": str,
     "shard": [index, count]}                                  # "shard" only if claimed (WF-7.1-9)
    {"type": "WELCOME", "version": int, "worker_id": int, "encodings": list[int]}
    {"type": "CONFIG", "dim": int, "algorithm": str, "params": dict[str, bool | int | float | str]}
    {"type": "SNAPSHOT", "epoch": int, "vector": vector}
    {"type": "SNAPSHOT_GRADIENT", "epoch": int, "samples": int, "correct": int, "loss": float,
     "vector": vector}
    {"type": "FULL_GRADIENT", "epoch": int, "vector": vector}
    {"type": "MODEL", "epoch": int, "version": int, "relative": bool, "vector": vector}
    {"type": "GRADIENT", "epoch": int, "version": int, "vector": vector}
    {"type": "HEARTBEAT"}
    {"type": "ERROR", "code": int, "epoch": int, "version": int, "reason": str}
    {"type": "CLOSE", "code": int, "reason": str}
    {"type": "AUTH_CHALLENGE", "nonce": bytes}                 # 32 bytes
    {"type": "AUTH_RESPONSE", "nonce": bytes, "mac": bytes}    # 32 + 32 bytes
    {"type": "AUTH_CONFIRM", "mac": bytes}                     # 32 bytes

HELLO's ``magic`` key is a protocol constant: it is checked on receipt and always written as
``"aiodq"`` but it is not part of the plain data.  ``encodings`` is decoded as a sorted list
without duplicates (WF-6.2-1).  HELLO's optional sixth key ``shard`` (WF-7.1-9) appears in the plain
data as ``"shard": [index, count]`` only when the body has it; the encoder writes it after ``name``
when the dict has a ``"shard"`` that is not None (a list or tuple of two ints).

A *vector* is a ``dict`` with ``"encoding"`` (the spec's encoding name) and ``"dim"``, plus the
value fields of its encoding (derived wire fields such as the Rice ``k`` are not included, because
the value determines them, WF-5.6-7 and WF-5.8-4)::

    {"encoding": "RAW_F32" | "RAW_F64", "dim": d, "values": list[float]}
    {"encoding": "ZERO" | "EQUALS_SNAPSHOT", "dim": d}
    {"encoding": "DENSE" | "DENSE_RICE", "dim": d, "bits": b, "scale": float, "codes": list[int]}
    {"encoding": "SPARSE_BITMAP" | "SPARSE_RICE", "dim": d, "bits": b, "scale": float,
     "indices": list[int], "codes": list[int]}
    {"encoding": "QSGD", "dim": d, "s": int, "norm": float, "levels": list[int]}

Public API
----------
``WireError(code: str, rule: str, detail: str = "", *, local: bool = False)``
    The single exception class.  ``.code`` is the spec's error-code NAME (e.g. ``"MALFORMED_FRAME"``),
    ``.value`` its u16 number, ``.rule`` the requirement ID (e.g. ``"WF-5.5-4"``), ``.detail`` a
    human-readable explanation and ``.local`` is True when the local side refused to send something.

``ReceiveContext(max_frame_bytes: int = 2**28, max_dimension: int = 2**24,
max_control_bytes: int = 2**16, max_reason_bytes: int = 1024, dimension: int | None = None,
encodings: Iterable[int] | None = None, header_version: int | None = None,
before_handshake: bool = False, session_limit: bool = False)``
    Receiver limits (section 10), the configured model dimension (None = unknown, skips check 8
    of WF-5.2-3), the encodings this receiver announced (None = all of 0..8) and, optionally, the
    header version that frames other than HELLO/WELCOME/AUTH_* must carry (None = no version check;
    the connection does that check itself, WF-5.2-4).  ``before_handshake=True`` applies the
    handshake frame limit of WF-10-3 in place of ``max_frame_bytes`` (the connection sets it until
    its handshake is complete; the stand-alone decoder has no handshake and leaves it False).
    ``session_limit=True`` applies the session frame limit of WF-10-5 once ``dimension`` is set
    (the connection sets it once the session's dimension is known; opt-in for the stand-alone
    decoder).  ``frame_limit() -> int`` is the body-length limit in force: the handshake frame
    limit while ``before_handshake`` is set, else the session frame limit when ``session_limit`` is
    set and ``dimension`` is not None, else ``max_frame_bytes``.

``handshake_frame_limit(ctx: ReceiveContext) -> int``
    ``min(max_frame_bytes, max(max_control_bytes, max_reason_bytes + 20))`` (WF-10-3).

``session_frame_limit(ctx: ReceiveContext, dimension: int) -> int``
    ``min(max_frame_bytes, max(handshake frame limit, 8·d + 64, max_reason_bytes + 32))`` (WF-10-5).

``decode_stream(data: bytes, ctx: ReceiveContext | None = None, *, stop_at_close: bool = False)
-> list[dict]``
    Decodes a complete byte stream (its end is the end of the stream) into messages; raises
    ``WireError`` for the first frame that fails.  With ``stop_at_close=True`` the decoder acts as
    an endpoint that receives the stream: the first CLOSE ends decoding and every byte after it,
    whole frames or part of one, is ignored (WF-3-5, WF-7.11-4).  The default keeps the
    stand-alone behaviour (no state, A.15: steps 1, 2, 6 and 7 only).

``decode_frame(version: int, msg_type: int, flags: int, body: bytes,
ctx: ReceiveContext | None = None) -> dict``
    Decodes one frame given its header fields and body (receive steps 1, 2, 3 when
    ``ctx.header_version`` is set, 6 and 7 of WF-7-1).

``decode_body(msg_type: int, flags: int, body: bytes, ctx: ReceiveContext) -> dict``
    Steps 6 and 7 of WF-7-1 only (flags, then the body).

``check_frame_length(length: int, ctx) -> None`` / ``check_message_type(msg_type: int) -> str``
    Steps 1 and 2 of WF-7-1 (the latter returns the message name).

``RawFrame(version: int, msg_type: int, flags: int, body: bytes)`` (a NamedTuple) and
``FrameSplitter(ctx)`` with ``push(data: bytes) -> None``, ``pop() -> RawFrame | None``,
``partial() -> bool``, ``clear() -> None``
    Incremental framing (WF-3-1..WF-3-5).  ``pop`` checks the body length as soon as the 7 header
    bytes are there (FRAME_TOO_LARGE), once per frame, against the limit in force at that moment,
    and returns a frame only once all of it has arrived.

``StreamDecoder(ctx, *, stop_at_close: bool = False)`` with ``feed(data: bytes) -> list[dict]``,
``end() -> None`` and ``closed -> bool``
    Incremental version of ``decode_stream``; ``end`` raises MALFORMED_FRAME on a partial frame
    (unless ``stop_at_close`` is set and a CLOSE has been decoded: then nothing fails any more).

``encode_message(message: dict, header_version: int = 1) -> bytes``
    The canonical frame of a message.  Raises ``WireError(local=True)`` with PROTOCOL_ERROR when the
    message cannot be encoded validly (WF-9-3), e.g. a vector encoding that its message type does not
    allow, a non-canonical sparse/Rice choice or a value out of range.

``encode_body(message: dict) -> tuple[int, int, bytes]``
    ``(type code, flags, body)`` of the canonical frame, without the header.

``expected_header_version(name: str, negotiated: int | None) -> int``
    The header version a frame of type ``name`` carries (1 for HELLO, WELCOME and AUTH_*, and for
    everything before negotiation; the negotiated version otherwise, WF-6.1-2/-7/-8).

``encode_vector(vector: dict, message_type: str | None = None) -> bytes`` /
``decode_vector(payload: bytes, message_type: str, ctx: ReceiveContext | None = None) -> dict``
    A vector payload alone (descriptor, dimension, encoding fields).

``vector_to_list(vector: dict, snapshot: list[float] | dict | None = None,
relative: bool = False) -> list[float]``
    The coordinates of a decoded vector as binary64 floats.  ``snapshot`` (the coordinates of
    ``x_snap`` or its decoded vector) is needed for EQUALS_SNAPSHOT and for ``relative=True``
    (a MODEL with RELATIVE: ``x = x_snap + v``, WF-7.7-2).

``make_dense_vector(bits: int, scale: float, codes: list[int], *, rice: bool = False,
peer_encodings: Iterable[int] | None = None) -> dict`` /
``make_sparse_vector(dim: int, bits: int, scale: float, indices: list[int], codes: list[int]) -> dict``
    Build a vector dict with the encoding name that the rules require (WF-5.8-4, WF-5.6-7).  One-bit
    codes are always DENSE (WF-5.8-4: DENSE_RICE is never valid at b = 1).

``rice_block_sizes(values: list[int], count: int, k_max: int) -> list[int]``
    ``R(k)`` for ``k = 0..k_max`` (WF-5.6-6, WF-5.8-4).

Also exported: ``ERROR_CODES`` (name -> int, 0..23), ``CODE_NAMES`` (int -> name), ``MESSAGE_TYPES``,
``TYPE_NAMES``, ``ENCODINGS``, ``ENCODING_NAMES``, ``ALLOWED_ENCODINGS``, ``FLAG_RELATIVE``,
``encode_varint(value: int) -> bytes``, ``decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

# ---------------------------------------------------------------------------------------------
# Registries
# ---------------------------------------------------------------------------------------------

ERROR_CODES: dict[str, int] = {
    "NO_ERROR": 0,
    "PROTOCOL_ERROR": 1,
    "FRAME_TOO_LARGE": 2,
    "UNSUPPORTED_VERSION": 3,
    "UNKNOWN_MESSAGE_TYPE": 4,
    "MALFORMED_FRAME": 5,
    "UNSUPPORTED_ENCODING": 6,
    "INVALID_PAYLOAD": 7,
    "LIMIT_EXCEEDED": 8,
    "WRONG_DIMENSION": 9,
    "NON_FINITE": 10,
    "UNEXPECTED_MESSAGE": 11,
    "UNKNOWN_EPOCH": 12,
    "FUTURE_VERSION": 13,
    "STALE_GRADIENT": 14,
    "TIMEOUT": 15,
    "INTERNAL_ERROR": 16,
    "AUTH_FAILED": 17,
    "INVALID_CONFIG": 18,
    "GOING_AWAY": 19,
    "VERSION_MISMATCH": 20,
    "SHARD_TAKEN": 21,  # [WF-7.1-9] raised by the master application, not by the codec
    "WORLD_SIZE_MISMATCH": 22,  # [WF-7.1-9] likewise
    "TRY_LATER": 23,  # [WF-7.1-10] likewise (rejoin back-off); 24..65535 are unassigned [WF-9-1]
}
CODE_NAMES: dict[int, str] = {v: k for k, v in ERROR_CODES.items()}

MESSAGE_TYPES: dict[str, int] = {
    "HELLO": 0x01,
    "WELCOME": 0x02,
    "CONFIG": 0x03,
    "SNAPSHOT": 0x04,
    "SNAPSHOT_GRADIENT": 0x05,
    "FULL_GRADIENT": 0x06,
    "MODEL": 0x07,
    "GRADIENT": 0x08,
    "HEARTBEAT": 0x09,
    "ERROR": 0x0A,
    "CLOSE": 0x0B,
    "AUTH_CHALLENGE": 0x0C,
    "AUTH_RESPONSE": 0x0D,
    "AUTH_CONFIRM": 0x0E,
}
TYPE_NAMES: dict[int, str] = {v: k for k, v in MESSAGE_TYPES.items()}
CONTROL_TYPES = frozenset({"HELLO", "WELCOME", "CONFIG"})
AUTH_TYPES = frozenset({"AUTH_CHALLENGE", "AUTH_RESPONSE", "AUTH_CONFIRM"})

ENCODINGS: dict[str, int] = {
    "RAW_F32": 0,
    "RAW_F64": 1,
    "ZERO": 2,
    "EQUALS_SNAPSHOT": 3,
    "DENSE": 4,
    "SPARSE_BITMAP": 5,
    "SPARSE_RICE": 6,
    "QSGD": 7,
    "DENSE_RICE": 8,
}
ENCODING_NAMES: dict[int, str] = {v: k for k, v in ENCODINGS.items()}
KNOWN_ENCODINGS = frozenset(ENCODINGS.values())
# [WF-5.2-1] encodings whose low nibble is bits - 1.
QUANTIZED_ENCODINGS = frozenset({4, 5, 6, 8})

# [WF-6.2-3] which message types may carry which encodings.
ALLOWED_ENCODINGS: dict[str, frozenset[int]] = {
    "SNAPSHOT": frozenset({0, 1}),
    "SNAPSHOT_GRADIENT": frozenset({0, 1}),
    "FULL_GRADIENT": frozenset({0, 1}),
    "MODEL": frozenset({0, 1, 2, 3, 4, 8}),
    "GRADIENT": frozenset({0, 1, 2, 4, 5, 6, 7, 8}),
}

FLAG_RELATIVE = 0x01
# [WF-3-6] the flag bits each type defines.  Only MODEL defines one.
DEFINED_FLAGS: dict[str, int] = {name: 0 for name in MESSAGE_TYPES}
DEFINED_FLAGS["MODEL"] = FLAG_RELATIVE

HEADER_SIZE = 7
MAX_VARINT = 2**63 - 1  # [WF-4.2-3], [WF-4.2-5]
MAX_MSGPACK_DEPTH = 1024  # [WF-7-6]
NONCE_SIZE = 32
MAC_SIZE = 32
HELLO_MAGIC = "aiodq"
MAX_SHARD_COUNT = 2**31 - 1  # [WF-7.1-9] 0 <= index < count <= 2^31 - 1


# ---------------------------------------------------------------------------------------------
# The error class
# ---------------------------------------------------------------------------------------------


class WireError(Exception):
    """A violation of the wire format.

    ``code`` is the error-code name of section 9, ``value`` its number, ``rule`` the requirement ID
    that was enforced, ``detail`` free text, and ``local`` tells a local refusal to send (WF-9-3)
    from a peer's violation found in received input.
    """

    def __init__(self, code: str, rule: str, detail: str = "", *, local: bool = False) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown error code name {code!r}")
        self.code = code
        self.value = ERROR_CODES[code]
        self.rule = rule
        self.detail = detail
        self.local = local
        where = "local refusal" if local else "received input"
        super().__init__(f"{code} [{rule}] ({where}): {detail}")


def _bad(code: str, rule: str, detail: str) -> WireError:
    """Build the error for a rule broken by received input (the caller raises it)."""
    return WireError(code, rule, detail)


def _refuse(rule: str, detail: str, code: str = "PROTOCOL_ERROR") -> WireError:
    """Build the error for something the local side may not encode or send."""
    return WireError(code, rule, detail, local=True)


# ---------------------------------------------------------------------------------------------
# Receive context (section 10)
# ---------------------------------------------------------------------------------------------


@dataclass
class ReceiveContext:
    """What a receiver knows when it decodes a frame: limits, configured dimension, announced set."""

    max_frame_bytes: int = 2**28
    max_dimension: int = 2**24
    max_control_bytes: int = 2**16
    max_reason_bytes: int = 1024
    dimension: int | None = None
    encodings: Iterable[int] | None = None
    header_version: int | None = None
    before_handshake: bool = False
    session_limit: bool = False

    def __post_init__(self) -> None:
        # Section 10, "Allowed values".
        if not 64 <= self.max_frame_bytes <= 2**32 - 1:
            raise ValueError("max_frame_bytes must be in 64 .. 2^32 - 1")
        if self.max_dimension < 1:
            raise ValueError("max_dimension must be at least 1")
        if self.max_control_bytes < 64:
            raise ValueError("max_control_bytes must be at least 64")
        if self.max_reason_bytes < 0:
            raise ValueError("max_reason_bytes must be at least 0")
        if self.encodings is not None:
            self.encodings = frozenset(self.encodings)

    def announced(self) -> frozenset[int]:
        """The encodings this receiver accepts (WF-6.2-5); every known one when unspecified."""
        return KNOWN_ENCODINGS if self.encodings is None else frozenset(self.encodings)

    def frame_limit(self) -> int:
        """The body-length limit in force: the handshake frame limit of WF-10-3 while
        ``before_handshake`` is set; else the session frame limit of WF-10-5 when ``session_limit``
        is set and the dimension is known; else ``max_frame_bytes``.  (The session limit is never
        below the handshake limit, so ``before_handshake`` wins if both are set.)"""
        if self.before_handshake:
            return handshake_frame_limit(self)
        if self.session_limit and self.dimension is not None:
            return session_frame_limit(self, self.dimension)
        return self.max_frame_bytes


def handshake_frame_limit(ctx: ReceiveContext) -> int:
    """[WF-10-3] ``min(max_frame_bytes, max(max_control_bytes, max_reason_bytes + 20))``.

    Nothing a peer may send before the handshake is complete is longer: HELLO, WELCOME and CONFIG
    are at most ``max_control_bytes`` (WF-7-5), the AUTH messages 64 bytes, CLOSE and ERROR at most
    20 bytes of fixed fields and varints plus their reason."""
    return min(ctx.max_frame_bytes, max(ctx.max_control_bytes, ctx.max_reason_bytes + 20))


def session_frame_limit(ctx: ReceiveContext, dimension: int) -> int:
    """[WF-10-5] ``min(max_frame_bytes, max(handshake frame limit, 8·d + 64, max_reason_bytes + 32))``.

    Once the session's dimension ``d`` is known no message of the session is longer: RAW_F64 is the
    largest vector (``8·d`` bytes plus at most 10 of descriptor and dimension) and SNAPSHOT_GRADIENT
    adds at most 35 bytes; ERROR and CLOSE are a reason plus fixed fields and varints (NOTES N19)."""
    return min(
        ctx.max_frame_bytes,
        max(handshake_frame_limit(ctx), 8 * dimension + 64, ctx.max_reason_bytes + 32),
    )


# ---------------------------------------------------------------------------------------------
# Primitive fields (section 4)
# ---------------------------------------------------------------------------------------------


class _Reader:
    """A cursor over a frame body."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int) -> bytes:
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def rest(self) -> bytes:
        return self.take(self.remaining())

    def u8(self) -> int:
        value = self.buf[self.pos]
        self.pos += 1
        return value


def decode_varint(data: bytes, pos: int = 0) -> tuple[int, int]:
    """Decode one unsigned LEB128 varint at ``pos``; return ``(value, next_pos)``.

    Raises MALFORMED_FRAME for a cut-off varint (WF-4.2-4), a non-shortest one (WF-4.2-2) and a
    9th byte with bit 7 set (WF-4.2-3).
    """
    value = 0
    for i in range(9):
        if pos >= len(data):
            raise _bad("MALFORMED_FRAME", "WF-4.2-4", "varint cut off by the end of the body")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i > 0 and byte == 0:
                raise _bad("MALFORMED_FRAME", "WF-4.2-2", "varint not in shortest form")
            return value, pos
    raise _bad("MALFORMED_FRAME", "WF-4.2-3", "9th varint byte has bit 7 set")


def _read_varint(r: _Reader) -> int:
    value, r.pos = decode_varint(r.buf, r.pos)
    return value


def _check_uint(value: object, what: str, upper: int = MAX_VARINT, rule: str = "WF-4.2-5") -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _refuse(rule, f"{what} must be an int, got {type(value).__name__}")
    if not 0 <= value <= upper:
        raise _refuse(rule, f"{what} = {value} is outside 0..{upper}")
    return value


def encode_varint(value: int) -> bytes:
    """Shortest unsigned LEB128 form of ``value`` (WF-4.2-1, WF-4.2-2); 0..2^63-1 only (WF-4.2-5)."""
    _check_uint(value, "varint value")
    out = bytearray()
    while True:
        group = value & 0x7F
        value >>= 7
        if value:
            out.append(group | 0x80)
        else:
            out.append(group)
            return bytes(out)


def _f32_exact(value: float) -> bool:
    """True when ``value`` is a finite number that binary32 represents exactly."""
    try:
        packed = struct.pack("<f", value)
    except OverflowError:
        return False
    return struct.unpack("<f", packed)[0] == value


def _as_float(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _refuse("WF-4.1-2", f"{what} must be a number")
    return float(value)


# ---------------------------------------------------------------------------------------------
# Bit streams (section 5.1)
# ---------------------------------------------------------------------------------------------


def _ceil8(bits: int) -> int:
    return (bits + 7) // 8


class _BitWriter:
    """LSB-first bit stream writer (WF-5.1-1)."""

    __slots__ = ("buf", "nbits")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.nbits = 0

    def write(self, value: int, width: int) -> None:
        pos = self.nbits
        end = pos + width
        need = _ceil8(end)
        if len(self.buf) < need:
            self.buf.extend(bytes(need - len(self.buf)))
        while value:
            index, offset = pos >> 3, pos & 7
            self.buf[index] |= (value << offset) & 0xFF
            value >>= 8 - offset
            pos += 8 - offset
        self.nbits = end

    def unary(self, q: int) -> None:
        """``q`` zero bits, then a one bit (WF-5.6-5)."""
        self.write(0, q)
        self.write(1, 1)

    def getvalue(self) -> bytes:
        return bytes(self.buf)


class _BitReader:
    """LSB-first bit stream reader over bytes known to be long enough."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def read(self, width: int) -> int:
        value = 0
        got = 0
        while got < width:
            index, offset = self.pos >> 3, self.pos & 7
            take = min(8 - offset, width - got)
            bits = (self.data[index] >> offset) & ((1 << take) - 1)
            value |= bits << got
            got += take
            self.pos += take
        return value


def _pack_fixed(values: Iterable[int], width: int) -> bytes:
    """Pack unsigned ``width``-bit codes, code i bit j at stream bit i*width+j (WF-5.1-2, 5.1-5)."""
    if width == 0:
        return b""
    out = bytearray()
    acc = 0
    nacc = 0
    for value in values:
        acc |= value << nacc
        nacc += width
        while nacc >= 8:
            out.append(acc & 0xFF)
            acc >>= 8
            nacc -= 8
    if nacc:
        out.append(acc)
    return bytes(out)


def _unpack_fixed(data: bytes, count: int, width: int) -> list[int]:
    """Unpack ``count`` unsigned codes of ``width`` bits from ``data`` (long enough)."""
    if width == 0:
        return [0] * count
    mask = (1 << width) - 1
    out = []
    acc = 0
    nacc = 0
    index = 0
    for _ in range(count):
        while nacc < width:
            acc |= data[index] << nacc
            index += 1
            nacc += 8
        out.append(acc & mask)
        acc >>= width
        nacc -= width
    return out


def _padding_clear(data: bytes, used_bits: int) -> bool:
    """True when the bits after ``used_bits`` in the last byte of ``data`` are zero (WF-5.1-3)."""
    rem = used_bits & 7
    if not data or rem == 0:
        return True
    return data[-1] >> rem == 0


def _to_signed(value: int, width: int) -> int:
    """Two's complement reading of a ``width``-bit code (WF-5.1-4)."""
    return value - (1 << width) if value >> (width - 1) else value


def _popcount(data: bytes) -> int:
    return int.from_bytes(data, "little").bit_count()


def _decode_unary(data: bytes, count: int) -> list[int]:
    """The first ``count`` unary numbers (zeros then a one) of an LSB-first stream."""
    out: list[int] = []
    q = 0
    for byte in data:
        if byte == 0:
            q += 8
            continue
        for bit in range(8):
            if (byte >> bit) & 1:
                out.append(q)
                q = 0
                if len(out) == count:
                    return out
            else:
                q += 1
    return out


def rice_block_sizes(values: list[int], count: int, k_max: int) -> list[int]:
    """``R(k) = 1 + ceil(count*k/8) + ceil((sum(v >> k) + count)/8)`` for k = 0..k_max.

    With gaps this is WF-5.6-6 (sparse, ``count = n``); with zigzag values WF-5.8-4 (``count = d``).
    """
    return [1 + _ceil8(count * k) + _ceil8(sum(v >> k for v in values) + count) for k in range(k_max + 1)]


def _best_k(sizes: list[int]) -> int:
    """The smallest k with the smallest size (ties go to the smaller k, WF-5.6-7, WF-5.8-4)."""
    return sizes.index(min(sizes))


def _rice_streams(values: list[int], k: int) -> tuple[bytes, bytes]:
    """The remainder and unary streams of WF-5.6-5 / WF-5.8-3."""
    remainders = _pack_fixed((v & ((1 << k) - 1) for v in values), k)
    writer = _BitWriter()
    for v in values:
        writer.unary(v >> k)
    return remainders, writer.getvalue()


def _gaps(indices: list[int]) -> list[int]:
    """``g_0 = i_0``, ``g_j = i_j - i_(j-1) - 1`` (WF-5.6-4)."""
    out = []
    previous = -1
    for index in indices:
        out.append(index - previous - 1)
        previous = index
    return out


def _zigzag(code: int) -> int:
    """WF-5.8-2."""
    return 2 * code if code >= 0 else -2 * code - 1


def _unzigzag(z: int) -> int:
    """Inverse of WF-5.8-2."""
    return z // 2 if z % 2 == 0 else -(z + 1) // 2


# ---------------------------------------------------------------------------------------------
# Vector payloads: decoding (section 5)
# ---------------------------------------------------------------------------------------------


def _read_scale(r: _Reader, what: str, truncated_rule: str) -> float:
    """A positive finite binary32 scale or QSGD norm (WF-5.5-2, WF-5.7-2, WF-4.1-4)."""
    if r.remaining() < 4:
        raise _bad("MALFORMED_FRAME", truncated_rule, f"{what} truncated")
    (value,) = struct.unpack_from("<f", r.buf, r.pos)
    r.pos += 4
    if not math.isfinite(value):
        raise _bad("NON_FINITE", "WF-5.5-2", f"{what} is NaN or infinite")
    if value <= 0.0:  # zero, -0.0 and negatives
        raise _bad("INVALID_PAYLOAD", "WF-5.5-2", f"{what} is not greater than zero")
    return value


def _decode_raw(r: _Reader, enc: int, d: int) -> dict:
    size = 4 if enc == 0 else 8
    # [WF-5.3-2] exact length, checked before anything is allocated [WF-10-1].
    if r.remaining() != size * d:
        raise _bad(
            "MALFORMED_FRAME", "WF-5.3-2", f"{r.remaining()} bytes follow the dimension, {size * d} expected"
        )
    fmt = f"<{d}{'f' if enc == 0 else 'd'}"
    values = list(struct.unpack_from(fmt, r.buf, r.pos))
    r.pos += size * d
    # [WF-5.3-3] after the length checks.
    for value in values:
        if not math.isfinite(value):
            raise _bad("NON_FINITE", "WF-5.3-3", "a coordinate is NaN or infinite")
    return {"encoding": ENCODING_NAMES[enc], "dim": d, "values": values}


def _decode_dense(r: _Reader, d: int, bits: int) -> dict:
    # [WF-5.5-3] order: truncated scale, scale, short codes, padding, extra bytes, all zero.
    scale = _read_scale(r, "DENSE scale", "WF-5.5-3")
    nbytes = _ceil8(d * bits)
    if r.remaining() < nbytes:
        raise _bad("MALFORMED_FRAME", "WF-5.5-3", "DENSE codes truncated")
    raw = r.take(nbytes)
    if not _padding_clear(raw, d * bits):
        raise _bad("INVALID_PAYLOAD", "WF-5.1-3", "padding bit set in the DENSE codes")
    if r.remaining():
        raise _bad("MALFORMED_FRAME", "WF-5.5-3", "bytes after the DENSE codes")
    if not any(raw):
        raise _bad("INVALID_PAYLOAD", "WF-5.5-4", "DENSE codes are all zero (send ZERO)")
    codes = [_to_signed(c, bits) for c in _unpack_fixed(raw, d, bits)]
    return {"encoding": "DENSE", "dim": d, "bits": bits, "scale": scale, "codes": codes}


def _decode_sparse(r: _Reader, enc: int, d: int, bits: int) -> dict:
    # [WF-5.6-8] common part, in order.
    n = _read_varint(r)
    if not 1 <= n <= d:
        raise _bad("INVALID_PAYLOAD", "WF-5.6-8", f"nonzero count {n} outside 1..{d}")
    scale = _read_scale(r, "sparse scale", "WF-5.6-8")
    nbytes = _ceil8(n * bits)
    if r.remaining() < nbytes:
        raise _bad("MALFORMED_FRAME", "WF-5.6-8", "sparse codes truncated")
    raw = r.take(nbytes)
    if not _padding_clear(raw, n * bits):
        raise _bad("INVALID_PAYLOAD", "WF-5.1-3", "padding bit set in the sparse codes")
    codes = [_to_signed(c, bits) for c in _unpack_fixed(raw, n, bits)]
    if 0 in codes:
        raise _bad("INVALID_PAYLOAD", "WF-5.6-2", "a sparse code is zero")
    bitmap_size = _ceil8(d)
    if enc == 5:
        indices = _decode_bitmap_block(r, d, n, bitmap_size)
    else:
        indices = _decode_rice_block(r, d, n, bitmap_size)
    return {
        "encoding": ENCODING_NAMES[enc],
        "dim": d,
        "bits": bits,
        "scale": scale,
        "indices": indices,
        "codes": codes,
    }


def _decode_bitmap_block(r: _Reader, d: int, n: int, bitmap_size: int) -> list[int]:
    # [WF-5.6-9] in order.
    if r.remaining() < bitmap_size:
        raise _bad("MALFORMED_FRAME", "WF-5.6-9", "bitmap truncated")
    if r.remaining() > bitmap_size:
        raise _bad("MALFORMED_FRAME", "WF-5.6-9", "bytes after the bitmap")
    bitmap = r.take(bitmap_size)
    if not _padding_clear(bitmap, d):
        raise _bad("INVALID_PAYLOAD", "WF-5.6-9", "bitmap padding bit set")
    if _popcount(bitmap) != n:
        raise _bad("INVALID_PAYLOAD", "WF-5.6-9", "bitmap does not hold n set bits")
    indices = [i * 8 + bit for i, byte in enumerate(bitmap) if byte for bit in range(8) if (byte >> bit) & 1]
    sizes = rice_block_sizes(_gaps(indices), n, 16)
    if min(sizes) < bitmap_size:
        raise _bad(
            "INVALID_PAYLOAD",
            "WF-5.6-9",
            "a Rice index block is smaller than the bitmap (should be SPARSE_RICE)",
        )
    return indices


def _decode_rice_block(r: _Reader, d: int, n: int, bitmap_size: int) -> list[int]:
    # [WF-5.6-10] in order.
    if r.remaining() < 1:
        raise _bad("MALFORMED_FRAME", "WF-5.6-10", "Rice parameter byte missing")
    k = r.u8()
    if k > 16:
        raise _bad("INVALID_PAYLOAD", "WF-5.6-10", f"Rice parameter k = {k} > 16")
    rem_size = _ceil8(n * k)
    if r.remaining() < rem_size:
        raise _bad("MALFORMED_FRAME", "WF-5.6-10", "Rice remainders truncated")
    remainders = r.take(rem_size)
    unary = r.rest()
    if 1 + rem_size + len(unary) >= bitmap_size:
        raise _bad("INVALID_PAYLOAD", "WF-5.6-10", "Rice block not smaller than the bitmap")
    if _popcount(unary) != n:
        raise _bad("INVALID_PAYLOAD", "WF-5.6-10", "unary stream does not hold n one bits")
    if unary[-1] == 0:
        raise _bad("INVALID_PAYLOAD", "WF-5.6-10", "unary stream ends with a zero byte")
    if not _padding_clear(remainders, n * k):
        raise _bad("INVALID_PAYLOAD", "WF-5.1-3", "padding bit set in the Rice remainders")
    quotients = _decode_unary(unary, n)
    gaps = [(q << k) | rem for q, rem in zip(quotients, _unpack_fixed(remainders, n, k), strict=True)]
    if sum(gaps) + n - 1 >= d:
        raise _bad("INVALID_PAYLOAD", "WF-5.6-10", "last sparse index is d or more")
    if _best_k(rice_block_sizes(gaps, n, 16)) != k:
        raise _bad("INVALID_PAYLOAD", "WF-5.6-10", f"k = {k} is not the canonical k*")
    indices = []
    index = -1
    for gap in gaps:
        index += gap + 1
        indices.append(index)
    return indices


def _decode_qsgd(r: _Reader, d: int) -> dict:
    # [WF-5.7-4] in order.
    s = _read_varint(r)
    if not 1 <= s <= 65535:
        raise _bad("INVALID_PAYLOAD", "WF-5.7-4", f"s = {s} outside 1..65535")
    norm = _read_scale(r, "QSGD norm", "WF-5.7-4")
    e_max = (s + 1).bit_length() - 1  # floor(log2(s + 1))
    rest = r.rest()
    if len(rest) > _ceil8(d * (2 * e_max + 2)) + 3:
        raise _bad("INVALID_PAYLOAD", "WF-5.7-4", "QSGD streams longer than the bound")
    # Step 4: the exponent stream is the shortest prefix holding d one bits.
    ones = 0
    end = -1
    for index, byte in enumerate(rest):
        count = byte.bit_count()
        if ones + count >= d:
            end = index
            break
        ones += count
    if end < 0:
        raise _bad("INVALID_PAYLOAD", "WF-5.7-4", "exponent stream holds fewer than d one bits")
    last = rest[end]
    needed = d - ones
    position = 0  # bit position of the d-th one bit inside the last byte
    for position in range(8):
        if (last >> position) & 1:
            needed -= 1
            if needed == 0:
                break
    if last >> (position + 1):  # step 5
        raise _bad("INVALID_PAYLOAD", "WF-5.7-4", "padding bit set in the exponent stream")
    exponents = _decode_unary(rest[: end + 1], d)
    if max(exponents) > e_max:  # step 6
        raise _bad("INVALID_PAYLOAD", "WF-5.7-4", "an exponent exceeds floor(log2(s + 1))")
    pos = end + 1
    mantissa_bits = sum(exponents)
    mantissa_size = _ceil8(mantissa_bits)
    if len(rest) - pos < mantissa_size:  # step 7
        raise _bad("INVALID_PAYLOAD", "WF-5.7-4", "mantissa stream truncated")
    mantissas = rest[pos : pos + mantissa_size]
    pos += mantissa_size
    if not _padding_clear(mantissas, mantissa_bits):  # step 8
        raise _bad("INVALID_PAYLOAD", "WF-5.7-4", "padding bit set in the mantissa stream")
    reader = _BitReader(mantissas)
    magnitudes = []
    for n_i in exponents:
        m_i = (1 << n_i) | reader.read(n_i)
        magnitudes.append(m_i - 1)
    if max(magnitudes) > s:  # step 9
        raise _bad("INVALID_PAYLOAD", "WF-5.7-4", "a level exceeds s")
    z = sum(1 for m in magnitudes if m)
    if z == 0:  # step 10
        raise _bad("INVALID_PAYLOAD", "WF-5.7-5", "every QSGD level is zero (send ZERO)")
    signs = rest[pos:]
    if len(signs) != _ceil8(z):  # step 11
        raise _bad("INVALID_PAYLOAD", "WF-5.7-4", "sign stream is not ceil(z/8) bytes")
    if not _padding_clear(signs, z):  # step 12
        raise _bad("INVALID_PAYLOAD", "WF-5.7-4", "padding bit set in the sign stream")
    sign_bits = _unpack_fixed(signs, z, 1)
    levels = []
    j = 0
    for m in magnitudes:
        if m:
            levels.append(-m if sign_bits[j] else m)
            j += 1
        else:
            levels.append(0)
    return {"encoding": "QSGD", "dim": d, "s": s, "norm": norm, "levels": levels}


def _decode_dense_rice(r: _Reader, d: int, bits: int) -> dict:
    # [WF-5.8-5] in order.  No shortcut for b = 1 (never valid, WF-5.8-4): such a payload fails at
    # step 3 (k >= 1), 5 (1 + unary length >= ceil(d/8)) or 6, in the order the steps give.
    scale = _read_scale(r, "DENSE_RICE scale", "WF-5.8-5")
    if r.remaining() < 1:
        raise _bad("MALFORMED_FRAME", "WF-5.8-5", "Rice parameter byte missing")
    k = r.u8()
    if k >= bits:
        raise _bad("INVALID_PAYLOAD", "WF-5.8-5", f"k = {k} is not below b = {bits}")
    rem_size = _ceil8(d * k)
    if r.remaining() < rem_size:
        raise _bad("MALFORMED_FRAME", "WF-5.8-5", "Rice remainders truncated")
    remainders = r.take(rem_size)
    unary = r.rest()
    if 1 + rem_size + len(unary) >= _ceil8(d * bits):
        raise _bad("INVALID_PAYLOAD", "WF-5.8-5", "DENSE_RICE block not smaller than DENSE codes")
    if _popcount(unary) != d:
        raise _bad("INVALID_PAYLOAD", "WF-5.8-5", "unary stream does not hold d one bits")
    if unary[-1] == 0:
        raise _bad("INVALID_PAYLOAD", "WF-5.8-5", "unary stream ends with a zero byte")
    if not _padding_clear(remainders, d * k):
        raise _bad("INVALID_PAYLOAD", "WF-5.1-3", "padding bit set in the Rice remainders")
    quotients = _decode_unary(unary, d)
    zs = [(q << k) | rem for q, rem in zip(quotients, _unpack_fixed(remainders, d, k), strict=True)]
    if max(zs) >= 1 << bits:
        raise _bad("INVALID_PAYLOAD", "WF-5.8-5", "a zigzag value is 2^b or more")
    if not any(zs):
        raise _bad("INVALID_PAYLOAD", "WF-5.8-5", "every code is zero (send ZERO)")
    if _best_k(rice_block_sizes(zs, d, bits - 1)) != k:
        raise _bad("INVALID_PAYLOAD", "WF-5.8-5", f"k = {k} is not the canonical k*")
    codes = [_unzigzag(z) for z in zs]
    return {"encoding": "DENSE_RICE", "dim": d, "bits": bits, "scale": scale, "codes": codes}


def _decode_vector(r: _Reader, message_type: str, ctx: ReceiveContext) -> dict:
    """A vector payload running to the end of the body (WF-5-1), checks in WF-5.2-3 order."""
    if r.remaining() < 1:  # step 1
        raise _bad("MALFORMED_FRAME", "WF-5.2-3", "vector descriptor byte missing")
    descriptor = r.u8()
    enc, low = descriptor >> 4, descriptor & 0x0F
    if enc not in KNOWN_ENCODINGS:  # step 2
        raise _bad("UNSUPPORTED_ENCODING", "WF-12-2", f"reserved vector encoding {enc}")
    if enc not in ALLOWED_ENCODINGS[message_type]:  # step 3
        raise _bad(
            "UNSUPPORTED_ENCODING", "WF-6.2-3", f"{ENCODING_NAMES[enc]} is not allowed in {message_type}"
        )
    if enc not in ctx.announced():
        raise _bad(
            "UNSUPPORTED_ENCODING", "WF-6.2-3", f"{ENCODING_NAMES[enc]} was not announced by this receiver"
        )
    if enc not in QUANTIZED_ENCODINGS and low != 0:  # step 4
        raise _bad("MALFORMED_FRAME", "WF-5.2-1", "nonzero low nibble in the descriptor")
    d = _read_varint(r)  # step 5
    if d == 0:  # step 6
        raise _bad("INVALID_PAYLOAD", "WF-5.2-2", "dimension 0")
    if d > ctx.max_dimension:  # step 7
        raise _bad("LIMIT_EXCEEDED", "WF-5.2-3", f"dimension {d} exceeds max_dimension")
    if ctx.dimension is not None and d != ctx.dimension:  # step 8
        raise _bad(
            "WRONG_DIMENSION", "WF-5.2-4", f"dimension {d} differs from the configured {ctx.dimension}"
        )
    bits = low + 1
    if enc in (0, 1):  # step 9
        return _decode_raw(r, enc, d)
    if enc in (2, 3):
        if r.remaining():
            raise _bad("MALFORMED_FRAME", "WF-5.4-3", "bytes after a ZERO/EQUALS_SNAPSHOT dimension")
        return {"encoding": ENCODING_NAMES[enc], "dim": d}
    if enc == 4:
        return _decode_dense(r, d, bits)
    if enc in (5, 6):
        return _decode_sparse(r, enc, d, bits)
    if enc == 7:
        return _decode_qsgd(r, d)
    return _decode_dense_rice(r, d, bits)


def decode_vector(payload: bytes, message_type: str, ctx: ReceiveContext | None = None) -> dict:
    """Decode a vector payload that fills ``payload``, as carried by ``message_type``."""
    if message_type not in ALLOWED_ENCODINGS:
        raise ValueError(f"{message_type} carries no vector")
    return _decode_vector(_Reader(bytes(payload)), message_type, ctx or ReceiveContext())


# ---------------------------------------------------------------------------------------------
# Vector payloads: encoding (section 5)
# ---------------------------------------------------------------------------------------------


def _check_scale(value: object, what: str) -> float:
    """A sender-side scale/norm: finite, > 0 and exactly representable in binary32 (WF-5.5-2)."""
    scale = _as_float(value, what)
    if not math.isfinite(scale):
        raise _refuse("WF-4.1-4", f"{what} is not finite")
    if scale <= 0.0:
        raise _refuse("WF-5.5-2", f"{what} is not greater than zero")
    if not _f32_exact(scale):
        raise _refuse("WF-5.5-2", f"{what} {scale!r} is not exactly representable in binary32")
    return scale


def _check_bits(value: object) -> int:
    bits = _check_uint(value, "bits", 16, "WF-5.2-1")
    if bits < 1:
        raise _refuse("WF-5.2-1", "bits must be in 1..16")
    return bits


def _check_codes(codes: object, count: int, bits: int, what: str) -> list[int]:
    if not isinstance(codes, (list, tuple)) or len(codes) != count:
        raise _refuse("WF-5.5-1", f"{what} must be a list of {count} ints")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    for code in codes:
        if not isinstance(code, int) or isinstance(code, bool) or not lo <= code <= hi:
            raise _refuse("WF-5.1-4", f"{what} value {code!r} outside {lo}..{hi}")
    return list(codes)


def _dense_rice_choice(codes: list[int], bits: int) -> tuple[int, int, list[int]]:
    """(k*, R(k*), zigzag values) of WF-5.8-4."""
    zs = [_zigzag(c) for c in codes]
    sizes = rice_block_sizes(zs, len(zs), bits - 1)
    k = _best_k(sizes)
    return k, sizes[k], zs


def _sparse_rice_choice(indices: list[int], n: int) -> tuple[int, int, list[int]]:
    """(k*, R(k*), gaps) of WF-5.6-7."""
    gaps = _gaps(indices)
    sizes = rice_block_sizes(gaps, n, 16)
    k = _best_k(sizes)
    return k, sizes[k], gaps


def encode_vector(vector: dict, message_type: str | None = None) -> bytes:
    """The canonical payload of ``vector`` (WF-5-2); refuses with PROTOCOL_ERROR what is invalid."""
    if not isinstance(vector, dict) or vector.get("encoding") not in ENCODINGS:
        raise _refuse("WF-12-2", "vector must be a dict with a known 'encoding'")
    name = vector["encoding"]
    enc = ENCODINGS[name]
    if message_type is not None and enc not in ALLOWED_ENCODINGS[message_type]:
        # [WF-6.2-3], reported locally as PROTOCOL_ERROR [WF-9-3].
        raise _refuse("WF-6.2-3", f"{name} is not allowed in {message_type}")
    d = _check_uint(vector.get("dim"), "dim")
    if d < 1:
        raise _refuse("WF-5.2-2", "dimension must be at least 1")
    low = 0
    if enc in QUANTIZED_ENCODINGS:
        bits = _check_bits(vector.get("bits"))
        low = bits - 1
    out = bytearray([enc << 4 | low])
    out += encode_varint(d)
    if enc in (0, 1):
        out += _encode_raw(vector, enc, d)
    elif enc == 4:
        scale = _check_scale(vector.get("scale"), "scale")
        codes = _check_codes(vector.get("codes"), d, bits, "DENSE code")
        if not any(codes):
            raise _refuse("WF-5.5-4", "all DENSE codes are zero: send ZERO")
        out += struct.pack("<f", scale)
        out += _pack_fixed((c & ((1 << bits) - 1) for c in codes), bits)
    elif enc == 8:
        scale = _check_scale(vector.get("scale"), "scale")
        if bits == 1:  # [WF-5.8-4] k* = 0 and R(0) >= 1 + ceil(d/8): never smaller than DENSE
            raise _refuse("WF-5.8-4", "DENSE_RICE is never valid with b = 1: send DENSE")
        codes = _check_codes(vector.get("codes"), d, bits, "DENSE_RICE code")
        if not any(codes):
            raise _refuse("WF-5.4-4", "all DENSE_RICE codes are zero: send ZERO")
        k, size, zs = _dense_rice_choice(codes, bits)
        if size >= _ceil8(d * bits):
            raise _refuse("WF-5.8-4", "DENSE_RICE would not be smaller than DENSE: send DENSE")
        remainders, unary = _rice_streams(zs, k)
        out += struct.pack("<f", scale) + bytes([k]) + remainders + unary
    elif enc in (5, 6):
        out += _encode_sparse(vector, enc, d, bits)
    elif enc == 7:
        out += _encode_qsgd(vector, d)
    return bytes(out)


def _encode_raw(vector: dict, enc: int, d: int) -> bytes:
    values = vector.get("values")
    if not isinstance(values, (list, tuple)) or len(values) != d:
        raise _refuse("WF-5.3-1", f"values must be a list of {d} floats")
    floats = [_as_float(v, "coordinate") for v in values]
    for value in floats:
        if not math.isfinite(value):
            raise _refuse("WF-5.3-3", "a coordinate is NaN or infinite")
    if enc == 1:
        return struct.pack(f"<{d}d", *floats)
    for value in floats:
        if not _f32_exact(value):
            raise _refuse("WF-5.3-1", f"{value!r} is not exactly representable in binary32")
    return struct.pack(f"<{d}f", *floats)


def _encode_sparse(vector: dict, enc: int, d: int, bits: int) -> bytes:
    scale = _check_scale(vector.get("scale"), "scale")
    indices = vector.get("indices")
    if not isinstance(indices, (list, tuple)) or not 1 <= len(indices) <= d:
        raise _refuse("WF-5.6-2", "indices must be a list of 1..d ints")
    n = len(indices)
    previous = -1
    for index in indices:
        if not isinstance(index, int) or isinstance(index, bool) or not previous < index < d:
            raise _refuse("WF-5.6-2", "indices must be strictly increasing ints below d")
        previous = index
    codes = _check_codes(vector.get("codes"), n, bits, "sparse code")
    if 0 in codes:
        raise _refuse("WF-5.6-2", "a sparse code is zero")
    k, size, gaps = _sparse_rice_choice(list(indices), n)
    bitmap_size = _ceil8(d)
    wanted = 6 if size < bitmap_size else 5  # [WF-5.6-7]
    if enc != wanted:
        raise _refuse("WF-5.6-7", f"this vector's canonical index encoding is {ENCODING_NAMES[wanted]}")
    out = bytearray(encode_varint(n))
    out += struct.pack("<f", scale)
    out += _pack_fixed((c & ((1 << bits) - 1) for c in codes), bits)
    if enc == 5:
        bitmap = bytearray(bitmap_size)
        for index in indices:
            bitmap[index >> 3] |= 1 << (index & 7)
        out += bitmap
    else:
        remainders, unary = _rice_streams(gaps, k)
        out += bytes([k]) + remainders + unary
    return bytes(out)


def _encode_qsgd(vector: dict, d: int) -> bytes:
    s = _check_uint(vector.get("s"), "s", 65535, "WF-5.7-2")
    if s < 1:
        raise _refuse("WF-5.7-2", "s must be in 1..65535")
    norm = _check_scale(vector.get("norm"), "norm")
    levels = vector.get("levels")
    if not isinstance(levels, (list, tuple)) or len(levels) != d:
        raise _refuse("WF-5.7-3", f"levels must be a list of {d} ints")
    for level in levels:
        if not isinstance(level, int) or isinstance(level, bool) or not -s <= level <= s:
            raise _refuse("WF-5.7-2", f"level {level!r} outside -s..s")
    if not any(levels):
        raise _refuse("WF-5.7-5", "every level is zero: send ZERO")
    exponents = _BitWriter()
    mantissas = _BitWriter()
    signs = []
    for level in levels:
        m = abs(level) + 1
        n_i = m.bit_length() - 1
        exponents.unary(n_i)
        mantissas.write(m & ((1 << n_i) - 1), n_i)
        if level:
            signs.append(1 if level < 0 else 0)
    return (
        encode_varint(s)
        + struct.pack("<f", norm)
        + exponents.getvalue()
        + mantissas.getvalue()
        + _pack_fixed(signs, 1)
    )


def make_dense_vector(
    bits: int,
    scale: float,
    codes: list[int],
    *,
    rice: bool = False,
    peer_encodings: Iterable[int] | None = None,
) -> dict:
    """A DENSE-valued vector dict.  With ``rice=True`` it is DENSE_RICE when that is allowed: the
    peer announced 8 (``peer_encodings`` None means yes), ``bits > 1`` and the Rice block is
    smaller (WF-5.8-4); otherwise DENSE, as the reference does.  All-zero codes give ZERO
    (WF-5.4-4)."""
    d = len(codes)
    if not any(codes):
        return {"encoding": "ZERO", "dim": d}
    name = "DENSE"
    # [WF-5.8-4] one-bit codes always travel as DENSE.
    if rice and bits != 1 and (peer_encodings is None or 8 in set(peer_encodings)):
        _check_codes(list(codes), d, _check_bits(bits), "code")
        if _dense_rice_choice(list(codes), bits)[1] < _ceil8(d * bits):
            name = "DENSE_RICE"
    return {"encoding": name, "dim": d, "bits": bits, "scale": float(scale), "codes": list(codes)}


def make_sparse_vector(dim: int, bits: int, scale: float, indices: list[int], codes: list[int]) -> dict:
    """A sparse vector dict with the canonical index encoding (WF-5.6-7); ZERO if no index."""
    if not indices:
        return {"encoding": "ZERO", "dim": dim}
    _, size, _ = _sparse_rice_choice(list(indices), len(indices))
    name = "SPARSE_RICE" if size < _ceil8(dim) else "SPARSE_BITMAP"
    return {
        "encoding": name,
        "dim": dim,
        "bits": bits,
        "scale": float(scale),
        "indices": list(indices),
        "codes": list(codes),
    }


def vector_to_list(
    vector: dict, snapshot: list[float] | dict | None = None, relative: bool = False
) -> list[float]:
    """Coordinates of a decoded vector, in binary64 (WF-5.3-1 .. WF-5.8-1, WF-7.7-1, WF-7.7-2)."""
    name = vector["encoding"]
    d = vector["dim"]
    snap: list[float] | None = None
    if snapshot is not None:
        snap = vector_to_list(snapshot) if isinstance(snapshot, dict) else [float(x) for x in snapshot]
        if len(snap) != d:
            raise ValueError("snapshot dimension differs from the vector's")
    if name in ("RAW_F32", "RAW_F64"):
        values = [float(v) for v in vector["values"]]
    elif name == "ZERO":
        values = [0.0] * d
    elif name == "EQUALS_SNAPSHOT":
        if snap is None:
            raise ValueError("EQUALS_SNAPSHOT needs the snapshot (WF-5.4-2)")
        values = list(snap)
    elif name in ("DENSE", "DENSE_RICE"):
        scale = vector["scale"]
        values = [c * scale for c in vector["codes"]]  # exact in binary64 [WF-5.5-1]
    elif name in ("SPARSE_BITMAP", "SPARSE_RICE"):
        values = [0.0] * d
        for index, code in zip(vector["indices"], vector["codes"], strict=True):
            values[index] = code * vector["scale"]  # [WF-5.6-1]
    elif name == "QSGD":
        norm, s = vector["norm"], vector["s"]
        values = [(level * norm) / s for level in vector["levels"]]  # order of [WF-5.7-1]
    else:
        raise ValueError(f"unknown encoding {name!r}")
    if relative:
        if name in ("ZERO", "EQUALS_SNAPSHOT"):
            raise ValueError("RELATIVE with ZERO or EQUALS_SNAPSHOT is invalid (WF-7.7-5)")
        if snap is None:
            raise ValueError("a RELATIVE model needs the snapshot (WF-7.7-2)")
        values = [a + b for a, b in zip(snap, values, strict=True)]
    return values


# ---------------------------------------------------------------------------------------------
# msgpack subset for control messages (section 7, WF-7-3 .. WF-7-10)
# ---------------------------------------------------------------------------------------------


class _MsgpackMap:
    """A decoded msgpack map: its (key, value) pairs in wire order, duplicates kept."""

    __slots__ = ("pairs",)

    def __init__(self) -> None:
        self.pairs: list[tuple[object, object]] = []


def _mp_malformed(detail: str) -> WireError:
    return _bad("MALFORMED_FRAME", "WF-7-6", detail)


_STR_OR_BIN_HEADERS = frozenset(range(0xA0, 0xC0)) | {0xC4, 0xC5, 0xC6, 0xD9, 0xDA, 0xDB}


def _msgpack_unpack(data: bytes, max_len: int) -> object:
    """Parse exactly one msgpack value (iteratively, so deep nesting cannot exhaust the stack)."""
    n = len(data)
    pos = 0
    # Each frame: [container, items left, is_map, expecting_key, pending_key]
    stack: list[list] = []

    def need(count: int) -> None:
        if pos + count > n:
            raise _mp_malformed("msgpack value truncated")

    while True:
        expecting_key = bool(stack) and stack[-1][2] and stack[-1][3]
        need(1)
        tag = data[pos]
        pos += 1
        if expecting_key and tag not in _STR_OR_BIN_HEADERS:
            raise _mp_malformed("a map key is neither str nor bin")
        container = None
        length = 0
        if tag <= 0x7F:
            value: object = tag
        elif tag >= 0xE0:
            value = tag - 0x100
        elif 0x80 <= tag <= 0x8F or tag in (0xDE, 0xDF):
            if tag <= 0x8F:
                length = tag & 0x0F
            else:
                size = 2 if tag == 0xDE else 4
                need(size)
                length = int.from_bytes(data[pos : pos + size], "big")
                pos += size
            container = _MsgpackMap()
        elif 0x90 <= tag <= 0x9F or tag in (0xDC, 0xDD):
            if tag <= 0x9F:
                length = tag & 0x0F
            else:
                size = 2 if tag == 0xDC else 4
                need(size)
                length = int.from_bytes(data[pos : pos + size], "big")
                pos += size
            container = []
        elif 0xA0 <= tag <= 0xBF or tag in (0xD9, 0xDA, 0xDB, 0xC4, 0xC5, 0xC6):
            if tag <= 0xBF:
                length = tag & 0x1F
            else:
                size = {0xD9: 1, 0xDA: 2, 0xDB: 4, 0xC4: 1, 0xC5: 2, 0xC6: 4}[tag]
                need(size)
                length = int.from_bytes(data[pos : pos + size], "big")
                pos += size
            if length > max_len:
                raise _mp_malformed("str/bin length above max_control_bytes")
            need(length)
            raw = data[pos : pos + length]
            pos += length
            if tag in (0xC4, 0xC5, 0xC6):
                value = bytes(raw)
            else:
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise _mp_malformed("str is not valid UTF-8") from None
        elif tag == 0xC0:
            value = None
        elif tag == 0xC2:
            value = False
        elif tag == 0xC3:
            value = True
        elif tag == 0xCA:
            need(4)
            value = struct.unpack_from(">f", data, pos)[0]
            pos += 4
        elif tag == 0xCB:
            need(8)
            value = struct.unpack_from(">d", data, pos)[0]
            pos += 8
        elif 0xCC <= tag <= 0xD3:
            size = 1 << ((tag - 0xCC) & 3)
            need(size)
            value = int.from_bytes(data[pos : pos + size], "big", signed=tag >= 0xD0)
            pos += size
        elif tag in (0xC7, 0xC8, 0xC9) or 0xD4 <= tag <= 0xD8:
            # [WF-7-6] any ext type, whatever its length (zero included), on the tag alone.
            raise _mp_malformed("msgpack ext types are refused")
        else:  # 0xC1, never used
            raise _mp_malformed(f"invalid msgpack byte 0x{tag:02x}")

        if container is not None:
            if length > max_len:
                raise _mp_malformed("array/map length above max_control_bytes")
            if len(stack) + 1 > MAX_MSGPACK_DEPTH:
                raise _mp_malformed("containers nested more than 1024 deep")
            # Every element takes at least one byte: no allocation beyond the body [WF-10-1].
            if length * (2 if isinstance(container, _MsgpackMap) else 1) > n - pos:
                raise _mp_malformed("msgpack container truncated")
            if length:
                stack.append([container, length, isinstance(container, _MsgpackMap), True, None])
                continue
            value = container
        # Attach the finished value to its parent(s).
        while True:
            if not stack:
                if pos != n:
                    raise _mp_malformed("bytes after the msgpack value")
                return value
            top = stack[-1]
            if top[2]:
                if top[3]:
                    top[4] = value
                    top[3] = False
                    break
                top[0].pairs.append((top[4], value))
                top[3] = True
            else:
                top[0].append(value)
            top[1] -= 1
            if top[1]:
                break
            stack.pop()
            value = top[0]


def _mp_pack(value: object, out: bytearray) -> None:
    """msgpack-python ``packb(use_bin_type=True)`` encoding of a validated value (WF-7-4)."""
    if value is None:
        out.append(0xC0)
    elif value is True:
        out.append(0xC3)
    elif value is False:
        out.append(0xC2)
    elif isinstance(value, int):
        if 0 <= value <= 0x7F or -32 <= value < 0:
            out += (value & 0xFF).to_bytes(1, "big")
        elif value > 0:
            for tag, size in ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8)):
                if value < 1 << (8 * size):
                    out.append(tag)
                    out += value.to_bytes(size, "big")
                    return
            raise _refuse("WF-7-4", "integer too large for msgpack")
        else:
            for tag, size in ((0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)):
                if value >= -(1 << (8 * size - 1)):
                    out.append(tag)
                    out += value.to_bytes(size, "big", signed=True)
                    return
            raise _refuse("WF-7-4", "integer too small for msgpack")
    elif isinstance(value, float):
        out.append(0xCB)
        out += struct.pack(">d", value)
    elif isinstance(value, str):
        try:
            raw = value.encode("utf-8")
        except UnicodeEncodeError:
            raise _refuse("WF-7-4", "string is not encodable as UTF-8") from None
        _mp_header(out, len(raw), 0xA0, 32, (0xD9, 0xDA, 0xDB))
        out += raw
    elif isinstance(value, (bytes, bytearray)):
        _mp_header(out, len(value), None, 0, (0xC4, 0xC5, 0xC6))
        out += value
    elif isinstance(value, (list, tuple)):
        _mp_header(out, len(value), 0x90, 16, (None, 0xDC, 0xDD))
        for item in value:
            _mp_pack(item, out)
    elif isinstance(value, dict):
        _mp_header(out, len(value), 0x80, 16, (None, 0xDE, 0xDF))
        for key, item in value.items():
            _mp_pack(key, out)
            _mp_pack(item, out)
    else:
        raise _refuse("WF-7-4", f"cannot encode {type(value).__name__} in msgpack")


def _mp_header(
    out: bytearray, length: int, fix: int | None, fix_limit: int, tags: tuple[int | None, int, int]
) -> None:
    """Shortest length header: fix form, then 8-, 16- and 32-bit lengths (WF-7-4)."""
    if fix is not None and length < fix_limit:
        out.append(fix | length)
    elif tags[0] is not None and length < 1 << 8:
        out.append(tags[0])
        out.append(length)
    elif length < 1 << 16:
        out.append(tags[1])
        out += length.to_bytes(2, "big")
    elif length < 1 << 32:
        out.append(tags[2])
        out += length.to_bytes(4, "big")
    else:
        raise _refuse("WF-7-4", "msgpack length too large")


def _is_int(value: object) -> bool:
    """msgpack integer: a bool or a float does not qualify (WF-7-7)."""
    return type(value) is int


def _config_error(rule: str, detail: str) -> WireError:
    return _bad("INVALID_CONFIG", rule, detail)


def _top_level_map(body: bytes, ctx: ReceiveContext) -> dict:
    """Steps shared by HELLO, WELCOME and CONFIG bodies (WF-7-5 .. WF-7-9)."""
    if len(body) > ctx.max_control_bytes:  # [WF-7-5] before parsing
        raise _bad("LIMIT_EXCEEDED", "WF-7-5", "control body longer than max_control_bytes")
    value = _msgpack_unpack(body, ctx.max_control_bytes)  # [WF-7-6]
    if not isinstance(value, _MsgpackMap):
        raise _config_error("WF-7-7", "control body is not a msgpack map")
    result: dict = {}
    for key, item in value.pairs:
        # [WF-7-8] top-level bin keys are unknown keys and are ignored, even one that spells a
        # known key: it neither supplies nor overrides that key.
        if isinstance(key, str):
            result[key] = item  # last occurrence wins [WF-7-9]
    return result


def _decode_encodings(value: object, rule: str) -> list[int]:
    if not isinstance(value, list):
        raise _config_error(rule, "encodings is not an array")
    for entry in value:
        if not _is_int(entry) or not 0 <= entry <= 15:  # [WF-6.2-1]
            raise _config_error("WF-6.2-1", f"encodings entry {entry!r} is not an int in 0..15")
    # [WF-7-10] an unsorted array, or one that repeats entries, is accepted and read as the set of
    # its entries (WF-6.2-1); the plain data holds that set as a sorted list.
    return sorted(set(value))


def _decode_hello(body: bytes, ctx: ReceiveContext) -> dict:
    m = _top_level_map(body, ctx)
    if m.get("magic") != HELLO_MAGIC or not isinstance(m.get("magic"), str):  # [WF-7.1-5] first
        raise _config_error("WF-7.1-5", 'magic is missing or not "aiodq"')
    lo, hi = m.get("min_version"), m.get("max_version")
    if not _is_int(lo) or not _is_int(hi):
        raise _config_error("WF-7.1-6", "min_version/max_version missing or not int")
    if not 1 <= lo <= hi <= 255:
        raise _config_error("WF-7.1-6", "versions violate 1 <= min <= max <= 255")
    if "encodings" not in m:
        raise _config_error("WF-7.1-6", "encodings missing")
    encodings = _decode_encodings(m["encodings"], "WF-7.1-6")
    name = m.get("name")
    if not isinstance(name, str):
        raise _config_error("WF-7.1-6", "name missing or not str")
    if len(name.encode("utf-8")) > 255:
        raise _config_error("WF-7.1-6", "name longer than 255 bytes")
    hello = {"type": "HELLO", "min_version": lo, "max_version": hi, "encodings": encodings, "name": name}
    # [WF-7.1-9] the optional sixth key, checked after the five required ones (NOTES N16).  Absent:
    # no claim.  Present (nil included, N15): an array of exactly two ints, 0 <= index < count <=
    # 2^31 - 1, or INVALID_CONFIG.  Only a str key counts (a bin key is ignored, WF-7-8) and the
    # last occurrence wins (WF-7-9), as for every key.
    if "shard" in m:
        hello["shard"] = _decode_shard(m["shard"])
    return hello


def _decode_shard(value: object) -> list[int]:
    """HELLO's ``shard`` value (WF-7.1-9): INVALID_CONFIG unless ``[index, count]`` with
    ``0 <= index < count <= 2^31 - 1``.  msgpack ints only: a bool, float or str does not qualify
    (WF-7-7); any valid msgpack int encoding is accepted (WF-7-10)."""
    if not isinstance(value, list):
        raise _config_error("WF-7.1-9", "shard is not an array")
    if len(value) != 2:
        raise _config_error("WF-7.1-9", f"shard has {len(value)} entries, not 2")
    index, count = value
    if not _is_int(index) or not _is_int(count):
        raise _config_error("WF-7.1-9", "shard entries must be ints")
    if not 0 <= index < count <= MAX_SHARD_COUNT:
        raise _config_error("WF-7.1-9", f"shard [{index}, {count}] violates 0 <= index < count <= 2^31 - 1")
    return [index, count]


def _decode_welcome(body: bytes, ctx: ReceiveContext) -> dict:
    m = _top_level_map(body, ctx)
    version, worker_id = m.get("version"), m.get("worker_id")
    if not _is_int(version) or not 1 <= version <= 255:
        raise _config_error("WF-7.2-5", "version missing, not int or outside 1..255")
    if not _is_int(worker_id) or not 0 <= worker_id <= MAX_VARINT:
        raise _config_error("WF-7.2-5", "worker_id missing, not int or outside 0..2^63-1")
    if "encodings" not in m:
        raise _config_error("WF-7.2-5", "encodings missing")
    encodings = _decode_encodings(m["encodings"], "WF-7.2-5")
    return {"type": "WELCOME", "version": version, "worker_id": worker_id, "encodings": encodings}


def _decode_config(body: bytes, ctx: ReceiveContext) -> dict:
    m = _top_level_map(body, ctx)
    dim = m.get("dim")
    if not _is_int(dim) or dim < 1:  # [WF-7.3-3]
        raise _config_error("WF-7.3-3", "dim missing, not int or below 1")
    if dim > ctx.max_dimension:  # [WF-7.3-4]
        raise _bad("LIMIT_EXCEEDED", "WF-7.3-4", f"dim {dim} exceeds max_dimension")
    algorithm = m.get("algorithm")  # [WF-7.3-5]
    if not isinstance(algorithm, str) or not algorithm:
        raise _config_error("WF-7.3-5", "algorithm missing, not str or empty")
    raw_params = m.get("params")
    if not isinstance(raw_params, _MsgpackMap):
        raise _config_error("WF-7.3-5", "params missing or not a map")
    params: dict = {}
    for key, value in raw_params.pairs:
        # [WF-7-8], [WF-7.3-5] every params key MUST be a str, whatever later occurrences say.  Only
        # bin can get here: any other key type already failed the msgpack parse (WF-7-6).
        if not isinstance(key, str):
            raise _config_error("WF-7.3-5", "params key is not a str")
        params[key] = value  # last occurrence wins [WF-7-9]; first position kept
    for key, value in params.items():
        if isinstance(value, float):
            if not math.isfinite(value):
                raise _config_error("WF-7.3-5", f"params[{key!r}] is not finite")
        elif not isinstance(value, (bool, int, str)):
            raise _config_error("WF-7.3-5", f"params[{key!r}] has a refused type")
    return {"type": "CONFIG", "dim": dim, "algorithm": algorithm, "params": params}


def _check_encodings_out(value: object, rule: str) -> list[int]:
    if not isinstance(value, (list, tuple, set, frozenset, range)):
        raise _refuse(rule, "encodings must be a collection of ints")
    for entry in value:
        _check_uint(entry, "encodings entry", 15, rule)
    return sorted(set(value))  # ascending, no duplicates [WF-7.1-3], [WF-7.2-2]


def _check_shard_out(value: object) -> list[int]:
    """A shard claim the local side may send (WF-7.1-9), else PROTOCOL_ERROR (WF-9-3)."""
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _refuse("WF-7.1-9", "shard must be [index, count]")
    index, count = value
    if not _is_int(index) or not _is_int(count) or not 0 <= index < count <= MAX_SHARD_COUNT:
        raise _refuse("WF-7.1-9", "shard must satisfy 0 <= index < count <= 2^31 - 1 (ints)")
    return [index, count]


def _encode_control(message: dict) -> bytes:
    kind = message["type"]
    if kind == "HELLO":
        lo = _check_uint(message.get("min_version"), "min_version", 255, "WF-7.1-2")
        hi = _check_uint(message.get("max_version"), "max_version", 255, "WF-7.1-2")
        if not 1 <= lo <= hi:
            raise _refuse("WF-7.1-2", "versions must satisfy 1 <= min <= max <= 255")
        if message.get("magic", HELLO_MAGIC) != HELLO_MAGIC:
            raise _refuse("WF-7.1-2", 'magic must be "aiodq"')
        name = message.get("name", "")
        if not isinstance(name, str):
            raise _refuse("WF-7.1-2", "name must be a str")
        try:
            name_size = len(name.encode("utf-8"))
        except UnicodeEncodeError:
            raise _refuse("WF-7.1-2", "name is not encodable as UTF-8") from None
        if name_size > 255:
            raise _refuse("WF-7.1-2", "name longer than 255 bytes")
        value = {
            "magic": HELLO_MAGIC,
            "min_version": lo,
            "max_version": hi,
            "encodings": _check_encodings_out(message.get("encodings"), "WF-7.1-3"),
            "name": name,
        }
        shard = message.get("shard")
        if shard is not None:  # [WF-7.1-2] followed by `shard` if the worker claims a shard
            value["shard"] = _check_shard_out(shard)
    elif kind == "WELCOME":
        value = {
            "version": _check_uint(message.get("version"), "version", 255, "WF-7.2-2"),
            "worker_id": _check_uint(message.get("worker_id"), "worker_id"),
            "encodings": _check_encodings_out(message.get("encodings"), "WF-7.2-2"),
        }
        if value["version"] < 1:
            raise _refuse("WF-6.1-1", "version must be in 1..255")
    else:
        dim = _check_uint(message.get("dim"), "dim", MAX_VARINT, "WF-7.3-1")
        if dim < 1:
            raise _refuse("WF-7.3-1", "dim must be at least 1")
        algorithm = message.get("algorithm")
        if not isinstance(algorithm, str) or not algorithm:
            raise _refuse("WF-7.3-1", "algorithm must be a non-empty str")
        params = message.get("params", {})
        if not isinstance(params, dict):
            raise _refuse("WF-7.3-1", "params must be a dict")
        for key, item in params.items():
            if not isinstance(key, str):
                raise _refuse("WF-7.3-1", "params keys must be str")
            if isinstance(item, float) and not math.isfinite(item):
                raise _refuse("WF-7.3-1", f"params[{key!r}] is not finite")
            if not isinstance(item, (bool, int, float, str)):
                raise _refuse("WF-7.3-1", f"params[{key!r}] must be bool, int, float or str")
        value = {"dim": dim, "algorithm": algorithm, "params": dict(params)}
    out = bytearray()
    _mp_pack(value, out)
    return bytes(out)


# ---------------------------------------------------------------------------------------------
# Message bodies (section 7)
# ---------------------------------------------------------------------------------------------


def _read_reason(r: _Reader, ctx: ReceiveContext, kind: str) -> str:
    raw = r.rest()
    if len(raw) > ctx.max_reason_bytes:  # [WF-7.10-3] before the UTF-8 check
        raise _bad("LIMIT_EXCEEDED", "WF-7.10-3", f"{kind} reason longer than max_reason_bytes")
    try:
        return raw.decode("utf-8")  # [WF-4.1-5]
    except UnicodeDecodeError:
        raise _bad("MALFORMED_FRAME", "WF-7.10-3", f"{kind} reason is not valid UTF-8") from None


def _read_code(r: _Reader, kind: str) -> int:
    if r.remaining() < 2:
        raise _bad("MALFORMED_FRAME", "WF-7.10-3", f"{kind} code truncated")
    (code,) = struct.unpack_from("<H", r.buf, r.pos)
    r.pos += 2
    return code  # any value 0..65535 is accepted [WF-7.10-4], [WF-9-1]


def check_frame_length(length: int, ctx: ReceiveContext) -> None:
    """Receive step 1: the body length against ``ctx.frame_limit()``: ``max_frame_bytes`` (WF-3-3),
    the handshake frame limit while ``ctx.before_handshake`` is set (WF-10-3), or the session frame
    limit once ``ctx.session_limit`` is set and the dimension is known (WF-10-5).

    A length above ``max_frame_bytes`` itself is reported as WF-3-3 in every case; one that only
    the handshake or the session frame limit forbids is reported as WF-10-3 or WF-10-5."""
    if length > ctx.max_frame_bytes:
        raise _bad(
            "FRAME_TOO_LARGE", "WF-3-3", f"body length {length} exceeds max_frame_bytes {ctx.max_frame_bytes}"
        )
    if ctx.before_handshake and length > handshake_frame_limit(ctx):  # [WF-10-3]
        raise _bad(
            "FRAME_TOO_LARGE",
            "WF-10-3",
            f"body length {length} exceeds the handshake frame limit {handshake_frame_limit(ctx)}",
        )
    limit = ctx.frame_limit()
    if length > limit:  # [WF-10-5]: only the session frame limit can still be smaller
        raise _bad(
            "FRAME_TOO_LARGE",
            "WF-10-5",
            f"body length {length} exceeds the session frame limit {limit} (d = {ctx.dimension})",
        )


def check_message_type(msg_type: int) -> str:
    """Receive step 2: the type byte must be 0x01..0x0E (WF-7-1, WF-12-4); returns the name."""
    name = TYPE_NAMES.get(msg_type)
    if name is None:
        raise _bad("UNKNOWN_MESSAGE_TYPE", "WF-12-4", f"message type 0x{msg_type:02x}")
    return name


def expected_header_version(name: str, negotiated: int | None) -> int:
    """The header version a received frame must carry (WF-6.1-2, WF-6.1-7, WF-6.1-8)."""
    if name in ("HELLO", "WELCOME") or name in AUTH_TYPES or negotiated is None:
        return 1
    return negotiated


def decode_body(msg_type: int, flags: int, body: bytes, ctx: ReceiveContext) -> dict:
    """Receive steps 6 (flags, WF-3-6) and 7 (the body, fields in wire order) of WF-7-1."""
    name = check_message_type(msg_type)
    if flags & ~DEFINED_FLAGS[name]:
        raise _bad("MALFORMED_FRAME", "WF-3-6", f"undefined flag bit set on {name}")
    body = bytes(body)
    if name == "HELLO":
        return _decode_hello(body, ctx)
    if name == "WELCOME":
        return _decode_welcome(body, ctx)
    if name == "CONFIG":
        return _decode_config(body, ctx)
    r = _Reader(body)
    if name in ("SNAPSHOT", "FULL_GRADIENT"):  # [WF-7.4-4], [WF-7.6-2]
        epoch = _read_varint(r)
        return {"type": name, "epoch": epoch, "vector": _decode_vector(r, name, ctx)}
    if name == "SNAPSHOT_GRADIENT":  # [WF-7.5-2]
        epoch = _read_varint(r)
        samples = _read_varint(r)
        correct = _read_varint(r)
        if r.remaining() < 8:
            raise _bad("MALFORMED_FRAME", "WF-4.1-3", "loss truncated")
        (loss,) = struct.unpack_from("<d", body, r.pos)
        r.pos += 8
        if not math.isfinite(loss):
            raise _bad("NON_FINITE", "WF-4.1-4", "loss is NaN or infinite")
        return {
            "type": name,
            "epoch": epoch,
            "samples": samples,
            "correct": correct,
            "loss": loss,
            "vector": _decode_vector(r, name, ctx),
        }
    if name in ("MODEL", "GRADIENT"):  # [WF-7.7-6], [WF-7.8-3]
        epoch = _read_varint(r)
        version = _read_varint(r)
        vector = _decode_vector(r, name, ctx)
        if name == "GRADIENT":
            return {"type": name, "epoch": epoch, "version": version, "vector": vector}
        relative = bool(flags & FLAG_RELATIVE)
        if relative and vector["encoding"] in ("ZERO", "EQUALS_SNAPSHOT"):
            raise _bad("INVALID_PAYLOAD", "WF-7.7-6", "RELATIVE MODEL with ZERO/EQUALS_SNAPSHOT")
        return {"type": name, "epoch": epoch, "version": version, "relative": relative, "vector": vector}
    if name == "HEARTBEAT":
        if body:
            raise _bad("MALFORMED_FRAME", "WF-7.9-2", "HEARTBEAT body is not empty")
        return {"type": name}
    if name == "ERROR":  # [WF-7.10-3]
        code = _read_code(r, name)
        epoch = _read_varint(r)
        version = _read_varint(r)
        return {
            "type": name,
            "code": code,
            "epoch": epoch,
            "version": version,
            "reason": _read_reason(r, ctx, name),
        }
    if name == "CLOSE":  # [WF-7.11-5]
        code = _read_code(r, name)
        return {"type": name, "code": code, "reason": _read_reason(r, ctx, name)}
    if name == "AUTH_CHALLENGE":
        if len(body) != NONCE_SIZE:
            raise _bad("MALFORMED_FRAME", "WF-7.12-3", "AUTH_CHALLENGE body is not 32 bytes")
        return {"type": name, "nonce": body}
    if name == "AUTH_RESPONSE":
        if len(body) != NONCE_SIZE + MAC_SIZE:
            raise _bad("MALFORMED_FRAME", "WF-7.13-2", "AUTH_RESPONSE body is not 64 bytes")
        return {"type": name, "nonce": body[:NONCE_SIZE], "mac": body[NONCE_SIZE:]}
    if len(body) != MAC_SIZE:  # AUTH_CONFIRM
        raise _bad("MALFORMED_FRAME", "WF-7.14-1", "AUTH_CONFIRM body is not 32 bytes")
    return {"type": name, "mac": body}


def decode_frame(
    version: int, msg_type: int, flags: int, body: bytes, ctx: ReceiveContext | None = None
) -> dict:
    """Decode one frame: steps 1, 2, 3 (only if ``ctx.header_version`` is set), 6 and 7 of WF-7-1."""
    ctx = ctx or ReceiveContext()
    check_frame_length(len(body), ctx)
    name = check_message_type(msg_type)
    if ctx.header_version is not None:
        expected = expected_header_version(name, ctx.header_version)
        if version != expected:
            raise _bad("UNSUPPORTED_VERSION", "WF-6.1-7", f"header version {version}, expected {expected}")
    return decode_body(msg_type, flags, body, ctx)


# ---------------------------------------------------------------------------------------------
# Framing (section 3)
# ---------------------------------------------------------------------------------------------


class RawFrame(NamedTuple):
    """One complete frame as split from the stream."""

    version: int
    msg_type: int
    flags: int
    body: bytes


class FrameSplitter:
    """Splits a byte stream into frames in stream order (WF-3-1, WF-3-4)."""

    def __init__(self, ctx: ReceiveContext | None = None) -> None:
        self.ctx = ctx or ReceiveContext()
        self._buf = bytearray()
        self._header_checked = False  # the buffered frame's header passed step 1 [WF-3-3]

    def push(self, data: bytes) -> None:
        """Append received bytes."""
        self._buf += data

    def pop(self) -> RawFrame | None:
        """The next complete frame, or None.  The body length is checked against
        ``self.ctx.frame_limit()`` as soon as the header is complete, before waiting for the body
        (WF-3-3, WF-10-3, WF-10-5).  The owner may replace ``self.ctx`` between calls (a connection
        does when its handshake completes and when the session's dimension becomes known).  Each
        header is checked once, against the limit in force when the splitter first sees it whole: a
        frame whose header passed is not refused later by a smaller limit (NOTES N20)."""
        if len(self._buf) < HEADER_SIZE:
            return None
        version, msg_type, flags, length = struct.unpack_from("<BBBI", self._buf, 0)
        if not self._header_checked:
            check_frame_length(length, self.ctx)
            self._header_checked = True
        if len(self._buf) < HEADER_SIZE + length:
            return None
        body = bytes(self._buf[HEADER_SIZE : HEADER_SIZE + length])
        del self._buf[: HEADER_SIZE + length]
        self._header_checked = False
        return RawFrame(version, msg_type, flags, body)

    def partial(self) -> bool:
        """True when part of a frame is buffered (WF-3-5)."""
        return bool(self._buf)

    def clear(self) -> None:
        """Drop everything buffered."""
        self._buf.clear()
        self._header_checked = False


class StreamDecoder:
    """Incremental stand-alone decoder: ``feed`` bytes, get messages; ``end`` at end of stream.

    With ``stop_at_close=True``, the first CLOSE ends the stream for the decoder: the bytes after
    it, whole frames or part of one, are ignored and never make it fail (WF-3-5, WF-7.11-4)."""

    def __init__(self, ctx: ReceiveContext | None = None, *, stop_at_close: bool = False) -> None:
        self.ctx = ctx or ReceiveContext()
        self._splitter = FrameSplitter(self.ctx)
        self._stop_at_close = stop_at_close
        self.closed = False

    def feed(self, data: bytes) -> list[dict]:
        """Decode every frame completed by ``data``; raise ``WireError`` at the first bad one."""
        if self.closed:
            return []  # [WF-7.11-4]
        self._splitter.push(data)
        out = []
        while True:
            frame = self._splitter.pop()
            if frame is None:
                return out
            message = decode_frame(*frame, ctx=self.ctx)
            out.append(message)
            if self._stop_at_close and message["type"] == "CLOSE":
                self.closed = True
                self._splitter.clear()  # [WF-3-5], [WF-7.11-4]
                return out

    def end(self) -> None:
        """End of stream: MALFORMED_FRAME if part of a frame is buffered (WF-3-5)."""
        if self._splitter.partial():
            raise _bad("MALFORMED_FRAME", "WF-3-5", "stream ended inside a frame")


def decode_stream(
    data: bytes, ctx: ReceiveContext | None = None, *, stop_at_close: bool = False
) -> list[dict]:
    """Decode a whole stream (its end is the end of the stream, WF-3-5) into messages."""
    decoder = StreamDecoder(ctx, stop_at_close=stop_at_close)
    messages = decoder.feed(data)
    decoder.end()
    return messages


# ---------------------------------------------------------------------------------------------
# Encoding messages
# ---------------------------------------------------------------------------------------------


def _encode_reason(reason: object) -> bytes:
    if not isinstance(reason, str):
        raise _refuse("WF-4.1-5", "reason must be a str")
    try:
        return reason.encode("utf-8")
    except UnicodeEncodeError:
        raise _refuse("WF-4.1-5", "reason is not encodable as UTF-8") from None


def _exact_bytes(value: object, size: int, what: str, rule: str) -> bytes:
    if not isinstance(value, (bytes, bytearray)) or len(value) != size:
        raise _refuse(rule, f"{what} must be {size} bytes")
    return bytes(value)


def encode_body(message: dict) -> tuple[int, int, bytes]:
    """``(type code, flags, body)`` of a message, canonical (WF-5-2, WF-7-4, WF-7-11)."""
    if not isinstance(message, dict) or message.get("type") not in MESSAGE_TYPES:
        raise _refuse("WF-12-4", "message must be a dict with a known 'type'")
    name = message["type"]
    flags = 0
    if name in CONTROL_TYPES:
        body = _encode_control(message)
    elif name in ("SNAPSHOT", "FULL_GRADIENT"):
        body = encode_varint(message.get("epoch")) + encode_vector(message.get("vector"), name)
    elif name == "SNAPSHOT_GRADIENT":
        loss = _as_float(message.get("loss"), "loss")
        if not math.isfinite(loss):
            raise _refuse("WF-4.1-4", "loss must be finite")
        body = (
            encode_varint(message.get("epoch"))
            + encode_varint(message.get("samples"))
            + encode_varint(message.get("correct"))
            + struct.pack("<d", loss)
            + encode_vector(message.get("vector"), name)
        )
    elif name in ("MODEL", "GRADIENT"):
        vector = message.get("vector")
        if name == "MODEL" and message.get("relative", False):
            flags = FLAG_RELATIVE
            if isinstance(vector, dict) and vector.get("encoding") in ("ZERO", "EQUALS_SNAPSHOT"):
                raise _refuse("WF-7.7-5", "a RELATIVE MODEL cannot carry ZERO or EQUALS_SNAPSHOT")
        body = (
            encode_varint(message.get("epoch"))
            + encode_varint(message.get("version"))
            + encode_vector(vector, name)
        )
    elif name == "HEARTBEAT":
        body = b""
    elif name == "ERROR":
        body = (
            struct.pack("<H", _check_uint(message.get("code"), "code", 65535, "WF-7.10-4"))
            + encode_varint(message.get("epoch", 0))
            + encode_varint(message.get("version", 0))
            + _encode_reason(message.get("reason", ""))
        )
    elif name == "CLOSE":
        body = struct.pack(
            "<H", _check_uint(message.get("code"), "code", 65535, "WF-7.10-4")
        ) + _encode_reason(message.get("reason", ""))
    elif name == "AUTH_CHALLENGE":
        body = _exact_bytes(message.get("nonce"), NONCE_SIZE, "nonce", "WF-7.12-1")
    elif name == "AUTH_RESPONSE":
        body = _exact_bytes(message.get("nonce"), NONCE_SIZE, "nonce", "WF-7.13-1") + _exact_bytes(
            message.get("mac"), MAC_SIZE, "mac", "WF-7.13-1"
        )
    else:
        body = _exact_bytes(message.get("mac"), MAC_SIZE, "mac", "WF-7.14-1")
    return MESSAGE_TYPES[name], flags, body


def encode_message(message: dict, header_version: int = 1) -> bytes:
    """The canonical frame (header + body) of ``message`` (WF-3-1, WF-3-2)."""
    if not isinstance(header_version, int) or not 1 <= header_version <= 255:
        raise _refuse("WF-6.1-1", "header version must be in 1..255")
    msg_type, flags, body = encode_body(message)
    if len(body) > 2**32 - 1:
        raise _refuse("WF-3-2", "body longer than a u32 length allows")
    return struct.pack("<BBBI", header_version, msg_type, flags, len(body)) + body
