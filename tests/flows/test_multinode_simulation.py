"""The multinode_simulation flow for real: mpiexec with 2 ranks here, AWS Batch in moto."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import nibabel as nib
import numpy as np
import pytest

from blocks.compute_unit import DEFAULT_LIMITS, ComputeUnit
from flows import multinode_simulation as module
from flows.mr_reconstruction import mr_reconstruction
from flows.multinode_simulation import multinode_simulation
from tasks.aws.clients import client as aws_client
from tasks.aws.tags import RUN_ID_TAG, UNIT_TAG
from tasks.compute.batch import ContainerSpec, ensure_job_definition, job_definition_spec
from tasks.errors import InputError
from tasks.mr.io import read_raw
from tasks.simulation import mpi
from tasks.simulation.mpi_simulate import PhantomSpec, SequenceSpec
from tasks.simulation.phantoms import SHEPP_LOGAN_TISSUES, shepp_logan
from tests.compute.moto_batch import (
    QUEUE,
    REGION,
    describe_node_properties,
    make_job_queue,
    record_calls,
)
from tests.compute.moto_batch import use_batch_without_docker as batch_without_docker

MATRIX = (32, 32)
PHANTOM = PhantomSpec(matrix=MATRIX, spins_per_voxel=1)
# T1-weighted spoiled GRE at its steady state: white matter well above CSF (Ernst). Ideal
# spoiling, since one spin per voxel cannot dephase under a spoiler gradient.
T1_GRE = SequenceSpec(
    builder="gre",
    params={"tr": 0.01, "te": 0.004, "flip_deg": 15, "dummy_scans": 150, "spoil": "ideal"},
)
BUCKET = "sciflow-sim"


def _mean_by_tissue(image: np.ndarray, names: list[str]) -> dict[str, float]:
    labels = shepp_logan(MATRIX).labels[..., 0]
    tissues = list(SHEPP_LOGAN_TISSUES)
    return {name: float(image[labels == tissues.index(name)].mean()) for name in names}


def test_two_ranks_write_mrd_that_reconstructs_to_the_expected_contrast(tmp_path):
    result = multinode_simulation(phantom=PHANTOM, sequence=T1_GRE, coils=4, ranks_per_node=2)

    assert result.ranks == 2
    assert result.spins == shepp_logan(MATRIX).n_spins
    assert result.adc_samples == MATRIX[0] * MATRIX[1]
    assert result.spin_samples_per_s > 0
    assert result.progress_updates >= 2  # each rank's final progress line reached the flow
    raw_path = Path(result.raw_uri)
    assert raw_path.name == "simulation.h5"
    raw = read_raw(raw_path)
    assert raw.signal.shape == (*MATRIX, 4, 1, 1)
    assert raw.noise is not None
    assert raw.noise.shape[1] == 4

    recon = mr_reconstruction(
        signal=result.raw_uri, options={"method": "ac", "recon": "b1"}, output=str(tmp_path / "r")
    )
    snr = nib.load(recon.snr).get_fdata()[..., 0]
    means = _mean_by_tissue(snr, ["white_matter", "csf"])
    # Ernst: WM (T1 0.6 s) ~0.053 M0 vs CSF (T1 4 s) ~0.018 M0 at TR 10 ms, 15 degrees.
    assert means["white_matter"] > 2 * means["csf"], means
    assert means["csf"] > 3  # well above the noise


def test_an_explicit_output_directory_gets_the_raw_data(tmp_path):
    result = multinode_simulation(
        phantom=PhantomSpec(matrix=(8, 8)), coils=2, ranks_per_node=2, output=str(tmp_path / "o")
    )
    assert result.raw_uri == str(tmp_path / "o" / "simulation.h5")
    assert Path(result.raw_uri).is_file()


def test_more_ranks_than_spins_is_refused_before_launching(sciflow_dirs):
    with pytest.raises(InputError, match="4 MPI ranks for a phantom of 1 spins"):
        multinode_simulation(phantom=PhantomSpec(matrix=(2, 2)), ranks_per_node=4)
    assert not list((sciflow_dirs / "runs").rglob("simulation.h5"))


def test_negative_t1_in_nifti_maps_is_refused_naming_the_map(tmp_path):
    shape = (8, 8)
    paths = {}
    for name, value in (("pd", 1.0), ("t1", -1.0), ("t2", 0.1)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(np.full(shape, value, dtype=np.float32), np.eye(4)), paths[name])
    with pytest.raises(InputError, match=r"t1 map .*t1\.nii\.gz has negative values"):
        multinode_simulation(phantom=PhantomSpec(kind="nifti", **paths))


def test_an_unknown_builder_is_refused(sciflow_dirs):
    with pytest.raises(InputError, match="sequence builder 'radial'"):
        multinode_simulation(phantom=PHANTOM, sequence=SequenceSpec(builder="radial"))


def test_a_missing_mpiexec_is_refused_with_how_to_install_it(monkeypatch):
    monkeypatch.setattr(mpi, "MPIEXEC", "mpiexec-that-is-not-installed")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(InputError, match="pip install mpich"):
        multinode_simulation(phantom=PHANTOM)


def test_on_aws_a_multinode_batch_job_is_submitted_with_node_ranges_and_run_tags(aws, monkeypatch):
    """moto finishes the job at once and runs nothing: only the submission is checked."""
    batch_without_docker(aws)
    describe_node_properties(monkeypatch)
    make_job_queue(QUEUE)
    batch = boto3.client("batch", region_name=REGION)
    token = boto3.client("secretsmanager", region_name=REGION).create_secret(
        Name="sciflow/run-token/sim-aws", SecretString="t" * 64
    )["ARN"]
    container = ContainerSpec(image="repo/sciflow:sim", secrets=(("SCIFLOW_RUN_TOKEN", token),))
    spec = job_definition_spec(container, node_count=2)
    definition, _ = ensure_job_definition(batch, spec)
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    ComputeUnit(
        name="sim-aws",
        platform="aws",
        region=REGION,
        storage_root=f"s3://{BUCKET}/runs",
        writable_prefixes=[f"s3://{BUCKET}/sim"],
        batch_job_queue=QUEUE,
        batch_job_definitions={"simulation": definition},
        limits={"multinode": {**DEFAULT_LIMITS["multinode"].model_dump(), "wall_time_s": 5400}},
    ).save("sim-aws", overwrite=True)
    output = f"s3://{BUCKET}/sim"
    # What the job's rank 0 would have written (moto's Batch runs no container).
    boto3.client("s3", region_name=REGION).put_object(
        Bucket=BUCKET, Key="sim/simulation.h5", Body=b"mrd"
    )
    from tasks.compute import batch_run

    calls: list[tuple[str, dict[str, Any]]] = []
    real_submit = batch_run.submit_job

    def recording_submit(client: Any, **kwargs: Any) -> Any:
        recorded = record_calls(client)
        job = real_submit(client, **kwargs)
        calls.extend(recorded)
        return job

    monkeypatch.setattr(batch_run, "submit_job", recording_submit)
    monkeypatch.setattr(module, "BATCH_POLL_S", 0.2)

    result = multinode_simulation(
        phantom=PHANTOM, coils=2, nodes=2, ranks_per_node=2, output=output, unit="sim-aws"
    )

    assert result.raw_uri == f"{output}/simulation.h5"
    assert result.ranks == 4
    (submitted,) = [params for name, params in calls if name == "SubmitJob"]
    assert submitted["jobQueue"].endswith(f"job-queue/{QUEUE}")
    assert submitted["jobDefinition"] == definition
    assert submitted["propagateTags"] is True
    # Batch stops the job at the unit's multinode wall time, even if this flow is killed.
    assert submitted["timeout"] == {"attemptDurationSeconds": 5400}
    assert submitted["tags"][UNIT_TAG] == "sim-aws"
    run_id = submitted["tags"][RUN_ID_TAG]
    overrides = submitted["nodeOverrides"]
    assert overrides["numNodes"] == 2
    ranges = [o["targetNodes"] for o in overrides["nodePropertyOverrides"]]
    assert ranges == ["0:0", "1:1"]
    command = overrides["nodePropertyOverrides"][0]["containerOverrides"]["command"]
    assert command[:5] == ["python", "-m", "tasks.simulation.multinode", "--slots", "2"]
    rank_program = command[command.index("--") + 1 :]
    assert rank_program[:5] == ["python", "-m", "mpi4py", "-m", "tasks.simulation.mpi_simulate"]
    spec_uri = rank_program[rank_program.index("--spec") + 1]
    assert spec_uri == f"s3://{BUCKET}/runs/sim-aws/{run_id}/simulation/spec.json"
    assert rank_program[rank_program.index("--out") + 1] == result.raw_uri
    spec_text = (
        boto3.client("s3", region_name=REGION)
        .get_object(Bucket=BUCKET, Key=spec_uri.removeprefix(f"s3://{BUCKET}/"))["Body"]
        .read()
    )
    assert b'"coils": 2' in spec_text
    (summary,) = batch.list_jobs(jobQueue=QUEUE, jobStatus="SUCCEEDED")["jobSummaryList"]
    (job,) = batch.describe_jobs(jobs=[summary["jobId"]])["jobs"]
    assert job["tags"][RUN_ID_TAG] == run_id  # what Batch propagates to the nodes' tasks
    assert job["timeout"] == {"attemptDurationSeconds": 5400}


def test_a_multinode_job_without_the_token_secret_is_refused_before_submitting(aws, monkeypatch):
    """Guards against nodes started without the run token: their control channel could not
    authenticate, so the flow refuses the unit's definition before anything is submitted."""
    batch_without_docker(aws)
    describe_node_properties(monkeypatch)
    make_job_queue(QUEUE)
    batch = boto3.client("batch", region_name=REGION)
    spec = job_definition_spec(ContainerSpec(image="repo/sciflow:sim"), node_count=2)
    definition, _ = ensure_job_definition(batch, spec)
    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    ComputeUnit(
        name="sim-no-token",
        platform="aws",
        region=REGION,
        storage_root=f"s3://{BUCKET}/runs",
        batch_job_queue=QUEUE,
        batch_job_definitions={"simulation": definition},
    ).save("sim-no-token", overwrite=True)
    with pytest.raises(InputError, match="gives its containers no SCIFLOW_RUN_TOKEN"):
        multinode_simulation(phantom=PHANTOM, coils=2, nodes=2, unit="sim-no-token")
    assert not batch.list_jobs(jobQueue=QUEUE, jobStatus="SUBMITTED")["jobSummaryList"]
    assert not batch.list_jobs(jobQueue=QUEUE, jobStatus="SUCCEEDED")["jobSummaryList"]


