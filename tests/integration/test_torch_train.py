"""A PyTorch model trains over real TCP on 127.0.0.1: a master and two workers in one event loop.

The model is logistic regression written as a torch module (a bias-free linear layer and
``BCEWithLogitsLoss``), so its optimum is known apart from aiodq and torch: scipy's L-BFGS on
the same l2-regularised objective (``tests/integration/cluster.py``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="aiodq.torch needs PyTorch (the extra aiodq[torch])")

from aiodq.net.master import Master  # noqa: E402
from aiodq.net.worker import run_worker  # noqa: E402
from aiodq.protocol.algorithms import TrainConfig  # noqa: E402
from aiodq.protocol.dataset import Dataset, shard  # noqa: E402
from aiodq.protocol.result import RunResult  # noqa: E402
from aiodq.torch import TorchObjective  # noqa: E402

from .cluster import A9A, logistic_optimum  # noqa: E402

L2 = 1e-4
WORKERS = 2
NAME = "torch-logistic"


def logistic(dataset: Dataset) -> TorchObjective:
    """f_i(w) = log(1 + exp(-y_i a_i . w)) as a torch module, from w = 0 (labels -1/+1 -> 0/1)."""
    linear = torch.nn.Linear(dataset.features_count, 1, bias=False)
    torch.nn.init.zeros_(linear.weight)
    module = torch.nn.Sequential(linear, torch.nn.Flatten(0))
    labels = (np.asarray(dataset.labels) > 0).astype(np.float64)
    return TorchObjective(module, torch.nn.BCEWithLogitsLoss(), dataset.features, labels, name=NAME)


async def train(config: TrainConfig, dataset: Dataset) -> tuple[RunResult, list[Any]]:
    """Master and two torch workers over TCP on 127.0.0.1 (port 0); every await bounded."""
    async with Master(config, logistic(dataset), workers=WORKERS, host="127.0.0.1", port=0) as master:
        host, port = master.address
        tasks = [
            asyncio.create_task(
                run_worker(
                    host,
                    port,
                    objective=logistic(
                        dataset.rows(shard(dataset.samples, WORKERS, index, seed=config.seed))
                    ),
                    name=f"torch-{index}",
                )
            )
            for index in range(WORKERS)
        ]
        result = await master.wait(120)
        workers = await asyncio.wait_for(asyncio.gather(*tasks), 120)
    return result, list(workers)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Any:
    """One torch thread, as each worker process should have: the master and both workers share this
    thread, and torch's default of one thread per core makes every small op wait for busy cores."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def optimum() -> float:
    """F* of l2-regularised logistic regression on the bundled a9a, by scipy L-BFGS."""
    return logistic_optimum(A9A, L2)


@pytest.mark.asyncio
@pytest.mark.parametrize("algorithm", ["asylpg", "asyfpg"])
async def test_a_torch_model_reaches_the_optimum_over_tcp(algorithm: str, optimum: float) -> None:
    """Quantized (AsyLPG) and full precision (AsyFPG): within 0.5 % of F* in 5 epochs."""
    config = TrainConfig(algorithm=algorithm, epochs=5, l2=L2, model=NAME)
    result, workers = await train(config, A9A)
    assert all(worker.ok for worker in workers), workers
    assert result.ok and len(result.trace) == config.epochs + 1
    assert result.trace[0].loss == pytest.approx(np.log(2), rel=1e-6)  # w = 0
    assert (result.final_loss - optimum) / optimum <= 0.005, (result.final_loss, optimum)
    assert result.trace[-1].accuracy > 0.84  # a9a's logistic regression: about 0.85
    assert result.staleness["max"] <= config.tau
