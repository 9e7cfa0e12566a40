"""Your own model: least squares in 20 lines, trained by aiodq like any built-in model.

``LeastSquares`` is an :class:`aiodq.Objective`: it holds one worker's samples and returns the
*sums* of the losses ``f_i(x) = (a_i . x - b_i)^2 / 2`` and of their gradients over a block of
rows.  Train it from the command line (the current folder is on the import path)::

    aiodq run --model examples.least_squares:LeastSquares --step 0.05 --epochs 20

or run this file, which trains it on the bundled a9a (its -1/+1 labels as targets) with a local
cluster and compares the result with the closed-form optimum ``min_x F(x)`` (with the run's L2 term
``l2/2 ||x||^2``, which aiodq adds to every model).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class LeastSquares:
    """``f_i(x) = (a_i . x - b_i)^2 / 2`` over the rows ``a_i`` and targets ``b_i`` given."""

    def __init__(self, features: Any, labels: Any) -> None:
        self.a = features  # a dense array or a scipy CSR matrix: only ``@`` and ``.T`` are used
        self.b = np.asarray(labels, dtype=np.float64)
        self.samples, self.dim = features.shape

    def initial(self, rng: np.random.Generator) -> np.ndarray:
        return np.zeros(self.dim)

    def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        a, b = (self.a, self.b) if rows is None else (self.a[rows], self.b[rows])
        residual = a @ x - b
        return 0.5 * float(residual @ residual), np.asarray(a.T @ residual)


def closed_form(features: Any, labels: Any, l2: float) -> float:
    """``min_x F(x) = (1/n) sum_i (a_i . x - b_i)^2 / 2 + l2/2 ||x||^2``: (A'A/n + l2 I) x = A'b/n."""
    a = features.toarray() if hasattr(features, "toarray") else np.asarray(features)
    b = np.asarray(labels, dtype=np.float64)
    n, d = a.shape
    x = np.linalg.solve(a.T @ a / n + l2 * np.eye(d), a.T @ b / n)
    residual = a @ x - b
    return 0.5 * float(residual @ residual) / n + 0.5 * l2 * float(x @ x)


def main() -> None:
    import asyncio  # noqa: PLC0415 - the example's own imports stay visible here

    import aiodq  # noqa: PLC0415

    data = aiodq.load_bundled_a9a()
    config = aiodq.TrainConfig(
        algorithm="asylpg", model="examples.least_squares:LeastSquares", step=0.05, epochs=20
    )
    result = asyncio.run(aiodq.run_local(config, workers=4))
    best = closed_form(data.features, data.labels, config.l2)
    gap = (result.final_loss - best) / best
    print(f"aiodq: F = {result.final_loss:.6f}; closed form: F* = {best:.6f}; gap {100 * gap:.3f} %")


if __name__ == "__main__":
    main()
