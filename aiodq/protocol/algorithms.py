"""The AsyLPG family and its baselines: update rules, pure numpy (docs/algorithms.md 5-9).

Two halves per algorithm, both free of I/O and clocks:

- :class:`MasterState` holds x, the snapshot, g_snap, the version counter and
  (for the accelerated variants) y and theta; it quantizes models for workers
  and applies their gradients under the staleness bound.
- :class:`WorkerState` holds the worker's shard, rebuilds the models it
  receives, and computes and quantizes gradients.

| name           | model to workers        | gradient to master                  | momentum |
|----------------|-------------------------|-------------------------------------|----------|
| asylpg         | mu-quantized            | b-bit quantized alpha               | no       |
| sparse-asylpg  | mu-quantized            | sparsified (phi), b-bit alpha       | no       |
| acc-asylpg     | mu-quantized            | b-bit quantized alpha               | yes      |
| asyfpg         | float32                 | float32 alpha                       | no       |
| acc-asyfpg     | float32                 | float32 alpha                       | yes      |
| qsvrg          | float32                 | QSGD(s) of alpha + g_snap           | no       |
| model-only     | mu-quantized            | float32 alpha                       | no       |

``alpha = grad f_B(x_hat) - grad f_B(x_snap)`` (mean over the mini-batch B,
plus the L2 term), where ``x_hat`` is the model the worker received.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from ..codec.lowp import make_rng, quantize_gradient, quantize_model
from ..codec.qsgd import quantize_qsgd
from ..codec.sparse import quantize_sparse
from ..codec.vectors import EqualsSnapshot, RawVector, Vector, ZeroVector, to_wire_precision
from ..config import option
from ..errors import CheckpointError
from .objectives import Objective, Regularizer, Rows

__all__ = [
    "ALGORITHMS",
    "MODEL_LIMIT",
    "AlgorithmSpec",
    "ApplyOutcome",
    "MasterState",
    "TrainConfig",
    "WorkerState",
    "initial_model",
]

Array = npt.NDArray[np.floating[Any]]


@dataclass(frozen=True, slots=True)
class AlgorithmSpec:
    """How one algorithm communicates."""

    #: ``"quantized"`` (the mu-constraint) or ``"float32"``.
    model: str
    #: ``"dense"``, ``"sparse"``, ``"qsgd"`` or ``"float32"``.
    gradient: str
    #: True for the momentum (Acc-) variants.
    accelerated: bool = False
    #: True if workers need g_snap (QSVRG sends the full semi-stochastic gradient).
    needs_full_gradient: bool = False
    #: The full-precision counterpart, for bit savings.
    baseline: str = "asyfpg"
    #: The step size eta used when the configuration leaves it at 0.
    default_step: float = 0.5


#: Every algorithm by name (docs/algorithms.md 5-8).
ALGORITHMS: dict[str, AlgorithmSpec] = {
    "asylpg": AlgorithmSpec("quantized", "dense"),
    # The sparsifier's variance grows like d / phi: a smaller default step.
    "sparse-asylpg": AlgorithmSpec("quantized", "sparse", default_step=0.2),
    "acc-asylpg": AlgorithmSpec("quantized", "dense", accelerated=True, baseline="acc-asyfpg"),
    "asyfpg": AlgorithmSpec("float32", "float32"),
    "acc-asyfpg": AlgorithmSpec("float32", "float32", accelerated=True, baseline="acc-asyfpg"),
    "qsvrg": AlgorithmSpec("float32", "qsgd", needs_full_gradient=True),
    "model-only": AlgorithmSpec("quantized", "float32"),
}

#: Step sizes that train each built-in model on its typical data in the default epochs
#: (docs/algorithms.md 1), as a factor of the algorithm's default step.
_MODEL_STEP = {"logistic": 1.0, "softmax": 1.0, "mlp": 0.4}


def default_step(algorithm: str, model: str) -> float:
    """The step size eta a configuration with ``step = 0`` trains with."""
    return ALGORITHMS[algorithm].default_step * _MODEL_STEP.get(model, 1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainConfig:
    """A training run's hyperparameters; sent to workers in CONFIG (docs/algorithms.md 5).

    Every field's help text is its documentation, and the command line's option
    (``--updates-per-epoch`` for ``updates_per_epoch``; ``--no-entropy-coding`` for
    a boolean that defaults to True): see :func:`aiodq.config.option`.
    """

    algorithm: str = option("asylpg", "algorithm (docs/algorithms.md)", choices=tuple(ALGORITHMS))
    epochs: int = option(10, "epochs S")
    updates_per_epoch: int = option(0, "applied updates per epoch m; 0: one pass over the data, n / batch")
    step: float = option(
        0.0, "step size eta; 0: the default of the model and algorithm (docs/algorithms.md 1)"
    )
    batch: int = option(64, "mini-batch size B")
    bits: int = option(8, "gradient bits b, 2 to 16")
    mu: float = option(0.5, "model precision mu of the mu-constraint")
    model_bits_cap: int = option(16, "cap on the model bits b_x; above it models travel as float32")
    entropy_coding: bool = option(
        True,
        "Rice-code quantized codes (DENSE_RICE, wire-format.md 5.8) where smaller; "
        "off: fixed-width codes (DENSE) both ways, as the paper counts bits",
    )
    adaptive_coding: bool = option(
        False,
        "Rice-code only while it makes training faster: the master measures the time per applied "
        "update with Rice-coded and with fixed-width codes and keeps the faster (docs/algorithms.md 10)",
    )
    centre: str = option("snapshot", "what the model quantizer centres on", choices=("snapshot", "zero"))
    phi: float = option(0.05, "sparsity budget phi as a fraction of d (sparse-asylpg)")
    exact_budget: bool = option(
        False, "recalibrate the keep probabilities to spend exactly phi (sparse-asylpg)"
    )
    qsgd_levels: int = option(16, "QSGD levels s (qsvrg)")
    tau: int = option(
        8, "staleness bound tau: a gradient computed on version D is applied at t only if t - D <= tau"
    )
    l2: float = option(1e-4, "L2 weight lambda2 of the regulariser")
    l1: float = option(0.0, "L1 weight lambda1 of the regulariser (proximal step)")
    acc_snapshot: str = option(
        "average", "the next snapshot of the accelerated variants", choices=("last", "average")
    )
    seed: int = option(0, "random seed (sharding, initial model, quantizer dithers)")
    model: str = option(
        "logistic",
        "the model: logistic, softmax or mlp (built in), or your objective as MODULE:NAME "
        "(docs/usage.md, Your own model)",
    )
    hidden: int = option(100, "hidden units of the MLP")
    bias: bool = option(False, "an intercept for logistic and softmax regression (the MLP always has biases)")

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
        for name in ("bits", "model_bits_cap", "tau", "seed", "updates_per_epoch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        positive_ints = ("epochs", "batch", "qsgd_levels", "hidden")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.updates_per_epoch, int) or self.updates_per_epoch < 0:
            raise ValueError("updates_per_epoch must be a non-negative integer")
        if not 2 <= self.bits <= 16:
            raise ValueError(f"bits must be between 2 and 16, got {self.bits}")
        if not 2 <= self.model_bits_cap <= 16:
            raise ValueError("model_bits_cap must be between 2 and 16")
        if self.step == 0:
            object.__setattr__(self, "step", default_step(self.algorithm, self.model))
        if not (math.isfinite(self.step) and self.step > 0):
            raise ValueError(f"step must be positive, got {self.step}")
        if not (math.isfinite(self.mu) and self.mu > 0):
            raise ValueError(f"mu must be positive, got {self.mu}")
        if not (0 < self.phi <= 1):
            raise ValueError(f"phi is a fraction of d in (0, 1], got {self.phi}")
        if not isinstance(self.tau, int) or self.tau < 0:
            raise ValueError(f"tau must be a non-negative integer, got {self.tau!r}")
        if self.centre not in ("snapshot", "zero"):
            raise ValueError("centre must be 'snapshot' or 'zero'")
        if self.acc_snapshot not in ("last", "average"):
            raise ValueError("acc_snapshot must be 'last' or 'average'")
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError("model must name a built-in model or MODULE:NAME")
        Regularizer(l2=self.l2, l1=self.l1)
        if self.adaptive_coding and not self.entropy_coding:
            raise ValueError(
                "adaptive_coding (--adaptive-coding) chooses when to Rice-code: "
                "it needs entropy_coding (leave out --no-entropy-coding)"
            )
        if self.qsgd_levels > 0xFFFF:
            raise ValueError("qsgd_levels must be at most 65535")

    @property
    def spec(self) -> AlgorithmSpec:
        """The algorithm's communication pattern."""
        return ALGORITHMS[self.algorithm]

    @property
    def regularizer(self) -> Regularizer:
        """The regulariser R."""
        return Regularizer(l2=self.l2, l1=self.l1)

    def to_params(self) -> dict[str, bool | int | float | str]:
        """The fields as a CONFIG parameter map."""
        return dict(asdict(self))

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainConfig:
        """Rebuild from a CONFIG parameter map; unknown keys are ignored.

        Raises:
            ValueError: if a value is out of range or of the wrong type.
        """
        known = {f.name: f.type for f in fields(cls)}
        values = {key: value for key, value in params.items() if key in known}
        for key, value in values.items():
            default = getattr(cls(), key)
            if isinstance(default, bool) != isinstance(value, bool):
                raise ValueError(f"parameter {key!r} has the wrong type")
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                values[key] = float(value)
            elif type(default) is not type(values[key]):
                raise ValueError(f"parameter {key!r} has the wrong type")
        return cls(**values)


