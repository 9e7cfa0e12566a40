"""The low-precision quantizer Q_(delta, b) and its two uses (docs/algorithms.md 2-4).

Stochastic rounding maps ``v`` to ``code * delta`` with
``code = floor(v / delta + u)``, ``u`` a uniform dither in ``[0, 1)``.  The
fast path draws ``u = r / 2**16`` from 16-bit random integers ``r``; its bias is
at most ``2**-16 * delta`` per coordinate, plus float rounding of ``v / delta``
(float32 for ``bits <= 8``: another ``2**-16 * delta`` at most).  Tests bound it.

All functions are pure: randomness comes in as a ``numpy.random.Generator`` or
as the dither array itself, so a rounding can be written down as a test vector.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ..errors import NonFiniteError
from .vectors import DenseQuantized, EqualsSnapshot, RawVector, Vector, ZeroVector

__all__ = [
    "DITHER_BITS",
    "MAX_MODEL_BITS",
    "ModelPayload",
    "check_finite",
    "code_range",
    "draw_dither",
    "float32_at_least",
    "float32_at_most",
    "floor_with_dither",
    "model_delta",
    "quantize",
    "quantize_gradient",
    "quantize_model",
    "quantize_to_range",
    "quantize_with_dither",
]

#: Bits of the integer dither of the fast path (algorithms.md 2: at least 16).
DITHER_BITS = 16
#: Default cap on the model bits b_x; above it the model travels as float32.
MAX_MODEL_BITS = 16

_DITHER_SCALE = float(1 << DITHER_BITS)
#: Largest 2**16 / delta the float32 fast path takes: beyond it the float64 path is used.
_FLOAT32_SAFE = float(2.0**100)


def code_range(bits: int) -> tuple[int, int]:
    """Return the smallest and largest ``bits``-bit two's complement code."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits must be between 1 and 16, got {bits}")
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def check_finite(values: npt.NDArray[Any], what: str = "input") -> tuple[float, float]:
    """Return ``(min, max)`` of ``values``, refusing NaN and infinities.

    Raises:
        NonFiniteError: if any value is NaN or infinite.
        ValueError: if ``values`` is empty or not one-dimensional.
    """
    if values.ndim != 1 or values.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty one-dimensional array")
    low, high = float(values.min()), float(values.max())
    if not (math.isfinite(low) and math.isfinite(high)):
        raise NonFiniteError(f"{what} contains NaN or infinite values")
    return low, high


def float32_at_least(value: float) -> float:
    """Return the smallest float32 that is ``>= value`` (inf beyond the float32 range)."""
    with np.errstate(over="ignore"):
        rounded = np.float32(value)
    if float(rounded) < value:
        rounded = np.nextafter(rounded, np.float32(np.inf))
    return float(rounded)


def float32_at_most(value: float) -> float:
    """Return the largest float32 that is ``<= value`` (for ``value >= 0``)."""
    with np.errstate(over="ignore"):
        rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(0))
    return float(rounded)


