"""Unit tests of aiodq.protocol.algorithms: TrainConfig, MasterState, WorkerState (algorithms.md 5-10).

The update rules are checked against the formulas of algorithms.md computed by
hand on tiny vectors; no sockets, no clocks.
"""

from __future__ import annotations

import copy
import math
import os
import re
import socket
import warnings
from dataclasses import fields, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse as sp

import aiodq.protocol.algorithms as algorithms
from aiodq import UnusedOptionWarning
from aiodq.codec.payload import plan_vector
from aiodq.codec.vectors import (
    DenseQuantized,
    EqualsSnapshot,
    QSGDVector,
    RawVector,
    SparseQuantized,
    ZeroVector,
)
from aiodq.errors import NonFiniteError
from aiodq.net.worker import run_worker
from aiodq.protocol.algorithms import (
    ALGORITHMS,
    MasterState,
    TrainConfig,
    WorkerState,
    rebuild_model,
)
from aiodq.protocol.objectives import LogisticRegression, Regularizer
from aiodq.protocol.session import WorkerSession
from aiodq.protocol.start import starting_point

# -- TrainConfig -----------------------------------------------------------------------------------

BAD_CONFIGS: list[tuple[dict[str, Any], str]] = [
    ({"algorithm": "sgd"}, "algorithm"),
    ({"epochs": 0}, "epochs"),
    ({"epochs": -3}, "epochs"),
    ({"epochs": 2.0}, "epochs"),
    ({"batch": 0}, "batch"),
    ({"qsgd_levels": 0}, "qsgd_levels"),
    ({"qsgd_levels": 65_536}, "qsgd_levels"),
    ({"hidden": 0}, "hidden"),
    ({"updates_per_epoch": -1}, "updates_per_epoch"),
    ({"updates_per_epoch": 1.5}, "updates_per_epoch"),
    ({"bits": 1}, "bits"),
    ({"bits": 17}, "bits"),
    ({"bits": 8.5}, "bits"),
    ({"model_bits_cap": 1}, "model_bits_cap"),
    ({"model_bits_cap": 17}, "model_bits_cap"),
    ({"model_bits_cap": 7.5}, "model_bits_cap"),
    ({"step": -0.1}, "step"),
    ({"step": math.nan}, "step"),
    ({"step": math.inf}, "step"),
    ({"mu": 0.0}, "mu"),
    ({"mu": -1.0}, "mu"),
    ({"mu": math.nan}, "mu"),
    ({"mu": math.inf}, "mu"),
    ({"phi": 0.0}, "phi"),
    ({"phi": 1.5}, "phi"),
    ({"phi": math.nan}, "phi"),
    ({"tau": -1}, "tau"),
    ({"tau": 1.5}, "tau"),
    ({"centre": "middle"}, "centre"),
    ({"acc_snapshot": "first"}, "acc_snapshot"),
    ({"model": "  "}, "model"),
    ({"l2": -1e-4}, "l2"),
    ({"l1": math.nan}, "l1"),
    ({"l1": math.inf}, "l1"),
    # Of the wrong type (an API audit: entropy_coding="no" turned Rice coding on, epochs=True ran one
    # epoch's CONFIG that every worker refused, step="0.1" named no field).
    ({"entropy_coding": "no"}, "entropy_coding must be True or False, got 'no'"),
    ({"sparse_gradients": 0}, "sparse_gradients must be True or False, got 0"),
    ({"bias": None}, "bias must be True or False, got None"),
    ({"epochs": True}, "epochs must be an integer, got True"),
    ({"seed": "1"}, "seed must be an integer, got '1'"),
    ({"step": "0.1"}, "step must be a number, got '0.1'"),
    ({"mu": "x"}, "mu must be a number, got 'x'"),
    ({"l2": False}, "l2 must be a number, got False"),
    ({"phi": 10**400}, "phi is too large"),
    ({"model": 3}, "model must be a text, got 3"),
]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    BAD_CONFIGS,
    ids=[f"{next(iter(k))}={next(iter(k.values()))!r}" for k, _ in BAD_CONFIGS],
)
def test_config_rejects_bad_values(kwargs: dict[str, Any], field: str) -> None:
    """Every out-of-range or non-integral hyperparameter raises ValueError naming the field."""
    with pytest.raises(ValueError, match=field):
        TrainConfig(**kwargs)


def test_config_takes_numpys_numbers_as_pythons() -> None:
    """An API audit: epochs=np.int64(5) was refused; numpy's numbers are taken, and stored as Python's
    (CONFIG's params carry them, and a float field given an int is a float)."""
    config = TrainConfig(epochs=np.int64(5), step=np.float32(0.5), mu=1, entropy_coding=np.bool_(False))
    assert (config.epochs, config.step, config.mu, config.entropy_coding) == (5, 0.5, 1.0, False)
    assert [type(v) for v in (config.epochs, config.step, config.mu, config.entropy_coding)] == [
        int,
        float,
        float,
        bool,
    ]
    assert TrainConfig.from_params(config.to_params()) == config


def test_batch_is_bounded_by_max_batch() -> None:
    """B up to 2**20 is accepted (above a shard's size too: rows are drawn with replacement); one more
    is refused, by the master's options and by a worker reading CONFIG (from_params)."""
    assert TrainConfig(batch=2**20).batch == 2**20
    with pytest.raises(ValueError, match=r"batch must be at most 1,048,576 \(2\*\*20\), got 1,048,577"):
        TrainConfig(batch=2**20 + 1)
    with pytest.raises(ValueError, match="batch must be at most"):
        TrainConfig.from_params({**TrainConfig().to_params(), "batch": 2**40})


@pytest.mark.parametrize("name", ["epochs", "tau", "updates_per_epoch", "hidden"])
def test_integers_that_travel_in_config_are_at_most_int64(name: str) -> None:
    """2**63 - 1 is taken; 2**63 is refused before the run starts (a newcomer's --epochs 2**64 was an
    INTERNAL_ERROR in the handshake, after the workers had retried for 28 s), and in a CONFIG read."""
    model = {"model": "mlp"} if name == "hidden" else {}  # (hidden with logistic: warned of)
    assert getattr(TrainConfig(**{name: 2**63 - 1}, **model), name) == 2**63 - 1
    with pytest.raises(
        ValueError, match=rf"^{name} must be at most 2\*\*63 - 1, got 9,223,372,036,854,775,808$"
    ):
        TrainConfig(**{name: 2**63})
    with pytest.raises(ValueError, match=f"{name} must be at most"):
        TrainConfig.from_params({**TrainConfig().to_params(), name: 2**64})


def test_config_defaults_valid() -> None:
    """The defaults are valid, and every algorithm name builds a config."""
    config = TrainConfig()
    assert config.algorithm == "asylpg"
    for name in ALGORITHMS:
        assert TrainConfig(algorithm=name).spec is ALGORITHMS[name]


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_config_step_zero_resolves_to_default(name: str) -> None:
    """step = 0 picks the algorithm's default step (0.2 for Sparse-AsyLPG, else 0.5)."""
    config = TrainConfig(algorithm=name, step=0.0)
    assert config.step == ALGORITHMS[name].default_step
    assert config.step == (0.2 if name == "sparse-asylpg" else 0.5)
    assert TrainConfig(algorithm=name, step=0.03).step == 0.03


def test_config_regularizer() -> None:
    """The regulariser carries the configured l2 and l1."""
    assert TrainConfig(l2=0.01, l1=0.002).regularizer == Regularizer(l2=0.01, l1=0.002)