def rebuild_model(vector: Vector, relative: bool, snapshot: Array) -> Array:
    """The model a worker computes on: ``x_snap + v`` for relative messages, else ``v``."""
    if isinstance(vector, EqualsSnapshot):
        return snapshot.copy()
    values = vector.to_dense(np.float64)
    if relative:
        values += snapshot
    return values


@dataclass(frozen=True, slots=True)
class ApplyOutcome:
    """What happened to one gradient at the master."""

    #: True if the update was applied.
    applied: bool
    #: t - D at receipt.
    staleness: int
    #: Why it was not applied: ``""``, ``"stale"``, ``"outlier"`` (its norm is over ``max_norm``)
    #: or ``"overflow"`` (the model would leave the range a MODEL can carry, or stop being finite).
    reason: str = ""
    #: The 2-norm of the update u = Q(alpha) + g_snap, when it was computed (``max_norm`` given).
    norm: float = 0.0


class MasterState:
    """The master's optimisation state (docs/algorithms.md 5, 7, 9)."""

    def __init__(self, config: TrainConfig, x0: Array) -> None:
        self.config = config
        self.spec = config.spec
        self.regularizer = config.regularizer
        #: The served model x.
        self.x: Array = np.array(x0, dtype=np.float64)
        #: The snapshot x_snap of the current epoch, rounded to float32 precision: the
        #: snapshot phase sends it in full precision, float32 (algorithms.md 5).
        self.snapshot = to_wire_precision(self.x)
        #: The full gradient at the snapshot, g_snap (regulariser included).
        self.full_gradient = np.zeros_like(self.x)
        #: The auxiliary sequence y of the accelerated variants.
        self.y: Array = self.x.copy()
        #: The momentum weight theta_s.
        self.theta = 1.0
        #: The model version t: applied updates so far.
        self.version = 0
        #: The current epoch s.
        self.epoch = 0
        #: Applied updates in the current epoch.
        self.applied_in_epoch = 0
        #: m, applied updates per epoch (fixed by the first snapshot phase).
        self.updates_per_epoch = config.updates_per_epoch
        #: n, the samples behind the last snapshot phase.
        self.samples = 0
        self._iterate_sum = np.zeros_like(self.x)
        #: The model quantizer's randomness: SFC64 (make_rng), which a checkpoint names.
        self._rng = make_rng([config.seed, 0xA5])
        self._buffer = np.empty_like(self.x)

    # -- checkpoints ------------------------------------------------------------

    _ARRAYS = ("x", "snapshot", "full_gradient", "y")

    def to_checkpoint(self) -> tuple[dict[str, Array], dict[str, Any]]:
        """The state as arrays and JSON-ready scalars (aiodq.net.checkpoint)."""
        arrays = {name: getattr(self, name) for name in self._ARRAYS}
        arrays["iterate_sum"] = self._iterate_sum
        meta = {
            "theta": self.theta,
            "version": self.version,
            "epoch": self.epoch,
            "applied_in_epoch": self.applied_in_epoch,
            "updates_per_epoch": self.updates_per_epoch,
            "samples": self.samples,
            "rng": _generator_state(self._rng),
        }
        return arrays, meta

    def restore(self, arrays: dict[str, Array], meta: dict[str, Any]) -> None:
        """Load what :meth:`to_checkpoint` produced, after checking every value.

        Raises:
            CheckpointError: if the checkpoint's random generator is of another kind than this
                version's (a checkpoint of an earlier version, whose quantizer drew from PCG64).
            ValueError: if an array is missing, has the wrong shape, is not finite or is beyond
                what a MODEL can carry, or a counter is not a non-negative integer.
        """
        rng = _restored_generator(self._rng, meta["rng"])
        loaded: dict[str, Array] = {}
        for name in (*self._ARRAYS, "iterate_sum"):
            if name not in arrays:
                raise ValueError(f"checkpoint array {name!r} is missing")
            value = np.asarray(arrays[name], dtype=np.float64)
            if value.shape != self.x.shape:
                raise ValueError(
                    f"checkpoint array {name!r} has shape {value.shape}, expected {self.x.shape}"
                )
            limit = (
                MODEL_LIMIT * max(1, int(meta.get("applied_in_epoch", 1)))
                if name == "iterate_sum"
                else MODEL_LIMIT
            )
            if not (np.isfinite(value).all() and float(np.abs(value).max()) <= limit):
                raise ValueError(f"checkpoint array {name!r} is not finite or beyond what a MODEL can carry")
            loaded[name] = value.copy()
        counters = {}
        for name in ("version", "epoch", "applied_in_epoch", "updates_per_epoch", "samples"):
            value = meta[name]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"checkpoint counter {name!r} is {value!r}, not a non-negative integer")
            counters[name] = value
        theta = meta["theta"]
        if not isinstance(theta, int | float) or not 0 < theta <= 1:
            raise ValueError(f"checkpoint theta {theta!r} is not in (0, 1]")
        self._rng = rng
        for name, array in loaded.items():
            setattr(self, "_iterate_sum" if name == "iterate_sum" else name, array)
        self.theta = float(theta)
        self.version = counters["version"]
        self.epoch = counters["epoch"]
        self.applied_in_epoch = counters["applied_in_epoch"]
        self.updates_per_epoch = counters["updates_per_epoch"]
        self.samples = counters["samples"]

    # -- epochs ---------------------------------------------------------------

    def finish_snapshot_phase(self, gradient_sum: Array, loss_sum: float, samples: int) -> float:
        """Form g_snap and F(x_snap) from the workers' sums over ``samples``; return F(x_snap).

        Raises:
            ValueError: if ``samples`` is not positive.
        """
        if samples < 1:
            raise ValueError("a snapshot phase needs at least one sample")
        self.samples = samples
        if not self.updates_per_epoch:
            self.updates_per_epoch = max(1, math.ceil(samples / self.config.batch))
        self.full_gradient = gradient_sum / self.samples + self.regularizer.l2 * self.snapshot
        loss = loss_sum / self.samples + self.regularizer.value(self.snapshot)
        if self.spec.accelerated:
            # algorithms.md 7: the served model is x_snap + theta (y - x_snap).
            self.x = self.snapshot + self.theta * (self.y - self.snapshot)
        else:
            self.x = self.snapshot.copy()
        self._iterate_sum[:] = 0.0
        self.applied_in_epoch = 0
        return loss

    @property
    def epoch_done(self) -> bool:
        """True once m updates were applied in this epoch."""
        return self.applied_in_epoch >= self.updates_per_epoch

    def end_epoch(self) -> None:
        """algorithms.md 5.3 and 7: the next snapshot (and theta), then the next epoch number."""
        if self.spec.accelerated:
            if self.config.acc_snapshot == "average" and self.applied_in_epoch:
                self.snapshot = to_wire_precision(self._iterate_sum / self.applied_in_epoch)
            else:
                self.snapshot = to_wire_precision(self.x)
            theta = self.theta
            self.theta = (math.sqrt(theta**4 + 4 * theta**2) - theta**2) / 2
        else:
            self.snapshot = to_wire_precision(self.x)
        self.epoch += 1

    # -- the inner loop -------------------------------------------------------

    def model_message(self) -> tuple[Vector, bool]:
        """The model to send now: ``(vector, relative)`` (algorithms.md 4)."""
        if self.spec.model == "float32":
            return RawVector(self.x.astype(np.float32)), False
        payload = quantize_model(
            self.x,
            self.snapshot,
            self.config.mu,
            self._rng,
            centre=self.config.centre,
            max_bits=self.config.model_bits_cap,
        )
        return payload.vector, payload.relative

    def apply(self, vector: Vector, version: int, *, max_norm: float | None = None) -> ApplyOutcome:
        """Apply a gradient computed on model ``version``, unless it is refused.

        Refused: a gradient staler than tau (algorithms.md 9); with ``max_norm``, an update
        u = Q(alpha) + g_snap whose 2-norm is larger (the master's guard, docs/security.md); and
        an update after which the model could not travel in a MODEL (a coordinator beyond
        :data:`MODEL_LIMIT`, or not finite).  A refused update changes nothing.
        """
        staleness = self.version - version
        if staleness > self.config.tau:
            return ApplyOutcome(False, staleness, "stale")
        update = vector.to_dense(np.float64)
        if not self.spec.needs_full_gradient:
            update += self.full_gradient  # u = Q(alpha) + g_snap
        norm = 0.0
        if max_norm is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                norm = math.sqrt(float(np.dot(update, update)))
            if not norm <= max_norm:  # NaN included
                return ApplyOutcome(False, staleness, "outlier", norm)
        step = self.config.step
        if self.spec.accelerated:
            # algorithms.md 7: y = prox(y - (eta / theta) u), x = x_snap + theta (y - x_snap).
            scaled = step / self.theta
            update *= -scaled
            update += self.y
            y = self.regularizer.prox(update, scaled)
            x = np.subtract(y, self.snapshot, out=self._buffer)
            x *= self.theta
            x += self.snapshot
            if not (_encodable(x) and _encodable(y)):
                return ApplyOutcome(False, staleness, "overflow", norm)
            self.y = y
            self.x, self._buffer = x, self.x
            self._iterate_sum += x
        else:
            # algorithms.md 5: x = prox(x - eta u), computed apart and kept only if encodable.
            update *= -step
            update += self.x
            x = self.regularizer.prox(update, step)
            if not _encodable(x):
                return ApplyOutcome(False, staleness, "overflow", norm)
            self.x = x
        self.version += 1
        self.applied_in_epoch += 1
        return ApplyOutcome(True, staleness, "", norm)


