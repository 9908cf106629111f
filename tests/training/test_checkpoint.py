"""CheckpointStore: round trips, torn writes never resumed, no overwrite, pruning, safe loads."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pytest
import torch

from tasks.errors import InputError, SciflowError
from tasks.storage.objects import ObjectStore
from tasks.training.checkpoint import CheckpointStore, capture_rng, restore_rng

SPEC = {"name": "linear", "options": {"channels": 1}}


def training_state() -> dict[str, Any]:
    """What a real restart needs: model, Adam after a step, scheduler, sampler, RNG."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=10)
    model(torch.randn(5, 4)).pow(2).mean().backward()
    optimizer.step()
    scheduler.step()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "sampler": {"epoch": 2, "position": 37},
        "rng": capture_rng(),
    }


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert set(a) == set(b)
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def small(step: int) -> dict[str, Any]:
    return {"step": step, "w": torch.full((3,), float(step))}


def test_local_round_trip_of_a_training_state(tmp_path: Path) -> None:
    state = training_state()
    checkpoints = CheckpointStore(str(tmp_path / "ck"))
    uri = checkpoints.save(50, state, SPEC)

    assert uri == str(tmp_path / "ck" / "step-000000050.pt")
    sidecar = json.loads((tmp_path / "ck" / "step-000000050.json").read_text())
    blob = (tmp_path / "ck" / "step-000000050.pt").read_bytes()
    assert sidecar["sha256"] == hashlib.sha256(blob).hexdigest()
    assert sidecar["bytes"] == len(blob)
    assert sidecar["model"] == SPEC
    assert sidecar["format"] == 1
    info = checkpoints.latest()
    assert info is not None
    assert (info.step, info.uri, info.model) == (50, uri, SPEC)
    assert_same(state, checkpoints.load(info, SPEC))
    # A fresh store (a restarted process) reads it too, without the verified-bytes cache.
    step, loaded = CheckpointStore(str(tmp_path / "ck")).load_latest(SPEC)
    assert step == 50
    assert_same(state, loaded)


def test_rng_streams_continue_after_save_and_load(tmp_path: Path) -> None:
    checkpoints = CheckpointStore(str(tmp_path))
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    checkpoints.save(1, {"rng": capture_rng()}, SPEC)

    def draw() -> tuple[list[float], list[float], list[float]]:
        return (
            [random.random() for _ in range(5)] + [random.gauss(0, 1)],  # noqa: S311 - not crypto
            np.random.standard_normal(5).tolist(),
            torch.rand(5).tolist(),
        )

    first = draw()
    _, state = checkpoints.load_latest(SPEC)
    restore_rng(state["rng"])
    assert draw() == first
    random.seed(9)  # and a different stream really is different
    assert draw()[0] != first[0]


def test_s3_round_trip_with_tags(aws: str) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bucket")
    checkpoints = CheckpointStore("s3://bucket/run/checkpoints", tags={"project": "mri"})
    state = training_state()
    uri = checkpoints.save(7, state, SPEC)

    assert uri == "s3://bucket/run/checkpoints/step-000000007.pt"
    for key in ("run/checkpoints/step-000000007.pt", "run/checkpoints/step-000000007.json"):
        tags = s3.get_object_tagging(Bucket="bucket", Key=key)["TagSet"]
        assert tags == [{"Key": "project", "Value": "mri"}]
    step, loaded = CheckpointStore("s3://bucket/run/checkpoints").load_latest(SPEC)
    assert step == 7
    assert_same(state, loaded)


def test_half_written_checkpoints_are_never_latest(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    checkpoints = CheckpointStore(str(root), keep=10)
    for step in (10, 20, 30, 40):
        checkpoints.save(step, small(step), SPEC)
    # (a) a blob whose sidecar never came, above everything.
    (root / "step-000000050.pt").write_bytes((root / "step-000000040.pt").read_bytes())
    # (b) a blob truncated after its sidecar was written.
    blob = root / "step-000000040.pt"
    blob.write_bytes(blob.read_bytes()[:-10])
    # (c) a sidecar whose sha256 disagrees with its (intact-size) blob.
    sidecar = root / "step-000000030.json"
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "sha256": "0" * 64}))

    info = checkpoints.latest()
    assert info is not None
    assert info.step == 20
    assert checkpoints.steps() == [10, 20]
    assert checkpoints.load(info, SPEC)["step"] == 20


def test_s3_blob_without_sidecar_and_aborted_upload_are_ignored(aws: str) -> None:
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="bucket")
    checkpoints = CheckpointStore("s3://bucket/run/checkpoints")
    checkpoints.save(5, small(5), SPEC)
    # A later save died after its blob went up: no sidecar.
    buffer = io.BytesIO()
    torch.save(small(6), buffer)
    s3.put_object(Bucket="bucket", Key="run/checkpoints/step-000000006.pt", Body=buffer.getvalue())
    # And one died mid multipart upload: a part went up, the upload was aborted.
    key = "run/checkpoints/step-000000007.pt"
    upload = s3.create_multipart_upload(Bucket="bucket", Key=key)["UploadId"]
    s3.upload_part(Bucket="bucket", Key=key, UploadId=upload, PartNumber=1, Body=b"x" * 5_242_880)
    s3.abort_multipart_upload(Bucket="bucket", Key=key, UploadId=upload)

    info = checkpoints.latest()
    assert info is not None
    assert info.step == 5
    assert checkpoints.steps() == [5]


