"""Finding runs that still hold something: launch records, intermediates, scratch."""

from __future__ import annotations

import boto3

from blocks.compute_unit import local_unit
from tasks.cleanup.orphans import held_in_scratch, runs_holding
from tasks.settings import get_settings

RUN_A = "0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b"
RUN_B = "7d1f0a55-2c9e-4b8a-a3f1-5e6d7c8b9a01"
RUN_C = "5a4e3c2b-1d0f-4e9a-8b7c-6d5e4f3a2b1c"


def test_local_runs_holding_a_launch_record_or_intermediates_are_found(sciflow_dirs):
    unit = local_unit()
    root = sciflow_dirs / "runs" / "local"
    (root / RUN_A / "launches").mkdir(parents=True)
    (root / RUN_A / "launches" / "process-0123.json").write_text("{}")
    (root / RUN_B / "tmp" / "slices").mkdir(parents=True)
    (root / RUN_B / "tmp" / "slices" / "0.npy").write_bytes(b"x")
    (root / RUN_C / "launches").mkdir(parents=True)  # empty: holds nothing
    (root / RUN_C / "snr.npy").write_bytes(b"result")  # results are not held
    (root / "not-a-run" / "tmp").mkdir(parents=True)
    (root / "not-a-run" / "tmp" / "x.npy").write_bytes(b"x")

    assert runs_holding(unit, ("launches", "tmp")) == {RUN_A: ["launches"], RUN_B: ["tmp"]}


def test_runs_under_an_s3_root_are_listed_by_prefix(aws):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="lab")
    s3.put_object(Bucket="lab", Key=f"runs/local/{RUN_A}/tmp/0.npy", Body=b"x")
    s3.put_object(Bucket="lab", Key=f"runs/local/{RUN_B}/launches/batch-job-1.json", Body=b"{}")
    s3.put_object(Bucket="lab", Key=f"runs/local/{RUN_C}/snr.nii.gz", Body=b"result")
    s3.put_object(Bucket="lab", Key=f"runs/other/{RUN_C}/tmp/0.npy", Body=b"another unit's")
    unit = local_unit().model_copy(update={"storage_root": "s3://lab/runs"})

    assert runs_holding(unit, ("launches", "tmp")) == {RUN_A: ["tmp"], RUN_B: ["launches"]}


def test_scratch_named_by_run_ids_is_found_and_symlinks_are_not(sciflow_dirs, tmp_path):
    scratch = get_settings().scratch_root
    (scratch / RUN_A).mkdir(parents=True)
    (scratch / "notes").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (scratch / RUN_B).symlink_to(outside)

    assert held_in_scratch() == {RUN_A}


def test_nothing_is_found_where_nothing_was_written(sciflow_dirs):
    assert runs_holding(local_unit(), ("launches", "tmp")) == {}
    assert held_in_scratch() == set()
