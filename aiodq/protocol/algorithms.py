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
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..codec.lowp import make_rng, quantize_gradient, quantize_model
from ..codec.qsgd import quantize_qsgd
from ..codec.sparse import quantize_sparse
from ..codec.vectors import EqualsSnapshot, RawVector, Vector, ZeroVector, to_wire_precision
from ..errors import CheckpointError, NonFiniteError
from .objectives import Objective, Rows, difference_method
from .trainconfig import ALGORITHMS, AlgorithmSpec, TrainConfig, default_step

__all__ = [
    "ALGORITHMS",
    "MODEL_LIMIT",
    "AlgorithmSpec",
    "ApplyOutcome",
    "MasterState",
    "TrainConfig",
    "WorkerState",
    "default_step",
    "initial_model",
]

Array = npt.NDArray[np.floating[Any]]


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
        #: The last snapshot whose F a snapshot phase has computed (the last one of the run's
        #: trace), or None: between an epoch's end and the next phase's end, ``snapshot`` is
        #: already the next one.
        self.evaluated: Array | None = None
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
        if self.evaluated is not None and self.evaluated is not self.snapshot:  # (in a snapshot phase)
            arrays["evaluated"] = self.evaluated
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
        optional = ("evaluated",) if "evaluated" in arrays else ()  # (not in earlier checkpoints)
        for name in (*self._ARRAYS, "iterate_sum", *optional):
            if name not in arrays:
                raise ValueError(f"checkpoint array {name!r} is missing")
            if getattr(arrays[name], "dtype", np.dtype(object)).kind != "f":  # (written as float64; a review
                # resumed bytes, strings and structured arrays converted: a silently other model)
                raise ValueError(f"checkpoint array {name!r} is not of floating point numbers")
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
        self.evaluated = None
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
        self.evaluated = self.snapshot  # (a new array for each epoch: never changed in place)
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


#: A sum of squares at most this bounds every coordinate by MODEL_LIMIT, however it was rounded.
_SQUARES_BOUND = MODEL_LIMIT * MODEL_LIMIT / 2


def _encodable(values: Array) -> bool:
    """True if every coordinate is finite and within MODEL_LIMIT (NaN fails the comparisons).

    One dot product settles the common case: the computed ``sum(x_j**2)`` is within a relative
    ``d * 2**-53`` of the exact sum, which is at least every ``x_j**2``, so a computed sum of at
    most ``MODEL_LIMIT**2 / 2`` proves ``|x_j| <= MODEL_LIMIT`` (NaN, infinities and squares that
    overflow make it NaN or inf, which fail the test).  Otherwise the minimum and maximum decide,
    as before: the answer is the same, in one pass instead of two.
    """
    with np.errstate(over="ignore", invalid="ignore"):  # (squares beyond float64: inf, refused below)
        squares = float(np.dot(values, values))
    if squares <= _SQUARES_BOUND:
        return True
    return bool(values.min() >= -MODEL_LIMIT) and bool(values.max() <= MODEL_LIMIT)


def initial_model(config: TrainConfig, objective: Objective) -> Array:
    """x_0: the objective's starting point, drawn with ``config.seed``.

    Raises:
        ValueError: if it is not a finite vector of the objective's dimension.
    """
    given = np.asarray(objective.initial(np.random.default_rng([config.seed, 0x1417])))
    if given.dtype.kind not in "fiu":  # (a review: complex parts dropped, strings parsed, bools taken)
        raise ValueError(
            f"{type(objective).__name__}.initial() must give real numbers, got {given.dtype} values"
        )
    x0 = given.astype(np.float64)  # (a copy: the objective's own array is not the run's x)
    if x0.shape != (objective.dim,) or not np.isfinite(x0).all():
        got = f"shape {x0.shape}" if x0.shape != (objective.dim,) else _non_finite(x0)
        raise ValueError(
            f"{type(objective).__name__}.initial() must give {objective.dim} finite values, got {got}"
        )
    return x0


def _non_finite(values: Array) -> str:
    """How many of ``values`` are NaN or infinite, said."""
    return f"{values.size - np.count_nonzero(np.isfinite(values))} of them NaN or infinite"


