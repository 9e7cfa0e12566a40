"""Primitive fields: LEB128 varints, little-endian numbers, and a bounds-checked reader.

wire-format.md 4: every fixed-width integer and float is little-endian; counts,
dimensions, epochs and versions are unsigned LEB128 varints in their shortest
form.  A :class:`Cursor` never reads past its buffer: it raises
:class:`~aiodq.errors.CodecError` with MALFORMED_FRAME instead.
"""

from __future__ import annotations

import math
import struct

from ..errors import CodecError, ErrorCode

__all__ = ["MAX_VARINT", "Cursor", "uvarint"]

#: Largest value a varint may carry (wire-format.md 4.2): 2**63 - 1.
MAX_VARINT = (1 << 63) - 1

_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")
_U16 = struct.Struct("<H")


def uvarint(value: int) -> bytes:
    """Encode ``value`` as an unsigned LEB128 varint in its shortest form."""
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"varint value out of range: {value}")
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


class Cursor:
    """A read position in a byte buffer; every read is bounds-checked."""

    __slots__ = ("_data", "pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._data = memoryview(data).cast("B")
        #: Offset of the next unread byte.
        self.pos = 0

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self._data) - self.pos

    def take(self, count: int, what: str) -> memoryview:
        """Return the next ``count`` bytes, or fail if fewer remain."""
        if count < 0 or count > self.remaining:
            raise CodecError(
                f"{what}: needs {count} bytes, {self.remaining} remain", ErrorCode.MALFORMED_FRAME
            )
        start = self.pos
        self.pos += count
        return self._data[start : self.pos]

    def rest(self) -> memoryview:
        """Return every unread byte."""
        return self.take(self.remaining, "rest")

    def u8(self, what: str) -> int:
        """Read one unsigned byte."""
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        """Read a little-endian unsigned 16-bit integer."""
        value: int = _U16.unpack(self.take(2, what))[0]
        return value

    def f32(self, what: str) -> float:
        """Read a little-endian IEEE-754 binary32."""
        value: float = _F32.unpack(self.take(4, what))[0]
        return value

    def f64(self, what: str, *, finite: bool = True) -> float:
        """Read a little-endian IEEE-754 binary64; by default refuse NaN and infinities."""
        value: float = _F64.unpack(self.take(8, what))[0]
        if finite and not math.isfinite(value):
            raise CodecError(f"{what} is not finite", ErrorCode.NON_FINITE)
        return value

    def uvarint(self, what: str) -> int:
        """Read an unsigned LEB128 varint, refusing non-shortest forms and overflow."""
        value = 0
        for shift in range(0, 63, 7):
            byte = self.u8(what)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                # wire-format.md 4.2: a varint MUST use its shortest form.
                if byte == 0 and shift:
                    raise CodecError(f"{what}: varint not in shortest form", ErrorCode.MALFORMED_FRAME)
                return value  # nine 7-bit groups hold at most 2**63 - 1
        raise CodecError(f"{what}: varint exceeds 2**63 - 1", ErrorCode.MALFORMED_FRAME)

    def expect_end(self, what: str) -> None:
        """Fail unless every byte has been read."""
        if self.remaining:
            raise CodecError(f"{what}: {self.remaining} trailing bytes", ErrorCode.MALFORMED_FRAME)


def pack_f32(value: float) -> bytes:
    """Encode a float32 value, little-endian."""
    return _F32.pack(value)


def pack_f64(value: float) -> bytes:
    """Encode a float64 value, little-endian."""
    return _F64.pack(value)


def pack_u16(value: int) -> bytes:
    """Encode an unsigned 16-bit integer, little-endian."""
    return _U16.pack(value)
