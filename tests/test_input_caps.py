"""Fixed caps on the sizes a run may ask for: each accepted at its bound, refused one past it.

These are the bounds fixed when the code loads (pydantic fields, builder and reader checks);
``tests/flows/test_size_refusals.py`` checks the run-time bound, the unit's memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from tasks.errors import InputError
from tasks.mr.options import MrOptions
from tasks.simulation import sequence as builders
from tasks.simulation.mpi_simulate import PhantomSpec, SimulationSpec
from tasks.simulation.phantoms import from_nifti
from tasks.training.config import TrainingSettings
from tasks.training.models import model_options

# (what, build it from one value, the largest value allowed)
FIELD_CAPS: list[tuple[str, Callable[[Any], object], Any]] = [
    ("PhantomSpec.matrix", lambda v: PhantomSpec(matrix=(8, v)), 4096),
    ("PhantomSpec.spins_per_voxel", lambda v: PhantomSpec(spins_per_voxel=v), 10_000),
    ("SimulationSpec.noise_samples", lambda v: SimulationSpec(noise_samples=v), 10_000_000),
    ("SimulationSpec.chunk", lambda v: SimulationSpec(chunk=v), 1 << 22),
    ("SimulationSpec.coils", lambda v: SimulationSpec(coils=v), 128),
    ("TrainingSettings.epochs", lambda v: TrainingSettings(epochs=v), 100_000),
    ("TrainingSettings.batch_size", lambda v: TrainingSettings(batch_size=v), 65_536),
    ("TrainingSettings.nodes", lambda v: TrainingSettings(nodes=v, batch_size=v * 2), 256),
    (
        "TrainingSettings.procs_per_node",
        lambda v: TrainingSettings(procs_per_node=v, batch_size=v),
        256,
    ),
    ("MrOptions.replicas", lambda v: MrOptions(method="pmr", replicas=v), 100_000),
    ("MrOptions.box_size", lambda v: MrOptions(method="cr", box_size=v), 64),
    ("MrOptions.slices", lambda v: MrOptions(slices=list(range(v))), 100_001),
    ("MrOptions.acceleration", lambda v: MrOptions(recon="sense", acceleration=(1, v)), 16),
]


@pytest.mark.parametrize(("what", "build", "cap"), FIELD_CAPS, ids=[c[0] for c in FIELD_CAPS])
def test_a_size_field_takes_its_cap_and_refuses_one_more(what, build, cap):
    """Guards against a parameter (typed in the UI or sent by an API caller) sized without a
    bound, which would reach the allocator or run for ever before anything else looked."""
    build(cap)
    with pytest.raises(ValidationError, match=rf"less than or equal to {cap}|at most {cap}"):
        build(cap + 1)


BUILDER_CAPS: list[tuple[str, Callable[[int], object], int, str]] = [
    (
        "gre matrix",
        lambda v: builders.gre(matrix=(v, 2), te=0.1, tr=0.2),
        4096,
        r"matrix=\(4097, 2\); expected \(nx, ny\), both 1 to 4096",
    ),
    (
        "gre dummy_scans",
        lambda v: builders.gre(matrix=(2, 2), dummy_scans=v),
        10_000,
        r"dummy_scans=10001; expected 0 to 10000",
    ),
]


@pytest.mark.parametrize(
    ("what", "build", "cap", "match"), BUILDER_CAPS, ids=[c[0] for c in BUILDER_CAPS]
)
def test_a_builder_takes_its_cap_and_refuses_one_more(what, build, cap, match):
    """Guards against a builder parameter in SequenceSpec.params (a free dict) making
    millions of blocks or samples: a matrix past the phantom's cap, or endless dummy scans."""
    build(cap)
    with pytest.raises(InputError, match=match):
        build(cap + 1)


@pytest.mark.parametrize(
    ("key", "cap"), [("width", 1024), ("depth", 8), ("layers", 256), ("channels", 1024)]
)
def test_a_model_option_takes_its_cap_and_refuses_one_more(key, cap):
    """Guards against model_options (a free dict) building a model of unbounded size."""
    model = "convnet" if key == "layers" else "unet"
    assert model_options(model, {key: cap})[key] == cap
    with pytest.raises(InputError, match=rf"option {key}={cap + 1} is invalid; .* 1 to {cap}$"):
        model_options(model, {key: cap + 1})


def _nifti(path: Path, shape: tuple[int, ...]) -> Path:
    """A gzipped NIfTI of zeros (uint8): small on disk, ``shape`` when read."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=np.uint8), np.eye(4)), path)
    return path


def test_a_nifti_phantom_past_the_voxel_cap_is_refused_from_its_header(tmp_path):
    """Guards against a 20 KB gzipped NIfTI of 4097 x 4096 voxels being decompressed into
    float64 maps (134 MB each) before anything looked at its size."""
    big = _nifti(tmp_path / "pd.nii.gz", (4097, 4096))
    assert big.stat().st_size < 100_000
    with pytest.raises(
        InputError,
        match=r"pd map .*pd\.nii\.gz has shape \(4097, 4096\) \(16781312 voxels\); "
        r"expected at most 16777216 voxels$",
    ):
        from_nifti(big, big, big)
