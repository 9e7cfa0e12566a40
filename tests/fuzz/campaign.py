"""A deterministic fuzz campaign of the receive path: ``python -m tests.fuzz`` (from the repository root).

style.md: "the receive path raises nothing else, ever".  Whatever the bytes, the
codec (:class:`~aiodq.codec.frames.FrameReader` and
:func:`~aiodq.codec.messages.decode_message`) may raise only
:class:`~aiodq.errors.CodecError`, and a sans-I/O connection only
:class:`~aiodq.errors.RemoteProtocolError`.  Anything else is a *crash*: it is
recorded with the input, a minimized reproducer and the traceback.

The campaign has two kinds of targets:

- ``codec:*``: a stream of frames goes to a FrameReader and every frame to
  decode_message, under tight :class:`~aiodq.config.Limits` and with the
  configured dimension (``codec:ready``) or none (``codec:handshake``);
- ``master:<state>`` / ``worker:<state>``: a connection driven into a state
  (handshake, configuring, ready, snapshot phase, model outstanding, crossing
  (wire-format.md 8.2-9), mid-epoch, closing) by a recorded, well-behaved
  session, then fed the peer's next frames, mutated, in random chunk splits.
  A deterministic *responder* answers as an application would (a worker
  answers SNAPSHOT and MODEL, a master HELLO, SNAPSHOT_GRADIENT and GRADIENT),
  so the valid prefix of a mutated stream drives the connection deeper.

Inputs start from a corpus of valid frames of every message type and vector
encoding, built with :func:`~aiodq.codec.messages.encode_message`, the vector
classes and the quantizers.  Mutation operators: bit flips, byte replacement,
interesting bytes and words (``00 7f 80 ff``, NaN, infinities, -0.0,
subnormals), insertion, deletion, truncation, splicing two frames, repeated
chunks, and structure-aware edits that keep the frame length consistent: the
header's length, version, type and flags, varint fields, the vector
descriptor, float fields, body truncation and extension, and msgpack control
bodies.

Besides the exception invariant, cheap oracles are checked and reported apart
(``violations``): a connection that raised is CLOSED, has queued a CLOSE with
the error's code and raises no more; the codec gives the same result for any
split of its input (wire-format.md 3-4); an accepted binary frame re-encodes
to the same bytes (5-2).  Optionally, tracemalloc samples the memory peak of
an input and checks it against :func:`memory_bound`, a bound derived from the
limits and the input length alone (wire-format.md 10).

Everything is deterministic: input ``i`` of seed ``s`` depends only on
``(s, i)``, so any number of processes runs the same inputs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import random
import signal
import sys
import threading
import time
import traceback
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

import msgpack
import numpy as np

from aiodq.codec.cursor import MAX_VARINT, Cursor, uvarint
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
from aiodq.codec.frames import HEADER_SIZE, FrameReader, encode_frame
from aiodq.codec.lowp import quantize_gradient, quantize_model
from aiodq.codec.messages import DecodeContext, decode_body, decode_message, encode_message
from aiodq.codec.payload import plan_vector
from aiodq.codec.qsgd import quantize_qsgd
from aiodq.codec.registry import ALL_ENCODINGS, Encoding, MessageType
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
from aiodq.config import ConnectionConfig, Limits, MasterConfig
from aiodq.errors import CodecError, ErrorCode, LocalProtocolError, RemoteProtocolError
from aiodq.protocol.accounting import MAX_ERRORS
from aiodq.protocol.algorithms import MODEL_LIMIT, TrainConfig
from aiodq.protocol.connection import (
    Connection,
    ConnectionState,
    MasterConnection,
    WorkerConnection,
)
from aiodq.protocol.coordinator import Coordinator
from aiodq.protocol.dataset import Dataset
from aiodq.protocol.members import Phase
from aiodq.protocol.simulate import build_cluster

__all__ = [
    "DEFAULT_DIM",
    "TIGHT_LIMITS",
    "CaseResult",
    "FuzzOptions",
    "FuzzTarget",
    "SeedFrame",
    "Setup",
    "build_corpus",
    "build_setup",
    "describe_frame",
    "generate_input",
    "main",
    "memory_bound",
    "minimize",
    "run_campaign",
    "run_codec",
    "run_connection",
    "run_case",
]

#: The configured model dimension of the fuzzed session.
DEFAULT_DIM = 128
#: Receiver limits of every target: small, so that any limit is easy to hit.
TIGHT_LIMITS = Limits(max_frame_bytes=4096, max_dimension=1024, max_control_bytes=512, max_reason_bytes=128)
#: Inputs longer than this are cut (the frame limit plus room for several frames).
MAX_INPUT = 16384
#: Inputs of one block share one random generator (seeded by the seed and the block number).
BLOCK = 256
_NOW = 1.0
_BINARY_TYPES = frozenset(range(MessageType.SNAPSHOT, MessageType.CLOSE + 1))
_CONTROL_TYPES = frozenset({MessageType.HELLO, MessageType.WELCOME, MessageType.CONFIG})


# -- the corpus -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SeedFrame:
    """One valid frame and where its fields are, for structure-aware mutations."""

    #: The frame: header and body.
    data: bytes
    #: A short name for reports ("GRADIENT/QSGD").
    label: str
    #: Offsets (in ``data``) of the varint fields: epochs, versions, dimension, counts, s.
    varints: tuple[int, ...] = ()
    #: ``(offset, width)`` of float fields: loss, scale, norm, the first raw value.
    floats: tuple[tuple[int, int], ...] = ()
    #: Offset of the vector descriptor byte, if the message carries a vector.
    descriptor: int | None = None


def describe_frame(data: bytes, label: str = "") -> SeedFrame:
    """Locate the fields of a valid frame (wire-format.md 5 and 7) for the mutators.

    Args:
        data: one whole, valid frame.
        label: a name for reports; by default the message type and encoding.

    Returns:
        The frame with the offsets of its varint and float fields and descriptor.
    """
    varints: list[int] = []
    floats: list[tuple[int, int]] = []
    descriptor: int | None = None
    name = label
    cursor = Cursor(memoryview(data)[HEADER_SIZE:])

    def varint() -> None:
        varints.append(HEADER_SIZE + cursor.pos)
        cursor.uvarint("varint")

    def number(width: int) -> None:
        floats.append((HEADER_SIZE + cursor.pos, width))
        cursor.take(width, "float")

    try:
        message_type = MessageType(data[1])
        name = name or message_type.name
        if message_type in (MessageType.SNAPSHOT, MessageType.FULL_GRADIENT):
            varint()
        elif message_type == MessageType.SNAPSHOT_GRADIENT:
            varint()
            varint()
            varint()
            number(8)
        elif message_type in (MessageType.MODEL, MessageType.GRADIENT):
            varint()
            varint()
        elif message_type == MessageType.ERROR:
            cursor.u16("code")
            varint()
            varint()
        if message_type in (
            MessageType.SNAPSHOT,
            MessageType.FULL_GRADIENT,
            MessageType.SNAPSHOT_GRADIENT,
            MessageType.MODEL,
            MessageType.GRADIENT,
        ):
            descriptor = HEADER_SIZE + cursor.pos
            encoding = Encoding(cursor.u8("descriptor") >> 4)
            name = label or f"{message_type.name}/{encoding.name}"
            varint()
            if encoding in (Encoding.RAW_F32, Encoding.RAW_F64) and cursor.remaining:
                number(4 if encoding == Encoding.RAW_F32 else 8)
            elif encoding in (Encoding.DENSE, Encoding.DENSE_RICE):
                number(4)  # the scale (5.5, 5.8)
            elif encoding in (Encoding.SPARSE_BITMAP, Encoding.SPARSE_RICE, Encoding.QSGD):
                varint()
                number(4)
    except (CodecError, ValueError, IndexError):
        pass  # a frame that is not valid: keep whatever was found
    return SeedFrame(data, name, tuple(varints), tuple(floats), descriptor)


def _raw(rng: np.random.Generator, dim: int, dtype: type[np.floating[Any]]) -> RawVector:
    return RawVector(rng.normal(size=dim).astype(dtype))


def _vectors(rng: np.random.Generator, dim: int) -> dict[str, list[tuple[Vector, bool]]]:
    """Valid vectors of dimension ``dim`` per message kind, with the MODEL RELATIVE flag."""
    snap = rng.normal(size=dim)
    model = snap + rng.normal(scale=0.01, size=dim)
    gradient = rng.normal(size=dim)
    raws: list[tuple[Vector, bool]] = [
        (_raw(rng, dim, np.float32), False),
        (_raw(rng, dim, np.float64), False),
    ]
    edge = np.array([0.0, -0.0, 1e-45, 3.4e38, -3.4e38, 1.0], dtype=np.float32)
    raws.append((RawVector(np.resize(edge, dim)), False))
    models: list[tuple[Vector, bool]] = [*raws, (ZeroVector(dim), False), (EqualsSnapshot(dim), False)]
    for mu in (0.5, 0.05, 1e-4):
        payload = quantize_model(model, snap, mu, rng)
        models.append((payload.vector, payload.relative))
        payload = quantize_model(model, snap, mu, rng, centre="zero")
        models.append((payload.vector, payload.relative))
    models.append((_raw(rng, dim, np.float32), True))
    gradients: list[tuple[Vector, bool]] = [*raws, (ZeroVector(dim), False)]
    for bits in (2, 3, 4, 8, 9, 12, 16):
        gradients.append((quantize_gradient(gradient, bits, rng), False))
    for bits in (1, 5, 7, 11, 15):
        top = 1 << (bits - 1)
        codes = rng.integers(-top, top, size=dim)
        codes[0] = -top  # the most negative code is valid
        gradients.append((DenseQuantized(bits=bits, scale=2.0**-149, codes=codes), False))
    for budget, bits in ((dim / 2, 4), (dim / 4, 8), (3, 4), (2, 16), (8, 2), (dim, 3)):
        gradients.append((quantize_sparse(gradient, budget, bits, rng), False))
    gradients.append(
        (
            SparseQuantized(dim=dim, bits=1, scale=1.0, indices=np.array([dim - 1]), codes=np.array([-1])),
            False,
        )
    )
    for s in (1, 2, 7, 255, 65535):
        gradients.append((quantize_qsgd(gradient, s, rng), False))
    levels = np.zeros(dim, dtype=np.int64)
    levels[-1] = -65535
    gradients.append((QSGDVector(s=65535, norm=float(np.finfo(np.float32).max), levels=levels), False))
    # DENSE_RICE (wire-format.md 5.8): mostly small codes, Rice-coded where that is smaller than
    # DENSE (at dimension 1 it never is, so those frames stay DENSE).  Drawn last, so that the
    # vectors above do not depend on them.
    for bits, relative in ((3, True), (6, False), (16, True)):
        models.append((_rice_vector(rng, dim, bits), relative))
    for mu in (0.05, 1e-4):
        payload = quantize_model(model, snap, mu, rng)
        if isinstance(payload.vector, DenseQuantized):
            models.append((payload.vector, payload.relative))
    for bits in (2, 4, 8, 12, 16):
        gradients.append((_rice_vector(rng, dim, bits), False))
    rice_gradient = quantize_gradient(gradient * (rng.random(dim) < 0.2), 8, rng)
    if isinstance(rice_gradient, DenseQuantized):
        gradients.append((rice_gradient, False))
    return {"raw": raws, "model": models, "gradient": gradients}


def _rice_vector(rng: np.random.Generator, dim: int, bits: int) -> DenseQuantized:
    """Mostly-zero ``bits``-bit codes with both extremes: DENSE_RICE is smaller where d > 1 (5.8)."""
    top = 1 << (bits - 1)
    codes = np.where(rng.random(dim) < 0.75, 0, rng.integers(-3, 4, size=dim)).clip(-top, top - 1)
    codes[0] = -top  # z = 2^b - 1, the largest zigzag value
    if dim > 1:
        codes[-1] = top - 1
    return DenseQuantized(bits=bits, scale=2.0 ** -rng.integers(1, 20), codes=codes)


def encoding_of(vector: Vector) -> Encoding:
    """The encoding a default connection sends ``vector`` in to a peer that announced every encoding."""
    return plan_vector(vector, dense_rice=True).encoding


def _sendable(vector: Vector, conn: Connection) -> bool:
    """True if ``conn`` can send ``vector`` to its peer (DENSE_RICE falls back to DENSE, 5.8)."""
    dense_rice = int(Encoding.DENSE_RICE) in conn.peer_encodings
    return int(plan_vector(vector, dense_rice=dense_rice).encoding) in conn.peer_encodings


def _frames(event: Event) -> list[bytes]:
    """``event``'s frame, and for dense codes also the DENSE_RICE frame where that is smaller."""
    plain = encode_message(event)
    rice = encode_message(event, dense_rice=True)
    return [plain] if rice == plain else [plain, rice]


