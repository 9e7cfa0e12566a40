r"""Statistical checks of the quantizers: unbiasedness and variance bounds (algorithms.md 2, 3, 4, 6, 8).

Derivation of the tolerances
============================

Each check draws ``N = 10**4`` independent quantizations of a small fixed vector
(fixed seeds, so the suite is deterministic) and compares a sample mean with its
expectation.

Unbiasedness (two-sided, per coordinate).  For coordinate j the draws
``X_1..X_N`` are i.i.d. with mean ``mu_j`` and standard deviation
``sigma_j``; by the central limit theorem the sample mean is approximately
``Normal(mu_j, sigma_j**2 / N)``.  We never use the sample variance: ``sigma_j``
is an analytic upper bound,

* Q_(delta, b) (and everything built on it): the code is ``floor(y)`` or
  ``floor(y) + 1`` (``y = v / delta``, ``f = y - floor(y)``) with
  probability ``p`` of rounding up; ``Var = delta**2 p (1 - p)``.  With the
  16-bit dither ``|p - f| <= eps = 2**-15`` (lowp.py docstring), so
  ``p (1 - p) <= f (1 - f) + eps`` and
  ``sigma_j = delta sqrt(f_j (1 - f_j) + eps)`` (at most ``delta / 2``).
* The sparsifier keeps ``alpha_j / p_j`` with probability ``p'_j`` (the
  32-bit uniform makes ``p'_j = ceil(p_j 2**32) / 2**32``, sparse.py), so
  ``sigma_j**2 = (alpha_j / p_j)**2 p'_j (1 - p'_j)`` exactly.
* Sparsify-then-quantize: ``Var = Var(E[Y|S]) + E[Var(Y|S)]`` gives
  ``sigma_j <= sd(S_j) + eps delta_max + delta_max sqrt(p'_j / 4)``, where
  ``delta_max`` is the largest scale any draw can choose.
* QSGD: as for Q with ``delta = ||v||_2 / s`` (the float32 norm).

The mean may also be off by a documented, deterministic bias, added to the
tolerance explicitly: ``eps delta = 2**-15 delta`` for the 16-bit dither, and
``|alpha_j| (p'_j - p_j) / p_j`` for the 32-bit keep test.  The check is

    |mean_j - E_ideal[X_j]| <= z sigma_j / sqrt(N) + bias_j.

Variance bounds (one-sided, one number per check).  The per-draw squared error
``E_i = ||Q(v) - v||**2`` is a sum of independent coordinates.  For Q the
coordinate error squared takes the two values ``f**2 delta**2`` and
``(1 - f)**2 delta**2``, so ``Var = p (1 - p) (1 - 2 f)**2 delta**4 <=
(1/16 + eps) delta**4`` (maximise ``g (1 - 4 g)`` over ``g = f (1 - f)``), and
``sd(E_i) <= sqrt(d (1/16 + eps)) delta**2``.  For the sparsifier the two
values are ``alpha**2 (1 - p)**2 / p**2`` and ``alpha**2`` and the variance is
computed exactly.  The dither also moves ``E[E_i]`` by at most
``eps delta**2`` per coordinate, which is added to the bound.  The check is

    mean(E_i) <= bound + slack + z sd / sqrt(N).

Family-wise error.  The threshold ``z`` is the same for every check:
Bonferroni over all ``M`` checks of this module (every coordinate of every
unbiasedness check plus every one-sided check, counted from the case tables
below), with a family-wise false-alarm rate ``1e-6``:
``z = Phi^-1(1 - 1e-6 / (2 M))`` (two-sided; one-sided checks are then
conservative).  With ``M`` = 388 checks, ``z`` is about 5.96.  The sigma used are
upper bounds, so the true false-alarm rate is lower still.  (At ``z = 6`` the
normal approximation of a tail is itself an approximation; the bounded
summands and the slack in sigma make it a conservative one here.)

The checks are not vacuous: the last tests run the same checker on
deliberately biased quantizers (round to nearest, QSGD with its rounding
inverted, a sparsifier that forgets to rescale) and require it to fail.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from statistics import NormalDist

import numpy as np
import pytest

from aiodq.codec.lowp import quantize, quantize_gradient, quantize_model, quantize_with_dither
from aiodq.codec.qsgd import quantize_qsgd
from aiodq.codec.sparse import keep_probabilities, quantize_sparse, sparsify
from aiodq.codec.vectors import (
    DenseQuantized,
    EqualsSnapshot,
    QSGDVector,
    SparseQuantized,
    ZeroVector,
)

#: Independent draws per quantizer.
N = 10_000
#: Bias bound of the 16-bit dither, in units of delta (lowp.py docstring).
EPS = 2.0**-15
#: The keep test compares 32-bit uniforms: P(keep) = ceil(p 2**32) / 2**32 (sparse.py).
KEEP_SCALE = 2.0**32
#: Family-wise false-alarm rate over every check in this module.
FAMILY_ALPHA = 1e-6


def top_code(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def f32_up(value: float) -> float:
    f = np.float32(value)
    if float(f) < value:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def fractional(y: np.ndarray) -> np.ndarray:
    return y - np.floor(y)


# -- the fixed vectors --------------------------------------------------------

_rng = np.random.default_rng(20240601)
#: Values for Q with a fixed delta (in units of delta: y = v / delta), per bit width.
Q_Y = {
    2: np.array(
        [-2.0, -1.9, -1.5, -1.25, -1.0, -0.7, -0.5, -0.3, -0.01, 0.0, 0.01, 0.2, 0.5, 0.75, 0.99, 1.0]
    ),
    8: _rng.uniform(-128.0, 127.0, size=16),
    12: _rng.uniform(-2048.0, 2047.0, size=16),
    16: _rng.uniform(-32768.0, 32767.0, size=16),
}
Q_DELTA = 0.0371  # not a float32 or a power of two: float rounding of v / delta is exercised
GRADIENT = np.concatenate([_rng.normal(size=22), [2.5, -2.5]])  # 24 coordinates, largest on both signs
GRADIENT_NEG = np.concatenate([_rng.normal(size=15), [-3.0]])  # largest coordinate negative
MODEL_SNAP = _rng.normal(size=16)
MODEL_DENSE = MODEL_SNAP + 0.1 * _rng.normal(size=16)
MODEL_SPARSE = MODEL_SNAP.copy()
MODEL_SPARSE[5] += 0.3  # x differs from x_snap in one coordinate
SPARSE_ALPHA = np.array(
    [4.0, -0.5, 0.25, 0.0, 1.0, -1.5, 0.125, 0.75, -0.0625, 2.0, 0.0, -0.3, 0.9, 0.05, -2.2, 0.6]
)
SPARSE_BUDGET = 4.0
QSGD_V = _rng.normal(size=32)


# -- the Bonferroni family ------------------------------------------------------

GRADIENT_CASES = [(3, GRADIENT), (8, GRADIENT), (12, GRADIENT), (8, GRADIENT_NEG)]
Q_CASES = [(bits, "uint16") for bits in sorted(Q_Y)] + [(8, "float")]
MODEL_CASES = [(centre, mu) for centre in ("snapshot", "zero") for mu in (0.05, 0.5, 2.0)]
MODEL_VECTORS = {"dense": MODEL_DENSE, "one-coordinate": MODEL_SPARSE}
QSGD_LEVELS = [1, 2, 16]

UNBIASED_COORDINATES = (
    sum(Q_Y[bits].shape[0] for bits, _ in Q_CASES)
    + sum(alpha.shape[0] for _, alpha in GRADIENT_CASES)
    + 2 * MODEL_DENSE.shape[0]  # model, both centres, mu = 0.5, dense difference
    + 2 * SPARSE_ALPHA.shape[0]  # sparsify, exact False / True
    + 2 * SPARSE_ALPHA.shape[0]  # quantize_sparse, exact False / True
    + len(QSGD_LEVELS) * QSGD_V.shape[0]
)
ONE_SIDED_CHECKS = (
    len(Q_CASES)  # E||Q(v) - v||^2 bound
    + len(GRADIENT_CASES)  # Delta bound
    + len(MODEL_CASES) * len(MODEL_VECTORS)  # mu-constraint
    + 2 * 2  # sparsifier: E[nnz] and E||S - a||^2, exact False / True
    + len(QSGD_LEVELS)  # QSGD variance bound
)
FAMILY_SIZE = UNBIASED_COORDINATES + ONE_SIDED_CHECKS
Z = NormalDist().inv_cdf(1.0 - FAMILY_ALPHA / (2 * FAMILY_SIZE))


# -- the checkers ------------------------------------------------------------


@dataclass
class Verdict:
    """The outcome of one check: which coordinates fell outside their tolerance."""

    failing: list[int]
    report: str

    @property
    def ok(self) -> bool:
        return not self.failing


def check_unbiased(
    samples: np.ndarray, expected: np.ndarray, sigma: np.ndarray, bias: np.ndarray | float
) -> Verdict:
    """Two-sided per-coordinate CLT check: |mean - expected| <= Z sigma / sqrt(N) + bias."""
    n = samples.shape[0]
    assert n >= 10_000
    mean = samples.mean(axis=0)
    tolerance = Z * np.asarray(sigma) / math.sqrt(n) + np.asarray(bias)
    excess = np.abs(mean - expected) - tolerance
    failing = [int(j) for j in np.flatnonzero(excess > 0)]
    tolerance = np.broadcast_to(tolerance, mean.shape)
    lines = [
        f"coord {j}: mean {mean[j]:.6g} expected {expected[j]:.6g} tolerance {tolerance[j]:.3g}"
        for j in failing[:8]
    ]
    return Verdict(failing, "\n".join(lines))


def check_mean_below(values: np.ndarray, bound: float, sd: float) -> Verdict:
    """One-sided CLT check: mean(values) <= bound + Z sd / sqrt(N) (bound includes any slack)."""
    n = values.shape[0]
    assert n >= 10_000
    mean = float(values.mean())
    limit = bound + Z * sd / math.sqrt(n)
    report = f"mean {mean:.6g} vs bound {bound:.6g} (+ margin {limit - bound:.3g}); ratio {mean / bound:.4f}"
    return Verdict([] if mean <= limit else [0], report)


def q_sigma(y: np.ndarray, delta: float) -> np.ndarray:
    """Analytic sd of Q's value for y = v / delta: delta sqrt(f (1 - f) + eps)."""
    f = fractional(y)
    return delta * np.sqrt(f * (1 - f) + EPS)


