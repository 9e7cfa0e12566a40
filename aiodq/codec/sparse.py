"""The unbiased sparsifier of Sparse-AsyLPG (docs/algorithms.md 6; Wangni et al. 2018).

Coordinate j is kept with probability ``p_j = min(phi |alpha_j| / ||alpha||_1, 1)``
and rescaled to ``alpha_j / p_j``, so the result is unbiased with at most
``phi`` nonzeros in expectation.  The exact-budget variant recalibrates the
probabilities so that they sum to ``phi`` exactly (Wangni et al., Algorithm 3).
The kept values are then quantized with the infinity-norm grid of section 3.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from .lowp import _quantize_to_range, check_finite, real_input
from .vectors import SparseQuantized, ZeroVector, check_bits

__all__ = [
    "keep_probabilities",
    "quantize_sparse",
    "sparsify",
    "sparsify_with_uniforms",
]

#: The keep test draws 32-bit uniforms: P(keep) is p rounded up to a multiple of 2**-32.
_UNIFORM_SCALE = float(1 << 32)


def keep_probabilities(
    gradient: npt.ArrayLike, budget: float, *, exact: bool = False
) -> npt.NDArray[np.float64]:
    """Return the keep probabilities p_j for a budget ``phi`` (algorithms.md 6).

    Args:
        gradient: the vector alpha (finite).
        budget: phi, the expected number of nonzeros; positive.
        exact: recalibrate so that ``sum(p) == min(phi, nnz(alpha))``.

    Returns:
        One probability per coordinate; 0 where alpha is 0.

    Raises:
        NonFiniteError: if alpha holds NaN or infinities.
        ValueError: if ``budget`` is not positive.
    """
    alpha = np.asarray(gradient, dtype=np.float64)
    check_finite(alpha, "gradient")
    if not budget > 0:
        raise ValueError(f"the budget phi must be positive, got {budget!r}")
    if not 0 < budget < float("inf"):
        raise ValueError(f"the budget phi must be positive and finite, got {budget!r}")
    magnitude = np.abs(alpha)
    largest = float(magnitude.max())
    if largest == 0.0:
        return np.zeros_like(magnitude)
    # Work with |alpha| / max|alpha|: the 1-norm of huge values cannot overflow.
    magnitude /= largest
    total = float(magnitude.sum())
    probabilities = np.minimum(magnitude * (budget / total), 1.0)
    if not exact:
        return probabilities
    nonzero = int(np.count_nonzero(magnitude))
    if budget >= nonzero:
        return (magnitude > 0).astype(np.float64)
    # Saturated coordinates keep p = 1; the rest share what is left of the
    # budget in proportion to |alpha_j|.  Each round saturates at least one more
    # coordinate or stops, so it ends within nnz rounds (in practice a few).
    saturated = probabilities >= 1.0
    while True:
        free_mass = float(magnitude[~saturated].sum())
        factor = (budget - float(saturated.sum())) / free_mass
        probabilities = np.where(saturated, 1.0, np.minimum(magnitude * factor, 1.0))
        grown = probabilities >= 1.0
        if (grown == saturated).all():
            return probabilities
        saturated = grown


def sparsify_with_uniforms(
    gradient: npt.ArrayLike, probabilities: npt.ArrayLike, uniforms: npt.ArrayLike
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Keep ``alpha_j / p_j`` where ``uniforms[j] < p_j``; return ``(indices, values)``.

    ``uniforms`` are floats in ``[0, 1)`` or uint32 integers ``r`` (``u = r / 2**32``).
    """
    alpha = np.asarray(gradient, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    u = np.asarray(uniforms)
    if not alpha.shape == p.shape == u.shape:
        raise ValueError("gradient, probabilities and uniforms must have the same shape")
    threshold = p * _UNIFORM_SCALE if u.dtype == np.uint32 else p
    indices = np.flatnonzero(u < threshold)
    with np.errstate(over="ignore"):
        return indices, alpha[indices] / p[indices]


def sparsify(
    gradient: npt.ArrayLike, budget: float, rng: np.random.Generator, *, exact: bool = False
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The unbiased sparsifier S(alpha): return the kept ``(indices, alpha_j / p_j)``.

    Keeps coordinate j with probability p_j rounded up to a multiple of 2**-32, as
    :func:`sparsify_with_uniforms` does with 32-bit uniforms, without forming every
    p_j: see :func:`_keep_blocks`.  The exact-budget variant draws one 32-bit
    uniform per coordinate and goes through :func:`keep_probabilities`.
    """
    alpha = real_input(gradient, rng, "gradient")
    if not np.issubdtype(alpha.dtype, np.floating):
        alpha = alpha.astype(np.float64)
    if exact:
        alpha = alpha.astype(np.float64, copy=False)
        probabilities = keep_probabilities(alpha, budget, exact=True)
        return sparsify_with_uniforms(alpha, probabilities, _uniforms(rng, alpha))
    if alpha.ndim != 1 or alpha.shape[0] == 0:
        raise ValueError("gradient must be a non-empty one-dimensional array")
    if not 0 < budget < float("inf"):
        raise ValueError(f"the budget phi must be positive and finite, got {budget!r}")
    total = _one_norm(alpha)
    if total == 0.0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    factor = budget / total * _HALF_SCALE if math.isfinite(total) else math.inf
    if not (math.isfinite(factor) and math.isfinite(budget * _HALF_SCALE)):
        # NaN or infinity (refused by check_finite), or a 1-norm beyond the input's range: the scaled path.
        alpha = alpha.astype(np.float64, copy=False)
        return sparsify_with_uniforms(alpha, keep_probabilities(alpha, budget), _uniforms(rng, alpha))
    return _keep_blocks(alpha, factor, budget, rng)


def _uniforms(rng: np.random.Generator, alpha: npt.NDArray[Any]) -> npt.NDArray[np.uint32]:
    """One 32-bit uniform integer per coordinate, two per raw word."""
    words = rng.bit_generator.random_raw((alpha.shape[0] + 1) // 2)
    return np.asarray(words, dtype=np.uint64).view(np.uint32)[: alpha.shape[0]]


#: Coordinates per block of :func:`_one_norm` and :func:`_keep_blocks` (a multiple of 4).
#: 2**18 against 2**16 on the project's Zen 4 VM: 2.37 against 2.57 ms for the sparse encode at
#: 10**6 (docs/benchmarks.md); the keep test's fixed cost per block is about fifteen numpy calls.
_BLOCK = 1 << 18
#: 2**16: the keep test compares 16-bit halves of a 32-bit uniform.
_HALF_SCALE = float(1 << 16)
#: Thresholds, and their factor, below this are computed in float32 for float32 input.
_LARGEST_THRESHOLD = float(2.0**120)


def _one_norm(alpha: npt.NDArray[Any]) -> float:
    """``||alpha||_1`` block by block, so the absolute values never leave the cache.

    The sum may be rounded in the input's precision: that only scales every p_j by
    the same factor (the budget moves by a relative 1e-6 at most), while the keep
    test and the rescaling use the same p_j, so S stays unbiased.  A rounded sum of
    non-negative values is still at least each of them, so ``p_j <= phi``.
    """
    magnitude = np.empty(min(_BLOCK, alpha.shape[0]), dtype=alpha.dtype)
    total = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, alpha.shape[0], _BLOCK):
            block = magnitude[: min(_BLOCK, alpha.shape[0] - start)]
            np.abs(alpha[start : start + _BLOCK], out=block)
            total += float(block.sum())
    return total


def _keep_blocks(
    alpha: npt.NDArray[Any], factor: float, budget: float, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Keep j when ``R_j < t_j * 2**16`` for a 32-bit uniform ``R_j = 2**16 r_j + s_j``.

    ``t_j = |alpha_j| * factor`` with ``factor = phi * 2**16 / ||alpha||_1``, so
    ``p_j = min(t_j / 2**16, 1)``.  Only the high half ``r_j`` is drawn for every
    coordinate (four per raw word): ``r_j + 1 <= t_j`` keeps j and ``r_j >= t_j``
    drops it whatever ``s_j`` is.  The low half is drawn only where ``r_j`` is the
    integer part of ``t_j`` (probability 2**-16), after all the high halves, so
    P(keep j) is exactly that of a whole 32-bit uniform: ``ceil(p_j 2**32) / 2**32``.
    That halves the random words and the passes work on one cached block at a time.
    ``t_j`` is computed in float32 for float32 input, and the kept value divides by
    the same ``t_j / 2**16``.
    """
    count = alpha.shape[0]
    # Every t_j is at most phi * 2**16 (see :func:`_one_norm`).
    narrow = alpha.dtype == np.float32 and max(factor, budget * _HALF_SCALE) < _LARGEST_THRESHOLD
    float_type: type[np.floating[Any]] = np.float32 if narrow else np.float64
    threshold_block = np.empty(min(_BLOCK, count), dtype=float_type)
    # Padded with False to whole 64-bit words for _sparse_flatnonzero.
    mask_block = np.zeros(-(-min(_BLOCK, count) // 8) * 8, dtype=np.bool_)
    scale = float_type(factor)
    bit_generator = rng.bit_generator
    candidates, thresholds, highs, values = [], [], [], []
    for start in range(0, count, _BLOCK):
        stop = min(start + _BLOCK, count)
        threshold = threshold_block[: stop - start]
        high = _raw_halves(bit_generator, stop - start)
        block = alpha[start:stop]
        np.abs(block, out=threshold, dtype=float_type)
        threshold *= scale
        mask_block[stop - start :] = False
        np.less(high, threshold, out=mask_block[: stop - start])
        candidate = _sparse_flatnonzero(mask_block)
        candidates.append(candidate + start)
        thresholds.append(threshold[candidate])
        highs.append(high[candidate])
        # The candidates' values too, while the block is in the cache (a gather after the
        # blocks reads them back from main memory).
        values.append(block[candidate])
    indices = np.concatenate(candidates)
    t = np.concatenate(thresholds)
    r = np.concatenate(highs)
    kept = np.concatenate(values)
    # r + 1 <= 65,536 and t are exact in t's own type (float32 or float64): the comparison is exact.
    undecided = np.flatnonzero(np.greater(r + t.dtype.type(1.0), t))
    if undecided.shape[0]:
        low = _raw_halves(bit_generator, undecided.shape[0])
        keep = np.ones(indices.shape[0], dtype=np.bool_)
        t_undecided = t[undecided].astype(np.float64)
        keep[undecided] = low < (t_undecided - r[undecided]) * _HALF_SCALE
        indices, t, kept = indices[keep], t[keep], kept[keep]
    # p = min(t / 2**16, 1) in float64 (exact), and the kept values alpha_j / p in float64.
    p = t.astype(np.float64)
    p *= 1.0 / _HALF_SCALE
    np.minimum(p, 1.0, out=p)
    kept = kept.astype(np.float64)
    kept /= p
    return indices, kept


def _sparse_flatnonzero(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.intp]:
    """``np.flatnonzero(mask)`` for a mask of whole 64-bit words with few True values.

    Below about 10 % True, numpy finds each True with a ``memchr`` call of its own;
    at the sparsifier's typical density of a few percent that costs more per True
    than its branch-free loop costs per element.  Here the words that hold a True
    are found first (a third of them, dense enough for the branch-free loop), then
    the True bytes within those words.
    """
    words = mask.view(np.uint64)
    busy = np.flatnonzero(words != 0)
    within = np.flatnonzero(words[busy].view(np.bool_))
    positions: npt.NDArray[np.intp] = busy[within >> 3] * 8 + (within & 7)
    return positions


def _raw_halves(bit_generator: np.random.BitGenerator, count: int) -> npt.NDArray[np.uint16]:
    """``count`` 16-bit uniforms from the next ``ceil(count / 4)`` raw words."""
    words = bit_generator.random_raw((count + 3) // 4)
    return np.asarray(words, dtype=np.uint64).view(np.uint16)[:count]


def quantize_sparse(
    gradient: npt.ArrayLike,
    budget: float,
    bits: int,
    rng: np.random.Generator,
    *,
    exact: bool = False,
) -> SparseQuantized | ZeroVector:
    """Sparsify with budget ``phi``, then quantize the kept values (algorithms.md 6).

    ``delta = max|kept| / (2**(b-1) - 1)``.  Kept values that round to code 0 are
    dropped from the index set (they are zeros).  If nothing is left, the
    result is a :class:`ZeroVector`.

    Raises:
        NonFiniteError: if alpha holds NaN or infinities.
        ValueError: on a bad budget or bit width.
    """
    check_bits(bits, 2)
    alpha = np.asarray(gradient)
    if not np.issubdtype(alpha.dtype, np.floating):
        alpha = alpha.astype(np.float64)
    indices, kept = sparsify(alpha, budget, rng, exact=exact)
    if indices.shape[0] == 0:
        return ZeroVector(alpha.shape[0])
    largest = float(np.abs(kept).max())
    if not largest < float(np.finfo(np.float32).max):
        raise ValueError("the rescaled kept values exceed the float32 range of the scale")
    delta, codes = _quantize_to_range(kept, largest, bits, rng, bounded=True)
    nonzero = codes != 0
    if not nonzero.all():  # else no copy: often every kept value keeps a nonzero code
        if not nonzero.any():
            return ZeroVector(alpha.shape[0])
        indices, codes = indices[nonzero], codes[nonzero]
    # Increasing indices and nonzero codes by construction: no validation pass.
    return SparseQuantized._trusted(alpha.shape[0], bits, delta, indices, codes)
