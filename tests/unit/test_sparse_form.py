"""A dense gradient's sparse form (TrainConfig.sparse_gradients, docs/algorithms.md 10).

With Rice coding on, a worker sends the nonzero codes of a dense quantized gradient as a sparse
vector of the same width and scale (SPARSE_RICE or SPARSE_BITMAP) when that takes fewer bytes
than the dense encoding it would otherwise send.  The values are the same; the expected choices
below come from encoding both forms outright and comparing their lengths.
"""

from __future__ import annotations

import numpy as np
import pytest

from aiodq.codec.events import Gradient, ModelMessage
from aiodq.codec.frames import FrameReader
from aiodq.codec.messages import DecodeContext, decode_message, encode_message, vector_plan
from aiodq.codec.payload import (
    _rice_block_k0_smaller,
    _sparse_form_head,
    _sparse_form_plan,
    encode_vector,
    plan_vector,
    sparse_form_bits,
)
from aiodq.codec.registry import Encoding
from aiodq.codec.vectors import DenseQuantized, SparseQuantized
from aiodq.config import Limits
from aiodq.data import load_bundled_a9a
from aiodq.errors import ErrorCode
from aiodq.protocol.algorithms import TrainConfig
from aiodq.protocol.guard import Guard
from aiodq.protocol.simulate import simulate

_SPARSE = {Encoding.SPARSE_RICE, Encoding.SPARSE_BITMAP}


def _dense(dim: int, density: float, bits: int, seed: int, *, spread: bool = False) -> DenseQuantized:
    rng = np.random.default_rng(seed)
    top = (1 << (bits - 1)) - 1
    # Small magnitudes, as quantized gradients have: Rice coding beats fixed width on them.  With
    # ``spread``, magnitudes uniform over the range: the dense choice is then DENSE.
    magnitudes = rng.integers(1, top + 1, dim) if spread else np.minimum(rng.geometric(0.5, dim), top)
    codes = np.where(rng.random(dim) < 0.5, -magnitudes, magnitudes) * (rng.random(dim) < density)
    codes[int(rng.integers(dim))] = top  # never the zero vector
    return DenseQuantized(bits=bits, scale=0.125, codes=codes.astype(np.int8 if bits <= 8 else np.int16))


def _by_hand(vector: DenseQuantized) -> SparseQuantized:
    indices = [i for i, code in enumerate(vector.codes.tolist()) if code]
    codes = vector.codes[indices]
    return SparseQuantized(
        dim=vector.dim, bits=vector.bits, scale=vector.scale, indices=np.array(indices), codes=codes
    )


def _decode(frame: bytes, dim: int) -> Gradient:
    reader = FrameReader(Limits())
    reader.feed(frame)
    body = reader.next_frame()
    assert body is not None
    event = decode_message(body, DecodeContext(dim=dim))
    assert isinstance(event, Gradient)
    return event


_GRID = [
    (bits, density, aligned, spread)
    for bits in (2, 4, 6, 8, 12)
    for density in (0.002, 0.03, 0.1, 0.3, 0.6, 0.8, 1.0)
    for aligned in (False, True)
    for spread in (False, True)
]


def _grid_vector(bits: int, density: float, spread: bool) -> DenseQuantized:
    return _dense(3001, density, bits, seed=int(density * 1000) + bits, spread=spread)


@pytest.mark.parametrize(("bits", "density", "aligned", "spread"), _GRID)
def test_the_gradient_takes_the_shorter_form_and_keeps_its_values(
    bits: int, density: float, aligned: bool, spread: bool
) -> None:
    dim = 3001
    vector = _grid_vector(bits, density, spread)
    message = Gradient(epoch=1, version=2, vector=vector)
    dense = encode_message(message, dense_rice=True, aligned=aligned)
    sparse = encode_message(Gradient(epoch=1, version=2, vector=_by_hand(vector)), aligned=aligned)
    chosen = encode_message(message, dense_rice=True, aligned=aligned, sparse_gradient=True)
    assert chosen == (sparse if len(sparse) < len(dense) else dense)
    received = _decode(chosen, dim).vector
    assert np.array_equal(received.to_dense(np.float64), vector.to_dense(np.float64))
    assert isinstance(received, SparseQuantized) == (len(sparse) < len(dense))


