"""A run's final outputs are written once: a rerun into them succeeds only with the same result.

MR reconstruction (maps, previews, info.json), training's model files and the simulation's
MRD file go through ``put_once``; these tests rerun each into an output that holds a result.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from blocks.compute_unit import local_unit
from flows.mr_reconstruction import mr_reconstruction
from flows.multinode_simulation import publish_raw
from tasks.compute.run_context import RunContext
from tasks.errors import AlreadyExists
from tasks.mr.io import write_mrd
from tasks.mr.phantom import make_phantom, phantom_acquisition
from tasks.storage.objects import ObjectStore
from tasks.training.outputs import save_model

SPEC = {"name": "linear", "options": {}}


@pytest.fixture
def mrd_file(tmp_path: Path) -> Path:
    phantom = make_phantom(32, 32, 4, amplitude=40.0, correlation=0.3, seed=5)
    signal, noise = phantom_acquisition(phantom, slices=1, noise_samples=32 * 200, seed=6)
    return write_mrd(
        tmp_path / "phantom.h5", signal, noise, fov_mm=(256.0, 256.0, 5.0), dwell_s=5e-6
    )


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_an_mr_rerun_into_the_same_output_keeps_it_and_other_options_are_refused(
    mrd_file: Path, tmp_path: Path
) -> None:
    """Guards against a second run overwriting a finished run's maps and info.json.

    The same job twice into one ``output`` succeeds and leaves the first run's files as they
    were (its info.json, with its run id, is kept); the job with other options is refused
    before any work, naming the output and the option that differs, and nothing changes.
    """
    output = tmp_path / "snr"
    options = {"method": "ac", "recon": "b1"}

    first = mr_reconstruction(signal=str(mrd_file), options=options, output=str(output))
    written = _files(output)
    again = mr_reconstruction(signal=str(mrd_file), options=options, output=str(output))

    assert again.median_snr == first.median_snr
    assert _files(output) == written
    assert json.loads(written["info.json"])["sciflow"]["options"]["method"] == "ac"
    refused = f"cannot write {output}/info.json: .* recon='b1' \\(this job: 'rss'\\)"
    with pytest.raises(AlreadyExists, match=refused):
        mr_reconstruction(
            signal=str(mrd_file), options={**options, "recon": "rss"}, output=str(output)
        )
    assert _files(output) == written


def test_a_trained_model_is_not_replaced_by_another_run_s(tmp_path: Path) -> None:
    """Guards against a later training run into the same output replacing the model."""
    torch.manual_seed(0)
    first = torch.nn.Linear(3, 2)
    written = save_model(first, SPEC, str(tmp_path))
    before = {name: Path(uri).read_bytes() for name, uri in written.items()}

    with pytest.raises(AlreadyExists, match=r"model/model\.pt: it exists with other content"):
        save_model(torch.nn.Linear(3, 2), SPEC, str(tmp_path))

    assert {name: Path(uri).read_bytes() for name, uri in written.items()} == before


def test_a_run_resumed_from_the_output_carries_its_model_on(tmp_path: Path) -> None:
    """A run resumed from this output's checkpoints (``continued``) replaces its final model.

    It is the same training carried on (tests/training/test_parameter_server.py resumes one).
    """
    torch.manual_seed(0)
    save_model(torch.nn.Linear(3, 2), SPEC, str(tmp_path))
    later = torch.nn.Linear(3, 2)
    written = save_model(later, SPEC, str(tmp_path), continued=True)

    state = torch.load(written["state_dict"], weights_only=True)
    assert torch.equal(state["weight"], later.weight.detach())


def test_the_simulation_output_is_published_once(tmp_path: Path) -> None:
    """Guards against a rerun's MRD file replacing another run's simulation.h5.

    Publishing the same file again (a retried task) succeeds; another file is refused.
    """
    run = RunContext(unit=local_unit(), run_id="r", flow="f", store=ObjectStore())
    target = str(tmp_path / "out" / "simulation.h5")
    local, other = tmp_path / "a.h5", tmp_path / "b.h5"
    local.write_bytes(b"raw one")
    other.write_bytes(b"raw two")

    assert publish_raw.fn(run, str(local), target) == target
    assert publish_raw.fn(run, str(local), target) == target
    with pytest.raises(AlreadyExists, match=r"simulation\.h5: it exists with other content"):
        publish_raw.fn(run, str(other), target)
    assert Path(target).read_bytes() == b"raw one"
