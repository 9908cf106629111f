"""Our conventions against KomaMRI's formulas, MRzero and blochsimulator on the same isochromats.

``data/conventions/signals.npz`` holds the baselines' signals for seven fixed isochromats under
an RF-spoiled 8x8 GRE (``make_signals.py`` there writes it); the live comparison reruns them
when the benchmark baselines are installed.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from tasks.simulation.bloch import SpinSet, simulate
from tasks.simulation.pulseq import read_seq
from tasks.simulation.sequence import ADC, RF, Block, Sequence, Trapezoid
from tests.simulation.conftest import make_spins

DATA = Path(__file__).parent / "data" / "conventions"
SEQ = DATA / "gre_8x8.seq"
TOLERANCE = 1e-3


def stored() -> tuple[SpinSet, dict[str, np.ndarray]]:
    with np.load(DATA / "signals.npz") as data:
        arrays = {key: data[key] for key in data.files}
    spin_set = SpinSet(**{key: arrays.pop(key) for key in ("positions", "m0", "t1", "t2", "dw")})
    return spin_set, arrays


def negated(sequence: Sequence) -> Sequence:
    """``sequence`` with every RF and ADC phase negated (blochsimulator's reading of it)."""

    def flip(block: Block) -> Block:
        rf = None if block.rf is None else dataclasses.replace(block.rf, phase=-block.rf.phase)
        adc = None if block.adc is None else dataclasses.replace(block.adc, phase=-block.adc.phase)
        return dataclasses.replace(block, rf=rf, adc=adc)

    return dataclasses.replace(sequence, blocks=[flip(block) for block in sequence.blocks])


def rel(reference: np.ndarray, value: np.ndarray) -> float:
    return float(np.linalg.norm(reference - value) / np.linalg.norm(reference))


@pytest.mark.parametrize(
    ("rf_phase", "adc_phase"), [(0.0, 0.0), (0.5, 0.0), (0.0, 0.5), (2.0, 1.2)]
)
def test_rf_phase_advances_and_adc_phase_retards_the_signal_as_in_komamri(rf_phase, adc_phase):
    # KomaMRI: B1 = |B1| exp(i phase) takes +z to i exp(i phase) sin(a); the receiver multiplies
    # by exp(-i adc_phase).
    flip = math.radians(40)
    sequence = Sequence(
        blocks=[
            Block(rf=RF.hard(flip, rf_phase, 1e-4)),
            Block(adc=ADC(samples=1, dwell=1e-9, phase=adc_phase)),
        ]
    )
    signal = simulate(make_spins([(0, 0, 0)], t1=math.inf, t2=math.inf), sequence)[0, 0]
    expected = 1j * math.sin(flip) * np.exp(1j * (rf_phase - adc_phase))
    np.testing.assert_allclose(signal, expected, atol=1e-12)


@pytest.mark.parametrize("x", [0.01, -0.01])
def test_a_gradient_moment_k_turns_a_spin_at_x_by_minus_k_x(x):
    # dM/dt = gamma M x B with Bz = G x: the phase goes as exp(-i gamma int G dt x), x in m.
    ramp = Trapezoid(amplitude=5e-3, rise=1e-4, flat=3e-4, fall=1e-4)
    sequence = Sequence(
        blocks=[
            Block(rf=RF.hard(math.pi / 2, 0.0, 1e-4)),
            Block(gx=ramp),
            Block(adc=ADC(samples=1, dwell=1e-9)),
        ]
    )
    signal = simulate(make_spins([(x, 0, 0)], t1=math.inf, t2=math.inf), sequence)[0, 0]
    moment = 2 * math.pi * 42.577478518e6 * ramp.area  # rad/m
    np.testing.assert_allclose(signal, 1j * np.exp(-1j * moment * x), atol=1e-9)


def test_mrzero_is_minus_i_times_ours_spin_for_spin():
    # MRzero rotates RF the other way (+z to -y) and receives i exp(-i adc_phase) sum(m): its
    # magnetisation is minus ours at all times, its signal -i times ours.
    spin_set, baselines = stored()
    ours = simulate(spin_set, read_seq(SEQ))[0]
    assert rel(baselines["mrzero"], -1j * ours) < TOLERANCE


def test_blochsimulator_matches_ours_once_its_rf_and_adc_phase_signs_are_undone():
    spin_set, baselines = stored()
    sequence = read_seq(SEQ)
    ours = simulate(spin_set, sequence)[0]
    # Given the file as written it plays the phases negated: a different experiment.
    assert rel(baselines["blochsimulator"], ours) > 0.5
    assert rel(baselines["blochsimulator"], simulate(spin_set, negated(sequence))[0]) < TOLERANCE
    assert rel(baselines["blochsimulator_negated"], ours) < TOLERANCE


def test_the_installed_baselines_still_give_the_stored_signals(tmp_path):
    pytest.importorskip("blochsimulator", reason="benchmark baseline: pip install .[bench]")
    pytest.importorskip("MRzeroCore", reason="benchmark baseline: pip install .[bench]")
    from benchmarks.baselines.simulation_external import (
        blochsimulator_at_positions,
        mrzero_isochromat_at_positions,
        negated_phases,
    )

    spin_set, baselines = stored()
    live = {
        "blochsimulator": blochsimulator_at_positions(SEQ, spin_set)[0],
        "blochsimulator_negated": blochsimulator_at_positions(
            negated_phases(SEQ, tmp_path / "negated.seq"), spin_set
        )[0],
        "mrzero": mrzero_isochromat_at_positions(SEQ, spin_set)[0],
    }
    for name, signal in live.items():
        assert rel(baselines[name], signal) < TOLERANCE, name