def test_the_grid_reaches_every_outcome() -> None:
    """The grid above is not vacuous: DENSE_RICE and DENSE kept, and the sparse form in both index
    encodings, chosen over DENSE_RICE and over DENSE."""
    outcomes = set()
    for bits, density, aligned, spread in _GRID:
        vector = _grid_vector(bits, density, spread)
        gradient = Gradient(epoch=1, version=2, vector=vector)
        dense = vector_plan(gradient, dense_rice=True, aligned=aligned)
        chosen = vector_plan(gradient, dense_rice=True, aligned=aligned, sparse_gradient=True)
        assert dense is not None and chosen is not None
        outcomes.add((dense.encoding, chosen.encoding))
    assert {
        (Encoding.DENSE_RICE, Encoding.DENSE_RICE),
        (Encoding.DENSE, Encoding.DENSE),
        (Encoding.DENSE_RICE, Encoding.SPARSE_RICE),
        (Encoding.DENSE, Encoding.SPARSE_BITMAP),
    } <= outcomes
    assert {chosen for _, chosen in outcomes} >= _SPARSE


def test_small_vectors_take_the_shorter_form_at_every_size() -> None:
    """Small vectors of every density, width and length: the choice is the outright encodings' comparison.

    Small vectors put the sizes next to each other, so this reaches the bound below which the
    sparse form is taken without the Rice search (a k byte and a unary bit per coordinate: no
    DENSE_RICE block is smaller), and sparse forms of exactly that size (the tie with a dense
    block at the bound: the next test).
    """
    for seed in range(1500):
        rng = np.random.default_rng(seed)
        bits = int(rng.choice([2, 3, 4, 6, 8]))
        vector = _dense(int(rng.integers(8, 200)), float(rng.uniform(0.0, 0.3)), bits, seed)
        message = Gradient(epoch=1, version=2, vector=vector)
        dense = encode_message(message, dense_rice=True)
        sparse = encode_message(Gradient(epoch=1, version=2, vector=_by_hand(vector)))
        chosen = encode_message(message, dense_rice=True, sparse_gradient=True)
        assert chosen == (sparse if len(sparse) < len(dense) else dense), seed


def test_a_tie_at_the_bound_stays_dense() -> None:
    """The sparse form, the DENSE_RICE block and the bound all take 4 bytes: the gradient goes dense.

    d = 17, b = 2, one code -1 (zigzagged 1) at index 3.  The bound is 1 + ceil(17 / 8) = 4 bytes.
    DENSE_RICE, k = 0: the k byte and 1 + 17 unary bits, 3 bytes; 4 in all (b-bit codes take 5).
    The sparse form: the nnz varint (1 byte), one 2-bit code (1 byte) and a SPARSE_RICE index
    block with k = 0 for the gap 3 (the k byte and 4 unary bits, 2 bytes); 4 in all.
    """
    codes = np.zeros(17, dtype=np.int8)
    codes[3] = -1
    vector = DenseQuantized(bits=2, scale=0.5, codes=codes)
    message = Gradient(epoch=1, version=2, vector=vector)
    dense = encode_message(message, dense_rice=True)
    sparse = encode_message(Gradient(epoch=1, version=2, vector=_by_hand(vector)))
    assert len(dense) == len(sparse)
    assert encode_message(message, dense_rice=True, sparse_gradient=True) == dense
    plan = plan_vector(vector, dense_rice=True, sparse_form=True)
    assert plan.encoding is Encoding.DENSE_RICE and plan.replacement is None


def test_a_tie_stays_dense() -> None:
    """Among small vectors, find one whose two forms take the same bytes: it goes dense."""
    for seed in range(2000):
        rng = np.random.default_rng(seed)
        vector = _dense(int(rng.integers(8, 64)), float(rng.uniform(0.05, 0.6)), 4, seed)
        message = Gradient(epoch=1, version=2, vector=vector)
        dense = encode_message(message, dense_rice=True)
        sparse = encode_message(Gradient(epoch=1, version=2, vector=_by_hand(vector)))
        if len(dense) == len(sparse):
            assert encode_message(message, dense_rice=True, sparse_gradient=True) == dense
            return
    pytest.fail("no tie among 2,000 small vectors")


def test_the_sparse_form_counts_the_dense_payload_bits_and_belongs_to_its_vector() -> None:
    vector = _dense(3001, 0.01, 4, seed=4)
    plan = plan_vector(vector, dense_rice=True, sparse_form=True)
    assert plan.replacement is not None and plan.encoding is Encoding.SPARSE_RICE
    assert plan.payload_bits == 3001 * 4 + 32  # d b + 32, as for DENSE_RICE (algorithms.md 10)
    other = DenseQuantized(bits=4, scale=0.25, codes=vector.codes)
    with pytest.raises(ValueError, match="belongs to another vector"):
        encode_vector(other, plan)


