"""A version's publishing claim: who uploads it, from what, and a lease they keep renewing.

Two live uploads must never write the same version's keys (on S3 the second would join the
first's multipart uploads), so one claim object per version names its holder. It is created
with a conditional write; while the upload runs, ``Lease`` renews it every quarter of
``LEASE_S`` with ``put_if_match``. Another upload may take the claim over (again with
``put_if_match``, so only one taker wins) when the holder is gone: its lease expired, or it
was a process on this host that no longer exists. It must also be the same upload (same
source and file sizes), so that it resumes rather than mixing two models' files; an abandoned
claim for another source stays until the unfinished version is deleted.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from typing import Self

from tasks.errors import InputError
from tasks.storage.objects import ObjectStore
from tasks.storage.transfer import ConcurrentUpdate, put_if_match, read_with_etag

# Seconds a claim stays valid without renewal.
LEASE_S = 120.0


class ClaimHeld(InputError):
    """Another live upload holds the version, or an abandoned one from another source."""


@dataclass(frozen=True, slots=True)
class Claim:
    """Who is uploading a version, from what, and until when their lease runs."""

    source: str
    files: dict[str, int]
    holder: str
    host: str
    pid: int
    expires: float

    @classmethod
    def mine(cls, source: str, files: dict[str, int], holder: str) -> Self:
        """A claim for this process, with a fresh lease."""
        return cls(source, files, holder, socket.gethostname(), os.getpid(), time.time() + LEASE_S)

    @classmethod
    def parse(cls, data: bytes) -> Self | None:
        """The claim in ``data``; None if it is not one (a foreign or damaged object)."""
        try:
            fields = json.loads(data)
            return cls(**{k: fields[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError):
            return None

    def to_bytes(self) -> bytes:
        """The claim as stored."""
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode()

    def same_upload(self, other: Claim) -> bool:
        """Whether ``other`` uploads the same files from the same source."""
        return (self.source, self.files) == (other.source, other.files)

    def abandoned(self) -> bool:
        """Whether the holder is gone: lease expired, or a process of this host that died."""
        if self.expires < time.time():
            return True
        return self.host == socket.gethostname() and not _alive(self.pid)

    def describe(self) -> str:
        """Who holds it, for messages."""
        return f"{self.source} by pid {self.pid} on {self.host}"


def take(store: ObjectStore, uri: str, claim: Claim) -> str:
    """Create the claim at ``uri``, or take over an abandoned one of the same upload.

    Returns:
        The claim's tag, for ``Lease``.

    Raises:
        ClaimHeld: A live upload holds it, or an abandoned one from another source.
    """
    for _ in range(2):  # the claim may go (published or deleted) between our two calls
        try:
            return put_if_match(store, uri, claim.to_bytes(), None)
        except ConcurrentUpdate:
            pass
        found = read_with_etag(store, uri)
        if found is None:
            continue
        held = Claim.parse(found[0])
        if held is not None and not held.abandoned():
            raise ClaimHeld(f"it is being published from {held.describe()}")
        if held is None or not held.same_upload(claim):
            what = held.describe() if held else "an unreadable claim"
            raise ClaimHeld(
                f"an abandoned upload from {what} left it unfinished; delete the version "
                "(Registry.delete) to publish other files under it"
            )
        try:
            return put_if_match(store, uri, claim.to_bytes(), found[1])
        except ConcurrentUpdate:
            raise ClaimHeld("another upload took it over just now") from None
    raise ClaimHeld("its claim keeps changing; try again")


class Lease:
    """Renews a claim in a background thread while an upload runs.

    ``lost`` turns true if another upload took the claim over (this one stalled past its
    lease); the publisher then must not publish.
    """

    def __init__(self, store: ObjectStore, uri: str, claim: Claim, tag: str) -> None:
        self.store, self.uri, self.claim, self.tag = store, uri, claim, tag
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="claim-lease", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_S / 4):
            self.claim = replace(self.claim, expires=time.time() + LEASE_S)
            try:
                self.tag = put_if_match(self.store, self.uri, self.claim.to_bytes(), self.tag)
            except ConcurrentUpdate:
                self.lost = True
                return
            except Exception:  # noqa: S112 - a failed renewal is retried at the next tick
                continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
