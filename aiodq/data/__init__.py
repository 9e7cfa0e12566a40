"""Datasets: LIBSVM/svmlight text, MNIST IDX (gzip) and CSV, the bundled a9a, and sharding.

Nothing here downloads anything: every loader reads a file you name, and the
built-in default (:func:`load_bundled_a9a`) is a compact copy of LIBSVM's a9a
shipped inside the package (see ``aiodq/data/README.md`` for its source,
citation and licence).

A :class:`Dataset` holds features (a dense array or a scipy CSR matrix) and
labels.  :func:`shard` splits it deterministically across M workers.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import struct
import warnings
import zlib
from importlib import resources
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..protocol.dataset import Dataset, class_count, shard

try:
    import scipy.sparse as sp
except ImportError as exc:  # pragma: no cover - scipy comes with the data and cli extras
    raise ImportError("aiodq.data reads sparse files with scipy: pip install 'aiodq[data]'") from exc

__all__ = [
    "DataError",
    "class_count",
    "Dataset",
    "load_bundled_a9a",
    "load_dataset",
    "load_mnist_csv",
    "load_mnist_idx",
    "load_svmlight",
    "shard",
]


def _read_bytes(path: str | Path) -> bytes:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: broken gzip data: {exc}") from exc
    return raw


#: One line's features: ``index:value`` pairs, digits for the index, no colon in the value.
_PAIRS = re.compile(r"(?:\d+:[^\s:]+)(?:\s+\d+:[^\s:]+)*")


def load_svmlight(path: str | Path, n_features: int | None = None, *, name: str = "") -> Dataset:
    """Load a LIBSVM/svmlight text file (1-based feature indices) as CSR.

    Blank lines and ``#`` comments are skipped.  Binary labels ``0/1`` or
    ``-1/+1`` become ``-1/+1``.

    Args:
        path: the file (plain or gzip).
        n_features: the number of features; default: the largest index seen.
        name: a name for the dataset; default: the file name.

    Raises:
        DataError: if the file cannot be read or a line is malformed.
    """
    try:
        text = _read_bytes(path).decode("ascii")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not an ASCII LIBSVM file") from exc
    labels: list[float] = []
    counts: list[int] = []
    bodies: list[str] = []
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        head, *rest = line.split(None, 1)
        body = rest[0] if rest else ""
        try:
            label = float(head)
        except ValueError:
            raise DataError(f"{path}:{number}: label {head!r} is not a number") from None
        if not math.isfinite(label):
            raise DataError(f"{path}:{number}: label {head!r} is not finite")
        if body and not _PAIRS.fullmatch(body):
            raise DataError(f"{path}:{number}: features must be index:value pairs separated by spaces")
        labels.append(label)
        counts.append(body.count(":"))
        bodies.append(body)
    if not labels:
        raise DataError(f"{path}: no samples")
    # Every line matched _PAIRS, so the pieces alternate index, value.
    tokens = " ".join(bodies).replace(":", " ").split()
    try:
        indices = np.array(tokens[0::2], dtype=np.int64) - 1
        values = np.array(tokens[1::2], dtype=np.float64)
    except (ValueError, OverflowError) as exc:
        raise DataError(f"{path}: malformed index:value pair: {exc}") from exc
    if indices.size and int(indices.min()) < 0:
        raise DataError(f"{path}: feature indices start at 1")
    if not np.isfinite(values).all():
        raise DataError(f"{path}: non-finite feature values")
    width = int(indices.max()) + 1 if indices.size else 0
    if n_features is None:
        n_features = width
    elif width > n_features:
        raise DataError(f"{path}: feature index {width} exceeds n_features={n_features}")
    indptr = np.concatenate([[0], np.cumsum(counts)])
    features = sp.csr_matrix((values, indices, indptr), shape=(len(labels), n_features))
    features.sum_duplicates()
    features.sort_indices()
    y = np.asarray(labels)
    if set(np.unique(y)) <= {0.0, 1.0} and len(np.unique(y)) == 2:
        y = 2.0 * y - 1.0
    return Dataset(features, y, name or Path(path).name)


def load_mnist_idx(images: str | Path, labels: str | Path, *, name: str = "mnist") -> Dataset:
    """Load MNIST from IDX files (plain or gzip); pixels scaled to [0, 1].

    Raises:
        DataError: on a wrong magic number, truncated data or a count mismatch.
    """
    raw_images, raw_labels = _read_bytes(images), _read_bytes(labels)
    if len(raw_images) < 16 or len(raw_labels) < 8:
        raise DataError("IDX file too short")
    magic, count, rows, cols = struct.unpack(">IIII", raw_images[:16])
    if magic != 0x803:
        raise DataError(f"{images}: magic {magic:#x} is not 0x803 (IDX images)")
    label_magic, label_count = struct.unpack(">II", raw_labels[:8])
    if label_magic != 0x801:
        raise DataError(f"{labels}: magic {label_magic:#x} is not 0x801 (IDX labels)")
    if count != label_count:
        raise DataError(f"{count} images but {label_count} labels")
    if len(raw_images) != 16 + count * rows * cols or len(raw_labels) != 8 + count:
        raise DataError("IDX payload length does not match its header")
    pixels = np.frombuffer(raw_images, dtype=np.uint8, offset=16).reshape(count, rows * cols)
    y = np.frombuffer(raw_labels, dtype=np.uint8, offset=8).astype(np.int64)
    return Dataset(pixels.astype(np.float64) / 255.0, y, name)


def load_mnist_csv(path: str | Path, *, name: str = "mnist") -> Dataset:
    """Load MNIST rows of 784 pixels then the label (plain or gzip CSV); pixels scaled to [0, 1].

    Raises:
        DataError: if the file cannot be parsed or has the wrong shape.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below
            table = np.loadtxt(io.BytesIO(_read_bytes(path)), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: not a numeric CSV: {exc}") from exc
    if table.shape[0] == 0:
        raise DataError(f"{path}: no samples")
    if table.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    if not np.isfinite(table).all():
        raise DataError(f"{path}: non-finite values")
    labels = table[:, 784]
    if (labels != np.round(labels)).any() or labels.min() < 0:
        raise DataError(f"{path}: labels must be non-negative integers")
    return Dataset(table[:, :784] / 255.0, labels.astype(np.int64), name)


def load_bundled_a9a(*, test: bool = False) -> Dataset:
    """The a9a training set (32,561 x 123) or test set (16,281 x 123) shipped in the package."""
    member = "a9a.t.npz" if test else "a9a.npz"
    with resources.files("aiodq.data").joinpath(member).open("rb") as handle:
        archive = np.load(handle)
        indptr = archive["indptr"].astype(np.int64)
        indices = archive["indices"].astype(np.int32)
        labels = archive["labels"].astype(np.float64)
    values = np.ones(indices.shape[0], dtype=np.float64)
    features = sp.csr_matrix((values, indices, indptr), shape=(labels.shape[0], 123))
    return Dataset(features, labels, "a9a.t" if test else "a9a")


def load_dataset(path: str | Path | None) -> Dataset:
    """Load by file type: None is the bundled a9a; MNIST IDX/CSV by name; else LIBSVM text.

    Raises:
        DataError: if the file is missing, unreadable or malformed.
    """
    if path is None:
        return load_bundled_a9a()
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        images = path / "t10k-images-idx3-ubyte.gz"
        labels = path / "t10k-labels-idx1-ubyte.gz"
        if images.exists() and labels.exists():
            return load_mnist_idx(images, labels)
        raise DataError(f"{path}: a folder must hold MNIST IDX files")
    if path.name.endswith((".csv", ".csv.gz")):
        return load_mnist_csv(path)
    return load_svmlight(path)