def test_byte_aligned_sparse_forms_count_the_bits_of_the_dense_encoding_they_beat() -> None:
    """algorithms.md 10: the sparse form's analytic bits are the dense choice's, with byte-aligned codes too.

    That is d b + 32 where a DENSE_RICE block is smaller than the b-bit codes, else d w + 32 for
    DENSE in its w-bit container: the plan without the sparse form makes that choice by its full
    search.  Sparse forms below every DENSE_RICE block are taken before that search (there, DENSE
    is never the dense choice: a review's exhaustive search, so the witness is checked on its own
    below); 3- and 6-bit codes sit in wider containers (4 and 8 bits), and large codes at small d
    reach DENSE as the dense choice after the search.  The encoding and the bytes are those of the
    plan made without the shortcut's caller, byte for byte.
    """
    seen = set()
    for seed in range(3000):
        rng = np.random.default_rng(seed)
        bits = int(rng.choice([3, 4, 6, 7]))
        dim = int(rng.choice([rng.integers(5, 40), rng.integers(40, 4000)]))
        top = 1 << (bits - 1)
        codes = np.zeros(dim, dtype=np.int8)
        nonzero = rng.random(dim) < float(rng.choice([0.002, 0.01, 0.05, 0.3]))
        large = rng.random(dim) < 0.5
        codes[nonzero] = np.where(large, rng.choice([-top, top - 1], dim), rng.choice([-1, 1], dim))[nonzero]
        codes[int(rng.integers(dim))] = top - 1  # never the zero vector
        vector = DenseQuantized(bits=bits, scale=0.5, codes=codes)
        chosen = plan_vector(vector, dense_rice=True, aligned=True, sparse_form=True)
        dense = plan_vector(vector, dense_rice=True, aligned=True)
        assert chosen.payload_bits == dense.payload_bits, seed
        if chosen.replacement is not None:
            by_hand = _by_hand(vector)
            outright = plan_vector(by_hand, aligned=True)
            assert b"".join(encode_vector(vector, chosen)) == b"".join(encode_vector(by_hand, outright)), seed
            # What a receiver counts for the form it decodes: what this sender counted.
            message = encode_message(
                Gradient(epoch=1, version=2, vector=vector),
                dense_rice=True,
                aligned=True,
                sparse_gradient=True,
            )
            reader = FrameReader(Limits())
            reader.feed(message)
            frame = reader.next_frame()
            assert frame is not None
            received = decode_message(frame, DecodeContext(dim=dim)).vector
            assert isinstance(received, SparseQuantized), seed
            assert sparse_form_bits(received, bits, aligned=True) == chosen.payload_bits, seed
        if chosen.replacement is not None and bits in (3, 6):
            seen.add(dense.encoding)
    assert seen == {Encoding.DENSE_RICE, Encoding.DENSE}


@pytest.mark.parametrize(("count", "expected"), [(1, True), (2, True), (3, False), (16, False)])
def test_the_k0_block_witness_against_the_codes(count: int, expected: bool) -> None:
    """d = 16, b = 3: the b-bit codes take 6 bytes; ``count`` codes -4 (zigzagged 7) give S_0 = 7 count.

    The k = 0 block takes 1 + ceil((7 count + 16) / 8) bytes: 4 for one code, 5 for two, 6 (not smaller)
    for three.
    """
    codes = np.zeros(16, dtype=np.int8)
    codes[:count] = -4
    vector = DenseQuantized(bits=3, scale=0.5, codes=codes)
    plan, _ = _sparse_form_plan(vector, _sparse_form_head(vector, True), True)
    assert _rice_block_k0_smaller(vector, plan) is expected


def test_no_sparse_form_without_rice_coding_or_for_a_model() -> None:
    vector = _dense(3001, 0.01, 4, seed=2)
    plain = vector_plan(Gradient(epoch=1, version=2, vector=vector), sparse_gradient=True)
    assert plain is not None and plain.encoding is Encoding.DENSE
    model = ModelMessage(epoch=1, version=2, vector=vector, relative=True)
    planned = vector_plan(model, dense_rice=True, sparse_gradient=True)
    assert planned is not None and planned.encoding is Encoding.DENSE_RICE and planned.replacement is None
    assert plan_vector(vector, dense_rice=True).replacement is None  # sparse_form is off by default


