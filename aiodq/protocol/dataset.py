"""A dataset in memory, and its deterministic split across workers.

Pure numpy: the file loaders live in :mod:`aiodq.data`; this module only holds
samples and labels and splits them, so the sans-I/O layers can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from .objectives import Features

__all__ = ["Dataset", "class_count", "shard"]


@dataclass(frozen=True, slots=True)
class Dataset:
    """Samples and labels."""

    #: One row per sample (dense float64, or CSR).
    features: Features
    #: One label per sample: -1/+1 for binary tasks, 0..C-1 for multi-class.
    labels: npt.NDArray[Any]
    #: A short name for logs and results.
    name: str = ""

    def __post_init__(self) -> None:
        if self.features.shape[0] != self.labels.shape[0]:
            raise DataError(f"{self.features.shape[0]} samples but {self.labels.shape[0]} labels")
        if self.features.shape[0] == 0:
            raise DataError("the dataset has no samples")

    @property
    def samples(self) -> int:
        """Number of samples n."""
        return int(self.features.shape[0])

    @property
    def classes(self) -> int:
        """Number of classes (see :func:`class_count`)."""
        return class_count(self.labels)

    @property
    def features_count(self) -> int:
        """Number of features."""
        return int(self.features.shape[1])

    def rows(self, indices: npt.NDArray[np.intp]) -> Dataset:
        """The samples at ``indices``, in that order."""
        return Dataset(self.features[indices], self.labels[indices], self.name)


def class_count(labels: npt.NDArray[Any]) -> int:
    """Number of classes: 2 for -1/+1 labels, else the largest label plus one."""
    return int(labels.max()) + 1 if labels.size and labels.min() >= 0 else 2


def shard(samples: int, workers: int, index: int, *, seed: int = 0) -> npt.NDArray[np.intp]:
    """Return the sample indices of shard ``index`` of ``workers``: a seeded permutation, split evenly.

    The shards are disjoint, cover every sample, and differ in size by at most one.

    Raises:
        ValueError: if ``index`` is not in ``[0, workers)`` or there are fewer samples than workers.
    """
    if workers < 1 or not 0 <= index < workers:
        raise ValueError(f"shard {index}/{workers} does not exist")
    if samples < workers:
        raise ValueError(f"{samples} samples cannot be split across {workers} workers")
    order = np.random.default_rng(seed).permutation(samples)
    return np.sort(np.array_split(order, workers)[index])
