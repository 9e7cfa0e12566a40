"""``aiodq bench codec``: encode and decode speed and size of the wire codec.

Each case times, over many repetitions, and reports the median of:

- encode: quantize + pack + frame (``quantize_gradient`` or ``quantize_sparse``,
  then ``encode_message(Gradient(...))``);
- decode: frame parse + payload decode + rebuild the float32 vector;
- baseline: ``x.tobytes()`` of the same float32 input, in the same run (the
  memory-copy baseline), and each time's ratio to it.

Sizes: bytes on the wire (whole frame) against the ideal payload (``d * b``
bits plus a 32-bit scale; for DENSE_RICE, its Rice block plus the scale; for
sparse vectors, the codes, the scale and the smaller index encoding) and
against raw float32.

Three kinds of case, all on the same gradient (standard normal float32 values):
``dense`` (fixed-width DENSE codes), ``dense_rice`` (the same quantizer, encoded
with ``dense_rice=True`` as a master or worker with entropy coding does, so it
travels as DENSE_RICE, wire-format.md 5.8, when that is smaller; its report also
gives its times against the ``dense`` case of the same d and b in the same run)
and ``sparse`` (``quantize_sparse`` with phi = d / 20).  The dither comes from
:func:`aiodq.codec.lowp.make_rng`, the generator the master and workers draw from.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import math
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from ..codec.bitcodes import rice_block_size
from ..codec.events import (
    Close,
    ConnectionClosed,
    Event,
    Gradient,
    Hello,
    ModelMessage,
    Snapshot,
    SnapshotGradient,
)
from ..codec.frames import FrameReader
from ..codec.lowp import make_rng, quantize_gradient
from ..codec.messages import DecodeContext, decode_message, encode_message
from ..codec.packing import packed_size
from ..codec.payload import dense_rice_choose, plan_vector, zigzag
from ..codec.registry import Encoding
from ..codec.sparse import quantize_sparse
from ..codec.vectors import DenseQuantized, RawVector, SparseQuantized
from ..config import Limits
from ..errors import UsageError
from ..launch.local import run_coroutine, use_uvloop
from ..net.master import Master
from ..protocol.algorithms import MasterState, TrainConfig
from ..protocol.connection import WorkerConnection

__all__ = ["bench_codec", "machine", "steady_allocator"]


def machine() -> dict[str, str]:
    """What a benchmark report says of the machine: Python, numpy and the CPU architecture."""
    return {"python": platform.python_version(), "numpy": np.__version__, "cpu": platform.machine()}


def steady_allocator() -> bool:
    """Keep glibc from returning memory to the OS between repetitions.

    Timings of MB-sized temporaries swing by several times when every
    allocation is a fresh mmap (page faults); this sets the same thresholds as
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


def _ideal_bytes(vector: DenseQuantized | SparseQuantized, *, rice: bool = False) -> int:
    if isinstance(vector, DenseQuantized):
        if rice and plan_vector(vector, dense_rice=True).encoding is Encoding.DENSE_RICE:
            # The Rice block itself (k byte, remainders, unary stream) plus the scale.
            return dense_rice_choose(zigzag(vector.codes), vector.bits)[1] + 4
        return packed_size(vector.dim, vector.bits) + 4
    plan = plan_vector(vector)
    encoding, k = plan.encoding, plan.k
    if encoding is Encoding.SPARSE_BITMAP:
        index_bytes = (vector.dim + 7) // 8
    else:
        index_bytes = rice_block_size(np.diff(vector.indices, prepend=-1) - 1, k)
    return packed_size(vector.nnz, vector.bits) + 4 + index_bytes


#: Draws of the quantizer, at most, until one is not the zero vector (at d = 20, phi = 1 keeps no
#: coordinate in about a third of the draws).
_DRAWS = 100


