"""Byte-aligned fixed-width codes (``TrainConfig.aligned_codes``, wire-format.md 5.5-5).

The expected bytes are written out by hand from wire-format.md 5.1 and 5.5-5.6: codes
LSB-first, ``width`` bits each, in two's complement.
"""

from __future__ import annotations

import numpy as np
import pytest

from aiodq.codec.cursor import Cursor
from aiodq.codec.packing import aligned_width
from aiodq.codec.payload import decode_vector, encode_vector, plan_vector
from aiodq.codec.registry import Encoding
from aiodq.codec.vectors import DenseQuantized, SparseQuantized, Vector
from aiodq.config import Limits
from aiodq.data import load_bundled_a9a
from aiodq.errors import ErrorCode
from aiodq.protocol.algorithms import TrainConfig
from aiodq.protocol.guard import Guard
from aiodq.protocol.simulate import simulate


def payload(vector: Vector, **options: bool) -> bytes:
    return b"".join(encode_vector(vector, plan_vector(vector, **options)))


def decoded(data: bytes) -> Vector:
    cursor = Cursor(data)
    vector = decode_vector(cursor, Limits()).vector
    assert cursor.remaining == 0
    return vector


def test_the_aligned_widths_are_the_byte_shares() -> None:
    assert [aligned_width(w) for w in range(1, 17)] == [1, 2, 4, 4] + [8] * 4 + [16] * 8
    for width in (0, 17):
        with pytest.raises(ValueError, match="between 1 and 16"):
            aligned_width(width)


@pytest.mark.parametrize(
    ("vector", "tight", "aligned"),
    [
        # 3-bit codes 1, -2, 3, -4, 0 in 4 bits: nibbles 1, e, 3, c, 0 -> e1 c3 00.
        (
            DenseQuantized(bits=3, scale=0.25, codes=np.array([1, -2, 3, -4, 0], dtype=np.int8)),
            "42 05 0000803e f1 08",
            "43 05 0000803e e1 c3 00",
        ),
        # 6-bit codes in 8: one byte each, -31 as 0xe1.
        (
            DenseQuantized(bits=6, scale=0.25, codes=np.array([1, -31, 5, 0, 7], dtype=np.int8)),
            "45 05 0000803e 41 58 00 07",
            "47 05 0000803e 01 e1 05 00 07",
        ),
        # wire-format.md A.8's sparse vector, its 3-bit codes 3, -1, -4 in 4 bits: f3 0c.
        (
            SparseQuantized(
                dim=12,
                bits=3,
                scale=0.5,
                indices=np.array([1, 5, 6]),
                codes=np.array([3, -1, -4], dtype=np.int8),
            ),
            "52 0c 03 0000003f 3b 01 62 00",
            "53 0c 03 0000003f f3 0c 62 00",
        ),
    ],
)
def test_aligned_codes_are_the_same_values_in_a_wider_container(
    vector: Vector, tight: str, aligned: str
) -> None:
    assert payload(vector).hex() == tight.replace(" ", "")
    assert payload(vector, aligned=True).hex() == aligned.replace(" ", "")
    wide = decoded(bytes.fromhex(aligned))
    assert type(wide) is type(vector) and wide.bits == aligned_width(vector.bits)  # type: ignore[attr-defined]
    assert np.array_equal(wide.to_dense(np.float64), vector.to_dense(np.float64))
    bits = vector.bits  # type: ignore[attr-defined]
    count = vector.dim if isinstance(vector, DenseQuantized) else vector.nnz  # type: ignore[attr-defined]
    gap = plan_vector(vector, aligned=True).payload_bits - plan_vector(vector).payload_bits
    assert gap == count * (aligned_width(bits) - bits)  # the analytic size counts the container


def test_rice_coding_where_smaller_keeps_the_codes_width() -> None:
    """DENSE_RICE carries b itself (5.8): aligning applies to the fixed-width fallback only."""
    codes = np.zeros(64, dtype=np.int8)
    codes[3] = 1
    vector = DenseQuantized(bits=6, scale=0.25, codes=codes)
    plan = plan_vector(vector, dense_rice=True, aligned=True)
    # k = 0: 64 unary code words, z = 2 for the code 1: 66 bits in 9 bytes, plus k: 10 < 48 bytes.
    assert plan.encoding is Encoding.DENSE_RICE and plan.k == 0
    data = payload(vector, dense_rice=True, aligned=True)
    assert data[0] == 0x85  # DENSE_RICE (8), bits - 1 = 5
    assert decoded(data).bits == 6  # type: ignore[attr-defined]


