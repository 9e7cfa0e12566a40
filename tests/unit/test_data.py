"""Unit tests of aiodq.data: LIBSVM text, MNIST IDX and CSV, the bundled a9a, and sharding.

Every input file is written into ``tmp_path`` by the test itself, except the first
300 lines of LIBSVM's a9a and a9a.t in tests/fixtures, against which the bundled a9a
is checked.
"""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
import re
import struct
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from aiodq.data import (
    _parse_lines,
    load_bundled_a9a,
    load_dataset,
    load_mnist_csv,
    load_mnist_idx,
    load_svmlight,
    load_test_dataset,
)
from aiodq.errors import DataError
from aiodq.protocol.dataset import Dataset, shard
from aiodq.protocol.objectives import LogisticRegression, SoftmaxRegression

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def write(tmp_path: Path, name: str, data: bytes | str) -> Path:
    """Write ``data`` to ``tmp_path / name`` and return the path."""
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def dense(dataset: Dataset) -> np.ndarray:
    """The features as a dense array."""
    features = dataset.features
    return features.toarray() if sp.issparse(features) else np.asarray(features)


# -- load_svmlight: valid input --------------------------------------------------------------------

SMALL = "# a comment line\n+1 1:0.5 3:2 \n\n-1 2:1.5 # trailing comment\n   \n+1 1:1 2:-3 3:4e-1 \n"


def test_svmlight_one_based_indices_and_values(tmp_path: Path) -> None:
    """LIBSVM indices are 1-based; blank lines, comments and trailing spaces are skipped."""
    dataset = load_svmlight(write(tmp_path, "small.svm", SMALL))
    assert sp.issparse(dataset.features)
    assert dataset.features.shape == (3, 3)
    np.testing.assert_array_equal(dense(dataset), [[0.5, 0, 2], [0, 1.5, 0], [1, -3, 0.4]])
    np.testing.assert_array_equal(dataset.labels, [1, -1, 1])
    assert dataset.samples == 3
    assert dataset.features_count == 3


def test_svmlight_name_defaults_to_file_name(tmp_path: Path) -> None:
    """A dataset is named after its file unless a name is given."""
    path = write(tmp_path, "small.svm", SMALL)
    assert load_svmlight(path).name == "small.svm"
    assert load_svmlight(path, name="other").name == "other"


def test_svmlight_trailing_space_per_line(tmp_path: Path) -> None:
    """Lines ending with a space before the newline (as in a9a) parse like lines without it."""
    with_space = load_svmlight(write(tmp_path, "a", "+1 1:1 4:1 \n-1 2:1 \n"))
    without = load_svmlight(write(tmp_path, "b", "+1 1:1 4:1\n-1 2:1\n"))
    np.testing.assert_array_equal(dense(with_space), dense(without))
    np.testing.assert_array_equal(with_space.labels, without.labels)


def test_svmlight_windows_line_endings(tmp_path: Path) -> None:
    """CRLF line endings parse like LF."""
    dataset = load_svmlight(write(tmp_path, "crlf", "+1 1:1 \r\n-1 2:1 \r\n"))
    np.testing.assert_array_equal(dense(dataset), [[1, 0], [0, 1]])


def test_svmlight_explicit_zero_is_a_zero_that_still_sets_the_width(tmp_path: Path) -> None:
    """An explicit ``k:0`` holds no nonzero but counts for the inferred width (a9a.t's 123:0)."""
    dataset = load_svmlight(write(tmp_path, "zero", "+1 1:1 5:0 \n-1 2:1 \n"))
    assert dataset.features.shape == (2, 5)
    assert dataset.features.count_nonzero() == 2
    np.testing.assert_array_equal(dense(dataset), [[1, 0, 0, 0, 0], [0, 1, 0, 0, 0]])


def test_svmlight_unsorted_indices_are_sorted(tmp_path: Path) -> None:
    """Pairs given out of order land on their indices; the CSR indices come out sorted."""
    dataset = load_svmlight(write(tmp_path, "unsorted", "+1 3:3 1:1 \n-1 2:2 \n"))
    np.testing.assert_array_equal(dense(dataset), [[1, 0, 3], [0, 2, 0]])
    assert dataset.features.has_sorted_indices


def test_svmlight_labels_kept_as_written(tmp_path: Path) -> None:
    """Labels reach the model as written: 0/1, 2/4 and regression targets alike (models map them)."""
    dataset = load_svmlight(write(tmp_path, "01", "0 1:1\n1 2:1\n1 1:1\n0 2:1\n"))
    np.testing.assert_array_equal(dataset.labels, [0, 1, 1, 0])
    dataset = load_svmlight(write(tmp_path, "24", "2 1:1\n4 2:1\n"))
    np.testing.assert_array_equal(dataset.labels, [2, 4])
    dataset = load_svmlight(write(tmp_path, "reg", "0.25 1:1\n-3.5e2 2:1\n"))
    np.testing.assert_array_equal(dataset.labels, [0.25, -350.0])


def test_svmlight_huge_feature_index_is_a_data_error(tmp_path: Path) -> None:
    """An index past 2^31 - 1 is refused by name, not a MemoryError later."""
    with pytest.raises(DataError, match="feature index 99999999999"):
        load_svmlight(write(tmp_path, "huge", "1 99999999999:1\n"))


def test_svmlight_signed_labels_kept(tmp_path: Path) -> None:
    """Labels written -1/+1 stay -1/+1."""
    dataset = load_svmlight(write(tmp_path, "pm", "-1 1:1\n+1 2:1\n"))
    np.testing.assert_array_equal(dataset.labels, [-1, 1])


def test_svmlight_multiclass_labels_untouched(tmp_path: Path) -> None:
    """Labels beyond two classes are not remapped."""
    dataset = load_svmlight(write(tmp_path, "mc", "0 1:1\n1 2:1\n2 1:1\n"))
    np.testing.assert_array_equal(dataset.labels, [0, 1, 2])


def test_svmlight_row_without_features(tmp_path: Path) -> None:
    """A line with a label and no pairs is a sample with all-zero features."""
    dataset = load_svmlight(write(tmp_path, "empty-row", "+1\n-1 2:1\n"), n_features=3)
    np.testing.assert_array_equal(dense(dataset), [[0, 0, 0], [0, 1, 0]])


def test_svmlight_n_features_given_widens(tmp_path: Path) -> None:
    """An explicit n_features larger than the largest index sets the width."""
    dataset = load_svmlight(write(tmp_path, "w", "+1 1:1 \n-1 2:1 \n"), n_features=123)
    assert dataset.features.shape == (2, 123)
    assert dataset.features_count == 123


def test_svmlight_n_features_exceeded_is_a_data_error(tmp_path: Path) -> None:
    """A feature index above n_features is a DataError naming the limit."""
    path = write(tmp_path, "w", "+1 1:1 \n-1 5:1 \n")
    with pytest.raises(DataError, match="n_features=4"):
        load_svmlight(path, n_features=4)
    assert load_svmlight(path, n_features=5).features.shape == (2, 5)


def test_svmlight_gzip_input(tmp_path: Path) -> None:
    """A gzip-compressed file loads exactly like the plain text."""
    plain = load_svmlight(write(tmp_path, "small.svm", SMALL))
    packed = load_svmlight(write(tmp_path, "small.svm.gz", gzip.compress(SMALL.encode())))
    np.testing.assert_array_equal(dense(plain), dense(packed))
    np.testing.assert_array_equal(plain.labels, packed.labels)


# -- load_svmlight: errors -------------------------------------------------------------------------


def test_svmlight_missing_file(tmp_path: Path) -> None:
    """A missing file is a DataError, not an OSError."""
    with pytest.raises(DataError, match="cannot read"):
        load_svmlight(tmp_path / "nope.svm")


def test_svmlight_directory(tmp_path: Path) -> None:
    """A directory is a DataError, not an IsADirectoryError."""
    with pytest.raises(DataError):
        load_svmlight(tmp_path)