def _read_only(x: Array) -> Array:
    """A read-only view of ``x``, for the objective: a review's wrote into x (another snapshot trained)."""
    view = x.view()
    view.flags.writeable = False
    return view


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
        # aiodq's own objectives (the built-in models, the torch adapter) return a new array each call.
        self._fresh_arrays = type(objective).__module__.startswith(f"{__package__.partition('.')[0]}.")
        self._difference = difference_method(objective)
        # The next step's model-free half (prepare): its mini-batch, and grad f_B(x_snap) on it
        # (not for an objective with grad_difference, which takes both points in one pass).
        self._next_rows: Rows | None = None
        self._next_at_snapshot: Array | None = None

    def _loss_grad(self, x: Array, rows: Rows | None, *, keep: bool = False) -> tuple[float, Array]:
        """The objective's sums, checked: a finite loss and a float64 gradient of length d.

        ``x`` goes to the objective read-only: a review's objective wrote into it, and the worker
        trained from a snapshot that was not the master's.  With ``keep`` (a gradient kept past the
        objective's next call) a user objective's own array is copied: one that reuses its buffer
        would write the next gradient into it (a review: every alpha was 0).
        """
        loss, grad = self.objective.loss_grad(_read_only(x), rows)
        checked = self._checked(grad, "gradient")
        if keep and checked is grad and not self._fresh_arrays:
            checked = checked.copy()
        return float(loss), checked

    def _checked(self, grad: object, what: str) -> Array:
        """``grad`` as a float64 vector of length d (itself where it is one already).

        As the master's start checks it (:func:`~aiodq.protocol.start.check_sums`): real numbers
        of shape ``(d,)``, so a worker's objective cannot pass what the master's would not.
        """
        given = np.asarray(grad)
        if given.dtype.kind not in "fiu" or given.shape != (self.dim,):
            got = f"{given.dtype} values" if given.dtype.kind not in "fiu" else f"shape {given.shape}"
            raise ValueError(
                f"the objective's {what} must be {self.dim} real numbers, shape ({self.dim},), got {got}"
            )
        return given.astype(np.float64, copy=False)

    def snapshot_phase(self, snapshot: Array) -> tuple[float, Array, int]:
        """Store x_snap; return the sums over the shard: ``(loss, gradient, correct)``."""
        self.snapshot = np.array(snapshot, dtype=np.float64)
        self._next_at_snapshot = None  # computed at the old snapshot; the drawn rows stay
        loss, grad = self._loss_grad(self.snapshot, None)
        if not (
            math.isfinite(loss) and math.isfinite(float(grad.max())) and math.isfinite(float(grad.min()))
        ):
            # (Said here, not as the codec's "RawVector values must be finite": a newcomer trial.)
            what = "loss" if not math.isfinite(loss) else "gradient"
            raise ValueError(
                f"{type(self.objective).__name__}.loss_grad gave a {what} with NaN or infinite values over "
                "this worker's samples at the snapshot: the run may be diverging (a smaller step), or the "
                "loss overflows"
            )
        correct = int(self._correct(_read_only(self.snapshot))) if self._correct is not None else 0
        # (A review: the master refused the report as the worker's, and the worker retried it for 68 s.)
        if not 0 <= correct <= self.samples:
            raise ValueError(
                f"{type(self.objective).__name__}.correct(x) counted {correct} of its {self.samples} samples"
            )
        return loss, grad, correct

    def set_full_gradient(self, full_gradient: Array) -> None:
        """Store g_snap (QSVRG)."""
        self.full_gradient = np.array(full_gradient, dtype=np.float64)

    def gradient_message(self, vector: Vector, relative: bool) -> Vector:
        """Rebuild the received model, sample a mini-batch, and return the gradient to send."""
        alpha = self.variance_reduced(vector, relative)
        try:
            with np.errstate(over="ignore"):  # (AsyFPG's float32 of a larger value: inf, refused below)
                return self.compress(alpha)
        except ValueError as exc:  # (the codec's own words blamed aiodq's quantizer: a newcomer trial)
            # Not finite, or beyond the float32 range of the wire's scales: said of the objective.
            what = f"values the wire cannot carry ({exc})"
            if self.spec.gradient == "float32":
                what = "values beyond float32's range"
            if not np.isfinite(alpha).all():
                what = "NaN or infinite values"
            raise NonFiniteError(
                f"{type(self.objective).__name__}.loss_grad gave a gradient with {what} on a mini-batch: "
                "the run may be diverging (a smaller step), or the loss overflows"
            ) from None

    def prepare(self) -> None:
        """Do the next step's model-free half now, while its MODEL is on the way (algorithms.md 5.2).

        Draws the next mini-batch and computes grad f_B(x_snap) on it, which
        :meth:`variance_reduced` then uses instead of computing them after the MODEL
        arrives (only the mini-batch for an objective with ``grad_difference``, which
        needs x_hat for both terms).  The result is the same bit for bit: between two
        steps the next draw from the generator is always the mini-batch, so drawing it
        early keeps the order, and a new snapshot (:meth:`snapshot_phase`) recomputes
        the term.
        Calling it again before the next step does nothing.
        """
        if self._next_rows is None:
            # Mini-batches are drawn with replacement: O(B) per draw, whatever the shard size.
            self._next_rows = self._rng.integers(0, self.samples, size=self.config.batch)
        if self._next_at_snapshot is None and self._difference is None:
            self._next_at_snapshot = self._loss_grad(self.snapshot, self._next_rows, keep=True)[1]

    def variance_reduced(self, vector: Vector, relative: bool) -> Array:
        """The computation: ``alpha = grad f_B(x_hat) - grad f_B(x_snap)`` (+ L2) on a fresh mini-batch."""
        x_hat = rebuild_model(vector, relative, self.snapshot)
        self.prepare()  # a no-op if the shell already called it
        rows, at_snapshot = self._next_rows, self._next_at_snapshot
        assert rows is not None
        self._next_rows = self._next_at_snapshot = None
        if at_snapshot is None:
            assert self._difference is not None
            difference = self._difference(_read_only(x_hat), _read_only(self.snapshot), rows)
            difference = self._checked(difference, "grad_difference")
            alpha = np.divide(difference, self.config.batch)  # (a new array: the objective's is not written)
        else:
            alpha = np.subtract(self._loss_grad(x_hat, rows)[1], at_snapshot)
            alpha /= self.config.batch
        shift = np.subtract(x_hat, self.snapshot)
        shift *= self.config.l2
        alpha += shift
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
