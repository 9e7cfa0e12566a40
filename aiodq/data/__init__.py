"""Datasets: LIBSVM/svmlight text, MNIST IDX (gzip) and CSV, the bundled a9a, and sharding.

Nothing here downloads anything: every loader reads a file you name, and the
built-in default (:func:`load_bundled_a9a`) is a compact copy of LIBSVM's a9a
shipped inside the package (see ``aiodq/data/README.md`` for its source,
citation and licence).

A :class:`Dataset` holds features (a dense array or a scipy CSR matrix) and
labels.  :func:`shard` splits it deterministically across M workers.
"""

from __future__ import annotations

import io
import logging
import lzma
import math
import re
import struct
import warnings
import zlib
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..net.checkpoint import open_regular
from ..protocol.dataset import Dataset, class_count, shard
from .compressed import COMPRESSED, TooLargeError, available_memory, decompress
from .libsvm import parse as parse_libsvm
from .libsvm import without_comments

_log = logging.getLogger("aiodq.data")

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
    "load_test_dataset",
    "shard",
]


def _read_bytes(path: str | Path) -> bytes:
    """A data file's bytes, decompressed if gzip, bzip2 or xz, without a leading byte order mark.

    Only a regular file (or a link to one) is read: the master and every worker read ``--data``,
    and a FIFO gives its bytes to one reader only and a device may never end (a review: a FIFO
    held a run for ever, /dev/zero read 3.7 GB).
    """
    try:
        with open_regular(path) as stream:
            raw = stream.read()
        for magic, module, what in COMPRESSED:
            if raw.startswith(magic):
                try:
                    raw = decompress(raw, module, limit=available_memory())
                except TooLargeError as exc:
                    raise DataError(f"{path}: its {what} data {exc}; is it the right file?") from None
                except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as exc:
                    raise DataError(f"{path}: broken {what} data: {exc}") from exc
                break
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except MemoryError:
        raise DataError(f"{path}: out of memory reading it (decompressed, if compressed)") from None
    if raw.startswith(b"PK\x03\x04"):
        raise DataError(f"{path}: a zip archive: extract the data file from it and give that")
    if raw.startswith(_BOM):  # (a review: a CSV's first sample was read as a header, a LIBSVM file refused)
        raw = raw[len(_BOM) :]
    return raw


#: UTF-8's byte order mark, which some editors write first: no data format here has it.
_BOM = b"\xef\xbb\xbf"


#: One line's features: ``index:value`` pairs, digits for the index, no colon in the value.
_PAIRS = re.compile(r"(?:\d+:[^\s:]+)(?:[ \t]+\d+:[^\s:]+)*")
#: What a LIBSVM line may not hold: control characters but the tab, and bytes beyond ASCII.
_NOT_TEXT = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f-\xff]")


#: Beyond this many features, an index far beyond the others is warned of.
_WIDE_FEATURES = 1 << 20
#: The most features a LIBSVM file may index (2^31 - 1, scipy's 32-bit sparse indices).
_MAX_FEATURES = 2**31 - 1