def q_error_sd(d: int, delta: float) -> float:
    """Upper bound on sd(||Q(v) - v||^2): sqrt(d (1/16 + eps)) delta^2."""
    return math.sqrt(d * (1.0 / 16 + EPS)) * delta**2


def stack(draw: Callable[[np.random.Generator], np.ndarray], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([draw(rng) for _ in range(N)])


# -- draws, shared by the unbiasedness and the variance checks ------------------


@cache
def q_draws(bits: int, dither: str) -> np.ndarray:
    """N draws of Q_(delta, b)(v) as values (codes * delta)."""
    values = Q_Y[bits] * Q_DELTA
    if dither == "uint16":
        return stack(lambda rng: quantize(values, Q_DELTA, bits, rng) * Q_DELTA, seed=bits)
    return stack(
        lambda rng: quantize_with_dither(values, Q_DELTA, bits, rng.random(values.shape[0])) * Q_DELTA,
        seed=100 + bits,
    )


@cache
def gradient_draws(case: int) -> tuple[np.ndarray, float]:
    bits, alpha = GRADIENT_CASES[case]
    scales = set()

    def draw(rng: np.random.Generator) -> np.ndarray:
        q = quantize_gradient(alpha, bits, rng)
        assert isinstance(q, DenseQuantized)
        scales.add(q.scale)
        return q.to_dense()

    samples = stack(draw, seed=200 + case)
    assert len(scales) == 1, "the gradient scale depends only on alpha"
    return samples, scales.pop()


@cache
def model_draws(centre: str, mu: float, which: str) -> tuple[np.ndarray, float]:
    """N reconstructions of x from quantize_model, and the (common) grid step."""
    x, x_snap = MODEL_VECTORS[which], MODEL_SNAP
    scales = set()

    def draw(rng: np.random.Generator) -> np.ndarray:
        payload = quantize_model(x, x_snap, mu, rng, centre=centre)
        vector = payload.vector
        if isinstance(vector, EqualsSnapshot):
            return x_snap.copy()
        if isinstance(vector, ZeroVector):
            return np.zeros_like(x)
        assert isinstance(vector, DenseQuantized), f"unexpected {type(vector).__name__}"
        scales.add(vector.scale)
        dense = vector.to_dense()
        return x_snap + dense if payload.relative else dense

    samples = stack(draw, seed=300 + int(mu * 100) + (7 if centre == "zero" else 0) + len(which))
    assert len(scales) == 1, "the model grid step depends only on x and x_snap"
    return samples, scales.pop()


def keep_stats(alpha: np.ndarray, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    """(p, p'): the intended keep probabilities and the actual ones of the 32-bit keep test."""
    p = keep_probabilities(alpha, SPARSE_BUDGET, exact=exact)
    p_actual = np.ceil(p * KEEP_SCALE) / KEEP_SCALE
    return p, p_actual


def sparsify_sd_and_bias(alpha: np.ndarray, exact: bool) -> tuple[np.ndarray, np.ndarray]:
    p, p_actual = keep_stats(alpha, exact)
    with np.errstate(divide="ignore", invalid="ignore"):
        kept = np.where(p > 0, alpha / np.where(p > 0, p, 1.0), 0.0)
    sd = np.abs(kept) * np.sqrt(p_actual * (1 - p_actual))
    bias = np.abs(kept) * (p_actual - p)
    return sd, bias


@cache
def sparsify_draws(exact: bool) -> np.ndarray:
    d = SPARSE_ALPHA.shape[0]

    def draw(rng: np.random.Generator) -> np.ndarray:
        out = np.zeros(d)
        indices, values = sparsify(SPARSE_ALPHA, SPARSE_BUDGET, rng, exact=exact)
        out[indices] = values
        return out

    return stack(draw, seed=400 + exact)


@cache
def quantize_sparse_draws(exact: bool) -> np.ndarray:
    def draw(rng: np.random.Generator) -> np.ndarray:
        q = quantize_sparse(SPARSE_ALPHA, SPARSE_BUDGET, 8, rng, exact=exact)
        assert isinstance(q, SparseQuantized | ZeroVector)
        return q.to_dense()

    return stack(draw, seed=500 + exact)


@cache
def qsgd_draws(s: int) -> tuple[np.ndarray, float]:
    norms = set()

    def draw(rng: np.random.Generator) -> np.ndarray:
        q = quantize_qsgd(QSGD_V, s, rng)
        if isinstance(q, ZeroVector):  # every level rounded to 0: the canonical zero
            return q.to_dense()
        assert isinstance(q, QSGDVector)
        norms.add(q.norm)
        return q.to_dense()

    samples = stack(draw, seed=600 + s)
    assert len(norms) == 1
    return samples, norms.pop()


# -- unbiasedness ---------------------------------------------------------------


def test_family_size_and_threshold() -> None:
    """Bonferroni (module docstring): z = Phi^-1(1 - 1e-6 / (2 M)) over every check in this module."""
    assert 300 <= FAMILY_SIZE <= 500
    assert 5.8 < Z < 6.3


@pytest.mark.parametrize(("bits", "dither"), Q_CASES)
def test_q_unbiased(bits: int, dither: str) -> None:
    """algorithms.md 2: E[Q_(delta,b)(v)] = v inside the range, up to the 2**-15 delta dither bias."""
    samples = q_draws(bits, dither)
    y = Q_Y[bits]
    bias = EPS * Q_DELTA if dither == "uint16" else 1e-12 * Q_DELTA * (np.abs(y) + 1)
    verdict = check_unbiased(samples, y * Q_DELTA, q_sigma(y, Q_DELTA), bias)
    assert verdict.ok, verdict.report


@pytest.mark.parametrize("case", range(len(GRADIENT_CASES)))
def test_gradient_unbiased(case: int) -> None:
    """algorithms.md 3: E[Q(alpha)] = alpha for the infinity-norm grid (nothing clipped)."""
    bits, alpha = GRADIENT_CASES[case]
    samples, delta = gradient_draws(case)
    assert delta >= float(np.abs(alpha).max()) / top_code(bits)
    verdict = check_unbiased(samples, alpha, q_sigma(alpha / delta, delta), EPS * delta)
    assert verdict.ok, verdict.report


@pytest.mark.parametrize("centre", ["snapshot", "zero"])
def test_model_unbiased(centre: str) -> None:
    """algorithms.md 4: the rebuilt model x_snap + Q(x - x_snap) (or Q(x)) has mean x."""
    samples, delta = model_draws(centre, 0.5, "dense")
    x = MODEL_DENSE
    target = x - MODEL_SNAP if centre == "snapshot" else x
    verdict = check_unbiased(samples, x, q_sigma(target / delta, delta), EPS * delta)
    assert verdict.ok, verdict.report


@pytest.mark.parametrize("exact", [False, True], ids=["plain", "exact-budget"])
def test_sparsify_unbiased(exact: bool) -> None:
    """algorithms.md 6: E[S(alpha)] = alpha (keep alpha_j / p_j with probability p_j)."""
    sd, bias = sparsify_sd_and_bias(SPARSE_ALPHA, exact)
    verdict = check_unbiased(sparsify_draws(exact), SPARSE_ALPHA, sd, bias)
    assert verdict.ok, verdict.report


@pytest.mark.parametrize("exact", [False, True], ids=["plain", "exact-budget"])
def test_quantize_sparse_unbiased(exact: bool) -> None:
    """algorithms.md 6: sparsify-then-quantize is unbiased: E[Q(S(alpha))] = alpha."""
    alpha = SPARSE_ALPHA
    sd_s, bias_s = sparsify_sd_and_bias(alpha, exact)
    p, p_actual = keep_stats(alpha, exact)
    largest_kept = max(abs(a) / q for a, q in zip(alpha, p, strict=True) if q > 0)
    delta_max = f32_up(largest_kept / top_code(8))
    sigma = sd_s + EPS * delta_max + delta_max * np.sqrt(p_actual / 4)
    bias = bias_s + EPS * delta_max * p_actual
    verdict = check_unbiased(quantize_sparse_draws(exact), alpha, sigma, bias)
    assert verdict.ok, verdict.report


@pytest.mark.parametrize("s", QSGD_LEVELS)
def test_qsgd_unbiased(s: int) -> None:
    """algorithms.md 8: E[Q_s(v)] = v (xi_i = l/s or (l+1)/s with the right probabilities)."""
    samples, norm = qsgd_draws(s)
    step = norm / s
    verdict = check_unbiased(samples, QSGD_V, q_sigma(np.abs(QSGD_V) / step, step), EPS * step)
    assert verdict.ok, verdict.report


# -- variance bounds ------------------------------------------------------------


@pytest.mark.parametrize(("bits", "dither"), Q_CASES)
def test_q_error_bound(bits: int, dither: str) -> None:
    """algorithms.md 2: E||Q(v) - v||^2 <= min(d delta^2 / 4, delta ||v||_1) (+ d 2**-15 delta^2)."""
    v = Q_Y[bits] * Q_DELTA
    d = v.shape[0]
    errors = ((q_draws(bits, dither) - v) ** 2).sum(axis=1)
    bound = min(d * Q_DELTA**2 / 4, Q_DELTA * float(np.abs(v).sum()))
    verdict = check_mean_below(errors, bound + d * EPS * Q_DELTA**2, q_error_sd(d, Q_DELTA))
    assert verdict.ok, verdict.report


@pytest.mark.parametrize("case", range(len(GRADIENT_CASES)))
def test_gradient_delta_bound(case: int) -> None:
    """algorithms.md 3: E||Q(alpha) - alpha||^2 <= Delta ||alpha||^2, Delta = min(d/(4 t^2), sqrt(d)/t)."""
    bits, alpha = GRADIENT_CASES[case]
    samples, delta = gradient_draws(case)
    d, top = alpha.shape[0], top_code(bits)
    big_delta = min(d / (4 * top**2), math.sqrt(d) / top)
    # delta is ||alpha||_inf / t rounded up to a float32: the bound scales with (delta t / ||alpha||_inf)^2.
    rounding = (delta * top / float(np.abs(alpha).max())) ** 2
    bound = big_delta * float(alpha @ alpha) * rounding + d * EPS * delta**2
    errors = ((samples - alpha) ** 2).sum(axis=1)
    verdict = check_mean_below(errors, bound, q_error_sd(d, delta))
    assert verdict.ok, verdict.report


@pytest.mark.parametrize("which", sorted(MODEL_VECTORS))
@pytest.mark.parametrize(("centre", "mu"), MODEL_CASES)
def test_model_mu_constraint(centre: str, mu: float, which: str) -> None:
    """algorithms.md 4: E||Q(x) - x||^2 <= mu ||x - x_snap||^2, for mu in {0.05, 0.5, 2} and both centres."""
    x = MODEL_VECTORS[which]
    samples, delta = model_draws(centre, mu, which)
    d = x.shape[0]
    bound = mu * float(np.sum((x - MODEL_SNAP) ** 2)) + d * EPS * delta**2
    errors = ((samples - x) ** 2).sum(axis=1)
    verdict = check_mean_below(errors, bound, q_error_sd(d, delta))
    assert verdict.ok, verdict.report


@pytest.mark.parametrize("exact", [False, True], ids=["plain", "exact-budget"])
def test_sparsify_budget_and_error(exact: bool) -> None:
    """algorithms.md 6: E[nnz] <= phi and E||S(alpha) - alpha||^2 <= ||alpha||_1^2 / phi."""
    alpha = SPARSE_ALPHA
    samples = sparsify_draws(exact)
    p, p_actual = keep_stats(alpha, exact)
    nnz = (samples != 0).sum(axis=1).astype(np.float64)
    nnz_sd = math.sqrt(float(np.sum(p_actual * (1 - p_actual))))
    nnz_slack = float(np.sum(p_actual - p))  # the 32-bit keep test rounds p up
    verdict = check_mean_below(nnz, SPARSE_BUDGET + nnz_slack, nnz_sd)
    assert verdict.ok, "nnz: " + verdict.report

    live = p > 0
    a, q, qa = alpha[live], p[live], p_actual[live]
    kept_error2 = a**2 * (1 - q) ** 2 / q**2  # (alpha/p - alpha)^2, with probability p'
    dropped_error2 = a**2  # alpha^2, with probability 1 - p'
    error_sd = math.sqrt(float(np.sum(qa * (1 - qa) * (kept_error2 - dropped_error2) ** 2)))
    # E err with p' in place of p exceeds the p-version by at most (p' - p) kept_error2.
    error_slack = float(np.sum((qa - q) * kept_error2))
    bound = float(np.abs(alpha).sum()) ** 2 / SPARSE_BUDGET
    errors = ((samples - alpha) ** 2).sum(axis=1)
    verdict = check_mean_below(errors, bound + error_slack, error_sd)
    assert verdict.ok, "error: " + verdict.report


@pytest.mark.parametrize("s", QSGD_LEVELS)
def test_qsgd_error_bound(s: int) -> None:
    """algorithms.md 8: E||Q_s(v) - v||^2 <= min(d/s^2, sqrt(d)/s) ||v||^2 (norm rounded up to float32)."""
    samples, norm = qsgd_draws(s)
    v = QSGD_V
    d = v.shape[0]
    exact_norm = float(np.linalg.norm(v))
    step = norm / s
    bound = min(d / s**2, math.sqrt(d) / s) * exact_norm**2 * (norm / exact_norm) ** 2 + d * EPS * step**2
    errors = ((samples - v) ** 2).sum(axis=1)
    verdict = check_mean_below(errors, bound, q_error_sd(d, step))
    assert verdict.ok, verdict.report


# -- the checker can fail -------------------------------------------------------


def round_to_nearest(values: np.ndarray, delta: float, rng: np.random.Generator) -> np.ndarray:
    """A deliberately biased Q: deterministic rounding to the nearest grid point."""
    return np.rint(values / delta) * delta


def qsgd_inverted(v: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """A deliberately biased QSGD: rounds up with probability 1 - f instead of f (inverted rounding)."""
    norm = float(np.linalg.norm(v))
    y = np.abs(v) * s / norm
    low = np.floor(y)
    up = rng.random(v.shape[0]) < 1.0 - (y - low)
    return np.sign(v) * (low + up) * norm / s


def sparsify_unscaled(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A deliberately biased sparsifier: keeps alpha_j itself instead of alpha_j / p_j."""
    p = keep_probabilities(alpha, SPARSE_BUDGET)
    return np.where(rng.random(alpha.shape[0]) < p, alpha, 0.0)


def test_checker_detects_round_to_nearest() -> None:
    """algorithms.md 2 / style.md: the unbiasedness check fails for a rounding that is not stochastic."""
    y = Q_Y[8]
    samples = stack(lambda rng: round_to_nearest(y * Q_DELTA, Q_DELTA, rng), seed=900)
    verdict = check_unbiased(samples, y * Q_DELTA, q_sigma(y, Q_DELTA), EPS * Q_DELTA)
    assert not verdict.ok
    # Every coordinate whose rounding moves it by more than 5 % of a step is caught.
    assert set(np.flatnonzero(np.abs(np.rint(y) - y) > 0.05)) <= set(verdict.failing)


def test_checker_detects_inverted_qsgd() -> None:
    """algorithms.md 8 / style.md: QSGD with its rounding inverted is caught by the unbiasedness check."""
    s = 2
    samples = stack(lambda rng: qsgd_inverted(QSGD_V, s, rng), seed=901)
    step = float(np.linalg.norm(QSGD_V)) / s
    f = fractional(np.abs(QSGD_V) / step)
    verdict = check_unbiased(samples, QSGD_V, q_sigma(np.abs(QSGD_V) / step, step), EPS * step)
    assert not verdict.ok
    # The inverted rounding shifts coordinate j by |1 - 2 f_j| steps; all shifts above 0.1 step are caught.
    assert set(np.flatnonzero(np.abs(1 - 2 * f) > 0.1)) <= set(verdict.failing)


def test_checker_detects_missing_rescale() -> None:
    """algorithms.md 6: a sparsifier that keeps alpha_j instead of alpha_j / p_j is caught."""
    samples = stack(lambda rng: sparsify_unscaled(SPARSE_ALPHA, rng), seed=902)
    sd, bias = sparsify_sd_and_bias(SPARSE_ALPHA, exact=False)
    verdict = check_unbiased(samples, SPARSE_ALPHA, sd, bias)
    assert not verdict.ok
    p = keep_probabilities(SPARSE_ALPHA, SPARSE_BUDGET)
    assert set(np.flatnonzero((p > 0) & (p < 0.9))) <= set(verdict.failing)


def test_checker_detects_violated_variance_bound() -> None:
    """algorithms.md 4: the one-sided check fails when the mean error exceeds the bound by 10 %."""
    rng = np.random.default_rng(903)
    errors = rng.exponential(1.1, size=N)  # mean 1.1, sd 1.1
    assert not check_mean_below(errors, 1.0, 1.1).ok
    assert check_mean_below(rng.exponential(1.0, size=N), 1.0, 1.0).ok