def test_the_guard_takes_the_sparse_form_of_the_runs_width_only_when_the_run_sends_it() -> None:
    vector = _by_hand(_dense(123, 0.05, 4, seed=3))
    on = Guard(TrainConfig(bits=4), factor=0.0, workers=2, samples=None)
    assert on.refuse_gradient(vector, model_equals_snapshot=False) is None
    for off in (TrainConfig(bits=4, sparse_gradients=False), TrainConfig(bits=4, entropy_coding=False)):
        refusal = Guard(off, factor=0.0, workers=2, samples=None).refuse_gradient(
            vector, model_equals_snapshot=False
        )
        assert refusal is not None and refusal.code is ErrorCode.INVALID_PAYLOAD
        assert "SparseQuantized (4)" in refusal.reason
    # A 6-bit run with aligned codes: the sparse form's codes may come in the 8-bit container, in range.
    aligned = Guard(TrainConfig(bits=6, aligned_codes=True), factor=0.0, workers=2, samples=None)
    in_range = SparseQuantized(dim=9, bits=8, scale=0.25, indices=np.array([1, 4]), codes=np.array([-32, 31]))
    beyond = SparseQuantized(dim=9, bits=8, scale=0.25, indices=np.array([1, 4]), codes=np.array([-33, 31]))
    assert aligned.refuse_gradient(in_range, model_equals_snapshot=False) is None
    assert aligned.refuse_gradient(beyond, model_equals_snapshot=False) is not None
    wider = Guard(TrainConfig(bits=6), factor=0.0, workers=2, samples=None)
    refusal = wider.refuse_gradient(vector, model_equals_snapshot=False)
    assert refusal is not None and "where asylpg sends SparseQuantized (6)" in refusal.reason


@pytest.mark.parametrize(("bits", "aligned"), [(4, False), (7, True)])  # (7: in 8-bit containers)
def test_a_run_with_sparse_gradients_trains_the_same_model_in_fewer_bytes(bits: int, aligned: bool) -> None:
    """Lossless: the same dithers give the same codes, so the same models; only the bytes differ.

    The analytic bits are the same too: the master counts a gradient's sparse form as the dense
    vector it stands for, as the worker does (a CLI audit: the master counted it at its sparse
    size, and `aiodq run`'s "fixed-width codes vs float32" fell from 0.1842 to 0.1468)."""
    runs = {}
    for sparse in (False, True):
        config = TrainConfig(
            algorithm="asylpg",
            bits=bits,
            epochs=2,
            updates_per_epoch=150,
            sparse_gradients=sparse,
            aligned_codes=aligned,
        )
        runs[sparse] = simulate(config, load_bundled_a9a(), 2)
    dense, sparse_run = runs[False], runs[True]
    assert np.array_equal(dense.state.x, sparse_run.state.x)
    before, after = dense.summary(), sparse_run.summary()
    assert [r["loss"] for r in before["trace"]] == [r["loss"] for r in after["trace"]]
    up_before = before["traffic"]["wire_bytes"]["up"]["GRADIENT"]
    up_after = after["traffic"]["wire_bytes"]["up"]["GRADIENT"]
    assert up_after < up_before
    assert before["traffic"]["wire_bytes"]["down"] == after["traffic"]["wire_bytes"]["down"]
    assert before["traffic"]["payload_bits"] == after["traffic"]["payload_bits"]
    assert not before["errors"] and not after["errors"]


@pytest.mark.parametrize("bad", [-1, 1, 17, 4.0, True])
def test_sparse_form_bits_is_a_code_width_or_none(bad: object) -> None:
    """ConnectionConfig.sparse_form_bits: 0, or the run's b (2 to 16; a numpy integer too)."""
    from aiodq.config import ConnectionConfig  # noqa: PLC0415

    assert ConnectionConfig(sparse_form_bits=16).sparse_form_bits == 16
    assert ConnectionConfig(sparse_form_bits=np.int64(4)).sparse_form_bits == 4  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"sparse_form_bits must be 0 or a run's code width b, 2 to 16, got"):
        ConnectionConfig(sparse_form_bits=bad)  # type: ignore[arg-type]