def test_an_option_the_run_does_not_use_is_warned_of() -> None:
    """phi with asylpg trained without a word while the command line refuses --phi (a trial).

    Each row is an option away from its default under an algorithm or model that reads it nowhere
    (docs/algorithms.md 6, 7, 8; the MLP always has biases)."""
    cases = [
        (dict(algorithm="asylpg", phi=0.1), "phi=0.1 is for algorithm sparse-asylpg, not 'asylpg'"),
        (dict(algorithm="asyfpg", exact_budget=True), "exact_budget=True is for algorithm sparse-asylpg"),
        (dict(algorithm="sparse-asylpg", qsgd_levels=7), "qsgd_levels=7 is for algorithm qsvrg"),
        (dict(algorithm="qsvrg", acc_snapshot="last"), "acc_snapshot='last' is for algorithm acc-asylpg"),
        (dict(model="mlp", bias=True), "bias=True is for model logistic or softmax, not 'mlp'"),
        (dict(model="softmax", hidden=20), "hidden=20 is for model mlp, not 'softmax'"),
    ]
    for options, text in cases:
        with pytest.warns(UnusedOptionWarning, match=re.escape(text) + ".*: it has no effect") as caught:
            config = TrainConfig(**options)
        assert [w.filename for w in caught] == [__file__]  # points at the caller's line
        assert len(config.unused_options()) == 1
        # So does replace(), through dataclasses (a review: the warning named dataclasses.py).
        with pytest.warns(UnusedOptionWarning, match=re.escape(text)) as caught:
            replace(config, seed=1)
        assert [w.filename for w in caught] == [__file__]
        # A rebuild of what a master sent (a worker's CONFIG) or a checkpoint holds says nothing: its
        # options were judged where it was made, and a worker's operator could do nothing about them.
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert TrainConfig.from_params(config.to_params()) == config
    with warnings.catch_warnings():  # (a float32 phi in CONFIG, 7-10: not the default 0.05 exactly)
        warnings.simplefilter("error")
        TrainConfig.from_params({"algorithm": "asylpg", "phi": float(np.float32(0.05))})
    # A rebuild that fails leaves construction warning as before.
    with pytest.raises(ValueError, match="bits"):
        TrainConfig.from_params({"algorithm": "asylpg", "phi": 0.1, "bits": 99})
    with pytest.warns(UnusedOptionWarning, match="phi=0.1"):
        TrainConfig(phi=0.1)
    # Where each applies, and at the defaults, nothing is said.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for config in (
            TrainConfig(algorithm="sparse-asylpg", phi=0.1, exact_budget=True),
            TrainConfig(algorithm="qsvrg", qsgd_levels=7),
            TrainConfig(algorithm="acc-asyfpg", acc_snapshot="last"),
            TrainConfig(model="softmax", bias=True),
            TrainConfig(model="mlp", hidden=20),
            *(TrainConfig(algorithm=name) for name in ALGORITHMS),
        ):
            assert config.unused_options() == []


@pytest.mark.filterwarnings("ignore::aiodq.UnusedOptionWarning")  # (changed_config sets every field)
def test_config_params_round_trip(changed_config: TrainConfig) -> None:
    """from_params(to_params()) rebuilds the same config, for every field changed."""
    for config in (changed_config, replace(changed_config, adaptive_coding=False, entropy_coding=False)):
        params = config.to_params()
        assert set(params) == {f.name for f in fields(TrainConfig)}
        for value in params.values():
            assert isinstance(value, bool | int | float | str)
        assert TrainConfig.from_params(params) == config
    assert TrainConfig.from_params(TrainConfig().to_params()) == TrainConfig()


def test_config_from_params_ignores_unknown_keys() -> None:
    """Unknown CONFIG keys are ignored (forward compatibility)."""
    params = {**TrainConfig(epochs=2).to_params(), "future_option": [1, 2], "colour": "blue"}
    assert TrainConfig.from_params(params) == TrainConfig(epochs=2)


def test_config_from_params_int_for_float() -> None:
    """An integer where a float is expected is accepted and converted."""
    config = TrainConfig.from_params({"step": 1, "mu": 2, "l2": 0})
    assert config.step == 1.0
    assert isinstance(config.step, float)
    assert config.mu == 2.0
    assert config.l2 == 0.0


def test_config_from_params_missing_keys_default() -> None:
    """Keys not given take their defaults; step 0 resolves to the algorithm's default."""
    assert TrainConfig.from_params({}) == TrainConfig()
    assert TrainConfig.from_params({"algorithm": "sparse-asylpg", "step": 0.0}).step == 0.2


@pytest.mark.parametrize(
    "params",
    [
        {"epochs": "10"},
        {"epochs": 10.0},
        {"epochs": True},
        {"step": True},
        {"step": "0.5"},
        {"exact_budget": 1},
        {"algorithm": 3},
        {"tau": None},
        {"mu": [0.5]},
    ],
    ids=lambda p: f"{next(iter(p))}={next(iter(p.values()))!r}",
)
def test_config_from_params_rejects_wrong_types(params: dict[str, Any]) -> None:
    """A CONFIG value of the wrong type (bools are not numbers here) is a ValueError."""
    with pytest.raises(ValueError, match="wrong type"):
        TrainConfig.from_params(params)


def test_config_from_params_rejects_bad_values() -> None:
    """A CONFIG value of the right type but out of range is a ValueError."""
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig.from_params({"epochs": 0})


# -- rebuild_model ---------------------------------------------------------------------------------

SNAP = np.array([1.0, -2.0, 0.5])


def test_rebuild_equals_snapshot() -> None:
    """EQUALS_SNAPSHOT rebuilds to a copy of the worker's snapshot."""
    out = rebuild_model(EqualsSnapshot(3), relative=False, snapshot=SNAP)
    np.testing.assert_array_equal(out, SNAP)
    assert out is not SNAP
    out[0] = 99.0
    assert SNAP[0] == 1.0


def test_rebuild_relative_and_absolute() -> None:
    """A relative vector is added to x_snap; an absolute one is the model itself."""
    vector = DenseQuantized(4, 0.25, np.array([1, -2, 0], dtype=np.int8))
    np.testing.assert_array_equal(rebuild_model(vector, True, SNAP), SNAP + np.array([0.25, -0.5, 0.0]))
    np.testing.assert_array_equal(rebuild_model(vector, False, SNAP), [0.25, -0.5, 0.0])
    raw = RawVector(np.array([3.0, 4.0, 5.0], dtype=np.float32))
    np.testing.assert_array_equal(rebuild_model(raw, False, SNAP), [3.0, 4.0, 5.0])
    np.testing.assert_array_equal(rebuild_model(ZeroVector(3), True, SNAP), SNAP)
    np.testing.assert_array_equal(rebuild_model(ZeroVector(3), False, SNAP), np.zeros(3))


# -- MasterState: snapshot phase -------------------------------------------------------------------


def master(x0: npt.ArrayLike = (0.0, 0.0, 0.0), **kwargs: Any) -> MasterState:
    """A master on a tiny model."""
    return MasterState(TrainConfig(**kwargs), np.asarray(x0, dtype=np.float64))


def test_finish_snapshot_phase_forms_full_gradient_and_loss() -> None:
    """g_snap = sum / n + l2 x_snap and F(x_snap) = loss / n + R(x_snap)."""
    state = master([1.0, -2.0, 3.0], l2=0.1, l1=0.01, batch=4)
    gradient_sum = np.array([10.0, 0.0, -5.0])
    loss = state.finish_snapshot_phase(gradient_sum, 7.0, 10)
    np.testing.assert_allclose(state.full_gradient, [1.0 + 0.1, -0.2, -0.5 + 0.3], rtol=1e-15)
    expected = 0.7 + 0.05 * 14.0 + 0.01 * 6.0
    assert loss == pytest.approx(expected, rel=1e-15)
    assert state.samples == 10
    np.testing.assert_array_equal(state.x, state.snapshot)


def test_updates_per_epoch_defaults_to_one_pass() -> None:
    """With updates_per_epoch = 0, m becomes ceil(n / batch) at the first snapshot phase."""
    state = master(batch=64)
    state.finish_snapshot_phase(np.zeros(3), 1.0, 32_561)
    assert state.updates_per_epoch == math.ceil(32_561 / 64) == 509
    small = master(batch=64)
    small.finish_snapshot_phase(np.zeros(3), 1.0, 10)
    assert small.updates_per_epoch == 1


def test_updates_per_epoch_fixed_by_first_phase_or_config() -> None:
    """A configured m is kept; a derived m is not recomputed by later phases."""
    state = master(batch=10, updates_per_epoch=3)
    state.finish_snapshot_phase(np.zeros(3), 1.0, 1000)
    assert state.updates_per_epoch == 3
    derived = master(batch=10)
    derived.finish_snapshot_phase(np.zeros(3), 1.0, 100)
    derived.finish_snapshot_phase(np.zeros(3), 1.0, 50)
    assert derived.updates_per_epoch == 10