def _case(
    x: np.ndarray[Any, Any], bits: int, budget: float | None, repeats: int, seed: int, *, rice: bool = False
) -> dict[str, Any]:
    d = x.shape[0]
    rng = make_rng(seed)
    context = DecodeContext(limits=Limits(), dim=d)

    def encode() -> bytes:
        # A sparsifier may keep no coordinate (about e**-phi of the draws): that draw is sent as ZERO
        # and timed as it is, as a worker would send it.
        vector = quantize_gradient(x, bits, rng) if budget is None else quantize_sparse(x, budget, bits, rng)
        return encode_message(Gradient(epoch=1, version=1, vector=vector), dense_rice=rice)

    def decode(data: bytes) -> Gradient:
        reader = FrameReader(context.limits)
        reader.feed(data)
        frame = reader.next_frame()
        assert frame is not None
        event = decode_message(frame, context)
        assert isinstance(event, Gradient)
        return event

    # The frame that the decoder is timed on, and whose size is reported: the first draw that is
    # not the zero vector.
    for _ in range(_DRAWS):
        frame_bytes = encode()
        vector = decode(frame_bytes).vector
        if isinstance(vector, DenseQuantized | SparseQuantized):
            break
    else:
        raise UsageError(
            f"d = {d}: {_DRAWS} draws of the sparsifier kept no coordinate; choose a larger --dims"
        )

    baseline = _median_seconds(x.tobytes, repeats)
    faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    encode_s = _median_seconds(encode, repeats)
    decode_s = _median_seconds(lambda: decode(frame_bytes).vector.to_dense(np.float32), repeats)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    ideal = _ideal_bytes(vector, rice=rice)
    return {
        "d": d,
        "bits": bits,
        "kind": "sparse" if budget is not None else ("dense_rice" if rice else "dense"),
        "phi": budget,
        "nnz": vector.nnz if isinstance(vector, SparseQuantized) else d,
        "encoding": plan_vector(vector, dense_rice=rice).encoding.name,
        # To the nanosecond: the ratios below follow from the printed times (a lab audit: 4 decimals left
        # the copy of 3,001 floats one significant digit, and 10 % between the ratio and the times').
        "baseline_tobytes_ms": round(baseline * 1e3, 6),
        "encode_ms": round(encode_s * 1e3, 6),
        "decode_ms": round(decode_s * 1e3, 6),
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
        dense = {}
        for bits in bits_list:
            dense[bits] = _case(x, bits, None, n, seed)
            cases.append(dense[bits])
        for bits in bits_list:
            case = _case(x, bits, None, n, seed, rice=True)
            # Against the fixed-width codes of the same gradient, d and b, measured in this run.
            case["encode_vs_dense"] = round(case["encode_ms"] / dense[bits]["encode_ms"], 2)
            case["decode_vs_dense"] = round(case["decode_ms"] / dense[bits]["decode_ms"], 2)
            cases.append(case)
        for bits in bits_list:
            cases.append(_case(x, bits, d / 20, n, seed))
    return {
        "benchmark": "codec",
        "machine": machine(),
        "steady_allocator": steady,
        "generator": "SFC64 (aiodq.codec.lowp.make_rng)",
        "cases": cases,
    }


def _integers(text: str, option: str, low: int, high: int) -> tuple[int, ...]:
    """A comma-separated option of whole numbers (``1e5`` allowed) in ``[low, high]``.

    Raises:
        UsageError: for anything else.
    """
    values = []
    for item in text.split(","):
        try:
            number = float(item)
        except ValueError:
            raise UsageError(f"{option}: expected comma-separated numbers, got {text!r}") from None
        if not (math.isfinite(number) and number == int(number) and low <= number <= high):
            raise UsageError(f"{option}: {item!r} is not a whole number from {low} to {high}")
        values.append(int(number))
    return tuple(values)


def _report(report: dict[str, Any], out: str | None) -> int:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        try:
            Path(out).write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot write {out}: {exc.strerror or exc}") from None
    return 0


def _check_out(out: str | None) -> None:
    """Fail before a long benchmark, not after it, when ``--out`` cannot be written."""
    if out and Path(out).is_dir():
        raise UsageError(f"cannot write {out}: it is a folder; give a file name")
    if out and not os.access(Path(out).resolve().parent, os.W_OK):
        raise UsageError(f"cannot write {out}: its folder does not exist or is not writable")


def main_codec(args: Any) -> int:
    """Entry point of ``aiodq bench codec``.

    Raises:
        UsageError: for a bad option value.
    """
    dims = _integers(args.dims, "--dims", 1, 1 << 24)
    bits_list = _integers(args.bits, "--bits", 2, 16)
    if args.repeats is not None and args.repeats < 1:
        raise UsageError("--repeats must be at least 1")
    _check_out(args.out)
    return _report(bench_codec(dims, bits_list, repeats=args.repeats, seed=args.seed), args.out)


# -- aiodq bench master ----------------------------------------------------------


def _updates_for(dim: int) -> int:
    return 3000 if dim <= 10_000 else (600 if dim <= 100_000 else 80)


def _answer_at_once(host: str, port: int, workers: int, dim: int) -> None:
    """Fake workers (run in a child process): answer SNAPSHOT and MODEL at once, no model compute."""
    # The child is spawned, not forked: it needs the allocator setting of its own, or every
    # decoded MODEL's temporaries page-fault (a DENSE_RICE model at d = 10^5 decoded in 1.1 ms
    # instead of 0.45 ms, and the fake workers became the bottleneck).
    steady_allocator()
    rng = np.random.default_rng(7)
    gradient = quantize_gradient(rng.standard_normal(dim) * 1e-3, 8, rng)
    zeros = RawVector(np.zeros(dim))

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        connection = WorkerConnection()
        connection.send(Hello(name="bench"), 0.0)
        writer.write(connection.data_to_send())
        while True:
            data = await reader.read(1 << 20)
            connection.receive_data(data, 0.0)
            while (event := connection.next_event()) is not None:
                if isinstance(event, Snapshot):
                    reply = SnapshotGradient(epoch=event.epoch, samples=1, loss=0.0, correct=0, vector=zeros)
                    connection.send(reply, 0.0)
                elif isinstance(event, ModelMessage):
                    connection.send(Gradient(epoch=event.epoch, version=event.version, vector=gradient), 0.0)
                elif isinstance(event, Close | ConnectionClosed):
                    pass
            out = connection.data_to_send()
            if out:
                writer.write(out)
            if not data or connection.state.value == "closed":
                writer.close()
                return

    async def all_workers() -> None:
        await asyncio.gather(*(one() for _ in range(workers)))

    asyncio.run(all_workers())


def decode_frame(data: bytes, context: DecodeContext) -> Event:
    """The one frame in ``data``, decoded as a receiver would (frame reader, then message)."""
    reader = FrameReader(context.limits)
    reader.feed(data)
    frame = reader.next_frame()
    assert frame is not None
    return decode_message(frame, context)


def median_parts_ms(parts: dict[str, list[float]], run: Callable[[], None], repeats: int) -> dict[str, float]:
    """Run ``run`` once to warm up, then ``repeats`` times, with one BLAS thread; each part's median in ms.

    ``run`` appends one duration in seconds to each list of ``parts`` per call.
    """
    with threadpool_limits(1, user_api="blas"):
        run()
        for values in parts.values():
            values.clear()
        for _ in range(repeats):
            run()
    return {name: statistics.median(values) * 1e3 for name, values in parts.items()}


def _in_process_update(dim: int, repeats: int, *, rice: bool = True) -> dict[str, float]:
    """Median times (ms) of one master update: decode a gradient, apply it, quantize and encode the model.

    The gradient is a DENSE 8-bit vector; the model goes as the master sends it by default
    (entropy coding: DENSE_RICE where smaller, ``rice``) or at fixed width (``rice=False``,
    ``--no-entropy-coding``).  Timed with one BLAS thread, as the master runs
    (``Master(blas_threads=1)``).  Returns the medians of each step and of the whole update.
    """
    rng = np.random.default_rng(3)
    config = TrainConfig(algorithm="asylpg", epochs=1, updates_per_epoch=10**9, tau=10**9)
    state = MasterState(config, np.zeros(dim))
    state.finish_snapshot_phase(rng.standard_normal(dim), 1.0, 1)
    frame_bytes = encode_message(
        Gradient(epoch=0, version=0, vector=quantize_gradient(rng.standard_normal(dim) * 1e-3, 8, rng))
    )
    context = DecodeContext(limits=Limits(), dim=dim)
    steps: dict[str, list[float]] = {name: [] for name in ("decode", "apply", "quantize", "encode", "update")}

    def update() -> None:
        start = time.perf_counter()
        event = decode_frame(frame_bytes, context)
        assert isinstance(event, Gradient)
        decoded = time.perf_counter()
        state.apply(event.vector, state.version)
        applied = time.perf_counter()
        vector, relative = state.model_message()
        quantized = time.perf_counter()
        message = ModelMessage(epoch=0, version=state.version, vector=vector, relative=relative)
        encode_message(message, dense_rice=rice)
        end = time.perf_counter()
        for name, seconds in (
            ("decode", decoded - start),
            ("apply", applied - decoded),
            ("quantize", quantized - applied),
            ("encode", end - quantized),
            ("update", end - start),
        ):
            steps[name].append(seconds)

    return {name: round(ms, 4) for name, ms in median_parts_ms(steps, update, repeats).items()}


def bench_master(dims: tuple[int, ...], worker_counts: tuple[int, ...], updates: int = 0) -> dict[str, Any]:
    """Applied updates per second over TCP on 127.0.0.1 against the in-process cost of one update."""
    steady = steady_allocator()
    context = multiprocessing.get_context("spawn")
    cases = []
    for dim in dims:
        repeats = 31 if dim >= 1_000_000 else 101
        in_process = _in_process_update(dim, repeats)
        fixed_width = _in_process_update(dim, repeats, rice=False)
        for workers in worker_counts:
            count = updates or _updates_for(dim)
            config = TrainConfig(algorithm="asylpg", epochs=1, updates_per_epoch=count, tau=4 * workers + 8)

            async def serve(
                config: TrainConfig = config, workers: int = workers, dim: int = dim
            ) -> dict[str, Any]:
                async with Master(config, np.zeros(dim), workers=workers, samples=workers) as master:
                    host, port = master.address
                    child = context.Process(
                        target=_answer_at_once, args=(host, port, workers, dim), daemon=True
                    )
                    child.start()
                    try:
                        summary = (await master.wait(timeout=600)).to_json()
                    finally:
                        await asyncio.get_running_loop().run_in_executor(None, child.join, 30)
                    return summary

            summary = run_coroutine(serve())
            trace = summary["trace"]
            seconds = trace[1]["time"] - trace[0]["time"]
            applied = trace[1]["version"] - trace[0]["version"]
            per_update = seconds / applied
            whole = in_process["update"] / 1e3
            cases.append(
                {
                    "d": dim,
                    "workers": workers,
                    "applied_updates": applied,
                    "dropped": summary["staleness"]["dropped"],
                    "updates_per_second": round(applied / seconds, 1),
                    "seconds_per_update_ms": round(per_update * 1e3, 4),
                    "in_process_update_ms": in_process["update"],
                    "in_process_steps_ms": in_process,
                    "in_process_fixed_width_ms": fixed_width,
                    "overhead_ratio": round(per_update / whole, 3),
                    "staleness_mean": round(summary["staleness"]["mean"], 3),
                }
            )
    return {
        "benchmark": "master",
        "event_loop": "uvloop" if use_uvloop() else "asyncio",
        "steady_allocator": steady,
        "note": "per-update time over TCP (an epoch's start to the end of the next snapshot phase, over the "
        "updates applied in between: one snapshot round trip included) against the same run's in-process "
        "decode + apply + quantize + encode "
        "(models Rice-coded where smaller, as the master sends them by default; in_process_fixed_width_ms: "
        "the same update with fixed-width models, as with --no-entropy-coding), one BLAS thread",
        "cases": cases,
    }


def main_master(args: Any) -> int:
    """Entry point of ``aiodq bench master``.

    Raises:
        UsageError: for a bad option value.
    """
    dims = _integers(args.dims, "--dims", 1, 1 << 24)
    worker_counts = _integers(args.workers, "--workers", 1, 256)
    if args.updates < 0:
        raise UsageError("--updates must not be negative")
    _check_out(args.out)
    return _report(bench_master(dims, worker_counts, args.updates), args.out)
