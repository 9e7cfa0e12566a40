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

from collections import deque

from ..codec.events import (
    AuthChallenge,
    AuthConfirm,
    AuthResponse,
    Close,
    ConfigMessage,
    ConnectionClosed,
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
from ..codec.frames import HEADER_SIZE, Frame, FrameReader, heartbeat_frame
from ..codec.messages import DecodeContext, decode_body, encode_message, message_type_of, vector_plan
from ..codec.registry import ALL_ENCODINGS, Encoding, MessageType
from ..config import ConnectionConfig
from ..errors import CodecError, ErrorCode, LocalProtocolError, RemoteProtocolError
from .handshake import NONCE_SIZE, master_mac, verify, worker_mac
from .rules import (
    AUTH_MESSAGES,
    LIVE_STATES,
    SUPPORTED_VERSIONS,
    ConnectionState,
    EpochState,
    Role,
    SessionRules,
    ViolationError,
)

__all__ = [
    "SUPPORTED_VERSIONS",
    "Connection",
    "ConnectionState",
    "MasterConnection",
    "Role",
    "WorkerConnection",
]

#: The encodings a dense gradient's sparse form may take (:attr:`Connection.sparse_gradients`).
_SPARSE = frozenset({int(Encoding.SPARSE_RICE), int(Encoding.SPARSE_BITMAP)})


class Connection(SessionRules):
    """What the master and worker connections share; use one of the subclasses."""

    role: Role

    def __init__(self, config: ConnectionConfig | None = None, *, now: float = 0.0) -> None:
        self._config = config or ConnectionConfig()
        limits = self._config.limits
        # wire-format.md 10-3: an unauthenticated peer cannot make this side buffer more than the
        # largest message of the handshake; the full limit applies once it is complete.
        self._reader = FrameReader(limits, max_frame_bytes=limits.handshake_frame_bytes)
        # Encoded frames waiting for data_to_send(); a list, so a lone frame leaves without a copy.
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._state = ConnectionState.HANDSHAKE
        self._epoch = EpochState()
        self._version: int | None = None
        self._dim: int | None = None
        self._config_encodings = frozenset(self._config.encodings or ALL_ENCODINGS)
        # What this side decodes: its configured set until its HELLO or WELCOME
        # announces one (wire-format.md 6.2), then exactly the announced set.
        self._local_encodings = self._config_encodings
        self._peer_encodings: frozenset[int] = ALL_ENCODINGS
        self._context = DecodeContext(limits=self._config.limits, encodings=self._local_encodings)
        self._started = self._last_received = self._last_sent = self._closing_since = now
        self._eof = self._ended = self._close_sent = self._peer_closed = False
        self._close_code: int | None = None
        self._offered: tuple[int, int] | None = None
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
        #: Analytic vector payload bits received, by message type name (docs/algorithms.md 10).
        self.payload_bits_received: dict[str, int] = {}
        #: Analytic vector payload bits sent, by message type name.
        self.payload_bits_sent: dict[str, int] = {}
        self._dense_rice = self._config.dense_rice
        self._aligned_codes = self._config.aligned_codes
        self._sparse_gradients = False
        #: The encoding of the last vector received, or None before the first.
        self.last_received_encoding: Encoding | None = None
        #: The encoding of the last vector sent, or None before the first.
        self.last_sent_encoding: Encoding | None = None

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
    def dense_rice(self) -> bool:
        """Send quantized dense codes Rice-coded (DENSE_RICE) where smaller, if the peer announced it.

        Starts as ``ConnectionConfig.dense_rice``; may be changed between messages (an adaptive
        run's choice, :mod:`aiodq.protocol.adaptive`).  Either way the values sent are the same.
        """
        return self._dense_rice

    @dense_rice.setter
    def dense_rice(self, value: bool) -> None:
        self._dense_rice = bool(value)

    @property
    def aligned_codes(self) -> bool:
        """Send fixed-width codes byte-aligned (:func:`~aiodq.codec.packing.aligned_width`).

        Starts as ``ConnectionConfig.aligned_codes``; a worker takes it from its run's CONFIG
        (``TrainConfig.aligned_codes``).  The values sent are the same either way.
        """
        return self._aligned_codes

    @aligned_codes.setter
    def aligned_codes(self, value: bool) -> None:
        self._aligned_codes = bool(value)

    @property
    def sparse_gradients(self) -> bool:
        """Send a GRADIENT's dense quantized codes in their sparse form where that is smaller.

        Only while codes are Rice-coded (:attr:`dense_rice`) and the peer announced SPARSE_RICE
        and SPARSE_BITMAP.  False at first; a worker takes it from its run's CONFIG
        (``TrainConfig.sparse_gradients``).  The values sent are the same either way.
        """
        return self._sparse_gradients

    @sparse_gradients.setter
    def sparse_gradients(self, value: bool) -> None:
        self._sparse_gradients = bool(value)

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
            # A run of HEARTBEATs is read in bulk, as one event (wire-format.md 7.9): a flood of them
            # costs next to nothing (18 us each, frame by frame; an attack review).
            if (
                self._version is not None
                and self._state in LIVE_STATES
                and (runs := self._reader.skip_repeats(heartbeat_frame(self._version)))
            ):
                self._count(self.bytes_received, self.messages_received, MessageType.HEARTBEAT, 0, runs)
                return Heartbeat()
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
            except (CodecError, ViolationError) as exc:
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
            raise ViolationError(
                f"unknown message type {frame.type:#04x}", ErrorCode.UNKNOWN_MESSAGE_TYPE
            ) from None
        # wire-format.md 6.1: HELLO, WELCOME and every frame before the negotiation carry
        # version 1; later frames the negotiated one.
        handshake = (
            message_type in (MessageType.HELLO, MessageType.WELCOME)
            or message_type in AUTH_MESSAGES
            or self._version is None
        )
        expected = 1 if handshake else self._version
        if frame.version != expected:
            raise ViolationError(
                f"frame version {frame.version}, expected {expected}", ErrorCode.UNSUPPORTED_VERSION
            )
        self._check_order(message_type, sender=self._peer_role)
        decoded = decode_body(frame, self._context)
        event = decoded.event
        if isinstance(event, Welcome) and self._config.secret is not None and not self.authenticated:
            # wire-format.md 7.14-2: a master that skipped the handshake is not trusted; this
            # check comes before the WELCOME's others.
            raise ViolationError("the master did not authenticate", ErrorCode.AUTH_FAILED)
        self._check_content(event, sender=self._peer_role)
        if decoded.encoding is not None:
            self.last_received_encoding = decoded.encoding
        if decoded.payload_bits:
            name = message_type.name
            bits = decoded.counted_bits(self._config.sparse_form_bits)
            self.payload_bits_received[name] = self.payload_bits_received.get(name, 0) + bits
        if message_type in AUTH_MESSAGES or (
            isinstance(event, Hello | Welcome) and self._config.secret is not None
        ):
            return self._authenticate(event)
        self._apply(event, sent=False)
        return event

    # -- authentication (wire-format.md 7.12-7.14; aiodq.protocol.handshake) ---------------------

    def _authenticate(self, event: Event) -> Event | None:
        """Run the shared-secret handshake; hold the peer's HELLO back until it has passed."""
        secret = self._config.secret
        if isinstance(event, Hello):  # master, with a secret: challenge before anything else
            assert secret is not None
            self._apply(event, sent=False)
            self._held_hello = event
            self._master_nonce = self._config.nonce_source(NONCE_SIZE)
            self._reply(AuthChallenge(nonce=self._master_nonce))
            return None
        if isinstance(event, AuthChallenge):  # worker; wire-format.md 7.12-3, checks in this order
            if secret is None:
                raise ViolationError(
                    "the master requires authentication; no secret is configured", ErrorCode.AUTH_FAILED
                )
            if self._offered is None:
                raise ViolationError("AUTH_CHALLENGE before HELLO", ErrorCode.UNEXPECTED_MESSAGE)
            if self._master_nonce is not None:
                raise ViolationError("a second AUTH_CHALLENGE", ErrorCode.UNEXPECTED_MESSAGE)
            self._master_nonce = event.nonce
            self._worker_nonce = self._config.nonce_source(NONCE_SIZE)
            self._reply(
                AuthResponse(
                    nonce=self._worker_nonce, mac=worker_mac(secret, event.nonce, self._worker_nonce)
                )
            )
            return None
        if isinstance(event, AuthResponse):  # master
            if secret is None or self._held_hello is None or self._master_nonce is None:
                raise ViolationError("AUTH_RESPONSE without a challenge", ErrorCode.UNEXPECTED_MESSAGE)
            if not verify(worker_mac(secret, self._master_nonce, event.nonce), event.mac):
                raise ViolationError(
                    "the worker's proof of the shared secret is wrong", ErrorCode.AUTH_FAILED
                )
            self._reply(AuthConfirm(mac=master_mac(secret, self._master_nonce, event.nonce)))
            self.authenticated = True
            hello, self._held_hello = self._held_hello, None
            return hello
        if isinstance(event, AuthConfirm):  # worker
            if secret is None or self._worker_nonce is None or self.authenticated:
                raise ViolationError("AUTH_CONFIRM without a response", ErrorCode.UNEXPECTED_MESSAGE)
            assert self._master_nonce is not None
            if not verify(master_mac(secret, self._master_nonce, self._worker_nonce), event.mac):
                raise ViolationError(
                    "the master's proof of the shared secret is wrong", ErrorCode.AUTH_FAILED
                )
            self.authenticated = True
            return None
        # A WELCOME to a worker that holds a secret: only after the master proved itself
        # (checked in _receive_frame, before the WELCOME's other checks: wire-format.md 7.14-2).
        assert isinstance(event, Welcome) and self.authenticated
        self._apply(event, sent=False)
        return event

    def _reply(self, event: Event) -> None:
        """An automatic answer of the handshake; none in CLOSING (wire-format.md 8.1-2)."""
        if self._state is not ConnectionState.CLOSING:
            self._emit(event)

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
        if message_type in AUTH_MESSAGES:
            raise LocalProtocolError(f"{message_type.name} is sent by the connection itself")
        if isinstance(event, Welcome) and self._config.secret is not None and not self.authenticated:
            raise LocalProtocolError("WELCOME before the worker authenticated", ErrorCode.AUTH_FAILED)
        try:
            reason = getattr(event, "reason", "")
            if len(reason.encode()) > self._config.limits.max_reason_bytes:
                limit = self._config.limits.max_reason_bytes
                raise ViolationError(f"reason longer than {limit} bytes", ErrorCode.LIMIT_EXCEEDED)
            self._check_order(message_type, sender=self.role)
            self._check_content(event, sender=self.role)
            # The vector's encoding is chosen here, once: Rice-coded dense codes only for a peer
            # that announced DENSE_RICE (wire-format.md 6.2), the rest as the codec decides.
            rice = self._dense_rice and Encoding.DENSE_RICE in self._peer_encodings
            plan = vector_plan(
                event,
                dense_rice=rice,
                aligned=self._aligned_codes,
                sparse_gradient=rice and self._sparse_gradients and self._peer_encodings >= _SPARSE,
            )
            if plan is not None and int(plan.encoding) not in self._peer_encodings:
                raise ViolationError(
                    f"the peer did not announce {plan.encoding.name}", ErrorCode.UNSUPPORTED_ENCODING
                )
            data = encode_message(event, self._version or 1, plan=plan)
        except ViolationError as exc:
            raise LocalProtocolError(str(exc), exc.code) from exc
        except ValueError as exc:
            raise LocalProtocolError(str(exc), ErrorCode.PROTOCOL_ERROR) from exc
        self._out.append(data)
        self._count(self.bytes_sent, self.messages_sent, message_type, len(data) - HEADER_SIZE)
        if plan is not None:
            self.last_sent_encoding = plan.encoding
        if plan is not None and plan.payload_bits:
            name = message_type.name
            self.payload_bits_sent[name] = self.payload_bits_sent.get(name, 0) + plan.payload_bits
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

    def refuse(self, code: ErrorCode, reason: str = "") -> None:
        """The application's refusal of the peer: CLOSE, then CLOSED at once (wire-format.md 8.4-3, 7.1-9)."""
        self._fail(code, reason)  # nothing more is read: a refused peer's flood is not parsed

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
        if self._state in LIVE_STATES:
            deadlines.append(self._last_sent + self._config.heartbeat_interval)
        return min(deadlines)

    def handle_timer(self, now: float) -> None:
        """Act on expired timers: send HEARTBEAT, or close on a timeout.

        A timeout queues a CLOSE with TIMEOUT and a local
        :class:`~aiodq.codec.events.ConnectionClosed` event.
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
        elif self._state in LIVE_STATES and now >= self._last_sent + self._config.heartbeat_interval:
            self.send(Heartbeat(), now)

    def _time_out(self, now: float, reason: str) -> None:
        if self._state is not ConnectionState.CLOSING:
            self.send(Close(code=ErrorCode.TIMEOUT, reason=reason), now)
        self._state = ConnectionState.CLOSED
        self._ended = True
        self._events.append(ConnectionClosed(clean=False, code=int(ErrorCode.TIMEOUT), reason=reason))

    def _apply(self, event: Event, *, sent: bool) -> None:
        """Update the state after a message passed every check."""
        epoch = self._epoch
        if isinstance(event, Hello | Welcome):
            if isinstance(event, Hello):
                self._offered = (event.min_version, event.max_version)
            else:
                self._version = event.version
                self._advance(ConnectionState.CONFIGURING)
            if sent:
                # wire-format.md 6.2: a side decodes exactly what it announced.
                self._local_encodings = event.encodings
                self._context = DecodeContext(limits=self._config.limits, encodings=event.encodings)
            else:
                self._peer_encodings = event.encodings
        elif isinstance(event, ConfigMessage):
            self._dim = event.dim
            self._context = DecodeContext(
                limits=self._config.limits, dim=event.dim, encodings=self._local_encodings
            )
            self._advance(ConnectionState.READY)
            # wire-format.md 10-4: with d known, no frame of the session is longer than this.
            self._reader.max_frame_bytes = self._config.limits.session_frame_bytes(event.dim)
        elif isinstance(event, Snapshot):
            epoch.current = event.epoch
            epoch.snapshot_pending = True
            epoch.full_gradient_sent = False
            epoch.model_sent = False
        elif isinstance(event, SnapshotGradient):
            epoch.snapshot_pending = False
        elif isinstance(event, FullGradient):
            epoch.full_gradient_sent = True
        elif isinstance(event, ModelMessage):
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

    def _advance(self, state: ConnectionState) -> None:
        """Enter ``state``.

        In CLOSING only the state that received frames are checked against moves (a WELCOME or
        CONFIG that crossed this side's CLOSE, wire-format.md 8.1-2).
        """
        if self._state is ConnectionState.CLOSING:
            self._state_before_close = state
        else:
            self._state = state
        # wire-format.md 10-3: the handshake is complete when the master sends WELCOME and when
        # the worker receives CONFIG; from then on the full frame limit applies.
        master_done = self.role is Role.MASTER and state is ConnectionState.CONFIGURING
        if master_done or state is ConnectionState.READY:
            self._reader.max_frame_bytes = self._config.limits.max_frame_bytes

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
    def _count(
        table: dict[str, int], messages: dict[str, int], message_type: int, body_bytes: int, frames: int = 1
    ) -> None:
        try:
            name = MessageType(message_type).name
        except ValueError:
            name = "UNKNOWN"
        table[name] = table.get(name, 0) + body_bytes
        table["header"] = table.get("header", 0) + HEADER_SIZE * frames
        messages[name] = messages.get(name, 0) + frames


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