def test_a_plan_whose_container_is_too_narrow_is_refused() -> None:
    vector = DenseQuantized(bits=6, scale=0.25, codes=np.array([1, -31], dtype=np.int8))
    plan = plan_vector(vector)
    narrow = type(plan)(plan.encoding, 0, plan.payload_bits, width=4)
    with pytest.raises(ValueError, match="6-bit codes do not fit a 4-bit container"):
        encode_vector(vector, narrow)


def test_the_guard_takes_the_aligned_container_only_from_an_aligned_run() -> None:
    codes = np.array([1, -31, 5], dtype=np.int8)
    six, eight = (DenseQuantized(bits=b, scale=0.25, codes=codes) for b in (6, 8))
    aligned = Guard(TrainConfig(bits=6, aligned_codes=True), factor=0.0, workers=2, samples=None)
    plain = Guard(TrainConfig(bits=6), factor=0.0, workers=2, samples=None)
    assert aligned.refuse_gradient(eight, model_equals_snapshot=False) is None
    assert aligned.refuse_gradient(six, model_equals_snapshot=False) is None  # Rice-coded: b itself
    refusal = plain.refuse_gradient(eight, model_equals_snapshot=False)
    assert refusal is not None and refusal.code is ErrorCode.INVALID_PAYLOAD
    assert "DenseQuantized (8)" in refusal.reason
    four = DenseQuantized(bits=4, scale=0.25, codes=np.array([1, -7, 5], dtype=np.int8))
    assert aligned.refuse_gradient(four, model_equals_snapshot=False) is not None


@pytest.mark.parametrize(("low", "high", "refused"), [(-32, 31, False), (-33, 31, True), (-32, 32, True)])
def test_an_aligned_container_holds_only_codes_of_the_runs_width(low: int, high: int, refused: bool) -> None:
    """A 6-bit run's codes lie in -32..31 (6-bit two's complement); an 8-bit container could carry
    -128..127, which no honest worker of the run sends."""
    codes = np.array([3, low, -1, high], dtype=np.int8)
    dense = DenseQuantized(bits=8, scale=0.25, codes=codes)
    sparse = SparseQuantized(dim=9, bits=8, scale=0.25, indices=np.array([0, 2, 5, 8]), codes=codes)
    for algorithm, vector in (("asylpg", dense), ("sparse-asylpg", sparse)):
        guard = Guard(
            TrainConfig(algorithm=algorithm, bits=6, aligned_codes=True), factor=0.0, workers=2, samples=None
        )
        refusal = guard.refuse_gradient(vector, model_equals_snapshot=False)
        if refused:
            assert refusal is not None and refusal.code is ErrorCode.INVALID_PAYLOAD
            assert refusal.reason == "codes outside the 6-bit range in a 8-bit container"
        else:
            assert refusal is None


def test_an_aligned_run_trains_the_same_model_in_more_bytes() -> None:
    """The coding is lossless: the same trace; every 6-bit DENSE gradient costs 123 * 8 + 32 bits
    instead of 123 * 6 + 32, and the models (b_x of 3 to 7 bits here) cost more too."""
    runs = {}
    for aligned in (False, True):
        config = TrainConfig(
            algorithm="asylpg",
            bits=6,
            epochs=2,
            updates_per_epoch=150,
            entropy_coding=False,
            aligned_codes=aligned,
        )
        runs[aligned] = simulate(config, load_bundled_a9a(), 2).summary()
    tight, wide = runs[False], runs[True]
    assert [r["loss"] for r in tight["trace"]] == [r["loss"] for r in wide["trace"]]
    up_tight = tight["traffic"]["payload_bits"]["up"]["GRADIENT"]
    up_wide = wide["traffic"]["payload_bits"]["up"]["GRADIENT"]
    assert up_tight % 770 == 0 and up_wide % 1016 == 0
    assert up_wide // 1016 == up_tight // 770 > 200  # the same DENSE gradients
    assert (
        wide["traffic"]["payload_bits"]["down"]["MODEL"] > tight["traffic"]["payload_bits"]["down"]["MODEL"]
    )
    assert not wide["errors"] and not tight["errors"]
