"""Clean-room, sans-I/O connection state machine of the aiodq wire format, version 1.

Written from the specification text only (sections 6, 7.12-7.14 and 8 of
``/work/cleanroom-spec/wire-format.md``).  No sockets, no clocks: bytes and times go in, messages
and bytes come out.  Messages are the plain dicts of :mod:`wire`.

Public API
----------
``Timers(handshake_timeout: float = 10.0, heartbeat_interval: float = 5.0, idle_timeout: float = 30.0)``
    Timer settings of 8.3 (the close timeout equals the handshake timeout).  The heartbeat interval
    must be shorter than the idle timeout (WF-8.3-4), else ``ValueError``.

``Endpoint(role: str, *, secret: bytes | None = None,
nonce_source: Callable[[int], bytes] = os.urandom, encodings: Iterable[int] = range(9),
versions: Iterable[int] = (1,), limits: wire.ReceiveContext | None = None,
timers: Timers | None = None, now: float = 0.0, session_frame_limit: bool = True)``
    One end of a connection.  ``role`` is ``"master"`` or ``"worker"``.  ``secret`` (at least 16
    bytes) turns on the shared-secret handshake of 7.12-7.14; ``nonce_source(32)`` gives the nonces.
    ``encodings`` is what this endpoint can decode (it may announce only those, WF-6.2-5);
    ``versions`` the protocol versions it supports; ``limits`` carries the four receiver limits of
    section 10 (its other fields, ``before_handshake``, ``session_limit`` and ``dimension``
    included, are ignored: the endpoint sets the handshake frame limit of WF-10-3 and the session
    frame limit of WF-10-5 itself); ``now`` is the start time of the connection;
    ``session_frame_limit=False`` turns off the SHOULD of WF-10-5 (on by default, as in the
    reference).  ``Master(**kwargs)`` and ``Worker(**kwargs)`` fix the role.

    Shard claims (WF-7.1-9): a worker claims one by sending a HELLO with ``"shard": [index, count]``;
    the master hands the HELLO, ``shard`` included, to its application.  The endpoint models one
    connection and has no notion of the master's other workers or of M, so the admission rules
    (CLOSE with SHARD_TAKEN or WORLD_SIZE_MISMATCH before WELCOME) are left to the application,
    which sends them with ``close(code, reason)`` in HANDSHAKE (NOTES N17).  The same holds for the
    rejoin back-off of WF-7.1-10 (CLOSE with TRY_LATER before WELCOME): it needs the master's record
    of earlier removals and a clock across connections, which one connection does not have
    (NOTES N23).  A worker endpoint treats a received CLOSE with 21, 22 or 23 like any other CLOSE
    (answer NO_ERROR, report ``(True, code)``); whether and when to reconnect (7.1-9: SHOULD NOT
    after WORLD_SIZE_MISMATCH, MAY after SHARD_TAKEN; 7.1-10: MAY after TRY_LATER) is the worker
    application's policy, outside this sans-I/O connection.

Methods and attributes:

``receive(data: bytes, now: float | None = None) -> list[dict]``
    Feed received bytes; returns the messages handed to the application, in stream order (AUTH
    messages are consumed, WF-7.14-3; a master with a secret delays HELLO until the worker is
    verified, WF-7.12-1).  ``receive(b"")`` means end of stream, like ``eof()``.  When the peer
    breaks a rule the endpoint fails (section 2, "fail with"): ``error`` is set to the
    ``wire.WireError`` (code name and requirement ID), a CLOSE carrying the code is queued unless
    this endpoint already sent CLOSE, the state becomes CLOSED and the messages decoded before the
    failure are still returned.  A received CLOSE is returned as a message; ``peer_close`` holds it.
    Until the handshake is complete (section 1: the master has sent WELCOME, the worker has
    received CONFIG) the body-length limit is the handshake frame limit of WF-10-3.  Once the
    session's dimension is known (the master has sent CONFIG, the worker has received it, in
    CLOSING too) it is the session frame limit of WF-10-5; in between (the master in CONFIGURING)
    it is ``max_frame_bytes``.  A header is checked once, when it is complete (NOTES N20).
    In CLOSING nothing is sent (no CLOSE answer, no AUTH answer, no HEARTBEAT, WF-8.1-2) and each
    frame is checked against ``session_state``: the state at the time of this endpoint's CLOSE,
    advanced by a crossing WELCOME (to CONFIGURING) or CONFIG (to READY).
``eof(now: float | None = None) -> list[dict]``
    End of stream (WF-3-5, WF-8.4-5).  Sets ``end_of_stream``; returns ``[]``.
``send(message: dict, now: float | None = None) -> bytes``
    Returns the bytes to write: everything queued by the endpoint itself (CLOSE answers, AUTH
    messages, heartbeats), then the frame of ``message``.  Raises ``wire.WireError`` with
    ``local=True`` and the code name when the spec forbids the send; nothing changes then.
``close(code: int = 0, reason: str = "", now: float | None = None) -> bytes``
    ``send`` of a CLOSE.
``data_to_send() -> bytes``
    Drains the bytes queued by the endpoint itself.
``poll(now: float) -> bytes``
    Runs the timers of 8.3 at time ``now`` and returns ``data_to_send()``.
``next_deadline() -> float | None``
    The earliest time at which ``poll`` has something to do.
``state -> str``
    ``"HANDSHAKE"``, ``"CONFIGURING"``, ``"READY"``, ``"CLOSING"`` or ``"CLOSED"``.
``session_state -> str``
    The state incoming frames are checked against: ``state``, except in CLOSING, where it is the
    state the session would be in had this endpoint not sent CLOSE (WF-8.1-2).  In CLOSED, CLOSED.
``report -> SessionReport | None``
    The end-of-session report of WF-8.4-6, None until the state is CLOSED.  ``SessionReport`` is a
    NamedTuple ``(clean: bool, code: int | None)`` with a ``code_name`` property: ``clean`` is
    True when this endpoint both sent a CLOSE and received the peer's (WF-8.4-1); ``code`` is the
    code of the first CLOSE it sent or received, else TIMEOUT if a timer ended the session, else
    the failure's code, else None (the stream ended without any CLOSE).
``best_version() -> int | None``
    Master: the highest supported version in the range the worker's HELLO offered (WF-6.1-5).

Other attributes: ``role``, ``error``, ``peer_close``, ``end_of_stream``, ``timed_out``,
``handshake_complete``, ``close_sent``, ``close_received``,
``negotiated_version``, ``local_encodings``, ``peer_encodings``, ``worker_id``, ``dimension``,
``snapshot`` (the last SNAPSHOT's vector), and the 8.2 variables ``current_epoch``,
``snapshot_pending``, ``full_gradient_sent``, ``model_sent``, ``outstanding``, ``last_version``.

Also exported: ``worker_proof(secret, nm, nw) -> bytes`` and ``master_proof(secret, nm, nw) -> bytes``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from . import wire
from .wire import WireError

HANDSHAKE = "HANDSHAKE"
CONFIGURING = "CONFIGURING"
READY = "READY"
CLOSING = "CLOSING"
CLOSED = "CLOSED"

MASTER = "master"
WORKER = "worker"
EITHER = "either"

# [WF-8.1-1] who may send each message, and in which states.
SENDER_ROLE: dict[str, str] = {
    "HELLO": WORKER,
    "WELCOME": MASTER,
    "CONFIG": MASTER,
    "SNAPSHOT": MASTER,
    "SNAPSHOT_GRADIENT": WORKER,
    "FULL_GRADIENT": MASTER,
    "MODEL": MASTER,
    "GRADIENT": WORKER,
    "HEARTBEAT": EITHER,
    "ERROR": EITHER,
    "CLOSE": EITHER,
    "AUTH_CHALLENGE": MASTER,
    "AUTH_RESPONSE": WORKER,
    "AUTH_CONFIRM": MASTER,
}
ALLOWED_STATES: dict[str, frozenset[str]] = {
    "HELLO": frozenset({HANDSHAKE}),
    "WELCOME": frozenset({HANDSHAKE}),
    "CONFIG": frozenset({CONFIGURING}),
    "SNAPSHOT": frozenset({READY}),
    "SNAPSHOT_GRADIENT": frozenset({READY}),
    "FULL_GRADIENT": frozenset({READY}),
    "MODEL": frozenset({READY}),
    "GRADIENT": frozenset({READY}),
    "HEARTBEAT": frozenset({CONFIGURING, READY}),
    "ERROR": frozenset({CONFIGURING, READY}),
    "CLOSE": frozenset({HANDSHAKE, CONFIGURING, READY}),
    "AUTH_CHALLENGE": frozenset({HANDSHAKE}),
    "AUTH_RESPONSE": frozenset({HANDSHAKE}),
    "AUTH_CONFIRM": frozenset({HANDSHAKE}),
}
VECTOR_TYPES = frozenset(wire.ALLOWED_ENCODINGS)

# [WF-10-4] senders SHOULD keep reasons within the default max_reason_bytes.
REASON_SOFT_LIMIT = 1024

WORKER_LABEL = b"aiodq-v1 worker"  # 15 ASCII bytes (7.12)
MASTER_LABEL = b"aiodq-v1 master"


def worker_proof(secret: bytes, nm: bytes, nw: bytes) -> bytes:
    """``Pw = HMAC-SHA256(K, "aiodq-v1 worker" || Nm || Nw)`` (7.12)."""
    return hmac.new(secret, WORKER_LABEL + nm + nw, hashlib.sha256).digest()


def master_proof(secret: bytes, nm: bytes, nw: bytes) -> bytes:
    """``Pm = HMAC-SHA256(K, "aiodq-v1 master" || Nm || Nw)`` (7.12)."""
    return hmac.new(secret, MASTER_LABEL + nm + nw, hashlib.sha256).digest()


class SessionReport(NamedTuple):
    """The end-of-session report of WF-8.4-6."""

    clean: bool
    code: int | None

    @property
    def code_name(self) -> str | None:
        """The registry name of ``code`` (section 9), None for no code or an unregistered one."""
        return None if self.code is None else wire.CODE_NAMES.get(self.code)


def _truncate_utf8(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` UTF-8 bytes at a character boundary (WF-7.11-6)."""
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", errors="ignore")