BAD_SVMLIGHT = {
    "binary garbage": bytes(range(256)) * 4,
    "nul bytes": b"\x00\x01\x02\x03\n",
    "bad label": b"+1 1:1\nspam 2:1\n",
    "bad value": b"+1 3:x\n",
    "pair without colon": b"+1 3\n",
    "pair without index": b"+1 :1\n",
    "pair without value": b"+1 3:\n",
    "two colons": b"+1 3:1:2\n",
    "index 0": b"+1 0:1\n",
    "negative index": b"-1 -2:1\n",
    "fractional index": b"+1 1.5:1\n",
    "index beyond int64": b"+1 99999999999999999999:1\n",
    "nan value": b"+1 1:nan\n",
    "inf value": b"+1 1:inf\n",
    "negative inf value": b"+1 1:-inf\n",
    "overflowing value": b"+1 1:1e400\n",
    "nan label": b"nan 1:1\n",
    "inf label": b"inf 1:1\n",
    "empty file": b"",
    "only comments and blanks": b"# nothing\n\n   \n",
    "pair split across lines": b"+1 3:\n-1 1\n",
    "index and value on different lines": b"+1 3\n-1 :2\n",
    "gzip header then garbage": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage-garbage-garbage",
    "truncated gzip": gzip.compress(b"+1 1:1\n" * 100)[:30],
    "feature given twice": b"+1 2:1 2:3\n",
    "feature given twice, unsorted": b"+1 3:1 1:2 3:1\n",
}


@pytest.mark.parametrize("content", BAD_SVMLIGHT.values(), ids=BAD_SVMLIGHT.keys())
def test_svmlight_malformed_input_raises_only_data_error(tmp_path: Path, content: bytes) -> None:
    """Malformed LIBSVM input raises DataError and never another exception."""
    path = write(tmp_path, "bad.svm", content)
    try:
        load_svmlight(path)
    except DataError as exc:
        assert str(exc)
    except Exception as exc:  # the rule under test: nothing but DataError escapes
        pytest.fail(f"{type(exc).__name__} escaped instead of DataError: {exc}")
    else:
        pytest.fail("malformed input was accepted")


def test_svmlight_error_names_the_line(tmp_path: Path) -> None:
    """A bad label is reported with its file and line number."""
    path = write(tmp_path, "bad.svm", "+1 1:1\n\nspam 2:1\n")
    with pytest.raises(DataError, match=r"bad\.svm:3"):
        load_svmlight(path)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        # A value that matches the pair pattern but is no number (newcomer trial: no line was named).
        (
            "+1 1:1\n\n-1 2:1 3:x0.61\n",
            "bad.svm:3: malformed index:value pair: could not convert string to float: 'x0.61'",
        ),
        ("+1 1:1\n-1\n+1 2:1 4:inf\n", "bad.svm:3: sample 3: non-finite feature value for feature 4"),
        ("+1 1:1\n\n-1 2:1 1:1 2:0.5\n", "bad.svm:3: sample 2 gives feature 2 twice"),
        ("\n+1\n-1\n+1 1:1 1:2\n", "bad.svm:4: sample 3 gives feature 1 twice"),  # after rows with none
        (
            "+1 1:1\n+1 0:1\n",
            "bad.svm:2: sample 2: feature indices start at 1 (a file written from 0, as "
            "scikit-learn's dump_svmlight_file does by default, is written again with zero_based=False)",
        ),
        # Python's float() and int() read 1_0 as 10 (a data audit: 0_5 trained as 5); LIBSVM's readers
        # (strtod) stop at the underscore.
        (
            "+1 1:1\n-1 2:0_5\n",
            "bad.svm:2: '2:0_5' has an underscore: LIBSVM numbers are written without one",
        ),
        ("+1 1:1\n1_0 2:1\n", "bad.svm:2: '1_0' has an underscore: LIBSVM numbers are written without one"),
    ],
    ids=[
        "not-a-number",
        "non-finite",
        "twice",
        "twice-after-empty-rows",
        "index-0",
        "_-value",
        "_-label",
    ],
)
def test_svmlight_errors_say_where(tmp_path: Path, content: str, says: str) -> None:
    """Errors found over the whole file name the line, or the sample (in file order) if only that is known."""
    path = write(tmp_path, "bad.svm", content)
    with pytest.raises(DataError) as info:
        load_svmlight(path)
    assert str(info.value).endswith(says)


def test_svmlight_a_feature_twice_on_different_rows_is_fine(tmp_path: Path) -> None:
    """The same index on neighbouring rows is no duplicate (the check stops at each row's end)."""
    path = write(tmp_path, "ok.svm", "+1 1:1 2:2\n-1 2:3\n\n+1 2:4 3:5\n")
    assert load_svmlight(path).features.toarray().tolist() == [[1, 2, 0], [0, 3, 0], [0, 4, 5]]


def test_data_error_is_a_value_error() -> None:
    """DataError is a ValueError, so generic input-error handlers catch it."""
    assert issubclass(DataError, ValueError)


# -- MNIST IDX -------------------------------------------------------------------------------------


def idx_images(pixels: np.ndarray, magic: int = 0x803) -> bytes:
    """An IDX3 image file for ``pixels`` of shape (count, rows, cols), uint8."""
    count, rows, cols = pixels.shape
    return struct.pack(">IIII", magic, count, rows, cols) + pixels.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray, magic: int = 0x801) -> bytes:
    """An IDX1 label file."""
    return struct.pack(">II", magic, labels.shape[0]) + labels.astype(np.uint8).tobytes()


PIXELS = np.array(
    [[[0, 255], [128, 1]], [[10, 20], [30, 40]], [[255, 255], [0, 0]]],
    dtype=np.uint8,
)
LABELS = np.array([7, 0, 9], dtype=np.uint8)


def test_idx_shape_labels_and_scaling(tmp_path: Path) -> None:
    """IDX images (magic 0x803) become rows of rows*cols pixels scaled to [0, 1]; labels (0x801) ints."""
    images = write(tmp_path, "img.idx", idx_images(PIXELS))
    labels = write(tmp_path, "lab.idx", idx_labels(LABELS))
    dataset = load_mnist_idx(images, labels)
    assert dataset.features.shape == (3, 4)
    assert dataset.features.dtype == np.float64
    np.testing.assert_array_equal(dataset.features, PIXELS.reshape(3, 4) / 255.0)
    assert dataset.features.min() >= 0.0
    assert dataset.features.max() == 1.0
    np.testing.assert_array_equal(dataset.labels, [7, 0, 9])
    assert np.issubdtype(dataset.labels.dtype, np.integer)
    assert dataset.name == "mnist"


def test_idx_gzip(tmp_path: Path) -> None:
    """Gzipped IDX files load like plain ones."""
    images = write(tmp_path, "img.gz", gzip.compress(idx_images(PIXELS)))
    labels = write(tmp_path, "lab.gz", gzip.compress(idx_labels(LABELS)))
    np.testing.assert_array_equal(load_mnist_idx(images, labels).features, PIXELS.reshape(3, 4) / 255.0)


IDX_ERRORS = {  # (each names its file: a review read "IDX file too short", and which was not said)
    "image magic": (idx_images(PIXELS, magic=0x801), idx_labels(LABELS), "img: magic 0x801 is not 0x803"),
    "label magic": (idx_images(PIXELS), idx_labels(LABELS, magic=0x803), "lab: magic 0x803 is not 0x801"),
    "truncated images": (
        idx_images(PIXELS)[:-1],
        idx_labels(LABELS),
        "img: 27 bytes, where its IDX header says 28",
    ),
    "truncated labels": (
        idx_images(PIXELS),
        idx_labels(LABELS)[:-1],
        "lab: 10 bytes, where its IDX header says 11",
    ),
    "extra image bytes": (idx_images(PIXELS) + b"\x00", idx_labels(LABELS), "img: 29 bytes, where"),
    "image header cut": (
        idx_images(PIXELS)[:10],
        idx_labels(LABELS),
        "img: 10 bytes, shorter than an IDX header",
    ),
    "label header cut": (
        idx_images(PIXELS),
        idx_labels(LABELS)[:5],
        "lab: 5 bytes, shorter than an IDX header",
    ),
    "count mismatch": (idx_images(PIXELS), idx_labels(LABELS[:2]), "img holds 3 images but .*lab 2 labels"),
    "empty files": (b"", b"", "img: 0 bytes, shorter than an IDX header"),
    "no pixels": (struct.pack(">IIII", 0x803, 3, 0, 4), idx_labels(LABELS), "img: images of 0 x 4 pixels"),
}


