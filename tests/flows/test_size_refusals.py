"""Flows refuse, at their start, a job whose memory estimate exceeds the unit's largest class.

The unit here is a saved local one whose every size class holds 512 MiB (the least a class
may hold), so even a small job is too big for it; nothing may be written or started first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blocks.compute_unit import DEFAULT_LIMITS, SIZE_CLASSES, ComputeUnit, DaskWorkers
from flows.distributed_training import distributed_training
from flows.mr_reconstruction import mr_reconstruction
from flows.multinode_simulation import multinode_simulation
from tasks.errors import InputError
from tasks.simulation.mpi_simulate import PhantomSpec
from tasks.training.config import TrainingSettings
from tests.flows.test_distributed_training import TINY_UNET
from tests.flows.test_distributed_training import dataset as dataset  # the module fixture

TINY = "tiny-memory"


@pytest.fixture
def tiny_unit() -> str:
    """A saved local unit with 512 MiB in every size class; yields its block name."""
    limits = {
        size: {**DEFAULT_LIMITS[size].model_dump(), "memory_mib": 512} for size in SIZE_CLASSES
    }
    workers = dict.fromkeys(SIZE_CLASSES, DaskWorkers(n_workers=1, worker_cpu=1024, worker_mem=512))
    ComputeUnit(name="tiny", limits=limits, dask_workers=workers).save(TINY, overwrite=True)
    return TINY


def _written(root: Path) -> list[Path]:
    """Files in the unit's run directories (cleanup's record goes to audit/, beside them)."""
    return [p for p in (root / "runs" / "tiny").rglob("*") if p.is_file()]


def test_an_mr_job_past_the_largest_class_is_refused_before_any_output(
    tiny_unit, sciflow_dirs, tmp_path, rng
):
    """Guards against an MR job whose header says it needs more memory than any container
    of the unit being started anyway, to die out of memory after staging and writing."""
    signal = tmp_path / "signal.npy"
    np.save(signal, rng.standard_normal((32, 32, 2, 1)) + 1j * rng.standard_normal((32, 32, 2, 1)))
    noise = tmp_path / "noise.npy"
    np.save(noise, rng.standard_normal((100, 2)) + 1j * rng.standard_normal((100, 2)))
    output = tmp_path / "out"
    with pytest.raises(
        InputError,
        match=(
            r"^MR job of shape \(x, y, coils, slices, replicas\)=\(32, 32, 2, 1, 1\) "
            r"\(interpreter and libraries 0\.50 GiB, .*\): estimated 0\.50 GiB \(\d+ bytes\); "
            r"expected at most the 512 MiB of unit 'tiny''s largest size class 'small' "
            r"\(limits\.small\.memory_mib\)$"
        ),
    ):
        mr_reconstruction(
            signal=str(signal),
            noise=str(noise),
            options={"method": "ac", "recon": "rss"},
            output=str(output),
            unit=tiny_unit,
        )
    assert not output.exists()
    assert _written(sciflow_dirs) == []


def test_a_simulation_past_its_class_is_refused_before_its_spec_is_written(tiny_unit, sciflow_dirs):
    """Guards against a simulation whose spins and samples outgrow the node being launched
    (mpiexec or a Batch job) to run out of memory there."""
    with pytest.raises(
        InputError,
        match=(
            r"^simulation of \d+ spins \(matrix \(64, 64\), spins_per_voxel 3\) x 4096 ADC "
            r"samples x 8 coils, ranks_per_node=2: estimated \d\.\d\d GiB \(\d+ bytes\); "
            r"expected at most the 512 MiB of unit 'tiny''s largest size class 'large' "
            r"\(limits\.large\.memory_mib\)$"
        ),
    ):
        multinode_simulation(phantom=PhantomSpec(spins_per_voxel=3), unit=tiny_unit)
    assert not list(sciflow_dirs.glob("scratch/**/spec.json"))
    assert _written(sciflow_dirs) == []


def test_training_past_its_class_is_refused_before_its_config_is_written(
    tiny_unit, sciflow_dirs, dataset, tmp_path
):
    """Guards against training processes whose model and batches outgrow the node being
    started to run out of memory (or swap the shared worker) mid-run."""
    output = tmp_path / "out"
    with pytest.raises(
        InputError,
        match=(
            r"^training of model 'unet' with model_options=\{'width': 8, 'depth': 2\} on "
            r"batches of \(4, 1, 16, 16\), procs_per_node=2: estimated \d\.\d\d GiB "
            r"\(\d+ bytes\); expected at most the 512 MiB of unit 'tiny''s largest size "
            r"class 'large' \(limits\.large\.memory_mib\)$"
        ),
    ):
        distributed_training(
            dataset, settings=TrainingSettings(**TINY_UNET), output=str(output), unit=tiny_unit
        )
    assert not output.exists()
    assert _written(sciflow_dirs) == []


@pytest.mark.parametrize(
    ("nodes", "ranks_per_node", "match"),
    [
        (1, 256, r"^simulation of .*ranks_per_node=256: estimated "),  # past the cap check
        (1, 257, r"^nodes=1, ranks_per_node=257; expected nodes 1 to 256 and ranks_per_node"),
        (256, 1, r"^nodes=256 on the local unit 'tiny-memory'; expected 1"),  # past it
        (257, 1, r"^nodes=257, ranks_per_node=1; expected nodes 1 to 256 and ranks_per_node"),
    ],
)
def test_simulation_nodes_and_ranks_take_their_cap_and_refuse_one_more(
    tiny_unit, sciflow_dirs, nodes, ranks_per_node, match
):
    """Guards against a ranks_per_node that forks thousands of MPI processes on the worker,
    or a node count no Batch job should get. At the cap the flow goes on to its next check."""
    with pytest.raises(InputError, match=match):
        multinode_simulation(nodes=nodes, ranks_per_node=ranks_per_node, unit=tiny_unit)
    assert not list(sciflow_dirs.glob("scratch/**/spec.json"))
