import math
from pathlib import Path

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.simulation.bloch import simulate, to_kspace
from tasks.simulation.phantoms import coil_maps, shepp_logan, spins
from tasks.simulation.pulseq import read_seq, write_seq
from tasks.simulation.sequence import (
    ADC,
    RF,
    Block,
    Sequence,
    Trapezoid,
    Waveform,
    bssfp,
    gre,
    inversion_recovery,
    spin_echo,
)


@pytest.fixture(scope="module")
def phantom_spins():
    phantom = shepp_logan((16, 16), spins_per_voxel=2, seed=2)
    spin_set = spins(phantom)
    return spin_set, coil_maps(phantom, spin_set, 2)


@pytest.mark.parametrize(
    "build",
    [
        lambda: gre(matrix=(16, 16), spoil="rf", dummy_scans=3),
        lambda: bssfp(matrix=(16, 16)),
        lambda: spin_echo(matrix=(16, 16), tr=0.1, te=15e-3),
        lambda: inversion_recovery(matrix=(16, 16), tr=0.3, ti=0.05),
    ],
    ids=["gre", "bssfp", "spin_echo", "inversion_recovery"],
)
def test_builder_write_read_simulate_gives_the_same_signal(build, tmp_path, phantom_spins):
    spin_set, coils = phantom_spins
    seq = build()
    back = read_seq(write_seq(seq, tmp_path / "seq.seq"))
    assert (back.matrix, back.lines, back.fov) == (seq.matrix, seq.lines, seq.fov)
    assert back.parameters == pytest.approx(seq.parameters)
    a = to_kspace(simulate(spin_set, seq, coils), seq)
    b = to_kspace(simulate(spin_set, back, coils), back)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-9 * np.abs(a).max())


def test_shaped_rf_and_arbitrary_gradients_round_trip(tmp_path, phantom_spins):
    spin_set, _ = phantom_spins
    t = np.arange(200) - 99.5
    sinc = RF(waveform=2 * np.pi * 400 * np.sinc(t / 50) * np.exp(0.3j), raster=1e-6, delay=1e-5)
    slope = Waveform(samples=np.linspace(0, 5e-3, 20), raster=1e-5)
    seq = Sequence(
        blocks=[
            Block(rf=sinc, gz=Trapezoid(amplitude=2e-3, rise=2e-5, flat=2e-4, fall=2e-5)),
            Block(gx=slope, adc=ADC(samples=32, dwell=2e-6, delay=1e-5, phase=0.5)),
        ]
    )
    back = read_seq(write_seq(seq, tmp_path / "shaped.seq"))
    assert not back.blocks[0].rf.is_hard
    a, b = simulate(spin_set, seq), simulate(spin_set, back)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-9 * np.abs(a).max())


def test_written_file_is_pulseq_1_4_with_a_valid_signature_and_compressed_shapes(tmp_path):
    import hashlib

    path = write_seq(gre(matrix=(8, 8)), tmp_path / "gre.seq")
    text = path.read_text()
    assert "[VERSION]\nmajor 1\nminor 4\n" in text
    body, signature = text.split("\n[SIGNATURE]")
    digest = hashlib.md5(body.encode(), usedforsecurity=False).hexdigest()
    assert f"Hash {digest}" in signature
    # a 100 us hard pulse: 100 ones stored as first differences 1, 0, 0 (+97 repeats)
    assert "num_samples 100\n1\n0\n0\n97\n" in text


def test_reads_a_hand_written_1_3_file_with_delays(tmp_path):
    path = tmp_path / "v13.seq"
    path.write_text(
        "[VERSION]\nmajor 1\nminor 3\nrevision 0\n\n"
        "[BLOCKS]\n1 0 1 0 0 0 0 0\n2 1 0 0 0 0 1 0\n\n"
        "[RF]\n1 250 1 2 0 0 0\n\n"
        "[ADC]\n1 4 10000 0 0 0\n\n"
        "[DELAYS]\n1 500\n\n"
        "[SHAPES]\n\nshape_id 1\nnum_samples 1000\n1\n0\n0\n997\n\n"
        "shape_id 2\nnum_samples 1000\n0\n0\n998\n"
    )
    seq = read_seq(path)
    rf = seq.blocks[0].rf
    assert rf.is_hard
    assert rf.flip == pytest.approx(2 * math.pi * 250 * 1e-3)
    assert seq.blocks[1].duration == pytest.approx(5e-4)
    assert seq.adc_samples == 4


BASE = (
    "[VERSION]\nmajor 1\nminor 4\nrevision 1\n\n[DEFINITIONS]\nBlockDurationRaster 1e-05\n\n"
    "[BLOCKS]\n1 10 1 0 0 0 0 0\n\n[RF]\n1 2500 1 1 0 0 0 0\n\n"
    "[SHAPES]\n\nshape_id 1\nnum_samples 100\n1\n0\n0\n97\n"
)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("[RF]", "[PULSES]", r"bad.seq:12: unknown section '\[PULSES\]'; expected one of"),
        ("minor 4", "minor 6", r"bad.seq:2: version 1.6; expected Pulseq 1.3 or 1.4"),
        (
            "1 2500 1 1 0 0 0 0",
            "1 2500 1 1 0 0",
            r"bad.seq:13: \[RF\] row has 6 columns; expected 8",
        ),
        ("1 2500 1 1", "1 2.5kHz 1 1", r"bad.seq:13: '2.5kHz' is not a number; expected numbers"),
        (
            "1 10 1 0 0 0 0 0",
            "1 10 2 0 0 0 0 0",
            r"bad.seq:10: block refers to RF 2; expected an id",
        ),
        ("1 10 1 0 0 0 0 0", "1 10 1 0", r"bad.seq:10: block has 4 columns; expected NUM DUR"),
        (
            "0\n97\n",
            "0\n96\n",
            r"bad.seq:17: shape decompresses to 99 samples; expected num_samples",
        ),
        ("1 2500 1 1 0 0", "1 2500 1 3 0 0", r"bad.seq:13: refers to shape 3; expected an id in"),
        ("1 10 1", "1 1 1", r"bad.seq:10: block duration=1e-05 s is shorter than its events"),
    ],
)
def test_malformed_files_name_the_file_line_and_expectation(tmp_path, old, new, match):
    assert old in BASE
    path = tmp_path / "bad.seq"
    path.write_text(BASE.replace(old, new, 1))
    with pytest.raises(InputError, match=match):
        read_seq(path)


def test_the_base_file_of_the_malformed_cases_reads(tmp_path):
    path = tmp_path / "good.seq"
    path.write_text(BASE)
    assert read_seq(path).blocks[0].rf.flip == pytest.approx(2 * math.pi * 2500 * 1e-4)


def test_missing_file_and_ideal_spoiling_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"nowhere.seq: cannot read Pulseq file"):
        read_seq(tmp_path / "nowhere.seq")
    with pytest.raises(InputError, match="ideal spoiling; expected spoil='rf'"):
        write_seq(gre(matrix=(4, 4), spoil="ideal"), tmp_path / "ideal.seq")
    assert not list(Path(tmp_path).glob("*ideal*"))
