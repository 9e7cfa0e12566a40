"""What :class:`~aiodq.torch.TorchObjective` makes of its inputs: samples, labels, the loss, the module.

Conversions to tensors, the loss summed over a batch, its description for the fingerprint, and the
checks made as the objective is built (integer features a float dtype would round, batch norm
statistics never estimated, where one score per sample says "positive").
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = [
    "LossFunction",
    "as_tensor",
    "check_classes",
    "check_exact_integers",
    "check_finite",
    "described",
    "is_float",
    "score_threshold",
    "summing",
    "warn_unestimated_norms",
]

#: A loss: ``(outputs, labels) -> `` the batch's summed loss (0-d) or one loss per sample (1-d).
LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def summing(loss_fn: LossFunction) -> LossFunction:
    """``loss_fn``, or for a torch loss module a shallow copy of it with ``reduction="sum"``."""
    if isinstance(loss_fn, torch.nn.Module) and isinstance(getattr(loss_fn, "reduction", None), str):
        summing = copy.copy(loss_fn)  # the caller's module keeps its own reduction
        summing.reduction = "sum"  # type: ignore[assignment]  # torch types module attributes as tensors
        return summing
    return loss_fn


def as_tensor(values: Any, what: str, dtype: torch.dtype | None, device: torch.device) -> torch.Tensor:
    """``values`` (a tensor, a scipy sparse matrix or a numeric array-like) as a tensor on ``device``.

    ``dtype`` None: integer and boolean values become int64 (class indices), floats ``torch.float32``.
    """
    if isinstance(values, torch.Tensor):
        tensor = values.detach()
    else:
        if hasattr(values, "toarray"):  # a scipy sparse matrix: the module needs dense rows
            values = values.toarray()
        try:
            array = np.asarray(values)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{what} of type {type(values).__name__} are not an array-like: {exc}") from None
        if array.dtype.kind not in "biuf":
            raise TypeError(f"{what} must be numbers, got dtype {array.dtype}")
        if not (array.flags.writeable and array.flags.c_contiguous):
            # torch.from_numpy warns on read-only memory and refuses negative strides.
            array = np.array(array, order="C")
        tensor = torch.from_numpy(array)
    if dtype is None:
        if tensor.dtype.is_floating_point:
            dtype = torch.float32 if tensor.dtype == torch.float64 else tensor.dtype
        elif tensor.is_complex():
            raise TypeError(f"{what} must be real numbers, got {tensor.dtype}")
        else:
            dtype = torch.int64
    if dtype.is_floating_point and not (tensor.dtype.is_floating_point or tensor.dtype == torch.bool):
        check_exact_integers(tensor, what, dtype)
    # Always a copy: the objective never shares, or changes, the caller's memory.
    return tensor.to(device=device, dtype=dtype, copy=True).contiguous()


def described(loss: object) -> str:
    """The loss, as it reads the same in every process that built it alike.

    A module's ``repr``, with a torch loss's public settings of plain types (``repr`` leaves out
    CrossEntropyLoss's ``label_smoothing``, say; a loss of your own may hold figures of its process's
    own samples, which would differ: a review), or a function's module and name.  A
    ``functools.partial`` is its function with its arguments, tensors by their values (a torch audit:
    every partial read ``functools.partial``, so a worker given another loss trained it without a
    word).  An object of your own that is called is its class, as a loss module of your own is its
    ``repr``: its attributes may hold figures of the process's own samples.
    """
    if isinstance(loss, torch.nn.Module) and not type(loss).__module__.startswith("torch."):
        return repr(loss)
    if isinstance(loss, torch.nn.Module):
        settings = sorted(
            (name, value)
            for name, value in vars(loss).items()
            if not name.startswith("_") and isinstance(value, (bool, int, float, str, type(None)))
        )
        return f"{loss!r}{settings}"
    if isinstance(loss, functools.partial):
        given = [_setting(value) for value in loss.args]
        given += [f"{name}={_setting(value)}" for name, value in sorted(loss.keywords.items())]
        return f"partial({described(loss.func)}, {', '.join(given)})"
    return f"{getattr(loss, '__module__', '')}.{getattr(loss, '__qualname__', type(loss).__qualname__)}"


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """A tensor's values as the bytes a digest reads (row-major; no copy of a contiguous CPU tensor)."""
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data


def _setting(value: object) -> str:
    """One argument of a loss, as :func:`described` reads it, the same in every process.

    Plain values by their ``repr``, a tensor by its dtype, shape and values, containers item by item
    (a set's sorted), a function as :func:`described`; anything else by its type alone (a review: an
    object's ``repr`` with its address, a frozenset's order or a generator differed between processes,
    and every worker refused the run).
    """
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return repr(value)
    if isinstance(value, torch.Tensor):
        digest = hashlib.blake2b(tensor_bytes(value), digest_size=8).hexdigest()
        return f"tensor({value.dtype}, {tuple(value.shape)}, {digest})"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__}({', '.join(_setting(item) for item in value)})"
    if isinstance(value, set | frozenset):
        return f"{type(value).__name__}({', '.join(sorted(_setting(item) for item in value))})"
    if isinstance(value, dict):
        items = sorted(f"{_setting(key)}: {_setting(item)}" for key, item in value.items())
        return f"dict({', '.join(items)})"
    if isinstance(value, functools.partial) or inspect.isroutine(value):
        return described(value)
    kind = type(value)
    return f"{kind.__module__}.{kind.__qualname__}"