def test_a_received_sparse_gradient_is_counted_as_its_dense_vector_unless_it_cannot_be_one() -> None:
    """Decoded.counted_bits, by hand: the form's width says how its sender packed it (b, or w > b)."""
    from aiodq.codec.messages import Decoded  # noqa: PLC0415

    def counted(vector: SparseQuantized, b: int) -> int:
        return Decoded(Gradient(epoch=1, version=1, vector=vector), payload_bits=77).counted_bits(b)

    vector = SparseQuantized(dim=300, bits=8, scale=0.5, indices=np.array([3, 9]), codes=np.array([1, -2]))
    assert counted(vector, 0) == 77  # a Sparse-AsyLPG run's own sparse gradients
    assert counted(vector, 8) == 300 * 8 + 32  # b-bit codes: DENSE and DENSE_RICE both count d b + 32
    # 5- and 7-bit codes in their 8-bit container: the k = 0 block, 1 + ceil((2 + 3 + 300) / 8) = 40 bytes,
    # is smaller than 300 codes of 5 or 7 bits (188, 263 bytes): the sender counted d b + 32.
    assert counted(vector, 5) == 300 * 5 + 32 and counted(vector, 7) == 300 * 7 + 32
    assert counted(vector, 4) == 77  # 8-bit codes are not a 4-bit run's (whose container is 4 bits)
    wide = SparseQuantized(dim=300, bits=8, scale=0.5, indices=np.array([3, 9]), codes=np.array([1, 100]))
    assert counted(wide, 5) == 77  # 100 is no 5-bit code
    # d = 5, five codes 63 (zigzagged 126) in 7 bits: 5 bytes; the best Rice block, k = 6, takes
    # 1 + ceil(30 / 8) + ceil((5 + 5) / 8) = 7: DENSE was the dense choice, d w + 32 = 5 * 8 + 32.
    full = SparseQuantized(dim=5, bits=8, scale=0.5, indices=np.arange(5), codes=np.full(5, 63))
    assert counted(full, 7) == 72
    model = Decoded(ModelMessage(epoch=1, version=1, vector=vector), payload_bits=77)
    assert model.counted_bits(8) == 77  # MODELs never take the form


@pytest.mark.parametrize(
    "options",
    [
        {"algorithm": "asylpg", "bits": 4},
        {"algorithm": "asylpg", "bits": 7, "aligned_codes": True},
        {"algorithm": "acc-asylpg", "bits": 5, "aligned_codes": True},
        {"algorithm": "asylpg", "bits": 4, "adaptive_coding": True},
        {"algorithm": "asylpg", "bits": 4, "entropy_coding": False},
        {"algorithm": "sparse-asylpg", "bits": 4},
        {"algorithm": "sparse-asylpg", "bits": 5, "aligned_codes": True},
        {"algorithm": "qsvrg"},
    ],
)
def test_the_master_counts_the_bits_each_worker_counted(options: dict[str, object]) -> None:
    """Every vector message's analytic bits, as the workers counted them sending and the master receiving
    (a review: a rule that took every sparse gradient for a form counted Sparse-AsyLPG's 6x too high)."""
    from aiodq.protocol.simulate import build_cluster, deliver  # noqa: PLC0415

    config = TrainConfig(epochs=2, updates_per_epoch=100, **options)  # type: ignore[arg-type]
    coordinator, sessions = build_cluster(config, load_bundled_a9a(), 3)
    deliver(coordinator, sessions)
    received = coordinator.traffic().payload_bits
    for kind in ("GRADIENT", "SNAPSHOT_GRADIENT"):
        sent = sum(session.connection.payload_bits_sent.get(kind, 0) for session in sessions)
        assert sent == received[("up", kind)] > 0, kind


@pytest.mark.parametrize("algorithm", ["asyfpg", "acc-asyfpg", "model-only"])
def test_a_zero_gradient_of_a_float32_run_is_judged_whatever_its_unused_bits(algorithm: str) -> None:
    """A review: bits (which float32 runs never read, and now warn of) decided whether an AsyFPG master took
    a ZERO gradient for a model other than the snapshot: with bits = 2 it did. Only dense codes of 2
    bits may round a nonzero alpha to zero."""
    from aiodq.codec.vectors import ZeroVector  # noqa: PLC0415

    for bits in (2, 8):
        config = TrainConfig.from_params({"algorithm": algorithm, "bits": bits, "l2": 1e-4})  # (no warning)
        refusal = Guard(config, factor=0.0, workers=2, samples=None).refuse_gradient(
            ZeroVector(4), model_equals_snapshot=False
        )
        assert refusal is not None and refusal.code == ErrorCode.INVALID_PAYLOAD, (bits, refusal)
    dense = TrainConfig.from_params({"algorithm": "asylpg", "bits": 2, "l2": 1e-4})
    assert (
        Guard(dense, factor=0.0, workers=2, samples=None).refuse_gradient(
            ZeroVector(4), model_equals_snapshot=False
        )
        is None
    )
