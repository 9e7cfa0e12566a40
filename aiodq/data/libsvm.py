r"""LIBSVM text read in numpy passes, not line by line: the fast path of :func:`aiodq.data.load_svmlight`.

:func:`parse` reads the usual shape of a LIBSVM file and returns None for anything else, which
``load_svmlight`` then reads line by line (and whose errors name the line).  What it reads:

- bytes: ASCII digits, ``.``, ``+``, ``-``, ``e``, ``E``, ``:``, space, tab, ``\n`` and ``\r``
  (so no comment, no ``qid``, no ``nan`` or ``inf``: :func:`without_comments` leaves the first two out);
- every non-blank line a label, then ``index:value`` pairs, with spaces or tabs between and the colon
  touching both sides;
- indices of digits only, at most 15;
- numbers (labels, values) of a sign, digits and at most one point, converted as the integer of their
  digits divided by ten to the number of digits after the point.  With at most 15 digits both are
  exact in float64, so the quotient is the correctly rounded value, as Python's ``float()`` gives.
  Numbers of another form (an exponent, more digits, as ``repr`` and ``%.16g`` write them) are cast
  from byte strings by numpy, all of a block at once, to the same correctly rounded values.

The result is the same, bit for bit, as the line-by-line reader's (tests/unit/test_libsvm.py checks
it on generated and damaged files); it takes less time: docs/benchmarks.md, "Reading LIBSVM files".
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["parse", "without_comments"]

Ints = npt.NDArray[np.int64]
Floats = npt.NDArray[np.float64]

_TOKEN, _SPACE, _BREAK, _COLON, _OTHER = 0, 1, 2, 3, 4

#: Each byte's class, as a table for ``bytes.translate``.
_CLASSES = bytearray([_OTHER]) * 256
for _byte in b"0123456789.+-eE":
    _CLASSES[_byte] = _TOKEN
for _byte in b" \t":
    _CLASSES[_byte] = _SPACE
for _byte in b"\n\r":
    _CLASSES[_byte] = _BREAK
_CLASSES[ord(":")] = _COLON
_CLASS = bytes(_CLASSES)

#: The most digits a number read here may have: below 2^53, every integer of them is a float64.
_DIGITS = 15
#: Bytes before the first line: every token's last 16 bytes can be read as two 64-bit words.
_LEAD = 16
#: The longest token that numpy's own parsing reads (as a fixed-width byte string); bytes after the
#: last line, so that the 32 bytes from each token's start can be read.
_WIDE = 32
#: Bytes of text per piece read at once (then up to the end of the line).
_PIECE = 1 << 18
#: Tokens per block of the conversion: its arrays stay in the cache.
_BLOCK = 1 << 15

_U64 = np.uint64
_ONES = 0x0101010101010101
_ZEROS = ord("0") * _ONES
#: Powers of ten, as integers and as floats (exact to 10^22; at most 10^16 is used).
_POWERS = 10 ** np.arange(18, dtype=np.uint64)
_TEN = _POWERS.astype(np.float64)
#: For p bytes of padding at the low end of a word: the mask that keeps the rest, and p ASCII zeros.
_KEEP = np.array([(2**64 - 1) ^ (2 ** (8 * p) - 1) for p in range(9)], dtype=np.uint64)
_PAD = np.array([_ZEROS & (2 ** (8 * p) - 1) for p in range(9)], dtype=np.uint64)


def parse(raw: bytes) -> tuple[Floats, Ints, Ints, Floats] | None:
    """``(labels, pairs per row, indices as written, values)`` of LIBSVM text, or None.

    None: ``raw`` is outside the form this module reads (its docstring); the caller reads it
    line by line instead, which accepts or reports it.  Blank lines are skipped, as there.
    The text is read in pieces of whole lines, about 256 kB each, so that the arrays of each
    piece stay in the cache.
    """
    pieces = []
    start = 0
    while start < len(raw):
        cut = raw.find(b"\n", start + _PIECE)
        end = len(raw) if cut < 0 else cut + 1
        piece = _parse_piece(raw[start:end])
        if piece is None:
            return None
        pieces.append(piece)
        start = end
    if not sum(piece[0].shape[0] for piece in pieces):
        return None  # no sample (or no text)
    labels, pairs, indices, values = (np.concatenate(part) for part in zip(*pieces, strict=True))
    return labels, pairs, indices, values


def _parse_piece(raw: bytes) -> tuple[Floats, Ints, Ints, Floats] | None:
    """:func:`parse` of whole lines of text (no sample: empty arrays)."""
    padded = b"\n" * _LEAD + raw + b"\n" * _WIDE  # every token has 16 bytes before its end, 32 after
    kind = np.frombuffer(padded.translate(_CLASS), dtype=np.uint8)
    top = int(np.maximum.reduce(kind))
    if top == _OTHER:
        return None
    # Where a run of number bytes starts or ends: alternately the start and the end of a token.
    in_token = kind == _TOKEN
    edges = np.flatnonzero(in_token[1:] != in_token[:-1]) + 1
    starts, ends = edges[0::2], edges[1::2]
    count = starts.shape[0]
    if not count:
        if top == _COLON:
            return None  # a colon and no number
        none = np.empty(0, dtype=np.int64)
        return none.astype(np.float64), none, none, none.astype(np.float64)
    # Colons: each touches the token before it (an index) and the one after it (its value).
    index = kind[ends] == _COLON
    value = kind[starts - 1] == _COLON
    if (
        int(np.count_nonzero(kind == _COLON)) != int(np.count_nonzero(index))
        or index[-1]
        or not np.array_equal(value[1:], index[:-1])
        or (index & value).any()
    ):
        return None  # a colon beside a space, or a token between two colons (1:2:3)
    # The other tokens are labels: exactly the first token of each line (so the first token is
    # not a value either).
    first = np.zeros(count, dtype=bool)
    first[0] = True
    after_break = np.searchsorted(starts, np.flatnonzero(kind == _BREAK))
    first[after_break[after_break < count]] = True
    label = ~(index | value)
    if not np.array_equal(first, label):
        return None
    labels_at, index_at = np.flatnonzero(label), np.flatnonzero(index)
    pairs = (np.diff(labels_at, append=count) - 1) // 2
    labels = _decimals(padded, starts[labels_at], ends[labels_at])
    values = _decimals(padded, starts[index_at + 1], ends[index_at + 1])
    indices = _decimals(padded, starts[index_at], ends[index_at], digits_only=True)
    if labels is None or values is None or indices is None:
        return None
    if not (np.isfinite(labels).all() and np.isfinite(values).all()):
        return None  # the line-by-line reader names what is not finite
    return labels, pairs.astype(np.int64), indices.astype(np.int64), values


def _decimals(text: bytes, starts: Ints, ends: Ints, *, digits_only: bool = False) -> Floats | None:
    """The numbers of ``text`` between ``starts`` and ``ends``; None if one is not a number.

    Each token's last 16 bytes are read as two little-endian 64-bit words (the first byte in the
    lowest), and eight digits per word are read at once (SWAR: shifts, masks and multiplications
    on whole words).  Bytes before the token and its sign become ``0`` and its point ``0`` too;
    then with ``F`` the 16 digits' integer and ``f`` digits after the point, the number's digits
    are ``(F // 10^(f+1)) 10^f + F % 10^f``.  A token of other bytes (an exponent, a second
    point) or longer goes to :func:`_strtod`.  ``digits_only``: every token must be at most 15 digits
    and nothing else (an index).  Needs ``_LEAD`` bytes before the first token.
    """
    data = np.frombuffer(text, dtype=np.uint8)
    words = np.ndarray(shape=(data.shape[0] - 7,), dtype="<u8", buffer=text, strides=(1,))
    count = starts.shape[0]
    out = np.empty(count, dtype=np.float64)
    left: list[Any] = []  # rows for _strtod, block by block
    for low in range(0, count, _BLOCK):
        high = min(low + _BLOCK, count)
        end = ends[low:high]
        first = data[starts[low:high]]
        signed = (first == ord("-")) | (first == ord("+"))
        body = end - starts[low:high] - signed  # bytes without the sign
        widest = int(np.maximum.reduce(body))
        if digits_only and (signed.any() or widest > _DIGITS):
            return None
        # The last 16 bytes as two words: the low one, and the high one if a token is longer.
        low_word = _padded(words[end - 8], np.clip(8 - body, 0, 8))
        high_word = _padded(words[end - 16], np.clip(16 - body, 0, 8)) if widest > 8 else None
        if digits_only:
            if not (_all_digits(low_word).all() and (high_word is None or _all_digits(high_word).all())):
                return None
            out[low:high] = _integer(low_word, high_word)
            continue
        point_low = _first_point(low_word)
        point_high = _first_point(high_word) if high_word is not None else np.full_like(point_low, 8)
        in_high = point_high < 8
        in_low = (point_low < 8) & ~in_high
        has_point = in_high | in_low
        low_word = _point_to_zero(low_word, point_low, in_low)
        plain = _all_digits(low_word) & (body - has_point >= 1) & (body - has_point <= _DIGITS)
        if high_word is not None:
            high_word = _point_to_zero(high_word, point_high, in_high)
            plain &= _all_digits(high_word)
        whole = _integer(low_word, high_word)
        after = np.where(in_high, 15 - point_high.astype(np.intp), 7 - point_low.astype(np.intp))
        fraction = np.where(has_point & plain, after, 0)
        mantissa = np.where(
            has_point, whole // _POWERS[fraction + 1] * _POWERS[fraction] + whole % _POWERS[fraction], whole
        )
        value = mantissa.astype(np.float64) / _TEN[fraction]
        np.negative(value, out=value, where=first == ord("-"))
        out[low:high] = value
        if not plain.all():
            left.append(np.flatnonzero(~plain) + low)
    for rows in left:
        values = _strtod(text, starts[rows], ends[rows])
        if values is None:
            return None
        out[rows] = values
    return out


def _strtod(text: bytes, starts: Ints, ends: Ints) -> Floats | None:
    """The numbers between ``starts`` and ``ends`` as numpy's parsing reads them; None if one is not.

    Tokens of up to 32 bytes become one array of 32-byte strings (the bytes past each token's end
    made NUL, which ends a numpy byte string), cast to float64 at once: the correctly rounded value,
    as ``float()`` gives (tests/unit/test_libsvm.py).  Longer tokens go through ``float()`` one by
    one.  The cast runs with numpy's floating-point errors ignored: it raises the overflow and
    underflow flags for numbers such as ``9e317`` or ``1e-400``, which the line-by-line reader
    reads without a warning (as infinity, which it then reports, or as zero).
    """
    widths = ends - starts
    values = np.empty(widths.shape[0], dtype=np.float64)
    short = np.flatnonzero(widths <= _WIDE)
    windows = np.ndarray(shape=(len(text) - _WIDE + 1,), dtype=f"V{_WIDE}", buffer=text, strides=(1,))
    chars = windows[starts[short]].view(np.uint8).reshape(-1, _WIDE)
    chars[np.arange(_WIDE) >= widths[short, None]] = 0
    try:
        with np.errstate(all="ignore"):
            values[short] = chars.view(f"S{_WIDE}").reshape(-1).astype(np.float64)
        for row in np.flatnonzero(widths > _WIDE).tolist():
            values[row] = float(text[starts[row] : ends[row]])
    except ValueError:
        return None
    return values


def _padded(words: npt.NDArray[np.uint64], pad: npt.NDArray[np.intp]) -> npt.NDArray[np.uint64]:
    """The words with their lowest ``pad`` bytes (before the token) made ASCII zeros."""
    return (words & _KEEP[pad]) | _PAD[pad]


def _integer(low: npt.NDArray[np.uint64], high: npt.NDArray[np.uint64] | None) -> npt.NDArray[np.uint64]:
    """The integer of 8 or 16 ASCII digits: the high word's first, then the low word's."""
    value = _eight_digits(low)
    return value if high is None else _eight_digits(high) * _U64(10**8) + value


def _first_point(words: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The byte of each word where its first ``.`` is (its lowest), or 8 if it has none.

    The zero-byte test ``(x - 0x01..) & ~x & 0x80..`` flags every zero byte of ``x`` and, above
    one, maybe others; the lowest flag is a true one.  Below it: ``(flag & -flag) - 1`` has 8 bits
    per byte under the flag, and 7 more.
    """
    x = words ^ _U64(ord(".") * _ONES)
    flags = (x - _U64(_ONES)) & ~x & _U64(0x80 * _ONES)
    below = np.bitwise_count((flags & (~flags + _U64(1))) - _U64(1))
    return below.astype(np.uint64) >> _U64(3)


