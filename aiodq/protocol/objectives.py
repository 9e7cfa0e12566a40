"""What aiodq trains: the :class:`Objective` protocol, and the built-in models (docs/algorithms.md 1).

An objective holds one worker's samples and, for a flat float64 parameter
vector ``x``, computes the *sums* over a block of them of the data losses
``f_i(x)`` and their gradients: over a mini-batch in the inner loop, over all of
the worker's samples in the snapshot phase.  Sums (not means) let workers
report partial results that the master adds up exactly, so the training
objective is ``F(x) = (1/n) sum_i f_i(x) + R(x)`` over the n samples of all
workers.  Anything with the protocol's members trains: your own numpy model,
or a PyTorch module through :mod:`aiodq.torch`.

Three models are built in and go through the same protocol: binary logistic
regression, softmax regression (both optionally with an intercept) and an MLP
with ReLU hidden layers.  :func:`make_objective` builds one by name.

The regulariser ``R(x) = l2 / 2 ||x||^2 + l1 ||x||_1`` is separate
(:class:`Regularizer`): the smooth L2 part is added to gradients, the L1 part is
applied by its proximal operator (soft thresholding).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, runtime_checkable

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # scipy is optional: sparse features work through the @ operator alone
    import scipy.sparse as sp

__all__ = [
    "BUILT_IN",
    "MLP",
    "Features",
    "LogisticRegression",
    "Objective",
    "Regularizer",
    "Rows",
    "SoftmaxRegression",
    "check_objective",
    "difference_method",
    "fixed_fingerprint",
    "make_objective",
    "measures_accuracy",
    "objective_name",
]

Array = npt.NDArray[np.floating[Any]]
#: Features: a dense float64 array or a scipy CSR matrix, one row per sample.
Features: TypeAlias = "npt.NDArray[np.float64] | sp.csr_matrix"
#: Row indices of a mini-batch (drawn with replacement: a row may repeat).
Rows: TypeAlias = npt.NDArray[np.intp]

#: The built-in models by name.
BUILT_IN = ("logistic", "softmax", "mlp")


def expit(values: Array) -> Array:
    """The logistic function ``1 / (1 + exp(-v))``, without overflow for any finite ``v``."""
    out: Array = np.exp(-np.logaddexp(0.0, -values))
    return out


def log_expit(values: Array) -> Array:
    """``log(1 / (1 + exp(-v)))`` computed stably: ``-log(1 + exp(-v))``."""
    out: Array = -np.logaddexp(0.0, -values)
    return out


def logsumexp(values: Array, axis: int) -> Array:
    """``log(sum(exp(v)))`` along ``axis``, shifted by the maximum so nothing overflows."""
    top = values.max(axis=axis, keepdims=True)
    out: Array = np.log(np.exp(values - top).sum(axis=axis)) + np.squeeze(top, axis=axis)
    return out


def _softmax(scores: Array) -> Array:
    """Each row's ``exp(s) / sum(exp(s))``, through :func:`logsumexp` (as the losses take it)."""
    out: Array = np.exp(scores - logsumexp(scores, axis=1)[:, None])
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Regularizer:
    """``R(x) = l2 / 2 ||x||^2 + l1 ||x||_1``."""

    #: Weight of the squared 2-norm (smooth; goes into gradients).
    l2: float = 0.0
    #: Weight of the 1-norm (non-smooth; applied by its proximal step).
    l1: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.l2) and self.l2 >= 0 and math.isfinite(self.l1) and self.l1 >= 0):
            raise ValueError("l2 and l1 must be finite and non-negative")

    def value(self, x: Array) -> float:
        """``R(x)``."""
        return 0.5 * self.l2 * float(x @ x) + self.l1 * float(np.abs(x).sum())

    def prox(self, x: Array, step: float, out: Array | None = None) -> Array:
        """The proximal step of ``step * l1 ||.||_1``: soft thresholding (in place into ``out``)."""
        out = x if out is None else out
        if self.l1 > 0:
            threshold = step * self.l1
            np.copyto(out, np.sign(x) * np.maximum(np.abs(x) - threshold, 0.0))
        elif out is not x:
            np.copyto(out, x)
        return out


