"""The model registry on a local directory: names, versions, publish, stages, delete, load."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

import tasks.storage.registry as registry_module
from tasks.errors import ConcurrentUpdate, InputError, IntegrityError
from tasks.storage.claim import Claim
from tasks.storage.objects import ObjectStore
from tasks.storage.registry import (
    Framework,
    Registry,
    Version,
    VersionExists,
    local_files,
    next_version,
)

REPO = Path(__file__).resolve().parents[2]
TORCH = Framework(name="pytorch", versions={"torch": "2.5.1"})


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(ObjectStore(), str(tmp_path / "registry"), cache=tmp_path / "cache")


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "source"
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.pt").write_bytes(b"weights" * 1000)
    (root / "model" / "config.json").write_text('{"torch": "2.5.1"}')
    (root / "metrics.json").write_text('{"val_loss": 0.5}')
    return root


def publish(registry: Registry, source: Path, model: str = "denoiser", version=None, **kw):
    return registry.publish(
        local_files(source), model, version, source=str(source), framework=TORCH, **kw
    )


@pytest.mark.parametrize(
    "text", ["0", "1", "999999999", "0.0.0", "1.2.3", "10.20.30", "999999999.0.999999999"]
)
def test_versions_that_parse_print_as_given(text):
    assert str(Version.parse(text)) == text


@pytest.mark.parametrize(
    "text",
    ["", "01", "1000000000", "-1", "1.2", "1.2.3.4", "1.02.3", "v1", "1.2.3-rc1", " 1", "a", "1."],
)
def test_versions_outside_the_rule_are_refused(text):
    with pytest.raises(InputError, match="expected an integer such as '3' or a semantic"):
        Version.parse(text)


def test_next_version_counts_numerically_and_stops_at_the_bound():
    assert str(next_version([])) == "1"
    assert str(next_version([Version.parse("9"), Version.parse("10")])) == "11"
    assert str(next_version([Version.parse("1.9.9"), Version.parse("1.10.0")])) == "1.10.1"
    assert str(next_version([Version.parse("999999998")])) == "999999999"
    with pytest.raises(InputError, match="numbers stop at 999999999"):
        next_version([Version.parse("999999999")])


def test_round_trip_of_a_directory_with_the_cache_serving_the_second_load(
    registry, model_dir, monkeypatch
):
    published = publish(registry, model_dir, metadata={"note": "first"})
    assert published.version == "1"
    assert registry.list_versions("denoiser") == ["1"]
    manifest = registry.get("denoiser", "1")
    assert {f.path for f in manifest.files} == {
        "model/model.pt",
        "model/config.json",
        "metrics.json",
    }
    for entry in manifest.files:
        source = (model_dir / entry.path).read_bytes()
        assert entry.sha256 == hashlib.sha256(source).hexdigest()
        assert entry.size == len(source)
    assert manifest.metadata == {"note": "first"}

    loaded = registry.load("denoiser", "1")
    assert loaded.parent == registry.cache
    assert (loaded / "model" / "model.pt").read_bytes() == (
        model_dir / "model/model.pt"
    ).read_bytes()

    def no_download(*args, **kwargs):
        raise AssertionError("a cached version was downloaded again")

    monkeypatch.setattr(registry_module, "download_verified", no_download)
    assert registry.load("denoiser", "1") == loaded


def test_a_cached_file_of_the_wrong_size_is_fetched_again(registry, model_dir):
    publish(registry, model_dir)
    loaded = registry.load("denoiser", "1")
    (loaded / "metrics.json").write_text("{}")
    again = registry.load("denoiser", "1")
    assert (again / "metrics.json").read_text() == '{"val_loss": 0.5}'


def test_a_changed_byte_in_the_registry_is_refused_at_load(registry, model_dir):
    publish(registry, model_dir)
    stored = Path(registry.version_uri("denoiser", "1")) / "model" / "model.pt"
    data = bytearray(stored.read_bytes())
    data[100] ^= 0x01
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"refusing .*model\.pt"):
        registry.load("denoiser", "1")
    assert not any(registry.cache.iterdir())  # nothing cached from it


def test_publishing_an_existing_version_is_refused_and_changes_nothing(registry, model_dir):
    publish(registry, model_dir, version="3")
    manifest = Path(registry.manifest_uri("denoiser", "3")).read_bytes()
    with pytest.raises(VersionExists, match="version 3 is already published"):
        publish(registry, model_dir, version="3")
    assert Path(registry.manifest_uri("denoiser", "3")).read_bytes() == manifest
    assert publish(registry, model_dir).version == "4"


def claim_of(source: Path, **changes) -> Claim:
    files = {rel: path.stat().st_size for rel, path in local_files(source).items()}
    return replace(Claim.mine(str(source), files, holder="other"), **changes)


def test_another_upload_cannot_take_a_version_being_published(registry, model_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.pt").write_bytes(b"other weights")
    claim = Path(registry.version_uri("denoiser", "1")) / "_publishing.json"
    claim.parent.mkdir(parents=True)
    claim.write_bytes(claim_of(other).to_bytes())  # a live holder: this very process
    with pytest.raises(VersionExists, match=f"being published from {other} by pid"):
        publish(registry, model_dir, version="1")
    with pytest.raises(InputError, match="delete it once that upload has ended"):
        registry.delete("denoiser", "1")
    assert registry.list_versions("denoiser") == []
    assert publish(registry, model_dir).version == "2"  # the next skips the unfinished one


def test_an_abandoned_claim_of_another_source_is_not_taken_over(registry, model_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.pt").write_bytes(b"other weights")
    claim = Path(registry.version_uri("denoiser", "1")) / "_publishing.json"
    claim.parent.mkdir(parents=True)
    claim.write_bytes(claim_of(other, expires=time.time() - 1).to_bytes())
    with pytest.raises(VersionExists, match=r"abandoned upload .* delete the version"):
        publish(registry, model_dir, version="1")


def test_an_expired_claim_of_the_same_upload_on_another_host_is_resumed(registry, model_dir):
    claim = Path(registry.version_uri("denoiser", "1")) / "_publishing.json"
    claim.parent.mkdir(parents=True)
    claim.write_bytes(claim_of(model_dir, host="elsewhere", expires=time.time() - 1).to_bytes())
    assert publish(registry, model_dir).version == "1"
    assert not claim.exists()


def test_a_killed_upload_is_resumed_by_the_rerun(registry, model_dir):
    script = """
