"""Bit packing of fixed-width integer codes (wire-format.md section 5.1).

A sequence of ``n`` codes of ``width`` bits is written as one little-endian bit
stream: bit ``j`` of code ``i`` is stream bit ``i * width + j``, and stream bit
``k`` is bit ``k % 8`` (least significant first) of byte ``k // 8``.  The stream
takes ``ceil(n * width / 8)`` bytes and the padding bits of the last byte are
zero, so the packing is canonical.

Signed codes are stored in ``width``-bit two's complement; unsigned codes as
they are.  Widths 1, 2, 4, 8 and 16 have dedicated paths; 3 to 7 and the even
widths 10 to 14 pack groups of codes through 64-bit words; the odd widths 9 to
15, and a few codes of any width but 8 and 16 (copies), go through a matrix of
bits, one row per code (``numpy.unpackbits`` and ``numpy.packbits``): for a few
hundred codes numpy's fixed cost per call outweighs the per-code work, and that
path makes the fewest calls.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_WIDTH",
    "aligned_width",
    "pack",
    "packed_size",
    "unpack",
]

#: Widest code the packer handles (wire-format.md 5.1: widths 1 to 16).
MAX_WIDTH = 16

_IntArray = npt.NDArray[Any]


def packed_size(count: int, width: int) -> int:
    """Return the number of bytes that ``count`` codes of ``width`` bits take."""
    return (count * width + 7) // 8


def aligned_width(width: int) -> int:
    """The narrowest of 1, 2, 4, 8 and 16 bits that holds codes of ``width`` bits.

    Codes of these widths fill whole bytes or whole shares of one, and pack and unpack
    without moving bits across byte edges: at 8 and 16 bits packing is a copy, at 2 and 4 a
    few passes over 64-bit words.  A sender may put ``width``-bit codes in such a container
    (wire-format.md 5.5-5): more bytes, less CPU time.

    Raises:
        ValueError: if ``width`` is out of range.
    """
    _check_width(width)
    return 1 << (width - 1).bit_length()


def _check_width(width: int) -> None:
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"bit width must be between 1 and {MAX_WIDTH}, got {width}")


def pack(codes: _IntArray, width: int) -> bytes:
    """Pack integer codes into a little-endian bit stream of ``width`` bits each.

    Args:
        codes: one-dimensional integer array.  Each value must fit ``width``
            bits, either as a two's complement signed value or as an unsigned
            one; only the low ``width`` bits of each value are kept.
        width: bits per code, 1 to 16.

    Returns:
        ``packed_size(len(codes), width)`` bytes with zero padding bits.

    Raises:
        ValueError: if ``width`` is out of range or ``codes`` is not 1-D.
    """
    _check_width(width)
    codes = np.asarray(codes)
    if codes.ndim != 1:
        raise ValueError("codes must be a one-dimensional array")
    n = codes.shape[0]
    if n == 0:
        return b""
    if width == 8:
        as_bytes = codes.view(np.uint8) if codes.dtype == np.int8 else codes.astype(np.uint8)
        return bytes(as_bytes.tobytes())
    if width == 16:
        return codes.astype("<u2", copy=False).tobytes()
    if (n <= _FEW_TO_PACK and width > 1) or (width > 8 and width % 2):
        return _pack_rows(codes, width)
    if 8 % width == 0:
        return _pack_sub_byte(codes, width)
    if width < 8:
        return _pack_narrow(codes, width)
    return _pack_words(codes, width)


def unpack(data: bytes | memoryview, count: int, width: int, *, signed: bool) -> _IntArray:
    """Unpack ``count`` codes of ``width`` bits from a packed bit stream.

    Args:
        data: exactly ``packed_size(count, width)`` bytes.
        count: number of codes.
        width: bits per code, 1 to 16.
        signed: read the codes as two's complement (True) or unsigned (False).

    Returns:
        For widths up to 8, an ``int8`` array (signed) or ``uint8`` (unsigned);
        for wider codes, ``int16`` or ``uint16``.  For width 8 the array may be a
        read-only view of ``data``.

    Raises:
        ValueError: if ``data`` has the wrong length or a padding bit is set.
    """
    _check_width(width)
    expected = packed_size(count, width)
    if len(data) != expected:
        raise ValueError(f"{count} codes of {width} bits take {expected} bytes, got {len(data)}")
    raw = np.frombuffer(data, dtype=np.uint8)
    used = (count * width) % 8
    # wire-format.md 5.1: padding bits MUST be zero.
    if used and raw[-1] >> used:
        raise ValueError("padding bits of the last byte are not zero")
    narrow = width <= 8
    if count == 0:
        return np.empty(0, dtype=_result_dtype(narrow, signed))
    if width == 8:
        return raw.view(np.int8) if signed else raw
    if width == 16:
        return raw.view("<i2").astype(np.int16) if signed else raw.view("<u2").astype(np.uint16)
    if count <= _FEW_TO_UNPACK or (count <= _FEW_TO_UNPACK_FOLDED and width < 8 and 8 % width):
        values = _unpack_rows(raw, count, width)
    elif 8 % width == 0:
        return _unpack_sub_byte(raw, count, width, signed)
    elif width < 8:
        values = _unpack_narrow(raw, count, width)
    elif width % 2 == 0:
        values = _unpack_words(raw, count, width)
    else:
        values = _unpack_bits(raw, count, width)
    values = values.astype(np.uint8 if narrow else np.uint16, copy=False)  # each path returns a new array
    if signed:
        # Sign-extend the two's complement field: (v ^ half) - half, computed
        # modulo 2**8 or 2**16, is the signed value's bit pattern.
        half = values.dtype.type(1 << (width - 1))
        values ^= half
        values -= half
        return values.view(np.int8 if narrow else np.int16)
    return values


def _result_dtype(narrow: bool, signed: bool) -> type[np.integer]:
    if narrow:
        return np.int8 if signed else np.uint8
    return np.int16 if signed else np.uint16


# -- widths dividing 8: several codes per byte -------------------------------


def _pack_sub_byte(codes: _IntArray, width: int) -> bytes:
    """Pack 8 / width codes per byte, working on 8 codes' low bytes at a time as one uint64.

    Within a little-endian word, byte k holds code k.  Width 4: keep each byte's low
    nibble and OR every byte into its lower neighbour shifted by 4, so the even bytes
    hold the packed pairs.  Width 2: keep 2 bits per byte, then fold twice (by 6 and
    by 12 bits), so byte 0 of every 32-bit lane holds its four codes.  Taking those
    bytes is one narrowing cast: three or four passes over d / 8 words in all.
    """
    low = codes.view(np.uint8) if codes.dtype.itemsize == 1 else codes.astype(np.uint8)
    if width == 1:
        return np.packbits(low & np.uint8(1), bitorder="little").tobytes()
    count = low.shape[0]
    if count % 8:
        low = np.concatenate([low, np.zeros(-count % 8, dtype=np.uint8)])
    mask = (1 << width) - 1
    words: npt.NDArray[np.uint64] = np.ascontiguousarray(low).view("<u8") & np.uint64(
        mask * 0x0101_0101_0101_0101
    )
    words |= words >> np.uint64(8 - width)
    if width == 2:
        words |= words >> np.uint64(12)
    lanes = words.view("<u2" if width == 4 else "<u4")
    return lanes.astype(np.uint8)[: packed_size(count, width)].tobytes()


def _lookup_table(width: int) -> npt.NDArray[Any]:
    """For each key, its sign-extended codes as int8 values in one little-endian uint64.

    Width 2 keys are 16-bit pairs of packed bytes (8 codes); width 1 keys are
    single bytes (8 codes).  One gather over the packed data yields the codes
    in order.  (Width 4 unpacks arithmetically: see :func:`_unpack_nibbles`.)
    """
    table = _TABLES.get(width)
    if table is None:
        bits_in = 8 if width == 1 else 16
        per_entry = bits_in // width
        values = np.arange(1 << bits_in, dtype=np.int64)
        half = 1 << (width - 1)
        entries = np.zeros(1 << bits_in, dtype=np.uint64)
        for k in range(per_entry):
            field = (values >> (k * width)) & ((1 << width) - 1)
            signed = (field ^ half) - half
            entries |= (signed.astype(np.uint64) & np.uint64(0xFF)) << np.uint64(8 * k)
        table = entries
        _TABLES[width] = table
    return table


_TABLES: dict[int, npt.NDArray[Any]] = {}


def _unpack_nibbles(raw: npt.NDArray[np.uint8], count: int, signed: bool) -> _IntArray:
    """Width 4: spread each byte's two nibbles into the two bytes of a little-endian uint16.

    ``(w | w << 4) & 0x0F0F`` puts the low nibble in the low byte and the high one
    in the high byte: contiguous 16-bit arithmetic, about twice as fast as a table
    gather here.
    """
    words = raw.astype(np.uint16)
    words |= words << np.uint16(4)
    words &= np.uint16(0x0F0F)
    codes: npt.NDArray[Any] = words.view(np.uint8)[:count]
    if signed:
        codes = codes.view(np.int8)
        codes ^= np.int8(8)  # sign-extend the 4-bit two's complement field: (v ^ 8) - 8
        codes -= np.int8(8)
    return codes


def _unpack_sub_byte(raw: npt.NDArray[np.uint8], count: int, width: int, signed: bool) -> _IntArray:
    """Widths 1 and 2 through a lookup table (one gather yields 8 codes); width 4 arithmetically."""
    if width == 4:
        return _unpack_nibbles(raw, count, signed)
    if width == 1:
        keys: npt.NDArray[Any] = raw
    else:
        if raw.shape[0] % 2:
            raw = np.concatenate([raw, np.zeros(1, dtype=np.uint8)])
        keys = raw.view("<u2")
    codes = np.take(_lookup_table(width), keys).view(np.int8)[:count]
    if signed:
        return codes
    return codes.view(np.uint8) & np.uint8((1 << width) - 1)


# -- widths 3, 5, 6 and 7: eight codes in one 64-bit word ----------------------

#: ``(low, high, shift)`` of the three folds of :func:`_pack_narrow`: each joins pairs of
#: fields of 8, 16 and 32 bits, moving the upper field of a pair down next to the lower one.
_FOLDS = (
    (0x00FF_00FF_00FF_00FF, 0xFF00_FF00_FF00_FF00, 8),
    (0x0000_FFFF_0000_FFFF, 0xFFFF_0000_FFFF_0000, 16),
    (0x0000_0000_FFFF_FFFF, 0xFFFF_FFFF_0000_0000, 32),
)


def _pack_narrow(codes: _IntArray, width: int) -> bytes:
    """Pack codes of 3 to 7 bits: eight codes' low bytes as one uint64 become ``width`` bytes.

    After masking, byte r of a little-endian word holds field r.  Three folds halve
    the number of fields: the upper field of each pair of 8-bit lanes moves right
    by ``8 - width`` next to the lower one, then pairs of 16-bit lanes (``2 width``
    bits each) and of 32-bit lanes, so the low ``8 width`` bits hold the eight codes
    in stream order.  About a dozen passes over d / 8 words instead of one shift per
    code and a reduction.
    """
    low = codes.view(np.uint8) if codes.dtype.itemsize == 1 else codes.astype(np.uint8)
    count = low.shape[0]
    if count % 8:
        low = np.concatenate([low, np.zeros(-count % 8, dtype=np.uint8)])
    words: npt.NDArray[np.uint64] = np.ascontiguousarray(low).view("<u8") & np.uint64(
        ((1 << width) - 1) * 0x0101_0101_0101_0101
    )
    bits = width
    for lower, upper, lane in _FOLDS:
        high = words & np.uint64(upper)
        high >>= np.uint64(lane - bits)
        words &= np.uint64(lower)
        words |= high
        bits *= 2
    # The first `width` bytes of each word, stored through views of the output whose items start
    # `width` bytes apart: each piece (4, 2 or 1 bytes) is one casting copy from the contiguous words,
    # shifted down.  At 10**6 codes of 5 bits 0.11 against 0.28 ms for one strided copy of
    # `width`-byte records (docs/benchmarks.md).
    groups = words.shape[0]
    stream = np.empty(groups * width, dtype=np.uint8)
    for offset, size in _PIECES[width]:
        piece = np.ndarray((groups,), dtype=f"<u{size}", buffer=stream, offset=offset, strides=(width,))
        np.copyto(piece, words >> np.uint64(8 * offset) if offset else words, casting="unsafe")
    return stream[: packed_size(count, width)].tobytes()


#: ``(offset, size)`` of the pieces that :func:`_pack_narrow` stores of each word's first ``width`` bytes.
_PIECES = {3: ((0, 2), (2, 1)), 5: ((0, 4), (4, 1)), 6: ((0, 4), (4, 2)), 7: ((0, 4), (4, 2), (6, 1))}


def _unpack_narrow(raw: npt.NDArray[np.uint8], count: int, width: int) -> _IntArray:
    """Unpack codes of 3 to 7 bits: the folds of :func:`_pack_narrow` undone in reverse order."""
    groups = -(-count // 8)
    # Group g is the `width` bytes from g * width.  Read each as the low bytes of a little-endian
    # uint64 through a view whose items start `width` bytes apart (so they overlap: reading is
    # safe), from a copy padded so the last read stays inside; a mask clears the next group's bytes.
    staged = np.zeros(groups * width + 8, dtype=np.uint8)
    staged[: raw.shape[0]] = raw
    overlapping = np.ndarray((groups,), dtype="<u8", buffer=staged, strides=(width,))
    words = np.bitwise_and(overlapping, np.uint64((1 << (8 * width)) - 1))
    bits = 4 * width
    for _, _, lane in reversed(_FOLDS):
        # Each 2 * lane-bit lane holds two fields of `bits` bits: keep the lower one
        # in place and move the upper one up to the middle of the lane.
        field = sum(((1 << bits) - 1) << start for start in range(0, 64, 2 * lane))
        high = words << np.uint64(lane - bits)
        high &= np.uint64(field << lane)
        words &= np.uint64(field)
        words |= high
        bits //= 2
    values: npt.NDArray[Any] = words.view(np.uint8)[:count]
    return values


# -- groups of codes through 64-bit words ------------------------------------


def _group(width: int) -> tuple[int, int]:
    """Codes per group and bytes per group, for a group that ends on a byte edge."""
    if width < 8:
        return 8, width  # 8 codes of width bits = width bytes
    return 4, width // 2  # 4 codes of an even width = width / 2 bytes


def _pack_words(codes: _IntArray, width: int) -> bytes:
    per_group, group_bytes = _group(width)
    n = codes.shape[0]
    groups = -(-n // per_group)
    padded = np.zeros(groups * per_group, dtype=np.uint64)
    padded[:n] = codes.astype(np.int64, copy=False) & ((1 << width) - 1)
    shifts = np.arange(per_group, dtype=np.uint64) * np.uint64(width)
    words = np.bitwise_or.reduce(padded.reshape(groups, per_group) << shifts, axis=1)
    as_bytes: npt.NDArray[Any] = words.astype("<u8").view(np.uint8).reshape(groups, 8)[:, :group_bytes]
    return bytes(as_bytes.tobytes()[: packed_size(n, width)])


def _unpack_words(raw: npt.NDArray[np.uint8], count: int, width: int) -> _IntArray:
    per_group, group_bytes = _group(width)
    groups = -(-count // per_group)
    staged = np.zeros(groups * group_bytes, dtype=np.uint8)
    staged[: raw.shape[0]] = raw
    buf = np.zeros((groups, 8), dtype=np.uint8)
    buf[:, :group_bytes] = staged.reshape(groups, group_bytes)
    words = buf.view("<u8").reshape(groups, 1)
    shifts = np.arange(per_group, dtype=np.uint64) * np.uint64(width)
    values: npt.NDArray[Any] = (words >> shifts) & np.uint64((1 << width) - 1)
    return values.reshape(-1)[:count]


# -- any width through a matrix of bits ---------------------------------------

#: Up to this many codes every width but 1 (one packbits), 8 and 16 (copies) packs through
#: :func:`_pack_rows`.  Measured on the project's 2-core VM (medians, us, word paths against
#: rows): 123 codes of 3 bits 50 against 9, of 4 bits 18 against 9, of 12 bits 31 against 10;
#: 1,000 codes of 4 bits 15 against 18.
_FEW_TO_PACK = 512
#: Up to this many codes every width but 8 and 16 unpacks through :func:`_unpack_rows` (123 codes of 3 bits:
#: 53 against 10 us; of 4 bits 12.5 against 9.7; 300 of 4 bits 12.2 against 14.7) ...
_FEW_TO_UNPACK = 256
#: ... and widths 3, 5, 6 and 7 up to this many (1,000 codes of 3 bits: 54 against 31 us; 2,000:
#: 56 against 56).
_FEW_TO_UNPACK_FOLDED = 1024


def _pack_rows(codes: _IntArray, width: int) -> bytes:
    """Any width: each code's low ``width`` bits as one row of bits, the rows then packed in order.

    Two numpy calls after the cast (``unpackbits`` over each code's little-endian bytes, then
    ``packbits``).  Odd widths 9 to 15 always take this path: 12 against 21 ms at 10**6 codes
    of 9 bits for the earlier unpack-slice-pack version, which copied every row's first ``width``
    bits out.
    """
    if width <= 8:
        low = codes.view(np.uint8) if codes.dtype.itemsize == 1 else codes.astype(np.uint8)
        rows = low.reshape(-1, 1)
    else:
        rows = codes.astype("<u2", order="C", copy=False).view(np.uint8).reshape(-1, 2)
    bits = np.unpackbits(rows, axis=1, count=width, bitorder="little")
    return np.packbits(bits, bitorder="little").tobytes()


def _unpack_rows(raw: npt.NDArray[np.uint8], count: int, width: int) -> _IntArray:
    """The inverse of :func:`_pack_rows`: unsigned codes, uint8 to 8 bits, else uint16."""
    bits = np.unpackbits(raw, count=count * width, bitorder="little").reshape(count, width)
    rows = np.packbits(bits, axis=1, bitorder="little")
    values: npt.NDArray[Any] = rows.reshape(count) if width <= 8 else rows.view("<u2").reshape(count)
    return values


def _unpack_bits(raw: npt.NDArray[np.uint8], count: int, width: int) -> _IntArray:
    bits = np.unpackbits(raw, bitorder="little")[: count * width].reshape(count, width)
    weights = (1 << np.arange(width, dtype=np.uint32)).astype(np.uint32)
    return bits.astype(np.uint32) @ weights
