"""A training run's hyperparameters, and how each algorithm communicates (docs/algorithms.md 1-10).

:class:`TrainConfig` travels to the workers in CONFIG (its fields as the parameter map);
:data:`ALGORITHMS` says, per algorithm, how models and gradients travel.  The update rules
that use them are in :mod:`aiodq.protocol.algorithms`.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import warnings
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..codec.registry import ALL_ENCODINGS, Encoding
from ..config import ConnectionConfig, option
from ..errors import _PACKAGE, UnusedOptionWarning
from .objectives import Features, Objective, Regularizer, make_objective

__all__ = [
    "ALGORITHMS",
    "MAX_BATCH",
    "SEED_LIMIT",
    "AlgorithmSpec",
    "TrainConfig",
    "coding_options",
    "default_step",
]


def _check_types(config: TrainConfig) -> None:
    """Refuse a field of the wrong type, naming it; numpy's numbers become Python's.

    An API audit: ``entropy_coding="no"`` (Rice coding on) and ``epochs=True`` were taken, and every
    worker then refused the run's CONFIG; ``epochs=np.int64(5)`` was refused; ``step="0.1"`` said
    only "must be real number, not str".
    """
    for item in fields(config):
        value = getattr(config, item.name)
        if item.type == "bool":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{item.name} must be True or False, got {value!r}")
            value = bool(value)
        elif item.type == "int":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{item.name} must be an integer, got {value!r}")
            value = int(value)
        elif item.type == "float":
            if isinstance(value, (bool, np.bool_)) or not isinstance(
                value, (int, float, np.integer, np.floating)
            ):
                raise ValueError(f"{item.name} must be a number, got {value!r}")
            try:
                value = float(value)
            except OverflowError:
                raise ValueError(f"{item.name} is too large, got {value!r}") from None
        elif item.type == "str" and not isinstance(value, str):
            raise ValueError(f"{item.name} must be a text, got {value!r}")
        object.__setattr__(config, item.name, value)


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

    def sent_encodings(self, *, worker: bool) -> frozenset[Encoding]:
        """The encodings this run's master (or, with ``worker``, a worker) may have to send.

        Full-precision vectors go as RAW_F32, or RAW_F64 beyond binary32's range (SNAPSHOT,
        SNAPSHOT_GRADIENT, FULL_GRADIENT); a quantized model as DENSE, ZERO or EQUALS_SNAPSHOT;
        a gradient as its kind's encodings, or ZERO when it quantizes to zero.  DENSE_RICE and a
        dense gradient's sparse form go only to a peer that announced them (wire-format.md 6.2-6, 6.2-7).
        """
        needed = {Encoding.RAW_F32, Encoding.RAW_F64}
        if worker:
            needed |= {Encoding.ZERO, *_GRADIENT_ENCODINGS.get(self.gradient, ())}
        elif self.model == "quantized":
            needed |= {Encoding.ZERO, Encoding.EQUALS_SNAPSHOT, Encoding.DENSE}
        return frozenset(needed)

    def unannounced(self, announced: frozenset[int], *, worker: bool) -> str:
        """The names of the encodings :meth:`sent_encodings` needs that ``announced`` omits ("" if none)."""
        return ", ".join(
            Encoding(code).name for code in sorted(self.sent_encodings(worker=worker) - announced)
        )


_GRADIENT_ENCODINGS = {
    "dense": (Encoding.DENSE,),
    "sparse": (Encoding.SPARSE_RICE, Encoding.SPARSE_BITMAP),
    "qsgd": (Encoding.QSGD,),
}


#: Seeds run below this: numpy's are non-negative, and CONFIG carries 64 bits.
SEED_LIMIT = 1 << 64
#: The largest mini-batch B: a worker draws B row indices (8 bytes each) and gathers B rows at
#: every step, so a larger B is refused before it is sent rather than failing every worker.
MAX_BATCH = 1 << 20
#: Largest epochs, tau, updates_per_epoch and hidden: a signed 64-bit integer.
INT64_MAX = (1 << 63) - 1

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
    batch: int = option(64, "mini-batch size B, 1 to 1,048,576 (drawn with replacement)")
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
    aligned_codes: bool = option(
        False,
        "send fixed-width codes byte-aligned, 3 bits in 4, 5 to 7 in 8, 9 to 15 in 16 "
        "(wire-format.md 5.5-5): the same values in more bytes, for less CPU time on fast links "
        "(docs/algorithms.md 10)",
    )
    sparse_gradients: bool = option(
        True,
        "while codes are Rice-coded, a worker sends a dense quantized gradient's nonzero codes as a "
        "sparse payload (SPARSE_RICE or SPARSE_BITMAP) where that is smaller than the dense encoding "
        "(DENSE_RICE or DENSE): the same values in fewer bytes (docs/algorithms.md 10)",
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
        _check_types(self)
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
        for name in ("epochs", "tau", "updates_per_epoch", "hidden"):  # (qsgd_levels: at most 65,535)
            if getattr(self, name) > INT64_MAX:  # (CONFIG's params are msgpack integers: a newcomer's 2**64
                # epochs failed in the handshake, as the master's INTERNAL_ERROR)
                raise ValueError(f"{name} must be at most 2**63 - 1, got {getattr(self, name):,}")
        if self.batch > MAX_BATCH:
            raise ValueError(f"batch must be at most {MAX_BATCH:,} (2**20), got {self.batch:,}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed must be an integer from 0 to 2**64 - 1, got {self.seed}")
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
                "adaptive_coding chooses when to Rice-code: it needs entropy coding on, the default "
                "(leave out --no-entropy-coding)"
            )
        if self.qsgd_levels > 0xFFFF:
            raise ValueError("qsgd_levels must be at most 65535")
        if not _REBUILDING.get():
            for name, kind, which, actual in self.unused_options():
                # (A trial: TrainConfig(algorithm="asylpg", phi=0.1) trained without a word, while the
                # command line refuses --phi there.)
                warnings.warn(
                    f"{name}={getattr(self, name)!r} is for {kind} {which}, not {actual!r}: it has no effect",
                    UnusedOptionWarning,
                    stacklevel=_callers_level(self),
                )

    def unused_options(self) -> list[tuple[str, str, str, str]]:
        """Which of ten options are set away from their defaults where the run never reads them.

        The ten: ``phi`` and ``exact_budget`` (sparse-asylpg), ``qsgd_levels`` (qsvrg),
        ``acc_snapshot`` (the accelerated variants), ``bits`` (the quantized gradients: asylpg,
        sparse-asylpg, acc-asylpg), ``mu``, ``model_bits_cap`` and ``centre`` (the quantized models:
        all but asyfpg, acc-asyfpg and qsvrg), ``bias`` (logistic and softmax), ``hidden`` (mlp).
        Returns ``(field, "algorithm" or "model", what it is for, this run's)`` for each, as
        ``("phi", "algorithm", "sparse-asylpg", "asylpg")``.  Constructing such a config warns
        (:class:`~aiodq.UnusedOptionWarning`), rebuilding one from a CONFIG or a checkpoint does
        not (:meth:`from_params`); the command line refuses them (the algorithm's options not with
        ``--resume``, which resumes a checkpoint with the options it names).
        """
        default = TrainConfig.__dataclass_fields__
        spec = self.spec
        unused = []
        for name, applies, kind, which in (
            ("bias", self.model in ("logistic", "softmax"), "model", "logistic or softmax"),
            ("hidden", self.model == "mlp", "model", "mlp"),
            ("phi", spec.gradient == "sparse", "algorithm", "sparse-asylpg"),
            ("exact_budget", spec.gradient == "sparse", "algorithm", "sparse-asylpg"),
            ("qsgd_levels", spec.gradient == "qsgd", "algorithm", "qsvrg"),
            ("acc_snapshot", spec.accelerated, "algorithm", "acc-asylpg, acc-asyfpg"),
            # (A newcomer's audit: asyfpg with bits=4 took it, and result.json recorded bits 4.)
            ("bits", spec.gradient in ("dense", "sparse"), "algorithm", "asylpg, sparse-asylpg, acc-asylpg"),
            *(
                (
                    name,
                    spec.model == "quantized",
                    "algorithm",
                    "asylpg, sparse-asylpg, acc-asylpg, model-only",
                )
                for name in ("mu", "model_bits_cap", "centre")
            ),
        ):
            if not applies and getattr(self, name) != default[name].default:
                unused.append((name, kind, which, self.model if kind == "model" else self.algorithm))
        return unused

    @property
    def spec(self) -> AlgorithmSpec:
        """The algorithm's communication pattern."""
        return ALGORITHMS[self.algorithm]

    @property
    def regularizer(self) -> Regularizer:
        """The regulariser R."""
        return Regularizer(l2=self.l2, l1=self.l1)

    def built_in(
        self, features: Features, labels: npt.NDArray[Any], *, classes: int | None = None
    ) -> Objective:
        """The built-in model this configuration names, shaped by ``hidden`` and ``bias``, on these samples.

        Raises:
            ValueError: as :func:`~aiodq.protocol.objectives.make_objective`.
        """
        return make_objective(
            self.model, features, labels, classes=classes, hidden=self.hidden, bias=self.bias
        )

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
        # A rebuild of what a master sent or a checkpoint holds: its options were judged where the
        # config was made (a worker's operator could do nothing about a warning; a float32 phi of
        # 0.05 differs from the default 0.05).
        token = _REBUILDING.set(True)
        try:
            return cls(**values)
        finally:
            _REBUILDING.reset(token)


#: True while :meth:`TrainConfig.from_params` builds a configuration: it warns of no unused option.
_REBUILDING: ContextVar[bool] = ContextVar("aiodq_trainconfig_rebuilding", default=False)
#: The standard library's files a config passes through on its way from the user's line.
_SKIPPED = frozenset(os.path.abspath(str(module.__file__)) for module in (dataclasses, copy))


def _callers_level(config: TrainConfig) -> int:
    """``warnings.warn``'s stacklevel from ``__post_init__``: the user's line that made ``config``.

    The first frame that is neither aiodq's, nor dataclasses' or copy's (``replace``; Python
    3.13's ``copy.replace``), nor the generated ``__init__`` of the config's class or a base.
    """
    inits = {
        code
        for klass in type(config).__mro__
        if (code := getattr(vars(klass).get("__init__"), "__code__", None)) is not None
    }
    frame, level = sys._getframe(1), 1  # __post_init__, level 1
    while frame.f_back is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if frame.f_code not in inits and not path.startswith(_PACKAGE + os.sep) and path not in _SKIPPED:
            break
        frame, level = frame.f_back, level + 1
    return level


def coding_options(config: TrainConfig, base: ConnectionConfig) -> ConnectionConfig:
    """The master's connection options, as the run's coding fields set them.

    Without ``entropy_coding``: fixed-width codes both ways, no DENSE_RICE sent and none
    announced (wire-format.md 6.2).  With ``aligned_codes``: fixed-width codes byte-aligned.
    With ``sparse_gradients`` in a run whose gradients are dense codes: a GRADIENT received as a
    sparse vector is counted as the dense vector its sender counted (``sparse_form_bits``).
    """
    if not config.entropy_coding:
        announced = (base.encodings or ALL_ENCODINGS) - {int(Encoding.DENSE_RICE)}
        base = replace(base, encodings=frozenset(announced), dense_rice=False)
    # The GRADIENTs of a run of dense codes that come as sparse vectors are their sparse form.
    forms = config.sparse_gradients and config.entropy_coding and config.spec.gradient == "dense"
    aligned = base.aligned_codes or config.aligned_codes
    return replace(base, aligned_codes=aligned, sparse_form_bits=config.bits if forms else 0)
