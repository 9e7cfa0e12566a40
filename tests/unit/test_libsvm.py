"""The fast LIBSVM reader (aiodq.data.libsvm) against Python's own int() and float().

The expected numbers come from the tokens the test writes, converted by ``int`` and ``float``;
the reader under test must give them bit for bit, or decline (None) where the line-by-line
reader (``aiodq.data._parse_lines``) is the judge: a file the fast reader accepts is never one
the line-by-line reader rejects or reads differently.
"""

from __future__ import annotations

import struct
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiodq.data import _parse_lines, libsvm, load_svmlight
from aiodq.data.libsvm import parse
from aiodq.errors import DataError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

#: Feature indices as written: 1 to 2^31 - 2, sometimes with leading zeros (at most 13 digits).
INDICES = st.builds(
    lambda zeros, index: "0" * zeros + str(index), st.integers(0, 3), st.integers(1, 2**31 - 2)
)


SIGNS = st.sampled_from(["", "", "-", "+"])
SOME_DIGITS = st.text(alphabet="0123456789", max_size=12)
EXPONENTS = st.builds(
    lambda letter, sign, power: f"{letter}{sign}{power}",
    st.sampled_from(["e", "E"]),
    st.sampled_from(["", "-", "+"]),
    st.integers(0, 40),
)


def _decimal(sign: str, whole: str, point: bool, fraction: str, exponent: str | None) -> str:
    if not (whole or (point and fraction)):
        whole = "7"
    return sign + whole + ("." + fraction if point else "") + (exponent or "")


#: A number as LIBSVM files write it: sign, digits, point, exponent, in any of their forms.
DECIMALS = st.builds(_decimal, SIGNS, SOME_DIGITS, st.booleans(), SOME_DIGITS, st.none() | EXPONENTS)
#: Mostly the common forms (1, 0.25, -3.5), and the shortest repr of any finite float.
NUMBERS = st.one_of(
    st.sampled_from(["1", "0", "-1", "+1", "0.5", "1.", ".5", "-0", "-0.0", "12.25"]),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda v: f"{v:.{len(repr(v)) % 9}f}"),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    DECIMALS,
).filter(lambda token: np.isfinite(float(token)))
BREAKS = st.sampled_from(["\n", "\n", "\r\n", "\r", "\n\n", "\n \n"])
SPACES = st.sampled_from([" ", " ", "  ", "\t", " \t"])
LINES = st.tuples(
    st.sampled_from(["", " ", "\t"]),
    NUMBERS,
    st.lists(st.tuples(SPACES, INDICES, NUMBERS), max_size=6),
    st.sampled_from(["", " ", "\t "]),
    BREAKS,
)


@st.composite
def libsvm_files(draw: st.DrawFn) -> tuple[bytes, list[float], list[list[int]], list[list[float]]]:
    """A well-formed LIBSVM text and what it holds, as ``float`` and ``int`` read its tokens."""
    text, labels, indices, values = "", [], [], []
    for lead, label, pairs, trail, end in draw(st.lists(LINES, min_size=1, max_size=8)):
        text += (
            lead + label + "".join(f"{space}{index}:{value}" for space, index, value in pairs) + trail + end
        )
        labels.append(float(label))
        indices.append([int(index) for _, index, _ in pairs])
        values.append([float(value) for _, _, value in pairs])
    if draw(st.booleans()):
        text = text.rstrip("\r\n ")
    return text.encode(), labels, indices, values


def bits(values: np.ndarray) -> bytes:
    """The float64 values' bytes: equal means equal to the bit, -0.0 and 0.0 apart."""
    return np.asarray(values, dtype=np.float64).tobytes()


def expected_bits(values: list[float]) -> bytes:
    return struct.pack(f"<{len(values)}d", *values)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(libsvm_files())
def test_well_formed_text_is_read_exactly_as_int_and_float_read_it(
    case: tuple[bytes, list[float], list[list[int]], list[list[float]]],
) -> None:
    raw, labels, indices, values = case
    # Whole; in pieces of a line or a few; and numbers in blocks of 2 or 3 within a piece.
    for piece, block in ((libsvm._PIECE, libsvm._BLOCK), (1, 2), (9, 3)):
        with mock.patch.object(libsvm, "_PIECE", piece), mock.patch.object(libsvm, "_BLOCK", block):
            parsed = parse(raw)
        assert parsed is not None, raw
        got_labels, pairs, got_indices, got_values = parsed
        assert bits(got_labels) == expected_bits(labels)
        assert pairs.dtype == got_indices.dtype == np.int64
        assert pairs.tolist() == [len(row) for row in indices]
        assert got_indices.tolist() == [index for row in indices for index in row]
        assert bits(got_values) == expected_bits([value for row in values for value in row])


