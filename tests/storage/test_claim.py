"""The publishing claim's lease: renewed while held, lost when another upload takes it over."""

from __future__ import annotations

import time
from pathlib import Path

import tasks.storage.claim as claim_module
from tasks.storage.claim import Claim, Lease, take
from tasks.storage.objects import ObjectStore
from tasks.storage.transfer import ConcurrentUpdate, put_if_match, read_with_etag


def wait_for(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_lease_renews_its_claim_until_another_upload_takes_it_over(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(claim_module, "LEASE_S", 0.2)
    store, uri = ObjectStore(), str(tmp_path / "_publishing.json")
    mine = Claim.mine("src", {"model.pt": 3}, holder="me")
    tag = take(store, uri, mine)
    with Lease(store, uri, mine, tag) as lease:
        first = Claim.parse(read_with_etag(store, uri)[0]).expires
        assert wait_for(lambda: Claim.parse(read_with_etag(store, uri)[0]).expires > first)
        theirs = Claim.mine("src", {"model.pt": 3}, "them").to_bytes()

        def take_over() -> bool:  # the lease may renew between our read and write: again
            try:
                put_if_match(store, uri, theirs, read_with_etag(store, uri)[1])
            except ConcurrentUpdate:
                return False
            return True

        assert wait_for(take_over)
        assert wait_for(lambda: lease.lost)
    assert Claim.parse(read_with_etag(store, uri)[0]).holder == "them"
