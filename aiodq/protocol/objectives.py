"""Objectives in numpy: logistic regression, softmax regression and an MLP (docs/algorithms.md 1).

Each model computes, for a parameter vector ``x`` and a block of samples, the
*sums* over those samples of the data losses and their gradients, and the
number of samples classified correctly.  Sums (not means) let workers report
partial results that the master adds up exactly.

The regulariser ``R(x) = l2 / 2 ||x||^2 + l1 ||x||_1`` is separate
(:class:`Regularizer`): the smooth L2 part is added to gradients, the L1 part is
applied by its proximal operator (soft thresholding).
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # scipy is optional: sparse features work through the @ operator alone
    import scipy.sparse as sp

__all__ = [
    "MLP",
    "Features",
    "LogisticRegression",
    "Objective",
    "Regularizer",
    "SoftmaxRegression",
    "make_objective",
]

Array = npt.NDArray[np.floating[Any]]
#: Features: a dense float64 array or a scipy CSR matrix, one row per sample.
Features: TypeAlias = "npt.NDArray[np.float64] | sp.csr_matrix"


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


class Objective(ABC):
    """A differentiable data loss ``f_i(x)``, summed over blocks of samples."""

    #: Number of parameters d.
    dim: int

    @abstractmethod
    def loss_grad(self, x: Array, features: Features, labels: npt.NDArray[Any]) -> tuple[float, Array, int]:
        """Return ``(sum of losses, sum of gradients, number correct)`` over the samples."""

    @abstractmethod
    def initial(self, rng: np.random.Generator) -> Array:
        """A starting point x_0."""

    def describe(self) -> dict[str, Any]:
        """The model's name and shape, for results and CONFIG."""
        return {"model": type(self).__name__, "dim": self.dim}

    def prepare_labels(self, labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """The labels as :meth:`loss_grad` reads them (checked once, before training).

        Raises:
            ValueError: if this model cannot learn from these labels; the text says why.
        """
        return labels


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
        shown = sorted(values)[:6]
        raise ValueError(
            f"logistic regression needs two classes labelled -1/+1 or 0/1; the labels take "
            f"{len(values)} values ({', '.join(map(str, shown))}{', ...' if len(values) > 6 else ''}): "
            "use --model softmax or mlp"
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


class LogisticRegression(Objective):
    """Binary logistic regression, labels -1/+1: ``f_i(x) = log(1 + exp(-y_i a_i . x))``."""

    def __init__(self, features: int) -> None:
        if features < 1:
            raise ValueError("need at least one feature")
        self.dim = features

    def loss_grad(self, x: Array, features: Features, labels: npt.NDArray[Any]) -> tuple[float, Array, int]:
        """See :meth:`Objective.loss_grad`."""
        margins = labels * (features @ x)
        loss = -float(log_expit(margins).sum())
        weights = -labels * expit(-margins)
        grad = np.asarray(features.T @ weights, dtype=np.float64).reshape(-1)
        return loss, grad, int(np.count_nonzero(margins > 0))

    def initial(self, rng: np.random.Generator) -> Array:
        """Zeros."""
        return np.zeros(self.dim)

    def prepare_labels(self, labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """-1/+1 (0/1 labels are mapped: 0 to -1)."""
        return _binary_labels(labels)


class SoftmaxRegression(Objective):
    """Multinomial logistic regression, labels 0..C-1; x is the (features x classes) matrix, flattened."""

    def __init__(self, features: int, classes: int) -> None:
        if features < 1 or classes < 2:
            raise ValueError("need at least one feature and two classes")
        self.features, self.classes = features, classes
        self.dim = features * classes

    def loss_grad(self, x: Array, features: Features, labels: npt.NDArray[Any]) -> tuple[float, Array, int]:
        """See :meth:`Objective.loss_grad`."""
        weights = x.reshape(self.features, self.classes)
        scores = np.asarray(features @ weights)
        rows = np.arange(scores.shape[0])
        normaliser = logsumexp(scores, axis=1)
        loss = float((normaliser - scores[rows, labels]).sum())
        probabilities = np.exp(scores - normaliser[:, None])
        correct = int(np.count_nonzero(scores.argmax(axis=1) == labels))
        probabilities[rows, labels] -= 1.0
        grad = np.asarray(features.T @ probabilities).reshape(-1)
        return loss, grad, correct

    def initial(self, rng: np.random.Generator) -> Array:
        """Zeros."""
        return np.zeros(self.dim)

    def describe(self) -> dict[str, Any]:
        """See :meth:`Objective.describe`."""
        return {"model": "SoftmaxRegression", "dim": self.dim, "classes": self.classes}

    def prepare_labels(self, labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Class indices 0..C-1 (-1/+1 labels are mapped: -1 to 0)."""
        return _class_labels(labels, self.classes)


class MLP(Objective):
    """A fully connected network with ReLU hidden layers and a softmax output.

    ``layers = (inputs, hidden..., classes)``; the default ``(784, 100, 10)`` is
    the 3-layer network (input, hidden, output) used for MNIST.  Parameters are
    the weight matrices and bias vectors, flattened in layer order.
    """

    def __init__(self, layers: tuple[int, ...] = (784, 100, 10)) -> None:
        if len(layers) < 2 or min(layers) < 1 or layers[-1] < 2:
            raise ValueError("layers: inputs, hidden sizes..., at least two classes")
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

    def loss_grad(self, x: Array, features: Features, labels: npt.NDArray[Any]) -> tuple[float, Array, int]:
        """See :meth:`Objective.loss_grad` (backpropagation)."""
        params = self._unpack(x)
        activations: list[Any] = [features]
        for weights, bias in params[:-1]:
            activations.append(np.maximum(np.asarray(activations[-1] @ weights) + bias, 0.0))
        weights, bias = params[-1]
        scores = np.asarray(activations[-1] @ weights) + bias
        rows = np.arange(scores.shape[0])
        normaliser = logsumexp(scores, axis=1)
        loss = float((normaliser - scores[rows, labels]).sum())
        correct = int(np.count_nonzero(scores.argmax(axis=1) == labels))
        delta = np.exp(scores - normaliser[:, None])
        delta[rows, labels] -= 1.0
        grads: list[Array] = []
        for layer in range(len(params) - 1, -1, -1):
            weights, _ = params[layer]
            below = activations[layer]
            grads.append(delta.sum(axis=0))
            grads.append(np.asarray(below.T @ delta).reshape(-1))
            if layer:
                delta = (delta @ weights.T) * (activations[layer] > 0)
        return loss, np.concatenate(grads[::-1]), correct

    def initial(self, rng: np.random.Generator) -> Array:
        """Glorot-uniform weights, zero biases."""
        parts = []
        for fan_in, fan_out in self._shapes:
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            parts.append(rng.uniform(-limit, limit, fan_in * fan_out))
            parts.append(np.zeros(fan_out))
        return np.concatenate(parts)

    def describe(self) -> dict[str, Any]:
        """See :meth:`Objective.describe`."""
        return {"model": "MLP", "dim": self.dim, "layers": list(self.layers)}

    def prepare_labels(self, labels: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Class indices 0..C-1 (-1/+1 labels are mapped: -1 to 0)."""
        return _class_labels(labels, self.layers[-1])


def make_objective(name: str, features: int, classes: int = 2, hidden: int = 100) -> Objective:
    """Build a model by name: ``logistic``, ``softmax`` or ``mlp``.

    Raises:
        ValueError: for an unknown name.
    """
    if name == "logistic":
        return LogisticRegression(features)
    if name == "softmax":
        return SoftmaxRegression(features, classes)
    if name == "mlp":
        return MLP((features, hidden, classes))
    raise ValueError(f"unknown model {name!r}: choose logistic, softmax or mlp")
