r"""Train a small convolutional network (PyTorch) on MNIST over TCP: one master, M worker processes.

::

    python examples/torch_mnist.py --data /path/to/mnist                  # AsyLPG, 4 workers
    python examples/torch_mnist.py --data /path/to/mnist --algorithm asyfpg --out /tmp/fp

``--data`` is an MNIST-format folder (:func:`aiodq.data.load_dataset`): the training set is its
``train-*-idx*`` files or its one ``.csv``/``.csv.gz``, the test set its ``t10k-*`` files.  The
master runs in this process; each worker is this same script started again with ``--worker I``,
holds shard I of M and computes its gradients with :class:`aiodq.torch.TorchObjective`.  At the
end it prints the test accuracy, the wall time and the bits each way; with ``--out`` it writes
``result.json``, ``model.npz`` (the flat parameter vector; ``objective.write_parameters``
puts it back into a network) and ``loss_vs_bits.png``.

The factory :func:`objective` also serves the command line, from this folder (one torch thread
per worker process: several threads per process on shared cores slow torch down many times)::

    OMP_NUM_THREADS=1 aiodq run --model torch_mnist:objective --data /path/to/mnist \
        --step 0.05 --batch 16 --bits 4 --l2 0.003

docs/torch.md gives the figures measured with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aiodq import (
    ALGORITHMS,
    ConnectionConfig,
    Master,
    RunResult,
    TrainConfig,
    load_dataset,
    load_test_dataset,
    run_worker,
    shard,
    write_results,
)
from aiodq.torch import TorchObjective

#: The model's name in TrainConfig.model and in the objective (also ``aiodq run --model``'s spec).
MODEL = "torch_mnist:objective"

# The defaults that reach >= 0.95 test accuracy from 5,000 training images with AsyLPG (see
# docs/torch.md): small batches give many cheap quantized updates per full-precision snapshot,
# 4-bit gradients keep them cheap, and a stronger L2 term than aiodq's default steadies the end.
DEFAULTS: dict[str, Any] = {"epochs": 12, "step": 0.05, "batch": 16, "bits": 4, "l2": 3e-3, "workers": 4}


def network(seed: int = 0) -> nn.Module:
    """A LeNet-style network for 28 x 28 images given as rows of 784 pixels (20,522 parameters).

    Its initial weights are torch's default initialisation, drawn with ``seed`` without touching
    torch's global random state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, 8, kernel_size=5),  # 8 x 24 x 24
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8 x 12 x 12
            nn.Conv2d(8, 16, kernel_size=5),  # 16 x 8 x 8
            nn.ReLU(),
            nn.MaxPool2d(2),  # 16 x 4 x 4
            nn.Flatten(),
            nn.Linear(256, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )


def objective(features: Any, labels: Any, seed: int = 0) -> TorchObjective:
    """The network with cross-entropy on these samples (pixels in [0, 1], labels 0..9)."""
    return TorchObjective(network(seed), nn.CrossEntropyLoss(), features, labels, name=MODEL)


# -- a worker process ---------------------------------------------------------------------


async def worker(args: argparse.Namespace) -> int:
    """Train shard ``args.worker`` of ``args.workers`` until the master closes the session."""
    torch.set_num_threads(1)  # M workers and the master share the machine's cores
    dataset = load_dataset(args.data)
    part = dataset.rows(shard(dataset.samples, args.workers, args.worker, seed=args.seed))
    host, _, port = args.connect.rpartition(":")
    auth = ConnectionConfig(secret=os.environ["AIODQ_SECRET"].encode())
    result = await run_worker(
        host,
        int(port),
        objective=objective(part.features, part.labels, args.seed),
        name=f"torch-{args.worker}",
        connection_config=auth,
    )
    if not result.ok:
        print(f"worker {args.worker}: {result.reason}", file=sys.stderr)
    return 0 if result.ok else 1


# -- the master ---------------------------------------------------------------------------


