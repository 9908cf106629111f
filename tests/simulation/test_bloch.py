import math

import numpy as np
import pytest
from scipy.linalg import expm

from tasks.errors import InputError
from tasks.mr.fft import ifft2c
from tasks.simulation.bloch import (
    SpinSet,
    add_noise,
    noise_scan,
    simulate,
    spin_samples_per_second,
    to_kspace,
)
from tasks.simulation.phantoms import coil_maps, shepp_logan, spins
from tasks.simulation.sequence import (
    ADC,
    RF,
    Block,
    Sequence,
    Waveform,
    bssfp,
    gre,
    inversion_recovery,
    spin_echo,
)
from tests.simulation.conftest import make_spins

INF = math.inf
SPREAD = [(0.0, 0.0, 0.0), (0.013, -0.021, 0.0), (-0.07, 0.045, 0.0)]


def fid(flip: float, samples: int = 8, dwell: float = 1e-4, rf: RF | None = None) -> Sequence:
    pulse = rf or RF.hard(flip, 0.0, 1e-4)
    return Sequence(blocks=[Block(rf=pulse), Block(adc=ADC(samples=samples, dwell=dwell))])


def centre(kspace: np.ndarray) -> complex:
    nx, ny = kspace.shape[:2]
    return complex(kspace[nx // 2, ny // 2, 0])


def test_rx90_takes_plus_z_to_plus_y():
    # Primer: with dM/dt = gamma M x B, Rx(90) takes +z to +y, so m = Mx + iMy = +i.
    signal = simulate(make_spins([(0, 0, 0)], t1=INF, t2=INF), fid(math.pi / 2, samples=1))
    np.testing.assert_allclose(signal[0, 0], 1j, atol=1e-15)


def test_shaped_pulse_matches_the_bloch_equation_integrated_exactly():
    # Constant B_eff: dM/dt = M x B = -[B]x M, so M(T) = expm(-[B]x T) M(0).
    b1, dw, duration = 2 * np.pi * 900 * np.exp(0.4j), 2 * np.pi * 300.0, 4e-4
    rf = RF(waveform=np.full(40, b1), raster=duration / 40)
    spin = make_spins([(0, 0, 0)], t1=INF, t2=INF, dw=dw)
    signal = simulate(spin, fid(0, samples=1, dwell=1e-9, rf=rf))[0, 0]
    bx, by, bz = b1.real, b1.imag, dw
    cross = np.array([[0, -bz, by], [bz, 0, -bx], [-by, bx, 0]])
    # The sample comes half a dwell after the pulse: free precession only.
    m_pulse = expm(-cross * duration) @ [0, 0, 1]
    expected = (m_pulse[0] + 1j * m_pulse[1]) * np.exp(-1j * dw * 0.5e-9)
    np.testing.assert_allclose(signal, expected, rtol=1e-9)


def test_hard_pulse_equals_a_finely_stepped_shaped_pulse_on_resonance():
    spin = make_spins([(0, 0, 0)], t1=INF, t2=INF)
    hard = RF.hard(1.1, phase=0.7, duration=1e-4)
    shaped = RF(waveform=np.full(50, hard.waveform[0]), raster=2e-6, phase=0.7)
    a = simulate(spin, fid(0, samples=3, rf=hard))
    b = simulate(spin, fid(0, samples=3, rf=shaped))
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)


def test_fid_amplitude_is_m0_sin_flip_and_phase_starts_at_plus_90_rotating_with_off_resonance():
    flip, dw, t2, m0 = math.radians(30), 2 * np.pi * 50, 0.05, 2.5
    spin = make_spins([(0.02, -0.01, 0)], t1=0.8, t2=t2, dw=dw, m0=m0)
    signal = simulate(spin, fid(flip, samples=16))[0]
    t = 0.5e-4 + (np.arange(16) + 0.5) * 1e-4  # from the pulse centre
    expected = 1j * m0 * math.sin(flip) * np.exp(-t / t2) * np.exp(-1j * dw * t)
    np.testing.assert_allclose(signal, expected, rtol=1e-9)
    on_resonance = simulate(make_spins([(0, 0, 0)], t2=INF), fid(flip, samples=1))[0, 0]
    assert math.degrees(np.angle(on_resonance)) == pytest.approx(90, abs=1e-9)


def test_spin_echo_amplitude_is_m0_exp_minus_te_over_t2_whatever_the_off_resonance():
    te, tr, t1, t2 = 30e-3, 0.4, 0.3, 0.05
    seq = spin_echo(matrix=(8, 8), tr=tr, te=te, spoil="ideal")
    for dw in (0.0, 2 * np.pi * 37.0, -2 * np.pi * 210.0):
        spin = make_spins(SPREAD, t1=t1, t2=t2, dw=dw)
        echo = centre(to_kspace(simulate(spin, seq), seq)) / len(SPREAD)
        # Finite TR (primer): times 1 - 2 exp(-(TR - TE/2)/T1) + exp(-TR/T1).
        recovery = 1 - 2 * math.exp(-(tr - te / 2) / t1) + math.exp(-tr / t1)
        assert echo == pytest.approx(1j * math.exp(-te / t2) * recovery, rel=1e-9)


def test_spoiled_gre_with_ideal_spoiling_reaches_the_ernst_steady_state():
    flip, tr, te, t1, t2 = 20.0, 10e-3, 4e-3, 0.2, 0.05
    seq = gre(matrix=(8, 8), tr=tr, te=te, flip_deg=flip, spoil="ideal", dummy_scans=300)
    echo = centre(to_kspace(simulate(make_spins(SPREAD, t1=t1, t2=t2), seq), seq)) / 3
    a, e1 = math.radians(flip), math.exp(-tr / t1)
    ernst = math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * math.exp(-te / t2)
    assert echo == pytest.approx(1j * ernst, rel=1e-9)


def test_rf_and_gradient_spoiling_converge_near_the_ideal_ernst_signal():
    flip, tr, te, t1, t2 = 20.0, 10e-3, 4e-3, 0.2, 0.05
    seq = gre(matrix=(16, 16), tr=tr, te=te, flip_deg=flip, spoil="rf", dummy_scans=300)
    voxel = 0.256 / 16
    xs = (np.arange(400) + 0.5) / 400 * voxel - voxel / 2  # one voxel, evenly filled
    spin = make_spins([(x, 0.0, 0.0) for x in xs], t1=t1, t2=t2)
    echo = centre(to_kspace(simulate(spin, seq), seq)) / len(xs)
    a, e1 = math.radians(flip), math.exp(-tr / t1)
    ernst = math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * math.exp(-te / t2)
    # 117-degree quadratic RF spoiling approximates ideal spoiling; a few percent is typical
    # (Zur et al. 1991). Stated tolerance: 3% in magnitude (here about 1%), and the phase
    # within 0.2 rad of the excitation's +i (the spoiled echo keeps a small residual phase).
    assert abs(echo) == pytest.approx(ernst, rel=0.03)
    assert abs(np.angle(echo) - np.pi / 2) < 0.2


def test_bssfp_reaches_its_steady_state_formula_for_spins_anywhere():
    flip, tr, t1, t2 = 40.0, 8e-3, 0.1, 0.05
    seq = bssfp(matrix=(8, 8), tr=tr, flip_deg=flip, dummy_scans=400)
    echo = centre(to_kspace(simulate(make_spins(SPREAD, t1=t1, t2=t2), seq), seq)) / 3
    a, e1, e2 = math.radians(flip), math.exp(-tr / t1), math.exp(-tr / t2)
    steady = math.sin(a) * (1 - e1) * math.sqrt(e2) / (1 - (e1 - e2) * math.cos(a) - e1 * e2)
    assert abs(echo) == pytest.approx(steady, rel=1e-9)


@pytest.mark.parametrize("ti", [0.05, 0.2, 0.6])
def test_inversion_recovery_samples_mz_at_ti(ti):
    t1, t2, te, tr = 0.2, 0.08, 4e-3, 2.0
    seq = inversion_recovery(matrix=(8, 8), tr=tr, ti=ti, te=te, spoil="ideal")
    echo = centre(to_kspace(simulate(make_spins(SPREAD, t1=t1, t2=t2), seq), seq)) / 3
    # Steady state with a 90 readout: Mz(TI) = M0 (1 - 2 exp(-TI/T1) + exp(-TR/T1)).
    mz = 1 - 2 * math.exp(-ti / t1) + math.exp(-tr / t1)
    assert echo == pytest.approx(1j * mz * math.exp(-te / t2), rel=1e-9)


def test_inversion_recovery_nulls_at_t1_ln2():
    t1 = 0.25
    seq = inversion_recovery(matrix=(8, 8), tr=20 * t1, ti=round(t1 * math.log(2), 5), te=4e-3)
    echo = centre(to_kspace(simulate(make_spins(SPREAD, t1=t1, t2=0.05), seq), seq)) / 3
    assert abs(echo) < 1e-4  # TI on the 10 us raster: |Mz| <= 2 * 5e-6 / T1


@pytest.fixture(scope="module")
def small_phantom():
    phantom = shepp_logan((16, 16), spins_per_voxel=3, seed=5)
    spin_set = spins(phantom)
    return phantom, spin_set, coil_maps(phantom, spin_set, 4)


def test_chunking_does_not_change_the_signal(small_phantom):
    _, spin_set, coils = small_phantom
    seq = gre(matrix=(16, 16), tr=8e-3, te=3e-3, spoil="rf")
    whole = simulate(spin_set, seq, coils, chunk=65536)
    chunked = simulate(spin_set, seq, coils, chunk=7)
    np.testing.assert_allclose(chunked, whole, rtol=0, atol=1e-12 * np.abs(whole).max())


def test_signals_of_spin_subsets_sum_to_the_whole(small_phantom):
    phantom, spin_set, coils = small_phantom
    seq = bssfp(matrix=(16, 16), tr=6e-3)
    k = phantom.n_spins // 3
    parts = [
        simulate(spins(phantom, a, b), seq, coils[:, a:b])
        for a, b in ((0, k), (k, phantom.n_spins))
    ]
    whole = simulate(spin_set, seq, coils)
    np.testing.assert_allclose(sum(parts), whole, rtol=0, atol=1e-12 * np.abs(whole).max())


def test_progress_is_reported_per_chunk(small_phantom):
    _, spin_set, _ = small_phantom
    calls = []
    seq = fid(0.3, samples=2)
    simulate(spin_set, seq, chunk=300, progress=lambda done, total: calls.append((done, total)))
    n = len(spin_set)
    assert calls == [(min(n, s + 300), n) for s in range(0, n, 300)]


def test_simulated_gre_reconstructs_to_the_expected_tissue_contrast():
    phantom = shepp_logan((32, 32), spins_per_voxel=2, seed=1)
    seq = gre(matrix=(32, 32), tr=12e-3, te=4e-3, flip_deg=40, spoil="ideal", dummy_scans=200)
    image = np.abs(ifft2c(to_kspace(simulate(spins(phantom), seq), seq)))[..., 0]
    names = list(phantom_tissues := {"white_matter": 1, "csf": 3})
    means, expected = {}, {}
    a, tr, te = math.radians(40), 12e-3, 4e-3
    for name, index in phantom_tissues.items():
        mask = phantom.labels[..., 0] == index
        inner = mask & np.roll(mask, 1, 0) & np.roll(mask, -1, 0)
        inner &= np.roll(mask, 1, 1) & np.roll(mask, -1, 1)
        means[name] = image[inner].mean()
        pd, t1, t2 = (float(getattr(phantom, m)[mask, 0][0]) for m in ("pd", "t1", "t2"))
        e1 = math.exp(-tr / t1)
        expected[name] = pd * math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * math.exp(-te / t2)
    # T1-weighted: white matter (T1 0.6 s) is brighter than CSF (T1 4 s) despite its lower PD.
    assert expected[names[0]] > 2 * expected[names[1]]
    assert means[names[0]] > 2 * means[names[1]]
    ratio = means[names[0]] / means[names[1]]
    assert ratio == pytest.approx(expected[names[0]] / expected[names[1]], rel=0.15)


def test_torch_backend_matches_numpy_on_cpu(small_phantom):
    pytest.importorskip("torch")
    _, spin_set, coils = small_phantom
    seq = gre(matrix=(16, 16), tr=8e-3, te=3e-3, spoil="rf")
    a = simulate(spin_set, seq, coils)
    b = simulate(spin_set, seq, coils, backend="torch", device="cpu", chunk=200)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_torch_backend_matches_numpy_for_shaped_pulses_and_ramp_sampling(small_phantom):
    pytest.importorskip("torch")
    _, spin_set, coils = small_phantom
    t = np.arange(120) - 59.5
    sinc = RF(waveform=2 * np.pi * 500 * np.sinc(t / 30), raster=2e-6, phase=0.2)
    ramp = Waveform(samples=np.linspace(0, 8e-3, 30), raster=1e-5)  # samples on a ramp
    seq = Sequence(
        blocks=[Block(rf=sinc), Block(gx=ramp, adc=ADC(samples=40, dwell=5e-6, phase=0.3))]
    )
    a = simulate(spin_set, seq, coils)
    b = simulate(spin_set, seq, coils, backend="torch", chunk=100)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_torch_backend_matches_numpy_on_cuda(small_phantom):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch.cuda is not available on this machine")
    _, spin_set, coils = small_phantom
    seq = spin_echo(matrix=(16, 16), tr=0.2, te=20e-3)
    a = simulate(spin_set, seq, coils)
    b = simulate(spin_set, seq, coils, backend="torch", device="cuda")
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * np.abs(a).max())