def test_snapshot_phase_needs_samples() -> None:
    """A snapshot phase over zero samples is a ValueError."""
    with pytest.raises(ValueError, match="sample"):
        master().finish_snapshot_phase(np.zeros(3), 0.0, 0)


# -- MasterState: apply ----------------------------------------------------------------------------


class NonFiniteVector:
    """A stand-in vector whose dense form is not finite (the wire decoder refuses such bytes)."""

    def __init__(self, values: npt.ArrayLike) -> None:
        self.values = np.asarray(values, dtype=np.float64)

    def to_dense(self, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
        """The values."""
        return self.values.astype(dtype)


def started(x0: npt.ArrayLike = (0.5, -0.5, 1.0), **kwargs: Any) -> MasterState:
    """A master after a snapshot phase with g_snap = (0.2, -0.4, 0) / 1 sample."""
    kwargs.setdefault("l2", 0.0)
    state = master(x0, **kwargs)
    state.finish_snapshot_phase(np.array([0.2, -0.4, 0.0]), 1.0, 1)
    return state


def test_apply_drops_gradient_staler_than_tau() -> None:
    """A gradient with t - D > tau is not applied (reason "stale"); x and t stay as they were."""
    state = started(tau=2, updates_per_epoch=100)
    for version in range(3):
        assert state.apply(ZeroVector(3), version).applied
    assert state.version == 3
    before = state.x.copy()
    outcome = state.apply(DenseQuantized(8, 0.5, np.array([1, 1, 1], dtype=np.int8)), 0)
    assert outcome == algorithms.ApplyOutcome(False, 3, "stale")
    np.testing.assert_array_equal(state.x, before)
    assert state.version == 3
    assert state.applied_in_epoch == 3


def test_apply_accepts_staleness_equal_to_tau() -> None:
    """A gradient with t - D = tau is applied and reports its staleness."""
    state = started(tau=2, updates_per_epoch=100)
    for version in range(3):
        state.apply(ZeroVector(3), version)
    outcome = state.apply(ZeroVector(3), 1)
    assert outcome == algorithms.ApplyOutcome(True, 2, "")
    assert state.version == 4


def test_apply_tau_zero_only_fresh() -> None:
    """With tau = 0 only gradients on the current version are applied."""
    state = started(tau=0, updates_per_epoch=100)
    assert state.apply(ZeroVector(3), 0).applied
    assert not state.apply(ZeroVector(3), 0).applied
    assert state.apply(ZeroVector(3), 1).staleness == 0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", ["asylpg", "acc-asylpg", "qsvrg"])
def test_apply_rejects_non_finite_without_touching_state(name: str, bad: float) -> None:
    """A non-finite gradient is refused (reason "overflow"); x, y, t and the epoch count stay."""
    state = started(algorithm=name, updates_per_epoch=100)
    state.apply(DenseQuantized(8, 0.5, np.array([1, 0, -1], dtype=np.int8)), 0)
    x, y, version, applied = state.x.copy(), state.y.copy(), state.version, state.applied_in_epoch
    outcome = state.apply(NonFiniteVector([0.0, bad, 1.0]), version)  # type: ignore[arg-type]
    assert outcome == algorithms.ApplyOutcome(False, 0, "overflow")
    np.testing.assert_array_equal(state.x, x)
    np.testing.assert_array_equal(state.y, y)
    assert (state.version, state.applied_in_epoch) == (version, applied)
    assert np.isfinite(state.x).all()


def test_plain_update_by_hand() -> None:
    """AsyLPG: x_{t+1} = prox_{eta R}(x_t - eta (Q(alpha) + g_snap)), soft thresholding for l1."""
    state = started(step=0.5, l1=0.2, updates_per_epoch=10)
    g_snap = np.array([0.2, -0.4, 0.0])
    q = DenseQuantized(4, 0.25, np.array([2, -1, 4], dtype=np.int8))  # (0.5, -0.25, 1.0)
    x = state.x.copy()
    state.apply(q, 0)
    z = x - 0.5 * (np.array([0.5, -0.25, 1.0]) + g_snap)
    expected = np.sign(z) * np.maximum(np.abs(z) - 0.5 * 0.2, 0.0)
    np.testing.assert_allclose(state.x, expected, rtol=1e-15, atol=1e-15)
    # By hand: z = (0.15, -0.175, 0.5); thresholding at 0.1 gives (0.05, -0.075, 0.4).
    np.testing.assert_allclose(state.x, [0.05, -0.075, 0.4], rtol=1e-12)
    assert state.version == 1
    assert state.applied_in_epoch == 1


def test_plain_update_with_l2_gradient_term() -> None:
    """The l2 term enters through g_snap (l2 x_snap), the l1 term only through the prox."""
    state = master([1.0, 2.0], l2=0.5, step=0.1)
    state.finish_snapshot_phase(np.zeros(2), 0.0, 1)
    state.apply(ZeroVector(2), 0)
    np.testing.assert_allclose(state.x, [1.0 - 0.1 * 0.5, 2.0 - 0.1 * 1.0], rtol=1e-15)


def test_qsvrg_update_does_not_add_full_gradient() -> None:
    """QSVRG's worker already sends alpha + g_snap, so the master applies x - eta Q(v) only."""
    state = started(algorithm="qsvrg", step=0.5)
    x = state.x.copy()
    vector = QSGDVector(4, 2.0, np.array([4, -2, 0]))  # (2, -1, 0)
    state.apply(vector, 0)
    np.testing.assert_allclose(state.x, x - 0.5 * np.array([2.0, -1.0, 0.0]), rtol=1e-15)


def test_epoch_done_and_end_epoch_plain() -> None:
    """After m applied updates the epoch is done; the next snapshot is the current x, in float32."""
    state = started(updates_per_epoch=2, step=0.5)
    assert not state.epoch_done
    state.apply(DenseQuantized(4, 0.25, np.array([1, 1, 1], dtype=np.int8)), 0)
    assert not state.epoch_done
    state.apply(ZeroVector(3), 1)
    assert state.epoch_done
    x = state.x.copy()
    state.end_epoch()
    assert state.epoch == 1
    # The snapshot phase sends x_snap as float32; the master holds exactly what workers get.
    np.testing.assert_array_equal(state.snapshot, x.astype(np.float32).astype(np.float64))
    assert not np.array_equal(state.snapshot, x)  # 0.175 is not a float32
    state.finish_snapshot_phase(np.zeros(3), 0.0, 1)
    assert state.applied_in_epoch == 0
    assert not state.epoch_done


def next_theta(theta: float) -> float:
    """algorithms.md 7: theta_{s+1} = (sqrt(theta^4 + 4 theta^2) - theta^2) / 2."""
    return (math.sqrt(theta**4 + 4 * theta**2) - theta**2) / 2


def test_theta_recursion() -> None:
    """Acc-AsyLPG: theta_1 = 1 and theta_{s+1} = (sqrt(theta^4 + 4 theta^2) - theta^2) / 2."""
    state = started(algorithm="acc-asylpg", updates_per_epoch=1)
    assert state.theta == 1.0
    expected = 1.0
    for _ in range(5):
        state.apply(ZeroVector(3), state.version)
        state.end_epoch()
        expected = next_theta(expected)
        assert state.theta == pytest.approx(expected, rel=1e-15)
        state.finish_snapshot_phase(np.zeros(3), 0.0, 1)
    assert next_theta(1.0) == pytest.approx((math.sqrt(5) - 1) / 2)
    # theta decreases and stays in (0, 1]: 1/theta_{s+1}^2 - 1/theta_{s+1} = 1/theta_s^2.
    assert 0 < state.theta < 1


def test_plain_algorithms_keep_theta_one() -> None:
    """Non-accelerated algorithms leave theta at 1."""
    state = started(updates_per_epoch=1)
    state.apply(ZeroVector(3), 0)
    state.end_epoch()
    assert state.theta == 1.0


def test_accelerated_update_and_averaged_snapshot_by_hand() -> None:
    """Acc-AsyLPG: y = prox_{(eta/theta) R}(y - (eta/theta) u), x = x_snap + theta (y - x_snap)."""
    eta, l1 = 0.5, 0.1
    state = master([0.5, -0.5, 1.0], algorithm="acc-asylpg", step=eta, l1=l1, l2=0.0, updates_per_epoch=2)
    g_snap = np.array([0.2, -0.4, 0.0])
    state.finish_snapshot_phase(g_snap, 0.0, 1)

    def prox(v: np.ndarray, step: float) -> np.ndarray:
        return np.sign(v) * np.maximum(np.abs(v) - step * l1, 0.0)

    snap = np.array([0.5, -0.5, 1.0])
    y = snap.copy()
    theta = 1.0
    q1 = np.array([0.5, -0.25, 1.0])
    q2 = np.array([-0.25, 0.0, 0.5])
    iterates = []
    for version, q in enumerate((q1, q2)):
        state.apply(DenseQuantized(4, 0.25, (q / 0.25).astype(np.int8)), version)
        y = prox(y - (eta / theta) * (q + g_snap), eta / theta)
        x = snap + theta * (y - snap)
        iterates.append(x)
        np.testing.assert_allclose(state.y, y, rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(state.x, x, rtol=1e-14, atol=1e-15)
    assert state.epoch_done
    state.end_epoch()
    # The average of the inner iterates, rounded to float32 as the snapshot phase sends it.
    snap = ((iterates[0] + iterates[1]) / 2).astype(np.float32).astype(np.float64)
    np.testing.assert_array_equal(state.snapshot, snap)
    theta = next_theta(1.0)
    assert state.theta == pytest.approx(theta, rel=1e-15)

    # Second epoch: the served model is x_snap + theta (y - x_snap), y carried across epochs.
    state.finish_snapshot_phase(g_snap, 0.0, 1)
    np.testing.assert_allclose(state.x, snap + theta * (y - snap), rtol=1e-14, atol=1e-15)
    state.apply(DenseQuantized(4, 0.25, (q1 / 0.25).astype(np.int8)), state.version)
    y = prox(y - (eta / theta) * (q1 + g_snap), eta / theta)
    np.testing.assert_allclose(state.y, y, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(state.x, snap + theta * (y - snap), rtol=1e-14, atol=1e-15)


def test_accelerated_last_iterate_snapshot() -> None:
    """With acc_snapshot = "last" the next snapshot is the last served model x (in float32)."""
    state = started(algorithm="acc-asylpg", acc_snapshot="last", updates_per_epoch=2, step=0.5)
    state.apply(DenseQuantized(4, 0.25, np.array([1, 2, 3], dtype=np.int8)), 0)
    state.apply(DenseQuantized(4, 0.25, np.array([-3, 0, 1], dtype=np.int8)), 1)
    x = state.x.copy()
    state.end_epoch()
    np.testing.assert_array_equal(state.snapshot, x.astype(np.float32).astype(np.float64))


# -- MasterState: model messages -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["asyfpg", "acc-asyfpg", "qsvrg"])
def test_full_precision_model_message(name: str) -> None:
    """AsyFPG, Acc-AsyFPG and QSVRG send x itself as a float32 RawVector (not relative)."""
    state = started(algorithm=name)
    state.apply(DenseQuantized(4, 0.25, np.array([1, 2, 3], dtype=np.int8)), 0)
    vector, relative = state.model_message()
    assert isinstance(vector, RawVector)
    assert vector.values.dtype == np.float32
    assert relative is False
    np.testing.assert_array_equal(vector.values, state.x.astype(np.float32))


@pytest.mark.parametrize("name", ["asylpg", "sparse-asylpg", "acc-asylpg", "model-only"])
def test_quantized_model_message_equals_snapshot_at_epoch_start(name: str) -> None:
    """At the start of a plain epoch x = x_snap, sent as EQUALS_SNAPSHOT with no payload."""
    state = started(algorithm=name)
    vector, relative = state.model_message()
    assert isinstance(vector, EqualsSnapshot)
    assert plan_vector(vector).payload_bits == 0
    assert relative is False


def test_asylpg_model_message_is_mu_quantized() -> None:
    """AsyLPG sends Q(x - x_snap) relative to x_snap; its mean squared error is within mu ||x - x_snap||^2."""
    rng = np.random.default_rng(1)
    d = 50
    state = MasterState(TrainConfig(mu=0.5, l2=0.0, updates_per_epoch=100), rng.normal(size=d))
    state.finish_snapshot_phase(np.zeros(d), 0.0, 1)
    codes = rng.integers(-100, 101, size=d).astype(np.int8)
    state.apply(DenseQuantized(8, float(np.float32(0.01)), codes), 0)
    v = state.x - state.snapshot
    errors = []
    for _ in range(200):
        vector, relative = state.model_message()
        assert isinstance(vector, DenseQuantized)
        assert relative is True
        assert vector.bits <= 16
        rebuilt = rebuild_model(vector, relative, state.snapshot)
        assert np.all(np.abs(rebuilt - state.x) <= vector.scale * (1 + 1e-9))
        errors.append(float(np.sum((rebuilt - state.x) ** 2)))
    # The bound holds in expectation; 200 draws of a sum over 50 coordinates average well inside 1.2x.
    assert np.mean(errors) <= 1.2 * 0.5 * float(v @ v)


def test_zero_centred_model_message_is_absolute() -> None:
    """With centre = "zero" the model quantizer encodes x itself (relative False)."""
    state = started(centre="zero", updates_per_epoch=10)
    state.apply(DenseQuantized(4, 0.25, np.array([1, 2, 3], dtype=np.int8)), 0)
    vector, relative = state.model_message()
    assert relative is False
    assert isinstance(vector, DenseQuantized | RawVector)
    rebuilt = rebuild_model(vector, relative, state.snapshot)
    assert np.all(np.abs(rebuilt - state.x) <= np.abs(state.x - state.snapshot).sum())


# -- WorkerState -----------------------------------------------------------------------------------

D = 40


class TwoCalls:
    """An objective with the protocol's four members only (no grad_difference): a worker's step
    takes ``loss_grad`` at x_hat and at x_snap."""

    def __init__(self, inner: LogisticRegression) -> None:
        self.inner, self.dim, self.samples = inner, inner.dim, inner.samples

    def initial(self, rng: np.random.Generator) -> npt.NDArray[np.float64]:
        return self.inner.initial(rng)

    def loss_grad(self, x: npt.NDArray[np.float64], rows: Any = None) -> tuple[float, Any]:
        return self.inner.loss_grad(x, rows)


def worker(name: str, rows: int = 30, *, two_calls: bool = False, **kwargs: Any) -> WorkerState:
    """A worker with a random CSR shard of ``rows`` samples for logistic regression (behind
    :class:`TwoCalls` with ``two_calls``)."""
    rng = np.random.default_rng(5)
    features = sp.random(rows, D, density=0.3, format="csr", random_state=rng)
    labels = rng.choice([-1.0, 1.0], size=rows)
    config = TrainConfig(algorithm=name, batch=8, **kwargs)
    objective = LogisticRegression(features, labels)
    return WorkerState(config, TwoCalls(objective) if two_calls else objective, worker_id=1)


def test_worker_snapshot_phase_returns_shard_sums() -> None:
    """The snapshot phase stores x_snap and returns the model's sums over the whole shard."""
    state = worker("asylpg")
    x_snap = np.linspace(-1, 1, D)
    loss, gradient, correct = state.snapshot_phase(x_snap)
    objective = state.objective
    assert isinstance(objective, LogisticRegression)
    # Directly: sums of log(1 + exp(-y a.x)) and of its gradient; correct counts y a.x > 0.
    margins = objective.labels * (objective.features @ x_snap)
    assert loss == pytest.approx(float(np.sum(np.log1p(np.exp(-margins)))), rel=1e-12)
    expected = objective.features.T @ (-objective.labels / (1 + np.exp(margins)))
    np.testing.assert_allclose(gradient, expected, rtol=1e-12, atol=1e-14)
    assert correct == int(np.sum(margins > 0))
    np.testing.assert_array_equal(state.snapshot, x_snap)


@pytest.mark.parametrize(
    "name", ["asylpg", "sparse-asylpg", "acc-asylpg", "asyfpg", "acc-asyfpg", "model-only"]
)
def test_gradient_is_zero_at_the_snapshot(name: str) -> None:
    """alpha = grad f_B(x_hat) - grad f_B(x_snap) is exactly zero when x_hat = x_snap: a ZeroVector."""
    state = worker(name)
    state.snapshot_phase(np.linspace(-1, 1, D))
    assert state.gradient_message(EqualsSnapshot(D), relative=False) == ZeroVector(D)
    assert state.gradient_message(ZeroVector(D), relative=True) == ZeroVector(D)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("asylpg", DenseQuantized),
        ("acc-asylpg", DenseQuantized),
        ("sparse-asylpg", SparseQuantized),
        ("asyfpg", RawVector),
        ("model-only", RawVector),
        ("qsvrg", QSGDVector),
    ],
)
def test_gradient_message_kind(name: str, kind: type) -> None:
    """Each algorithm sends its gradient in its own encoding (float32 for the FPG baselines)."""
    state = worker(name, **({"phi": 0.5} if name == "sparse-asylpg" else {}))
    state.snapshot_phase(np.zeros(D))
    model = RawVector(np.linspace(-1, 1, D).astype(np.float32))
    vector = state.gradient_message(model, relative=False)
    assert isinstance(vector, kind)
    assert vector.dim == D
    if isinstance(vector, RawVector):
        assert vector.values.dtype == np.float32
    if isinstance(vector, DenseQuantized):
        assert vector.bits == 8


def one_sample_worker(name: str, **kwargs: Any) -> WorkerState:
    """A worker whose shard is one sample, so every mini-batch is B copies of it."""
    features = sp.csr_matrix(np.array([[1.0, -2.0, 0.0, 0.5]]))
    config = TrainConfig(algorithm=name, batch=5, **kwargs)
    return WorkerState(config, LogisticRegression(features, np.array([1.0])), worker_id=0)


def test_alpha_is_the_gradient_difference_plus_l2() -> None:
    """alpha = (grad f_B(x_hat) - grad f_B(x_snap)) / B + l2 (x_hat - x_snap), sent as float32 by AsyFPG."""
    state = one_sample_worker("asyfpg", l2=0.1)
    x_snap = np.array([0.1, 0.2, 0.3, 0.4])
    x_hat = np.array([0.5, -0.25, 1.0, 0.0])
    state.snapshot_phase(x_snap)
    vector = state.gradient_message(RawVector(x_hat), relative=False)
    # One sample a = (1, -2, 0, 0.5), y = +1: grad f(x) = -a / (1 + exp(a.x)), the same for each of
    # the B = 5 copies in a batch, so the mean over the batch is that gradient.
    a = np.array([1.0, -2.0, 0.0, 0.5])
    alpha = -a / (1 + np.exp(a @ x_hat)) + a / (1 + np.exp(a @ x_snap))
    alpha += 0.1 * (x_hat - x_snap)
    assert isinstance(vector, RawVector)
    np.testing.assert_allclose(vector.values, alpha.astype(np.float32), rtol=1e-6)


def test_qsvrg_adds_full_gradient() -> None:
    """QSVRG's worker quantizes alpha + g_snap: at x_hat = x_snap that is g_snap itself."""
    state = one_sample_worker("qsvrg", qsgd_levels=65_535)
    state.snapshot_phase(np.zeros(4))
    g_snap = np.array([0.3, -1.2, 0.0, 0.6])
    state.set_full_gradient(g_snap)
    vector = state.gradient_message(EqualsSnapshot(4), relative=False)
    assert isinstance(vector, QSGDVector)
    # QSGD's per-coordinate error is below norm / s.
    bound = np.linalg.norm(g_snap) / 65_535 * 1.001
    np.testing.assert_allclose(vector.to_dense(), g_snap, rtol=0, atol=bound)


def test_qsvrg_without_full_gradient_sends_zero_at_snapshot() -> None:
    """Before FULL_GRADIENT arrives g_snap is 0, so QSVRG at the snapshot sends the zero vector."""
    state = one_sample_worker("qsvrg")
    state.snapshot_phase(np.zeros(4))
    assert state.gradient_message(EqualsSnapshot(4), relative=False) == ZeroVector(4)


@pytest.mark.parametrize(("phi", "exact"), [(0.05, False), (0.25, True), (0.001, False)])
def test_sparse_uses_budget_phi_d(monkeypatch: pytest.MonkeyPatch, phi: float, exact: bool) -> None:
    """Sparse-AsyLPG sparsifies with budget phi * d (at least 1) and the configured bits and exactness."""
    calls: list[tuple[float, int, bool]] = []
    real = algorithms.quantize_sparse

    def spy(alpha: Any, budget: float, bits: int, rng: Any, *, exact: bool = False) -> Any:
        calls.append((budget, bits, exact))
        return real(alpha, budget, bits, rng, exact=exact)

    monkeypatch.setattr(algorithms, "quantize_sparse", spy)
    state = worker("sparse-asylpg", phi=phi, exact_budget=exact, bits=6)
    state.snapshot_phase(np.zeros(D))
    state.gradient_message(RawVector(np.linspace(-1, 1, D)), relative=False)
    assert calls == [(max(1.0, phi * D), 6, exact)]


def test_sparse_mean_nonzeros_within_budget() -> None:
    """Sparse-AsyLPG gradients keep about phi * d coordinates on average (E[nnz] <= phi d)."""
    d = 400
    rng = np.random.default_rng(2)
    features = sp.random(50, d, density=0.5, format="csr", random_state=rng)
    labels = rng.choice([-1.0, 1.0], size=50)
    config = TrainConfig(algorithm="sparse-asylpg", batch=16, phi=0.05)
    state = WorkerState(config, LogisticRegression(features, labels), worker_id=3)
    state.snapshot_phase(np.zeros(d))
    model = RawVector(rng.normal(size=d))
    counts = []
    for _ in range(100):
        vector = state.gradient_message(model, relative=False)
        assert isinstance(vector, SparseQuantized)
        counts.append(vector.nnz)
    # phi d = 20; the mean of 100 draws has a standard error below 0.5.
    assert np.mean(counts) <= 20 + 2.0
    assert np.mean(counts) >= 5


def _reference_gradient(state: WorkerState, model: RawVector) -> Any:
    """algorithms.md 5.2 step by step, without prepare or variance_reduced: the mini-batch is the
    worker generator's next draw, then the difference of the two gradients (the objective's
    grad_difference where it has one), then the algorithm's compression."""
    x_hat = model.values.astype(np.float64)
    rows = state._rng.integers(0, state.samples, size=state.config.batch)
    objective: Any = state.objective
    if hasattr(objective, "grad_difference"):
        difference = objective.grad_difference(x_hat, state.snapshot, rows)
    else:
        difference = objective.loss_grad(x_hat, rows)[1] - objective.loss_grad(state.snapshot, rows)[1]
    alpha = difference / state.config.batch + state.config.l2 * (x_hat - state.snapshot)
    return state.compress(alpha)


def _gradients(state: WorkerState, *, prepare: bool | None) -> list[Any]:
    """Two epochs of gradients from ``state``: preparing between steps (True), not (False), or
    computed by :func:`_reference_gradient` (None)."""
    rng = np.random.default_rng(11)
    sent = []
    for _ in range(2):
        if prepare:
            state.prepare()  # before the snapshot phase: computed at the old snapshot, redone
        x_snap = rng.normal(size=D)
        state.snapshot_phase(x_snap)
        state.set_full_gradient(rng.normal(size=D))
        for _ in range(5):
            if prepare:
                state.prepare()
                state.prepare()  # a second call draws nothing more
            model = RawVector((x_snap + 0.1 * rng.normal(size=D)).astype(np.float32))
            if prepare is None:
                sent.append(_reference_gradient(state, model))
            else:
                sent.append(state.gradient_message(model, relative=False))
    return sent


@pytest.mark.parametrize("two_calls", [False, True])
@pytest.mark.parametrize("name", sorted(ALGORITHMS))
def test_prepare_changes_no_gradient(name: str, two_calls: bool) -> None:
    """Preparing the next step while the MODEL travels gives the same gradients, bit for bit.

    The reference is algorithms.md 5.2 written out in the test: the mini-batch must be
    the generator's next draw, and the term at x_snap recomputed when the snapshot changes.
    """
    reference = _gradients(worker(name, l2=1e-3, two_calls=two_calls), prepare=None)
    assert _gradients(worker(name, l2=1e-3, two_calls=two_calls), prepare=True) == reference
    assert _gradients(worker(name, l2=1e-3, two_calls=two_calls), prepare=False) == reference
    assert not all(isinstance(v, ZeroVector) for v in reference)


def test_a_step_takes_grad_difference_once_where_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """With grad_difference a step calls it once, at (x_hat, x_snap) on the generator's next draw,
    and loss_grad never; prepare only draws the mini-batch."""
    differences: list[tuple[Any, ...]] = []
    original = LogisticRegression.grad_difference

    def counting(self: LogisticRegression, x: Any, y: Any, rows: Any) -> Any:
        differences.append((np.array(x), np.array(y), np.array(rows)))
        return original(self, x, y, rows)

    monkeypatch.setattr(LogisticRegression, "grad_difference", counting)
    state = worker("asylpg", l2=0.0)
    x_snap = np.linspace(-0.5, 0.5, D)
    state.snapshot_phase(x_snap)

    def refused(x: Any, rows: Any = None) -> Any:
        raise AssertionError("loss_grad in the inner loop")

    monkeypatch.setattr(LogisticRegression, "loss_grad", refused)
    rows = copy.deepcopy(state._rng).integers(0, state.samples, size=state.config.batch)
    state.prepare()
    assert not differences
    state.gradient_message(RawVector(np.full(D, 0.5, dtype=np.float32)), relative=False)
    assert len(differences) == 1
    np.testing.assert_array_equal(differences[0][0], np.full(D, 0.5))
    np.testing.assert_array_equal(differences[0][1], x_snap)
    np.testing.assert_array_equal(differences[0][2], rows)


def test_a_step_never_writes_the_array_the_objective_gives() -> None:
    """An objective may hand out its own buffer (here the same one every call): the step computes alpha
    in new arrays and leaves that buffer, and the points it passed, as they were."""
    inner = worker("asyfpg").objective
    assert isinstance(inner, LogisticRegression)
    buffer, given = np.linspace(-1.0, 1.0, D), []

    class Cached(TwoCalls):
        def grad_difference(self, x: Any, y: Any, rows: Any) -> Any:
            buffer[:] = self.inner.grad_difference(x, y, rows)
            given.append(buffer.copy())
            return buffer

    state = WorkerState(TrainConfig(algorithm="asyfpg", batch=8, l2=1e-3), Cached(inner), worker_id=1)
    x_snap = np.linspace(0.0, 0.5, D)
    state.snapshot_phase(x_snap)
    alpha = state.variance_reduced(RawVector(np.full(D, 0.25, dtype=np.float32)), relative=False)
    assert len(given) == 1 and given[0].any()
    assert alpha is not buffer and np.array_equal(buffer, given[0])
    np.testing.assert_array_equal(state.snapshot, np.linspace(0.0, 0.5, D))
    np.testing.assert_allclose(alpha, given[0] / 8 + 1e-3 * (0.25 - x_snap), rtol=1e-12, atol=1e-15)


class _Reusing(TwoCalls):
    """An objective that writes every gradient into one buffer of its own and returns it."""

    def __init__(self, inner: LogisticRegression) -> None:
        super().__init__(inner)
        self.buffer = np.zeros(inner.dim)

    def loss_grad(self, x: npt.NDArray[np.float64], rows: Any = None) -> tuple[float, Any]:
        loss, grad = self.inner.loss_grad(x, rows)
        self.buffer[:] = grad
        return loss, self.buffer


@pytest.mark.parametrize("prepared", [False, True])
def test_an_objective_that_reuses_its_gradient_buffer_steps_as_one_that_does_not(prepared: bool) -> None:
    """A review: the x_snap term was kept as the objective's own buffer, which the x_hat call overwrote:
    every alpha was 0, and training fell back to full-gradient steps without a word."""
    fresh, reusing = worker("asyfpg", two_calls=True), worker("asyfpg", two_calls=True)
    inner = reusing.objective
    assert isinstance(inner, TwoCalls)
    reusing.objective = _Reusing(inner.inner)
    x_snap, x_hat = np.linspace(-1, 1, D), RawVector(np.linspace(1, -1, D).astype(np.float32))
    for state in (fresh, reusing):
        state.snapshot_phase(x_snap)
        if prepared:
            state.prepare()
    expected = fresh.variance_reduced(x_hat, relative=False)
    assert np.abs(expected).max() > 0.01  # (x_hat is far from x_snap)
    np.testing.assert_array_equal(reusing.variance_reduced(x_hat, relative=False), expected)
    starting_point(TrainConfig(algorithm="asyfpg"), _Reusing(inner.inner))  # the contract check passes too


def test_the_objective_cannot_write_into_the_point_it_is_given() -> None:
    """A review's objective wrote into x in place: the worker's snapshot drifted from the master's (a
    final F of 0.1905 against 0.1881, exit 0).  Now the write raises, and the step names the objective."""

    class Writing(TwoCalls):
        def loss_grad(self, x: npt.NDArray[np.float64], rows: Any = None) -> tuple[float, Any]:
            x *= 0.9
            return self.inner.loss_grad(x, rows)

    state = worker("asyfpg")
    inner = state.objective
    assert isinstance(inner, LogisticRegression)
    state.objective = Writing(inner)
    with pytest.raises(ValueError, match="read-only"):
        state.snapshot_phase(np.linspace(-1, 1, D))


def test_a_class_given_for_an_objective_is_said_to_want_an_instance() -> None:
    """A review: ``Master(config, LeastSquares, ...)`` said 'type is not an aiodq Objective'."""
    from aiodq.protocol.objectives import check_objective  # noqa: PLC0415

    class Squares(TwoCalls):  # dim and samples are set per instance
        pass

    with pytest.raises(
        TypeError,
        match=r"^the class Squares is not an aiodq Objective: it lacks dim, samples \(see aiodq\.Objective\)"
        ": pass an instance, built from your data$",
    ):
        check_objective(Squares)
    with pytest.raises(
        TypeError, match=r"^int is not an aiodq Objective: it lacks dim, samples, initial, loss_grad"
    ):
        check_objective(3)


def test_a_correct_count_beyond_the_samples_is_the_objective_s_failure() -> None:
    """A review: correct(x) of 10**6 was refused by the master as the worker's report, the worker retried for
    68 s, and the run ended saying TRY_LATER; now the worker names its objective and stops."""

    class Counting(TwoCalls):
        def correct(self, x: Any) -> int:
            return 10**6

    inner = worker("asylpg").objective
    assert isinstance(inner, LogisticRegression)
    state = WorkerState(TrainConfig(), Counting(inner), worker_id=0)
    with pytest.raises(ValueError, match=r"^Counting\.correct\(x\) counted 1000000 of its 30 samples$"):
        state.snapshot_phase(np.zeros(D))


@pytest.mark.parametrize(
    ("start", "dtype"),
    [
        (np.full(D, 1 + 1j), "complex128"),
        (np.array(["0.25"] * D, dtype=object), "object"),
        (np.ones(D, bool), "bool"),
    ],
)
def test_initial_values_that_are_not_real_numbers_are_refused(start: Any, dtype: str) -> None:
    """A review: initial()'s complex parts were dropped (numpy warned), strings parsed, bools taken."""

    class Starting(TwoCalls):
        def initial(self, rng: np.random.Generator) -> Any:
            return start

    inner = worker("asylpg").objective
    assert isinstance(inner, LogisticRegression)
    with pytest.raises(
        ValueError, match=f"^Starting.initial\\(\\) must give real numbers, got {dtype} values$"
    ):
        algorithms.initial_model(TrainConfig(), Starting(inner))


def test_a_subclass_with_its_own_loss_is_stepped_through_its_loss_grad() -> None:
    """A subclass of logistic regression weighting positive samples 3x (its own loss_grad, the inherited
    grad_difference): the step follows its loss, as the two-call path computes it (a review)."""

    class Weighted(LogisticRegression):
        def loss_grad(self, x: Any, rows: Any = None) -> tuple[float, Any]:
            rows = np.arange(self.samples) if rows is None else np.asarray(rows)
            loss, grad = 0.0, np.zeros(self.dim)
            for row in rows:
                weight = 3.0 if self.labels[row] > 0 else 1.0
                one_loss, one_grad = LogisticRegression.loss_grad(self, x, np.array([row]))
                loss, grad = loss + weight * one_loss, grad + weight * one_grad
            return loss, grad

    rng = np.random.default_rng(1)
    features = sp.random(40, D, density=0.4, format="csr", random_state=rng)
    labels = rng.choice([-1.0, 1.0], size=40)
    config = TrainConfig(algorithm="asyfpg", batch=16, l2=0.0)
    model = RawVector(rng.normal(size=D).astype(np.float32))
    steps = []
    for objective in (Weighted(features, labels), TwoCalls(Weighted(features, labels))):
        state = WorkerState(config, objective, worker_id=1)
        state.snapshot_phase(np.zeros(D))
        steps.append(state.variance_reduced(model, relative=False))
    np.testing.assert_array_equal(steps[0], steps[1])
    # (The inherited grad_difference would have given the unweighted step.)
    unweighted = WorkerState(config, LogisticRegression(features, labels), worker_id=1)
    unweighted.snapshot_phase(np.zeros(D))
    assert np.abs(unweighted.variance_reduced(model, relative=False) - steps[0]).max() > 1e-3


def test_prepare_takes_the_snapshot_term_off_the_step() -> None:
    """After prepare, a step of an objective without grad_difference evaluates it once (at x_hat),
    not twice."""
    state = worker("asylpg", two_calls=True)
    state.snapshot_phase(np.zeros(D))
    calls: list[npt.NDArray[np.float64]] = []
    objective = state.objective
    original = objective.loss_grad

    def counting(x: npt.NDArray[np.float64], rows: Any = None) -> Any:
        calls.append(np.array(x))
        return original(x, rows)

    objective.loss_grad = counting  # type: ignore[method-assign]
    model = RawVector(np.full(D, 0.5, dtype=np.float32))
    state.gradient_message(model, relative=False)
    assert len(calls) == 2  # no prepare: x_hat and x_snap after the MODEL
    state.prepare()
    assert len(calls) == 3 and not calls[-1].any()  # the term at x_snap = 0
    state.gradient_message(model, relative=False)
    assert len(calls) == 4
    np.testing.assert_array_equal(calls[-1], np.full(D, 0.5))


def test_worker_rebuilds_relative_model() -> None:
    """A relative MODEL is rebuilt as x_snap + v before the gradient is taken."""
    relative = one_sample_worker("asyfpg", l2=0.0)
    absolute = one_sample_worker("asyfpg", l2=0.0)
    x_snap = np.array([0.5, 0.5, 0.5, 0.5])
    relative.snapshot_phase(x_snap)
    absolute.snapshot_phase(x_snap)
    delta = np.array([0.25, -0.5, 0.0, 1.0])
    from_relative = relative.gradient_message(RawVector(delta), relative=True)
    from_absolute = absolute.gradient_message(RawVector(x_snap + delta), relative=False)
    assert from_relative == from_absolute


@pytest.mark.parametrize("name", ["asylpg", "acc-asylpg", "asyfpg"])
def test_apply_refuses_a_finite_update_beyond_what_a_model_can_carry(name: str) -> None:
    """A finite x beyond float32 / 4 could not travel in a MODEL (issue 10): refused, state unchanged."""
    state = started(algorithm=name, updates_per_epoch=100)
    x, version = state.x.copy(), state.version
    big = RawVector(np.full(3, 1e50))  # finite; x - eta u is about -5e49, far beyond float32
    outcome = state.apply(big, version)
    assert (outcome.applied, outcome.reason) == (False, "overflow")
    np.testing.assert_array_equal(state.x, x)
    assert state.version == version
    assert pytest.approx(3.4028234663852886e38 / 4) == algorithms.MODEL_LIMIT
    state.x[:] = algorithms.MODEL_LIMIT  # at the limit exactly, a model still travels
    vector, _ = state.model_message()
    assert np.isfinite(vector.to_dense()).all() if not isinstance(vector, EqualsSnapshot) else True


def test_apply_refuses_an_update_over_max_norm() -> None:
    """max_norm: an update u whose 2-norm is larger is refused as an outlier and reported with its norm."""
    state = started(updates_per_epoch=100)
    q = RawVector(np.array([2.8, 4.4, 0.0]))  # u = q + g_snap = (3, 4, 0): ||u|| = 5
    outcome = state.apply(q, state.version, max_norm=4.9)
    assert (outcome.applied, outcome.reason) == (False, "outlier")
    assert outcome.norm == pytest.approx(5.0, rel=1e-12)
    outcome = state.apply(q, state.version, max_norm=5.0 + 1e-9)
    assert outcome.applied and outcome.norm == pytest.approx(5.0, rel=1e-12)


@pytest.mark.parametrize(("loss", "value", "what"), [(math.nan, 0.0, "loss"), (1.0, math.inf, "gradient")])
def test_a_non_finite_snapshot_sum_names_the_objective(loss: float, value: float, what: str) -> None:
    """A user loss_grad giving NaN or infinities over the shard: one line naming it (a newcomer trial
    saw the codec's "RawVector values must be finite")."""

    class Broken:
        dim, samples = 3, 4

        def initial(self, rng: np.random.Generator) -> npt.NDArray[np.float64]:
            return np.zeros(3)

        def loss_grad(self, x: Any, rows: Any = None) -> tuple[float, npt.NDArray[np.float64]]:
            return loss, np.array([0.0, value, 1.0])

    state = WorkerState(TrainConfig(model="mine:Broken"), Broken(), worker_id=0)
    with pytest.raises(ValueError, match=rf"^Broken\.loss_grad gave a {what} with NaN or infinite values"):
        state.snapshot_phase(np.zeros(3))


@pytest.mark.parametrize("algorithm", ["asylpg", "asyfpg", "sparse-asylpg", "qsvrg"])
@pytest.mark.parametrize("value", [math.nan, math.inf, 1e300])
def test_a_non_finite_mini_batch_gradient_names_the_objective(algorithm: str, value: float) -> None:
    """A newcomer trial: a user loss_grad that gave NaN after 300 calls ended the worker with the codec's
    "gradient contains NaN or infinite values (at .../codec/lowp.py:78)", as if aiodq's quantizer had
    failed.  Now the error names the objective, as at the snapshot; 1e300 is finite, but beyond the
    float32 range of what each algorithm sends (values, or their scale or norm)."""
    calls = 0

    class Late:
        dim, samples = 3, 4

        def initial(self, rng: np.random.Generator) -> npt.NDArray[np.float64]:
            return np.zeros(3)

        def loss_grad(self, x: Any, rows: Any = None) -> tuple[float, npt.NDArray[np.float64]]:
            nonlocal calls
            calls += 1
            return 1.0, np.array([0.5, value if calls > 2 else 0.25, 1.0])

    state = WorkerState(TrainConfig(model="mine:Late", algorithm=algorithm), Late(), worker_id=0)
    state.snapshot_phase(np.zeros(3))
    state.set_full_gradient(np.zeros(3))
    model = RawVector(np.array([0.1, 0.2, 0.3]))
    what = r"(values the wire cannot carry \(.*float32 range|values beyond float32's range)"
    what = "NaN or infinite values" if value != 1e300 else what
    with pytest.raises(NonFiniteError, match=rf"^Late\.loss_grad gave a gradient with {what}"):
        state.gradient_message(model, relative=False)


class _Squares:
    """f_i(x) = (a_i . x - b_i)^2 / 2, 4 samples of 5 features; ``how`` breaks loss_grad's contract."""

    samples, dim = 4, 5

    def __init__(self, how: str) -> None:
        rng = np.random.default_rng(7)
        self.a, self.b, self.how = rng.standard_normal((4, 5)), rng.standard_normal(4), how

    def initial(self, rng: np.random.Generator) -> np.ndarray:
        return np.ones(self.dim)

    def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> Any:
        a, b = (self.a, self.b) if rows is None else (self.a[rows], self.b[rows])
        residual = a @ x - b
        loss, grad = 0.5 * float(residual @ residual), a.T @ residual
        if self.how == "mean":
            return loss / len(b), grad / len(b)
        if self.how == "gradient only":
            return grad
        if self.how == "loss array":
            return 0.5 * residual**2, grad
        if self.how == "short gradient":
            return loss, grad[:-1]
        if self.how == "regulariser per call":
            return loss + 0.5 * float(x @ x), grad + x
        if self.how == "complex gradient":
            return loss, grad + 1j
        if self.how == "column gradient":
            return loss, grad[:, None]
        if self.how == "writes into x":
            x *= 1.0  # (a newcomer trial's objective did: a worker's training found it, at its SNAPSHOT)
        if self.how == "NaN gradient":
            return loss, grad * np.nan
        if self.how == "infinite loss at row 1":
            return (math.inf if 1 in (rows if rows is not None else ()) else loss), grad
        return loss, grad


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        (
            "mean",
            r"_Squares.loss_grad\(x, rows\) returns the mean over the rows, not the sum \(for rows \[0, 1\]",
        ),
        ("gradient only", r"_Squares.loss_grad\(x, rows\) must return \(loss, gradient\), got a ndarray$"),
        ("loss array", r"_Squares.loss_grad's loss must be a number, got ndarray \(1,\)$"),
        ("short gradient", r"_Squares.loss_grad's gradient must have shape \(5,\), got \(4,\)$"),
        (
            "regulariser per call",
            r"_Squares.loss_grad\(x, rows\) is not a sum over the rows \(for rows \[0, 1\]",
        ),
        ("complex gradient", r"_Squares.loss_grad's gradient must be real numbers, got complex128 values$"),
        ("column gradient", r"_Squares.loss_grad's gradient must have shape \(5,\), got \(5, 1\)$"),
        (
            "writes into x",
            r"_Squares.loss_grad writes into x, which is read-only: it must not change it \(copy it first\) "
            r"\(at .*test_algorithms.py:\d+\)$",
        ),
        # (A newcomer's audit: "is not a sum over the rows" for a NaN gradient; no step has been taken.)
        (
            "NaN gradient",
            r"_Squares.loss_grad\(x, rows\) gives a gradient with NaN or infinite values for rows \[0\] at "
            r"the start, before any step: check the objective, and its data for NaN or infinite values$",
        ),
        ("infinite loss at row 1", r"gives a loss with NaN or infinite values for rows \[1\] at the start"),
    ],
)
def test_the_master_checks_loss_grads_contract_on_two_samples(how: str, expected: str) -> None:
    """starting_point (the master's start, aiodq run's too) calls loss_grad on rows [0], [1] and [0, 1]:
    the answers must be (number, d values) and add up (a newcomer's objective returned means and the
    run trained almost nothing, exit 0; others failed later with Python's unpacking messages)."""
    config = TrainConfig(model="squares")
    assert starting_point(config, _Squares("sums")).shape == (5,)
    with pytest.raises(ValueError, match=expected):
        starting_point(config, _Squares(how))


