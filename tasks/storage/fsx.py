"""FSx for Lustre in front of the registry's S3 prefix: import a version, find it on the mount.

A data repository association (DRA) links a file system path to an S3 prefix. After a
version is published, an ``IMPORT_METADATA_FROM_REPOSITORY`` task for the version's prefix
makes its files visible on the file system (their content loads from S3 on first read);
``import_prefix`` starts one and follows it to its end. ``local_path`` maps an S3 URI to
its path under the mount, when the file system is mounted on this machine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.aws.clients import AwsAccount, call, client
from tasks.errors import InputError, SciflowError
from tasks.storage.objects import Location

IMPORT = "IMPORT_METADATA_FROM_REPOSITORY"
DONE = frozenset({"SUCCEEDED", "FAILED", "CANCELED"})
# Seconds between polls of an import task, and the longest wait for one.
POLL_S = 5.0
TIMEOUT_S = 3600.0

ImportProgress = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class ImportTask:
    """A finished import task: its id and how many files it imported."""

    task_id: str
    files: int
    seconds: float


@dataclass(frozen=True, slots=True)
class FsxLink:
    """An FSx for Lustre file system whose associations cover the registry's S3 prefix.

    Attributes:
        file_system_id: The file system (``fs-...``).
        mount: Where it is mounted on the machines that load models (e.g. ``/fsx``).
        account: The AWS account it is in; the ambient one if omitted.
    """

    file_system_id: str
    mount: Path | None = None
    account: AwsAccount | None = None

    def _client(self) -> Any:
        return client("fsx", self.account)

    def associations(self, fsx: Any | None = None) -> list[tuple[str, str]]:
        """``(file system path, s3://bucket/prefix/)`` of each available association."""
        fsx = fsx or self._client()
        found, token = [], None
        while True:
            page = call(
                fsx.describe_data_repository_associations,
                f"describe data repository associations of {self.file_system_id}",
                Filters=[{"Name": "file-system-id", "Values": [self.file_system_id]}],
                **({"NextToken": token} if token else {}),
            )
            for dra in page.get("Associations", []):
                if dra.get("Lifecycle") in ("AVAILABLE", "UPDATING"):
                    repo = dra["DataRepositoryPath"].rstrip("/") + "/"
                    found.append((dra["FileSystemPath"], repo))
            token = page.get("NextToken")
            if not token:
                return found

    def covering(self, uri: str, fsx: Any | None = None) -> tuple[str, str] | None:
        """The association whose S3 prefix holds ``uri``: ``(file system path, rest of uri)``."""
        target = str(Location.parse(uri)).rstrip("/") + "/"
        for fs_path, repo in self.associations(fsx):
            if target.startswith(repo):
                return fs_path, target[len(repo) :].rstrip("/")
        return None

    def local_path(self, uri: str) -> Path | None:
        """Where ``uri`` is on the mounted file system; None if not mounted here or not covered."""
        if self.mount is None or not self.mount.is_dir():
            return None
        found = self.covering(uri)
        if found is None:
            return None
        fs_path, rest = found
        return self.mount / fs_path.strip("/") / rest

    def import_prefix(
        self,
        uri: str,
        *,
        tags: Mapping[str, str] | None = None,
        on_progress: ImportProgress | None = None,
        poll_s: float = POLL_S,
        timeout_s: float = TIMEOUT_S,
    ) -> ImportTask:
        """Import the metadata of everything under ``uri`` and wait for the task to finish.

        Args:
            uri: An ``s3://`` prefix inside one of the file system's associations.
            tags: Tags for the task (the run's).
            on_progress: Called with (files imported, files in all) after each poll.
            poll_s: Seconds between polls.
            timeout_s: Longest wait before giving up.

        Raises:
            InputError: No association covers ``uri``.
            SciflowError: The task failed, was cancelled, or did not finish in time.
        """
        fsx = self._client()
        if self.covering(uri, fsx) is None:
            raise InputError(
                f"no data repository association of {self.file_system_id} covers {uri}; "
                "expected one whose S3 prefix holds the registry"
            )
        prefix = str(Location.parse(uri)).rstrip("/") + "/"
        start = time.monotonic()
        task = call(
            fsx.create_data_repository_task,
            f"start an FSx import of {prefix}",
            Type=IMPORT,
            FileSystemId=self.file_system_id,
            Paths=[prefix],
            Report={"Enabled": False},
            # The API refuses an empty Tags list: no tags, no parameter.
            **({"Tags": [{"Key": k, "Value": v} for k, v in tags.items()]} if tags else {}),
        )["DataRepositoryTask"]
        task_id = task["TaskId"]
        while True:
            described = call(
                fsx.describe_data_repository_tasks,
                f"describe FSx task {task_id}",
                TaskIds=[task_id],
            )["DataRepositoryTasks"]
            task = described[0]
            status = task.get("Status", {})
            if on_progress is not None:
                on_progress(int(status.get("SucceededCount", 0)), int(status.get("TotalCount", 0)))
            lifecycle = task["Lifecycle"]
            if lifecycle == "SUCCEEDED":
                return ImportTask(
                    task_id, int(status.get("SucceededCount", 0)), time.monotonic() - start
                )
            if lifecycle in DONE:
                why = task.get("FailureDetails", {}).get("Message", "no reason given")
                raise SciflowError(
                    f"FSx import task {task_id} of {prefix} ended {lifecycle}: {why} "
                    f"({status.get('FailedCount', 0)} files failed)"
                )
            if time.monotonic() - start > timeout_s:
                raise SciflowError(
                    f"FSx import task {task_id} of {prefix} is still {lifecycle} after "
                    f"{timeout_s:.0f} s; it goes on, the registry version is published"
                )
            time.sleep(poll_s)