@pytest.mark.parametrize(("images", "labels", "message"), IDX_ERRORS.values(), ids=IDX_ERRORS.keys())
def test_idx_errors(tmp_path: Path, images: bytes, labels: bytes, message: str) -> None:
    """Bad magic numbers, truncation and count mismatches are DataErrors that say so, naming the file."""
    with pytest.raises(DataError, match=message):
        load_mnist_idx(write(tmp_path, "img", images), write(tmp_path, "lab", labels))


def test_idx_missing_file(tmp_path: Path) -> None:
    """A missing IDX file is a DataError."""
    labels = write(tmp_path, "lab", idx_labels(LABELS))
    with pytest.raises(DataError):
        load_mnist_idx(tmp_path / "missing", labels)


def test_idx_broken_gzip_is_a_data_error(tmp_path: Path) -> None:
    """A gzip header followed by garbage is a DataError, not a zlib error."""
    images = write(tmp_path, "img.gz", b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage-garbage")
    labels = write(tmp_path, "lab", idx_labels(LABELS))
    try:
        load_mnist_idx(images, labels)
    except DataError:
        pass
    except Exception as exc:
        pytest.fail(f"{type(exc).__name__} escaped instead of DataError: {exc}")
    else:
        pytest.fail("garbage accepted")


# -- MNIST CSV -------------------------------------------------------------------------------------


def csv_rows(rows: int, seed: int = 0) -> tuple[np.ndarray, str]:
    """``rows`` random rows of 784 pixels and a label, and their CSV text."""
    rng = np.random.default_rng(seed)
    table = np.concatenate(
        [rng.integers(0, 256, size=(rows, 784)), rng.integers(0, 10, size=(rows, 1))], axis=1
    )
    text = "\n".join(",".join(str(v) for v in row) for row in table) + "\n"
    return table, text


def test_csv_pixels_scaled_and_labels(tmp_path: Path) -> None:
    """CSV rows are 784 pixels (scaled to [0, 1]) followed by an integer label."""
    table, text = csv_rows(3)
    dataset = load_mnist_csv(write(tmp_path, "m.csv", text))
    assert dataset.features.shape == (3, 784)
    np.testing.assert_allclose(dataset.features, table[:, :784] / 255.0, rtol=0, atol=0)
    np.testing.assert_array_equal(dataset.labels, table[:, 784])
    assert np.issubdtype(dataset.labels.dtype, np.integer)


def test_csv_single_row_and_gzip(tmp_path: Path) -> None:
    """A one-row CSV stays two-dimensional; gzip input is read transparently."""
    table, text = csv_rows(1, seed=1)
    dataset = load_mnist_csv(write(tmp_path, "m.csv.gz", gzip.compress(text.encode())))
    assert dataset.features.shape == (1, 784)
    assert dataset.labels.tolist() == [table[0, 784]]


def test_csv_label_first_with_or_without_a_header_is_read_label_first(tmp_path: Path) -> None:
    """pjreddie's and Kaggle's layout (a newcomer trial's file was read label-last, its labels pixels):
    labels 0..9 first, a last column of one value (MNIST's corner pixel is 0), a header line or none."""
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, size=(6, 784))
    pixels[:, 783] = 0  # the bottom-right corner
    labels = np.array([7, 2, 1, 0, 4, 1])
    rows = "\n".join(
        ",".join(str(v) for v in [label, *row]) for label, row in zip(labels, pixels, strict=True)
    )
    header = "label," + ",".join(f"pixel{i}" for i in range(784)) + "\n"
    for text in (rows + "\n", header + rows + "\n"):
        dataset = load_mnist_csv(write(tmp_path, "m.csv", text))
        np.testing.assert_array_equal(dataset.labels, labels)
        np.testing.assert_array_equal(dataset.features, pixels / 255.0)
    pixels[:, 783] = rng.integers(10, 256, size=6)  # a last pixel of values no MNIST label takes
    rows = "\n".join(
        ",".join(str(v) for v in [label, *row]) for label, row in zip(labels, pixels, strict=True)
    )
    np.testing.assert_array_equal(load_mnist_csv(write(tmp_path, "m.csv", rows)).labels, labels)


def test_csv_label_last_stays_label_last(tmp_path: Path) -> None:
    """The experiments' layout: a corner pixel first (always 0), labels last; and a label-last file whose
    first column happens to hold small values but whose labels vary is read label-last too."""
    table, _ = csv_rows(8, seed=4)
    for first_column in (np.zeros(8, dtype=np.int64), np.arange(8) % 3):
        table[:, 0] = first_column
        text = "\n".join(",".join(str(v) for v in row) for row in table) + "\n"
        dataset = load_mnist_csv(write(tmp_path, "m.csv", text))
        np.testing.assert_array_equal(dataset.labels, table[:, 784])
        np.testing.assert_array_equal(dataset.features, table[:, :784] / 255.0)


