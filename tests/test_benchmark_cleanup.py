"""Plumbing of benchmarks/cleanup.py: both deletes really empty tmp/, and the record's shape.

No speed is asserted: the figures depend on the machine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest

import benchmarks._common
from benchmarks import cleanup


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> None:
    """Overrides the suite's Prefect harness: nothing here calls Prefect."""


def test_both_ways_empty_tmp_and_keep_the_result():
    calls: list[str] = []
    before = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL", *benchmarks._common.FAKE_AWS)}
    with cleanup.moto_s3():
        s3 = boto3.client("s3")
        s3.meta.events.register("before-call.s3.*", lambda model, **_: calls.append(model.name))
        bucket, prefix = cleanup._prefix(cleanup.RUN_DIR)
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        for delete in (cleanup.delete_batched, cleanup.delete_one_by_one):
            listed = cleanup.litter(cleanup.RUN_DIR, 2003)
            assert len(listed) == 2003
            assert len({version for _, version in listed}) == 2003
            assert all(key.startswith(prefix) for key, _ in listed)
            calls.clear()
            delete(s3, bucket, listed)
            counts = {name: calls.count(name) for name in set(calls)}
            assert cleanup.left_under(s3, cleanup.RUN_DIR) == (0, True)
            if delete is cleanup.delete_batched:
                assert counts == {"DeleteObjects": 3}
            else:
                assert counts == {"DeleteObject": 2003}
    assert {k: os.environ.get(k) for k in before} == before  # the environment restored


def test_quick_run_writes_a_record_with_the_speedup(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(benchmarks._common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(cleanup, "VERSIONS_QUICK", 200)
    monkeypatch.setattr(cleanup, "SWEEP_COUNTS_QUICK", (10, 30))

    assert cleanup.main(["--quick", "--repeats", "1"]) == 0

    record = json.loads((tmp_path / "results" / "cleanup.json").read_text())
    metric = record["metrics"]["delete_versions"]
    assert metric["unit"] == "versions/s"
    assert metric["baseline_name"] == "one DeleteObject call per version"
    assert metric["ratio"] == pytest.approx(metric["ours"] / metric["baseline"])
    assert metric["goal"] == ">= 50x"
    assert record["deletes"]["versions"] == 200
    assert len(record["deletes"]["batched_s"]) == len(record["deletes"]["one_by_one_s"]) == 1
    sweep = record["metrics"]["sweep_30"]
    assert sweep["unit"] == "ms/resource"
    assert sweep["baseline_name"] == "ms per resource in a sweep of 10"
    assert record["sweep"]["resources_per_run"] == cleanup.RESOURCES_PER_RUN
    assert set(record["sweep"]["seconds"]) == {"10", "30"}
