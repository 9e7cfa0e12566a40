"""The asyncio shell's checks of what an embedding application passes, and the BLAS limit it shares.

An API audit found values taken at construction that failed much later or silently: a port of
70,000 listened on 4,464 (``getaddrinfo`` wraps it), ``samples=-5`` had every worker refused at
the join timeout, ``wait()`` before ``start()`` blocked until its timeout, ``timeout=nan``
waited and said "within nan s"; and two masters whose lifetimes overlapped left BLAS limited
after both had closed.  Each is refused here at once, with the argument's name.
"""

from __future__ import annotations

import logging
import math
import numbers
import threading
from typing import ClassVar

from threadpoolctl import threadpool_limits

from ..protocol.objectives import BUILT_IN, MLP, LogisticRegression, SoftmaxRegression
from ..protocol.trainconfig import TrainConfig

__all__ = ["BlasLimit", "at_least", "check_kinds", "check_master_arguments", "check_timeout", "own_objective"]


def _seconds(value: object) -> float | None:
    """``value`` as seconds if it is a real number (not a bool; numpy's too), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    return float(value)


def at_least(value: object, low: int, high: float = math.inf) -> bool:
    """Whether ``value`` is an integer (not a bool; numpy's too) from ``low`` to ``high``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return False
    return low <= int(value) <= high


def own_objective(config: TrainConfig, model: object) -> str | None:
    """The type of a master's objective that is not the built-in model ``config.model`` names; else None.

    None too for a model given as x_0, or a ``config.model`` that is not a built-in's.  An objective
    is the built-in model only as an instance of exactly its class: a subclass may compute otherwise
    through any method (a review: one that scaled ``_scores`` passed a check of ``loss_grad`` and
    ``grad_difference``), and another class may name itself so.  Otherwise CONFIG names a model the
    master does not train: the master sends this type's name too (params ``"objective"``), and a
    worker that would build the built-in model refuses the run (a review: ``aiodq worker`` trained
    logistic regression for a master given least squares, and both exited 0).  A warning says that
    the run is recorded as the built-in model.
    """
    if not hasattr(model, "loss_grad") or config.model not in BUILT_IN:
        return None
    if type(model) is _BUILT_IN_CLASSES[config.model] and _as_configured(config, model):
        return None
    own = type(model).__name__
    logging.getLogger("aiodq.master").warning(
        "%s is not the built-in model %r that TrainConfig.model names, as which the run is recorded; a "
        "worker that would build that refuses it: give TrainConfig(model=) its MODULE:NAME (aiodq worker "
        "--model loads that), or a name of your own that its name attribute gives",
        own, config.model,
    )  # fmt: skip
    return own


def _as_configured(config: TrainConfig, model: object) -> bool:
    """Whether a built-in model's instance is the one ``config`` builds.

    Its hidden layer or intercept, and no method replaced on the instance (a review: an MLP of other
    layers, of the same size, was taken for the one the workers build).
    """
    if any(name in vars(model) for name in ("loss_grad", "grad_difference", "_scores", "_forward")):
        return False
    if isinstance(model, MLP):
        return model.layers[1:-1] == (config.hidden,)
    return bool(getattr(model, "bias", False)) == config.bias


#: The built-in models' classes by the name each gives itself.
_BUILT_IN_CLASSES: dict[str, type] = {cls.name: cls for cls in (LogisticRegression, SoftmaxRegression, MLP)}


def check_kinds(**given: tuple[object, type, bool]) -> None:
    """Refuse an argument that is not an instance of its type (``(value, type, may be None)`` by name).

    (A newcomer's audit: ``Master({"algorithm": ...}, ...)`` raised AttributeError from deep inside.)

    Raises:
        TypeError: naming the argument, the type it must be and the one it is.
    """
    for name, (value, kind, optional) in given.items():
        if not isinstance(value, kind) and not (optional and value is None):
            also = " or None" if optional else ""
            raise TypeError(f"{name} must be a {kind.__name__}{also}, got a {type(value).__name__}")


def check_master_arguments(
    port: object, samples: object, blas_threads: object, checkpoint_interval: object
) -> tuple[int, int | None, int | None]:
    """Refuse a :class:`~aiodq.net.master.Master`'s arguments that could not work; warn of an unknown n.

    Without ``samples`` (x_0 given as an array, no ``samples=``) the workers' reports say how many
    samples there are: an admitted worker that claims 2^62 sets the epoch length and its own weight
    in g_snap and F (an attack froze such a run in epoch 0): a warning says so.

    Returns:
        ``port``, ``samples`` and ``blas_threads`` as Python ints (a numpy port failed at the listen).

    Raises:
        ValueError: naming the argument and the value.
    """
    if not at_least(port, 0, 65535):
        raise ValueError(f"port must be an integer from 0 to 65535 (0: any free port), got {port!r}")
    if samples is None:
        logging.getLogger("aiodq.master").warning(
            "the master does not know how many samples the dataset has: the workers' reports say it, and one "
            "admitted worker's claim sets the epoch length and its weight (give samples=, docs/security.md)"
        )
    elif not at_least(samples, 1):
        raise ValueError(f"samples must be a positive integer (the whole dataset's) or None, got {samples!r}")
    if blas_threads is not None and not at_least(blas_threads, 1):
        raise ValueError(
            f"blas_threads must be a positive integer or None (leave them), got {blas_threads!r}"
        )
    if not (_seconds(checkpoint_interval) or 0.0) > 0:
        raise ValueError(f"checkpoint_interval must be positive, got {checkpoint_interval!r}")
    return _as_int(port) or 0, _as_int(samples), _as_int(blas_threads)


def _as_int(value: object) -> int | None:
    """An integer checked above as a Python int; None stays None."""
    return int(value) if isinstance(value, numbers.Integral) else None


def check_timeout(timeout: object, *, started: bool) -> None:
    """Refuse a wait that could not end as asked: before the master started, or a timeout that is no time.

    Raises:
        RuntimeError: if the master has not started (nothing would ever end the wait).
        ValueError: if ``timeout`` is not None or a number of seconds, 0 or more.
    """
    if not started:
        raise RuntimeError("the master has not started: call start() first (or use async with)")
    seconds = _seconds(timeout)
    if timeout is not None and not (seconds is not None and seconds >= 0):  # (NaN: no time)
        raise ValueError(f"timeout must be a number of seconds, 0 or more, or None, got {timeout!r}")


class BlasLimit:
    """BLAS threads limited while any holder runs, and put back as they were when the last one ends.

    ``threadpool_limits`` restores what it found when it began: two masters whose lifetimes
    overlapped (A starts, B starts, A closes, B closes) left B uncapped after A closed, and the
    process limited to one thread after both had (an API audit).  Holders share one list: the
    first saves the process's limits, each sets its own, one that ends sets the latest live
    holder's again (a review: A kept B's), and the last puts the saved ones back.
    """

    _live: ClassVar[list[BlasLimit]] = []
    _saved: ClassVar[threadpool_limits | None] = None
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, threads: int) -> None:
        self.threads = threads
        with BlasLimit._lock:
            if not BlasLimit._live:
                BlasLimit._saved = threadpool_limits(threads, user_api="blas")
            else:
                threadpool_limits(threads, user_api="blas")  # (the first holder's saved state is restored)
            BlasLimit._live.append(self)

    def release(self) -> None:
        """End this holder's limit: the latest live holder's applies; after the last, what the first found."""
        with BlasLimit._lock:
            if self not in BlasLimit._live:
                return
            BlasLimit._live.remove(self)
            if BlasLimit._live:
                threadpool_limits(BlasLimit._live[-1].threads, user_api="blas")
            elif BlasLimit._saved is not None:
                BlasLimit._saved.restore_original_limits()
                BlasLimit._saved = None
