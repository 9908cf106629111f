"""Every flow refuses, before it reads, writes or starts anything, a path its unit may not reach.

Two confined units: ``box``, a local unit with ``confined=True`` whose storage root and one
readable prefix are temporary directories, and ``lab``, an AWS unit on moto's S3 that may
read and write only ``s3://lab/runs``. The built-in ``local`` unit stays unrestricted: the
other flow tests read and write anywhere under their temporary directories.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest

from blocks.compute_unit import ComputeUnit
from flows.distributed_training import distributed_training
from flows.model_upload import model_upload
from flows.mr_reconstruction import mr_reconstruction
from flows.multinode_simulation import multinode_simulation
from flows.pipeline import research_pipeline
from tasks.errors import InputError
from tasks.simulation.mpi_simulate import PhantomSpec, SequenceSpec
from tasks.training.data import write_synthetic_set

REGION = "us-east-1"
TRAINING = {"model": "linear", "procs_per_node": 1, "batch_size": 8}


class Box:
    """The ``box`` unit's directories: ``root`` (storage root), ``data`` (readable), ``away``."""

    def __init__(self, tmp: Path) -> None:
        self.root, self.data, self.away = tmp / "root", tmp / "data", tmp / "away"
        for folder in (self.root, self.data, self.away):
            folder.mkdir()
        np.save(self.away / "signal.npy", np.ones((8, 8, 2), np.complex64))
        (self.away / "secret.txt").write_text("not the run's")


@pytest.fixture
def box(tmp_path: Path) -> Box:
    made = Box(tmp_path)
    ComputeUnit(
        name="box", confined=True, storage_root=str(made.root), readable_prefixes=[str(made.data)]
    ).save("box", overwrite=True)
    return made


@pytest.fixture
def lab(aws: str) -> Any:
    """The ``lab`` AWS unit; buckets ``lab`` (its root's) and ``other`` with a signal in it."""
    s3 = boto3.client("s3", region_name=REGION)
    for bucket in ("lab", "other"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket="other", Key="signal.npy", Body=b"not the run's")
    ComputeUnit(name="lab", platform="aws", region=REGION, storage_root="s3://lab/runs").save(
        "lab", overwrite=True
    )
    return s3


def keys(s3: Any, bucket: str) -> list[str]:
    """Keys in ``bucket``, but for the cleanup record the failed run's hook leaves."""
    listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
    return [o["Key"] for o in listed if not o["Key"].startswith("runs/audit/")]


def nothing_staged(sciflow_dirs: Path) -> bool:
    scratch = sciflow_dirs / "scratch"
    return not scratch.exists() or not any(p.is_file() for p in scratch.rglob("*"))


def one_line(caught: pytest.ExceptionInfo[InputError]) -> str:
    assert "\n" not in str(caught.value)
    return str(caught.value)


# --- mr_reconstruction ----------------------------------------------------------------------


def test_a_signal_outside_a_confined_local_unit_is_refused_before_it_is_read(box, sciflow_dirs):
    """Guards against a run on a shared machine reading any file the worker can."""
    signal = str(box.away / "signal.npy")
    with pytest.raises(InputError) as caught:
        mr_reconstruction(signal=signal, output=str(box.root / "out"), unit="box")
    assert one_line(caught) == (
        f"signal={signal!r}: compute unit 'box' may not read it; expected a path under "
        f"[{str(box.root)!r}, {str(box.data)!r}]"
    )
    assert not (box.root / "out").exists()
    assert nothing_staged(sciflow_dirs)


def test_a_signal_symlink_inside_the_prefix_that_points_out_is_refused(box):
    """Guards against a link under a readable prefix leading to a file outside it."""
    link = box.data / "scan.npy"
    link.symlink_to(box.away / "signal.npy")
    with pytest.raises(InputError, match=r"signal='.*/data/scan\.npy'.*resolves to .*/away/"):
        mr_reconstruction(signal=str(link), output=str(box.root / "out"), unit="box")
    assert not (box.root / "out").exists()


def test_an_output_outside_a_confined_local_unit_is_refused_before_anything_is_written(box):
    """Guards against a run overwriting files outside its unit's writable prefixes."""
    shutil.copy(box.away / "signal.npy", box.data / "signal.npy")
    out = box.away / "out"
    with pytest.raises(InputError, match=rf"output='{out}': compute unit 'box' may not write"):
        mr_reconstruction(signal=str(box.data / "signal.npy"), output=str(out), unit="box")
    assert not out.exists()


