import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from tasks.errors import InputError
from tasks.simulation.bloch import simulate, to_kspace
from tasks.simulation.phantoms import coil_maps, shepp_logan, spins
from tasks.simulation.pulseq import read_seq, write_seq
from tasks.simulation.sequence import (
    ADC,
    GAMMA_HZ,
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
        ("minor 4", "minor 6", r"bad.seq:2: version 1.6; expected Pulseq 1.2 to 1.5"),
        ("minor 4", "minor 1", r"bad.seq:2: version 1.1; expected Pulseq 1.2 to 1.5"),
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


# --- every version, the signature and bounded shapes ------------------------------------------

FIXTURES = Path(__file__).parent / "data" / "pulseq"
VERSIONS = ["v1_2", "v1_3", "v1_4", "v1_5"]


@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_reads_its_hard_pulse_delay_readout_and_gradients(version):
    seq = read_seq(FIXTURES / f"{version}.seq")
    hard, delay = seq.blocks[0], seq.blocks[1]
    assert hard.rf.is_hard
    assert hard.rf.flip == pytest.approx(math.pi / 2)
    assert hard.duration == pytest.approx(1e-4)
    assert delay.duration == pytest.approx(5e-4)
    assert not delay.events()
    readout = next(b for b in seq.blocks if b.adc is not None)
    assert (readout.adc.samples, readout.adc.dwell) == (32, pytest.approx(2e-5))
    assert readout.adc.phase == pytest.approx(0.5)
    assert readout.duration == pytest.approx(7.2e-4)
    assert isinstance(seq.blocks[-1].gy, Waveform)


def _expanded_rf_hz(rf: RF) -> np.ndarray:
    steps = round(rf.raster / 1e-6)
    return np.repeat(rf.waveform, steps) / (2 * np.pi)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_version_reads_the_events_pypulseq_reads(version):
    pp = pytest.importorskip("pypulseq")
    path = FIXTURES / f"{version}.seq"
    theirs = pp.Sequence()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pypulseq's notices on older versions and rasters
        theirs.read(str(path))
    ours = read_seq(path)
    assert len(ours.blocks) == len(theirs.block_events)
    for block, key in zip(ours.blocks, theirs.block_events, strict=True):
        other = theirs.get_block(key)
        assert block.duration == pytest.approx(theirs.block_durations[key], abs=1e-12)
        assert (block.rf is None) == (other.rf is None)
        if block.rf is not None:
            centres = (np.arange(_expanded_rf_hz(block.rf).size) + 0.5) * 1e-6
            expected = np.interp(centres, other.rf.t, other.rf.signal.real)
            np.testing.assert_allclose(_expanded_rf_hz(block.rf).real, expected, atol=1e-9)
            assert (block.rf.delay, block.rf.phase, block.rf.freq_offset) == pytest.approx(
                (other.rf.delay, other.rf.phase_offset, other.rf.freq_offset)
            )
        for ours_g, axis in zip(block.gradients, "xyz", strict=True):
            their_g = getattr(other, f"g{axis}")
            assert (ours_g is None) == (their_g is None)
            if isinstance(ours_g, Trapezoid):
                got = (ours_g.amplitude * GAMMA_HZ, ours_g.rise, ours_g.flat, ours_g.fall)
                want = (their_g.amplitude, their_g.rise_time, their_g.flat_time, their_g.fall_time)
                assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
            elif ours_g is not None:
                np.testing.assert_allclose(ours_g.samples * GAMMA_HZ, their_g.waveform, rtol=1e-12)
            if ours_g is not None:
                assert ours_g.delay == pytest.approx(their_g.delay, abs=1e-12)
        assert (block.adc is None) == (other.adc is None)
        if block.adc is not None:
            a, b = block.adc, other.adc
            assert a.samples == b.num_samples
            assert (a.dwell, a.delay, a.phase, a.freq_offset) == pytest.approx(
                (b.dwell, b.delay, b.phase_offset, b.freq_offset), abs=1e-12
            )


def test_before_1_4_a_shape_as_long_as_its_samples_is_still_compressed(tmp_path):
    text = (FIXTURES / "v1_3.seq").read_text()
    packed = "shape_id 3\nnum_samples 5\n0.1\n0.1\n2\n0.4\n"
    assert packed in text
    path = tmp_path / "v13.seq"
    path.write_text(text.replace(packed, "shape_id 3\nnum_samples 4\n0.1\n0.2\n0.3\n0.4\n"))
    ramp = read_seq(path).blocks[-1].gy.samples * GAMMA_HZ
    np.testing.assert_allclose(ramp, 1e5 * np.array([0.1, 0.3, 0.6, 1.0]), rtol=1e-12)


@pytest.mark.parametrize("version", ["v1_4", "v1_5"])
def test_a_file_changed_after_signing_is_refused(tmp_path, version):
    text = (FIXTURES / f"{version}.seq").read_text()
    path = tmp_path / "tampered.seq"
    path.write_text(text.replace("640  40   0", "650  40   0", 1))
    with pytest.raises(
        InputError,
        match=r"tampered.seq: \[SIGNATURE\] md5 [0-9a-f]{32} does not match the content's md5 "
        r"[0-9a-f]{32}; expected the file as its writer signed it",
    ):
        read_seq(path)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("Type md5", "Type sha1", r"\[SIGNATURE\] Type \['sha1'\]; expected 'Type md5'"),
        ("Hash ", "Hash 12", r"\[SIGNATURE\] Hash \['12[0-9a-f]{32}'\]; expected 'Hash' and 32"),
    ],
)
def test_a_signature_of_another_kind_is_refused(tmp_path, old, new, match):
    path = tmp_path / "odd.seq"
    path.write_text((FIXTURES / "v1_5.seq").read_text().replace(old, new, 1))
    with pytest.raises(InputError, match=match):
        read_seq(path)


