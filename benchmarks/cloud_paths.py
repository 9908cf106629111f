"""Dask on Fargate's orchestration cost: the MR flow on the ECS stand-in vs a LocalCluster.

The same ``mr_reconstruction`` run (one ``s3://`` MRD input in moto, AC with B1, the same
worker count) on two units: ``standin``, whose FargateCluster's scheduler and workers run as
processes in network namespaces through the ECS stand-in (tests/standin), and the built-in
``local`` unit (workers are threads of this process). The work is the same; the ratio is
what starting a cluster through ECS (task definitions, RunTask, processes, secrets) and
reaching it over the stand-in's bridge costs per run. Reported in seconds per flow run.

It needs what the stand-in needs: Linux, root (CAP_NET_ADMIN) and ``ip``/``unshare``; where
they are missing it prints why and exits 0 without results.

Run from the repository root: ``python -m benchmarks.cloud_paths [--quick] [--repeats N]``.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from benchmarks._common import FAKE_AWS, Metric, median_of, parse_args, repeats_for, write_results

NAME = "cloud_paths"
BUCKET = "bench-sciflow"
UNIT = "standin"
N_WORKERS = 2
OPTIONS = {"method": "ac", "recon": "b1"}
# Slices of the phantom input: 8 Dask tasks of 4 slices (quick: 2).
SLICES_FULL = 32
SLICES_QUICK = 8


@contextmanager
def standin(workdir: Path) -> Iterator[Any]:
    """Moto on loopback, the stand-in's network and ECS, a Prefect server; the unit saved.

    Yields:
        The ``standin`` ComputeUnit, with this process's Prefect API URL on the bridge.
    """
    import boto3
    from moto.server import ThreadedMotoServer
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    from tests.standin.containers import Relay, image_environment, make_shims
    from tests.standin.ecs import EcsStandIn
    from tests.standin.fargate import (
        REGION,
        bridge_api_url,
        enable_long_task_arns,
        prefect_api_secret,
        standin_unit,
    )
    from tests.standin.fixtures import StandInNetwork
    from tests.standin.network import Network

    with ExitStack() as stack:
        moto_server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto_server.start()
        stack.callback(moto_server.stop)
        host, port = moto_server.get_host_and_port()
        os.environ.update(FAKE_AWS | {"AWS_ENDPOINT_URL": f"http://{host}:{port}"})

        network = stack.enter_context(Network())
        moto = Relay(network.host_address, port)
        stack.callback(moto.close)
        for name in ("home", "logs"):
            (workdir / name).mkdir()
        env = image_environment(
            network, make_shims(workdir / "shims"), workdir / "home", moto.url(), REGION
        )
        net = StandInNetwork(network, moto, env, workdir / "logs")
        stack.callback(lambda: [relay.close() for relay in net.relays])
        stack.enter_context(prefect_test_harness(server_startup_timeout=120))
        stack.enter_context(EcsStandIn(network, env, workdir / "logs", REGION).installed())

        made = net.make_vpc(cluster="sciflow")
        enable_long_task_arns()
        boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
        url = bridge_api_url(net)
        unit = standin_unit(
            UNIT, made, prefect_api_secret(url), f"s3://{BUCKET}/runs", n_workers=N_WORKERS
        )
        unit.save(UNIT, overwrite=True)
        # The flow host and the workers share one API URL, as on AWS (the Dask runner ships
        # the flow's settings with each task).
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
        yield unit


def upload_input(workdir: Path, slices: int) -> str:
    """A phantom MRD file of ``slices`` slices in moto S3; returns its URI."""
    import boto3

    from tasks.mr.io import write_mrd
    from tasks.mr.phantom import make_phantom, phantom_acquisition

    phantom = make_phantom(96, 96, 8, amplitude=40.0, correlation=0.3, seed=5)
    signal, noise = phantom_acquisition(phantom, slices=slices, noise_samples=96 * 200, seed=6)
    path = write_mrd(
        workdir / "phantom.h5", signal, noise, fov_mm=(256.0, 256.0, 5.0), dwell_s=5e-6
    )
    boto3.client("s3").upload_file(str(path), BUCKET, "inputs/phantom.h5")
    return f"s3://{BUCKET}/inputs/phantom.h5"


def timed_run(signal: str, unit: str, outputs: Path) -> float:
    """Seconds of one ``mr_reconstruction`` run on ``unit``; its worker scratch removed."""
    from flows.mr_reconstruction import mr_reconstruction

    started = time.perf_counter()
    result = mr_reconstruction(
        signal=signal, options=OPTIONS, unit=unit, output=None if unit == UNIT else str(outputs)
    )
    elapsed = time.perf_counter() - started
    run_id = result.output.rstrip("/").rsplit("/", 1)[-1]
    # The stand-in's workers share this disk: their scratch would outlive the run.
    shutil.rmtree(Path(tempfile.gettempdir()) / "sciflow-scratch" / run_id, ignore_errors=True)
    return elapsed


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    args = parse_args(__doc__.splitlines()[0], argv)
    from tests.standin.network import cannot_make_namespaces

    if reason := cannot_make_namespaces():
        # Results without metrics, so `python -m benchmarks` counts it as run, not failed.
        print(f"skipped {NAME}: the ECS stand-in cannot run here: {reason}")
        write_results(NAME, [], args, skipped=reason)
        return 0
    repeats = repeats_for(args, quick_default=1)
    slices = SLICES_QUICK if args.quick else SLICES_FULL
    logging.getLogger("distributed").setLevel(logging.ERROR)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's request lines
    with tempfile.TemporaryDirectory(prefix="sciflow-bench-") as tmp:
        workdir = Path(tmp)
        os.environ["SCIFLOW_STORAGE_ROOT"] = str(workdir / "runs")
        os.environ["SCIFLOW_SCRATCH_ROOT"] = str(workdir / "scratch")
        with standin(workdir):
            signal = upload_input(workdir, slices)
            fargate, fargate_runs = median_of(lambda: timed_run(signal, UNIT, workdir), repeats)
            local, local_runs = median_of(lambda: timed_run(signal, "local", workdir), repeats)
    runs = {"fargate": fargate_runs, "local": local_runs}
    metrics = [
        Metric(
            "mr_flow_fargate_standin",
            fargate,
            local,
            f"same flow on a {N_WORKERS}-worker LocalCluster",
            "s",
        )
    ]
    print(f"orchestration overhead: {fargate / local:.2f}x ({fargate:.1f} s vs {local:.1f} s)")
    write_results(
        NAME, metrics, args, slices=slices, n_workers=N_WORKERS, repeats=repeats, runs_s=runs
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