def _generator_state(rng: np.random.Generator) -> dict[str, Any]:
    """The generator's state as JSON: numpy's state dict (it names the bit generator), arrays as lists."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value.tolist() if isinstance(value, np.ndarray) else value

    state: dict[str, Any] = plain(rng.bit_generator.state)
    return state


def _restored_generator(current: np.random.Generator, state: Any) -> np.random.Generator:
    """A new generator of ``current``'s kind in the checkpointed ``state``; ``current`` is untouched.

    Raises:
        CheckpointError: if ``state`` names another bit generator.
        ValueError: if the state does not fit the bit generator.
    """
    kind = type(current.bit_generator)
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name != kind.__name__:
        raise CheckpointError(
            f"the checkpoint's quantizer drew from the {name!r} random generator, this version of "
            f"aiodq draws from {kind.__name__}: resume it with the aiodq version that wrote it"
        )

    def arrays(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: arrays(item) for key, item in value.items()}
        return np.array(value, dtype=np.uint64) if isinstance(value, list) else value

    bit_generator = kind(0)
    bit_generator.state = arrays(state)
    return np.random.Generator(bit_generator)


#: The largest model coordinate the master keeps: a quarter of the largest float32, so that x,
#: x_snap (rounded to float32) and x - x_snap all travel in a MODEL, whichever encoding it takes.
MODEL_LIMIT = float(np.finfo(np.float32).max) / 4


def _encodable(values: Array) -> bool:
    """True if every coordinate is finite and within MODEL_LIMIT (NaN fails the comparisons)."""
    return bool(values.min() >= -MODEL_LIMIT) and bool(values.max() <= MODEL_LIMIT)


def initial_model(config: TrainConfig, objective: Objective) -> Array:
    """x_0: the objective's starting point, drawn with ``config.seed``.

    Raises:
        ValueError: if it is not a finite vector of the objective's dimension.
    """
    x0 = np.asarray(objective.initial(np.random.default_rng([config.seed, 0x1417])), dtype=np.float64)
    if x0.shape != (objective.dim,) or not np.isfinite(x0).all():
        raise ValueError(
            f"{type(objective).__name__}.initial() must give {objective.dim} finite values, "
            f"got shape {x0.shape}"
        )
    return x0


class WorkerState:
    """A worker's state: its shard, the snapshot, and the gradient computation (algorithms.md 5)."""

    def __init__(self, config: TrainConfig, objective: Objective, worker_id: int) -> None:
        self.config = config
        self.spec = config.spec
        self.objective = objective
        self.dim = int(objective.dim)
        self.samples = int(objective.samples)
        self.snapshot = np.zeros(self.dim)
        self.full_gradient = np.zeros(self.dim)
        self._rng = make_rng([config.seed, 0x5EED, worker_id])
        self._budget = max(1.0, config.phi * self.dim)
        self._correct = getattr(objective, "correct", None)
        # The next step's model-free half (prepare): its mini-batch, and grad f_B(x_snap) on it.
        self._next_rows: Rows | None = None
        self._next_at_snapshot: Array | None = None

    def _loss_grad(self, x: Array, rows: Rows | None) -> tuple[float, Array]:
        """The objective's sums, checked: a finite loss and a float64 gradient of length d."""
        loss, grad = self.objective.loss_grad(x, rows)
        grad = np.asarray(grad, dtype=np.float64).reshape(-1)
        if grad.shape[0] != self.dim:
            raise ValueError(f"the objective's gradient has {grad.shape[0]} values, not {self.dim}")
        return float(loss), grad

    def snapshot_phase(self, snapshot: Array) -> tuple[float, Array, int]:
        """Store x_snap; return the sums over the shard: ``(loss, gradient, correct)``."""
        self.snapshot = np.array(snapshot, dtype=np.float64)
        self._next_at_snapshot = None  # computed at the old snapshot; the drawn rows stay
        loss, grad = self._loss_grad(self.snapshot, None)
        correct = int(self._correct(self.snapshot)) if self._correct is not None else 0
        return loss, grad, correct

    def set_full_gradient(self, full_gradient: Array) -> None:
        """Store g_snap (QSVRG)."""
        self.full_gradient = np.array(full_gradient, dtype=np.float64)

    def gradient_message(self, vector: Vector, relative: bool) -> Vector:
        """Rebuild the received model, sample a mini-batch, and return the gradient to send."""
        return self.compress(self.variance_reduced(vector, relative))

    def prepare(self) -> None:
        """Do the next step's model-free half now, while its MODEL is on the way (algorithms.md 5.2).

        Draws the next mini-batch and computes grad f_B(x_snap) on it, which
        :meth:`variance_reduced` then uses instead of computing them after the MODEL
        arrives.  The result is the same bit for bit: between two steps the next draw
        from the generator is always the mini-batch, so drawing it early keeps the
        order, and a new snapshot (:meth:`snapshot_phase`) recomputes the term.
        Calling it again before the next step does nothing.
        """
        if self._next_rows is None:
            # Mini-batches are drawn with replacement: O(B) per draw, whatever the shard size.
            self._next_rows = self._rng.integers(0, self.samples, size=self.config.batch)
        if self._next_at_snapshot is None:
            self._next_at_snapshot = self._loss_grad(self.snapshot, self._next_rows)[1]

    def variance_reduced(self, vector: Vector, relative: bool) -> Array:
        """The computation: ``alpha = grad f_B(x_hat) - grad f_B(x_snap)`` (+ L2) on a fresh mini-batch."""
        x_hat = rebuild_model(vector, relative, self.snapshot)
        self.prepare()  # a no-op if the shell already called it
        rows, at_snapshot = self._next_rows, self._next_at_snapshot
        assert rows is not None and at_snapshot is not None
        self._next_rows = self._next_at_snapshot = None
        batch = self.config.batch
        _, at_model = self._loss_grad(x_hat, rows)
        alpha = (at_model - at_snapshot) / batch
        alpha += self.config.l2 * (x_hat - self.snapshot)
        return alpha

    def compress(self, alpha: Array) -> Vector:
        """The encoding: ``alpha`` as the algorithm sends it (quantized, sparsified, QSGD or float32)."""
        kind = self.spec.gradient
        if kind == "float32":
            return RawVector(alpha.astype(np.float32)) if alpha.any() else ZeroVector(alpha.shape[0])
        if kind == "dense":
            return quantize_gradient(alpha, self.config.bits, self._rng)
        if kind == "sparse":
            return quantize_sparse(
                alpha, self._budget, self.config.bits, self._rng, exact=self.config.exact_budget
            )
        return quantize_qsgd(alpha + self.full_gradient, self.config.qsgd_levels, self._rng)
