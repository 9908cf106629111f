"""Simulation numerics tests: plain NumPy (and torch on CPU), no Prefect API or AWS needed."""

from __future__ import annotations

import numpy as np
import pytest

from tasks.simulation.bloch import SpinSet


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> None:
    """Overrides the suite's Prefect harness: these tests never call Prefect (saves ~10 s)."""


def make_spins(
    positions: list[tuple[float, float, float]],
    *,
    t1: float = 1.0,
    t2: float = 0.1,
    dw: float | list[float] = 0.0,
    m0: float = 1.0,
) -> SpinSet:
    """Spins at ``positions`` sharing T1, T2 and M0, with one or per-spin off-resonance."""
    n = len(positions)
    return SpinSet(
        positions=np.array(positions, dtype=float),
        m0=np.full(n, m0),
        t1=np.full(n, t1),
        t2=np.full(n, t2),
        dw=np.broadcast_to(np.asarray(dw, dtype=float), (n,)).copy(),
    )