def build_corpus(seed: int, dim: int = DEFAULT_DIM) -> tuple[SeedFrame, ...]:
    """Valid frames of every message type and vector encoding.

    Most vectors have dimension ``dim``; a few have other dimensions, so that
    the dimension checks (wire-format.md 5.2-3) are reached too.

    Args:
        seed: seeds the vectors' values and the quantizers' dither.
        dim: the configured model dimension.

    Returns:
        The frames, each described by :func:`describe_frame`.
    """
    rng = np.random.default_rng([seed, 0xA10D])
    events: list[Event] = [
        Hello(),
        Hello(min_version=1, max_version=3, encodings=frozenset({0, 2, 4}), name="wörker-é"),
        Hello(min_version=2, max_version=255, encodings=frozenset(range(16)), name="x" * 255),
        Welcome(),
        Welcome(version=1, worker_id=MAX_VARINT, encodings=frozenset({0, 1, 2, 3})),
        ConfigMessage(
            dim=dim, algorithm="asylpg", params={"mu": 0.5, "bits": 4, "sparse": True, "name": "é"}
        ),
        ConfigMessage(dim=dim, algorithm="qsvrg", params={}),
        ConfigMessage(dim=TIGHT_LIMITS.max_dimension, algorithm="x", params={"big": -(2**63), "f": -0.0}),
        Heartbeat(),
        ErrorMessage(
            code=int(ErrorCode.STALE_GRADIENT), epoch=3, version=MAX_VARINT, reason="stale gradient"
        ),
        ErrorMessage(code=0xFFFF, reason="é" * 40),
        Close(),
        Close(code=int(ErrorCode.GOING_AWAY), reason="bye ✓"),
        AuthChallenge(nonce=bytes(range(32))),
        AuthResponse(nonce=bytes(32), mac=bytes(range(32, 64))),
        AuthConfirm(mac=b"\xff" * 32),
    ]
    for vector_dim in (dim, 1, dim + 1):
        vectors = _vectors(rng, vector_dim)
        step = 1 if vector_dim == dim else 6  # fewer frames of the wrong dimension
        for index, (vector, _) in enumerate(vectors["raw"][::step]):
            assert isinstance(vector, RawVector)
            events.append(Snapshot(epoch=index * 1000, vector=vector))
            events.append(FullGradient(epoch=MAX_VARINT - index, vector=vector))
            events.append(SnapshotGradient(epoch=index, samples=128, loss=-0.0, correct=7, vector=vector))
        for index, (vector, relative) in enumerate(vectors["model"][::step]):
            events.append(ModelMessage(epoch=index, version=index * 300, vector=vector, relative=relative))
        for index, (vector, _) in enumerate(vectors["gradient"][::step]):
            events.append(Gradient(epoch=index, version=MAX_VARINT >> index, vector=vector))
    return tuple(describe_frame(frame) for event in events for frame in _frames(event))


# -- connections in given states ----------------------------------------------


def _epoch_flags(conn: Connection) -> tuple[bool, bool]:
    # The fuzzer is part of the package: it reads the epoch bookkeeping to name states.
    state = conn._epoch
    return state.snapshot_pending, state.outstanding is not None


def state_label(conn: Connection) -> str:
    """Name a connection's state for reports: the 8.1 state, refined by the 8.2 variables."""
    if conn.state is ConnectionState.HANDSHAKE:
        if isinstance(conn, WorkerConnection) and conn._offered is None:
            return "fresh"
        return "handshake"
    if conn.state is not ConnectionState.READY:
        return str(conn.state.value)
    if conn.epoch is None:
        return "ready"
    pending, outstanding = _epoch_flags(conn)
    if pending and outstanding:
        return "crossing"
    if pending:
        return "snapshot-phase"
    if outstanding:
        return "model-outstanding"
    return "mid-epoch"