def warn_unestimated_norms(module: torch.nn.Module) -> None:
    """Warn of batch norm layers whose running statistics were never estimated.

    The module runs in evaluation mode, where batch norm divides by its running statistics, and
    nothing trains them: left at mean 0 and variance 1 they normalise nothing (a trial's CNN lost
    two points of test accuracy against plain torch with batch norm in training mode).
    """
    names = [
        name or type(layer).__name__
        for name, layer in module.named_modules()
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm)
        and layer.track_running_stats
        and layer.num_batches_tracked is not None
        and int(layer.num_batches_tracked) == 0
    ]
    if names:
        warnings.warn(
            f"batch norm {', '.join(names)}: running statistics never estimated (mean 0, variance 1); aiodq "
            "runs the module in evaluation mode and does not train them: estimate them first, alike in every "
            "process (forward passes in training mode on the same data), or load trained ones "
            "(docs/torch.md)",
            stacklevel=3,
        )


#: The largest integer each parameter dtype holds exactly, with every one below it.
_EXACT = {torch.float16: 2**11, torch.float32: 2**24, torch.float64: 2**53}

#: Losses whose one output per sample is a probability or a regression of the labels, not a logit.
_NOT_LOGITS = ("BCELoss", "MSELoss", "L1Loss", "SmoothL1Loss", "HuberLoss")


def score_threshold(loss_fn: object, labels: torch.Tensor) -> float:
    """Where one score per sample says "positive": 0.5 for probabilities and regressions of 0/1 labels.

    An audit: BCELoss's probabilities, always above 0, were all counted positive (accuracy 0.307, the
    share of positive labels, against 0.992).  Logits (BCEWithLogitsLoss, a function of your own) and
    regressions of labels with a -1: 0.  Decided from the loss, and the labels only to tell 0/1 from
    -1/+1 (a review: a shard of +1 alone read as 0/1 labels; a -1 present is not one).
    """
    torch_loss = isinstance(loss_fn, torch.nn.Module) and type(loss_fn).__module__.startswith("torch.")
    if not (torch_loss and type(loss_fn).__name__ in _NOT_LOGITS):
        return 0.0
    if type(loss_fn).__name__ == "BCELoss":
        return 0.5  # (probabilities: its labels are 0/1, whatever a shard holds)
    return 0.0 if bool((labels == -1).any()) else 0.5


def check_exact_integers(values: torch.Tensor, what: str, dtype: torch.dtype) -> None:
    """Refuse integers beyond those ``dtype`` holds exactly: token ids would be rounded to others.

    Features reach the module in the parameters' dtype; an audit's float16 embedding got id 4,097 as
    4,096 (float16 holds the integers up to 2,048 exactly, float32 up to 2**24).  ``values`` is the
    integer tensor, from whatever the caller gave (an array, a list, a sparse matrix, a tensor).
    """
    exact = _EXACT.get(dtype)
    # numpy's reductions, without a copy (a review: abs() copied 100M ids, and torch has none for uint16)
    array = values.detach().cpu().numpy() if values.numel() and exact is not None else None
    largest = 0 if array is None else max(int(array.max()), -int(array.min()))
    if exact is not None and largest > exact:
        raise ValueError(
            f"integer {what} up to {largest:,} reach the module as {dtype}, which holds the integers "
            f"exactly only up to {exact:,}: token ids would be rounded to others. Give the module float32 "
            "parameters (module.float(); float64 for ids beyond 2**24)"
        )


def is_float(values: Any) -> bool:
    """True for floating-point labels (kept in the parameters' dtype), False for integers."""
    if isinstance(values, torch.Tensor):
        return bool(values.dtype.is_floating_point)
    kind: str = getattr(getattr(values, "dtype", None), "kind", "") or np.asarray(values).dtype.kind
    return kind == "f"


def check_finite(values: torch.Tensor, what: str) -> None:
    """Refuse NaN or infinite samples: a worker would fail on them mid-run, and leave.

    An audit's NaN at row 50 dropped its worker, and the run, over the others' shards, said nothing but a
    warning.  Checked a block of rows at a time (a review: the whole check at once took 1.7 times the
    features' memory more).
    """
    if not values.is_floating_point():
        return
    rows = values.reshape(values.shape[0], -1)
    step = max(1, (1 << 20) // max(1, rows.shape[1]))
    for start in range(0, rows.shape[0], step):
        finite = torch.isfinite(rows[start : start + step]).all(dim=1)
        if not bool(finite.all()):
            row = start + int(torch.nonzero(~finite)[0])
            raise ValueError(
                f"{what} hold NaN or infinite values as {values.dtype} (the first at sample {row}; values "
                "beyond that dtype's range become infinite)"
            )


def check_classes(loss_fn: object, labels: torch.Tensor, classes: int) -> None:
    """Refuse class labels a torch classification loss would fail on: outside ``0..classes - 1``.

    An audit: a label 7 of 3 classes at sample 300 dropped its worker mid-run (IndexError), and the run
    ended ok over the other shards.  ``ignore_index`` is let through.
    """
    if type(loss_fn).__name__ not in ("CrossEntropyLoss", "NLLLoss") or labels.is_floating_point():
        return
    bad = (labels < 0) | (labels >= classes)
    ignored = getattr(loss_fn, "ignore_index", None)
    if isinstance(ignored, int):
        bad &= labels != ignored
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"labels must be class indices 0..{classes - 1} for the module's {classes} outputs: label "
            f"{int(labels[row])} at sample {row}"
        )