def draw_dither(rng: np.random.Generator, count: int) -> npt.NDArray[np.uint16]:
    """Draw ``count`` uniform 16-bit dither integers ``r`` (``u = r / 2**16``).

    Uses the generator's raw 64-bit output, four dithers per draw: about twice
    as fast as ``rng.integers`` for the same distribution.
    """
    words = rng.bit_generator.random_raw((count + 3) // 4)
    return np.asarray(words, dtype=np.uint64).view(np.uint16)[:count]


def floor_with_dither(
    values: npt.NDArray[Any], inverse_delta: float, dither: npt.NDArray[Any], low: int, high: int
) -> npt.NDArray[Any]:
    """Return ``floor(clip(values * inverse_delta, low, high) + u)``: stochastic rounding onto ``low..high``.

    Clipping the scaled value (not the code) gives exactly "outside the range,
    the nearest end" (algorithms.md 2), keeps every later integer operation in
    range whatever the input, and costs no extra pass.  ``dither`` is a uint16
    array ``r`` (``u = r / 2**16``, the fast path) or floats in ``[0, 1)``.
    A code range of at most 256 values lets the fast path work in float32.
    """
    if np.issubdtype(dither.dtype, np.integer):
        if dither.dtype != np.uint16:
            raise ValueError("an integer dither must be uint16 (u = r / 2**16)")
        # floor(y + r / 2**16) == (floor(2**16 y) + r) >> 16 exactly, for integer r.
        scale = inverse_delta * _DITHER_SCALE
        narrow = high - low < 256 and scale < _FLOAT32_SAFE
        # |2**16 y| <= 2**23 when narrow: float32 holds it to within one unit of 2**-16.
        dtype = np.float32 if narrow else np.float64
        with np.errstate(over="ignore"):
            scaled = np.multiply(values, dtype(scale), dtype=dtype)
        np.clip(scaled, low * _DITHER_SCALE, high * _DITHER_SCALE, out=scaled)
        np.floor(scaled, out=scaled)
        fixed: npt.NDArray[Any] = scaled.astype(np.int32 if narrow else np.int64)
        np.add(fixed, dither, out=fixed)
        np.right_shift(fixed, DITHER_BITS, out=fixed)
        return fixed
    u = np.asarray(dither, dtype=np.float64)
    if u.size and not (float(u.min()) >= 0.0 and float(u.max()) < 1.0):
        raise ValueError("a float dither must lie in [0, 1)")
    with np.errstate(over="ignore"):
        y = np.multiply(values, inverse_delta, dtype=np.float64)
    np.clip(y, low, high, out=y)
    y += u
    codes: npt.NDArray[Any] = np.floor(y).astype(np.int64)
    return codes


def quantize_with_dither(
    values: npt.ArrayLike, delta: float, bits: int, dither: npt.ArrayLike, *, symmetric: bool = False
) -> npt.NDArray[Any]:
    """Stochastic rounding with an explicit dither: the core of Q_(delta, b).

    ``code = floor(clip(v / delta, low, high) + u)`` with ``low..high`` the
    b-bit two's complement range ``-2**(b-1)..2**(b-1) - 1`` (or the symmetric
    ``-(2**(b-1) - 1)..2**(b-1) - 1``), where ``u`` is ``dither`` itself (floats
    in ``[0, 1)``) or ``dither / 2**16`` (a uint16 array).  Values outside the
    grid become its nearest end (biased; the callers choose ``delta`` so that
    this does not happen).

    Args:
        values: the vector to quantize (finite).
        delta: the grid step, positive and finite.
        bits: code width b, 2 to 16.
        dither: one dither per value.
        symmetric: use the symmetric code range (the gradient and model quantizers do).

    Returns:
        The codes: ``int8`` for ``bits <= 8``, else ``int16``.

    Raises:
        NonFiniteError: if ``values`` holds NaN or infinities.
        ValueError: on a bad ``delta``, ``bits`` or dither.
    """
    v = np.asarray(values)
    if not np.issubdtype(v.dtype, np.floating):
        v = v.astype(np.float64)
    check_finite(v)
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be between 2 and 16, got {bits}")
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be finite and positive, got {delta!r}")
    u = np.asarray(dither)
    if u.shape != v.shape:
        raise ValueError("dither must have one entry per value")
    return _codes(v, delta, bits, u, symmetric)


def _codes(
    values: npt.NDArray[Any], delta: float, bits: int, dither: npt.NDArray[Any], symmetric: bool
) -> npt.NDArray[Any]:
    """Q's codes for inputs already checked (finite values, valid delta and bits)."""
    low, high = code_range(bits)
    if symmetric:
        low = -high
    codes = floor_with_dither(values, 1.0 / delta, dither, low, high)
    return codes.astype(np.int8 if bits <= 8 else np.int16)


def quantize(
    values: npt.ArrayLike, delta: float, bits: int, rng: np.random.Generator, *, symmetric: bool = False
) -> npt.NDArray[Any]:
    """Q_(delta, b) with a dither drawn from ``rng`` (see :func:`quantize_with_dither`)."""
    v = np.asarray(values)
    dither = draw_dither(rng, v.shape[0] if v.ndim else 1)
    return quantize_with_dither(v, delta, bits, dither, symmetric=symmetric)


def quantize_gradient(
    gradient: npt.ArrayLike, bits: int, rng: np.random.Generator
) -> DenseQuantized | ZeroVector:
    """The gradient quantizer of algorithms.md 3: scale by the infinity norm.

    ``delta = ||alpha||_inf / (2**(b-1) - 1)``, rounded up to a float32, so the
    largest coordinate sits on the grid and nothing is clipped.

    Args:
        gradient: the vector alpha (finite).
        bits: code width b, 2 to 16.
        rng: source of the dither.

    Returns:
        A :class:`DenseQuantized` vector, or :class:`ZeroVector` if alpha = 0.

    Raises:
        NonFiniteError: if alpha holds NaN or infinities.
        ValueError: on bad ``bits``, or values beyond the float32 range.
    """
    code_range(bits)  # validate bits even when the result is the zero vector
    if bits < 2:
        raise ValueError(f"bits must be between 2 and 16, got {bits}")
    alpha = np.asarray(gradient)
    if not np.issubdtype(alpha.dtype, np.floating):
        alpha = alpha.astype(np.float64)
    low, high = check_finite(alpha, "gradient")
    largest = max(-low, high)
    if largest == 0.0:
        return ZeroVector(alpha.shape[0])
    delta, codes = quantize_to_range(alpha, largest, bits, rng)
    # The largest coordinate sits on the top code; only b = 2 (top code 1) can
    # round every coordinate to 0, with probability below 2**-16.
    if not codes.any():
        return ZeroVector(alpha.shape[0])
    return DenseQuantized._trusted(bits, delta, codes)


def quantize_to_range(
    values: npt.NDArray[Any], largest: float, bits: int, rng: np.random.Generator
) -> tuple[float, npt.NDArray[Any]]:
    """Quantize on the grid whose top code ``2**(b-1) - 1`` sits at ``largest``.

    Returns:
        ``(delta, codes)`` with ``delta`` the float32 grid step, rounded up so
        that no value with ``|v| <= largest`` is clipped, and codes in the
        symmetric range ``-(2**(b-1) - 1)..2**(b-1) - 1``.

    Raises:
        ValueError: on bad ``bits``, or if ``delta`` exceeds the float32 range.
    """
    _, top = code_range(bits)
    if bits < 2:
        raise ValueError(f"bits must be between 2 and 16, got {bits}")
    delta = float32_at_least(largest / top)
    if delta == 0.0:
        delta = float(np.nextafter(np.float32(0), np.float32(1)))
    if not math.isfinite(delta) or delta > float(np.finfo(np.float32).max):
        raise ValueError("values exceed the float32 range of the scale")
    # Callers have checked the values (finite, one-dimensional): no second pass.
    return delta, _codes(values, delta, bits, draw_dither(rng, values.shape[0]), symmetric=True)


class ModelPayload(NamedTuple):
    """What the master puts in a MODEL message (wire-format.md 7.7)."""

    #: The vector: DenseQuantized, EqualsSnapshot, ZeroVector or a float32 RawVector.
    vector: Vector
    #: True if ``vector`` encodes ``x - x_snap`` (the RELATIVE flag), False if ``x``.
    relative: bool


def model_delta(difference: npt.NDArray[Any], mu: float, target: npt.NDArray[Any] | None = None) -> float:
    """The grid step delta_x of the mu-constraint (algorithms.md 4).

    ``max(2 sqrt(mu / d) ||v||_2, mu ||v||_2**2 / ||q||_1)`` for ``v = x - x_snap``
    and ``q`` the vector quantized (``target``; ``v`` itself when snapshot-centred,
    ``x`` when zero-centred).  Q's error is at most ``min(d delta**2 / 4,
    delta ||q||_1)``, so either term keeps ``E||Q(x) - x||**2 <= mu ||v||**2``;
    the larger grid step costs fewer bits.  The result is rounded down to a
    float32 so the bound still holds after rounding.
    """
    norm2 = float(np.linalg.norm(difference))
    norm1 = float(np.abs(difference if target is None else target).sum())
    return _grid_step(difference.shape[0], mu, norm2, norm1)


def _grid_step(d: int, mu: float, norm2: float, norm1: float) -> float:
    """delta_x from ``||x - x_snap||_2`` and the quantized vector's 1-norm (see :func:`model_delta`)."""
    return float32_at_most(max(2.0 * math.sqrt(mu / d) * norm2, mu * norm2 * norm2 / norm1))


def quantize_model(
    model: npt.ArrayLike,
    snapshot: npt.ArrayLike,
    mu: float,
    rng: np.random.Generator,
    *,
    centre: str = "snapshot",
    max_bits: int = MAX_MODEL_BITS,
) -> ModelPayload:
    """The model quantizer under the mu-constraint (algorithms.md 4).

    Snapshot-centred (the default) quantizes ``v = x - x_snap`` and the worker
    rebuilds ``x_snap + Q(v)``; zero-centred quantizes ``x`` itself with the same
    grid step.  The width is ``b_x = ceil(log2(max|q| / delta_x + 1)) + 1`` (no
    clipping); above ``max_bits`` the vector travels as float32.  ``x = x_snap``
    is sent as EQUALS_SNAPSHOT with no payload.

    Args:
        model: the master's current model x (finite).
        snapshot: the epoch's snapshot x_snap, of the same length.
        mu: the accuracy/bits trade-off, positive.
        rng: source of the dither.
        centre: ``"snapshot"`` or ``"zero"``.
        max_bits: cap on b_x, 2 to 16.

    Returns:
        A :class:`ModelPayload`.

    Raises:
        NonFiniteError: if x or x_snap holds NaN or infinities.
        ValueError: on mismatched shapes or bad parameters.
    """
    x = np.asarray(model, dtype=np.float64)
    x_snap = np.asarray(snapshot, dtype=np.float64)
    if x.shape != x_snap.shape:
        raise ValueError(f"model and snapshot shapes differ: {x.shape} != {x_snap.shape}")
    if not (math.isfinite(mu) and mu > 0):
        raise ValueError(f"mu must be finite and positive, got {mu!r}")
    if centre not in ("snapshot", "zero"):
        raise ValueError(f"centre must be 'snapshot' or 'zero', got {centre!r}")
    if not 2 <= max_bits <= 16:
        raise ValueError(f"max_bits must be between 2 and 16, got {max_bits}")
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError("model must be a non-empty one-dimensional array")
    d = x.shape[0]
    difference = x - x_snap
    # One pass tells finiteness: NaN or infinity in x or x_snap makes the norm non-finite.
    norm2 = math.sqrt(float(np.dot(difference, difference)))
    if not math.isfinite(norm2):
        check_finite(x, "model")
        check_finite(x_snap, "snapshot")
        raise ValueError("x - x_snap is too large for its norm to be represented")
    if norm2 == 0.0:
        return ModelPayload(EqualsSnapshot(d), relative=False)
    relative = centre == "snapshot"
    target = difference if relative else x
    magnitude = np.abs(target)
    largest = float(magnitude.max())
    if largest == 0.0:  # zero-centred and x = 0
        return ModelPayload(ZeroVector(d), relative=False)
    delta = _grid_step(d, mu, norm2, float(magnitude.sum()))
    bits = math.ceil(math.log2(largest / delta + 1.0)) + 1 if delta > 0 else max_bits + 1
    if bits > max_bits or not math.isfinite(largest / delta):
        return ModelPayload(RawVector(target.astype(np.float32)), relative)
    codes = _codes(target, delta, bits, draw_dither(rng, d), symmetric=True)
    if not codes.any():
        # Every coordinate rounded to zero: the canonical forms of that value.
        return ModelPayload(EqualsSnapshot(d) if relative else ZeroVector(d), relative=False)
    return ModelPayload(DenseQuantized._trusted(bits, delta, codes), relative)