def test_an_unsigned_file_and_our_own_signed_file_read(tmp_path):
    signed = write_seq(gre(matrix=(4, 4)), tmp_path / "signed.seq")
    body = signed.read_text().split("\n[SIGNATURE]")[0] + "\n"
    unsigned = tmp_path / "unsigned.seq"
    unsigned.write_text(body)
    assert len(read_seq(signed).blocks) == len(read_seq(unsigned).blocks)


@pytest.mark.parametrize(
    ("samples", "match"),
    [
        (100, r"bad.seq:17: shape decompresses to 1000000000002 samples; expected num_samples 100"),
        (10**12, r"bad.seq:18: num_samples 1000000000000; expected at most 10000000"),
    ],
)
def test_a_run_length_beyond_the_shape_is_refused_before_expanding(tmp_path, samples, match):
    path = tmp_path / "bad.seq"
    path.write_text(
        BASE.replace("num_samples 100\n1\n0\n0\n97\n", f"num_samples {samples}\n1\n1\n1e12\n")
    )
    with pytest.raises(InputError, match=match):
        read_seq(path)


@pytest.mark.parametrize(
    ("old", "new", "match"),
    [
        ("0 0 0 0 0.3 u", "0 1.5 0 0 0.3 u", r"RF with ppm offsets; expected freqPPM 0"),
        ("0 0 0 0.5 0", "0 0 0 0.5 6", r"ADC with a phase shape; expected phase_id 0"),
        ("0            0 6 0 0", "0            0 6 3 0", r"gradient with a time shape"),
    ],
)
def test_1_5_features_the_model_lacks_are_refused_by_name(tmp_path, old, new, match):
    text = (FIXTURES / "v1_5.seq").read_text().split("\n[SIGNATURE]")[0] + "\n"
    assert old in text
    path = tmp_path / "v15.seq"
    path.write_text(text.replace(old, new, 1))
    with pytest.raises(InputError, match=match):
        read_seq(path)


# --- bounds on what a file expands to ------------------------------------------------------------


