#!/usr/bin/env python3
"""Generate the wire-format conformance vectors (tests/conformance/vectors/*.json).

Run from anywhere: ``python tests/conformance/generate.py``.  The committed JSON
files are the data, pinned by ``vectors/MANIFEST.json``; a test regenerates them
and compares.  Every valid frame is built by hand from the spec's field layout
(an independent little-endian bit writer and msgpack writer below) and aiodq must
decode it and encode it back byte for byte; every invalid frame must fail in aiodq
with exactly the recorded code; the quantizer cases are computed in exact
arithmetic.  Any disagreement makes the script exit 1 without writing anything.

Vector kinds (the ``kind`` field):

- ``valid``: one whole frame and the event it decodes to, field by field.  Events are named as
  the spec names their message (``HELLO``, ..., ``AUTH_CONFIRM``); the local end of a stream is
  ``CONNECTION_CLOSED``.
- ``invalid``: one frame and the exact wire error code that decoding raises.
- ``quantizer``: explicit-dither quantizer and sparsifier inputs and outputs.
- ``story``: ordered steps over a master/worker connection pair.  A story may carry
  ``master_config`` / ``worker_config``: ``{"secret": hex, "nonces": [hex, ...]}`` for a
  ConnectionConfig with that shared secret whose nonce source hands out the nonces in order
  (wire-format.md 7.12-7.14).

The proofs of the AUTH messages are computed twice, with aiodq.protocol.handshake and with Python's hmac
module straight from the formulas of wire-format.md 7.12; the script refuses to write anything
when the two disagree.

Floats never appear as JSON numbers: they are IEEE-754 bit patterns in hex
("0x3f800000" for a float32, 16 hex digits for a float64).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import struct
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from aiodq.codec.events import (
    AuthChallenge,
    AuthConfirm,
    AuthResponse,
    Close,
    ConfigMessage,
    ConnectionClosed,
    ErrorMessage,
    FullGradient,
    Gradient,
    Heartbeat,
    Hello,
    ModelMessage,
    Snapshot,
    SnapshotGradient,
    Welcome,
)
from aiodq.codec.frames import FrameReader
from aiodq.codec.lowp import quantize_with_dither
from aiodq.codec.messages import DecodeContext, decode_body, decode_message, encode_message, message_type_of
from aiodq.codec.payload import plan_vector
from aiodq.codec.qsgd import quantize_qsgd_with_dither
from aiodq.codec.registry import Encoding, MessageType
from aiodq.codec.sparse import sparsify_with_uniforms
from aiodq.codec.vectors import (
    DenseQuantized,
    EqualsSnapshot,
    QSGDVector,
    RawVector,
    SparseQuantized,
    ZeroVector,
)
from aiodq.config import ConnectionConfig, Limits
from aiodq.errors import CodecError, ErrorCode, LocalProtocolError, RemoteProtocolError
from aiodq.protocol.connection import ConnectionState, MasterConnection, WorkerConnection
from aiodq.protocol.handshake import master_mac, worker_mac

HERE = Path(__file__).resolve().parent
OUT = HERE / "vectors"
VECTORS: list[tuple[str, dict[str, Any]]] = []
MAX63 = (1 << 63) - 1

# -- float bit patterns -------------------------------------------------------------------------


def f32bits(value: float) -> str:
    return f"0x{struct.unpack('<I', struct.pack('<f', value))[0]:08x}"


def f64bits(value: float) -> str:
    return f"0x{struct.unpack('<Q', struct.pack('<d', value))[0]:016x}"


def f32raw(pattern: int) -> bytes:
    return struct.pack("<I", pattern)


def f64raw(pattern: int) -> bytes:
    return struct.pack("<Q", pattern)


# -- an independent writer for the wire layout (wire-format.md 3, 4, 5) ------------------------


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def frame(version: int, mtype: int, flags: int, body: bytes) -> bytes:
    return struct.pack("<BBBI", version, mtype, flags, len(body)) + body


def mp(value: Any) -> bytes:
    """The canonical msgpack bytes of wire-format.md 7-4, written by hand for the subset it allows.

    Maps keep their key order; integers, strings, arrays and maps take the shortest format;
    floats are float64 (``cb``).  Independent of the msgpack library, which aiodq's encoder uses.
    """
    if value is True or value is False:
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        if 0 <= value <= 0x7F:
            return bytes((value,))
        if -32 <= value < 0:
            return struct.pack("<b", value)
        if value >= 0:
            for code, fmt, top in ((0xCC, ">B", 0xFF), (0xCD, ">H", 0xFFFF), (0xCE, ">I", 0xFFFFFFFF)):
                if value <= top:
                    return bytes((code,)) + struct.pack(fmt, value)
            return b"\xcf" + struct.pack(">Q", value)
        for code, fmt, low in ((0xD0, ">b", -0x80), (0xD1, ">h", -0x8000), (0xD2, ">i", -0x80000000)):
            if value >= low:
                return bytes((code,)) + struct.pack(fmt, value)
        return b"\xd3" + struct.pack(">q", value)
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, str):
        raw = value.encode()
        if len(raw) <= 31:
            return bytes((0xA0 | len(raw),)) + raw
        for code, fmt, top in ((0xD9, ">B", 0xFF), (0xDA, ">H", 0xFFFF)):
            if len(raw) <= top:
                return bytes((code,)) + struct.pack(fmt, len(raw)) + raw
        return b"\xdb" + struct.pack(">I", len(raw)) + raw
    if isinstance(value, list):
        head = bytes((0x90 | len(value),)) if len(value) <= 15 else b"\xdc" + struct.pack(">H", len(value))
        return head + b"".join(mp(item) for item in value)
    if isinstance(value, dict):
        head = bytes((0x80 | len(value),)) if len(value) <= 15 else b"\xde" + struct.pack(">H", len(value))
        return head + b"".join(mp(key) + mp(item) for key, item in value.items())
    raise TypeError(f"not in the control-message subset: {value!r}")


def raw_payload(values: list[float], *, f64: bool = False) -> bytes:
    """RAW_F32 or RAW_F64 (wire-format.md 5.3): descriptor, d, then every value little-endian."""
    return (
        bytes((0x10 if f64 else 0x00,))
        + varint(len(values))
        + struct.pack(f"<{len(values)}{'d' if f64 else 'f'}", *values)
    )


class Bits:
    """Little-endian bit stream: bit j is bit j % 8 of byte j // 8, zero padded."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def put(self, value: int, width: int) -> Bits:
        for j in range(width):
            self.bits.append((value >> j) & 1)
        return self

    def unary(self, q: int) -> Bits:
        self.bits.extend([0] * q + [1])
        return self

    def bytes(self) -> bytes:
        out = bytearray((len(self.bits) + 7) // 8)
        for j, bit in enumerate(self.bits):
            out[j // 8] |= bit << (j % 8)
        return bytes(out)


def packed(codes: list[int], bits: int) -> bytes:
    writer = Bits()
    for code in codes:
        writer.put(code & ((1 << bits) - 1), bits)
    return writer.bytes()


def dense_payload(dim: int, bits: int, scale_pattern: int, codes: list[int]) -> bytes:
    return bytes((0x40 | (bits - 1),)) + varint(dim) + f32raw(scale_pattern) + packed(codes, bits)


def sparse_head(
    enc: int, dim: int, bits: int, scale_pattern: int, codes: list[int], nnz: int | None = None
) -> bytes:
    count = len(codes) if nnz is None else nnz
    return (
        bytes((enc << 4 | (bits - 1),))
        + varint(dim)
        + varint(count)
        + f32raw(scale_pattern)
        + packed(codes, bits)
    )


def bitmap_block(dim: int, indices: list[int], extra_bits: list[int] = ()) -> bytes:
    writer = Bits()
    flags = [0] * (((dim + 7) // 8) * 8)
    for i in [*indices, *extra_bits]:
        flags[i] = 1
    for f in flags:
        writer.put(f, 1)
    return writer.bytes()


def gaps_of(indices: list[int]) -> list[int]:
    out, previous = [], -1
    for i in indices:
        out.append(i - previous - 1)
        previous = i
    return out


def rice_block(gaps: list[int], k: int) -> bytes:
    remainders = Bits()
    unary = Bits()
    for g in gaps:
        remainders.put(g & ((1 << k) - 1), k)
        unary.unary(g >> k)
    return bytes((k,)) + remainders.bytes() + unary.bytes()


def rice_size(gaps: list[int], k: int) -> int:
    return 1 + (len(gaps) * k + 7) // 8 + (sum(g >> k for g in gaps) + len(gaps) + 7) // 8


def best_rice(gaps: list[int]) -> tuple[int, int]:
    sizes = [rice_size(gaps, k) for k in range(17)]
    best = min(sizes)
    return sizes.index(best), best


def zigzag(code: int) -> int:
    """wire-format.md 5.8-2: ``c >= 0`` -> ``2c``, ``c < 0`` -> ``-2c - 1``."""
    return 2 * code if code >= 0 else -2 * code - 1


def dense_rice_size(values: list[int], k: int) -> int:
    """R(k) of wire-format.md 5.8-4: the k byte, the remainders and the unary stream."""
    return 1 + (len(values) * k + 7) // 8 + (sum(z >> k for z in values) + len(values) + 7) // 8


def best_dense_rice(codes: list[int], bits: int) -> tuple[int, int, list[int]]:
    """``(k*, R(k*), [R(0), ..., R(b - 1)])`` for the zigzagged codes (5.8-4)."""
    values = [zigzag(c) for c in codes]
    sizes = [dense_rice_size(values, k) for k in range(bits)]
    best = min(sizes)
    return sizes.index(best), best, sizes


def dense_rice_block(codes: list[int], k: int) -> bytes:
    """The k byte, the k-bit remainders and the unary quotients of the zigzagged codes (5.8-3)."""
    remainders, unary = Bits(), Bits()
    for code in codes:
        z = zigzag(code)
        remainders.put(z & ((1 << k) - 1), k)
        unary.unary(z >> k)
    return bytes((k,)) + remainders.bytes() + unary.bytes()


def dense_rice_head(dim: int, bits: int, scale_pattern: int) -> bytes:
    return bytes((0x80 | (bits - 1),)) + varint(dim) + f32raw(scale_pattern)


def dense_rice_payload(
    dim: int, bits: int, scale_pattern: int, codes: list[int], k: int | None = None
) -> bytes:
    """A DENSE_RICE payload with parameter ``k`` (default: the canonical k*)."""
    if k is None:
        k = best_dense_rice(codes, bits)[0]
    return dense_rice_head(dim, bits, scale_pattern) + dense_rice_block(codes, k)


def qsgd_payload(dim: int, s: int, norm_pattern: int, levels: list[int]) -> bytes:
    unary, mantissa, signs = Bits(), Bits(), Bits()
    for level in levels:
        m = abs(level) + 1
        n = m.bit_length() - 1
        unary.unary(n)
        mantissa.put(m & ((1 << n) - 1), n)
        if level:
            signs.put(1 if level < 0 else 0, 1)
    return (
        bytes((0x70,))
        + varint(dim)
        + varint(s)
        + f32raw(norm_pattern)
        + unary.bytes()
        + mantissa.bytes()
        + signs.bytes()
    )


# -- events as JSON fields ----------------------------------------------------------------------


def vector_fields(v: Any, enc: Encoding | None = None) -> dict[str, Any]:
    """The vector's JSON fields, in the encoding ``enc`` it travelled in (default: the plain choice)."""
    plan = plan_vector(v, dense_rice=enc is Encoding.DENSE_RICE)
    assert enc is None or plan.encoding is enc, (enc, plan.encoding)
    enc = plan.encoding
    out: dict[str, Any] = {"encoding": enc.name, "dim": v.dim}
    if isinstance(v, RawVector):
        conv = f32bits if v.values.dtype == np.float32 else f64bits
        out["values_bits"] = [conv(float(x)) for x in v.values]
    elif isinstance(v, DenseQuantized):
        out.update(bits=v.bits, scale_bits=f32bits(v.scale), codes=[int(c) for c in v.codes])
        if enc == Encoding.DENSE_RICE:
            out["rice_k"] = plan.k
    elif isinstance(v, SparseQuantized):
        out.update(
            bits=v.bits,
            scale_bits=f32bits(v.scale),
            indices=[int(i) for i in v.indices],
            codes=[int(c) for c in v.codes],
        )
        if enc == Encoding.SPARSE_RICE:
            out["rice_k"] = plan.k
    elif isinstance(v, QSGDVector):
        out.update(s=v.s, norm_bits=f32bits(v.norm), levels=[int(x) for x in v.levels])
    return out


def param_json(value: Any) -> Any:
    if isinstance(value, float):
        return {"f64": f64bits(value)}
    return value


def event_fields(ev: Any, enc: Encoding | None = None) -> dict[str, Any]:
    """The event's JSON fields, named as the spec names its message (CONNECTION_CLOSED: the local end)."""
    name = "CONNECTION_CLOSED" if isinstance(ev, ConnectionClosed) else message_type_of(ev).name
    out: dict[str, Any] = {"event": name}
    if isinstance(ev, Hello):
        out.update(
            min_version=ev.min_version,
            max_version=ev.max_version,
            encodings=sorted(ev.encodings),
            name=ev.name,
            **({} if ev.shard is None else {"shard": list(ev.shard)}),
        )
    elif isinstance(ev, Welcome):
        out.update(version=ev.version, worker_id=ev.worker_id, encodings=sorted(ev.encodings))
    elif isinstance(ev, ConfigMessage):
        out.update(
            dim=ev.dim,
            algorithm=ev.algorithm,
            params={k: param_json(v) for k, v in ev.params.items()},
            params_order=list(ev.params),  # (JSON objects are written with sorted keys)
        )
    elif isinstance(ev, Snapshot | FullGradient):
        out.update(epoch=ev.epoch, vector=vector_fields(ev.vector, enc))
    elif isinstance(ev, SnapshotGradient):
        out.update(
            epoch=ev.epoch,
            samples=ev.samples,
            correct=ev.correct,
            loss_bits=f64bits(ev.loss),
            vector=vector_fields(ev.vector, enc),
        )
    elif isinstance(ev, ModelMessage):
        out.update(
            epoch=ev.epoch, version=ev.version, relative=ev.relative, vector=vector_fields(ev.vector, enc)
        )
    elif isinstance(ev, Gradient):
        out.update(epoch=ev.epoch, version=ev.version, vector=vector_fields(ev.vector, enc))
    elif isinstance(ev, ErrorMessage):
        out.update(code=ev.code, epoch=ev.epoch, version=ev.version, reason=ev.reason)
    elif isinstance(ev, Close):
        out.update(code=ev.code, reason=ev.reason)
    elif isinstance(ev, ConnectionClosed):
        out.update(clean=ev.clean, code=ev.code)
    elif isinstance(ev, AuthChallenge):
        out.update(nonce=ev.nonce.hex())
    elif isinstance(ev, AuthResponse):
        out.update(nonce=ev.nonce.hex(), mac=ev.mac.hex())
    elif isinstance(ev, AuthConfirm):
        out.update(mac=ev.mac.hex())
    return out


# -- the shared-secret handshake (wire-format.md 7.12-7.14) -------------------------------------

#: The shared secret K of the AUTH vectors and stories (at least 16 bytes), and a wrong one.
SECRET = b"aiodq conformance shared secret!"
WRONG_SECRET = b"not the conformance secret......"
#: Fixed nonces: the master's Nm and the worker's Nw (32 bytes each).
MASTER_NONCE = bytes(range(0x00, 0x20))
WORKER_NONCE = bytes(range(0xA0, 0xC0))
WORKER_LABEL = b"aiodq-v1 worker"  # 15 ASCII bytes, no terminator
MASTER_LABEL = b"aiodq-v1 master"


class ProofMismatchError(RuntimeError):
    """aiodq.protocol.handshake and the spec's HMAC formula give different proofs: nothing is written."""


def proofs(secret: bytes, master_nonce: bytes, worker_nonce: bytes) -> tuple[bytes, bytes]:
    """(Pw, Pm) of wire-format.md 7.12, from aiodq.protocol.handshake and checked against hmac/hashlib."""
    assert len(WORKER_LABEL) == len(MASTER_LABEL) == 15
    pw = hmac.new(secret, WORKER_LABEL + master_nonce + worker_nonce, hashlib.sha256).digest()
    pm = hmac.new(secret, MASTER_LABEL + master_nonce + worker_nonce, hashlib.sha256).digest()
    ref_pw, ref_pm = (
        worker_mac(secret, master_nonce, worker_nonce),
        master_mac(secret, master_nonce, worker_nonce),
    )
    if ref_pw != pw or ref_pm != pm:
        raise ProofMismatchError(
            f"aiodq.protocol.handshake gives Pw={ref_pw.hex()} Pm={ref_pm.hex()}, "
            f"hmac gives Pw={pw.hex()} Pm={pm.hex()}"
        )
    return pw, pm


def auth_config(secret: bytes | None, *nonces: bytes) -> dict[str, Any]:
    """A story's master_config / worker_config (JSON)."""
    out: dict[str, Any] = {"nonces": [n.hex() for n in nonces]}
    if secret is not None:
        out["secret"] = secret.hex()
    return out


def fixed_nonces(nonces: list[bytes]) -> Any:
    """A nonce source that hands out ``nonces`` in order (and fails when they run out)."""
    queue = list(nonces)

    def source(size: int) -> bytes:
        assert queue, "the story's nonces ran out"
        nonce = queue.pop(0)
        assert len(nonce) == size, (len(nonce), size)
        return nonce

    return source


def limits_json(limits: Limits | None) -> dict[str, int] | None:
    if limits is None:
        return None
    default = Limits()
    return {
        name: getattr(limits, name)
        for name in Limits.__slots__
        if getattr(limits, name) != getattr(default, name)
    }


def make_context(context: dict[str, Any] | None) -> DecodeContext:
    context = context or {}
    kwargs: dict[str, Any] = {}
    if "limits" in context:
        kwargs["limits"] = Limits(**context["limits"])
    if "dim" in context:
        kwargs["dim"] = context["dim"]
    if "encodings" in context:
        kwargs["encodings"] = frozenset(Encoding[name] for name in context["encodings"])
    return DecodeContext(**kwargs)


#: Every disagreement between aiodq and the spec's layout or arithmetic; any one fails the run.
ERRORS: list[str] = []


def add(slug: str, doc: dict[str, Any]) -> None:
    VECTORS.append((slug, doc))


# -- valid vectors -----------------------------------------------------------------------------


def valid(
    slug: str,
    description: str,
    cites: list[str],
    event: Any,
    *,
    expect_hex: bytes,
    version: int = 1,
    context: dict[str, Any] | None = None,
    auth: dict[str, str] | None = None,
    canonical_hex: bytes | None = None,
) -> None:
    """A valid frame: ``expect_hex`` is built here from the spec's layout; aiodq must decode it to
    ``event`` and encode ``event`` back to exactly those bytes, or to ``canonical_hex`` for input
    that a receiver accepts but a sender never writes (7-10)."""
    ctx = make_context(context)
    reader = FrameReader(ctx.limits)
    reader.feed(expect_hex)
    try:
        fr = reader.next_frame()
        assert fr is not None and reader.buffered == 0
        decoded = decode_body(fr, ctx)
    except (CodecError, AssertionError) as exc:
        ERRORS.append(f"{slug}: aiodq does not decode the spec layout {expect_hex.hex()}: {exc!r}")
        return
    if decoded.event != event:
        ERRORS.append(f"{slug}: aiodq decodes {expect_hex.hex()} as {decoded.event!r}, expected {event!r}")
        return
    rice = decoded.encoding is Encoding.DENSE_RICE
    data = encode_message(event, version, dense_rice=rice)
    canonical = expect_hex if canonical_hex is None else canonical_hex
    if data != canonical:
        ERRORS.append(f"{slug}: aiodq encodes {data.hex()} but the spec layout gives {canonical.hex()}")
        return
    doc: dict[str, Any] = {
        "kind": "valid",
        "description": description,
        "cites": cites,
        "hex": expect_hex.hex(),
        "header": {"version": fr.version, "type": MessageType(fr.type).name, "flags": fr.flags},
        "event": event_fields(event, decoded.encoding),
    }
    if canonical_hex is not None:
        doc["canonical_hex"] = canonical_hex.hex()
    if context:
        doc["context"] = context
    if auth:
        doc["auth"] = auth
    add(slug, doc)


def raw32(*values: float) -> RawVector:
    return RawVector(np.array(values, dtype=np.float32))


def raw64(*values: float) -> RawVector:
    return RawVector(np.array(values, dtype=np.float64))


def build_valid() -> None:
    # 7.1 HELLO: msgpack map magic, min_version, max_version, encodings, name.
    hello = Hello(min_version=1, max_version=1, encodings=frozenset(range(8)), name="")
    body = mp({"magic": "aiodq", "min_version": 1, "max_version": 1, "encodings": list(range(8)), "name": ""})
    valid(
        "hello-minimal",
        "HELLO offering version 1 only, every encoding, empty name",
        ["WF-3", "WF-6", "WF-7.1"],
        hello,
        expect_hex=frame(1, 1, 0, body),
    )
    valid(
        "hello-range-utf8-name",
        "HELLO offering versions 1..3, three encodings, a UTF-8 name",
        ["WF-6", "WF-7.1"],
        Hello(min_version=1, max_version=3, encodings=frozenset({0, 1, 4}), name="wörker-λ ✓"),
        expect_hex=frame(
            1,
            1,
            0,
            mp(
                {
                    "magic": "aiodq",
                    "min_version": 1,
                    "max_version": 3,
                    "encodings": [0, 1, 4],
                    "name": "wörker-λ ✓",
                }
            ),
        ),
    )
    valid(
        "hello-shard-claim",
        "HELLO claiming shard 2 of 4 (the optional sixth key)",
        ["WF-7.1"],
        Hello(min_version=1, max_version=1, encodings=frozenset({0, 1}), name="w2", shard=(2, 4)),
        expect_hex=frame(
            1,
            1,
            0,
            mp(
                {
                    "magic": "aiodq",
                    "min_version": 1,
                    "max_version": 1,
                    "encodings": [0, 1],
                    "name": "w2",
                    "shard": [2, 4],
                }
            ),
        ),
    )
    valid(
        "hello-shard-largest",
        "HELLO claiming the last shard of the largest count, 2^31 - 2 of 2^31 - 1",
        ["WF-7.1"],
        Hello(encodings=frozenset({0, 1}), shard=(2**31 - 2, 2**31 - 1)),
        expect_hex=frame(1, 1, 0, mp(hello_map(shard=[2**31 - 2, 2**31 - 1]))),
    )
    valid(
        "welcome",
        "WELCOME choosing version 1 for worker 0",
        ["WF-6", "WF-7.2"],
        Welcome(version=1, worker_id=0, encodings=frozenset(range(8))),
        expect_hex=frame(1, 2, 0, mp({"version": 1, "worker_id": 0, "encodings": list(range(8))})),
    )
    valid(
        "config",
        "CONFIG with int, bool, str and float parameters (keys in sorted order)",
        ["WF-7.3"],
        ConfigMessage(
            dim=10,
            algorithm="asylpg",
            params={"bits": 8, "lr": 0.05, "mu": 0.5, "name": "run-1", "sparse": False},
        ),
        expect_hex=frame(
            1,
            3,
            0,
            mp(
                {
                    "dim": 10,
                    "algorithm": "asylpg",
                    "params": {"bits": 8, "lr": 0.05, "mu": 0.5, "name": "run-1", "sparse": False},
                }
            ),
        ),
    )

    # 7.4-7.6: full-precision vectors.
    snap = Snapshot(epoch=0, vector=raw32(1.0, -2.5, 0.0))
    valid(
        "snapshot-raw-f32",
        "SNAPSHOT epoch 0 with a RAW_F32 vector of d = 3",
        ["WF-4.2", "WF-5", "WF-7.4"],
        snap,
        context={"dim": 3},
        expect_hex=frame(
            1, 4, 0, varint(0) + bytes((0x00,)) + varint(3) + struct.pack("<3f", 1.0, -2.5, 0.0)
        ),
    )
    valid(
        "snapshot-raw-f64-edge-values",
        "SNAPSHOT with RAW_F64: -0.0, the smallest subnormal, the largest finite double",
        ["WF-5", "WF-7.4"],
        Snapshot(epoch=127, vector=raw64(-0.0, 5e-324, sys.float_info.max, 0.1)),
        expect_hex=frame(
            1, 4, 0, varint(127) + raw_payload([-0.0, 5e-324, sys.float_info.max, 0.1], f64=True)
        ),
    )
    valid(
        "snapshot-raw-f32-edge-values",
        "SNAPSHOT with RAW_F32: -0.0, the smallest subnormal float32, the largest finite float32",
        ["WF-5", "WF-7.4"],
        Snapshot(
            epoch=128,
            vector=RawVector(
                np.array([-0.0, np.float32(1.4e-45), np.finfo(np.float32).max, 1], dtype=np.float32)
            ),
        ),
        expect_hex=frame(
            1,
            4,
            0,
            varint(128)
            + bytes((0x00,))
            + varint(4)
            + f32raw(0x80000000)
            + f32raw(0x00000001)
            + f32raw(0x7F7FFFFF)
            + f32raw(0x3F800000),
        ),
    )
    valid(
        "snapshot-gradient",
        "SNAPSHOT_GRADIENT: samples, correct, a float64 loss, RAW_F64 sum",
        ["WF-7.5"],
        SnapshotGradient(
            epoch=3, samples=1000, correct=937, loss=693.1471805599453, vector=raw64(0.25, -1.0, 3.0)
        ),
        context={"dim": 3},
        expect_hex=frame(
            1,
            5,
            0,
            varint(3)
            + varint(1000)
            + varint(937)
            + struct.pack("<d", 693.1471805599453)
            + raw_payload([0.25, -1.0, 3.0], f64=True),
        ),
    )
    valid(
        "snapshot-gradient-f32-big-counters",
        "SNAPSHOT_GRADIENT with 2-byte and 9-byte varints and a RAW_F32 vector",
        ["WF-4.2", "WF-7.5"],
        SnapshotGradient(epoch=MAX63, samples=300, correct=0, loss=0.0, vector=raw32(0.5)),
        expect_hex=frame(
            1, 5, 0, b"\xff" * 8 + b"\x7f" + b"\xac\x02" + b"\x00" + bytes(8) + raw_payload([0.5])
        ),
    )
    valid(
        "full-gradient",
        "FULL_GRADIENT with a RAW_F32 vector",
        ["WF-7.6"],
        FullGradient(epoch=3, vector=raw32(0.125, -0.375, 7.0)),
        context={"dim": 3},
        expect_hex=frame(1, 6, 0, varint(3) + raw_payload([0.125, -0.375, 7.0])),
    )

    # 7.7 MODEL.
    valid(
        "model-equals-snapshot",
        "MODEL carrying EQUALS_SNAPSHOT (no payload after the dimension)",
        ["WF-5", "WF-7.7"],
        ModelMessage(epoch=3, version=0, vector=EqualsSnapshot(10)),
        context={"dim": 10},
        expect_hex=frame(1, 7, 0, varint(3) + varint(0) + bytes((0x30,)) + varint(10)),
    )
    valid(
        "model-zero",
        "MODEL carrying the ZERO vector (zero-centred model x = 0)",
        ["WF-5", "WF-7.7"],
        ModelMessage(epoch=3, version=1, vector=ZeroVector(5)),
        expect_hex=frame(1, 7, 0, varint(3) + varint(1) + bytes((0x20,)) + varint(5)),
    )
    valid(
        "model-relative-dense",
        "MODEL with the RELATIVE flag and a DENSE b = 3 vector",
        ["WF-5.5", "WF-7.7"],
        ModelMessage(
            epoch=3,
            version=2,
            relative=True,
            vector=DenseQuantized(3, 0.0078125, np.array([-4, 3, 0, -1, 1], dtype=np.int16)),
        ),
        expect_hex=frame(1, 7, 1, varint(3) + varint(2) + dense_payload(5, 3, 0x3C000000, [-4, 3, 0, -1, 1])),
    )
    valid(
        "model-relative-raw-f32",
        "MODEL with the RELATIVE flag and a RAW_F32 difference x - x_snap",
        ["WF-7.7"],
        ModelMessage(epoch=3, version=4, relative=True, vector=raw32(0.5, -0.25)),
        expect_hex=frame(1, 7, 1, varint(3) + varint(4) + raw_payload([0.5, -0.25])),
    )
    valid(
        "model-varint-max",
        "MODEL with epoch and version 2**63 - 1 (9-byte varints)",
        ["WF-4.2", "WF-7.7"],
        ModelMessage(epoch=MAX63, version=MAX63, vector=DenseQuantized(2, 1.0, np.array([1, -2]))),
        expect_hex=frame(
            1, 7, 0, b"\xff" * 8 + b"\x7f" + b"\xff" * 8 + b"\x7f" + dense_payload(2, 2, 0x3F800000, [1, -2])
        ),
    )

    # 7.8 GRADIENT with DENSE, every width 1..16, both code extremes.
    dims = {
        1: 13,
        2: 7,
        3: 9,
        4: 5,
        5: 3,
        6: 11,
        7: 4,
        8: 6,
        9: 5,
        10: 3,
        11: 4,
        12: 6,
        13: 2,
        14: 3,
        15: 5,
        16: 4,
    }
    for bits in range(1, 17):
        low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        d = dims[bits]
        codes = [
            (low if i % 2 == 0 else high) if i < 2 else ((i * 37) % (high - low + 1)) + low for i in range(d)
        ]
        codes[-1] = high if d % 2 else low
        scale_pattern = 0x3C000000 + bits  # a float32 just above 2**-7
        scale = struct.unpack("<f", f32raw(scale_pattern))[0]
        vec = DenseQuantized(bits, scale, np.array(codes, dtype=np.int64))
        valid(
            f"gradient-dense-b{bits:02d}",
            f"GRADIENT with DENSE b = {bits}, d = {d}: codes {low} and {high} both present",
            ["WF-5.1", "WF-5.5", "WF-7.8"],
            Gradient(epoch=1, version=bits, vector=vec),
            context={"dim": d},
            expect_hex=frame(
                1, 8, 0, varint(1) + varint(bits) + dense_payload(d, bits, scale_pattern, codes)
            ),
        )
    valid(
        "gradient-dense-d1-b1",
        "GRADIENT with DENSE d = 1, b = 1, code -1 (one bit, seven zero padding bits)",
        ["WF-5.1", "WF-5.5"],
        Gradient(epoch=0, version=0, vector=DenseQuantized(1, 2.0, np.array([-1]))),
        expect_hex=frame(1, 8, 0, b"\x00\x00" + dense_payload(1, 1, 0x40000000, [-1])),
    )
    valid(
        "gradient-dense-d1-b16-subnormal-scale",
        "GRADIENT with DENSE d = 1, b = 16 and the smallest subnormal float32 as scale",
        ["WF-5.5"],
        Gradient(
            epoch=0, version=0, vector=DenseQuantized(16, float(np.float32(1.4e-45)), np.array([-32768]))
        ),
        expect_hex=frame(1, 8, 0, b"\x00\x00" + dense_payload(1, 16, 0x00000001, [-32768])),
    )

    build_valid_dense_rice()

    # Sparse: bitmap vs Rice (5.6).
    def sparse(
        slug: str,
        description: str,
        dim: int,
        bits: int,
        indices: list[int],
        codes: list[int],
        want: Encoding,
        want_k: int = 0,
    ) -> None:
        vec = SparseQuantized(dim, bits, 0.5, np.array(indices), np.array(codes))
        g = gaps_of(indices)
        k, size = best_rice(g)
        if want == Encoding.SPARSE_RICE:
            assert size < (dim + 7) // 8 and k == want_k, (slug, k, size)
            payload = sparse_head(6, dim, bits, 0x3F000000, codes) + rice_block(g, k)
        else:
            assert size >= (dim + 7) // 8, (slug, size)
            payload = sparse_head(5, dim, bits, 0x3F000000, codes) + bitmap_block(dim, indices)
        valid(
            slug,
            description,
            ["WF-5.1", "WF-5.6", "WF-7.8"],
            Gradient(epoch=2, version=9, vector=vec),
            context={"dim": dim},
            expect_hex=frame(1, 8, 0, varint(2) + varint(9) + payload),
        )

    sparse(
        "gradient-sparse-bitmap-d13",
        "SPARSE_BITMAP, d = 13 (not a multiple of 8): 3 padding bits",
        13,
        4,
        [0, 4, 12],
        [-8, 7, 1],
        Encoding.SPARSE_BITMAP,
    )
    sparse(
        "gradient-sparse-bitmap-d1",
        "SPARSE_BITMAP with d = 1, b = 1: the only coordinate is -1",
        1,
        1,
        [0],
        [-1],
        Encoding.SPARSE_BITMAP,
    )
    sparse(
        "gradient-sparse-bitmap-tie",
        "SPARSE_BITMAP where the best Rice block (k = 2) is as large as the 3-byte bitmap: tie -> bitmap",
        24,
        2,
        [0, 23],
        [1, -2],
        Encoding.SPARSE_BITMAP,
    )
    sparse(
        "gradient-sparse-rice-k0",
        "SPARSE_RICE with k = 0: three adjacent indices in d = 64",
        64,
        5,
        [5, 6, 7],
        [-16, 15, 3],
        Encoding.SPARSE_RICE,
        0,
    )
    sparse(
        "gradient-sparse-rice-k3-tie",
        "SPARSE_RICE, one index 63 in d = 64: k = 3..8 all give 3 bytes, the smallest k (3) is used",
        64,
        8,
        [63],
        [-128],
        Encoding.SPARSE_RICE,
        3,
    )
    sparse(
        "gradient-sparse-rice-k10",
        "SPARSE_RICE with k = 10: four spread indices in d = 4096",
        4096,
        12,
        [100, 1200, 2500, 4000],
        [-2048, 2047, 5, -1],
        Encoding.SPARSE_RICE,
        10,
    )

    # QSGD (5.7).
    def qsgd(slug: str, description: str, s: int, norm_pattern: int, levels: list[int]) -> None:
        norm = struct.unpack("<f", f32raw(norm_pattern))[0]
        vec = QSGDVector(s, norm, np.array(levels))
        valid(
            slug,
            description,
            ["WF-5.7", "WF-7.8"],
            Gradient(epoch=4, version=1, vector=vec),
            context={"dim": len(levels)},
            expect_hex=frame(
                1, 8, 0, varint(4) + varint(1) + qsgd_payload(len(levels), s, norm_pattern, levels)
            ),
        )

    qsgd("gradient-qsgd-s1", "QSGD with s = 1: levels -1, 0, 1", 1, 0x40800000, [1, 0, -1, -1, 0, 1, 0, 0, 1])
    qsgd(
        "gradient-qsgd-s65535",
        "QSGD with the largest s = 65535: levels 0, +-1, +-s",
        65535,
        0x3F800000,
        [65535, -65535, 0, 1, -1, 32767],
    )
    qsgd("gradient-qsgd-s10-d1", "QSGD with s = 10 and d = 1 (level -10)", 10, 0x3F000000, [-10])

    valid(
        "gradient-zero",
        "GRADIENT carrying the ZERO vector",
        ["WF-5", "WF-7.8"],
        Gradient(epoch=5, version=16383, vector=ZeroVector(1)),
        expect_hex=frame(1, 8, 0, varint(5) + b"\xff\x7f" + b"\x20\x01"),
    )

    # 7.9-7.11
    valid("heartbeat", "HEARTBEAT: empty body", ["WF-7.9"], Heartbeat(), expect_hex=frame(1, 9, 0, b""))
    valid(
        "error-utf8-reason",
        "ERROR with code UNKNOWN_EPOCH, epoch/version, a UTF-8 reason",
        ["WF-7.10", "WF-9"],
        ErrorMessage(code=int(ErrorCode.UNKNOWN_EPOCH), epoch=7, version=MAX63, reason="époque inconnue ✗"),
        expect_hex=frame(
            1, 10, 0, struct.pack("<H", 12) + varint(7) + varint(MAX63) + "époque inconnue ✗".encode()
        ),
    )
    valid(
        "error-unregistered-code",
        "ERROR with a code outside the registry (65535) and an empty reason",
        ["WF-7.10", "WF-9"],
        ErrorMessage(code=0xFFFF, epoch=0, version=0, reason=""),
        expect_hex=frame(1, 10, 0, b"\xff\xff\x00\x00"),
    )
    valid(
        "close-no-error",
        "CLOSE with NO_ERROR and an empty reason",
        ["WF-7.11"],
        Close(code=0, reason=""),
        expect_hex=frame(1, 11, 0, b"\x00\x00"),
    )
    valid(
        "close-utf8-reason",
        "CLOSE with GOING_AWAY and a UTF-8 reason (4-byte character included)",
        ["WF-7.11", "WF-9"],
        Close(code=int(ErrorCode.GOING_AWAY), reason="au revoir 👋"),
        expect_hex=frame(1, 11, 0, struct.pack("<H", 19) + "au revoir 👋".encode()),
    )
    valid(
        "close-reason-at-limit",
        "CLOSE whose reason is exactly max_reason_bytes (8) long",
        ["WF-7.11", "WF-10"],
        Close(code=1, reason="12345678"),
        context={"limits": {"max_reason_bytes": 8}},
        expect_hex=frame(1, 11, 0, b"\x01\x00" + b"12345678"),
    )

    # 7.12-7.14: the shared-secret handshake.  Fixed nonces; the proofs come from aiodq.protocol.handshake and
    # are checked against hmac (proofs()).  "auth" records what they were computed from.
    pw, pm = proofs(SECRET, MASTER_NONCE, WORKER_NONCE)
    auth = {"secret": SECRET.hex(), "master_nonce": MASTER_NONCE.hex(), "worker_nonce": WORKER_NONCE.hex()}
    valid(
        "auth-challenge",
        "AUTH_CHALLENGE carrying the master's 32-byte nonce Nm",
        ["WF-6.1-8", "WF-7.12-1", "WF-7.12-3"],
        AuthChallenge(nonce=MASTER_NONCE),
        expect_hex=frame(1, 0x0C, 0, MASTER_NONCE),
        auth=auth,
    )
    valid(
        "auth-response",
        "AUTH_RESPONSE: the worker's nonce Nw, then Pw = HMAC-SHA256(K, 'aiodq-v1 worker' || Nm || Nw)",
        ["WF-6.1-8", "WF-7.13-1", "WF-7.13-2"],
        AuthResponse(nonce=WORKER_NONCE, mac=pw),
        expect_hex=frame(1, 0x0D, 0, WORKER_NONCE + pw),
        auth=auth,
    )
    valid(
        "auth-confirm",
        "AUTH_CONFIRM: Pm = HMAC-SHA256(K, 'aiodq-v1 master' || Nm || Nw)",
        ["WF-6.1-8", "WF-7.14-1"],
        AuthConfirm(mac=pm),
        expect_hex=frame(1, 0x0E, 0, pm),
        auth=auth,
    )


#: The worked example of wire-format.md A.16: 16 four-bit codes whose best Rice parameter is k = 1.
A16_CODES = [0, -1, 2, -2, 0, -1, 0, -2, -1, 2, 0, -2, -1, 0, -2, -1]
#: d = 16, b = 4: k* = 0 (a tie with k = 1), R = 7 < 8; both code extremes -8 and 7.
RICE_B4_K0 = [0, 0, 1, 0, 0, 0, -1, 0, 0, 0, 0, -8, 0, 0, 7, 0]
#: d = 16, b = 8: k* = 0 and R = 6, ten bytes below DENSE (room for edits before step 5 fails).
RICE_B8_SLACK = [0, 3, 0, 0, -1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, -5]
#: d = 12, b = 8: k* = 1 (a tie with k = 2), so 12 remainder bits and 4 padding bits.
RICE_B8_K1 = [0, 0, 0, -6, -3, 0, -2, -6, 1, -2, 0, -3]


def build_valid_dense_rice() -> None:
    """DENSE_RICE (wire-format.md 5.8): canonical k, both code extremes, MODEL and GRADIENT."""

    def rice(
        slug: str,
        description: str,
        bits: int,
        scale_pattern: int,
        codes: list[int],
        want_k: int,
        *,
        message: str = "gradient",
        relative: bool = False,
        cites: tuple[str, ...] = (),
    ) -> None:
        dim = len(codes)
        k, size, _ = best_dense_rice(codes, bits)
        assert k == want_k and size < (dim * bits + 7) // 8, (slug, k, size)
        scale = struct.unpack("<f", f32raw(scale_pattern))[0]
        vector = DenseQuantized(bits, scale, np.array(codes, dtype=np.int64))
        payload = dense_rice_payload(dim, bits, scale_pattern, codes)
        event: Any
        if message == "gradient":
            event = Gradient(epoch=1, version=7, vector=vector)
            data = frame(1, 8, 0, varint(1) + varint(7) + payload)
        else:
            event = ModelMessage(epoch=2, version=9, vector=vector, relative=relative)
            data = frame(1, 7, int(relative), varint(2) + varint(9) + payload)
        base = ["WF-5.8-1", "WF-5.8-2", "WF-5.8-3", "WF-5.8-4", "WF-5.8-6"]
        valid(slug, description, [*base, *cites], event, context={"dim": dim}, expect_hex=data)

    rice(
        "gradient-dense-rice-b4-k0",
        "DENSE_RICE b = 4, d = 16 with codes -8 and 7 (z = 15, 14): k* = 0 (R(0) = R(1) = 7, the tie "
        "goes to the smaller k), 7 < 8 DENSE bytes",
        4,
        0x3E800000,
        RICE_B4_K0,
        0,
        cites=("WF-7.8",),
    )
    rice(
        "gradient-dense-rice-b4-k1",
        "DENSE_RICE b = 4, d = 16 (the worked example A.16): R(k) = 7, 6, 8, 9, so k* = 1",
        4,
        0x3E800000,
        A16_CODES,
        1,
        cites=("WF-7.8",),
    )
    rice(
        "gradient-dense-rice-b2",
        "DENSE_RICE b = 2 (the narrowest width that can win), d = 32, codes -2 and 1: k* = 0, 6 < 8",
        2,
        0x3F000000,
        [0] * 5 + [-2] + [0] * 20 + [1] + [0] * 5,
        0,
        cites=("WF-7.8",),
    )
    rice(
        "gradient-dense-rice-b8-k0",
        "DENSE_RICE b = 8, d = 8, two codes +-1: k* = 0, R = 3 < 8 (no remainder bytes)",
        8,
        0x3C000000,
        [0, 1, 0, 0, -1, 0, 0, 0],
        0,
        cites=("WF-5.1-5", "WF-7.8"),
    )
    b8 = [(-1) ** i * ((i * 5) % 11) for i in range(32)]
    b8[3], b8[20] = -128, 127
    rice(
        "gradient-dense-rice-b8-k4",
        "DENSE_RICE b = 8, d = 32 with codes -128 and 127 (z = 255, 254) among small ones: k* = 4",
        8,
        0x3B800000,
        b8,
        4,
        cites=("WF-7.8",),
    )
    rice(
        "gradient-dense-rice-b8-k1-padding",
        "DENSE_RICE b = 8, d = 12: k* = 1 (a tie with k = 2), 12 remainder bits, 4 zero padding bits",
        8,
        0x3D800000,
        RICE_B8_K1,
        1,
        cites=("WF-5.1-3", "WF-7.8"),
    )
    b16 = [0] * 64
    b16[17] = -32768
    rice(
        "gradient-dense-rice-b16-k9-tie",
        "DENSE_RICE b = 16, d = 64, one code -32768 (z = 65535): R(9) = R(10) = 97, so k* = 9; 97 < 128",
        16,
        0x38000000,
        b16,
        9,
        cites=("WF-7.8",),
    )
    rice(
        "model-dense-rice",
        "MODEL (no RELATIVE) carrying DENSE_RICE b = 5, d = 20: k* = 2, the model x = code x scale",
        5,
        0x3D000000,
        [0, 0, 3, -16, 0, 15, 0, 0, -1, 0, 0, 0, 2, 0, 0, 0, 0, -2, 0, 1],
        2,
        message="model",
        cites=("WF-7.7",),
    )
    rice(
        "model-relative-dense-rice",
        "MODEL with RELATIVE carrying DENSE_RICE b = 3, d = 24: x = x_snap + code x scale",
        3,
        0x3C800000,
        [0, 1, 0, 0, -1, 0, 0, 0, 0, 0, -4, 0, 0, 3, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        0,
        message="model",
        relative=True,
        cites=("WF-7.7-2",),
    )
    # WF-5-2: DENSE stays valid where DENSE_RICE would be smaller (a sender MAY use DENSE_RICE).
    valid(
        "gradient-dense-where-rice-smaller",
        "plain DENSE b = 4, d = 16 for the codes of A.16: still valid (5-2), although DENSE_RICE would "
        "take 6 bytes instead of 8",
        ["WF-5-2", "WF-5.5", "WF-5.8-4"],
        Gradient(epoch=1, version=7, vector=DenseQuantized(4, 0.25, np.array(A16_CODES))),
        context={"dim": 16},
        expect_hex=frame(1, 8, 0, varint(1) + varint(7) + dense_payload(16, 4, 0x3E800000, A16_CODES)),
    )


# -- invalid vectors ---------------------------------------------------------------------------


def invalid(
    slug: str,
    description: str,
    cites: list[str],
    data: bytes,
    code: ErrorCode,
    context: dict[str, Any] | None = None,
) -> None:
    ctx = make_context(context)
    try:
        reader = FrameReader(ctx.limits)
        reader.feed(data)
        fr = reader.next_frame()
        assert fr is not None and reader.buffered == 0, slug
        decode_message(fr, ctx)
    except CodecError as exc:
        if exc.code != code:
            ERRORS.append(
                f"{slug}: expected {code.name}, aiodq raises {exc.code.name} ({exc}); hex {data.hex()}"
            )
            return
    except Exception as exc:
        ERRORS.append(
            f"{slug}: expected {code.name}, aiodq raises {type(exc).__name__}: {exc}; hex {data.hex()}"
        )
        return
    else:
        ERRORS.append(f"{slug}: expected {code.name}, aiodq accepts it; hex {data.hex()}")
        return
    doc: dict[str, Any] = {
        "kind": "invalid",
        "description": description,
        "cites": cites,
        "hex": data.hex(),
        "error": code.name,
    }
    if context:
        doc["context"] = context
    add(slug, doc)


def grad(body_vector: bytes, epoch: int = 1, version: int = 1, flags: int = 0) -> bytes:
    return frame(1, 8, flags, varint(epoch) + varint(version) + body_vector)


def model(body_vector: bytes, flags: int = 0) -> bytes:
    return frame(1, 7, flags, varint(1) + varint(1) + body_vector)


def build_invalid() -> None:
    E = ErrorCode
    hb = 9
    invalid(
        "frame-too-large",
        "a header declaring 65 body bytes over a 64-byte limit (rejected from the header alone)",
        ["WF-3", "WF-10"],
        struct.pack("<BBBI", 1, hb, 0, 65),
        E.FRAME_TOO_LARGE,
        {"limits": {"max_frame_bytes": 64}},
    )
    invalid(
        "unknown-type-0x0f",
        "message type 0x0F is not defined (0x0C..0x0E are the AUTH messages)",
        ["WF-3", "WF-7-1"],
        frame(1, 0x0F, 0, b""),
        E.UNKNOWN_MESSAGE_TYPE,
    )
    invalid(
        "unknown-type-0xff",
        "message type 0xFF is not defined, whatever its body",
        ["WF-3", "WF-7-1"],
        frame(1, 0xFF, 0, bytes(32)),
        E.UNKNOWN_MESSAGE_TYPE,
    )
    invalid(
        "reserved-flag-heartbeat",
        "HEARTBEAT with flag bit 0 set (no flags are defined for it)",
        ["WF-3", "WF-7.9"],
        frame(1, hb, 0x01, b""),
        E.MALFORMED_FRAME,
    )
    invalid(
        "reserved-flag-model",
        "MODEL with flag 0x02 set (only RELATIVE = 0x01 is defined)",
        ["WF-3", "WF-7.7"],
        model(b"\x20\x02", flags=0x02),
        E.MALFORMED_FRAME,
    )
    invalid(
        "truncated-close",
        "CLOSE body of one byte: the 16-bit code is cut",
        ["WF-7.11"],
        frame(1, 11, 0, b"\x00"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "truncated-dense-codes",
        "DENSE b = 8, d = 4 with only 3 code bytes",
        ["WF-5.5"],
        grad(dense_payload(4, 8, 0x3F800000, [1, 2, 3, 4])[:-1]),
        E.MALFORMED_FRAME,
    )
    invalid(
        "truncated-varint",
        "GRADIENT whose epoch varint has its continuation bit set at the end of the body",
        ["WF-4.2"],
        frame(1, 8, 0, b"\x81"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "trailing-bytes-heartbeat",
        "HEARTBEAT with one body byte",
        ["WF-7.9"],
        frame(1, hb, 0, b"\x00"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "trailing-bytes-dense",
        "DENSE payload followed by an extra byte",
        ["WF-5.5"],
        grad(dense_payload(2, 8, 0x3F800000, [1, -1]) + b"\x00"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "varint-not-shortest",
        "epoch 0 written as 0x80 0x00",
        ["WF-4.2"],
        frame(1, 8, 0, b"\x80\x00" + varint(1) + b"\x20\x01"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "varint-2-pow-63",
        "epoch 2**63 (ten bytes) exceeds 2**63 - 1",
        ["WF-4.2"],
        frame(1, 7, 0, b"\x80" * 9 + b"\x01" + varint(0) + b"\x30\x01"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "reserved-encoding-9",
        "vector descriptor with the reserved encoding nibble 9 (8 is DENSE_RICE since 5.8)",
        ["WF-5", "WF-5.2-3", "WF-12-2"],
        grad(b"\x90\x01"),
        E.UNSUPPORTED_ENCODING,
    )
    invalid(
        "reserved-encoding-15",
        "vector descriptor 0xF3: the reserved encoding is refused before the low nibble matters",
        ["WF-5.2-3", "WF-12-2"],
        grad(b"\xf3\x01"),
        E.UNSUPPORTED_ENCODING,
    )
    invalid(
        "raw-f32-low-nibble",
        "RAW_F32 descriptor 0x01: the low nibble must be zero",
        ["WF-5"],
        frame(1, 4, 0, varint(0) + b"\x01\x01" + struct.pack("<f", 1.0)),
        E.MALFORMED_FRAME,
    )
    invalid(
        "qsgd-low-nibble",
        "QSGD descriptor 0x71",
        ["WF-5", "WF-5.7"],
        grad(b"\x71" + qsgd_payload(1, 1, 0x3F800000, [1])[1:]),
        E.MALFORMED_FRAME,
    )
    invalid("dimension-zero", "ZERO vector of dimension 0", ["WF-5"], grad(b"\x20\x00"), E.INVALID_PAYLOAD)
    invalid(
        "dimension-over-limit",
        "ZERO vector of dimension 17 over max_dimension 16",
        ["WF-5", "WF-10"],
        grad(b"\x20\x11"),
        E.LIMIT_EXCEEDED,
        {"limits": {"max_dimension": 16}},
    )
    invalid(
        "dimension-huge-raw",
        "RAW_F64 declaring d = 2**62 (default limit) and no values: refused before allocating",
        ["WF-5", "WF-10"],
        frame(1, 4, 0, varint(0) + b"\x10" + varint(1 << 62)),
        E.LIMIT_EXCEEDED,
    )
    invalid(
        "wrong-dimension",
        "ZERO vector of dimension 5 where CONFIG set d = 4",
        ["WF-5", "WF-7.3"],
        grad(b"\x20\x05"),
        E.WRONG_DIMENSION,
        {"dim": 4},
    )
    invalid(
        "raw-f32-nan",
        "RAW_F32 holding a quiet NaN",
        ["WF-5"],
        frame(1, 4, 0, varint(0) + b"\x00\x02" + f32raw(0x3F800000) + f32raw(0x7FC00000)),
        E.NON_FINITE,
    )
    invalid(
        "raw-f64-inf",
        "RAW_F64 holding +Inf",
        ["WF-5"],
        frame(1, 4, 0, varint(0) + b"\x10\x01" + f64raw(0x7FF0000000000000)),
        E.NON_FINITE,
    )
    invalid(
        "loss-nan",
        "SNAPSHOT_GRADIENT whose float64 loss is NaN",
        ["WF-7.5"],
        frame(
            1, 5, 0, varint(0) + varint(1) + varint(0) + f64raw(0x7FF8000000000000) + b"\x00\x01" + f32raw(0)
        ),
        E.NON_FINITE,
    )
    invalid(
        "dense-scale-nan",
        "DENSE with a NaN scale",
        ["WF-5.5"],
        grad(dense_payload(1, 8, 0x7FC00000, [1])),
        E.NON_FINITE,
    )
    invalid(
        "dense-scale-negative",
        "DENSE with scale -1.0",
        ["WF-5.5"],
        grad(dense_payload(1, 8, 0xBF800000, [1])),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "dense-scale-zero",
        "DENSE with scale +0.0",
        ["WF-5.5"],
        grad(dense_payload(1, 8, 0x00000000, [1])),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "dense-scale-negative-zero",
        "DENSE with scale -0.0",
        ["WF-5.5"],
        grad(dense_payload(1, 8, 0x80000000, [1])),
        E.INVALID_PAYLOAD,
    )
    bad = bytearray(dense_payload(3, 1, 0x3F800000, [-1, 0, -1]))
    bad[-1] |= 0x80
    invalid(
        "dense-padding-bit",
        "DENSE b = 1, d = 3 with padding bit 7 of the code byte set",
        ["WF-5.1", "WF-5.5"],
        grad(bytes(bad)),
        E.INVALID_PAYLOAD,
    )

    build_invalid_dense_rice()

    # Sparse (5.6).
    bm = bitmap_block
    invalid(
        "sparse-nnz-zero",
        "SPARSE_BITMAP with nnz = 0",
        ["WF-5.6"],
        grad(sparse_head(5, 8, 4, 0x3F800000, [], nnz=0) + bm(8, [])),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "sparse-nnz-over-dim",
        "SPARSE_BITMAP with nnz = 9 > d = 8",
        ["WF-5.6"],
        grad(sparse_head(5, 8, 8, 0x3F800000, [1] * 9) + bm(8, list(range(8)))),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "sparse-zero-code",
        "SPARSE_BITMAP whose second code is 0",
        ["WF-5.6"],
        grad(sparse_head(5, 8, 4, 0x3F800000, [3, 0]) + bm(8, [1, 5])),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "sparse-code-padding",
        "SPARSE_BITMAP b = 3, nnz = 2 (6 bits) with code padding bit 7 set",
        ["WF-5.1", "WF-5.6"],
        grad(
            sparse_head(5, 8, 3, 0x3F800000, [3, -4])[:-1]
            + bytes((packed([3, -4], 3)[0] | 0x80,))
            + bm(8, [1, 5])
        ),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "bitmap-popcount-mismatch",
        "SPARSE_BITMAP with nnz = 2 but three bits set",
        ["WF-5.6"],
        grad(sparse_head(5, 8, 4, 0x3F800000, [3, 2]) + bm(8, [1, 5, 6])),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "bitmap-padding-bit",
        "SPARSE_BITMAP d = 13 with padding bit 13 set (and counted)",
        ["WF-5.6"],
        grad(sparse_head(5, 13, 4, 0x3F800000, [3, 2]) + bm(13, [1, 13])),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "bitmap-where-rice-smaller",
        "SPARSE_BITMAP for indices 5, 6, 7 of d = 64: Rice k = 0 takes 2 bytes < 8",
        ["WF-5.6"],
        grad(sparse_head(5, 64, 5, 0x3F000000, [-16, 15, 3]) + bm(64, [5, 6, 7])),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "rice-where-bitmap-tie",
        "SPARSE_RICE (k = 2, 3 bytes) where the bitmap is also 3 bytes: the tie goes to the bitmap",
        ["WF-5.6"],
        grad(sparse_head(6, 24, 2, 0x3F000000, [1, -2]) + rice_block(gaps_of([0, 23]), 2)),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "rice-where-bitmap-smaller",
        "SPARSE_RICE k = 0 for d = 16 (Rice 2 bytes + ... vs bitmap 2 bytes)",
        ["WF-5.6"],
        grad(sparse_head(6, 16, 2, 0x3F000000, [1]) + rice_block([3], 0)),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "rice-k-tie-not-smallest",
        "SPARSE_RICE index 63 of d = 64 with k = 5: k = 3 gives the same 3 bytes and is smaller",
        ["WF-5.6"],
        grad(sparse_head(6, 64, 8, 0x3F000000, [-128]) + rice_block([63], 5)),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "rice-k-not-best",
        "SPARSE_RICE with k = 8 (8 bytes) where k = 10 gives 7 bytes",
        ["WF-5.6"],
        grad(
            sparse_head(6, 4096, 12, 0x3F000000, [-2048, 2047, 5, -1])
            + rice_block(gaps_of([100, 1200, 2500, 4000]), 8)
        ),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "rice-k-17",
        "SPARSE_RICE with k = 17 > 16",
        ["WF-5.6"],
        grad(sparse_head(6, 1 << 20, 8, 0x3F000000, [1]) + bytes((17,)) + b"\x00\x00\x00\x01"),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "rice-index-beyond-dim",
        "SPARSE_RICE (k = 4, canonical for gap 64) decoding index 64 in d = 64",
        ["WF-5.6"],
        grad(sparse_head(6, 64, 8, 0x3F000000, [1]) + rice_block([64], 4)),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "rice-remainder-padding",
        "SPARSE_RICE k = 3 for index 63 of d = 64 with remainder padding bit 7 set",
        ["WF-5.1", "WF-5.6"],
        grad(sparse_head(6, 64, 8, 0x3F000000, [-128]) + b"\x03" + bytes((0x07 | 0x80,)) + b"\x80"),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "rice-unary-extra-word",
        "SPARSE_RICE k = 0 for indices 5, 6, 7 of d = 64 whose unary stream holds a fourth code word",
        ["WF-5.6"],
        grad(sparse_head(6, 64, 5, 0x3F000000, [-16, 15, 3]) + b"\x00" + bytes((0b1111_0000 | 0b1000,))),
        E.INVALID_PAYLOAD,
    )

    # QSGD (5.7).
    invalid(
        "qsgd-s-zero",
        "QSGD with s = 0",
        ["WF-5.7"],
        grad(b"\x70\x01\x00" + f32raw(0x3F800000) + b"\x01"),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "qsgd-s-65536",
        "QSGD with s = 65536 > 65535",
        ["WF-5.7"],
        grad(b"\x70\x01" + varint(65536) + f32raw(0x3F800000) + b"\x01"),
        E.INVALID_PAYLOAD,
    )
    # level 2 with s = 1: m = 3, unary "01", mantissa bit 1, sign 0.
    invalid(
        "qsgd-level-above-s",
        "QSGD s = 1 with a level of magnitude 2",
        ["WF-5.7"],
        grad(b"\x70\x01\x01" + f32raw(0x3F800000) + b"\x02\x01\x00"),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "qsgd-level-above-s-exponent",
        "QSGD s = 2 with a level of magnitude 3 (m = 4, exponent 2 > 1)",
        ["WF-5.7"],
        grad(b"\x70\x01\x02" + f32raw(0x3F800000) + b"\x04\x00\x00"),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "qsgd-sign-padding",
        "QSGD with one nonzero level and sign padding bit 1 set",
        ["WF-5.7"],
        grad(qsgd_payload(2, 1, 0x3F800000, [1, 0])[:-1] + b"\x02"),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "qsgd-mantissa-padding",
        "QSGD s = 1, levels [1]: mantissa padding bit set",
        ["WF-5.7"],
        grad(b"\x70\x01\x01" + f32raw(0x3F800000) + b"\x02\x80\x00"),
        E.INVALID_PAYLOAD,
    )

    # Encodings per message (5, 7) and announced encodings (7.1, 7.2).
    invalid(
        "relative-equals-snapshot",
        "MODEL with RELATIVE and EQUALS_SNAPSHOT",
        ["WF-7.7"],
        model(b"\x30\x02", flags=0x01),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "model-sparse",
        "MODEL carrying SPARSE_BITMAP (GRADIENT only)",
        ["WF-7.7", "WF-5.6"],
        model(sparse_head(5, 8, 4, 0x3F800000, [3]) + bm(8, [1])),
        E.UNSUPPORTED_ENCODING,
    )
    invalid(
        "snapshot-dense",
        "SNAPSHOT carrying DENSE (full precision only)",
        ["WF-7.4"],
        frame(1, 4, 0, varint(0) + dense_payload(1, 8, 0x3F800000, [1])),
        E.UNSUPPORTED_ENCODING,
    )
    invalid(
        "gradient-equals-snapshot",
        "GRADIENT carrying EQUALS_SNAPSHOT (MODEL only)",
        ["WF-7.8"],
        grad(b"\x30\x01"),
        E.UNSUPPORTED_ENCODING,
    )
    invalid(
        "unannounced-encoding",
        "DENSE GRADIENT to a receiver that announced only RAW_F32, RAW_F64, ZERO",
        ["WF-7.1", "WF-7.2", "WF-5"],
        grad(dense_payload(1, 8, 0x3F800000, [1])),
        E.UNSUPPORTED_ENCODING,
        {"encodings": ["RAW_F32", "RAW_F64", "ZERO"]},
    )

    # msgpack control messages (7.1-7.3).
    def mp(value: Any) -> bytes:
        return msgpack.packb(value, use_bin_type=True)

    hello_ok = {"magic": "aiodq", "min_version": 1, "max_version": 1, "encodings": [0, 1], "name": ""}
    invalid(
        "hello-msgpack-garbage",
        "HELLO body 0xC1 (never used in msgpack)",
        ["WF-7.1"],
        frame(1, 1, 0, b"\xc1"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "hello-msgpack-trailing",
        "HELLO body: a valid map followed by a second msgpack value",
        ["WF-7.1"],
        frame(1, 1, 0, mp(hello_ok) + b"\x00"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "hello-no-magic",
        "HELLO without the magic field",
        ["WF-7.1"],
        frame(1, 1, 0, mp({k: v for k, v in hello_ok.items() if k != "magic"})),
        E.INVALID_CONFIG,
    )
    invalid(
        "hello-min-above-max",
        "HELLO with min_version 2 > max_version 1",
        ["WF-7.1", "WF-6"],
        frame(1, 1, 0, mp({**hello_ok, "min_version": 2})),
        E.INVALID_CONFIG,
    )
    invalid(
        "welcome-missing-worker-id",
        "WELCOME without worker_id",
        ["WF-7.2"],
        frame(1, 2, 0, mp({"version": 1, "encodings": [0]})),
        E.INVALID_CONFIG,
    )
    invalid(
        "config-missing-algorithm",
        "CONFIG without the algorithm field",
        ["WF-7.3"],
        frame(1, 3, 0, mp({"dim": 4, "params": {}})),
        E.INVALID_CONFIG,
    )
    invalid(
        "config-dim-over-limit",
        "CONFIG with dim 17 over max_dimension 16",
        ["WF-7.3", "WF-10"],
        frame(1, 3, 0, mp({"dim": 17, "algorithm": "asylpg", "params": {}})),
        E.LIMIT_EXCEEDED,
        {"limits": {"max_dimension": 16}},
    )

    # ERROR and CLOSE reasons (7.10, 7.11, 10).
    invalid(
        "close-reason-not-utf8",
        "CLOSE whose reason holds the byte 0xFF",
        ["WF-7.11"],
        frame(1, 11, 0, b"\x00\x00abc\xff"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "close-reason-over-limit",
        "CLOSE whose reason is 9 bytes over max_reason_bytes 8",
        ["WF-7.11", "WF-10"],
        frame(1, 11, 0, b"\x00\x00123456789"),
        E.LIMIT_EXCEEDED,
        {"limits": {"max_reason_bytes": 8}},
    )

    # AUTH messages (7.12-7.14): a body of the wrong length is MALFORMED_FRAME.
    for slug, mtype, length, description, cite in (
        ("auth-challenge-empty", 0x0C, 0, "AUTH_CHALLENGE with an empty body", "WF-7.12-3"),
        ("auth-challenge-31", 0x0C, 31, "AUTH_CHALLENGE with a 31-byte nonce", "WF-7.12-3"),
        ("auth-challenge-33", 0x0C, 33, "AUTH_CHALLENGE with 33 body bytes", "WF-7.12-3"),
        ("auth-response-32", 0x0D, 32, "AUTH_RESPONSE with a nonce and no mac", "WF-7.13-2"),
        ("auth-response-63", 0x0D, 63, "AUTH_RESPONSE one byte short of 64", "WF-7.13-2"),
        ("auth-response-65", 0x0D, 65, "AUTH_RESPONSE one byte over 64", "WF-7.13-2"),
        ("auth-confirm-31", 0x0E, 31, "AUTH_CONFIRM one byte short of 32", "WF-7.14-1"),
        ("auth-confirm-64", 0x0E, 64, "AUTH_CONFIRM with 64 body bytes", "WF-7.14-1"),
    ):
        invalid(slug, description, [cite], frame(1, mtype, 0, bytes(range(length))), E.MALFORMED_FRAME)
    invalid(
        "auth-confirm-flag",
        "AUTH_CONFIRM with flag bit 0 set (the AUTH messages define no flag)",
        ["WF-3-6", "WF-7.14"],
        frame(1, 0x0E, 0x01, bytes(32)),
        E.MALFORMED_FRAME,
    )


def build_invalid_dense_rice() -> None:
    """DENSE_RICE (wire-format.md 5.8): one vector per step of 5.8-5, with its exact code."""
    E = ErrorCode
    steps = ["WF-5.8-5"]
    one = 0x3F800000

    def block(codes: list[int], k: int | None = None) -> bytes:
        return dense_rice_block(codes, best_dense_rice(codes, 8)[0] if k is None else k)

    slack = block(RICE_B8_SLACK)  # b = 8, d = 16: k = 0 and a 5-byte unary stream (36 bits)
    assert slack[0] == 0 and len(slack) == 6 and slack[-1] >> 4 == 0, slack.hex()
    head8 = dense_rice_head(16, 8, one)
    # Step 1: the scale, as in 5.5-2.
    invalid(
        "dense-rice-scale-truncated",
        "DENSE_RICE b = 8, d = 16 whose scale has only 3 bytes",
        [*steps, "WF-5.8-1"],
        grad(head8[:-1]),
        E.MALFORMED_FRAME,
    )
    invalid(
        "dense-rice-scale-nan",
        "DENSE_RICE with a NaN scale (then a valid block)",
        [*steps, "WF-5.8-1", "WF-5.5-2"],
        grad(dense_rice_head(16, 8, 0x7FC00000) + slack),
        E.NON_FINITE,
    )
    invalid(
        "dense-rice-scale-negative",
        "DENSE_RICE with scale -1.0 (then a valid block)",
        [*steps, "WF-5.8-1", "WF-5.5-2"],
        grad(dense_rice_head(16, 8, 0xBF800000) + slack),
        E.INVALID_PAYLOAD,
    )
    # Step 2: the k byte.
    invalid(
        "dense-rice-k-missing",
        "DENSE_RICE b = 8, d = 16: the payload ends after the scale",
        steps,
        grad(head8),
        E.MALFORMED_FRAME,
    )
    # Step 3: k in 0..b-1.
    invalid(
        "dense-rice-k-equals-b",
        "DENSE_RICE b = 4, d = 16 with k = 4 = b (k must be below b), checked before the remainders",
        [*steps, "WF-5.8-3"],
        grad(dense_rice_head(16, 4, one) + b"\x04"),
        E.INVALID_PAYLOAD,
    )
    # Step 4: the remainders.
    invalid(
        "dense-rice-remainders-truncated",
        "DENSE_RICE b = 8, d = 16, k = 2: 3 of the 4 remainder bytes",
        [*steps, "WF-5.8-3"],
        grad(head8 + b"\x02" + bytes(3)),
        E.MALFORMED_FRAME,
    )
    # Step 5: strictly smaller than the DENSE codes, checked before any stream is decoded.
    tie = [-1] + [0] * 15
    assert best_dense_rice(tie, 2)[:2] == (0, 4)
    invalid(
        "dense-rice-not-smaller",
        "DENSE_RICE b = 2, d = 16, one code -1: the canonical block (k = 0) takes 4 bytes, as many as "
        "DENSE, so the vector is DENSE",
        [*steps, "WF-5.8-4"],
        grad(dense_rice_payload(16, 2, one, tie)),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "dense-rice-b1",
        "DENSE_RICE b = 1, d = 8: k = 0 and a 1-byte unary stream make 2 bytes, never below DENSE's 1",
        [*steps, "WF-5.8-4"],
        grad(dense_rice_payload(8, 1, one, [-1, 0, 0, 0, 0, 0, 0, 0])),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "dense-rice-not-smaller-before-unary",
        "DENSE_RICE b = 4, d = 16, k = 0 with 7 unary bytes of zeros: 8 bytes are not below 8, which is "
        "reported before the stream's one bits are counted",
        [*steps, "WF-5.8-4"],
        grad(dense_rice_head(16, 4, one) + b"\x00" + bytes(7)),
        E.INVALID_PAYLOAD,
    )
    # Step 6: exactly d one bits.
    invalid(
        "dense-rice-unary-missing-word",
        "DENSE_RICE b = 8, d = 16, k = 0: the first unary bit cleared, so the stream holds 15 one bits",
        steps,
        grad(head8 + bytes((0, slack[1] & 0xFE)) + slack[2:]),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "dense-rice-unary-padding-bit",
        "DENSE_RICE b = 8, d = 16, k = 0: padding bit 39 of the 36-bit unary stream set (17 one bits)",
        [*steps, "WF-5.1-3"],
        grad(head8 + slack[:-1] + bytes((slack[-1] | 0x80,))),
        E.INVALID_PAYLOAD,
    )
    invalid(
        "dense-rice-appended-byte",
        "a valid DENSE_RICE block followed by the byte 01: it joins the unary stream (17 one bits), so "
        "INVALID_PAYLOAD, not MALFORMED_FRAME",
        steps,
        grad(head8 + slack + b"\x01"),
        E.INVALID_PAYLOAD,
    )
    # Step 7: no trailing zero byte.
    invalid(
        "dense-rice-trailing-zero-byte",
        "a valid DENSE_RICE block followed by the byte 00 (a trailing zero byte of the unary stream)",
        steps,
        grad(head8 + slack + b"\x00"),
        E.INVALID_PAYLOAD,
    )
    # Step 8: remainder padding.
    k1 = bytearray(block(RICE_B8_K1))
    assert k1[0] == 1 and k1[2] >> 4 == 0, k1.hex()
    k1[2] |= 0x80
    invalid(
        "dense-rice-remainder-padding",
        "DENSE_RICE b = 8, d = 12, k = 1 (12 remainder bits): remainder padding bit 15 set",
        [*steps, "WF-5.1-3"],
        grad(dense_rice_head(12, 8, one) + bytes(k1)),
        E.INVALID_PAYLOAD,
    )
    # Step 9: z < 2^b.
    big = Bits().unary(16)
    for _ in range(15):
        big.unary(0)
    invalid(
        "dense-rice-z-beyond-b-bits",
        "DENSE_RICE b = 4, d = 16, k = 0: the first quotient is 16, so z = 16 = 2^b",
        [*steps, "WF-5.8-2"],
        grad(dense_rice_head(16, 4, one) + b"\x00" + big.bytes()),
        E.INVALID_PAYLOAD,
    )
    # Step 10: not every code zero.
    invalid(
        "dense-rice-all-zero",
        "DENSE_RICE b = 4, d = 16, k = 0: sixteen one bits, every z = 0 (the zero vector is ZERO)",
        [*steps, "WF-5.4-4"],
        grad(dense_rice_head(16, 4, one) + b"\x00\xff\xff"),
        E.INVALID_PAYLOAD,
    )
    # Step 11: k = k*.
    invalid(
        "dense-rice-k-not-best",
        "DENSE_RICE b = 8, d = 16 with k = 1 (7 bytes) where k = 0 takes 6",
        [*steps, "WF-5.8-4"],
        grad(head8 + block(RICE_B8_SLACK, 1)),
        E.INVALID_PAYLOAD,
    )
    assert best_dense_rice(RICE_B4_K0, 4)[2][:2] == [7, 7]
    invalid(
        "dense-rice-k-tie-not-smallest",
        "DENSE_RICE b = 4, d = 16 with k = 1: R(1) = R(0) = 7 < 8, and the tie goes to k = 0",
        [*steps, "WF-5.8-4"],
        grad(dense_rice_head(16, 4, 0x3E800000) + dense_rice_block(RICE_B4_K0, 1)),
        E.INVALID_PAYLOAD,
    )
    # Where DENSE_RICE may travel (5.8-6, 6.2-3) and who may receive it (5.8-4, 12-2).
    valid_b8 = dense_rice_payload(16, 8, one, RICE_B8_SLACK)
    invalid(
        "snapshot-dense-rice",
        "SNAPSHOT carrying a valid DENSE_RICE vector (full precision only)",
        ["WF-5.8-6", "WF-6.2-3", "WF-7.4"],
        frame(1, 4, 0, varint(0) + valid_b8),
        E.UNSUPPORTED_ENCODING,
    )
    invalid(
        "full-gradient-dense-rice",
        "FULL_GRADIENT carrying a valid DENSE_RICE vector",
        ["WF-5.8-6", "WF-6.2-3", "WF-7.6"],
        frame(1, 6, 0, varint(0) + valid_b8),
        E.UNSUPPORTED_ENCODING,
    )
    invalid(
        "dense-rice-not-announced",
        "a valid DENSE_RICE GRADIENT to a receiver that announced only 0..7 (written before 5.8)",
        ["WF-5.8-4", "WF-5.8-6", "WF-6.2-3", "WF-12-2"],
        grad(valid_b8),
        E.UNSUPPORTED_ENCODING,
        {"encodings": [e.name for e in Encoding if e != Encoding.DENSE_RICE]},
    )


# -- quantizer vectors -------------------------------------------------------------------------


def floor_frac(x: Fraction) -> int:
    return math.floor(x)


def lowp_case(
    slug: str,
    description: str,
    values: list[float],
    delta: float,
    bits: int,
    dither: list[int] | list[float],
    float_dither: bool = False,
) -> None:
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    expected = []
    for v, r in zip(values, dither, strict=True):
        u = Fraction(r) if float_dither else Fraction(r, 1 << 16)
        y = Fraction(v) / Fraction(delta) + u
        # the inputs are chosen so that y is at least 2**-20 away from an integer, or exactly on one
        frac = y - math.floor(y)
        assert frac == 0 or (Fraction(1, 1 << 20) < frac < 1 - Fraction(1, 1 << 20)), (slug, v, r)
        expected.append(min(max(floor_frac(y), low), high))
    d = np.array(dither, dtype=np.float64 if float_dither else np.uint16)
    got = quantize_with_dither(np.array(values, dtype=np.float64), delta, bits, d).tolist()
    if got != expected:
        ERRORS.append(f"{slug}: quantize_with_dither gives {got}, exact arithmetic gives {expected}")
        return
    doc = {
        "kind": "quantizer",
        "function": "quantize_with_dither",
        "description": description,
        "cites": ["ALG-2", "WF-5.5"],
        "values_bits": [f64bits(v) for v in values],
        "delta_bits": f64bits(delta),
        "bits": bits,
        "expected_codes": expected,
    }
    if float_dither:
        doc["dither_bits"] = [f64bits(u) for u in dither]
    else:
        doc["dither_u16"] = list(dither)
    add(slug, doc)


def qsgd_case(
    slug: str,
    description: str,
    values: list[float],
    s: int,
    dither: list[int] | list[float],
    float_dither: bool = False,
) -> None:
    norm = math.sqrt(sum(Fraction(v) ** 2 for v in values)) if any(values) else 0.0
    d = np.array(dither, dtype=np.float64 if float_dither else np.uint16)
    result = quantize_qsgd_with_dither(np.array(values, dtype=np.float64), s, d)
    doc: dict[str, Any] = {
        "kind": "quantizer",
        "function": "quantize_qsgd_with_dither",
        "description": description,
        "cites": ["ALG-8", "WF-5.7"],
        "values_bits": [f64bits(v) for v in values],
        "s": s,
    }
    if float_dither:
        doc["dither_bits"] = [f64bits(u) for u in dither]
    else:
        doc["dither_u16"] = list(dither)
    if norm == 0.0:
        if not isinstance(result, ZeroVector):
            ERRORS.append(f"{slug}: expected ZeroVector, got {result!r}")
            return
        doc["expected"] = {"encoding": "ZERO", "dim": len(values)}
        add(slug, doc)
        return
    # the norms used here are exact powers of two, so float32 rounding does not enter
    norm_f = Fraction(norm)
    assert norm_f == Fraction(float(np.float32(norm))) and norm_f * norm_f == sum(
        Fraction(v) ** 2 for v in values
    )
    levels = []
    for v, r in zip(values, dither, strict=True):
        u = Fraction(r) if float_dither else Fraction(r, 1 << 16)
        y = abs(Fraction(v)) * s / norm_f + u
        frac = y - math.floor(y)
        assert frac == 0 or Fraction(1, 1 << 20) < frac < 1 - Fraction(1, 1 << 20), (slug, v)
        level = min(max(math.floor(y), 0), s)
        levels.append(-level if v < 0 else level)
    if not isinstance(result, QSGDVector) or result.levels.tolist() != levels or result.norm != norm:
        ERRORS.append(f"{slug}: aiodq gives {result!r}, exact arithmetic gives norm {norm} levels {levels}")
        return
    doc["expected"] = {
        "encoding": "QSGD",
        "dim": len(values),
        "s": s,
        "norm_bits": f32bits(norm),
        "levels": levels,
    }
    add(slug, doc)


def sparse_case(
    slug: str, description: str, values: list[float], probabilities: list[float], uniforms: list[int]
) -> None:
    keep = [
        j
        for j, (p, r) in enumerate(zip(probabilities, uniforms, strict=True))
        if Fraction(r, 1 << 32) < Fraction(p)
    ]
    kept_values = [Fraction(values[j]) / Fraction(probabilities[j]) for j in keep]
    assert all(Fraction(float(x)) == x for x in kept_values)  # exact in float64
    indices, out = sparsify_with_uniforms(
        np.array(values), np.array(probabilities), np.array(uniforms, dtype=np.uint32)
    )
    if indices.tolist() != keep or [Fraction(float(x)) for x in out] != kept_values:
        ERRORS.append(
            f"{slug}: sparsify_with_uniforms gives {indices.tolist()} {out.tolist()}, expected {keep}"
        )
        return
    add(
        slug,
        {
            "kind": "quantizer",
            "function": "sparsify_with_uniforms",
            "description": description,
            "cites": ["ALG-6", "WF-5.6"],
            "values_bits": [f64bits(v) for v in values],
            "probabilities_bits": [f64bits(p) for p in probabilities],
            "uniforms_u32": uniforms,
            "expected_indices": keep,
            "expected_values_bits": [f64bits(float(x)) for x in kept_values],
        },
    )


def build_quantizer() -> None:
    lowp_case(
        "lowp-u16-b4",
        "b = 4, delta = 0.25: round up exactly when the fraction plus r / 2**16 reaches 1",
        [0.3125, 0.3125, -0.3125, -0.3125, 1.0, 0.0, 0.0],
        0.25,
        4,
        [49151, 49153, 16383, 16385, 65535, 0, 65535],
    )
    lowp_case(
        "lowp-u16-b2-clip",
        "b = 2 clips to the code range [-2, 1]",
        [10.0, -10.0, 0.75, -1.5],
        1.0,
        2,
        [0, 65535, 20000, 40000],
    )
    lowp_case(
        "lowp-u16-b8-exact-sum",
        "b = 8: fraction 0.5 plus r = 32768 is exactly 1, so the code rounds up",
        [0.5, 0.5, -0.5, -0.5, 127.0, -128.0],
        1.0,
        8,
        [32768, 32767, 32768, 32767, 65535, 0],
    )
    lowp_case(
        "lowp-u16-b12",
        "b = 12 (the float64 path), delta = 2**-10",
        [0.5009765625, -1.9990234375, 1.5, -0.00048828125],
        2.0**-10,
        12,
        [100, 65000, 12345, 32769],
    )
    lowp_case(
        "lowp-u16-b16",
        "b = 16, delta = 2**-3, large codes near both ends",
        [4095.9375, -4096.0, -4095.9375, 123.0625],
        0.125,
        16,
        [1, 65535, 32767, 49153],
    )
    lowp_case(
        "lowp-float-dither",
        "b = 6 with float dithers u in [0, 1)",
        [0.2, -0.2, 3.3, -3.3],
        0.5,
        6,
        [0.5, 0.7, 0.25, 0.55],
        float_dither=True,
    )
    qsgd_case(
        "qsgd-s1",
        "QSGD s = 1, v = (3, -1, 1, 1, -1, 1, 1, -1), ||v|| = 4 exactly",
        [3.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0, -1.0],
        1,
        [16383, 16384, 49151, 49153, 60000, 0, 65535, 65535],
    )
    qsgd_case(
        "qsgd-s10",
        "QSGD s = 10, ||v|| = 4: |v| s / ||v|| is 7.5 or 2.5",
        [3.0, -1.0, 1.0, 1.0, -1.0, 1.0, 1.0, -1.0],
        10,
        [32767, 32768, 0, 65535, 40000, 20000, 32768, 1],
    )
    qsgd_case(
        "qsgd-s65535",
        "QSGD with the largest s = 65535, ||v|| = 2",
        [1.0, -1.0, 1.0, -1.0],
        65535,
        [49151, 49152, 0, 65535],
    )
    qsgd_case(
        "qsgd-float-dither",
        "QSGD s = 4 with float dithers, ||v|| = 1",
        [0.5, -0.5, 0.5, -0.5],
        4,
        [0.0, 0.999, 0.3, 0.6],
        float_dither=True,
    )
    qsgd_case("qsgd-zero", "QSGD of the zero vector is the ZERO vector", [0.0, -0.0, 0.0], 3, [1, 2, 3])
    sparse_case(
        "sparsify-u32",
        "keep j where r_j / 2**32 < p_j (strict), value alpha_j / p_j",
        [1.0, -2.0, 0.5, 3.0, -0.25, 0.0],
        [0.5, 0.5, 0.25, 1.0, 0.125, 0.0],
        [2147483647, 2147483648, 1073741823, 4294967295, 0, 0],
    )


# -- stories -----------------------------------------------------------------------------------


def frame_encodings(data: bytes) -> list[tuple[MessageType, Encoding]]:
    """The vector encoding of each vector-carrying frame in ``data``, in order, as far as it decodes."""
    out: list[tuple[MessageType, Encoding]] = []
    reader = FrameReader(Limits())
    reader.feed(data)
    try:
        while (fr := reader.next_frame()) is not None:
            decoded = decode_body(fr, DecodeContext())
            if decoded.encoding is not None:
                out.append((MessageType(fr.type), decoded.encoding))
    except (CodecError, ValueError):
        pass
    return out


def fields_with_encodings(events: list[Any], data: bytes) -> list[dict[str, Any]]:
    """``event_fields`` of each event, with the encoding its frame in ``data`` carried."""
    encodings = frame_encodings(data)
    out = []
    for ev in events:
        enc = None
        if getattr(ev, "vector", None) is not None:
            kind = message_type_of(ev)
            index = next(i for i, (t, _) in enumerate(encodings) if t == kind)
            enc = encodings.pop(index)[1]
        out.append(event_fields(ev, enc))
    return out


class Story:
    """Records steps over a master/worker pair (or one side alone) as the spec says they run."""

    def __init__(
        self,
        slug: str,
        description: str,
        cites: list[str],
        sides: tuple[str, ...] = ("master", "worker"),
        limits: dict[str, int] | None = None,
        master_config: dict[str, Any] | None = None,
        worker_config: dict[str, Any] | None = None,
    ) -> None:
        self.slug, self.description, self.cites = slug, description, cites
        self.sides = sides
        self.limits = limits
        self.side_configs = {"master": master_config, "worker": worker_config}
        self.conns: dict[str, Any] = {}
        if "master" in sides:
            self.conns["master"] = MasterConnection(self._config(master_config))
        if "worker" in sides:
            self.conns["worker"] = WorkerConnection(self._config(worker_config))
        self.steps: list[dict[str, Any]] = []
        self.pending: dict[str, bytes] = {}
        self.held: dict[str, bytes] = {}
        self.ok = True

    def _config(self, auth: dict[str, Any] | None) -> ConnectionConfig | None:
        """The side's ConnectionConfig: the story's limits, a secret, fixed nonces (JSON as in the doc)."""
        kwargs: dict[str, Any] = {}
        if self.limits:
            kwargs["limits"] = Limits(**self.limits)
        if auth:
            if "secret" in auth:
                kwargs["secret"] = bytes.fromhex(auth["secret"])
            kwargs["nonce_source"] = fixed_nonces([bytes.fromhex(n) for n in auth.get("nonces", [])])
        return ConnectionConfig(**kwargs) if kwargs else None

    @staticmethod
    def other(side: str) -> str:
        return "master" if side == "worker" else "worker"

    def _receive(self, step: dict[str, Any], data: bytes, receiver: str, error: ErrorCode | None) -> None:
        conn = self.conns[receiver]
        closing = conn.state is ConnectionState.CLOSING
        conn.receive_data(data, 0.0)
        received: list[Any] = []
        step["events"] = []
        try:
            while (ev := conn.next_event()) is not None:
                received.append(ev)
        except RemoteProtocolError as exc:
            if error is None or exc.code != error:
                self.fail(f"step {len(self.steps)}: unexpected {exc!r}")
            step["error"] = exc.code.name
            out = conn.data_to_send()
            if closing:
                # A receiver that had sent CLOSE fails without another (8.1-2, 8.4-3).
                if out:
                    self.fail(f"step {len(self.steps)}: bytes queued in CLOSING: {out.hex()}")
                step["events"] = fields_with_encodings(received, data)
                return
            reader = FrameReader(Limits())
            reader.feed(out)
            fr = reader.next_frame()
            close = decode_message(fr, DecodeContext()) if fr else None
            if not isinstance(close, Close) or close.code != exc.code or reader.buffered:
                self.fail(f"step {len(self.steps)}: no CLOSE {exc.code.name} queued: {out.hex()}")
            step["close_queued"] = exc.code.name
            self.pending[receiver] = out
        else:
            if error is not None:
                self.fail(f"step {len(self.steps)}: expected {error.name}, got events {received}")
        step["events"] = fields_with_encodings(received, data)

    def send(self, side: str, event: Any, error: ErrorCode | None = None) -> None:
        """``side`` sends ``event`` with its connection; the peer receives the bytes."""
        conn = self.conns[side]
        conn.send(event, 0.0)
        data = conn.data_to_send()
        [sent] = fields_with_encodings([event], data)
        step: dict[str, Any] = {"from": side, "send": sent, "hex": data.hex()}
        if self.other(side) in self.conns:
            self._receive(step, data, self.other(side), error)
        self.steps.append(step)

    def send_refused(self, side: str, event: Any, code: ErrorCode) -> None:
        """``side`` tries to send ``event``; its connection refuses (LocalProtocolError)."""
        conn = self.conns[side]
        try:
            conn.send(event, 0.0)
        except LocalProtocolError as exc:
            if exc.code != code:
                self.fail(f"send refused with {exc.code.name}, expected {code.name}")
        else:
            self.fail("send was not refused")
        if conn.data_to_send():
            self.fail("a refused send queued bytes")
        self.steps.append({"from": side, "send": event_fields(event), "send_error": code.name})

    def queued(self, side: str, error: ErrorCode | None = None) -> None:
        """Bytes ``side`` queued by itself (for example the answer to a CLOSE) go to the peer."""
        after_error = side in self.pending
        data = self.pending.pop(side, b"") + self.conns[side].data_to_send()
        step: dict[str, Any] = {"from": side, "queued": True, "hex": data.hex()}
        self._receive(step, data, self.other(side), error)
        if after_error:
            # The reason text of a CLOSE sent on error is the implementation's own wording:
            # only its code is normative, so the runner checks the code and not these bytes.
            step["hex_informative"] = True
            for event in step["events"]:
                if event["event"] == "CLOSE":
                    del event["reason"]
        self.steps.append(step)

    def inject(self, side: str, data: bytes, error: ErrorCode | None = None) -> None:
        """Crafted bytes as if from ``side`` (its own connection, if any, is not involved)."""
        step: dict[str, Any] = {"from": side, "hex": data.hex()}
        self._receive(step, data, self.other(side), error)
        self.steps.append(step)

    def send_later(self, side: str, event: Any) -> None:
        """``side`` sends ``event``; the bytes stay in flight until :meth:`deliver` (they cross)."""
        conn = self.conns[side]
        conn.send(event, 0.0)
        data = conn.data_to_send()
        [sent] = fields_with_encodings([event], data)
        self.held[side] = data
        self.steps.append({"from": side, "send": sent, "hex": data.hex(), "deliver_later": True})

    def deliver(self, side: str, error: ErrorCode | None = None) -> None:
        """The bytes ``side`` sent with :meth:`send_later` arrive."""
        data = self.held.pop(side)
        step: dict[str, Any] = {"from": side, "deliver": True, "hex": data.hex()}
        self._receive(step, data, self.other(side), error)
        self.steps.append(step)

    def silent(self, side: str) -> None:
        """``side`` has queued nothing (in CLOSING: no answers, no HEARTBEAT, 8.1-2)."""
        if self.conns[side].data_to_send():
            self.fail(f"step {len(self.steps)}: {side} queued bytes")
        self.steps.append({"silent": side})

    def eof(self, side: str, error: ErrorCode | None = None) -> None:
        """The stream from the peer of ``side`` ends: ``side`` receives b""."""
        step: dict[str, Any] = {"eof_to": side}
        self._receive(step, b"", side, error)
        self.steps.append(step)

    def fail(self, message: str) -> None:
        self.ok = False
        ERRORS.append(f"story {self.slug}: {message}")

    def done(self) -> None:
        if not self.ok:
            return
        doc: dict[str, Any] = {
            "kind": "story",
            "description": self.description,
            "cites": self.cites,
            "sides": list(self.sides),
            "steps": self.steps,
        }
        if self.limits:
            doc["limits"] = self.limits
        for side, config in self.side_configs.items():
            if config:
                doc[f"{side}_config"] = config
        add(self.slug, doc)


def handshake(st: Story, dim: int = 3) -> None:
    st.send("worker", Hello(min_version=1, max_version=1, encodings=frozenset(range(8)), name="w0"))
    st.send("master", Welcome(version=1, worker_id=7, encodings=frozenset(range(8))))
    st.send("master", ConfigMessage(dim=dim, algorithm="asylpg", params={"bits": 8}))


def open_epoch(st: Story, epoch: int) -> None:
    st.send("master", Snapshot(epoch=epoch, vector=raw32(1.0, 2.0, 3.0)))
    st.send(
        "worker",
        SnapshotGradient(epoch=epoch, samples=10, correct=7, loss=2.5, vector=raw64(0.5, -0.5, 0.25)),
    )


def build_stories() -> None:
    E = ErrorCode
    st = Story(
        "story-happy-epoch",
        "handshake, one epoch with two model rounds, CLOSE answered by CLOSE, end of stream",
        ["WF-6", "WF-7", "WF-8"],
    )
    handshake(st)
    open_epoch(st, 1)
    st.send("master", FullGradient(epoch=1, vector=raw32(0.25, 0.5, -0.75)))
    st.send("master", ModelMessage(epoch=1, version=0, vector=EqualsSnapshot(3)))
    st.send("worker", Gradient(epoch=1, version=0, vector=DenseQuantized(4, 0.125, np.array([-8, 7, 0]))))
    st.send(
        "master",
        ModelMessage(
            epoch=1, version=1, relative=True, vector=DenseQuantized(3, 0.0625, np.array([1, -1, 3]))
        ),
    )
    st.send(
        "worker",
        Gradient(epoch=1, version=1, vector=SparseQuantized(3, 2, 0.5, np.array([2]), np.array([-2]))),
    )
    st.send("worker", Close(code=0, reason="done"))
    st.queued("master")
    st.eof("worker")
    st.eof("master")
    st.done()

    st = Story(
        "story-version-mismatch",
        "a HELLO offering only versions 2..3 is refused with UNSUPPORTED_VERSION",
        ["WF-6", "WF-7.1", "WF-8"],
    )
    st.send(
        "worker",
        Hello(min_version=2, max_version=3, encodings=frozenset(range(8)), name=""),
        error=E.UNSUPPORTED_VERSION,
    )
    st.queued("master")
    st.queued("worker")
    st.eof("worker")
    st.eof("master")
    st.done()

    st = Story(
        "story-hello-header-version-2",
        "HELLO must carry header version 1 whatever versions it offers",
        ["WF-6", "WF-3"],
        sides=("master",),
    )
    st.inject(
        "worker",
        frame(
            2,
            1,
            0,
            msgpack.packb(
                {"magic": "aiodq", "min_version": 1, "max_version": 2, "encodings": [0], "name": ""}
            ),
        ),
        error=E.UNSUPPORTED_VERSION,
    )
    st.done()

    st = Story(
        "story-wrong-header-version",
        "after version 1 was negotiated, a HEARTBEAT with header version 2 is refused",
        ["WF-6", "WF-3"],
    )
    handshake(st)
    st.inject("worker", frame(2, 9, 0, b""), error=E.UNSUPPORTED_VERSION)
    st.done()

    st = Story(
        "story-future-version",
        "a GRADIENT naming model version 6 when MODEL 5 is outstanding: FUTURE_VERSION",
        ["WF-7.8", "WF-8"],
    )
    handshake(st)
    open_epoch(st, 1)
    st.send("master", ModelMessage(epoch=1, version=5, vector=raw32(1.0, 1.0, 1.0)))
    st.inject(
        "worker", encode_message(Gradient(epoch=1, version=6, vector=ZeroVector(3))), error=E.FUTURE_VERSION
    )
    st.done()

    st = Story(
        "story-unknown-epoch",
        "a GRADIENT naming epoch 2 when the MODEL was of epoch 1: UNKNOWN_EPOCH",
        ["WF-7.8", "WF-8"],
    )
    handshake(st)
    open_epoch(st, 1)
    st.send("master", ModelMessage(epoch=1, version=0, vector=EqualsSnapshot(3)))
    st.inject(
        "worker", encode_message(Gradient(epoch=2, version=0, vector=ZeroVector(3))), error=E.UNKNOWN_EPOCH
    )
    st.done()

    st = Story(
        "story-gradient-without-model",
        "a GRADIENT with no MODEL outstanding: UNEXPECTED_MESSAGE",
        ["WF-7.8", "WF-8"],
    )
    handshake(st)
    open_epoch(st, 1)
    st.send_refused("worker", Gradient(epoch=1, version=0, vector=ZeroVector(3)), E.UNEXPECTED_MESSAGE)
    st.inject(
        "worker",
        encode_message(Gradient(epoch=1, version=0, vector=ZeroVector(3))),
        error=E.UNEXPECTED_MESSAGE,
    )
    st.done()

    st = Story(
        "story-snapshot-crosses-gradient",
        "the master opens epoch 2 while the GRADIENT of epoch 1 is in flight: both sides accept it",
        ["WF-8"],
    )
    handshake(st)
    open_epoch(st, 1)
    st.send("master", ModelMessage(epoch=1, version=3, vector=raw32(0.5, 0.5, 0.5)))
    # Both send at once: the master's SNAPSHOT and the worker's GRADIENT cross on the wire.
    master, worker = st.conns["master"], st.conns["worker"]
    master.send(Snapshot(epoch=2, vector=raw32(4.0, 5.0, 6.0)), 0.0)
    worker.send(Gradient(epoch=1, version=3, vector=ZeroVector(3)), 0.0)
    snapshot_bytes, gradient_bytes = master.data_to_send(), worker.data_to_send()
    st.steps.append(
        {
            "from": "master",
            "send": event_fields(Snapshot(epoch=2, vector=raw32(4.0, 5.0, 6.0))),
            "hex": snapshot_bytes.hex(),
            "deliver_later": True,
        }
    )
    step: dict[str, Any] = {
        "from": "worker",
        "send": event_fields(Gradient(epoch=1, version=3, vector=ZeroVector(3))),
        "hex": gradient_bytes.hex(),
    }
    st._receive(step, gradient_bytes, "master", None)
    st.steps.append(step)
    step = {"from": "master", "deliver": True, "hex": snapshot_bytes.hex()}
    st._receive(step, snapshot_bytes, "worker", None)
    st.steps.append(step)
    st.send(
        "worker", SnapshotGradient(epoch=2, samples=10, correct=8, loss=1.25, vector=raw64(0.0, 0.0, 1.0))
    )
    st.send("master", ModelMessage(epoch=2, version=4, vector=EqualsSnapshot(3)))
    st.done()

    st = Story(
        "story-model-before-answer",
        "the master may not send a second MODEL before the first is answered (LocalProtocolError); "
        "a worker receiving one closes with UNEXPECTED_MESSAGE",
        ["WF-7.7", "WF-8"],
    )
    handshake(st)
    open_epoch(st, 1)
    st.send("master", ModelMessage(epoch=1, version=0, vector=EqualsSnapshot(3)))
    st.send_refused(
        "master", ModelMessage(epoch=1, version=1, vector=EqualsSnapshot(3)), E.UNEXPECTED_MESSAGE
    )
    st.inject(
        "master",
        encode_message(ModelMessage(epoch=1, version=1, vector=EqualsSnapshot(3))),
        error=E.UNEXPECTED_MESSAGE,
    )
    st.done()

    st = Story(
        "story-close-exchange",
        "the master closes with GOING_AWAY, the worker answers CLOSE NO_ERROR; "
        "both see a clean end of stream that reports the first code",
        ["WF-7.11", "WF-8"],
    )
    handshake(st)
    st.send("master", Close(code=int(E.GOING_AWAY), reason="bye ✓"))
    st.queued("worker")
    st.eof("master")
    st.eof("worker")
    st.done()

    st = Story(
        "story-eof-without-close",
        "the stream ends without CLOSE: ConnectionClosed(clean=False, code=None)",
        ["WF-8"],
    )
    handshake(st)
    st.eof("worker")
    st.done()

    st = Story(
        "story-eof-inside-frame",
        "the stream ends after half a frame: MALFORMED_FRAME",
        ["WF-3", "WF-8"],
        sides=("master",),
    )
    st.inject("worker", encode_message(Hello())[:10])
    st.eof("master", error=E.MALFORMED_FRAME)
    st.done()

    st = Story(
        "story-heartbeat-and-error",
        "HEARTBEAT and ERROR in both directions do not change the session",
        ["WF-7.9", "WF-7.10", "WF-8"],
    )
    handshake(st)
    st.send("worker", Heartbeat())
    st.send("master", Heartbeat())
    st.send("master", ErrorMessage(code=int(E.STALE_GRADIENT), epoch=1, version=2, reason="stale"))
    open_epoch(st, 1)
    st.done()

    st = Story(
        "story-frame-too-large",
        "a frame over the receiver's limit closes the connection with FRAME_TOO_LARGE",
        ["WF-3", "WF-10"],
        sides=("master",),
        limits={"max_frame_bytes": 64},
    )
    st.inject("worker", struct.pack("<BBBI", 1, 1, 0, 1000), error=E.FRAME_TOO_LARGE)
    st.done()

    build_dense_rice_story()
    build_auth_stories()


def build_dense_rice_story() -> None:
    """wire-format.md 5.8-4, 12-2: a peer that did not announce 8 gets DENSE_RICE vectors as DENSE."""
    st = Story(
        "story-dense-rice-fallback",
        "a worker written before DENSE_RICE announces 0..7: the master's MODEL, whose codes would be "
        "smaller Rice-coded, reaches it as plain DENSE (descriptor 0x43); the worker's GRADIENT to the "
        "master, which announced 0..8, travels as DENSE_RICE (0x83)",
        ["WF-5-2", "WF-5.8-4", "WF-5.8-6", "WF-6.2-2", "WF-12-2"],
    )
    st.send("worker", Hello(min_version=1, max_version=1, encodings=frozenset(range(8)), name="old"))
    st.send("master", Welcome(version=1, worker_id=8, encodings=frozenset(range(9))))
    st.send("master", ConfigMessage(dim=16, algorithm="asylpg", params={"bits": 4}))
    st.send("master", Snapshot(epoch=1, vector=raw32(*[float(i) for i in range(16)])))
    st.send(
        "worker",
        SnapshotGradient(epoch=1, samples=10, correct=7, loss=2.5, vector=raw64(*[0.5] * 16)),
    )
    model = DenseQuantized(4, 0.25, np.array(A16_CODES))
    assert plan_vector(model, dense_rice=True).encoding == Encoding.DENSE_RICE
    st.send("master", ModelMessage(epoch=1, version=0, relative=True, vector=model))
    gradient = DenseQuantized(4, 0.125, np.array(RICE_B4_K0))
    st.send("worker", Gradient(epoch=1, version=0, vector=gradient))
    model_frame, gradient_frame = (bytes.fromhex(step["hex"]) for step in st.steps[-2:])
    if model_frame[9] != 0x43 or gradient_frame[9] != 0x83:
        st.fail(f"descriptors {model_frame[9]:#04x} and {gradient_frame[9]:#04x}, expected 0x43 and 0x83")
    received = [step["events"][0]["vector"]["encoding"] for step in st.steps[-2:]]
    if received != ["DENSE", "DENSE_RICE"]:
        st.fail(f"received encodings {received}")
    st.send("worker", Close(code=0, reason="done"))
    st.queued("master")
    st.done()


def build_auth_stories() -> None:
    """The shared-secret handshake (wire-format.md 7.12-7.14, 6.1-8, 8.1, 9 AUTH_FAILED)."""
    E = ErrorCode
    hello = Hello(min_version=1, max_version=1, encodings=frozenset(range(8)), name="w0")
    welcome = Welcome(version=1, worker_id=7, encodings=frozenset(range(8)))
    pw, pm = proofs(SECRET, MASTER_NONCE, WORKER_NONCE)
    master_cfg = auth_config(SECRET, MASTER_NONCE)
    worker_cfg = auth_config(SECRET, WORKER_NONCE)

    st = Story(
        "story-auth-handshake",
        "both sides hold the secret: HELLO, AUTH_CHALLENGE, AUTH_RESPONSE, AUTH_CONFIRM, then WELCOME and "
        "CONFIG; the AUTH messages are not events and the master's application sees HELLO only after "
        "AUTH_RESPONSE verified",
        ["WF-6.1-8", "WF-7.12-1", "WF-7.13-1", "WF-7.13-3", "WF-7.14-1", "WF-7.14-3", "WF-8.1-1"],
        master_config=master_cfg,
        worker_config=worker_cfg,
    )
    st.send("worker", hello)  # held back by the master: no event yet
    st.queued("master")  # AUTH_CHALLENGE(Nm)
    st.queued("worker")  # AUTH_RESPONSE(Nw, Pw): the master's application now gets the HELLO
    st.queued("master")  # AUTH_CONFIRM(Pm)
    st.send("master", welcome)
    st.send("master", ConfigMessage(dim=3, algorithm="asylpg", params={"bits": 8}))
    expected = [
        frame(1, 0x0C, 0, MASTER_NONCE),
        frame(1, 0x0D, 0, WORKER_NONCE + pw),
        frame(1, 0x0E, 0, pm),
    ]
    got = [bytes.fromhex(step["hex"]) for step in st.steps[1:4]]
    if got != expected:
        st.fail(
            f"AUTH frames {[g.hex() for g in got]} differ from the spec layout {[e.hex() for e in expected]}"
        )
    if [step["events"] for step in st.steps[:4]] != [[], [], [event_fields(hello)], []]:
        st.fail(f"events during the handshake: {[step['events'] for step in st.steps[:4]]}")
    open_epoch(st, 1)
    st.done()

    st = Story(
        "story-auth-wrong-secret",
        "the worker holds another secret: its proof is wrong, the master fails with AUTH_FAILED and sends "
        "CLOSE 17; the worker answers CLOSE",
        ["WF-7.13-2", "WF-9", "WF-8.4-3"],
        master_config=master_cfg,
        worker_config=auth_config(WRONG_SECRET, WORKER_NONCE),
    )
    st.send("worker", hello)
    st.queued("master")
    st.queued("worker", error=E.AUTH_FAILED)
    st.queued("master")
    st.queued("worker")
    st.eof("master")
    st.eof("worker")
    st.done()

    st = Story(
        "story-auth-worker-without-secret",
        "a worker without a secret receives AUTH_CHALLENGE: AUTH_FAILED, CLOSE 17",
        ["WF-7.12-3", "WF-9"],
        master_config=master_cfg,
    )
    st.send("worker", hello)
    st.queued("master", error=E.AUTH_FAILED)
    st.queued("worker")
    st.done()

    st = Story(
        "story-auth-welcome-without-handshake",
        "a worker with a secret receives WELCOME from a master that skipped the handshake: AUTH_FAILED",
        ["WF-7.14-2", "WF-7.12-2", "WF-9"],
        worker_config=worker_cfg,
    )
    st.send("worker", hello)  # a master without a secret hands the HELLO over at once
    st.send("master", welcome, error=E.AUTH_FAILED)
    st.queued("worker")
    st.done()

    st = Story(
        "story-auth-response-to-master-without-secret",
        "an AUTH_RESPONSE to a master without a secret answers no AUTH_CHALLENGE: UNEXPECTED_MESSAGE",
        ["WF-7.12-2", "WF-7.13-2"],
        sides=("master",),
    )
    st.inject("worker", encode_message(hello))
    st.inject("worker", frame(1, 0x0D, 0, WORKER_NONCE + pw), error=E.UNEXPECTED_MESSAGE)
    st.done()

    st = Story(
        "story-auth-response-header-version-2",
        "an AUTH_RESPONSE with header version 2: AUTH messages always carry version 1 (UNSUPPORTED_VERSION)",
        ["WF-6.1-8", "WF-7-1"],
        master_config=master_cfg,
        worker_config=worker_cfg,
    )
    st.send("worker", hello)
    st.queued("master")  # AUTH_CHALLENGE; the worker's AUTH_RESPONSE stays queued
    st.inject("worker", frame(2, 0x0D, 0, WORKER_NONCE + pw), error=E.UNSUPPORTED_VERSION)
    st.done()

    st = Story(
        "story-auth-challenge-header-version-2",
        "an AUTH_CHALLENGE with header version 2 to a worker that sent HELLO: UNSUPPORTED_VERSION",
        ["WF-6.1-8", "WF-7-1"],
        worker_config=worker_cfg,
    )
    st.send("worker", hello)
    st.inject("master", frame(2, 0x0C, 0, MASTER_NONCE), error=E.UNSUPPORTED_VERSION)
    st.done()

    st = Story(
        "story-auth-confirm-wrong-proof",
        "the master's AUTH_CONFIRM carries a wrong proof (here Pw instead of Pm): AUTH_FAILED",
        ["WF-7.14-1", "WF-9"],
        master_config=master_cfg,
        worker_config=worker_cfg,
    )
    st.send("worker", hello)
    st.queued("master")  # AUTH_CHALLENGE
    st.queued("worker")  # AUTH_RESPONSE; the master's real AUTH_CONFIRM is not delivered
    st.inject("master", frame(1, 0x0E, 0, pw), error=E.AUTH_FAILED)
    st.done()

    st = Story(
        "story-auth-welcome-before-confirm",
        "a WELCOME after AUTH_CHALLENGE but before a valid AUTH_CONFIRM: AUTH_FAILED",
        ["WF-7.14-2", "WF-9"],
        master_config=master_cfg,
        worker_config=worker_cfg,
    )
    st.send("worker", hello)
    st.queued("master")  # AUTH_CHALLENGE
    st.queued("worker")  # AUTH_RESPONSE; the master's AUTH_CONFIRM is not delivered
    st.inject("master", encode_message(welcome), error=E.AUTH_FAILED)
    st.done()

    st = Story(
        "story-auth-second-challenge",
        "a second AUTH_CHALLENGE to a worker with a secret: UNEXPECTED_MESSAGE",
        ["WF-7.12-3"],
        master_config=master_cfg,
        worker_config=worker_cfg,
    )
    st.send("worker", hello)
    st.queued("master")  # AUTH_CHALLENGE
    st.queued("worker")  # AUTH_RESPONSE
    st.inject("master", frame(1, 0x0C, 0, MASTER_NONCE), error=E.UNEXPECTED_MESSAGE)
    st.done()

    st = Story(
        "story-auth-confirm-without-response",
        "an AUTH_CONFIRM that answers no AUTH_RESPONSE (no challenge came): UNEXPECTED_MESSAGE",
        ["WF-7.14-1"],
        worker_config=worker_cfg,
    )
    st.send("worker", hello)
    st.inject("master", frame(1, 0x0E, 0, pm), error=E.UNEXPECTED_MESSAGE)
    st.done()

    st = Story(
        "story-auth-master-refuses-early-welcome",
        "a master with a secret refuses to send WELCOME before the worker's proof (local AUTH_FAILED), "
        "and a second AUTH_RESPONSE after the handshake answers no challenge (UNEXPECTED_MESSAGE)",
        ["WF-7.12-1", "WF-7.13-2", "WF-9-3"],
        master_config=master_cfg,
        worker_config=worker_cfg,
    )
    st.send("worker", hello)
    st.queued("master")  # AUTH_CHALLENGE
    st.send_refused("master", welcome, E.AUTH_FAILED)
    st.queued("worker")  # AUTH_RESPONSE
    st.queued("master")  # AUTH_CONFIRM
    st.inject("worker", frame(1, 0x0D, 0, WORKER_NONCE + pw), error=E.UNEXPECTED_MESSAGE)
    st.done()

    st = Story(
        "story-auth-challenge-to-master",
        "an AUTH_CHALLENGE sent to a master: the worker role does not send it (UNEXPECTED_MESSAGE)",
        ["WF-8.1-1", "WF-7.12"],
        sides=("master",),
        master_config=master_cfg,
    )
    st.inject("worker", frame(1, 0x0C, 0, MASTER_NONCE), error=E.UNEXPECTED_MESSAGE)
    st.done()

    # WF-7.1-1: a worker sends nothing but CLOSE before HELLO, and AUTH_CHALLENGE comes "after HELLO"
    # (7.12); a challenge before the HELLO is out of order (8.1: UNEXPECTED_MESSAGE).
    st = Story(
        "story-auth-challenge-before-hello",
        "an AUTH_CHALLENGE to a worker (with a secret) that has not sent HELLO: UNEXPECTED_MESSAGE, and no "
        "AUTH_RESPONSE may precede the HELLO",
        ["WF-7.1-1", "WF-7.12", "WF-8.1-1"],
        worker_config=worker_cfg,
    )
    st.inject("master", frame(1, 0x0C, 0, MASTER_NONCE), error=E.UNEXPECTED_MESSAGE)
    st.done()


# -- classes of invalid input, one vector per member (issue 10) ----------------------------------


def nonshortest(value: int) -> bytes:
    """``value`` as a varint one byte longer than its shortest form (it ends in 00, 4.2-2)."""
    short = bytearray(varint(value))
    short[-1] |= 0x80
    return bytes(short) + b"\x00"


def hello_map(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "magic": "aiodq",
        "min_version": 1,
        "max_version": 1,
        "encodings": [0, 1],
        "name": "",
    }
    fields.update(changes)
    return fields


def map_with(base: dict[str, Any], extra: list[tuple[bytes, bytes]]) -> bytes:
    """The canonical map ``base`` with ``extra`` (raw key bytes, raw value bytes) entries appended."""
    count = len(base) + len(extra)
    assert count <= 15
    body = b"".join(mp(k) + mp(v) for k, v in base.items())
    return bytes((0x80 | count,)) + body + b"".join(k + v for k, v in extra)


def build_invalid_classes() -> None:
    E = ErrorCode
    one32 = 0x3F800000  # 1.0f
    hello_body = mp(hello_map())

    # Header checks: size, then type, then (after version, role and state) flags, then the body.
    invalid(
        "order-too-large-before-unknown-type",
        "an undefined type 0x00 declaring 65 bytes over a 64-byte limit: the length is checked first",
        ["WF-3-3", "WF-7-1"],
        struct.pack("<BBBI", 1, 0x00, 0x01, 65),
        E.FRAME_TOO_LARGE,
        {"limits": {"max_frame_bytes": 64}},
    )
    invalid(
        "order-unknown-type-before-flags",
        "type 0x00 with flag bit 0 set: the type is checked before the flags",
        ["WF-7-1"],
        frame(1, 0x00, 0x01, b""),
        E.UNKNOWN_MESSAGE_TYPE,
    )
    # Flags on every type, with a body that would fail with another code if it were decoded.
    flagged: list[tuple[str, int, int, bytes, ErrorCode, dict[str, Any] | None]] = [
        ("hello", 1, 0x01, mp([1]), E.INVALID_CONFIG, None),
        ("welcome", 2, 0x01, mp([1]), E.INVALID_CONFIG, None),
        ("config", 3, 0x01, mp([1]), E.INVALID_CONFIG, None),
        ("snapshot", 4, 0x01, varint(1) + b"\xa0\x01", E.UNSUPPORTED_ENCODING, None),
        (
            "snapshot-gradient",
            5,
            0x01,
            varint(1) * 3 + f64raw(0x7FF8000000000000) + raw_payload([1.0]),
            E.NON_FINITE,
            None,
        ),
        ("full-gradient", 6, 0x01, varint(1) + b"\x00\x01" + f32raw(0x7FC00000), E.NON_FINITE, None),
        ("model", 7, 0x80, varint(1) * 2 + b"\xa0\x01", E.UNSUPPORTED_ENCODING, None),
        ("gradient", 8, 0x01, varint(1) * 2 + b"\xa0\x01", E.UNSUPPORTED_ENCODING, None),
        (
            "error",
            10,
            0x01,
            b"\x00\x00" + varint(0) * 2 + b"12345",
            E.LIMIT_EXCEEDED,
            {"max_reason_bytes": 4},
        ),
        ("close", 11, 0x01, b"\x00\x00" + b"12345", E.LIMIT_EXCEEDED, {"max_reason_bytes": 4}),
        ("auth-challenge", 12, 0x01, bytes(32), E.MALFORMED_FRAME, None),
        ("auth-response", 13, 0x01, bytes(64), E.MALFORMED_FRAME, None),
    ]
    for name, mtype, flag, body, body_code, limits in flagged:
        context = {"limits": limits} if limits else None
        invalid(
            f"flag-{name}",
            f"{name.upper().replace('-', '_')} with flag 0x{flag:02x} (not defined for it) and a body that "
            f"would fail with {body_code.name}: flags are checked first",
            ["WF-3-6", "WF-7-1"],
            frame(1, mtype, flag, body),
            E.MALFORMED_FRAME,
            context,
        )

    # Non-shortest varints, in every varint field of every message (4.2-2).
    raw1 = raw_payload([1.0])
    varint_fields: list[tuple[str, int, bytes]] = [
        ("snapshot-epoch", 4, nonshortest(1) + raw1),
        ("snapshot-gradient-epoch", 5, nonshortest(1) + varint(10) + varint(7) + f64raw(0) + raw1),
        ("snapshot-gradient-samples", 5, varint(1) + nonshortest(10) + varint(7) + f64raw(0) + raw1),
        ("snapshot-gradient-correct", 5, varint(1) + varint(10) + nonshortest(7) + f64raw(0) + raw1),
        ("full-gradient-epoch", 6, nonshortest(1) + raw1),
        ("model-epoch", 7, nonshortest(1) + varint(1) + b"\x20\x01"),
        ("model-version", 7, varint(1) + nonshortest(300) + b"\x20\x01"),
        ("gradient-version", 8, varint(1) + nonshortest(0) + b"\x20\x01"),
        ("error-epoch", 10, b"\x05\x00" + nonshortest(1) + varint(1)),
        ("error-version", 10, b"\x05\x00" + varint(1) + nonshortest(1)),
        ("dimension", 8, varint(1) * 2 + b"\x20" + nonshortest(3)),
        ("sparse-count", 8, varint(1) * 2 + b"\x57" + varint(8) + nonshortest(1) + f32raw(one32) + b"\x01"),
        ("qsgd-s", 8, varint(1) * 2 + b"\x70" + varint(1) + nonshortest(1) + f32raw(one32) + b"\x02\x00\x00"),
    ]
    for name, mtype, body in varint_fields:
        invalid(
            f"varint-not-shortest-{name}",
            f"{name.replace('-', ' ')}: a varint with a trailing 00 byte",
            ["WF-4.2-2"],
            frame(1, mtype, 0, body),
            E.MALFORMED_FRAME,
        )

    # Reserved encodings 10..14 (9 and 15 have vectors above).
    for encoding in range(10, 15):
        invalid(
            f"reserved-encoding-{encoding}",
            f"descriptor 0x{encoding << 4:02x}: encoding {encoding} is reserved",
            ["WF-5.2-3", "WF-12-2"],
            grad(bytes((encoding << 4,)) + b"\x01"),
            E.UNSUPPORTED_ENCODING,
        )

    # RAW: lengths before values.
    raw_cases: list[tuple[str, str, bytes, ErrorCode]] = [
        ("raw-f32-short", "RAW_F32, d = 2, one byte short", raw_payload([1.0, 2.0])[:-1], E.MALFORMED_FRAME),
        ("raw-f32-extra", "RAW_F32, d = 1, one byte extra", raw_payload([1.0]) + b"\x00", E.MALFORMED_FRAME),
        (
            "raw-f64-short",
            "RAW_F64, d = 1, one byte short",
            raw_payload([1.0], f64=True)[:-1],
            E.MALFORMED_FRAME,
        ),
        (
            "raw-f64-extra",
            "RAW_F64, d = 1, four bytes extra",
            raw_payload([1.0], f64=True) + bytes(4),
            E.MALFORMED_FRAME,
        ),
        (
            "raw-f32-minus-inf",
            "RAW_F32 with -inf",
            b"\x00\x02" + f32raw(0x3F800000) + f32raw(0xFF800000),
            E.NON_FINITE,
        ),
        ("raw-f64-nan", "RAW_F64 with a NaN", b"\x10\x01" + f64raw(0x7FF8000000000001), E.NON_FINITE),
        (
            "raw-short-before-nan",
            "RAW_F32, d = 2: a NaN, then one byte short: the length is checked first",
            (b"\x00\x02" + f32raw(0x7FC00000) + f32raw(0x3F800000))[:-1],
            E.MALFORMED_FRAME,
        ),
    ]
    for slug, description, payload, code in raw_cases:
        invalid(slug, description, ["WF-5.3-2", "WF-5.3-3"], grad(payload), code)

    invalid(
        "trailing-bytes-zero",
        "ZERO, d = 1, followed by a byte",
        ["WF-5.4-3"],
        grad(b"\x20\x01\x00"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "trailing-bytes-equals-snapshot",
        "EQUALS_SNAPSHOT, d = 1, followed by a byte",
        ["WF-5.4-3"],
        model(b"\x30\x01\x00"),
        E.MALFORMED_FRAME,
    )

    # Truncated fixed-size fields and blocks.
    invalid(
        "dense-scale-truncated",
        "DENSE b = 8, d = 2: three scale bytes",
        ["WF-5.5-3"],
        grad(b"\x47\x02" + f32raw(one32)[:3]),
        E.MALFORMED_FRAME,
    )
    invalid(
        "sparse-count-missing",
        "SPARSE_BITMAP: the payload ends after the dimension",
        ["WF-5.6-8", "WF-4.2-4"],
        grad(b"\x57\x08"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "sparse-scale-truncated",
        "SPARSE_BITMAP: two scale bytes",
        ["WF-5.6-8"],
        grad(b"\x57\x08\x01" + f32raw(one32)[:2]),
        E.MALFORMED_FRAME,
    )
    invalid(
        "sparse-scale-nan",
        "SPARSE_RICE with a NaN scale",
        ["WF-5.6-8", "WF-5.5-2"],
        grad(sparse_head(6, 1000, 8, 0x7FC00000, [1]) + rice_block([500], best_rice([500])[0])),
        E.NON_FINITE,
    )
    invalid(
        "sparse-codes-truncated",
        "SPARSE_BITMAP b = 8, n = 2: one code byte",
        ["WF-5.6-8"],
        grad(sparse_head(5, 8, 8, one32, [1, 2])[:-1]),
        E.MALFORMED_FRAME,
    )
    invalid(
        "bitmap-truncated",
        "SPARSE_BITMAP d = 16 (B = 2) with one bitmap byte",
        ["WF-5.6-9"],
        grad(sparse_head(5, 16, 8, one32, [1]) + b"\x01"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "bitmap-extra-byte",
        "SPARSE_BITMAP d = 8 with a byte after the bitmap",
        ["WF-5.6-9"],
        grad(sparse_head(5, 8, 8, one32, [1]) + b"\x01\x00"),
        E.MALFORMED_FRAME,
    )
    invalid(
        "rice-k-missing",
        "SPARSE_RICE d = 1000, n = 1: the payload ends after the codes",
        ["WF-5.6-10"],
        grad(sparse_head(6, 1000, 8, one32, [1])),
        E.MALFORMED_FRAME,
    )
    invalid(
        "rice-remainders-truncated",
        "SPARSE_RICE d = 1000, n = 2, k = 3: no remainder byte",
        ["WF-5.6-10"],
        grad(sparse_head(6, 1000, 8, one32, [1, 1]) + b"\x03"),
        E.MALFORMED_FRAME,
    )

    # QSGD, field by field (5.7-4).
    def qsgd(tail: bytes, *, dim: int = 1, s: bytes = varint(1)) -> bytes:
        return grad(b"\x70" + varint(dim) + s + tail)

    level_one = b"\x02\x00\x00"  # d = 1, s = 1, level +1: exponent 0b10, mantissa 0, sign 0
    qsgd_cases: list[tuple[str, str, bytes, ErrorCode]] = [
        (
            "qsgd-s-missing",
            "QSGD: the payload ends after the dimension",
            grad(b"\x70\x01"),
            E.MALFORMED_FRAME,
        ),
        ("qsgd-norm-truncated", "QSGD: two norm bytes", qsgd(f32raw(one32)[:2]), E.MALFORMED_FRAME),
        ("qsgd-norm-nan", "QSGD with a NaN norm", qsgd(f32raw(0x7FC00000) + level_one), E.NON_FINITE),
        ("qsgd-norm-inf", "QSGD with an infinite norm", qsgd(f32raw(0x7F800000) + level_one), E.NON_FINITE),
        ("qsgd-norm-zero", "QSGD with norm +0.0", qsgd(f32raw(0) + level_one), E.INVALID_PAYLOAD),
        (
            "qsgd-norm-negative",
            "QSGD with norm -1.0",
            qsgd(f32raw(0xBF800000) + level_one),
            E.INVALID_PAYLOAD,
        ),
        (
            "qsgd-too-long",
            "QSGD d = 1, s = 1: 5 stream bytes, over the bound of ceil(1 * 4 / 8) + 3 = 4",
            qsgd(f32raw(one32) + level_one + b"\x00\x00"),
            E.INVALID_PAYLOAD,
        ),
        (
            "qsgd-exponents-short",
            "QSGD d = 2: the stream holds one 1 bit",
            qsgd(f32raw(one32) + b"\x01", dim=2),
            E.INVALID_PAYLOAD,
        ),
        (
            "qsgd-exponent-padding",
            "QSGD d = 1: a 1 bit after the first one bit, inside its byte",
            qsgd(f32raw(one32) + b"\x03\x00"),
            E.INVALID_PAYLOAD,
        ),
        (
            "qsgd-exponent-above-e",
            "QSGD d = 1, s = 1 (E = 1): N = 2",
            qsgd(f32raw(one32) + b"\x04\x00\x00"),
            E.INVALID_PAYLOAD,
        ),
        (
            "qsgd-mantissa-missing",
            "QSGD d = 1, s = 3, level 1: no mantissa byte",
            qsgd(f32raw(one32) + b"\x02", s=varint(3)),
            E.INVALID_PAYLOAD,
        ),
        ("qsgd-all-levels-zero", "QSGD d = 1, level 0", qsgd(f32raw(one32) + b"\x01"), E.INVALID_PAYLOAD),
        (
            "qsgd-signs-missing",
            "QSGD d = 1, level 1: no sign byte",
            qsgd(f32raw(one32) + b"\x02\x00"),
            E.INVALID_PAYLOAD,
        ),
        (
            "qsgd-signs-extra",
            "QSGD d = 1, level 1: two sign bytes",
            qsgd(f32raw(one32) + level_one + b"\x00"),
            E.INVALID_PAYLOAD,
        ),
    ]
    for slug, description, data, code in qsgd_cases:
        invalid(slug, description, ["WF-5.7-2", "WF-5.7-4"], data, code)

    # Control-message structure and field types (7-3..7-10, 7.1-7.3).
    control_cases: list[tuple[str, str, list[str], int, bytes, ErrorCode]] = [
        ("hello-not-a-map", "HELLO body: an array", ["WF-7-7"], 1, mp([1]), E.INVALID_CONFIG),
        (
            "hello-int-key",
            "HELLO map with an int key",
            ["WF-7-6"],
            1,
            map_with(hello_map(), [(b"\x01", b"\x02")]),
            E.MALFORMED_FRAME,
        ),
        (
            "hello-str-not-utf8",
            "HELLO name: a str holding the byte ff",
            ["WF-7-6"],
            1,
            mp({k: v for k, v in hello_map().items() if k != "name"})[:0]
            + bytes((0x85,))
            + b"".join(mp(k) + mp(v) for k, v in hello_map().items() if k != "name")
            + mp("name")
            + b"\xa1\xff",
            E.MALFORMED_FRAME,
        ),
        (
            "hello-nested-1025",
            "HELLO with an unknown key whose value nests 1024 arrays: 1025 levels with the map",
            ["WF-7-6"],
            1,
            map_with(hello_map(), [(mp("x"), b"\x91" * 1024 + b"\x00")]),
            E.MALFORMED_FRAME,
        ),
        ("hello-name-int", "HELLO name 5", ["WF-7.1-6"], 1, mp(hello_map(name=5)), E.INVALID_CONFIG),
        *(
            (
                f"hello-shard-{label}",
                f"HELLO shard {text}",
                ["WF-7.1-9"],
                1,
                mp(hello_map(shard=value)),
                E.INVALID_CONFIG,
            )
            for label, text, value in (
                ("index-equals-count", "[4, 4]", [4, 4]),
                ("count-0", "[0, 0]", [0, 0]),
                ("index-negative", "[-1, 4]", [-1, 4]),
                ("count-2-pow-31", "[0, 2^31]", [0, 2**31]),
                ("one-entry", "[1]", [1]),
                ("three-entries", "[1, 4, 0]", [1, 4, 0]),
                ("not-array", "3", 3),
                ("float", "[1.0, 4]", [1.0, 4]),
                ("bool", "[true, 4]", [True, 4]),
                ("string", '["1", "4"]', ["1", "4"]),
            )
        ),
        (
            "hello-min-version-bool",
            "HELLO min_version true",
            ["WF-7-7", "WF-7.1-6"],
            1,
            mp(hello_map(min_version=True)),
            E.INVALID_CONFIG,
        ),
        (
            "hello-min-version-float",
            "HELLO min_version 1.0",
            ["WF-7-7", "WF-7.1-6"],
            1,
            mp(hello_map(min_version=1.0)),
            E.INVALID_CONFIG,
        ),
        (
            "hello-encodings-not-array",
            "HELLO encodings 3",
            ["WF-7.1-6"],
            1,
            mp(hello_map(encodings=3)),
            E.INVALID_CONFIG,
        ),
        (
            "hello-encoding-16",
            "HELLO encodings [0, 16]",
            ["WF-7.1-6"],
            1,
            mp(hello_map(encodings=[0, 16])),
            E.INVALID_CONFIG,
        ),
        (
            "hello-name-256-bytes",
            "HELLO name of 256 bytes",
            ["WF-7.1-6"],
            1,
            mp(hello_map(name="n" * 256)),
            E.INVALID_CONFIG,
        ),
        (
            "hello-magic-bin",
            "HELLO magic as bin b'aiodq'",
            ["WF-7-7", "WF-7.1-5"],
            1,
            bytes((0x85,))
            + mp("magic")
            + b"\xc4\x05aiodq"
            + b"".join(mp(k) + mp(v) for k, v in hello_map().items() if k != "magic"),
            E.INVALID_CONFIG,
        ),
        (
            "welcome-worker-id-negative",
            "WELCOME worker_id -1",
            ["WF-7.2-5"],
            2,
            mp({"version": 1, "worker_id": -1, "encodings": [0]}),
            E.INVALID_CONFIG,
        ),
        (
            "welcome-worker-id-2-pow-63",
            "WELCOME worker_id 2**63",
            ["WF-7.2-5"],
            2,
            mp({"version": 1, "worker_id": 1 << 63, "encodings": [0]}),
            E.INVALID_CONFIG,
        ),
        (
            "welcome-version-0",
            "WELCOME version 0",
            ["WF-7.2-5"],
            2,
            mp({"version": 0, "worker_id": 1, "encodings": [0]}),
            E.INVALID_CONFIG,
        ),
        (
            "config-dim-float",
            "CONFIG dim 3.0",
            ["WF-7.3-3"],
            3,
            mp({"dim": 3.0, "algorithm": "asylpg", "params": {}}),
            E.INVALID_CONFIG,
        ),
        (
            "config-algorithm-empty",
            "CONFIG algorithm ''",
            ["WF-7.3-5"],
            3,
            mp({"dim": 3, "algorithm": "", "params": {}}),
            E.INVALID_CONFIG,
        ),
        (
            "config-params-bin-key",
            "CONFIG params with the bin key b'bits'",
            ["WF-7-8", "WF-7.3-5"],
            3,
            mp({"dim": 3, "algorithm": "asylpg"}).replace(b"\x82", b"\x83", 1)
            + mp("params")
            + b"\x81\xc4\x04bits\x08",
            E.INVALID_CONFIG,
        ),
        (
            "config-param-nil",
            "CONFIG params {'bits': nil}",
            ["WF-7.3-5"],
            3,
            mp({"dim": 3, "algorithm": "asylpg"}).replace(b"\x82", b"\x83", 1)
            + mp("params")
            + b"\x81"
            + mp("bits")
            + b"\xc0",
            E.INVALID_CONFIG,
        ),
        (
            "config-param-nan",
            "CONFIG params {'step': NaN}",
            ["WF-7.3-5"],
            3,
            mp({"dim": 3, "algorithm": "asylpg", "params": {"step": math.nan}}),
            E.INVALID_CONFIG,
        ),
        (
            "config-param-array",
            "CONFIG params {'bits': [8]}",
            ["WF-7.3-5"],
            3,
            mp({"dim": 3, "algorithm": "asylpg", "params": {"bits": [8]}}),
            E.INVALID_CONFIG,
        ),
    ]
    for slug, description, cites, mtype, body, code in control_cases:
        invalid(slug, description, cites, frame(1, mtype, 0, body), code)
    # Zero-length ext values (ext8, ext16, ext32), in each control message (7-6).
    welcome_ok = {"version": 1, "worker_id": 1, "encodings": [0]}
    config_ok = {"dim": 3, "algorithm": "asylpg", "params": {}}
    for label, ext in (
        ("ext8", b"\xc7\x00\x05"),
        ("ext16", b"\xc8\x00\x00\x05"),
        ("ext32", b"\xc9" + bytes(4) + b"\x05"),
    ):
        for name, mtype, base in (
            ("hello", 1, hello_map()),
            ("welcome", 2, welcome_ok),
            ("config", 3, config_ok),
        ):
            if name != "hello" and label != "ext8":
                continue
            invalid(
                f"{name}-zero-length-{label}",
                f"{name.upper()} with an unknown key whose value is an {label} of length 0",
                ["WF-7-6"],
                frame(1, mtype, 0, map_with(base, [(mp("x"), ext)])),
                E.MALFORMED_FRAME,
            )

    # Accepted, though no sender writes them so (7-8, 7-9, 7-10): the canonical form differs.
    valid(
        "hello-unsorted-duplicate-encodings",
        "HELLO encodings [3, 0, 3, 1]: the set {0, 1, 3}",
        ["WF-7-10", "WF-6.2-1"],
        Hello(min_version=1, max_version=1, encodings=frozenset({0, 1, 3}), name=""),
        expect_hex=frame(1, 1, 0, mp(hello_map(encodings=[3, 0, 3, 1]))),
        canonical_hex=frame(1, 1, 0, mp(hello_map(encodings=[0, 1, 3]))),
    )
    valid(
        "hello-bin-key-ignored",
        "HELLO with an extra top-level bin key: ignored",
        ["WF-7-8"],
        Hello(min_version=1, max_version=1, encodings=frozenset({0, 1}), name=""),
        expect_hex=frame(1, 1, 0, map_with(hello_map(), [(b"\xc4\x01z", b"\x01")])),
        canonical_hex=frame(1, 1, 0, hello_body),
    )
    valid(
        "hello-nested-1024",
        "HELLO with an unknown key whose value nests 1023 arrays: 1024 levels, accepted",
        ["WF-7-6", "WF-7-8"],
        Hello(min_version=1, max_version=1, encodings=frozenset({0, 1}), name=""),
        expect_hex=frame(1, 1, 0, map_with(hello_map(), [(mp("x"), b"\x91" * 1023 + b"\x00")])),
        canonical_hex=frame(1, 1, 0, hello_body),
    )
    valid(
        "hello-repeated-key",
        "HELLO with name given twice: the last one counts",
        ["WF-7-9"],
        Hello(min_version=1, max_version=1, encodings=frozenset({0, 1}), name="b"),
        expect_hex=frame(1, 1, 0, map_with(hello_map(name="a"), [(mp("name"), mp("b"))])),
        canonical_hex=frame(1, 1, 0, mp(hello_map(name="b"))),
    )
    valid(
        "config-float32-param",
        "CONFIG with the parameter 0.5 as a msgpack float32: read as 0.5, sent as float64",
        ["WF-7-10"],
        ConfigMessage(dim=3, algorithm="asylpg", params={"step": 0.5}),
        expect_hex=frame(
            1,
            3,
            0,
            mp({"dim": 3, "algorithm": "asylpg"}).replace(b"\x82", b"\x83", 1)
            + mp("params")
            + b"\x81"
            + mp("step")
            + b"\xca"
            + struct.pack(">f", 0.5),
        ),
        canonical_hex=frame(1, 3, 0, mp({"dim": 3, "algorithm": "asylpg", "params": {"step": 0.5}})),
    )
    valid(
        "welcome-non-shortest-int",
        "WELCOME worker_id 1 written as uint64 (cf): accepted",
        ["WF-7-10"],
        Welcome(version=1, worker_id=1, encodings=frozenset({0})),
        expect_hex=frame(
            1,
            2,
            0,
            b"\x83"
            + mp("version")
            + b"\x01"
            + mp("worker_id")
            + b"\xcf"
            + (1).to_bytes(8, "big")
            + mp("encodings")
            + mp([0]),
        ),
        canonical_hex=frame(1, 2, 0, mp(welcome_ok)),
    )


# -- connection stories for the decisions of issue 10 ---------------------------------------------


def build_hardening_stories() -> None:
    E = ErrorCode
    hello = Hello(min_version=1, max_version=1, encodings=frozenset(range(8)), name="w0")
    welcome = Welcome(version=1, worker_id=7, encodings=frozenset(range(8)))
    config = ConfigMessage(dim=3, algorithm="asylpg", params={"bits": 8})

    st = Story(
        "story-second-hello", "a second HELLO before WELCOME: UNEXPECTED_MESSAGE", ["WF-7.1-4", "WF-7-1"]
    )
    st.send("worker", hello)
    st.send_refused("worker", hello, E.UNEXPECTED_MESSAGE)
    st.inject("worker", encode_message(hello), error=E.UNEXPECTED_MESSAGE)
    st.done()

    st = Story(
        "story-hello-after-welcome",
        "a HELLO after WELCOME (master in CONFIGURING): UNEXPECTED_MESSAGE",
        ["WF-8.1-1"],
    )
    st.send("worker", hello)
    st.send("master", welcome)
    st.inject("worker", encode_message(hello), error=E.UNEXPECTED_MESSAGE)
    st.done()

    st = Story("story-second-config", "a second CONFIG in READY: UNEXPECTED_MESSAGE", ["WF-8.1-1"])
    handshake(st)
    st.send_refused("master", config, E.UNEXPECTED_MESSAGE)
    st.inject("master", encode_message(config), error=E.UNEXPECTED_MESSAGE)
    st.done()

    st = Story(
        "story-heartbeat-during-handshake",
        "a worker's HEARTBEAT after HELLO, before WELCOME: UNEXPECTED_MESSAGE at the master",
        ["WF-8.1-1", "WF-7.9"],
    )
    st.send("worker", hello)
    st.inject("worker", frame(1, 9, 0, b""), error=E.UNEXPECTED_MESSAGE)
    st.done()

    st = Story(
        "story-heartbeat-before-welcome-to-worker",
        "a master's HEARTBEAT before WELCOME: UNEXPECTED_MESSAGE at the worker",
        ["WF-8.1-1", "WF-7.9"],
    )
    st.send("worker", hello)
    st.inject("master", frame(1, 9, 0, b""), error=E.UNEXPECTED_MESSAGE)
    st.done()

    st = Story(
        "story-close-crosses-welcome",
        "the worker sends CLOSE while the master's WELCOME and CONFIG are in flight: it accepts them, "
        "stays in CLOSING, sends nothing, and takes the master's CLOSE as the end",
        ["WF-8.1-2", "WF-7.11-2", "WF-7.11-3"],
    )
    st.send("worker", hello)
    st.send_later("worker", Close(code=0, reason="leaving"))
    st.send("master", welcome)
    st.silent("worker")
    st.send("master", config)
    st.silent("worker")
    st.deliver("worker")
    st.queued("master")
    st.silent("worker")
    st.eof("worker")
    st.eof("master")
    st.done()

    st = Story(
        "story-close-crosses-config",
        "the worker sends CLOSE in CONFIGURING while CONFIG is in flight: CONFIG is accepted, no reply",
        ["WF-8.1-2"],
    )
    st.send("worker", hello)
    st.send("master", welcome)
    st.send_later("worker", Close(code=0, reason=""))
    st.send("master", config)
    st.silent("worker")
    st.send("master", Snapshot(epoch=1, vector=raw32(1.0, 2.0, 3.0)))
    st.silent("worker")
    st.deliver("worker")
    st.queued("master")
    st.silent("worker")
    st.done()

    st = Story(
        "story-crossing-close-still-checked",
        "in CLOSING a crossing message is still checked: a second CONFIG after a crossing one fails",
        ["WF-8.1-2", "WF-8.4"],
    )
    st.send("worker", hello)
    st.send_later("worker", Close(code=0, reason=""))
    st.send("master", welcome)
    st.send("master", config)
    st.inject("master", encode_message(config), error=E.UNEXPECTED_MESSAGE)
    st.done()

    st = Story(
        "story-bytes-after-close-ignored",
        "the bytes after a received CLOSE, whole frames and a partial one, are ignored",
        ["WF-3-5", "WF-7.11-4", "WF-8.1-3"],
    )
    handshake(st)
    st.inject("master", encode_message(Close(code=0, reason="")) + frame(1, 9, 0, b"") + b"\x01\x0b")
    st.queued("worker")
    st.eof("worker")
    st.done()

    st = Story(
        "story-messages-cross-close",
        "the master's CLOSE crosses the worker's GRADIENT: the master, in CLOSING, accepts the GRADIENT "
        "and answers nothing; the worker answers the CLOSE",
        ["WF-8.1-2", "WF-7.11-3"],
    )
    handshake(st)
    open_epoch(st, 1)
    st.send("master", ModelMessage(epoch=1, version=0, vector=EqualsSnapshot(3)))
    st.send_later("master", Close(code=0, reason="training complete"))
    st.send("worker", Gradient(epoch=1, version=0, vector=ZeroVector(3)))
    st.silent("master")
    st.deliver("master")
    st.queued("worker")
    st.silent("master")
    st.done()

    st = Story(
        "story-handshake-frame-limit",
        "until its handshake is complete (WELCOME sent) the master refuses a frame over "
        "max(max_control_bytes, max_reason_bytes + 20) = 64 bytes on its header",
        ["WF-10-3", "WF-3-3"],
        limits={"max_control_bytes": 64, "max_reason_bytes": 16},
    )
    st.inject("worker", struct.pack("<BBBI", 1, 1, 0, 65), error=E.FRAME_TOO_LARGE)
    st.done()

    st = Story(
        "story-frame-limit-after-handshake",
        "after its handshake the master takes frames up to max_frame_bytes again: a 93-byte "
        "SNAPSHOT_GRADIENT over the 64-byte handshake limit",
        ["WF-10-3"],
        limits={"max_control_bytes": 64, "max_reason_bytes": 16},
    )
    st.send("worker", Hello(min_version=1, max_version=1, encodings=frozenset({0, 1}), name=""))
    st.send("master", Welcome(version=1, worker_id=1, encodings=frozenset({0, 1})))
    st.send("master", ConfigMessage(dim=10, algorithm="asylpg", params={}))
    st.send("master", Snapshot(epoch=1, vector=raw32(*range(10))))
    st.send("worker", SnapshotGradient(epoch=1, samples=2, correct=1, loss=0.5, vector=raw64(*range(10))))
    st.done()

    st = Story(
        "story-worker-handshake-frame-limit",
        "the worker applies the handshake limit until CONFIG arrives: a 65-byte frame after WELCOME fails",
        ["WF-10-3"],
        limits={"max_control_bytes": 64, "max_reason_bytes": 16},
    )
    st.send("worker", Hello(min_version=1, max_version=1, encodings=frozenset({0, 1}), name=""))
    st.send("master", Welcome(version=1, worker_id=1, encodings=frozenset({0, 1})))
    st.inject("master", struct.pack("<BBBI", 1, 4, 0, 65), error=E.FRAME_TOO_LARGE)
    st.done()

    # Sequencing errors of 8.2 not covered above.
    st = Story(
        "story-model-version-below",
        "a MODEL whose version is below the previous MODEL's: VERSION_MISMATCH",
        ["WF-7.7-7", "WF-8.2"],
    )
    handshake(st)
    open_epoch(st, 1)
    st.send("master", ModelMessage(epoch=1, version=5, vector=EqualsSnapshot(3)))
    st.send("worker", Gradient(epoch=1, version=5, vector=ZeroVector(3)))
    st.inject(
        "master",
        encode_message(ModelMessage(epoch=1, version=4, vector=EqualsSnapshot(3))),
        error=E.VERSION_MISMATCH,
    )
    st.done()

    st = Story(
        "story-gradient-version-below",
        "a GRADIENT whose version is below the outstanding MODEL's: VERSION_MISMATCH",
        ["WF-7.8-4"],
    )
    handshake(st)
    open_epoch(st, 1)
    st.send("master", ModelMessage(epoch=1, version=5, vector=EqualsSnapshot(3)))
    st.inject(
        "worker", encode_message(Gradient(epoch=1, version=4, vector=ZeroVector(3))), error=E.VERSION_MISMATCH
    )
    st.done()

    st = Story(
        "story-snapshot-epoch-not-above",
        "a SNAPSHOT whose epoch is not above the current one: UNKNOWN_EPOCH",
        ["WF-7.4-5", "WF-8.2"],
    )
    handshake(st)
    open_epoch(st, 2)
    st.inject("master", encode_message(Snapshot(epoch=2, vector=raw32(1.0, 2.0, 3.0))), error=E.UNKNOWN_EPOCH)
    st.done()

    st = Story(
        "story-snapshot-gradient-wrong-epoch",
        "a SNAPSHOT_GRADIENT for another epoch: UNKNOWN_EPOCH",
        ["WF-7.5-3"],
    )
    handshake(st)
    st.send("master", Snapshot(epoch=3, vector=raw32(1.0, 2.0, 3.0)))
    st.inject(
        "worker",
        encode_message(
            SnapshotGradient(epoch=2, samples=1, correct=0, loss=0.0, vector=raw64(0.0, 0.0, 0.0))
        ),
        error=E.UNKNOWN_EPOCH,
    )
    st.done()

    st = Story(
        "story-full-gradient-wrong-epoch",
        "a FULL_GRADIENT for another epoch: UNKNOWN_EPOCH",
        ["WF-7.6-3"],
    )
    handshake(st)
    open_epoch(st, 1)
    st.inject(
        "master", encode_message(FullGradient(epoch=2, vector=raw32(1.0, 2.0, 3.0))), error=E.UNKNOWN_EPOCH
    )
    st.done()

    st = Story(
        "story-full-gradient-twice",
        "a second FULL_GRADIENT in one epoch: UNEXPECTED_MESSAGE",
        ["WF-7.6-3"],
    )
    handshake(st)
    open_epoch(st, 1)
    st.send("master", FullGradient(epoch=1, vector=raw32(1.0, 2.0, 3.0)))
    st.inject(
        "master",
        encode_message(FullGradient(epoch=1, vector=raw32(1.0, 2.0, 3.0))),
        error=E.UNEXPECTED_MESSAGE,
    )
    st.done()


# -- output ------------------------------------------------------------------------------------


class GenerationError(RuntimeError):
    """aiodq disagreed with the spec's layout or arithmetic somewhere: no vector is written."""


#: The manifest: every vector file's name and the SHA-256 of its bytes.
MANIFEST = "MANIFEST.json"


# -- rules an outside runner found uncovered (an implementer's trial of the vectors) -------------


def build_trial_gaps() -> None:
    """Rules a decoder could break and still pass every vector above.

    An implementer wrote a decoder from the spec alone and planted bugs in it: each of these
    rules could go unchecked without a vector failing.
    """
    E = ErrorCode
    garbage = b"\xc1" * 65  # never valid msgpack: only the length check can give LIMIT_EXCEEDED
    for name, mtype in (("hello", 1), ("welcome", 2), ("config", 3)):
        invalid(
            f"{name}-body-over-control-limit",
            f"{name.upper()} body of 65 bytes (0xC1, never msgpack) over max_control_bytes 64: the "
            "length is checked before the body is parsed",
            ["WF-7-5"],
            frame(1, mtype, 0, garbage),
            E.LIMIT_EXCEEDED,
            {"limits": {"max_control_bytes": 64}},
        )
    huge = hello_map()
    body = map_with(huge, [(mp("x"), b"\xdd\xff\xff\xff\xff\x01")])
    invalid(
        "hello-array-length-over-control-limit",
        "HELLO with an unknown key whose array declares 2**32 - 1 entries and holds one: "
        "MALFORMED_FRAME, refused before any room for the entries is allocated",
        ["WF-7-6"],
        frame(1, 1, 0, body),
        E.MALFORMED_FRAME,
    )
    invalid(
        "hello-name-256-utf8-bytes",
        "HELLO name of 128 characters that take 256 bytes of UTF-8 (U+00E9): the limit counts bytes",
        ["WF-7.1-6"],
        frame(1, 1, 0, mp(hello_map(name="\u00e9" * 128))),
        E.INVALID_CONFIG,
    )
    name = "\u00e9" * 127 + "a"
    valid(
        "hello-name-255-utf8-bytes",
        "HELLO name of 128 characters that take 255 bytes of UTF-8: at the limit",
        ["WF-7.1-6"],
        Hello(min_version=1, max_version=1, encodings=frozenset({0, 1}), name=name),
        expect_hex=frame(1, 1, 0, mp(hello_map(name=name))),
    )
    # s = 1, one level 1: m = 2, N = 1. Exponent stream: bit 0 = 0, bit 1 = 1 (0x02); bit 2, a
    # padding bit, set. Mantissa: the low bit of m, 0. Sign: 0. Every other step of 5.7-4 passes.
    invalid(
        "qsgd-exponent-padding-alone",
        "QSGD d = 1, s = 1, level 1 with a padding bit set after the exponent stream's one bit: "
        "the only rule the frame breaks (step 5)",
        ["WF-5.7-4"],
        grad(b"\x70\x01\x01" + f32raw(0x3F800000) + b"\x06\x00\x00"),
        E.INVALID_PAYLOAD,
    )
    config_head = mp("dim") + mp(3) + mp("algorithm") + mp("asylpg") + mp("params")
    repeated = b"\x83" + mp("b") + mp(1) + mp("a") + mp(2) + mp("b") + mp(3)
    valid(
        "config-params-key-repeated",
        "CONFIG params b = 1, a = 2, b = 3: b = 3 counts and keeps the place of the first b, before a",
        ["WF-7-9", "WF-7.3-1"],
        ConfigMessage(dim=3, algorithm="asylpg", params={"b": 3, "a": 2}),
        expect_hex=frame(1, 3, 0, b"\x83" + config_head + repeated),
        canonical_hex=frame(1, 3, 0, b"\x83" + config_head + mp({"b": 3, "a": 2})),
    )

    # Two crossings a story runner raised (wire-format.md 1 and 8.1-2 now say what happens).
    st = Story(
        "story-secret-master-closing-drops-hello",
        "a master with a secret sent CLOSE, and a HELLO crossed it: in CLOSING it may send no "
        "AUTH_CHALLENGE and may not hand an unauthenticated HELLO to its application, so it drops it",
        ["WF-8.1-2", "WF-7.12-1"],
        master_config=auth_config(SECRET, MASTER_NONCE),
        worker_config=auth_config(SECRET, WORKER_NONCE),
    )
    st.send_later("master", Close(code=0, reason="shutting down"))
    st.send("worker", Hello(min_version=1, max_version=1, encodings=frozenset(range(8)), name="w0"))
    st.silent("master")
    st.deliver("master")
    st.queued("worker")
    st.done()

    limits = {"max_control_bytes": 64, "max_reason_bytes": 16}
    st = Story(
        "story-config-crossing-worker-close-completes-handshake",
        "a CONFIG that crossed the worker's CLOSE completes the worker's handshake: a SNAPSHOT whose "
        "body of 123 bytes is over the 64-byte handshake frame limit then arrives",
        ["WF-8.1-2", "WF-10-3"],
        limits=limits,
    )
    st.send("worker", Hello(min_version=1, max_version=1, encodings=frozenset({0, 1}), name=""))
    st.send("master", Welcome(version=1, worker_id=1, encodings=frozenset({0, 1})))
    st.send_later("worker", Close(code=0, reason="leaving"))
    st.send("master", ConfigMessage(dim=30, algorithm="asylpg", params={}))
    st.send("master", Snapshot(epoch=1, vector=raw32(*range(30))))
    st.silent("worker")
    st.deliver("worker")
    st.queued("master")
    st.done()


def build() -> dict[str, str]:
    """Every vector file (name to text) and the manifest.

    Raises:
        GenerationError: listing every disagreement, if there is any.
    """
    VECTORS.clear()
    ERRORS.clear()
    try:
        build_valid()
        build_invalid()
        build_quantizer()
        build_stories()
        build_invalid_classes()
        build_hardening_stories()
        build_trial_gaps()
    except ProofMismatchError as exc:
        raise GenerationError(str(exc)) from exc
    if ERRORS:
        raise GenerationError("\n".join(ERRORS))
    files: dict[str, str] = {}
    slugs = [slug for slug, _ in VECTORS]
    assert len(set(slugs)) == len(slugs), "two vectors share a name"
    for number, (slug, doc) in enumerate(VECTORS, start=1):
        name = f"{number:03d}-{slug}.json"
        files[name] = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    counts: dict[str, int] = {}
    for _, doc in VECTORS:
        counts[doc["kind"]] = counts.get(doc["kind"], 0) + 1
    manifest = {
        "count": len(files),
        "kinds": counts,
        "files": {name: hashlib.sha256(text.encode()).hexdigest() for name, text in files.items()},
    }
    files[MANIFEST] = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    return files


def main() -> int:
    """Write the vectors and the manifest; exit 1, writing nothing, on any disagreement."""
    try:
        files = build()
    except GenerationError as exc:
        print(f"refusing to write any vector:\n{exc}", file=sys.stderr)
        return 1
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.json"):
        old.unlink()
    for name, text in files.items():
        (OUT / name).write_text(text, encoding="utf-8")
    manifest = json.loads(files[MANIFEST])
    print(f"wrote {manifest['count']} vectors to {OUT}: {manifest['kinds']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
