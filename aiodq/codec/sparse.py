"""The unbiased sparsifier of Sparse-AsyLPG (docs/algorithms.md 6; Wangni et al. 2018).

Coordinate j is kept with probability ``p_j = min(phi |alpha_j| / ||alpha||_1, 1)``
and rescaled to ``alpha_j / p_j``, so the result is unbiased with at most
``phi`` nonzeros in expectation.  The exact-budget variant recalibrates the
probabilities so that they sum to ``phi`` exactly (Wangni et al., Algorithm 3).
The kept values are then quantized with the infinity-norm grid of section 3.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .lowp import check_finite, quantize_to_range
from .vectors import SparseQuantized, ZeroVector

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

    The same draw as :func:`keep_probabilities` then :func:`sparsify_with_uniforms`
    with 32-bit uniforms, but without forming every p_j: coordinate j is kept
    when ``r_j < |alpha_j| * phi / ||alpha||_1 * 2**32`` (always when p_j = 1),
    and p_j is computed for the kept coordinates only.
    """
    alpha = np.asarray(gradient)
    if not np.issubdtype(alpha.dtype, np.floating):
        alpha = alpha.astype(np.float64)
    words = rng.bit_generator.random_raw((alpha.shape[0] + 1) // 2)
    uniforms = np.asarray(words, dtype=np.uint64).view(np.uint32)[: alpha.shape[0]]
    if exact:
        alpha = alpha.astype(np.float64, copy=False)
        return sparsify_with_uniforms(alpha, keep_probabilities(alpha, budget, exact=True), uniforms)
    if alpha.ndim != 1 or alpha.shape[0] == 0:
        raise ValueError("gradient must be a non-empty one-dimensional array")
    if not 0 < budget < float("inf"):
        raise ValueError(f"the budget phi must be positive and finite, got {budget!r}")
    magnitude = np.abs(alpha)
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(magnitude.sum(dtype=np.float64))
    if not math.isfinite(total):
        # NaN or infinity (refused by check_finite), or a 1-norm beyond float64: the scaled path.
        alpha = alpha.astype(np.float64, copy=False)
        return sparsify_with_uniforms(alpha, keep_probabilities(alpha, budget), uniforms)
    if total == 0.0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    factor = budget / total
    threshold = np.multiply(magnitude, factor * _UNIFORM_SCALE, dtype=np.float64)
    indices = np.flatnonzero(uniforms < threshold)
    p = np.minimum(magnitude[indices] * factor, 1.0)
    return indices, alpha[indices].astype(np.float64) / p


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
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be between 2 and 16, got {bits}")
    alpha = np.asarray(gradient, dtype=np.float64)
    indices, kept = sparsify(alpha, budget, rng, exact=exact)
    if indices.shape[0] == 0:
        return ZeroVector(alpha.shape[0])
    largest = float(np.abs(kept).max())
    if not largest < float(np.finfo(np.float32).max):
        raise ValueError("the rescaled kept values exceed the float32 range of the scale")
    delta, codes = quantize_to_range(kept, largest, bits, rng)
    nonzero = codes != 0
    if not nonzero.any():
        return ZeroVector(alpha.shape[0])
    return SparseQuantized(alpha.shape[0], bits, delta, indices[nonzero], codes[nonzero])
