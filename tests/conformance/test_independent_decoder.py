"""Check the reference codec against an independent decoder written from docs/wire-format.md alone.

``independent_decoder.py`` (next to this file) was written from the specification, without
reading ``aiodq``'s codec.  Here it is run

(a) on every ``valid`` and ``invalid`` JSON vector of ``tests/conformance/vectors``: it must give
    the recorded fields, or the recorded error code;
(b) on a few thousand generated frames, built with the public ``aiodq`` API (random vectors of
    every encoding and every message type) and then mutated (bit flips, byte edits, truncations,
    extensions, header edits) and decoded under random receiver contexts: the independent decoder
    and ``aiodq`` (``FrameReader`` then ``decode_message``) must agree.  Same fields when both
    accept, same error code when both reject, never one accepting while the other rejects;
(c) on a table of hand-written edge cases, mostly about the order of the checks, where the
    expected code is read off the spec and both decoders must give it.

The disagreements found are kept as ``xfail(strict=True)`` tests whose reason starts with
"DISAGREEMENT", so that they stay visible and the file turns red once aiodq or the spec changes.
Two earlier ones are resolved: the msgpack nesting depth is now in [WF-7-6], and [WF-5.5-2] now
says that a sender refuses a scale binary32 cannot represent (aiodq's vector classes raise
ValueError); the tests below assert the specified behaviour.

The AUTH messages (0x0C AUTH_CHALLENGE, 0x0D AUTH_RESPONSE, 0x0E AUTH_CONFIRM, 7.12 .. 7.14) are
compared like the others: their bodies are fixed-size byte fields, so the codec checks only the
body length (MALFORMED_FRAME) and the flags.  Their proofs need the secret and the connection:
the valid AUTH vectors record the secret and nonces they were made with, and the independent
HMAC of ``independent_decoder`` recomputes the proofs from those.

Scope.  ``decode_message`` is a codec, not a connection.  It covers the steps of the receive
procedure [WF-7-1] that need no connection state: step 1 (frame size, in ``FrameReader``), step 2
(type), step 6 (flags) and step 7 (the body, with the configured dimension, the announced
encodings and the limits passed in a ``DecodeContext``).  The header version check (step 3,
[WF-6.1-2], [WF-6.1-7], [WF-6.1-8]), the role and state checks (steps 4 and 5, 8.1) and the
sequencing rules (step 8, 8.2) belong to the connection and are not compared: the independent
decoder runs with its version check off.  A stream that ends inside a frame is MALFORMED_FRAME
[WF-3-5]; ``FrameReader`` reports it as bytes left buffered, which the comparison maps to that code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import independent_decoder as ind
import msgpack
import numpy as np
import pytest

from aiodq import (
    Close,
    CodecError,
    Config,
    DecodeContext,
    DenseQuantized,
    EqualsSnapshot,
    Error,
    FrameReader,
    FullGradient,
    Gradient,
    Heartbeat,
    Hello,
    Limits,
    Model,
    QSGDVector,
    RawVector,
    Snapshot,
    SnapshotGradient,
    SparseQuantized,
    Welcome,
    ZeroVector,
    decode_message,
    encode_message,
    quantize_gradient,
    quantize_model,
    quantize_qsgd,
    quantize_sparse,
)
from aiodq.events import AuthChallenge, AuthConfirm, AuthResponse

VECTOR_DIR = Path(__file__).parent / "vectors"
VECTORS = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(VECTOR_DIR.glob("*.json"))}
ENCODING_NUMBER = {name: number for number, name in ind.ENCODINGS.items()}
MESSAGE_NAME = {
    Hello: "HELLO",
    Welcome: "WELCOME",
    Config: "CONFIG",
    Snapshot: "SNAPSHOT",
    SnapshotGradient: "SNAPSHOT_GRADIENT",
    FullGradient: "FULL_GRADIENT",
    Model: "MODEL",
    Gradient: "GRADIENT",
    Heartbeat: "HEARTBEAT",
    Error: "ERROR",
    Close: "CLOSE",
    AuthChallenge: "AUTH_CHALLENGE",
    AuthResponse: "AUTH_RESPONSE",
    AuthConfirm: "AUTH_CONFIRM",
}


def _names(kind: str) -> list[str]:
    return [name for name, doc in VECTORS.items() if doc["kind"] == kind]


# -- float bit patterns ------------------------------------------------------------------------------


def f32_bits(value: float) -> int:
    return struct.unpack("<I", struct.pack("<f", value))[0]


def f64_bits(value: float) -> int:
    return struct.unpack("<Q", struct.pack("<d", value))[0]


def _hex32(value: float) -> str:
    return f"0x{f32_bits(value):08x}"


def _hex64(value: float) -> str:
    return f"0x{f64_bits(value):016x}"


# -- (a) the JSON vectors -------------------------------------------------------------------------------


def _context_of(doc: dict[str, Any]) -> ind.Context:
    context = doc.get("context", {})
    kwargs: dict[str, Any] = dict(context.get("limits", {}))
    if "dim" in context:
        kwargs["dim"] = context["dim"]
    if "encodings" in context:
        kwargs["encodings"] = frozenset(context["encodings"])
    return ind.Context(**kwargs)


def _vector_json(vector: dict[str, Any]) -> dict[str, Any]:
    """An independent-decoder vector in the JSON vectors' field format."""
    encoding = vector["encoding"]
    out: dict[str, Any] = {"encoding": encoding, "dim": vector["dim"]}
    if encoding in ("RAW_F32", "RAW_F64"):
        to_hex = _hex32 if encoding == "RAW_F32" else _hex64
        out["values_bits"] = [to_hex(v) for v in vector["values"]]
    elif encoding in ("DENSE", "DENSE_RICE", "SPARSE_BITMAP", "SPARSE_RICE"):
        out.update(bits=vector["bits"], scale_bits=_hex32(vector["scale"]), codes=vector["codes"])
        if encoding.startswith("SPARSE"):
            out["indices"] = vector["indices"]
        if encoding in ("SPARSE_RICE", "DENSE_RICE"):
            out["rice_k"] = vector["rice_k"]
    elif encoding == "QSGD":
        out.update(s=vector["s"], norm_bits=_hex32(vector["norm"]), levels=vector["levels"])
    return out


_EVENT_NAME = {name: cls.__name__ for cls, name in MESSAGE_NAME.items()}


def _event_json(message: dict[str, Any]) -> dict[str, Any]:
    """An independent-decoder message in the JSON vectors' ``event`` format."""
    out = {"event": _EVENT_NAME[message["message"]]}
    for key, value in message.items():
        if key in ("message", "header"):
            continue
        if key == "vector":
            out[key] = _vector_json(value)
        elif key == "loss":
            out["loss_bits"] = _hex64(value)
        elif key == "params":
            out[key] = {k: {"f64": _hex64(v)} if type(v) is float else v for k, v in value.items()}
        elif type(value) is bytes:  # the nonce and mac of the AUTH messages, as hex
            out[key] = value.hex()
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("name", _names("valid"))
def test_valid_vector(name: str) -> None:
    """The independent decoder gives exactly the header and fields recorded in a valid vector."""
    doc = VECTORS[name]
    [message] = ind.decode_stream(bytes.fromhex(doc["hex"]), _context_of(doc))
    header = message["header"]
    assert {"version": header["version"], "type": message["message"], "flags": header["flags"]} == doc[
        "header"
    ]
    assert _event_json(message) == doc["event"]


@pytest.mark.parametrize("name", [n for n in _names("valid") if "auth" in VECTORS[n]])
def test_valid_auth_vector_proof(name: str) -> None:
    """A valid AUTH vector's mac is the 7.12 proof for the secret and nonces it records (HMAC-SHA256)."""
    doc = VECTORS[name]
    auth = {key: bytes.fromhex(value) for key, value in doc["auth"].items()}
    [message] = ind.decode_stream(bytes.fromhex(doc["hex"]))
    assert message["message"] in ind.AUTH_MESSAGES
    if message["message"] == "AUTH_CHALLENGE":
        assert message["nonce"] == auth["master_nonce"]
        return
    if message["message"] == "AUTH_RESPONSE":
        assert message["nonce"] == auth["worker_nonce"]
        expected = ind.worker_proof(auth["secret"], auth["master_nonce"], auth["worker_nonce"])
    else:
        expected = ind.master_proof(auth["secret"], auth["master_nonce"], auth["worker_nonce"])
    assert ind.proof_matches(expected, message["mac"])


def test_vectors_cover_the_auth_messages() -> None:
    """Each AUTH message has a valid vector with a recorded proof, and wrong lengths are invalid vectors."""
    decoded = {
        ind.decode_stream(bytes.fromhex(VECTORS[n]["hex"]))[0]["message"]
        for n in _names("valid")
        if "auth" in VECTORS[n]
    }
    assert decoded == set(ind.AUTH_MESSAGES)
    invalid_types = {bytes.fromhex(VECTORS[n]["hex"])[1] for n in _names("invalid")}
    assert {0x0C, 0x0D, 0x0E} <= invalid_types