@pytest.mark.parametrize("how", ["mean", "complex gradient", "column gradient", "regulariser per call"])
def test_a_workers_own_objective_is_checked_as_the_masters_is(how: str) -> None:
    """A trial: a worker given an objective of means (the master's was right) reported a loss 200 times
    too small and the run ended ok at x_0; a worker flattened a (d, 1) gradient and dropped a complex
    one's imaginary parts, which the master's start refuses.  A session refuses such an objective
    before anything is sent, and a gradient of another shape or kind fails the step that computed it."""
    WorkerSession(objective=_Squares("sums"))
    with pytest.raises(ValueError, match=r"^_Squares\.loss_grad"):
        WorkerSession(objective=_Squares(how))
    if how in ("complex gradient", "column gradient"):
        state = WorkerState(TrainConfig(model="squares"), _Squares(how), worker_id=0)
        got = "complex128 values" if how == "complex gradient" else r"shape \(5, 1\)"
        with pytest.raises(ValueError, match=rf"must be 5 real numbers, shape \(5,\), got {got}$"):
            state.snapshot_phase(np.zeros(5))


def test_a_workers_objective_need_not_give_x0_and_is_checked_once() -> None:
    """A review: a worker's objective whose initial() is a stub (only the master's gives x_0) stopped
    working when workers began checking loss_grad at initial(); it is checked at 0 then.  And run_worker
    and each session checked it again, calling initial() every time."""

    class Stub(_Squares):
        calls = 0

        def initial(self, rng: np.random.Generator) -> np.ndarray:
            Stub.calls += 1
            raise NotImplementedError("only the master's objective gives x_0")

    objective = Stub("sums")
    WorkerSession(objective=objective)
    WorkerSession(objective=objective)
    assert Stub.calls == 1
    with pytest.raises(ValueError, match="returns the mean over the rows"):
        WorkerSession(objective=Stub("mean"))  # (at 0 too)


