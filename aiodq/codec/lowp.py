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

import contextlib
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ..errors import NonFiniteError
from .vectors import DenseQuantized, EqualsSnapshot, RawVector, Vector, ZeroVector, check_bits

__all__ = [
    "DITHER_BITS",
    "MAX_MODEL_BITS",
    "ModelPayload",
    "check_finite",
    "real_input",
    "code_range",
    "draw_dither",
    "float32_at_least",
    "float32_at_most",
    "floor_with_dither",
    "make_rng",
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
    check_bits(bits)
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def real_input(values: npt.ArrayLike, rng: object, what: str) -> npt.NDArray[Any]:
    """``values`` as an array of real numbers, for a quantizer that draws from ``rng``.

    Raises:
        TypeError: if ``rng`` is no ``numpy.random.Generator``.
        ValueError: if ``values`` are complex (an API audit: their imaginary parts were dropped with
            only numpy's ComplexWarning).
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (make_rng, say), got {type(rng).__name__}")
    array = np.asarray(values)
    if array.dtype.kind == "c":
        raise ValueError(f"the {what} must be real numbers, got a {array.dtype} array")
    return array


def check_finite(values: npt.NDArray[Any], what: str = "input") -> tuple[float, float]:
    """Return ``(min, max)`` of ``values``, refusing NaN and infinities.

    Raises:
        NonFiniteError: if any value is NaN or infinite.
        ValueError: if ``values`` is empty or not one-dimensional.
    """
    if values.ndim != 1 or values.shape[0] == 0:
        raise ValueError(f"{what} must be a non-empty one-dimensional array")
    # Block by block, the maximum reads from the cache what the minimum has just read.
    step = 2 * _BLOCK
    low, high = math.inf, -math.inf
    for start in range(0, values.shape[0], step):
        block = values[start : start + step]
        # The ufuncs' reductions themselves: the ndarray methods add a Python-level wrapper.
        block_low, block_high = float(np.minimum.reduce(block)), float(np.maximum.reduce(block))
        if not (math.isfinite(block_low) and math.isfinite(block_high)):
            raise NonFiniteError(f"{what} contains NaN or infinite values")
        low, high = min(low, block_low), max(high, block_high)
    return low, high


#: The largest finite float32.
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _nearest_float32(value: float) -> np.float32:
    """``value`` rounded to the nearest float32 (inf beyond its range), without an overflow warning."""
    if -_FLOAT32_MAX <= value <= _FLOAT32_MAX:  # the common case: the conversion cannot overflow
        return np.float32(value)
    with np.errstate(over="ignore"):
        return np.float32(value)


def float32_at_least(value: float) -> float:
    """Return the smallest float32 that is ``>= value`` (inf beyond the float32 range)."""
    rounded = _nearest_float32(value)
    if float(rounded) < value:
        rounded = np.nextafter(rounded, np.float32(np.inf))
    return float(rounded)


def float32_at_most(value: float) -> float:
    """Return the largest float32 that is ``<= value`` (for ``value >= 0``)."""
    rounded = _nearest_float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(0))
    return float(rounded)


def make_rng(entropy: int | Sequence[int] | None = None) -> np.random.Generator:
    """A generator for the quantizers' randomness: numpy's SFC64, seeded through a SeedSequence.

    Every quantizer here draws raw 64-bit words (four 16-bit dithers or two 32-bit
    keep-test uniforms per word), so the bit generator's speed is a large share of
    quantizing a vector, and SFC64 produces raw words faster than numpy's default
    PCG64.  It is one of numpy's own bit generators, passes the same statistical
    test batteries, and takes the same ``SeedSequence`` entropy as
    ``np.random.default_rng(entropy)``: seeded runs stay reproducible, though they
    draw other numbers than a PCG64 generator with the same seed.

    Args:
        entropy: what ``np.random.default_rng`` would take, e.g. ``[seed, stream]``;
            None for fresh entropy from the operating system.
    """
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence(entropy)))


def draw_dither(rng: np.random.Generator, count: int) -> npt.NDArray[np.uint16]:
    """Draw ``count`` uniform 16-bit dither integers ``r`` (``u = r / 2**16``).

    Uses the generator's raw 64-bit output, four dithers per draw: about twice
    as fast as ``rng.integers`` for the same distribution.
    """
    return _raw_dither(rng.bit_generator, count)


def _raw_dither(bit_generator: np.random.BitGenerator, count: int) -> npt.NDArray[np.uint16]:
    """``count`` dithers from the bit generator's next ``ceil(count / 4)`` raw words, in word order."""
    words = bit_generator.random_raw((count + 3) // 4)
    return np.asarray(words, dtype=np.uint64).view(np.uint16)[:count]


#: The context of a loop that needs no change of numpy's error state.
_NOTHING = contextlib.nullcontext()

#: Coordinates per block of :func:`_dither_blocks`: a multiple of 4, so blocks start on a raw
#: word.  A block's temporaries (about ten bytes per coordinate) stay in the caches; each block
#: also costs about ten numpy calls.  2**17 against 2**16 on the project's Zen 4 VM (1 MB of L2
#: per core): 1.25 against 1.28 ms to encode 10**6 8-bit codes (docs/benchmarks.md).
_BLOCK = 1 << 17


def _dither_blocks(
    values: npt.NDArray[Any],
    scale: float,
    dither: npt.NDArray[np.uint16] | np.random.BitGenerator,
    low: int,
    high: int,
    *,
    out: npt.NDArray[Any],
    clip: bool = True,
) -> None:
    """Write ``(floor(clip(values * scale, low * 2**16, high * 2**16)) + r) >> 16`` into ``out``.

    ``scale`` is ``2**16 / delta``; ``r`` comes from the uint16 array ``dither`` or is
    drawn from a bit generator.  The shift is done in floating point: with
    ``F = floor(...)``, ``F + r`` is an integer of at most 24 bits (53 in float64),
    so ``floor((F + r) * 2**-16)`` is exact and saves a conversion to integers.

    The fixed-point form of stochastic rounding (see :func:`floor_with_dither`)
    takes six or seven numpy passes; run over the whole vector, each pass streams
    megabytes through main memory.  Run block by block, only the input and the
    codes cross main memory and the passes in between work on cached data.  A
    generator is drawn from block by block too: ``_BLOCK`` is a multiple of 4, so
    the words, and hence the codes, are those of one draw of the whole vector.

    ``clip=False`` leaves the clip out, for a caller that knows that no scaled
    value lies outside the range (:func:`_needs_clip`).
    """
    narrow = high - low < 256 and scale < _FLOAT32_SAFE
    # |2**16 y| < 2**24 when narrow: float32 holds it to within one unit of 2**-16.
    float_type: type[np.floating[Any]] = np.float32 if narrow else np.float64
    count = values.shape[0]
    scaled_block = np.empty(min(_BLOCK, count), dtype=float_type)
    factor, unit = float_type(scale), float_type(1.0 / _DITHER_SCALE)
    bottom, top = low * _DITHER_SCALE, high * _DITHER_SCALE
    # Huge values overflow to inf, which the clip brings back; without the clip nothing overflows
    # (:func:`_needs_clip` checked the largest value), and numpy's error state is left alone.
    # Values of another float type are rounded to ``float_type`` first, by a plain cast into the
    # block, then multiplied in place: the ufunc's own input cast (``dtype=``) rounds them the same
    # way but runs a buffered loop, slower than the two passes.
    cast_first = values.dtype != float_type
    with np.errstate(over="ignore") if clip else _NOTHING:
        for start in range(0, count, _BLOCK):
            stop = min(start + _BLOCK, count)
            scaled = scaled_block[: stop - start]
            if isinstance(dither, np.random.BitGenerator):
                r = _raw_dither(dither, stop - start)
            else:
                r = dither[start:stop]
            if cast_first:
                np.copyto(scaled, values[start:stop], casting="unsafe")
                np.multiply(scaled, factor, out=scaled)
            else:
                np.multiply(values[start:stop], factor, out=scaled)
            if clip:
                np.clip(scaled, bottom, top, out=scaled)
            np.floor(scaled, out=scaled)
            np.add(scaled, r, out=scaled)
            np.multiply(scaled, unit, out=scaled)
            np.floor(scaled, out=scaled)
            np.copyto(out[start:stop], scaled, casting="unsafe")  # integers in low..high: exact


def _needs_clip(largest: float, scale: float, low: int, high: int) -> bool:
    """False if no value with ``|v| <= largest`` scales (as :func:`_dither_blocks` rounds) beyond the range.

    The quantizers round delta up so that ``largest / delta`` does not exceed the top
    code; the float32 rounding of ``2**16 / delta`` and of the product can still push
    the largest scaled value a unit past it, so this is checked on that one value
    (the rounding is monotonic) instead of clipping every value.
    """
    if high - low < 256 and scale < _FLOAT32_SAFE:
        if not largest <= _FLOAT32_MAX:  # (scale is below _FLOAT32_SAFE here)
            return True
        # The product of two float32 values is exact in float64 (48 significant bits), so
        # rounding it once to float32 gives the float32 product; beyond the float32 range it
        # would be inf or the largest float32, far past any code range: clip.
        product = float(np.float32(largest)) * float(np.float32(scale))
        if product > _FLOAT32_MAX:
            return True
        peak = float(np.float32(product))
    else:
        peak = largest * scale
    return not (low * _DITHER_SCALE <= -peak and peak <= high * _DITHER_SCALE)


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
        fixed: npt.NDArray[Any] = np.empty(values.shape, dtype=np.int32 if narrow else np.int64)
        _dither_blocks(values.reshape(-1), scale, dither.reshape(-1), low, high, out=fixed.reshape(-1))
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
    check_bits(bits, 2)
    if not (math.isfinite(delta) and delta > 0):
        raise ValueError(f"delta must be finite and positive, got {delta!r}")
    u = np.asarray(dither)
    if u.shape != v.shape:
        raise ValueError("dither must have one entry per value")
    return _codes(v, delta, bits, u, symmetric)


def _codes(
    values: npt.NDArray[Any],
    delta: float,
    bits: int,
    dither: npt.NDArray[Any] | np.random.BitGenerator,
    symmetric: bool,
    *,
    largest: float | None = None,
) -> npt.NDArray[Any]:
    """Q's codes for inputs already checked (finite values, valid delta and bits).

    ``dither`` is an explicit dither (uint16 or floats) or a bit generator to draw
    the 16-bit dither from as the blocks are quantized.  ``largest``, if given,
    must be at least ``max|values|``: it can spare the clip (:func:`_needs_clip`).
    """
    low, high = code_range(bits)
    if symmetric:
        low = -high
    code_type = np.int8 if bits <= 8 else np.int16
    if isinstance(dither, np.random.BitGenerator) or dither.dtype == np.uint16:
        codes = np.empty(values.shape[0], dtype=code_type)
        scale = _DITHER_SCALE / delta
        clip = largest is None or _needs_clip(largest, scale, low, high)
        _dither_blocks(values, scale, dither, low, high, out=codes, clip=clip)
        return codes
    return floor_with_dither(values, 1.0 / delta, dither, low, high).astype(code_type)


def quantize(
    values: npt.ArrayLike, delta: float, bits: int, rng: np.random.Generator, *, symmetric: bool = False
) -> npt.NDArray[Any]:
    """Q_(delta, b) with a dither drawn from ``rng`` (see :func:`quantize_with_dither`)."""
    v = np.asarray(values)
    dither = draw_dither(rng, v.shape[0] if v.ndim else 1)
    return quantize_with_dither(v, delta, bits, dither, symmetric=symmetric)


def _rounded_to_zero(codes: npt.NDArray[Any], largest: float, delta: float) -> bool:
    """True if every code is 0, for codes quantized with grid step ``delta`` from values up to ``largest``.

    With ``largest / delta >= 2`` the largest value's code has magnitude at least 1 (its scaled
    value is within float32 rounding of 2 or more, and its dither rounds it up or down by less
    than one), so only a smaller ratio needs the pass over the codes.
    """
    return largest / delta < 2.0 and not codes.any()


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
    check_bits(bits, 2)  # even when the result is the zero vector
    alpha = real_input(gradient, rng, "gradient")
    if alpha.dtype.kind != "f":
        alpha = alpha.astype(np.float64)
    low, high = check_finite(alpha, "gradient")
    largest = max(-low, high)
    if largest == 0.0:
        return ZeroVector(alpha.shape[0])
    delta, codes = _quantize_to_range(alpha, largest, bits, rng, bounded=True)
    # The largest coordinate sits on the top code (unless delta is the smallest float32, for a
    # gradient below 2**-149): only b = 2 (top code 1, probability below 2**-16) and such
    # tiny gradients can round every coordinate to 0.
    if _rounded_to_zero(codes, largest, delta):
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
    return _quantize_to_range(values, largest, bits, rng, bounded=False)


def _quantize_to_range(
    values: npt.NDArray[Any], largest: float, bits: int, rng: np.random.Generator, *, bounded: bool
) -> tuple[float, npt.NDArray[Any]]:
    """:func:`quantize_to_range`; ``bounded`` promises ``largest >= max|values|`` (:func:`_needs_clip`)."""
    check_bits(bits, 2)
    _, top = code_range(bits)
    delta = float32_at_least(largest / top)
    if delta == 0.0:
        delta = float(np.nextafter(np.float32(0), np.float32(1)))
    if not math.isfinite(delta) or delta > _FLOAT32_MAX:
        raise ValueError("values exceed the float32 range of the scale")
    # Callers have checked the values (finite, one-dimensional): no second pass.
    codes = _codes(values, delta, bits, rng.bit_generator, True, largest=largest if bounded else None)
    return delta, codes


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
    x = np.asarray(real_input(model, rng, "model"), dtype=np.float64)
    x_snap = np.asarray(real_input(snapshot, rng, "snapshot"), dtype=np.float64)
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
    largest = float(np.maximum.reduce(magnitude))
    if largest == 0.0:  # zero-centred and x = 0
        return ModelPayload(ZeroVector(d), relative=False)
    delta = _grid_step(d, mu, norm2, float(np.add.reduce(magnitude)))
    bits = math.ceil(math.log2(largest / delta + 1.0)) + 1 if delta > 0 else max_bits + 1
    if bits > max_bits or not math.isfinite(largest / delta):
        return ModelPayload(RawVector(target.astype(np.float32)), relative)
    codes = _codes(target, delta, bits, rng.bit_generator, True, largest=largest)
    if _rounded_to_zero(codes, largest, delta):
        # Every coordinate rounded to zero: the canonical forms of that value.
        return ModelPayload(EqualsSnapshot(d) if relative else ZeroVector(d), relative=False)
    return ModelPayload(DenseQuantized._trusted(bits, delta, codes), relative)
