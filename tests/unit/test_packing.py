"""Bit packing of fixed-width codes (wire-format.md 5.1), checked against a slow reference.

The reference below is written from the spec sentence alone: bit ``j`` of code
``i`` is stream bit ``i * width + j``, and stream bit ``k`` is bit ``k % 8``
(least significant first) of byte ``k // 8``; the last byte's padding bits are
zero.  It builds the stream as one Python integer, so it shares no code path
with the numpy packer.
"""

from __future__ import annotations

import numpy as np
import pytest
from bitarray import bitarray
from hypothesis import given, settings
from hypothesis import strategies as st

from aiodq.codec.packing import MAX_WIDTH, pack, packed_size, unpack

WIDTHS = list(range(1, MAX_WIDTH + 1))
#: Both sides of the packer's small-count thresholds (512 codes to pack; 256, or 1,024 for widths 3,
#: 5, 6 and 7, to unpack), so that every width is checked on each of its paths.
COUNTS = [0, 1, 7, 8, 9, 300, 1001, 5000]


def reference_pack(codes: list[int], width: int) -> bytes:
    """Pack with plain Python integers: LSB-first bit stream, zero padding (wire-format.md 5.1)."""
    mask = (1 << width) - 1
    stream = 0
    for i, code in enumerate(codes):
        stream |= (code & mask) << (i * width)
    return stream.to_bytes((len(codes) * width + 7) // 8, "little")


def reference_pack_bitarray(codes: list[int], width: int) -> bytes:
    """A second reference through bitarray(endian='little'), bit by bit."""
    bits = bitarray(endian="little")
    for code in codes:
        for j in range(width):
            bits.append((code >> j) & 1)
    return bits.tobytes()  # bitarray pads the last byte with zero bits


def code_bounds(width: int, signed: bool) -> tuple[int, int]:
    if signed:
        return -(1 << (width - 1)), (1 << (width - 1)) - 1
    return 0, (1 << width) - 1


def natural_dtype(width: int, signed: bool) -> type[np.integer]:
    if width <= 8:
        return np.int8 if signed else np.uint8
    return np.int16 if signed else np.uint16


def sample_codes(width: int, signed: bool, count: int, seed: int) -> list[int]:
    """Random codes that always include both ends of the range (when count allows)."""
    low, high = code_bounds(width, signed)
    rng = np.random.default_rng(seed)
    codes = [int(c) for c in rng.integers(low, high, size=count, endpoint=True)]
    if count >= 1:
        codes[0] = low
    if count >= 2:
        codes[-1] = high
    if count >= 4:
        codes[1] = high
        codes[2] = low
    return codes


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("width", WIDTHS)
def test_pack_matches_reference_and_round_trips(width: int, signed: bool, count: int) -> None:
    """wire-format.md 5.1: pack equals the LSB-first reference stream and unpack inverts it."""
    codes = sample_codes(width, signed, count, seed=1000 * width + 10 * count + signed)
    expected = reference_pack(codes, width)
    for dtype in (np.int64, natural_dtype(width, signed)):
        packed = pack(np.array(codes, dtype=dtype), width)
        assert isinstance(packed, bytes)
        assert len(packed) == packed_size(count, width) == (count * width + 7) // 8
        assert packed == expected, f"dtype {np.dtype(dtype).name}"
    unpacked = unpack(packed, count, width, signed=signed)
    assert unpacked.dtype == natural_dtype(width, signed)
    assert unpacked.shape == (count,)
    assert [int(c) for c in unpacked] == codes


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("width", WIDTHS)
def test_both_ends_of_every_width(width: int, signed: bool) -> None:
    """wire-format.md 5.1: the smallest and largest code of each width survive the round trip."""
    low, high = code_bounds(width, signed)
    for codes in ([low], [high], [low, high] * 5, [high] * 9, [low] * 9):
        packed = pack(np.array(codes, dtype=np.int64), width)
        assert packed == reference_pack(codes, width)
        assert [int(c) for c in unpack(packed, len(codes), width, signed=signed)] == codes


@pytest.mark.parametrize("width", WIDTHS)
def test_all_ones_pattern(width: int) -> None:
    """wire-format.md 5.1: a signed -1 and the unsigned maximum share the all-ones bit pattern."""
    for count in (1, 7, 8, 9):
        signed_packed = pack(np.full(count, -1, dtype=np.int64), width)
        unsigned_packed = pack(np.full(count, (1 << width) - 1, dtype=np.int64), width)
        assert signed_packed == unsigned_packed == reference_pack([-1] * count, width)
        total_bits = count * width
        assert int.from_bytes(signed_packed, "little") == (1 << total_bits) - 1


@pytest.mark.parametrize("count", [1, 7, 9, 1001])
@pytest.mark.parametrize("width", [3, 5, 9, 12])
def test_bitarray_reference_agrees(width: int, count: int) -> None:
    """wire-format.md 5.1: the integer reference agrees with a bit-by-bit bitarray(endian='little') one."""
    codes = sample_codes(width, True, count, seed=width * count)
    assert reference_pack(codes, width) == reference_pack_bitarray(codes, width)
    assert pack(np.array(codes), width) == reference_pack_bitarray(codes, width)


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("width", WIDTHS)
def test_padding_bits_are_zero(width: int, count: int) -> None:
    """wire-format.md 5.1: the padding bits of the last byte are zero (canonical packing)."""
    _, high = code_bounds(width, signed=False)
    packed = pack(np.full(count, high, dtype=np.int64), width)
    used = (count * width) % 8
    if count and used:
        assert packed[-1] >> used == 0
        assert packed[-1] == (1 << used) - 1


@pytest.mark.parametrize("count", [0, 1, 7, 8, 9])
@pytest.mark.parametrize("width", WIDTHS)
def test_unpack_refuses_wrong_length(width: int, count: int) -> None:
    """wire-format.md 5.1: unpack needs exactly packed_size(count, width) bytes."""
    packed = pack(np.zeros(count, dtype=np.int64), width)
    for signed in (True, False):
        with pytest.raises(ValueError):
            unpack(packed + b"\x00", count, width, signed=signed)
        if packed:
            with pytest.raises(ValueError):
                unpack(packed[:-1], count, width, signed=signed)
        with pytest.raises(ValueError):
            unpack(packed, count + 8, width, signed=signed)


PADDED = [(w, n) for w in WIDTHS for n in (1, 3, 7, 9, 1001) if (w * n) % 8]


@pytest.mark.parametrize(("width", "count"), PADDED)
def test_unpack_refuses_nonzero_padding(width: int, count: int) -> None:
    """wire-format.md 5.1: padding bits MUST be zero; any set padding bit is refused."""
    used = (count * width) % 8
    codes = sample_codes(width, True, count, seed=count + width)
    packed = bytearray(pack(np.array(codes, dtype=np.int64), width))
    for bit in range(used, 8):
        corrupted = bytearray(packed)
        corrupted[-1] |= 1 << bit
        for signed in (True, False):
            with pytest.raises(ValueError):
                unpack(bytes(corrupted), count, width, signed=signed)
    # The untouched stream still decodes.
    assert [int(c) for c in unpack(bytes(packed), count, width, signed=True)] == codes


def test_unpack_accepts_memoryview() -> None:
    """wire-format.md 5.1: unpack reads from any bytes-like buffer, a memoryview included."""
    codes = sample_codes(11, True, 9, seed=5)
    packed = pack(np.array(codes), 11)
    view = memoryview(b"xx" + packed)[2:]
    assert [int(c) for c in unpack(view, 9, 11, signed=True)] == codes


@pytest.mark.parametrize("width", [0, -1, 17, 32])
def test_bad_width_refused(width: int) -> None:
    """wire-format.md 5.1: widths outside 1 to 16 are refused by pack and unpack."""
    with pytest.raises(ValueError):
        pack(np.zeros(4, dtype=np.int64), width)
    with pytest.raises(ValueError):
        unpack(b"", 0, width, signed=True)


def test_pack_refuses_two_dimensional_codes() -> None:
    """wire-format.md 5.1: codes are a one-dimensional sequence."""
    with pytest.raises(ValueError):
        pack(np.zeros((2, 4), dtype=np.int64), 4)


@pytest.mark.parametrize("count", [40, 3000])  # both sides of the small-count threshold
@pytest.mark.parametrize("width", WIDTHS)
def test_pack_accepts_non_contiguous_views(width: int, count: int) -> None:
    """wire-format.md 5.1: packing depends on the code values only, not on the array's memory layout."""
    codes = sample_codes(width, True, count, seed=width)
    for dtype in (natural_dtype(width, True), natural_dtype(width, False), np.int64):
        strided = np.array(codes, dtype=np.int64).astype(dtype)[::2]
        assert not strided.flags.c_contiguous
        assert pack(strided, width) == reference_pack(codes[::2], width)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("width", WIDTHS)
def test_random_counts_around_the_thresholds(width: int, seed: int) -> None:
    """wire-format.md 5.1: random counts from 200 to 3,000, either signedness (COUNTS has fixed ones)."""
    rng = np.random.default_rng(100 * width + seed)
    count = int(rng.integers(200, 3000))
    for signed in (True, False):
        codes = sample_codes(width, signed, count, seed=seed)
        packed = pack(np.array(codes, dtype=np.int64), width)
        assert packed == reference_pack(codes, width)
        assert [int(c) for c in unpack(packed, count, width, signed=signed)] == codes


@settings(derandomize=True, max_examples=300, deadline=None)
@given(data=st.data(), width=st.integers(1, MAX_WIDTH), signed=st.booleans())
def test_round_trip_property(data: st.DataObject, width: int, signed: bool) -> None:
    """wire-format.md 5.1: unpack(pack(codes)) == codes and pack equals the reference, for any codes."""
    low, high = code_bounds(width, signed)
    codes = data.draw(st.lists(st.integers(low, high), max_size=70))
    packed = pack(np.array(codes, dtype=np.int64), width)
    assert packed == reference_pack(codes, width)
    assert [int(c) for c in unpack(packed, len(codes), width, signed=signed)] == codes