def test_unknown_type_vectors_use_unassigned_types() -> None:
    """An UNKNOWN_MESSAGE_TYPE vector uses a type outside 0x01..0x0E ([WF-7-1] step 2)."""
    unknown = [n for n in _names("invalid") if VECTORS[n]["error"] == "UNKNOWN_MESSAGE_TYPE"]
    assert unknown
    for name in unknown:
        assert bytes.fromhex(VECTORS[name]["hex"])[1] not in ind.MESSAGE_TYPES, name


@pytest.mark.parametrize("name", _names("invalid"))
def test_invalid_vector(name: str) -> None:
    """The independent decoder fails on an invalid vector with exactly the recorded error code."""
    doc = VECTORS[name]
    with pytest.raises(ind.WireError) as info:
        ind.decode_stream(bytes.fromhex(doc["hex"]), _context_of(doc))
    assert info.value.code == doc["error"], str(info.value)


def test_vectors_cover_both_kinds() -> None:
    """There are enough valid and invalid vectors for the two tests above to mean something."""
    assert len(_names("valid")) >= 40 and len(_names("invalid")) >= 50


# -- both decoders on the same bytes ------------------------------------------------------------------


def _plain_vector_ind(vector: dict[str, Any]) -> dict[str, Any]:
    encoding = vector["encoding"]
    out: dict[str, Any] = {"encoding": "SPARSE" if encoding.startswith("SPARSE") else encoding}
    out["dim"] = vector["dim"]
    if encoding == "RAW_F32":
        out["values"] = [f32_bits(v) for v in vector["values"]]
    elif encoding == "RAW_F64":
        out["values"] = [f64_bits(v) for v in vector["values"]]
    elif encoding in ("DENSE", "DENSE_RICE", "SPARSE_BITMAP", "SPARSE_RICE"):
        out.update(bits=vector["bits"], scale=f32_bits(vector["scale"]), codes=vector["codes"])
        if encoding.startswith("SPARSE"):
            out["indices"] = vector["indices"]
        if encoding == "DENSE_RICE":
            out["rice_k"] = vector["rice_k"]
    elif encoding == "QSGD":
        out.update(s=vector["s"], norm=f32_bits(vector["norm"]), levels=vector["levels"])
    if encoding != "EQUALS_SNAPSHOT":
        out["dense"] = [f64_bits(v) for v in ind.dense_values(vector)]
    return out


def _plain_vector_ref(vector: Any) -> dict[str, Any]:
    ints = lambda array: [int(x) for x in array]  # noqa: E731
    out: dict[str, Any]
    if isinstance(vector, RawVector):
        if vector.values.dtype == np.float32:
            out = {
                "encoding": "RAW_F32",
                "dim": vector.dim,
                "values": [f32_bits(float(v)) for v in vector.values],
            }
        else:
            out = {
                "encoding": "RAW_F64",
                "dim": vector.dim,
                "values": [f64_bits(float(v)) for v in vector.values],
            }
    elif isinstance(vector, ZeroVector):
        out = {"encoding": "ZERO", "dim": vector.dim}
    elif isinstance(vector, EqualsSnapshot):
        return {"encoding": "EQUALS_SNAPSHOT", "dim": vector.dim}
    elif isinstance(vector, DenseQuantized):
        # A decoded vector asks for Rice coding exactly when it arrived as DENSE_RICE (5.8).
        encoding = "DENSE_RICE" if vector.rice else "DENSE"
        out = {"encoding": encoding, "dim": vector.dim, "bits": vector.bits, "scale": f32_bits(vector.scale)}
        out["codes"] = ints(vector.codes)
        if vector.rice:
            out["rice_k"] = vector.rice_choice
    elif isinstance(vector, SparseQuantized):
        out = {"encoding": "SPARSE", "dim": vector.dim, "bits": vector.bits, "scale": f32_bits(vector.scale)}
        out.update(codes=ints(vector.codes), indices=ints(vector.indices))
    else:
        assert isinstance(vector, QSGDVector), type(vector)
        out = {"encoding": "QSGD", "dim": vector.dim, "s": vector.s, "norm": f32_bits(vector.norm)}
        out["levels"] = ints(vector.levels)
    out["dense"] = [f64_bits(float(v)) for v in vector.to_dense(np.float64)]
    return out


def _plain_param(value: Any) -> tuple[str, Any]:
    return (type(value).__name__, f64_bits(value) if type(value) is float else value)


def _plain_ind(message: dict[str, Any]) -> dict[str, Any]:
    header = message["header"]
    out: dict[str, Any] = {"header": (header["version"], header["type"], header["flags"])}
    for key, value in message.items():
        if key == "header":
            continue
        if key == "vector":
            out[key] = _plain_vector_ind(value)
        elif key == "loss":
            out[key] = f64_bits(value)
        elif key == "params":
            out[key] = {k: _plain_param(v) for k, v in value.items()}
        else:
            out[key] = value
    return out


def _plain_ref(frame: Any, event: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "header": (frame.version, frame.type, frame.flags),
        "message": MESSAGE_NAME[type(event)],
    }
    fields = {
        "HELLO": ("min_version", "max_version", "encodings", "name"),
        "WELCOME": ("version", "worker_id", "encodings"),
        "CONFIG": ("dim", "algorithm", "params"),
        "SNAPSHOT": ("epoch", "vector"),
        "SNAPSHOT_GRADIENT": ("epoch", "samples", "correct", "loss", "vector"),
        "FULL_GRADIENT": ("epoch", "vector"),
        "MODEL": ("epoch", "version", "vector", "relative"),
        "GRADIENT": ("epoch", "version", "vector"),
        "HEARTBEAT": (),
        "ERROR": ("code", "epoch", "version", "reason"),
        "CLOSE": ("code", "reason"),
        "AUTH_CHALLENGE": ("nonce",),
        "AUTH_RESPONSE": ("nonce", "mac"),
        "AUTH_CONFIRM": ("mac",),
    }[out["message"]]
    for key in fields:
        value = getattr(event, key)
        if key == "vector":
            value = _plain_vector_ref(value)
        elif key == "encodings":
            value = sorted(int(e) for e in value)
        elif key == "loss":
            value = f64_bits(value)
        elif key == "params":
            value = {k: _plain_param(v) for k, v in value.items()}
        elif key == "code":
            value = int(value)
        out[key] = value
    return out


def run_reference(data: bytes, context: ind.Context) -> tuple[str, Any]:
    """``("ok", [plain messages])`` or ``("error", code name)`` from FrameReader + decode_message."""
    limits = Limits(
        max_frame_bytes=context.max_frame_bytes,
        max_dimension=context.max_dimension,
        max_control_bytes=context.max_control_bytes,
        max_reason_bytes=context.max_reason_bytes,
    )
    decode_context = DecodeContext(
        limits=limits, dim=context.dim, encodings=frozenset(ENCODING_NUMBER[e] for e in context.encodings)
    )
    reader = FrameReader(limits)
    out = []
    try:
        reader.feed(data)
        while (frame := reader.next_frame()) is not None:
            out.append(_plain_ref(frame, decode_message(frame, decode_context)))
    except CodecError as exc:
        return "error", exc.code.name
    if reader.buffered:
        return "error", "MALFORMED_FRAME"  # the stream ends inside a frame [WF-3-5]
    return "ok", out


def run_independent(data: bytes, context: ind.Context) -> tuple[str, Any]:
    """The same result shape from the independent decoder."""
    try:
        return "ok", [_plain_ind(m) for m in ind.decode_stream(data, context)]
    except ind.WireError as exc:
        return "error", exc.code


# -- random events built with the public API ------------------------------------------------------------


U63 = 2**63 - 1
SPECIAL_F32 = [-0.0, 1e-45, 1.17549435e-38, 3.4028235e38, -3.4028235e38, 0.1, -1.0]
SPECIAL_F64 = [-0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1, -2.5]


def _pick(rng: np.random.Generator, choices: list[Any]) -> Any:
    """One element of a Python list (``rng.choice`` would convert big ints to floats)."""
    return choices[int(rng.integers(len(choices)))]


def _counter(rng: np.random.Generator) -> int:
    pick = rng.integers(4)
    if pick == 0:
        return int(rng.integers(0, 128))
    if pick == 1:
        return int(rng.integers(0, 2**14))
    if pick == 2:
        return U63 - int(rng.integers(0, 3))
    return int(rng.integers(0, 2**62)) << int(rng.integers(0, 2))


def _scale(rng: np.random.Generator) -> float:
    """A positive binary32 value (a scale or a norm must be one, [WF-5.5-2])."""
    if rng.random() < 0.1:
        return float(np.float32(_pick(rng, [1e-45, 1.17549435e-38, 3.4028235e38, 1.0])))
    return max(float(np.float32(np.exp(rng.normal(0.0, 8.0)))), float(np.float32(1e-45)))


def _raw(rng: np.random.Generator, d: int) -> RawVector:
    dtype = np.float32 if rng.random() < 0.5 else np.float64
    values = rng.standard_normal(d) * 10.0 ** rng.integers(-5, 5)
    specials = SPECIAL_F32 if dtype == np.float32 else SPECIAL_F64
    for i in range(d):
        if rng.random() < 0.15:
            values[i] = specials[int(rng.integers(len(specials)))]
    if rng.random() < 0.1:
        values[:] = 0.0
    return RawVector(values.astype(dtype))


