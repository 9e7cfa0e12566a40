"""An independent decoder for the aiodq wire format, version 1, written from docs/wire-format.md alone.

Nothing here comes from the ``aiodq`` package: only the standard library is used, and the
msgpack bodies are parsed by a small hand-written parser so that every rule of [WF-7-6] is
visible.  The code is deliberately plain (bit streams are read one bit at a time) and cites the
requirement identifiers of the specification in its comments.

Entry points:

- :func:`decode_stream` splits a byte stream into frames ([WF-3-1] .. [WF-3-5]) and decodes each;
- :func:`decode_frame` decodes one frame given its header fields and its body (receive procedure
  [WF-7-1], steps 2, 3 (optional), 6 and 7);
- :func:`dense_values` turns a decoded vector into its coordinates ([WF-5.3-1], [WF-5.5-1],
  [WF-5.6-1], [WF-5.7-1], [WF-5.8-1]).

Every failure raises :class:`WireError`, whose ``code`` is the *name* of the error code of
section 9 (for example ``"MALFORMED_FRAME"``).

The result is plain Python data::

    {"message": "GRADIENT", "header": {"version": 1, "type": 8, "flags": 0, "length": 11},
     "epoch": 1, "version": 7,
     "vector": {"encoding": "DENSE", "dim": 5, "bits": 4, "scale": 0.25, "codes": [1, -2, 7, -8, 0]}}

Vectors are dicts with ``encoding`` and ``dim`` and, by encoding: ``values`` (RAW_F32/RAW_F64,
Python floats), ``bits``/``scale``/``codes`` (DENSE, plus ``rice_k`` for DENSE_RICE),
``bits``/``scale``/``indices``/``codes`` (sparse, plus ``rice_k`` for SPARSE_RICE),
``s``/``norm``/``levels`` (QSGD).

The AUTH messages of the shared-secret handshake (7.12 .. 7.14) decode to their raw byte fields:
``nonce`` (AUTH_CHALLENGE), ``nonce`` and ``mac`` (AUTH_RESPONSE), ``mac`` (AUTH_CONFIRM), each
32 ``bytes``.  Verifying a proof needs the secret and the nonces of both sides, so it belongs to
the connection; :func:`worker_proof` and :func:`master_proof` compute the proofs as 7.12 defines
them (HMAC-SHA256 from the standard library) for callers that hold the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import struct
from dataclasses import dataclass
from typing import Any

# -- registries -------------------------------------------------------------------------------------

#: Message types, section 7 (table), 0x01..0x0E.  Every other type (0x00 and 0x0F..0xFF) is
#: unknown: the receive procedure [WF-7-1] step 2 checks "the type is not 0x01..0x0E".  (The text of
#: [WF-12-4] still says "0x0C..0xFF are unassigned"; the table of section 7, the frame table of
#: section 3 and [WF-7-1] step 2 all define 0x0C..0x0E, and they are what this decoder follows.)
MESSAGE_TYPES: dict[int, str] = {
    0x01: "HELLO",
    0x02: "WELCOME",
    0x03: "CONFIG",
    0x04: "SNAPSHOT",
    0x05: "SNAPSHOT_GRADIENT",
    0x06: "FULL_GRADIENT",
    0x07: "MODEL",
    0x08: "GRADIENT",
    0x09: "HEARTBEAT",
    0x0A: "ERROR",
    0x0B: "CLOSE",
    0x0C: "AUTH_CHALLENGE",  # 7.12
    0x0D: "AUTH_RESPONSE",  # 7.13
    0x0E: "AUTH_CONFIRM",  # 7.14
}

#: The shared-secret handshake messages (7.12 .. 7.14).  They always carry header version 1
#: [WF-6.1-8], like HELLO and WELCOME [WF-6.1-2].
AUTH_MESSAGES = frozenset({"AUTH_CHALLENGE", "AUTH_RESPONSE", "AUTH_CONFIRM"})
#: Messages whose header version is 1 whatever has been negotiated [WF-6.1-2], [WF-6.1-8].
VERSION_1_MESSAGES = frozenset({"HELLO", "WELCOME"}) | AUTH_MESSAGES
#: Fixed body layout of the AUTH messages: (field name, bytes) in wire order [WF-7-11].
#: AUTH_CHALLENGE: the master's nonce Nm [WF-7.12-3]; AUTH_RESPONSE: the worker's nonce Nw then
#: its proof Pw [WF-7.13-2]; AUTH_CONFIRM: the master's proof Pm [WF-7.14-1].
AUTH_FIELDS: dict[str, tuple[tuple[str, int], ...]] = {
    "AUTH_CHALLENGE": (("nonce", 32),),
    "AUTH_RESPONSE": (("nonce", 32), ("mac", 32)),
    "AUTH_CONFIRM": (("mac", 32),),
}
AUTH_RULES = {"AUTH_CHALLENGE": "WF-7.12-3", "AUTH_RESPONSE": "WF-7.13-2", "AUTH_CONFIRM": "WF-7.14-1"}

#: Vector encodings, the high nibble of the descriptor [WF-5.2-1] (table of 5.2); 9..15 are
#: reserved [WF-12-2], [WF-5.2-3] step 2.
ENCODINGS: dict[int, str] = {
    0: "RAW_F32",
    1: "RAW_F64",
    2: "ZERO",
    3: "EQUALS_SNAPSHOT",
    4: "DENSE",
    5: "SPARSE_BITMAP",
    6: "SPARSE_RICE",
    7: "QSGD",
    8: "DENSE_RICE",  # 5.8, added to version 1 under [WF-12-2]
}
ALL_ENCODINGS: frozenset[str] = frozenset(ENCODINGS.values())

#: The quantized encodings, whose low nibble is ``bits - 1`` [WF-5.2-1].
QUANTIZED = frozenset({"DENSE", "SPARSE_BITMAP", "SPARSE_RICE", "DENSE_RICE"})

_RAW = frozenset({"RAW_F32", "RAW_F64"})
#: Which message may carry which encoding [WF-6.2-3] (table).  DENSE_RICE goes wherever DENSE
#: does: MODEL (with or without RELATIVE) and GRADIENT [WF-5.8-6].  (The field diagrams of 7.7 and
#: 7.8, and the sentence "Here `v` MUST be RAW_F32, RAW_F64 or DENSE" of [WF-7.7-2], do not list
#: DENSE_RICE; that is a sender rule, and the receiver follows the table and [WF-5.8-6].)
ALLOWED_ENCODINGS: dict[str, frozenset[str]] = {
    "SNAPSHOT": _RAW,
    "SNAPSHOT_GRADIENT": _RAW,
    "FULL_GRADIENT": _RAW,
    "MODEL": _RAW | {"ZERO", "EQUALS_SNAPSHOT", "DENSE", "DENSE_RICE"},
    "GRADIENT": _RAW | {"ZERO", "DENSE", "SPARSE_BITMAP", "SPARSE_RICE", "QSGD", "DENSE_RICE"},
}

#: The flag bits each type defines [WF-3-6]: only MODEL has one, RELATIVE (0x01) [WF-7.7-2].
DEFINED_FLAGS: dict[str, int] = {name: 0 for name in MESSAGE_TYPES.values()} | {"MODEL": 0x01}
RELATIVE = 0x01

#: Error code names and values, section 9.
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
}

HEADER_BYTES = 7  # [WF-3-2]
MAX_VARINT_BYTES = 9  # [WF-4.2-3]
MAX_U63 = 2**63 - 1  # [WF-4.2-5]
MAX_RICE_K = 16  # [WF-5.6-5]
MAX_QSGD_S = 65535  # [WF-5.7-2]
#: Containers nested more than this deep fail with MALFORMED_FRAME; the top-level map is level 1
#: [WF-7-6].
MAX_MSGPACK_DEPTH = 1024


#: The ASCII labels of the two proofs, 15 bytes each, no terminator (7.12).
WORKER_LABEL = b"aiodq-v1 worker"
MASTER_LABEL = b"aiodq-v1 master"
NONCE_BYTES = 32
MAC_BYTES = 32


def worker_proof(secret: bytes, master_nonce: bytes, worker_nonce: bytes) -> bytes:
    """``Pw = HMAC(K, "aiodq-v1 worker" || Nm || Nw)`` with HMAC-SHA256 (7.12)."""
    return hmac.new(secret, WORKER_LABEL + master_nonce + worker_nonce, hashlib.sha256).digest()


def master_proof(secret: bytes, master_nonce: bytes, worker_nonce: bytes) -> bytes:
    """``Pm = HMAC(K, "aiodq-v1 master" || Nm || Nw)`` with HMAC-SHA256 (7.12)."""
    return hmac.new(secret, MASTER_LABEL + master_nonce + worker_nonce, hashlib.sha256).digest()


def proof_matches(expected: bytes, received: bytes) -> bool:
    """The comparison of [WF-7.13-2] and [WF-7.14-1]: its time does not depend on where they differ."""
    return hmac.compare_digest(expected, received)


class WireError(Exception):
    """A failure of the receive procedure: ``code`` is the name of a section 9 error code."""

    def __init__(self, code: str, message: str, rule: str) -> None:
        assert code in ERROR_CODES, code
        super().__init__(f"{code} [{rule}]: {message}")
        self.code = code
        self.rule = rule


def fail(code: str, rule: str, message: str) -> WireError:
    """Build the error to raise (``raise fail(...)`` keeps the control flow visible)."""
    return WireError(code, message, rule)


@dataclass(frozen=True)
class Context:
    """What the receiver knows.

    ``dim`` is the configured dimension (``None``: no CONFIG seen yet, so the step 8 of
    [WF-5.2-3] cannot run); ``encodings`` are the encoding names the receiver announced
    [WF-6.2-5]; the four limits are those of section 10 with their defaults.

    ``header_version`` enables the connection-level version check of [WF-6.1-2], [WF-6.1-7] and
    [WF-6.1-8]: ``None`` skips it, otherwise it is the version every frame other than HELLO,
    WELCOME and the AUTH messages must carry (1 before negotiation).

    With ``dim=None`` and ``header_version=None`` the decoder makes exactly the checks that the
    note under [WF-5.2-4] gives the reference's stand-alone ``decode_message``: no step 8 of
    [WF-5.2-3], and none of the header version, role, state and sequencing checks (steps 3-5 and 8
    of [WF-7-1]).
    """

    dim: int | None = None
    encodings: frozenset[str] = ALL_ENCODINGS
    max_frame_bytes: int = 2**28
    max_dimension: int = 2**24
    max_control_bytes: int = 2**16
    max_reason_bytes: int = 1024
    header_version: int | None = None


# -- primitive reading ---------------------------------------------------------------------------------


class Body:
    """A cursor over a frame body."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int, what: str, code: str = "MALFORMED_FRAME", rule: str = "WF-4.1-3") -> bytes:
        """The next ``count`` bytes, or fail: a field that runs past the end [WF-4.1-3]."""
        if self.remaining() < count:
            raise fail(code, rule, f"{what}: needs {count} bytes, {self.remaining()} left")
        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        # [WF-4.1-1] unsigned little-endian
        low, high = self.take(2, what)
        return low | high << 8

    def f32(self, what: str) -> float:
        # [WF-4.1-2] IEEE 754 binary32, little-endian
        return float(struct.unpack("<f", self.take(4, what))[0])

    def f64(self, what: str) -> float:
        return float(struct.unpack("<d", self.take(8, what))[0])

    def varint(self, what: str) -> int:
        """Unsigned LEB128, shortest form, at most 9 bytes [WF-4.2-1] .. [WF-4.2-4]."""
        value = 0
        for index in range(MAX_VARINT_BYTES):
            if self.remaining() < 1:
                raise fail("MALFORMED_FRAME", "WF-4.2-4", f"{what}: varint cut off by the end of the body")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << (7 * index)
            if byte & 0x80 == 0:
                if index >= 1 and byte == 0x00:
                    raise fail("MALFORMED_FRAME", "WF-4.2-2", f"{what}: varint not in shortest form")
                return value
        raise fail("MALFORMED_FRAME", "WF-4.2-3", f"{what}: the 9th varint byte has bit 7 set")


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