def _seq(shapes: list[int], blocks: list[str], grads: str = "", adcs: str = "") -> str:
    """A Pulseq 1.4 file: constant shapes of the given lengths (run-length coded), the blocks
    and [GRADIENTS]/[ADC] rows as given."""
    text = "[VERSION]\nmajor 1\nminor 4\nrevision 1\n\n[BLOCKS]\n" + "\n".join(blocks) + "\n"
    if grads:
        text += f"\n[GRADIENTS]\n{grads}\n"
    if adcs:
        text += f"\n[ADC]\n{adcs}\n"
    text += "\n[SHAPES]\n"
    for sid, n in enumerate(shapes, start=1):
        text += f"\nshape_id {sid}\nnum_samples {n}\n1\n0\n0\n{n - 3}\n"
    return text


def _refused_within(path: Path, match: str, peak_mib: float = 64) -> None:
    """``read_seq`` refuses ``path`` with ``match``, allocating under ``peak_mib`` on the way."""
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=match):
            read_seq(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < peak_mib * 2**20, f"read_seq allocated {peak / 2**20:.0f} MiB before refusing"


def test_a_shape_table_claiming_billions_of_samples_is_refused_before_expanding(tmp_path):
    """Guards against a 20 KB file of 300 shapes, each under the per-shape cap, making the
    reader allocate 3 billion samples (24 GB)."""
    path = tmp_path / "bomb.seq"
    path.write_text(_seq([10_000_000] * 300, ["1 10 0 0 0 0 0 0"]))
    assert path.stat().st_size < 20_000
    _refused_within(
        path,
        r"^.*bomb\.seq:11: \[SHAPES\] expands to 3000000000 samples over 300 shapes; "
        r"expected at most 100000000$",
    )


def test_blocks_repeating_a_shape_billions_of_samples_are_refused_before_building(tmp_path):
    """Guards against 3,000 block lines that each give a 1-million-sample gradient shape its
    own array: 3 billion samples from a 60 KB file."""
    blocks = [f"{n} 1000000 0 1 0 0 0 0" for n in range(1, 3001)]  # 10 s each
    path = tmp_path / "bomb.seq"
    path.write_text(_seq([1_000_000], blocks, grads="1 1000 1 0 0"))
    _refused_within(
        path,
        r"^.*bomb\.seq:7: \[BLOCKS\] expands to 3000000000 RF, gradient and ADC samples over "
        r"3000 blocks; expected at most 100000000$",
    )


def test_an_adc_of_a_trillion_samples_is_refused_by_the_reader(tmp_path):
    """Guards against one ADC row sizing the simulator's signal array at 10^12 samples."""
    path = tmp_path / "bomb.seq"
    path.write_text(_seq([], ["1 10000000000 0 0 0 0 1 0"], adcs=f"1 {10**12} 100 0 0 0"))
    _refused_within(path, r"bomb\.seq:7: \[BLOCKS\] expands to 1000000000000 RF, gradient")


@pytest.mark.parametrize(("extra", "refused"), [(0, False), (1, True)])
def test_the_expansion_caps_hold_at_their_boundary(tmp_path, monkeypatch, extra, refused):
    """Guards against an off-by-one in either cap: exactly the cap reads, one more is refused."""
    import tasks.simulation.pulseq as pulseq

    monkeypatch.setattr(pulseq, "MAX_EXPANDED_SAMPLES", 1000)
    # Shapes: 600 + 400 (+ 1) samples.
    shapes = tmp_path / "shapes.seq"
    shapes.write_text(_seq([600, 400 + extra], ["1 10 0 0 0 0 0 0"]))
    # Blocks: nine 100-sample gradients and 100 (+ 1) ADC samples of 10 us.
    blocks = [f"{n} 100 0 1 0 0 0 0" for n in range(1, 10)] + ["10 200 0 0 0 0 1 0"]
    adc = tmp_path / "blocks.seq"
    adc.write_text(_seq([100], blocks, grads="1 1000 1 0 0", adcs=f"1 {100 + extra} 10000 0 0 0"))
    for path, table in ((shapes, "SHAPES"), (adc, "BLOCKS")):
        if refused:
            with pytest.raises(InputError, match=rf"\[{table}\] expands to 1001 "):
                read_seq(path)
        else:
            read_seq(path)
