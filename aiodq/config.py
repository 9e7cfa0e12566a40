"""Configuration objects: frozen, keyword-only, validated on construction."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["DEFAULT_LIMITS", "ConnectionConfig", "Limits"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Receiver limits, checked before anything is allocated (wire-format.md 10)."""

    #: Largest frame body accepted, in bytes (the header's length field).
    max_frame_bytes: int = 1 << 28
    #: Largest vector dimension accepted.
    max_dimension: int = 1 << 24
    #: Largest body of a msgpack control message (HELLO, WELCOME, CONFIG), in bytes.
    max_control_bytes: int = 1 << 16
    #: Largest UTF-8 reason text in ERROR and CLOSE messages, in bytes.
    max_reason_bytes: int = 1024

    def __post_init__(self) -> None:
        if self.max_frame_bytes < 64 or self.max_frame_bytes > 0xFFFF_FFFF:
            raise ValueError("max_frame_bytes must be between 64 and 2**32 - 1")
        if self.max_dimension < 1:
            raise ValueError("max_dimension must be positive")
        if self.max_control_bytes < 64:
            raise ValueError("max_control_bytes must be at least 64")
        if self.max_reason_bytes < 0:
            raise ValueError("max_reason_bytes must not be negative")


#: The default limits, shared: Limits objects are immutable.
DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionConfig:
    """Options of a sans-I/O connection (wire-format.md 8 and 10)."""

    #: Receiver limits.
    limits: Limits = DEFAULT_LIMITS
    #: Seconds allowed from connection start until the handshake completes.
    handshake_timeout: float = 10.0
    #: Seconds without sending anything after which a HEARTBEAT is sent.
    heartbeat_interval: float = 5.0
    #: Seconds without receiving anything after which the peer is declared dead.
    idle_timeout: float = 30.0
    #: Vector encodings this side can decode (default: all).  The application
    #: announces the same set in its HELLO or WELCOME; received vectors in
    #: other encodings are refused with UNSUPPORTED_ENCODING.
    encodings: frozenset[int] | None = None
    #: Shared secret for the HMAC handshake (wire-format.md 7.12-7.14), or None.  A master
    #: with a secret refuses workers that cannot prove they hold it; a worker with a secret
    #: refuses a master that cannot.
    secret: bytes | None = None
    #: Source of nonces for the handshake (``secrets.token_bytes``; tests may inject one).
    nonce_source: Callable[[int], bytes] = secrets.token_bytes

    def __post_init__(self) -> None:
        for label in ("handshake_timeout", "heartbeat_interval", "idle_timeout"):
            value = getattr(self, label)
            if not value > 0:
                raise ValueError(f"{label} must be positive, got {value!r}")
        if self.heartbeat_interval >= self.idle_timeout:
            raise ValueError("heartbeat_interval must be shorter than idle_timeout")
        if self.secret is not None and len(self.secret) < 16:
            raise ValueError("the shared secret must be at least 16 bytes")
