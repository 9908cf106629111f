"""Code the transfer tests run in other processes (real processes, real kills)."""

from __future__ import annotations

import sys
import threading
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from tasks.errors import SciflowError
from tasks.storage.objects import ObjectStore
from tasks.storage.transfer import put_if_match, put_once, upload_client, upload_verified


def race_put_once(barrier: Barrier, results: Queue[str], uri: str, data: bytes) -> None:
    """Wait for the other racers, then create ``uri``; puts "won" or the error's class."""
    store = ObjectStore()
    barrier.wait()
    try:
        put_once(store, uri, data)
    except SciflowError as exc:
        results.put(type(exc).__name__)
        return
    results.put("won")


def race_put_if_match(
    barrier: Barrier, results: Queue[str], uri: str, data: bytes, etag: str
) -> None:
    """Wait for the other racers, then swap ``uri`` from ``etag``; puts "won" or the error."""
    store = ObjectStore()
    barrier.wait()
    try:
        put_if_match(store, uri, data, etag)
    except SciflowError as exc:
        results.put(type(exc).__name__)
        return
    results.put("won")


def upload_until_killed(source: str, uri: str, marker: str, parts_before_marker: int) -> None:
    """Upload one part at a time; after ``parts_before_marker`` parts, touch ``marker`` and hang.

    The parent kills this process with SIGKILL once the marker exists: the upload is
    interrupted for real, with exactly that many parts on S3.
    """
    store = ObjectStore(part_size_mib=5, concurrency=1)
    done = 0

    def after_part(**_: Any) -> None:
        nonlocal done
        done += 1
        if done == parts_before_marker:
            Path(marker).touch()
            threading.Event().wait()  # hang until killed

    upload_client(store).meta.events.register("after-call.s3.UploadPart", after_part)
    upload_verified(store, Path(source), uri)
    raise SystemExit("the upload finished; it should have been killed first")


if __name__ == "__main__":
    upload_until_killed(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