def _dense(rng: np.random.Generator, d: int) -> DenseQuantized:
    bits = int(rng.integers(1, 17))
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    codes = rng.integers(low, high + 1, size=d)
    if rng.random() < 0.3:
        codes[rng.random(d) < 0.7] = 0
    if rng.random() < 0.2:
        codes[rng.random(d) < 0.5] = low if rng.random() < 0.5 else high
    if not codes.any():
        codes[int(rng.integers(d))] = low if bits == 1 else 1
    # Ask for DENSE_RICE (5.8) half the time: it is used where it is smaller.
    return DenseQuantized(bits, _scale(rng), codes.astype(np.int64), rice=bool(rng.random() < 0.5))


def _dense_rice(rng: np.random.Generator, d: int) -> DenseQuantized:
    """Mostly small codes (a quantized model or gradient), sent as DENSE_RICE where smaller (5.8)."""
    bits = int(rng.integers(2, 17))
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    spread = max(1, int(2 ** rng.uniform(0, bits - 1)))
    codes = np.clip(np.round(rng.laplace(0.0, spread / 4, size=d)), low, high).astype(np.int64)
    if rng.random() < 0.3:
        codes[int(rng.integers(d))] = low if rng.random() < 0.5 else high
    if not codes.any():
        codes[int(rng.integers(d))] = low
    return DenseQuantized(bits, _scale(rng), codes, rice=True)


