"""The model cache check: cached versions against their manifests' digests."""

from __future__ import annotations

from pathlib import Path

from tasks.cleanup.model_cache import validate_cache
from tasks.storage.objects import ObjectStore
from tasks.storage.registry import Framework, Registry, local_files


def test_a_corrupted_cached_file_is_found_removed_and_reported(tmp_path: Path):
    registry = Registry(ObjectStore(), str(tmp_path / "registry"), cache=tmp_path / "cache")
    for name, content in (("good", b"fine weights"), ("bad", b"soon corrupted")):
        source = tmp_path / name
        source.mkdir()
        (source / "model.pt").write_bytes(content)
        registry.publish(
            local_files(source), name, "1", source=str(source), framework=Framework(name="x")
        )
    good, bad = registry.load("good", "1"), registry.load("bad", "1")

    clean = validate_cache(tmp_path / "cache")
    assert (clean.name, clean.ok, clean.removed) == ("model cache valid", True, 0)
    assert "checked 2 cached versions" in clean.detail

    (bad / "model.pt").write_bytes(b"soon CORRUPTED")  # same size: only the digest shows it
    check = validate_cache(tmp_path / "cache")
    assert check.ok
    assert check.removed == 1
    assert f"{bad.name[:12]}: refusing" in check.detail
    assert not bad.exists()
    assert good.exists()
    assert (registry.load("bad", "1") / "model.pt").read_bytes() == b"soon corrupted"


def test_an_entry_without_its_manifest_is_removed(tmp_path: Path):
    torn = tmp_path / "cache" / ("0" * 64)
    torn.mkdir(parents=True)
    (torn / "model.pt").write_bytes(b"half a download")
    check = validate_cache(tmp_path / "cache")
    assert check.removed == 1
    assert "no manifest" in check.detail
    assert not torn.exists()
    assert validate_cache(tmp_path / "missing").detail.startswith("checked 0")


def test_a_dry_run_reports_a_mismatch_as_a_failure_and_keeps_it(tmp_path: Path):
    torn = tmp_path / "cache" / ("1" * 64)
    torn.mkdir(parents=True)
    (torn / "model.pt").write_bytes(b"half a download")
    check = validate_cache(tmp_path / "cache", dry_run=True)
    assert not check.ok
    assert check.removed == 0
    assert "found 1 that did not match" in check.detail
    assert torn.exists()