def test_crash_while_writing_blob_leaves_latest_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ck"
    checkpoints = CheckpointStore(str(root))
    checkpoints.save(10, small(10), SPEC)

    def torn(self: ObjectStore, fileobj: Any, uri: str, tags: Any = None) -> str:
        # What a crash in a non-atomic writer would leave: part of the blob under its name.
        Path(uri).write_bytes(fileobj.read()[:100])
        raise OSError("node lost")

    monkeypatch.setattr(ObjectStore, "upload_fileobj", torn)
    with pytest.raises(OSError, match="node lost"):
        checkpoints.save(20, small(20), SPEC)

    assert (root / "step-000000020.pt").exists()
    assert not (root / "step-000000020.json").exists()
    assert checkpoints.latest().step == 10


def test_crash_before_sidecar_leaves_latest_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "ck"
    checkpoints = CheckpointStore(str(root))
    checkpoints.save(10, small(10), SPEC)

    def fail(self: ObjectStore, uri: str, data: bytes, tags: Any = None) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(ObjectStore, "write_bytes", fail)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.save(20, small(20), SPEC)
    monkeypatch.undo()

    assert not (root / "step-000000020.json").exists()
    assert checkpoints.latest().step == 10
    # The retry of that step then succeeds: an incomplete checkpoint may be rewritten.
    checkpoints.save(20, small(20), SPEC)
    assert checkpoints.latest().step == 20


def test_unsaveable_state_writes_nothing(tmp_path: Path) -> None:
    checkpoints = CheckpointStore(str(tmp_path))
    checkpoints.save(1, small(1), SPEC)
    with pytest.raises(InputError, match=r"state\['sampler'\] is a .*Random"):
        checkpoints.save(2, {"sampler": random.Random(0)}, SPEC)  # noqa: S311 - not crypto
    with pytest.raises(InputError, match=r"numpy"):
        checkpoints.save(2, {"lr": np.float64(0.1)}, SPEC)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-000000001.json",
        "step-000000001.pt",
    ]


def test_refuses_to_overwrite_a_complete_checkpoint(tmp_path: Path) -> None:
    checkpoints = CheckpointStore(str(tmp_path))
    checkpoints.save(10, small(10), SPEC)
    before = (tmp_path / "step-000000010.pt").read_bytes()
    with pytest.raises(SciflowError, match=r"step-000000010\.pt is complete already"):
        checkpoints.save(10, {"step": 10, "w": torch.zeros(3)}, SPEC)
    assert (tmp_path / "step-000000010.pt").read_bytes() == before


def test_keep_two_prunes_older_complete_and_stale_incomplete(tmp_path: Path) -> None:
    checkpoints = CheckpointStore(str(tmp_path), keep=2)
    checkpoints.save(10, small(10), SPEC)
    (tmp_path / "step-000000015.pt").write_bytes(b"torn")  # stale, below the next save
    (tmp_path / "step-000000099.pt").write_bytes(b"in flight")  # above: left alone
    for step in (20, 30, 40):
        checkpoints.save(step, small(step), SPEC)

    assert checkpoints.steps() == [30, 40]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-000000030.json",
        "step-000000030.pt",
        "step-000000040.json",
        "step-000000040.pt",
        "step-000000099.pt",
    ]


def test_keep_never_deletes_the_checkpoint_just_written(tmp_path: Path) -> None:
    checkpoints = CheckpointStore(str(tmp_path), keep=1)
    checkpoints.save(100, small(100), SPEC)
    checkpoints.save(5, small(5), SPEC)  # a lower step, e.g. a restarted schedule
    assert checkpoints.steps() == [5, 100]


def test_load_refuses_another_models_checkpoint(tmp_path: Path) -> None:
    checkpoints = CheckpointStore(str(tmp_path))
    checkpoints.save(3, small(3), {"name": "unet", "options": {"width": 16, "depth": 2}})
    info = checkpoints.latest()
    with pytest.raises(InputError) as caught:
        checkpoints.load(info, {"name": "convnet", "options": {"width": 8}})
    message = str(caught.value)
    assert "was written by model unet(depth=2, width=16)" in message
    assert "this run trains convnet(width=8)" in message
    assert "resume=False" in message
    assert str(tmp_path / "step-000000003.pt") in message


class Boom:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_weights_only_refuses_a_pickled_object(tmp_path: Path) -> None:
    root, marker = tmp_path / "ck", tmp_path / "executed"
    buffer = io.BytesIO()
    torch.save({"step": 1, "payload": Boom(marker)}, buffer)  # written by hand, not save()
    data = buffer.getvalue()
    root.mkdir()
    (root / "step-000000001.pt").write_bytes(data)
    meta = {
        "step": 1,
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
        "model": SPEC,
        "created": "2026-01-01T00:00:00+00:00",
        "format": 1,
    }
    (root / "step-000000001.json").write_text(json.dumps(meta))

    checkpoints = CheckpointStore(str(root))
    info = checkpoints.latest()
    assert info is not None  # it is complete; what it holds is the problem
    with pytest.raises(SciflowError, match="refusing to unpickle"):
        checkpoints.load(info, SPEC)
    assert not marker.exists()


def test_load_detects_a_blob_changed_after_latest(tmp_path: Path) -> None:
    checkpoints = CheckpointStore(str(tmp_path))
    checkpoints.save(1, small(1), SPEC)
    info = CheckpointStore(str(tmp_path)).latest()
    (tmp_path / "step-000000001.pt").write_bytes(b"replaced")
    with pytest.raises(SciflowError, match=r"step-000000001\.pt does not match the sha256"):
        checkpoints.load(info, SPEC)


def test_empty_root_has_no_checkpoint(tmp_path: Path) -> None:
    checkpoints = CheckpointStore(str(tmp_path / "missing"))
    assert checkpoints.latest() is None
    assert checkpoints.load_latest(SPEC) is None
    assert checkpoints.steps() == []