class Responder:
    """A deterministic, well-behaved application on top of a connection.

    The worker answers each SNAPSHOT (after the GRADIENT it owes, 8.2-9) and
    each MODEL of even version at once; a MODEL of odd version waits for the
    next SNAPSHOT, so the master's crossing SNAPSHOT is exercised.  The master
    answers HELLO with WELCOME, CONFIG and the first SNAPSHOT, a
    SNAPSHOT_GRADIENT with FULL_GRADIENT (even epochs) and a MODEL, and a
    GRADIENT with the next MODEL; after a MODEL of odd version it starts the
    next epoch at once.  From epoch ``last_epoch`` on, the master closes.
    """

    def __init__(self, dim: int, last_epoch: int = 2) -> None:
        rng = np.random.default_rng(0x5EED)
        self.dim = dim
        self.last_epoch = last_epoch
        models = [v for v in _vectors(rng, dim)["model"] if not isinstance(v[0], ZeroVector)]
        # The short recorded session sends models 0..4: RAW_F32, RAW_F64, a DENSE_RICE model with
        # RELATIVE (5.8) in the place of a second RAW_F32 (moved to the end), EQUALS_SNAPSHOT, DENSE.
        rice = next(v for v in models if encoding_of(v[0]) is Encoding.DENSE_RICE)
        rest = [v for v in models if v is not rice]
        self._models = [*rest[:2], rice, *rest[3:], rest[2]]
        gradients = _vectors(rng, dim)["gradient"]
        picks = ("SPARSE_RICE", "QSGD", "DENSE", "DENSE_RICE", "SPARSE_BITMAP", "RAW_F64", "ZERO")
        by_name = {encoding_of(v).name: v for v, _ in gradients}
        self._gradients = [by_name[name] for name in picks]
        self._snapshot = RawVector(rng.normal(size=dim).astype(np.float32))
        #: LocalProtocolError refusals of the responder's own sends (a hint, not a crash).
        self.refusals = 0

    def _pick(self, conn: Connection, candidates: Sequence[Vector]) -> Vector | None:
        """The first candidate of the configured dimension whose encoding the peer announced."""
        dim = conn.dim
        if dim is None:
            return None
        if dim != self.dim:
            candidates = [ZeroVector(dim), RawVector(np.zeros(dim, dtype=np.float32))]
        for vector in candidates:
            if _sendable(vector, conn):
                return vector
        return None

    def respond(self, conn: Connection, event: Event) -> None:
        """React to ``event``; a refused send is counted, not raised."""
        if conn.state not in (ConnectionState.HANDSHAKE, ConnectionState.CONFIGURING, ConnectionState.READY):
            return
        try:
            if isinstance(conn, MasterConnection):
                self._master(conn, event)
            elif isinstance(conn, WorkerConnection):
                self._worker(conn, event)
        except LocalProtocolError:
            self.refusals += 1

    def _snapshot_for(self, conn: Connection) -> RawVector | None:
        vector = self._pick(conn, [self._snapshot, RawVector(self._snapshot.values.astype(np.float64))])
        return vector if isinstance(vector, RawVector) else None

    def _master(self, conn: MasterConnection, event: Event) -> None:
        if isinstance(event, Hello):
            version = conn.negotiated_version
            if version is None:
                return
            conn.send(Welcome(version=version, worker_id=7, encodings=ALL_ENCODINGS), _NOW)
            conn.send(ConfigMessage(dim=self.dim, algorithm="asylpg", params={"mu": 0.5, "bits": 4}), _NOW)
            snapshot = self._snapshot_for(conn)
            if snapshot is not None:
                conn.send(Snapshot(epoch=0, vector=snapshot), _NOW)
        elif isinstance(event, SnapshotGradient):
            if event.epoch % 2 == 0:
                full = self._snapshot_for(conn)
                if full is not None:
                    conn.send(FullGradient(epoch=event.epoch, vector=full), _NOW)
            last = conn._epoch.last_version
            self._model(conn, event.epoch, 0 if last is None else last + 1)
        elif isinstance(event, Gradient):
            pending, _ = _epoch_flags(conn)
            epoch = conn.epoch
            if pending or epoch is None:
                return  # crossing: the SNAPSHOT_GRADIENT comes next
            if epoch >= self.last_epoch:
                conn.close(_NOW)
                return
            self._model(conn, epoch, event.version + 1)

    def _model(self, conn: MasterConnection, epoch: int, version: int) -> None:
        if version > MAX_VARINT or epoch >= MAX_VARINT:
            conn.close(_NOW)
            return
        vector, relative = self._models[version % len(self._models)]
        if conn.dim != self.dim or not _sendable(vector, conn):
            picked = self._pick(conn, [ZeroVector(self.dim)])
            if picked is None:
                return
            vector, relative = picked, False
        conn.send(ModelMessage(epoch=epoch, version=version, vector=vector, relative=relative), _NOW)
        snapshot = self._snapshot_for(conn)
        if version % 2 == 1 and snapshot is not None:
            conn.send(Snapshot(epoch=epoch + 1, vector=snapshot), _NOW)  # 8.2-9: crossing

    def _worker(self, conn: WorkerConnection, event: Event) -> None:
        if isinstance(event, Snapshot):
            owed = conn.outstanding_model
            if owed is not None:
                self._gradient(conn, *owed)
            answer = self._pick(conn, [RawVector(self._snapshot.values.astype(np.float64)), self._snapshot])
            if isinstance(answer, RawVector):
                conn.send(
                    SnapshotGradient(epoch=event.epoch, samples=10, loss=1.5, correct=3, vector=answer), _NOW
                )
        elif isinstance(event, ModelMessage) and event.version % 2 == 0:
            self._gradient(conn, event.epoch, event.version)

    def _gradient(self, conn: WorkerConnection, epoch: int, version: int) -> None:
        rotated = self._gradients[version % len(self._gradients) :] + self._gradients
        vector = self._pick(conn, rotated)
        if vector is not None:
            conn.send(Gradient(epoch=epoch, version=version, vector=vector), _NOW)


@dataclass(slots=True)
class StatePoint:
    """A connection stopped at a frame boundary, and the peer's frames that came next."""

    #: The connection (or, for a ``coordinator:*`` target, the Coordinator), copied for every input.
    template: Connection | Coordinator
    #: The frames the peer sent next in the recorded session (may be empty).
    stream: tuple[SeedFrame, ...]
    #: For a coordinator target: the worker id whose bytes the input stands for.
    peer: int = 0


def _split_frames(data: bytes) -> list[bytes]:
    frames: list[bytes] = []
    while data:
        end = HEADER_SIZE + int.from_bytes(data[3:7], "little")
        frames.append(data[:end])
        data = data[end:]
    return frames


def _drain(conn: Connection, responder: Responder) -> None:
    while (event := conn.next_event()) is not None:
        responder.respond(conn, event)


def record_session(dim: int, config: ConnectionConfig) -> dict[str, list[StatePoint]]:
    """Run a well-behaved master and worker through three epochs; keep a state point per frame.

    Returns:
        State points by target name (``"master:crossing"``), each with the
        peer frames that followed it in the session.
    """
    responder = Responder(dim)
    master, worker = MasterConnection(config, now=0.0), WorkerConnection(config, now=0.0)
    recorded: dict[str, list[tuple[Connection, list[bytes], int]]] = {}
    received: dict[int, list[bytes]] = {id(master): [], id(worker): []}

    def record(conn: Connection, role: str) -> None:
        stream = received[id(conn)]
        recorded.setdefault(f"{role}:{state_label(conn)}", []).append(
            (copy.deepcopy(conn), stream, len(stream))
        )

    record(worker, "worker")  # before HELLO: a worker that sent nothing yet
    worker.send(Hello(name="fuzz"), 0.0)
    for _ in range(100):
        moved = False
        for sender, receiver, role in ((worker, master, "master"), (master, worker, "worker")):
            for frame in _split_frames(sender.data_to_send()):
                moved = True
                record(receiver, role)
                received[id(receiver)].append(frame)
                receiver.receive_data(frame, _NOW)
                _drain(receiver, responder)
        if not moved:
            break
    if responder.refusals:  # pragma: no cover - the recorded session is well-behaved
        raise RuntimeError("the fuzz responder refused its own sends in the recorded session")
    points: dict[str, list[StatePoint]] = {}
    for name, entries in recorded.items():
        for conn, stream, index in entries:
            frames = tuple(describe_frame(f) for f in stream[index:])
            points.setdefault(name, []).append(StatePoint(conn, frames))
            if conn.state in (
                ConnectionState.HANDSHAKE,
                ConnectionState.CONFIGURING,
                ConnectionState.READY,
            ) and (
                not name.endswith(":fresh")  # (nothing crosses the CLOSE of a worker that sent no HELLO)
            ):
                # The same point after this side sent CLOSE: the peer's frames still arrive and are
                # checked against the state advanced by a crossing WELCOME or CONFIG (8.1-2).
                closing = copy.deepcopy(conn)
                closing.close(_NOW)
                closing.data_to_send()
                # A CLOSING side no longer answers, so only the frames already on their way fit:
                # the next one, or the master's WELCOME, CONFIG and SNAPSHOT of the handshake.
                ahead = frames[:1]
                if isinstance(conn, WorkerConnection) and conn.state is not ConnectionState.READY:
                    # The master's WELCOME, CONFIG and first SNAPSHOT were sent without waiting.
                    types = [f.data[1] for f in frames]
                    end = types.index(MessageType.SNAPSHOT) + 1 if MessageType.SNAPSHOT in types else 1
                    ahead = frames[:end]
                label = "closing" if conn.state is ConnectionState.READY else "closing-handshake"
                points.setdefault(f"{name.split(':')[0]}:{label}", []).append(StatePoint(closing, ahead))
    # A master that sent WELCOME but not yet CONFIG (the responder sends both at once).
    configuring = MasterConnection(config, now=0.0)
    configuring.receive_data(encode_message(Hello()), _NOW)
    configuring.next_event()
    configuring.send(Welcome(), _NOW)
    configuring.data_to_send()
    tail = tuple(describe_frame(encode_message(e)) for e in (Heartbeat(), ErrorMessage(code=14), Close()))
    points.setdefault("master:configuring", []).append(StatePoint(configuring, tail))
    return points


