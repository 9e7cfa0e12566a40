"""Shared test configuration.

Hypothesis runs derandomised, so every run checks the same cases.  The files that take
longest run first: pytest-xdist (``-n 2 --dist loadfile --no-loadscope-reorder``,
pyproject.toml) hands whole files to its two workers in collection order, so starting the
longest jobs first lets both workers finish at about the same time instead of one running a
long file alone at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "aiodq",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("aiodq")

TESTS = Path(__file__).resolve().parent

#: The slowest files, slowest first (``--durations``: 275, 171, 150, 77, 74, 61 and 57 s on the
#: project's 2-core VM in two processes); every other file follows in its usual order.
SLOWEST_FIRST = (
    "integration/test_experiments.py",
    "integration/test_reliability.py",
    "property/test_codec_properties.py",
    "integration/test_cluster.py",
    "integration/test_ray.py",
    "integration/test_security.py",
    "test_docs.py",
)


def _rank(item: pytest.Item) -> int:
    try:
        name = item.path.relative_to(TESTS).as_posix()
    except ValueError:  # a test file outside tests/ (given on the command line)
        return len(SLOWEST_FIRST)
    return SLOWEST_FIRST.index(name) if name in SLOWEST_FIRST else len(SLOWEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the slowest files to the front; the order within a file, and of the rest, is kept."""
    items.sort(key=_rank)  # a stable sort
