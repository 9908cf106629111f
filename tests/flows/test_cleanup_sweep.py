"""The orphan sweep: runs that ended long enough ago are cleaned; running, recent, unknown not."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import boto3
import pytest
from prefect.states import Crashed, Running

from blocks.compute_unit import ComputeUnit, local_unit
from flows.cleanup_sweep import candidate_run_ids, cleanup_sweep
from flows.secure_cleanup import CleanupFailed
from tasks.aws.clients import AwsAccount
from tasks.aws.tags import RUN_ID_TAG
from tasks.cleanup import audit
from tasks.compute.launches import Launch, LaunchRecord, process_launch
from tasks.errors import InputError
from tasks.settings import get_settings
from tests.cleanup.flow_runs import make_flow_run

UNKNOWN = "0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b"  # well-formed, but no flow run has it


def _hold(run_id: str) -> dict[str, Path]:
    """Scratch and intermediates of ``run_id``, and a result beside them."""
    scratch = get_settings().scratch_root / run_id
    scratch.mkdir(parents=True)
    (scratch / "kspace.npy").write_bytes(b"patient data")
    run_dir = Path(local_unit().run_dir(run_id))
    (run_dir / "tmp").mkdir(parents=True)
    (run_dir / "tmp" / "slice-0.npy").write_bytes(b"slice")
    (run_dir / "snr.npy").write_bytes(b"result")
    return {"scratch": scratch / "kspace.npy", "tmp": run_dir / "tmp" / "slice-0.npy"}


@pytest.fixture
def sleeper():
    """A process in its own session, as a Batch job outlives a killed flow; killed after."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_ended_runs_are_cleaned_and_running_unknown_and_foreign_ones_left_alone(
    sciflow_dirs, sleeper
):
    crashed = make_flow_run(Crashed(message="process killed"))
    running = make_flow_run(Running())
    foreign = make_flow_run(parameters={"unit": "lab-b"})
    held = {run_id: _hold(run_id) for run_id in (crashed, running, UNKNOWN, foreign)}
    LaunchRecord.of_run(local_unit(), crashed).add(process_launch(sleeper.pid, "left running"))

    report = cleanup_sweep(older_than_hours=0)

    assert report.ids("cleaned") == [crashed]
    assert sorted(report.ids("left alone")) == sorted([running, UNKNOWN, foreign])
    reasons = {run.run_id: run.detail for run in report.runs}
    assert reasons[running] == "still Running"
    assert reasons[UNKNOWN] == "no such flow run on this Prefect API"
    assert reasons[foreign] == "ran on unit 'lab-b'"
    swept = next(run for run in report.runs if run.run_id == crashed)
    assert swept.held == ["launch record", "intermediates", "scratch"]

    assert sleeper.wait(timeout=30) is not None  # stopped through the launch record
    assert not held[crashed]["scratch"].exists()
    assert not held[crashed]["tmp"].exists()
    record = audit.verify(
        Path(swept.detail).read_text(), audit.audit_key(create=False)
    )  # the sealed record
    assert swept.detail == local_unit().audit_uri(crashed)
    assert record["ok"] is True
    for run_id in (running, UNKNOWN, foreign):
        assert all(path.exists() for path in held[run_id].values()), run_id
        assert not Path(local_unit().audit_uri(run_id)).exists()
    assert candidate_run_ids(local_unit()).keys() == {running, UNKNOWN, foreign}


def test_runs_that_ended_after_the_cutoff_are_left_alone(sciflow_dirs):
    ended = make_flow_run()
    held = _hold(ended)

    report = cleanup_sweep(older_than_hours=1)

    assert report.ids("left alone") == [ended]
    assert report.runs[0].detail.startswith("Completed at ")
    assert "after the cutoff" in report.runs[0].detail
    assert all(path.exists() for path in held.values())


def test_a_dry_run_lists_what_it_would_clean_and_runs_no_cleanup(sciflow_dirs):
    ended = make_flow_run()
    held = _hold(ended)

    report = cleanup_sweep(older_than_hours=0, dry_run=True)

    assert report.dry_run
    assert report.ids("would clean") == [ended]
    assert all(path.exists() for path in held.values())
    assert not Path(local_unit().audit_uri(ended)).exists()


def test_a_failed_cleanup_fails_the_sweep_after_the_others_ran(aws, sciflow_dirs):
    stuck, fine = make_flow_run(), make_flow_run()
    LaunchRecord.of_run(local_unit(), stuck).add(
        Launch(
            kind="ecs-task",
            id="arn:aws:ecs:us-east-1:123456789012:task/gone/0123",
            account=AwsAccount(region="us-east-1"),
            cluster="no-such-cluster",  # moto refuses: ClusterNotFoundException
        )
    )
    held = _hold(fine)

    with pytest.raises(CleanupFailed, match=rf"cleanup failed for 1 of 2 runs .*{stuck}"):
        cleanup_sweep(older_than_hours=0)

    assert not any(path.exists() for path in held.values())
    failed = json.loads(Path(local_unit().audit_uri(stuck)).read_text())
    assert failed["ok"] is False


def test_a_negative_age_is_refused(sciflow_dirs):
    with pytest.raises(InputError, match="older_than_hours=-1"):
        cleanup_sweep(older_than_hours=-1)


def test_an_aws_units_ended_run_is_found_by_its_tagged_resources_and_they_go(aws, sciflow_dirs):
    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="sweep-lab")
    unit = ComputeUnit(
        name="sweep-lab", platform="aws", region="us-east-1", storage_root="s3://sweep-lab/runs"
    )
    unit.save("sweep-lab")
    audit.audit_key(create=True)  # the workspace's key, made once by whoever runs the server
    ended = make_flow_run(Crashed(message="node lost"), parameters={"unit": "sweep-lab"})
    running = make_flow_run(Running(), parameters={"unit": "sweep-lab"})
    ec2 = boto3.client("ec2", region_name="us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    groups = {
        run_id: ec2.create_security_group(
            GroupName=f"dask-{run_id}",
            Description="a Dask cluster's, left behind",
            VpcId=vpc,
            TagSpecifications=[
                {"ResourceType": "security-group", "Tags": [{"Key": RUN_ID_TAG, "Value": run_id}]}
            ],
        )["GroupId"]
        for run_id in (ended, running)
    }

    report = cleanup_sweep(unit="sweep-lab", older_than_hours=0)

    assert report.ids("cleaned") == [ended]  # nothing but its tag said it held anything
    assert report.ids("left alone") == [running]
    assert next(r for r in report.runs if r.run_id == ended).held == ["1 tagged cloud resources"]
    left = {g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert groups[ended] not in left
    assert groups[running] in left
