"""Events: one per message of wire-format.md section 7, plus the end of the stream.

Events are symmetric: what one side passes to ``send()`` the other side gets
from ``next_event()``, equal field for field.  They are frozen, keyword-only
dataclasses that validate their fields on construction.

Each event is named after its message; three carry a ``Message`` suffix
(:class:`ConfigMessage`, :class:`ModelMessage`, :class:`ErrorMessage`) because
"config", "model" and "error" name other things in aiodq (the training
configuration, the trained model, the exception classes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TypeAlias

from .registry import ALL_ENCODINGS
from .vectors import RawVector, Vector

__all__ = [
    "AuthChallenge",
    "AuthConfirm",
    "AuthResponse",
    "Close",
    "ConfigMessage",
    "ConnectionClosed",
    "ErrorMessage",
    "Event",
    "FullGradient",
    "Gradient",
    "Heartbeat",
    "Hello",
    "MAX_SHARDS",
    "ModelMessage",
    "Snapshot",
    "SnapshotGradient",
    "Welcome",
]

_MAX_U63 = (1 << 63) - 1


def _check_counter(name: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= _MAX_U63:
        raise ValueError(f"{name} must be an integer in [0, 2**63 - 1], got {value!r}")


def _check_code(code: int) -> None:
    if not isinstance(code, int) or not 0 <= code <= 0xFFFF:
        raise ValueError(f"an error code is an integer in [0, 65535], got {code!r}")


#: The largest shard count a HELLO may claim (7.1).
MAX_SHARDS = 2**31 - 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello:
    """Worker to master, first message: the versions and encodings it speaks (7.1)."""

    #: Lowest protocol version the worker speaks.
    min_version: int = 1
    #: Highest protocol version the worker speaks.
    max_version: int = 1
    #: Vector encodings the worker can decode.
    encodings: frozenset[int] = ALL_ENCODINGS
    #: A free-form name for logs (at most 255 UTF-8 bytes).
    name: str = ""
    #: The shard the worker holds, ``(index, count)``: shard ``index`` of ``count`` (7.1), or None.
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.min_version <= self.max_version <= 255:
            raise ValueError("need 1 <= min_version <= max_version <= 255")
        if self.shard is not None:
            index, count = self.shard
            if not (1 <= count <= MAX_SHARDS and 0 <= index < count):
                raise ValueError(f"shard {index}/{count}: need 0 <= index < count <= {MAX_SHARDS}")
            object.__setattr__(self, "shard", (int(index), int(count)))
        object.__setattr__(self, "encodings", frozenset(self.encodings))
        if any(not 0 <= e <= 15 for e in self.encodings):
            raise ValueError("encodings are numbers from 0 to 15")
        if len(self.name.encode()) > 255:
            raise ValueError("name is longer than 255 UTF-8 bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome:
    """Master to worker: the chosen version, the worker's id, the master's encodings (7.2)."""

    #: The negotiated protocol version.
    version: int = 1
    #: The number the master gives this worker for the session.
    worker_id: int = 0
    #: Vector encodings the master can decode.
    encodings: frozenset[int] = ALL_ENCODINGS

    def __post_init__(self) -> None:
        if not 1 <= self.version <= 255:
            raise ValueError("version must be between 1 and 255")
        _check_counter("worker_id", self.worker_id)
        object.__setattr__(self, "encodings", frozenset(self.encodings))
        if any(not 0 <= e <= 15 for e in self.encodings):
            raise ValueError("encodings are numbers from 0 to 15")


#: Values a CONFIG parameter may take.
ParamValue: TypeAlias = bool | int | float | str


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigMessage:
    """Master to worker: the run configuration (7.3)."""

    #: Model dimension d; every later vector has exactly d coordinates.
    dim: int
    #: Algorithm name, for example ``"asylpg"``.
    algorithm: str
    #: Algorithm parameters: string keys, scalar values.
    params: dict[str, ParamValue] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive integer, got {self.dim!r}")
        if not isinstance(self.algorithm, str) or not self.algorithm:
            raise ValueError("algorithm must be a non-empty string")
        params = dict(self.params)
        for key, value in params.items():
            if not isinstance(key, str) or not isinstance(value, bool | int | float | str):
                raise ValueError(f"parameter {key!r}: keys are strings, values bool, int, float or str")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"parameter {key!r} is not finite")
        object.__setattr__(self, "params", params)


def _check_raw(vector: object, what: str) -> None:
    if not isinstance(vector, RawVector):
        raise ValueError(f"{what} carries a full-precision RawVector")


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Master to worker: start of an epoch, with the snapshot x_snap (7.4)."""

    #: Epoch number, strictly increasing.
    epoch: int
    #: The snapshot, in full precision.
    vector: RawVector

    def __post_init__(self) -> None:
        _check_counter("epoch", self.epoch)
        _check_raw(self.vector, "SNAPSHOT")


