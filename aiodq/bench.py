"""``aiodq bench codec``: encode and decode speed and size of the wire codec.

Each case times, over many repetitions, and reports the median of:

- encode: quantize + pack + frame (``quantize_gradient`` or ``quantize_sparse``,
  then ``encode_message(Gradient(...))``);
- decode: frame parse + payload decode + rebuild the float32 vector;
- baseline: ``x.tobytes()`` of the same float32 input, in the same run (the
  memory-copy baseline), and each time's ratio to it.

Sizes: bytes on the wire (whole frame) against the ideal payload (``d * b``
bits plus a 32-bit scale; for sparse vectors, the codes, the scale and the
smaller index encoding) and against raw float32.
"""

from __future__ import annotations

import ctypes
import json
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .config import Limits
from .events import Gradient
from .quant.lowp import quantize_gradient
from .quant.packing import packed_size
from .quant.sparse import quantize_sparse
from .vectors import DenseQuantized, SparseQuantized
from .wire.bitcodes import rice_block_size
from .wire.frames import FrameReader
from .wire.messages import DecodeContext, decode_message, encode_message
from .wire.payload import Encoding, encoding_of, sparse_index_encoding

__all__ = ["bench_codec", "steady_allocator"]


def steady_allocator() -> bool:
    """Keep glibc from returning memory to the OS between repetitions.

    Timings of MB-sized temporaries swing by several times when every
    allocation is a fresh mmap (landscape.md); this sets the same thresholds as
    ``MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=1073741824``.
    Returns False where glibc's ``mallopt`` is not available.
    """
    if sys.platform != "linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok_trim = libc.mallopt(m_trim_threshold, 1 << 30)
    ok_mmap = libc.mallopt(m_mmap_threshold, 1 << 28)
    return bool(ok_trim and ok_mmap)


def _median_seconds(func: Callable[[], object], repeats: int) -> float:
    func()  # warm up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def _ideal_bytes(vector: DenseQuantized | SparseQuantized) -> int:
    if isinstance(vector, DenseQuantized):
        return packed_size(vector.dim, vector.bits) + 4
    encoding, k = sparse_index_encoding(vector)
    if encoding is Encoding.SPARSE_BITMAP:
        index_bytes = (vector.dim + 7) // 8
    else:
        index_bytes = rice_block_size(np.diff(vector.indices, prepend=-1) - 1, k)
    return packed_size(vector.nnz, vector.bits) + 4 + index_bytes


def _case(
    x: np.ndarray[Any, Any], bits: int, budget: float | None, repeats: int, seed: int
) -> dict[str, Any]:
    d = x.shape[0]
    rng = np.random.default_rng(seed)
    context = DecodeContext(limits=Limits(), dim=d)

    def quantized() -> DenseQuantized | SparseQuantized:
        vector = quantize_gradient(x, bits, rng) if budget is None else quantize_sparse(x, budget, bits, rng)
        assert isinstance(vector, DenseQuantized | SparseQuantized)
        return vector

    def encode() -> bytes:
        return encode_message(Gradient(epoch=1, version=1, vector=quantized()))

    def decode(data: bytes) -> Gradient:
        reader = FrameReader(context.limits)
        reader.feed(data)
        frame = reader.next_frame()
        assert frame is not None
        event = decode_message(frame, context)
        assert isinstance(event, Gradient)
        return event

    frame_bytes = encode()
    vector = decode(frame_bytes).vector
    assert isinstance(vector, DenseQuantized | SparseQuantized)

    baseline = _median_seconds(x.tobytes, repeats)
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    encode_s = _median_seconds(encode, repeats)
    decode_s = _median_seconds(lambda: decode(frame_bytes).vector.to_dense(np.float32), repeats)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    ideal = _ideal_bytes(vector)
    return {
        "d": d,
        "bits": bits,
        "kind": "dense" if budget is None else "sparse",
        "phi": budget,
        "nnz": vector.nnz if isinstance(vector, SparseQuantized) else d,
        "encoding": encoding_of(vector).name,
        "baseline_tobytes_ms": round(baseline * 1e3, 4),
        "encode_ms": round(encode_s * 1e3, 4),
        "decode_ms": round(decode_s * 1e3, 4),
        "encode_ratio": round(encode_s / baseline, 2),
        "decode_ratio": round(decode_s / baseline, 2),
        "wire_bytes": len(frame_bytes),
        "ideal_bytes": ideal,
        "overhead_bytes": len(frame_bytes) - ideal,
        "float32_bytes": 4 * d,
        "ratio_to_float32": round(len(frame_bytes) / (4 * d), 5),
        "minor_page_faults": faults,
        "repeats": repeats,
    }


def bench_codec(
    dims: tuple[int, ...] = (10_000, 100_000, 1_000_000),
    bits_list: tuple[int, ...] = (2, 4, 8),
    *,
    repeats: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Run the codec benchmark; return its report (see the module docstring)."""
    steady = steady_allocator()
    rng = np.random.default_rng(seed)
    cases = []
    for d in dims:
        x = rng.standard_normal(d).astype(np.float32)
        n = repeats or (31 if d >= 1_000_000 else 101)
        for bits in bits_list:
            cases.append(_case(x, bits, None, n, seed))
        for bits in bits_list:
            cases.append(_case(x, bits, d / 20, n, seed))
    return {
        "benchmark": "codec",
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "cpu": platform.machine()},
        "steady_allocator": steady,
        "cases": cases,
    }


def main_codec(args: Any) -> int:
    """Entry point of ``aiodq bench codec``."""
    dims = tuple(int(float(v)) for v in args.dims.split(","))
    bits_list = tuple(int(v) for v in args.bits.split(","))
    report = bench_codec(dims, bits_list, repeats=args.repeats, seed=args.seed)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    return 0
