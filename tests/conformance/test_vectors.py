"""Run the wire-format conformance vectors in tests/conformance/vectors/ (docs/wire-format.md).

The JSON files are the data: this runner does not import generate.py.  It reads
every file and checks, by kind:

- ``valid``: decoding gives exactly the recorded fields; re-encoding the decoded
  event (and the event rebuilt from the fields) gives exactly the same bytes;
  feeding the bytes one at a time through a FrameReader, and through a
  connection brought to a state that accepts the message, gives one frame.
- ``invalid``: decoding raises CodecError with exactly the recorded code, whether
  the bytes arrive at once or one at a time.
- ``quantizer``: the explicit-dither quantizers reproduce the recorded outputs.
- ``story``: steps over a master/worker pair, with events, errors and CLOSEs.  A story's
  ``master_config`` / ``worker_config`` (``{"secret": hex, "nonces": [hex, ...]}``) gives that
  side a ConnectionConfig with the shared secret and a nonce source that hands out the nonces
  in order (wire-format.md 7.12-7.14).

Floats are IEEE-754 bit patterns in hex: 8 hex digits for float32, 16 for float64.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiodq.config import ConnectionConfig, Limits
from aiodq.connection import Connection, MasterConnection, WorkerConnection
from aiodq.errors import CodecError, ErrorCode, LocalProtocolError, RemoteProtocolError
from aiodq.events import (
    AuthChallenge,
    AuthConfirm,
    AuthResponse,
    Close,
    Config,
    ConnectionClosed,
    Error,
    Event,
    FullGradient,
    Gradient,
    Heartbeat,
    Hello,
    Model,
    Snapshot,
    SnapshotGradient,
    Welcome,
)
from aiodq.quant.lowp import quantize_with_dither
from aiodq.quant.qsgd import quantize_qsgd_with_dither
from aiodq.quant.sparse import sparsify_with_uniforms
from aiodq.vectors import (
    DenseQuantized,
    EqualsSnapshot,
    QSGDVector,
    RawVector,
    SparseQuantized,
    Vector,
    ZeroVector,
)
from aiodq.wire.frames import FrameReader, MessageType
from aiodq.wire.messages import DecodeContext, decode_message, encode_message
from aiodq.wire.payload import Encoding, dense_rice_encoding, encoding_of, sparse_index_encoding

VECTOR_DIR = Path(__file__).parent / "vectors"
#: The suite fails if the vectors are missing or were mostly deleted.
MIN_VECTORS = 100
KINDS = ("valid", "invalid", "quantizer", "story")


def _load() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8")) for path in sorted(VECTOR_DIR.glob("*.json"))
    }


VECTORS = _load()


def _names(kind: str) -> list[str]:
    return [name for name, doc in VECTORS.items() if doc["kind"] == kind]


# -- float bit patterns -----------------------------------------------------------------------------


def _float(pattern: str) -> float:
    """A float from its hex bit pattern: 8 hex digits is a float32, 16 a float64."""
    digits = pattern[2:]
    if len(digits) == 8:
        return float(struct.unpack("<f", struct.pack("<I", int(digits, 16)))[0])
    assert len(digits) == 16, pattern
    return float(struct.unpack("<d", struct.pack("<Q", int(digits, 16)))[0])


def _f32bits(value: float) -> str:
    return f"0x{struct.unpack('<I', struct.pack('<f', value))[0]:08x}"


def _f64bits(value: float) -> str:
    return f"0x{struct.unpack('<Q', struct.pack('<d', value))[0]:016x}"


# -- fields <-> events -------------------------------------------------------------------------------


def _vector_to_fields(vector: Vector) -> dict[str, Any]:
    encoding = encoding_of(vector)
    out: dict[str, Any] = {"encoding": encoding.name, "dim": vector.dim}
    if isinstance(vector, RawVector):
        to_bits = _f32bits if vector.values.dtype == np.float32 else _f64bits
        out["values_bits"] = [to_bits(float(x)) for x in vector.values]
    elif isinstance(vector, DenseQuantized):
        out.update(bits=vector.bits, scale_bits=_f32bits(vector.scale), codes=[int(c) for c in vector.codes])
        if encoding is Encoding.DENSE_RICE:
            out["rice_k"] = dense_rice_encoding(vector)
    elif isinstance(vector, SparseQuantized):
        out.update(
            bits=vector.bits,
            scale_bits=_f32bits(vector.scale),
            indices=[int(i) for i in vector.indices],
            codes=[int(c) for c in vector.codes],
        )
        if encoding is Encoding.SPARSE_RICE:
            out["rice_k"] = sparse_index_encoding(vector)[1]
    elif isinstance(vector, QSGDVector):
        out.update(s=vector.s, norm_bits=_f32bits(vector.norm), levels=[int(x) for x in vector.levels])
    return out


def _vector_from_fields(fields: dict[str, Any]) -> Vector:
    encoding = Encoding[fields["encoding"]]
    dim = fields["dim"]
    if encoding is Encoding.RAW_F32:
        return RawVector(np.array([_float(b) for b in fields["values_bits"]], dtype=np.float32))
    if encoding is Encoding.RAW_F64:
        return RawVector(np.array([_float(b) for b in fields["values_bits"]], dtype=np.float64))
    if encoding is Encoding.ZERO:
        return ZeroVector(dim)
    if encoding is Encoding.EQUALS_SNAPSHOT:
        return EqualsSnapshot(dim)
    if encoding in (Encoding.DENSE, Encoding.DENSE_RICE):
        # DENSE_RICE: the same value, asking the encoder for Rice coding (wire-format.md 5.8).
        return DenseQuantized(
            fields["bits"],
            _float(fields["scale_bits"]),
            np.array(fields["codes"], dtype=np.int64),
            rice=encoding is Encoding.DENSE_RICE,
        )
    if encoding in (Encoding.SPARSE_BITMAP, Encoding.SPARSE_RICE):
        return SparseQuantized(
            dim,
            fields["bits"],
            _float(fields["scale_bits"]),
            np.array(fields["indices"], dtype=np.int64),
            np.array(fields["codes"], dtype=np.int64),
        )
    return QSGDVector(fields["s"], _float(fields["norm_bits"]), np.array(fields["levels"], dtype=np.int64))


def _param_from_json(value: Any) -> Any:
    return _float(value["f64"]) if isinstance(value, dict) else value


def _param_to_json(value: Any) -> Any:
    return {"f64": _f64bits(value)} if isinstance(value, float) else value


def _event_to_fields(event: Event) -> dict[str, Any]:
    out: dict[str, Any] = {"event": type(event).__name__}
    if isinstance(event, Hello):
        out.update(
            min_version=event.min_version,
            max_version=event.max_version,
            encodings=sorted(event.encodings),
            name=event.name,
        )
    elif isinstance(event, Welcome):
        out.update(version=event.version, worker_id=event.worker_id, encodings=sorted(event.encodings))
    elif isinstance(event, Config):
        params = {key: _param_to_json(value) for key, value in event.params.items()}
        out.update(dim=event.dim, algorithm=event.algorithm, params=params)
    elif isinstance(event, Snapshot | FullGradient):
        out.update(epoch=event.epoch, vector=_vector_to_fields(event.vector))
    elif isinstance(event, SnapshotGradient):
        out.update(
            epoch=event.epoch,
            samples=event.samples,
            correct=event.correct,
            loss_bits=_f64bits(event.loss),
            vector=_vector_to_fields(event.vector),
        )
    elif isinstance(event, Model):
        out.update(
            epoch=event.epoch,
            version=event.version,
            relative=event.relative,
            vector=_vector_to_fields(event.vector),
        )
    elif isinstance(event, Gradient):
        out.update(epoch=event.epoch, version=event.version, vector=_vector_to_fields(event.vector))
    elif isinstance(event, Error):
        out.update(code=event.code, epoch=event.epoch, version=event.version, reason=event.reason)
    elif isinstance(event, Close):
        out.update(code=event.code, reason=event.reason)
    elif isinstance(event, ConnectionClosed):
        out.update(clean=event.clean, code=event.code)
    elif isinstance(event, AuthChallenge):
        out.update(nonce=event.nonce.hex())
    elif isinstance(event, AuthResponse):
        out.update(nonce=event.nonce.hex(), mac=event.mac.hex())
    elif isinstance(event, AuthConfirm):
        out.update(mac=event.mac.hex())
    return out


def _event_from_fields(fields: dict[str, Any]) -> Event:
    kind = fields["event"]
    f = {key: value for key, value in fields.items() if key != "event"}
    if "vector" in f:
        f["vector"] = _vector_from_fields(f["vector"])
    if kind == "Hello":
        return Hello(**{**f, "encodings": frozenset(f["encodings"])})
    if kind == "Welcome":
        return Welcome(**{**f, "encodings": frozenset(f["encodings"])})
    if kind == "Config":
        return Config(**{**f, "params": {key: _param_from_json(v) for key, v in f["params"].items()}})
    if kind in ("AuthChallenge", "AuthResponse", "AuthConfirm"):  # nonce and mac in hex
        auth_class = {
            "AuthChallenge": AuthChallenge,
            "AuthResponse": AuthResponse,
            "AuthConfirm": AuthConfirm,
        }
        return auth_class[kind](**{key: bytes.fromhex(value) for key, value in f.items()})
    if kind == "SnapshotGradient":
        return SnapshotGradient(
            **{key: v for key, v in f.items() if key != "loss_bits"}, loss=_float(f["loss_bits"])
        )
    classes: dict[str, Any] = {
        "Snapshot": Snapshot,
        "FullGradient": FullGradient,
        "Model": Model,
        "Gradient": Gradient,
        "Heartbeat": Heartbeat,
        "Error": Error,
        "Close": Close,
    }
    event: Event = classes[kind](**f)
    return event


def _context(doc: dict[str, Any]) -> DecodeContext:
    context = doc.get("context", {})
    kwargs: dict[str, Any] = {}
    if "limits" in context:
        kwargs["limits"] = Limits(**context["limits"])
    if "dim" in context:
        kwargs["dim"] = context["dim"]
    if "encodings" in context:
        kwargs["encodings"] = frozenset(int(Encoding[name]) for name in context["encodings"])
    return DecodeContext(**kwargs)


# -- the suite itself ----------------------------------------------------------------------------------


def test_vectors_present() -> None:
    """The vectors folder holds at least MIN_VECTORS files, of every kind (tests/conformance)."""
    assert len(VECTORS) >= MIN_VECTORS, f"only {len(VECTORS)} vectors in {VECTOR_DIR}"
    for kind in KINDS:
        assert _names(kind), f"no {kind} vectors"
    assert all(doc["kind"] in KINDS for doc in VECTORS.values())


def test_vectors_cite_the_spec() -> None:
    """Every vector cites at least one section of docs/wire-format.md or docs/algorithms.md."""
    for name, doc in VECTORS.items():
        assert doc.get("cites"), name
        assert all(isinstance(c, str) and c.split("-")[0] in ("WF", "ALG") for c in doc["cites"]), name


# -- valid ---------------------------------------------------------------------------------------------


def _one_frame_bytewise(data: bytes, limits: Limits) -> Any:
    reader = FrameReader(limits)
    for position in range(len(data)):
        reader.feed(data[position : position + 1])
        frame = reader.next_frame()
        if position < len(data) - 1:
            assert frame is None, f"a frame came out after {position + 1} of {len(data)} bytes"
    assert frame is not None
    assert reader.buffered == 0
    return frame


# Which side receives each message type (wire-format.md 8.1).
_MASTER_RECEIVES = {"HELLO", "SNAPSHOT_GRADIENT", "GRADIENT", "HEARTBEAT", "ERROR", "CLOSE"}


def _deliver(sender: Connection, receiver: Connection, event: Event) -> None:
    sender.send(event, 0.0)
    receiver.receive_data(sender.data_to_send(), 0.0)
    assert receiver.next_event() == event


def _receiver_ready_for(doc: dict[str, Any], event: Event) -> Connection | None:
    """A connection brought, through real messages, to a state where ``event`` may arrive."""
    context = doc.get("context", {})
    if set(context) - {"dim"}:
        return None  # custom limits or encodings: the codec check above is the test
    mtype = doc["header"]["type"]
    if mtype.startswith("AUTH_"):
        return None  # consumed by the connection, never an event (7.14-3): the AUTH stories test it
    master, worker = MasterConnection(), WorkerConnection()
    if mtype == "HELLO":
        return master
    _deliver(worker, master, Hello(min_version=1, max_version=1, name="conformance"))
    if mtype == "WELCOME":
        return worker
    _deliver(master, worker, Welcome(version=1, worker_id=1))
    if mtype in ("CONFIG", "HEARTBEAT", "ERROR", "CLOSE"):
        return master if mtype in _MASTER_RECEIVES else worker
    vector = event.vector
    dim = vector.dim
    _deliver(master, worker, Config(dim=dim, algorithm="conformance"))
    if mtype == "SNAPSHOT":
        return worker
    epoch = event.epoch
    zeros = RawVector(np.zeros(dim, dtype=np.float32))
    _deliver(master, worker, Snapshot(epoch=epoch, vector=zeros))
    if mtype == "SNAPSHOT_GRADIENT":
        return master
    _deliver(worker, master, SnapshotGradient(epoch=epoch, samples=1, correct=0, loss=0.0, vector=zeros))
    if mtype in ("FULL_GRADIENT", "MODEL"):
        return worker
    assert mtype == "GRADIENT"
    _deliver(master, worker, Model(epoch=epoch, version=event.version, vector=zeros))
    return master


@pytest.mark.parametrize("name", _names("valid"))
def test_valid(name: str) -> None:
    """A valid frame decodes to exactly its fields and re-encodes to the same bytes (wire-format.md 3-7)."""
    doc = VECTORS[name]
    data = bytes.fromhex(doc["hex"])
    context = _context(doc)

    reader = FrameReader(context.limits)
    reader.feed(data)
    frame = reader.next_frame()
    assert frame is not None and reader.buffered == 0
    header = {"version": frame.version, "type": MessageType(frame.type).name, "flags": frame.flags}
    assert header == doc["header"]
    event = decode_message(frame, context)
    assert _event_to_fields(event) == doc["event"]

    # Canonical form: one encoding per value, so both encoders reproduce the bytes.
    assert encode_message(event, frame.version) == data
    rebuilt = _event_from_fields(doc["event"])
    assert rebuilt == event
    assert encode_message(rebuilt, frame.version) == data

    # Any split of the stream gives the same frame: here one byte at a time.
    assert _one_frame_bytewise(data, context.limits) == frame

    receiver = _receiver_ready_for(doc, event)
    if receiver is not None:
        for position in range(len(data)):
            receiver.receive_data(data[position : position + 1], 1.0)
            got = receiver.next_event()
            if position < len(data) - 1:
                assert got is None
        assert got == event


# -- invalid -------------------------------------------------------------------------------------------


def _decode_all(data: bytes, context: DecodeContext, *, bytewise: bool) -> None:
    reader = FrameReader(context.limits)
    chunks = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for chunk in chunks:
        reader.feed(chunk)
        frame = reader.next_frame()
        if frame is not None:
            assert reader.buffered == 0, "an invalid vector is one frame"
            decode_message(frame, context)
            return
    raise AssertionError("the bytes never formed a whole frame")


@pytest.mark.parametrize("name", _names("invalid"))
def test_invalid(name: str) -> None:
    """An invalid frame raises CodecError with exactly the vector's code (wire-format.md 9)."""
    doc = VECTORS[name]
    data = bytes.fromhex(doc["hex"])
    context = _context(doc)
    expected = ErrorCode[doc["error"]]
    for bytewise in (False, True):
        with pytest.raises(CodecError) as info:
            _decode_all(data, context, bytewise=bytewise)
        assert info.value.code is expected, f"{info.value!r}"