def test_the_stop_hook_terminates_the_recorded_batch_job(aws, tmp_path, monkeypatch):
    """moto ignores TerminateJob for finished jobs: the call itself is what is checked."""
    from tasks.compute import launches
    from tasks.compute.launches import Launch, LaunchRecord
    from tasks.storage.objects import ObjectStore

    batch_without_docker(aws)
    make_job_queue(QUEUE)
    batch = aws_client("batch", region=REGION)
    spec = job_definition_spec(ContainerSpec(image="repo/sciflow:sim"))
    definition, _ = ensure_job_definition(batch, spec)
    job_id = batch.submit_job(jobName="sim", jobQueue=QUEUE, jobDefinition=definition)["jobId"]
    calls = record_calls(batch)
    run_id = "11111111-2222-3333-4444-555555555555"
    root = str(tmp_path / run_id)
    LaunchRecord(ObjectStore(), root).add(Launch(kind="batch-job", id=job_id))
    monkeypatch.setattr(launches, "client", lambda service, account=None: batch)

    # A fresh record, as the hook's process would read it.
    LaunchRecord(ObjectStore(), root).stop_all(f"Prefect flow run {run_id} was cancelling")

    (terminate,) = [params for name, params in calls if name == "TerminateJob"]
    assert terminate["jobId"] == job_id
    assert run_id in terminate["reason"]
    assert LaunchRecord(ObjectStore(), root).launches() == []