def hostile_events(dim: int, epoch: int = 1, version: int = 0) -> list[Event]:
    """Valid messages with values that a worker that passed admission could send to poison or
    stall a master (issue 10): huge finite gradients and reports, ZERO answers, extreme counters."""
    big = float(np.finfo(np.float32).max)
    codes = np.zeros(dim, dtype=np.int64)
    codes[0] = 32767
    ones = RawVector(np.ones(dim))
    return [
        Gradient(epoch=epoch, version=version, vector=RawVector(np.full(dim, 1e150))),
        Gradient(epoch=epoch, version=version, vector=RawVector(np.full(dim, big, dtype=np.float32))),
        Gradient(epoch=epoch, version=version, vector=DenseQuantized(16, big, codes)),
        Gradient(epoch=epoch, version=version, vector=DenseQuantized(1, 0.5, np.where(codes != 0, -1, 0))),
        Gradient(epoch=epoch, version=version, vector=RawVector(np.full(dim, 1e3, dtype=np.float32))),
        # In the run's own encodings, so that the norm bound and the range check are reached:
        Gradient(epoch=epoch, version=version, vector=DenseQuantized(8, big, np.minimum(codes, 127))),
        Gradient(epoch=epoch, version=version, vector=DenseQuantized(8, 1e3, np.full(dim, 100))),
        Gradient(
            epoch=epoch, version=version, vector=SparseQuantized(dim, 8, big, np.array([0]), np.array([127]))
        ),
        Gradient(
            epoch=epoch,
            version=version,
            vector=SparseQuantized(dim, 8, 1e4, np.arange(dim), np.full(dim, 99)),
        ),
        Gradient(epoch=epoch, version=version, vector=ZeroVector(dim)),
        SnapshotGradient(epoch=epoch, samples=MAX_VARINT, loss=0.5, correct=0, vector=ones),
        SnapshotGradient(epoch=epoch, samples=30, loss=1e300, correct=10**12, vector=ones),
        SnapshotGradient(epoch=epoch, samples=30, loss=0.5, correct=3, vector=RawVector(np.full(dim, 1e200))),
        SnapshotGradient(epoch=epoch, samples=0, loss=-1.0, correct=3, vector=RawVector(np.zeros(dim))),
        ErrorMessage(code=int(ErrorCode.INTERNAL_ERROR), reason="x\n2026-12-03 fake log line " * 4),
    ]


def hostile_frames(dim: int) -> list[SeedFrame]:
    """:func:`hostile_events` as corpus frames."""
    return [describe_frame(frame) for event in hostile_events(dim) for frame in _frames(event)]


def _synthetic_data(dim: int, samples: int = 60) -> Dataset:
    """A small, fixed logistic-regression dataset with ``dim`` features."""
    rng = np.random.default_rng(0xDA7A)
    features = rng.normal(size=(samples, dim)) / np.sqrt(dim)
    labels = np.where(features @ rng.normal(size=dim) > 0, 1.0, -1.0)
    return Dataset(features, labels, "fuzz")


def record_cluster(dim: int, limits: Limits) -> dict[str, list[StatePoint]]:
    """A Coordinator with two in-memory workers (:func:`~aiodq.protocol.simulate.build_cluster`),
    stopped before each delivery from worker 0; the points carry that worker's next frames.

    Targets ``coordinator:<phase>``: mutated worker streams must never make the coordinator
    raise, and must never leave a model that a MODEL cannot carry (see :func:`run_coordinator`).
    """
    points: dict[str, list[StatePoint]] = {}
    # The guard off (0) too: then the range check of MasterState.apply is what stops a poisoned update.
    for algorithm, guard in (("asylpg", 100.0), ("sparse-asylpg", 100.0), ("asylpg", 0.0)):
        config = TrainConfig(algorithm=algorithm, epochs=2, updates_per_epoch=6, batch=4, seed=3)
        coordinator, sessions = build_cluster(
            config,
            _synthetic_data(dim),
            2,
            connection_config=ConnectionConfig(limits=limits),
            master_config=MasterConfig(guard=guard),
        )
        ids = [coordinator.connect(0.0) for _ in sessions]
        for _ in range(400):
            moved = False
            for index, session in enumerate(sessions):
                up = session.data_to_send()
                frames = _split_frames(up) if up else []
                for position, frame in enumerate(frames):
                    moved = True
                    if index == 0:
                        label = f"coordinator:{coordinator.phase.value}"
                        ahead = tuple(describe_frame(f) for f in frames[position : position + 3])
                        template = copy.deepcopy(coordinator)
                        points.setdefault(label, []).append(StatePoint(template, ahead, peer=ids[0]))
                        # The same point with the frame replaced by a hostile one of the same epoch
                        # and version, so that the input reaches the guard (not just the codec).
                        reader = FrameReader(limits)
                        reader.feed(frame)
                        whole = reader.next_frame()
                        assert whole is not None
                        honest = decode_message(whole, DecodeContext(dim=dim))
                        if isinstance(honest, Gradient | SnapshotGradient):
                            version = honest.version if isinstance(honest, Gradient) else 0
                            for event in hostile_events(dim, honest.epoch, version):
                                if type(event) is type(honest):
                                    hostile = (describe_frame(encode_message(event)), *ahead[1:])
                                    points.setdefault(
                                        f"coordinator:hostile-{label.split(':')[1]}", []
                                    ).append(StatePoint(template, hostile, peer=ids[0]))
                    coordinator.receive_data(ids[index], frame, _NOW)
            for worker_id, data in coordinator.data_to_send().items():
                moved = True
                sessions[ids.index(worker_id)].receive_data(data, _NOW)
            if not moved:
                break
    return points


def run_coordinator(
    point: StatePoint, data: bytes, chunks: Sequence[int] | None = None, *, eof: bool = False
) -> CaseResult:
    """Feed ``data`` as worker ``point.peer``'s bytes to a copy of the point's Coordinator.

    The coordinator catches every protocol error itself, so here *any* exception is a crash
    (coordinator.py: no message of a peer makes it raise).  Oracles: the model and snapshot
    stay finite and within what a MODEL carries, a MODEL can still be built, the ledger's kept
    errors stay bounded, and the summary is JSON.
    """
    template = point.template
    assert isinstance(template, Coordinator)
    coordinator = copy.deepcopy(template)
    result = CaseResult()
    sizes = list(chunks) if chunks is not None else [len(data)]
    start = 0
    pieces = [data[start : (start := start + size)] for size in sizes]
    if eof:
        pieces.append(b"")
    errors_before = coordinator.ledger.errors_seen
    for piece in pieces:
        coordinator.receive_data(point.peer, piece, _NOW)
    coordinator.data_to_send()
    ledger = coordinator.ledger
    result.events = sum(ledger.applied_staleness.values()) + sum(ledger.dropped.values())
    if ledger.errors_seen > errors_before:
        # What ended the peer (a protocol error, the guard's refusal): reported by code.
        # (An ERROR or CLOSE from the peer may carry any code, 7.10-4: unregistered ones by number.)
        name = ledger.errors[-1][1]
        result.code = ErrorCode[name] if name in ErrorCode.__members__ else ErrorCode.PROTOCOL_ERROR
    new_errors = list(ledger.errors)[-(ledger.errors_seen - errors_before) or len(ledger.errors) :]
    for _, _, reason, *_ in new_errors:
        if reason.startswith("internal error handling"):
            # _handle_safely caught an exception the protocol does not foresee: a bug it contained.
            result.violations.append(f"internal-error: {reason}")
    coordinator.handle_timer(_NOW + 1e6)  # every timer and deadline fires: must not raise either
    coordinator.data_to_send()
    state = coordinator.state
    for name in ("x", "snapshot"):
        values = getattr(state, name)
        if not (np.isfinite(values).all() and float(np.abs(values).max(initial=0.0)) <= MODEL_LIMIT):
            result.violations.append(f"poisoned: the master's {name} is not finite or beyond a MODEL's range")
    if coordinator.phase is Phase.INNER:
        state.model_message()  # must not raise: the next MODEL is always encodable
    if len(coordinator.ledger.errors) > MAX_ERRORS:
        result.violations.append(f"unbounded: {len(coordinator.ledger.errors)} errors kept")
    json.dumps(coordinator.summary())
    return result


# -- mutation operators ---------------------------------------------------------

#: Bytes worth trying anywhere: varint and nibble edges, descriptors, msgpack type bytes.
_INTERESTING_BYTES = tuple(
    bytes.fromhex(
        "0001 0207 0b0c 0f10 1f20 303f 404f 505f 606f 707f 8081 8f90 9fa0 bfc0 c1c2 c3c4 c6c7 c9ca"
        " cbcc cfd3 d4d8 d9db dcdd dedf e0f0 feff"
    )
)
_INTERESTING_INTS = (
    0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFF_FFFF, 0x8000_0000,
    0xFFFF_FFFF, 1 << 32, MAX_VARINT, 1 << 63, (1 << 64) - 1,
)  # fmt: skip
_F32_PATTERNS = tuple(
    bytes.fromhex(h)
    for h in ("0000c07f", "0000807f", "000080ff", "00000080", "01000000", "ffff7f7f", "0000803f", "000080bf",
              "0100807f", "00000000", "ffffffff")
)  # fmt: skip
_F64_PATTERNS = tuple(
    bytes.fromhex(h)
    for h in (
        "000000000000f87f", "000000000000f07f", "000000000000f0ff", "0000000000000080",
        "0100000000000000", "ffffffffffffef7f", "000000000000f03f", "0000000000000000", "ffffffffffffffff",
    )
)  # fmt: skip
_BAD_VARINTS = (
    b"\x80\x00",  # zero, not in shortest form
    b"\xff\x00",
    b"\x80" * 9,  # unterminated
    b"\xff" * 9 + b"\x01",  # ten bytes
    b"\xff" * 8 + b"\x7f",  # 2**63 - 1
    b"\x80" * 8 + b"\x80\x01",
    b"\xff" * 10,
)


