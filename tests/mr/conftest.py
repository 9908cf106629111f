"""MR numerics tests: plain NumPy, no Prefect API or AWS needed."""

from __future__ import annotations

import pytest

from tasks.mr.phantom import Phantom, make_phantom


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> None:
    """Overrides the suite's Prefect harness: these tests never call Prefect (saves ~10 s)."""


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    """A 32 x 32, 4-coil disc with correlated (non-diagonal) complex noise."""
    return make_phantom(32, 32, 4, amplitude=50.0, correlation=0.3, seed=3)
