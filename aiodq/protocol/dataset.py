"""A dataset in memory, and its deterministic split across workers.

Pure numpy: the file loaders live in :mod:`aiodq.data`; this module only holds
samples and labels and splits them, so the sans-I/O layers can use it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import DataError
from .objectives import BUILT_IN, Features, class_count_of

__all__ = ["Dataset", "as_samples", "class_count", "labels_for", "non_finite_row", "other_data", "shard"]


#: The name of :meth:`Dataset.fingerprint`'s recipe, the text before its digest.  A change to what
#: is hashed, or how, takes another name, so that versions with different recipes can tell that
#: their fingerprints do not compare.
_RECIPE = "blake2b"


def non_finite_row(features: Features) -> int | None:
    """The first row (0-based) of ``features`` (dense or scipy sparse) with a NaN or an infinity, or None."""
    sparse = getattr(features, "format", None)  # (scipy's: "csr", "csc", "coo", "lil"...)
    if sparse not in (None, "csr"):  # (a review: a CSC's column pointers were read as rows, a LIL unread)
        coordinates = features.tocoo()  # type: ignore[union-attr]
        bad = ~np.isfinite(coordinates.data) if coordinates.data.dtype.kind in "fc" else None
        return int(coordinates.row[bad].min()) if bad is not None and bad.any() else None
    values = np.asarray(features if sparse is None else features.data)
    if values.dtype.kind not in "fc" or bool(np.isfinite(values).all()):  # (integers are finite)
        return None
    if sparse == "csr":
        first = int(np.flatnonzero(~np.isfinite(values))[0])
        return int(np.searchsorted(features.indptr, first, side="right")) - 1  # type: ignore[union-attr]
    return int(np.flatnonzero(~np.isfinite(values).all(axis=1))[0])


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
        # (A newcomer's audit: Dataset(list, list) raised AttributeError; NaN features were taken, and the
        # first snapshot at x_0 blamed the step size.)
        for name, value, ndim in (("features", self.features, 2), ("labels", self.labels, 1)):
            if len(getattr(value, "shape", ())) != ndim:
                shaped = f"shape {value.shape}" if hasattr(value, "shape") else type(value).__name__
                kind = "2-D numpy array or scipy CSR matrix" if ndim == 2 else "1-D numpy array"
                raise DataError(f"Dataset {name} must be a {kind}, got {shaped}")
        if (row := non_finite_row(self.features)) is not None:
            raise DataError(f"Dataset features: sample {row} has NaN or infinite values")
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

    def fingerprint(self) -> str:
        """A digest of the samples and labels, to tell whether two runs trained on the same data.

        BLAKE2b (128 bits) over the shape, the labels and the features: a dense array's values
        in row order, or a CSR matrix's values, column indices and row pointers, as float64
        and int64 little-endian, with -0.0 written as 0.0 and a CSR matrix's stored zeros
        left out (``eliminate_zeros``: a file's ``3:0`` adds nothing to the data).  The same
        data read from the same kind of file gives the same fingerprint; any changed value,
        sample or label (or a change of form, dense or CSR) gives another.  The name is left
        out.  The text is the recipe's name, a colon and the digest: ``blake2b:`` and 32 hex
        digits for this recipe, another name for any later one (see :func:`other_data`).
        """
        digest = hashlib.blake2b(digest_size=16)
        features: Any = self.features  # a dense array, or a CSR matrix (scipy is optional)
        rows, columns = features.shape
        sparse = hasattr(features, "indptr")
        if sparse and not np.all(features.data):  # stored zeros: left out, in a copy
            features = features.copy()
            features.eliminate_zeros()
        digest.update(f"aiodq-dataset-1 {'csr' if sparse else 'dense'} {rows} {columns}".encode())
        _add_floats(digest, self.labels)
        if sparse:
            _add_floats(digest, features.data)
            digest.update(np.ascontiguousarray(features.indices, dtype="<i8").data)
            digest.update(np.ascontiguousarray(features.indptr, dtype="<i8").data)
        else:
            _add_floats(digest, features)
        return f"{_RECIPE}:{digest.hexdigest()}"

    def for_model(
        self, model: str, *, training_set: bool = False, values: npt.NDArray[Any] | None = None
    ) -> tuple[Dataset, str | None]:
        """The dataset with its labels as the built-in ``model`` reads them, and the mapping made.

        See :func:`labels_for` (``values``: the distinct labels that decide the mapping, the
        training set's for a test set); the mapping is a line to log, None if none was needed.
        A ``training_set`` (a run's whole training data) must hold two classes or more; a test
        set or a worker's share may hold one.

        Raises:
            DataError: if the model cannot learn from these labels.
        """
        if training_set and model in BUILT_IN and self.labels.size and np.unique(self.labels).size < 2:
            raise DataError(
                f"every label of {self.name or 'the data'} is {float(self.labels[0]):g}: "
                f"the {model} model needs two classes or more"
            )
        labels, note = labels_for(model, self.labels, values)
        return (
            self if note is None and labels is self.labels else Dataset(self.features, labels, self.name)
        ), note


def other_data(first: str, second: str) -> bool:
    """Whether two fingerprints (:meth:`Dataset.fingerprint`) show that the data differ.

    Only fingerprints of one recipe (the text before the last colon) are compared: those of
    different recipes, written by versions of aiodq that digest data differently, tell
    nothing, and give False, as a fingerprint that is missing does.
    """
    recipe, _, _ = first.rpartition(":")
    return recipe == second.rpartition(":")[0] and first != second


def _add_floats(digest: Any, values: Any) -> None:
    """Hash ``values`` (in row order) as float64 little-endian, -0.0 as 0.0 (adding 0.0 makes it so).

    A million values at a time: the copy that the conversion makes stays small.
    """
    flat = np.asarray(values).reshape(-1)
    for start in range(0, flat.shape[0], 1 << 20):
        block = np.asarray(flat[start : start + (1 << 20)], dtype=np.float64) + 0.0
        digest.update(block.astype("<f8", copy=False).data)


#: Number of classes: 2 for -1/+1 labels, else the largest label plus one.
class_count = class_count_of


def as_samples(features: Any, labels: Any) -> tuple[Features, npt.NDArray[Any]]:
    """``features`` and ``labels`` as a built-in model reads them.

    A 2-D float64 array (or a scipy sparse matrix, as CSR) and a 1-D array, one label per
    row.  Array-likes (lists, memoryviews, anything with ``__array__``, CPU torch tensors)
    are converted with ``np.asarray``.

    Raises:
        TypeError: for values that are not numeric array-likes.
        ValueError: for shapes that do not fit together.
    """
    if features is None or labels is None:
        raise TypeError("a worker needs features and labels, or an objective")
    if hasattr(features, "tocsr"):  # a scipy sparse matrix
        features = features.tocsr()
        if features.dtype != np.float64:
            features = features.astype(np.float64)
    else:
        try:
            features = np.asarray(features, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"features of type {type(features).__name__} are not a numeric array-like: {exc}"
            ) from None
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"labels of type {type(labels).__name__} are not an array-like: {exc}") from None
    if labels.dtype.kind not in "iufb":
        raise TypeError(f"labels must be numbers, got dtype {labels.dtype}")
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features of shape {features.shape} and labels of shape {labels.shape}: "
            "need a 2-D array with one row per label"
        )
    if features.shape[0] == 0:
        raise ValueError("no samples")
    return features, labels


def labels_for(
    model: str, labels: npt.NDArray[Any], values: npt.NDArray[Any] | None = None
) -> tuple[npt.NDArray[Any], str | None]:
    """Labels as a built-in ``model`` reads them, and the mapping made (None if none was needed).

    Logistic regression: any two distinct values become -1 (the smaller) and +1.  Softmax and
    the MLP: integer classes as they are (0..C-1), -1/+1 as 0/1.  A user model's labels are
    left alone.  The mapping is decided by ``values``, the distinct labels of the whole
    dataset (default: those of ``labels``), so that every worker's share maps alike.

    Raises:
        DataError: if the model cannot learn from these labels; the text says what would.
    """
    if model not in BUILT_IN:
        return labels, None
    if values is None:
        values = np.unique(labels)
    else:
        values = np.unique(values)
        _check_within(model, np.unique(labels), values)
    if not (np.isfinite(values).all() and np.array_equal(values, np.round(values))):
        raise DataError(f"the {model} model needs class labels; the labels include {values[:5].tolist()}")
    if model == "logistic":
        if values.size > 2:
            shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
            raise DataError(
                f"logistic regression needs two classes; the labels take {values.size} values "
                f"({shown}): use --model softmax or mlp"
            )
        if values.size == 1 or values.tolist() == [-1.0, 1.0]:
            return labels, None
        low, high = float(values[0]), float(values[-1])
        return np.where(labels == high, 1.0, -1.0), f"labels {low:g} -> -1, {high:g} -> +1"
    if values.size and values.tolist() in ([-1.0, 1.0], [-1.0], [1.0]):
        return (labels > 0).astype(np.int64), "labels -1 -> class 0, +1 -> class 1"
    if values[0] < 0:
        raise DataError(f"the {model} model needs class labels 0..C-1; the labels go down to {values[0]:g}")
    top = int(values[-1])
    absent = top + 1 - values.size
    note = None
    if absent:  # LIBSVM's multiclass files often number their classes from 1
        # The first few absent classes lie below values.size + 6: no array of all the classes (a
        # review: one label of 10**9 allocated 7.45 GiB here).
        missing = np.setdiff1d(np.arange(min(top + 1, values.size + 6)), values.astype(np.int64))[:6]
        shown = ", ".join(map(str, missing.tolist())) + (", ..." if absent > 6 else "")
        note = f"classes 0..{top}: {shown} ha{'s' if absent == 1 else 've'} no samples"
        if missing.tolist() == [0] and absent == 1:
            note += f" (labels 1..{top}, LIBSVM's usual numbering: subtract 1 for classes 0..C-1)"
    return labels.astype(np.int64), note


def _check_within(model: str, present: npt.NDArray[Any], values: npt.NDArray[Any]) -> None:
    """Refuse labels that the mapping decided by ``values`` (the training set's) cannot take.

    Logistic regression: a label other than the training set's two would be scored as -1 (a
    review: a test set labelled 2/5 against training's 2/4 scored an accuracy of 1.0).  Softmax
    and the MLP: a class beyond the training set's, which the model has no output for.
    """
    if model == "logistic" or values.size == 0 or values[0] < 0:
        unknown = np.setdiff1d(present, values)
        taken = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
        within = f"the training set's labels ({taken})"
    else:
        unknown = present[(present < 0) | (present > values[-1]) | (present != np.round(present))]
        within = f"the training set's classes 0..{values[-1]:g}"
    if unknown.size:
        shown = ", ".join(f"{v:g}" for v in unknown[:6]) + (", ..." if unknown.size > 6 else "")
        are = "labels {} are" if unknown.size > 1 else "label {} is"
        raise DataError(f"{are.format(shown)} not among {within}")


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