# -- bit streams (5.1) -----------------------------------------------------------------------------------


def bit(data: bytes, k: int) -> int:
    """Stream bit ``k`` is bit ``k mod 8`` of byte ``k div 8`` [WF-5.1-1]."""
    return (data[k // 8] >> (k % 8)) & 1


def read_unsigned(data: bytes, start: int, width: int) -> int:
    """Bit ``j`` of the code is stream bit ``start + j`` [WF-5.1-2]."""
    return sum(bit(data, start + j) << j for j in range(width))


def to_signed(value: int, width: int) -> int:
    """``width``-bit two's complement [WF-5.1-4]."""
    return value - (1 << width) if value >= 1 << (width - 1) else value


def padding_is_zero(data: bytes, used_bits: int) -> bool:
    """Every bit from ``used_bits`` to the end of ``data`` is zero [WF-5.1-3]."""
    return all(bit(data, k) == 0 for k in range(used_bits, 8 * len(data)))


def unpack_codes(data: bytes, count: int, width: int, *, signed: bool) -> list[int]:
    """``count`` codes of ``width`` bits [WF-5.1-2]; zero codes or width 0 is empty [WF-5.1-5]."""
    codes = [read_unsigned(data, i * width, width) for i in range(count)]
    return [to_signed(c, width) for c in codes] if signed else codes


def count_ones(data: bytes) -> int:
    return sum(bit(data, k) for k in range(8 * len(data)))


# -- vector payloads (section 5) ---------------------------------------------------------------------------


def _check_scale(body: Body, what: str) -> float:
    """A binary32 scale or norm: [WF-5.5-2], [WF-5.7-2], [WF-4.1-4]."""
    value = body.f32(what)  # truncated: MALFORMED_FRAME [WF-5.5-3]
    if not math.isfinite(value):
        raise fail("NON_FINITE", "WF-5.5-2", f"{what} is {value}")
    if value <= 0.0:  # covers 0.0, -0.0 and negative values
        raise fail("INVALID_PAYLOAD", "WF-5.5-2", f"{what} {value!r} is not greater than zero")
    return value


def gaps_of(indices: list[int]) -> list[int]:
    """``g_0 = i_0``, ``g_j = i_j - i_(j-1) - 1`` [WF-5.6-4]."""
    return [index - (indices[j - 1] + 1 if j else 0) for j, index in enumerate(indices)]


def rice_block_size(gaps: list[int], k: int) -> int:
    """``R(k) = 1 + ceil(n k / 8) + ceil((sum_j floor(g_j / 2^k) + n) / 8)`` [WF-5.6-6]."""
    n = len(gaps)
    return 1 + ceil_div(n * k, 8) + ceil_div(sum(g >> k for g in gaps) + n, 8)


def best_rice_k(gaps: list[int]) -> tuple[int, int]:
    """``(k*, R(k*))``: the smallest k in 0..16 with the smallest ``R(k)`` [WF-5.6-7]."""
    sizes = [rice_block_size(gaps, k) for k in range(MAX_RICE_K + 1)]
    best = min(sizes)
    return sizes.index(best), best


def _decode_raw(body: Body, name: str, d: int) -> dict[str, Any]:
    width, fmt = (4, "<f") if name == "RAW_F32" else (8, "<d")
    # [WF-5.3-2] exactly 4d or 8d bytes follow the dimension
    if body.remaining() != width * d:
        raise fail(
            "MALFORMED_FRAME", "WF-5.3-2", f"{name} needs {width * d} bytes, {body.remaining()} follow"
        )
    raw = body.rest()
    values = [float(struct.unpack(fmt, raw[i * width : (i + 1) * width])[0]) for i in range(d)]
    # [WF-5.3-3], [WF-4.1-4] after the length checks: every coordinate finite
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise fail("NON_FINITE", "WF-5.3-3", f"coordinate {i} is {value}")
    return {"encoding": name, "dim": d, "values": values}


def _decode_dense(body: Body, d: int, bits: int) -> dict[str, Any]:
    # [WF-5.5-3] in order: truncated scale, the scale, short codes, padding, trailing bytes, all zero
    scale = _check_scale(body, "DENSE scale")
    size = ceil_div(d * bits, 8)
    packed = body.take(size, "DENSE codes")  # MALFORMED_FRAME when short
    if not padding_is_zero(packed, d * bits):
        raise fail("INVALID_PAYLOAD", "WF-5.1-3", "DENSE code padding bit set")
    if body.remaining():
        raise fail("MALFORMED_FRAME", "WF-5.5-3", f"{body.remaining()} bytes after the DENSE codes")
    codes = unpack_codes(packed, d, bits, signed=True)
    if not any(codes):
        # [WF-5.5-4], [WF-5.4-4] the zero vector is ZERO
        raise fail("INVALID_PAYLOAD", "WF-5.5-4", "DENSE codes all zero")
    return {"encoding": "DENSE", "dim": d, "bits": bits, "scale": scale, "codes": codes}


def zigzag(code: int) -> int:
    """Code ``c`` is sent as ``z = 2c`` if ``c >= 0`` and ``z = -2c - 1`` if ``c < 0`` [WF-5.8-2]."""
    return 2 * code if code >= 0 else -2 * code - 1


def unzigzag(z: int) -> int:
    """The inverse of [WF-5.8-2]: ``c = z/2`` for even ``z`` and ``c = -(z + 1)/2`` for odd ``z``."""
    return z // 2 if z % 2 == 0 else -((z + 1) // 2)


def dense_rice_block_size(values: list[int], k: int) -> int:
    """``R(k) = 1 + ceil(d k / 8) + ceil((sum_i floor(z_i / 2^k) + d) / 8)`` [WF-5.8-4]."""
    d = len(values)
    return 1 + ceil_div(d * k, 8) + ceil_div(sum(z >> k for z in values) + d, 8)


def best_dense_rice_k(values: list[int], bits: int) -> tuple[int, int]:
    """``(k*, R(k*))``: the smallest k in 0..b-1 for which ``R(k)`` is smallest [WF-5.8-4]."""
    sizes = [dense_rice_block_size(values, k) for k in range(bits)]
    best = min(sizes)
    return sizes.index(best), best


def read_unary(data: bytes, count: int) -> list[int]:
    """The first ``count`` unary code words: ``q`` zero bits, then one 1 bit [WF-5.6-5], [WF-5.8-3]."""
    words: list[int] = []
    run = 0
    for position in range(8 * len(data)):
        if len(words) == count:
            break
        if bit(data, position):
            words.append(run)
            run = 0
        else:
            run += 1
    return words


def _decode_dense_rice(body: Body, d: int, bits: int) -> dict[str, Any]:
    # [WF-5.8-5] receiving, in order
    scale = _check_scale(body, "DENSE_RICE scale")  # step 1: truncated, then as in [WF-5.5-2]
    k = body.u8("DENSE_RICE Rice parameter k")  # step 2: missing -> MALFORMED_FRAME
    if k >= bits:  # step 3 ([WF-5.8-3]: k is in 0..b-1)
        raise fail("INVALID_PAYLOAD", "WF-5.8-5", f"k = {k} >= b = {bits}")
    remainder_size = ceil_div(d * k, 8)
    remainders_packed = body.take(remainder_size, "DENSE_RICE remainders")  # step 4: MALFORMED_FRAME
    unary = body.rest()  # step 5: the unary stream is all the remaining bytes
    if 1 + remainder_size + len(unary) >= ceil_div(d * bits, 8):  # step 5, before any decoding
        raise fail("INVALID_PAYLOAD", "WF-5.8-5", "DENSE_RICE block not smaller than the DENSE codes")
    if count_ones(unary) != d:  # step 6
        raise fail("INVALID_PAYLOAD", "WF-5.8-5", "unary stream does not hold d one bits")
    if unary[-1] == 0x00:  # step 7 (the stream is not empty: it holds d >= 1 one bits)
        raise fail("INVALID_PAYLOAD", "WF-5.8-5", "unary stream ends in a zero byte")
    if not padding_is_zero(remainders_packed, d * k):  # step 8, [WF-5.1-3]
        raise fail("INVALID_PAYLOAD", "WF-5.8-5", "remainder padding bit set")
    quotients = read_unary(unary, d)
    remainders = unpack_codes(remainders_packed, d, k, signed=False)  # k = 0: all zero [WF-5.1-5]
    values = [q * (1 << k) + r for q, r in zip(quotients, remainders, strict=True)]  # [WF-5.8-3]
    if max(values) >= 1 << bits:  # step 9
        raise fail("INVALID_PAYLOAD", "WF-5.8-5", f"a zigzag value {max(values)} >= 2^{bits}")
    if not any(values):  # step 10, [WF-5.4-4]
        raise fail("INVALID_PAYLOAD", "WF-5.8-5", "every DENSE_RICE code is zero")
    best_k, _ = best_dense_rice_k(values, bits)
    if k != best_k:  # step 11
        raise fail("INVALID_PAYLOAD", "WF-5.8-5", f"k = {k} but k* = {best_k}")
    codes = [unzigzag(z) for z in values]
    return {"encoding": "DENSE_RICE", "dim": d, "bits": bits, "scale": scale, "codes": codes, "rice_k": k}


def _decode_sparse(body: Body, name: str, d: int, bits: int) -> dict[str, Any]:
    # [WF-5.6-8] common part, in order
    n = body.varint("nonzero count")
    if not 1 <= n <= d:
        raise fail("INVALID_PAYLOAD", "WF-5.6-8", f"nonzero count {n} outside 1..{d}")
    scale = _check_scale(body, "sparse scale")
    packed = body.take(ceil_div(n * bits, 8), "sparse codes")
    if not padding_is_zero(packed, n * bits):
        raise fail("INVALID_PAYLOAD", "WF-5.6-8", "sparse code padding bit set")
    codes = unpack_codes(packed, n, bits, signed=True)
    if 0 in codes:
        raise fail("INVALID_PAYLOAD", "WF-5.6-2", "a sparse code is zero")
    bitmap_size = ceil_div(d, 8)  # B [WF-5.6-6]
    out: dict[str, Any] = {"encoding": name, "dim": d, "bits": bits, "scale": scale}

    if name == "SPARSE_BITMAP":
        # [WF-5.6-9], in order
        if body.remaining() < bitmap_size:
            raise fail("MALFORMED_FRAME", "WF-5.6-9", "bitmap truncated")
        if body.remaining() > bitmap_size:
            raise fail("MALFORMED_FRAME", "WF-5.6-9", "bytes after the bitmap")
        bitmap = body.rest()
        if not padding_is_zero(bitmap, d):
            raise fail("INVALID_PAYLOAD", "WF-5.6-9", "bitmap padding bit set")
        indices = [i for i in range(d) if bit(bitmap, i)]  # [WF-5.6-3]
        if len(indices) != n:
            raise fail("INVALID_PAYLOAD", "WF-5.6-9", f"bitmap holds {len(indices)} indices, n = {n}")
        _, best_size = best_rice_k(gaps_of(indices))
        if best_size < bitmap_size:
            # [WF-5.6-7] canonical choice: a strictly smaller Rice block exists
            raise fail("INVALID_PAYLOAD", "WF-5.6-9", "should have been SPARSE_RICE")
        return out | {"indices": indices, "codes": codes}

    # SPARSE_RICE [WF-5.6-10], in order
    k = body.u8("Rice parameter k")  # step 1: MALFORMED_FRAME
    if k > MAX_RICE_K:
        raise fail("INVALID_PAYLOAD", "WF-5.6-10", f"k = {k} > 16")
    remainder_size = ceil_div(n * k, 8)
    remainders_packed = body.take(remainder_size, "Rice remainders")  # step 3: MALFORMED_FRAME
    unary = body.rest()
    if 1 + remainder_size + len(unary) >= bitmap_size:  # step 4, before decoding any stream
        raise fail("INVALID_PAYLOAD", "WF-5.6-10", "Rice block not smaller than the bitmap")
    if count_ones(unary) != n:  # step 5
        raise fail("INVALID_PAYLOAD", "WF-5.6-10", "unary stream does not hold n one bits")
    if unary[-1] == 0x00:  # step 6
        raise fail("INVALID_PAYLOAD", "WF-5.6-10", "unary stream ends in a zero byte")
    if not padding_is_zero(remainders_packed, n * k):  # step 7
        raise fail("INVALID_PAYLOAD", "WF-5.6-10", "remainder padding bit set")
    quotients: list[int] = []
    run = 0
    for position in range(8 * len(unary)):  # [WF-5.6-5] q zero bits, then a 1 bit
        if bit(unary, position):
            quotients.append(run)
            run = 0
            if len(quotients) == n:
                break
        else:
            run += 1
    remainders = unpack_codes(remainders_packed, n, k, signed=False)
    gaps = [(q << k) + r for q, r in zip(quotients, remainders, strict=True)]
    indices = []
    previous = -1
    for gap in gaps:
        previous = previous + gap + 1
        indices.append(previous)
    if indices[-1] >= d:  # step 8
        raise fail("INVALID_PAYLOAD", "WF-5.6-10", f"last index {indices[-1]} >= d = {d}")
    best_k, _ = best_rice_k(gaps)
    if k != best_k:  # step 9
        raise fail("INVALID_PAYLOAD", "WF-5.6-10", f"k = {k} but k* = {best_k}")
    return out | {"indices": indices, "codes": codes, "rice_k": k}


def _decode_qsgd(body: Body, d: int) -> dict[str, Any]:
    # [WF-5.7-4] receiving, in order
    s = body.varint("QSGD s")  # step 1
    if not 1 <= s <= MAX_QSGD_S:
        raise fail("INVALID_PAYLOAD", "WF-5.7-2", f"s = {s} outside 1..65535")
    norm = _check_scale(body, "QSGD norm")  # step 2
    largest = (s + 1).bit_length() - 1  # E = floor(log2(s + 1))
    streams = body.rest()
    if len(streams) > ceil_div(d * (2 * largest + 2), 8) + 3:  # step 3
        raise fail("INVALID_PAYLOAD", "WF-5.7-4", "QSGD payload longer than its bound")
    # step 4: the exponent stream is the shortest byte prefix holding d one bits
    exponents: list[int] = []
    run = 0
    last_one = -1
    for position in range(8 * len(streams)):
        if bit(streams, position):
            exponents.append(run)
            run = 0
            if len(exponents) == d:
                last_one = position
                break
        else:
            run += 1
    if len(exponents) < d:
        raise fail("INVALID_PAYLOAD", "WF-5.7-4", "exponent stream holds fewer than d one bits")
    exponent_size = last_one // 8 + 1
    if not padding_is_zero(streams[:exponent_size], last_one + 1):  # step 5
        raise fail("INVALID_PAYLOAD", "WF-5.7-4", "exponent padding bit set")
    if max(exponents) > largest:  # step 6
        raise fail("INVALID_PAYLOAD", "WF-5.7-4", f"an exponent exceeds E = {largest}")
    after = streams[exponent_size:]
    mantissa_bits = sum(exponents)
    mantissa_size = ceil_div(mantissa_bits, 8)
    if len(after) < mantissa_size:  # step 7
        raise fail("INVALID_PAYLOAD", "WF-5.7-4", "mantissa stream truncated")
    mantissas = after[:mantissa_size]
    if not padding_is_zero(mantissas, mantissa_bits):  # step 8
        raise fail("INVALID_PAYLOAD", "WF-5.7-4", "mantissa padding bit set")
    magnitudes = []
    offset = 0
    for exponent in exponents:  # [WF-5.7-3] the leading 1 of m_i is implied
        m = (1 << exponent) | read_unsigned(mantissas, offset, exponent)
        offset += exponent
        magnitudes.append(m - 1)
    if max(magnitudes) > s:  # step 9
        raise fail("INVALID_PAYLOAD", "WF-5.7-4", "a level exceeds s")
    nonzero = sum(1 for m in magnitudes if m)
    if nonzero == 0:  # step 10, [WF-5.7-5]
        raise fail("INVALID_PAYLOAD", "WF-5.7-5", "every QSGD level is zero")
    signs = after[mantissa_size:]
    if len(signs) != ceil_div(nonzero, 8):  # step 11
        raise fail("INVALID_PAYLOAD", "WF-5.7-4", "sign stream has the wrong length")
    if not padding_is_zero(signs, nonzero):  # step 12
        raise fail("INVALID_PAYLOAD", "WF-5.7-4", "sign padding bit set")
    levels = []
    sign_index = 0
    for magnitude in magnitudes:
        if magnitude:
            levels.append(-magnitude if bit(signs, sign_index) else magnitude)
            sign_index += 1
        else:
            levels.append(0)
    return {"encoding": "QSGD", "dim": d, "s": s, "norm": norm, "levels": levels}


def decode_vector(body: Body, message: str, context: Context) -> dict[str, Any]:
    """A vector payload, the last field of its message [WF-5-1], checked as [WF-5.2-3] orders."""
    if body.remaining() < 1:  # step 1
        raise fail("MALFORMED_FRAME", "WF-5.2-3", "descriptor byte missing")
    descriptor = body.u8("descriptor")
    encoding, low = descriptor >> 4, descriptor & 0x0F
    if encoding not in ENCODINGS:  # step 2, [WF-12-2]
        raise fail("UNSUPPORTED_ENCODING", "WF-5.2-3", f"reserved encoding {encoding}")
    name = ENCODINGS[encoding]
    if name not in ALLOWED_ENCODINGS[message]:  # step 3, [WF-6.2-3] table
        raise fail("UNSUPPORTED_ENCODING", "WF-6.2-3", f"{name} not allowed in {message}")
    if name not in context.encodings:  # step 3, not announced [WF-6.2-5]
        raise fail("UNSUPPORTED_ENCODING", "WF-6.2-3", f"{name} not announced")
    if name not in QUANTIZED and low != 0:  # step 4, [WF-5.2-1]
        raise fail("MALFORMED_FRAME", "WF-5.2-1", f"{name} with low nibble {low}")
    d = body.varint("dimension")  # step 5
    if d == 0:  # step 6, [WF-5.2-2]
        raise fail("INVALID_PAYLOAD", "WF-5.2-2", "dimension 0")
    if d > context.max_dimension:  # step 7, [WF-10-1]
        raise fail("LIMIT_EXCEEDED", "WF-5.2-3", f"dimension {d} > {context.max_dimension}")
    if context.dim is not None and d != context.dim:  # step 8, [WF-5.2-4]
        raise fail("WRONG_DIMENSION", "WF-5.2-3", f"dimension {d}, configured {context.dim}")
    # step 9: the encoding's own section
    if name in _RAW:
        return _decode_raw(body, name, d)
    if name in ("ZERO", "EQUALS_SNAPSHOT"):
        if body.remaining():  # [WF-5.4-3]
            raise fail("MALFORMED_FRAME", "WF-5.4-3", f"{body.remaining()} bytes after the dimension")
        return {"encoding": name, "dim": d}
    if name == "DENSE":
        return _decode_dense(body, d, low + 1)
    if name == "DENSE_RICE":
        return _decode_dense_rice(body, d, low + 1)
    if name == "QSGD":
        return _decode_qsgd(body, d)
    return _decode_sparse(body, name, d, low + 1)


def dense_values(vector: dict[str, Any], snapshot: list[float] | None = None) -> list[float]:
    """The coordinates of a decoded vector, in binary64 (EQUALS_SNAPSHOT needs ``snapshot``)."""
    encoding, d = vector["encoding"], vector["dim"]
    if encoding in _RAW:
        return list(vector["values"])
    if encoding == "ZERO":
        return [0.0] * d  # [WF-5.4-1]
    if encoding == "EQUALS_SNAPSHOT":
        assert snapshot is not None, "EQUALS_SNAPSHOT stands for x_snap [WF-5.4-2]"
        return list(snapshot)
    if encoding in ("DENSE", "DENSE_RICE"):
        # [WF-5.5-1], [WF-5.8-1]: code x scale, exact in binary64
        return [float(c) * vector["scale"] for c in vector["codes"]]
    if encoding == "QSGD":
        # [WF-5.7-1] (l_i x norm) / s: the product is exact, only the division rounds
        return [(float(level) * vector["norm"]) / vector["s"] for level in vector["levels"]]
    values = [0.0] * d  # sparse [WF-5.6-1]
    for index, code in zip(vector["indices"], vector["codes"], strict=True):
        values[index] = float(code) * vector["scale"]
    return values


# -- msgpack (control messages, 7-3 .. 7-10) -------------------------------------------------------------


class _Container:
    def __init__(self, kind: str, count: int) -> None:
        self.kind = kind
        self.left = count
        self.value: Any = {} if kind == "map" else []
        self.key: Any = None
        self.expect_key = True


def _msgpack_item(data: bytes, pos: int, limit: int) -> tuple[Any, int, _Container | None]:
    """One msgpack item at ``pos``: (scalar value, next position, container header or None)."""

    def need(count: int) -> bytes:
        if pos + count > len(data):
            raise fail("MALFORMED_FRAME", "WF-7-6", "msgpack value truncated")
        return data[pos : pos + count]

    def length_ok(length: int) -> int:
        if length > limit:  # [WF-7-6] a str, bin, array or map length above max_control_bytes
            raise fail("MALFORMED_FRAME", "WF-7-6", f"msgpack length {length} > {limit}")
        return length

    tag = need(1)[0]
    pos += 1
    if tag <= 0x7F:
        return tag, pos, None
    if tag >= 0xE0:
        return tag - 0x100, pos, None
    if 0x80 <= tag <= 0x8F:
        return None, pos, _Container("map", tag & 0x0F)
    if 0x90 <= tag <= 0x9F:
        return None, pos, _Container("array", tag & 0x0F)
    str_len: int | None = None
    if 0xA0 <= tag <= 0xBF:
        str_len = tag & 0x1F
    elif tag in (0xD9, 0xDA, 0xDB):
        width = {0xD9: 1, 0xDA: 2, 0xDB: 4}[tag]
        str_len = int.from_bytes(need(width), "big")
        pos += width
    if str_len is not None:
        length_ok(str_len)
        raw = need(str_len)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise fail("MALFORMED_FRAME", "WF-7-6", "msgpack str is not valid UTF-8") from None
        return text, pos + str_len, None
    if tag in (0xC4, 0xC5, 0xC6):
        width = {0xC4: 1, 0xC5: 2, 0xC6: 4}[tag]
        length = length_ok(int.from_bytes(need(width), "big"))
        pos += width
        return bytes(need(length)), pos + length, None
    if tag in (0xDC, 0xDD, 0xDE, 0xDF):
        width = 2 if tag in (0xDC, 0xDE) else 4
        count = length_ok(int.from_bytes(need(width), "big"))
        return None, pos + width, _Container("array" if tag in (0xDC, 0xDD) else "map", count)
    if tag == 0xC0:
        return None, pos, None
    if tag in (0xC2, 0xC3):
        return tag == 0xC3, pos, None
    if tag == 0xCA:
        return float(struct.unpack(">f", need(4))[0]), pos + 4, None
    if tag == 0xCB:
        return float(struct.unpack(">d", need(8))[0]), pos + 8, None
    if 0xCC <= tag <= 0xCF:
        width = 1 << (tag - 0xCC)
        return int.from_bytes(need(width), "big"), pos + width, None
    if 0xD0 <= tag <= 0xD3:
        width = 1 << (tag - 0xD0)
        return int.from_bytes(need(width), "big", signed=True), pos + width, None
    # 0xC1 (never used), ext 0xC7..0xC9 and fixext 0xD4..0xD8 [WF-7-6]
    raise fail("MALFORMED_FRAME", "WF-7-6", f"msgpack type byte 0x{tag:02x} refused")


def parse_msgpack(data: bytes, limit: int) -> Any:
    """Exactly one msgpack value [WF-7-3], [WF-7-6], parsed iteratively.

    Containers (arrays and maps, empty ones included) nested more than 1024 deep fail with
    MALFORMED_FRAME [WF-7-6]: the top-level value is level 1, so a container whose parent chain
    already holds 1024 containers is refused as soon as its header is read.

    str becomes ``str``, bin ``bytes``, arrays ``list``, maps ``dict`` (a repeated key keeps its
    last value [WF-7-9]), ints ``int``, floats ``float`` (float32 widened), booleans ``bool``.
    """
    pos = 0
    stack: list[_Container] = []
    while True:
        value, pos, header = _msgpack_item(data, pos, limit)
        if header is not None:
            if len(stack) + 1 > MAX_MSGPACK_DEPTH:  # [WF-7-6] nesting depth
                raise fail(
                    "MALFORMED_FRAME", "WF-7-6", f"msgpack containers nested deeper than {MAX_MSGPACK_DEPTH}"
                )
            if header.left:
                stack.append(header)
                continue
            value = header.value  # an empty array or map is complete at once
        while True:  # attach the completed value to its parent(s)
            if not stack:
                if pos != len(data):
                    raise fail("MALFORMED_FRAME", "WF-7-6", "trailing bytes after the msgpack value")
                return value
            top = stack[-1]
            if top.kind == "map" and top.expect_key:
                if type(value) not in (str, bytes):  # [WF-7-6] key neither str nor bin
                    raise fail("MALFORMED_FRAME", "WF-7-6", "msgpack map key is neither str nor bin")
                top.key, top.expect_key = value, False
                break
            if top.kind == "map":
                top.value.pop(top.key, None)  # [WF-7-9] last occurrence wins (and its position)
                top.value[top.key] = value
                top.expect_key = True
            else:
                top.value.append(value)
            top.left -= 1
            if top.left:
                break
            stack.pop()
            value = top.value


_MISSING = object()


def _is_int(value: Any) -> bool:
    """[WF-7-7] a msgpack integer; a boolean or a float does not qualify."""
    return type(value) is int


def _require(condition: bool, message: str, rule: str) -> None:
    if not condition:
        raise fail("INVALID_CONFIG", rule, message)


def _encodings_field(value: Any, rule: str) -> list[int]:
    """An ``encodings`` array: ints in 0..15 [WF-6.2-1], returned sorted and without duplicates.

    Entries that name no encoding are "kept in the announced set (duplicates removed) but never
    match a vector" [WF-6.2-1]: they are accepted and kept in the result.  No vector can match
    them, because a vector with encoding 9..15 fails with UNSUPPORTED_ENCODING at step 2 of
    [WF-5.2-3], before the announced set is consulted.  ([WF-6.2-1] still says "Entries 8..15
    mean nothing in version 1"; the table of 5.2, [WF-5.2-3] step 2, [WF-5.8-6] and [WF-12-2]
    make 8 DENSE_RICE, and this decoder follows them: announcing 8 lets DENSE_RICE in.)
    """
    _require(type(value) is list, "encodings is not an array", rule)
    for entry in value:
        _require(_is_int(entry) and 0 <= entry <= 15, f"encoding entry {entry!r} not an int in 0..15", rule)
    return sorted(set(value))


def _decode_control(message: str, raw: bytes, context: Context) -> dict[str, Any]:
    if len(raw) > context.max_control_bytes:  # [WF-7-5] before parsing
        raise fail("LIMIT_EXCEEDED", "WF-7-5", f"control body of {len(raw)} bytes")
    body = parse_msgpack(raw, context.max_control_bytes)
    _require(type(body) is dict, "control body is not a map", "WF-7-7")

    def get(key: str) -> Any:
        return body.get(key, _MISSING)  # bin keys never match a str key: ignored [WF-7-8]

    if message == "HELLO":
        magic = get("magic")  # [WF-7.1-5] first
        _require(type(magic) is str and magic == "aiodq", "bad magic", "WF-7.1-5")
        low, high = get("min_version"), get("max_version")  # [WF-7.1-6]
        _require(_is_int(low) and _is_int(high), "versions are not ints", "WF-7.1-6")
        _require(1 <= low <= high <= 255, "versions violate 1 <= min <= max <= 255", "WF-7.1-6")
        encodings = _encodings_field(get("encodings"), "WF-7.1-6")
        name = get("name")
        _require(type(name) is str, "name is not a str", "WF-7.1-6")
        _require(len(name.encode("utf-8")) <= 255, "name longer than 255 bytes", "WF-7.1-6")
        return {"min_version": low, "max_version": high, "encodings": encodings, "name": name}

    if message == "WELCOME":  # [WF-7.2-5]
        version, worker_id = get("version"), get("worker_id")
        _require(_is_int(version) and 1 <= version <= 255, "version not an int in 1..255", "WF-7.2-5")
        _require(_is_int(worker_id) and 0 <= worker_id <= MAX_U63, "worker_id out of range", "WF-7.2-5")
        encodings = _encodings_field(get("encodings"), "WF-7.2-5")
        return {"version": version, "worker_id": worker_id, "encodings": encodings}

    # CONFIG, in the order of [WF-7.3-3] .. [WF-7.3-5]
    dim = get("dim")
    _require(_is_int(dim) and dim >= 1, "dim missing, not an int or < 1", "WF-7.3-3")
    if dim > context.max_dimension:
        raise fail("LIMIT_EXCEEDED", "WF-7.3-4", f"dim {dim} > {context.max_dimension}")
    algorithm = get("algorithm")
    _require(type(algorithm) is str and algorithm != "", "algorithm missing, not a str or empty", "WF-7.3-5")
    params = get("params")
    _require(type(params) is dict, "params missing or not a map", "WF-7.3-5")
    for key, value in params.items():
        _require(type(key) is str, "a params key is not a str", "WF-7.3-5")
        _require(type(value) in (bool, int, float, str), f"params[{key!r}] has a refused type", "WF-7.3-5")
        _require(type(value) is not float or math.isfinite(value), f"params[{key!r}] not finite", "WF-7.3-5")
    return {"dim": dim, "algorithm": algorithm, "params": dict(params)}


# -- binary messages (7.4 .. 7.11) -----------------------------------------------------------------------


def _reason(body: Body, context: Context) -> str:
    raw = body.rest()  # [WF-4.1-5] to the end of the body
    if len(raw) > context.max_reason_bytes:  # [WF-7.10-3] before the UTF-8 check
        raise fail("LIMIT_EXCEEDED", "WF-7.10-3", f"reason of {len(raw)} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise fail("MALFORMED_FRAME", "WF-7.10-3", "reason is not valid UTF-8") from None


def _decode_auth(message: str, raw: bytes) -> dict[str, Any]:
    """AUTH_CHALLENGE, AUTH_RESPONSE or AUTH_CONFIRM: fixed-size byte fields, nothing else.

    A body that is not exactly 32 (challenge, confirm) or 64 (response) bytes fails with
    MALFORMED_FRAME [WF-7.12-3], [WF-7.13-2], [WF-7.14-1].  Whether a proof is right, and whether
    the message answers the right earlier one, needs the secret and the connection (AUTH_FAILED,
    UNEXPECTED_MESSAGE): not checked here.
    """
    fields = AUTH_FIELDS[message]
    size = sum(width for _, width in fields)
    if len(raw) != size:
        raise fail("MALFORMED_FRAME", AUTH_RULES[message], f"{message} body of {len(raw)} bytes, not {size}")
    body = Body(raw)
    return {name: body.take(width, name) for name, width in fields}


def _decode_binary(message: str, flags: int, raw: bytes, context: Context) -> dict[str, Any]:
    body = Body(raw)
    out: dict[str, Any] = {}
    if message in AUTH_MESSAGES:
        return _decode_auth(message, raw)
    if message == "HEARTBEAT":
        if raw:  # [WF-7.9-2]
            raise fail("MALFORMED_FRAME", "WF-7.9-2", "HEARTBEAT with a body")
        return out
    if message in ("ERROR", "CLOSE"):
        out["code"] = body.u16("code")  # [WF-7.10-3] short: MALFORMED_FRAME; any value [WF-7.10-4]
        if message == "ERROR":
            out["epoch"] = body.varint("epoch")
            out["version"] = body.varint("version")
        out["reason"] = _reason(body, context)  # [WF-7.11-5] as in ERROR
        return out
    # [WF-7-11] fields in order, the vector last
    out["epoch"] = body.varint("epoch")
    if message == "SNAPSHOT_GRADIENT":  # [WF-7.5-2]
        out["samples"] = body.varint("samples")
        out["correct"] = body.varint("correct")
        loss = body.f64("loss")
        if not math.isfinite(loss):  # [WF-4.1-4]
            raise fail("NON_FINITE", "WF-7.5-2", f"loss is {loss}")
        out["loss"] = loss
    if message in ("MODEL", "GRADIENT"):  # [WF-7.7-6], [WF-7.8-3]
        out["version"] = body.varint("version")
    out["vector"] = decode_vector(body, message, context)
    if message == "MODEL":
        out["relative"] = bool(flags & RELATIVE)
        if out["relative"] and out["vector"]["encoding"] in ("ZERO", "EQUALS_SNAPSHOT"):
            # [WF-7.7-6], checked after the vector has decoded
            raise fail("INVALID_PAYLOAD", "WF-7.7-6", "RELATIVE MODEL with ZERO or EQUALS_SNAPSHOT")
    return out


# -- frames (section 3) and the receive procedure (7-1) ------------------------------------------------


def decode_frame(version: int, mtype: int, flags: int, body: bytes, context: Context) -> dict[str, Any]:
    """One whole frame: steps 2, 3 (if ``context.header_version`` is set), 6 and 7 of [WF-7-1].

    Steps 4 and 5 (role and state, section 8.1) and 8 (sequencing, 8.2) need a connection and
    are not made here.
    """
    if mtype not in MESSAGE_TYPES:  # step 2: not 0x01..0x0E
        raise fail("UNKNOWN_MESSAGE_TYPE", "WF-7-1", f"type 0x{mtype:02x}")
    message = MESSAGE_TYPES[mtype]
    if context.header_version is not None:  # step 3, [WF-6.1-2], [WF-6.1-7], [WF-6.1-8]
        wanted = 1 if message in VERSION_1_MESSAGES else context.header_version
        if version != wanted:
            raise fail("UNSUPPORTED_VERSION", "WF-6.1-7", f"header version {version}, expected {wanted}")
    if flags & ~DEFINED_FLAGS[message] & 0xFF:  # step 6, [WF-3-6], [WF-12-3]
        raise fail("MALFORMED_FRAME", "WF-3-6", f"undefined flag bits 0x{flags:02x} on {message}")
    if message in ("HELLO", "WELCOME", "CONFIG"):  # step 7
        fields = _decode_control(message, body, context)
    else:
        fields = _decode_binary(message, flags, body, context)
    header = {"version": version, "type": mtype, "flags": flags, "length": len(body)}
    return {"message": message, "header": header, **fields}


def parse_header(data: bytes) -> tuple[int, int, int, int]:
    """(version, type, flags, body length) from the 7-byte header [WF-3-2]."""
    assert len(data) >= HEADER_BYTES
    return data[0], data[1], data[2], int.from_bytes(data[3:7], "little")


def decode_stream(data: bytes, context: Context | None = None) -> list[dict[str, Any]]:
    """Every frame of a complete stream, in order [WF-3-4]; the stream ends after ``data``.

    Raises at the first failure.  A stream that ends inside a frame is MALFORMED_FRAME [WF-3-5];
    the frame-size limit is checked on the header alone, before the body [WF-3-3].
    """
    context = context or Context()
    messages = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < HEADER_BYTES:
            raise fail("MALFORMED_FRAME", "WF-3-5", "the stream ends inside a frame header")
        version, mtype, flags, length = parse_header(data[pos : pos + HEADER_BYTES])
        if length > context.max_frame_bytes:  # [WF-3-3] step 1, before every other check
            raise fail("FRAME_TOO_LARGE", "WF-3-3", f"body length {length} > {context.max_frame_bytes}")
        start = pos + HEADER_BYTES
        if len(data) - start < length:
            raise fail("MALFORMED_FRAME", "WF-3-5", "the stream ends inside a frame body")
        messages.append(decode_frame(version, mtype, flags, data[start : start + length], context))
        pos = start + length
    return messages