async def master(args: argparse.Namespace) -> RunResult:
    """Serve the model, start the worker processes, print each epoch; return the run."""
    torch.set_num_threads(1)
    train = load_dataset(args.data)
    # --bits is for the quantized gradients only (asylpg, sparse-asylpg, acc-asylpg): not given elsewhere,
    # where TrainConfig warns that it has no effect.
    quantized = ALGORITHMS[args.algorithm].gradient in ("dense", "sparse")
    config = TrainConfig(
        algorithm=args.algorithm,
        epochs=args.epochs,
        step=args.step,
        batch=args.batch,
        **({"bits": args.bits} if quantized else {}),
        l2=args.l2,
        seed=args.seed,
        model=MODEL,
    )
    whole = objective(train.features, train.labels, args.seed)  # x_0, d and n
    print(
        f"{config.algorithm}: {whole.dim:,} parameters, {train.samples:,} training images, "
        f"{args.workers} workers, step {config.step}, batch {config.batch}"
        + (f", {config.bits}-bit gradients" if quantized else "")
    )
    secret = secrets.token_hex(32)
    auth = ConnectionConfig(secret=secret.encode())
    async with Master(config, whole, workers=args.workers, connection_config=auth) as server:
        host, port = server.address
        env = dict(os.environ, AIODQ_SECRET=secret, PYTHONUNBUFFERED="1")
        command = [sys.executable, str(Path(__file__).resolve()), "--data", str(args.data)]
        command += ["--workers", str(args.workers), "--seed", str(args.seed), "--connect", f"{host}:{port}"]
        processes = [
            await asyncio.create_subprocess_exec(*command, "--worker", str(index), env=env)
            for index in range(args.workers)
        ]
        done = asyncio.create_task(server.wait(timeout=args.timeout))
        exits = [asyncio.create_task(process.wait()) for process in processes]
        shown = 0
        try:
            while not done.done():
                await asyncio.wait([done, *exits], timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                failed = [i for i, p in enumerate(processes) if p.returncode not in (None, 0)]
                if failed and not done.done():
                    raise SystemExit(f"worker {failed[0]} failed (its error is above)")
                assert server.coordinator is not None
                for record in server.coordinator.trace[shown:]:
                    print(
                        f"epoch {record.epoch:3d}: loss {record.loss:.4f}, "
                        f"training accuracy {record.accuracy:.4f}, "
                        f"{8 * record.bytes_total / 1e6:8.2f} Mbit, {record.time:6.1f} s",
                        flush=True,
                    )
                shown = len(server.coordinator.trace)
            result = done.result()
            await asyncio.wait_for(asyncio.gather(*exits), 60)
        finally:
            for process in processes:
                if process.returncode is None:
                    process.kill()
            await asyncio.gather(*exits, return_exceptions=True)
    return result


def report(args: argparse.Namespace, result: RunResult) -> None:
    """The test accuracy, wall time and bits; result.json and model.npz with ``--out``."""
    for record in result.trace[-1:]:
        print(f"final: loss {record.loss:.4f}, training accuracy {record.accuracy:.4f}")
    if result.failure:
        print(f"the run failed: {result.failure}")
    test = load_test_dataset(args.data)
    if test is not None:
        scorer = objective(test.features, test.labels, args.seed)
        accuracy = scorer.correct(result.model) / test.samples
        # As aiodq run's result.json holds them (a torch trial found them at the top level here).
        scores = {"test_set": test.name, "test_samples": test.samples, "test_accuracy": accuracy}
        result.summary["test"] = scores
        print(f"test accuracy: {accuracy:.4f} on {test.samples:,} images")
    traffic = result.traffic
    wire = {side: 8 * traffic["total_bytes"][side] for side in ("down", "up", "both")}
    payload = {side: sum(traffic["payload_bits"][side].values()) for side in ("down", "up")}
    print(f"wall time: {result.summary['wall_time']:.1f} s, {result.summary['version']:,} updates")
    print(
        f"bits on the wire: down (master -> workers) {wire['down']:,}, "
        f"up (workers -> master) {wire['up']:,}, total {wire['both']:,}"
    )
    print(f"vector payload bits (fixed-width count): down {payload['down']:,}, up {payload['up']:,}")
    if args.out is not None:
        paths = write_results(result, args.out)
        print("wrote " + ", ".join(str(path) for path in paths))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="an MNIST-format folder")
    parser.add_argument("--algorithm", default="asylpg", choices=sorted(ALGORITHMS))
    parser.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    parser.add_argument("--workers", type=int, default=DEFAULTS["workers"], help="worker processes M")
    parser.add_argument("--step", type=float, default=DEFAULTS["step"], help="step size eta")
    parser.add_argument("--batch", type=int, default=DEFAULTS["batch"], help="mini-batch size B")
    parser.add_argument("--bits", type=int, default=DEFAULTS["bits"], help="gradient bits b")
    parser.add_argument("--l2", type=float, default=DEFAULTS["l2"], help="L2 weight lambda2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    parser.add_argument("--out", type=Path, help="folder for result.json, model.npz and loss_vs_bits.png")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--connect", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.worker is not None:
        return asyncio.run(worker(args))
    started = time.monotonic()
    result = asyncio.run(master(args))
    report(args, result)
    print(f"total time, data loading and test included: {time.monotonic() - started:.1f} s")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
