"""Shared test settings. Hypothesis runs derandomized (a fixed seed per test) so every run of
the suite draws the same cases: deterministic, yet property-based."""

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ferrollm",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile("ferrollm")
