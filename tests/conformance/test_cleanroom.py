"""A second implementation, written from docs/wire-format.md alone, against the vectors and against aiodq.

``tests/conformance/cleanroom/`` was written by someone who had read the spec and nothing of aiodq
(how, and what it found ambiguous: cleanroom/NOTES.md).  Here it must

- decode every valid vector to exactly the vector's fields and encode them back to the same bytes;
- fail every invalid vector with exactly the vector's error code;
- agree with aiodq, in both directions, on thousands of generated and mutated frames: the same
  messages from the same bytes, or the same error code.

Where the two implementations read the spec differently, the case is listed in DIFFERENCES with
the reason, and its test is an expected failure that must keep failing (``strict``): a difference
that goes away, or a new one, fails the suite.
"""

from __future__ import annotations

import json
import math
import random
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from cleanroom import endpoint as cre
from cleanroom import wire as cr

from aiodq.codec.events import (
    AuthChallenge,
    AuthConfirm,
    AuthResponse,
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
from aiodq.codec.frames import FrameReader
from aiodq.codec.lowp import quantize_gradient, quantize_model
from aiodq.codec.messages import DecodeContext, decode_body, encode_message
from aiodq.codec.qsgd import quantize_qsgd
from aiodq.codec.registry import Encoding
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

VECTOR_DIR = Path(__file__).parent / "vectors"
MANIFEST = json.loads((VECTOR_DIR / "MANIFEST.json").read_text(encoding="utf-8"))
VECTORS = {name: json.loads((VECTOR_DIR / name).read_text(encoding="utf-8")) for name in MANIFEST["files"]}

#: Vectors on which the clean-room implementation and aiodq (whose outcome the vector records)
#: disagree, with the reason: each test is an expected failure that must keep failing.
DIFFERENCES: dict[str, str] = {}


def _names(kind: str) -> list[Any]:
    out = []
    for name, doc in VECTORS.items():
        if doc["kind"] != kind:
            continue
        marks = [pytest.mark.xfail(strict=True, reason=DIFFERENCES[name])] if name in DIFFERENCES else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


def _float(pattern: str) -> float:
    digits = pattern[2:]
    if len(digits) == 8:
        return float(struct.unpack("<f", struct.pack("<I", int(digits, 16)))[0])
    return float(struct.unpack("<d", struct.pack("<Q", int(digits, 16)))[0])


def _context(doc: dict[str, Any]) -> cr.ReceiveContext:
    context = doc.get("context", {})
    limits = context.get("limits", {})
    encodings = context.get("encodings")
    return cr.ReceiveContext(
        **limits,
        dimension=context.get("dim"),
        encodings=None if encodings is None else [int(Encoding[name]) for name in encodings],
    )


def _plain(value: Any) -> Any:
    """Floats by their bit pattern (so -0.0 differs from 0.0), containers recursively."""
    if isinstance(value, float):
        return ("f64", struct.pack("<d", value).hex())
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


# -- the vectors' JSON fields, in the clean-room's plain data ---------------------------------------


def _vector_from_json(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"encoding": fields["encoding"], "dim": fields["dim"]}
    if "values_bits" in fields:
        out["values"] = [_float(bits) for bits in fields["values_bits"]]
    for key in ("bits", "codes", "indices", "s", "levels"):
        if key in fields:
            out[key] = fields[key]
    if "scale_bits" in fields:
        out["scale"] = _float(fields["scale_bits"])
    if "norm_bits" in fields:
        out["norm"] = _float(fields["norm_bits"])
    return out


def _message_from_json(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": fields["event"]}
    for key, value in fields.items():
        if key == "event":
            continue
        if key == "vector":
            out["vector"] = _vector_from_json(value)
        elif key == "loss_bits":
            out["loss"] = _float(value)
        elif key == "params":  # (in the order on the wire: the JSON object's keys are sorted)
            out["params"] = {
                k: _float(value[k]["f64"]) if isinstance(value[k], dict) else value[k]
                for k in fields["params_order"]
            }
        elif key == "params_order":
            continue
        elif key in ("nonce", "mac"):
            out[key] = bytes.fromhex(value)
        else:
            out[key] = value
    return out


@pytest.mark.parametrize("name", _names("valid"))
def test_valid_vector(name: str) -> None:
    """The second implementation decodes the vector's bytes to its fields and encodes them back."""
    doc = VECTORS[name]
    data = bytes.fromhex(doc["hex"])
    [message] = cr.decode_stream(data, _context(doc))
    assert _plain(message) == _plain(_message_from_json(doc["event"]))
    if message["type"] == "CONFIG":  # (dicts compare without their order)
        assert list(message["params"]) == doc["event"]["params_order"]
    canonical = bytes.fromhex(doc.get("canonical_hex", doc["hex"]))
    assert cr.encode_message(message, header_version=doc["header"]["version"]) == canonical


@pytest.mark.parametrize("name", _names("invalid"))
def test_invalid_vector(name: str) -> None:
    """The second implementation fails the vector's bytes with exactly the vector's code."""
    doc = VECTORS[name]
    with pytest.raises(cr.WireError) as info:
        cr.decode_stream(bytes.fromhex(doc["hex"]), _context(doc))
    assert info.value.code == doc["error"], info.value.detail


# -- stories: the second implementation's endpoints, step by step ---------------------------------


def _story_endpoint(doc: dict[str, Any], side: str) -> cre.Endpoint:
    """The side's endpoint with the story's limits, secret and nonces (as aiodq's are configured)."""
    limits = cr.ReceiveContext(**doc.get("limits", {}))
    auth = doc.get(f"{side}_config") or {}
    nonces = [bytes.fromhex(n) for n in auth.get("nonces", [])]

    def nonce_source(size: int) -> bytes:
        assert nonces, "the story's nonces ran out"
        return nonces.pop(0)

    secret = bytes.fromhex(auth["secret"]) if "secret" in auth else None
    role = cre.Master if side == "master" else cre.Worker
    return role(secret=secret, nonce_source=nonce_source, limits=limits)


def _same_messages(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    """As the aiodq runner compares events: a CLOSE recorded without its reason matches any reason."""
    if len(got) != len(expected):
        return False
    for message, fields in zip(got, expected, strict=True):
        if fields["event"] == "CLOSE" and "reason" not in fields:
            if not (message["type"] == "CLOSE" and message["code"] == fields["code"]):
                return False
        elif _plain(message) != _plain(_message_from_json(fields)):
            return False
    return True


def _one_close(data: bytes) -> dict[str, Any]:
    [message] = cr.decode_stream(data)
    assert message["type"] == "CLOSE", message
    return message


@pytest.mark.parametrize("name", _names("story"))
def test_story_vector(name: str) -> None:
    """The second implementation's endpoints replay each story: the same bytes sent, the same
    messages, errors and CLOSE codes received, the same refusals of forbidden sends."""
    doc = VECTORS[name]
    ends = {side: _story_endpoint(doc, side) for side in doc["sides"]}
    pending: dict[str, bytes] = {}
    held: dict[str, bytes] = {}
    other = {"master": "worker", "worker": "master"}
    for number, step in enumerate(doc["steps"]):
        where = f"step {number}: {step}"
        if "send_error" in step:
            # The spec requires the refusal; the code of a local refusal is the reference's own.
            with pytest.raises(cr.WireError) as refused:
                ends[step["from"]].send(_message_from_json(step["send"]))
            assert refused.value.local, where
            assert ends[step["from"]].data_to_send() == b"", where
            continue
        if "silent" in step:
            assert ends[step["silent"]].data_to_send() == b"", where
            continue
        if "eof_to" in step:
            receiver = step["eof_to"]
            data = b""
        else:
            side = step["from"]
            receiver = other[side]
            if "send" in step:
                data = ends[side].send(_message_from_json(step["send"]))
                assert data.hex() == step["hex"], where
            elif step.get("queued"):
                data = pending.pop(side, b"") + ends[side].data_to_send()
                if not step.get("hex_informative"):
                    assert data.hex() == step["hex"], where
            elif step.get("deliver"):
                data = held.pop(side)
            else:
                data = bytes.fromhex(step["hex"])
            if step.get("deliver_later"):
                held[side] = data
                continue
        end = ends[receiver]
        error_before = end.error
        messages = end.eof() if data == b"" else end.receive(data)
        # aiodq reports the end of the stream as a local event; the endpoint, by its state.
        expected = [e for e in step["events"] if e["event"] != "CONNECTION_CLOSED"]
        if len(expected) < len(step["events"]):
            assert end.state == "CLOSED", where
        assert _same_messages(messages, expected), f"{where}: {messages}"
        if "error" in step:
            assert end.error is not None and end.error.code == step["error"], f"{where}: {end.error!r}"
            queued = end.data_to_send()
            if "close_queued" in step:
                assert _one_close(queued)["code"] == int(ErrorCode[step["close_queued"]]), where
            else:
                assert queued == b"", where
            pending[receiver] = queued
        else:
            assert end.error is error_before, f"{where}: {end.error!r}"


# -- aiodq's events in the clean-room's plain data ---------------------------------------------------


def _vector_to_plain(vector: Vector, encoding: Encoding) -> dict[str, Any]:
    out: dict[str, Any] = {"encoding": encoding.name, "dim": vector.dim}
    if isinstance(vector, RawVector):
        out["values"] = [float(x) for x in vector.values]
    elif isinstance(vector, DenseQuantized):
        out.update(bits=vector.bits, scale=vector.scale, codes=[int(c) for c in vector.codes])
    elif isinstance(vector, SparseQuantized):
        out.update(
            bits=vector.bits,
            scale=vector.scale,
            indices=[int(i) for i in vector.indices],
            codes=[int(c) for c in vector.codes],
        )
    elif isinstance(vector, QSGDVector):
        out.update(s=vector.s, norm=vector.norm, levels=[int(x) for x in vector.levels])
    return out


def _event_to_plain(event: Event, encoding: Encoding | None) -> dict[str, Any]:
    if isinstance(event, Hello):
        return {
            "type": "HELLO",
            "min_version": event.min_version,
            "max_version": event.max_version,
            "encodings": sorted(event.encodings),
            "name": event.name,
        }
    if isinstance(event, Welcome):
        return {
            "type": "WELCOME",
            "version": event.version,
            "worker_id": event.worker_id,
            "encodings": sorted(event.encodings),
        }
    if isinstance(event, ConfigMessage):
        return {
            "type": "CONFIG",
            "dim": event.dim,
            "algorithm": event.algorithm,
            "params": dict(event.params),
        }
    if isinstance(event, Heartbeat):
        return {"type": "HEARTBEAT"}
    if isinstance(event, ErrorMessage):
        return {
            "type": "ERROR",
            "code": event.code,
            "epoch": event.epoch,
            "version": event.version,
            "reason": event.reason,
        }
    if isinstance(event, Close):
        return {"type": "CLOSE", "code": event.code, "reason": event.reason}
    if isinstance(event, AuthChallenge):
        return {"type": "AUTH_CHALLENGE", "nonce": event.nonce}
    if isinstance(event, AuthResponse):
        return {"type": "AUTH_RESPONSE", "nonce": event.nonce, "mac": event.mac}
    if isinstance(event, AuthConfirm):
        return {"type": "AUTH_CONFIRM", "mac": event.mac}
    assert encoding is not None
    vector = _vector_to_plain(event.vector, encoding)  # type: ignore[union-attr]
    if isinstance(event, Snapshot):
        return {"type": "SNAPSHOT", "epoch": event.epoch, "vector": vector}
    if isinstance(event, FullGradient):
        return {"type": "FULL_GRADIENT", "epoch": event.epoch, "vector": vector}
    if isinstance(event, SnapshotGradient):
        return {
            "type": "SNAPSHOT_GRADIENT",
            "epoch": event.epoch,
            "samples": event.samples,
            "correct": event.correct,
            "loss": event.loss,
            "vector": vector,
        }
    if isinstance(event, ModelMessage):
        return {
            "type": "MODEL",
            "epoch": event.epoch,
            "version": event.version,
            "relative": event.relative,
            "vector": vector,
        }
    assert isinstance(event, Gradient)
    return {"type": "GRADIENT", "epoch": event.epoch, "version": event.version, "vector": vector}


# -- generated and mutated frames ------------------------------------------------------------------


def _counter(rng: np.random.Generator) -> int:
    return int(rng.choice([0, 1, 127, 128, 16383, 16384, 2**32, 2**63 - 1, int(rng.integers(0, 2**40))]))


def _vectors(rng: np.random.Generator, dim: int) -> list[tuple[Vector, bool]]:
    """Vectors of every encoding from aiodq's quantizers: ``(vector, send Rice-coded where smaller)``."""
    alpha = rng.standard_normal(dim) * 10.0 ** rng.integers(-3, 4)
    sparse_alpha = alpha * (rng.random(dim) < 0.15)
    snapshot = rng.standard_normal(dim)
    out: list[tuple[Vector, bool]] = [
        (RawVector(alpha.astype(np.float32)), False),
        (RawVector(alpha), False),
        (ZeroVector(dim), False),
    ]
    for bits in (2, 3, 4, 8, 12, 16):
        out.append((quantize_gradient(alpha, bits, rng), bool(rng.integers(2))))
        out.append((quantize_gradient(sparse_alpha, bits, rng), True))
        out.append((quantize_sparse(alpha, max(1.0, dim * rng.uniform(0.01, 0.5)), bits, rng), False))
    for s in (1, 4, 255, 65535):
        out.append((quantize_qsgd(alpha, s, rng), False))
    for mu in (0.01, 0.5, 4.0):
        out.append((quantize_model(snapshot + 0.01 * alpha, snapshot, mu, rng).vector, True))
    return out


def _messages(rng: np.random.Generator) -> list[tuple[Event, bool]]:
    """Every message type with random fields, and every vector encoding where it is allowed."""
    dim = int(rng.choice([1, 2, 7, 8, 9, 64, 100, 1000]))
    text = "".join(chr(int(c)) for c in rng.integers(32, 0x2FF, int(rng.integers(0, 40))))
    encodings = frozenset(int(e) for e in rng.choice(9, int(rng.integers(0, 10)), replace=False))
    out: list[tuple[Event, bool]] = [
        (
            Hello(min_version=1, max_version=int(rng.integers(1, 256)), encodings=encodings, name=text[:50]),
            False,
        ),
        (Welcome(version=1, worker_id=_counter(rng), encodings=encodings), False),
        (
            ConfigMessage(
                dim=dim,
                algorithm="asylpg",
                params={
                    "bits": 8,
                    "mu": float(rng.random()),
                    "n": text,
                    "b": bool(rng.integers(2)),
                    "neg": -_counter(rng),
                },
            ),
            False,
        ),
        (Heartbeat(), False),
        (
            ErrorMessage(
                code=int(rng.integers(0, 65536)), epoch=_counter(rng), version=_counter(rng), reason=text
            ),
            False,
        ),
        (Close(code=int(rng.integers(0, 65536)), reason=text), False),
        (AuthChallenge(nonce=rng.bytes(32)), False),
        (AuthResponse(nonce=rng.bytes(32), mac=rng.bytes(32)), False),
        (AuthConfirm(mac=rng.bytes(32)), False),
        (ModelMessage(epoch=_counter(rng), version=_counter(rng), vector=EqualsSnapshot(dim)), False),
    ]
    for vector, rice in _vectors(rng, dim):
        epoch, version = _counter(rng), _counter(rng)
        if isinstance(vector, RawVector):
            out.append((Snapshot(epoch=epoch, vector=vector), False))
            out.append((FullGradient(epoch=epoch, vector=vector), False))
            loss = float(rng.standard_normal() * 1e3)
            answer = SnapshotGradient(
                epoch=epoch, samples=_counter(rng), correct=_counter(rng), loss=loss, vector=vector
            )
            out.append((answer, False))
        if not isinstance(vector, SparseQuantized | QSGDVector):
            relative = not isinstance(vector, ZeroVector | EqualsSnapshot) and bool(rng.integers(2))
            out.append((ModelMessage(epoch=epoch, version=version, vector=vector, relative=relative), rice))
        if not isinstance(vector, EqualsSnapshot):
            out.append((Gradient(epoch=epoch, version=version, vector=vector), rice))
    return out


def _aiodq_decode(data: bytes, limits: Limits) -> tuple[str, list[dict[str, Any]]]:
    """aiodq's outcome for a byte stream: ``("ok", messages)`` or ``(error code name, messages so far)``."""
    reader = FrameReader(limits)
    reader.feed(data)
    messages: list[dict[str, Any]] = []
    try:
        while (frame := reader.next_frame()) is not None:
            decoded = decode_body(frame, DecodeContext(limits=limits))
            messages.append(_plain(_event_to_plain(decoded.event, decoded.encoding)))
    except CodecError as exc:
        return exc.code.name, messages
    if reader.buffered:
        return "MALFORMED_FRAME", messages  # wire-format.md 3-5: the stream ends inside a frame
    return "ok", messages


def _cleanroom_decode(data: bytes, limits: Limits) -> tuple[str, list[dict[str, Any]]]:
    context = cr.ReceiveContext(
        max_frame_bytes=limits.max_frame_bytes,
        max_dimension=limits.max_dimension,
        max_control_bytes=limits.max_control_bytes,
        max_reason_bytes=limits.max_reason_bytes,
    )
    decoder = cr.StreamDecoder(context)
    messages: list[dict[str, Any]] = []
    try:
        messages.extend(_plain(m) for m in decoder.feed(data))
        decoder.end()
    except cr.WireError as exc:
        return exc.code, messages
    return "ok", messages


def _frames(seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [encode_message(event, dense_rice=rice) for _ in range(3) for event, rice in _messages(rng)]


@pytest.mark.parametrize("seed", range(4))
def test_both_implementations_read_aiodq_frames_alike(seed: int) -> None:
    """Every frame aiodq sends, of every type and encoding: the second implementation reads it the same."""
    limits = Limits()
    frames = _frames(seed)
    assert len(frames) > 100
    for data in frames:
        ours, theirs = _aiodq_decode(data, limits), _cleanroom_decode(data, limits)
        assert ours[0] == "ok", (ours, data.hex())
        assert theirs == ours, data.hex()


@pytest.mark.parametrize("seed", range(4))
def test_aiodq_reads_what_the_second_implementation_writes(seed: int) -> None:
    """The second implementation's canonical encoding of each message is byte for byte aiodq's."""
    for data in _frames(seed):
        [message] = cr.decode_stream(data)
        assert cr.encode_message(message) == data, data.hex()


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        if choice < 0.5 and out:
            position = rng.randrange(len(out))
            out[position] ^= 1 << rng.randrange(8)
        elif choice < 0.7 and out:
            out[rng.randrange(len(out))] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif choice < 0.85:
            del out[rng.randrange(len(out) + 1) :]
        else:
            out[rng.randrange(len(out) + 1) : 0] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
    if len(out) >= 7 and rng.random() < 0.7:
        out[3:7] = struct.pack("<I", len(out) - 7)  # keep the header's length honest most of the time
    return bytes(out)


@pytest.mark.parametrize("seed", range(6))
def test_both_implementations_agree_on_mutated_frames(seed: int) -> None:
    """Mutated frames: both accept with the same messages, or both fail with the same error code."""
    rng = random.Random(seed)
    limits = Limits(
        max_frame_bytes=1 << 16, max_dimension=1 << 12, max_control_bytes=256, max_reason_bytes=64
    )
    frames = _frames(100 + seed)
    disagreements = []
    for _ in range(2500):
        data = _mutate(rng, rng.choice(frames))
        ours, theirs = _aiodq_decode(data, limits), _cleanroom_decode(data, limits)
        # On an error, the code (which ends the connection) is what must agree.
        if ours != theirs and not (ours[0] == theirs[0] != "ok"):
            disagreements.append(f"{data.hex()}: aiodq {ours[0]}, second implementation {theirs[0]}")
    assert not disagreements, "\n".join(disagreements[:10])


def test_the_comparison_can_fail() -> None:
    """The comparison sees a difference: a frame one implementation accepts and one it refuses."""
    data = encode_message(Heartbeat())
    assert (
        _aiodq_decode(data, Limits()) == _cleanroom_decode(data, Limits()) == ("ok", [{"type": "HEARTBEAT"}])
    )
    assert _aiodq_decode(data + b"\x01", Limits())[0] != "ok"
    assert not math.isnan(_float("0x3f800000"))