def test_csv_first_lines_that_are_samples_and_headers_that_name_the_label(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A review: a byte order mark made the first sample a 'header' (199 of 200 read), pandas' numeric
    header 0..784 was trained as a sample of label 784, and a header naming its first column ``label``
    was read label-last where the last pixel held small values."""
    table, text = csv_rows(5, seed=6)
    dataset = load_mnist_csv(write(tmp_path, "m.csv", b"\xef\xbb\xbf" + text.encode()))
    np.testing.assert_array_equal(dataset.labels, table[:, 784])  # all five
    caplog.set_level(logging.INFO, logger="aiodq.data")
    for first in (0, 1):
        numbered = ",".join(str(first + i) for i in range(785)) + "\n"
        dataset = load_mnist_csv(write(tmp_path, "m.csv", numbered + text))
        np.testing.assert_array_equal(dataset.labels, table[:, 784])
        assert "m.csv: line 1 read as a header, not a sample" in caplog.text
    label_first = np.concatenate([table[:, 784:], table[:, :784]], axis=1)
    label_first[:, 784] = np.arange(5) % 3  # a last pixel that looks like labels 0..2
    names = "label," + ",".join(f"pixel{i}" for i in range(784)) + "\n"
    rows = "\n".join(",".join(map(str, row)) for row in label_first) + "\n"
    pandas = "label," + ",".join(str(i) for i in range(784)) + "\n"  # (a review: read as a sample)
    for header in (names, names.upper(), f"\ufeff{names}", pandas):
        dataset = load_mnist_csv(write(tmp_path, "m.csv", header + rows))
        np.testing.assert_array_equal(dataset.labels, table[:, 784])
        np.testing.assert_array_equal(dataset.features, label_first[:, 1:] / 255.0)
    # A typo in a sample's first field is not a header: the line is named.
    with pytest.raises(DataError, match=r"m\.csv:1: not a numeric CSV: could not convert string 'O\d*' to"):
        load_mnist_csv(write(tmp_path, "m.csv", "O" + text[1:]))


def test_csv_pixels_out_of_range_are_refused_and_scaled_ones_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """MNIST pixels are 0..255: a review's 999 and already scaled pixels went through without a word."""
    table, _ = csv_rows(3, seed=7)
    for bad, shown in ((999, "0 to 999"), (-1, "-1 to 255")):
        table[1, 5], table[2, 6] = bad, 255
        text = "\n".join(",".join(map(str, row)) for row in table) + "\n"
        with pytest.raises(DataError, match=f"m.csv: pixel values from {shown}: MNIST pixels are 0..255"):
            load_mnist_csv(write(tmp_path, "m.csv", text))
        table[1, 5] = 0
    scaled = np.concatenate([np.full((3, 784), 0.5), table[:, 784:]], axis=1)
    text = "\n".join(",".join(f"{v:g}" for v in row) for row in scaled) + "\n"
    caplog.set_level(logging.WARNING, logger="aiodq.data")
    load_mnist_csv(write(tmp_path, "m.csv", text))
    assert "m.csv: every pixel is at most 1 (already scaled?)" in caplog.text


def test_csv_wrong_column_count(tmp_path: Path) -> None:
    """A CSV without exactly 785 columns is a DataError naming the count."""
    with pytest.raises(DataError, match="785"):
        load_mnist_csv(write(tmp_path, "m.csv", "1,2,3\n4,5,6\n"))


@pytest.mark.parametrize(
    "content",
    [b"a,b,c\n", b"1,2\n3\n", bytes(range(256))],
    ids=["text", "ragged", "binary"],
)
def test_csv_unparseable(tmp_path: Path, content: bytes) -> None:
    """A CSV that is not a numeric table is a DataError."""
    with pytest.raises(DataError):
        load_mnist_csv(write(tmp_path, "m.csv", content))


@pytest.mark.parametrize("header", [False, True])
def test_a_bad_csv_row_is_named_by_its_line_in_the_file(tmp_path: Path, header: bool) -> None:
    """A newcomer trial: a bad value on the file's line 61 was "at row 60" (line 101 "at row 99" after a
    header), and a short row came with numpy's advice on ``usecols``.  Both name the file's line now."""
    row = ",".join(["0"] * 784) + ",3\n"
    top = "label," + ",".join(f"pixel{i}" for i in range(784)) + "\n" if header else ""
    lines = [row] * 70
    lines[60] = row.replace("0,", "x199,", 1)  # the file's line 61 (62 with the header)
    path = write(tmp_path, "m.csv", top + "".join(lines))
    line = 61 + header
    said = f"{path}:{line}: not a numeric CSV: could not convert string 'x199' to float64 (column 1)"
    with pytest.raises(DataError, match=f"^{re.escape(said)}$"):
        load_mnist_csv(path)
    lines[60] = ",".join(["0"] * 780) + "\n"
    path = write(tmp_path, "short.csv", top + "".join(lines))
    said = f"{path}:{line}: 780 columns, where the rows before have 785"
    with pytest.raises(DataError, match=f"^{re.escape(said)}$"):
        load_mnist_csv(path)
    # Blank and comment lines, which numpy does not count (a review): the file's line all the same.
    lines[60] = row.replace("0,", "x199,", 1)
    path = write(
        tmp_path, "spaced.csv", top + "\n# a comment\n" + "".join(lines[:30]) + "\n" + "".join(lines[30:])
    )
    said = f"{path}:{line + 3}: not a numeric CSV: could not convert string 'x199' to float64 (column 1)"
    with pytest.raises(DataError, match=f"^{re.escape(said)}$"):
        load_mnist_csv(path)


def test_csv_missing_file(tmp_path: Path) -> None:
    """A missing CSV is a DataError."""
    with pytest.raises(DataError):
        load_mnist_csv(tmp_path / "missing.csv")


# -- load_dataset ----------------------------------------------------------------------------------


def test_load_dataset_none_is_bundled_a9a() -> None:
    """load_dataset(None) is the bundled a9a training set."""
    dataset = load_dataset(None)
    assert dataset.name == "a9a"
    assert dataset.features.shape == (32_561, 123)


def test_load_dataset_dispatch_by_name(tmp_path: Path) -> None:
    """.csv and .csv.gz go to the CSV loader, other files to the LIBSVM loader."""
    _, text = csv_rows(2)
    assert load_dataset(write(tmp_path, "m.csv", text)).features.shape == (2, 784)
    gz = write(tmp_path, "m.csv.gz", gzip.compress(text.encode()))
    assert load_dataset(gz).features.shape == (2, 784)
    svm = load_dataset(write(tmp_path, "data.txt", "+1 1:1 \n-1 2:1 \n"))
    assert sp.issparse(svm.features)
    assert svm.features.shape == (2, 2)


def idx_folder(folder: Path, split: str, *, gz: bool = True, count: int = 3) -> None:
    """Write an IDX split (``train`` or ``t10k``) of ``count`` 2x2 images into ``folder``."""
    pixels = (np.arange(count * 4, dtype=np.uint8) * 7).reshape(count, 2, 2)
    labels = (np.arange(count) % 10).astype(np.uint8)
    for stem, raw in (
        (f"{split}-images-idx3-ubyte", idx_images(pixels)),
        (f"{split}-labels-idx1-ubyte", idx_labels(labels)),
    ):
        write(folder, stem + (".gz" if gz else ""), gzip.compress(raw) if gz else raw)


@pytest.mark.parametrize("gz", [True, False])
def test_load_dataset_folder_trains_on_train_split(tmp_path: Path, gz: bool) -> None:
    """An MNIST folder: train-* is the training set (gzipped or not), t10k-* the test set, named after it."""
    folder = tmp_path / "digits"
    folder.mkdir()
    idx_folder(folder, "train", gz=gz, count=5)
    idx_folder(folder, "t10k", gz=not gz, count=3)
    train = load_dataset(folder)
    assert train.features.shape == (5, 4)
    assert train.name == "digits"
    test = load_test_dataset(folder)
    assert test is not None
    assert test.features.shape == (3, 4)
    assert test.name == "digits-test"


def test_load_dataset_folder_with_a_csv_training_set(tmp_path: Path) -> None:
    """A folder whose one CSV is the training set (the shipped layout: mnist_5k.csv.gz beside t10k-*)."""
    _, text = csv_rows(2)
    write(tmp_path, "mnist_5k.csv.gz", gzip.compress(text.encode()))
    idx_folder(tmp_path, "t10k")
    assert load_dataset(tmp_path).features.shape == (2, 784)
    test = load_test_dataset(tmp_path)
    assert test is not None
    assert test.features.shape == (3, 4)


def test_load_dataset_folder_with_test_data_only_is_an_error(tmp_path: Path) -> None:
    """t10k-* alone is never trained on: the error says there is no training data and why."""
    idx_folder(tmp_path, "t10k")
    with pytest.raises(DataError, match=r"no training data.*test set only"):
        load_dataset(tmp_path)


def test_load_dataset_folder_ambiguities(tmp_path: Path) -> None:
    """Half a split, both plain and gzipped copies, or two training sets: each a DataError naming it."""
    half = tmp_path / "half"
    half.mkdir()
    write(half, "train-images-idx3-ubyte.gz", gzip.compress(idx_images(np.zeros((1, 2, 2), np.uint8))))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*missing"):
        load_dataset(half)
    both = tmp_path / "both"
    both.mkdir()
    idx_folder(both, "train", gz=True)
    idx_folder(both, "train", gz=False)
    with pytest.raises(DataError, match=r"both train-images-idx3-ubyte and train-images-idx3-ubyte.gz"):
        load_dataset(both)
    two = tmp_path / "two"
    two.mkdir()
    idx_folder(two, "train")
    _, text = csv_rows(2)
    write(two, "extra.csv", text)
    with pytest.raises(DataError, match="keep one training set"):
        load_dataset(two)


def test_load_test_dataset_pairs(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """None: bundled a9a.t; LIBSVM F: F.t beside it with the training width; a CSV or no F.t: None, the
    latter said in the log (a data audit: a test file of another name was passed over without a word)."""
    bundled = load_test_dataset(None)
    assert bundled is not None
    assert bundled.name == "a9a.t"
    train = write(tmp_path, "set", "+1 1:1\n-1 3:1\n")
    with caplog.at_level(logging.INFO, logger="aiodq.data"):
        assert load_test_dataset(train) is None
    assert f"{train}: no test file beside it (set.t): the summary has no test accuracy" in caplog.messages
    write(tmp_path, "set.t", "+1 2:1\n")
    test = load_test_dataset(train, n_features=3)
    assert test is not None
    assert test.features.shape == (1, 3)
    _, text = csv_rows(2)
    assert load_test_dataset(write(tmp_path, "m.csv", text)) is None


def test_load_dataset_errors(tmp_path: Path) -> None:
    """A missing path, or an empty folder, is a DataError."""
    with pytest.raises(DataError, match="no such file"):
        load_dataset(tmp_path / "missing")
    with pytest.raises(DataError, match=r"^the data path is empty: give a file or a folder$"):
        load_dataset("")  # (a data audit: --data "" read the working folder)
    with pytest.raises(DataError, match="no training data"):
        load_dataset(tmp_path)
    write(tmp_path, "a9a", SMALL)  # a folder of LIBSVM files (a review: the error said no more)
    with pytest.raises(
        DataError, match=rf"; a LIBSVM file is given itself: --data {re.escape(str(tmp_path))}/a9a$"
    ):
        load_dataset(tmp_path)


def test_only_regular_files_are_read_and_a_link_loop_says_so(tmp_path: Path) -> None:
    """A review: a FIFO gave its bytes to the master and held every worker for ever; /dev/zero read 3.7 GB;
    a loop of links was 'no such file'."""
    for path in (tmp_path / "fifo", Path("/dev/zero"), tmp_path / "m.csv"):
        if path.parent == tmp_path:
            os.mkfifo(path)
        with ThreadPoolExecutor(1) as pool:
            reading = pool.submit(load_dataset, path)
            try:
                error = reading.exception(timeout=60)
            except TimeoutError:  # the reader waits for a writer: give it one, so that the test ends
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
                pytest.fail(f"reading {path} waited for a writer")
        assert isinstance(error, DataError) and "not a regular file" in str(error), error
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(DataError, match="a: a link to nothing \\(or a loop of links\\)"):
        load_dataset(tmp_path / "a")
    (tmp_path / "c").symlink_to(write(tmp_path, "data", SMALL))
    assert load_dataset(tmp_path / "c").samples == 3


def test_compressed_forms_and_a_byte_order_mark(tmp_path: Path) -> None:
    """bzip2 and xz (LIBSVM's site ships both) read as the plain file; a zip archive and a BOM (a review:
    'not an ASCII LIBSVM file' for all three) are said or skipped; .CSV in capitals is a CSV."""
    plain = load_svmlight(write(tmp_path, "plain", SMALL))
    for name, packed in (("f.bz2", bz2.compress(SMALL.encode())), ("f.xz", lzma.compress(SMALL.encode()))):
        got = load_svmlight(write(tmp_path, name, packed))
        assert (got.features != plain.features).nnz == 0 and got.labels.tolist() == plain.labels.tolist()
    with pytest.raises(DataError, match=r"f\.bz2: broken bzip2 data"):
        load_svmlight(write(tmp_path, "f.bz2", bz2.compress(SMALL.encode())[:-9]))
    with pytest.raises(DataError, match=r"f\.zip: a zip archive: extract the data file"):
        load_dataset(write(tmp_path, "f.zip", b"PK\x03\x04" + bytes(40)))
    bom = load_dataset(write(tmp_path, "bom", "\ufeff" + SMALL))
    assert bom.labels.tolist() == plain.labels.tolist()
    table, text = csv_rows(2, seed=8)
    assert load_dataset(write(tmp_path, "M.CSV", text)).labels.tolist() == table[:, 784].tolist()
    packed = write(tmp_path, "m.csv.bz2", bz2.compress(text.encode()))
    assert load_dataset(packed).labels.tolist() == table[:, 784].tolist()  # (was read as LIBSVM)


def test_the_line_reader_ends_lines_at_line_feeds_and_refuses_control_characters(tmp_path: Path) -> None:
    """A review: splitlines() broke lines at form feeds and \\x1c (a third sample from two lines), and a
    line's number was off after one; non-ASCII text in a comment refused the whole file."""
    for control in ("\x1c", "\x0c", "\x0b", "\x00"):
        path = write(tmp_path, "f", f"# a comment\n+1 1:1{control}2:1\n-1 1:2\n")
        with pytest.raises(
            DataError, match=f"f:2: the control character {re.escape(repr(control.encode()))}"
        ):
            load_svmlight(path)
    got = load_svmlight(write(tmp_path, "f", "# données, résumé\n+1 1:1\r\r\n-1 2:1 # é\n+1 3:1\n"))
    assert got.labels.tolist() == [1, -1, 1]
    with pytest.raises(DataError, match="f:2: a byte beyond ASCII"):
        load_svmlight(write(tmp_path, "f", "# ok\n+1 1:1é\n"))
    with pytest.raises(DataError, match="f:3: features must be index:value pairs"):
        load_svmlight(write(tmp_path, "f", "+1 1:1\r\n# x\n-1 1:1:1\n"))


def test_one_index_far_beyond_the_others_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A review: one stray 20000000:1 made a model of 20 M parameters (1.7 GB, 5 Gbit on the wire) unsaid."""
    caplog.set_level(logging.WARNING, logger="aiodq.data")
    stray = load_svmlight(write(tmp_path, "f", "+1 1:1 7:1\n-1 20000000:1\n+1 3:1\n"))
    assert stray.features.shape == (3, 20_000_000)
    assert "f: feature index 20000000 is more than twice the next largest (7)" in caplog.text
    caplog.clear()
    load_svmlight(write(tmp_path, "g", "+1 1:1 1500000:1\n-1 2000000:1\n"))  # wide, and not one stray
    assert not caplog.text


def test_a_query_id_is_left_out_as_svmlight_readers_do(tmp_path: Path) -> None:
    """api.md promised qid line by line; a review found it refused as a malformed pair."""
    with_qid = load_svmlight(write(tmp_path, "q", "3 qid:1 1:0.5 3:1\n1 qid:1 2:1\n2 qid:2\n"))
    without = load_svmlight(write(tmp_path, "p", "3 1:0.5 3:1\n1 2:1\n2\n"))
    assert with_qid.labels.tolist() == without.labels.tolist() == [3, 1, 2]
    np.testing.assert_array_equal(with_qid.features.toarray(), without.features.toarray())


def test_comments_are_read_a_line_at_a_time(tmp_path: Path) -> None:
    """A review: 100 MB of comment lines took 2.1 GB (the text decoded, then a list of every line)."""
    raw = b"# a comment line\n" * 100_000 + b"+1 1:1\n-1 2:1\n"
    tracemalloc.start()
    try:
        dataset = _parse_lines(raw, "comments")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert dataset[0].tolist() == [1, -1]
    assert peak < 256 << 10, peak  # (1.7 MB of text: its decoded copy alone is more; its lines 7 MB)


def test_a_compressed_file_s_test_file_is_found_by_its_stem(tmp_path: Path) -> None:
    """A review: beside F.gz only F.gz.t was looked for, so F.t was silently left out."""
    train = write(tmp_path, "f.gz", gzip.compress(SMALL.encode()))
    assert load_test_dataset(train) is None
    for name in ("f.t", "f.t.gz", "f.gz.t"):
        test = write(tmp_path, name, gzip.compress(b"+1 1:2\n") if name.endswith("gz") else b"+1 1:2\n")
        found = load_test_dataset(train, n_features=3)
        assert found is not None and found.name == name
        test.unlink()
    write(tmp_path, "f.t", "+1 1:2\n")
    write(tmp_path, "f.gz.t", "+1 1:2\n")
    with pytest.raises(DataError, match=r"f\.gz\.t and f\.t are both beside it: keep one test file"):
        load_test_dataset(train)


# -- the bundled a9a -------------------------------------------------------------------------------


def test_bundled_a9a_train_counts() -> None:
    """Bundled a9a: 32,561 x 123, 451,592 ones, labels 24,720 x -1 and 7,841 x +1 (data README)."""
    dataset = load_bundled_a9a()
    features = dataset.features
    assert sp.isspmatrix_csr(features)
    assert features.shape == (32_561, 123)
    assert features.nnz == 451_592
    assert features.count_nonzero() == 451_592
    np.testing.assert_array_equal(features.data, 1.0)
    assert int(np.count_nonzero(dataset.labels == -1)) == 24_720
    assert int(np.count_nonzero(dataset.labels == 1)) == 7_841
    assert dataset.name == "a9a"


def test_bundled_a9a_test_counts() -> None:
    """Bundled a9a.t: 16,281 x 123 and 225,731 nonzeros (the explicit 123:0 dropped), 12,435/3,846."""
    dataset = load_bundled_a9a(test=True)
    features = dataset.features
    assert features.shape == (16_281, 123)
    assert features.nnz == 225_731
    np.testing.assert_array_equal(features.data, 1.0)
    assert int(np.count_nonzero(dataset.labels == -1)) == 12_435
    assert int(np.count_nonzero(dataset.labels == 1)) == 3_846
    assert dataset.name == "a9a.t"


def test_bundled_a9a_is_canonical_csr() -> None:
    """The bundled CSR has sorted, in-range, duplicate-free indices."""
    features = load_bundled_a9a().features
    assert features.has_canonical_format
    assert int(features.indices.min()) >= 0
    assert int(features.indices.max()) <= 122


@pytest.mark.parametrize(("member", "test"), [("a9a-head-300", False), ("a9a.t-head-300", True)])
def test_bundled_a9a_equals_libsvm_text(member: str, test: bool) -> None:
    """The bundled a9a's first 300 rows equal LIBSVM's a9a text (tests/fixtures) parsed by load_svmlight."""
    parsed = load_svmlight(FIXTURES / member, n_features=123)
    bundled = load_bundled_a9a(test=test)
    assert bundled.samples == (16_281 if test else 32_561)
    head = bundled.rows(np.arange(300))
    assert parsed.features.shape == head.features.shape == (300, 123)
    assert (parsed.features != head.features).nnz == 0
    np.testing.assert_array_equal(parsed.labels, head.labels)
    # load_svmlight may keep the explicit 123:0 of a9a.t as a stored zero; the nonzeros match.
    assert parsed.features.count_nonzero() == head.features.nnz


# -- shard -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("samples", "workers"), [(10, 3), (100, 4), (7, 7), (32_561, 8), (5, 1)])
def test_shard_disjoint_covering_balanced(samples: int, workers: int) -> None:
    """Shards are disjoint, cover every sample once, are sorted and differ in size by at most one."""
    parts = [shard(samples, workers, index, seed=3) for index in range(workers)]
    joined = np.concatenate(parts)
    assert joined.shape[0] == samples
    np.testing.assert_array_equal(np.sort(joined), np.arange(samples))
    sizes = [part.shape[0] for part in parts]
    assert max(sizes) - min(sizes) <= 1
    for part in parts:
        assert np.all(np.diff(part) > 0)


def test_shard_deterministic_per_seed() -> None:
    """The same seed gives the same shards."""
    for index in range(4):
        np.testing.assert_array_equal(shard(1000, 4, index, seed=11), shard(1000, 4, index, seed=11))


def test_shard_seed_changes_split() -> None:
    """Different seeds give different splits."""
    assert not np.array_equal(shard(1000, 4, 0, seed=0), shard(1000, 4, 0, seed=1))


@pytest.mark.parametrize(
    ("samples", "workers", "index"),
    [(10, 3, 3), (10, 3, -1), (10, 0, 0), (10, -2, 0), (2, 3, 0)],
)
def test_shard_errors(samples: int, workers: int, index: int) -> None:
    """A shard index outside [0, workers), no workers, or fewer samples than workers is a ValueError."""
    with pytest.raises(ValueError, match=r"shard|samples"):
        shard(samples, workers, index)


def test_dataset_rows_and_validation() -> None:
    """Dataset.rows selects samples in order; mismatched or empty datasets are DataErrors."""
    features = np.arange(12, dtype=np.float64).reshape(4, 3)
    dataset = Dataset(features, np.array([1, -1, 1, -1]), "t")
    picked = dataset.rows(np.array([2, 0]))
    np.testing.assert_array_equal(picked.features, features[[2, 0]])
    np.testing.assert_array_equal(picked.labels, [1, 1])
    with pytest.raises(DataError):
        Dataset(features, np.array([1, -1]))
    with pytest.raises(DataError):
        Dataset(np.zeros((0, 3)), np.zeros(0))
    # (A newcomer's audit: lists raised AttributeError; NaN features were taken, and the first snapshot
    # blamed the step size.)
    with pytest.raises(
        DataError, match=r"^Dataset features must be a 2-D numpy array or scipy CSR matrix, got list$"
    ):
        Dataset([[1.0]], np.ones(1))  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"^Dataset labels must be a 1-D numpy array, got shape \(4, 1\)$"):
        Dataset(features, np.ones((4, 1)))
    broken = features.copy()
    broken[2, 1] = np.nan
    for given in (
        broken,
        sp.csr_matrix(broken),
        sp.csc_matrix(broken),
        sp.coo_matrix(broken),
        sp.lil_matrix(broken),
    ):
        with pytest.raises(DataError, match=r"^Dataset features: sample 2 has NaN or infinite values$"):
            Dataset(given, np.ones(4))
    broken[3, 0] = np.inf  # (first in a CSC's column order, not the first sample)
    for given in (broken, sp.csr_matrix(broken), sp.csc_matrix(broken), sp.coo_matrix(broken)):
        with pytest.raises(DataError, match=r"^Dataset features: sample 2 has NaN or infinite values$"):
            Dataset(given, np.ones(4))
    broken[2, 1], broken[3, 0] = 1.0, -np.inf
    with pytest.raises(DataError, match=r"sample 3 has NaN"):
        Dataset(sp.csr_matrix(broken), np.ones(4))
    for model in (LogisticRegression, SoftmaxRegression):  # the built-ins given arrays, as run_worker's are
        with pytest.raises(ValueError, match=r"^features: sample 3 has NaN or infinite values$"):
            model(broken, np.array([1, -1, 1, -1]))


@pytest.mark.parametrize("model", ["logistic", "softmax", "mlp"])
def test_labels_of_one_value_are_refused_by_every_built_in_model(model: str) -> None:
    """All +1 (or all 0) labels: nothing to tell apart, a DataError naming the value, not accuracy 1.0."""
    for value in (1.0, 0.0):
        data = Dataset(np.eye(4), np.full(4, value), "same")
        with pytest.raises(DataError, match=f"every label of same is {value:g}: the {model} model needs two"):
            data.for_model(model, training_set=True)
        data.for_model(model)  # a test set or a worker's share may hold one class


def test_classes_without_samples_are_noted() -> None:
    """Labels 1..3 (LIBSVM's 1-based classes) for softmax: classes 0..3, the note says class 0 is empty."""
    data = Dataset(np.eye(6), np.array([1.0, 2, 3, 1, 2, 3]), "one-based")
    mapped, note = data.for_model("softmax")
    hint = "(labels 1..3, LIBSVM's usual numbering: subtract 1 for classes 0..C-1)"
    assert note == f"classes 0..3: 0 has no samples {hint}"
    np.testing.assert_array_equal(mapped.labels, [1, 2, 3, 1, 2, 3])
    _, note = Dataset(np.eye(4), np.array([0.0, 2, 5, 0]), "gaps").for_model("mlp")
    assert note == "classes 0..5: 1, 3, 4 have no samples"
    _, note = Dataset(np.eye(3), np.array([0.0, 1, 2]), "full").for_model("softmax")
    assert note is None


def test_labels_the_training_set_never_had_are_refused_not_mapped() -> None:
    """A review: test labels 2/5 against training's 2/4 were scored as -1 (a test accuracy of 1.0).

    Logistic regression maps exactly the training set's two values; softmax and the MLP take any
    class 0..C-1 of the training set's C (classes without training samples included).
    """
    train = np.array([2.0, 4, 4, 2])
    for test, bad in (([2.0, 5], "label 5 is"), ([-1.0, 1], "labels -1, 1 are")):
        with pytest.raises(DataError, match=f"^{bad} not among the training set's labels \\(2, 4\\)$"):
            Dataset(np.eye(2), np.array(test)).for_model("logistic", values=train)
    mapped, _ = Dataset(np.eye(2), np.array([4.0, 4])).for_model("logistic", values=train)
    np.testing.assert_array_equal(mapped.labels, [1, 1])
    classes = np.array([0.0, 1, 3])  # class 2 has no training samples, but the model has its output
    for model in ("softmax", "mlp"):
        mapped, _ = Dataset(np.eye(2), np.array([2.0, 3])).for_model(model, values=classes)
        np.testing.assert_array_equal(mapped.labels, [2, 3])
        with pytest.raises(DataError, match=r"^label 4 is not among the training set's classes 0\.\.3$"):
            Dataset(np.eye(2), np.array([4.0, 0])).for_model(model, values=classes)
        with pytest.raises(DataError, match=r"^label 1\.5 is not among"):  # (a review: read as class 1)
            Dataset(np.eye(2), np.array([1.5, 0])).for_model(model, values=classes)


def test_a_huge_class_label_costs_no_array_of_every_class() -> None:
    """A review: one label of 10**9 made the note of empty classes allocate 7.45 GiB (an arange of all)."""
    labels = np.array([0.0, 1, 1e9])
    tracemalloc.start()
    try:
        _, note = Dataset(np.eye(3), labels).for_model("softmax")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert note == "classes 0..1000000000: 2, 3, 4, 5, 6, 7, ... have no samples"
    assert peak < 1 << 20, peak  # (numpy's arrays are traced: the arange of 10**9 int64 was 8 GB)


def test_a_datasets_fingerprint_is_the_documented_digest_and_tells_data_apart() -> None:
    """BLAKE2b-128 over "aiodq-dataset-1 <form> <rows> <columns>", the labels, then the values (and a
    CSR's indices and row pointers), as float64 and int64 little-endian; the name is left out."""
    import hashlib  # noqa: PLC0415

    dense = np.array([[0.5, 0.0], [0.0, -2.0]])
    labels = np.array([1, -1])
    expected = hashlib.blake2b(digest_size=16)
    expected.update(b"aiodq-dataset-1 dense 2 2")
    expected.update(struct.pack("<2d", 1.0, -1.0))
    expected.update(struct.pack("<4d", 0.5, 0.0, 0.0, -2.0))
    assert Dataset(dense, labels, "x").fingerprint() == "blake2b:" + expected.hexdigest()
    csr = sp.csr_matrix(dense)
    expected = hashlib.blake2b(digest_size=16)
    expected.update(b"aiodq-dataset-1 csr 2 2")
    expected.update(struct.pack("<2d", 1.0, -1.0))
    expected.update(struct.pack("<2d", 0.5, -2.0) + struct.pack("<2q", 0, 1) + struct.pack("<3q", 0, 1, 2))
    assert Dataset(csr, labels).fingerprint() == "blake2b:" + expected.hexdigest()
    base = Dataset(csr, labels).fingerprint()
    others = [
        Dataset(sp.csr_matrix(np.array([[0.5, 0.0], [0.0, -2.5]])), labels),  # a value
        Dataset(csr, np.array([-1, 1])),  # a label
        Dataset(csr[[1, 0]], labels[[1, 0]]),  # the same samples in another order
        Dataset(sp.csr_matrix(np.array([[0.5, 0.0, 0.0], [0.0, -2.0, 0.0]])), labels),  # a column more
        Dataset(dense, labels),  # the same values, dense
    ]
    assert len({base, *(other.fingerprint() for other in others)}) == 1 + len(others)
    assert Dataset(csr.astype(np.float32), labels.astype(np.float64), "renamed").fingerprint() == base
    # A stored zero (a file's "2:0") and a negative zero are the same data.
    stored = sp.csr_matrix(
        (np.array([0.5, 0.0, -2.0]), np.array([0, 1, 1]), np.array([0, 2, 3])), shape=(2, 2)
    )
    assert stored.nnz == 3 and Dataset(stored, labels).fingerprint() == base
    assert stored.nnz == 3  # the caller's matrix is left as it was
    dense_zero = np.array([[0.5, -0.0], [-0.0, -2.0]])
    assert Dataset(dense_zero, labels).fingerprint() == Dataset(dense, labels).fingerprint()


def test_fingerprints_are_compared_only_within_one_recipe() -> None:
    """The text before the last colon names the recipe: other data only where it is the same and
    the digests differ; a later version's recipe tells nothing either way."""
    from aiodq.protocol.dataset import other_data  # noqa: PLC0415

    one, two = "blake2b:" + "1" * 32, "blake2b:" + "2" * 32
    later = "blake3-v2:" + "1" * 64
    assert other_data(one, two) and other_data(two, one)
    assert not other_data(one, one)
    assert not other_data(one, later) and not other_data(later, one)
    assert other_data(later, "blake3-v2:" + "2" * 64)
    assert Dataset(np.eye(2), np.array([1, -1])).fingerprint().startswith("blake2b:")


def test_a_test_file_wider_or_narrower_than_the_training_file_is_fitted_to_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """F.t indexing features F never does (LIBSVM's a1a.t, say) is read with F's columns: the others are
    left out, with a warning that counts them (a newcomer's run refused to start: 'feature index 40
    exceeds n_features=30'); a narrower F.t gets F's width."""
    train = write(tmp_path, "f", "+1 1:1 3:2\n-1 2:1\n")
    write(tmp_path, "f.t", "+1 1:1 5:7\n-1 2:1 4:1 5:1\n+1 3:4\n")
    caplog.set_level(logging.WARNING, logger="aiodq.data")
    test = load_test_dataset(train, n_features=3)
    assert test is not None and test.features.shape == (3, 3)
    np.testing.assert_array_equal(test.features.toarray(), [[1, 0, 0], [0, 1, 0], [0, 0, 4]])
    assert (
        f"{tmp_path / 'f.t'}: features 4 to 5 appear only in the test set (in 2 of its 3 samples)"
        in caplog.text
    )
    write(tmp_path, "f.t", "+1 1:1\n")
    narrow = load_test_dataset(train, n_features=3)
    assert narrow is not None and narrow.features.shape == (1, 3)


def test_a_comma_separated_row_and_a_plain_csv_say_which_format_is_read(tmp_path: Path) -> None:
    """A newcomer's comma-separated LIBSVM line was quoted whole as the 'label' (kilobytes), and a CSV
    of 21 columns got only 'expected 785 columns': each message now says what the format is."""
    row = "0.5," + ",".join(f"{j}:0.{j}" for j in range(1, 200))
    path = write(tmp_path, "comma.svm", row + "\n")
    with pytest.raises(DataError) as info:
        load_svmlight(path)
    assert str(info.value) == (
        f"{path}:1: label '{row[:40]}...' is not a number (LIBSVM separates its fields by spaces)"
    )
    table = tmp_path / "plain.csv"
    table.write_text("1,0.5,0.25\n0,0.1,0.2\n")
    with pytest.raises(DataError) as info:
        load_mnist_csv(table)
    assert str(info.value) == (
        f"{table}: expected 785 columns (784 pixels + label), got 3: a CSV file is read as MNIST; other "
        "data goes in LIBSVM format"
    )


def test_an_mnist_folder_named_as_kaggle_s_copies_is_found(tmp_path: Path) -> None:
    """A data audit: train-images.idx3-ubyte (Kaggle's names) and .GZ were not found, and the messages sent
    the user in a circle (give the file, then: give the folder).  The same data loads under either name."""
    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "mnist-small"
    expected = load_dataset(str(fixture))
    renamed = tmp_path / "kaggle"
    renamed.mkdir()
    for path in fixture.iterdir():
        name = path.name.replace("-idx", ".idx")
        (renamed / (name[:-3] + ".GZ" if name.startswith("train") else name)).write_bytes(path.read_bytes())
    loaded = load_dataset(str(renamed))
    assert loaded.fingerprint() == expected.fingerprint()
    (renamed / "train-images-idx3-ubyte.gz").write_bytes(
        (fixture / "train-images-idx3-ubyte.gz").read_bytes()
    )
    with pytest.raises(DataError, match=r"both train-images-idx3-ubyte\.gz and train-images\.idx3-ubyte\.GZ"):
        load_dataset(str(renamed))


def test_comments_and_query_ids_keep_the_fast_reader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A data audit: one comment line sent a whole file to the line-by-line reader, at 14 times the file's
    size in memory (2.35 GB for 166 MB).  Comments and query ids are left out and the same lines read in
    numpy passes; what they give, and where an error is said, is as line by line."""
    text = (
        "# a header comment, with bytes beyond ASCII: caf\u00e9\r\n"
        "+1 qid:3 1:0.5 3:2 # an inline comment\r\n"
        "\r\n"
        "-1 qid:4 2:1.25\r\n"
        "# another\r\n"
        "+1 3:-1\r\n"
    )
    path = tmp_path / "commented.svm"
    path.write_bytes(text.encode("utf-8"))

    def not_line_by_line(raw: bytes, where: Any) -> Any:
        raise AssertionError("read line by line")

    with monkeypatch.context() as patched:
        patched.setattr("aiodq.data._parse_lines", not_line_by_line)
        data = load_svmlight(path)
    assert data.labels.tolist() == [1.0, -1.0, 1.0]
    assert data.features.toarray().tolist() == [[0.5, 0.0, 2.0], [0.0, 1.25, 0.0], [0.0, 0.0, -1.0]]
    path.write_bytes(text.replace("2:1.25", "2:1.25 2:3").encode("utf-8"))
    with pytest.raises(DataError, match=r"commented\.svm:4: sample 2 gives feature 2 twice$"):
        load_svmlight(path)


def test_running_out_of_memory_while_parsing_is_a_data_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data audit: a small gzip file of millions of rows, under a memory cap, raised a bare MemoryError from
    load_dataset (whose contract is DataError), and the command's line named no file."""
    path = write(tmp_path, "big.svm", "+1 1:1\n")

    def exhausted(raw: bytes) -> Any:
        raise MemoryError

    monkeypatch.setattr("aiodq.data.parse_libsvm", exhausted)
    with pytest.raises(DataError, match=r"big\.svm: out of memory reading it"):
        load_dataset(str(path))


@pytest.mark.parametrize(
    "line",
    [b"1 qid:\xc3\xa9 1:2\n", b"1 qid:\x01 1:2\n", b"1 qid:7\x1c 3:4 3:4\n"],
    ids=["beyond-ascii", "control", "control-then-twice"],
)
def test_a_query_id_with_bytes_no_line_may_hold_is_refused_as_line_by_line(
    tmp_path: Path, line: bytes
) -> None:
    """A review of the comments' fast path: its query-id pattern also took bytes beyond ASCII and control
    characters, which the line-by-line reader refuses anywhere outside a comment: a damaged file loaded."""
    path = write(tmp_path, "qid.svm", line)
    with pytest.raises(
        DataError, match=r"qid\.svm:1: (a byte beyond ASCII|the control character .*): not LIBSVM"
    ):
        load_svmlight(path)


def test_compressed_data_beyond_the_memory_available_is_refused_before_it_is_all_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data audit: a small gzip file decompressing to more than the machine holds was decompressed whole,
    and the kernel's OOM killer ended the master and its workers with no word. Every member of a gzip
    file and every stream of a bzip2 or xz file is still read."""
    import aiodq.data.compressed as compressed  # noqa: PLC0415

    monkeypatch.setattr(compressed, "_CHUNK", 1 << 20)
    read: list[int] = []
    open_ = gzip.open

    def counting(*args: Any, **kwargs: Any) -> Any:
        stream = open_(*args, **kwargs)
        inner = stream.read
        stream.read = lambda size=-1: read.append(size) or inner(size)  # type: ignore[method-assign]
        return stream

    monkeypatch.setattr(gzip, "open", counting)
    monkeypatch.setattr(
        "aiodq.data.available_memory", lambda: 10 << 20, raising=False
    )  # (not raising: the old code)
    bomb = write(tmp_path, "bomb.gz", gzip.compress(b"+1 1:1\n" * ((40 << 20) // 7)))  # 40 MiB of text
    assert bomb.stat().st_size < 1 << 20
    said = (
        r"bomb\.gz: its gzip data decompresses to more than the 0\.01 GB of memory available; is it the right"
    )
    with pytest.raises(DataError, match=said + r" file\?$"):
        load_dataset(bomb)
    assert len(read) == 11  # 10 MiB read, the 11th refused: not the whole 40
    # Within the memory: read whole, members and streams concatenated as the plain file.
    half = SMALL.encode().splitlines(keepends=True)
    for name, pack in (("f.gz", gzip.compress), ("f.bz2", bz2.compress), ("f.xz", lzma.compress)):
        got = load_svmlight(write(tmp_path, name, b"".join(pack(b"".join(half[i::2])) for i in (0, 1))))
        reordered = half[0::2] + half[1::2]
        expected = load_svmlight(write(tmp_path, "reordered", b"".join(reordered)))
        assert (
            got.labels.tolist() == expected.labels.tolist() and (got.features != expected.features).nnz == 0
        )
        assert got.samples == 3, name


def test_the_memory_available_is_the_kernels_estimate_or_unknown(tmp_path: Path) -> None:
    """MemAvailable in kB from /proc/meminfo's format; None where it is missing or unreadable."""
    from aiodq.data.compressed import available_memory  # noqa: PLC0415

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:   20480 kB\n")
    assert available_memory(meminfo) == 20480 * 1024
    meminfo.write_text("MemTotal:       24000000 kB\n")
    assert available_memory(meminfo) is None
    assert available_memory(tmp_path / "missing") is None
    if Path("/proc/meminfo").exists():
        assert (available_memory() or 0) > 0
    # A control group's limit less its usage, where that leaves less (a review: a pod's limit was not read).
    meminfo.write_text("MemAvailable:   20480 kB\n")
    cgroup, root = tmp_path / "cgroup", tmp_path / "sys"
    (root / "pod").mkdir(parents=True)
    (root / "pod" / "memory.max").write_text("10000000\n")
    (root / "pod" / "memory.current").write_text("9000000\n")
    cgroup.write_text("0::/pod\n")
    assert available_memory(meminfo, cgroup, root) == 1_000_000  # v2
    (root / "pod" / "memory.max").write_text("max\n")
    assert available_memory(meminfo, cgroup, root) == 20480 * 1024  # no limit
    (root / "memory" / "job").mkdir(parents=True)
    (root / "memory" / "job" / "memory.limit_in_bytes").write_text("5000000\n")
    (root / "memory" / "job" / "memory.usage_in_bytes").write_text("1000000\n")
    cgroup.write_text("4:memory:/job\n0::/pod\n")
    assert available_memory(meminfo, cgroup, root) == 4_000_000  # v1
    (root / "memory" / "job" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's none
    assert available_memory(meminfo, cgroup, root) == 20480 * 1024