@pytest.mark.asyncio
async def test_run_worker_refuses_an_objective_of_means_before_connecting() -> None:
    """Nothing listens at the address (a socket bound, not listening): the objective's check comes first."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="returns the mean over the rows"):
            await run_worker("127.0.0.1", bound.getsockname()[1], objective=_Squares("mean"), retry_for=0)
        with pytest.raises(ConnectionRefusedError):  # (the same call with a sound objective connects)
            await run_worker("127.0.0.1", bound.getsockname()[1], objective=_Squares("sums"), retry_for=0)


def test_a_model_is_encodable_exactly_when_every_coordinate_is_finite_and_within_the_limit() -> None:
    """The check settles most vectors by one sum of squares (a helper's speed-up): its answer is the
    definition's on every edge, at and past the limit, with NaN, infinities and squares beyond float64."""
    limit = algorithms.MODEL_LIMIT
    above = float(np.nextafter(limit, np.inf))
    rng = np.random.default_rng(5)
    edges = [0.0, 1.0, -1.0, limit, -limit, above, -above, np.nan, np.inf, -np.inf, 1e300, limit / 2]
    for d in (1, 2, 7, 100_000):
        for edge in edges:
            for fill in (0.0, limit, limit / 2**0.5, 1e-300):
                x = rng.standard_normal(d) if fill == 0.0 else np.full(d, fill)
                x[rng.integers(0, d)] = edge
                expected = bool(np.isfinite(x).all()) and bool((np.abs(x) <= limit).all())
                assert algorithms._encodable(x) is expected, (d, edge, fill)


def test_where_an_error_was_raised_names_the_applications_line_never_aiodq_s_own_checks() -> None:
    """A newcomer's audit: aiodq's checks of an objective's answers ended "(at .../aiodq/protocol/
    algorithms.py:437)", read as aiodq's fault. raised_at names the application's last line; for aiodq's
    own checks (a ValueError or an aiodq error raised in aiodq) nothing; aiodq's line for anything else."""
    from aiodq.errors import raised_at  # noqa: PLC0415
    from aiodq.protocol.start import check_start  # noqa: PLC0415

    def caught_in_aiodq(exc: BaseException) -> BaseException:  # (as the session catches its state's)
        assert exc.__traceback__ is not None
        return exc.with_traceback(exc.__traceback__.tb_next)  # this test's own frame left out

    with pytest.raises(ValueError) as checked:
        check_start(np.array([np.nan]))
    assert raised_at(caught_in_aiodq(checked.value)) == ""

    def theirs() -> None:
        raise ValueError("the application's")

    with pytest.raises(ValueError) as own:
        theirs()
    assert raised_at(own.value) == f" (at {__file__}:{theirs.__code__.co_firstlineno + 1})"
    with pytest.raises(TypeError) as bug:  # (not a check's: where in aiodq helps)
        check_start(object())  # type: ignore[arg-type]
    said = raised_at(caught_in_aiodq(bug.value))
    assert said.startswith(" (at ") and f"{os.sep}aiodq{os.sep}protocol{os.sep}" in said, said


def test_a_workers_own_objective_not_finite_at_zero_still_starts() -> None:
    """A review: a worker checks its objective at its initial(), or at 0 where that gives no vector, and a
    Poisson-like model is not finite at 0; the new refusal of a non-finite start refused it there, though
    0 is no run's x_0. Only the master's check at x_0 refuses."""

    class AtZero(_Squares):
        def initial(self, rng: np.random.Generator) -> Any:
            return None

        def loss_grad(self, x: np.ndarray, rows: np.ndarray | None = None) -> Any:
            loss, grad = super().loss_grad(x, rows)
            return (math.inf if not x.any() else loss), grad

    WorkerSession(objective=AtZero("sums"))  # (checked at 0: not refused)
    with pytest.raises(
        ValueError, match=r"gives a loss with NaN or infinite values for rows \[0\] at the start"
    ):
        starting_point(TrainConfig(model="squares"), AtZero("sums"), np.zeros(5))