MUTATIONS = st.lists(
    st.tuples(st.integers(0, 10**6), st.sampled_from([*":.-+eE 0912\t\n\r#x_", "", "nan", "::", "1:"])),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(libsvm_files(), MUTATIONS, st.booleans())
def test_a_file_is_either_read_as_the_line_reader_reads_it_or_left_to_it(
    case: tuple[bytes, list[float], list[list[int]], list[list[float]]],
    edits: list[tuple[int, str]],
    delete: bool,
) -> None:
    """Damaged files: the fast reader declines, or agrees with the line-by-line reader bit for bit."""
    raw = bytearray(case[0])
    for position, insert in edits:
        at = position % (len(raw) + 1)
        if delete and raw:
            del raw[at % len(raw)]
        raw[at:at] = insert.encode()
    raw = bytes(raw)
    with mock.patch.object(libsvm, "_PIECE", 5), mock.patch.object(libsvm, "_BLOCK", 2):
        in_pieces = parse(raw)
    whole = parse(raw)
    try:
        slow = _parse_lines(raw, "mutated")
    except DataError:
        assert whole is None and in_pieces is None, raw
        return
    for fast in (whole, in_pieces):
        if fast is None:
            continue
        for got, expected in zip(fast, slow, strict=True):
            want = np.asarray(expected)
            assert got.dtype == want.dtype and got.shape == want.shape, raw
            assert got.tobytes() == want.tobytes(), raw


@pytest.mark.parametrize(
    ("token", "taken"),
    [
        ("123456789012345", True),  # 15 digits: exact through the integer of the digits
        ("0.12345678901234", True),  # 15 digits and a point: 16 bytes, both words
        ("-1234567.12345678", True),  # 15 digits, sign, point: 17 bytes
        ("1234567890123456", False),  # 16 digits: numpy's cast from bytes
        ("0.000000000000000001", False),  # more digits than the words hold
        ("0.30000000000000004", False),  # repr's 17 digits
        ("1" * 29 + ".5", False),  # 31 bytes: numpy's cast
        ("-" + "1" * 29 + ".5", False),  # 32 bytes
        ("1" * 31 + ".5", False),  # 33 bytes: float()
        ("-" + "1" * 31 + ".5", False),  # 34 bytes
        ("1." + "0" * 28 + "e+5", False),  # 33 bytes, whose first 32 are no number
        (f"{1.0:.29e}", False),  # 35 bytes, the same
        ("1" * 40 + ".5", False),
        ("1e-5", False),  # an exponent
        ("2.5E+3", False),
        ("1.", True),
        (".5", True),
        ("-0", True),
        ("+.5", True),
        ("00000012.50", True),
    ],
)
def test_numbers_on_both_sides_of_the_limits(token: str, taken: bool) -> None:
    """Every form gives float()'s value; the ``taken`` ones by the word arithmetic, others by numpy's cast."""
    with mock.patch.object(libsvm, "_strtod", wraps=libsvm._strtod) as strtod:
        parsed = parse(f"{token} 1:{token} 2:1\n".encode())
    assert strtod.called is not taken
    assert parsed is not None
    labels, _, indices, values = parsed
    assert bits(labels) == expected_bits([float(token)])
    assert bits(values) == expected_bits([float(token), 1.0])
    assert indices.tolist() == [1, 2]


@pytest.mark.parametrize(
    "index, fast",
    [("123456789012345", True), ("1234567890123456", False), ("007", True), ("99999999", True)],
)
def test_indices_of_up_to_15_digits_are_read_here(index: str, fast: bool) -> None:
    parsed = parse(f"1 {index}:1\n".encode())
    assert (parsed is not None) is fast
    if parsed is not None:
        assert parsed[2].tolist() == [int(index)]


@pytest.mark.parametrize(
    "text",
    [
        b"1 2:3 # comment\n",  # comments: the line reader's
        b"1 qid:3 2:1\n",
        b"1 2:nan\n",
        b"1 2:1e999\n",  # not finite: the line reader names it
        b"1 2: 3\n",
        b"1 2:",  # an index without its value, at the end of the text or of a line
        b"1 2:\n",
        b"1 2:\n-1 1:1\n",
        b"1 2 :3\n",
        b"1 2:3:4\n",
        b"1 2:3\n 4:5\n",  # an index first on its line
        b"1:2 3:4\n",  # no label
        b"1 2.0:3\n",
        b"1 -2:3\n",
        b"1 2:3\x0b\n",
        b"",
        b"\n\n",
        b"0\n:",  # a colon on a line of its own
        b"1 1:.\n",  # a point, a sign, and nothing else
        b"1 1:-\n",
        b"1 1:+\n",
        b"1 1:+.\n",
        b"1 1:-.\n",
        b". 1:1\n",
        b"- 1:1\n",
        b"+. 1:1\n",
        b"1 1:1\n:1\n",
    ],
)
def test_what_the_fast_reader_leaves_to_the_line_reader(text: bytes) -> None:
    assert parse(text) is None
    with mock.patch.object(libsvm, "_PIECE", 1):  # a line at a time
        assert parse(text) is None


@pytest.mark.parametrize("name", ["a9a-head-300", "a9a.t-head-300"])
def test_libsvm_files_take_the_fast_path_and_match_the_line_reader(name: str) -> None:
    raw = (FIXTURES / name).read_bytes()
    fast = parse(raw)
    assert fast is not None
    for got, want in zip(fast, _parse_lines(raw, name), strict=True):
        assert np.asarray(got).tobytes() == np.asarray(want).tobytes()
    dataset = load_svmlight(FIXTURES / name)
    assert dataset.features.shape[0] == 300


@pytest.mark.parametrize("text", [b"1 1:206797016e317\n", b"206797016e317 1:1\n", b"1 1:9e99999\n"])
def test_numbers_beyond_float64_are_left_to_the_line_reader_without_a_warning(text: bytes) -> None:
    """numpy's cast raises its overflow flag for these; here warnings are errors (pyproject.toml)."""
    with np.errstate(all="raise"):
        assert parse(text) is None


def test_numbers_below_the_smallest_float64_read_as_zero_as_float_reads_them() -> None:
    with np.errstate(all="raise"):
        parsed = parse(b"1e-400 1:1e-400 2:-1e-400\n")
    assert parsed is not None
    assert bits(parsed[0]) == expected_bits([float("1e-400")])
    assert bits(parsed[3]) == expected_bits([float("1e-400"), float("-1e-400")])