def load_svmlight(path: str | Path, n_features: int | None = None, *, name: str = "") -> Dataset:
    """Load a LIBSVM/svmlight text file (1-based feature indices) as CSR.

    Blank lines and ``#`` comments are skipped.  Labels are kept as written (any
    real numbers: classes or regression targets); each model maps them as it
    needs (:func:`aiodq.protocol.dataset.labels_for`).

    Args:
        path: the file (plain or gzip).
        n_features: the number of features; default: the largest index seen.
        name: a name for the dataset; default: the file name.

    Raises:
        DataError: if the file cannot be read or a line is malformed.
    """
    raw = _read_bytes(path)
    parsed = parse_libsvm(raw)
    if parsed is None and (bare := without_comments(raw)) is not None:
        parsed = parse_libsvm(bare)  # the same lines, their comments and query ids left out
        del bare  # (not held while the line-by-line reader runs)
    if parsed is None:  # not of the form the fast reader takes: line by line, which names the line at fault
        parsed = _parse_lines(raw, path)
    labels, counts, indices, values = parsed
    indices -= 1
    indptr = np.concatenate([[0], np.cumsum(counts)])

    def sample(position: int) -> str:
        """``FILE:LINE: sample K``: where the sample (from 1, in file order) holding pair ``position`` is."""
        k = int(np.searchsorted(indptr, position, side="right"))
        return f"{path}:{_line_of_sample(raw, k)}: sample {k}"  # (a review: the sample's number alone)

    if indices.size and int(indices.min()) < 0:
        raise DataError(  # (a data audit: scikit-learn's dump_svmlight_file writes 0-based by default)
            f"{sample(int(np.argmin(indices)))}: feature indices start at 1 (a file written from 0, as "
            "scikit-learn's dump_svmlight_file does by default, is written again with zero_based=False)"
        )
    width = int(indices.max()) + 1 if indices.size else 0  # one pass over the indices
    if width > _MAX_FEATURES:
        raise DataError(f"{path}: feature index {width} is beyond {_MAX_FEATURES:,} features")
    if width > _WIDE_FEATURES and n_features is None:  # (a review: one stray index made a model of 20 M)
        below = indices[indices < width - 1]
        following = int(below.max()) + 1 if below.size else 0
        if width > 2 * following:
            _log.warning(
                "%s: feature index %d is more than twice the next largest (%d): the model has %d weights per "
                "class for it (a stray index?)", path, width, following, width,
            )  # fmt: skip
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        raise DataError(f"{sample(bad)}: non-finite feature value for feature {indices[bad] + 1}")
    if n_features is None:
        n_features = width
    elif width > n_features:
        raise DataError(f"{path}: feature index {width} exceeds n_features={n_features}")
    features = sp.csr_matrix((values, indices, indptr), shape=(labels.shape[0], n_features))
    features.sort_indices()
    within = np.diff(features.indices) == 0  # a row's sorted indices: a repeat is a duplicate
    starts = features.indptr[1:-1]  # where rows 1.. begin: the pair before each is another row's
    within[starts[(starts > 0) & (starts < features.indices.shape[0])] - 1] = False
    if within.any():
        first = int(np.flatnonzero(within)[0])
        raise DataError(f"{sample(first)} gives feature {features.indices[first] + 1} twice")
    return Dataset(features, labels, name or Path(path).name)


def _content_lines(raw: bytes) -> Iterator[tuple[int, bytes]]:
    """``(number, content)`` of each line of LIBSVM text ``raw`` that holds more than spaces and a comment.

    Lines end at a line feed (the numbers count these) or a carriage return, as the fast reader's
    do; the content is what comes before ``#``, without spaces and tabs around it.  One line at a
    time: a file of many comments or blank lines costs no list of them (a review: 2.1 GB for 100 MB
    of comments).
    """
    for number, whole in enumerate(io.BytesIO(raw), start=1):
        for piece in whole.split(b"\r") if b"\r" in whole else (whole,):
            if content := piece.split(b"#", 1)[0].strip(b" \t\n"):
                yield number, content


def _line_of_sample(raw: bytes, sample: int) -> int:
    """The line (from 1) of LIBSVM text ``raw`` holding its sample number ``sample`` (from 1)."""
    for seen, (number, _) in enumerate(_content_lines(raw), start=1):
        if seen == sample:
            return number
    return 0  # (not reached: the readers found that many samples)


