"""Shared test settings. Hypothesis runs derandomized (a fixed seed per test) so every run of
the suite draws the same cases: deterministic, yet property-based."""

import os
from pathlib import Path

import ferrollm
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ferrollm",
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.load_profile("ferrollm")


def pytest_report_header(config):
    return f"ferrollm {ferrollm.__version__} from {Path(ferrollm.__file__).parent}"


def pytest_configure(config):
    # tools/wheel.py runs the suite against the installed wheel: make sure that is what imports.
    installed = os.environ.get("FERROLLM_TEST_INSTALLED")
    if installed and not Path(ferrollm.__file__).resolve().is_relative_to(Path(installed).resolve()):
        raise pytest.UsageError(f"ferrollm imports from {ferrollm.__file__}, not from the venv {installed}")


@pytest.fixture(scope="session")
def demo_q4_0(tmp_path_factory) -> str:
    """The embedded model quantized to Q4_0: another file of the same vocabulary (a draft
    model, a model whose saved state the demo's must refuse)."""
    path = tmp_path_factory.mktemp("demo-q4_0") / "demo-q4_0.gguf"
    ferrollm.quantize_file(ferrollm.demo_model_path(), path, "Q4_0")
    return str(path)
