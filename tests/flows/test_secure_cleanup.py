"""The secure-cleanup flow: bad run ids touch nothing; a launch it cannot stop fails it."""

from __future__ import annotations

import json

import pytest

from blocks.compute_unit import local_unit
from flows.secure_cleanup import secure_cleanup
from tasks.aws.clients import AwsAccount
from tasks.compute.launches import Launch, LaunchRecord
from tasks.errors import InputError
from tasks.settings import get_settings

RUN_ID = "0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b"


@pytest.mark.parametrize("run_id", ["", "/", "../x"])
def test_a_bad_run_id_fails_the_flow_before_anything_is_touched(run_id, sciflow_dirs):
    scratch = get_settings().scratch_root
    (scratch / RUN_ID).mkdir(parents=True)
    (scratch / RUN_ID / "kspace.npy").write_bytes(b"data")
    with pytest.raises(InputError, match="is not a flow-run id"):
        secure_cleanup(run_id=run_id)
    assert (scratch / RUN_ID / "kspace.npy").exists()


def test_a_launch_that_cannot_be_stopped_fails_its_check(aws, sciflow_dirs):
    unit = local_unit()
    record = LaunchRecord.of_run(unit, RUN_ID)
    record.add(
        Launch(
            kind="ecs-task",
            id="arn:aws:ecs:us-east-1:123456789012:task/gone/0123",
            account=AwsAccount(region="us-east-1"),
            cluster="no-such-cluster",  # moto refuses: ClusterNotFoundException
            label="dask-worker-0",
        )
    )

    result = secure_cleanup(run_id=RUN_ID)

    assert not result.ok
    checks = json.loads((sciflow_dirs / "runs" / "local" / RUN_ID / "cleanup.json").read_text())
    stopped = next(c for c in checks["checks"] if c["name"] == "launches stopped")
    assert not stopped["ok"]
    assert "ClusterNotFoundException" in stopped["detail"]
    assert len(record.launches()) == 1  # kept for the next try
