"""Where a run starts: x_0 from an objective, a warm start's vector, or x_0 itself, checked.

:func:`starting_point` is the master's (and the launchers' check before anything starts): the
objective's name against the run's, x_0 (its ``initial()``, or ``start_from``) checked as a vector
a MODEL can carry (:func:`check_start`), and ``loss_grad``'s contract on two samples
(:func:`check_sums`).  :func:`vector_digest` names a warm start's x_0 in the result's provenance.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import weakref

import numpy as np
import numpy.typing as npt

from ..errors import raised_at
from .algorithms import MODEL_LIMIT, TrainConfig, _encodable, _non_finite, initial_model
from .objectives import Objective, check_objective, objective_name

__all__ = ["check_contract", "check_start", "check_sums", "starting_point", "vector_digest"]


#: How far apart :func:`check_sums` lets the sums be, relative to the two samples' own: room for a
#: float16 model's rounding (a TorchObjective checks its float16 losses to 2e-2 too), while means are
#: 50 % off.
_SUM_TOLERANCE = 2e-2


def check_sums(objective: Objective, x: npt.NDArray[np.float64], *, start: bool = True) -> None:
    """Check ``loss_grad``'s contract at ``x`` on the first two samples.

    It returns ``(loss, gradient)``, a number and ``dim`` values, sums over the rows:
    ``loss_grad(x, [0, 1])`` must be ``loss_grad(x, [0]) + loss_grad(x, [1])`` (to 2 % of the two's
    sizes): an objective that returns means passes every other check and trains almost nothing,
    since the master divides the workers' sums by n (a newcomer's ridge regression reported a final
    loss of 0.000107 while its F was 0.322, 23x F* = 0.0142, and exited 0).  Nothing is checked for
    fewer than 2 samples.  ``start``: x is the run's x_0, where a loss or gradient that is not finite
    is refused; elsewhere (a worker's own check at its ``initial()``, or at 0) nothing more is checked.

    Raises:
        ValueError: if it returns anything else, or means, or is not a sum over its rows, or writes into x,
            or (``start``) its loss or gradient there is not finite.
    """
    name = type(objective).__name__
    if objective.samples < 2:
        return
    answers = []
    x = x.view()
    x.flags.writeable = False  # (as in training: a newcomer trial's objective that wrote into x passed here)
    for rows in ([0], [1], [0, 1]):
        try:
            result = objective.loss_grad(x, np.array(rows, dtype=np.intp))
        except ValueError as exc:
            if "read-only" not in str(exc):
                raise
            raise ValueError(
                f"{name}.loss_grad writes into x, which is read-only: it must not change it (copy it first)"
                f"{raised_at(exc)}"
            ) from exc
        if not (isinstance(result, tuple | list) and len(result) == 2):
            got = f"a {type(result).__name__}" + (
                f" of {len(result)}" if isinstance(result, tuple | list) else ""
            )
            raise ValueError(f"{name}.loss_grad(x, rows) must return (loss, gradient), got {got}")
        loss, gradient = result
        if np.ndim(loss) != 0 or not isinstance(np.asarray(loss).item(), int | float):
            raise ValueError(
                f"{name}.loss_grad's loss must be a number, got {type(loss).__name__} {np.shape(loss)}"
            )
        gradient = np.asarray(gradient)
        if gradient.dtype.kind not in "fiu":  # (complex ones would lose their imaginary parts unsaid)
            raise ValueError(f"{name}.loss_grad's gradient must be real numbers, got {gradient.dtype} values")
        gradient = gradient.astype(np.float64)  # (a copy: an objective may reuse its array for the next call)
        if gradient.shape != (objective.dim,):
            raise ValueError(
                f"{name}.loss_grad's gradient must have shape ({objective.dim},), got {gradient.shape}"
            )
        answers.append((float(loss), gradient))
    (first, g_first), (second, g_second), (both, g_both) = answers
    for where, (loss, gradient) in zip(("[0]", "[1]", "[0, 1]"), answers, strict=True):
        # (A newcomer's audit: a NaN gradient here was said to be no sum over the rows; at the snapshot,
        # a run that may be diverging. No step has been taken: it is the objective's, or its data's.)
        if not (math.isfinite(loss) and np.isfinite(gradient).all()):
            if not start:  # (a review: a Poisson model is not finite at 0, where a worker may check it)
                return
            what = "loss" if not math.isfinite(loss) else "gradient"
            raise ValueError(
                f"{name}.loss_grad(x, rows) gives a {what} with NaN or infinite values for rows {where} at "
                "the start, before any step: check the objective, and its data for NaN or infinite values"
            )
    apart, g_apart = first + second, g_first + g_second
    size, g_size = abs(first) + abs(second), float(np.abs(g_first).max() + np.abs(g_second).max())
    if (
        abs(both - apart) <= _SUM_TOLERANCE * size + 1e-12
        and float(np.abs(g_both - g_apart).max()) <= _SUM_TOLERANCE * g_size + 1e-12
    ):
        return
    said = f"for rows [0, 1] loss {both:.6g}, for [0] and [1] alone {first:.6g} and {second:.6g}"
    if abs(both - apart / 2) <= _SUM_TOLERANCE * size + 1e-12:
        raise ValueError(
            f"{name}.loss_grad(x, rows) returns the mean over the rows, not the sum ({said}): return the "
            "sums of the losses and gradients (the master divides by n; docs/usage.md, Your own model)"
        )
    raise ValueError(
        f"{name}.loss_grad(x, rows) is not a sum over the rows ({said}; or the gradients differ): f_i "
        "must be sample i's own, with no regulariser or other term added per call (aiodq adds --l2, --l1)"
    )


def check_contract(objective: Objective) -> None:
    """:func:`check_sums` for a worker's own objective, once per objective.

    A worker has no x_0 before the master's CONFIG.  The check looks at the objective's own
    ``initial()`` (seed 0), where the master's looks too (at 0 a term added per call may vanish),
    or at 0 where that gives no vector of its dimension: a worker's objective need not give x_0
    (the master's does), and the worker never uses it.  An objective checked before (by
    ``run_worker``, then by each of its sessions) is not checked again.

    Raises:
        ValueError: as :func:`check_sums`.
    """
    with contextlib.suppress(TypeError):  # (an object that is not hashable, or not weakly referable)
        if objective in _CHECKED:
            return
    if objective.samples >= 2:
        x = np.zeros(int(objective.dim))
        with contextlib.suppress(Exception):  # (a stub that raises, say: then at 0)
            start = objective.initial(np.random.default_rng(0))
            if np.shape(start) == x.shape:
                x = check_start(start)
        check_sums(objective, x, start=False)
    with contextlib.suppress(TypeError):
        _CHECKED.add(objective)


#: The objectives :func:`check_contract` has passed.
_CHECKED: weakref.WeakSet[object] = weakref.WeakSet()


def starting_point(
    config: TrainConfig, model: object, start_from: npt.ArrayLike | None = None
) -> npt.NDArray[np.float64]:
    """x_0 from an objective (checked against ``config.model``) or from an array-like.

    ``start_from`` (with an objective) replaces the objective's ``initial()``: a warm start,
    from a trained model say; it must be the objective's dimension, finite and within
    :data:`MODEL_LIMIT`.

    Raises:
        TypeError: for anything else.
        ValueError: for a name that differs from ``config.model``, or a bad x_0.
    """
    if hasattr(model, "loss_grad"):
        objective = check_objective(model)
        name = objective_name(objective)
        if name is not None and name != config.model:
            raise ValueError(
                f"the objective names itself {name!r} (its name attribute) but the run trains "
                f"{config.model!r} (TrainConfig.model, --model): the two must agree"
            )
        if start_from is None:
            x0 = check_start(initial_model(config, objective))
        else:
            x0 = check_start(start_from, "start_from")
            if x0.shape != (objective.dim,):
                raise ValueError(
                    f"the model to start from has {x0.shape[0]:,} parameters; "
                    f"{type(objective).__name__} has {objective.dim:,}"
                )
        check_sums(objective, x0)
        return x0
    if start_from is not None:
        raise TypeError("start_from needs an Objective (x_0 is the model itself otherwise)")
    try:
        return check_start(model)
    except TypeError as exc:
        raise TypeError(
            f"the model must be an Objective or x_0 as a vector of numbers, not {type(model).__name__}"
        ) from exc


def vector_digest(values: npt.NDArray[np.float64]) -> str:
    """``blake2b:`` and 32 hex digits: BLAKE2b-128 of the values as little-endian float64 (what x_0 was)."""
    return (
        "blake2b:" + hashlib.blake2b(values.astype("<f8", copy=False).tobytes(), digest_size=16).hexdigest()
    )


def check_start(values: object, name: str = "x_0") -> npt.NDArray[np.float64]:
    """``values`` as x_0: a non-empty vector of finite numbers within :data:`MODEL_LIMIT`, as float64.

    ``name`` is what the messages call it.

    Raises:
        TypeError: if ``values`` are not numbers (floats or integers: not complex, bool, text...).
        ValueError: if they are not such a vector (the text says how).
    """
    if isinstance(values, str | os.PathLike):  # (an API audit: "not <U9 values", "not object values")
        raise TypeError(f"{name} must be a vector of numbers, not a path: read the file (aiodq.load_model)")
    try:
        given = np.asarray(values)
    except (TypeError, ValueError) as exc:  # (ragged nested lists, say)
        raise TypeError(f"{name} must be a vector of numbers, not {type(values).__name__}") from exc
    if given.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a vector of numbers (floats or integers), not {given.dtype} values")
    x0 = given.astype(np.float64, copy=False)
    if x0.ndim != 1 or x0.size == 0 or not np.isfinite(x0).all():
        got = _non_finite(x0) if x0.ndim == 1 and x0.size else f"shape {x0.shape}"
        raise ValueError(f"{name} must be a non-empty vector of finite values, got {got}")
    if not _encodable(x0):  # a MODEL could not carry it (the master refuses updates beyond it too)
        raise ValueError(f"{name} holds values beyond {MODEL_LIMIT:.4g}, more than a MODEL carries")
    return x0
