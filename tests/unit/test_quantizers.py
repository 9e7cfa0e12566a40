"""Deterministic tests of the quantizers and the sparsifier (algorithms.md 2, 3, 4, 6, 8).

Everything here is exact: explicit dithers written down by hand, expectations
computed by enumerating all 65536 values of the 16-bit dither, formulas checked
with exact rational arithmetic.  The statistical checks (many random draws,
CLT tolerances) live in tests/property/test_quantizer_statistics.py.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import pytest

from aiodq.codec.lowp import (
    DITHER_BITS,
    MAX_MODEL_BITS,
    floor_with_dither,
    make_rng,
    quantize,
    quantize_gradient,
    quantize_model,
    quantize_with_dither,
)
from aiodq.codec.qsgd import quantize_qsgd, quantize_qsgd_with_dither
from aiodq.codec.sparse import keep_probabilities, quantize_sparse, sparsify, sparsify_with_uniforms
from aiodq.codec.vectors import (
    DenseQuantized,
    EqualsSnapshot,
    QSGDVector,
    RawVector,
    SparseQuantized,
    ZeroVector,
)
from aiodq.errors import NonFiniteError

#: Every 16-bit dither value r (u = r / 2**16), for exact expectations.
ALL_DITHERS = np.arange(1 << 16, dtype=np.uint16)
#: The documented bias bound of the 16-bit fast path, in units of delta (lowp.py docstring).
DITHER_BIAS = 2.0**-15
FLOAT32_MAX = float(np.finfo(np.float32).max)


# -- independent helpers (no aiodq code) --------------------------------------


def top_code(bits: int) -> int:
    return (1 << (bits - 1)) - 1


def code_dtype(bits: int) -> type[np.integer]:
    """The documented code dtype of quantize_with_dither: int8 up to 8 bits, else int16."""
    return np.int8 if bits <= 8 else np.int16


def is_float32_value(value: float) -> bool:
    return float(np.float32(value)) == value


def f32_up(value: float) -> float:
    """Smallest float32 >= value (own implementation)."""
    f = np.float32(value)
    if float(f) < value:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def f32_down(value: float) -> float:
    """Largest float32 <= value, for positive value (own implementation)."""
    f = np.float32(value)
    if float(f) > value:
        f = np.nextafter(f, np.float32(0))
    return float(f)


def exact_code_means(values: np.ndarray, delta: float, bits: int) -> np.ndarray:
    """E[code] per coordinate under a uniform 16-bit dither, by enumerating all 65536 dithers."""
    d = values.shape[0]
    codes = quantize_with_dither(np.repeat(values, 1 << 16), delta, bits, np.tile(ALL_DITHERS, d))
    return codes.reshape(d, 1 << 16).astype(np.float64).mean(axis=1)


def exact_squared_error(values: np.ndarray, delta: float, bits: int) -> float:
    """E||Q(v) - v||**2 under a uniform 16-bit dither, by enumeration."""
    d = values.shape[0]
    codes = quantize_with_dither(np.repeat(values, 1 << 16), delta, bits, np.tile(ALL_DITHERS, d))
    errors = codes.reshape(d, 1 << 16).astype(np.float64) * delta - values[:, None]
    return float((errors**2).mean(axis=1).sum())


def reference_model_bits(largest: float, delta: float) -> int:
    """b_x = ceil(log2(L / delta + 1)) + 1, evaluated exactly with fractions (algorithms.md 4)."""
    target = Fraction(largest) / Fraction(delta) + 1
    k = 0
    while Fraction(2) ** k < target:
        k += 1
    return k + 1


def reference_model_delta(v: np.ndarray, mu: float, target: np.ndarray | None = None) -> float:
    """delta_x = max(2 sqrt(mu/d) ||v||_2, mu ||v||_2**2 / ||q||_1), rounded down to float32.

    ``q`` is the vector quantized: ``v`` snapshot-centred (algorithms.md 4), ``x``
    zero-centred.  With ``||q||_1`` the second term meets the mu bound through
    Q's error bound delta ||q||_1 (algorithms.md 2); with ``||v||_1`` it would not
    for the zero-centred variant (see test_model_mu_constraint_exact_expectation).
    """
    d = v.shape[0]
    q = v if target is None else target
    norm2 = math.sqrt(math.fsum(float(t) * float(t) for t in v))
    norm1 = math.fsum(abs(float(t)) for t in q)
    return f32_down(max(2.0 * math.sqrt(mu / d) * norm2, mu * norm2 * norm2 / norm1))


def reference_exact_probabilities(alpha: np.ndarray, budget: float) -> np.ndarray:
    """Water-filling keep probabilities with sum(p) == min(phi, nnz) (Wangni et al.; algorithms.md 6).

    The k largest magnitudes saturate at p = 1 and the rest get p = c |alpha_j| with
    c = (phi - k) / (their mass); k is the smallest count for which this is consistent.
    """
    magnitude = np.abs(alpha.astype(np.float64))
    nonzero = int(np.count_nonzero(magnitude))
    if budget >= nonzero:
        return (magnitude > 0).astype(np.float64)
    order = np.argsort(-magnitude, kind="stable")
    for k in range(nonzero):
        rest = magnitude[order[k:]]
        c = (budget - k) / float(rest.sum())
        if float(rest.max()) * c <= 1.0 and (k == 0 or float(magnitude[order[k - 1]]) * c >= 1.0):
            p = np.minimum(magnitude * c, 1.0)
            p[order[:k]] = 1.0
            return p
    raise AssertionError("no consistent water level")


def sample_vectors(d: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    gaussian = rng.normal(size=d)
    heavy = rng.standard_cauchy(size=d)
    with_zeros = rng.normal(size=d)
    with_zeros[::3] = 0.0
    as_float32 = rng.normal(size=d).astype(np.float32).astype(np.float64)
    return [gaussian, heavy, with_zeros, as_float32, -np.abs(gaussian), np.abs(heavy)]


# -- Q_(delta, b) with an explicit dither (algorithms.md 2) --------------------


FLOAT_DITHER_TABLE = [
    # (value, dither u, expected code) for delta = 0.5, bits = 4 (codes -8..7).
    (0.125, 0.0, 0),  # v/delta = 0.25
    (0.125, 0.5, 0),
    (0.125, 0.75, 1),  # 0.25 + 0.75 == 1 exactly
    (0.125, 0.999, 1),
    (-0.125, 0.0, -1),  # v/delta = -0.25
    (-0.125, 0.2, -1),
    (-0.125, 0.25, 0),
    (1.5, 0.0, 3),  # on the grid: always 3
    (1.5, 0.999, 3),
    (3.25, 0.5, 7),  # 6.5 + 0.5 == 7: the top code
    (3.25, 0.25, 6),
    (3.75, 0.5, 7),  # 7.5 + 0.5 == 8 is clipped to 7
    (-4.0, 0.0, -8),
    (-4.25, 0.0, -8),  # -8.5 -> -9, clipped to -8
    (-4.25, 0.5, -8),
    (10.0, 0.3, 7),
    (-10.0, 0.3, -8),
    (0.0, 0.0, 0),
    (0.0, 0.999, 0),
]


def test_float_dither_codes_by_hand() -> None:
    """algorithms.md 2: code = clip(floor(v/delta + u)), checked against hand-computed codes."""
    values = np.array([row[0] for row in FLOAT_DITHER_TABLE])
    dither = np.array([row[1] for row in FLOAT_DITHER_TABLE])
    expected = [row[2] for row in FLOAT_DITHER_TABLE]
    codes = quantize_with_dither(values, 0.5, 4, dither)
    assert codes.dtype == code_dtype(4)
    assert codes.tolist() == expected


# (v / delta, dither r, expected code): code = floor(v/delta + r / 2**16).
UINT16_DITHER_TABLE = [
    (0.25, 0, 0),
    (0.25, 49151, 0),  # 0.25 + 49151/65536 < 1
    (0.25, 49152, 1),  # 0.25 + 49152/65536 == 1
    (0.25, 65535, 1),
    (-0.25, 0, -1),
    (-0.25, 16383, -1),
    (-0.25, 16384, 0),
    (-0.25, 65535, 0),
    (2.0**-16, 65534, 0),
    (2.0**-16, 65535, 1),
    (-(2.0**-16), 0, -1),
    (-(2.0**-16), 1, 0),
    (3.0, 0, 3),  # on the grid
    (3.0, 65535, 3),
    (-3.0, 0, -3),
    (-3.0, 65535, -3),
    (2.5, 32767, 2),
    (2.5, 32768, 3),
    (0.0, 0, 0),
    (0.0, 65535, 0),
]


@pytest.mark.parametrize("bits", [4, 8, 9, 16], ids=lambda b: f"bits{b}")
@pytest.mark.parametrize("delta", [0.5, 2.0**-20, 3.0])
def test_uint16_dither_codes_by_hand(bits: int, delta: float) -> None:
    """algorithms.md 2: the 16-bit dither r gives code floor(v/delta + r/2**16), both ends 0 and 65535."""
    values = np.array([row[0] * delta for row in UINT16_DITHER_TABLE])
    dither = np.array([row[1] for row in UINT16_DITHER_TABLE], dtype=np.uint16)
    codes = quantize_with_dither(values, delta, bits, dither)
    assert codes.dtype == code_dtype(bits)
    assert codes.tolist() == [row[2] for row in UINT16_DITHER_TABLE]


@pytest.mark.parametrize("bits", [2, 3, 8, 9, 16])
def test_uint16_dither_clips_at_both_ends(bits: int) -> None:
    """algorithms.md 2: the code range is [-2**(b-1), 2**(b-1)-1]; values just outside clip to the ends."""
    top = top_code(bits)
    values = np.array([top + 0.5, top, -top - 1, -top - 1.5, top + 0.99, -top - 1.99])
    codes = quantize_with_dither(values, 1.0, bits, np.array([65535, 65535, 0, 0, 0, 65535], np.uint16))
    assert codes.tolist() == [top, top, -top - 1, -top - 1, top, -top - 1]


@pytest.mark.parametrize("scale", [2.0, 1e6, 1e30], ids=lambda s: f"x{s:g}")
@pytest.mark.parametrize("bits", [2, 8, 9, 16])
def test_far_out_of_range_values_clip_to_the_nearest_end(bits: int, scale: float) -> None:
    """algorithms.md 2: outside the range the value is clipped to the nearest end, however far out."""
    top = top_code(bits)
    values = np.array([scale * (top + 1), -scale * (top + 1)])
    for dither in (np.array([0, 65535], np.uint16), np.array([0.0, 0.5])):
        codes = quantize_with_dither(values, 1.0, bits, dither)
        assert codes.tolist() == [top, -top - 1], f"dither dtype {dither.dtype}"


def test_quantize_with_dither_accepts_lists_and_float32() -> None:
    """algorithms.md 2: the values may be any finite array-like (list, float32, int)."""
    expected = [1, -1, 0]
    assert quantize_with_dither([0.5, -0.5, 0.0], 0.5, 8, [0.0, 0.0, 0.0]).tolist() == expected
    f32 = np.array([0.5, -0.5, 0.0], dtype=np.float32)
    assert quantize_with_dither(f32, 0.5, 8, np.zeros(3, np.uint16)).tolist() == expected
    assert quantize_with_dither([2, -2, 0], 2.0, 8, [0.0, 0.0, 0.0]).tolist() == expected


@pytest.mark.parametrize("bits", [2, 4, 8, 9, 12, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_exact_dither_bias_within_documented_bound(bits: int, seed: int) -> None:
    """algorithms.md 2 / lowp.py: averaged over all 65536 dithers, |E[code] - v/delta| <= 2**-15."""
    rng = np.random.default_rng(seed * 100 + bits)
    top = top_code(bits)
    delta = float(np.float32(10.0 ** rng.uniform(-6, 6)))
    for values in (
        rng.uniform(-top - 1, top, size=24) * delta,
        (rng.uniform(-top - 1, top, size=24) * delta).astype(np.float32).astype(np.float64),
        rng.integers(-top - 1, top, size=24, endpoint=True) * delta,  # on the grid
    ):
        bias = exact_code_means(values, delta, bits) - values / delta
        assert np.abs(bias).max() <= DITHER_BIAS, f"max bias {np.abs(bias).max() / DITHER_BIAS} x 2**-15"


def test_on_grid_values_are_exact() -> None:
    """algorithms.md 2: a value on the grid is its own quantization, whatever the dither."""
    for bits in (2, 8, 12, 16):
        top = top_code(bits)
        codes = np.array([-top - 1, -top, -1, 0, 1, top], dtype=np.float64)
        values = codes * 0.375
        for r in (0, 1, 32768, 65535):
            got = quantize_with_dither(values, 0.375, bits, np.full(6, r, np.uint16))
            assert got.tolist() == codes.astype(int).tolist()


def test_quantize_draws_from_the_generator_reproducibly() -> None:
    """algorithms.md 2: quantize is Q_(delta, b) with a dither from the rng; same seed, same codes."""
    values = np.linspace(-3.0, 3.0, 13)
    first = quantize(values, 0.25, 8, np.random.default_rng(7))
    second = quantize(values, 0.25, 8, np.random.default_rng(7))
    assert first.tolist() == second.tolist()
    assert np.all(np.abs(first * 0.25 - values) < 0.25)


#: Long enough for several blocks of the quantizers (2**17 and 2**18 coordinates) and a partial last
#: raw word (600,003 is not a multiple of 4).
_LONG = 600_003


def _raw_dither_order(seed: int, count: int) -> npt.NDArray[np.int64]:
    """The 16-bit words of a fresh ``make_rng(seed)``'s raw output, four per 64-bit word, low half first."""
    words = make_rng(seed).bit_generator.random_raw(-(-count // 4))
    return words.astype("<u8").view("<u2")[:count].astype(np.int64)


def test_gradient_dither_is_one_draw_in_coordinate_order_across_blocks() -> None:
    """algorithms.md 2: coordinate j's dither is r_j, the j-th 16-bit word of the generator's raw output.

    Values m_j 2**-6 with |m_j| <= 1016 give delta = 1016 2**-6 / 127 = 2**-3 exactly, v_j / delta =
    m_j / 8, and code_j = floor(m_j / 8 + r_j / 2**16) = (2**13 m_j + r_j) >> 16 in integers.
    """
    m = np.random.default_rng(4).integers(-1016, 1017, _LONG)
    m[_LONG // 2] = 1016
    values = (m * 2.0**-6).astype(np.float32)
    expected = (m * (1 << 13) + _raw_dither_order(11, _LONG)) >> 16
    q = quantize_gradient(values, 8, make_rng(11))
    assert isinstance(q, DenseQuantized)
    assert q.scale == 0.125
    assert np.array_equal(q.codes.astype(np.int64), expected)


def test_sparse_keep_test_draws_one_high_half_per_coordinate_in_order_across_blocks() -> None:
    """algorithms.md 6: j is kept iff R_j = 2**16 r_j + s_j < p_j 2**32, r_j drawn in coordinate order.

    With |alpha_j| in 0..3 and phi = ||alpha||_1 / 64 (exact in float32 block sums), p_j = |alpha_j| / 64
    and p_j 2**16 = 1024 |alpha_j| is an integer: r_j < 1024 |alpha_j| keeps j whatever s_j is, and
    r_j >= 1024 |alpha_j| drops it, so no low half is drawn.  Kept values are alpha_j / p_j = +-64.
    """
    magnitude = np.random.default_rng(5).integers(0, 4, _LONG)
    sign = np.where(np.random.default_rng(6).random(_LONG) < 0.5, -1, 1)
    alpha = (sign * magnitude).astype(np.float32)
    budget = float(magnitude.sum()) / 64
    kept = np.flatnonzero(_raw_dither_order(12, _LONG) < 1024 * magnitude)
    assert 0.01 * _LONG < kept.shape[0] < 0.1 * _LONG
    indices, values = sparsify(alpha, budget, make_rng(12))
    assert np.array_equal(indices, kept)
    assert np.array_equal(values, 64.0 * sign[kept])


@pytest.mark.parametrize("bits", [0, 1, 17, -2, 2.5])
def test_quantize_refuses_bad_bits(bits: int) -> None:
    """algorithms.md 2: the code width b is 2 to 16."""
    with pytest.raises(ValueError):
        quantize_with_dither([0.5], 0.5, bits, [0.0])
    with pytest.raises(ValueError):
        quantize([0.5], 0.5, bits, np.random.default_rng(0))
    # One range in the message whatever the width (an API audit: 0 said 1 to 16, then 1 said 2 to 16).
    for vector in ([0.5], [0.0]):  # (a zero gradient too: it is refused before its zero vector)
        with pytest.raises(ValueError, match=rf"^bits must be between 2 and 16, got {bits}$"):
            quantize_gradient(vector, bits, np.random.default_rng(0))


@pytest.mark.parametrize("delta", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_quantize_refuses_bad_delta(delta: float) -> None:
    """algorithms.md 2: the scale delta is positive and finite."""
    with pytest.raises(ValueError):
        quantize_with_dither([0.5], delta, 8, [0.0])
    with pytest.raises(ValueError):
        quantize([0.5], delta, 8, np.random.default_rng(0))


@pytest.mark.parametrize(
    "dither",
    [
        np.array([1.0, 0.0]),
        np.array([-0.25, 0.0]),
        np.array([math.nan, 0.0]),
        np.array([0, 0], dtype=np.int32),
        np.array([0, 0], dtype=np.uint32),
        np.array([0.0]),
        np.array([0.0, 0.0, 0.0]),
    ],
    ids=["u=1", "u<0", "nan", "int32", "uint32", "short", "long"],
)
def test_quantize_refuses_bad_dither(dither: np.ndarray) -> None:
    """algorithms.md 2: a dither is one float in [0, 1) or one uint16 per value."""
    with pytest.raises(ValueError):
        quantize_with_dither([0.5, 0.25], 0.5, 8, dither)


def test_quantize_refuses_empty_and_two_dimensional_input() -> None:
    """algorithms.md 2: Q acts on a non-empty one-dimensional vector."""
    with pytest.raises(ValueError):
        quantize_with_dither(np.array([]), 0.5, 8, np.array([]))
    with pytest.raises(ValueError):
        quantize_with_dither(np.zeros((2, 2)), 0.5, 8, np.zeros((2, 2)))


# -- the gradient quantizer (algorithms.md 3) ---------------------------------


@pytest.mark.parametrize("bits", range(2, 17))
def test_gradient_scale_is_smallest_float32_covering_largest(bits: int) -> None:
    """algorithms.md 3: delta = ||alpha||_inf / (2**(b-1)-1), rounded up to a float32."""
    top = top_code(bits)
    for alpha in sample_vectors(13, seed=bits):
        q = quantize_gradient(alpha, bits, np.random.default_rng(0))
        assert isinstance(q, DenseQuantized)
        assert q.bits == bits and q.dim == 13
        largest = float(np.abs(alpha).max())
        assert is_float32_value(q.scale)
        assert q.scale == f32_up(largest / top)
        assert Fraction(q.scale) * top >= Fraction(largest)


def adversarial_gradients(bits: int) -> list[np.ndarray]:
    """Vectors whose largest coordinate sits (nearly) on the top of the grid, for both signs."""
    rng = np.random.default_rng(1000 + bits)
    top = top_code(bits)
    out = []
    for _ in range(40):
        base = rng.normal(size=7)
        exact_top = float(np.float32(rng.uniform(0.5, 2.0) * 10.0 ** rng.integers(-6, 6))) * top
        for largest in (exact_top, float(np.abs(base).max()) * 1.37):
            for sign in (1.0, -1.0):
                alpha = base / np.abs(base).max() * largest * 0.5
                alpha[3] = sign * largest
                out.append(alpha)
    out.append(np.array([-9.366691292405903]))  # d = 1, a random float64 largest coordinate
    return out


@pytest.mark.parametrize("bits", range(2, 17))
def test_gradient_codes_never_leave_symmetric_range(bits: int) -> None:
    """algorithms.md 3: the largest coordinate sits on the grid, so codes stay in [-(2**(b-1)-1), 2**(b-1)-1].

    Checked for the drawn dither and for the two extreme dithers r = 0 and r = 65535,
    which bound every other draw (the code is monotone in r).
    """
    top = top_code(bits)
    failures = []
    for alpha in adversarial_gradients(bits):
        q = quantize_gradient(alpha, bits, np.random.default_rng(1))
        assert isinstance(q, DenseQuantized)
        d = alpha.shape[0]
        # The gradient quantizer is Q on the symmetric range (lowp.quantize_to_range).
        low_codes = quantize_with_dither(alpha, q.scale, bits, np.zeros(d, np.uint16), symmetric=True)
        high_codes = quantize_with_dither(alpha, q.scale, bits, np.full(d, 65535, np.uint16), symmetric=True)
        for codes in (q.codes, low_codes, high_codes):
            if int(np.abs(codes.astype(np.int64)).max()) > top or int(codes.min()) < -top:
                failures.append((alpha.tolist() if d == 1 else float(alpha[3]), q.scale, codes.tolist()))
                break
    assert not failures, f"{len(failures)} vectors reach code -2**(b-1); first: {failures[0]}"


@pytest.mark.parametrize("bits", [2, 3, 8, 9, 12, 16])
@pytest.mark.parametrize("exponent", list(range(-36, 39, 3)))
def test_gradient_error_below_one_step_at_every_magnitude(bits: int, exponent: int) -> None:
    """algorithms.md 3: with no clipping every coordinate lands within one grid step, at any float32 scale."""
    rng = np.random.default_rng(exponent + 100 * bits)
    alpha = rng.normal(size=9)
    alpha = alpha / np.abs(alpha).max() * 10.0**exponent
    q = quantize_gradient(alpha, bits, rng)
    assert isinstance(q, DenseQuantized)
    for r in (0, 65535):
        codes = quantize_with_dither(alpha, q.scale, bits, np.full(9, r, np.uint16))
        error = codes.astype(np.float64) * q.scale - alpha
        assert np.all(np.abs(error) < q.scale), f"r={r}: codes {codes.tolist()}"
    assert np.all(np.abs(q.to_dense() - alpha) < q.scale)


@pytest.mark.parametrize("d", [1, 2, 7, 9, 13, 1001])
def test_gradient_any_dimension(d: int) -> None:
    """algorithms.md 3: any dimension, including d = 1 and d not a multiple of 8."""
    alpha = np.random.default_rng(d).normal(size=d)
    q = quantize_gradient(alpha, 8, np.random.default_rng(d))
    assert isinstance(q, DenseQuantized)
    assert q.dim == d and q.codes.shape == (d,)
    assert np.all(np.abs(q.to_dense() - alpha) < q.scale)


@pytest.mark.parametrize("bits", [2, 8, 16])
def test_gradient_d1_on_grid(bits: int) -> None:
    """algorithms.md 3: with d = 1 the only coordinate is the largest; it maps to +/-(2**(b-1)-1) exactly."""
    top = top_code(bits)
    for value in (top * 2.0**-10, -top * 2.0**-10, 3.0 * top, -3.0 * top):
        for seed in range(20):
            q = quantize_gradient([value], bits, np.random.default_rng(seed))
            assert isinstance(q, DenseQuantized)
            assert q.codes.tolist() == [top if value > 0 else -top]
            assert q.to_dense().tolist() == [value]


@pytest.mark.parametrize("d", [1, 8, 13])
def test_gradient_zero_is_zero_vector(d: int) -> None:
    """algorithms.md 3: alpha = 0 is sent as an explicit zero vector."""
    for zero in (np.zeros(d), -np.zeros(d), np.zeros(d, dtype=np.float32)):
        assert quantize_gradient(zero, 8, np.random.default_rng(0)) == ZeroVector(d)


@pytest.mark.parametrize("bits", [3, 4, 8, 16])
def test_gradient_below_the_smallest_float32_rounds_to_zero_vector(bits: int) -> None:
    """A gradient whose largest value is below 2**-149 gets delta = 2**-149 (the smallest float32).

    Its largest coordinate is then less than one grid step, so it rounds to 0 with
    probability 1 - 1e-46 / 2**-149 (about 93 %) whatever b: every coordinate rounds to 0
    in most draws, and such a draw must come back as the zero vector, never as a DENSE
    vector of zero codes (wire-format.md: the zero vector is sent as ZERO).
    """
    gradient = np.array([1e-46, 0.0, -5e-47])
    results = [quantize_gradient(gradient, bits, np.random.default_rng(seed)) for seed in range(64)]
    zeros = [q for q in results if isinstance(q, ZeroVector)]
    assert zeros, "no draw rounded every coordinate to zero"
    for q in results:
        assert isinstance(q, ZeroVector) or (isinstance(q, DenseQuantized) and q.codes.any())


def test_gradient_accepts_integer_and_float32_input() -> None:
    """algorithms.md 3: integer and float32 gradients are quantized like float64 ones."""
    q = quantize_gradient([127, -127, 0], 8, np.random.default_rng(0))
    assert isinstance(q, DenseQuantized)
    assert q.scale == 1.0 and q.codes.tolist() == [127, -127, 0]
    q32 = quantize_gradient(np.array([0.5, -0.25], dtype=np.float32), 3, np.random.default_rng(0))
    assert isinstance(q32, DenseQuantized)
    assert q32.scale == 0.5 / 3 or q32.scale == f32_up(0.5 / 3)


def test_complex_input_and_a_generator_that_is_none_are_refused_by_name() -> None:
    """An API audit: a complex gradient lost its imaginary parts with only numpy's ComplexWarning, and
    rng=None read "'NoneType' object has no attribute 'bit_generator'"."""
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"^the gradient must be real numbers, got a complex128 array$"):
        quantize_gradient(np.ones(4) + 1j, 4, rng)
    with pytest.raises(ValueError, match=r"^the gradient must be real numbers"):
        sparsify(np.ones(4) * 1j, 1.0, rng)
    with pytest.raises(ValueError, match=r"^the model must be real numbers"):
        quantize_model(np.ones(3) * 1j, np.zeros(3), 0.5, rng)
    with pytest.raises(ValueError, match=r"^the snapshot must be real numbers"):
        quantize_model(np.ones(3), np.zeros(3, dtype=np.complex64), 0.5, rng)
    with pytest.raises(ValueError, match=r"^the vector must be real numbers"):
        quantize_qsgd(np.ones(4) * 1j, 16, rng)
    for bad in (None, 0, np.random.default_rng(0).bit_generator):
        with pytest.raises(TypeError, match=r"^rng must be a numpy.random.Generator \(make_rng, say\), got "):
            quantize_gradient(np.ones(4), 4, bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bits", [0, 1, 17, -8])
def test_gradient_refuses_bad_bits(bits: int) -> None:
    """algorithms.md 3: the gradient bits b are 2 to 16."""
    with pytest.raises(ValueError):
        quantize_gradient([1.0, -0.5], bits, np.random.default_rng(0))


@pytest.mark.parametrize("bits", [0, 1, 17])
def test_bad_bits_refused_whatever_the_data(bits: int) -> None:
    """algorithms.md 3, 6: a bad bit width is refused even when the result would be zero.

    Parameter validation must not depend on the data, nor on the random draw
    (the sparse case below keeps nothing most of the time).
    """
    with pytest.raises(ValueError):
        quantize_gradient(np.zeros(4), bits, np.random.default_rng(0))
    with pytest.raises(ValueError):
        quantize_sparse(np.zeros(4), 2.0, bits, np.random.default_rng(0))
    with pytest.raises(ValueError):
        quantize_sparse(np.ones(4), 1e-6, bits, np.random.default_rng(0))


BEYOND_FLOAT32_CALLS = {
    "gradient-bits8": lambda v: quantize_gradient(v, 8, np.random.default_rng(0)),
    "gradient-bits16": lambda v: quantize_gradient(v, 16, np.random.default_rng(0)),
    "sparse": lambda v: quantize_sparse(v, 2.0, 8, np.random.default_rng(0)),
    "qsgd": lambda v: quantize_qsgd(v, 4, np.random.default_rng(0)),
}


@pytest.mark.parametrize("name", sorted(BEYOND_FLOAT32_CALLS))
@pytest.mark.parametrize("magnitude", [1e39, 1e200, 1e308])
def test_values_beyond_float32_range_refused_or_faithful(name: str, magnitude: float) -> None:
    """algorithms.md 3 / lowp.py: huge values give ValueError or a faithful quantization, never a mangled one.

    numpy RuntimeWarnings are silenced here so that only the result is judged.
    """
    alpha = np.array([magnitude, -magnitude, 0.25 * magnitude])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            result = BEYOND_FLOAT32_CALLS[name](alpha)
        except ValueError:
            return
        dense = result.to_dense()
    assert not isinstance(result, ZeroVector), f"{name}: a nonzero vector came back as zero"
    assert np.all(dense * alpha >= 0), f"{name}: signs flipped: {result}"
    scale = result.norm if isinstance(result, QSGDVector) else result.scale
    if isinstance(result, DenseQuantized):
        assert np.all(np.abs(dense - alpha) < scale), f"{name}: {result}"


@pytest.mark.parametrize("name", sorted(BEYOND_FLOAT32_CALLS))
def test_float32_overflow_raises_value_error_not_numpy_warning(name: str) -> None:
    """lowp.py / qsgd.py: a scale beyond float32 raises the documented ValueError, with no numpy warning."""
    alpha = np.array([1e308, -1e308, 0.25e308])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError):
            BEYOND_FLOAT32_CALLS[name](alpha)


# -- the model quantizer (algorithms.md 4) -------------------------------------


def model_cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(44)
    cases = []
    for d in (1, 5, 16, 33):
        x_snap = rng.normal(size=d)
        dense = rng.normal(size=d) * 0.1
        cases.append((f"dense-d{d}", x_snap + dense, x_snap))
        one = np.zeros(d)
        one[d // 2] = 0.3
        cases.append((f"one-coordinate-d{d}", x_snap + one, x_snap))
        cases.append((f"heavy-d{d}", x_snap + rng.standard_cauchy(size=d), x_snap))
    return cases


def dense_model_payload(x: np.ndarray, x_snap: np.ndarray, mu: float, centre: str):  # type: ignore[no-untyped-def]
    """The first payload over seeds 0..49 that is not the canonical all-zero form, or the last one."""
    for seed in range(50):
        payload = quantize_model(x, x_snap, mu, np.random.default_rng(seed), centre=centre)
        if not isinstance(payload.vector, (EqualsSnapshot, ZeroVector)):
            break
    return payload


@pytest.mark.parametrize("centre", ["snapshot", "zero"])
@pytest.mark.parametrize("mu", [0.05, 0.25, 0.5, 2.0])
def test_model_delta_and_bits_formula(mu: float, centre: str) -> None:
    """algorithms.md 4: delta_x = max(2 sqrt(mu/d)||v||_2, mu||v||^2/||q||_1) rounded down; b_x formula."""
    for name, x, x_snap in model_cases():
        payload = dense_model_payload(x, x_snap, mu, centre)
        v = x - x_snap
        target = v if centre == "snapshot" else x
        delta = reference_model_delta(v, mu, target)
        bits = reference_model_bits(float(np.abs(target).max()), delta)
        vector = payload.vector
        if bits > MAX_MODEL_BITS:
            assert payload == (RawVector(target.astype(np.float32)), centre == "snapshot"), name
            continue
        top = top_code(bits)
        for r in (0, 65535):
            codes = quantize_with_dither(target, delta, bits, np.full(target.shape, r, np.uint16))
            assert int(np.abs(codes.astype(np.int64)).max()) <= top, f"{name}: clipped at r={r}"
        if isinstance(vector, (EqualsSnapshot, ZeroVector)):
            # Every draw rounded everything to zero: then the smallest dither must give all zeros too.
            assert not quantize_with_dither(target, delta, bits, np.zeros(target.shape, np.uint16)).any()
            continue
        assert payload.relative == (centre == "snapshot"), name
        assert isinstance(vector, DenseQuantized), name
        assert is_float32_value(vector.scale), name
        assert vector.scale == delta, name
        assert vector.bits == bits, name


@pytest.mark.parametrize("c", [0.75, -0.75, 2.0**-30, -3.0, 1024.0])
def test_model_bits_at_exact_power_of_two_boundary(c: float) -> None:
    """algorithms.md 4: d = 1, mu = 1/4 gives delta = |v| and b_x = ceil(log2 2) + 1 = 2, code sign(v)."""
    for seed in range(10):
        payload = quantize_model([5.0 + c], [5.0], 0.25, np.random.default_rng(seed))
        v = (5.0 + c) - 5.0
        assert payload.relative
        assert payload.vector == DenseQuantized(2, abs(v), np.array([1 if v > 0 else -1]))
    for r in (0, 65535):
        codes = quantize_with_dither(np.array([c]), abs(c), 2, np.array([r], np.uint16))
        assert codes.tolist() == [1 if c > 0 else -1]


def test_model_float32_fallback_above_max_bits() -> None:
    """algorithms.md 4: above the cap on b_x the vector travels as float32 (x, or x - x_snap)."""
    x_snap = np.array([1000.0, -1000.0, 500.0, 3.0])
    x = x_snap + np.array([1e-3, -2e-3, 0.0, 5e-4])
    # Zero-centred: ||x||_inf / delta_x is about 10**6, far above 16 bits.
    payload = quantize_model(x, x_snap, 0.5, np.random.default_rng(0), centre="zero")
    assert payload == (RawVector(x.astype(np.float32)), False)
    assert payload.vector.values.dtype == np.float32
    # Snapshot-centred with a small cap: the needed b_x exceeds max_bits.
    v = x - x_snap
    bits = reference_model_bits(float(np.abs(v).max()), reference_model_delta(v, 0.05))
    assert bits > 2
    capped = quantize_model(x, x_snap, 0.05, np.random.default_rng(0), max_bits=bits - 1)
    assert capped == (RawVector(v.astype(np.float32)), True)
    at_cap = quantize_model(x, x_snap, 0.05, np.random.default_rng(0), max_bits=bits)
    assert isinstance(at_cap.vector, DenseQuantized) and at_cap.vector.bits == bits and at_cap.relative


@pytest.mark.parametrize("d", [1, 7, 13])
@pytest.mark.parametrize("centre", ["snapshot", "zero"])
def test_model_equal_to_snapshot(d: int, centre: str) -> None:
    """algorithms.md 4: x = x_snap is sent as "model equals snapshot", with no payload."""
    x = np.random.default_rng(d).normal(size=d)
    payload = quantize_model(x, x.copy(), 0.5, np.random.default_rng(0), centre=centre)
    assert payload.vector == EqualsSnapshot(d)
    zero = quantize_model(np.zeros(d), -np.zeros(d), 0.5, np.random.default_rng(0), centre=centre)
    assert zero.vector == EqualsSnapshot(d)


def test_model_rounded_to_zero_is_equals_snapshot() -> None:
    """algorithms.md 4: a draw that rounds every coordinate of x - x_snap to 0 is sent as EQUALS_SNAPSHOT.

    With d = 1, mu = 0.5 and v = x - x_snap = 0.25: delta_x = max(2 sqrt(0.5) 0.25, 0.5 * 0.25**2 / 0.25)
    = 0.3536 (rounded down to a float32), so v / delta_x = 0.7071 and the one code is 1 with
    probability 0.7071, else 0: over 64 draws both happen (a miss has probability below 1e-9),
    and a zero code never travels as a DENSE vector.
    """
    payloads = [quantize_model([1.25], [1.0], 0.5, np.random.default_rng(seed)) for seed in range(64)]
    assert any(p.vector == EqualsSnapshot(1) and not p.relative for p in payloads)
    quantized = [p for p in payloads if isinstance(p.vector, DenseQuantized)]
    assert quantized, "no draw rounded up"
    for p in quantized:
        assert p.relative and p.vector.codes.tolist() == [1]


@pytest.mark.parametrize("d", [1, 9])
def test_model_zero_centred_zero_model(d: int) -> None:
    """algorithms.md 4: zero-centred with x = 0 (x_snap != 0) is an explicit zero vector."""
    x_snap = np.linspace(1.0, 2.0, d)
    payload = quantize_model(np.zeros(d), x_snap, 0.5, np.random.default_rng(0), centre="zero")
    assert payload == (ZeroVector(d), False)
    relative = quantize_model(np.zeros(d), x_snap, 0.5, np.random.default_rng(0))
    assert relative.relative and isinstance(relative.vector, DenseQuantized)


@pytest.mark.parametrize("centre", ["snapshot", "zero"])
@pytest.mark.parametrize("mu", [0.05, 0.5, 2.0])
def test_model_mu_constraint_exact_expectation(mu: float, centre: str) -> None:
    """algorithms.md 4: E||Q(x) - x||^2 <= mu ||x - x_snap||^2, expectation exact over all 65536 dithers.

    The tolerance adds only the documented 16-bit dither effect: at most 2**-15 delta^2 per coordinate.
    """
    failures = []
    for name, x, x_snap in model_cases():
        v = x - x_snap
        target = v if centre == "snapshot" else x
        delta = reference_model_delta(v, mu, target)
        bits = reference_model_bits(float(np.abs(target).max()), delta)
        if bits > MAX_MODEL_BITS:
            continue  # the float32 fallback is checked elsewhere
        payload = dense_model_payload(x, x_snap, mu, centre)
        if isinstance(payload.vector, DenseQuantized):
            assert (payload.vector.scale, payload.vector.bits) == (delta, bits), name
        error = exact_squared_error(target, delta, bits)
        bound = mu * float(np.sum(v**2))
        slack = x.shape[0] * DITHER_BIAS * delta**2
        if error > bound + slack:
            failures.append(f"{name}: E err = {error / bound:.3f} x bound (bits {bits})")
    assert not failures, "; ".join(failures)


@pytest.mark.parametrize("mu", [0.0, -0.5, math.nan, math.inf])
def test_model_refuses_bad_mu(mu: float) -> None:
    """algorithms.md 4: mu is finite and positive."""
    with pytest.raises(ValueError):
        quantize_model([1.0, 2.0], [0.0, 0.0], mu, np.random.default_rng(0))


def test_model_refuses_bad_parameters() -> None:
    """algorithms.md 4: the centre is snapshot or zero, the cap on b_x is 2 to 16, shapes agree."""
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        quantize_model([1.0], [0.0], 0.5, rng, centre="middle")
    for max_bits in (0, 1, 17):
        with pytest.raises(ValueError):
            quantize_model([1.0], [0.0], 0.5, rng, max_bits=max_bits)
    with pytest.raises(ValueError):
        quantize_model([1.0, 2.0], [0.0], 0.5, rng)
    with pytest.raises(ValueError):
        quantize_model([], [], 0.5, rng)


# -- the sparsifier (algorithms.md 6) -----------------------------------------


SPARSE_VECTORS = [
    np.array([2.0, -1.0, 0.0, 1.0]),
    np.array([100.0, 1.0, -1.0, 0.5, 0.25, 0.0, -3.0]),
    np.random.default_rng(6).normal(size=40),
    np.random.default_rng(7).standard_cauchy(size=40),
    np.array([1e-300, -5.0, 5.0, 1e300 * 0.0 + 2.0]),
    np.array([3.0]),
]


@pytest.mark.parametrize("budget", [0.5, 1.0, 2.0, 2.5, 7.0, 1e6])
def test_keep_probabilities_formula(budget: float) -> None:
    """algorithms.md 6: p_j = min(phi |alpha_j| / ||alpha||_1, 1), zero where alpha_j = 0; sum(p) <= phi."""
    for alpha in SPARSE_VECTORS:
        p = keep_probabilities(alpha, budget)
        expected = [min(budget * abs(a) / math.fsum(np.abs(alpha)), 1.0) for a in alpha]
        np.testing.assert_allclose(p, expected, rtol=1e-12, atol=0)
        assert np.all(p[alpha == 0] == 0)
        assert p.sum() <= budget * (1 + 1e-12)


@pytest.mark.parametrize("budget", [0.5, 1.0, 2.0, 2.5, 3.999, 7.0, 33.3])
def test_exact_budget_probabilities_sum_to_phi(budget: float) -> None:
    """algorithms.md 6: the exact-budget variant has sum(p) == phi when phi < nnz (water-filling)."""
    for alpha in SPARSE_VECTORS:
        nnz = int(np.count_nonzero(alpha))
        p = keep_probabilities(alpha, budget, exact=True)
        assert np.all((p >= 0) & (p <= 1))
        assert np.all(p[alpha == 0] == 0)
        if budget < nnz:
            assert math.isclose(math.fsum(p), budget, rel_tol=1e-12)
        else:
            assert p.tolist() == (alpha != 0).astype(float).tolist()
        np.testing.assert_allclose(p, reference_exact_probabilities(alpha, budget), rtol=1e-12, atol=1e-300)
        # Recalibration only raises probabilities, so the variance bound of the plain variant still holds.
        assert np.all(p >= keep_probabilities(alpha, budget) * (1 - 1e-12))


def test_sparsify_with_uniforms_by_hand() -> None:
    """algorithms.md 6: keep alpha_j / p_j where u_j < p_j; float and uint32 uniforms."""
    alpha = np.array([2.0, -1.0, 0.0, 1.0])
    p = keep_probabilities(alpha, 2.0)
    assert p.tolist() == [1.0, 0.5, 0.0, 0.5]
    indices, values = sparsify_with_uniforms(alpha, p, np.array([0.99, 0.49, 0.0, 0.5]))
    assert indices.tolist() == [0, 1] and values.tolist() == [2.0, -2.0]
    uniforms = np.array([2**32 - 1, 2**31 - 1, 0, 2**31], dtype=np.uint32)
    indices, values = sparsify_with_uniforms(alpha, p, uniforms)
    assert indices.tolist() == [0, 1] and values.tolist() == [2.0, -2.0]
    indices, values = sparsify_with_uniforms(alpha, p, np.zeros(4, dtype=np.uint32))
    assert indices.tolist() == [0, 1, 3] and values.tolist() == [2.0, -2.0, 2.0]
    with pytest.raises(ValueError):
        sparsify_with_uniforms(alpha, p, np.zeros(3))


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("d", [1, 5, 13])
def test_sparse_of_zero_is_zero_vector(d: int, exact: bool) -> None:
    """algorithms.md 6: the zero gradient keeps nothing and is sent as a zero vector."""
    indices, values = sparsify(np.zeros(d), 2.0, np.random.default_rng(0), exact=exact)
    assert indices.shape == (0,) and values.shape == (0,)
    assert quantize_sparse(np.zeros(d), 2.0, 8, np.random.default_rng(0), exact=exact) == ZeroVector(d)


@pytest.mark.parametrize("exact", [False, True])
def test_sparse_d1(exact: bool) -> None:
    """algorithms.md 6: d = 1 with phi >= 1 keeps the coordinate with p = 1 and puts it on the top code."""
    for value in (3.0, -0.125):
        q = quantize_sparse([value], 1.0, 8, np.random.default_rng(0), exact=exact)
        expected_codes = np.array([127 if value > 0 else -127])
        assert q == SparseQuantized(1, 8, f32_up(abs(value) / 127), np.array([0]), expected_codes)


@pytest.mark.parametrize("exact", [False, True])
@pytest.mark.parametrize("d", [1, 7, 9, 13, 100])
def test_quantize_sparse_structure(d: int, exact: bool) -> None:
    """algorithms.md 6: indices increasing, codes nonzero and within +/-(2**(b-1)-1), float32 scale."""
    rng = np.random.default_rng(d)
    for trial in range(20):
        alpha = rng.normal(size=d)
        budget = max(1.0, d / 3)
        q = quantize_sparse(alpha, budget, 8, rng, exact=exact)
        if isinstance(q, ZeroVector):
            assert q.dim == d
            continue
        assert isinstance(q, SparseQuantized), trial
        assert q.dim == d and q.bits == 8
        assert is_float32_value(q.scale)
        assert np.all(np.diff(q.indices) > 0)
        assert np.all(q.codes != 0)
        assert int(np.abs(q.codes.astype(np.int64)).max()) <= 127


def test_quantize_sparse_keeps_everything_when_all_probabilities_are_one() -> None:
    """algorithms.md 6: when every p_j = 1 nothing is dropped or rescaled; the grid of section 3 applies."""
    alpha = np.array([0.5, 0.0, -1.0, 0.25, 0.0, 0.75, -0.125, 0.0, 1.0])
    # Exact budget with phi >= nnz = 6; plain budget with phi >= ||alpha||_1 / min|alpha_j| = 29.
    for exact, budget in ((True, 6.0), (True, 9.0), (False, 29.0), (False, 1e9)):
        assert keep_probabilities(alpha, budget, exact=exact).tolist() == (alpha != 0).astype(float).tolist()
        q = quantize_sparse(alpha, budget, 16, np.random.default_rng(3), exact=exact)
        assert isinstance(q, SparseQuantized)
        assert q.scale == f32_up(1.0 / 32767)
        assert set(q.indices.tolist()) <= {0, 2, 3, 5, 6, 8}
        assert np.all(np.abs(q.to_dense() - alpha) < q.scale)


@pytest.mark.parametrize("budget", [0.0, -1.0, math.nan, -math.inf])
def test_sparse_refuses_bad_budget(budget: float) -> None:
    """algorithms.md 6: the budget phi is positive."""
    alpha = np.array([1.0, -2.0, 3.0])
    for exact in (False, True):
        with pytest.raises(ValueError):
            keep_probabilities(alpha, budget, exact=exact)
        with pytest.raises(ValueError):
            sparsify(alpha, budget, np.random.default_rng(0), exact=exact)
        with pytest.raises(ValueError):
            quantize_sparse(alpha, budget, 8, np.random.default_rng(0), exact=exact)


@pytest.mark.parametrize("bits", [0, 1, 17])
def test_sparse_refuses_bad_bits(bits: int) -> None:
    """algorithms.md 6: the code width of the kept values is 2 to 16."""
    with pytest.raises(ValueError):
        quantize_sparse(np.array([1.0, -2.0, 3.0]), 10.0, bits, np.random.default_rng(0))


# -- QSGD (algorithms.md 8) ---------------------------------------------------


# (vector, s, dither r, expected signed levels); ||v||_2 is exact in each case.
QSGD_TABLE = [
    ([3.0, -4.0], 10, [0, 0], [6, -8]),  # on the level grid: exact
    ([3.0, -4.0], 10, [65535, 65535], [6, -8]),
    ([1.0, 1.0, 1.0, 1.0], 1, [0, 32767, 32768, 65535], [0, 0, 1, 1]),  # |v| s / norm = 0.5
    ([-1.0, -1.0, -1.0, -1.0], 1, [0, 32767, 32768, 65535], [0, 0, -1, -1]),
    ([1.0, -1.0, 1.0, -1.0], 3, [0, 32767, 32768, 65535], [1, -1, 2, -2]),  # 1.5
    ([0.0, 5.0], 7, [65535, 0], [0, 7]),
]


@pytest.mark.parametrize(("vector", "s", "dither", "expected"), QSGD_TABLE)
def test_qsgd_levels_by_hand(vector: list[float], s: int, dither: list[int], expected: list[int]) -> None:
    """algorithms.md 8: xi_i = l/s or (l+1)/s, l = floor(|v_i| s / ||v||_2 + u), signed by v_i."""
    q = quantize_qsgd_with_dither(vector, s, np.array(dither, dtype=np.uint16))
    norm = math.sqrt(math.fsum(t * t for t in vector))
    assert q == QSGDVector(s, norm, np.array(expected))


def test_qsgd_float_dither_by_hand() -> None:
    """algorithms.md 8: a float dither u in [0, 1) rounds the same way."""
    q = quantize_qsgd_with_dither([1.0, 1.0, -1.0, -1.0], 1, np.array([0.0, 0.5, 0.4999, 0.75]))
    assert q == QSGDVector(1, 2.0, np.array([0, 1, 0, -1]))


@pytest.mark.parametrize("s", [1, 2, 4, 255, 65535])
def test_qsgd_norm_float32_and_levels_in_range(s: int) -> None:
    """algorithms.md 8: the norm is a float32 >= ||v||_2 and every level lies in [-s, s] with v's sign."""
    for v in sample_vectors(11, seed=s):
        q = quantize_qsgd(v, s, np.random.default_rng(s))
        assert isinstance(q, QSGDVector)
        assert is_float32_value(q.norm)
        assert q.norm == f32_up(float(np.linalg.norm(v)))
        assert int(np.abs(q.levels).max()) <= s
        assert np.all(q.levels * np.sign(v) >= 0)
        assert np.all(np.abs(q.to_dense() - v) < q.norm / s)


@pytest.mark.parametrize("s", [1, 3, 65535])
def test_qsgd_d1(s: int) -> None:
    """algorithms.md 8: d = 1 puts the only coordinate on level +/-s (|v_1| = ||v||_2)."""
    for value in (0.5, -0.5, 3.0, -1e-20):
        q = quantize_qsgd([value], s, np.random.default_rng(0))
        assert isinstance(q, QSGDVector)
        assert int(abs(q.levels[0])) in (s - 1, s)
        if is_float32_value(abs(value)):
            assert q.levels.tolist() == [s if value > 0 else -s]


@pytest.mark.parametrize("d", [1, 8, 13])
def test_qsgd_zero_is_zero_vector(d: int) -> None:
    """algorithms.md 8: the zero vector has no direction; it is sent as a zero vector."""
    assert quantize_qsgd(np.zeros(d), 4, np.random.default_rng(0)) == ZeroVector(d)


@pytest.mark.parametrize("s", [0, -1, 65536])
def test_qsgd_refuses_bad_levels(s: int) -> None:
    """algorithms.md 8: s is between 1 and 65535 (wire-format.md 5.7)."""
    with pytest.raises(ValueError):
        quantize_qsgd([1.0, -1.0], s, np.random.default_rng(0))
    with pytest.raises(ValueError):
        quantize_qsgd(np.zeros(3), s, np.random.default_rng(0))


# -- NaN and infinities (all quantizers) ---------------------------------------


def _model(v: np.ndarray) -> object:
    return quantize_model(v, np.zeros_like(v), 0.5, np.random.default_rng(0))


def _model_zero(v: np.ndarray) -> object:
    return quantize_model(v, np.zeros_like(v), 0.5, np.random.default_rng(0), centre="zero")


def _model_bad_snapshot(v: np.ndarray) -> object:
    return quantize_model(np.ones_like(v), v, 0.5, np.random.default_rng(0))


QUANTIZERS = {
    "quantize_with_dither": lambda v: quantize_with_dither(v, 0.5, 8, np.zeros(v.shape, np.uint16)),
    "quantize_with_float_dither": lambda v: quantize_with_dither(v, 0.5, 16, np.zeros(v.shape)),
    "quantize": lambda v: quantize(v, 0.5, 8, np.random.default_rng(0)),
    "floor_with_dither": None,  # a helper without validation; not a public quantizer entry point
    "quantize_gradient": lambda v: quantize_gradient(v, 8, np.random.default_rng(0)),
    "quantize_model": _model,
    "quantize_model_zero": _model_zero,
    "quantize_model_snapshot": _model_bad_snapshot,
    "keep_probabilities": lambda v: keep_probabilities(v, 2.0),
    "keep_probabilities_exact": lambda v: keep_probabilities(v, 2.0, exact=True),
    "sparsify": lambda v: sparsify(v, 2.0, np.random.default_rng(0)),
    "quantize_sparse": lambda v: quantize_sparse(v, 2.0, 8, np.random.default_rng(0)),
    "quantize_sparse_exact": lambda v: quantize_sparse(v, 2.0, 8, np.random.default_rng(0), exact=True),
    "quantize_qsgd": lambda v: quantize_qsgd(v, 4, np.random.default_rng(0)),
    "quantize_qsgd_with_dither": lambda v: quantize_qsgd_with_dither(v, 4, np.zeros(v.shape, np.uint16)),
}
QUANTIZERS = {name: fn for name, fn in QUANTIZERS.items() if fn is not None}


@pytest.mark.parametrize("position", [0, 4, 8])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("name", sorted(QUANTIZERS))
def test_non_finite_input_refused(name: str, bad: float, position: int) -> None:
    """algorithms.md 2-8 / errors.py: NaN and +/-Inf are refused with NonFiniteError by every quantizer."""
    v = np.linspace(-1.0, 1.0, 9)
    v[position] = bad
    with pytest.raises(NonFiniteError):
        QUANTIZERS[name](v)
    with pytest.raises(NonFiniteError):
        QUANTIZERS[name](v.astype(np.float32))


def test_non_finite_error_is_a_value_error() -> None:
    """errors.py: NonFiniteError is a ValueError, so callers catching ValueError see it too."""
    assert issubclass(NonFiniteError, ValueError)


def test_dither_bits_constant() -> None:
    """algorithms.md 2: the fast dither uses k >= 16 bits."""
    assert DITHER_BITS >= 16
    # floor_with_dither is exact for integer dithers: (floor(2**16 y) + r) >> 16.
    got = floor_with_dither(np.array([0.25, -0.25]), 1.0, np.array([49152, 16383], np.uint16), -32768, 32767)
    assert got.tolist() == [1, -1]
