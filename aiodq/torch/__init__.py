"""PyTorch models as aiodq objectives: :class:`TorchObjective` (the extra ``aiodq[torch]``).

::

    import torch
    from aiodq.torch import TorchObjective

    torch.manual_seed(0)                                   # x_0 is the module's own initialisation
    net = torch.nn.Sequential(torch.nn.Linear(784, 100), torch.nn.ReLU(), torch.nn.Linear(100, 10))
    objective = TorchObjective(net, torch.nn.CrossEntropyLoss(), features, labels)
    await run_worker(host, port, objective=objective)      # and Master(config, objective, ...)

Any ``torch.nn.Module`` trains: its trainable parameters, in ``module.parameters()`` order,
are the flat vector ``x`` that aiodq quantizes and sends.  Inside torch the values stay in the
parameters' dtype (float32 usually); at the boundary they are float64 numpy vectors, as the
:class:`~aiodq.Objective` protocol requires.

How the vector moves.  The adapter re-homes every trainable parameter into ONE flat buffer
(``param.data`` becomes a view of a slice of it) and gives each parameter a ``.grad`` that is a
view of ONE flat gradient buffer, into which autograd accumulates in place.  Receiving ``x`` is
then a single ``copy_`` (float64 to float32 included), and handing back the gradient a single
``astype(float64)``; ``aiodq.lab.bench_torch`` measures this against torch's own
``vector_to_parameters`` / ``parameters_to_vector`` (one copy per parameter each way).

This package is the only part of aiodq that imports torch; ``import aiodq`` does not load it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

try:
    import torch
except ImportError as exc:  # pragma: no cover - exercised only where torch is missing
    raise ImportError(
        "aiodq.torch needs PyTorch: pip install 'aiodq[torch]' (a CPU build of torch is enough)"
    ) from exc

from ..protocol.objectives import Rows
from .inputs import (
    LossFunction,
    as_tensor,
    check_classes,
    check_finite,
    described,
    is_float,
    score_threshold,
    summing,
    tensor_bytes,
    warn_unestimated_norms,
)

__all__ = ["LossFunction", "TorchObjective", "torch"]

Array = npt.NDArray[np.float64]
#: What a module that fails on its first samples is told, where torch's words say no more (trials).
_IDS_HINT = " (features reach the module in the parameters' dtype: token ids need x.long() in forward)"
_LABELS_HINT = " (integer labels are class indices: give float labels to a regression or BCE loss)"


class TorchObjective:
    """An :class:`~aiodq.Objective` from a ``torch.nn.Module``, a loss and one worker's samples.

    Args:
        module: the network.  Its trainable parameters (``requires_grad``, in
            ``module.parameters()`` order) form x; they must be floating point, of one dtype
            and on one device.  The adapter takes the module over: it is put in evaluation
            mode (``module.eval()``: f_i must be a deterministic function of x and sample i,
            as variance reduction assumes, so dropout is off and batch norm uses its running
            statistics, which are not trained), and its parameters and their ``.grad`` become
            views of two flat buffers.  Do not move or convert it (``.to()``, ``.half()``)
            afterwards.
        loss_fn: the loss ``(outputs, labels) -> Tensor``.  A torch loss module
            (``torch.nn.CrossEntropyLoss()``, ``NLLLoss``, ``MSELoss``, ``BCEWithLogitsLoss``...,
            class weights included) is used with ``reduction="sum"`` whatever its own
            reduction (on a copy; the module you pass is unchanged), so f_i is sample i's own
            loss: for ``MSELoss`` the sum of its squared errors over the outputs.  Any other
            callable must return either the SUM over the batch (a 0-d tensor, e.g.
            ``functools.partial(F.cross_entropy, reduction="sum")``) or one loss per sample (a
            1-d tensor of the batch's length, summed here).  The loss of the first two samples
            together must be the sum of their own: a callable returning the batch's MEAN, or
            outputs ``(B, 1)`` that torch broadcasts against labels ``(B,)``, are refused.
        features: the samples, one per row of the first axis: a numpy array (any shape
            ``(n, ...)`` the module takes), a scipy sparse matrix (made dense) or a tensor.  They
            are kept as one tensor of the parameters' dtype on their device.
        labels: one label per sample: integer class indices (kept as int64, what
            ``CrossEntropyLoss`` wants) or floats (kept in the parameters' dtype), as ``loss_fn``
            reads them.
        chunk_size: at most this many samples go through the module at once: the full shard
            (``rows=None``) and large row sets are processed in chunks, which bounds memory; the
            sums are the same.
        name: the model's name; when given it must equal the run's ``TrainConfig.model``
            (checked by the master and by each worker).
        threshold: where one score per sample says "positive" in :meth:`correct` (None: 0.5
            for ``BCELoss`` and for a regression loss of labels without -1, else 0).  Give it
            where a shard alone cannot tell: a regression of -1/+1 labels whose shard holds +1 only.

    Raises:
        TypeError: if ``module`` is not a ``torch.nn.Module``, ``loss_fn`` is not callable, the
            parameters are not floating point or not of one dtype, or the data are not numbers.
        ValueError: if the module has no trainable parameters or they span devices, the
            features and labels differ in length or are empty, ``chunk_size`` is not positive,
            or the module and loss fail on the first samples (the message has torch's error), or
            their loss together is not the sum of their own.

    Threads: the adapter never changes torch's settings.  Where several workers share a
    machine, call ``torch.set_num_threads(1)`` in each worker process (torch otherwise starts
    one thread per core in every process, and they contend).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        loss_fn: LossFunction,
        features: Any,
        labels: Any,
        *,
        chunk_size: int = 1024,
        name: str | None = None,
        threshold: float | None = None,
    ) -> None:
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, not {type(module).__name__}")
        if not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be callable (outputs, labels) -> Tensor, not {type(loss_fn).__name__}"
            )
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ValueError(f"name must be a non-empty string or None, got {name!r}")
        params = [p for p in module.parameters() if p.requires_grad]
        if not params:
            raise ValueError(f"{type(module).__name__} has no trainable parameters")
        dtypes = {p.dtype for p in params}
        if len(dtypes) > 1 or params[0].dtype not in (torch.float16, torch.float32, torch.float64):
            shown = ", ".join(sorted(str(d) for d in dtypes))
            raise TypeError(
                f"the trainable parameters must be of one dtype, float16, float32 or float64 (numpy's); "
                f"they are {shown} (convert the module first, e.g. module.float())"
            )
        devices = {p.device for p in params}
        if len(devices) > 1:
            raise ValueError(f"the trainable parameters span devices {sorted(map(str, devices))}")
        dtype, device = params[0].dtype, params[0].device
        if device.type == "meta":  # (a torch audit: Tensor.item() failed on them, deep inside)
            raise ValueError(
                "the trainable parameters are on the meta device, without values: load them first"
            )

        self.module = module
        self.loss_fn = loss_fn
        self.name = name
        self.chunk_size = chunk_size
        self._loss = summing(loss_fn)
        self._features = as_tensor(features, "features", dtype, device)
        self._labels = as_tensor(labels, "labels", None if not is_float(labels) else dtype, device)
        if self._features.ndim < 1 or self._labels.ndim < 1:
            raise ValueError("features and labels need one entry per sample along their first axis")
        if self._features.shape[0] != self._labels.shape[0] or self._features.shape[0] == 0:
            raise ValueError(
                f"{self._features.shape[0]} feature rows and {self._labels.shape[0]} labels: "
                "need one label per row, and at least one sample"
            )

        check_finite(self._features, "features")
        check_finite(self._labels, "labels")
        #: The number of parameters d.
        self.dim: int = sum(p.numel() for p in params)
        #: The number of samples n_k.
        self.samples: int = int(self._features.shape[0])
        warn_unestimated_norms(module)
        # Fail before touching the module's parameters: probe in evaluation mode, restored on failure.
        was_training = module.training
        module.eval()
        try:
            self._classes = self._probe()
        except Exception:
            module.train(was_training)
            raise
        self._threshold = score_threshold(loss_fn, self._labels) if threshold is None else float(threshold)

        # One flat buffer for the parameters, one for their gradients; the parameters and
        # their .grad become views of slices of them.
        sizes = [p.numel() for p in params]
        self._flat = torch.empty(sum(sizes), dtype=dtype, device=device)
        self._grad = torch.zeros_like(self._flat)
        self._params = params
        # Every place a trainable parameter is held, a shared one's each (a torch audit: a new Parameter
        # assigned in one of a tied pair's two places was taken, its gradient outside x).
        trainable = {id(p) for p in params}
        self._owners = [
            (m, n, f"{prefix}.{n}".lstrip("."), p)
            for prefix, m in module.named_modules(remove_duplicate=False)
            for n, p in m._parameters.items()
            if p is not None and id(p) in trainable
        ]
        self._frozen = [p for p in module.parameters() if not p.requires_grad]  # (they must stay so)
        self._grad_views: list[torch.Tensor] = []
        self._pointers: list[int] = []
        offset = 0
        with torch.no_grad():
            for param, size in zip(params, sizes, strict=True):
                self._flat[offset : offset + size].copy_(param.detach().reshape(-1))
                param.data = self._flat[offset : offset + size].view_as(param)
                view = self._grad[offset : offset + size].view_as(param)
                param.grad = view
                self._grad_views.append(view)
                self._pointers.append(param.data_ptr())
                offset += size
        self._initial: Array | None = None  # x_0, once x has been written into the module
        self._counted: tuple[Array, int] | None = None  # (x, hits) of the last loss_grad over every row
        self._rows: Rows | None = None
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None

    # -- the Objective protocol ----------------------------------------------------------

    def initial(self, rng: np.random.Generator) -> Array:
        """x_0: the module's parameters before this objective first wrote an x into them.

        Torch's own initialisation, or weights loaded into the module after the objective was built
        (a torch user's audit: ``load_state_dict`` then trained from the random initialisation).
        ``rng`` is not used: seed torch (``torch.manual_seed``) before building the module for a
        reproducible x_0.  Only the master's objective gives x_0; the workers' do not.
        """
        del rng
        return self.read_parameters() if self._initial is None else self._initial.copy()

    def loss_grad(self, x: Array, rows: Rows | None = None) -> tuple[float, Array]:
        """``(sum of f_i(x), sum of grad f_i(x))`` over ``rows`` (all samples with None).

        A repeated row counts as often as it appears.  ``x`` is written into the parameters
        with one copy; the gradient is read back with one conversion into a new float64 array.
        The rows gathered for the last call are reused when the same ``rows`` array comes again
        (the inner loop evaluates one mini-batch at x_hat and at x_snap): do not change a rows
        array in place between calls.

        Raises:
            ValueError: if ``x`` is not a vector of :attr:`dim` values or ``rows`` are not
                sample indices.
            RuntimeError: if the module is in training mode, or its parameters changed (:meth:`_write`).
        """
        self._write(x)
        self._ready_grads()
        if (
            self.module.training
        ):  # (an audit: after module.train(), dropout's draws read as a non-additive loss)
            raise RuntimeError(
                "the module is in training mode (module.train() after the TorchObjective was built): "
                "f_i must be a fixed function of x (dropout off, batch norm's statistics fixed); call "
                "module.eval()"
            )
        self._grad.zero_()
        total = 0.0
        # A half-precision module's blocks are added up in float64: its own buffer overflowed at 65,504
        # (a review: a shard of 50,000 rows gave inf where the sum was 73,070).
        wide = np.zeros(self.dim) if self._grad.dtype == torch.float16 else None
        # Over every row (the snapshot phase, which asks correct(x) next), the hits are counted from the
        # same outputs: a torch audit found correct()'s second forward pass 35 % of the phase.
        hits: int | None = 0 if rows is None and self._classes is not None else None
        self._counted = None
        with torch.enable_grad():
            for inputs, targets in self._blocks(rows):
                outputs = self.module(inputs)
                loss = self._sum(outputs, targets)
                if hits is not None:
                    hits += self._hits(outputs.detach(), targets)
                torch.autograd.backward(loss)
                total += loss.detach().item()
                if wide is not None:
                    wide += self._grad.cpu().numpy()
                    self._grad.zero_()
        if wide is not None and not (math.isfinite(total) and np.isfinite(wide).all()):
            raise ValueError(
                f"a float16 module's sum over a chunk of up to {self.chunk_size} samples overflowed "
                "float16's range (65,504): give a smaller chunk_size (or a smaller step, if the run diverges)"
            )
        if hits is not None:
            self._counted = (np.array(x, dtype=np.float64), hits)  # (a copy: x may change in place)
        return total, self._grad.cpu().numpy().astype(np.float64) if wide is None else wide

    @property
    def measures_accuracy(self) -> bool:
        """Whether :meth:`correct` counts anything: the outputs are a classifier's (else it is 0)."""
        return self._classes is not None

    def correct(self, x: Array) -> int:
        """The samples classified correctly at ``x``.

        Outputs of shape ``(B, C)`` with C >= 2 are class scores: a sample is correct if its
        highest score is at its label.  Outputs of shape ``(B,)`` or ``(B, 1)`` are one score: a
        sample is correct if the score is above the threshold (``threshold``) exactly when the
        label is positive (labels 0/1 or -1/+1).  Other outputs are not a classifier's: 0.
        After :meth:`loss_grad` over every row at the same x (as a snapshot phase asks), the count
        its outputs gave: do not change the module's buffers or frozen parameters in between.

        Raises:
            RuntimeError: if the module is in training mode, or its parameters changed.
        """
        if self._classes is None:
            return 0
        if self.module.training:  # (as loss_grad: dropout would count a random draw, a torch audit)
            raise RuntimeError("the module is in training mode (module.train()): call module.eval()")
        if self._counted is not None and np.array_equal(self._counted[0], x):
            self._check_parameters()  # (as a write would)
            return self._counted[1]  # (counted by loss_grad over every row at this x)
        self._write(x)
        hits = 0
        with torch.no_grad():
            for inputs, targets in self._blocks(None):
                hits += self._hits(self.module(inputs), targets)
        return hits

    def _hits(self, outputs: torch.Tensor, targets: torch.Tensor) -> int:
        """The samples of one block whose ``outputs`` classify them correctly (:meth:`correct`)."""
        if self._classes:
            return int((outputs.argmax(dim=1) == targets).sum())
        scores = outputs.reshape(-1) > self._threshold
        return int((scores == (targets.reshape(-1) > 0)).sum())

    def fingerprint(self) -> str:
        """A digest of what the module computes with besides x: its layers, frozen parameters and buffers.

        BLAKE2b over the module's ``repr`` (its layers and their settings: a Tanh that became a
        ReLU), the loss (:func:`described`), the parameters' names and shapes, and
        the frozen parameters' and buffers' names, dtypes, shapes and values.  x holds only the
        trainable parameters, so the rest is whatever each process built: the master sends its
        digest, and a worker whose module differs there (frozen weights drawn without a seed, say)
        refuses the run instead of training another model; a checkpoint keeps it, and a run resumed
        with another module is refused.
        """
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{self.module!r};{described(self.loss_fn)};".encode())
        for name, param in self.module.named_parameters():
            digest.update(f"{name}:{tuple(param.shape)}:{param.requires_grad};".encode())
        trainable = {id(param) for param in self._params}
        frozen = [(name, p) for name, p in self.module.named_parameters() if id(p) not in trainable]
        # The loss's tensors too: class weights (an audit: weights each process drew from its own labels
        # trained a different objective in every worker without a word).
        own = (
            [*self.loss_fn.named_buffers(), *self.loss_fn.named_parameters()]
            if isinstance(self.loss_fn, torch.nn.Module)
            else []
        )
        loss_tensors = [(f"loss.{name}", tensor) for name, tensor in own]
        for name, tensor in [*frozen, *self.module.named_buffers(), *loss_tensors]:
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor_bytes(tensor))
        return digest.hexdigest()

    # -- the vector and the module -------------------------------------------------------

    def write_parameters(self, x: npt.ArrayLike) -> None:
        """Write the flat vector ``x`` into the module's parameters (to use a trained model).

        Raises:
            ValueError: if ``x`` is not a vector of :attr:`dim` values.
        """
        self._write(x)

    def read_parameters(self) -> Array:
        """The module's trainable parameters as one new float64 vector (the inverse of the above).

        Raises:
            RuntimeError: if the parameters no longer live in this objective's buffer (as :meth:`loss_grad`).
        """
        self._check_storage()
        return self._flat.detach().cpu().numpy().astype(np.float64)

    @property
    def features(self) -> torch.Tensor:
        """The samples as the module reads them (one tensor; do not modify it)."""
        return self._features

    @property
    def labels(self) -> torch.Tensor:
        """The labels as ``loss_fn`` reads them (do not modify them)."""
        return self._labels

    # -- internals ------------------------------------------------------------------------

    def _write(self, x: npt.ArrayLike) -> None:
        """Write x into the flat parameter buffer: one vectorised copy (and dtype conversion).

        Raises:
            RuntimeError: as :meth:`_check_parameters`.
        """
        self._check_parameters()
        values = x if isinstance(x, np.ndarray) else np.asarray(x)
        if values.shape != (self.dim,):
            raise ValueError(f"x must be a vector of {self.dim} values, got shape {values.shape}")
        if values.dtype.kind not in "fiu":
            try:
                values = np.array(values, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"x must be numbers: {exc}") from None
        if self._initial is None:
            self._initial = self._flat.detach().cpu().numpy().astype(np.float64)
        if self._flat.device.type == "cpu":
            # Cast into the buffer's own memory by numpy: no temporary (a torch audit: the worker's x is
            # read-only, and the float64 copy torch.from_numpy needed cost 0.6-0.8 ms at d = 10^6).
            with np.errstate(over="ignore"):  # (as copy_: beyond float16's range is inf, found by the run)
                self._flat.detach().numpy()[...] = values
        else:  # (torch.from_numpy takes float64 and other numeric dtypes, but warns on read-only memory)
            self._flat.copy_(torch.from_numpy(np.array(values, dtype=np.float64)))

    def _check_parameters(self) -> None:
        """Check that the module's parameters are still the ones x is written into.

        Raises:
            RuntimeError: if a parameter is no longer the module's, or no longer trainable (a trial:
                a new ``Parameter`` assigned to a layer was left out of x, its gradient all zeros).
        """
        # Each parameter where it was found (its module's own dict): a walk of module.parameters()
        # cost 1.5 ms a call for 1,000 tensors (a review).
        for owner, name, qualified, param in self._owners:
            if owner._parameters.get(name) is not param or not param.requires_grad:
                raise RuntimeError(
                    f"the module's parameter {qualified} changed after the TorchObjective was built (a new "
                    "Parameter assigned, or it was frozen): build a new TorchObjective"
                )
        if any(param.requires_grad for param in self._frozen):  # (an audit: its gradient piled up outside x)
            raise RuntimeError(
                "a parameter frozen when the TorchObjective was built requires grad now (unfrozen): its "
                "gradient would not be in x; build a new TorchObjective"
            )
        self._check_storage()

    def _ready_grads(self) -> None:
        """Re-attach the flat gradient views (after :meth:`_write`, which checked where the parameters live).

        ``module.zero_grad()`` (which sets ``.grad`` to None) is harmless: the views are put back.
        """
        for param, view in zip(self._params, self._grad_views, strict=True):
            if param.grad is not view:
                param.grad = view

    def _check_storage(self) -> None:
        """Raise RuntimeError if a parameter no longer lives in the flat buffer: x would not reach it.

        (A review: after ``module.double()``, or a second TorchObjective built on the same module,
        ``write_parameters`` wrote the trained model where the module no longer read it, silently.)
        """
        if any(
            param.data_ptr() != pointer for param, pointer in zip(self._params, self._pointers, strict=True)
        ):
            raise RuntimeError(
                "the module's parameters were replaced after the TorchObjective was built (module.to(), "
                ".float(), .double(), assigning .data, or another TorchObjective built on the same module): "
                "build a new TorchObjective, one per module"
            )

    def _blocks(self, rows: Rows | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, targets)`` for ``rows`` (all samples with None), at most ``chunk_size`` each."""
        step = self.chunk_size
        if rows is None:
            for start in range(0, self.samples, step):
                yield self._features[start : start + step], self._labels[start : start + step]
            return
        if rows is self._rows and self._batch is not None:
            # The inner loop asks twice for the same rows (at x_hat and at x_snap): gather once.
            yield self._batch
            return
        index = self._index(rows)
        if index.shape[0] <= step:
            self._rows, self._batch = rows, self._gather(index)
            yield self._batch
            return
        for start in range(0, index.shape[0], step):
            yield self._gather(index[start : start + step])

    def _index(self, rows: Rows) -> torch.Tensor:
        array = rows if isinstance(rows, np.ndarray) else np.asarray(rows)
        if array.ndim != 1 or array.dtype.kind not in "iu":
            raise ValueError(
                f"rows must be a 1-d array of sample indices, got {array.dtype} of shape {array.shape}"
            )
        if array.dtype != np.int64 or not array.flags.writeable:
            array = np.array(array, dtype=np.int64)
        index = torch.from_numpy(array)  # shares the rows' memory: read at once by index_select
        return index if self._features.device.type == "cpu" else index.to(self._features.device)

    def _gather(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows at ``index``; torch checks the bounds (negative indices included)."""
        try:
            return self._features.index_select(0, index), self._labels.index_select(0, index)
        except (IndexError, RuntimeError) as exc:
            low, high = int(index.min()), int(index.max())
            raise ValueError(
                f"rows must be sample indices in [0, {self.samples}), got {low}..{high}"
            ) from exc

    def _sum(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch's summed loss, from a 0-d sum or a 1-d vector of per-sample losses."""
        value = self._loss(outputs, targets)
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"loss_fn must return a tensor, not {type(value).__name__}")
        if value.ndim == 0:
            return value
        if value.ndim == 1 and value.shape[0] == targets.shape[0]:
            return value.sum()
        raise ValueError(
            f"loss_fn returned shape {tuple(value.shape)} for a batch of {targets.shape[0]}: it must "
            "return the batch's summed loss (0-d) or one loss per sample"
        )

    def _probe(self) -> bool | None:
        """Run the first samples through the module and the loss: fail now, with the reason.

        Returns whether the outputs are class scores (True), one score of labels 0/1 or -1/+1
        (False) or neither (None: a regression, say).
        """
        inputs, targets = self._features[:2], self._labels[:2]
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        try:
            with torch.enable_grad():
                outputs = self.module(inputs)
                loss = self._sum(outputs, targets)
                if (
                    isinstance(loss, torch.Tensor) and loss.requires_grad
                ):  # (an audit: some fail only backward)
                    torch.autograd.grad(loss, trainable, allow_unused=True)  # (no .grad written)
        except Exception as exc:
            # (A newcomer trial's nn.Embedding got its token ids as floats, and torch's words said no more.)
            hint = ""
            if "indices" in str(exc) and inputs.dtype.is_floating_point:
                hint = _IDS_HINT
            elif not targets.dtype.is_floating_point and ("Long" in str(exc) or "cast" in str(exc)):
                hint = _LABELS_HINT
            raise ValueError(
                f"{type(self.module).__name__} and the loss fail on features of shape "
                f"{tuple(inputs.shape[1:])} per sample and labels of dtype {targets.dtype}: {exc}{hint}"
            ) from exc
        if not isinstance(outputs, torch.Tensor) or not loss.dtype.is_floating_point:
            raise TypeError("the module must return a tensor, and the loss a floating-point tensor")
        if not loss.requires_grad:  # (a review: a detached loss failed in every worker's first loss_grad)
            inference = (
                " (built inside torch.inference_mode(): build it outside)" * torch.is_inference_mode_enabled()
            )
            raise ValueError(
                f"the loss does not depend on the trainable parameters (detached, or no path){inference}"
            )
        outputs, loss = outputs.detach(), loss.detach()
        # (An audit's run then waited for its whole timeout.  -inf outputs may be masked log-probabilities.)
        if bool(torch.isnan(outputs).any()) or not math.isfinite(float(loss)):
            raise ValueError(
                f"{type(self.module).__name__}'s outputs or loss on the first samples are not finite (NaN, "
                "or an infinite loss) at its initial parameters: nothing could train it"
            )
        if inputs.shape[0] == 2:
            self._check_additive(inputs, targets, outputs, float(loss))
        if outputs.ndim == 2 and outputs.shape[1] >= 2 and targets.ndim == 1:
            check_classes(self.loss_fn, self._labels, outputs.shape[1])
            return True
        if outputs.ndim == 1 or (outputs.ndim == 2 and outputs.shape[1] == 1):
            # One score: a binary classifier's if every label is a class (0/1, -1/+1); a regression's
            # otherwise (its sign against the target's counts nothing).
            labels = self._labels
            return False if bool(((labels == 0) | (labels == 1) | (labels == -1)).all()) else None
        return None

    def _check_additive(
        self, inputs: torch.Tensor, targets: torch.Tensor, outputs: torch.Tensor, together: float
    ) -> None:
        """Refuse a loss whose value on two samples is not the sum of their own (f_i is sample i's loss).

        Catches torch broadcasting outputs ``(B, 1)`` against labels ``(B,)`` (an ``MSELoss`` then
        sums over every pair of samples, with only a warning) and a callable that returns the
        batch's mean.  The tolerance leaves room for the rounding of batched kernels.
        """
        try:
            with torch.no_grad():
                each = [
                    float(self._sum(self.module(inputs[i : i + 1]), targets[i : i + 1])) for i in range(2)
                ]
        except Exception as exc:  # (a torch audit: torch's own words alone, on a batch norm of no statistics)
            said = f"{type(self.module).__name__} fails on one sample alone, and f_i must be sample i's own"
            raise ValueError(f"{said}: {exc} (a batch norm: track_running_stats=True)") from exc
        apart = each[0] + each[1]
        if not (math.isfinite(together) and math.isfinite(apart)):
            return  # (the run's own finiteness checks report a loss that is not finite)
        # Relative to the two losses' sizes, not their sum: a signed loss may sum to about 0 (a review).
        tolerance = 2e-2 if outputs.dtype in (torch.float16, torch.bfloat16) else 1e-3
        if abs(together - apart) <= tolerance * (abs(each[0]) + abs(each[1])) + 1e-12:
            return
        shapes = f"outputs of shape {tuple(outputs.shape)}, labels of shape {tuple(targets.shape)}"
        raise ValueError(
            f"the loss of the first two samples together is {together:.6g}, the sum of their own losses "
            f"{apart:.6g}: the loss must be a sum over the samples, f_i sample i's own. With {shapes}: "
            "if torch broadcasts the two against each other, give labels of the outputs' shape (e.g. "
            "labels.reshape(-1, 1)) or flatten the output; a callable loss must sum over the batch, not "
            "average"
        )
