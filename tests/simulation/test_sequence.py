import math

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.simulation.bloch import _Readout, compile_sequence
from tasks.simulation.sequence import (
    ADC,
    GAMMA_HZ,
    RF,
    Block,
    Trapezoid,
    Waveform,
    bssfp,
    gre,
    inversion_recovery,
    rf_spoil_phases,
    spin_echo,
)

FOV = (0.24, 0.2)


@pytest.mark.parametrize(
    "build",
    [
        lambda: gre(fov=FOV, matrix=(16, 12), spoil="rf", dummy_scans=2),
        lambda: bssfp(fov=FOV, matrix=(16, 12)),
        lambda: spin_echo(fov=FOV, matrix=(16, 12), tr=0.1, te=12e-3),
        lambda: inversion_recovery(fov=FOV, matrix=(16, 12), tr=0.5, ti=0.1),
    ],
    ids=["gre", "bssfp", "spin_echo", "inversion_recovery"],
)
def test_readouts_sample_the_cartesian_grid_with_the_centre_at_te(build):
    seq = build()
    readouts = [op for op in compile_sequence(seq) if isinstance(op, _Readout)]
    assert len(readouts) == 12
    assert seq.adc_samples == 16 * 12
    kx = (np.arange(16) - 8) / FOV[0]
    for line, op in zip(seq.lines, readouts, strict=True):
        k = op.moments / (2 * np.pi)  # cycles/m since the last pulse
        # a spin echo's 180 negates the moment before it; the builders prephase after it
        np.testing.assert_allclose(k[:, 0], kx, atol=1e-6)
        np.testing.assert_allclose(k[:, 1], (line - 6) / FOV[1], atol=1e-6)
        # the k-space centre sample is TE after the last pulse (SE: after the 180, TE/2)
        te = seq.parameters["te"]
        after = te / 2 if seq.name == "spin_echo" else te
        assert op.offsets[8] == pytest.approx(after, abs=1e-12)
        assert op.uniform


@pytest.mark.parametrize("name", ["gre", "bssfp", "spin_echo", "inversion_recovery"])
def test_every_tr_lasts_tr(name):
    builders = {"gre": gre, "bssfp": bssfp, "spin_echo": spin_echo}
    builders["inversion_recovery"] = inversion_recovery
    seq = builders[name](matrix=(8, 8))
    assert seq.duration == pytest.approx(8 * seq.parameters["tr"], abs=1e-9)


def test_bssfp_rewinds_every_gradient_and_alternates_the_pulse_phase():
    seq = bssfp(matrix=(8, 8), tr=6e-3)
    per_tr = 4
    for start in range(0, len(seq.blocks), per_tr):
        tr_blocks = seq.blocks[start : start + per_tr]
        for axis in ("gx", "gy", "gz"):
            area = sum(getattr(b, axis).area for b in tr_blocks if getattr(b, axis))
            assert abs(area) < 1e-12
    phases = [b.rf.phase for b in seq.blocks if b.rf]
    assert phases[:4] == [0.0, math.pi, 0.0, math.pi]
    assert seq.parameters["te"] == pytest.approx(3e-3)


def test_rf_spoiling_phases_grow_quadratically_by_117_degrees():
    phases = rf_spoil_phases(6)
    increments = np.mod(np.diff(phases), 2 * np.pi)
    np.testing.assert_allclose(np.mod(np.diff(increments), 2 * np.pi), math.radians(117))
    seq = gre(matrix=(4, 4), spoil="rf")
    rf = [b.rf.phase for b in seq.blocks if b.rf]
    adc = [b.adc.phase for b in seq.blocks if b.adc]
    np.testing.assert_allclose(rf, adc)  # the receiver follows the pulse


def test_events_report_duration_and_area():
    trap = Trapezoid(amplitude=10e-3, rise=1e-4, flat=3e-4, fall=1e-4, delay=2e-5)
    assert trap.duration == pytest.approx(5.2e-4)
    assert trap.area == pytest.approx(10e-3 * 4e-4)
    wave = Waveform(samples=[1e-3, 2e-3, 3e-3], raster=1e-5)
    assert wave.area == pytest.approx(6e-8)
    assert RF.hard(math.pi / 2, duration=2e-4).flip == pytest.approx(math.pi / 2)
    adc = ADC(samples=4, dwell=1e-5, delay=1e-5)
    np.testing.assert_allclose(adc.times(), [1.5e-5, 2.5e-5, 3.5e-5, 4.5e-5])
    assert Block(gx=trap, adc=adc).duration == pytest.approx(5.2e-4)
    readout = next(b.gx for b in gre(matrix=(8, 8), fov=(0.2, 0.2)).blocks if b.adc)
    assert readout.amplitude == pytest.approx(1 / (GAMMA_HZ * 0.2 * 10e-6))


def test_bad_protocols_say_what_would_work():
    with pytest.raises(InputError, match=r"echo time is .* too short"):
        gre(matrix=(64, 64), te=0.5e-3)
    with pytest.raises(InputError, match=r"tr=0.003 s is too short; expected at least"):
        gre(matrix=(64, 64), tr=3e-3)
    with pytest.raises(InputError, match=r"needs a .* mT/m readout; expected at most"):
        gre(fov=(0.01, 0.01), dwell=2e-6)
    with pytest.raises(InputError, match="spoil='perfect'; expected 'rf', 'ideal' or 'none'"):
        gre(spoil="perfect")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="flip_deg=0; expected 0 < flip_deg <= 180"):
        bssfp(flip_deg=0)
    with pytest.raises(InputError, match=r"ti=0.0001 s; expected at least"):
        inversion_recovery(ti=1e-4)
    with pytest.raises(InputError, match=r"tr=0.010005 s is not a multiple of 1e-05 s"):
        gre(tr=10.005e-3)
    with pytest.raises(InputError, match=r"block duration=0.0001 s is shorter than its events"):
        Block(duration=1e-4, adc=ADC(samples=64, dwell=1e-5))