def _varint_values(dim: int, limits: Limits) -> tuple[int, ...]:
    return (
        0, 1, 2, 15, 16, 63, 64, 127, 128, 255, 256, 16383, 16384, 65535, 65536, 65537, dim - 1, dim, dim + 1,
        2 * dim, limits.max_dimension, limits.max_dimension + 1, limits.max_frame_bytes, 1 << 31, 1 << 32,
        1 << 53, 1 << 62, MAX_VARINT,
    )  # fmt: skip


def _new_varint(rng: random.Random, dim: int, limits: Limits) -> bytes:
    if rng.random() < 0.2:
        return rng.choice(_BAD_VARINTS)
    if rng.random() < 0.1:
        return uvarint(rng.randrange(MAX_VARINT + 1) >> rng.randrange(63))
    return uvarint(max(0, rng.choice(_varint_values(dim, limits))))


def _varint_span(data: bytes | bytearray, offset: int) -> int:
    end = offset
    while end < len(data) and end - offset < 10:
        end += 1
        if not data[end - 1] & 0x80:
            break
    return end - offset


def _fix_length(data: bytearray) -> None:
    """Make the header's length field match the body (for one frame in ``data``)."""
    if len(data) >= HEADER_SIZE:
        data[3:7] = (len(data) - HEADER_SIZE).to_bytes(4, "little")


# Generic operators: on the whole input, in place.
_Generic = Callable[[random.Random, bytearray, Sequence[SeedFrame]], None]


def _bit_flip(rng: random.Random, data: bytearray, corpus: Sequence[SeedFrame]) -> None:
    for _ in range(rng.choice((1, 1, 1, 2, 4, 8))):
        if data:
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _byte_replace(rng: random.Random, data: bytearray, corpus: Sequence[SeedFrame]) -> None:
    for _ in range(rng.choice((1, 1, 2, 3))):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)


def _interesting_byte(rng: random.Random, data: bytearray, corpus: Sequence[SeedFrame]) -> None:
    if data:
        data[rng.randrange(len(data))] = rng.choice(_INTERESTING_BYTES)


def _interesting_word(rng: random.Random, data: bytearray, corpus: Sequence[SeedFrame]) -> None:
    choice = rng.random()
    if choice < 0.25:
        word = rng.choice(_F32_PATTERNS)
    elif choice < 0.4:
        word = rng.choice(_F64_PATTERNS)
    else:
        width = rng.choice((2, 4, 8))
        word = (rng.choice(_INTERESTING_INTS) & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
    if len(data) >= len(word):
        at = rng.randrange(len(data) - len(word) + 1)
        data[at : at + len(word)] = word


def _insert(rng: random.Random, data: bytearray, corpus: Sequence[SeedFrame]) -> None:
    at = rng.randrange(len(data) + 1)
    if rng.random() < 0.5:
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        data[at:at] = bytes([rng.choice(_INTERESTING_BYTES)]) * rng.randint(1, 8)


def _delete(rng: random.Random, data: bytearray, corpus: Sequence[SeedFrame]) -> None:
    if data:
        at = rng.randrange(len(data))
        del data[at : at + rng.choice((1, 1, 2, 4, 8, 32))]


def _truncate(rng: random.Random, data: bytearray, corpus: Sequence[SeedFrame]) -> None:
    if data:
        del data[rng.randrange(len(data)) :]


def _splice(rng: random.Random, data: bytearray, corpus: Sequence[SeedFrame]) -> None:
    other = rng.choice(corpus).data
    cut = rng.randrange(len(data) + 1)
    data[cut:] = other[rng.randrange(len(other) + 1) :]


def _append_frame(rng: random.Random, data: bytearray, corpus: Sequence[SeedFrame]) -> None:
    other = rng.choice(corpus).data
    if rng.random() < 0.5:
        data += other
    else:
        data[0:0] = other


def _repeat_chunk(rng: random.Random, data: bytearray, corpus: Sequence[SeedFrame]) -> None:
    if data:
        at = rng.randrange(len(data))
        chunk = bytes(data[at : at + rng.choice((1, 2, 4, 7, 16, 64))])
        data[at:at] = chunk * rng.choice((1, 2, 8, 64, 512))


def _header_length(rng: random.Random, data: bytearray, corpus: Sequence[SeedFrame]) -> None:
    # The first header, or a header at a random offset (a frame boundary after an earlier mutation).
    at = 0 if rng.random() < 0.7 or len(data) < HEADER_SIZE else rng.randrange(len(data) - HEADER_SIZE + 1)
    if len(data) < at + HEADER_SIZE:
        return
    actual = len(data) - at - HEADER_SIZE
    limit = TIGHT_LIMITS.max_frame_bytes
    value = rng.choice(
        (
            0,
            1,
            actual - 1,
            actual + 1,
            actual * 2,
            limit,
            limit + 1,
            0xFFFF_FFFF,
            0x8000_0000,
            rng.randrange(1 << 32),
        )
    )
    data[at + 3 : at + 7] = (value & 0xFFFF_FFFF).to_bytes(4, "little")


_GENERIC: tuple[tuple[str, _Generic], ...] = (
    ("bit-flip", _bit_flip),
    ("byte-replace", _byte_replace),
    ("interesting-byte", _interesting_byte),
    ("interesting-word", _interesting_word),
    ("insert", _insert),
    ("delete", _delete),
    ("truncate", _truncate),
    ("splice", _splice),
    ("append-frame", _append_frame),
    ("repeat-chunk", _repeat_chunk),
    ("header-length", _header_length),
)


def _control_body(rng: random.Random, body: bytes) -> bytes:
    """A msgpack control body with one to three field edits (7-3 to 7-10)."""
    try:
        value = msgpack.unpackb(body, raw=False)
    except Exception:  # any failure: start from an empty map
        value = {}
    fields: dict[Any, Any] = dict(value) if isinstance(value, dict) else {}
    keys = [*fields, "magic", "dim", "version", "encodings", "params", "algorithm", "name", "min_version"]
    values: list[Any] = [
        None, True, False, -1, 0, 1, 255, 256, 1 << 24, (1 << 24) + 1, MAX_VARINT, 1 << 63, (1 << 64) - 1,
        -(1 << 63), 1.5, float("nan"), float("inf"), -0.0, "", "aiodq", "é" * 100, b"aiodq", [], [0, 15],
        [16], [-1], [True], [1.0], list(range(16)) * 2, {}, {"a": 1}, {"a": None}, {"a": [1]}, {"a": b"x"},
        {"a": float("nan")}, {"a": {"b": 1}}, "x" * 600, [0] * 600,
    ]  # fmt: skip
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(keys)
        action = rng.random()
        if action < 0.2:
            fields.pop(key, None)
        elif action < 0.9:
            fields[key] = rng.choice(values)
        else:
            fields[rng.choice((b"bin-key", "unknown", 7))] = rng.choice(values)
    if rng.random() < 0.1:
        return bytes(msgpack.packb(rng.choice(values), use_bin_type=True))
    try:
        packed = msgpack.packb(fields, use_bin_type=rng.random() < 0.9, strict_types=False)
    except (TypeError, ValueError, OverflowError):
        return body
    if rng.random() < 0.1:  # deep nesting as a value
        packed = b"\x81\xa5magic" + b"\x91" * rng.randint(1, 600) + b"\xc0"
    return bytes(packed)


def _structural(rng: random.Random, seed: SeedFrame, dim: int, limits: Limits) -> tuple[str, bytes]:
    """One structure-aware edit of a valid frame; the header length is kept consistent unless edited."""
    data = bytearray(seed.data)
    options = ["header", "length", "body", "truncate-body", "extend-body"]
    if seed.varints:
        options += ["varint", "varint"]
    if seed.floats:
        options.append("float")
    if seed.descriptor is not None:
        options += ["descriptor", "descriptor", "payload", "payload", "payload", "payload"]
    if data[1] in _CONTROL_TYPES:
        options += ["msgpack", "msgpack"]
    op = rng.choice(options)
    if op == "header":
        position = rng.randrange(3)
        values = ((0, 2, 255), (0, 0x0C, 0xFF, *range(1, 12)), (0x01, 0x02, 0x80, 0xFF))[position]
        data[position] = rng.choice(values)
    elif op == "length":
        _header_length(rng, data, ())
    elif op == "body":
        body = bytearray(data[HEADER_SIZE:])
        for _ in range(rng.randint(1, 3)):
            rng.choice(_GENERIC[:7])[1](rng, body, ())
        data[HEADER_SIZE:] = body
        _fix_length(data)
    elif op == "payload":
        # Keep the descriptor and the dimension: reach the encoding's own checks (5.3 to 5.7).
        assert seed.descriptor is not None
        start = seed.descriptor + 1 + _varint_span(data, seed.descriptor + 1)
        payload = bytearray(data[start:])
        for _ in range(rng.randint(1, 3)):
            rng.choice(_GENERIC[:7])[1](rng, payload, ())
        data[start:] = payload
        _fix_length(data)
    elif op == "truncate-body":
        del data[rng.randrange(HEADER_SIZE, len(data) + 1) :]
        _fix_length(data)
    elif op == "extend-body":
        data += bytes(
            rng.choice((0, 1, 0xFF, rng.randrange(256))) for _ in range(rng.choice((1, 1, 2, 8, 100)))
        )
        _fix_length(data)
    elif op == "varint":
        at = rng.choice(seed.varints)
        data[at : at + _varint_span(data, at)] = _new_varint(rng, dim, limits)
        if rng.random() < 0.9:
            _fix_length(data)
    elif op == "float":
        at, width = rng.choice(seed.floats)
        data[at : at + width] = rng.choice(_F32_PATTERNS if width == 4 else _F64_PATTERNS)
    elif op == "descriptor":
        assert seed.descriptor is not None
        old = data[seed.descriptor]
        if rng.random() < 0.5:
            data[seed.descriptor] = (old & 0xF0) | rng.randrange(16)
        else:
            data[seed.descriptor] = rng.randrange(16) << 4 | (old & 0x0F if rng.random() < 0.7 else 0)
    else:
        data[HEADER_SIZE:] = _control_body(rng, bytes(data[HEADER_SIZE:]))
        _fix_length(data)
    return op, bytes(data)


def generate_input(
    rng: random.Random,
    corpus: Sequence[SeedFrame],
    stream: Sequence[SeedFrame] = (),
    *,
    dim: int = DEFAULT_DIM,
    limits: Limits = TIGHT_LIMITS,
) -> tuple[bytes, list[str]]:
    """Make one fuzz input from valid frames and mutation operators.

    Args:
        rng: the source of every choice (a hypothesis-controlled Random works too).
        corpus: valid frames of every kind, for splicing and as a base.
        stream: if given, the frames a connection expects next; the input
            starts from a prefix of them, so its valid part drives the
            connection deeper before a mutation strikes.
        dim: the configured dimension (for interesting varint values).
        limits: the receiver's limits (for interesting lengths).

    Returns:
        The input bytes and the names of the operators applied.
    """
    ops: list[str] = []
    choice = rng.random()
    if choice < 0.02:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(64))), ["random-bytes"]
    if choice < 0.04:
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(48)))
        header = bytes((rng.choice((1, 1, 0, 2)), rng.randrange(13), rng.choice((0, 0, 1, 0x80))))
        return header + len(body).to_bytes(4, "little") + body, ["random-frame"]
    if stream and rng.random() < 0.9:
        frames = list(stream[: rng.randint(1, min(len(stream), 5))])
        if rng.random() < 0.15:
            frames.insert(rng.randrange(len(frames) + 1), rng.choice(corpus))
    else:
        frames = [rng.choice(corpus) for _ in range(rng.choice((1, 1, 1, 2, 3)))]
    parts = [f.data for f in frames]
    if rng.random() < 0.75:
        # Strike the last frame more often: the valid ones before it set the state up.
        index = len(frames) - 1 if rng.random() < 0.6 else rng.randrange(len(frames))
        op, parts[index] = _structural(rng, frames[index], dim, limits)
        ops.append(op)
    data = bytearray(b"".join(parts))
    if not ops or rng.random() < 0.4:
        for _ in range(rng.choice((1, 1, 1, 2, 3, 5))):
            name, operator = rng.choice(_GENERIC)
            operator(rng, data, corpus)
            ops.append(name)
            del data[MAX_INPUT:]
    return bytes(data), ops


