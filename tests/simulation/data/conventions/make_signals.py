"""Write ``gre_8x8.seq`` and the baselines' signals for it at fixed isochromats (``signals.npz``).

``tests/simulation/test_conventions.py`` compares our simulator with these. Needs the benchmark
baselines (``pip install blochsimulator==2.9.5 mrzerocore==1.2.0``). Run from the repository
root: ``python tests/simulation/data/conventions/make_signals.py``.

The isochromats: seven spins at fixed positions within +-10 cm in x and y, with PD, T1, T2
and off-resonance (up to +-30 Hz) drawn once from ``numpy.random.default_rng(1)``. The
sequence: ``gre(matrix=(8, 8), spoil="rf")``, 117-degree RF spoiling with the ADC phase
following, written as Pulseq. Arrays in ``signals.npz``: the spins (``positions``, ``m0``,
``t1``, ``t2``, ``dw``), ``blochsimulator`` (the file as written), ``blochsimulator_negated``
(the file with RF and ADC phases negated) and ``mrzero`` (``isochromat_sim``), each complex
of shape (64,).
"""

import tempfile
from pathlib import Path

import numpy as np

from benchmarks.baselines.simulation_external import (
    blochsimulator_at_positions,
    mrzero_isochromat_at_positions,
    negated_phases,
)
from tasks.simulation.bloch import SpinSet
from tasks.simulation.pulseq import write_seq
from tasks.simulation.sequence import gre

HERE = Path(__file__).resolve().parent


def spin_set() -> SpinSet:
    """The seven isochromats."""
    rng = np.random.default_rng(1)
    n = 7
    positions = np.column_stack([rng.uniform(-0.1, 0.1, n), rng.uniform(-0.1, 0.1, n), np.zeros(n)])
    t1, t2 = rng.uniform(0.3, 2, n), rng.uniform(0.05, 0.3, n)
    df, pd = rng.uniform(-30, 30, n), rng.uniform(0.5, 1, n)
    return SpinSet(positions=positions, m0=pd, t1=t1, t2=t2, dw=2 * np.pi * df)


def main() -> None:
    seq_path = write_seq(gre(matrix=(8, 8), spoil="rf"), HERE / "gre_8x8.seq")
    spins = spin_set()
    with tempfile.TemporaryDirectory() as tmp:
        negated = negated_phases(seq_path, Path(tmp) / "negated.seq")
        bs_negated, _ = blochsimulator_at_positions(negated, spins)
    bs, _ = blochsimulator_at_positions(seq_path, spins)
    mrzero, _ = mrzero_isochromat_at_positions(seq_path, spins)
    np.savez(
        HERE / "signals.npz",
        positions=spins.positions,
        m0=spins.m0,
        t1=spins.t1,
        t2=spins.t2,
        dw=spins.dw,
        blochsimulator=bs,
        blochsimulator_negated=bs_negated,
        mrzero=mrzero,
    )


if __name__ == "__main__":
    main()
