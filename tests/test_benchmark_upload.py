"""Plumbing of benchmarks/upload.py: one tiny real run against moto, and its JSON record.

No speed is asserted: the figures depend on the machine. The run is shrunk to a 12 MiB file
in 5 MiB parts (still a multipart upload) so it takes seconds.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import benchmarks._common
from benchmarks import upload

MIB = 1024 * 1024


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> None:
    """Overrides the suite's Prefect harness: nothing here calls Prefect (saves ~10 s)."""


def test_quick_run_times_every_case_and_records_ratios(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(benchmarks._common, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(upload, "SIZE_QUICK", 12 * MIB)
    monkeypatch.setattr(upload, "PART_MIB_QUICK", 5)
    monkeypatch.setattr(upload, "WARMUP_SIZE", MIB)
    endpoint_before = os.environ.get("AWS_ENDPOINT_URL")

    # This interpreter has no awscrt: the CRT case is reported as not measured.
    assert upload.main(["--quick", "--repeats", "1", "--crt-python", sys.executable]) == 0

    record = json.loads((tmp_path / "results" / "upload.json").read_text())
    assert set(record["metrics"]) == {"upload_s", "upload_s_vs_transfer_manager", "cached_load_s"}
    assert record["metrics"]["cached_load_s"]["baseline_name"] == "first load: download and verify"
    for metric in record["metrics"].values():
        assert metric["ratio"] == pytest.approx(metric["ours"] / metric["baseline"])
    assert set(record["seconds"]) == {"ours", "boto3", "transfer manager + hash"}
    assert all(len(runs) == 1 and runs[0] > 0 for runs in record["seconds"].values())
    assert (record["size_bytes"], record["part_size_mib"]) == (12 * MIB, 5)
    assert record["crt"] == f"not measured: {sys.executable} cannot import awscrt"
    assert os.environ.get("AWS_ENDPOINT_URL") == endpoint_before  # moto's env is undone