def _chunks(rng: random.Random, size: int) -> list[int]:
    """Random chunk sizes that add up to ``size``: one chunk, bytewise, or random cuts."""
    choice = rng.random()
    if choice < 0.3 or size < 2:
        return [size]
    if choice < 0.4 and size <= 256:
        return [1] * size
    cuts = sorted({rng.randrange(1, size) for _ in range(rng.randint(1, 8))})
    return [b - a for a, b in zip([0, *cuts], [*cuts, size], strict=True)]


# -- running one input ----------------------------------------------------------


@dataclass(slots=True)
class CaseResult:
    """What one input did to its target."""

    #: The error code raised (CodecError or RemoteProtocolError), or None if all was accepted.
    code: ErrorCode | None = None
    #: Frames decoded (events handed out) before the end or the error.
    events: int = 0
    #: Oracle violations, other than the exception invariant (empty if none).
    violations: list[str] = field(default_factory=list)


def run_codec(data: bytes, context: DecodeContext, chunks: Sequence[int] | None = None) -> CaseResult:
    """Feed ``data`` to a FrameReader and decode every frame.

    Only :class:`CodecError` is caught; any other exception propagates (a crash).
    With ``chunks``, the input is also fed in pieces of those sizes, and the
    result must not depend on the split (wire-format.md 3-4).  An accepted
    binary frame must re-encode to its own bytes (5-2).
    """
    result = _decode_all([data], context, check_canonical=True)
    if chunks is not None and len(chunks) > 1:
        pieces, start = [], 0
        for size in chunks:
            pieces.append(data[start : start + size])
            start += size
        split = _decode_all(pieces, context, check_canonical=False)
        if (split.code, split.events) != (result.code, result.events):
            result.violations.append(
                f"split-dependent: whole gives {result.code!r} after {result.events} frames, "
                f"chunks {list(chunks)} give {split.code!r} after {split.events}"
            )
    return result


def _decode_all(pieces: Sequence[bytes], context: DecodeContext, *, check_canonical: bool) -> CaseResult:
    result = CaseResult()
    reader = FrameReader(context.limits)
    try:
        for piece in pieces:
            reader.feed(piece)
            while (frame := reader.next_frame()) is not None:
                decoded = decode_body(frame, context)
                event = decoded.event
                result.events += 1
                if check_canonical and frame.type in _BINARY_TYPES:
                    # A DENSE_RICE frame is canonical if a sender that prefers DENSE_RICE (5.8) makes it.
                    rice = decoded.encoding is Encoding.DENSE_RICE
                    again = encode_message(event, frame.version, dense_rice=rice)
                    original = encode_frame(frame.version, frame.type, frame.flags, [frame.body])
                    if again != original:
                        result.violations.append(
                            f"non-canonical: {original.hex()} re-encodes as {again.hex()}"
                        )
    except CodecError as exc:
        result.code = exc.code
    return result


def run_connection(
    template: Connection,
    data: bytes,
    chunks: Sequence[int] | None = None,
    *,
    eof: bool = False,
    responder: Responder | None = None,
) -> CaseResult:
    """Feed ``data`` in ``chunks`` to a copy of ``template``, answering events with ``responder``.

    Only :class:`RemoteProtocolError` is caught, once; any other exception
    propagates (a crash).  After the error the connection must be CLOSED, must
    have queued a CLOSE with the error's code (unless it was CLOSING), and must
    raise nothing more.  Timers are then fired: they must not raise either.
    """
    conn = copy.deepcopy(template)
    conn.data_to_send()
    result = CaseResult()
    sizes = list(chunks) if chunks is not None else [len(data)]
    start = 0
    budget = len(data) + 16  # a frame takes 7 bytes: more events than this means a loop
    pieces = [data[start : (start := start + size)] for size in sizes]
    if eof:
        pieces.append(b"")
    for piece in pieces:
        conn.receive_data(piece, _NOW)
        closing = conn.state is ConnectionState.CLOSING
        try:
            while (event := conn.next_event()) is not None:
                budget -= 1
                if budget < 0:
                    result.violations.append("next_event() keeps returning events")
                    return result
                result.events += 1
                if responder is not None and not isinstance(event, ConnectionClosed):
                    responder.respond(conn, event)
                closing = conn.state is ConnectionState.CLOSING  # 8.4-3: no CLOSE after CLOSE
        except RemoteProtocolError as exc:
            if result.code is not None:
                result.violations.append(f"raised again after {result.code.name}: {exc.code.name}")
            result.code = exc.code
            _check_failed(conn, exc, closing, result)
    conn.get_timer()
    conn.handle_timer(_NOW + 1e6)
    return result


def _check_failed(conn: Connection, exc: RemoteProtocolError, closing: bool, result: CaseResult) -> None:
    """wire-format.md 8.4-3: after a failure, CLOSED, with a CLOSE carrying the code queued."""
    if conn.state is not ConnectionState.CLOSED:
        result.violations.append(f"state {conn.state.value} after {exc.code.name}")
    out = conn.data_to_send()
    if closing:
        return
    frames = _split_frames(out) if out else []
    last = frames[-1] if frames else b""
    try:
        reader = FrameReader(Limits())
        reader.feed(last)
        frame = reader.next_frame()
        close = decode_message(frame, DecodeContext()) if frame is not None else None
    except CodecError:
        close = None
    if not isinstance(close, Close) or close.code != exc.code:
        result.violations.append(f"no CLOSE({exc.code.name}) queued after the failure: {out.hex()}")


# -- the campaign ---------------------------------------------------------------


@dataclass(slots=True)
class FuzzTarget:
    """One place the fuzzer feeds bytes to."""

    #: ``codec:ready``, ``codec:handshake`` or ``<role>:<state>``.
    name: str
    #: Decoding context, for a codec target.
    context: DecodeContext | None = None
    #: State points, for a connection target.
    points: list[StatePoint] = field(default_factory=list)


