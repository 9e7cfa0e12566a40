"""Configuration objects: frozen, keyword-only, validated on construction."""

from __future__ import annotations

import math
import numbers
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["DEFAULT_LIMITS", "MOST_PARAMETERS", "ConnectionConfig", "Limits", "MasterConfig", "option"]


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None, cli: bool = True) -> Any:
    """A config field with its help text: the one definition of a field and of its command-line option.

    Args:
        default: the field's default value.
        help: what the field means; shown by ``--help`` and in the docs.
        choices: the values a string field may take.
        cli: False for fields the command line does not offer.
    """
    return field(default=default, metadata={"help": help, "choices": choices, "cli": cli})


#: The most parameters a model may have: its RAW_F64 frame, 8 d + 64 bytes, fits the 2**32 - 1 a
#: frame can hold (wire-format.md 3).
MOST_PARAMETERS = (0xFFFF_FFFF - 64) // 8


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Receiver limits, checked before anything is allocated (wire-format.md 10)."""

    max_frame_bytes: int = option(1 << 28, "largest frame body accepted, in bytes")
    max_dimension: int = option(1 << 24, "largest vector dimension accepted")
    max_control_bytes: int = option(1 << 16, "largest HELLO, WELCOME or CONFIG body accepted, in bytes")
    max_reason_bytes: int = option(1024, "largest ERROR or CLOSE reason accepted, in UTF-8 bytes")

    @property
    def handshake_frame_bytes(self) -> int:
        """The frame limit until the handshake is complete (wire-format.md 10-3).

        No message a peer may send before then is longer: HELLO, WELCOME and CONFIG are at
        most ``max_control_bytes``, AUTH messages 64 bytes, CLOSE and ERROR 20 bytes of fixed
        fields plus their reason.
        """
        return min(self.max_frame_bytes, max(self.max_control_bytes, self.max_reason_bytes + 20))

    def session_frame_bytes(self, dim: int) -> int:
        """The frame limit of a session of dimension ``dim`` (wire-format.md 10-4).

        No message of such a session is longer: a vector is at most RAW_F64's ``8 dim`` bytes
        plus 11 of descriptor and dimension, a message's other fields at most 35 (three 9-byte
        varints and a float64), ERROR and CLOSE at most ``max_reason_bytes + 32``; HEARTBEAT is
        empty.  An admitted peer then makes its receiver buffer no more than this.
        """
        return min(
            self.max_frame_bytes,
            max(self.handshake_frame_bytes, 8 * dim + 64, self.max_reason_bytes + 32),
        )

    def check_model(self, dim: int, *, options: bool = False) -> None:
        """Raise ValueError if a session of dimension ``dim`` cannot work within these limits.

        Its vectors must be at most ``max_dimension`` long, and their frames, up to RAW_F64's
        ``8 dim + 64`` bytes (:meth:`session_frame_bytes`), within ``max_frame_bytes``: below
        that, every snapshot report an honest worker sends would be refused as too large, and the
        worker blamed (a newcomer's ``--max-frame-bytes 100``, d = 123).  ``options``: name the
        command-line options instead of the fields.
        """

        def name(field: str) -> str:
            return "--" + field.replace("_", "-") if options else field

        if dim > self.max_dimension:
            raise ValueError(
                f"the model has {dim:,} parameters, above {name('max_dimension')} {self.max_dimension:,}"
            )
        if 8 * dim + 64 > self.max_frame_bytes:
            raise ValueError(
                f"the model has {dim:,} parameters, whose vectors take frames of up to {8 * dim + 64:,} "
                f"bytes, above {name('max_frame_bytes')} {self.max_frame_bytes:,}"
            )

    def fitting(self, dim: int) -> Limits:
        """These limits, raised where a session of dimension ``dim`` needs more.

        For a cluster whose master and workers are one application's own (a local or Ray
        launch of its model): ``max_dimension`` at least ``dim``, and ``max_frame_bytes`` at
        least the ``8 dim + 64`` bytes of a RAW_F64 vector's frame (:meth:`session_frame_bytes`).

        Raises:
            ValueError: if ``dim`` is not positive, or its frames would exceed the 2**32 - 1
                bytes a frame can hold (wire-format.md 3).
        """
        frame = 8 * dim + 64
        if dim < 1 or dim > MOST_PARAMETERS:
            raise ValueError(
                f"a model of {dim:,} parameters cannot travel in frames (wire-format.md 3): "
                f"at most {MOST_PARAMETERS:,}"
            )
        return replace(
            self, max_dimension=max(self.max_dimension, dim), max_frame_bytes=max(self.max_frame_bytes, frame)
        )

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

    limits: Limits = option(DEFAULT_LIMITS, "receiver limits", cli=False)
    handshake_timeout: float = option(10.0, "seconds from connection start until the handshake completes")
    heartbeat_interval: float = option(5.0, "seconds of own silence before a HEARTBEAT is sent")
    idle_timeout: float = option(30.0, "seconds of peer silence before the peer is declared dead")
    #: Vector encodings this side can decode (default: all).  The application
    #: announces the same set in its HELLO or WELCOME; received vectors in
    #: other encodings are refused with UNSUPPORTED_ENCODING.
    encodings: frozenset[int] | None = None
    #: Send quantized dense codes Rice-coded (DENSE_RICE, wire-format.md 5.8) where that is
    #: smaller and the peer announced it; otherwise at fixed width (DENSE).  The values are the
    #: same either way.
    dense_rice: bool = True
    #: Send fixed-width codes byte-aligned: in the narrowest of 1, 2, 4, 8 or 16 bits that holds
    #: them (wire-format.md 5.5-5), more bytes for less CPU time.  The values are the same.
    aligned_codes: bool = False
    #: For a receiver of a run whose GRADIENTs are dense b-bit codes, that b (0: none): a GRADIENT
    #: that comes as a sparse vector is their sparse form, and its analytic bits are counted as its
    #: sender counted them, the dense encoding's (algorithms.md 10).  The wire is the same either way.
    sparse_form_bits: int = 0
    #: Shared secret for the HMAC handshake (wire-format.md 7.12-7.14), or None.  A master
    #: with a secret refuses workers that cannot prove they hold it; a worker with a secret
    #: refuses a master that cannot.
    secret: bytes | None = None
    #: Source of nonces for the handshake (``secrets.token_bytes``; tests may inject one).
    nonce_source: Callable[[int], bytes] = secrets.token_bytes

    def __post_init__(self) -> None:
        for label in ("handshake_timeout", "heartbeat_interval", "idle_timeout"):
            value = getattr(self, label)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive number of seconds, got {value!r}")
        if self.heartbeat_interval >= self.idle_timeout:
            raise ValueError("heartbeat_interval must be shorter than idle_timeout")
        if self.secret is not None and not isinstance(self.secret, bytes | bytearray):
            # (a docs review: a str was taken, then every worker's session died in hmac with a TypeError)
            kind = type(self.secret).__name__
            raise TypeError(f"the shared secret must be bytes (for a str: .encode()), got {kind}")
        if self.secret is not None and len(self.secret) < 16:
            raise ValueError("the shared secret must be at least 16 bytes")
        bits = self.sparse_form_bits
        if (
            isinstance(bits, bool)
            or not isinstance(bits, numbers.Integral)
            or not (bits == 0 or 2 <= bits <= 16)
        ):
            raise ValueError(f"sparse_form_bits must be 0 or a run's code width b, 2 to 16, got {bits}")


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterConfig:
    """How the master treats its peers: admission, deadlines and the guard (docs/security.md).

    None of it travels to the workers; the training itself is :class:`aiodq.TrainConfig`.
    """

    guard: float = option(
        100.0,
        "refuse an update whose norm is over this many times the median of recent ones, and a "
        "snapshot report this far from the others' (0: off)",
    )
    snapshot_timeout: float = option(
        300.0, "seconds a worker has to answer SNAPSHOT; a silent one is cut off and the phase goes on"
    )
    join_timeout: float = option(
        900.0,
        "seconds to wait for all the workers to join (at the start, or after all left); then the run "
        "ends as failed",
    )
    max_unauthenticated: int = option(
        64,
        "connections still in their handshake at once; one more cuts short the oldest of the address "
        "with the most (with TLS, 4 times as many may be in their TLS handshake, cut short alike)",
    )
    rejoin_backoff: float = option(
        1.0,
        "seconds before the shard of a worker removed for what it sent may join again; doubles with "
        "each removal, up to 60 (0: no wait)",
    )
    connection_rate: float = option(
        0.0,
        "new connections a second from one address (an IPv6 one: its /64) after a burst of twice the "
        "workers plus 16; more are closed as they arrive (0: no limit; workers that share the address "
        "of one that reconnects too often are shut out with it)",
    )

    def __post_init__(self) -> None:
        if not (math.isfinite(self.guard) and self.guard >= 0):
            raise ValueError(f"guard must be 0 (off) or a positive factor, got {self.guard!r}")
        if self.guard and self.guard < 2:
            raise ValueError(f"a guard factor below 2 would refuse honest updates, got {self.guard!r}")
        if not (math.isfinite(self.join_timeout) and self.join_timeout > 0):
            raise ValueError(f"join_timeout must be positive, got {self.join_timeout!r}")
        if not (math.isfinite(self.snapshot_timeout) and self.snapshot_timeout > 0):
            raise ValueError(f"snapshot_timeout must be positive, got {self.snapshot_timeout!r}")
        if not (math.isfinite(self.rejoin_backoff) and self.rejoin_backoff >= 0):
            raise ValueError(
                f"rejoin_backoff must be 0 (off) or positive seconds, got {self.rejoin_backoff!r}"
            )
        if not (math.isfinite(self.connection_rate) and self.connection_rate >= 0):
            raise ValueError(
                f"connection_rate must be 0 (no limit) or positive, got {self.connection_rate!r}"
            )
        if not isinstance(self.max_unauthenticated, int) or self.max_unauthenticated < 1:
            raise ValueError(
                f"max_unauthenticated must be a positive integer, got {self.max_unauthenticated!r}"
            )
