"""aiodq.protocol.objectives: gradients against finite differences, direct losses, the regulariser.

Models return *sums* over the samples they are given (docs/algorithms.md 1), so
the tests also check that the sums add up over row blocks.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from aiodq.protocol.objectives import (
    MLP,
    LogisticRegression,
    Objective,
    Regularizer,
    SoftmaxRegression,
    check_objective,
    difference_method,
    make_objective,
    objective_name,
)

SAMPLES = 12
FEATURES = 5
CLASSES = 3

# Central differences (f(x + h e_j) - f(x - h e_j)) / 2h have truncation error h^2 |f'''| / 6 and
# rounding error about eps |f| / h.  With h = 1e-6, eps = 2.2e-16 and |f| of order 10 (a sum of 12
# losses of order 1) the rounding term is about 2e-9 and the truncation term about 1e-12, so an
# absolute tolerance of 1e-6 leaves a wide margin, while a wrong sign, a missing factor or a
# dropped term would give errors of order 1e-2 or more.  For the MLP a ReLU kink lies within h of
# a random point with probability about 1e-6 per unit, so the kinks do not matter.
STEP = 1e-6
ATOL = 1e-6
RTOL = 1e-6


def numeric_gradient(function: Callable[[np.ndarray], float], x: np.ndarray) -> np.ndarray:
    """The central finite-difference gradient of ``function`` at ``x``."""
    out = np.empty_like(x)
    for j in range(x.shape[0]):
        step = np.zeros_like(x)
        step[j] = STEP
        out[j] = (function(x + step) - function(x - step)) / (2 * STEP)
    return out


def binary_data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random sparse-ish features and -1/+1 labels."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(SAMPLES, FEATURES)) * (rng.random((SAMPLES, FEATURES)) < 0.6)
    labels = rng.choice([-1.0, 1.0], size=SAMPLES)
    return features, labels


def class_data(seed: int, classes: int = CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Random sparse-ish features and 0..C-1 labels."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(SAMPLES, FEATURES)) * (rng.random((SAMPLES, FEATURES)) < 0.6)
    labels = rng.integers(0, classes, size=SAMPLES)
    return features, labels


def as_features(features: np.ndarray, kind: str) -> np.ndarray | sp.csr_matrix:
    """The same features as a dense array or a CSR matrix."""
    return sp.csr_matrix(features) if kind == "csr" else features


def case(name: str, seed: int, kind: str = "dense") -> tuple[Objective, np.ndarray, np.ndarray, np.ndarray]:
    """A model on random data, a random point, and the data (dense) for direct computations."""
    rng = np.random.default_rng([seed, 99])
    model: Objective
    if name.startswith("logistic"):
        features, labels = binary_data(seed)
        model = LogisticRegression(as_features(features, kind), labels, bias=name.endswith("+bias"))
    elif name.startswith("softmax"):
        features, labels = class_data(seed)
        model = SoftmaxRegression(as_features(features, kind), labels, CLASSES, bias=name.endswith("+bias"))
    elif name == "mlp1":
        features, labels = class_data(seed)
        model = MLP(as_features(features, kind), labels, (FEATURES, 7, CLASSES))
    else:
        features, labels = class_data(seed)
        model = MLP(as_features(features, kind), labels, (FEATURES, 6, 4, CLASSES))
    x = rng.normal(size=model.dim)
    return model, x, features, labels


MODELS = ["logistic", "logistic+bias", "softmax", "softmax+bias", "mlp1", "mlp2"]
KINDS = ["dense", "csr"]


def correct_of(model: Objective, x: np.ndarray) -> int:
    return int(model.correct(x))  # type: ignore[attr-defined] # every built-in model has it


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_matches_finite_differences(name: str, kind: str, seed: int) -> None:
    """loss_grad's gradient is the derivative of its loss (central differences, see STEP/ATOL)."""
    model, x, _, _ = case(name, seed, kind)
    loss, grad = model.loss_grad(x)
    assert grad.shape == (model.dim,)
    assert grad.dtype == np.float64
    numeric = numeric_gradient(lambda z: model.loss_grad(z)[0], x)
    np.testing.assert_allclose(grad, numeric, rtol=RTOL, atol=ATOL)
    assert np.isfinite(loss)


