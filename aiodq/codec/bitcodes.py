"""Variable-length integer codes for sparse indices and QSGD levels (wire-format.md 5.6, 5.7).

Both codes split each code word into a *unary* part and a fixed or variable
*binary* part, and write the two parts as separate bit streams, so that both
encoding and decoding are whole-array numpy operations:

- Rice code with parameter k (for index gaps): ``g = q * 2**k + r``; ``q`` in
  unary (``q`` zero bits, then a one bit) and ``r`` in ``k`` bits.
- Elias gamma code (for QSGD levels): ``m >= 1`` with ``N = floor(log2 m)``;
  ``N`` in unary (``N`` zero bits, then a one bit) and the low ``N`` bits of
  ``m`` (its leading one is implied).

The bit count equals the classic interleaved code's.  Bit streams are
little-endian (bit ``j`` is bit ``j % 8`` of byte ``j // 8``) with zero padding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from bitarray import bitarray
from bitarray.util import count_n

from ..errors import CodecError, ErrorCode
from .packing import pack, packed_size, unpack

__all__ = [
    "MAX_RICE_K",
    "QuotientSums",
    "dense_rice_decode",
    "gamma_decode",
    "gamma_encode",
    "index_gaps",
    "rice_block_size",
    "rice_choose",
    "rice_decode",
    "rice_encode",
    "smallest_rice_block",
    "unary_decode",
    "unary_encode",
    "unary_length",
]

#: Largest Rice parameter k (wire-format.md 5.6).
MAX_RICE_K = 16

_Int64Array = npt.NDArray[np.int64]


def _invalid(message: str) -> CodecError:
    return CodecError(message, ErrorCode.INVALID_PAYLOAD)


# -- unary streams ------------------------------------------------------------


def unary_encode(runs: npt.NDArray[Any]) -> bytes:
    """Write each ``q`` in ``runs`` as ``q`` zero bits then a one bit; return the packed stream."""
    count = runs.shape[0]
    if count == 0:
        return b""
    largest = int(runs.max()) if count >= _MANY_RUNS else 0
    short = count >= _MANY_RUNS and largest <= _SHORT_RUN
    nonzero = np.count_nonzero(runs)
    if nonzero * (_FEW_NONZERO_SHORT if short else _FEW_NONZERO) <= count:
        where = np.flatnonzero(runs != 0)  # on a bool mask: faster than on the runs (docs/benchmarks.md)
        lengths = runs[where].astype(np.intp, copy=False)  # (np.repeat takes no uint64 counts)
        if int(lengths.sum()) <= count:  # no more zero bits than runs: each costs a position here
            return _unary_encode_few(count, where, lengths)
    if short and largest <= _GROUPED_RUN and count >= _MANY_GROUPED:
        return _unary_encode_grouped(runs, largest)
    ends = _short_run_ends(runs) if short else np.cumsum(np.asarray(runs, dtype=np.int64) + 1) - 1
    bits = np.zeros(int(ends[-1]) + 1, dtype=np.uint8)
    bits[ends] = 1
    return np.packbits(bits, bitorder="little").tobytes()


#: :func:`unary_encode` writes the zero bits instead of the one bits when at most one run in this
#: many is nonzero (one in :data:`_FEW_NONZERO_SHORT` where the grouped prefix sums apply) and the
#: zero bits are no more than the runs.  Medians on the Intel VM (docs/benchmarks.md), one bits
#: against zero bits, us, for runs zero with probability p0 and else geometric, every 997th run 30
#: or 60 long: 20,958 runs up to 60, p0 = 0.7: 133 against 113, 0.8: 121 against 68; 10**5 runs up
#: to 60, p0 = 0.7: 536 against 591, 0.8: 536 against 402; 10**5 runs up to 30, p0 = 0.8: 340
#: against 406, 0.9: 324 against 227.  Longer runs cost the zero-bit path a position per bit (a
#: review: 4.2 against 197 ms for 10**5 runs, a quarter of them 1,024 long), hence the second bound.
_FEW_NONZERO = 4
_FEW_NONZERO_SHORT = 10


def _unary_encode_few(count: int, where: npt.NDArray[np.intp], lengths: npt.NDArray[np.intp]) -> bytes:
    """:func:`unary_encode` of ``count`` runs, zero but at ``where`` (``lengths``): the zero bits written.

    The ``t``-th zero bit of the stream (counting from 0) belongs to run ``i`` and is
    preceded by ``t`` zero bits and by the ``i`` one bits that end runs 0..i-1, so it sits
    at ``t + i``: no prefix sum over all the runs, only over the nonzero ones (in ``repeat``).
    """
    zeros = np.repeat(where, lengths)
    total = zeros.shape[0]
    zeros += np.arange(total)
    bits = np.ones(count + total, dtype=np.uint8)
    bits[zeros] = 0
    return np.packbits(bits, bitorder="little").tobytes()


#: Longest run :func:`_short_run_ends` takes: eight code words of at most 31 bits fit a byte's count.
_SHORT_RUN = 30
#: Fewest runs for :func:`_short_run_ends`: below about 4,000 its extra numpy calls cost more than the
#: plain cumsum saves (measured on the project's VM: 10 against 6 us for 500 runs, even at 4,000).
_MANY_RUNS = 4096


def _short_run_ends(runs: npt.NDArray[Any]) -> npt.NDArray[np.int64]:
    """Positions of the one bits, ``cumsum(runs + 1) - 1``, for runs of at most 30.

    numpy's cumsum is a scalar loop.  Here the code word lengths are bytes, eight to
    a little-endian uint64, and one multiplication by ``0x0101010101010101`` leaves
    in byte r the sum of the lengths 0..r (at most 248: no carry between bytes).  Only
    the group totals, an eighth of the values, go through cumsum.
    """
    count = runs.shape[0]
    lengths = np.zeros(-(-count // 8) * 8, dtype=np.uint8)
    np.add(runs, 1, out=lengths[:count], casting="unsafe")  # at most 31: exact
    within = lengths.view("<u8") * np.uint64(0x0101_0101_0101_0101)
    totals = (within >> np.uint64(56)).astype(np.int64)
    starts = np.cumsum(totals)
    starts -= totals + 1  # exclusive prefix, and the -1 of cumsum(runs + 1) - 1
    # Each group's start repeated for its eight words, then the bytes added in place: 0.82 against
    # 0.94 ms at 10**6 words for one broadcast sum of the (groups, 8) bytes and the starts into int64.
    ends = np.repeat(starts, 8)
    ends += within.view(np.uint8)
    result: npt.NDArray[np.int64] = ends[:count]
    return result


#: Longest run :func:`_unary_encode_grouped` takes: four code words of at most 16 bits fill a 64-bit word.
_GROUPED_RUN = 15
#: Fewest runs for :func:`_unary_encode_grouped`: its fixed cost is about 30 us, so below this the
#: positions and the scatter are faster (medians on the Zen 4 VM, scatter against groups, us: 8,192
#: runs 28.6 against 39.2, 20,958 runs 53.1 against 57.1; 50,000 runs 113.5 against 87.9).
_MANY_GROUPED = 32768


def _group_table(merged: bool) -> npt.NDArray[np.uint64]:
    """The unary code words of four runs, for each 16-bit key of four 4-bit runs (the first lowest).

    Entry: the four code words concatenated, first word at bit 0.  ``merged``: for runs of at
    most 7 only (the four words take at most 32 bits), with their length in bits 32 and up.
    """
    table = _GROUP_TABLES.get(merged)
    if table is None:
        keys = np.arange(1 << 16, dtype=np.uint64)
        table = np.zeros(1 << 16, dtype=np.uint64)
        length = np.zeros(1 << 16, dtype=np.uint64)
        for j in range(4):
            length += (keys >> np.uint64(4 * j)) & np.uint64(15)
            table |= np.uint64(1) << (length & np.uint64(63))  # every length here is below 64
            length += np.uint64(1)
        if merged:
            table = np.where(length <= 32, table | (length << np.uint64(32)), np.uint64(0))
        _GROUP_TABLES[merged] = table
    return table


_GROUP_TABLES: dict[bool, npt.NDArray[np.uint64]] = {}
_LOW_HALF = np.uint64(0xFFFF_FFFF)


def _unary_encode_grouped(runs: npt.NDArray[Any], largest: int) -> bytes:
    """:func:`unary_encode` of at least :data:`_MANY_RUNS` runs of at most :data:`_GROUPED_RUN`.

    No position per code word: the runs, four to a little-endian uint32 of bytes, fold into a
    16-bit key, and one table lookup gives the four code words concatenated.  Runs of at most 7
    join two such groups (eight code words, at most 64 bits).  Then each group's bit string goes
    into the stream at its start (a prefix sum over the groups only): a group of at most 64 bits
    lies in at most two 64-bit words of the stream, the word where it starts and the next.  The
    parts in the word where each group starts are added up word by word (their bits do not overlap:
    a prefix sum, read at each word's last group, then differences), and the part that spills into
    the next word is that word's last group's only.  At 10**6 runs 1.2 against 2.2 ms, at 10**5
    0.14 against 0.21 ms for the positions and the scatter (docs/benchmarks.md).
    """
    count = runs.shape[0]
    runs8 = runs.astype(np.uint8, copy=False)
    padded = -(-count // 8) * 8
    if padded != count:
        # Zero runs pad the last group; their bits are cut off below.
        runs8 = np.concatenate([runs8, np.zeros(padded - count, dtype=np.uint8)])
    words = np.ascontiguousarray(runs8).view("<u8")
    keys = words >> np.uint64(4)  # byte j: run j + 1 in its high nibble
    keys |= words
    keys &= np.uint64(0x00FF_00FF_00FF_00FF)
    keys |= keys >> np.uint64(8)
    keys &= np.uint64(0x0000_FFFF_0000_FFFF)  # one 16-bit key per uint32 lane
    entries = np.take(_group_table(largest <= 7), keys.view("<u4"))
    if largest <= 7:
        first, second = entries[0::2], entries[1::2]
        shift = first >> np.uint64(32)
        groups = second & _LOW_HALF
        groups <<= shift
        first &= _LOW_HALF
        groups |= first
        lengths = second >> np.uint64(32)
        lengths += shift
    else:
        groups = entries
        fourths = np.ascontiguousarray(runs8).view("<u4") * np.uint32(0x0101_0101)
        lengths = (fourths >> np.uint32(24)).astype(np.uint64)
        lengths += np.uint64(4)
    pad = padded - count
    if pad >= 4 and largest > 7:  # the last group of four holds padding only
        groups, lengths, pad = groups[:-1], lengths[:-1], pad - 4
    if pad:
        lengths[-1] -= np.uint64(pad)
        groups[-1] &= np.uint64((1 << int(lengths[-1])) - 1)  # below 64 bits with padding
    return _join_groups(groups, lengths)


def _join_groups(groups: npt.NDArray[np.uint64], lengths: npt.NDArray[np.uint64]) -> bytes:
    """The bit strings ``groups`` (each below ``2**lengths``, lengths at most 64) one after another."""
    starts = np.cumsum(lengths)
    total = int(starts[-1])
    starts -= lengths
    shifts = starts & np.uint64(63)
    starts >>= np.uint64(6)  # the word each group starts in
    low = groups << shifts
    # The last group starting in each word (with groups of at most 64 bits, every word has one).
    last = np.flatnonzero(starts[1:] != starts[:-1])
    last = np.append(last, groups.shape[0] - 1)
    sums = np.cumsum(low, out=low)  # modulo 2**64: the differences below are exact
    at_last = sums[last]
    stream = np.empty(last.shape[0] + 1, dtype="<u8")  # (little-endian words: the stream's byte order)
    stream[0] = at_last[0]
    np.subtract(at_last[1:], at_last[:-1], out=stream[1:-1])
    stream[-1] = 0
    # What spills into the next word: (group >> 1) >> (63 - shift), 0 for a shift of 0.
    spill = groups[last] >> np.uint64(1)
    spill >>= np.uint64(63) - shifts[last]
    stream[1:] += spill
    return stream.view(np.uint8)[: (total + 7) // 8].tobytes()


def unary_length(data: bytes | memoryview, count: int) -> int:
    """Return the bytes that the first ``count`` unary code words occupy in ``data``.

    Raises:
        CodecError: INVALID_PAYLOAD if ``data`` holds fewer than ``count`` one bits.
    """
    if count == 0:
        return 0
    stream = bitarray(buffer=data, endian="little")
    try:
        end = count_n(stream, count)
    except ValueError:
        raise _invalid(f"unary stream holds fewer than {count} code words") from None
    return (end + 7) // 8


def unary_decode(data: bytes | memoryview, count: int) -> _Int64Array:
    """Read exactly ``count`` unary code words that fill ``data`` to its last byte.

    Raises:
        CodecError: INVALID_PAYLOAD if the stream holds another number of code
            words, or whole bytes or set bits after the last one.
    """
    # Code word i's zeros are the bits between the one bits i - 1 and i.
    return index_gaps(_unary_ends(data, count))


def index_gaps(positions: npt.NDArray[np.integer[Any]]) -> _Int64Array:
    """Gaps between strictly increasing positions: ``p_0``, then ``p_j - p_(j-1) - 1``."""
    as_int64: _Int64Array = positions.astype(np.int64, copy=False)
    gaps = np.empty(as_int64.shape[0], dtype=np.int64)
    if gaps.shape[0]:
        # Written in place: np.diff's prepend and the subtraction would each cost a copy.
        gaps[0] = as_int64[0]
        np.subtract(as_int64[1:], as_int64[:-1], out=gaps[1:])
        gaps[1:] -= 1
    return gaps


def _unary_ends(data: bytes | memoryview, count: int) -> npt.NDArray[np.intp]:
    """The positions of the ``count`` one bits of a unary stream, checked as :func:`unary_decode` says."""
    if count == 0:
        if ones := bitarray(buffer=data, endian="little").count():
            raise _invalid(f"unary stream holds {ones} code words, expected 0")
        if len(data):
            raise _invalid("unary stream has bytes but no code words")
        return np.zeros(0, dtype=np.intp)
    # flatnonzero on a bool view is faster than on uint8; unpackbits gives 0s and 1s, so the
    # view is exact.  The one bits are counted as found (a separate count cost 0.06 ms at 10**6
    # code words).
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    ends = np.flatnonzero(bits.view(np.bool_))
    if ends.shape[0] != count:
        raise _invalid(f"unary stream holds {ends.shape[0]} code words, expected {count}")
    # Padding after the last one bit is zero by the count check; the last one
    # bit must sit in the last byte (no trailing zero bytes).
    if data[-1] == 0:
        raise _invalid("unary stream has trailing zero bytes")
    return ends


#: A run of 2**16 zero bits or more covers this many whole zero bytes.
_LONG_RUN_BYTES = bytes((1 << 16) // 8 - 1)
#: ... and one of 2**8 zero bits or more this many.
_BYTE_RUN_BYTES = bytes((1 << 8) // 8 - 1)


# -- Rice code for index gaps -------------------------------------------------


def rice_block_size(gaps: _Int64Array, k: int) -> int:
    """Bytes of a SPARSE_RICE index block for ``gaps`` with parameter ``k``: k, remainders, unary."""
    count = int(gaps.shape[0])
    unary_bits = int((gaps >> k).sum()) + count
    return 1 + packed_size(count, k) + (unary_bits + 7) // 8


def rice_choose(gaps: _Int64Array, *, known: dict[int, int] | None = None) -> tuple[int, int]:
    """Return ``(k, size)``: the smallest index block over k = 0..16, ties to the smaller k.

    ``known`` may give quotient sums already known (a decoder knows the one of the k it read).
    """
    count = int(gaps.shape[0])
    first = next(iter(known)) if known else None
    return smallest_rice_block(count, MAX_RICE_K, QuotientSums(gaps, known), first)


class QuotientSums:
    """``S_k = sum(values >> k)`` for non-negative integer ``values``, memoised: call with k.

    With ``N_j`` the number of values whose bit j is set, ``S_k = N_k + 2 S_(k+1)``, so a
    sum next to a known one costs one bit plane: one AND and one count, which numpy
    vectorises over the values' own width.  Any other sum is a shift and a sum, or, when
    the values are known to be below ``2**top`` and at most :data:`_FEW_PLANES` planes
    lie above k, ``sum over j >= k of 2**(j - k) N_j`` (a narrow sum costs about four
    planes).  ``known`` seeds the memo.
    """

    __slots__ = ("_planes", "_sums", "_top", "_values")

    def __init__(
        self,
        values: npt.NDArray[np.integer[Any]],
        known: dict[int, int] | None = None,
        top: int | None = None,
    ) -> None:
        self._values = values
        self._sums: dict[int, int] = dict(known or {})
        self._planes: dict[int, int] = {}
        self._top = values.dtype.itemsize * 8 if top is None else top

    def _plane(self, j: int) -> int:
        if j not in self._planes:
            values = self._values
            below = j < self._top
            self._planes[j] = int(np.count_nonzero(values & values.dtype.type(1 << j))) if below else 0
        return self._planes[j]

    def __call__(self, k: int) -> int:
        """``S_k``."""
        sums = self._sums
        if k in sums:
            return sums[k]
        if k + 1 in sums:
            total = self._plane(k) + 2 * sums[k + 1]
        elif k - 1 in sums:
            total = (sums[k - 1] - self._plane(k - 1)) >> 1
        elif k >= self._top:
            total = 0
        elif self._top - k <= _FEW_PLANES:
            total = sum(self._plane(j) << (j - k) for j in range(k, self._top))
        else:
            shifted = self._values >> self._values.dtype.type(k) if k else self._values
            total = int(shifted.sum(dtype=np.int64))
        sums[k] = total
        return total


#: Up to this many bit planes above k, :class:`QuotientSums` counts planes instead of summing.
_FEW_PLANES = 3


def smallest_rice_block(
    count: int, k_max: int, quotient_sum: Callable[[int], int], first: int | None = None
) -> tuple[int, int]:
    """``(k, size)`` minimising ``R(k) = 1 + ceil(count k / 8) + ceil((S_k + count) / 8)`` over 0..k_max.

    ``quotient_sum(k)`` returns ``S_k``, the sum of the values shifted right by k; ties
    go to the smaller k.  Only the k around the optimum are evaluated.  Without the
    ceilings, ``8 R(k) - 8 = g(k) = count k + S_k + count`` is convex in k: for each
    value v, ``a_k = floor(v / 2**k)`` falls by ``a_k - a_(k+1) = ceil(a_k / 2)``, a
    non-increasing step, so every ``a_k`` and their sum ``S_k`` are convex.  And
    ``g(k) <= 8 R(k) - 8 < g(k) + 16``.  So the search walks right from ``first`` until
    g has stopped falling and already bounds R from below by at least the best size
    found (a k further right can then only tie, and ties go left), and left likewise
    until the bound is strictly above it.  The search starts at ``first`` if given (a
    caller's guess; the result does not depend on it), else at
    ``floor(log2(S_0 / count))``, next to the optimum of a Rice code.
    """

    def size(k: int, s: int) -> int:
        return 1 + (count * k + 7) // 8 + (s + count + 7) // 8

    if first is None:
        first = (quotient_sum(0) // max(count, 1)).bit_length() - 1
    start = min(k_max, max(0, first))
    start_s = quotient_sum(start)
    start_g = count * start + start_s + count
    best_size, best_k = size(start, start_s), start
    k, g = start, start_g
    while k < k_max:
        s = quotient_sum(k + 1)
        next_g = count * (k + 1) + s + count
        if size(k + 1, s) < best_size:
            best_size, best_k = size(k + 1, s), k + 1
        if next_g >= g and next_g >= 8 * (best_size - 1):
            break
        k, g = k + 1, next_g
    k, g = start, start_g
    while k > 0:
        s = quotient_sum(k - 1)
        previous_g = count * (k - 1) + s + count
        if size(k - 1, s) <= best_size:
            best_size, best_k = size(k - 1, s), k - 1
        if previous_g >= g and previous_g > 8 * (best_size - 1):
            break
        k, g = k - 1, previous_g
    return best_k, best_size


def rice_encode(gaps: npt.NDArray[np.integer[Any]], k: int) -> tuple[bytes, bytes]:
    """Return ``(remainders, unary)``: the k-bit remainders packed, and the quotients in unary."""
    if not k:
        return b"", unary_encode(gaps)
    return pack(gaps, k), unary_encode(gaps >> k)  # pack keeps the low k bits


def rice_decode(remainders: bytes | memoryview, unary: bytes | memoryview, count: int, k: int) -> _Int64Array:
    """Rebuild ``count`` gaps from their Rice code (see :func:`rice_encode`).

    Raises:
        CodecError: INVALID_PAYLOAD on a malformed stream.
    """
    quotients = unary_decode(unary, count)
    if not k:
        return quotients
    try:
        low = unpack(remainders, count, k, signed=False)
    except ValueError as exc:
        raise _invalid(f"Rice remainders: {exc}") from exc
    return (quotients << k) | low.astype(np.int64)


def dense_rice_decode(
    remainders: bytes | memoryview, unary: bytes | memoryview, count: int, k: int, bits: int
) -> npt.NDArray[np.unsignedinteger[Any]]:
    """:func:`rice_decode` for values below ``2**bits <= 2**16`` (DENSE_RICE): uint8 to 8 bits, else uint16.

    The quotients are checked against ``2**(bits - k)`` before they are combined, so
    every later pass works on two bytes per value instead of eight.

    Raises:
        CodecError: INVALID_PAYLOAD on a malformed stream, then (wire-format.md 5.8-5,
            step 9) if a value is ``2**bits`` or more.
    """
    ends = _unary_ends(unary, count)
    if count == 0:  # (checked empty above; not reachable from the wire, where d >= 1: a review)
        if len(remainders):
            raise _invalid("Rice remainders hold bytes but no value")
        return np.zeros(0, dtype=np.uint8 if bits <= 8 else np.uint16)
    low = None
    if k:
        try:
            low = unpack(remainders, count, k, signed=False)
        except ValueError as exc:
            raise _invalid(f"Rice remainders: {exc}") from exc
    stream = bytes(unary)
    if bits <= 8 and _BYTE_RUN_BYTES not in stream:
        # Every quotient is below 2**8, so the positions' differences modulo 2**8 are exact: one
        # byte per value from the start (0.14 against 0.23 ms at 10**6 for two bytes, then one).
        positions8 = ends.astype(np.uint8)
        quotients = np.empty(count, dtype=np.uint8)
        quotients[0] = positions8[0]
        np.subtract(positions8[1:], positions8[:-1], out=quotients[1:])
        quotients[1:] -= np.uint8(1)
        if int(quotients.max()) < 1 << (bits - k):
            if low is not None:
                quotients *= np.uint8(1 << k)
                quotients |= low
            return quotients
    narrow = np.empty(count, dtype=np.uint16)
    # A quotient of 2**16 or more (never valid: k < bits <= 16) needs the int64 path.
    short = _LONG_RUN_BYTES not in stream
    if short:
        # Every quotient is below 2**16, so the positions modulo 2**16 have the same
        # differences modulo 2**16: subtracting two-byte copies is exact, and numpy
        # vectorises it (a subtraction of int64 into uint16 goes through a cast buffer:
        # 0.31 against 0.15 ms for 10**6 positions on the project's VM).
        positions = ends.astype(np.uint16)
        narrow[0] = positions[0]
        np.subtract(positions[1:], positions[:-1], out=narrow[1:])
        narrow[1:] -= np.uint16(1)
    if not short or int(narrow.max()) >= 1 << (bits - k):
        wide_quotients = np.diff(ends, prepend=-1).astype(np.int64) - 1
        wide = wide_quotients << k if low is None else (wide_quotients << k) | low.astype(np.int64)
        raise _invalid(f"a zigzagged code is {int(wide.max())}, beyond {bits} bits")
    values: npt.NDArray[np.unsignedinteger[Any]] = narrow
    if bits <= 8:
        # Below 2**8: the later passes (the k-bit shift below, the canonical-k check, the unzigzag)
        # on one byte each.
        values = narrow.astype(np.uint8)
    if low is not None:
        # values * 2**k is values << k in the values' own width; numpy vectorises the
        # multiplication of bytes but not their left shift (0.02 against 0.27 ms for
        # 10**6 bytes on the project's VM).
        values *= values.dtype.type(1 << k)
        values |= low
    return values


# -- Elias gamma code for QSGD levels -----------------------------------------


def gamma_encode(values: npt.NDArray[Any]) -> tuple[bytes, bytes]:
    """Elias gamma code of ``values >= 1``: return ``(unary, mantissa)`` streams."""
    m = np.asarray(values, dtype=np.int64)
    exponents = (np.frexp(m.astype(np.float64))[1] - 1).astype(np.int64)  # floor(log2 m)
    unary = unary_encode(exponents)
    total = int(exponents.sum())
    if total == 0:
        return unary, b""
    owner = np.repeat(np.arange(m.shape[0]), exponents)
    starts = np.cumsum(exponents) - exponents
    position = np.arange(total, dtype=np.int64) - np.repeat(starts, exponents)
    bits = ((m[owner] >> position) & 1).astype(np.uint8)
    return unary, np.packbits(bits, bitorder="little").tobytes()


def gamma_decode(exponents: _Int64Array, mantissa: bytes | memoryview) -> _Int64Array:
    """Rebuild Elias gamma values from their exponents (the unary stream) and mantissa stream.

    ``mantissa`` must be exactly as long as the exponents require.

    Raises:
        CodecError: INVALID_PAYLOAD on a wrong length or nonzero padding bits.
    """
    count = exponents.shape[0]
    total = int(exponents.sum())
    if len(mantissa) != (total + 7) // 8:
        raise _invalid(f"mantissa stream takes {(total + 7) // 8} bytes, got {len(mantissa)}")
    values = np.left_shift(np.int64(1), exponents)
    if total == 0:
        return values
    bits = np.unpackbits(np.frombuffer(mantissa, dtype=np.uint8), bitorder="little")
    if bits[total:].any():
        raise _invalid("mantissa padding bits are not zero")
    owner = np.repeat(np.arange(count), exponents)
    starts = np.cumsum(exponents) - exponents
    position = np.arange(total, dtype=np.int64) - np.repeat(starts, exponents)
    weights = bits[:total].astype(np.int64) << position
    values += np.bincount(owner, weights=weights, minlength=count).astype(np.int64)
    return values
