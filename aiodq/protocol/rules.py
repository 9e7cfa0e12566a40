"""The rules of a session, as tables and checks (wire-format.md 8.1 and 8.2).

Which side sends which message in which state (:data:`SENDER`, :data:`STATES`),
and the checks of epochs, versions and request/answer pairing that every
message passes before it is sent or delivered.  :class:`SessionRules` is mixed
into :class:`~aiodq.protocol.connection.Connection`; it reads the connection's
state and never changes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..codec.events import (
    Event,
    FullGradient,
    Gradient,
    Hello,
    ModelMessage,
    Snapshot,
    SnapshotGradient,
    Welcome,
)
from ..codec.registry import MessageType
from ..errors import ErrorCode

__all__ = [
    "AUTH_MESSAGES",
    "LIVE_STATES",
    "SENDER",
    "STATES",
    "SUPPORTED_VERSIONS",
    "ConnectionState",
    "EpochState",
    "Role",
    "SessionRules",
    "ViolationError",
]

#: Protocol versions this implementation speaks.
SUPPORTED_VERSIONS = frozenset({1})


class Role(Enum):
    """Which end of the connection this is."""

    MASTER = "master"
    WORKER = "worker"


class ConnectionState(Enum):
    """Session states (wire-format.md 8.1)."""

    #: Before WELCOME: the worker has to send HELLO, the master to answer it.
    HANDSHAKE = "handshake"
    #: WELCOME exchanged; the master has to send CONFIG.
    CONFIGURING = "configuring"
    #: CONFIG exchanged: epochs run.
    READY = "ready"
    #: This side sent CLOSE and waits for the peer's CLOSE or the end of the stream.
    CLOSING = "closing"
    #: The session is over.
    CLOSED = "closed"


# wire-format.md 8.1: which side sends which message, and in which states.
SENDER: dict[MessageType, Role | None] = {
    MessageType.HELLO: Role.WORKER,
    MessageType.WELCOME: Role.MASTER,
    MessageType.CONFIG: Role.MASTER,
    MessageType.SNAPSHOT: Role.MASTER,
    MessageType.SNAPSHOT_GRADIENT: Role.WORKER,
    MessageType.FULL_GRADIENT: Role.MASTER,
    MessageType.MODEL: Role.MASTER,
    MessageType.GRADIENT: Role.WORKER,
    MessageType.HEARTBEAT: None,
    MessageType.ERROR: None,
    MessageType.CLOSE: None,
    MessageType.AUTH_CHALLENGE: Role.MASTER,
    MessageType.AUTH_RESPONSE: Role.WORKER,
    MessageType.AUTH_CONFIRM: Role.MASTER,
}
#: Messages the connection sends and consumes itself (wire-format.md 7.12-7.14).
AUTH_MESSAGES = frozenset({MessageType.AUTH_CHALLENGE, MessageType.AUTH_RESPONSE, MessageType.AUTH_CONFIRM})
LIVE_STATES = frozenset({ConnectionState.CONFIGURING, ConnectionState.READY})
STATES: dict[MessageType, frozenset[ConnectionState]] = {
    MessageType.HELLO: frozenset({ConnectionState.HANDSHAKE}),
    MessageType.WELCOME: frozenset({ConnectionState.HANDSHAKE}),
    MessageType.CONFIG: frozenset({ConnectionState.CONFIGURING}),
    MessageType.SNAPSHOT: frozenset({ConnectionState.READY}),
    MessageType.SNAPSHOT_GRADIENT: frozenset({ConnectionState.READY}),
    MessageType.FULL_GRADIENT: frozenset({ConnectionState.READY}),
    MessageType.MODEL: frozenset({ConnectionState.READY}),
    MessageType.GRADIENT: frozenset({ConnectionState.READY}),
    MessageType.HEARTBEAT: LIVE_STATES,
    MessageType.ERROR: LIVE_STATES,
    MessageType.CLOSE: frozenset(
        {
            ConnectionState.HANDSHAKE,
            ConnectionState.CONFIGURING,
            ConnectionState.READY,
        }
    ),
    MessageType.AUTH_CHALLENGE: frozenset({ConnectionState.HANDSHAKE}),
    MessageType.AUTH_RESPONSE: frozenset({ConnectionState.HANDSHAKE}),
    MessageType.AUTH_CONFIRM: frozenset({ConnectionState.HANDSHAKE}),
}


@dataclass(slots=True)
class EpochState:
    """Where the session stands inside the epochs (wire-format.md 8.2)."""

    #: The epoch of the last SNAPSHOT, or None before the first.
    current: int | None = None
    #: True from SNAPSHOT until its SNAPSHOT_GRADIENT.
    snapshot_pending: bool = False
    #: True once FULL_GRADIENT was sent in the current epoch.
    full_gradient_sent: bool = False
    #: True once a MODEL of the current epoch was sent.
    model_sent: bool = False
    #: (epoch, version) of the MODEL awaiting its GRADIENT.
    outstanding: tuple[int, int] | None = None
    #: Version of the last MODEL, or None before the first.
    last_version: int | None = None


class ViolationError(Exception):
    """A message order rule broken; the caller turns it into Local or Remote error."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class SessionRules:
    """The checks of sections 8.1 and 8.2, over the state of the connection they are mixed into."""

    role: Role
    _state: ConnectionState
    _state_before_close: ConnectionState
    _epoch: EpochState
    _offered: tuple[int, int] | None
    _dim: int | None
    _config_encodings: frozenset[int]

    @property
    def _peer_role(self) -> Role:
        return Role.WORKER if self.role is Role.MASTER else Role.MASTER

    def _check_order(self, message_type: MessageType, *, sender: Role) -> None:
        """wire-format.md 8.1: who may send the message, and in which state."""
        if self._state is ConnectionState.CLOSED or (
            self._state is ConnectionState.CLOSING and sender is self.role
        ):
            raise ViolationError(f"{message_type.name} after CLOSE", ErrorCode.UNEXPECTED_MESSAGE)
        owner = SENDER[message_type]
        if owner is not None and owner is not sender:
            raise ViolationError(
                f"a {sender.value} does not send {message_type.name}", ErrorCode.UNEXPECTED_MESSAGE
            )
        state: ConnectionState = self._state
        if state is ConnectionState.CLOSING:  # the peer may still be sending
            state = self._state_before_close
        if state not in STATES[message_type]:
            raise ViolationError(
                f"{message_type.name} not allowed in state {state.value}", ErrorCode.UNEXPECTED_MESSAGE
            )

    def _check_content(self, event: Event, *, sender: Role) -> None:
        """wire-format.md 8.2: epochs, versions and the request/answer pairing."""
        epoch = self._epoch
        vector = getattr(event, "vector", None)
        # wire-format.md 5.2: after CONFIG every vector has the configured dimension
        # (the decoder checks received ones; this checks what we send).
        ours = sender is self.role
        if vector is not None and ours and self._dim is not None and vector.dim != self._dim:
            raise ViolationError(f"dimension {vector.dim}, configured {self._dim}", ErrorCode.WRONG_DIMENSION)
        if isinstance(event, Hello):
            # wire-format.md 7.1: one HELLO per session.
            if self._offered is not None:
                raise ViolationError("a second HELLO", ErrorCode.UNEXPECTED_MESSAGE)
            if sender is self.role:
                self._check_announced(event.encodings)
                return
            common = SUPPORTED_VERSIONS & set(range(event.min_version, event.max_version + 1))
            if not common:
                raise ViolationError(
                    f"no common version: offered {event.min_version}..{event.max_version}",
                    ErrorCode.UNSUPPORTED_VERSION,
                )
        elif isinstance(event, Welcome):
            offered = self._offered
            # wire-format.md 7.2: WELCOME answers a HELLO.
            if offered is None:
                raise ViolationError("WELCOME before HELLO", ErrorCode.UNEXPECTED_MESSAGE)
            if sender is self.role:
                self._check_announced(event.encodings)
            if not offered[0] <= event.version <= offered[1]:
                raise ViolationError(
                    f"version {event.version} was not offered", ErrorCode.UNSUPPORTED_VERSION
                )
            if event.version not in SUPPORTED_VERSIONS:
                raise ViolationError(
                    f"version {event.version} is not supported", ErrorCode.UNSUPPORTED_VERSION
                )
        elif isinstance(event, Snapshot):
            if epoch.snapshot_pending:
                raise ViolationError(
                    "SNAPSHOT before the previous one was answered", ErrorCode.UNEXPECTED_MESSAGE
                )
            if epoch.current is not None and event.epoch <= epoch.current:
                raise ViolationError(
                    f"SNAPSHOT epoch {event.epoch} not above {epoch.current}", ErrorCode.UNKNOWN_EPOCH
                )
        elif isinstance(event, SnapshotGradient):
            if not epoch.snapshot_pending:
                raise ViolationError(
                    "SNAPSHOT_GRADIENT without a pending SNAPSHOT", ErrorCode.UNEXPECTED_MESSAGE
                )
            if event.epoch != epoch.current:
                raise ViolationError(f"SNAPSHOT_GRADIENT for epoch {event.epoch}", ErrorCode.UNKNOWN_EPOCH)
            if epoch.outstanding is not None:
                raise ViolationError(
                    "SNAPSHOT_GRADIENT before the GRADIENT it owes", ErrorCode.UNEXPECTED_MESSAGE
                )
        elif isinstance(event, FullGradient):
            self._check_in_epoch(event.epoch, "FULL_GRADIENT")
            if epoch.full_gradient_sent or epoch.model_sent:
                raise ViolationError(
                    "FULL_GRADIENT only once, before the epoch's first MODEL", ErrorCode.UNEXPECTED_MESSAGE
                )
        elif isinstance(event, ModelMessage):
            self._check_in_epoch(event.epoch, "MODEL")
            if epoch.outstanding is not None:
                raise ViolationError(
                    "MODEL before the previous one was answered", ErrorCode.UNEXPECTED_MESSAGE
                )
            if epoch.last_version is not None and event.version < epoch.last_version:
                raise ViolationError(
                    f"MODEL version {event.version} below {epoch.last_version}", ErrorCode.VERSION_MISMATCH
                )
        elif isinstance(event, Gradient):
            if epoch.outstanding is None:
                raise ViolationError("GRADIENT without a MODEL to answer", ErrorCode.UNEXPECTED_MESSAGE)
            model_epoch, model_version = epoch.outstanding
            if event.epoch != model_epoch:
                raise ViolationError(
                    f"GRADIENT epoch {event.epoch}, the MODEL had {model_epoch}", ErrorCode.UNKNOWN_EPOCH
                )
            if event.version > model_version:
                raise ViolationError(
                    f"GRADIENT version {event.version} is from the future (MODEL {model_version})",
                    ErrorCode.FUTURE_VERSION,
                )
            if event.version < model_version:
                raise ViolationError(
                    f"GRADIENT version {event.version}, the MODEL had {model_version}",
                    ErrorCode.VERSION_MISMATCH,
                )

    def _check_announced(self, encodings: frozenset[int]) -> None:
        """What this side announces it can decode must be within what it is configured to decode."""
        unknown = encodings - self._config_encodings
        if unknown:
            raise ViolationError(
                f"announcing encodings {sorted(unknown)} that this connection does not decode",
                ErrorCode.UNSUPPORTED_ENCODING,
            )

    def _check_in_epoch(self, event_epoch: int, what: str) -> None:
        epoch = self._epoch
        if epoch.current is None or epoch.snapshot_pending:
            raise ViolationError(
                f"{what} before the epoch's snapshot phase ended", ErrorCode.UNEXPECTED_MESSAGE
            )
        if event_epoch != epoch.current:
            raise ViolationError(
                f"{what} epoch {event_epoch}, current {epoch.current}", ErrorCode.UNKNOWN_EPOCH
            )
