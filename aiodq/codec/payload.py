"""Vector payloads: encode and decode every vector encoding (wire-format.md 5).

A vector payload starts with one *descriptor* byte: the encoding in the high
nibble and, for quantized encodings, ``bits - 1`` in the low nibble (zero for
the others).  Then comes the dimension as a varint, and the encoding's own
fields.  A vector payload is always the last field of its message, so it runs
to the end of the frame body, and every byte of it is accounted for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..config import Limits
from ..errors import CodecError, ErrorCode
from .bitcodes import (
    MAX_RICE_K,
    QuotientSums,
    dense_rice_decode,
    gamma_decode,
    gamma_encode,
    index_gaps,
    rice_choose,
    rice_decode,
    rice_encode,
    smallest_rice_block,
    unary_decode,
    unary_length,
)
from .cursor import Cursor, pack_f32, uvarint
from .packing import aligned_width, pack, packed_size, unpack
from .registry import QUANTIZED_ENCODINGS, Encoding
from .vectors import (
    MAX_QSGD_LEVELS,
    DenseQuantized,
    EqualsSnapshot,
    QSGDVector,
    RawVector,
    SparseQuantized,
    Vector,
    ZeroVector,
)

__all__ = [
    "DecodedVector",
    "VectorPlan",
    "decode_vector",
    "dense_rice_choose",
    "encode_vector",
    "plan_vector",
    "sparse_form_bits",
    "unzigzag",
    "zigzag",
]


def _invalid(message: str) -> CodecError:
    return CodecError(message, ErrorCode.INVALID_PAYLOAD)


def zigzag(codes: npt.NDArray[Any]) -> npt.NDArray[np.int32]:
    """Map two's complement codes to ``0, 1, 2, ...``: ``c >= 0`` to ``2c``, ``c < 0`` to ``-2c - 1``.

    Codes have at most 16 bits, so 32-bit arithmetic is exact (and narrower than int64).
    """
    wide = codes.astype(np.int32)
    result: npt.NDArray[np.int32] = (wide << 1) ^ (wide >> 31)
    return result


def unzigzag(values: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The inverse of :func:`zigzag`."""
    result: npt.NDArray[np.int64] = (values >> 1) ^ -(values & 1)
    return result


def dense_rice_choose(values: npt.NDArray[np.integer[Any]], bits: int) -> tuple[int, int]:
    """``(k, size)``: the smallest DENSE_RICE block (k byte, remainders, unary) over k = 0..bits-1.

    Ties go to the smaller k.  ``values`` are the zigzagged codes (below ``2**bits``).
    See :func:`_dense_rice_choose`.
    """
    return _dense_rice_choose(values, bits, None)


def _dense_rice_choose(
    values: npt.NDArray[np.integer[Any]], bits: int, first: int | None, known: dict[int, int] | None = None
) -> tuple[int, int]:
    """:func:`dense_rice_choose`, its search started at ``first`` (any guess; None: from the mean).

    For at most :data:`_FEW_VALUE_BITS` bits of values, every quotient sum is computed
    at once (one shift and one sum) and ``known`` is not needed.  Otherwise only the
    sums near the best k are computed (:func:`smallest_rice_block`), over narrow
    integers, each next to a known one from one bit plane (:class:`QuotientSums`);
    ``known`` gives sums the caller knows already (a decoder knows the one of the k it
    read, from the unary stream's length).
    """
    narrow: npt.NDArray[np.unsignedinteger[Any]] = values.astype(
        np.uint8 if bits <= 8 else np.uint16, copy=False
    )
    count = int(values.shape[0])
    if count * bits <= _FEW_VALUE_BITS:
        # Every S_k in one shift and one sum over a (bits, count) array: fewer numpy calls than the
        # planes need (the sums a decoder knows are these same sums).
        shifts = np.arange(bits, dtype=narrow.dtype)[:, None]
        sums: list[int] = np.right_shift(narrow, shifts).sum(axis=1, dtype=np.int64).tolist()
        return smallest_rice_block(count, bits - 1, sums.__getitem__, first)
    return smallest_rice_block(count, bits - 1, QuotientSums(narrow, known, bits), first)