def test_noise_has_the_requested_covariance(rng):
    cov = np.array([[2.0, 0.5 + 0.3j], [0.5 - 0.3j, 1.0]])
    noise = noise_scan(cov, 200_000, rng)
    assert noise.shape == (200_000, 2)
    np.testing.assert_allclose(noise.T @ noise.conj() / noise.shape[0], cov, atol=2e-2)
    signal = np.ones((2, 100_000), dtype=complex)
    noisy = add_noise(signal, cov, rng) - signal
    np.testing.assert_allclose(noisy @ noisy.conj().T / noisy.shape[1], cov, atol=3e-2)


def test_throughput_metric_is_spins_times_samples_per_second():
    assert spin_samples_per_second(1000, 4096, 2.0) == 2_048_000


def test_bad_inputs_name_themselves():
    spin = make_spins([(0, 0, 0)])
    seq = gre(matrix=(8, 8))
    with pytest.raises(InputError, match=r"coils have shape \(2, 3\); expected \(Nc, 1\)"):
        simulate(spin, seq, np.ones((2, 3)))
    with pytest.raises(InputError, match="chunk=0"):
        simulate(spin, seq, chunk=0)
    with pytest.raises(InputError, match="backend='jax'"):
        simulate(spin, seq, backend="jax")  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"spin t2 has value -0.1; expected > 0 s"):
        SpinSet(positions=np.zeros((1, 3)), m0=[1], t1=[1], t2=[-0.1], dw=[0])
    with pytest.raises(InputError, match=r"spin m0 has shape \(2,\); expected \(1,\)"):
        SpinSet(positions=np.zeros((1, 3)), m0=[1, 1], t1=[1], t2=[1], dw=[0])
    with pytest.raises(InputError, match=r"signal has shape \(1, 5\); expected \(coils, 64\)"):
        to_kspace(np.zeros((1, 5), complex), seq)
    with pytest.raises(InputError, match=r"noise_cov has shape \(3, 3\); expected \(1, 1\)"):
        add_noise(np.zeros((1, 4), complex), np.eye(3), np.random.default_rng(0))


