"""Shared test configuration: hypothesis runs derandomised (every run checks the same cases); fixtures."""

import dataclasses

import pytest
from hypothesis import HealthCheck, settings

from aiodq import UnusedOptionWarning
from aiodq.protocol.algorithms import TrainConfig

settings.register_profile(
    "aiodq",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("aiodq")


@pytest.fixture
def changed_config() -> TrainConfig:
    """A TrainConfig with every field but ``entropy_coding`` away from its default.

    ``entropy_coding`` stays on because adaptive coding needs it; a test covers it with
    ``replace(changed_config, adaptive_coding=False, entropy_coding=False)``.  A field added to
    TrainConfig fails here until it is set too, so what round-trips a config cannot lose it.
    """
    # (qsgd_levels, acc_snapshot and bias are unused here)
    with pytest.warns(UnusedOptionWarning, match="has no effect"):
        config = TrainConfig(
            algorithm="sparse-asylpg",
            epochs=3,
            updates_per_epoch=17,
            step=0.25,
            batch=8,
            bits=5,
            mu=0.75,
            model_bits_cap=12,
            adaptive_coding=True,
            aligned_codes=True,
            sparse_gradients=False,
            centre="zero",
            phi=0.1,
            exact_budget=True,
            qsgd_levels=7,
            tau=2,
            l2=0.01,
            l1=0.001,
            acc_snapshot="last",
            seed=42,
            model="mlp",
            hidden=9,
            bias=True,
        )
    defaults = TrainConfig()
    unchanged = {
        field.name
        for field in dataclasses.fields(TrainConfig)
        if getattr(config, field.name) == getattr(defaults, field.name)
    }
    assert unchanged == {"entropy_coding"}, f"set {sorted(unchanged)} in changed_config"
    return config