def test_dot_dot_out_of_the_storage_root_is_refused_for_output(box):
    """Guards against ``<root>/../away`` passing as a path under the storage root."""
    shutil.copy(box.away / "signal.npy", box.data / "signal.npy")
    out = f"{box.root}/../away/out"
    with pytest.raises(InputError, match=r"output='.*/root/\.\./away/out'.*resolves to"):
        mr_reconstruction(signal=str(box.data / "signal.npy"), output=out, unit="box")
    assert not (box.away / "out").exists()


def test_an_aws_unit_refuses_a_signal_in_another_bucket_before_any_transfer(lab, sciflow_dirs):
    """Guards against a run reading any bucket the unit's role can reach."""
    with pytest.raises(InputError) as caught:
        mr_reconstruction(signal="s3://other/signal.npy", unit="lab")
    assert one_line(caught) == (
        "signal='s3://other/signal.npy': compute unit 'lab' may not read it; expected a path "
        "under ['s3://lab/runs']"
    )
    assert nothing_staged(sciflow_dirs)
    assert keys(lab, "lab") == []


def test_an_aws_unit_refuses_output_to_another_bucket_and_creates_no_object(lab):
    """Guards against a run writing (or overwriting) objects in another bucket."""
    lab.put_object(Bucket="lab", Key="runs/in/signal.npy", Body=b"npy")
    with pytest.raises(InputError, match=r"output='s3://other/maps': .* may not write"):
        mr_reconstruction(
            signal="s3://lab/runs/in/signal.npy", output="s3://other/maps", unit="lab"
        )
    assert keys(lab, "other") == ["signal.npy"]


def test_an_aws_unit_refuses_a_prefix_that_matches_only_as_a_string(lab):
    """Guards against ``s3://lab/runs`` admitting ``s3://lab/runs-of-others/...``."""
    with pytest.raises(InputError, match=r"signal='s3://lab/runs-of-others/s\.npy'"):
        mr_reconstruction(signal="s3://lab/runs-of-others/s.npy", unit="lab")


def test_an_aws_unit_refuses_a_key_that_climbs_out_with_dot_dot(lab):
    """Guards against ``s3://lab/runs/../x``: a key under the prefix as a string only."""
    with pytest.raises(InputError, match=r"S3 key has '\.\.' segments"):
        mr_reconstruction(signal="s3://lab/runs/../private/s.npy", unit="lab")


def test_a_file_named_inside_an_mroptimum_job_is_checked_too(lab):
    """Guards against the job's own file references bypassing the check on ``signal``."""
    signal = {"type": "s3", "bucket": "other", "key": "signal.npy", "vendor": "numpy"}
    job = {
        "version": "v0",
        "acquisition": 2,
        "type": "SNR",
        "id": 0,
        "name": "AC",
        "options": {
            "reconstructor": {
                "type": "recon",
                "id": 1,
                "name": "RSS",
                "options": {"signal": {"type": "file", "options": signal}},
            }
        },
    }
    with pytest.raises(
        InputError, match=r"options \(MR Optimum job\) signal='s3://other/signal\.npy'"
    ):
        mr_reconstruction(options=job, unit="lab")


def test_a_flip_angle_map_outside_is_refused(box):
    """Guards against reading any NIfTI file through options.flip_angle_map."""
    shutil.copy(box.away / "signal.npy", box.data / "signal.npy")
    options = {"flip_angle_correction": True, "flip_angle_map": str(box.away / "fa.nii")}
    with pytest.raises(InputError, match=r"options\.flip_angle_map='.*/away/fa\.nii'"):
        mr_reconstruction(signal=str(box.data / "signal.npy"), options=options, unit="box")


# --- multinode_simulation -------------------------------------------------------------------


def test_a_seq_file_outside_is_refused_before_it_is_parsed(box):
    """Guards against a simulation reading any file through ``sequence.seq``."""
    seq = box.away / "secret.txt"
    with pytest.raises(InputError, match=r"sequence\.seq='.*/away/secret\.txt'.*may not read"):
        multinode_simulation(sequence=SequenceSpec(seq=str(seq)), unit="box")


def test_nifti_maps_outside_are_refused(box):
    """Guards against a simulation reading any file through the phantom's NIfTI maps."""
    maps = {name: str(box.away / f"{name}.nii") for name in ("pd", "t1", "t2")}
    with pytest.raises(InputError, match=r"phantom\.pd='.*/away/pd\.nii'"):
        multinode_simulation(phantom=PhantomSpec(kind="nifti", **maps), unit="box")


