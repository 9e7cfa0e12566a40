"""aiodq: asynchronous distributed optimization with double quantization.

The public API, in three rings (see docs/usage.md):

- quantizers and vector values: :func:`quantize_gradient`, :func:`quantize_model`,
  :func:`quantize_sparse`, :func:`quantize_qsgd` and the vector classes;
- the wire format v1: :func:`encode_message`, :func:`decode_message`, :class:`FrameReader`;
- sans-I/O connections: :class:`MasterConnection`, :class:`WorkerConnection` and their events.
"""

from .config import ConnectionConfig, Limits
from .connection import ConnectionState, MasterConnection, WorkerConnection
from .errors import (
    CodecError,
    ErrorCode,
    LocalProtocolError,
    NonFiniteError,
    ProtocolError,
    RemoteProtocolError,
)
from .events import (
    Close,
    Config,
    ConnectionClosed,
    Error,
    Event,
    FullGradient,
    Gradient,
    Heartbeat,
    Hello,
    Model,
    Snapshot,
    SnapshotGradient,
    Welcome,
)
from .quant.lowp import quantize_gradient, quantize_model, quantize_with_dither
from .quant.qsgd import quantize_qsgd
from .quant.sparse import quantize_sparse, sparsify
from .vectors import (
    DenseQuantized,
    EqualsSnapshot,
    QSGDVector,
    RawVector,
    SparseQuantized,
    Vector,
    ZeroVector,
)
from .wire.frames import FrameReader, MessageType
from .wire.messages import DecodeContext, decode_message, encode_message
from .wire.payload import Encoding

__version__ = "0.1.0"

__all__ = [
    "Close",
    "CodecError",
    "Config",
    "ConnectionClosed",
    "ConnectionConfig",
    "ConnectionState",
    "DecodeContext",
    "DenseQuantized",
    "Encoding",
    "EqualsSnapshot",
    "Error",
    "ErrorCode",
    "Event",
    "FrameReader",
    "FullGradient",
    "Gradient",
    "Heartbeat",
    "Hello",
    "Limits",
    "LocalProtocolError",
    "MasterConnection",
    "MessageType",
    "Model",
    "NonFiniteError",
    "ProtocolError",
    "QSGDVector",
    "RawVector",
    "RemoteProtocolError",
    "Snapshot",
    "SnapshotGradient",
    "SparseQuantized",
    "Vector",
    "Welcome",
    "WorkerConnection",
    "ZeroVector",
    "decode_message",
    "encode_message",
    "quantize_gradient",
    "quantize_model",
    "quantize_qsgd",
    "quantize_sparse",
    "quantize_with_dither",
    "sparsify",
]
