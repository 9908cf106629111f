"""Secure cleanup's cost on S3 (moto's server on loopback, real HTTP).

Metrics:

- ``delete_versions``: deleting 10,000 object versions under a run's ``tmp/`` prefix (2,500
  keys written 4 times each; quick: 1,000) with ``tasks.storage.purge.delete_versions``
  (``DeleteObjects``, 1,000 versions a call) against one ``DeleteObject`` call per version.
  Throughputs in versions/s, so ``ratio`` is the speedup; the issue expects 50x. Both sides
  get the same list of versions: listing is the same for both, and moto's listing of
  versions is slow enough (about 40 s for 10,000) to drown the difference, so the versions
  are written and listed through moto's backend in this process, untimed. After each run the
  prefix is checked empty and the run's result beside it kept.
- ``sweep_<n>``: the orphan sweep's work on an AWS unit for ``n`` tagged resources (10, 100,
  1,000; quick: 10, 100): security groups tagged ``sciflow:run-id``, ``RESOURCES_PER_RUN`` to a
  run, found once with ``tagged_run_ids`` and removed run by run with
  ``remove_run_resources``, as ``cleanup_sweep`` and ``secure_cleanup`` do. In ms per
  resource, against the same at the previous count: a ratio near 1 (or below, while fixed
  costs are shared out) means the time grows linearly; every resource is checked gone after
  each count.

Per run, the sweep asks each service a constant number of questions (EC2 for that run's
groups only, by tag value). moto answers a filtered DescribeSecurityGroups by scanning every
group (about 1.3 s at 1,000 groups here, as long as an unfiltered one), so on moto the time
per resource still grows with the account's size; AWS indexes tags.

moto answers from memory on this machine: a call costs an HTTP round trip and moto's own
work, about 10 ms for one DeleteObject and 0.4 ms per version inside a DeleteObjects here
(10,000 versions: 108 s against 4 s, 27x, with other work on the machine), so the ratio on
moto stays below the 50x goal. Against AWS a call costs tens of milliseconds of latency and a
version inside a batch little, so there the batched delete gains more, not less.

Run from the repository root: ``python -m benchmarks.cleanup [--quick] [--repeats N]``.
"""

from __future__ import annotations

import itertools
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from benchmarks._common import (
    Metric,
    aws_pointed_at,
    median_of,
    parse_args,
    repeats_for,
    write_results,
)

NAME = "cleanup"
BUCKET = "bench-cleanup"
RUN_DIR = f"s3://{BUCKET}/runs/bench/0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b"
VERSIONS_FULL = 10_000
VERSIONS_QUICK = 1_000
VERSIONS_PER_KEY = 4
GOAL_SPEEDUP = 50.0
SWEEP_COUNTS_FULL = (10, 100, 1_000)
SWEEP_COUNTS_QUICK = (10, 100)
RESOURCES_PER_RUN = 10
# Linear growth: a resource in a big sweep may cost at most this much more than in a small one.
GOAL_LINEAR = 2.0


@contextmanager
def moto_s3() -> Iterator[None]:
    """Start moto's server on 127.0.0.1, AWS variables pointing at it; restore them after."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        with aws_pointed_at(f"http://{host}:{port}"):
            yield
    finally:
        server.stop()


def _prefix(run_dir: str) -> tuple[str, str]:
    from tasks.cleanup.intermediates import intermediates_uri
    from tasks.storage.objects import Location

    loc = Location.parse(intermediates_uri(run_dir))
    return loc.bucket, loc.key.rstrip("/") + "/"


def litter(run_dir: str, versions: int) -> list[tuple[str, str]]:
    """``versions`` object versions under the run's ``tmp/`` and one result beside it.

    Written through moto's backend in this process (setup, untimed); returns the
    ``(key, version id)`` pairs as a listing would.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["aws"]
    bucket, prefix = _prefix(run_dir)
    keys = [f"{prefix}slices/{i:05d}.npy" for i in range(-(-versions // VERSIONS_PER_KEY))]
    writes = [key for key in keys for _ in range(VERSIONS_PER_KEY)][:versions]
    written = [(key, backend.put_object(bucket, key, b"x").version_id) for key in writes]
    backend.put_object(bucket, f"{prefix.removesuffix('tmp/')}snr.npy", b"result")
    return written


def left_under(s3: Any, run_dir: str) -> tuple[int, bool]:
    """Versions and markers still under ``tmp/``, and whether the run's result is there."""
    bucket, prefix = _prefix(run_dir)
    left = 0
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        left += len(page.get("Versions", [])) + len(page.get("DeleteMarkers", []))
    result = f"{prefix.removesuffix('tmp/')}snr.npy"
    kept = "Contents" in s3.list_objects_v2(Bucket=bucket, Prefix=result)
    return left, kept


def delete_batched(s3: Any, bucket: str, versions: list[tuple[str, str]]) -> None:
    """Ours: ``DeleteObjects``, 1,000 versions a call."""
    from tasks.storage.purge import delete_versions

    if refused := delete_versions(s3, bucket, versions):
        raise RuntimeError(f"batched delete refused {len(refused)}: {refused[:3]}")


def delete_one_by_one(s3: Any, bucket: str, versions: list[tuple[str, str]]) -> None:
    """The baseline: one ``DeleteObject`` call per version."""
    for key, version_id in versions:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version_id)


def measure_deletes(versions: int, repeats: int) -> tuple[Metric, dict[str, Any]]:
    """Both ways of deleting ``versions`` fresh versions, ``repeats`` times each."""
    import boto3

    s3 = boto3.client("s3")
    bucket, _ = _prefix(RUN_DIR)
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})

    def timed(delete: Any) -> float:
        listed = litter(RUN_DIR, versions)
        started = time.perf_counter()
        delete(s3, bucket, listed)
        seconds = time.perf_counter() - started
        left, kept = left_under(s3, RUN_DIR)
        if left or not kept:
            raise RuntimeError(f"after the deletes: {left} versions left, result kept: {kept}")
        return seconds

    ours_s, ours_runs = median_of(lambda: timed(delete_batched), repeats, warmup=0)
    base_s, base_runs = median_of(lambda: timed(delete_one_by_one), repeats, warmup=0)
    ours, base = versions / ours_s, versions / base_s
    metric = Metric(
        "delete_versions",
        ours,
        base,
        "one DeleteObject call per version",
        "versions/s",
        f">= {GOAL_SPEEDUP:g}x",
        ours / base >= GOAL_SPEEDUP,
    )
    print(
        f"{versions} versions: batched {ours_s:.2f} s, one by one {base_s:.2f} s: "
        f"{ours / base:.1f}x faster"
    )
    return metric, {"versions": versions, "batched_s": ours_runs, "one_by_one_s": base_runs}


