import nibabel as nib
import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr.phantom import coil_sensitivities
from tasks.simulation.phantoms import (
    SHEPP_LOGAN_TISSUES,
    Phantom,
    Tissue,
    coil_maps,
    from_nifti,
    shepp_logan,
    spin_range,
    spins,
)


def test_shepp_logan_has_its_tissues_at_any_resolution():
    for matrix in ((32, 32), (48, 40)):
        phantom = shepp_logan(matrix, spins_per_voxel=3)
        assert phantom.shape == (*matrix, 1)
        assert set(np.unique(phantom.labels)) == {-1, 0, 1, 2, 3, 4}
        csf = phantom.labels == list(SHEPP_LOGAN_TISSUES).index("csf")
        assert np.all(phantom.t1[csf] == SHEPP_LOGAN_TISSUES["csf"].t1)
        assert phantom.n_spins == 3 * np.count_nonzero(phantom.pd)


def test_tissue_overrides_set_off_resonance_in_hz():
    phantom = shepp_logan((16, 16), tissues={"scalp": Tissue(pd=1, t1=0.3, t2=0.05, df=-220)})
    spin_set = spins(phantom)
    assert np.isclose(spin_set.dw, 2 * np.pi * -220).sum() > 0
    with pytest.raises(InputError, match="tissue 'bone' is unknown; expected one of"):
        shepp_logan(tissues={"bone": Tissue(pd=1, t1=1, t2=1)})


def test_spins_sit_in_their_voxels_and_carry_pd_over_spins_per_voxel():
    phantom = shepp_logan((16, 16), fov=(0.16, 0.16), spins_per_voxel=4, seed=3)
    spin_set = spins(phantom)
    voxel = np.repeat(phantom.voxels, 4)
    i, j, _ = np.unravel_index(voxel, phantom.shape)
    centres = np.stack([(i - 8) * 0.01, (j - 8) * 0.01], axis=1)
    assert np.all(np.abs(spin_set.positions[:, :2] - centres) <= 0.005)
    assert np.all(spin_set.positions[:, 2] == 0)
    np.testing.assert_allclose(spin_set.m0, phantom.pd.ravel()[voxel] / 4)


def test_any_slice_of_the_global_spin_list_is_the_same_whoever_computes_it():
    phantom = shepp_logan((16, 16), spins_per_voxel=5, seed=11, sampling="random")
    whole = spins(phantom)
    for start, stop in ((0, 7), (13, 200), (phantom.n_spins - 3, phantom.n_spins)):
        part = spins(phantom, start, stop)
        np.testing.assert_array_equal(part.positions, whole.positions[start:stop])
        np.testing.assert_array_equal(part.t2, whole.t2[start:stop])
    other = spins(shepp_logan((16, 16), spins_per_voxel=5, seed=12, sampling="random"))
    assert not np.array_equal(other.positions, whole.positions)


def test_rank_ranges_split_like_array_split_and_refuse_more_ranks_than_spins():
    for total, size in ((10, 3), (1000, 7), (5, 5)):
        expected = [(int(a[0]), int(a[-1]) + 1) for a in np.array_split(np.arange(total), size)]
        assert [spin_range(total, r, size) for r in range(size)] == expected
    with pytest.raises(InputError, match="8 ranks for 5 spins; expected at most one rank per spin"):
        spin_range(5, 0, 8)


def test_coil_maps_at_voxel_centres_are_the_coil_sensitivities():
    phantom = Phantom(
        pd=np.ones((8, 6, 1)),
        t1=np.ones((8, 6, 1)),
        t2=np.ones((8, 6, 1)) * 0.1,
        df=np.zeros((8, 6, 1)),
        fov=(0.08, 0.06, 0.005),
        sampling="centre",
    )
    spin_set = spins(phantom)
    maps = coil_maps(phantom, spin_set, 3)
    assert maps.shape == (3, 48)
    np.testing.assert_allclose(maps.T, coil_sensitivities(8, 6, 3).reshape(48, 3), atol=1e-12)


def _save(path, data, zooms=(2.0, 2.0, 5.0)):
    image = nib.Nifti1Image(np.asarray(data, dtype=np.float32), np.diag([*zooms, 1.0]))
    nib.save(image, path)
    return path


def test_phantom_from_nifti_maps(tmp_path):
    pd = np.zeros((10, 12, 1))
    pd[2:8, 3:9] = 0.9
    paths = [
        _save(tmp_path / f"{name}.nii.gz", values)
        for name, values in (("pd", pd), ("t1", pd * 1.0), ("t2", pd * 0.1), ("df", pd * 30))
    ]
    phantom = from_nifti(*paths, spins_per_voxel=2)
    assert phantom.shape == (10, 12, 1)
    assert phantom.fov == pytest.approx((0.02, 0.024, 0.005))
    spin_set = spins(phantom)
    assert len(spin_set) == 2 * 36
    np.testing.assert_allclose(spin_set.dw, 2 * np.pi * 27, rtol=1e-6)


def test_nifti_maps_that_disagree_or_are_negative_are_refused(tmp_path):
    pd = _save(tmp_path / "pd.nii", np.ones((4, 4)))
    t1 = _save(tmp_path / "t1.nii", np.ones((4, 5)))
    t2 = _save(tmp_path / "t2.nii", np.ones((4, 4)) * 0.1)
    with pytest.raises(InputError, match=r"disagree in shape: .*t1 \(t1.nii\)': \(4, 5, 1\)"):
        from_nifti(pd, t1, t2)
    bad = _save(tmp_path / "t2neg.nii", -np.ones((4, 4)))
    with pytest.raises(InputError, match=r"t2 map .*t2neg.nii has negative values; expected >= 0"):
        from_nifti(pd, pd, bad)
    with pytest.raises(InputError, match=r"df map .*missing.nii: cannot read as NIfTI"):
        from_nifti(pd, pd, t2, tmp_path / "missing.nii")


def test_bad_phantoms_are_refused():
    ones = np.ones((4, 4, 1))
    with pytest.raises(InputError, match="phantom t1 map has negative values; expected >= 0"):
        Phantom(pd=ones, t1=-ones, t2=ones, df=0 * ones, fov=(0.1, 0.1, 0.005))
    with pytest.raises(InputError, match="phantom t2 is 0 where pd > 0; expected > 0 s there"):
        Phantom(pd=ones, t1=ones, t2=0 * ones, df=0 * ones, fov=(0.1, 0.1, 0.005))
    with pytest.raises(InputError, match=r"phantom maps have shapes .*expected one"):
        Phantom(pd=ones, t1=ones[:2], t2=ones, df=ones, fov=(0.1, 0.1, 0.005))
    with pytest.raises(InputError, match=r"spin range \[5, 2\); expected 0 <= start <= stop"):
        spins(shepp_logan((8, 8)), 5, 2)