import os, signal, sys
from tasks.storage.objects import ObjectStore
from tasks.storage.registry import Framework, Registry, local_files
root, cache, source = sys.argv[1:]
registry = Registry(ObjectStore(), root, cache=cache)
def die(stored):
    os.kill(os.getpid(), signal.SIGKILL)  # for real, mid-upload
registry.publish(local_files(source), "denoiser", source=source,
                 framework=Framework(name="pytorch"), on_file=die)
"""
    argv = [sys.executable, "-c", script, registry.root, str(registry.cache), str(model_dir)]
    done = subprocess.run(argv, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert done.returncode == -signal.SIGKILL
    claim = Path(registry.version_uri("denoiser", "1")) / "_publishing.json"
    assert claim.is_file()
    assert registry.list_versions("denoiser") == []

    assert publish(registry, model_dir).version == "1"  # the dead process's version, resumed
    assert registry.list_versions("denoiser") == ["1"]
    assert not claim.exists()


def test_one_model_keeps_one_kind_of_version(registry, model_dir):
    publish(registry, model_dir, version="1.0.0")
    with pytest.raises(InputError, match="one model uses one kind of version"):
        publish(registry, model_dir, version="2")
    assert publish(registry, model_dir).version == "1.0.1"


def test_stages_move_by_conditional_update(registry, model_dir, monkeypatch):
    publish(registry, model_dir)
    publish(registry, model_dir)
    assert registry.promote("denoiser", "1", "production") is None
    assert registry.resolve("denoiser", "production") == "1"
    assert registry.promote("denoiser", "2", "production") == "1"
    assert registry.stages("denoiser") == {"production": "2"}
    assert registry.load("denoiser", "production").is_dir()

    original = registry_module.read_with_etag

    def read_then_lose_the_race(store, uri):
        found = original(store, uri)
        Path(uri).write_text(json.dumps({"version": "1"}))  # another promotion lands
        return found

    monkeypatch.setattr(registry_module, "read_with_etag", read_then_lose_the_race)
    with pytest.raises(ConcurrentUpdate, match="changed since it was read"):
        registry.promote("denoiser", "2", "production")


def test_promoting_an_unpublished_version_or_a_bad_stage_is_refused(registry, model_dir):
    publish(registry, model_dir)
    with pytest.raises(InputError, match="no published version '7'"):
        registry.promote("denoiser", "7", "production")
    with pytest.raises(InputError, match="stage 'Prod!' is invalid"):
        registry.promote("denoiser", "1", "Prod!")
    with pytest.raises(InputError, match="has no stage 'staging'"):
        registry.load("denoiser", "staging")


def test_delete_refuses_a_staged_version_and_removes_an_unstaged_one(registry, model_dir):
    publish(registry, model_dir)
    publish(registry, model_dir)
    registry.promote("denoiser", "2", "production")
    with pytest.raises(InputError, match=r"stage\(s\) \['production'\] point at"):
        registry.delete("denoiser", "2")
    purge = registry.delete("denoiser", "1")
    assert purge.ok
    assert registry.list_versions("denoiser") == ["2"]
    assert not Path(registry.version_uri("denoiser", "1")).exists()


@pytest.mark.parametrize(
    "name", ["", "a/b", "../x", "has space", "-lead", "ü", "x" * 65, "a.b", "a%2Fb"]
)
def test_bad_model_names_fail_before_anything_is_written(registry, model_dir, name):
    with pytest.raises(InputError, match=r"model name .* is invalid"):
        publish(registry, model_dir, model=name)
    assert not Path(registry.root).exists()


def test_bad_sources_and_manifests_fail_before_anything_is_written(registry, tmp_path, model_dir):
    with pytest.raises(InputError, match="does not exist"):
        local_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no files"):
        local_files(tmp_path / "empty")
    (model_dir / "manifest.json").write_text("{}")
    with pytest.raises(InputError, match="names the registry keeps for itself"):
        local_files(model_dir)
    (model_dir / "manifest.json").unlink()
    with pytest.raises(InputError, match="metadata are not plain JSON"):
        publish(registry, model_dir, metadata={"score": float("nan")})
    with pytest.raises(InputError, match="metadata are not plain JSON"):
        publish(registry, model_dir, metadata={"when": object()})
    with pytest.raises(InputError, match=r"the manifest is invalid: metrics\.loss"):
        publish(registry, model_dir, metrics={"loss": [1, 2]})
    assert not Path(registry.root).exists()