@pytest.mark.parametrize("name", MODELS)
def test_dense_and_csr_agree(name: str) -> None:
    """Dense and CSR features give the same loss, gradient and correct count."""
    dense, x, _, _ = case(name, 5, "dense")
    sparse, _, _, _ = case(name, 5, "csr")
    dense_out, sparse_out = dense.loss_grad(x), sparse.loss_grad(x)
    assert dense_out[0] == pytest.approx(sparse_out[0], rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(dense_out[1], sparse_out[1], rtol=1e-12, atol=1e-12)
    assert correct_of(dense, x) == correct_of(sparse, x)


@pytest.mark.parametrize("name", MODELS)
def test_csr_mini_batches_agree_with_dense_ones(name: str) -> None:
    """Mini-batches of CSR rows (logistic: the bincount path) give the dense model's loss and gradient:
    repeated rows, negative rows, a row without stored entries, one row, and the same rows asked again
    at another point (the inner loop's second call)."""
    model, x, features, labels = case(name, 7, "dense")
    features = features.copy()
    features[4] = 0.0  # a row with no stored entries in CSR
    if isinstance(model, MLP):
        dense, sparse = (
            MLP(features, labels, model.layers),
            MLP(sp.csr_matrix(features), labels, model.layers),
        )
    else:
        bias = name.endswith("+bias")
        dense, sparse = (type(model)(data, labels, bias=bias) for data in (features, sp.csr_matrix(features)))
    rng = np.random.default_rng(3)
    for batch in (np.array([4, 1, 1, -1, 0]), np.array([4]), rng.integers(0, SAMPLES, 16)):
        rows = batch.astype(np.intp)
        for point in (x, x + rng.normal(size=x.shape)):
            dense_out, sparse_out = dense.loss_grad(point, rows), sparse.loss_grad(point, rows)
            assert sparse_out[1].dtype == np.float64 and sparse_out[1].shape == (dense.dim,)
            assert sparse_out[0] == pytest.approx(dense_out[0], rel=1e-12, abs=1e-12)
            np.testing.assert_allclose(sparse_out[1], dense_out[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("split", [1, 5, 11])
def test_sums_are_additive_over_row_blocks(name: str, kind: str, split: int) -> None:
    """loss_grad on two blocks of rows adds up to loss_grad on all rows (sums, not means)."""
    model, x, _, _ = case(name, 7, kind)
    whole = model.loss_grad(x)
    top = model.loss_grad(x, np.arange(split))
    bottom = model.loss_grad(x, np.arange(split, SAMPLES))
    assert top[0] + bottom[0] == pytest.approx(whole[0], rel=1e-12)
    np.testing.assert_allclose(top[1] + bottom[1], whole[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", MODELS)
def test_a_repeated_row_counts_as_often_as_it_appears(name: str) -> None:
    """Mini-batches are drawn with replacement: rows [3, 3] give twice the sums of row 3."""
    model, x, _, _ = case(name, 9)
    once = model.loss_grad(x, np.array([3]))
    twice = model.loss_grad(x, np.array([3, 3]))
    assert twice[0] == pytest.approx(2 * once[0], rel=1e-12)
    np.testing.assert_allclose(twice[1], 2 * once[1], rtol=1e-12, atol=1e-14)
    # The same rows asked again (the inner loop asks at x_hat and at x_snap) give the same sums.
    rows = np.array([1, 4, 4, 0])
    first, second = model.loss_grad(x, rows), model.loss_grad(x, rows)
    assert first[0] == second[0] and np.array_equal(first[1], second[1])
    assert model.loss_grad(x + 1.0, rows)[0] != first[0]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", ["logistic", "logistic+bias", "softmax", "softmax+bias"])
def test_grad_difference_is_the_difference_of_two_gradients(name: str, kind: str) -> None:
    """The linear models' grad_difference(x, y, rows) is loss_grad(x, rows)[1] - loss_grad(y, rows)[1]:
    repeated and negative rows, a row without stored entries, one row; and it leaves x and y alone."""
    model, x, features, labels = case(name, 13, kind)
    features = features.copy()
    features[4] = 0.0  # a row with no stored entries in CSR
    model = type(model)(as_features(features, kind), labels, bias=name.endswith("+bias"))  # type: ignore[call-arg]
    rng = np.random.default_rng(4)
    y = x + 0.3 * rng.normal(size=x.shape)
    for batch in (np.array([4, 1, 1, -1, 0]), np.array([2]), rng.integers(0, SAMPLES, 16)):
        rows = batch.astype(np.intp)
        x_before, y_before = x.copy(), y.copy()
        difference = model.grad_difference(x, y, rows)  # type: ignore[attr-defined]
        expected = model.loss_grad(x, rows)[1] - model.loss_grad(y, rows)[1]
        assert difference.dtype == np.float64 and difference.shape == (model.dim,)
        np.testing.assert_allclose(difference, expected, rtol=1e-10, atol=1e-13)
        assert np.abs(expected).max() > 1e-3  # (the points differ enough for a wrong sign to show)
        np.testing.assert_array_equal(x, x_before)
        np.testing.assert_array_equal(y, y_before)
    # At one point the difference is exactly zero.
    assert not model.grad_difference(x, x, np.array([0, 2])).any()  # type: ignore[attr-defined]


def test_grad_difference_is_taken_only_with_the_loss_grad_it_belongs_to() -> None:
    """A subclass that overrides loss_grad and not grad_difference would get the parent's gradients
    from the inherited one (a review): difference_method gives None there, and for an instance whose
    loss_grad was replaced; the method where both come from the same class or below."""
    model, _, _, _ = case("logistic", 0)
    assert difference_method(model) == model.grad_difference  # type: ignore[attr-defined]

    class OwnLoss(LogisticRegression):
        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
            return super().loss_grad(x, rows)

    class OwnBoth(OwnLoss):
        def grad_difference(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return super().grad_difference(x, y, rows)

    class OwnDifference(LogisticRegression):
        def grad_difference(self, x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
            return super().grad_difference(x, y, rows)

    features, labels = binary_data(0)
    assert difference_method(OwnLoss(features, labels)) is None
    for kind in (OwnBoth, OwnDifference):
        built = kind(features, labels)
        assert difference_method(built) == built.grad_difference
    patched = LogisticRegression(features, labels)
    patched.loss_grad = lambda x, rows=None: (0.0, x)  # type: ignore[method-assign]
    assert difference_method(patched) is None
    assert difference_method(case("mlp1", 0)[0]) is None


def test_the_mlp_has_no_grad_difference() -> None:
    """The MLP's two gradients share nothing a pass could save: workers take loss_grad twice."""
    model, _, _, _ = case("mlp1", 0)
    assert not hasattr(model, "grad_difference")


# -- losses and correct counts, computed directly --------------------------------------------------


def test_logistic_loss_and_correct_direct() -> None:
    """Logistic loss is sum log(1 + exp(-y a.x)); correct counts y a.x > 0."""
    model, x, features, labels = case("logistic", 3)
    loss, grad = model.loss_grad(x)
    margins = labels * (features @ x)
    assert loss == pytest.approx(float(np.sum(np.log1p(np.exp(-margins)))), rel=1e-12)
    expected_grad = features.T @ (-labels / (1 + np.exp(margins)))
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-12, atol=1e-14)
    assert correct_of(model, x) == int(np.sum(margins > 0))


def test_logistic_bias_is_the_last_parameter() -> None:
    """With bias the margin is y (a.w + b), b the last parameter; its gradient is sum -y sigma(-m)."""
    model, x, features, labels = case("logistic+bias", 3)
    assert model.dim == FEATURES + 1
    loss, grad = model.loss_grad(x)
    margins = labels * (features @ x[:-1] + x[-1])
    assert loss == pytest.approx(float(np.sum(np.log1p(np.exp(-margins)))), rel=1e-12)
    assert grad[-1] == pytest.approx(float(np.sum(-labels / (1 + np.exp(margins)))), rel=1e-12)


def test_logistic_at_zero() -> None:
    """At x = 0 each sample costs log 2 and none counts as correct (margin 0 is not > 0)."""
    features, labels = binary_data(4)
    model = LogisticRegression(features, labels)
    loss, _ = model.loss_grad(np.zeros(FEATURES))
    assert loss == pytest.approx(SAMPLES * np.log(2.0), rel=1e-14)
    assert model.correct(np.zeros(FEATURES)) == 0


@pytest.mark.parametrize(
    ("labels", "advice"),
    [
        ([1.0, 2.0, 1.0], r"values \(1, 2\): map them to -1/\+1 first, as Dataset.for_model\('logistic'\)"),
        ([0.0, 1.0, 2.0], r"values \(0, 1, 2\): use the softmax or mlp model"),
        ([1e6, 1e6 + 1, 1e6], r"values \(1000000, 1000001\): map them"),  # (not 1e+06 twice: a review)
        ([2.0, 2.0, 2.0], r"take 1 value \(2\): map them to -1/\+1 first"),
    ],
)
def test_logistic_refuses_other_labels_saying_what_to_do(labels: list[float], advice: str) -> None:
    """-1/+1 and 0/1 only: two other values are mapped by Dataset.for_model, more need another model."""
    with pytest.raises(ValueError, match=advice):
        LogisticRegression(np.eye(3), np.asarray(labels))


def test_logistic_extreme_margins_stay_finite() -> None:
    """Huge margins give a finite loss and gradient (log-sigmoid evaluated stably)."""
    model = LogisticRegression(np.array([[1.0], [1.0]]), np.array([1.0, -1.0]))
    loss, grad = model.loss_grad(np.array([1000.0]))
    assert loss == pytest.approx(1000.0, rel=1e-12)
    np.testing.assert_allclose(grad, [1.0], rtol=1e-12)
    assert model.correct(np.array([1000.0])) == 1


def softmax_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    """Sum of -log softmax(scores)[label], computed directly."""
    shifted = scores - scores.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(scores.shape[0]), labels].sum())


@pytest.mark.parametrize("bias", [False, True])
def test_softmax_loss_and_correct_direct(bias: bool) -> None:
    """Softmax loss is the summed cross-entropy of features @ W (+ b); correct counts argmax hits."""
    model, x, features, labels = case("softmax+bias" if bias else "softmax", 3)
    loss, _ = model.loss_grad(x)
    scores = features @ x[: FEATURES * CLASSES].reshape(FEATURES, CLASSES)
    if bias:
        scores = scores + x[FEATURES * CLASSES :]
    assert loss == pytest.approx(softmax_loss(scores, labels), rel=1e-12)
    assert correct_of(model, x) == int(np.sum(scores.argmax(axis=1) == labels))


def mlp_scores(layers: tuple[int, ...], x: np.ndarray, features: np.ndarray) -> np.ndarray:
    """A direct forward pass: weights then biases per layer, ReLU between layers."""
    out, offset = features, 0
    pairs = list(itertools.pairwise(layers))
    for number, (fan_in, fan_out) in enumerate(pairs):
        weights = x[offset : offset + fan_in * fan_out].reshape(fan_in, fan_out)
        offset += fan_in * fan_out
        bias = x[offset : offset + fan_out]
        offset += fan_out
        out = out @ weights + bias
        if number < len(pairs) - 1:
            out = np.maximum(out, 0.0)
    assert offset == x.shape[0]
    return out


@pytest.mark.parametrize("name", ["mlp1", "mlp2"])
def test_mlp_loss_and_correct_direct(name: str) -> None:
    """MLP loss is the cross-entropy of a ReLU network's scores; correct counts argmax hits."""
    model, x, features, labels = case(name, 3)
    assert isinstance(model, MLP)
    loss, _ = model.loss_grad(x)
    scores = mlp_scores(model.layers, x, features)
    assert loss == pytest.approx(softmax_loss(scores, labels), rel=1e-12)
    assert model.correct(x) == int(np.sum(scores.argmax(axis=1) == labels))


def test_mlp_dim_and_initial() -> None:
    """MLP dim counts weights and biases; the initial point is Glorot-uniform with zero biases."""
    features, labels = class_data(0, 2)
    model = MLP(features[:, :4], labels, (4, 3, 2))
    assert model.dim == 4 * 3 + 3 + 3 * 2 + 2
    x0 = model.initial(np.random.default_rng(0))
    assert x0.shape == (model.dim,)
    first, bias1 = x0[:12], x0[12:15]
    second, bias2 = x0[15:21], x0[21:]
    assert np.all(np.abs(first) <= np.sqrt(6 / 7))
    assert np.all(np.abs(second) <= np.sqrt(6 / 5))
    assert first.any()
    np.testing.assert_array_equal(bias1, 0.0)
    np.testing.assert_array_equal(bias2, 0.0)
    np.testing.assert_array_equal(model.initial(np.random.default_rng(0)), x0)


def test_linear_models_start_at_zero() -> None:
    """Logistic and softmax regression start at x = 0."""
    rng = np.random.default_rng(0)
    features, labels = class_data(0, 4)
    binary = np.where(labels > 1, 1.0, -1.0)
    np.testing.assert_array_equal(LogisticRegression(features, binary).initial(rng), np.zeros(FEATURES))
    np.testing.assert_array_equal(SoftmaxRegression(features, labels, 4).initial(rng), np.zeros(FEATURES * 4))


def test_built_in_models_are_objectives() -> None:
    """The built-in models go through the public protocol, with their names."""
    for name in MODELS:
        model, _, _, _ = case(name, 0)
        assert isinstance(model, Objective)
        assert check_objective(model) is model
        assert model.samples == SAMPLES
        assert objective_name(model) == name.rstrip("12").split("+")[0]


# -- the regulariser -------------------------------------------------------------------------------


def test_regularizer_value() -> None:
    """R(x) = l2/2 ||x||^2 + l1 ||x||_1."""
    x = np.array([3.0, -4.0, 0.0])
    assert Regularizer().value(x) == 0.0
    assert Regularizer(l2=0.5).value(x) == pytest.approx(0.25 * 25.0)
    assert Regularizer(l1=0.1).value(x) == pytest.approx(0.7)
    assert Regularizer(l2=2.0, l1=1.0).value(x) == pytest.approx(25.0 + 7.0)


def test_prox_soft_thresholding_exact_values() -> None:
    """prox of step*l1*||.||_1 is soft thresholding at step*l1: sign(x) max(|x| - t, 0)."""
    x = np.array([3.0, -3.0, 0.5, -0.5, 1.0, 0.0, -1.25])
    out = Regularizer(l1=0.5).prox(x.copy(), 2.0)  # threshold 1.0
    np.testing.assert_array_equal(out, [2.0, -2.0, 0.0, 0.0, 0.0, 0.0, -0.25])


def test_prox_in_place_and_into_out() -> None:
    """prox writes into ``out`` when given (leaving x alone), else into x itself."""
    x = np.array([2.0, -0.25])
    out = np.empty(2)
    result = Regularizer(l1=1.0).prox(x, 0.5, out=out)
    assert result is out
    np.testing.assert_array_equal(out, [1.5, 0.0])
    np.testing.assert_array_equal(x, [2.0, -0.25])
    same = Regularizer(l1=1.0).prox(x, 0.5)
    assert same is x
    np.testing.assert_array_equal(x, [1.5, 0.0])


def test_prox_without_l1_is_identity() -> None:
    """With l1 = 0 the prox is the identity (l2 goes into gradients, not into the prox)."""
    x = np.array([1.5, -2.0, 0.0, 1e-300])
    reg = Regularizer(l2=3.0)
    np.testing.assert_array_equal(reg.prox(x.copy(), 10.0), x)
    out = np.full(4, np.nan)
    assert reg.prox(x, 10.0, out=out) is out
    np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize(
    "kwargs",
    [{"l2": -1.0}, {"l1": -0.1}, {"l2": float("nan")}, {"l1": float("inf")}],
    ids=["negative l2", "negative l1", "nan l2", "inf l1"],
)
def test_regularizer_rejects_bad_weights(kwargs: dict[str, float]) -> None:
    """Regulariser weights must be finite and non-negative."""
    with pytest.raises(ValueError, match="non-negative"):
        Regularizer(**kwargs)


# -- make_objective, labels and constructor errors -----------------------------------------------


def test_make_model_names() -> None:
    """make_objective builds logistic, softmax and mlp models of the right shape."""
    features, labels = class_data(1, 3)
    binary = np.where(labels > 0, 1.0, -1.0)
    logistic = make_objective("logistic", features, binary)
    assert isinstance(logistic, LogisticRegression)
    assert logistic.dim == FEATURES
    assert make_objective("logistic", features, binary, bias=True).dim == FEATURES + 1
    softmax = make_objective("softmax", features, labels, classes=4)
    assert isinstance(softmax, SoftmaxRegression)
    assert softmax.dim == FEATURES * 4
    mlp = make_objective("mlp", features, labels, hidden=5)
    assert isinstance(mlp, MLP)
    assert mlp.layers == (FEATURES, 5, 3)
    assert mlp.dim == FEATURES * 5 + 5 + 5 * 3 + 3


def test_make_model_unknown_name() -> None:
    """An unknown model name is a ValueError listing the choices."""
    features, labels = binary_data(0)
    with pytest.raises(ValueError, match="logistic, softmax, mlp"):
        make_objective("svm", features, labels)


def test_labels_the_models_read() -> None:
    """Logistic regression reads -1/+1 or 0/1; softmax and the MLP read 0..C-1 or -1/+1."""
    features, _ = binary_data(0)
    zero_one = np.array([0, 1] * (SAMPLES // 2))
    model = LogisticRegression(features, zero_one)
    np.testing.assert_array_equal(model.labels, 2.0 * zero_one - 1.0)
    with pytest.raises(ValueError, match="softmax or mlp"):
        LogisticRegression(features, np.arange(SAMPLES) % 3)
    plus_minus = 2.0 * zero_one - 1.0
    np.testing.assert_array_equal(SoftmaxRegression(features, plus_minus).labels, zero_one)
    with pytest.raises(ValueError, match=r"0\.\.2"):
        SoftmaxRegression(features, np.arange(SAMPLES) % 4, 3)
    with pytest.raises(ValueError, match="whole numbers"):
        SoftmaxRegression(features, np.full(SAMPLES, 0.5), 3)


@pytest.mark.parametrize(
    "build",
    [
        lambda f, y: SoftmaxRegression(f, np.zeros(SAMPLES), 1),
        lambda f, y: MLP(f, y, (FEATURES,)),
        lambda f, y: MLP(f, y, (FEATURES, 0, 2)),
        lambda f, y: MLP(f, y, (FEATURES, 4, 1)),
        lambda f, y: MLP(f, y, (FEATURES + 1, 4, 2)),
        lambda f, y: LogisticRegression(f[:3], y),
    ],
    ids=["softmax 1 class", "mlp no layers", "mlp 0 hidden", "mlp 1 class", "mlp wrong inputs", "rows"],
)
def test_model_shape_errors(build: Callable[[np.ndarray, np.ndarray], Objective]) -> None:
    """Models need a row per label, matching inputs, a unit per layer and two classes."""
    features, labels = binary_data(0)
    with pytest.raises(ValueError):
        build(features, (labels > 0).astype(int))


def test_check_objective_names_what_is_missing() -> None:
    """check_objective: the protocol's members, with positive integer dim and samples."""

    class NoGradient:
        dim, samples = 3, 4

        def initial(self, rng: np.random.Generator) -> np.ndarray:
            return np.zeros(3)

    with pytest.raises(TypeError, match="lacks loss_grad"):
        check_objective(NoGradient())

    class ZeroDim(NoGradient):
        dim = 0

        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
            return 0.0, x

    with pytest.raises(TypeError, match="dim must be a positive integer"):
        check_objective(ZeroDim())

    class NotAMethod(ZeroDim):
        dim = 3
        grad_difference = 2.0

    with pytest.raises(TypeError, match=r"grad_difference must be a method, got 2\.0"):
        check_objective(NotAMethod())


def test_a_test_set_of_one_class_is_scored_with_the_training_sets_mapping() -> None:
    """LIBSVM labels 1/2: training maps 1 -> -1 and 2 -> +1; a test set holding class 1 alone must be
    read the same way (on its own labels, 1 stayed 1 and read as +1: accuracy 0 for a perfect model)."""
    from aiodq.launch.models import objective_for, test_scores  # noqa: PLC0415
    from aiodq.protocol.dataset import Dataset  # noqa: PLC0415
    from aiodq.protocol.trainconfig import TrainConfig  # noqa: PLC0415

    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 2))
    labels = np.where(features[:, 0] > 0, 2.0, 1.0)
    train = Dataset(features, labels, "train")
    config = TrainConfig(model="logistic")
    objective = objective_for(config, train, training_set=True)
    model = np.zeros(objective.dim)
    model[0] = 5.0  # separates the two classes: every sample right
    for value in (1.0, 2.0):
        test = Dataset(features[labels == value], labels[labels == value], f"class-{value:g}")
        assert test_scores(config, test, model, train.labels)["test_accuracy"] == 1.0
    softmax = TrainConfig(model="softmax")
    three = Dataset(features, np.where(features[:, 0] > 0, 2.0, 0.0), "three")  # classes 0..2, 1 empty
    weights = np.zeros(objective_for(softmax, three, training_set=True).dim)
    only_zero = Dataset(features[:3], np.zeros(3), "zero")  # class 0 only: still a 3-class model
    assert test_scores(softmax, only_zero, weights, three.labels)["test_samples"] == 3


def test_import_root_is_the_folder_a_user_model_was_imported_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the worker processes look for the model (PYTHONPATH): a module's folder, a package's
    parent, and a namespace package's (no __init__.py; a review: it got none)."""
    import importlib  # noqa: PLC0415

    from aiodq.launch.models import import_root  # noqa: PLC0415

    (tmp_path / "flat_model_x.py").write_text("X = 1\n")
    (tmp_path / "pkg_model_x").mkdir()
    (tmp_path / "pkg_model_x" / "__init__.py").write_text("")
    (tmp_path / "pkg_model_x" / "net.py").write_text("X = 1\n")
    (tmp_path / "ns_model_x").mkdir()
    (tmp_path / "ns_model_x" / "net.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("flat_model_x", "pkg_model_x.net", "ns_model_x.net"):
        importlib.import_module(name)
        assert import_root(f"{name}:X") == str(tmp_path.resolve()), name
    assert import_root("logistic") is None
    assert import_root("never_imported_x:X") is None


def test_a_model_that_measures_no_accuracy_has_no_test_accuracy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A regression (measures_accuracy False) got 'test accuracy 0.0000' beside 'measures none' (an audit)."""
    from aiodq.launch.models import test_scores  # noqa: PLC0415
    from aiodq.protocol.dataset import Dataset  # noqa: PLC0415
    from aiodq.protocol.trainconfig import TrainConfig  # noqa: PLC0415

    (tmp_path / "regression_model.py").write_text(
        "import numpy as np\n"
        "class Squares:\n"
        "    measures_accuracy = False\n"
        "    def __init__(self, features, labels):\n"
        "        self.features, self.labels = np.asarray(features), np.asarray(labels, dtype=float)\n"
        "        self.dim, self.samples = self.features.shape[1], self.features.shape[0]\n"
        "    def initial(self, rng):\n"
        "        return np.zeros(self.dim)\n"
        "    def loss_grad(self, x, rows=None):\n"
        "        rows = np.arange(self.samples) if rows is None else rows\n"
        "        r = self.features[rows] @ x - self.labels[rows]\n"
        "        return 0.5 * float(r @ r), self.features[rows].T @ r\n"
        "    def correct(self, x):\n"
        "        return 0\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    features = np.eye(3)
    test = Dataset(features, np.array([1.0, 2.0, 3.0]), "test")
    scores = test_scores(TrainConfig(model="regression_model:Squares"), test, np.zeros(3))
    assert scores["test_accuracy"] is None and scores["test_loss"] == pytest.approx((1 + 4 + 9) / 2 / 3)
