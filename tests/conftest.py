"""Shared test configuration: hypothesis runs derandomised, so every run checks the same cases."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "aiodq",
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("aiodq")
