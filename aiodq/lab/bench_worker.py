"""``aiodq bench worker``: a worker's step per algorithm, its computation against its codec.

For each dimension d and algorithm, one :class:`~aiodq.protocol.algorithms.WorkerState`
on a synthetic logistic-regression shard (sparse features, ``nnz_per_row`` nonzeros per
row, labels from a random hyperplane) takes many steps, and the report gives the median
of each part of a step, as a worker process runs it (one BLAS thread):

- ``model_decode``: parse the MODEL frame the master sends (the model quantized under
  the mu-constraint and Rice-coded where smaller, or float32 for the full-precision
  algorithms) and decode its vector;
- ``prepare``: :meth:`WorkerState.prepare`, the model-free half of the step, which the
  worker does while its GRADIENT travels and the master answers: here, drawing the
  mini-batch only, since logistic regression's ``grad_difference`` takes both gradients in
  one pass (an objective without it would also compute the gradient at x_snap here);
- ``compute``: the rest of :meth:`WorkerState.variance_reduced`, i.e. rebuild the model
  and compute ``alpha`` (the gradient difference on the mini-batch);
- ``encode``: :meth:`WorkerState.compress` (quantize, sparsify or QSGD) and
  ``encode_message`` of the GRADIENT (entropy coding on, as by default).

``step`` is all four; ``critical_path`` leaves out ``prepare``: the time from a MODEL's
arrival to its GRADIENT, and ``overlap_saving`` is ``prepare / step``, the share of a step
taken off that path.  ``codec_share`` is ``(model_decode + encode) / step``: how much of a
step the codec takes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..codec.events import Gradient, ModelMessage
from ..codec.messages import DecodeContext, encode_message
from ..config import Limits
from ..errors import UsageError
from ..protocol.algorithms import ALGORITHMS, MasterState, TrainConfig, WorkerState
from ..protocol.objectives import LogisticRegression
from .bench import _check_out, _integers, _report, decode_frame, machine, median_parts_ms, steady_allocator

__all__ = ["bench_worker", "main_worker"]


def _shard(dim: int, samples: int, nnz_per_row: int, seed: int) -> LogisticRegression:
    """Synthetic logistic regression: ``samples`` sparse rows of ``dim`` features."""
    import scipy.sparse as sp  # noqa: PLC0415 - the lab extra

    rng = np.random.default_rng(seed)
    density = min(1.0, nnz_per_row / dim)
    features = sp.csr_matrix(sp.random(samples, dim, density=density, random_state=rng, dtype=np.float64))
    scores = np.asarray(features @ rng.standard_normal(dim))
    labels = np.where(scores >= 0, 1.0, -1.0)
    return LogisticRegression(features, labels)


def _model_frame(config: TrainConfig, objective: LogisticRegression, rng: np.random.Generator) -> bytes:
    """A MODEL frame as the master sends it mid-epoch: x a little away from x_snap."""
    state = MasterState(config, rng.standard_normal(objective.dim) * 0.1)
    state.finish_snapshot_phase(rng.standard_normal(objective.dim) * 1e-2, 1.0, 1)
    state.x = state.snapshot + rng.standard_normal(objective.dim) * 1e-3
    vector, relative = state.model_message()
    message = ModelMessage(epoch=0, version=0, vector=vector, relative=relative)
    return encode_message(message, dense_rice=config.entropy_coding)


def _case(dim: int, algorithm: str, repeats: int, nnz_per_row: int, seed: int) -> dict[str, Any]:
    config = TrainConfig(algorithm=algorithm, seed=seed)
    objective = _shard(dim, max(4 * config.batch, 2000), nnz_per_row, seed)
    rng = np.random.default_rng(seed)
    frame_bytes = _model_frame(config, objective, rng)
    worker = WorkerState(config, objective, 0)
    _, gradient_sum, _ = worker.snapshot_phase(rng.standard_normal(dim) * 0.1)
    worker.set_full_gradient(gradient_sum / objective.samples)
    context = DecodeContext(limits=Limits(), dim=dim)
    names = ("prepare", "model_decode", "compute", "encode", "step", "critical_path")
    parts: dict[str, list[float]] = {name: [] for name in names}
    encoding = ""
    sparse = config.entropy_coding and config.sparse_gradients  # (its sparse form, as a worker sends it)

    def step() -> None:
        nonlocal encoding
        start = time.perf_counter()
        worker.prepare()
        prepared = time.perf_counter()
        event = decode_frame(frame_bytes, context)
        assert isinstance(event, ModelMessage)
        decoded = time.perf_counter()
        alpha = worker.variance_reduced(event.vector, event.relative)
        computed = time.perf_counter()
        vector = worker.compress(alpha)
        encode_message(
            Gradient(epoch=0, version=0, vector=vector),
            dense_rice=config.entropy_coding,
            sparse_gradient=sparse,
        )
        end = time.perf_counter()
        encoding = type(vector).__name__
        for name, seconds in (
            ("prepare", prepared - start),
            ("model_decode", decoded - prepared),
            ("compute", computed - decoded),
            ("encode", end - computed),
            ("step", end - start),
            ("critical_path", end - prepared),
        ):
            parts[name].append(seconds)

    medians = median_parts_ms(parts, step, repeats)
    return {
        "d": dim,
        "algorithm": algorithm,
        "batch": config.batch,
        "nnz_per_row": min(nnz_per_row, dim),
        "gradient": encoding,
        **{f"{name}_ms": round(value, 4) for name, value in medians.items()},
        "codec_share": round((medians["model_decode"] + medians["encode"]) / medians["step"], 3),
        "overlap_saving": round(medians["prepare"] / medians["step"], 3),
        "repeats": repeats,
    }


def bench_worker(
    dims: tuple[int, ...] = (10_000, 100_000, 1_000_000),
    algorithms: tuple[str, ...] = tuple(ALGORITHMS),
    *,
    repeats: int | None = None,
    nnz_per_row: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the worker benchmark; return its report (see the module docstring)."""
    steady = steady_allocator()
    cases = [
        _case(dim, algorithm, repeats or (31 if dim >= 1_000_000 else 101), nnz_per_row, seed)
        for dim in dims
        for algorithm in algorithms
    ]
    return {
        "benchmark": "worker",
        "machine": machine(),
        "steady_allocator": steady,
        "note": "median ms per step part, one BLAS thread; synthetic sparse logistic regression",
        "cases": cases,
    }


def main_worker(args: Any) -> int:
    """Entry point of ``aiodq bench worker``.

    Raises:
        UsageError: for a bad option value.
    """
    dims = _integers(args.dims, "--dims", 1, 1 << 24)
    names = args.algorithms.strip()
    algorithms = tuple(ALGORITHMS) if names == "all" else tuple(name.strip() for name in names.split(","))
    unknown = [name for name in algorithms if name not in ALGORITHMS]
    if unknown:
        raise UsageError(f"--algorithms: unknown {', '.join(unknown)} (one of {', '.join(ALGORITHMS)})")
    if args.repeats is not None and args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    if args.nnz_per_row < 1:
        raise UsageError("--nnz-per-row must be at least 1")
    _check_out(args.out)
    report = bench_worker(
        dims, algorithms, repeats=args.repeats, nnz_per_row=args.nnz_per_row, seed=args.seed
    )
    return _report(report, args.out)