@dataclass(slots=True)
class Setup:
    """Everything the campaign needs, built deterministically from the seed and the dimension."""

    #: Valid frames of every message type and encoding.
    corpus: tuple[SeedFrame, ...]
    #: The targets, by name.
    targets: dict[str, FuzzTarget]
    #: Target names with their selection weights.
    weights: list[tuple[str, float]]
    #: The application stand-in used on connection targets.
    responder: Responder
    #: The configured dimension.
    dim: int
    #: The receivers' limits.
    limits: Limits


def build_setup(seed: int, dim: int = DEFAULT_DIM, limits: Limits = TIGHT_LIMITS) -> Setup:
    """Build the corpus, the recorded session and the targets.

    The connection states do not depend on ``seed`` (only the corpus does), so
    a connection reproducer replays under any seed.
    """
    config = ConnectionConfig(limits=limits)
    corpus = (*build_corpus(seed, dim), *hostile_frames(dim))
    targets = {
        "codec:ready": FuzzTarget("codec:ready", context=DecodeContext(limits=limits, dim=dim)),
        "codec:handshake": FuzzTarget("codec:handshake", context=DecodeContext(limits=limits)),
    }
    for name, points in sorted({**record_session(dim, config), **record_cluster(dim, limits)}.items()):
        targets[name] = FuzzTarget(name, points=points)
    connection_names = [n for n in targets if ":" in n and n.split(":")[0] in ("master", "worker")]
    coordinator_names = [n for n in targets if n.startswith("coordinator:")]
    weights = [("codec:ready", 0.3), ("codec:handshake", 0.1)]
    weights += [(name, 0.45 / len(connection_names)) for name in connection_names]
    weights += [(name, 0.15 / len(coordinator_names)) for name in coordinator_names]
    return Setup(corpus, targets, weights, Responder(dim), dim, limits)


class _InputTimeout(BaseException):
    """Raised by the alarm when one input runs too long (a hang); not an Exception, so never caught."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise _InputTimeout("input took longer than the per-input timeout")


def memory_bound(limits: Limits, input_length: int) -> int:
    """The most memory one input may make the receive path allocate (wire-format.md 10).

    It depends on the limits and the input length only, never on a declared
    length, dimension or count: decoding is linear in the frame and the
    dimension (10-2), with numpy's per-bit and per-coordinate work arrays
    (up to 64 bytes per body bit) as the constant factor.
    """
    return (
        (1 << 18)
        + 8 * input_length
        + 512 * limits.max_frame_bytes
        + 64 * limits.max_dimension
        + 256 * limits.max_control_bytes
    )


@dataclass(slots=True)
class _Case:
    """One generated input and how it is fed."""

    target: str
    point: int
    data: bytes
    chunks: list[int]
    eof: bool
    ops: list[str]


def _make_case(rng: random.Random, setup: Setup, only: Sequence[str] | None) -> _Case:
    if only:
        name = rng.choice(list(only))
    else:
        name = rng.choices([n for n, _ in setup.weights], [w for _, w in setup.weights])[0]
    target = setup.targets[name]
    point = rng.randrange(len(target.points)) if target.points else 0
    stream = target.points[point].stream if target.points else ()
    data, ops = generate_input(rng, setup.corpus, stream, dim=setup.dim, limits=setup.limits)
    chunks = _chunks(rng, len(data)) if target.points or rng.random() < 0.25 else [len(data)]
    return _Case(name, point, data, chunks, bool(target.points) and rng.random() < 0.3, ops)


def run_case(setup: Setup, target: str, data: bytes, chunks: Sequence[int] | None = None, *, point: int = 0,
             eof: bool = False) -> CaseResult:  # fmt: skip
    """Run one input against a named target; exceptions other than the typed ones propagate.

    Args:
        setup: from :func:`build_setup`.
        target: a target name, ``codec:ready`` or ``worker:model-outstanding`` for example.
        data: the input bytes.
        chunks: chunk sizes (default: all at once).
        point: which state point of a connection target.
        eof: end the stream after the input (connection targets).
    """
    fuzz_target = setup.targets[target]
    if fuzz_target.context is not None:
        return run_codec(data, fuzz_target.context, chunks)
    state_point = fuzz_target.points[point]
    if isinstance(state_point.template, Coordinator):
        return run_coordinator(state_point, data, chunks, eof=eof)
    return run_connection(state_point.template, data, chunks, eof=eof, responder=setup.responder)


def _signature(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno}" if frames else "?"
    return f"{type(exc).__name__}@{where}"


def minimize(reproduces: Callable[[bytes], bool], data: bytes, budget: int = 3000) -> bytes:
    """Shrink ``data`` while ``reproduces`` holds: drop whole frames, then chunks of halving size.

    Args:
        reproduces: True if the candidate still shows the same failure.
        data: an input that reproduces.
        budget: the most candidates tried.
    """
    tries = 0

    def attempt(candidate: bytes) -> bool:
        nonlocal tries
        tries += 1
        return tries <= budget and reproduces(candidate)

    frames = _safe_frames(data)
    index = 0
    while len(frames) > 1 and index < len(frames):
        candidate = b"".join(frames[:index] + frames[index + 1 :])
        if attempt(candidate):
            frames = frames[:index] + frames[index + 1 :]
            data = candidate
        else:
            index += 1
    size = max(1, len(data) // 2)
    while size >= 1 and tries < budget:
        start = 0
        while start < len(data) and tries < budget:
            candidate = data[:start] + data[start + size :]
            if candidate != data and attempt(candidate):
                data = candidate
            else:
                start += size
        size //= 2
    return data


def _safe_frames(data: bytes) -> list[bytes]:
    """Split at frame boundaries as far as the length fields allow; the tail is one piece."""
    frames: list[bytes] = []
    while len(data) >= HEADER_SIZE:
        end = HEADER_SIZE + int.from_bytes(data[3:7], "little")
        if end > len(data):
            break
        frames.append(data[:end])
        data = data[end:]
    if data:
        frames.append(data)
    return frames


@dataclass(frozen=True, slots=True, kw_only=True)
class FuzzOptions:
    """Parameters of a campaign."""

    #: Number of inputs.
    inputs: int = 10_000
    #: The seed: input i depends only on (seed, i).
    seed: int = 0
    #: Stop after this many seconds even if inputs remain (None: no time bound).
    seconds: float | None = None
    #: Worker processes; each runs an interleaved share of the input blocks.
    processes: int = 1
    #: The configured model dimension.
    dim: int = DEFAULT_DIM
    #: Sample the memory peak with tracemalloc.
    memory: bool = False
    #: With ``memory``, sample one input in this many.
    memory_every: int = 64
    #: Seconds one input may take before it counts as a hang (0: no alarm).
    timeout: float = 10.0
    #: Only these targets (None: all, weighted).
    targets: tuple[str, ...] | None = None
    #: Minimize the first crash of each signature.
    minimize: bool = True

    def __post_init__(self) -> None:
        if self.inputs < 0 or self.processes < 1 or self.memory_every < 1 or self.timeout < 0:
            raise ValueError("inputs >= 0, processes >= 1, memory_every >= 1 and timeout >= 0 are required")


@dataclass(slots=True)
class _Tally:
    """Counts of one process, merged at the end."""

    inputs: int = 0
    per_target: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    codes_by_target: dict[str, Counter[str]] = field(default_factory=dict)
    operators: Counter[str] = field(default_factory=Counter)
    events: int = 0
    crashes: dict[str, dict[str, Any]] = field(default_factory=dict)
    crash_count: int = 0
    violations: dict[str, dict[str, Any]] = field(default_factory=dict)
    violation_count: int = 0
    memory_samples: int = 0
    memory_peak: int = 0
    memory_worst_fraction: float = 0.0
    memory_violations: list[dict[str, Any]] = field(default_factory=list)
    slowest: float = 0.0
    slowest_case: dict[str, Any] = field(default_factory=dict)
    timed_out: bool = False


def _blocks(options: FuzzOptions, worker: int) -> Iterator[int]:
    total = -(-options.inputs // BLOCK)
    yield from range(worker, total, options.processes)


@contextlib.contextmanager
def _alarm(timeout: float) -> Iterator[bool]:
    """Install the per-input alarm if the platform and thread allow it."""
    usable = (
        timeout > 0 and hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    )
    if not usable:
        yield False
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    try:
        yield True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _describe(case: _Case) -> dict[str, Any]:
    return {
        "target": case.target,
        "point": case.point,
        "input_hex": case.data.hex(),
        "chunks": case.chunks,
        "eof": case.eof,
        "operators": case.ops,
    }


def _run_worker(options: FuzzOptions, worker: int) -> _Tally:
    """Run this worker's share of the blocks; return its counts."""
    setup = build_setup(options.seed, options.dim)
    tally = _Tally()
    deadline = None if options.seconds is None else time.monotonic() + options.seconds
    with _alarm(options.timeout) as alarm:
        for block in _blocks(options, worker):
            if deadline is not None and time.monotonic() >= deadline:
                tally.timed_out = True
                break
            rng = random.Random(f"aiodq-fuzz:{options.seed}:{block}")
            for index in range(block * BLOCK, min((block + 1) * BLOCK, options.inputs)):
                case = _make_case(rng, setup, options.targets)
                sample = options.memory and index % options.memory_every == 0
                _run_one(setup, case, tally, options, alarm=alarm, sample=sample)
    return tally


