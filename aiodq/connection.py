"""Sans-I/O master and worker connections (wire-format.md section 8).

A connection turns received bytes into events and events to send into bytes,
and enforces the message order of the protocol.  It does no I/O and reads no
clock: the caller passes ``now`` (seconds, any monotonic origin) and asks
:meth:`Connection.get_timer` when to call :meth:`Connection.handle_timer`.

Usage, on either side::

    conn.receive_data(data, now)          # b"" when the peer closed the stream
    while (event := conn.next_event()) is not None:
        ...                               # react; conn.send(reply, now)
    transport.write(conn.data_to_send())

The receive path raises only :class:`~aiodq.errors.RemoteProtocolError`; after
it has raised, the connection is closed and ``data_to_send()`` holds the CLOSE
frame that tells the peer why.  :meth:`send` raises
:class:`~aiodq.errors.LocalProtocolError` for anything the protocol forbids
and leaves the connection unchanged.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass
from enum import Enum

from .auth import NONCE_SIZE, master_mac, verify, worker_mac
from .config import ConnectionConfig
from .errors import CodecError, ErrorCode, LocalProtocolError, RemoteProtocolError
from .events import (
    ALL_ENCODINGS,
    AuthChallenge,
    AuthConfirm,
    AuthResponse,
    Close,
    Config,
    ConnectionClosed,
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
from .vectors import DenseQuantized
from .wire.frames import HEADER_SIZE, Frame, FrameReader, MessageType
from .wire.messages import DecodeContext, decode_message, encode_message, message_type_of
from .wire.payload import Encoding, encoding_of

__all__ = [
    "SUPPORTED_VERSIONS",
    "ConnectionState",
    "MasterConnection",
    "Role",
    "WorkerConnection",
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
_SENDER: dict[MessageType, Role | None] = {
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
_AUTH = frozenset({MessageType.AUTH_CHALLENGE, MessageType.AUTH_RESPONSE, MessageType.AUTH_CONFIRM})
_LIVE = frozenset({ConnectionState.CONFIGURING, ConnectionState.READY})
_STATES: dict[MessageType, frozenset[ConnectionState]] = {
    MessageType.HELLO: frozenset({ConnectionState.HANDSHAKE}),
    MessageType.WELCOME: frozenset({ConnectionState.HANDSHAKE}),
    MessageType.CONFIG: frozenset({ConnectionState.CONFIGURING}),
    MessageType.SNAPSHOT: frozenset({ConnectionState.READY}),
    MessageType.SNAPSHOT_GRADIENT: frozenset({ConnectionState.READY}),
    MessageType.FULL_GRADIENT: frozenset({ConnectionState.READY}),
    MessageType.MODEL: frozenset({ConnectionState.READY}),
    MessageType.GRADIENT: frozenset({ConnectionState.READY}),
    MessageType.HEARTBEAT: _LIVE,
    MessageType.ERROR: _LIVE,
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
class _Epoch:
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


class _ViolationError(Exception):
    """A message order rule broken; the caller turns it into Local or Remote error."""

    def __init__(self, message: str, code: ErrorCode) -> None:
        super().__init__(message)
        self.code = code


class Connection:
    """What the master and worker connections share; use one of the subclasses."""

    role: Role

    def __init__(self, config: ConnectionConfig | None = None, *, now: float = 0.0) -> None:
        self._config = config or ConnectionConfig()
        self._reader = FrameReader(self._config.limits)
        # Encoded frames waiting for data_to_send(); a list, so a lone frame leaves without a copy.
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._state = ConnectionState.HANDSHAKE
        self._epoch = _Epoch()
        self._version: int | None = None
        self._dim: int | None = None
        self._config_encodings = frozenset(self._config.encodings or ALL_ENCODINGS)
        # What this side decodes: its configured set until its HELLO or WELCOME
        # announces one (wire-format.md 6.2), then exactly the announced set.
        self._local_encodings = self._config_encodings
        self._peer_encodings: frozenset[int] = ALL_ENCODINGS
        self._context = DecodeContext(limits=self._config.limits, encodings=self._local_encodings)
        self._started = now
        self._last_received = now
        self._last_sent = now
        self._eof = False
        self._ended = False
        self._close_code: int | None = None
        self._close_sent = False
        self._peer_closed = False
        self._offered: tuple[int, int] | None = None
        self._closing_since = now
        #: True once the shared-secret handshake succeeded (always False without a secret).
        self.authenticated = False
        self._held_hello: Hello | None = None
        self._master_nonce: bytes | None = None
        self._worker_nonce: bytes | None = None
        self._state_before_close = ConnectionState.HANDSHAKE
        #: Body bytes received, by message type name; "header" counts every frame header.
        self.bytes_received: dict[str, int] = {}
        #: Body bytes sent, by message type name; "header" counts every frame header.
        self.bytes_sent: dict[str, int] = {}
        #: Frames received, by message type name.
        self.messages_received: dict[str, int] = {}
        #: Frames sent, by message type name.
        self.messages_sent: dict[str, int] = {}

    # -- properties -----------------------------------------------------------

    @property
    def state(self) -> ConnectionState:
        """The session state."""
        return self._state

    @property
    def version(self) -> int | None:
        """The negotiated protocol version, once WELCOME has been exchanged."""
        return self._version

    @property
    def dim(self) -> int | None:
        """The configured model dimension, once CONFIG has been exchanged."""
        return self._dim

    @property
    def epoch(self) -> int | None:
        """The current epoch (last SNAPSHOT), or None before the first."""
        return self._epoch.current

    @property
    def outstanding_model(self) -> tuple[int, int] | None:
        """``(epoch, version)`` of the MODEL awaiting its GRADIENT, if any."""
        return self._epoch.outstanding

    @property
    def peer_encodings(self) -> frozenset[int]:
        """Encodings the peer announced it can decode (all, before the handshake)."""
        return self._peer_encodings

    # -- receiving ------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Take bytes received from the peer; ``b""`` means the stream ended."""
        if self._state is ConnectionState.CLOSED and not data:
            self._eof = True
            return
        self._last_received = now
        if not data:
            self._eof = True
        elif self._state is not ConnectionState.CLOSED:
            self._reader.feed(data)

    def next_event(self) -> Event | None:
        """Return the next event, or None if more bytes are needed.

        Raises:
            RemoteProtocolError: the peer broke the protocol.  The connection is
                closed and a CLOSE frame with the error code is queued to send.
        """
        while True:
            if self._events:
                return self._events.popleft()
            if self._state is ConnectionState.CLOSED:
                return self._stream_end() if self._eof else None
            try:
                frame = self._reader.next_frame()
            except CodecError as exc:
                self._fail(exc.code, str(exc))
                raise RemoteProtocolError(str(exc), exc.code) from exc
            if frame is None:
                if not self._eof:
                    return None
                if self._reader.buffered:
                    reason = f"stream ended inside a frame ({self._reader.buffered} bytes buffered)"
                    self._fail(ErrorCode.MALFORMED_FRAME, reason)
                    raise RemoteProtocolError(reason, ErrorCode.MALFORMED_FRAME)
                self._state = ConnectionState.CLOSED
                return self._stream_end()
            try:
                event = self._receive_frame(frame)
            except (CodecError, _ViolationError) as exc:
                self._fail(exc.code, str(exc))
                raise RemoteProtocolError(str(exc), exc.code) from exc
            if event is not None:
                return event

    def _stream_end(self) -> ConnectionClosed | None:
        """The one ConnectionClosed event at the end of the stream."""
        if self._ended:
            return None
        self._ended = True
        return ConnectionClosed(clean=self._close_sent and self._peer_closed, code=self._close_code)

    def _receive_frame(self, frame: Frame) -> Event | None:
        self._count(self.bytes_received, self.messages_received, frame.type, len(frame.body))
        try:
            message_type = MessageType(frame.type)
        except ValueError:
            raise _ViolationError(
                f"unknown message type {frame.type:#04x}", ErrorCode.UNKNOWN_MESSAGE_TYPE
            ) from None
        # wire-format.md 6.1: HELLO, WELCOME and every frame before the negotiation carry
        # version 1; later frames the negotiated one.
        handshake = (
            message_type in (MessageType.HELLO, MessageType.WELCOME)
            or message_type in _AUTH
            or self._version is None
        )
        expected = 1 if handshake else self._version
        if frame.version != expected:
            raise _ViolationError(
                f"frame version {frame.version}, expected {expected}", ErrorCode.UNSUPPORTED_VERSION
            )
        self._check_order(message_type, sender=self._peer_role)
        event = decode_message(frame, self._context)
        self._check_content(event, sender=self._peer_role)
        if message_type in _AUTH or (isinstance(event, Hello | Welcome) and self._config.secret is not None):
            return self._authenticate(event)
        self._apply(event, sent=False)
        return event

    # -- authentication (wire-format.md 7.12-7.14; aiodq.auth) ---------------------

    def _authenticate(self, event: Event) -> Event | None:
        """Run the shared-secret handshake; hold the peer's HELLO back until it has passed."""
        secret = self._config.secret
        if isinstance(event, Hello):  # master, with a secret: challenge before anything else
            assert secret is not None
            self._apply(event, sent=False)
            self._held_hello = event
            self._master_nonce = self._config.nonce_source(NONCE_SIZE)
            self._emit(AuthChallenge(nonce=self._master_nonce))
            return None
        if isinstance(event, AuthChallenge):  # worker
            if self._offered is None:
                raise _ViolationError("AUTH_CHALLENGE before HELLO", ErrorCode.UNEXPECTED_MESSAGE)
            if secret is None:
                raise _ViolationError(
                    "the master requires authentication; no secret is configured", ErrorCode.AUTH_FAILED
                )
            if self._master_nonce is not None:
                raise _ViolationError("a second AUTH_CHALLENGE", ErrorCode.UNEXPECTED_MESSAGE)
            self._master_nonce = event.nonce
            self._worker_nonce = self._config.nonce_source(NONCE_SIZE)
            self._emit(
                AuthResponse(
                    nonce=self._worker_nonce, mac=worker_mac(secret, event.nonce, self._worker_nonce)
                )
            )
            return None
        if isinstance(event, AuthResponse):  # master
            if secret is None or self._held_hello is None or self._master_nonce is None:
                raise _ViolationError("AUTH_RESPONSE without a challenge", ErrorCode.UNEXPECTED_MESSAGE)
            if not verify(worker_mac(secret, self._master_nonce, event.nonce), event.mac):
                raise _ViolationError(
                    "the worker's proof of the shared secret is wrong", ErrorCode.AUTH_FAILED
                )
            self._emit(AuthConfirm(mac=master_mac(secret, self._master_nonce, event.nonce)))
            self.authenticated = True
            hello, self._held_hello = self._held_hello, None
            return hello
        if isinstance(event, AuthConfirm):  # worker
            if secret is None or self._worker_nonce is None or self.authenticated:
                raise _ViolationError("AUTH_CONFIRM without a response", ErrorCode.UNEXPECTED_MESSAGE)
            assert self._master_nonce is not None
            if not verify(master_mac(secret, self._master_nonce, self._worker_nonce), event.mac):
                raise _ViolationError(
                    "the master's proof of the shared secret is wrong", ErrorCode.AUTH_FAILED
                )
            self.authenticated = True
            return None
        # A WELCOME to a worker that holds a secret: only after the master proved itself.
        assert isinstance(event, Welcome)
        if not self.authenticated:
            raise _ViolationError("the master did not authenticate", ErrorCode.AUTH_FAILED)
        self._apply(event, sent=False)
        return event

    # -- sending --------------------------------------------------------------

    def send(self, event: Event, now: float) -> None:
        """Queue ``event`` for sending.

        Raises:
            LocalProtocolError: the protocol does not allow this event now, or
                it names an encoding the peer cannot decode.  Nothing is queued.
        """
        try:
            message_type = message_type_of(event)
        except TypeError as exc:
            raise LocalProtocolError(str(exc)) from exc
        if message_type in _AUTH:
            raise LocalProtocolError(f"{message_type.name} is sent by the connection itself")
        if isinstance(event, Welcome) and self._config.secret is not None and not self.authenticated:
            raise LocalProtocolError("WELCOME before the worker authenticated", ErrorCode.AUTH_FAILED)
        try:
            reason = getattr(event, "reason", "")
            if len(reason.encode()) > self._config.limits.max_reason_bytes:
                limit = self._config.limits.max_reason_bytes
                raise _ViolationError(f"reason longer than {limit} bytes", ErrorCode.LIMIT_EXCEEDED)
            self._check_order(message_type, sender=self.role)
            self._check_content(event, sender=self.role)
            vector = getattr(event, "vector", None)
            if (
                isinstance(vector, DenseQuantized)
                and vector.rice
                and Encoding.DENSE_RICE not in self._peer_encodings
            ):
                # A peer that did not announce DENSE_RICE gets the same codes as plain DENSE.
                vector = vector.with_rice(False)
                event = dataclasses.replace(event, vector=vector)  # type: ignore[arg-type]
            if vector is not None and int(encoding_of(vector)) not in self._peer_encodings:
                raise _ViolationError(
                    f"the peer did not announce {encoding_of(vector).name}", ErrorCode.UNSUPPORTED_ENCODING
                )
            data = encode_message(event, self._version or 1)
        except _ViolationError as exc:
            raise LocalProtocolError(str(exc), exc.code) from exc
        except ValueError as exc:
            raise LocalProtocolError(str(exc), ErrorCode.PROTOCOL_ERROR) from exc
        self._out.append(data)
        self._count(self.bytes_sent, self.messages_sent, message_type, len(data) - HEADER_SIZE)
        self._last_sent = now
        self._apply(event, sent=True)
        if self._state is ConnectionState.CLOSING:
            self._closing_since = now

    def data_to_send(self) -> bytes:
        """Return and clear the bytes queued for the peer."""
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        return data

    def close(self, now: float, code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Send CLOSE, unless one was sent already."""
        if self._state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        self.send(Close(code=int(code), reason=reason), now)

    # -- timers ---------------------------------------------------------------

    def get_timer(self) -> float | None:
        """Return when :meth:`handle_timer` should next be called, or None."""
        if self._state is ConnectionState.CLOSED:
            return None
        deadlines = [self._last_received + self._config.idle_timeout]
        if self._state is ConnectionState.CLOSING:
            deadlines.append(self._closing_since + self._config.handshake_timeout)
        if self._state is ConnectionState.HANDSHAKE or (
            self._state is ConnectionState.CONFIGURING and self.role is Role.WORKER
        ):
            deadlines.append(self._started + self._config.handshake_timeout)
        if self._state in _LIVE:
            deadlines.append(self._last_sent + self._config.heartbeat_interval)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        """Act on expired timers: send HEARTBEAT, or close on a timeout.

        A timeout queues a CLOSE with TIMEOUT and a local
        :class:`~aiodq.events.ConnectionClosed` event.
        """
        if self._state is ConnectionState.CLOSED:
            return
        in_handshake = self._state is ConnectionState.HANDSHAKE or (
            self._state is ConnectionState.CONFIGURING and self.role is Role.WORKER
        )
        if (
            self._state is ConnectionState.CLOSING
            and now >= self._closing_since + self._config.handshake_timeout
        ):
            # wire-format.md 8.3: a peer that does not answer CLOSE in time is not waited for,
            # however slowly it keeps sending.
            self._time_out(now, "no CLOSE in answer")
        elif in_handshake and now >= self._started + self._config.handshake_timeout:
            self._time_out(now, "handshake did not complete in time")
        elif now >= self._last_received + self._config.idle_timeout:
            self._time_out(now, "peer silent for longer than the idle timeout")
        elif self._state in _LIVE and now >= self._last_sent + self._config.heartbeat_interval:
            self.send(Heartbeat(), now)

    def _time_out(self, now: float, reason: str) -> None:
        if self._state is not ConnectionState.CLOSING:
            self.send(Close(code=ErrorCode.TIMEOUT, reason=reason), now)
        self._state = ConnectionState.CLOSED
        self._ended = True
        self._events.append(ConnectionClosed(clean=False, code=int(ErrorCode.TIMEOUT)))

    # -- rules ----------------------------------------------------------------

    @property
    def _peer_role(self) -> Role:
        return Role.WORKER if self.role is Role.MASTER else Role.MASTER

    def _check_order(self, message_type: MessageType, *, sender: Role) -> None:
        """wire-format.md 8.1: who may send the message, and in which state."""
        if self._state is ConnectionState.CLOSED or (
            self._state is ConnectionState.CLOSING and sender is self.role
        ):
            raise _ViolationError(f"{message_type.name} after CLOSE", ErrorCode.UNEXPECTED_MESSAGE)
        owner = _SENDER[message_type]
        if owner is not None and owner is not sender:
            raise _ViolationError(
                f"a {sender.value} does not send {message_type.name}", ErrorCode.UNEXPECTED_MESSAGE
            )
        state: ConnectionState = self._state
        if state is ConnectionState.CLOSING:  # the peer may still be sending
            state = self._state_before_close
        if state not in _STATES[message_type]:
            raise _ViolationError(
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
            raise _ViolationError(
                f"dimension {vector.dim}, configured {self._dim}", ErrorCode.WRONG_DIMENSION
            )
        if isinstance(event, Hello):
            # wire-format.md 7.1: one HELLO per session.
            if self._offered is not None:
                raise _ViolationError("a second HELLO", ErrorCode.UNEXPECTED_MESSAGE)
            if sender is self.role:
                self._check_announced(event.encodings)
                return
            common = SUPPORTED_VERSIONS & set(range(event.min_version, event.max_version + 1))
            if not common:
                raise _ViolationError(
                    f"no common version: offered {event.min_version}..{event.max_version}",
                    ErrorCode.UNSUPPORTED_VERSION,
                )
        elif isinstance(event, Welcome):
            offered = self._offered
            # wire-format.md 7.2: WELCOME answers a HELLO.
            if offered is None:
                raise _ViolationError("WELCOME before HELLO", ErrorCode.UNEXPECTED_MESSAGE)
            if sender is self.role:
                self._check_announced(event.encodings)
            if not offered[0] <= event.version <= offered[1]:
                raise _ViolationError(
                    f"version {event.version} was not offered", ErrorCode.UNSUPPORTED_VERSION
                )
            if event.version not in SUPPORTED_VERSIONS:
                raise _ViolationError(
                    f"version {event.version} is not supported", ErrorCode.UNSUPPORTED_VERSION
                )
        elif isinstance(event, Snapshot):
            if epoch.snapshot_pending:
                raise _ViolationError(
                    "SNAPSHOT before the previous one was answered", ErrorCode.UNEXPECTED_MESSAGE
                )
            if epoch.current is not None and event.epoch <= epoch.current:
                raise _ViolationError(
                    f"SNAPSHOT epoch {event.epoch} not above {epoch.current}", ErrorCode.UNKNOWN_EPOCH
                )
        elif isinstance(event, SnapshotGradient):
            if not epoch.snapshot_pending:
                raise _ViolationError(
                    "SNAPSHOT_GRADIENT without a pending SNAPSHOT", ErrorCode.UNEXPECTED_MESSAGE
                )
            if event.epoch != epoch.current:
                raise _ViolationError(f"SNAPSHOT_GRADIENT for epoch {event.epoch}", ErrorCode.UNKNOWN_EPOCH)
            if epoch.outstanding is not None:
                raise _ViolationError(
                    "SNAPSHOT_GRADIENT before the GRADIENT it owes", ErrorCode.UNEXPECTED_MESSAGE
                )
        elif isinstance(event, FullGradient):
            self._check_in_epoch(event.epoch, "FULL_GRADIENT")
            if epoch.full_gradient_sent or epoch.model_sent:
                raise _ViolationError(
                    "FULL_GRADIENT only once, before the epoch's first MODEL", ErrorCode.UNEXPECTED_MESSAGE
                )
        elif isinstance(event, Model):
            self._check_in_epoch(event.epoch, "MODEL")
            if epoch.outstanding is not None:
                raise _ViolationError(
                    "MODEL before the previous one was answered", ErrorCode.UNEXPECTED_MESSAGE
                )
            if epoch.last_version is not None and event.version < epoch.last_version:
                raise _ViolationError(
                    f"MODEL version {event.version} below {epoch.last_version}", ErrorCode.VERSION_MISMATCH
                )
        elif isinstance(event, Gradient):
            if epoch.outstanding is None:
                raise _ViolationError("GRADIENT without a MODEL to answer", ErrorCode.UNEXPECTED_MESSAGE)
            model_epoch, model_version = epoch.outstanding
            if event.epoch != model_epoch:
                raise _ViolationError(
                    f"GRADIENT epoch {event.epoch}, the MODEL had {model_epoch}", ErrorCode.UNKNOWN_EPOCH
                )
            if event.version > model_version:
                raise _ViolationError(
                    f"GRADIENT version {event.version} is from the future (MODEL {model_version})",
                    ErrorCode.FUTURE_VERSION,
                )
            if event.version < model_version:
                raise _ViolationError(
                    f"GRADIENT version {event.version}, the MODEL had {model_version}",
                    ErrorCode.VERSION_MISMATCH,
                )

    def _check_announced(self, encodings: frozenset[int]) -> None:
        """What this side announces it can decode must be within what it is configured to decode."""
        unknown = encodings - self._config_encodings
        if unknown:
            raise _ViolationError(
                f"announcing encodings {sorted(unknown)} that this connection does not decode",
                ErrorCode.UNSUPPORTED_ENCODING,
            )

    def _check_in_epoch(self, event_epoch: int, what: str) -> None:
        epoch = self._epoch
        if epoch.current is None or epoch.snapshot_pending:
            raise _ViolationError(
                f"{what} before the epoch's snapshot phase ended", ErrorCode.UNEXPECTED_MESSAGE
            )
        if event_epoch != epoch.current:
            raise _ViolationError(
                f"{what} epoch {event_epoch}, current {epoch.current}", ErrorCode.UNKNOWN_EPOCH
            )

    def _apply(self, event: Event, *, sent: bool) -> None:
        """Update the state after a message passed every check."""
        epoch = self._epoch
        if isinstance(event, Hello | Welcome):
            if isinstance(event, Hello):
                self._offered = (event.min_version, event.max_version)
            else:
                self._version = event.version
                self._state = ConnectionState.CONFIGURING
            if sent:
                # wire-format.md 6.2: a side decodes exactly what it announced.
                self._local_encodings = event.encodings
                self._context = DecodeContext(limits=self._config.limits, encodings=event.encodings)
            else:
                self._peer_encodings = event.encodings
        elif isinstance(event, Config):
            self._dim = event.dim
            self._context = DecodeContext(
                limits=self._config.limits, dim=event.dim, encodings=self._local_encodings
            )
            self._state = ConnectionState.READY
        elif isinstance(event, Snapshot):
            epoch.current = event.epoch
            epoch.snapshot_pending = True
            epoch.full_gradient_sent = False
            epoch.model_sent = False
        elif isinstance(event, SnapshotGradient):
            epoch.snapshot_pending = False
        elif isinstance(event, FullGradient):
            epoch.full_gradient_sent = True
        elif isinstance(event, Model):
            epoch.outstanding = (event.epoch, event.version)
            epoch.last_version = event.version
            epoch.model_sent = True
        elif isinstance(event, Gradient):
            epoch.outstanding = None
        elif isinstance(event, Close):
            if self._close_code is None:
                self._close_code = event.code
            if sent:
                self._close_sent = True
                self._state_before_close = self._state
                self._state = ConnectionState.CLOSING
            else:
                self._peer_closed = True
                if self._state is not ConnectionState.CLOSING:
                    # wire-format.md 7.11: answer a CLOSE with a CLOSE, then stop sending.
                    self._emit(Close(code=int(ErrorCode.NO_ERROR)))
                    self._close_sent = True
                self._state = ConnectionState.CLOSED

    def _fail(self, code: ErrorCode, reason: str) -> None:
        """Close after the peer broke the protocol: queue CLOSE with the code."""
        if self._state not in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            reason_bytes = reason.encode()[: self._config.limits.max_reason_bytes]
            text = reason_bytes.decode("utf-8", errors="ignore")
            self._emit(Close(code=int(code), reason=text))
            self._close_sent = True
        if self._close_code is None:
            self._close_code = int(code)
        self._state = ConnectionState.CLOSED
        self._ended = True

    def _emit(self, event: Event) -> None:
        """Encode ``event`` into the output buffer and count it (every sent frame goes through here)."""
        data = encode_message(event, self._version or 1)
        self._out.append(data)
        self._count(self.bytes_sent, self.messages_sent, message_type_of(event), len(data) - HEADER_SIZE)

    @staticmethod
    def _count(table: dict[str, int], messages: dict[str, int], message_type: int, body_bytes: int) -> None:
        try:
            name = MessageType(message_type).name
        except ValueError:
            name = "UNKNOWN"
        table[name] = table.get(name, 0) + body_bytes
        table["header"] = table.get("header", 0) + HEADER_SIZE
        messages[name] = messages.get(name, 0) + 1


class MasterConnection(Connection):
    """The master's end of one worker connection."""

    role = Role.MASTER

    @property
    def negotiated_version(self) -> int | None:
        """The highest version both sides speak, once HELLO has arrived."""
        if self._offered is None:
            return None
        common = SUPPORTED_VERSIONS & set(range(self._offered[0], self._offered[1] + 1))
        return max(common) if common else None


class WorkerConnection(Connection):
    """The worker's end of its connection to the master."""

    role = Role.WORKER