@runtime_checkable
class Objective(Protocol):
    """The objective one worker trains: ``f_i(x)`` for each of its samples ``i``.

    Implement these four members (a class, a dataclass, anything); ``x`` is always
    a flat float64 vector of length :attr:`dim`.  Optionally also:

    - ``correct(x) -> int``: the worker's samples predicted correctly at ``x``
      (the trace's accuracy is their sum over n; 0 without the method);
    - ``name: str``: the model's name; if present it must equal the run's
      ``TrainConfig.model``, which a worker checks against CONFIG;
    - ``fingerprint() -> str``: a digest of what the objective computes with besides x
      and its samples (:func:`fixed_fingerprint`; a ``TorchObjective``'s frozen parameters
      and buffers): every process of a run must give the same;
    - ``grad_difference(x, y, rows) -> gradient``: the sum over ``rows`` of
      ``grad f_i(x) - grad f_i(y)``, SVRG's correction of a mini-batch
      (docs/algorithms.md 5.2).  Without it a worker takes two ``loss_grad`` calls;
      give it when one pass is cheaper, as for a linear model, whose gradient
      ``A^T w(A x)`` makes the difference ``A^T (w(A x) - w(A y))``.  A subclass that
      overrides ``loss_grad`` and not ``grad_difference`` is taken with two calls
      (:func:`difference_method`).
    """

    @property
    def dim(self) -> int:
        """The number of parameters d."""
        ...

    @property
    def samples(self) -> int:
        """The number of samples this objective holds (n_k, reported in the snapshot phase)."""
        ...

    def initial(self, rng: np.random.Generator) -> Array:
        """A starting point x_0 (the master's, drawn with the run's seed)."""
        ...

    def loss_grad(self, x: Array, rows: Rows | None = None) -> tuple[float, Array]:
        """``(sum of f_i(x), sum of grad f_i(x))`` over the samples ``rows`` (all with None).

        ``rows`` may repeat a sample: it then counts as often as it appears.
        """
        ...


def objective_name(objective: object) -> str | None:
    """The objective's ``name`` attribute, if it has one (a str)."""
    name = getattr(objective, "name", None)
    return name if isinstance(name, str) else None


def measures_accuracy(objective: object) -> bool:
    """Whether ``objective``'s ``correct`` counts anything.

    Its ``measures_accuracy`` if it says (a torch regression has ``correct``, counting nothing), else
    whether it has ``correct``.
    """
    return bool(getattr(objective, "measures_accuracy", hasattr(objective, "correct")))


def fixed_fingerprint(objective: object) -> str | None:
    """The objective's ``fingerprint()``, if it has the method.

    That is a digest of what the objective computes with besides x and its samples (a torch
    model's frozen parameters and buffers).  The master sends its own in CONFIG (params
    ``"fixed"``), and a worker whose objective gives another refuses the run: the processes
    would train different models.

    Raises:
        ValueError: if ``fingerprint()`` fails or returns something other than a str.
    """
    method = getattr(objective, "fingerprint", None)
    if not callable(method):
        return None
    what = f"{type(objective).__name__}.fingerprint()"
    try:
        value = method()
    except Exception as exc:  # (a worker's would have ended its session by an exception: a review)
        raise ValueError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(value, str):
        raise ValueError(f"{what} must return a str, not {type(value).__name__}")
    return value


def difference_method(objective: object) -> Callable[[Array, Array, Rows], Array] | None:
    """The objective's ``grad_difference``, if it goes with the ``loss_grad`` it has; else None.

    A ``grad_difference`` defined on a class above the one that defines ``loss_grad`` (a
    subclass of a built-in model with its own loss) would compute the parent's gradients: a
    worker then takes ``loss_grad`` twice.  The same for an instance whose ``loss_grad`` was
    replaced and its ``grad_difference`` not.
    """
    method = getattr(objective, "grad_difference", None)
    if method is None:
        return None
    own = vars(objective) if hasattr(objective, "__dict__") else {}
    if "grad_difference" in own:
        return method  # type: ignore[no-any-return]
    if "loss_grad" in own:
        return None

    def owner(name: str) -> type | None:
        return next((cls for cls in type(objective).__mro__ if name in vars(cls)), None)

    gradient, difference = owner("loss_grad"), owner("grad_difference")
    if gradient is not None and difference is not None and not issubclass(difference, gradient):
        return None
    return method  # type: ignore[no-any-return]


