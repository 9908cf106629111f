"""FSx for Lustre import and mount lookup.

moto 5 does not implement FSx data repository associations or tasks, so these tests answer
the calls with a botocore Stubber: it checks each request against the FSx API model that
ships with botocore and returns responses of the model's shapes (DescribeDataRepository-
Associations, CreateDataRepositoryTask, DescribeDataRepositoryTasks).
"""

from __future__ import annotations

import datetime as dt
import shutil

import boto3
import pytest
from botocore.stub import Stubber

import tasks.storage.fsx as fsx_module
from tasks.errors import InputError, IntegrityError, SciflowError
from tasks.storage.fsx import FsxLink
from tasks.storage.objects import ObjectStore
from tasks.storage.registry import Framework, Registry, local_files

FS = "fs-0123456789abcdef0"
VERSION = "s3://lab-models/root/registry/denoiser/3"
TASK = "task-0123456789abcdef0"
NOW = dt.datetime(2026, 12, 5, tzinfo=dt.UTC)


@pytest.fixture
def stubbed(monkeypatch):
    fsx = boto3.client(
        "fsx",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",  # noqa: S106 - a stub
    )
    monkeypatch.setattr(fsx_module, "client", lambda service, account=None: fsx)
    with Stubber(fsx) as stub:
        yield stub
        stub.assert_no_pending_responses()


def associations(stub: Stubber, repo: str = "s3://lab-models/root/registry/") -> None:
    stub.add_response(
        "describe_data_repository_associations",
        {
            "Associations": [
                {
                    "AssociationId": "dra-0123456789abcdef0",
                    "FileSystemId": FS,
                    "Lifecycle": "AVAILABLE",
                    "FileSystemPath": "/models",
                    "DataRepositoryPath": repo,
                }
            ]
        },
        {"Filters": [{"Name": "file-system-id", "Values": [FS]}]},
    )


def task(lifecycle: str, done: int, total: int, **extra) -> dict:
    return {
        "DataRepositoryTasks": [
            {
                "TaskId": TASK,
                "Lifecycle": lifecycle,
                "Type": "IMPORT_METADATA_FROM_REPOSITORY",
                "CreationTime": NOW,
                "FileSystemId": FS,
                "Status": {"TotalCount": total, "SucceededCount": done, "FailedCount": 0},
                **extra,
            }
        ]
    }


def test_import_starts_a_task_for_the_version_and_follows_it_to_the_end(stubbed):
    associations(stubbed)
    stubbed.add_response(
        "create_data_repository_task",
        {"DataRepositoryTask": task("PENDING", 0, 0)["DataRepositoryTasks"][0]},
        {
            "Type": "IMPORT_METADATA_FROM_REPOSITORY",
            "FileSystemId": FS,
            "Paths": [VERSION + "/"],
            "Report": {"Enabled": False},
            "Tags": [{"Key": "sciflow:run-id", "Value": "r1"}],
        },
    )
    for state in (task("PENDING", 0, 0), task("EXECUTING", 1, 3), task("SUCCEEDED", 3, 3)):
        stubbed.add_response("describe_data_repository_tasks", state, {"TaskIds": [TASK]})
    seen = []
    done = FsxLink(FS).import_prefix(
        VERSION,
        tags={"sciflow:run-id": "r1"},
        on_progress=lambda d, t: seen.append((d, t)),
        poll_s=0,
    )
    assert (done.task_id, done.files) == (TASK, 3)
    assert seen == [(0, 0), (1, 3), (3, 3)]


def test_a_failed_import_says_why(stubbed):
    associations(stubbed)
    stubbed.add_response(
        "create_data_repository_task",
        {"DataRepositoryTask": task("PENDING", 0, 0)["DataRepositoryTasks"][0]},
    )
    stubbed.add_response(
        "describe_data_repository_tasks",
        task("FAILED", 0, 2, FailureDetails={"Message": "access denied"}),
    )
    with pytest.raises(SciflowError, match="ended FAILED: access denied"):
        FsxLink(FS).import_prefix(VERSION, poll_s=0)


def test_a_prefix_outside_every_association_is_refused_before_a_task(stubbed):
    associations(stubbed, repo="s3://other-bucket/")
    with pytest.raises(InputError, match="no data repository association"):
        FsxLink(FS).import_prefix(VERSION, poll_s=0)


def test_load_prefers_the_lustre_copy_and_verifies_it(stubbed, tmp_path):
    # The registry is a local directory here; the mount holds what an import made visible.
    model = tmp_path / "src"
    model.mkdir()
    (model / "model.pt").write_bytes(b"weights")
    mount = tmp_path / "fsx"
    link = FsxLink(FS, mount=mount)
    registry = Registry(ObjectStore(), str(tmp_path / "registry"), tmp_path / "cache", link)
    registry.publish(
        local_files(model), "denoiser", "3", source=str(model), framework=Framework(name="pytorch")
    )
    # Lustre mirrors the registry directory under /models.
    shutil.copytree(tmp_path / "registry", mount / "models")
    associations(stubbed, repo=str(tmp_path / "registry") + "/")
    assert registry.load("denoiser", "3") == mount / "models" / "denoiser" / "3"
    assert not (tmp_path / "cache").exists()

    (mount / "models" / "denoiser" / "3" / "model.pt").write_bytes(b"weighty")
    associations(stubbed, repo=str(tmp_path / "registry") + "/")
    with pytest.raises(IntegrityError, match=r"refusing .*model\.pt"):
        registry.load("denoiser", "3")
