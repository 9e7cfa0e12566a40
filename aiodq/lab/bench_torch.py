"""``python -m aiodq.lab.bench_torch``: what :class:`aiodq.torch.TorchObjective` adds to torch's own work.

For the network of ``examples/torch_mnist.py`` (a LeNet-style CNN, 20,522 parameters) on one
worker's shard (1,250 synthetic 28 x 28 images), one torch thread, each repetition times, in turn:

- ``torch``: forward and backward alone, on a batch already gathered (``zero_grad``, the
  network, the summed cross-entropy, ``backward``), on a second, unwrapped copy of the network;
- ``adapter``: the adapter's whole ``loss_grad(x, rows)``: a float64 vector and fresh row
  indices in, the summed loss and a new float64 gradient vector out (the x copy, the gather of
  the rows, forward and backward, the gradient read back);
- ``torch_vectors``: the same with torch's ``vector_to_parameters`` and
  ``parameters_to_vector`` (one copy per parameter each way), the alternative to the adapter's
  flat buffers.

It reports the median of each over the repetitions and the overheads ``adapter / torch - 1``
and ``torch_vectors / torch - 1``, as text, or as JSON with ``--json``.  Needs the extra
``aiodq[torch]``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from ..torch import TorchObjective, torch

__all__ = ["bench_torch", "main", "network"]

nn = torch.nn
#: Distinct batches cycled through, so that no repetition reuses the previous one's rows.
_CYCLE = 64


def network(seed: int = 0) -> torch.nn.Module:
    """The network of ``examples/torch_mnist.py``: rows of 784 pixels in, 10 class scores out."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Unflatten(1, (1, 28, 28)),
            nn.Conv2d(1, 8, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(256, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )


def bench_torch(
    batches: tuple[int, ...] = (16, 64), repeats: int = 1000, samples: int = 1250, threads: int = 1
) -> dict[str, Any]:
    """Time torch's forward and backward against the adapter's ``loss_grad``; see the module's text.

    Args:
        batches: the batch sizes B to time (16 is the example's).
        repeats: repetitions per batch size (after a warm-up of a tenth as many).
        samples: the shard's size (synthetic images and labels).
        threads: torch's intra-op threads while it runs (restored afterwards).
    """
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rng = np.random.default_rng(0)
        features = rng.random((samples, 784), dtype=np.float64)
        labels = rng.integers(0, 10, samples)
        objective = TorchObjective(network(), nn.CrossEntropyLoss(), features, labels)
        plain = network()
        params = [p for p in plain.parameters() if p.requires_grad]
        weights: list[torch.Tensor] = list(params)
        inputs = torch.from_numpy(features.astype(np.float32))
        targets = torch.from_numpy(labels.astype(np.int64))
        loss_fn = nn.CrossEntropyLoss(reduction="sum")
        x = objective.initial(rng)
        cases = []
        for batch in batches:
            # Fresh rows every repetition, as in training: a cycle of distinct batches, drawn beforehand.
            row_sets = [rng.integers(0, samples, batch) for _ in range(_CYCLE)]
            gathered = [
                (inputs.index_select(0, index), targets.index_select(0, index))
                for index in (torch.from_numpy(rows) for rows in row_sets)
            ]
            turn = itertools.count()

            def forward_backward(batch_inputs: torch.Tensor, batch_targets: torch.Tensor) -> float:
                plain.zero_grad()
                loss = loss_fn(plain(batch_inputs), batch_targets)
                torch.autograd.backward(loss)
                return float(loss.detach())

            def raw(
                batches: list[tuple[torch.Tensor, torch.Tensor]] = gathered, turn: Iterator[int] = turn
            ) -> None:
                forward_backward(*batches[next(turn) % _CYCLE])

            def stepped(
                batches: list[tuple[torch.Tensor, torch.Tensor]] = gathered, turn: Iterator[int] = turn
            ) -> None:
                with torch.no_grad():  # the weights change in place, as an optimizer's step does
                    torch._foreach_add_(weights, 0.0)
                forward_backward(*batches[next(turn) % _CYCLE])

            def adapter(row_sets: list[npt.NDArray[np.int64]] = row_sets, turn: Iterator[int] = turn) -> None:
                objective.loss_grad(x, row_sets[next(turn) % _CYCLE])

            def torch_vectors(
                row_sets: list[npt.NDArray[np.int64]] = row_sets, turn: Iterator[int] = turn
            ) -> None:
                with torch.no_grad():
                    nn.utils.vector_to_parameters(torch.from_numpy(x).to(torch.float32), params)
                index = torch.from_numpy(row_sets[next(turn) % _CYCLE])
                forward_backward(inputs.index_select(0, index), targets.index_select(0, index))
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                nn.utils.parameters_to_vector(grads).numpy().astype(np.float64)

            timings = _interleaved(
                {"torch": raw, "torch_stepped": stepped, "adapter": adapter, "torch_vectors": torch_vectors},
                repeats,
            )
            cases.append(
                {
                    "batch": batch,
                    **{f"{name}_ms": 1e3 * seconds for name, seconds in timings.items()},
                    "adapter_overhead": timings["adapter"] / timings["torch"] - 1,
                    "torch_vectors_overhead": timings["torch_vectors"] / timings["torch"] - 1,
                    "adapter_overhead_vs_stepped": timings["adapter"] / timings["torch_stepped"] - 1,
                }
            )
    finally:
        torch.set_num_threads(saved)
    return {
        "network": "examples/torch_mnist.py",
        "dim": objective.dim,
        "samples": samples,
        "repeats": repeats,
        "threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cases": cases,
    }


def _interleaved(funcs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, timed in turn within each repetition (drift hits all alike)."""
    times: dict[str, list[float]] = {name: [] for name in funcs}
    for round_number in range(repeats + max(1, repeats // 10)):
        for name, func in funcs.items():
            start = time.perf_counter()
            func()
            elapsed = time.perf_counter() - start
            if round_number >= max(1, repeats // 10):  # the first rounds warm up
                times[name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    """The command: ``python -m aiodq.lab.bench_torch [--batch B ...] [--repeats N] [--json]``."""
    parser = argparse.ArgumentParser(
        prog="python -m aiodq.lab.bench_torch", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64], help="batch sizes (default 16 64)")
    parser.add_argument("--repeats", type=int, default=1000, help="repetitions per batch size")
    parser.add_argument("--samples", type=int, default=1250, help="the shard's samples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    if min(args.batch) < 1 or args.repeats < 1 or args.samples < 1 or args.threads < 1:
        parser.error("batch sizes, repeats, samples and threads must be positive")
    report = bench_torch(tuple(args.batch), args.repeats, args.samples, args.threads)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"d = {report['dim']:,}, torch {report['torch']}, {report['threads']} thread(s), "
        f"median of {report['repeats']} repetitions"
    )
    for case in report["cases"]:
        print(
            f"B = {case['batch']:4d}: torch forward+backward {case['torch_ms']:.3f} ms "
            f"({case['torch_stepped_ms']:.3f} ms after an in-place weight change); "
            f"adapter loss_grad {case['adapter_ms']:.3f} ms: "
            f"overhead {100 * case['adapter_overhead']:+.1f} % "
            f"({100 * case['adapter_overhead_vs_stepped']:+.1f} %); "
            f"with vector_to_parameters {case['torch_vectors_ms']:.3f} ms "
            f"({100 * case['torch_vectors_overhead']:+.1f} %)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