#: Up to this many bits of values (count times code width) :func:`_dense_rice_choose` computes every
#: quotient sum at once.  Medians on the project's VM, planes against all at once, us: 123 codes of 4
#: bits 34 against 14, of 8 bits 33 against 15; 1,000 of 8 bits 29 against 22; 4,000 of 8 bits 36
#: against 33.
_FEW_VALUE_BITS = 8192


def _zigzag_narrow(codes: npt.NDArray[Any], bits: int) -> npt.NDArray[Any]:
    """:func:`zigzag` into uint8 (``bits <= 8``) or uint16, with operations numpy vectorises.

    ``2c`` wraps in the codes' own width, and XOR with ``-1`` where ``c < 0`` gives
    ``-2c - 1``: the same values as :func:`zigzag` at a quarter or half of its memory.
    """
    narrow_type = np.int8 if bits <= 8 else np.int16
    signed = codes.astype(narrow_type, copy=False)
    doubled = np.add(signed, signed)
    negative = np.less(signed, 0).view(np.int8).astype(narrow_type, copy=False)
    np.negative(negative, out=negative)
    doubled ^= negative
    result: npt.NDArray[Any] = doubled.view(np.uint8 if bits <= 8 else np.uint16)
    return result


def _rice_guess(values: npt.NDArray[Any]) -> int:
    """``floor(log2(mean))`` of a sample of every 64th value: where the Rice search starts."""
    mean = int(values[::64].sum(dtype=np.int64)) // max(1, -(-values.shape[0] // 64))
    return max(0, int(mean).bit_length() - 1)


@dataclass(frozen=True, slots=True, eq=False)
class VectorPlan:
    """How one vector goes on the wire: its encoding, chosen once (wire-format.md 5).

    Built by :func:`plan_vector`; :func:`encode_vector` writes exactly this plan,
    and the connection checks the plan's encoding against what the peer announced.
    """

    #: The encoding chosen.
    encoding: Encoding
    #: The Rice parameter of SPARSE_RICE and DENSE_RICE; 0 for the others.
    k: int
    #: Analytic payload size in bits (docs/algorithms.md 10): the vector's fields without the
    #: descriptor, the dimension varint or byte padding.
    payload_bits: int
    #: What the Rice coder writes (the zigzagged codes, or the index gaps); None for other encodings.
    rice_values: npt.NDArray[np.integer[Any]] | None = None
    #: The width of the packed codes of DENSE, SPARSE_BITMAP and SPARSE_RICE: the vector's own
    #: bits, or wider for byte-aligned codes (:func:`~aiodq.codec.packing.aligned_width`); 0 for
    #: the other encodings.
    width: int = 0
    #: The vector to write in place of the one planned: the sparse form of a dense quantized
    #: vector (:func:`plan_vector`'s ``sparse_form``), the same values; None for the vector itself.
    #: ``payload_bits`` stays that of the dense encoding it replaces (d b + 32, or d w + 32 for
    #: byte-aligned codes in a w-bit container).
    replacement: SparseQuantized | None = None


