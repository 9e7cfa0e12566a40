"""The ``aiodq`` command line (docs/usage.md).

Commands:

- ``aiodq demo``: a codec and protocol demonstration, in memory: a master and
  a worker connection run a handshake and one short epoch on a logistic
  regression gradient, and the bytes each message took are printed.
- ``aiodq bench codec``: the codec benchmark, printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .bench import main_codec
from .connection import MasterConnection, WorkerConnection
from .events import Config, Event, Gradient, Hello, Model, Snapshot, SnapshotGradient, Welcome
from .quant.lowp import quantize_gradient, quantize_model
from .quant.qsgd import quantize_qsgd
from .quant.sparse import quantize_sparse
from .vectors import RawVector
from .wire.messages import encode_message

__all__ = ["main"]


def _pump(
    sender: MasterConnection | WorkerConnection, receiver: MasterConnection | WorkerConnection
) -> list[Event]:
    receiver.receive_data(sender.data_to_send(), 0.0)
    events = []
    while (event := receiver.next_event()) is not None:
        events.append(event)
    return events


def demo(dim: int, bits: int, mu: float, seed: int) -> dict[str, object]:
    """Run the in-memory demonstration; return what it measured."""
    rng = np.random.default_rng(seed)
    # A small logistic-regression problem: gradients with realistic structure.
    samples = 256
    features = rng.standard_normal((samples, dim)) / np.sqrt(dim)
    labels = np.where(features @ rng.standard_normal(dim) > 0, 1.0, -1.0)

    def gradient(x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        margins = labels * (features @ x)
        result: npt.NDArray[np.float64] = -(features.T @ (labels / (1.0 + np.exp(margins)))) / samples
        return result

    master, worker = MasterConnection(), WorkerConnection()
    worker.send(Hello(name="demo-worker"), 0.0)
    _pump(worker, master)
    master.send(Welcome(version=1, worker_id=0), 0.0)
    master.send(Config(dim=dim, algorithm="asylpg", params={"bits": bits, "mu": mu}), 0.0)
    _pump(master, worker)
    snapshot = np.zeros(dim)
    master.send(Snapshot(epoch=0, vector=RawVector(snapshot)), 0.0)
    _pump(master, worker)
    worker.send(
        SnapshotGradient(
            epoch=0,
            samples=samples,
            loss=samples * np.log(2.0),
            correct=0,
            vector=RawVector(gradient(snapshot) * samples),
        ),
        0.0,
    )
    _pump(worker, master)
    x = snapshot - 0.5 * gradient(snapshot)
    rows = []
    payload = quantize_model(x, snapshot, mu, rng)
    master.send(Model(epoch=0, version=1, vector=payload.vector, relative=payload.relative), 0.0)
    model_bytes = len(master.data_to_send())
    rows.append({"message": f"MODEL ({type(payload.vector).__name__}, mu={mu})", "bytes": model_bytes})
    alpha = gradient(x) - gradient(snapshot)
    for name, vector in [
        (f"GRADIENT dense b={bits}", quantize_gradient(alpha, bits, rng)),
        (f"GRADIENT sparse phi=d/20 b={bits}", quantize_sparse(alpha, dim / 20, bits, rng)),
        ("GRADIENT QSGD s=16", quantize_qsgd(alpha, 16, rng)),
        ("GRADIENT float32", RawVector(alpha.astype(np.float32))),
    ]:
        error = float(np.linalg.norm(vector.to_dense() - alpha)) / max(float(np.linalg.norm(alpha)), 1e-300)
        rows.append(
            {
                "message": name,
                "bytes": len(encode_message(Gradient(epoch=0, version=1, vector=vector))),
                "relative_error": round(error, 4),
            }
        )
    return {"dim": dim, "float32_bytes": 4 * dim, "messages": rows}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiodq", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo_parser = commands.add_parser("demo", help="in-memory codec and protocol demonstration")
    demo_parser.add_argument("--dim", type=int, default=10_000, help="model dimension (default 10000)")
    demo_parser.add_argument("--bits", type=int, default=8, help="gradient bits b, 2 to 16 (default 8)")
    demo_parser.add_argument("--mu", type=float, default=0.5, help="model precision mu (default 0.5)")
    demo_parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    bench = commands.add_parser("bench", help="benchmarks")
    benches = bench.add_subparsers(dest="bench", required=True)
    codec = benches.add_parser("codec", help="encode/decode speed and wire size, JSON on stdout")
    codec.add_argument("--dims", default="1e4,1e5,1e6", help="comma-separated dimensions")
    codec.add_argument("--bits", default="2,4,8", help="comma-separated bit widths")
    codec.add_argument("--repeats", type=int, default=None, help="repetitions per case (default 31/101)")
    codec.add_argument("--seed", type=int, default=0)
    codec.add_argument("--out", default=None, help="also write the JSON report to this file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        if not 2 <= args.bits <= 16 or args.dim < 1 or not args.mu > 0:
            print("aiodq demo: need 2 <= --bits <= 16, --dim >= 1 and --mu > 0", file=sys.stderr)
            return 2
        print(json.dumps(demo(args.dim, args.bits, args.mu, args.seed), indent=2))
        return 0
    return main_codec(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