def test_simulated_kspace_and_noise_scan_survive_an_mrd_file(tmp_path, small_phantom, rng):
    from tasks.mr.io import read_raw, write_mrd

    _, spin_set, coils = small_phantom
    seq = gre(matrix=(16, 16), tr=8e-3, te=3e-3, spoil="rf")
    cov = np.array([[1.0, 0.2j], [-0.2j, 0.5]]) * 1e-4
    signal = add_noise(simulate(spin_set, seq, coils[:2]), cov, rng)
    kspace = to_kspace(signal, seq)
    fov_mm = tuple(1000 * v for v in seq.fov)
    path = write_mrd(
        tmp_path / "sim.h5",
        kspace[..., None, None],
        noise_scan(cov, 512, rng),
        fov_mm=fov_mm,
        dwell_s=seq.dwell,
        flip_angle_deg=seq.parameters["flip_deg"],
    )
    raw = read_raw(path)
    # MRD stores complex64: agree to single precision.
    np.testing.assert_allclose(raw.signal[..., 0, 0], kspace, atol=1e-6 * np.abs(kspace).max())
    assert raw.noise.shape == (512, 2)


def test_cauchy_off_resonance_gives_t2_star_decay():
    # Primer: Cauchy dw of scale 1/T2' gives 1/T2* = 1/T2 + 1/T2'. Deterministic quantiles.
    t2, t2p, n = 0.1, 0.02, 200_001
    u = (np.arange(n) + 0.5) / n
    dw = np.tan(np.pi * (u - 0.5)) / t2p
    spin_set = SpinSet(
        positions=np.zeros((n, 3)),
        m0=np.full(n, 1 / n),
        t1=np.full(n, INF),
        t2=np.full(n, t2),
        dw=dw,
    )
    signal = simulate(spin_set, fid(math.pi / 2, samples=6, dwell=4e-3))[0]
    t = 0.5e-4 + (np.arange(6) + 0.5) * 4e-3
    expected = 1j * np.exp(-t * (1 / t2 + 1 / t2p))
    np.testing.assert_allclose(signal, expected, atol=3 / np.sqrt(n))