def _parse_lines(raw: bytes, path: str | Path) -> tuple[Any, Any, Any, Any]:
    """``(labels, pairs per row, indices as written, values)`` of LIBSVM text, line by line.

    Lines as :func:`_content_lines` gives them; a ``qid:N`` after the label (svmlight's query id)
    is left out.

    Raises:
        DataError: naming the line, if one is malformed or holds a control character or a byte
            beyond ASCII outside its comment.
    """
    if not re.search(rb"\S", raw):  # blank: said at once (a review's 50 M blank lines took 11 s to say so)
        raise DataError(f"{path}: no samples")
    if raw[:3] == b"\x00\x00\x08" and raw[3:4] in (b"\x01", b"\x03"):
        raise DataError(
            f"{path}: an MNIST IDX file, not LIBSVM text: give the folder that holds it (--data DIR)"
        )
    labels: list[float] = []
    counts: list[int] = []
    bodies: list[str] = []
    numbers: list[int] = []
    for number, content in _content_lines(raw):
        if bad := _NOT_TEXT.search(content):
            what = "a byte beyond ASCII" if bad.group()[0] > 127 else f"the control character {bad.group()!r}"
            raise DataError(f"{path}:{number}: {what}: not LIBSVM text")
        head, *rest = content.decode("ascii").split(None, 1)
        body = rest[0] if rest else ""
        if body.startswith("qid:"):  # svmlight's query id: not a feature
            body = body.split(None, 1)[1] if " " in body or "\t" in body else ""
        if "_" in head + body:  # Python's float() and int() read 1_0 as 10; LIBSVM's strtod stops at the _
            token = next(token for token in f"{head} {body}".split() if "_" in token)
            raise DataError(
                f"{path}:{number}: {token!r} has an underscore: LIBSVM numbers are written without one"
            )
        try:
            label = float(head)
        except ValueError:
            shown = head if len(head) <= 40 else head[:40] + "..."  # (a whole comma-separated row, say)
            also = " (LIBSVM separates its fields by spaces)" if "," in head else ""
            raise DataError(f"{path}:{number}: label {shown!r} is not a number{also}") from None
        if not math.isfinite(label):
            raise DataError(f"{path}:{number}: label {head!r} is not finite")
        if body and not _PAIRS.fullmatch(body):
            raise DataError(f"{path}:{number}: features must be index:value pairs separated by spaces")
        labels.append(label)
        counts.append(body.count(":"))
        bodies.append(body)
        numbers.append(number)
    if not labels:
        raise DataError(f"{path}: no samples")
    # Every line matched _PAIRS, so the pieces alternate index, value.
    tokens = " ".join(bodies).replace(":", " ").split()
    try:
        indices = np.array(tokens[0::2], dtype=np.int64)
        values = np.array(tokens[1::2], dtype=np.float64)
    except (ValueError, OverflowError):
        for number, body in zip(numbers, bodies, strict=True):  # only now, line by line: which one
            pieces = body.replace(":", " ").split()
            try:
                np.array(pieces[0::2], dtype=np.int64), np.array(pieces[1::2], dtype=np.float64)
            except (ValueError, OverflowError) as exc:
                raise DataError(f"{path}:{number}: malformed index:value pair: {exc}") from exc
        raise  # (not reached: some line fails as the whole did)
    return np.asarray(labels), np.asarray(counts, dtype=np.int64), indices, values


def load_mnist_idx(images: str | Path, labels: str | Path, *, name: str = "mnist") -> Dataset:
    """Load MNIST from IDX files (plain or gzip); pixels scaled to [0, 1].

    Raises:
        DataError: on a wrong magic number, truncated data or a count mismatch.
    """
    raw_images, raw_labels = _read_bytes(images), _read_bytes(labels)
    for path, raw, header in ((images, raw_images, 16), (labels, raw_labels, 8)):
        if len(raw) < header:
            raise DataError(f"{path}: {len(raw)} bytes, shorter than an IDX header ({header})")
    magic, count, rows, cols = struct.unpack(">IIII", raw_images[:16])
    if magic != 0x803:
        raise DataError(f"{images}: magic {magic:#x} is not 0x803 (IDX images)")
    label_magic, label_count = struct.unpack(">II", raw_labels[:8])
    if label_magic != 0x801:
        raise DataError(f"{labels}: magic {label_magic:#x} is not 0x801 (IDX labels)")
    if count != label_count:
        raise DataError(f"{images} holds {count} images but {labels} {label_count} labels")
    for path, size, expected in (
        (images, len(raw_images), 16 + count * rows * cols),
        (labels, len(raw_labels), 8 + count),
    ):
        if size != expected:
            raise DataError(f"{path}: {size} bytes, where its IDX header says {expected}")
    if not rows * cols:
        raise DataError(f"{images}: images of {rows} x {cols} pixels")
    pixels = np.frombuffer(raw_images, dtype=np.uint8, offset=16).reshape(count, rows * cols)
    y = np.frombuffer(raw_labels, dtype=np.uint8, offset=8).astype(np.int64)
    return Dataset(pixels.astype(np.float64) / 255.0, y, name)


