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
from aiodq.codec.payload import plan_vector
from aiodq.codec.registry import Encoding
from aiodq.codec.vectors import DenseQuantized, SparseQuantized
from aiodq.config import Limits
from aiodq.data import load_bundled_a9a
from aiodq.errors import ErrorCode
from aiodq.protocol.algorithms import TrainConfig
from aiodq.protocol.guard import Guard
from aiodq.protocol.simulate import simulate

_SPARSE = {Encoding.SPARSE_RICE, Encoding.SPARSE_BITMAP}


def _dense(dim: int, density: float, bits: int, seed: int) -> DenseQuantized:
    rng = np.random.default_rng(seed)
    top = (1 << (bits - 1)) - 1
    # Small magnitudes, as quantized gradients have: Rice coding beats fixed width on them.
    magnitudes = np.minimum(rng.geometric(0.5, dim), top)
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


@pytest.mark.parametrize("bits", [2, 4, 8, 12])
@pytest.mark.parametrize("density", [0.002, 0.03, 0.1, 0.3, 0.6, 1.0])
@pytest.mark.parametrize("aligned", [False, True])
def test_the_gradient_takes_the_shorter_form_and_keeps_its_values(
    bits: int, density: float, aligned: bool
) -> None:
    dim = 3001
    vector = _dense(dim, density, bits, seed=int(density * 1000) + bits)
    message = Gradient(epoch=1, version=2, vector=vector)
    dense = encode_message(message, dense_rice=True, aligned=aligned)
    sparse = encode_message(Gradient(epoch=1, version=2, vector=_by_hand(vector)), aligned=aligned)
    chosen = encode_message(message, dense_rice=True, aligned=aligned, sparse_gradient=True)
    assert chosen == (sparse if len(sparse) < len(dense) else dense)
    received = _decode(chosen, dim).vector
    assert np.array_equal(received.to_dense(np.float64), vector.to_dense(np.float64))
    assert isinstance(received, SparseQuantized) == (len(sparse) < len(dense))


def test_both_forms_occur_over_the_densities() -> None:
    """The parametrized test above is not vacuous: some densities go sparse, some stay dense."""
    kinds = set()
    for density in (0.002, 1.0):
        vector = _dense(3001, density, 4, seed=1)
        plan = vector_plan(Gradient(epoch=1, version=2, vector=vector), dense_rice=True, sparse_gradient=True)
        assert plan is not None
        kinds.add(plan.encoding)
    assert Encoding.DENSE_RICE in kinds and kinds & _SPARSE


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
    off = Guard(TrainConfig(bits=4, sparse_gradients=False), factor=0.0, workers=2, samples=None)
    assert on.refuse_gradient(vector, model_equals_snapshot=False) is None
    refusal = off.refuse_gradient(vector, model_equals_snapshot=False)
    assert refusal is not None and refusal.code is ErrorCode.INVALID_PAYLOAD
    assert "SparseQuantized (4)" in refusal.reason
    wider = Guard(TrainConfig(bits=6), factor=0.0, workers=2, samples=None)
    refusal = wider.refuse_gradient(vector, model_equals_snapshot=False)
    assert refusal is not None and "where asylpg sends SparseQuantized (6)" in refusal.reason


def test_a_run_with_sparse_gradients_trains_the_same_model_in_fewer_bytes() -> None:
    """Lossless: the same dithers give the same codes, so the same models; only the bytes differ."""
    runs = {}
    for sparse in (False, True):
        config = TrainConfig(
            algorithm="asylpg", bits=4, epochs=2, updates_per_epoch=150, sparse_gradients=sparse
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
    assert not before["errors"] and not after["errors"]