def plan_vector(
    vector: Vector, *, dense_rice: bool = False, aligned: bool = False, sparse_form: bool = False
) -> VectorPlan:
    """Choose the encoding of ``vector`` (wire-format.md 5), once per message.

    Sparse vectors take the smaller index encoding (5.6, canonical).  A dense
    quantized vector goes as DENSE_RICE when ``dense_rice`` is set and the Rice
    block is smaller than the fixed-width codes (5.8), else as DENSE.  With
    ``aligned``, the fixed-width codes of DENSE and sparse payloads travel in the
    narrowest of 1, 2, 4, 8 or 16 bits that holds them (5.5-5): the same values in more
    bytes, packed and unpacked with less work.  With ``dense_rice`` and ``sparse_form``,
    a dense quantized vector whose nonzero codes, sent as a sparse vector of the same
    width and scale (SPARSE_RICE or SPARSE_BITMAP), take fewer bytes than either dense
    encoding goes in that form (:attr:`VectorPlan.replacement`): the same values.

    Raises:
        TypeError: if ``vector`` is not a vector value.
    """
    if isinstance(vector, RawVector):
        if vector.values.dtype == np.float32:
            return VectorPlan(Encoding.RAW_F32, 0, 32 * vector.dim)
        return VectorPlan(Encoding.RAW_F64, 0, 64 * vector.dim)
    if isinstance(vector, ZeroVector):
        return VectorPlan(Encoding.ZERO, 0, 0)
    if isinstance(vector, EqualsSnapshot):
        return VectorPlan(Encoding.EQUALS_SNAPSHOT, 0, 0)
    if isinstance(vector, DenseQuantized):
        width = aligned_width(vector.bits) if aligned else vector.bits
        dense = VectorPlan(Encoding.DENSE, 0, vector.dim * width + 32, width=width)
        if not dense_rice:
            return dense
        sparse: tuple[VectorPlan, int] | None = None
        head = _sparse_form_head(vector, aligned) if sparse_form else 0
        # Every DENSE_RICE block takes its k byte and a unary bit per coordinate at least: a sparse
        # form below that and below b-bit codes is the smallest without the Rice search.  Its
        # analytic bits are those of the dense encoding it beats: d b + 32 where some DENSE_RICE
        # block is smaller than the b-bit codes, else (byte-aligned codes in a wider container)
        # d w + 32.  A form this small leaves so few nonzero codes that the first case always held
        # in a review's search (68,612 worst cases, d < 400; the k = b - 2 block is smaller for
        # every d >= 138); the k = 0 block checks it, and where it does not show it (about 5 % of
        # random aligned vectors) the search below decides.
        floor = min(1 + (vector.dim + 7) // 8, packed_size(vector.dim, vector.bits))
        if head and head + 1 < floor:  # an index block takes a byte at least
            sparse = _sparse_form_plan(vector, head, aligned)
            if sparse[1] < floor and (width == vector.bits or _rice_block_k0_smaller(vector, sparse[0])):
                return replace(sparse[0], payload_bits=vector.dim * vector.bits + 32)
        values = _zigzag_narrow(vector.codes, vector.bits)
        k, size = _dense_rice_choose(values, vector.bits, _rice_guess(values))
        smaller = size < packed_size(vector.dim, vector.bits)  # 5.8-4: smaller than b-bit codes
        best = VectorPlan(Encoding.DENSE_RICE, k, vector.dim * vector.bits + 32, values) if smaller else dense
        best_bytes = size if smaller else packed_size(vector.dim, width)
        if head and head + 1 < best_bytes:
            sparse = sparse or _sparse_form_plan(vector, head, aligned)
            if sparse[1] < best_bytes:
                # The value's analytic bits are the dense vector's, as for DENSE_RICE: the form is the
                # coding's.
                return replace(sparse[0], payload_bits=best.payload_bits)
        return best
    if isinstance(vector, SparseQuantized):
        return _sparse_plan(vector, aligned)[0]
    if isinstance(vector, QSGDVector):
        return VectorPlan(Encoding.QSGD, 0, _qsgd_bits(vector.levels))
    raise TypeError(f"not a vector value: {type(vector).__name__}")


def _sparse_plan(vector: SparseQuantized, aligned: bool) -> tuple[VectorPlan, int]:
    """The plan of a sparse vector, and the bytes of its index block (Rice block or bitmap)."""
    gaps = index_gaps(vector.indices)
    quotient_sums = QuotientSums(gaps)
    k, size = smallest_rice_block(vector.nnz, MAX_RICE_K, quotient_sums)
    width = aligned_width(vector.bits) if aligned else vector.bits
    head = vector.nnz * width + 32
    bitmap_size = (vector.dim + 7) // 8
    if size < bitmap_size:
        # k remainder bits and (gap >> k) + 1 unary bits per gap; the sum from the search's memo.
        rice_bits = vector.nnz * (k + 1) + quotient_sums(k)
        return VectorPlan(Encoding.SPARSE_RICE, k, head + rice_bits, gaps, width), size
    return VectorPlan(Encoding.SPARSE_BITMAP, 0, head + vector.dim, width=width), bitmap_size


def _sparse_form_head(vector: DenseQuantized, aligned: bool) -> int:
    """The bytes of the nnz varint and the packed nonzero codes of ``vector``'s sparse form; 0 if it has none.

    The sparse form's fields are these and the index block; the dense encodings' are the Rice
    block or the packed codes.  The descriptor, dimension and scale are the same in both.
    """
    nnz = int(np.count_nonzero(vector.codes))
    width = aligned_width(vector.bits) if aligned else vector.bits
    return len(uvarint(nnz)) + packed_size(nnz, width) if nnz else 0


def _sparse_form_plan(vector: DenseQuantized, head: int, aligned: bool) -> tuple[VectorPlan, int]:
    """``vector``'s sparse form: its plan and its fields' bytes (``head``: :func:`_sparse_form_head`)."""
    # On a bool mask numpy finds the nonzeros without testing each code through its type: at
    # d = 20,958, 11 to 26 against 55 to 167 us on the Intel VM (docs/benchmarks.md).
    indices = np.flatnonzero(vector.codes != 0)
    sparse = SparseQuantized._trusted(vector.dim, vector.bits, vector.scale, indices, vector.codes[indices])
    plan, index_bytes = _sparse_plan(sparse, aligned)
    return replace(plan, replacement=sparse), head + index_bytes


def _rice_block_k0_smaller(vector: DenseQuantized, sparse_plan: VectorPlan) -> bool:
    """Whether ``vector``'s DENSE_RICE block with k = 0 is smaller than its b-bit codes (5.8-4).

    Its size is ``1 + ceil((S_0 + d) / 8)``, ``S_0`` the sum of the zigzagged codes: those of
    the nonzero codes that ``sparse_plan``'s sparse form holds.
    """
    assert sparse_plan.replacement is not None
    quotient_sum = int(zigzag(sparse_plan.replacement.codes).sum(dtype=np.int64))
    return 1 + (quotient_sum + vector.dim + 7) // 8 < packed_size(vector.dim, vector.bits)


def sparse_form_bits(vector: SparseQuantized, bits: int, *, aligned: bool = False) -> int:
    """What :func:`plan_vector` counted for the dense ``bits``-bit vector sent as ``vector``, its sparse form.

    d b + 32 where a DENSE_RICE block of its codes is smaller than b-bit codes, else d w + 32 (``aligned``).
    """
    dense_bits, width = vector.dim * bits + 32, aligned_width(bits) if aligned else bits
    if width == bits:  # DENSE and DENSE_RICE alike: d b + 32
        return dense_bits
    limit, values = packed_size(vector.dim, bits), zigzag(vector.codes).astype(np.int64)
    if 1 + (int(values.sum()) + vector.dim + 7) // 8 < limit:  # the k = 0 block is smaller: so is the best
        return dense_bits
    # (The dense codes' zeros add nothing to a quotient sum: the search needs the nonzero codes only.)
    size = smallest_rice_block(vector.dim, bits - 1, lambda k: int((values >> k).sum()))[1]
    return dense_bits if size < limit else vector.dim * width + 32


def _qsgd_bits(levels: npt.NDArray[np.integer[Any]]) -> int:
    """Elias gamma of ``|level| + 1`` per coordinate, a sign per nonzero level, a 32-bit norm."""
    magnitudes = np.abs(levels) + 1
    exponents = np.frexp(magnitudes.astype(np.float64))[1] - 1  # floor(log2 m)
    return 2 * int(exponents.sum()) + int(levels.shape[0]) + int(np.count_nonzero(levels)) + 32


def encode_vector(vector: Vector, plan: VectorPlan | None = None) -> list[bytes]:
    """Encode a vector payload as ``plan`` says (default: :func:`plan_vector`); return its parts.

    Raises:
        TypeError: if ``vector`` is not a vector value.
    """
    if plan is None:
        plan = plan_vector(vector)
    if plan.replacement is not None:
        replacement = plan.replacement
        if not (
            isinstance(vector, DenseQuantized)
            and (replacement.dim, replacement.bits, replacement.scale)
            == (vector.dim, vector.bits, vector.scale)
        ):
            raise ValueError("this plan's sparse form belongs to another vector")
        vector = replacement
    encoding = plan.encoding
    dim = uvarint(vector.dim)
    if isinstance(vector, RawVector):
        dtype = "<f4" if encoding == Encoding.RAW_F32 else "<f8"
        return [bytes((encoding << 4,)), dim, vector.values.astype(dtype, copy=False).tobytes()]
    if isinstance(vector, ZeroVector | EqualsSnapshot):
        return [bytes((encoding << 4,)), dim]
    if isinstance(vector, DenseQuantized):
        if encoding == Encoding.DENSE_RICE:
            assert plan.rice_values is not None
            remainders, unary = rice_encode(plan.rice_values, plan.k)
            descriptor = bytes((encoding << 4 | (vector.bits - 1),))
            return [descriptor, dim, pack_f32(vector.scale), bytes((plan.k,)), remainders, unary]
        width = _container(plan, vector.bits)
        descriptor = bytes((encoding << 4 | (width - 1),))
        return [descriptor, dim, pack_f32(vector.scale), pack(vector.codes, width)]
    if isinstance(vector, SparseQuantized):
        width = _container(plan, vector.bits)
        head = [
            bytes((encoding << 4 | (width - 1),)),
            dim,
            uvarint(vector.nnz),
            pack_f32(vector.scale),
            pack(vector.codes, width),
        ]
        if encoding == Encoding.SPARSE_BITMAP:
            bitmap = np.zeros(vector.dim, dtype=np.uint8)
            bitmap[vector.indices] = 1
            return [*head, np.packbits(bitmap, bitorder="little").tobytes()]
        assert plan.rice_values is not None
        remainders, unary = rice_encode(plan.rice_values, plan.k)
        return [*head, bytes((plan.k,)), remainders, unary]
    magnitudes = np.abs(vector.levels)
    unary, mantissa = gamma_encode(magnitudes + 1)
    negative = vector.levels[magnitudes != 0] < 0
    signs = np.packbits(negative, bitorder="little").tobytes()
    return [bytes((encoding << 4,)), dim, uvarint(vector.s), pack_f32(vector.norm), unary, mantissa, signs]


def _container(plan: VectorPlan, bits: int) -> int:
    """The width the plan packs ``bits``-bit codes in (their own by default)."""
    width = plan.width or bits
    if width < bits:
        raise ValueError(f"{bits}-bit codes do not fit a {width}-bit container")
    return width


@dataclass(frozen=True, slots=True, eq=False)
class DecodedVector:
    """A received vector payload: the value, the encoding it came in, and its analytic size."""

    #: The vector value.
    vector: Vector
    #: The encoding it was read from.
    encoding: Encoding
    #: Analytic payload bits, as :attr:`VectorPlan.payload_bits` defines them.
    payload_bits: int


def decode_vector(
    cursor: Cursor,
    limits: Limits,
    *,
    expected_dim: int | None = None,
    allowed: frozenset[Encoding] | None = None,
) -> DecodedVector:
    """Decode a vector payload that runs to the end of ``cursor``.

    Every count is checked against ``limits`` and the bytes that remain before
    anything is allocated.

    Args:
        cursor: positioned at the descriptor byte.
        limits: receiver limits (``max_dimension``).
        expected_dim: if given, the dimension the vector must have.
        allowed: if given, the encodings acceptable here.

    Raises:
        CodecError: with the wire error code of the first rule broken.
    """
    descriptor = cursor.u8("vector descriptor")
    try:
        encoding = Encoding(descriptor >> 4)
    except ValueError:
        raise CodecError(
            f"reserved vector encoding {descriptor >> 4}", ErrorCode.UNSUPPORTED_ENCODING
        ) from None
    if allowed is not None and encoding not in allowed:
        raise CodecError(f"encoding {encoding.name} is not allowed here", ErrorCode.UNSUPPORTED_ENCODING)
    bits = (descriptor & 0x0F) + 1
    if encoding not in QUANTIZED_ENCODINGS and descriptor & 0x0F:
        raise CodecError(
            f"{encoding.name}: low nibble of the descriptor must be zero", ErrorCode.MALFORMED_FRAME
        )
    dim = cursor.uvarint("dimension")
    if dim < 1:
        raise _invalid("dimension must be at least 1")
    if dim > limits.max_dimension:
        raise CodecError(
            f"dimension {dim} exceeds the limit {limits.max_dimension}", ErrorCode.LIMIT_EXCEEDED
        )
    if expected_dim is not None and dim != expected_dim:
        raise CodecError(f"dimension {dim}, expected {expected_dim}", ErrorCode.WRONG_DIMENSION)

    if encoding in (Encoding.RAW_F32, Encoding.RAW_F64):
        dtype = "<f4" if encoding == Encoding.RAW_F32 else "<f8"
        raw = cursor.take(dim * np.dtype(dtype).itemsize, "raw values")
        cursor.expect_end("raw vector")
        values = np.frombuffer(raw, dtype=dtype)
        if not np.isfinite(values).all():
            raise CodecError("raw vector holds NaN or infinite values", ErrorCode.NON_FINITE)
        vector = RawVector._trusted(values.astype(np.float32 if dtype == "<f4" else np.float64))
        return DecodedVector(vector, encoding, 8 * len(raw))
    if encoding == Encoding.ZERO:
        cursor.expect_end("zero vector")
        return DecodedVector(ZeroVector(dim), encoding, 0)
    if encoding == Encoding.EQUALS_SNAPSHOT:
        cursor.expect_end("equals-snapshot vector")
        return DecodedVector(EqualsSnapshot(dim), encoding, 0)
    if encoding == Encoding.DENSE:
        scale = _scale(cursor)
        codes = _codes(cursor.take(packed_size(dim, bits), "dense codes"), dim, bits)
        cursor.expect_end("dense vector")
        # wire-format.md 5.5: the zero vector has one encoding, ZERO.
        if not codes.any():
            raise _invalid("every DENSE code is zero; the zero vector is sent as ZERO")
        return DecodedVector(DenseQuantized._trusted(bits, scale, codes), encoding, dim * bits + 32)
    if encoding == Encoding.DENSE_RICE:
        return DecodedVector(_decode_dense_rice(cursor, dim, bits), encoding, dim * bits + 32)
    if encoding == Encoding.QSGD:
        return _decode_qsgd(cursor, dim)
    return _decode_sparse(cursor, encoding, dim, bits)


def _scale(cursor: Cursor, what: str = "scale") -> float:
    scale = cursor.f32(what)
    if not np.isfinite(scale):
        raise CodecError(f"{what} is not finite", ErrorCode.NON_FINITE)
    if not scale > 0:
        raise _invalid(f"{what} must be positive, got {scale!r}")
    return scale


def _codes(data: memoryview, count: int, bits: int) -> npt.NDArray[Any]:
    try:
        return unpack(data, count, bits, signed=True)
    except ValueError as exc:
        raise _invalid(str(exc)) from exc


def _decode_sparse(cursor: Cursor, encoding: Encoding, dim: int, bits: int) -> DecodedVector:
    nnz = cursor.uvarint("nonzero count")
    if not 1 <= nnz <= dim:
        raise _invalid(f"nonzero count {nnz} outside [1, {dim}]")
    scale = _scale(cursor)
    codes = _codes(cursor.take(packed_size(nnz, bits), "sparse codes"), nnz, bits)
    if not codes.all():
        raise _invalid("sparse codes must be nonzero")
    bitmap_size = (dim + 7) // 8
    if encoding == Encoding.SPARSE_BITMAP:
        block = cursor.take(bitmap_size, "bitmap")
        cursor.expect_end("sparse vector")
        flags = np.unpackbits(np.frombuffer(block, dtype=np.uint8), bitorder="little")
        if flags[dim:].any():
            raise _invalid("bitmap padding bits are not zero")
        indices = np.flatnonzero(flags.view(np.bool_))  # 0s and 1s: the bool view is exact, and faster
        if indices.shape[0] != nnz:
            raise _invalid(f"bitmap has {indices.shape[0]} set bits, expected {nnz}")
        # wire-format.md 5.6: the bitmap is used unless a Rice block is strictly smaller.
        if rice_choose(index_gaps(indices))[1] < bitmap_size:
            raise _invalid("a Rice index block would be smaller than this bitmap")
        vector = SparseQuantized._trusted(dim, bits, scale, indices.astype(np.int64), codes)
        return DecodedVector(vector, encoding, nnz * bits + 32 + dim)
    k = cursor.u8("Rice parameter")
    if k > MAX_RICE_K:
        raise _invalid(f"Rice parameter {k} above {MAX_RICE_K}")
    remainders = cursor.take(packed_size(nnz, k), "Rice remainders")
    unary = cursor.rest()
    # Bound the work before decoding: a canonical Rice block is smaller than the bitmap.
    if 1 + len(remainders) + len(unary) >= bitmap_size:
        raise _invalid("this Rice index block is not smaller than a bitmap")
    gaps = rice_decode(remainders, unary, nnz, k)
    indices = gaps + 1
    np.cumsum(indices, out=indices)
    indices -= 1
    if int(indices[-1]) >= dim:
        raise _invalid(f"index {int(indices[-1])} beyond dimension {dim}")
    quotient_sum = _unary_quotient_sum(unary, nnz)
    best_k, _ = rice_choose(gaps, known={k: quotient_sum})
    if best_k != k:
        raise _invalid(f"Rice parameter {k} is not the canonical choice {best_k}")
    vector = SparseQuantized._trusted(dim, bits, scale, indices, codes)
    # k remainder bits and (gap >> k) + 1 unary bits per gap; the sum read off the unary stream.
    return DecodedVector(vector, encoding, nnz * bits + 32 + nnz * (k + 1) + quotient_sum)


def _unary_quotient_sum(unary: bytes | memoryview, count: int) -> int:
    """The sum of the quotients of a checked unary stream (``count`` code words, no trailing zero byte).

    The stream's bits up to its last one bit are the quotients' zero bits and ``count`` one bits.
    """
    return 8 * (len(unary) - 1) + unary[-1].bit_length() - count


def _decode_dense_rice(cursor: Cursor, dim: int, bits: int) -> DenseQuantized:
    """wire-format.md 5.8, the checks in the order of 5.8-5."""
    scale = _scale(cursor)
    k = cursor.u8("Rice parameter")
    if k >= bits:
        raise _invalid(f"Rice parameter {k} is not below the code width {bits}")
    remainders = cursor.take(packed_size(dim, k), "Rice remainders")
    unary = cursor.rest()
    # Bound the work before decoding: DENSE_RICE is sent only when smaller than DENSE.
    if 1 + len(remainders) + len(unary) >= packed_size(dim, bits):
        raise _invalid("this DENSE_RICE block is not smaller than the DENSE codes")
    values = dense_rice_decode(remainders, unary, dim, k, bits)
    if not values.any():
        raise _invalid("every DENSE_RICE code is zero; the zero vector is sent as ZERO")
    best_k, _ = _dense_rice_choose(values, bits, k, {k: _unary_quotient_sum(unary, dim)})
    if best_k != k:
        raise _invalid(f"Rice parameter {k} is not the canonical choice {best_k}")
    return DenseQuantized._trusted(bits, scale, _unzigzag_narrow(values, bits))


def _unzigzag_narrow(values: npt.NDArray[np.unsignedinteger[Any]], bits: int) -> npt.NDArray[Any]:
    """:func:`unzigzag` of values below ``2**bits``: int8 codes from uint8 (``bits <= 8``), int16 from uint16.

    ``(z >> 1) ^ -(z & 1)`` in the values' own width, where it is exact.
    """
    signed_type = np.int8 if values.dtype == np.uint8 else np.int16
    one = values.dtype.type(1)
    halves = values >> one
    signs = np.bitwise_and(values, one).view(signed_type)
    np.negative(signs, out=signs)
    halves ^= signs.view(values.dtype)
    codes: npt.NDArray[Any] = halves.view(signed_type)
    return codes


def _decode_qsgd(cursor: Cursor, dim: int) -> DecodedVector:
    s = cursor.uvarint("QSGD levels s")
    if not 1 <= s <= MAX_QSGD_LEVELS:
        raise _invalid(f"QSGD s={s} outside [1, {MAX_QSGD_LEVELS}]")
    norm = _scale(cursor, "norm")
    max_exponent = (s + 1).bit_length() - 1
    # Each level costs at most max_exponent + 1 unary bits, max_exponent
    # mantissa bits and a sign bit; three streams pad to bytes.
    if cursor.remaining > packed_size(dim, 2 * max_exponent + 2) + 3:
        raise _invalid("QSGD payload is longer than its levels can take")
    rest = cursor.rest()
    unary_bytes = unary_length(rest, dim)
    exponents = unary_decode(rest[:unary_bytes], dim)
    if int(exponents.max()) > max_exponent:
        raise _invalid(f"QSGD level above s={s}")
    mantissa_bytes = (int(exponents.sum()) + 7) // 8
    if unary_bytes + mantissa_bytes > len(rest):
        raise _invalid("QSGD mantissa stream is truncated")
    magnitudes = gamma_decode(exponents, rest[unary_bytes : unary_bytes + mantissa_bytes]) - 1
    if int(magnitudes.max()) > s:
        raise _invalid(f"QSGD level above s={s}")
    nonzero = magnitudes != 0
    nnz = int(nonzero.sum())
    if not nnz:
        raise _invalid("every QSGD level is zero; the zero vector is sent as ZERO")
    signs_block = rest[unary_bytes + mantissa_bytes :]
    if len(signs_block) != (nnz + 7) // 8:
        raise _invalid(f"sign stream takes {(nnz + 7) // 8} bytes, got {len(signs_block)}")
    signs = np.unpackbits(np.frombuffer(signs_block, dtype=np.uint8), bitorder="little")
    if signs[nnz:].any():
        raise _invalid("sign padding bits are not zero")
    levels = magnitudes
    levels[np.flatnonzero(nonzero)[signs[:nnz].astype(bool)]] *= -1
    # Gamma bits: 2 * exponent + 1 per level; a sign per nonzero level; the 32-bit norm.
    payload_bits = 2 * int(exponents.sum()) + dim + nnz + 32
    return DecodedVector(QSGDVector._trusted(s, norm, levels), Encoding.QSGD, payload_bits)