# -- quantizer -----------------------------------------------------------------------------------------


def _dither(doc: dict[str, Any]) -> np.ndarray:
    if "dither_u16" in doc:
        return np.array(doc["dither_u16"], dtype=np.uint16)
    return np.array([_float(b) for b in doc["dither_bits"]], dtype=np.float64)


@pytest.mark.parametrize("name", _names("quantizer"))
def test_quantizer(name: str) -> None:
    """Explicit-dither quantizers give exactly the recorded codes (docs/algorithms.md 2, 6, 8)."""
    doc = VECTORS[name]
    values = np.array([_float(b) for b in doc["values_bits"]], dtype=np.float64)
    function = doc["function"]
    if function == "aiodq.quant.lowp.quantize_with_dither":
        codes = quantize_with_dither(values, _float(doc["delta_bits"]), doc["bits"], _dither(doc))
        assert codes.tolist() == doc["expected_codes"]
    elif function == "aiodq.quant.qsgd.quantize_qsgd_with_dither":
        result = quantize_qsgd_with_dither(values, doc["s"], _dither(doc))
        assert _vector_to_fields(result) == doc["expected"]
    else:
        assert function == "aiodq.quant.sparse.sparsify_with_uniforms"
        probabilities = np.array([_float(b) for b in doc["probabilities_bits"]], dtype=np.float64)
        uniforms = np.array(doc["uniforms_u32"], dtype=np.uint32)
        indices, kept = sparsify_with_uniforms(values, probabilities, uniforms)
        assert indices.tolist() == doc["expected_indices"]
        assert [_f64bits(float(x)) for x in kept] == doc["expected_values_bits"]


