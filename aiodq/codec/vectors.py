"""Vector values as they travel on the wire (wire-format.md section 5).

Each class is one vector encoding: what the quantizers produce, what the codec
writes, and what a receiver gets back, field for field.  They are immutable
value objects: equality compares every field (arrays by value), so a test can
pair a sender and a receiver and assert that what arrived equals what was sent.

``to_dense()`` rebuilds the full-precision vector the encoding stands for.
How a value travels (which encoding, and its analytic size in bits) is decided
by :func:`aiodq.codec.payload.plan_vector` when it is sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_QSGD_LEVELS",
    "DenseQuantized",
    "EqualsSnapshot",
    "QSGDVector",
    "RawVector",
    "SparseQuantized",
    "Vector",
    "ZeroVector",
    "check_bits",
    "full_precision",
    "is_float32",
    "to_wire_precision",
]

#: Largest number of QSGD levels s (wire-format.md 5.7).
MAX_QSGD_LEVELS = 0xFFFF

FloatArray: TypeAlias = npt.NDArray[np.floating[Any]]
IntArray: TypeAlias = npt.NDArray[np.integer[Any]]


def is_float32(value: float) -> bool:
    """Return True if ``value`` is exactly representable as a float32."""
    if math.isnan(value):
        return True
    with np.errstate(over="ignore"):
        # Compare as Python floats: numpy 2 would convert ``value`` to float32 first.
        return float(np.float32(value)) == value


def _readonly(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Freeze an array in place, so a value object cannot change under its owner."""
    array.flags.writeable = False
    return array


def _scaled(codes: IntArray, scale: float, dtype: npt.DTypeLike) -> FloatArray:
    """``codes * scale`` in ``dtype``.

    In float64 the product of a code (at most 16 bits) and a float32 scale (24
    bits) is exact.  In float32 one multiplication rounds the exact product
    once, the same result as the float64 product cast to float32, at half the
    cost.
    """
    if np.dtype(dtype) == np.float32:
        return np.multiply(codes, np.float32(scale), dtype=np.float32)
    out = codes.astype(np.float64)
    out *= scale
    return out.astype(dtype, copy=False)


def _set_fields(obj: object, **fields: Any) -> None:
    for name, value in fields.items():
        object.__setattr__(obj, name, value)


def _check_scale(scale: float) -> None:
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be finite and positive, got {scale!r}")
    if not is_float32(scale):
        raise ValueError(f"scale must be a float32 value, got {scale!r}")


def check_bits(bits: object, low: int = 1) -> None:
    """Refuse (``ValueError``) a code width b that is not an integer from ``low`` to 16."""
    if isinstance(bits, bool) or not isinstance(bits, int | np.integer) or not low <= bits <= 16:
        raise ValueError(f"bits must be between {low} and 16, got {bits}")


def _check_codes(codes: npt.NDArray[Any], bits: int) -> None:
    if codes.size and (int(codes.min()) < -(1 << (bits - 1)) or int(codes.max()) >= 1 << (bits - 1)):
        raise ValueError(f"codes do not fit {bits}-bit two's complement")


@dataclass(frozen=True, slots=True, eq=False)
class RawVector:
    """Full-precision values, float32 or float64 (encodings RAW_F32 and RAW_F64)."""

    #: The values; the dtype (float32 or float64) selects the encoding.
    values: FloatArray

    def __post_init__(self) -> None:
        values = np.asarray(self.values)
        if values.dtype not in (np.float32, np.float64) or values.ndim != 1:
            raise ValueError("RawVector needs a one-dimensional float32 or float64 array")
        if values.shape[0] == 0:
            raise ValueError("a vector has at least one coordinate")
        if not np.isfinite(values).all():
            raise ValueError("RawVector values must be finite (no NaN or Inf)")
        object.__setattr__(self, "values", _readonly(values.copy()))

    @classmethod
    def _trusted(cls, values: FloatArray) -> RawVector:
        """Build without validation: for the decoder, which has checked everything."""
        obj = object.__new__(cls)
        object.__setattr__(obj, "values", _readonly(values))
        return obj

    @property
    def dim(self) -> int:
        """Number of coordinates."""
        return int(self.values.shape[0])

    def to_dense(self, dtype: npt.DTypeLike = np.float64) -> FloatArray:
        """Return the values as a new array of ``dtype``."""
        return self.values.astype(dtype)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RawVector):
            return NotImplemented
        return self.values.dtype == other.values.dtype and np.array_equal(self.values, other.values)

    __hash__ = None  # type: ignore[assignment]