@dataclass(frozen=True, slots=True, kw_only=True)
class SnapshotGradient:
    """Worker to master: the sum of local gradients at x_snap, and local loss (7.5)."""

    #: The epoch of the SNAPSHOT answered.
    epoch: int
    #: Number of local samples n_k.
    samples: int
    #: Sum of the local losses at x_snap.
    loss: float
    #: Number of local samples classified correctly at x_snap (0 if not applicable).
    correct: int
    #: Sum of the local gradients at x_snap, in full precision.
    vector: RawVector

    def __post_init__(self) -> None:
        _check_counter("epoch", self.epoch)
        _check_counter("samples", self.samples)
        _check_counter("correct", self.correct)
        if not math.isfinite(self.loss):
            raise ValueError("loss must be finite")
        _check_raw(self.vector, "SNAPSHOT_GRADIENT")


@dataclass(frozen=True, slots=True, kw_only=True)
class FullGradient:
    """Master to worker: the full gradient g_snap at the snapshot (7.6)."""

    #: The current epoch.
    epoch: int
    #: g_snap, in full precision.
    vector: RawVector

    def __post_init__(self) -> None:
        _check_counter("epoch", self.epoch)
        _check_raw(self.vector, "FULL_GRADIENT")


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelMessage:
    """Master to worker: a (quantized) model to compute the next gradient on (7.7)."""

    #: The current epoch.
    epoch: int
    #: The model version t, never decreasing on a connection.
    version: int
    #: The model, or its difference from the snapshot if ``relative``.
    vector: Vector
    #: True if ``vector`` is ``x - x_snap`` (the RELATIVE flag).
    relative: bool = False

    def __post_init__(self) -> None:
        _check_counter("epoch", self.epoch)
        _check_counter("version", self.version)


@dataclass(frozen=True, slots=True, kw_only=True)
class Gradient:
    """Worker to master: a (quantized) gradient computed on model ``version`` (7.8)."""

    #: The epoch of the MODEL answered.
    epoch: int
    #: The version of the MODEL answered.
    version: int
    #: The gradient.
    vector: Vector

    def __post_init__(self) -> None:
        _check_counter("epoch", self.epoch)
        _check_counter("version", self.version)


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat:
    """Either direction: proof of life, no content (7.9)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorMessage:
    """Either direction: one message was rejected; the session goes on (7.10)."""

    #: The error code (see :class:`aiodq.errors.ErrorCode`).
    code: int
    #: Epoch of the rejected message (0 if none).
    epoch: int = 0
    #: Version of the rejected message (0 if none).
    version: int = 0
    #: Human-readable text.
    reason: str = ""

    def __post_init__(self) -> None:
        _check_code(self.code)
        _check_counter("epoch", self.epoch)
        _check_counter("version", self.version)


@dataclass(frozen=True, slots=True, kw_only=True)
class Close:
    """Either direction: the end of the session, with the reason (7.11)."""

    #: The error code; 0 (NO_ERROR) for a normal end.
    code: int = 0
    #: Human-readable text.
    reason: str = ""

    def __post_init__(self) -> None:
        _check_code(self.code)


def _check_bytes(name: str, value: bytes, size: int) -> None:
    if not isinstance(value, bytes) or len(value) != size:
        raise ValueError(f"{name} must be {size} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthChallenge:
    """Master to worker: the master's nonce (7.12).  Sent and checked by the connection itself."""

    #: 32 fresh random bytes.
    nonce: bytes

    def __post_init__(self) -> None:
        _check_bytes("nonce", self.nonce, 32)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResponse:
    """Worker to master: the worker's nonce and proof (7.13).  Sent and checked by the connection."""

    #: 32 fresh random bytes.
    nonce: bytes
    #: HMAC-SHA256 of the worker label and both nonces (aiodq.protocol.handshake).
    mac: bytes

    def __post_init__(self) -> None:
        _check_bytes("nonce", self.nonce, 32)
        _check_bytes("mac", self.mac, 32)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthConfirm:
    """Master to worker: the master's proof (7.14).  Sent and checked by the connection."""

    #: HMAC-SHA256 of the master label and both nonces (aiodq.protocol.handshake).
    mac: bytes

    def __post_init__(self) -> None:
        _check_bytes("mac", self.mac, 32)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionClosed:
    """Local event: the byte stream ended (not a message)."""

    #: True if both sides exchanged CLOSE before the end.
    clean: bool = False
    #: The code of the CLOSE that ended the session (either direction), TIMEOUT
    #: for a local timeout, or None if the stream just stopped.
    code: int | None = None
    #: Why a local timeout ended it (the CLOSE's reason it sent), else empty; not compared.
    reason: str = field(default="", compare=False)


#: Any event.
Event: TypeAlias = (
    Hello
    | Welcome
    | ConfigMessage
    | Snapshot
    | SnapshotGradient
    | FullGradient
    | ModelMessage
    | Gradient
    | Heartbeat
    | ErrorMessage
    | Close
    | AuthChallenge
    | AuthResponse
    | AuthConfirm
    | ConnectionClosed
)