# -- stories -------------------------------------------------------------------------------------------


def _other(side: str) -> str:
    return "master" if side == "worker" else "worker"


def _drain(conn: Connection) -> tuple[list[dict[str, Any]], RemoteProtocolError | None]:
    events: list[dict[str, Any]] = []
    try:
        while (event := conn.next_event()) is not None:
            events.append(_event_to_fields(event))
    except RemoteProtocolError as exc:
        return events, exc
    return events, None


def _same_events(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> bool:
    """Equal field by field; a Close recorded without a reason matches any reason."""
    if len(got) != len(expected):
        return False
    for g, e in zip(got, expected, strict=True):
        seen = g
        if e["event"] == "Close" and "reason" not in e:
            seen = {key: value for key, value in g.items() if key != "reason"}
        if seen != e:
            return False
    return True


def _single_close(data: bytes) -> Close:
    reader = FrameReader(Limits())
    reader.feed(data)
    frame = reader.next_frame()
    assert frame is not None and reader.buffered == 0, data.hex()
    event = decode_message(frame, DecodeContext())
    assert isinstance(event, Close)
    return event


def _fixed_nonces(nonces: list[bytes]) -> Any:
    """A nonce source handing out ``nonces`` in order; running out fails the story."""
    queue = list(nonces)

    def source(size: int) -> bytes:
        assert queue, "the story's nonces ran out"
        nonce = queue.pop(0)
        assert len(nonce) == size, (len(nonce), size)
        return nonce

    return source


def _story_config(doc: dict[str, Any], side: str) -> ConnectionConfig | None:
    """The side's config: the story's limits, and its ``<side>_config`` secret and nonces."""
    kwargs: dict[str, Any] = {}
    if "limits" in doc:
        kwargs["limits"] = Limits(**doc["limits"])
    auth = doc.get(f"{side}_config")
    if auth:
        if "secret" in auth:
            kwargs["secret"] = bytes.fromhex(auth["secret"])
        kwargs["nonce_source"] = _fixed_nonces([bytes.fromhex(n) for n in auth.get("nonces", [])])
    return ConnectionConfig(**kwargs) if kwargs else None


@pytest.mark.parametrize("name", _names("story"))
def test_story(name: str) -> None:
    """A story runs step by step with the recorded bytes, events and errors (wire-format.md 6-8)."""
    doc = VECTORS[name]
    conns: dict[str, Connection] = {}
    if "master" in doc["sides"]:
        conns["master"] = MasterConnection(_story_config(doc, "master"))
    if "worker" in doc["sides"]:
        conns["worker"] = WorkerConnection(_story_config(doc, "worker"))
    pending: dict[str, bytes] = {}  # CLOSE frames queued on error, not yet delivered
    held: dict[str, bytes] = {}  # bytes in flight, delivered by a later step

    for number, step in enumerate(doc["steps"]):
        where = f"step {number}"
        if "send_error" in step:
            sender = conns[step["from"]]
            with pytest.raises(LocalProtocolError) as refused:
                sender.send(_event_from_fields(step["send"]), 0.0)
            assert refused.value.code is ErrorCode[step["send_error"]], where
            assert sender.data_to_send() == b"", f"{where}: a refused send queued bytes"
            continue
        if "eof_to" in step:
            receiver_name = step["eof_to"]
            data = b""
        else:
            side = step["from"]
            receiver_name = _other(side)
            if "send" in step:
                conns[side].send(_event_from_fields(step["send"]), 0.0)
                data = conns[side].data_to_send()
                assert data.hex() == step["hex"], where
            elif step.get("queued"):
                data = pending.pop(side, b"") + conns[side].data_to_send()
                if not step.get("hex_informative"):
                    assert data.hex() == step["hex"], where
            elif step.get("deliver"):
                data = held.pop(side)
                assert data.hex() == step["hex"], where
            else:
                data = bytes.fromhex(step["hex"])
            if step.get("deliver_later"):
                held[side] = data
                continue
        receiver = conns[receiver_name]
        receiver.receive_data(data, 0.0)
        events, error = _drain(receiver)
        assert _same_events(events, step["events"]), f"{where}: {events}"
        if "error" in step:
            assert error is not None, f"{where}: no error, expected {step['error']}"
            code = ErrorCode[step["error"]]
            assert error.code is code, f"{where}: {error!r}"
            # The connection is closed and tells the peer why (wire-format.md 7.11, 9).
            queued = receiver.data_to_send()
            assert _single_close(queued).code == ErrorCode[step["close_queued"]], where
            pending[receiver_name] = queued
        else:
            assert error is None, f"{where}: {error!r}"
