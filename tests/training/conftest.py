"""Training tests: PyTorch, real processes and moto; no Prefect API needed."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> None:
    """Overrides the suite's Prefect harness: these tests never call Prefect (saves ~10 s)."""