def _sparse(rng: np.random.Generator, d: int) -> SparseQuantized:
    bits = int(rng.integers(1, 17))
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    n = int(rng.integers(1, d + 1)) if rng.random() < 0.3 else int(rng.integers(1, max(2, d // 8) + 1))
    n = min(n, d)
    indices = np.sort(rng.choice(d, size=n, replace=False))
    if rng.random() < 0.2:  # clustered indices: long and short gaps
        start = int(rng.integers(0, d - n + 1))
        indices = np.arange(start, start + n)
    codes = rng.integers(low, high + 1, size=n)
    codes[codes == 0] = low if bits > 1 else -1
    return SparseQuantized(d, bits, _scale(rng), indices.astype(np.int64), codes.astype(np.int64))


def _qsgd(rng: np.random.Generator, d: int) -> QSGDVector:
    s = (
        _pick(rng, [1, 2, 3, 4, 7, 15, 16, 255, 1000, 65535])
        if rng.random() < 0.7
        else int(rng.integers(1, 65536))
    )
    levels = rng.integers(-s, s + 1, size=d)
    levels[rng.random(d) < rng.random()] = 0
    if rng.random() < 0.2:
        levels[rng.random(d) < 0.5] = s if rng.random() < 0.5 else -s
    if not levels.any():
        levels[int(rng.integers(d))] = s
    return QSGDVector(s, _scale(rng), levels.astype(np.int64))


def _quantized(rng: np.random.Generator, d: int) -> Any:
    """A vector from the real quantizers (may be ZERO)."""
    alpha = rng.standard_normal(d) * (rng.random(d) < rng.random())
    pick = rng.integers(3)
    if pick == 0:
        return quantize_gradient(alpha, int(rng.integers(2, 17)), rng)
    if pick == 1:
        return quantize_sparse(alpha, max(1, d // int(rng.integers(1, 20))), int(rng.integers(2, 17)), rng)
    return quantize_qsgd(alpha, _pick(rng, [1, 4, 16, 255]), rng)


def _dim(rng: np.random.Generator) -> int:
    return _pick(rng, [1, 2, 3, 5, 7, 8, 9, 13, 16, 17, 31, 64, 100, 200, 300])


def _text(rng: np.random.Generator, max_chars: int) -> str:
    alphabet = "abcXYZ 0-_é€😀\u0000\u07ff\uffff"
    return "".join(
        alphabet[int(i)] for i in rng.integers(len(alphabet), size=int(rng.integers(0, max_chars + 1)))
    )


def _encodings(rng: np.random.Generator) -> frozenset[int]:
    """Announced encodings, now and then with entries 9..15, which stay in the set [WF-6.2-1]."""
    chosen = frozenset(int(e) for e in np.flatnonzero(rng.random(9) < 0.7))
    if rng.random() < 0.15:
        chosen |= frozenset(int(e) for e in rng.integers(9, 16, size=int(rng.integers(1, 4))))
    return chosen


def _bytes32(rng: np.random.Generator) -> bytes:
    """A nonce or a mac: 32 random bytes, or an all-zero / all-ones pattern."""
    pick = rng.random()
    if pick < 0.1:
        return bytes(32)
    if pick < 0.2:
        return b"\xff" * 32
    return bytes(int(b) for b in rng.integers(0, 256, size=32))


def _params(rng: np.random.Generator) -> dict[str, Any]:
    makers: list[Callable[[], Any]] = [
        lambda: bool(rng.random() < 0.5),
        lambda: int(rng.integers(-(2**40), 2**40)),
        lambda: float(rng.standard_normal()),
        lambda: _text(rng, 6),
        lambda: -0.0,
        lambda: U63,
    ]
    return {
        _text(rng, 5) + str(i): makers[int(rng.integers(len(makers)))]()
        for i in range(int(rng.integers(0, 5)))
    }


def random_event(rng: np.random.Generator) -> Any:
    """One valid event of a random type with random fields."""
    d = _dim(rng)
    kind = int(rng.integers(15))
    if kind == 0:
        low = int(rng.integers(1, 256))
        return Hello(
            min_version=low,
            max_version=int(rng.integers(low, 256)),
            encodings=_encodings(rng),
            name=_text(rng, 8),
        )
    if kind == 1:
        return Welcome(version=int(rng.integers(1, 256)), worker_id=_counter(rng), encodings=_encodings(rng))
    if kind == 2:
        return Config(dim=d, algorithm=_text(rng, 6) or "asylpg", params=_params(rng))
    if kind == 3:
        return Snapshot(epoch=_counter(rng), vector=_raw(rng, d))
    if kind == 4:
        loss = float(rng.standard_normal() * 100) if rng.random() < 0.9 else -0.0
        return SnapshotGradient(
            epoch=_counter(rng), samples=_counter(rng), correct=_counter(rng), loss=loss, vector=_raw(rng, d)
        )
    if kind == 5:
        return FullGradient(epoch=_counter(rng), vector=_raw(rng, d))
    if kind == 6:
        pick = int(rng.integers(5))
        if pick == 4:
            x_snap = rng.standard_normal(d)
            payload = quantize_model(
                x_snap + 0.01 * rng.standard_normal(d) * (rng.random() < 0.8), x_snap, 0.5, rng
            )
            vector, relative = payload.vector, payload.relative
            if isinstance(vector, DenseQuantized) and rng.random() < 0.5:
                vector = vector.with_rice(True)  # as the reference master sends it (5.8)
        else:
            makers = [_raw, _dense, lambda r, n: ZeroVector(n), lambda r, n: EqualsSnapshot(n)]
            maker = _dense_rice if pick == 1 and rng.random() < 0.5 else makers[pick]
            vector = maker(rng, d)
            relative = pick in (0, 1) and rng.random() < 0.5
        return Model(epoch=_counter(rng), version=_counter(rng), vector=vector, relative=relative)
    if kind in (7, 8):
        makers = [_raw, _dense, _dense_rice, _sparse, _sparse, _qsgd, _quantized, lambda r, n: ZeroVector(n)]
        vector = makers[int(rng.integers(len(makers)))](rng, d)
        return Gradient(epoch=_counter(rng), version=_counter(rng), vector=vector)
    if kind == 9:
        return Heartbeat()
    if kind == 10:
        return Error(
            code=int(rng.integers(0, 65536)),
            epoch=_counter(rng),
            version=_counter(rng),
            reason=_text(rng, 12),
        )
    if kind == 11:
        return Close(code=int(rng.integers(0, 65536)), reason=_text(rng, 12))
    if kind == 12:
        return AuthChallenge(nonce=_bytes32(rng))
    if kind == 13:
        return AuthResponse(nonce=_bytes32(rng), mac=_bytes32(rng))
    return AuthConfirm(mac=_bytes32(rng))


# -- control bodies that the encoder would never write ---------------------------------------------------


def _odd_value(rng: np.random.Generator) -> Any:
    choices: list[Any] = [
        None,
        True,
        3,
        -1,
        2**63,
        1.5,
        float("nan"),
        "aiodq",
        "",
        b"aiodq",
        [1, 2],
        {"a": 1},
        256,
    ]
    return choices[int(rng.integers(len(choices)))]


def _control_variant(rng: np.random.Generator, event: Any) -> bytes:
    """A HELLO, WELCOME or CONFIG frame whose msgpack body is edited at the value level."""
    if isinstance(event, Hello):
        body: dict[Any, Any] = {
            "magic": "aiodq",
            "min_version": event.min_version,
            "max_version": event.max_version,
            "encodings": sorted(event.encodings),
            "name": event.name,
        }
    elif isinstance(event, Welcome):
        body = {"version": event.version, "worker_id": event.worker_id, "encodings": sorted(event.encodings)}
    else:
        body = {"dim": event.dim, "algorithm": event.algorithm, "params": dict(event.params)}
    keys = list(body)
    for _ in range(int(rng.integers(1, 3))):
        pick = int(rng.integers(9))
        key = keys[int(rng.integers(len(keys)))]
        if pick == 0:
            body.pop(key, None)
        elif pick == 1:
            body[key] = _odd_value(rng)
        elif pick == 2:
            body[_text(rng, 4) + "x"] = _odd_value(rng)
        elif pick == 3:
            body[key.encode()] = body.pop(key, 1)  # the key as bin: unknown, so the key is missing
        elif pick == 4 and "encodings" in body:
            body["encodings"] = [int(x) for x in rng.integers(-1, 18, size=int(rng.integers(0, 5)))]
        elif pick == 5 and isinstance(body.get("params"), dict):
            body["params"] = {**body["params"], _text(rng, 3): _odd_value(rng)}
        elif pick == 6:
            body = {"extra": [[[[1]]]], **body, "deep": {"k": {b"bin": 1}}}
        elif pick == 7 and "name" in body:
            body["name"] = "x" * int(rng.integers(250, 260))
        elif pick == 8 and "dim" in body:
            body["dim"] = _pick(rng, [0, -1, 2**24, 2**24 + 1, 2**64 - 1])
    raw = msgpack.packb(body, use_bin_type=True, use_single_float=bool(rng.random() < 0.3))
    if rng.random() < 0.2:  # a repeated key: the last occurrence wins [WF-7-9]
        key = keys[int(rng.integers(len(keys)))]
        raw = _with_duplicate(body, key, _odd_value(rng) if rng.random() < 0.5 else body.get(key, 1))
    mtype = {Hello: 1, Welcome: 2, Config: 3}[type(event)]
    return bytes([1, mtype, 0]) + len(raw).to_bytes(4, "little") + raw


def _with_duplicate(body: dict[Any, Any], key: Any, value: Any) -> bytes:
    items = [*body.items(), (key, value)]
    raw = b"".join(
        msgpack.packb(k, use_bin_type=True) + msgpack.packb(v, use_bin_type=True) for k, v in items
    )
    count = len(items)
    header = bytes([0x80 | count]) if count < 16 else b"\xde" + count.to_bytes(2, "big")
    return header + raw


# -- byte-level mutations --------------------------------------------------------------------------------


def _relength(frame: bytes, body: bytes) -> bytes:
    return frame[:3] + len(body).to_bytes(4, "little") + body


def mutate(rng: np.random.Generator, frame: bytes) -> bytes:
    """A random edit of one frame (most keep the header's length consistent with the body)."""
    body = bytearray(frame[7:])
    pick = int(rng.integers(12))
    if pick <= 2 and body:  # flip a bit
        position = int(rng.integers(len(body)))
        body[position] ^= 1 << int(rng.integers(8))
    elif pick == 3 and body:  # overwrite a byte
        body[int(rng.integers(len(body)))] = int(rng.integers(256))
    elif pick == 4 and body:  # drop the last bytes
        del body[len(body) - int(rng.integers(1, min(len(body), 4) + 1)) :]
    elif pick == 5:  # append bytes
        body += bytes(int(b) for b in rng.integers(0, 256, size=int(rng.integers(1, 3))))
    elif pick == 6 and body:  # delete or insert a byte inside
        position = int(rng.integers(len(body)))
        if rng.random() < 0.5:
            del body[position]
        else:
            body.insert(position, int(rng.integers(256)))
    elif pick == 7:  # header: type (0x0F and up are unknown, 0x0C..0x0E are the AUTH messages)
        return frame[:1] + bytes([_pick(rng, [0, 15, 255, *range(1, 15)])]) + frame[2:]
    elif pick == 8:  # header: flags
        return frame[:2] + bytes([_pick(rng, [1, 2, 0x80, 0xFF])]) + frame[3:]
    elif pick == 9:  # header: version (decode_message does not check it)
        return bytes([int(rng.integers(256))]) + frame[1:]
    elif pick == 10:  # header length off by a little: a partial or extra frame on the stream
        length = max(0, len(body) + int(rng.integers(-2, 3)))
        return frame[:3] + length.to_bytes(4, "little") + bytes(body)
    else:  # the stream ends early
        return frame[: int(rng.integers(0, max(len(frame), 1)))]
    return _relength(frame, bytes(body))


def _descriptor_position(event: Any) -> int | None:
    """Where the vector descriptor of an encoded event sits in its frame, or None."""
    if not hasattr(event, "vector"):
        return None
    position = 7 + len(_varint(event.epoch))
    if isinstance(event, SnapshotGradient):
        position += len(_varint(event.samples)) + len(_varint(event.correct)) + 8
    elif isinstance(event, Model | Gradient):
        position += len(_varint(event.version))
    return position


def _descriptor_edit(rng: np.random.Generator, frame: bytes, event: Any) -> bytes | None:
    """Replace the vector descriptor of a frame that carries a vector."""
    position = _descriptor_position(event)
    if position is None:
        return None
    data = bytearray(frame)
    if rng.random() < 0.7:
        data[position] = int(rng.integers(0, 10)) << 4 | int(rng.integers(0, 16)) * int(rng.random() < 0.5)
    else:
        data[position] = int(rng.integers(256))
    return bytes(data)


SPECIAL_F32_BYTES = [struct.pack("<f", x) for x in (math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1e-45)]


def _payload_edit(rng: np.random.Generator, frame: bytes, event: Any) -> bytes | None:
    """Edit inside the vector payload, after the descriptor and the dimension (length fixed up)."""
    position = _descriptor_position(event)
    if position is None:
        return None
    start = position + 1 + len(_varint(event.vector.dim))
    data = bytearray(frame)
    pick = int(rng.integers(6))
    if start >= len(data) or pick == 0:  # a different dimension
        data[position + 1 : start] = _varint(_pick(rng, [0, 1, event.vector.dim + 1, 2**24 + 1, 2**62]))
    elif pick == 1:  # a float field (scale, norm, nnz/s then scale, or a raw value) set to a special value
        offset = start + int(rng.integers(0, min(4, len(data) - start)))
        data[offset : offset + 4] = _pick(rng, SPECIAL_F32_BYTES)
    elif pick == 2:  # a small varint field right after the dimension (nnz or s)
        data[start] = int(rng.integers(0, 128))
    else:  # bit flips in the payload proper
        for _ in range(int(rng.integers(1, 3))):
            offset = int(rng.integers(start, len(data)))
            data[offset] ^= 1 << int(rng.integers(8))
    return _relength(frame, bytes(data[7:]))


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def random_context(rng: np.random.Generator, event: Any) -> ind.Context:
    """The configured dimension (usually the vector's), announced encodings and limits."""
    dim = getattr(getattr(event, "vector", None), "dim", None)
    pick = rng.random()
    if pick < 0.1:
        dim = None
    elif pick < 0.15 and dim is not None:
        dim += 1
    encodings = ind.ALL_ENCODINGS
    if rng.random() < 0.1:
        encodings = frozenset(name for name in ind.ALL_ENCODINGS if rng.random() < 0.7)
    limits: dict[str, int] = {}
    if rng.random() < 0.1:
        limits["max_dimension"] = int(rng.integers(1, 40))
    if rng.random() < 0.1:
        limits["max_reason_bytes"] = int(rng.integers(0, 10))
    if rng.random() < 0.05:
        limits["max_control_bytes"] = int(rng.integers(64, 80))
    if rng.random() < 0.05:
        limits["max_frame_bytes"] = int(rng.integers(64, 200))
    return ind.Context(dim=dim, encodings=encodings, **limits)


def _cases(seed: int, count: int) -> list[tuple[str, bytes, ind.Context]]:
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        event = random_event(rng)
        frame = encode_message(event)
        context = random_context(rng, event)
        pick = rng.random()
        label = type(event).__name__
        if pick < 0.3:
            cases.append((f"{index} {label} as sent", frame, context))
        elif pick < 0.4 and isinstance(event, Hello | Welcome | Config):
            cases.append((f"{index} {label} edited map", _control_variant(rng, event), context))
        elif pick < 0.5 and (edited := _descriptor_edit(rng, frame, event)) is not None:
            cases.append((f"{index} {label} descriptor", edited, context))
        elif pick < 0.75 and (edited := _payload_edit(rng, frame, event)) is not None:
            cases.append((f"{index} {label} payload", edited, context))
        else:
            data = frame
            for _ in range(int(rng.integers(1, 3))):
                data = mutate(rng, data)
            cases.append((f"{index} {label} mutated", data, context))
    return cases


def _disagreements(cases: list[tuple[str, bytes, ind.Context]]) -> tuple[list[str], dict[str, int]]:
    found = []
    tally: dict[str, int] = {}
    for label, data, context in cases:
        mine, theirs = run_independent(data, context), run_reference(data, context)
        key = f"{mine[0]}:{mine[1] if mine[0] == 'error' else 'accepted'}"
        tally[key] = tally.get(key, 0) + 1
        if mine != theirs:
            found.append(
                f"{label}: hex={data.hex()} context={context}\n  independent={mine}\n  aiodq={theirs}"
            )
    return found, tally


# -- (b) the comparison tests ---------------------------------------------------------------------------


def test_generated_frames_agree() -> None:
    """12000 generated, edited and mutated frames: both decoders give the same fields or the same code."""
    found, tally = _disagreements(_cases(seed=20240601, count=12000))
    assert not found, f"{len(found)} disagreements, first ones:\n" + "\n".join(found[:10])
    # The mix exercises acceptance and most error codes.
    assert tally["ok:accepted"] > 500
    for code in (
        "MALFORMED_FRAME",
        "INVALID_PAYLOAD",
        "UNSUPPORTED_ENCODING",
        "WRONG_DIMENSION",
        "INVALID_CONFIG",
    ):
        assert tally.get(f"error:{code}", 0) > 5, (code, tally)


def _quantized_payload_cases(seed: int, count: int) -> list[tuple[str, bytes, ind.Context]]:
    """GRADIENTs with DENSE, DENSE_RICE, sparse or QSGD vectors, edited inside the payload."""
    rng = np.random.default_rng(seed)
    cases = []
    for index in range(count):
        d = _dim(rng)
        vector = [_dense, _dense_rice, _sparse, _sparse, _qsgd][int(rng.integers(5))](rng, d)
        event = Gradient(epoch=int(rng.integers(0, 300)), version=int(rng.integers(0, 300)), vector=vector)
        frame = encode_message(event)
        start = _descriptor_position(event)
        assert start is not None
        body = bytearray(frame[7:])
        first = start - 7 + 1 + len(_varint(d))  # the first byte after the dimension
        pick = int(rng.integers(7))
        if pick == 6:  # the scale or norm set to NaN, an infinity, a zero, a negative or a subnormal
            counter = vector.nnz if isinstance(vector, SparseQuantized) else getattr(vector, "s", None)
            offset = first + (0 if counter is None else len(_varint(counter)))
            body[offset : offset + 4] = _pick(rng, SPECIAL_F32_BYTES)
        elif pick <= 2:  # one to three bit flips
            for _ in range(pick + 1):
                offset = int(rng.integers(first, len(body)))
                body[offset] ^= 1 << int(rng.integers(8))
        elif pick == 3:  # drop or add bytes at the end
            if rng.random() < 0.5:
                del body[len(body) - int(rng.integers(1, 3)) :]
            else:
                body += bytes(int(b) for b in rng.integers(0, 256, size=int(rng.integers(1, 3))))
        elif pick == 4:  # rewrite one byte
            body[int(rng.integers(first, len(body)))] = int(rng.integers(256))
        else:  # bitmap <-> Rice, DENSE <-> DENSE_RICE (0xC0), or another bit width
            body[start - 7] = (body[start - 7] & 0xF0 ^ _pick(rng, [0x00, 0x30, 0x10, 0xC0])) | int(
                rng.integers(16)
            )
        data = _relength(frame, bytes(body))
        cases.append((f"{index} {type(vector).__name__} payload", data, ind.Context(dim=d)))
    return cases


def test_quantized_payload_edits_agree() -> None:
    """4000 DENSE, DENSE_RICE, sparse and QSGD payloads with edited bits or lengths: same result in both."""
    found, tally = _disagreements(_quantized_payload_cases(seed=99, count=4000))
    assert not found, f"{len(found)} disagreements, first ones:\n" + "\n".join(found[:10])
    assert tally.get("error:INVALID_PAYLOAD", 0) > 1000 and tally.get("error:NON_FINITE", 0) > 100, tally


def test_every_bit_width_and_encoding_round_trips() -> None:
    """Dense codes of every width 1..16 and all sparse/QSGD corners decode identically in both decoders."""
    rng = np.random.default_rng(7)
    cases = []
    for bits in range(1, 17):
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        for d in (1, 7, 8, 9, 17):
            codes = rng.integers(low, high + 1, size=d)
            codes[0] = low
            cases.append(Gradient(epoch=1, version=2, vector=DenseQuantized(bits, 0.5, codes)))
            n = int(rng.integers(1, d + 1))
            sparse_codes = np.where(rng.random(n) < 0.5, low, high if high else low)
            indices = np.sort(rng.choice(d, n, replace=False))
            cases.append(
                Gradient(epoch=1, version=2, vector=SparseQuantized(d, bits, 2.0, indices, sparse_codes))
            )
    for d, indices in (
        (64, [3, 40]),
        (300, [0]),
        (300, [299]),
        (1000, [5, 900]),
        (2000, list(range(0, 2000, 97))),
    ):
        codes = np.ones(len(indices), dtype=np.int64)
        cases.append(
            Gradient(epoch=0, version=0, vector=SparseQuantized(d, 2, 1.0, np.array(indices), codes))
        )
    for s in (1, 2, 3, 65534, 65535):
        levels = np.array([0, s, -s, 1, -1, 0, s // 2, 0, 0])
        cases.append(Gradient(epoch=0, version=0, vector=QSGDVector(s, 3.0, levels)))
    for bits in range(1, 17):  # DENSE_RICE where it is smaller (b >= 2 and d large enough), else DENSE
        low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        for d in (1, 8, 16, 40, 200):
            codes = np.zeros(d, dtype=np.int64)
            codes[0], codes[-1] = low, high if high else low
            codes[d // 2 :: 7] = 1 if high else low
            vector = DenseQuantized(bits, 0.5, codes, rice=True)
            cases.append(Gradient(epoch=1, version=2, vector=vector))
            cases.append(Model(epoch=1, version=2, vector=vector, relative=bool(d % 2)))
    for event in cases:
        frame = encode_message(event)
        context = ind.Context(dim=event.vector.dim)
        assert run_independent(frame, context) == run_reference(frame, context) != ("error", None)
        assert run_independent(frame, context)[0] == "ok", frame.hex()


def test_sparse_index_encoding_is_the_canonical_one() -> None:
    """aiodq's choice between SPARSE_BITMAP and SPARSE_RICE (and of k) is the one [WF-5.6-7] fixes."""
    rng = np.random.default_rng(11)
    for _ in range(300):
        vector = _sparse(rng, _dim(rng))
        [message] = ind.decode_stream(encode_message(Gradient(epoch=0, version=0, vector=vector)))
        gaps = ind.gaps_of([int(i) for i in vector.indices])
        best_k, best_size = ind.best_rice_k(gaps)
        bitmap = -(-vector.dim // 8)
        decoded = message["vector"]
        assert decoded["encoding"] == ("SPARSE_RICE" if best_size < bitmap else "SPARSE_BITMAP")
        if decoded["encoding"] == "SPARSE_RICE":
            assert decoded["rice_k"] == best_k


def test_dense_rice_choice_is_the_canonical_one() -> None:
    """aiodq sends DENSE_RICE exactly when R(k*) < ceil(d b / 8), with the k* of [WF-5.8-4]."""
    rng = np.random.default_rng(17)
    chosen = 0
    for index in range(400):
        vector = (_dense_rice if index % 2 else _dense)(rng, _dim(rng)).with_rice(True)
        frame = encode_message(Gradient(epoch=0, version=0, vector=vector))
        [message] = ind.decode_stream(frame, ind.Context(dim=vector.dim))
        values = [ind.zigzag(int(c)) for c in vector.codes]
        best_k, best_size = ind.best_dense_rice_k(values, vector.bits)
        smaller = best_size < -(-vector.dim * vector.bits // 8)
        decoded = message["vector"]
        assert decoded["encoding"] == ("DENSE_RICE" if smaller else "DENSE")
        assert decoded["codes"] == [int(c) for c in vector.codes]
        if smaller:
            chosen += 1
            assert decoded["rice_k"] == best_k
            assert len(frame) == 7 + 2 + 1 + len(_varint(vector.dim)) + 4 + best_size
        # The same codes without Rice coding are plain DENSE, and both decoders agree on them.
        plain = encode_message(Gradient(epoch=0, version=0, vector=vector.with_rice(False)))
        assert plain[9] >> 4 == 4
        assert run_independent(plain, ind.Context()) == run_reference(plain, ind.Context())
    assert 100 < chosen < 400


def test_independent_zigzag_is_a_bijection() -> None:
    """[WF-5.8-2]: 0, -1, 1, -2, 2, ... map to 0, 1, 2, 3, 4, ..., and b-bit codes to 0..2^b - 1."""
    assert [ind.zigzag(c) for c in (0, -1, 1, -2, 2, -3)] == [0, 1, 2, 3, 4, 5]
    for bits in range(1, 17):
        codes = range(-(2 ** (bits - 1)), 2 ** (bits - 1))
        assert sorted(ind.zigzag(c) for c in codes) == list(range(2**bits))
        assert all(ind.unzigzag(ind.zigzag(c)) == c for c in codes)


def test_truncations_of_every_frame_agree() -> None:
    """Every prefix of a sample of frames, as a whole stream, fails the same way in both decoders."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        frame = encode_message(random_event(rng))
        for cut in range(len(frame)):
            context = ind.Context()
            assert run_independent(frame[:cut], context) == run_reference(frame[:cut], context), (
                frame.hex(),
                cut,
            )


def test_body_truncations_with_fixed_length_agree() -> None:
    """Every shortened body, with the header length fixed up, gives the same code in both decoders."""
    rng = np.random.default_rng(5)
    for _ in range(60):
        event = random_event(rng)
        frame = encode_message(event)
        context = random_context(rng, event)
        for cut in range(7, len(frame)):
            data = _relength(frame, frame[7:cut])
            assert run_independent(data, context) == run_reference(data, context), (data.hex(), context)


def _hello_with_nested_key(depth: int, inner: bytes = b"\x90") -> bytes:
    """A HELLO with an unknown sixth key "x" whose value is ``depth`` nested arrays around ``inner``.

    With the default ``inner`` (``[]``, itself a container) the deepest container sits at level
    ``depth + 2``: the top-level map is level 1 [WF-7-6].
    """
    raw = msgpack.packb(dict(magic="aiodq", min_version=1, max_version=1, encodings=[0], name=""))
    raw = bytes([raw[0] + 1]) + raw[1:] + msgpack.packb("x") + b"\x91" * depth + inner
    return bytes([1, 1, 0]) + len(raw).to_bytes(4, "little") + raw


def test_nested_ignored_key_agrees() -> None:
    """An unknown HELLO key holding nested arrays is ignored [WF-7-8] by both decoders (up to level 1024)."""
    for depth in (1, 10, 500, 1021):
        frame = _hello_with_nested_key(depth)
        assert run_independent(frame, ind.Context())[0] == "ok"
        assert run_reference(frame, ind.Context()) == run_independent(frame, ind.Context())
    # 1022 arrays around a scalar: the map and 1022 arrays, 1023 levels
    frame = _hello_with_nested_key(1022, b"\x00")
    assert run_independent(frame, ind.Context())[0] == "ok"
    assert run_reference(frame, ind.Context()) == run_independent(frame, ind.Context())


@pytest.mark.parametrize(
    ("depth", "inner"),
    [(1023, b"\x90"), (1023, b"\x91\x00"), (1024, b"\x00\x00"), (1100, b"\x80"), (5000, b"\x90")],
)
def test_nesting_beyond_1024_levels_is_malformed(depth: int, inner: bytes) -> None:
    """[WF-7-6]: containers nested more than 1024 deep fail with MALFORMED_FRAME, in both decoders."""
    frame = _hello_with_nested_key(depth, inner)
    assert run_independent(frame, ind.Context()) == ("error", "MALFORMED_FRAME")
    assert run_reference(frame, ind.Context()) == ("error", "MALFORMED_FRAME")


@pytest.mark.parametrize(("depth", "inner"), [(1022, b"\x90"), (1022, b"\x80"), (1023, b"\x00")])
def test_nesting_of_exactly_1024_levels_is_accepted(depth: int, inner: bytes) -> None:
    """[WF-7-6]: the map and 1023 more containers (1024 levels) is the deepest allowed."""
    frame = _hello_with_nested_key(depth, inner)
    assert run_independent(frame, ind.Context())[0] == "ok"
    assert run_reference(frame, ind.Context()) == run_independent(frame, ind.Context())


def test_float_params_and_not_shortest_ints_are_accepted() -> None:
    """Control messages are canonical when sent, not when received [WF-7-10]: both decoders agree."""
    # CONFIG {"dim": uint32 5, "algorithm": "a", "params": {"mu": float32 0.5, "n": int64 -1}}
    raw = (
        b"\x83\xa3dim\xce\x00\x00\x00\x05\xa9algorithm\xa1a\xa6params\x82"
        + b"\xa2mu\xca\x3f\x00\x00\x00\xa1n\xd3"
        + (2**64 - 1).to_bytes(8, "big")
    )
    frame = bytes([1, 3, 0]) + len(raw).to_bytes(4, "little") + raw
    mine = run_independent(frame, ind.Context())
    assert mine[0] == "ok" and mine[1][0]["params"] == {"mu": ("float", f64_bits(0.5)), "n": ("int", -1)}
    assert run_reference(frame, ind.Context()) == mine


def test_qsgd_values_use_the_reference_order() -> None:
    """QSGD coordinates are (level x norm) / s in binary64 [WF-5.7-1], bit for bit in both decoders."""
    rng = np.random.default_rng(13)
    for _ in range(200):
        vector = _qsgd(rng, _dim(rng))
        frame = encode_message(Gradient(epoch=0, version=0, vector=vector))
        [message] = ind.decode_stream(frame)
        mine = ind.dense_values(message["vector"])
        theirs = vector.to_dense(np.float64)
        assert [f64_bits(v) for v in mine] == [f64_bits(float(v)) for v in theirs]
        assert all(math.isfinite(v) for v in mine)


# -- (c) hand-written edge cases: the expected code is read off the spec ----------------------------------


def _frame(mtype: int, body_hex: str, flags: int = 0, version: int = 1) -> bytes:
    body = bytes.fromhex(body_hex)
    return bytes([version, mtype, flags]) + len(body).to_bytes(4, "little") + body


_ONE = "0000803f"  # binary32 1.0
_NAN = "0000c07f"
_INF = "0000807f"
_GRAD = "0107"  # GRADIENT epoch 1, version 7
#: The DENSE_RICE payload of A.16 after the dimension: scale 0.25, k = 1, remainders, unary stream.
_A16 = "0000803e" + "01" + "aad9" + "d39bdd"
_UP_TO_QSGD = frozenset(name for number, name in ind.ENCODINGS.items() if number <= 7)
# (name, frame, context keyword arguments, expected code or None for "accepted")
EDGE_CASES: list[tuple[str, bytes, dict[str, Any], str | None]] = [
    # receive procedure order [WF-7-1], [WF-3-3], [WF-3-6]
    (
        "too large before unknown type",
        bytes.fromhex("010fff41000000"),
        {"max_frame_bytes": 64},
        "FRAME_TOO_LARGE",
    ),
    ("unknown type before flags", _frame(0x0F, "", flags=0xFF), {}, "UNKNOWN_MESSAGE_TYPE"),
    ("type 0x00", _frame(0x00, ""), {}, "UNKNOWN_MESSAGE_TYPE"),
    ("type 0xff", _frame(0xFF, "00" * 32), {}, "UNKNOWN_MESSAGE_TYPE"),
    ("flags before body", _frame(9, "00", flags=0x80), {}, "MALFORMED_FRAME"),
    ("MODEL flag 0x02", _frame(7, "0101" + "2001", flags=0x03), {}, "MALFORMED_FRAME"),
    ("header version not checked by the codec", _frame(9, "", version=7), {}, None),
    ("HEARTBEAT with a body", _frame(9, "00"), {}, "MALFORMED_FRAME"),
    ("stream ends in a header", bytes.fromhex("010900000000"), {}, "MALFORMED_FRAME"),
    ("second frame cut", _frame(9, "") + bytes.fromhex("0109000100"), {}, "MALFORMED_FRAME"),
    # varints [WF-4.2-2], [WF-4.2-3]
    ("9-byte varint 2^63-1", _frame(8, "ffffffffffffffff7f" + "00" + "2001"), {}, None),
    ("10-byte varint", _frame(8, "ffffffffffffffffff01" + "00" + "2001"), {}, "MALFORMED_FRAME"),
    ("varint 80 80 00", _frame(8, "808000" + "00" + "2001"), {}, "MALFORMED_FRAME"),
    # descriptor and dimension order [WF-5.2-3]
    ("descriptor missing", _frame(8, _GRAD), {}, "MALFORMED_FRAME"),
    ("reserved encoding in SNAPSHOT", _frame(4, "00" + "9f01"), {}, "UNSUPPORTED_ENCODING"),
    ("reserved encoding 9 in GRADIENT", _frame(8, _GRAD + "9301"), {}, "UNSUPPORTED_ENCODING"),
    ("type table before low nibble", _frame(4, "00" + "2101"), {}, "UNSUPPORTED_ENCODING"),
    ("low nibble before dimension", _frame(8, _GRAD + "21"), {}, "MALFORMED_FRAME"),
    ("dimension not shortest", _frame(8, _GRAD + "208000"), {}, "MALFORMED_FRAME"),
    ("d = 0 before the limit", _frame(8, _GRAD + "4300"), {"dim": 4}, "INVALID_PAYLOAD"),
    ("limit before wrong dim", _frame(8, _GRAD + "2011"), {"dim": 4, "max_dimension": 16}, "LIMIT_EXCEEDED"),
    ("d = max_dimension", _frame(8, _GRAD + "2010"), {"max_dimension": 16}, None),
    # RAW [WF-5.3-2], [WF-5.3-3]
    ("RAW length before NaN", _frame(4, "00" + "0001" + _NAN + "00"), {}, "MALFORMED_FRAME"),
    ("RAW -0.0 and subnormal", _frame(4, "00" + "0002" + "00000080" + "01000000"), {}, None),
    ("RAW_F64 inf", _frame(6, "00" + "1001" + "000000000000f07f"), {}, "NON_FINITE"),
    # DENSE [WF-5.5-3]
    ("DENSE scale truncated", _frame(8, _GRAD + "4301" + "0000803f"[:6]), {}, "MALFORMED_FRAME"),
    ("DENSE NaN before short codes", _frame(8, _GRAD + "4305" + _NAN), {}, "NON_FINITE"),
    ("DENSE -0.0 scale", _frame(8, _GRAD + "4301" + "00000080" + "01"), {}, "INVALID_PAYLOAD"),
    ("DENSE padding before trailing", _frame(8, _GRAD + "4301" + _ONE + "11" + "00"), {}, "INVALID_PAYLOAD"),
    ("DENSE trailing before all-zero", _frame(8, _GRAD + "4301" + _ONE + "00" + "00"), {}, "MALFORMED_FRAME"),
    ("DENSE 16-bit -32768", _frame(8, _GRAD + "4f01" + _ONE + "0080"), {}, None),
    ("DENSE 1-bit -1", _frame(8, _GRAD + "4001" + _ONE + "01"), {}, None),
    ("DENSE subnormal scale", _frame(8, _GRAD + "4001" + "01000000" + "01"), {}, None),
    ("DENSE in SNAPSHOT", _frame(4, "00" + "4001" + _ONE + "01"), {}, "UNSUPPORTED_ENCODING"),
    # DENSE_RICE [WF-5.8-5], around the worked example A.16 (b = 4, d = 16, k = 1)
    ("DENSE_RICE A.16", _frame(8, _GRAD + "8310" + _A16), {}, None),
    ("DENSE_RICE A.16 in MODEL", _frame(7, "0101" + "8310" + _A16), {}, None),
    ("DENSE_RICE A.16 RELATIVE", _frame(7, "0101" + "8310" + _A16, flags=1), {}, None),
    ("DENSE_RICE in SNAPSHOT", _frame(4, "00" + "8310" + _A16), {}, "UNSUPPORTED_ENCODING"),
    (
        "DENSE_RICE in SNAPSHOT_GRADIENT",
        _frame(5, "000000" + "00" * 8 + "8310" + _A16),
        {},
        "UNSUPPORTED_ENCODING",
    ),
    (
        "DENSE_RICE not announced",
        _frame(8, _GRAD + "8310" + _A16),
        {"encodings": _UP_TO_QSGD},
        "UNSUPPORTED_ENCODING",
    ),
    ("DENSE_RICE dimension first", _frame(8, _GRAD + "8311" + _A16), {"dim": 16}, "WRONG_DIMENSION"),
    ("DENSE_RICE scale truncated", _frame(8, _GRAD + "8310" + _ONE[:6]), {}, "MALFORMED_FRAME"),
    ("DENSE_RICE NaN scale before k", _frame(8, _GRAD + "8310" + _NAN), {}, "NON_FINITE"),
    ("DENSE_RICE -0.0 scale", _frame(8, _GRAD + "8310" + "00000080" + _A16[8:]), {}, "INVALID_PAYLOAD"),
    ("DENSE_RICE k missing", _frame(8, _GRAD + "8310" + _ONE), {}, "MALFORMED_FRAME"),
    ("DENSE_RICE k = b before remainders", _frame(8, _GRAD + "8310" + _ONE + "04"), {}, "INVALID_PAYLOAD"),
    ("DENSE_RICE k = 255", _frame(8, _GRAD + "8f10" + _ONE + "ff"), {}, "INVALID_PAYLOAD"),
    (
        "DENSE_RICE remainders short",
        _frame(8, _GRAD + "8310" + _ONE + "03" + "00" * 5),
        {},
        "MALFORMED_FRAME",
    ),
    ("DENSE_RICE no unary stream", _frame(8, _GRAD + "8310" + _ONE + "01" + "aad9"), {}, "INVALID_PAYLOAD"),
    (
        "DENSE_RICE size before ones",
        _frame(8, _GRAD + "8310" + _ONE + "00" + "00" * 7),
        {},
        "INVALID_PAYLOAD",
    ),
    ("DENSE_RICE size just below", _frame(8, _GRAD + "8310" + _ONE + "00" + "00" * 6), {}, "INVALID_PAYLOAD"),
    ("DENSE_RICE trailing zero", _frame(8, _GRAD + "8310" + _A16 + "00"), {}, "INVALID_PAYLOAD"),
    ("DENSE_RICE extra word", _frame(8, _GRAD + "8310" + _A16 + "01"), {}, "INVALID_PAYLOAD"),
    (
        "DENSE_RICE remainder padding",
        _frame(8, _GRAD + "8709" + _ONE + "01" + "0002" + "ff01"),
        {},
        "INVALID_PAYLOAD",
    ),
    ("DENSE_RICE z = 2^b", _frame(8, _GRAD + "8310" + _ONE + "00" + "0000ffff"), {}, "INVALID_PAYLOAD"),
    ("DENSE_RICE z = 2^b - 1", _frame(8, _GRAD + "8310" + _ONE + "00" + "0080ff7f"), {}, None),
    ("DENSE_RICE all zero", _frame(8, _GRAD + "8310" + _ONE + "00" + "ffff"), {}, "INVALID_PAYLOAD"),
    ("DENSE_RICE b = 1 never smaller", _frame(8, _GRAD + "8001" + _ONE + "00" + "01"), {}, "INVALID_PAYLOAD"),
    # sparse common part [WF-5.6-8]
    ("nnz > d before the scale", _frame(8, _GRAD + "520c0d" + "0000"), {}, "INVALID_PAYLOAD"),
    ("nnz not shortest", _frame(8, _GRAD + "520c8000"), {}, "MALFORMED_FRAME"),
    ("sparse scale inf", _frame(8, _GRAD + "520c03" + _INF), {}, "NON_FINITE"),
    (
        "zero code before index block",
        _frame(8, _GRAD + "520c03" + "0000003f" + "0000"),
        {},
        "INVALID_PAYLOAD",
    ),
    # bitmap [WF-5.6-9]
    (
        "bitmap trailing before padding",
        _frame(8, _GRAD + "520c03" + "0000003f3b01" + "62f000"),
        {},
        "MALFORMED_FRAME",
    ),
    ("bitmap padding bit", _frame(8, _GRAD + "520c03" + "0000003f3b01" + "62f0"), {}, "INVALID_PAYLOAD"),
    ("bitmap d = 1", _frame(8, _GRAD + "500101" + _ONE + "01" + "01"), {}, None),
    # Rice [WF-5.6-10]
    ("Rice k missing", _frame(8, _GRAD + "634002" + "0000003ed5"), {}, "MALFORMED_FRAME"),
    (
        "Rice k = 17 before remainders",
        _frame(8, _GRAD + "634002" + "0000003ed5" + "11"),
        {},
        "INVALID_PAYLOAD",
    ),
    ("Rice remainders short", _frame(8, _GRAD + "634002" + "0000003ed5" + "1000"), {}, "MALFORMED_FRAME"),
    (
        "Rice size >= B first",
        _frame(8, _GRAD + "634002" + "0000003ed5" + "0323" + "21ffffffffff"),
        {},
        "INVALID_PAYLOAD",
    ),
    (
        "Rice size just below B",
        _frame(8, _GRAD + "634002" + "0000003ed5" + "0323" + "21ffffffff"),
        {},
        "INVALID_PAYLOAD",
    ),
    (
        "Rice trailing zero byte",
        _frame(8, _GRAD + "634002" + "0000003ed5" + "0323" + "2100"),
        {},
        "INVALID_PAYLOAD",
    ),
    ("Rice A.9", _frame(8, _GRAD + "634002" + "0000003ed5" + "0323" + "21"), {}, None),
    # QSGD [WF-5.7-4]
    ("QSGD s = 0 before the norm", _frame(8, _GRAD + "700100" + "00"), {}, "INVALID_PAYLOAD"),
    ("QSGD s not shortest", _frame(8, _GRAD + "70018000"), {}, "MALFORMED_FRAME"),
    ("QSGD norm truncated", _frame(8, _GRAD + "700101" + "0000"), {}, "MALFORMED_FRAME"),
    ("QSGD norm NaN", _frame(8, _GRAD + "700101" + _NAN + "020000"), {}, "NON_FINITE"),
    ("QSGD norm -1", _frame(8, _GRAD + "700101" + "000080bf" + "020000"), {}, "INVALID_PAYLOAD"),
    ("QSGD level +1", _frame(8, _GRAD + "700101" + _ONE + "020000"), {}, None),
    ("QSGD level -1", _frame(8, _GRAD + "700101" + _ONE + "020001"), {}, None),
    ("QSGD over the bound", _frame(8, _GRAD + "700101" + _ONE + "0200000000"), {}, "INVALID_PAYLOAD"),
    ("QSGD sign stream long", _frame(8, _GRAD + "700101" + _ONE + "02000000"), {}, "INVALID_PAYLOAD"),
    ("QSGD all zero", _frame(8, _GRAD + "700201" + _ONE + "03"), {}, "INVALID_PAYLOAD"),
    ("QSGD no exponent stream", _frame(8, _GRAD + "700101" + _ONE), {}, "INVALID_PAYLOAD"),
    # messages
    ("RELATIVE ZERO", _frame(7, "0101" + "2001", flags=1), {}, "INVALID_PAYLOAD"),
    ("RELATIVE ZERO trailing byte", _frame(7, "0101" + "200100", flags=1), {}, "MALFORMED_FRAME"),
    ("RELATIVE RAW", _frame(7, "0101" + "0001" + _ONE, flags=1), {}, None),
    ("EQUALS_SNAPSHOT in GRADIENT", _frame(8, _GRAD + "3001"), {}, "UNSUPPORTED_ENCODING"),
    ("loss NaN before the vector", _frame(5, "000000" + "000000000000f87f" + "4001"), {}, "NON_FINITE"),
    ("loss truncated", _frame(5, "000000" + "00000000"), {}, "MALFORMED_FRAME"),
    ("loss -0.0", _frame(5, "000000" + "0000000000000080" + "0001" + _ONE), {}, None),
    ("ERROR code short", _frame(10, "00"), {}, "MALFORMED_FRAME"),
    ("ERROR epoch missing", _frame(10, "0e00"), {}, "MALFORMED_FRAME"),
    (
        "ERROR reason limit before UTF-8",
        _frame(10, "0e000000" + "ffffff"),
        {"max_reason_bytes": 2},
        "LIMIT_EXCEEDED",
    ),
    ("ERROR reason at limit", _frame(10, "ffff0000" + "6869"), {"max_reason_bytes": 2}, None),
    ("CLOSE code only", _frame(11, "1500"), {}, None),
    ("CLOSE bad UTF-8", _frame(11, "0000" + "c0af"), {}, "MALFORMED_FRAME"),
    (
        "control body over limit before parse",
        _frame(1, "c1" * 65),
        {"max_control_bytes": 64},
        "LIMIT_EXCEEDED",
    ),
    ("control body garbage", _frame(1, "c1"), {}, "MALFORMED_FRAME"),
    ("control body empty", _frame(3, ""), {}, "MALFORMED_FRAME"),
    # WELCOME encodings 8..15 are kept (duplicates removed) [WF-6.2-1]
    (
        "WELCOME reserved encodings kept",
        _frame(2, "83a776657273696f6e01a9776f726b65725f696400a9656e636f64696e6773940f080f00"),
        {},
        None,
    ),
    # AUTH messages (7.12 .. 7.14): exact body lengths, flags before the body, any bytes accepted
    ("AUTH_CHALLENGE 32 bytes", _frame(0x0C, "a5" * 32), {}, None),
    ("AUTH_CHALLENGE empty", _frame(0x0C, ""), {}, "MALFORMED_FRAME"),
    ("AUTH_CHALLENGE 31 bytes", _frame(0x0C, "00" * 31), {}, "MALFORMED_FRAME"),
    ("AUTH_CHALLENGE 33 bytes", _frame(0x0C, "00" * 33), {}, "MALFORMED_FRAME"),
    ("AUTH_CHALLENGE 64 bytes", _frame(0x0C, "00" * 64), {}, "MALFORMED_FRAME"),
    ("AUTH_CHALLENGE flag before length", _frame(0x0C, "00" * 31, flags=0x01), {}, "MALFORMED_FRAME"),
    ("AUTH_RESPONSE 64 bytes", _frame(0x0D, "00" * 32 + "ff" * 32), {}, None),
    ("AUTH_RESPONSE 63 bytes", _frame(0x0D, "00" * 63), {}, "MALFORMED_FRAME"),
    ("AUTH_RESPONSE 65 bytes", _frame(0x0D, "00" * 65), {}, "MALFORMED_FRAME"),
    ("AUTH_RESPONSE 32 bytes", _frame(0x0D, "00" * 32), {}, "MALFORMED_FRAME"),
    ("AUTH_CONFIRM 32 bytes", _frame(0x0E, "5a" * 32), {}, None),
    ("AUTH_CONFIRM 64 bytes", _frame(0x0E, "00" * 64), {}, "MALFORMED_FRAME"),
    ("AUTH_CONFIRM flag 0x80", _frame(0x0E, "00" * 32, flags=0x80), {}, "MALFORMED_FRAME"),
    ("AUTH header version not checked by the codec", _frame(0x0E, "00" * 32, version=2), {}, None),
    (
        "AUTH_RESPONSE too large first",
        _frame(0x0D, "00" * 65),
        {"max_frame_bytes": 64},
        "FRAME_TOO_LARGE",
    ),
]


@pytest.mark.parametrize(("name", "frame", "context", "expected"), EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
def test_edge_case(name: str, frame: bytes, context: dict[str, Any], expected: str | None) -> None:
    """A hand-written frame gives the code the spec assigns, in the independent decoder and in aiodq."""
    ctx = ind.Context(**context)
    mine = run_independent(frame, ctx)
    assert mine[0] == ("ok" if expected is None else "error")
    if expected is not None:
        assert mine[1] == expected
    assert run_reference(frame, ctx) == mine


def test_header_version_is_a_connection_check() -> None:
    """With its connection-level check on, the independent decoder applies [WF-6.1-2] and [WF-6.1-7]."""
    hello = encode_message(Hello())
    negotiated = ind.Context(header_version=3)
    assert ind.decode_stream(hello, negotiated)[0]["message"] == "HELLO"
    with pytest.raises(ind.WireError, match="UNSUPPORTED_VERSION"):
        ind.decode_stream(bytes([3]) + hello[1:], negotiated)
    with pytest.raises(ind.WireError, match="UNSUPPORTED_VERSION"):
        ind.decode_stream(_frame(9, ""), negotiated)
    assert ind.decode_stream(_frame(9, "", version=3), negotiated)[0]["message"] == "HEARTBEAT"
    # the AUTH messages always carry header version 1 [WF-6.1-8]
    for mtype, size in ((0x0C, 32), (0x0D, 64), (0x0E, 32)):
        assert ind.decode_stream(_frame(mtype, "00" * size), negotiated)[0]["header"]["version"] == 1
        with pytest.raises(ind.WireError, match="UNSUPPORTED_VERSION"):
            ind.decode_stream(_frame(mtype, "00" * size, version=3), negotiated)
        with pytest.raises(ind.WireError, match="UNSUPPORTED_VERSION"):
            ind.decode_stream(_frame(mtype, "00" * size, version=2), ind.Context(header_version=1))


def test_independent_proofs_follow_7_12() -> None:
    """The independent proofs are HMAC-SHA256 over the 15-byte label, then Nm, then Nw (7.12)."""
    secret, nm, nw = b"k" * 16, bytes(range(32)), bytes(range(32, 64))
    assert len(ind.WORKER_LABEL) == len(ind.MASTER_LABEL) == 15
    pw = ind.worker_proof(secret, nm, nw)
    pm = ind.master_proof(secret, nm, nw)
    assert pw == hmac.new(secret, b"aiodq-v1 worker" + nm + nw, hashlib.sha256).digest()
    assert pm == hmac.new(secret, b"aiodq-v1 master" + nm + nw, hashlib.sha256).digest()
    assert len(pw) == len(pm) == 32 and pw != pm
    assert ind.proof_matches(pw, pw) and not ind.proof_matches(pw, pm)
    assert ind.worker_proof(secret, nw, nm) != pw  # the order of the nonces matters


def _is_binary32(value: float) -> bool:
    """``value`` is exactly a binary32 number (struct refuses values beyond the binary32 range)."""
    try:
        return struct.unpack("<f", struct.pack("<f", value))[0] == value
    except OverflowError:
        return False


_NOT_BINARY32 = [1e-46, 1e-45, 0.1, 1 / 3, 3.4028236e38, 1e39]


@pytest.mark.parametrize("scale", _NOT_BINARY32)
def test_sender_refuses_a_scale_binary32_cannot_represent(scale: float) -> None:
    """[WF-5.5-2]: a scale (or QSGD norm) that binary32 cannot represent is refused, not rounded.

    The reference's vector classes raise ValueError at construction, so nothing is ever encoded
    (in particular not a scale of 1e-46 rounded to 0.0, which both decoders would reject).
    """
    assert not _is_binary32(scale)
    with pytest.raises(ValueError):
        DenseQuantized(4, scale, np.array([1, 2]))
    with pytest.raises(ValueError):
        SparseQuantized(8, 4, scale, np.array([1]), np.array([1]))
    with pytest.raises(ValueError):
        QSGDVector(4, scale, np.array([1, 0]))


def test_binary32_scales_encode_exactly() -> None:
    """[WF-5.5-2]: a binary32 scale goes on the wire unchanged, down to the smallest subnormal."""
    for scale in (
        float(np.float32(1e-45)),
        float(np.float32(1.17549435e-38)),
        0.25,
        float(np.float32(0.1)),
        3.4028234663852886e38,
    ):
        frame = encode_message(
            Gradient(epoch=0, version=0, vector=DenseQuantized(4, scale, np.array([1, 2])))
        )
        [message] = ind.decode_stream(frame)
        assert f32_bits(message["vector"]["scale"]) == f32_bits(scale)
        assert run_reference(frame, ind.Context()) == run_independent(frame, ind.Context())