def _point_to_zero(
    words: npt.NDArray[np.uint64], point: npt.NDArray[np.uint64], where: npt.NDArray[np.bool_]
) -> npt.NDArray[np.uint64]:
    """The words with the ``.`` at byte ``point`` made ``0`` (0x2E + 2), where ``where``."""
    return words + np.where(where, _U64(2) << (np.minimum(point, _U64(7)) << _U64(3)), _U64(0))


def _all_digits(words: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
    """True where all 8 bytes of the word are ASCII digits (0x30 to 0x39)."""
    high = _U64(0xF0 * _ONES)
    digits: npt.NDArray[np.bool_] = ((words & high) == _U64(_ZEROS)) & (
        ((words + _U64(6 * _ONES)) & high) == _U64(_ZEROS)
    )
    return digits


def _eight_digits(words: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The integer of 8 ASCII digits per word, the first in the lowest byte: pairs, fours, eights."""
    v = words - _U64(_ZEROS)
    v = (v * _U64(10) + (v >> _U64(8))) & _U64(0x00FF00FF00FF00FF)
    v = (v * _U64(100) + (v >> _U64(16))) & _U64(0x0000FFFF0000FFFF)
    return (v * _U64(10000) + (v >> _U64(32))) & _U64(0xFFFFFFFF)


#: A comment, to the end of its line; and svmlight's query id after a line's label.
_COMMENT = re.compile(rb"#[^\r\n]*")
_QID = re.compile(rb"(?:^|(?<=[\r\n]))([ \t]*[^\s#]+[ \t]+)qid:[!-\"$-~]*")  # (printable ASCII but '#')


def without_comments(raw: bytes) -> bytes | None:
    """``raw`` with every comment and query id left out, its lines kept (numbers and samples alike); or None.

    None if it holds neither.  A data audit: one comment line sent a whole file to the line-by-line
    reader, at 14 times the file's size in memory (2.35 GB for 166 MB) and 2.6 times the time.
    """
    if b"#" not in raw and b"qid:" not in raw:
        return None
    return _QID.sub(rb"\1", _COMMENT.sub(b"", raw))
