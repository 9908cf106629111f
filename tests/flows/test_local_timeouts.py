"""Local mpiexec and torchrun runs stop at the flow's timeout_s: real processes, killed.

Each flow is given a limit far shorter than its processes take to start (Python, NumPy or
torch imports), so it must stop them; then no process of the run is left.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flows.distributed_training import distributed_training
from flows.multinode_simulation import multinode_simulation
from tasks.errors import InputError, SciflowError
from tasks.simulation.mpi_simulate import PhantomSpec
from tests.flows.test_distributed_training import TINY_UNET, _reading
from tests.flows.test_distributed_training import dataset as dataset  # the module fixture

TINY_TIMEOUT_S = 0.3
DEADLINE_S = 30.0


def _none_left(root: Path) -> None:
    """Poll until no process names a path under ``root`` (SIGTERM takes a moment)."""
    deadline = time.monotonic() + DEADLINE_S
    while (left := _reading(root)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == [], f"processes of the run still alive: {left}"


def test_a_local_mpi_simulation_past_its_timeout_is_stopped_with_its_ranks(sciflow_dirs):
    started = time.monotonic()
    with pytest.raises(
        SciflowError,
        match=r"the local MPI simulation ran past its limit of 0\.3 s \(the flow's timeout_s\)",
    ):
        multinode_simulation(
            phantom=PhantomSpec(matrix=(8, 8)), ranks_per_node=2, timeout_s=TINY_TIMEOUT_S
        )
    assert time.monotonic() - started < DEADLINE_S
    _none_left(sciflow_dirs)


def test_a_simulation_timeout_above_the_wall_time_is_refused_before_launching(sciflow_dirs):
    with pytest.raises(InputError, match=r"timeout_s=1e\+06: .*'large' wall time"):
        multinode_simulation(phantom=PhantomSpec(matrix=(8, 8)), timeout_s=1e6)
    assert not list(sciflow_dirs.glob("scratch/**/spec.json"))


def test_local_torchrun_past_its_timeout_is_stopped_with_its_ranks(tmp_path, dataset):
    output = tmp_path / "out"
    with pytest.raises(
        SciflowError, match=r"ddp training ran past its limit of 0\.3 s \(the flow's timeout_s\)"
    ):
        distributed_training(
            dataset, settings=TINY_UNET, output=str(output), timeout_s=TINY_TIMEOUT_S
        )
    assert (output / "config.json").exists()  # the processes were started
    _none_left(output)
