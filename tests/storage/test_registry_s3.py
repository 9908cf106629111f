"""The model registry on S3, over real HTTP to moto on loopback."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from tasks.errors import ConcurrentUpdate, InputError, IntegrityError
from tasks.storage.objects import ObjectStore
from tasks.storage.registry import Framework, Registry, local_files

BUCKET = "sciflow-models"
ROOT = f"s3://{BUCKET}/root/registry"
MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[2]
TORCH = Framework(name="pytorch", versions={"torch": "2.5.1"})


@pytest.fixture
def s3(aws):
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def registry(s3, tmp_path: Path) -> Registry:
    return Registry(ObjectStore(part_size_mib=5, concurrency=4), ROOT, cache=tmp_path / "cache")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A model directory with one file bigger than the 5 MiB part size (a multipart upload)."""
    root = tmp_path / "source"
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.pt").write_bytes(os.urandom(6 * MIB + 123))
    (root / "model" / "config.json").write_text('{"torch": "2.5.1"}')
    (root / "metrics.json").write_text('{"val_loss": 0.5}')
    return root


def publish(registry: Registry, source: Path, version=None, **kwargs):
    return registry.publish(
        local_files(source), "denoiser", version, source=str(source), framework=TORCH, **kwargs
    )


def test_round_trip_with_a_multipart_file_keeps_every_digest(registry, model_dir, s3):
    published = publish(registry, model_dir)
    head = s3.head_object(Bucket=BUCKET, Key="root/registry/denoiser/1/model/model.pt")
    assert "-" in head["ETag"]  # it went up in parts
    for entry in published.manifest.files:
        assert entry.sha256 == hashlib.sha256((model_dir / entry.path).read_bytes()).hexdigest()
    loaded = registry.load("denoiser", "1")
    for entry in published.manifest.files:
        assert (loaded / entry.path).read_bytes() == (model_dir / entry.path).read_bytes()
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert "root/registry/denoiser/1/_publishing.json" not in keys  # the claim went


def test_a_flipped_byte_in_s3_is_caught_at_load(registry, model_dir, s3):
    publish(registry, model_dir)
    key = "root/registry/denoiser/1/model/model.pt"
    data = bytearray(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[5 * MIB + 7] ^= 0x80
    s3.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    with pytest.raises(IntegrityError, match=r"refusing s3://.*model\.pt"):
        registry.load("denoiser", "1")
    assert not registry.cache.exists() or not any(registry.cache.iterdir())


def test_a_reader_never_lists_a_version_whose_upload_is_unfinished(registry, model_dir):
    reader = Registry(ObjectStore(), ROOT)
    seen = []

    def look(stored) -> None:
        # A file of the version is on S3 now; its manifest is not.
        assert ObjectStore().exists(stored.uri)
        seen.append(reader.list_versions("denoiser"))

    publish(registry, model_dir, on_file=look)
    assert seen == [[], [], []]
    assert reader.list_versions("denoiser") == ["1"]


def test_two_processes_publishing_one_version_one_wins(registry, model_dir, tmp_path):
    script = """
import sys, time
from pathlib import Path
from tasks.storage.objects import ObjectStore
from tasks.storage.registry import Framework, Registry, VersionExists, local_files
root, source, ready, go = sys.argv[1:]
Path(ready).touch()
deadline = time.monotonic() + 120
while not Path(go).exists():  # start together
    if time.monotonic() > deadline:
        sys.exit(3)
    time.sleep(0.005)
registry = Registry(ObjectStore(part_size_mib=5), root)
try:
    done = registry.publish(local_files(source), "racer", "1", source=source,
                            framework=Framework(name="pytorch"))
except VersionExists as exc:
    print("LOST", exc)
    sys.exit(2)
print("WON", done.manifest.publish_id)
"""
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs, ready = [], []
    for i in range(2):
        ready.append(tmp_path / f"ready{i}")
        argv = [sys.executable, "-c", script, ROOT, str(model_dir), str(ready[-1]), str(go)]
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        procs.append(subprocess.Popen(argv, env=env, **pipes))
    deadline = time.monotonic() + 120
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    winner = next(out for out, _ in outs if out.startswith("WON"))
    loser = next(out for out, _ in outs if out.startswith("LOST"))
    assert "model 'racer' version 1" in loser
    reasons = ("being published from", "already published", "by another upload")
    assert any(reason in loser for reason in reasons)
    assert registry.list_versions("racer") == ["1"]
    assert registry.get("racer", "1").publish_id == winner.split()[1]
    registry.load("racer", "1")  # the winner's files are intact


def test_promotion_loses_to_a_concurrent_one_and_says_so(registry, model_dir, s3):
    publish(registry, model_dir)
    publish(registry, model_dir)
    registry.promote("denoiser", "1", "production")
    key = "root/registry/denoiser/stages/production.json"

    def move_first(params, **kwargs) -> None:
        if params.get("Key") == key and "IfMatch" in params:
            s3.put_object(Bucket=BUCKET, Key=key, Body=b'{"version": "1", "by": "other"}')

    registry.store.s3.meta.events.register("provide-client-params.s3.PutObject", move_first)
    with pytest.raises(ConcurrentUpdate, match="changed since it was read"):
        registry.promote("denoiser", "2", "production")
    assert registry.resolve("denoiser", "production") == "1"


def test_delete_removes_every_object_version_under_the_version(registry, model_dir, s3):
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    publish(registry, model_dir)
    publish(registry, model_dir)
    purge = registry.delete("denoiser", "1")
    assert purge.ok
    assert purge.versions >= 4
    assert purge.markers >= 1  # the claim's, removed when the version was published
    listed = s3.list_object_versions(Bucket=BUCKET, Prefix="root/registry/denoiser/1/")
    assert not listed.get("Versions")
    assert not listed.get("DeleteMarkers")
    assert registry.list_versions("denoiser") == ["2"]


def test_missing_credentials_fail_clearly_and_publish_nothing(
    registry, model_dir, s3, monkeypatch, tmp_path
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    bare = Registry(ObjectStore(), ROOT)
    with pytest.raises(InputError, match="expected AWS credentials"):
        publish(bare, model_dir)
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)