def _run_one(setup: Setup, case: _Case, tally: _Tally, options: FuzzOptions, *, alarm: bool,
             sample: bool) -> None:  # fmt: skip
    tally.inputs += 1
    tally.per_target[case.target] += 1
    tally.operators.update(case.ops)
    started = time.perf_counter()
    if sample:
        tracemalloc.start()
        baseline = tracemalloc.get_traced_memory()[0]
    try:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, options.timeout)
        try:
            result = run_case(setup, case.target, case.data, case.chunks, point=case.point, eof=case.eof)
        finally:
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except (Exception, _InputTimeout) as exc:  # the point: anything else is a crash
        if sample:
            tracemalloc.stop()
        _record_crash(setup, case, exc, tally, options, alarm=alarm)
        return
    elapsed = time.perf_counter() - started
    if sample:
        peak = tracemalloc.get_traced_memory()[1] - baseline
        tracemalloc.stop()
        bound = memory_bound(setup.limits, len(case.data))
        tally.memory_samples += 1
        tally.memory_peak = max(tally.memory_peak, peak)
        tally.memory_worst_fraction = max(tally.memory_worst_fraction, peak / bound)
        if peak > bound and len(tally.memory_violations) < 20:
            tally.memory_violations.append({**_describe(case), "peak_bytes": peak, "bound_bytes": bound})
    elif elapsed > tally.slowest:
        tally.slowest = elapsed
        tally.slowest_case = {**_describe(case), "seconds": elapsed}
    tally.events += result.events
    if result.code is None:
        tally.accepted[case.target] += 1
    else:
        tally.codes[result.code.name] += 1
        tally.codes_by_target.setdefault(case.target, Counter())[result.code.name] += 1
    if result.violations:
        tally.violation_count += 1
        key = f"{case.target}:{result.violations[0].split(':')[0]}"
        entry = tally.violations.setdefault(key, {**_describe(case), "detail": result.violations, "count": 0})
        entry["count"] += 1


def _record_crash(setup: Setup, case: _Case, exc: BaseException, tally: _Tally, options: FuzzOptions, *,
                  alarm: bool) -> None:  # fmt: skip
    tally.crash_count += 1
    signature = "Hang" if isinstance(exc, _InputTimeout) else _signature(exc)
    if signature in tally.crashes:
        tally.crashes[signature]["count"] += 1
        return
    entry: dict[str, Any] = {
        "signature": signature,
        "count": 1,
        "exception": f"{type(exc).__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc)),
        **_describe(case),
    }
    if options.minimize and signature != "Hang":
        whole_chunks = None if case.target.startswith("codec:") else [len(case.data)]
        if _crash_signature(setup, case, case.data, whole_chunks, options=options, alarm=alarm) == signature:
            entry["minimal_chunks"] = "whole"
        else:
            whole_chunks = case.chunks  # it needs this split: keep it and do not shrink
        if whole_chunks is case.chunks:
            entry["minimal_hex"] = case.data.hex()
        else:

            def reproduces(candidate: bytes) -> bool:
                chunks = None if whole_chunks is None else [len(candidate)]
                return (
                    _crash_signature(setup, case, candidate, chunks, options=options, alarm=alarm)
                    == signature
                )

            entry["minimal_hex"] = minimize(reproduces, case.data).hex()
    tally.crashes[signature] = entry


def _crash_signature(
    setup: Setup, case: _Case, data: bytes, chunks: list[int] | None, *, options: FuzzOptions, alarm: bool
) -> str | None:
    try:
        if alarm:
            signal.setitimer(signal.ITIMER_REAL, options.timeout)
        try:
            run_case(setup, case.target, data, chunks, point=case.point, eof=case.eof)
        finally:
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
    except _InputTimeout:
        return "Hang"
    except Exception as exc:
        return _signature(exc)
    return None


def _merge(tallies: Sequence[_Tally]) -> _Tally:
    total = _Tally()
    for tally in tallies:
        total.inputs += tally.inputs
        total.per_target.update(tally.per_target)
        total.accepted.update(tally.accepted)
        total.codes.update(tally.codes)
        for name, codes in tally.codes_by_target.items():
            total.codes_by_target.setdefault(name, Counter()).update(codes)
        total.operators.update(tally.operators)
        total.events += tally.events
        total.crash_count += tally.crash_count
        for key, crash in tally.crashes.items():
            if key in total.crashes:
                total.crashes[key]["count"] += crash["count"]
            else:
                total.crashes[key] = crash
        total.violation_count += tally.violation_count
        for key, violation in tally.violations.items():
            if key in total.violations:
                total.violations[key]["count"] += violation["count"]
            else:
                total.violations[key] = violation
        total.memory_samples += tally.memory_samples
        total.memory_peak = max(total.memory_peak, tally.memory_peak)
        total.memory_worst_fraction = max(total.memory_worst_fraction, tally.memory_worst_fraction)
        total.memory_violations += tally.memory_violations
        if tally.slowest > total.slowest:
            total.slowest, total.slowest_case = tally.slowest, tally.slowest_case
        total.timed_out = total.timed_out or tally.timed_out
    return total


def run_campaign(options: FuzzOptions) -> dict[str, Any]:
    """Run a campaign and return its report (a JSON-ready dict).

    The report holds the inputs run, per-target counts (inputs, accepted,
    error codes), the exceptions by error code, the crashes (signature, count,
    exception, traceback, input and minimal reproducer in hex), the oracle
    violations, the memory samples, the slowest input, inputs per second and
    wall time.
    """
    started = time.perf_counter()
    if options.processes == 1:
        tallies = [_run_worker(options, 0)]
    else:
        with ProcessPoolExecutor(max_workers=options.processes) as pool:
            futures = [pool.submit(_run_worker, options, worker) for worker in range(options.processes)]
            tallies = [future.result() for future in futures]
    wall = time.perf_counter() - started
    total = _merge(tallies)
    targets = {
        name: {
            "inputs": total.per_target[name],
            "accepted": total.accepted[name],
            "rejected": total.per_target[name] - total.accepted[name],
            "codes": dict(sorted(total.codes_by_target.get(name, Counter()).items())),
        }
        for name in sorted(total.per_target)
    }
    return {
        "seed": options.seed,
        "inputs_requested": options.inputs,
        "inputs": total.inputs,
        "stopped_by": "seconds" if total.timed_out else "inputs",
        "processes": options.processes,
        "dim": options.dim,
        "limits": {
            "max_frame_bytes": TIGHT_LIMITS.max_frame_bytes,
            "max_dimension": TIGHT_LIMITS.max_dimension,
            "max_control_bytes": TIGHT_LIMITS.max_control_bytes,
            "max_reason_bytes": TIGHT_LIMITS.max_reason_bytes,
        },
        "targets": targets,
        "exceptions_by_code": dict(total.codes.most_common()),
        "accepted": sum(total.accepted.values()),
        "frames_decoded": total.events,
        "operators": dict(total.operators.most_common()),
        "crash_count": total.crash_count,
        "crashes": list(total.crashes.values()),
        "violation_count": total.violation_count,
        "violations": list(total.violations.values()),
        "memory": {
            "enabled": options.memory,
            "samples": total.memory_samples,
            "max_peak_bytes": total.memory_peak,
            "worst_peak_fraction_of_bound": round(total.memory_worst_fraction, 4),
            "bound_for_empty_input_bytes": memory_bound(TIGHT_LIMITS, 0),
            "violations": total.memory_violations,
        },
        "timeout_seconds": options.timeout,
        "slowest_input_seconds": round(total.slowest, 6),
        "slowest_input": total.slowest_case,
        "inputs_per_second": round(total.inputs / wall, 1) if wall > 0 else None,
        "wall_seconds": round(wall, 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: run a campaign, print the JSON report; exit status 1 if anything crashed."""
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="number of inputs (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this many seconds")
    parser.add_argument("--report", default=None, help="also write the JSON report to this path")
    parser.add_argument("--workers-processes", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--dim", type=int, default=DEFAULT_DIM, help=f"configured dimension ({DEFAULT_DIM})")
    parser.add_argument("--memory", action="store_true", help="sample memory peaks with tracemalloc")
    parser.add_argument("--memory-every", type=int, default=64, help="with --memory, one input in N (64)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per input before a hang (10)")
    parser.add_argument("--target", action="append", default=None, help="only this target (repeatable)")
    args = parser.parse_args(argv)
    options = FuzzOptions(
        inputs=args.inputs,
        seed=args.seed,
        seconds=args.seconds,
        processes=args.workers_processes,
        dim=args.dim,
        memory=args.memory,
        memory_every=args.memory_every,
        timeout=args.timeout,
        targets=tuple(args.target) if args.target else None,
    )
    if options.targets:
        known = build_setup(options.seed, options.dim).targets
        unknown = [name for name in options.targets if name not in known]
        if unknown:
            parser.error(f"unknown targets {unknown}; known: {sorted(known)}")
    report = run_campaign(options)
    text = json.dumps(report, indent=2)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    sys.stdout.write(text + "\n")
    return 1 if report["crash_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
