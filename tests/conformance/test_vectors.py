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

import hashlib
import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aiodq.codec.events import (
    AuthChallenge,
    AuthConfirm,
    AuthResponse,
    Close,
    ConfigMessage,
    ConnectionClosed,
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
    Vector,
    ZeroVector,
)
from aiodq.config import ConnectionConfig, Limits
from aiodq.errors import CodecError, ErrorCode, LocalProtocolError, RemoteProtocolError
from aiodq.protocol.connection import Connection, MasterConnection, WorkerConnection

VECTOR_DIR = Path(__file__).parent / "vectors"
#: Every vector file's name and SHA-256, written by generate.py.
MANIFEST = json.loads((VECTOR_DIR / "MANIFEST.json").read_text(encoding="utf-8"))
KINDS = ("valid", "invalid", "quantizer", "story")


def _load() -> dict[str, dict[str, Any]]:
    """The vectors the manifest names (test_vectors_match_the_manifest checks for missing or extra files)."""
    return {name: json.loads((VECTOR_DIR / name).read_text(encoding="utf-8")) for name in MANIFEST["files"]}


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


def _vector_to_fields(vector: Vector, encoding: Encoding | None = None) -> dict[str, Any]:
    """The vector's JSON fields; ``encoding`` is the one it arrived in (default: the codec's choice)."""
    plan = plan_vector(vector, dense_rice=encoding is Encoding.DENSE_RICE)
    encoding = plan.encoding
    out: dict[str, Any] = {"encoding": encoding.name, "dim": vector.dim}
    if isinstance(vector, RawVector):
        to_bits = _f32bits if vector.values.dtype == np.float32 else _f64bits
        out["values_bits"] = [to_bits(float(x)) for x in vector.values]
    elif isinstance(vector, DenseQuantized):
        out.update(bits=vector.bits, scale_bits=_f32bits(vector.scale), codes=[int(c) for c in vector.codes])
        if encoding is Encoding.DENSE_RICE:
            out["rice_k"] = plan.k
    elif isinstance(vector, SparseQuantized):
        out.update(
            bits=vector.bits,
            scale_bits=_f32bits(vector.scale),
            indices=[int(i) for i in vector.indices],
            codes=[int(c) for c in vector.codes],
        )
        if encoding is Encoding.SPARSE_RICE:
            out["rice_k"] = plan.k
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
        # DENSE_RICE: the same value; the sender chooses the Rice coding (wire-format.md 5.8).
        return DenseQuantized(
            fields["bits"], _float(fields["scale_bits"]), np.array(fields["codes"], dtype=np.int64)
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


def _event_to_fields(event: Event, encoding: Encoding | None = None) -> dict[str, Any]:
    """The event's JSON fields; events are named as the spec names their messages."""
    name = "CONNECTION_CLOSED" if isinstance(event, ConnectionClosed) else message_type_of(event).name
    out: dict[str, Any] = {"event": name}
    if isinstance(event, Hello):
        out.update(
            min_version=event.min_version,
            max_version=event.max_version,
            encodings=sorted(event.encodings),
            name=event.name,
            **({} if event.shard is None else {"shard": list(event.shard)}),
        )
    elif isinstance(event, Welcome):
        out.update(version=event.version, worker_id=event.worker_id, encodings=sorted(event.encodings))
    elif isinstance(event, ConfigMessage):
        params = {key: _param_to_json(value) for key, value in event.params.items()}
        out.update(dim=event.dim, algorithm=event.algorithm, params=params, params_order=list(event.params))
    elif isinstance(event, Snapshot | FullGradient):
        out.update(epoch=event.epoch, vector=_vector_to_fields(event.vector, encoding))
    elif isinstance(event, SnapshotGradient):
        out.update(
            epoch=event.epoch,
            samples=event.samples,
            correct=event.correct,
            loss_bits=_f64bits(event.loss),
            vector=_vector_to_fields(event.vector, encoding),
        )
    elif isinstance(event, ModelMessage):
        out.update(
            epoch=event.epoch,
            version=event.version,
            relative=event.relative,
            vector=_vector_to_fields(event.vector, encoding),
        )
    elif isinstance(event, Gradient):
        out.update(epoch=event.epoch, version=event.version, vector=_vector_to_fields(event.vector, encoding))
    elif isinstance(event, ErrorMessage):
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


#: Event classes by the spec's message names (CONNECTION_CLOSED: the local end of the stream).
_CLASSES: dict[str, Any] = {
    "HELLO": Hello,
    "WELCOME": Welcome,
    "CONFIG": ConfigMessage,
    "SNAPSHOT": Snapshot,
    "SNAPSHOT_GRADIENT": SnapshotGradient,
    "FULL_GRADIENT": FullGradient,
    "MODEL": ModelMessage,
    "GRADIENT": Gradient,
    "HEARTBEAT": Heartbeat,
    "ERROR": ErrorMessage,
    "CLOSE": Close,
    "AUTH_CHALLENGE": AuthChallenge,
    "AUTH_RESPONSE": AuthResponse,
    "AUTH_CONFIRM": AuthConfirm,
    "CONNECTION_CLOSED": ConnectionClosed,
}


def _event_from_fields(fields: dict[str, Any]) -> Event:
    kind = fields["event"]
    f = {key: value for key, value in fields.items() if key != "event"}
    if "vector" in f:
        f["vector"] = _vector_from_fields(f["vector"])
    if kind in ("HELLO", "WELCOME"):
        f["encodings"] = frozenset(f["encodings"])
        if "shard" in f:
            f["shard"] = tuple(f["shard"])
    elif kind == "CONFIG":  # (in the order on the wire: the JSON object's keys are sorted)
        f["params"] = {key: _param_from_json(f["params"][key]) for key in f.pop("params_order")}
    elif kind.startswith("AUTH_"):  # nonce and mac in hex
        f = {key: bytes.fromhex(value) for key, value in f.items()}
    elif kind == "SNAPSHOT_GRADIENT":
        f["loss"] = _float(f.pop("loss_bits"))
    event: Event = _CLASSES[kind](**f)
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


def test_vectors_match_the_manifest() -> None:
    """The folder holds exactly the files MANIFEST.json names, byte for byte, of every kind."""
    on_disk = {path.name for path in VECTOR_DIR.glob("*.json")} - {"MANIFEST.json"}
    assert on_disk == set(MANIFEST["files"]), sorted(on_disk ^ set(MANIFEST["files"]))
    assert MANIFEST["count"] == len(MANIFEST["files"])
    for name, digest in MANIFEST["files"].items():
        assert hashlib.sha256((VECTOR_DIR / name).read_bytes()).hexdigest() == digest, name
    counts = {kind: len(_names(kind)) for kind in KINDS}
    assert counts == MANIFEST["kinds"] and all(counts.values()), counts


def test_regenerated_vectors_equal_the_committed_ones() -> None:
    """generate.py, run now against this aiodq, rebuilds every committed file byte for byte.

    It raises (and so this test fails) on any disagreement between aiodq and the spec's layout.
    """
    spec = importlib.util.spec_from_file_location(
        "conformance_generate", Path(__file__).parent / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    files = generate.build()
    committed = {path.name: path.read_text(encoding="utf-8") for path in VECTOR_DIR.glob("*.json")}
    assert set(files) == set(committed), sorted(set(files) ^ set(committed))
    changed = [name for name in files if files[name] != committed[name]]
    assert not changed, changed


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
    _deliver(master, worker, ConfigMessage(dim=dim, algorithm="conformance"))
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
    _deliver(master, worker, ModelMessage(epoch=epoch, version=event.version, vector=zeros))
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
    decoded = decode_body(frame, context)
    event = decoded.event
    assert _event_to_fields(event, decoded.encoding) == doc["event"]

    # Canonical form: one encoding per value (DENSE_RICE for a sender that prefers it, 5.8),
    # so both encoders reproduce the bytes; input a receiver accepts in another form (7-10)
    # names the canonical bytes in "canonical_hex".
    rice = decoded.encoding is Encoding.DENSE_RICE
    canonical = bytes.fromhex(doc.get("canonical_hex", doc["hex"]))
    assert encode_message(event, frame.version, dense_rice=rice) == canonical
    rebuilt = _event_from_fields(doc["event"])
    assert rebuilt == event
    assert encode_message(rebuilt, frame.version, dense_rice=rice) == canonical

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
    if function == "quantize_with_dither":
        codes = quantize_with_dither(values, _float(doc["delta_bits"]), doc["bits"], _dither(doc))
        assert codes.tolist() == doc["expected_codes"]
    elif function == "quantize_qsgd_with_dither":
        result = quantize_qsgd_with_dither(values, doc["s"], _dither(doc))
        assert _vector_to_fields(result) == doc["expected"]
    else:
        assert function == "sparsify_with_uniforms"
        probabilities = np.array([_float(b) for b in doc["probabilities_bits"]], dtype=np.float64)
        uniforms = np.array(doc["uniforms_u32"], dtype=np.uint32)
        indices, kept = sparsify_with_uniforms(values, probabilities, uniforms)
        assert indices.tolist() == doc["expected_indices"]
        assert [_f64bits(float(x)) for x in kept] == doc["expected_values_bits"]


# -- stories -------------------------------------------------------------------------------------------


def _other(side: str) -> str:
    return "master" if side == "worker" else "worker"


def _drain(conn: Connection) -> tuple[list[Event], RemoteProtocolError | None]:
    events: list[Event] = []
    try:
        while (event := conn.next_event()) is not None:
            events.append(event)
    except RemoteProtocolError as exc:
        return events, exc
    return events, None


def _same_events(got: list[Event], expected: list[dict[str, Any]]) -> bool:
    """Equal as values (the step's bytes pin the encodings); a Close recorded without a reason
    matches any reason."""
    if len(got) != len(expected):
        return False
    for g, e in zip(got, expected, strict=True):
        if e["event"] == "CLOSE" and "reason" not in e:
            if not (isinstance(g, Close) and g.code == e["code"]):
                return False
        elif g != _event_from_fields(e):
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
        if "silent" in step:
            # The side has nothing to send (in CLOSING: no answer, no HEARTBEAT, 8.1-2).
            assert conns[step["silent"]].data_to_send() == b"", where
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
            # The connection is closed and tells the peer why (wire-format.md 7.11, 9), unless
            # it had sent CLOSE already (CLOSING sends nothing, 8.1-2).
            queued = receiver.data_to_send()
            if "close_queued" in step:
                assert _single_close(queued).code == ErrorCode[step["close_queued"]], where
            else:
                assert queued == b"", where
            pending[receiver_name] = queued
        else:
            assert error is None, f"{where}: {error!r}"