def _csv_error(text: str, raw: bytes, header: int) -> str:
    """The words after a CSV file's name for numpy's loadtxt error ``text``: ``:LINE: what``.

    numpy counts data rows (from 0 for a bad value, from 1 for a short row), after the header and
    without blank and ``#`` lines; the file's line is found from them (a newcomer trial read "row 99"
    for the file's line 101, with numpy's advice on ``usecols``).
    """
    bad_value = re.fullmatch(r"(could not convert string .* to \w+) at row (\d+), column (\d+)\.", text)
    if bad_value:
        what, row, column = bad_value.groups()
        quoted = re.fullmatch(r"could not convert string (.*) to (\w+)", what)
        if quoted and len(quoted.group(1)) > 42:  # (a whole row of another separator, say)
            what = f"could not convert string {quoted.group(1)[:40]}...' to {quoted.group(2)}"
        return f":{_line_of_row(raw, int(row), header)}: not a numeric CSV: {what} (column {column})"
    short = re.fullmatch(r"the number of columns changed from (\d+) to (\d+) at row (\d+);.*", text)
    if short:
        before, after, row = short.groups()
        line = _line_of_row(raw, int(row) - 1, header)
        return f":{line}: {after} columns, where the rows before have {before}"
    return f": not a numeric CSV: {text}"


def _line_of_row(raw: bytes, row: int, header: int) -> int:
    """The file's line (from 1) of data row ``row`` (from 0) of a CSV file, as numpy's loadtxt counts them."""
    seen = -1
    for number, line in enumerate(raw.split(b"\n")[header:], start=header + 1):
        # numpy skips an empty line and a comment's, but counts one of spaces (a review): so here.
        seen += bool(line.split(b"#", 1)[0].rstrip(b"\r"))
        if seen == row:
            return number
    return header + row + 1  # (not found: numpy's own count)


