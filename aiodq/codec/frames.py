"""Frames: the 7-byte header and a streaming reader (wire-format.md section 3).

```
 0        1        2        3                                   7
+--------+--------+--------+--------+--------+--------+--------+
| version|  type  | flags  |        body length (u32, LE)      |
+--------+--------+--------+--------+--------+--------+--------+
```
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from ..config import Limits
from ..errors import CodecError, ErrorCode
from .registry import MessageType

__all__ = ["HEADER_SIZE", "Frame", "FrameReader", "encode_frame", "heartbeat_frame"]

#: Bytes in a frame header.
HEADER_SIZE = 7
_HEADER = struct.Struct("<BBBI")


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


@functools.cache
def heartbeat_frame(version: int) -> bytes:
    """The bytes of a HEARTBEAT frame of ``version`` (a header with no body; wire-format.md 7.9)."""
    return encode_frame(version, MessageType.HEARTBEAT, 0, [])


class FrameReader:
    """Accumulates bytes and hands out whole frames, checking the size limit early.

    Parsing is transactional: a frame is consumed only once all of it has
    arrived, so any split of the input gives the same frames.
    """

    __slots__ = ("_buffer", "max_frame_bytes")

    def __init__(self, limits: Limits, *, max_frame_bytes: int | None = None) -> None:
        self._buffer = bytearray()
        #: The largest body accepted now (default ``limits.max_frame_bytes``); a connection lowers
        #: it until its handshake is complete (wire-format.md 10-3).
        self.max_frame_bytes = limits.max_frame_bytes if max_frame_bytes is None else max_frame_bytes

    @property
    def buffered(self) -> int:
        """Bytes received but not yet handed out as frames."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        self._buffer += data

    def skip_repeats(self, frame: bytes) -> int:
        """Consume the copies of ``frame`` (a whole frame's bytes) at the front; return how many.

        Compared in blocks that double while they match: a run of n copies takes O(log n) calls,
        each a memcmp, so a peer's flood of HEARTBEATs costs the receiver next to nothing
        (wire-format.md 7.9).
        """
        buffer, size, count, step = self._buffer, len(frame), 0, 1
        while step:
            if buffer.startswith(frame * step, count * size):
                count += step
                step *= 2
            else:
                step //= 2
        del buffer[: count * size]
        return count

    def next_frame(self) -> Frame | None:
        """Return the next whole frame, or None if more bytes are needed.

        Raises:
            CodecError: FRAME_TOO_LARGE as soon as a header declares a body over
                the limit (wire-format.md 3: before the body is buffered).
        """
        if len(self._buffer) < HEADER_SIZE:
            return None
        version, message_type, flags, length = _HEADER.unpack_from(self._buffer)
        if length > self.max_frame_bytes:
            raise CodecError(
                f"frame body of {length} bytes exceeds the limit {self.max_frame_bytes}",
                ErrorCode.FRAME_TOO_LARGE,
            )
        end = HEADER_SIZE + length
        if len(self._buffer) < end:
            return None
        with memoryview(self._buffer) as view:
            body = view[HEADER_SIZE:end].tobytes()  # one copy (a bytearray slice would make two)
        del self._buffer[:end]
        return Frame(version, message_type, flags, body)