def full_precision(values: npt.ArrayLike) -> RawVector:
    """A full-precision vector as the protocol sends it: float32 (the paper's full precision).

    Values too large for float32 travel as float64 instead, so nothing overflows
    to infinity on the way.

    Raises:
        ValueError: if a value is NaN or infinite, or the array is not one-dimensional.
    """
    array = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore"):
        single = array.astype(np.float32)
    if np.isfinite(single).all():
        return RawVector(single)
    return RawVector(array)


def to_wire_precision(values: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``values`` rounded as :func:`full_precision` sends them, as float64.

    The master keeps its snapshot in this form, so that it and every worker hold
    the same x_snap bit for bit.
    """
    return full_precision(values).values.astype(np.float64)


@dataclass(frozen=True, slots=True)
class ZeroVector:
    """The zero vector of ``dim`` coordinates (encoding ZERO, no payload)."""

    #: Number of coordinates.
    dim: int

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError("a vector has at least one coordinate")

    def to_dense(self, dtype: npt.DTypeLike = np.float64) -> FloatArray:
        """Return zeros."""
        return np.zeros(self.dim, dtype=dtype)


@dataclass(frozen=True, slots=True)
class EqualsSnapshot:
    """The model equals the snapshot (encoding EQUALS_SNAPSHOT, MODEL frames only)."""

    #: Number of coordinates.
    dim: int

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError("a vector has at least one coordinate")

    def to_dense(self, dtype: npt.DTypeLike = np.float64) -> FloatArray:
        """Not defined without the snapshot: the receiver substitutes it."""
        raise TypeError("EqualsSnapshot stands for the snapshot; the receiver uses its own copy")


@dataclass(frozen=True, slots=True, eq=False)
class DenseQuantized:
    """``codes[i] * scale`` for every coordinate (encodings DENSE and DENSE_RICE).

    The codes are ``bits``-bit two's complement integers; ``scale`` is the grid
    step delta of docs/algorithms.md section 2, a positive float32.  Whether the
    codes travel at fixed width (DENSE) or Rice-coded (DENSE_RICE) is the
    sender's choice (:func:`aiodq.codec.payload.plan_vector`), not part of the value.
    """

    #: Bits per code, 1 to 16.
    bits: int
    #: Grid step (delta), a positive finite float32 value.
    scale: float
    #: One integer code per coordinate.
    codes: IntArray

    def __post_init__(self) -> None:
        check_bits(self.bits)
        _check_scale(self.scale)
        codes = np.asarray(self.codes)
        if codes.ndim != 1 or codes.shape[0] == 0 or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError("codes must be a non-empty one-dimensional integer array")
        _check_codes(codes, self.bits)
        if not codes.any():
            raise ValueError("all codes are zero: send ZeroVector (or EqualsSnapshot) instead")
        object.__setattr__(self, "codes", _readonly(codes))
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def _trusted(cls, bits: int, scale: float, codes: IntArray) -> DenseQuantized:
        """Build without validation: for the quantizers and the decoder, which have checked everything."""
        obj = object.__new__(cls)
        _set_fields(obj, bits=bits, scale=scale, codes=_readonly(codes))
        return obj

    @property
    def dim(self) -> int:
        """Number of coordinates."""
        return int(self.codes.shape[0])

    def to_dense(self, dtype: npt.DTypeLike = np.float64) -> FloatArray:
        """Return ``codes * scale``: exact in float64, correctly rounded in float32."""
        return _scaled(self.codes, self.scale, dtype)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DenseQuantized):
            return NotImplemented
        return (
            self.bits == other.bits and self.scale == other.scale and np.array_equal(self.codes, other.codes)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True, eq=False)
class SparseQuantized:
    """``codes[k] * scale`` at ``indices[k]``, zero elsewhere (SPARSE_BITMAP or SPARSE_RICE).

    Indices are strictly increasing and every code is nonzero, so one vector has
    one representation.  Which index encoding goes on the wire is not a field:
    the codec always picks the smaller one (wire-format.md 5.6).
    """

    #: Number of coordinates of the whole vector.
    dim: int
    #: Bits per code, 1 to 16.
    bits: int
    #: Grid step (delta), a positive finite float32 value.
    scale: float
    #: Positions of the nonzero coordinates, strictly increasing, below ``dim``.
    indices: IntArray
    #: Nonzero two's complement codes, one per index.
    codes: IntArray

    def __post_init__(self) -> None:
        check_bits(self.bits)
        _check_scale(self.scale)
        if self.dim < 1:
            raise ValueError("a vector has at least one coordinate")
        indices = np.asarray(self.indices)
        codes = np.asarray(self.codes)
        if indices.ndim != 1 or codes.ndim != 1 or indices.shape != codes.shape:
            raise ValueError("indices and codes must be one-dimensional and of equal length")
        if indices.shape[0] == 0:
            raise ValueError("a sparse vector has at least one nonzero; send ZeroVector instead")
        if not (np.issubdtype(indices.dtype, np.integer) and np.issubdtype(codes.dtype, np.integer)):
            raise ValueError("indices and codes must be integer arrays")
        if int(indices[0]) < 0 or int(indices[-1]) >= self.dim or (np.diff(indices) <= 0).any():
            raise ValueError("indices must be strictly increasing and within [0, dim)")
        _check_codes(codes, self.bits)
        if (codes == 0).any():
            raise ValueError("sparse codes must be nonzero; drop the zero entries")
        object.__setattr__(self, "indices", _readonly(indices.astype(np.int64)))
        object.__setattr__(self, "codes", _readonly(codes))
        object.__setattr__(self, "scale", float(self.scale))

    @classmethod
    def _trusted(
        cls, dim: int, bits: int, scale: float, indices: IntArray, codes: IntArray
    ) -> SparseQuantized:
        """Build without validation: for the decoder, which has checked everything."""
        obj = object.__new__(cls)
        _set_fields(
            obj,
            dim=dim,
            bits=bits,
            scale=scale,
            indices=_readonly(indices),
            codes=_readonly(codes),
        )
        return obj

    @property
    def nnz(self) -> int:
        """Number of nonzero coordinates."""
        return int(self.indices.shape[0])

    def to_dense(self, dtype: npt.DTypeLike = np.float64) -> FloatArray:
        """Scatter ``codes * scale`` into a zero vector of ``dim`` coordinates.

        The products are exact in float64 and rounded once to ``dtype`` before the
        scatter (a scatter that also converts is slower), so the zero vector is
        allocated in ``dtype`` itself, not converted afterwards.
        """
        out = np.zeros(self.dim, dtype=dtype)
        values = self.codes.astype(np.float64)
        values *= self.scale
        out[self.indices] = values.astype(out.dtype, copy=False)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SparseQuantized):
            return NotImplemented
        return (
            self.dim == other.dim
            and self.bits == other.bits
            and self.scale == other.scale
            and np.array_equal(self.indices, other.indices)
            and np.array_equal(self.codes, other.codes)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, slots=True, eq=False)
class QSGDVector:
    """QSGD's ``norm * sign(v_i) * level_i / s`` (Alistarh et al. 2017; encoding QSGD).

    ``levels`` holds the signed levels, ``-s .. s``; the codec writes their
    magnitudes in Elias gamma code and their signs apart (wire-format.md 5.7).
    """

    #: Number of quantization levels s (at least 1).
    s: int
    #: The 2-norm scale, a positive finite float32 value.
    norm: float
    #: Signed levels, one per coordinate, each in ``[-s, s]``.
    levels: IntArray = field()

    def __post_init__(self) -> None:
        if not 1 <= self.s <= MAX_QSGD_LEVELS:
            raise ValueError(f"s must be between 1 and {MAX_QSGD_LEVELS}, got {self.s}")
        _check_scale(self.norm)
        levels = np.asarray(self.levels)
        if levels.ndim != 1 or levels.shape[0] == 0 or not np.issubdtype(levels.dtype, np.integer):
            raise ValueError("levels must be a non-empty one-dimensional integer array")
        if int(np.abs(levels).max()) > self.s:
            raise ValueError(f"levels must lie in [-{self.s}, {self.s}]")
        if not levels.any():
            raise ValueError("all levels are zero: send ZeroVector instead")
        object.__setattr__(self, "levels", _readonly(levels.astype(np.int64)))
        object.__setattr__(self, "norm", float(self.norm))

    @classmethod
    def _trusted(cls, s: int, norm: float, levels: IntArray) -> QSGDVector:
        """Build without validation: for the decoder, which has checked everything."""
        obj = object.__new__(cls)
        _set_fields(obj, s=s, norm=norm, levels=_readonly(levels))
        return obj

    @property
    def dim(self) -> int:
        """Number of coordinates."""
        return int(self.levels.shape[0])

    def to_dense(self, dtype: npt.DTypeLike = np.float64) -> FloatArray:
        """Return ``norm * level / s``: ``norm * level`` is exact in float64, the division rounds once."""
        out = self.levels.astype(np.float64)
        out *= self.norm
        out /= self.s
        return out.astype(dtype, copy=False)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, QSGDVector):
            return NotImplemented
        return self.s == other.s and self.norm == other.norm and np.array_equal(self.levels, other.levels)

    __hash__ = None  # type: ignore[assignment]


#: Any vector value the wire format carries.
Vector: TypeAlias = RawVector | ZeroVector | EqualsSnapshot | DenseQuantized | SparseQuantized | QSGDVector
