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
  :func:`load_bundled_a9a` and :func:`run_local` (they need the ``data``
  extra, scipy).

Every name is loaded on first use: ``import aiodq`` costs this file alone, the
first of the others numpy, msgpack, bitarray and threadpoolctl (and scipy for
the data loaders and launchers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__ as __version__

if TYPE_CHECKING:
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
    from .data import (
        load_bundled_a9a,
        load_dataset,
        load_mnist_csv,
        load_mnist_idx,
        load_svmlight,
        load_test_dataset,
    )
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
    from .launch.local import run_local
    from .launch.ray import run_ray
    from .launch.results import load_model, write_results
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


#: Every public name, with the module that defines it: resolved on first use (PEP 562), so that
#: ``import aiodq`` itself costs nothing but this file, and ``aiodq``'s command can take Ctrl-C
#: before its imports (aiodq/__main__.py).  numpy, msgpack and bitarray come with the first name;
#: the data loaders and launchers also need the ``data`` extra (scipy) or ``rich``.
_LAZY = {
    "Close": "aiodq.codec.events",
    "ConfigMessage": "aiodq.codec.events",
    "ConnectionClosed": "aiodq.codec.events",
    "ErrorMessage": "aiodq.codec.events",
    "Event": "aiodq.codec.events",
    "FullGradient": "aiodq.codec.events",
    "Gradient": "aiodq.codec.events",
    "Heartbeat": "aiodq.codec.events",
    "Hello": "aiodq.codec.events",
    "ModelMessage": "aiodq.codec.events",
    "Snapshot": "aiodq.codec.events",
    "SnapshotGradient": "aiodq.codec.events",
    "Welcome": "aiodq.codec.events",
    "FrameReader": "aiodq.codec.frames",
    "quantize_gradient": "aiodq.codec.lowp",
    "quantize_model": "aiodq.codec.lowp",
    "quantize_with_dither": "aiodq.codec.lowp",
    "DecodeContext": "aiodq.codec.messages",
    "decode_message": "aiodq.codec.messages",
    "encode_message": "aiodq.codec.messages",
    "VectorPlan": "aiodq.codec.payload",
    "plan_vector": "aiodq.codec.payload",
    "quantize_qsgd": "aiodq.codec.qsgd",
    "Encoding": "aiodq.codec.registry",
    "MessageType": "aiodq.codec.registry",
    "quantize_sparse": "aiodq.codec.sparse",
    "sparsify": "aiodq.codec.sparse",
    "DenseQuantized": "aiodq.codec.vectors",
    "EqualsSnapshot": "aiodq.codec.vectors",
    "QSGDVector": "aiodq.codec.vectors",
    "RawVector": "aiodq.codec.vectors",
    "SparseQuantized": "aiodq.codec.vectors",
    "Vector": "aiodq.codec.vectors",
    "ZeroVector": "aiodq.codec.vectors",
    "ConnectionConfig": "aiodq.config",
    "Limits": "aiodq.config",
    "MasterConfig": "aiodq.config",
    "load_bundled_a9a": "aiodq.data",
    "load_dataset": "aiodq.data",
    "load_mnist_csv": "aiodq.data",
    "load_mnist_idx": "aiodq.data",
    "load_svmlight": "aiodq.data",
    "load_test_dataset": "aiodq.data",
    "AiodqError": "aiodq.errors",
    "CheckpointError": "aiodq.errors",
    "CodecError": "aiodq.errors",
    "DataError": "aiodq.errors",
    "ErrorCode": "aiodq.errors",
    "LocalProtocolError": "aiodq.errors",
    "NonFiniteError": "aiodq.errors",
    "ProtocolError": "aiodq.errors",
    "RemoteProtocolError": "aiodq.errors",
    "RunError": "aiodq.errors",
    "StoppedError": "aiodq.errors",
    "UnusedOptionWarning": "aiodq.errors",
    "UsageError": "aiodq.errors",
    "run_local": "aiodq.launch.local",
    "run_ray": "aiodq.launch.ray",
    "load_model": "aiodq.launch.results",
    "write_results": "aiodq.launch.results",
    "Master": "aiodq.net.master",
    "WorkerResult": "aiodq.net.worker",
    "run_worker": "aiodq.net.worker",
    "ALGORITHMS": "aiodq.protocol.algorithms",
    "TrainConfig": "aiodq.protocol.algorithms",
    "initial_model": "aiodq.protocol.algorithms",
    "ConnectionState": "aiodq.protocol.connection",
    "MasterConnection": "aiodq.protocol.connection",
    "WorkerConnection": "aiodq.protocol.connection",
    "Coordinator": "aiodq.protocol.coordinator",
    "Dataset": "aiodq.protocol.dataset",
    "shard": "aiodq.protocol.dataset",
    "LogisticRegression": "aiodq.protocol.objectives",
    "MLP": "aiodq.protocol.objectives",
    "Objective": "aiodq.protocol.objectives",
    "SoftmaxRegression": "aiodq.protocol.objectives",
    "make_objective": "aiodq.protocol.objectives",
    "RunResult": "aiodq.protocol.result",
    "WorkerSession": "aiodq.protocol.session",
    "simulate": "aiodq.protocol.simulate",
}


#: The subpackages and modules that ``import aiodq`` loaded when it loaded every name: still
#: attributes of ``aiodq`` without their own import.
_SUBMODULES = frozenset({"codec", "config", "errors", "net", "protocol"})


def __getattr__(name: str) -> Any:
    """Resolve the names of :data:`_LAZY` on first use (PEP 562), and :data:`_SUBMODULES`."""
    if name in _SUBMODULES:
        return importlib.import_module(f"aiodq.{name}")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aiodq' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


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
