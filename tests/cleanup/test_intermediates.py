"""Purging a run's intermediates: every version, marker and upload under its tmp/ prefix."""

from __future__ import annotations

import boto3
import pytest

from tasks.cleanup.intermediates import intermediates_uri, purge_intermediates
from tasks.storage.objects import ObjectStore

BUCKET = "lab"
RUN_A = "runs/lab/0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b"
RUN_B = "runs/lab/7d1f0a55-2c9e-4b8a-a3f1-5e6d7c8b9a01"


@pytest.fixture
def s3(aws):
    client = boto3.client("s3", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return client


def _litter(s3, run: str) -> None:
    """Versions, a delete marker, an incomplete upload under tmp/; a result beside it."""
    for generation in range(3):
        s3.put_object(Bucket=BUCKET, Key=f"{run}/tmp/slices/0.npy", Body=b"x%d" % generation)
    s3.put_object(Bucket=BUCKET, Key=f"{run}/tmp/gone.npy", Body=b"y")
    s3.delete_object(Bucket=BUCKET, Key=f"{run}/tmp/gone.npy")  # leaves a marker
    s3.create_multipart_upload(Bucket=BUCKET, Key=f"{run}/tmp/big.npy")
    s3.put_object(Bucket=BUCKET, Key=f"{run}/snr.nii.gz", Body=b"result")


def _everything(s3, prefix: str) -> list[str]:
    answer = s3.list_object_versions(Bucket=BUCKET, Prefix=prefix)
    keys = [v["Key"] for v in answer.get("Versions", []) + answer.get("DeleteMarkers", [])]
    uploads = s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])
    return sorted(keys + [u["Key"] for u in uploads])


def test_purge_removes_every_version_marker_and_upload_of_this_run_only(s3):
    _litter(s3, RUN_A)
    _litter(s3, RUN_B)
    before_b = _everything(s3, RUN_B)
    purge = purge_intermediates(ObjectStore(), f"s3://{BUCKET}/{RUN_A}")
    assert purge.ok, purge.describe()
    assert (purge.versions, purge.markers, purge.uploads) == (4, 1, 1)
    assert _everything(s3, f"{RUN_A}/tmp/") == []
    assert _everything(s3, RUN_A) == [f"{RUN_A}/snr.nii.gz"]  # results are kept
    assert _everything(s3, RUN_B) == before_b


def test_a_dry_run_lists_and_removes_nothing(s3):
    _litter(s3, RUN_A)
    before = _everything(s3, RUN_A)
    purge = purge_intermediates(ObjectStore(), f"s3://{BUCKET}/{RUN_A}", dry_run=True)
    assert len(purge.left) == 6
    assert not purge.ok
    assert _everything(s3, RUN_A) == before


def test_more_than_one_delete_batch(s3):
    keys = [f"{RUN_A}/tmp/{i}" for i in range(1203)]
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"")
    calls = []
    s3_store = ObjectStore()
    s3_store.s3.meta.events.register(
        "provide-client-params.s3.DeleteObjects",
        lambda params, **_: calls.append(len(params["Delete"]["Objects"])),
    )
    purge = purge_intermediates(s3_store, f"s3://{BUCKET}/{RUN_A}")
    assert purge.ok
    assert purge.versions == 1203
    assert calls == [1000, 203]


def test_a_refused_delete_fails_the_purge(s3):
    _litter(s3, RUN_A)
    store = ObjectStore()

    def refuse(parsed, **_):
        parsed["Errors"] = [{"Key": f"{RUN_A}/tmp/gone.npy", "Code": "AccessDenied"}]

    store.s3.meta.events.register("after-call.s3.DeleteObjects", refuse)
    purge = purge_intermediates(store, f"s3://{BUCKET}/{RUN_A}")
    assert not purge.ok
    assert "AccessDenied" in purge.describe()


def test_local_intermediates_are_removed_and_results_kept(tmp_path):
    run = tmp_path / "runs" / "lab" / "run"
    (run / "tmp" / "slices").mkdir(parents=True)
    (run / "tmp" / "slices" / "0.npy").write_bytes(b"x")
    (run / "snr.npy").write_bytes(b"r")
    assert intermediates_uri(str(run)) == str(run / "tmp")
    purge = purge_intermediates(ObjectStore(), str(run))
    assert purge.ok
    assert purge.versions == 1
    assert [p.name for p in run.iterdir()] == ["snr.npy"]