@dataclass(frozen=True)
class Timers:
    """Timer settings of section 8.3, in the caller's time unit (seconds by default)."""

    handshake_timeout: float = 10.0
    heartbeat_interval: float = 5.0
    idle_timeout: float = 30.0

    def __post_init__(self) -> None:
        if min(self.handshake_timeout, self.heartbeat_interval, self.idle_timeout) <= 0:
            raise ValueError("timer values must be positive")
        if self.heartbeat_interval >= self.idle_timeout:  # [WF-8.3-4]
            raise ValueError("heartbeat_interval must be shorter than idle_timeout")


def _violation(code: str, rule: str, detail: str, local: bool) -> WireError:
    return WireError(code, rule, detail, local=local)


def _failure_reason(err: WireError, max_reason_bytes: int) -> str:
    """Reason of the CLOSE sent on a failure: ``"<rule ID>: <detail>"``, cut at a UTF-8 boundary
    (WF-7.11-6) to this endpoint's ``max_reason_bytes`` and to 1024 bytes (WF-10-4)."""
    return _truncate_utf8(f"{err.rule}: {err.detail}", min(max_reason_bytes, REASON_SOFT_LIMIT))


class Endpoint:
    """One end (master or worker) of an aiodq connection; see the module docstring."""

    def __init__(
        self,
        role: str,
        *,
        secret: bytes | None = None,
        nonce_source: Callable[[int], bytes] = os.urandom,
        encodings: Iterable[int] = range(9),
        versions: Iterable[int] = (1,),
        limits: wire.ReceiveContext | None = None,
        timers: Timers | None = None,
        now: float = 0.0,
        session_frame_limit: bool = True,
    ) -> None:
        if role not in (MASTER, WORKER):
            raise ValueError("role must be 'master' or 'worker'")
        if secret is not None and (not isinstance(secret, (bytes, bytearray)) or len(secret) < 16):
            raise ValueError("the shared secret must be at least 16 bytes (7.12)")
        self.role = role
        self._peer_role = WORKER if role == MASTER else MASTER
        self._secret = bytes(secret) if secret is not None else None
        self._nonce_source = nonce_source
        self._config_encodings = frozenset(encodings)
        if not all(0 <= e <= 15 for e in self._config_encodings):
            raise ValueError("encodings must be in 0..15")
        self._versions = frozenset(versions)
        if not self._versions or not all(1 <= v <= 255 for v in self._versions):
            raise ValueError("versions must be in 1..255")  # [WF-6.1-1]
        self._limits = limits or wire.ReceiveContext()
        self._timers = timers or Timers()
        self._session_frame_limit = bool(session_frame_limit)  # [WF-10-5] a SHOULD, on by default

        self._state = HANDSHAKE
        # [WF-8.1-2] in CLOSING: the state the session would be in had this endpoint not sent CLOSE.
        self._check_state: str | None = None
        self._splitter = wire.FrameSplitter(self._frame_context(handshake_done=False, dimension=None))
        self._outbox = bytearray()
        self.error: WireError | None = None
        self.peer_close: dict | None = None
        self.end_of_stream = False
        self.timed_out = False
        # [WF-8.4-6] what the end-of-session report needs.
        self.close_sent = False
        self.close_received = False
        self._first_close_code: int | None = None

        # Handshake (6.1, 6.2, 7.1, 7.2).
        self._hello_sent = False
        self._hello: dict | None = None  # the worker's HELLO (master) or our own (worker)
        self._welcome_seen = False
        self._offered: tuple[int, int] | None = None
        self.negotiated_version: int | None = None
        self.local_encodings: frozenset[int] = self._config_encodings
        self.peer_encodings: frozenset[int] | None = None  # None: all, before the handshake [WF-6.2-4]
        self.worker_id: int | None = None
        self.dimension: int | None = None

        # Shared-secret handshake (7.12-7.14).
        self._nm: bytes | None = None
        self._nw: bytes | None = None
        self._challenge_sent = False
        self._response_seen = False
        self._auth_verified = False
        self._held_hello: dict | None = None
        self._challenge_seen = False
        self._response_sent = False
        self._confirm_seen = False
        self._auth_confirmed = False

        # Sequencing variables (8.2).
        self.current_epoch: int | None = None
        self.snapshot_pending = False
        self.full_gradient_sent = False
        self.model_sent = False
        self.outstanding: tuple[int, int] | None = None
        self.last_version: int | None = None
        self.snapshot: dict | None = None

        # Timers (8.3).
        self._now = now
        self._t_start = now
        self._t_rx = now
        self._t_tx = now
        self._t_close: float | None = None
        self._handshake_done = False  # section 1 "handshake complete", [WF-8.3-1], [WF-10-3]

    # ------------------------------------------------------------------ public helpers

    @property
    def state(self) -> str:
        """The current state name (8.1)."""
        return self._state

    @property
    def session_state(self) -> str:
        """The state incoming frames are checked against (WF-8.1-2)."""
        if self._state == CLOSING:
            assert self._check_state is not None
            return self._check_state
        return self._state

    @property
    def handshake_complete(self) -> bool:
        """Section 1: the master has sent WELCOME; the worker has received CONFIG."""
        return self._handshake_done

    @property
    def report(self) -> SessionReport | None:
        """The end-of-session report (WF-8.4-6), or None while the session has not ended."""
        if self._state != CLOSED:
            return None
        clean = self.close_sent and self.close_received  # [WF-8.4-1]
        if self._first_close_code is not None:
            code: int | None = self._first_close_code
        elif self.timed_out:
            code = wire.ERROR_CODES["TIMEOUT"]
        elif self.error is not None:
            code = self.error.value
        else:
            code = None
        return SessionReport(clean, code)

    def data_to_send(self) -> bytes:
        """Drain the bytes that the endpoint queued by itself."""
        out = bytes(self._outbox)
        self._outbox.clear()
        return out

    def best_version(self) -> int | None:
        """Master: the highest supported version in the offered range (WF-6.1-5), or None."""
        if self._offered is None:
            return None
        lo, hi = self._offered
        common = [v for v in self._versions if lo <= v <= hi]
        return max(common) if common else None

    # ------------------------------------------------------------------ time

    def _advance(self, now: float | None) -> None:
        if now is not None and now > self._now:
            self._now = now

    def poll(self, now: float) -> bytes:
        """Run the timers at ``now`` (8.3) and return the bytes to write."""
        self._advance(now)
        self._run_timers(heartbeat=True)
        return self.data_to_send()

    def next_deadline(self) -> float | None:
        """The earliest time at which a timer of 8.3 expires, or None in CLOSED."""
        t = self._timers
        if self._state == CLOSED:
            return None
        if self._state == CLOSING:
            assert self._t_close is not None
            return min(self._t_close + t.handshake_timeout, self._t_rx + t.idle_timeout)
        deadlines = [self._t_rx + t.idle_timeout]
        if not self._handshake_done:
            deadlines.append(self._t_start + t.handshake_timeout)
        if self._state in (CONFIGURING, READY):
            deadlines.append(self._t_tx + t.heartbeat_interval)
        return min(deadlines)

    def _run_timers(self, heartbeat: bool) -> None:
        """Expired timers, checked in the order of WF-8.3-5."""
        t = self._timers
        now = self._now
        if self._state == CLOSED:
            return
        if self._state == CLOSING:
            assert self._t_close is not None
            # Close timeout [WF-8.3-6], then idle timeout [WF-8.3-3]: CLOSED, nothing sent.
            if now - self._t_close >= t.handshake_timeout or now - self._t_rx >= t.idle_timeout:
                self._state = CLOSED
                self.timed_out = True
                self._splitter.clear()
            return
        if not self._handshake_done and now - self._t_start >= t.handshake_timeout:
            self.timed_out = True
            self._fail(WireError("TIMEOUT", "WF-8.3-1", "handshake did not complete in time"))
        elif now - self._t_rx >= t.idle_timeout:
            self.timed_out = True
            self._fail(WireError("TIMEOUT", "WF-8.3-3", "no bytes received for the idle timeout"))
        elif heartbeat and self._state in (CONFIGURING, READY) and now - self._t_tx >= t.heartbeat_interval:
            self._emit({"type": "HEARTBEAT"})  # [WF-8.3-2]

    # ------------------------------------------------------------------ output

    def _send_version(self, name: str) -> int:
        """Header version of a frame we send (WF-6.1-2, WF-6.1-7, WF-6.1-8)."""
        return wire.expected_header_version(name, self.negotiated_version)

    def _emit(self, message: dict) -> None:
        """Queue a frame generated by the endpoint itself."""
        assert self._state not in (CLOSING, CLOSED)  # nothing is sent in CLOSING [WF-8.1-2]
        self._outbox += wire.encode_message(message, self._send_version(message["type"]))
        self._t_tx = self._now
        if message["type"] == "CLOSE":
            self._note_close(message["code"], sent=True)

    def _note_close(self, code: int, *, sent: bool) -> None:
        """Record a CLOSE sent or received, for the report of WF-8.4-6."""
        if sent:
            self.close_sent = True
        else:
            self.close_received = True
        if self._first_close_code is None:
            self._first_close_code = code

    def _frame_context(self, *, handshake_done: bool, dimension: int | None) -> wire.ReceiveContext:
        """The limits the frame splitter applies in step 1: the handshake frame limit until the
        handshake is complete (WF-10-3), then ``max_frame_bytes``, then, once the dimension is
        known, the session frame limit (WF-10-5)."""
        return dataclasses.replace(
            self._limits,
            before_handshake=not handshake_done,
            session_limit=self._session_frame_limit,
            dimension=dimension,
            encodings=None,
            header_version=None,
        )

    def _complete_handshake(self) -> None:
        """Section 1 "handshake complete": stops the handshake timer (WF-8.3-1) and lifts the
        handshake frame limit (WF-10-3)."""
        self._handshake_done = True
        self._splitter.ctx = self._frame_context(handshake_done=True, dimension=self.dimension)

    def _learn_dimension(self, dim: int) -> None:
        """The session's dimension is known (the master has sent CONFIG, the worker has received
        it): from the next header on, the session frame limit applies (WF-10-5)."""
        self.dimension = dim
        self._splitter.ctx = self._frame_context(handshake_done=self._handshake_done, dimension=dim)

    def _fail(self, err: WireError) -> None:
        """Section 2 "fail with", WF-8.4-3: CLOSE(code) unless already sent, then CLOSED."""
        if self.error is None:
            self.error = err
        if self._state not in (CLOSING, CLOSED):
            reason = _failure_reason(err, self._limits.max_reason_bytes)
            self._emit({"type": "CLOSE", "code": err.value, "reason": reason})
        self._state = CLOSED
        self._splitter.clear()

    # ------------------------------------------------------------------ receiving

    def eof(self, now: float | None = None) -> list[dict]:
        """The stream ended (WF-3-5, WF-8.4-5)."""
        self._advance(now)
        if now is not None:
            self._run_timers(heartbeat=False)
        if self._state == CLOSED:
            return []
        self.end_of_stream = True
        if self._splitter.partial():
            self._fail(WireError("MALFORMED_FRAME", "WF-3-5", "stream ended inside a frame"))
        else:
            self._state = CLOSED  # nothing is sent [WF-8.4-5]
        return []

    def receive(self, data: bytes, now: float | None = None) -> list[dict]:
        """Process received bytes; see the module docstring."""
        if not data:
            return self.eof(now)
        self._advance(now)
        if now is not None:
            self._run_timers(heartbeat=True)
        if self._state == CLOSED:
            return []  # [WF-8.1-3], [WF-7.11-4]
        self._t_rx = self._now  # any received byte restarts the idle timer [WF-8.3-3]
        self._splitter.push(data)
        delivered: list[dict] = []
        while self._state != CLOSED:
            try:
                frame = self._splitter.pop()  # step 1 on the header alone [WF-3-3]
                if frame is None:
                    break  # wait for the whole frame [WF-3-4]
                delivered.extend(self._receive_frame(frame))
            except WireError as err:
                self._fail(err)  # [WF-7-2]
                break
        return delivered

    def _receive_context(self) -> wire.ReceiveContext:
        lim = self._limits
        return wire.ReceiveContext(
            max_frame_bytes=lim.max_frame_bytes,
            max_dimension=lim.max_dimension,
            max_control_bytes=lim.max_control_bytes,
            max_reason_bytes=lim.max_reason_bytes,
            dimension=self.dimension,
            encodings=self.local_encodings,
        )

    def _receive_frame(self, frame: wire.RawFrame) -> list[dict]:
        """Steps 2-9 of the receive procedure [WF-7-1]."""
        name = wire.check_message_type(frame.msg_type)  # step 2
        expected = wire.expected_header_version(name, self.negotiated_version)  # step 3
        if frame.version != expected:
            if name in ("HELLO", "WELCOME"):
                rule = "WF-6.1-2"
            elif self.negotiated_version is None or name in wire.AUTH_TYPES:
                rule = "WF-6.1-8"
            else:
                rule = "WF-6.1-7"
            raise WireError(
                "UNSUPPORTED_VERSION", rule, f"{name} header version {frame.version}, expected {expected}"
            )
        if SENDER_ROLE[name] not in (self._peer_role, EITHER):  # step 4, role first
            raise WireError("UNEXPECTED_MESSAGE", "WF-8.1-1", f"a {self._peer_role} cannot send {name}")
        # step 5; in CLOSING, against the state the session would be in had it not sent CLOSE:
        # the state at the time of the CLOSE, advanced by a crossing WELCOME or CONFIG [WF-8.1-2]
        state = self.session_state
        if state not in ALLOWED_STATES[name]:
            raise WireError("UNEXPECTED_MESSAGE", "WF-8.1-1", f"{name} is not allowed in {state}")
        message = wire.decode_body(
            frame.msg_type, frame.flags, frame.body, self._receive_context()
        )  # steps 6 and 7
        handler = getattr(self, "_on_" + name.lower())
        # Steps 8 and 9.  Step 8 covers the order of the handshake (7.1-4, 7.2-4, 7.12-3, 7.13-2,
        # 7.14-1, 7.14-2), checked only once the body has decoded [WF-7-1], and the rules of 8.2.
        return handler(message)

    def _closing(self) -> bool:
        return self._state == CLOSING

    def _set_state(self, state: str) -> None:
        """Transition of 8.1 caused by a received WELCOME or CONFIG.  In CLOSING the state stays
        CLOSING and only the state that frames are checked against advances [WF-8.1-2]."""
        if self._state == CLOSING:
            self._check_state = state
        elif self._state != CLOSED:
            self._state = state

    def _on_hello(self, m: dict) -> list[dict]:
        if self._hello is not None:
            raise WireError("UNEXPECTED_MESSAGE", "WF-7.1-4", "second HELLO")
        self._offered = (m["min_version"], m["max_version"])
        if self.best_version() is None:
            self._offered = None
            raise WireError("UNSUPPORTED_VERSION", "WF-7.1-7", "no common protocol version")
        self._hello = m
        self.peer_encodings = frozenset(m["encodings"])  # [WF-7.1-8]
        if self._secret is None:
            return [m]
        # [WF-7.12-1] challenge first; the HELLO reaches the application after verification.
        self._held_hello = m
        if not self._closing():  # no automatic answer in CLOSING [WF-8.1-2]
            self._nm = self._fresh_nonce()
            self._emit({"type": "AUTH_CHALLENGE", "nonce": self._nm})
            self._challenge_sent = True
        return []

    def _on_welcome(self, m: dict) -> list[dict]:
        # Step 8, once the body has decoded: 7.14-2 first, then 7.2-4, then 6.1-6 [WF-7.14-2].
        if self._secret is not None and not self._auth_confirmed:
            raise WireError("AUTH_FAILED", "WF-7.14-2", "WELCOME before a valid AUTH_CONFIRM")
        if not self._hello_sent or self._welcome_seen:
            raise WireError("UNEXPECTED_MESSAGE", "WF-7.2-4", "WELCOME that answers no HELLO")
        assert self._offered is not None
        lo, hi = self._offered
        if not lo <= m["version"] <= hi or m["version"] not in self._versions:
            raise WireError(
                "UNSUPPORTED_VERSION",
                "WF-6.1-6",
                f"WELCOME version {m['version']} not offered or not supported",
            )
        self._welcome_seen = True
        self.negotiated_version = m["version"]  # [WF-6.1-7], [WF-7.2-7]
        self.peer_encodings = frozenset(m["encodings"])
        self.worker_id = m["worker_id"]
        self._set_state(CONFIGURING)  # in CLOSING, only the checked state [WF-8.1-2]
        return [m]

    def _on_config(self, m: dict) -> list[dict]:
        # A second CONFIG cannot get here: the (checked) state is READY after the first [WF-8.1-2].
        self.dimension = m["dim"]  # [WF-7.3-6]
        self._complete_handshake()  # the worker's handshake completes here [WF-8.3-1], [WF-10-3]
        self._learn_dimension(m["dim"])  # session frame limit, in CLOSING too [WF-10-5] (N21)
        self._set_state(READY)  # in CLOSING, only the checked state [WF-8.1-2]
        return [m]

    def _on_snapshot(self, m: dict) -> list[dict]:
        self._check_snapshot(m, local=False)
        self._apply_snapshot(m)
        return [m]

    def _on_snapshot_gradient(self, m: dict) -> list[dict]:
        self._check_snapshot_gradient(m, local=False)
        self.snapshot_pending = False  # [WF-8.2-8]
        return [m]

    def _on_full_gradient(self, m: dict) -> list[dict]:
        self._check_full_gradient(m, local=False)
        self.full_gradient_sent = True
        return [m]

    def _on_model(self, m: dict) -> list[dict]:
        self._check_model(m, local=False)
        self._apply_model(m)
        return [m]

    def _on_gradient(self, m: dict) -> list[dict]:
        self._check_gradient(m, local=False)
        self.outstanding = None
        return [m]

    def _on_heartbeat(self, m: dict) -> list[dict]:
        return [m]  # no state change [WF-7.9-3]

    def _on_error(self, m: dict) -> list[dict]:
        return [m]  # no protocol state change [WF-7.10-2]

    def _on_close(self, m: dict) -> list[dict]:
        self.peer_close = m
        self._note_close(m["code"], sent=False)  # [WF-8.4-6]
        if self._state != CLOSING:  # no answer in CLOSING [WF-8.1-2]
            self._emit({"type": "CLOSE", "code": 0, "reason": ""})  # [WF-7.11-3]
        self._state = CLOSED  # [WF-8.4-2]
        # Ignore what follows the CLOSE frame, whole frames or part of one: nothing after it can
        # make this endpoint fail, not even the end of the stream [WF-7.11-4], [WF-3-5], [WF-8.4-5].
        self._splitter.clear()
        return [m]

    def _on_auth_challenge(self, m: dict) -> list[dict]:
        # [WF-7.12-3] after the 32-byte check (step 7): no secret, then ordering.
        if self._secret is None:
            raise WireError("AUTH_FAILED", "WF-7.12-3", "AUTH_CHALLENGE but no shared secret")
        if not self._hello_sent or self._challenge_seen or self._welcome_seen:
            raise WireError("UNEXPECTED_MESSAGE", "WF-7.12-3", "AUTH_CHALLENGE out of order")
        self._challenge_seen = True
        if not self._closing():  # no automatic answer in CLOSING [WF-8.1-2]
            self._nm = m["nonce"]
            self._nw = self._fresh_nonce()
            self._emit(
                {
                    "type": "AUTH_RESPONSE",
                    "nonce": self._nw,
                    "mac": worker_proof(self._secret, self._nm, self._nw),
                }
            )  # [WF-7.13-1]
            self._response_sent = True
        return []  # [WF-7.14-3]

    def _on_auth_response(self, m: dict) -> list[dict]:
        if not self._challenge_sent or self._response_seen:
            raise WireError(
                "UNEXPECTED_MESSAGE",
                "WF-7.13-2",
                "AUTH_RESPONSE that answers no AUTH_CHALLENGE of this master",
            )
        self._response_seen = True
        assert self._secret is not None and self._nm is not None
        expected = worker_proof(self._secret, self._nm, m["nonce"])
        if not hmac.compare_digest(expected, m["mac"]):  # constant time [WF-7.13-2]
            raise WireError("AUTH_FAILED", "WF-7.13-2", "wrong worker proof")
        self._nw = m["nonce"]
        self._auth_verified = True
        if not self._closing():  # no automatic answer in CLOSING [WF-8.1-2]
            self._emit(
                {"type": "AUTH_CONFIRM", "mac": master_proof(self._secret, self._nm, self._nw)}
            )  # [WF-7.13-3]
        held, self._held_hello = self._held_hello, None
        return [held] if held is not None else []

    def _on_auth_confirm(self, m: dict) -> list[dict]:
        if not self._response_sent or self._confirm_seen:
            raise WireError(
                "UNEXPECTED_MESSAGE", "WF-7.14-1", "AUTH_CONFIRM that answers no AUTH_RESPONSE of this worker"
            )
        self._confirm_seen = True
        assert self._secret is not None and self._nm is not None and self._nw is not None
        if not hmac.compare_digest(master_proof(self._secret, self._nm, self._nw), m["mac"]):
            raise WireError("AUTH_FAILED", "WF-7.14-1", "wrong master proof")
        self._auth_confirmed = True
        return []

    def _fresh_nonce(self) -> bytes:
        nonce = bytes(self._nonce_source(wire.NONCE_SIZE))
        if len(nonce) != wire.NONCE_SIZE:
            raise ValueError("nonce_source must return 32 bytes")
        return nonce

    # ------------------------------------------------------------------ sequencing (8.2)

    def _check_snapshot(self, m: dict, local: bool) -> None:
        if self.snapshot_pending:  # [WF-8.2-3]
            raise _violation("UNEXPECTED_MESSAGE", "WF-8.2-3", "SNAPSHOT during the snapshot phase", local)
        if self.current_epoch is not None and m["epoch"] <= self.current_epoch:  # [WF-8.2-1]
            raise _violation(
                "UNKNOWN_EPOCH",
                "WF-8.2-1",
                f"SNAPSHOT epoch {m['epoch']} not above {self.current_epoch}",
                local,
            )

    def _apply_snapshot(self, m: dict) -> None:
        self.current_epoch = m["epoch"]  # [WF-8.2-8]
        self.snapshot_pending = True
        self.full_gradient_sent = False
        self.model_sent = False
        self.snapshot = m["vector"]  # x_snap [WF-7.4-6]

    def _check_snapshot_gradient(self, m: dict, local: bool) -> None:
        # [WF-8.2-4] in this order.
        if not self.snapshot_pending:
            raise _violation("UNEXPECTED_MESSAGE", "WF-8.2-4", "no snapshot phase is open", local)
        if m["epoch"] != self.current_epoch:
            raise _violation(
                "UNKNOWN_EPOCH",
                "WF-8.2-4",
                f"SNAPSHOT_GRADIENT epoch {m['epoch']} is not {self.current_epoch}",
                local,
            )
        if self.outstanding is not None:
            raise _violation(
                "UNEXPECTED_MESSAGE", "WF-8.2-4", "SNAPSHOT_GRADIENT while a MODEL is outstanding", local
            )

    def _check_full_gradient(self, m: dict, local: bool) -> None:
        # [WF-8.2-5] in this order.
        if self.current_epoch is None or self.snapshot_pending:
            raise _violation(
                "UNEXPECTED_MESSAGE",
                "WF-8.2-5",
                "FULL_GRADIENT before a SNAPSHOT or during the snapshot phase",
                local,
            )
        if m["epoch"] != self.current_epoch:
            raise _violation(
                "UNKNOWN_EPOCH",
                "WF-8.2-5",
                f"FULL_GRADIENT epoch {m['epoch']} is not {self.current_epoch}",
                local,
            )
        if self.full_gradient_sent or self.model_sent:
            raise _violation(
                "UNEXPECTED_MESSAGE",
                "WF-8.2-5",
                "FULL_GRADIENT after a FULL_GRADIENT or MODEL of this epoch",
                local,
            )

    def _check_model(self, m: dict, local: bool) -> None:
        # [WF-8.2-6] in this order.
        if self.current_epoch is None or self.snapshot_pending:
            raise _violation(
                "UNEXPECTED_MESSAGE",
                "WF-8.2-6",
                "MODEL before a SNAPSHOT or during the snapshot phase",
                local,
            )
        if m["epoch"] != self.current_epoch:
            raise _violation(
                "UNKNOWN_EPOCH", "WF-8.2-6", f"MODEL epoch {m['epoch']} is not {self.current_epoch}", local
            )
        if self.outstanding is not None:
            raise _violation(
                "UNEXPECTED_MESSAGE", "WF-8.2-6", "MODEL while another MODEL is outstanding", local
            )
        if self.last_version is not None and m["version"] < self.last_version:
            raise _violation(
                "VERSION_MISMATCH",
                "WF-8.2-2",
                f"MODEL version {m['version']} below {self.last_version}",
                local,
            )

    def _apply_model(self, m: dict) -> None:
        self.outstanding = (m["epoch"], m["version"])  # [WF-8.2-8]
        self.last_version = m["version"]
        self.model_sent = True

    def _check_gradient(self, m: dict, local: bool) -> None:
        # [WF-8.2-7] in this order.
        if self.outstanding is None:
            raise _violation("UNEXPECTED_MESSAGE", "WF-8.2-7", "GRADIENT but no MODEL outstanding", local)
        epoch, version = self.outstanding
        if m["epoch"] != epoch:
            raise _violation(
                "UNKNOWN_EPOCH", "WF-8.2-7", f"GRADIENT epoch {m['epoch']} is not the MODEL's {epoch}", local
            )
        if m["version"] > version:
            raise _violation(
                "FUTURE_VERSION",
                "WF-8.2-7",
                f"GRADIENT version {m['version']} above the MODEL's {version}",
                local,
            )
        if m["version"] < version:
            raise _violation(
                "VERSION_MISMATCH",
                "WF-8.2-7",
                f"GRADIENT version {m['version']} below the MODEL's {version}",
                local,
            )

    # ------------------------------------------------------------------ sending

    def close(self, code: int = 0, reason: str = "", now: float | None = None) -> bytes:
        """Send CLOSE (WF-8.4-1) and return the bytes to write."""
        return self.send({"type": "CLOSE", "code": code, "reason": reason}, now)

    def send(self, message: dict, now: float | None = None) -> bytes:
        """Check and encode one message of the application; see the module docstring."""
        self._advance(now)
        if now is not None:
            self._run_timers(heartbeat=False)
        if not isinstance(message, dict) or message.get("type") not in wire.MESSAGE_TYPES:
            raise WireError("PROTOCOL_ERROR", "WF-12-4", "not a known message", local=True)
        name = message["type"]
        if self._state == CLOSED:
            raise WireError("UNEXPECTED_MESSAGE", "WF-8.1-3", "the connection is CLOSED", local=True)
        if self._state == CLOSING:
            raise WireError("UNEXPECTED_MESSAGE", "WF-7.11-2", "CLOSE was already sent", local=True)
        if name in wire.AUTH_TYPES:
            raise WireError(
                "PROTOCOL_ERROR", "WF-7.14-3", "AUTH messages are produced by the endpoint itself", local=True
            )
        if SENDER_ROLE[name] not in (self.role, EITHER):
            raise WireError("UNEXPECTED_MESSAGE", "WF-8.1-1", f"a {self.role} cannot send {name}", local=True)
        if self._state not in ALLOWED_STATES[name]:
            raise WireError(
                "UNEXPECTED_MESSAGE", "WF-8.1-1", f"{name} is not allowed in {self._state}", local=True
            )
        frame = wire.encode_message(message, self._send_version(name))  # PROTOCOL_ERROR [WF-9-3]
        self._check_send(name, message)
        self._apply_send(name, message)
        out = bytes(self._outbox) + frame
        self._outbox.clear()
        self._t_tx = self._now  # restarts the heartbeat interval [WF-8.3-2]
        return out

    def _check_send(self, name: str, m: dict) -> None:
        """Local refusals (WF-8.1-1 table applied to sends, 8.2 rules, 6.2-2, 5.2-4, ...)."""
        if name in VECTOR_TYPES:
            enc = wire.ENCODINGS[m["vector"]["encoding"]]
            if self.peer_encodings is not None and enc not in self.peer_encodings:
                raise WireError(
                    "UNSUPPORTED_ENCODING",
                    "WF-6.2-2",
                    f"the peer did not announce {m['vector']['encoding']}",
                    local=True,
                )
            if m["vector"]["dim"] != self.dimension:
                raise WireError(
                    "WRONG_DIMENSION",
                    "WF-5.2-4",
                    f"vector dimension {m['vector']['dim']} is not {self.dimension}",
                    local=True,
                )
        if name == "HELLO":
            if self._hello_sent:
                raise WireError("UNEXPECTED_MESSAGE", "WF-7.1-4", "second HELLO", local=True)
            self._check_announce(m["encodings"])
        elif name == "WELCOME":
            if self._hello is None:
                raise WireError("UNEXPECTED_MESSAGE", "WF-7.2-4", "WELCOME before a HELLO", local=True)
            if self._secret is not None and not self._auth_verified:
                raise WireError(
                    "UNEXPECTED_MESSAGE",
                    "WF-7.12-1",
                    "WELCOME before the worker's AUTH_RESPONSE was verified",
                    local=True,
                )
            assert self._offered is not None
            lo, hi = self._offered
            if not lo <= m["version"] <= hi or m["version"] not in self._versions:
                raise WireError(
                    "UNSUPPORTED_VERSION",
                    "WF-7.2-1",
                    f"version {m['version']} not offered or not supported",
                    local=True,
                )
            self._check_announce(m["encodings"])
        elif name == "SNAPSHOT":
            self._check_snapshot(m, local=True)
        elif name == "SNAPSHOT_GRADIENT":
            self._check_snapshot_gradient(m, local=True)
        elif name == "FULL_GRADIENT":
            self._check_full_gradient(m, local=True)
        elif name == "MODEL":
            self._check_model(m, local=True)
        elif name == "GRADIENT":
            self._check_gradient(m, local=True)
        elif (
            name in ("ERROR", "CLOSE")
            and len(m.get("reason", "").encode("utf-8")) > self._limits.max_reason_bytes
        ):
            raise WireError("LIMIT_EXCEEDED", "WF-7.10-5", "reason longer than max_reason_bytes", local=True)

    def _check_announce(self, encodings: Iterable[int]) -> None:
        extra = set(encodings) - self._config_encodings
        if extra:  # [WF-6.2-5]
            raise WireError(
                "UNSUPPORTED_ENCODING", "WF-6.2-5", f"cannot announce encodings {sorted(extra)}", local=True
            )

    def _apply_send(self, name: str, m: dict) -> None:
        if name == "HELLO":
            self._hello_sent = True
            self._hello = m
            self._offered = (m["min_version"], m["max_version"])
            self.local_encodings = frozenset(m["encodings"])  # [WF-6.2-5]
        elif name == "WELCOME":
            self.negotiated_version = m["version"]  # [WF-6.1-7]
            self.local_encodings = frozenset(m["encodings"])
            self.worker_id = m["worker_id"]
            self._complete_handshake()  # the master's handshake completes here [WF-8.3-1], [WF-10-3]
            self._state = CONFIGURING  # [WF-7.2-3]
        elif name == "CONFIG":
            self._learn_dimension(m["dim"])  # session frame limit from now on [WF-10-5]
            self._state = READY  # [WF-7.3-2]
        elif name == "SNAPSHOT":
            self._apply_snapshot(m)
        elif name == "SNAPSHOT_GRADIENT":
            self.snapshot_pending = False
        elif name == "FULL_GRADIENT":
            self.full_gradient_sent = True
        elif name == "MODEL":
            self._apply_model(m)
        elif name == "GRADIENT":
            self.outstanding = None
        elif name == "CLOSE":
            self._check_state = self._state  # advanced later by a crossing WELCOME/CONFIG [WF-8.1-2]
            self._state = CLOSING  # [WF-8.4-1]
            self._t_close = self._now
            self._note_close(m["code"], sent=True)  # [WF-8.4-6]


class Master(Endpoint):
    """The master (parameter server) end of a connection."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(MASTER, **kwargs)  # type: ignore[arg-type]


class Worker(Endpoint):
    """A worker end of a connection."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(WORKER, **kwargs)  # type: ignore[arg-type]
