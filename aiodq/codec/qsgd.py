"""The QSGD quantizer of the QSVRG baseline (docs/algorithms.md 8; Alistarh et al. 2017).

``Q_s(v_i) = ||v||_2 * sgn(v_i) * xi_i`` with ``xi_i = l / s`` or ``(l + 1) / s``,
rounded stochastically so that ``E[xi_i] = |v_i| / ||v||_2``: unbiased, with
``E||Q_s(v) - v||**2 <= min(d / s**2, sqrt(d) / s) ||v||**2``.  The levels are
written in Elias gamma code by the wire codec (wire-format.md 5.7).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from .lowp import check_finite, draw_dither, float32_at_least, floor_with_dither, real_input
from .vectors import MAX_QSGD_LEVELS, QSGDVector, ZeroVector

__all__ = ["quantize_qsgd", "quantize_qsgd_with_dither"]


def quantize_qsgd_with_dither(
    vector: npt.ArrayLike, s: int, dither: npt.ArrayLike
) -> QSGDVector | ZeroVector:
    """QSGD with an explicit dither (floats in ``[0, 1)`` or uint16 ``r``, ``u = r / 2**16``).

    The norm is rounded up to a float32, so every level stays within ``[0, s]``.

    Raises:
        NonFiniteError: if the vector holds NaN or infinities.
        ValueError: if ``s`` is out of range or the dither has the wrong shape.
    """
    v = np.asarray(vector, dtype=np.float64)
    check_finite(v, "gradient")
    if not 1 <= s <= MAX_QSGD_LEVELS:
        raise ValueError(f"s must be between 1 and {MAX_QSGD_LEVELS}, got {s}")
    u = np.asarray(dither)
    if u.shape != v.shape:
        raise ValueError("dither must have one entry per value")
    largest = float(np.abs(v).max())
    # Scale by the largest entry first, so the norm of huge values does not overflow.
    norm = largest * float(np.linalg.norm(v / largest)) if largest > 0 else 0.0
    if norm == 0.0:
        return ZeroVector(v.shape[0])
    norm32 = float32_at_least(norm)
    if not math.isfinite(norm32) or norm32 > float(np.finfo(np.float32).max):
        raise ValueError("the 2-norm exceeds the float32 range")
    levels = floor_with_dither(np.abs(v), s / norm32, u, 0, s)
    if not levels.any():
        return ZeroVector(v.shape[0])
    signed = np.where(v < 0, -levels, levels)
    return QSGDVector(s, norm32, signed)


def quantize_qsgd(vector: npt.ArrayLike, s: int, rng: np.random.Generator) -> QSGDVector | ZeroVector:
    """QSGD with ``s`` levels, the dither drawn from ``rng``."""
    v = np.asarray(real_input(vector, rng, "vector"), dtype=np.float64)
    return quantize_qsgd_with_dither(v, s, draw_dither(rng, v.shape[0] if v.ndim else 1))
