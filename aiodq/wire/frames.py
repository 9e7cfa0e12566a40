"""Frames: the 7-byte header and a streaming reader (wire-format.md section 3).

```
 0        1        2        3                                   7
+--------+--------+--------+--------+--------+--------+--------+
| version|  type  | flags  |        body length (u32, LE)      |
+--------+--------+--------+--------+--------+--------+--------+
```
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from ..config import Limits
from ..errors import CodecError, ErrorCode

__all__ = ["HEADER_SIZE", "Frame", "FrameReader", "MessageType", "encode_frame"]

#: Bytes in a frame header.
HEADER_SIZE = 7
_HEADER = struct.Struct("<BBBI")


class MessageType(IntEnum):
    """Frame types (wire-format.md 7)."""

    #: "Worker to master: versions and encodings offered."
    HELLO = 0x01
    #: "Master to worker: version chosen, worker id, encodings."
    WELCOME = 0x02
    #: "Master to worker: the run configuration."
    CONFIG = 0x03
    #: "Master to worker: an epoch starts; the snapshot x_snap."
    SNAPSHOT = 0x04
    #: "Worker to master: local gradient sum and loss at x_snap."
    SNAPSHOT_GRADIENT = 0x05
    #: "Master to worker: the full gradient g_snap."
    FULL_GRADIENT = 0x06
    #: "Master to worker: a model to compute on."
    MODEL = 0x07
    #: "Worker to master: a gradient computed on a model."
    GRADIENT = 0x08
    #: "Either direction: proof of life."
    HEARTBEAT = 0x09
    #: "Either direction: one message rejected."
    ERROR = 0x0A
    #: "Either direction: end of session."
    CLOSE = 0x0B
    #: "Master to worker: prove you hold the secret; a 32-byte nonce."
    AUTH_CHALLENGE = 0x0C
    #: "Worker to master: the worker's nonce and its HMAC."
    AUTH_RESPONSE = 0x0D
    #: "Master to worker: the master's HMAC."
    AUTH_CONFIRM = 0x0E


#: MODEL flag: "the vector is x - x_snap, not x" (wire-format.md 7.7).
FLAG_RELATIVE = 0x01


@dataclass(frozen=True, slots=True)
class Frame:
    """One whole frame as read off the stream, body not yet decoded."""

    #: The header's version byte.
    version: int
    #: The message type byte (not yet checked against :class:`MessageType`).
    type: int
    #: The flags byte.
    flags: int
    #: The body.
    body: bytes


def encode_frame(version: int, message_type: int, flags: int, parts: list[bytes]) -> bytes:
    """Return the frame: header then the body made of ``parts``."""
    length = sum(len(part) for part in parts)
    if length > 0xFFFF_FFFF:
        raise ValueError("a frame body is at most 2**32 - 1 bytes")
    return b"".join([_HEADER.pack(version, message_type, flags, length), *parts])


class FrameReader:
    """Accumulates bytes and hands out whole frames, checking the size limit early.

    Parsing is transactional: a frame is consumed only once all of it has
    arrived, so any split of the input gives the same frames.
    """

    __slots__ = ("_buffer", "_limits")

    def __init__(self, limits: Limits) -> None:
        self._buffer = bytearray()
        self._limits = limits

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as frames."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        self._buffer += data

    def next_frame(self) -> Frame | None:
        """Return the next whole frame, or None if more bytes are needed.

        Raises:
            CodecError: FRAME_TOO_LARGE as soon as a header declares a body over
                the limit (wire-format.md 3: before the body is buffered).
        """
        if len(self._buffer) < HEADER_SIZE:
            return None
        version, message_type, flags, length = _HEADER.unpack_from(self._buffer)
        if length > self._limits.max_frame_bytes:
            raise CodecError(
                f"frame body of {length} bytes exceeds the limit {self._limits.max_frame_bytes}",
                ErrorCode.FRAME_TOO_LARGE,
            )
        end = HEADER_SIZE + length
        if len(self._buffer) < end:
            return None
        with memoryview(self._buffer) as view:
            body = view[HEADER_SIZE:end].tobytes()  # one copy (a bytearray slice would make two)
        del self._buffer[:end]
        return Frame(version, message_type, flags, body)
