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

from typing import Any

import numpy as np
import numpy.typing as npt
from bitarray import bitarray
from bitarray.util import count_n

from ..errors import CodecError, ErrorCode
from .packing import pack, packed_size, unpack

__all__ = [
    "MAX_RICE_K",
    "gamma_decode",
    "gamma_encode",
    "rice_block_size",
    "rice_choose",
    "rice_decode",
    "rice_encode",
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
    q = np.asarray(runs, dtype=np.int64)
    if q.shape[0] == 0:
        return b""
    ends = np.cumsum(q + 1) - 1
    bits = np.zeros(int(ends[-1]) + 1, dtype=np.uint8)
    bits[ends] = 1
    return np.packbits(bits, bitorder="little").tobytes()


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
    stream = bitarray(buffer=data, endian="little")
    if stream.count() != count:
        raise _invalid(f"unary stream holds {stream.count()} code words, expected {count}")
    if count == 0:
        if len(data):
            raise _invalid("unary stream has bytes but no code words")
        return np.zeros(0, dtype=np.int64)
    # Padding after the last one bit is zero by the count check; the last one
    # bit must sit in the last byte (no trailing zero bytes).
    if data[-1] == 0:
        raise _invalid("unary stream has trailing zero bytes")
    # flatnonzero on a bool view is faster than on uint8; unpackbits gives 0s and 1s, so the
    # view is exact.
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
    ends = np.flatnonzero(bits.view(np.bool_))
    runs = np.diff(ends, prepend=-1) - 1
    return runs.astype(np.int64)


# -- Rice code for index gaps -------------------------------------------------


def rice_block_size(gaps: _Int64Array, k: int) -> int:
    """Bytes of a SPARSE_RICE index block for ``gaps`` with parameter ``k``: k, remainders, unary."""
    count = int(gaps.shape[0])
    unary_bits = int((gaps >> k).sum()) + count
    return 1 + packed_size(count, k) + (unary_bits + 7) // 8


def rice_choose(gaps: _Int64Array) -> tuple[int, int]:
    """Return ``(k, size)``: the smallest index block over k = 0..16, ties to the smaller k."""
    best_k, best_size = 0, rice_block_size(gaps, 0)
    for k in range(1, MAX_RICE_K + 1):
        size = rice_block_size(gaps, k)
        if size < best_size:
            best_k, best_size = k, size
    return best_k, best_size


def rice_encode(gaps: npt.NDArray[np.integer[Any]], k: int) -> tuple[bytes, bytes]:
    """Return ``(remainders, unary)``: the k-bit remainders packed, and the quotients in unary."""
    remainders = pack(gaps & ((1 << k) - 1), k) if k else b""
    return remainders, unary_encode(gaps >> k)


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