def test_an_aws_simulation_refuses_output_to_another_bucket(lab):
    """Guards against the Batch job writing simulation.h5 into another bucket."""
    with pytest.raises(InputError, match=r"output='s3://other/sim'.*may not write"):
        multinode_simulation(output="s3://other/sim", unit="lab")
    assert keys(lab, "other") == ["signal.npy"]
    assert keys(lab, "lab") == []


# --- distributed_training -------------------------------------------------------------------


def test_a_dataset_outside_is_refused(box):
    """Guards against training on (and so reading) any directory the worker can."""
    write_synthetic_set(str(box.away / "set"), train=8, validation=2, size=8, seed=1)
    with pytest.raises(InputError, match=r"dataset='.*/away/set'.*may not read"):
        distributed_training(str(box.away / "set"), settings=TRAINING, unit="box")
    assert not (box.root / "box").exists()


def test_a_sample_file_symlinked_out_of_the_dataset_is_refused_before_training(box):
    """Guards against a data set inside the prefix whose files lead outside it."""
    dataset = box.data / "set"
    write_synthetic_set(str(dataset), train=8, validation=2, size=8, seed=1)
    sample = sorted(dataset.rglob("*.npy"))[0]
    shutil.move(sample, box.away / "sample.npy")
    sample.symlink_to(box.away / "sample.npy")
    with pytest.raises(InputError, match=rf"dataset='{sample}'.*resolves to .*/away/sample"):
        distributed_training(str(dataset), settings=TRAINING, unit="box")
    assert not any((box.root / "box").rglob("model.pt"))


def test_a_training_output_outside_is_refused(box):
    """Guards against training writing checkpoints and model outside the unit's prefixes."""
    write_synthetic_set(str(box.data / "set"), train=8, validation=2, size=8, seed=1)
    out = box.away / "train"
    with pytest.raises(InputError, match=r"output='.*/away/train'.*may not write"):
        distributed_training(str(box.data / "set"), settings=TRAINING, output=str(out), unit="box")
    assert not out.exists()


# --- model_upload ---------------------------------------------------------------------------


def test_a_model_source_outside_is_refused(box):
    """Guards against publishing (copying into the registry) any file the worker can read."""
    with pytest.raises(InputError, match=r"source='.*/away/secret\.txt'.*may not read"):
        model_upload(source=str(box.away / "secret.txt"), model_name="m", unit="box")
    assert not (box.root / "registry").exists()


def test_a_symlink_in_a_model_source_that_points_out_is_refused(box):
    """Guards against a source directory inside the prefix carrying a file from outside."""
    source = box.data / "model"
    source.mkdir()
    (source / "model.pt").write_bytes(b"weights")
    (source / "notes.txt").symlink_to(box.away / "secret.txt")
    with pytest.raises(InputError, match=r"source='.*/model/notes\.txt'.*resolves to .*/away/"):
        model_upload(source=str(source), model_name="m", unit="box")
    assert not (box.root / "registry").exists()


def test_a_registry_outside_is_refused(box):
    """Guards against publishing into a registry root outside the writable prefixes."""
    (box.data / "model.pt").write_bytes(b"weights")
    registry = box.away / "registry"
    with pytest.raises(InputError, match=r"registry='.*/away/registry'.*may not write"):
        model_upload(
            source=str(box.data / "model.pt"), model_name="m", registry=str(registry), unit="box"
        )
    assert not registry.exists()


# --- research_pipeline ----------------------------------------------------------------------


def test_the_pipeline_refuses_a_signal_outside_before_its_first_stage(box):
    """Guards against the passthrough reaching reconstruction after other stages ran."""
    with pytest.raises(InputError, match=r"signal='.*/away/signal\.npy'.*may not read"):
        research_pipeline(unit="box", signal=str(box.away / "signal.npy"))
    assert not (box.root / "box").exists()  # no stage (not even preflight) wrote anything


def test_the_pipeline_refuses_a_bad_model_name_before_its_first_stage(box):
    """Guards against a model name with path parts reaching the registry after hours of work."""
    with pytest.raises(InputError, match=r"model name '\.\./x' is invalid"):
        research_pipeline(unit="box", model_name="../x")
    assert not (box.root / "box").exists()