def tag_security_groups(count: int) -> list[str]:
    """``count`` security groups, ``RESOURCES_PER_RUN`` to a fresh run id; returns the run ids."""
    import uuid

    import boto3

    from tasks.aws.tags import RUN_ID_TAG

    ec2 = boto3.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    run_ids = [str(uuid.uuid4()) for _ in range(-(-count // RESOURCES_PER_RUN))]
    for index in range(count):
        run_id = run_ids[index // RESOURCES_PER_RUN]
        ec2.create_security_group(
            GroupName=f"bench-{run_id[:8]}-{index}",
            Description="left behind by a run",
            VpcId=vpc,
            TagSpecifications=[
                {"ResourceType": "security-group", "Tags": [{"Key": RUN_ID_TAG, "Value": run_id}]}
            ],
        )
    return run_ids


def sweep_once(count: int) -> float:
    """Seconds to find ``count`` fresh tagged resources and remove them run by run."""
    from tasks.cleanup.resources import Clients, remove_run_resources, tagged_run_ids

    tag_security_groups(count)
    clients = Clients()
    started = time.perf_counter()
    found = tagged_run_ids(clients=clients)
    removed = sum(len(remove_run_resources(run_id, clients).removed) for run_id in found)
    seconds = time.perf_counter() - started
    if removed != count or tagged_run_ids(clients=clients):
        raise RuntimeError(f"the sweep removed {removed} of {count} tagged resources")
    return seconds


def measure_sweep(counts: Sequence[int], repeats: int) -> tuple[list[Metric], dict[str, Any]]:
    """Sweep time per resource at each count, against the smallest count's."""
    per_resource: dict[int, float] = {}
    runs: dict[str, list[float]] = {}
    for count in counts:
        seconds, runs[str(count)] = median_of(lambda c=count: sweep_once(c), repeats, warmup=0)
        per_resource[count] = 1000 * seconds / count
        print(
            f"sweep of {count} tagged resources: {seconds:.2f} s, {per_resource[count]:.1f} ms each"
        )
    metrics = [
        Metric(
            f"sweep_{count}",
            per_resource[count],
            per_resource[previous],
            f"ms per resource in a sweep of {previous}",
            "ms/resource",
            f"<= {GOAL_LINEAR:g}x",
            per_resource[count] <= GOAL_LINEAR * per_resource[previous],
        )
        for previous, count in itertools.pairwise(counts)
    ]
    return metrics, {"resources_per_run": RESOURCES_PER_RUN, "seconds": runs}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = repeats_for(args, quick_default=2)
    versions = VERSIONS_QUICK if args.quick else VERSIONS_FULL
    with moto_s3():
        deletes, delete_runs = measure_deletes(versions, repeats)
        counts = SWEEP_COUNTS_QUICK if args.quick else SWEEP_COUNTS_FULL
        sweeps, sweep_runs = measure_sweep(counts, repeats)
    write_results(NAME, [deletes, *sweeps], args, deletes=delete_runs, sweep=sweep_runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