def check_objective(objective: object) -> Objective:
    """Check that ``objective`` has the protocol's members, with a positive integer dimension.

    Raises:
        TypeError: if it does not (the text names what is missing; a class given: an instance is meant).
    """
    missing = ", ".join(m for m in ("dim", "samples", "initial", "loss_grad") if not hasattr(objective, m))
    if missing:  # (a class, a review's: "type is not an aiodq Objective")
        what = f"the class {objective.__name__}" if isinstance(objective, type) else type(objective).__name__
        also = ": pass an instance, built from your data" if isinstance(objective, type) else ""
        raise TypeError(f"{what} is not an aiodq Objective: it lacks {missing} (see aiodq.Objective){also}")
    difference = getattr(objective, "grad_difference", None)
    if difference is not None and not callable(difference):
        raise TypeError(f"{type(objective).__name__}.grad_difference must be a method, got {difference!r}")
    for member in ("dim", "samples"):
        value = getattr(objective, member)
        if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
            raise TypeError(f"{type(objective).__name__}.{member} must be a positive integer, got {value!r}")
    return objective  # type: ignore[return-value]


# -- the built-in models --------------------------------------------------------------------------


def _label_values(labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
    values = np.unique(np.asarray(labels))
    if values.size == 0:
        raise ValueError("there are no labels")
    if values.dtype.kind not in "iub" and not (
        values.dtype.kind == "f" and np.isfinite(values).all() and np.array_equal(values, np.round(values))
    ):
        raise ValueError(f"labels must be whole numbers, found {values[:5].tolist()}")
    return values


def _binary_labels(labels: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """-1/+1 labels from -1/+1 or 0/1 ones."""
    values = set(_label_values(labels).tolist())
    if not (values <= {-1, 1} or values <= {0, 1}):
        shown = ", ".join(f"{value:.15g}" for value in sorted(values)[:6]) + ", ..." * (len(values) > 6)
        advice = (
            "map them to -1/+1 first, as Dataset.for_model('logistic') does"
            if len(values) <= 2
            else "use the softmax or mlp model (--model softmax or mlp)"
        )
        counted = "1 value" if len(values) == 1 else f"{len(values)} values"
        raise ValueError(
            "logistic regression needs two classes labelled -1/+1 or 0/1; "
            f"the labels take {counted} ({shown}): {advice}"
        )
    return np.where(np.asarray(labels) > 0, 1.0, -1.0)


def _class_labels(labels: npt.NDArray[Any], classes: int) -> npt.NDArray[np.intp]:
    """Class indices 0..C-1 from 0..C-1 labels, or from -1/+1 ones (-1 is class 0)."""
    values = _label_values(labels)
    array = np.asarray(labels)
    if set(values.tolist()) <= {-1, 1}:
        return (array > 0).astype(np.intp)
    if values[0] < 0 or values[-1] >= classes:
        raise ValueError(
            f"this model needs class labels 0..{classes - 1} (or -1/+1); found labels "
            f"from {values[0]:g} to {values[-1]:g}"
        )
    return array.astype(np.intp)


def _check_features(features: Features, labels: npt.NDArray[Any]) -> None:
    if len(features.shape) != 2 or features.shape[0] != labels.shape[0] or features.shape[0] < 1:
        raise ValueError(
            f"features of shape {features.shape} and {labels.shape[0]} labels: need one row per label"
        )
    from .dataset import non_finite_row  # noqa: PLC0415 - (dataset imports this module)

    if (row := non_finite_row(features)) is not None:  # (else x_0's snapshot blamed the step: an audit)
        raise ValueError(f"features: sample {row} has NaN or infinite values")


class _Samples:
    """Features and (prepared) labels; the rows of the last mini-batch, sliced once for both gradients."""

    features: Features
    labels: npt.NDArray[Any]

    def _batch(self, rows: Rows | None) -> tuple[Features, npt.NDArray[Any]]:
        if rows is None:
            return self.features, self.labels
        cached = self.__dict__.get("_cached")
        if cached is not None and cached[0] is rows:
            return cached[1], cached[2]
        block = (self.features[rows], self.labels[rows])
        # The inner loop asks twice for the same rows (at x_hat and at x_snap): slice once.
        self.__dict__["_cached"] = (rows, *block)
        return block

    def _sparse_batch(self, rows: Rows) -> tuple[npt.NDArray[Any], ...] | None:
        """CSR features' mini-batch as flat arrays ``(columns, values, row of each, labels)``; else None.

        Slicing a CSR matrix by rows costs scipy about as much as the whole gradient (180 of 360 us
        for 64 a9a rows on the project's slower VM); indexing its three arrays costs a few numpy calls.
        Cached by ``rows``, as :meth:`_batch` is.
        """
        features: Any = self.features  # a csr_matrix or csr_array (checked below)
        if getattr(features, "format", None) != "csr":
            return None
        cached = self.__dict__.get("_cached_sparse")
        if cached is not None and cached[0] is rows:
            block: tuple[npt.NDArray[Any], ...] = cached[1]
            return block
        key, rows = rows, np.asarray(rows)
        indptr = features.indptr
        starts = indptr[:-1][rows]  # (views: negative rows count from the end, as in numpy)
        lengths = indptr[1:][rows] - starts
        ends = np.cumsum(lengths)
        # Positions of every stored entry of the rows, in order: row r's run starts at starts[r].
        total = int(ends[-1]) if ends.size else 0
        positions = np.repeat(starts - (ends - lengths), lengths) + np.arange(total)
        block = (
            features.indices[positions],
            features.data[positions],
            np.repeat(np.arange(rows.shape[0]), lengths),
            self.labels[rows],
        )
        self.__dict__["_cached_sparse"] = (key, block)
        return block

    @property
    def samples(self) -> int:
        """The number of samples."""
        return int(self.labels.shape[0])


class LogisticRegression(_Samples):
    """Binary logistic regression: ``f_i(x) = log(1 + exp(-y_i (a_i . w + b)))``.

    Labels -1/+1 (0/1 are read as -1/+1).  Parameters: ``w`` (one per feature), then the
    intercept ``b`` if ``bias`` (off by default: the paper's objective has none).
    """

    name = "logistic"

    def __init__(self, features: Features, labels: npt.NDArray[Any], *, bias: bool = False) -> None:
        labels = np.asarray(labels)
        _check_features(features, labels)
        self.features, self.labels = features, _binary_labels(labels)
        self.bias = bias
        self.dim = int(features.shape[1]) + int(bias)

    def _margins(self, x: Array, features: Features) -> Array:
        scores = np.asarray(features @ (x[:-1] if self.bias else x), dtype=np.float64).reshape(-1)
        return scores + x[-1] if self.bias else scores

    def _rows(self, rows: Rows | None) -> tuple[Any, npt.NDArray[Any]]:
        """The block of ``rows`` (all with None) and its labels.

        A CSR mini-batch comes as its flat arrays (:meth:`_sparse_batch`: a . w and A^T weights
        are then weighted bincounts over its entries), anything else as the features.
        """
        sparse = None if rows is None else self._sparse_batch(rows)
        return (sparse, sparse[3]) if sparse is not None else self._batch(rows)

    def _scores(self, x: Array, block: Any) -> Any:
        """``a . w (+ b)`` for each row of a block from :meth:`_rows`."""
        if not isinstance(block, tuple):
            return self._margins(x, block)
        columns, values, row_of, labels = block
        w = x[:-1] if self.bias else x
        scores = np.bincount(row_of, weights=values * w[columns], minlength=labels.shape[0])
        return scores + x[-1] if self.bias else scores

    def _transposed(self, weights: Array, block: Any) -> Array:
        """``A^T weights`` over a block from :meth:`_rows`, then the intercept's sum if ``bias``."""
        if isinstance(block, tuple):
            columns, values, row_of, _ = block
            # (astype: bincount gives int64 zeros for a batch without entries.)
            size = self.dim - int(self.bias)
            grad: Array = np.bincount(columns, weights=values * weights[row_of], minlength=size).astype(
                np.float64, copy=False
            )
        else:
            grad = np.asarray(block.T @ weights, dtype=np.float64).reshape(-1)
        return np.append(grad, weights.sum()) if self.bias else grad

    def loss_grad(self, x: Array, rows: Rows | None = None) -> tuple[float, Array]:
        """See :meth:`Objective.loss_grad`."""
        block, labels = self._rows(rows)
        margins = labels * self._scores(x, block)
        weights = -labels * expit(-margins)
        return -float(log_expit(margins).sum()), self._transposed(weights, block)

    def grad_difference(self, x: Array, y: Array, rows: Rows) -> Array:
        """See :class:`Objective`: one ``A^T`` product of the two points' weights, and no loss."""
        block, labels = self._rows(rows)
        # -y expit(-y m) at x, minus the same at y.
        weights = labels * (expit(-labels * self._scores(y, block)) - expit(-labels * self._scores(x, block)))
        return self._transposed(weights, block)

    def correct(self, x: Array) -> int:
        """Samples on the right side of the hyperplane."""
        return int(np.count_nonzero(self.labels * self._margins(x, self.features) > 0))

    def initial(self, rng: np.random.Generator) -> Array:
        """Zeros."""
        return np.zeros(self.dim)


class SoftmaxRegression(_Samples):
    """Multinomial logistic regression over C classes (labels 0..C-1, or -1/+1 read as 0/1).

    ``f_i(x) = log sum_c exp(s_ic) - s_i,y_i`` with scores ``s_i = a_i W (+ b)``;
    parameters: the (features x classes) matrix W flattened row by row, then the C intercepts b if ``bias``.
    """

    name = "softmax"

    def __init__(
        self, features: Features, labels: npt.NDArray[Any], classes: int | None = None, *, bias: bool = False
    ) -> None:
        labels = np.asarray(labels)
        _check_features(features, labels)
        classes = class_count_of(labels) if classes is None else classes
        if classes < 2:
            raise ValueError("softmax regression needs at least two classes")
        self.features, self.labels = features, _class_labels(labels, classes)
        self.inputs, self.classes, self.bias = int(features.shape[1]), classes, bias
        self.dim = (self.inputs + int(bias)) * classes

    def _scores(self, x: Array, features: Features) -> Array:
        size = self.inputs * self.classes
        scores = np.asarray(features @ x[:size].reshape(self.inputs, self.classes))
        return scores + x[size:] if self.bias else scores

    def loss_grad(self, x: Array, rows: Rows | None = None) -> tuple[float, Array]:
        """See :meth:`Objective.loss_grad`."""
        features, labels = self._batch(rows)
        scores = self._scores(x, features)
        index = np.arange(scores.shape[0])
        normaliser = logsumexp(scores, axis=1)
        loss = float((normaliser - scores[index, labels]).sum())
        delta = np.exp(scores - normaliser[:, None])
        delta[index, labels] -= 1.0
        grad = np.asarray(features.T @ delta).reshape(-1)
        if self.bias:
            grad = np.concatenate([grad, delta.sum(axis=0)])
        return loss, grad

    def grad_difference(self, x: Array, y: Array, rows: Rows) -> Array:
        """See :class:`Objective`: the class probabilities' difference through one ``A^T`` product.

        The gradient's ``delta`` is the probabilities less one at the label, so the labels cancel.
        """
        features, _ = self._batch(rows)
        delta = _softmax(self._scores(x, features))
        delta -= _softmax(self._scores(y, features))
        grad = np.asarray(features.T @ delta).reshape(-1)
        return np.concatenate([grad, delta.sum(axis=0)]) if self.bias else grad

    def correct(self, x: Array) -> int:
        """Samples whose highest score is their class."""
        return int(np.count_nonzero(self._scores(x, self.features).argmax(axis=1) == self.labels))

    def initial(self, rng: np.random.Generator) -> Array:
        """Zeros."""
        return np.zeros(self.dim)


class MLP(_Samples):
    """A fully connected network with ReLU hidden layers and a softmax output.

    ``layers = (inputs, hidden..., classes)``; ``(784, 100, 10)`` is the 3-layer network
    (input, hidden, output) used for MNIST.  Parameters are the weight matrices and bias
    vectors, flattened in layer order; ``f_i`` is the cross-entropy of sample i.
    """

    name = "mlp"

    def __init__(self, features: Features, labels: npt.NDArray[Any], layers: tuple[int, ...]) -> None:
        labels = np.asarray(labels)
        _check_features(features, labels)
        if len(layers) < 2 or min(layers) < 1 or layers[-1] < 2:
            raise ValueError("layers: inputs, hidden sizes..., at least two classes")
        if layers[0] != features.shape[1]:
            raise ValueError(f"the first layer has {layers[0]} inputs, the data {features.shape[1]} features")
        self.features, self.labels = features, _class_labels(labels, layers[-1])
        self.layers = tuple(layers)
        self._shapes = list(itertools.pairwise(layers))
        self.dim = sum(a * b + b for a, b in self._shapes)

    def _unpack(self, x: Array) -> list[tuple[Array, Array]]:
        params, offset = [], 0
        for fan_in, fan_out in self._shapes:
            weights = x[offset : offset + fan_in * fan_out].reshape(fan_in, fan_out)
            offset += fan_in * fan_out
            bias = x[offset : offset + fan_out]
            offset += fan_out
            params.append((weights, bias))
        return params

    def _forward(self, x: Array, features: Features) -> tuple[list[tuple[Array, Array]], list[Any], Array]:
        params = self._unpack(x)
        activations: list[Any] = [features]
        for weights, bias in params[:-1]:
            activations.append(np.maximum(np.asarray(activations[-1] @ weights) + bias, 0.0))
        weights, bias = params[-1]
        return params, activations, np.asarray(activations[-1] @ weights) + bias

    def loss_grad(self, x: Array, rows: Rows | None = None) -> tuple[float, Array]:
        """See :meth:`Objective.loss_grad` (backpropagation)."""
        features, labels = self._batch(rows)
        params, activations, scores = self._forward(x, features)
        index = np.arange(scores.shape[0])
        normaliser = logsumexp(scores, axis=1)
        loss = float((normaliser - scores[index, labels]).sum())
        delta = np.exp(scores - normaliser[:, None])
        delta[index, labels] -= 1.0
        grads: list[Array] = []
        for layer in range(len(params) - 1, -1, -1):
            weights, _ = params[layer]
            below = activations[layer]
            grads.append(delta.sum(axis=0))
            grads.append(np.asarray(below.T @ delta).reshape(-1))
            if layer:
                delta = (delta @ weights.T) * (activations[layer] > 0)
        return loss, np.concatenate(grads[::-1])

    def correct(self, x: Array) -> int:
        """Samples whose highest score is their class."""
        return int(np.count_nonzero(self._forward(x, self.features)[2].argmax(axis=1) == self.labels))

    def initial(self, rng: np.random.Generator) -> Array:
        """Glorot-uniform weights, zero biases."""
        parts = []
        for fan_in, fan_out in self._shapes:
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            parts.append(rng.uniform(-limit, limit, fan_in * fan_out))
            parts.append(np.zeros(fan_out))
        return np.concatenate(parts)


def class_count_of(labels: npt.NDArray[Any]) -> int:
    """Number of classes: 2 for -1/+1 labels, else the largest label plus one."""
    return int(labels.max()) + 1 if labels.size and labels.min() >= 0 else 2


def make_objective(
    name: str,
    features: Features,
    labels: npt.NDArray[Any],
    *,
    classes: int | None = None,
    hidden: int = 100,
    bias: bool = False,
) -> Objective:
    """A built-in model by name (``logistic``, ``softmax`` or ``mlp``) on these samples.

    Args:
        name: the model.
        features: the samples, one row each (dense array or CSR).
        labels: their labels: -1/+1 or 0/1 for logistic regression, 0..C-1 (or -1/+1) otherwise.
        classes: the number of classes C (default: from the labels; give the whole dataset's
            when these are one worker's share).
        hidden: the MLP's hidden units.
        bias: an intercept for logistic and softmax regression.

    Raises:
        ValueError: for an unknown name, or labels the model cannot learn from.
    """
    labels = np.asarray(labels)
    if name == "logistic":
        return LogisticRegression(features, labels, bias=bias)
    if name == "softmax":
        return SoftmaxRegression(features, labels, classes, bias=bias)
    if name == "mlp":
        count = class_count_of(labels) if classes is None else classes
        return MLP(features, labels, (int(features.shape[1]), hidden, count))
    raise ValueError(f"unknown model {name!r}: choose {', '.join(BUILT_IN)}, or give your own objective")