def load_mnist_csv(path: str | Path, *, name: str = "mnist") -> Dataset:
    """Load MNIST rows of 784 pixels and a label (plain or gzip CSV); pixels scaled to [0, 1].

    The label comes last (the layout of the experiments' ``mnist_5k.csv.gz``) or first (the
    common layout of pjreddie's and Kaggle's files).  A first line of column names (most of its
    fields not numbers, or pandas' 0..784) is skipped, and where it names a first or last column
    ``label``, that column is the label.  Otherwise a first column of labels 0..9, at least two
    of them, whose last column holds one value (a corner pixel, always 0 in MNIST) or values
    above 9 (no MNIST label) is read label-first, and the log says so.  (A label-last file's
    first column is a corner pixel, one value.)  Pixels must be 0..255; a file whose pixels are
    all at most 1 is warned of (already scaled?).

    Raises:
        DataError: if the file cannot be parsed, has the wrong shape, or values out of range.
    """
    raw = _read_bytes(path)
    newline = raw.find(b"\n")  # the first line alone: split() would copy the rest of the file too
    names = [
        field.strip().strip(b"\"'").lower()
        for field in raw[: newline if newline >= 0 else len(raw)].split(b",")
    ]
    header = _is_header(names)
    if header:
        _log.info("%s: line 1 read as a header, not a sample", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below
            table = np.loadtxt(
                io.BytesIO(raw), delimiter=",", dtype=np.float64, ndmin=2, skiprows=int(header)
            )
    except ValueError as exc:
        raise DataError(f"{path}{_csv_error(str(exc), raw, int(header))}") from exc
    if table.shape[0] == 0:
        raise DataError(f"{path}: no samples")
    if table.shape[1] != 785:
        raise DataError(
            f"{path}: expected 785 columns (784 pixels + label), got {table.shape[1]}: a CSV file is read "
            "as MNIST; other data goes in LIBSVM format"
        )
    finite = np.isfinite(table).all(axis=1)
    if not finite.all():
        line = _line_of_row(raw, int(np.argmin(finite)), int(header))
        raise DataError(f"{path}:{line}: non-finite values")
    label_column, pixels = 784, table[:, :784]
    first = table[:, 0]
    if header and b"label" in (names[0], names[-1]):  # the header names it: pjreddie's and Kaggle's
        label_column = 0 if names[0] == b"label" else 784
    elif (
        (first == np.round(first)).all()
        and first.min() >= 0
        and first.max() <= 9
        and np.unique(first).size >= 2
        and (np.unique(table[:, 784]).size == 1 or table[:, 784].max() > 9)
    ):
        label_column = 0
        _log.info("%s: read label first (its first column holds labels 0..9, its last no labels)", path)
    if label_column == 0:
        pixels = table[:, 1:]
    labels = table[:, label_column]
    if (labels != np.round(labels)).any() or labels.min() < 0:
        raise DataError(f"{path}: labels must be non-negative integers")
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > 255:
        raise DataError(
            f"{path}: pixel values from {low:g} to {high:g}: MNIST pixels are 0..255 (other data goes in "
            "LIBSVM format)"
        )
    if high <= 1:
        _log.warning(
            "%s: every pixel is at most 1 (already scaled?): they are divided by 255 all the same", path
        )
    return Dataset(pixels / 255.0, labels.astype(np.int64), name)


def _is_header(names: list[bytes]) -> bool:
    """Whether a CSV file's first line, split at its commas, names the columns rather than holding a sample.

    A header has more than one field (a line of one is a file of another separator) and most of
    them are not numbers (one that is not, a typo, fails as a sample, naming the line), or it
    numbers the 785 columns 0..784 or 1..785 (pandas' default names: a review trained a sample
    of label 784).
    """
    if len(names) < 2:
        return False
    if b"label" in (names[0], names[-1]):  # (a review: pandas' label,0,1,...,783 was read as a sample)
        return True
    numeric = [_is_number(name) for name in names]
    if all(numeric) and len(names) == 785:
        first = float(names[0])
        return first in (0, 1) and [float(name) for name in names] == [first + i for i in range(785)]
    return numeric.count(False) * 2 > len(names)


def _is_number(field: bytes) -> bool:
    try:
        float(field.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    return True


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


#: MNIST IDX file names (LeCun's), each optionally gzipped: (images, labels) of a split.
_IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(folder: Path, stem: str) -> Path | None:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (both: an error, it is ambiguous).

    Also named as Kaggle's copies are (``train-images.idx3-ubyte``), and in any case (``.GZ``): a data
    audit's folder of those was not found, and the message then sent it in a circle.
    """

    def plain(name: str) -> str:
        name = name.lower().replace(".idx", "-idx")
        return name.removesuffix(".gz")

    found = sorted(path for path in folder.iterdir() if plain(path.name) == stem and path.is_file())
    if len(found) > 1:
        raise DataError(f"{folder}: both {found[0].name} and {found[1].name} exist; keep one")
    return found[0] if found else None


def _idx_split(folder: Path, split: str) -> tuple[Path, Path] | None:
    images_stem, labels_stem = _IDX_SPLITS[split]
    images, labels = _find(folder, images_stem), _find(folder, labels_stem)
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        missing = images_stem if images is None else labels_stem
        raise DataError(f"{folder}: {missing}[.gz] is missing (the {split} split needs images and labels)")
    return images, labels


def _folder_training(folder: Path) -> Dataset:
    name = folder.resolve().name or "dataset"
    split = _idx_split(folder, "train")
    csvs = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith((".csv", ".csv.gz")))
    if split is not None and csvs:
        raise DataError(f"{folder}: holds both train-*-idx files and {csvs[0].name}; keep one training set")
    if split is not None:
        return load_mnist_idx(*split, name=name)
    if len(csvs) == 1:
        return load_mnist_csv(csvs[0], name=name)
    if len(csvs) > 1:
        raise DataError(f"{folder}: {len(csvs)} CSV files ({', '.join(p.name for p in csvs[:3])}); keep one")
    has_test = _idx_split(folder, "test") is not None
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.lower().startswith("t10k"))
    raise DataError(
        f"{folder}: no training data (train-images-idx3-ubyte and train-labels-idx1-ubyte, gzipped or not, "
        f"or one MNIST .csv/.csv.gz file)"
        + ("; the t10k-* files there are the test set only" if has_test else "")
        # (a review: a folder of LIBSVM files said no more)
        + (f"; a LIBSVM file is given itself: --data {folder / others[0]}" if others else "")
    )


def load_dataset(path: str | Path | None) -> Dataset:
    """Load a training set: None is the bundled a9a; a folder is MNIST-format; else a file by type.

    - a folder: ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (each gzipped or not),
      or else its one MNIST ``.csv``/``.csv.gz`` file, is the training set, named after the folder;
      ``t10k-*`` files are the test set (:func:`load_test_dataset`), never trained on;
    - ``*.csv``/``*.csv.gz``: MNIST rows (:func:`load_mnist_csv`);
    - any other file: LIBSVM text (:func:`load_svmlight`).

    Raises:
        DataError: if the path is missing, unreadable or malformed, or a folder has no training set.
    """
    if path is None:
        return load_bundled_a9a()
    if not str(path):  # (Path("") is the working folder)
        raise DataError("the data path is empty: give a file or a folder")
    path = Path(path)
    if not path.exists():
        raise DataError(
            f"{path}: {'a link to nothing (or a loop of links)' if path.is_symlink() else 'no such file'}"
        )
    try:
        if path.is_dir():
            return _folder_training(path)
        if _is_csv(path):
            return load_mnist_csv(path)
        return load_svmlight(path)
    except MemoryError:  # (a data audit: a bare MemoryError from the parse, past the read's own check)
        raise DataError(
            f"{path}: out of memory reading it (its samples take more than this process has)"
        ) from None


def _is_csv(path: Path) -> bool:
    """Whether ``path`` names an MNIST CSV file: ``.csv``, compressed or not (gz, bz2, xz), in any case."""
    return path.name.lower().endswith((".csv", ".csv.gz", ".csv.bz2", ".csv.xz"))


def _test_file(path: Path) -> Path | None:
    """The test file beside LIBSVM file ``F``: ``F.t``, and for ``G.gz`` (bz2, xz) ``G.t.gz`` and ``G.t``.

    Raises:
        DataError: if more than one of them exists (which is meant is not clear).
    """
    names = [path.name + ".t"]
    stem, dot, suffix = path.name.rpartition(".")
    if dot and stem and suffix.lower() in ("gz", "bz2", "xz"):
        names += [f"{stem}.t.{suffix}", f"{stem}.t"]
    found = [path.with_name(name) for name in names if path.with_name(name).is_file()]
    if len(found) > 1:
        raise DataError(
            f"{path}: {' and '.join(p.name for p in found)} are both beside it: keep one test file"
        )
    return found[0] if found else None


def load_test_dataset(path: str | Path | None, *, n_features: int | None = None) -> Dataset | None:
    """The test set that goes with :func:`load_dataset`'s training set, or None if there is none.

    None (the bundled a9a): the bundled a9a.t.  A folder: its ``t10k-*`` IDX files.  A LIBSVM
    file ``F``: ``F.t`` beside it, given ``n_features`` columns (the training set's): features that
    only the test set indexes are left out, with a warning.

    Raises:
        DataError: if a test file exists but is malformed.
    """
    if path is None:
        return load_bundled_a9a(test=True)
    path = Path(path)
    if path.is_dir():
        split = _idx_split(path, "test")
        return None if split is None else load_mnist_idx(*split, name=f"{path.resolve().name}-test")
    if _is_csv(path):
        return None
    sibling = _test_file(path)
    if sibling is None:  # (said: a test file of another name is not found, and nothing else told why)
        _log.info("%s: no test file beside it (%s.t): the summary has no test accuracy", path, path.name)
        return None
    test = load_svmlight(sibling)
    width = test.features.shape[1]
    if n_features is None or width == n_features:
        return test
    features = sp.csr_matrix(test.features)
    if width > n_features:
        # LIBSVM's test files may index features the training file never does (a1a's and a1a.t): the
        # model has no weight for them, so its scores leave them out, as LIBSVM's own predict does.
        beyond = features[:, n_features:]
        _log.warning(
            "%s: features %d to %d appear only in the test set (in %d of its %d samples): the model has no "
            "weights for them, so its test scores leave them out",
            sibling, n_features + 1, width, int(np.count_nonzero(np.diff(beyond.indptr))), features.shape[0],
        )  # fmt: skip
        features = features[:, :n_features]
    else:
        features = sp.csr_matrix(
            (features.data, features.indices, features.indptr), shape=(features.shape[0], n_features)
        )
    return Dataset(features, test.labels, test.name)
