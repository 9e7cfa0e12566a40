"""aiodq: asynchronous distributed optimization with double quantization.

The public API, by ring (docs/architecture.md, docs/usage.md):

- the codec: quantizers (:func:`quantize_gradient`, :func:`quantize_model`,
  :func:`quantize_sparse`, :func:`quantize_qsgd`), vector values, and the wire
  format v1 (:func:`encode_message`, :func:`decode_message`, :class:`FrameReader`);
- the sans-I/O protocol: :class:`MasterConnection`, :class:`WorkerConnection`
  and their events, the :class:`Coordinator`, :class:`TrainConfig` and the
  algorithms, objectives, :class:`Dataset` and :func:`shard`, :func:`simulate`;
- the asyncio shell: :class:`Master` and :func:`run_worker`;
- data files and whole local clusters: :func:`load_dataset`,
  :func:`load_bundled_a9a` and :func:`run_local`, loaded on first use (they
  need the ``data`` extra, scipy), so that ``import aiodq`` costs numpy,
  msgpack, bitarray and threadpoolctl only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .codec.events import (
    Close,
    ConfigMessage,
    ConnectionClosed,
    ErrorMessage,
    Event,
    FullGradient,
    Gradient,
    Heartbeat,
    Hello,
    ModelMessage,
    Snapshot,
    SnapshotGradient,
    Welcome,
)
from .codec.frames import FrameReader
from .codec.lowp import quantize_gradient, quantize_model, quantize_with_dither
from .codec.messages import DecodeContext, decode_message, encode_message
from .codec.payload import VectorPlan, plan_vector
from .codec.qsgd import quantize_qsgd
from .codec.registry import Encoding, MessageType
from .codec.sparse import quantize_sparse, sparsify
from .codec.vectors import (
    DenseQuantized,
    EqualsSnapshot,
    QSGDVector,
    RawVector,
    SparseQuantized,
    Vector,
    ZeroVector,
)
from .config import ConnectionConfig, Limits, MasterConfig
from .errors import (
    AiodqError,
    CheckpointError,
    CodecError,
    DataError,
    ErrorCode,
    LocalProtocolError,
    NonFiniteError,
    ProtocolError,
    RemoteProtocolError,
    RunError,
    StoppedError,
    UnusedOptionWarning,
    UsageError,
)
from .net.master import Master
from .net.worker import WorkerResult, run_worker
from .protocol.algorithms import ALGORITHMS, TrainConfig, initial_model
from .protocol.connection import ConnectionState, MasterConnection, WorkerConnection
from .protocol.coordinator import Coordinator
from .protocol.dataset import Dataset, shard
from .protocol.objectives import MLP, LogisticRegression, Objective, SoftmaxRegression, make_objective
from .protocol.result import RunResult
from .protocol.session import WorkerSession
from .protocol.simulate import simulate
from .version import __version__ as __version__

if TYPE_CHECKING:
    from .data import (
        load_bundled_a9a,
        load_dataset,
        load_mnist_csv,
        load_mnist_idx,
        load_svmlight,
        load_test_dataset,
    )
    from .launch.local import run_local
    from .launch.ray import run_ray
    from .launch.results import load_model, write_results


#: Names resolved on first use, with the module that defines them (they need scipy or rich).
_LAZY = {
    "load_bundled_a9a": "aiodq.data",
    "load_dataset": "aiodq.data",
    "load_mnist_csv": "aiodq.data",
    "load_mnist_idx": "aiodq.data",
    "load_svmlight": "aiodq.data",
    "load_test_dataset": "aiodq.data",
    "run_local": "aiodq.launch.local",
    "run_ray": "aiodq.launch.ray",
    "load_model": "aiodq.launch.results",
    "write_results": "aiodq.launch.results",
}


def __getattr__(name: str) -> Any:
    """Resolve the names of :data:`_LAZY` on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aiodq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ALGORITHMS",
    "AiodqError",
    "CheckpointError",
    "Close",
    "CodecError",
    "ConfigMessage",
    "ConnectionClosed",
    "ConnectionConfig",
    "ConnectionState",
    "Coordinator",
    "DataError",
    "Dataset",
    "DecodeContext",
    "DenseQuantized",
    "Encoding",
    "EqualsSnapshot",
    "ErrorCode",
    "ErrorMessage",
    "Event",
    "FrameReader",
    "FullGradient",
    "Gradient",
    "Heartbeat",
    "Hello",
    "Limits",
    "LocalProtocolError",
    "LogisticRegression",
    "MLP",
    "Master",
    "MasterConfig",
    "MasterConnection",
    "MessageType",
    "ModelMessage",
    "NonFiniteError",
    "Objective",
    "ProtocolError",
    "QSGDVector",
    "RawVector",
    "RemoteProtocolError",
    "RunError",
    "StoppedError",
    "RunResult",
    "Snapshot",
    "SnapshotGradient",
    "SoftmaxRegression",
    "SparseQuantized",
    "TrainConfig",
    "UnusedOptionWarning",
    "UsageError",
    "Vector",
    "VectorPlan",
    "Welcome",
    "WorkerConnection",
    "WorkerResult",
    "WorkerSession",
    "ZeroVector",
    "decode_message",
    "encode_message",
    "initial_model",
    "load_bundled_a9a",
    "load_dataset",
    "load_mnist_csv",
    "load_mnist_idx",
    "load_model",
    "load_svmlight",
    "load_test_dataset",
    "make_objective",
    "plan_vector",
    "quantize_gradient",
    "quantize_model",
    "quantize_qsgd",
    "quantize_sparse",
    "quantize_with_dither",
    "run_local",
    "run_ray",
    "run_worker",
    "shard",
    "simulate",
    "sparsify",
    "write_results",
]
