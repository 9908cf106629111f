"""Deployment overhead: the MR flow through a deployment and process worker vs the numerics.

Ours: ``mr_reconstruction`` deployed with ``flow.from_source(...).deploy`` to a real
``prefect server`` and run by a ``process`` worker (``prefect worker start --pool
sciflow-local --type process``, asking for runs every 2 s as ``make worker`` starts it), both
started here on 127.0.0.1 with their own home and database, no telemetry, and HTTP(S) proxies
pointed at a recording proxy that answers 502 (any request it records fails the benchmark). Seconds
from ``run_deployment`` until the run is seen final (polled every 0.2 s): worker pickup, the
flow's process start, the flow (stage, noise, SNR on Dask, outputs written) and its teardown.

Baseline: the numerics called directly, as a script would: ``read_raw``, the noise
statistics and ``snr_map`` per slice, in batches of the flow's ``SLICES_PER_TASK`` over as
many threads as the flow's Dask workers have (the local unit's, for the job's size class),
so the ratio is orchestration and output writing, not parallelism.

Jobs (phantom MRD files written with ``write_mrd``, PMR with B1, NR 100):

- ``mr_small``: 4 slices of 96x96, 8 coils;
- ``mr_large``: 48 slices of 192x192, 16 coils (tens of seconds of numerics on 2 cores);
  goal: at most 10% slower than the numerics (``--quick`` runs the small job only).

``first_log``: seconds from starting ``prefect deployment run`` (the CLI, the small job) to
the flow's first log line (the earliest log of the run not from the worker, read back from
the API), against starting ``python -c`` calling the flow directly, pointed at the same
server, to that run's first log line.

Run from the repository root: ``python -m benchmarks.orchestration [--quick] [--repeats N]``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks._common import (
    REPO_ROOT,
    Metric,
    median_of,
    parse_args,
    repeats_for,
    time_median,
    write_results,
)

NAME = "orchestration"
DEPLOYMENT_NAME = "bench-orchestration"
FLOW_NAME = "mr-reconstruction"
ENTRYPOINT = "flows/mr_reconstruction.py:mr_reconstruction"
OPTIONS = {"method": "pmr", "recon": "b1", "replicas": 100}
GOAL_RATIO = 1.10
POLL_S = 0.2
RUN_TIMEOUT_S = 900.0
LOG_TIMEOUT_S = 30.0
# How often the worker asks for due runs, as `make worker` sets it (WORKER_QUERY_S there).
WORKER_QUERY_S = 2
# Loggers of the worker itself; every other log of a flow run comes from the flow's process.
WORKER_LOGGERS = ("prefect.flow_runs.worker", "prefect.workers")


@dataclass(frozen=True)
class Job:
    """One phantom input: matrix (n x n), coils and slices."""

    name: str
    n: int
    coils: int
    slices: int

    def label(self) -> str:
        """E.g. ``4 slices of 96x96x8``."""
        return f"{self.slices} slices of {self.n}x{self.n}x{self.coils}"


SMALL = Job("mr_small", 96, 8, 4)
LARGE = Job("mr_large", 192, 16, 48)


def write_input(job: Job, directory: Path) -> Path:
    """The job's phantom as an MRD file with a noise scan (as tests/flows write theirs)."""
    from tasks.mr.io import write_mrd
    from tasks.mr.phantom import make_phantom, phantom_acquisition

    phantom = make_phantom(job.n, job.n, job.coils, amplitude=40.0, correlation=0.3, seed=5)
    signal, noise = phantom_acquisition(
        phantom, slices=job.slices, noise_samples=job.n * 200, seed=6
    )
    return write_mrd(
        directory / f"{job.name}.h5", signal, noise, fov_mm=(256.0, 256.0, 5.0), dwell_s=5e-6
    )


def numerics_threads(path: Path) -> int:
    """Threads of the flow's Dask cluster for this input: the local unit, its size class."""
    from blocks.compute_unit import local_unit
    from tasks.mr.estimate import estimate_job
    from tasks.mr.io import read_info
    from tasks.mr.options import MrOptions

    _, shape = read_info(path)
    size = estimate_job(shape, MrOptions(**OPTIONS)).size_class
    workers = local_unit().dask_workers[size]
    return workers.n_workers * workers.threads_per_worker


def direct_numerics(path: Path, threads: int) -> int:
    """What the flow computes, called directly: read, noise statistics, SNR per slice.

    Returns:
        The number of SNR maps.
    """
    from flows.mr_reconstruction import SLICES_PER_TASK
    from tasks.mr.io import read_raw
    from tasks.mr.noise import noise_statistics
    from tasks.mr.options import MrOptions
    from tasks.mr.snr import snr_map

    options = MrOptions(**OPTIONS)
    raw = read_raw(path)
    stats = noise_statistics(raw, options.convention)
    info = raw.info
    acl = info.acs_block or ((None, info.acs_lines) if info.acs_lines else None)
    recon_spec = options.recon_spec(header_acceleration=info.acceleration, header_acl=acl)
    snr_spec = options.snr_spec()
    slices = list(range(raw.signal.shape[3]))
    batches = [slices[i : i + SLICES_PER_TASK] for i in range(0, len(slices), SLICES_PER_TASK)]

    def batch(indices: list[int]) -> int:
        for index in indices:
            snr_map(raw.signal[:, :, :, index, 0], stats.noise_cov, recon_spec, snr_spec)
        return len(indices)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(batch, batches))


# --- server, worker, deployment ------------------------------------------------------------------


@dataclass
class Stack:
    """The running server and worker, and the environment that reaches them."""

    api_url: str
    env: dict[str, str]
    proxy: Any
    storage: Path


@contextmanager
def server_and_worker(workdir: Path) -> Iterator[Stack]:
    """``prefect server start`` and a process worker on loopback, the flow deployed.

    Started the way tests/e2e starts them (``tests/e2e/conftest.py``), this process's Prefect
    client pointed at the server while it runs.
    """
    from prefect import flow
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.e2e.conftest import (
        SERVER_START_TIMEOUT_S,
        VENV_BIN,
        WORK_POOL,
        WORKER_START_TIMEOUT_S,
        RecordingProxy,
        free_port,
        start_service,
        subprocess_env,
        wait_for_worker,
        wait_until_healthy,
    )

    home, storage, scratch = workdir / "home", workdir / "runs", workdir / "scratch"
    home.mkdir()
    with ExitStack() as stack:
        proxy = stack.enter_context(RecordingProxy())
        port = free_port()
        api_url = f"http://127.0.0.1:{port}/api"
        env = subprocess_env(home, api_url, storage, scratch, proxy.url)
        prefect = str(VENV_BIN / "prefect")
        server = start_service(
            "prefect server",
            [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env,
            workdir / "server.log",
        )
        stack.callback(server.stop)
        wait_until_healthy(f"{api_url}/health", server, SERVER_START_TIMEOUT_S)
        worker = start_service(
            "process worker",
            [prefect, "worker", "start", "--pool", WORK_POOL, "--type", "process"],
            {**env, "PREFECT_WORKER_QUERY_SECONDS": str(WORKER_QUERY_S)},
            workdir / "worker.log",
        )
        stack.callback(worker.stop)
        wait_for_worker(api_url, WORK_POOL, worker, WORKER_START_TIMEOUT_S)
        stack.enter_context(temporary_settings({PREFECT_API_URL: api_url}))
        flow.from_source(source=str(REPO_ROOT), entrypoint=ENTRYPOINT).deploy(
            DEPLOYMENT_NAME, work_pool_name=WORK_POOL, print_next_steps=False, ignore_warnings=True
        )
        yield Stack(api_url, env, proxy, storage)
        server.check_alive()
        worker.check_alive()


def wait_final(flow_run_id: Any) -> Any:
    """The flow run once it is final; raises if it did not complete or the deadline passes."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + RUN_TIMEOUT_S
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} still {flow_run.state_name}")
            time.sleep(POLL_S)
    if flow_run.state_name != "Completed":
        raise RuntimeError(f"flow run {flow_run_id} ended {flow_run.state_name}: {flow_run.state}")
    return flow_run


def phases(flow_run_id: Any) -> dict[str, float]:
    """Seconds from the run's creation to Pending (worker pickup), to Running, to the end."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run_id)
    first: dict[str, datetime] = {}
    for state in sorted(states, key=lambda s: s.timestamp):
        first.setdefault(str(state.type.value), state.timestamp)
    created = first["SCHEDULED"]
    return {
        "pickup_s": (first["PENDING"] - created).total_seconds(),
        "start_s": (first["RUNNING"] - first["PENDING"]).total_seconds(),
        "running_s": (first["COMPLETED"] - first["RUNNING"]).total_seconds(),
    }


def deployment_run(stack: Stack, path: Path, record: list[dict[str, Any]]) -> float:
    """Seconds of one ``run_deployment`` until it is seen final; its phases appended."""
    from prefect.deployments import run_deployment

    started = time.perf_counter()
    flow_run = run_deployment(
        f"{FLOW_NAME}/{DEPLOYMENT_NAME}",
        parameters={"signal": str(path), "options": OPTIONS},
        timeout=0,
    )
    wait_final(flow_run.id)
    elapsed = time.perf_counter() - started
    info = json.loads((stack.storage / "local" / str(flow_run.id) / "info.json").read_text())
    record.append(
        {"wall_s": elapsed, **phases(flow_run.id), "flow_timings_s": info["sciflow"]["timings_s"]}
    )
    return elapsed


def first_log_seconds(flow_run_id: str, started: float) -> dict[str, Any]:
    """Seconds from ``started`` (epoch) to the first worker and the first flow log lines.

    Waits for the run to complete, then for its process's first line to reach the API (logs
    are sent in batches, so a short run can be final before its first batch is stored).
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    wait_final(flow_run_id)
    deadline = time.monotonic() + LOG_TIMEOUT_S
    by_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        while True:
            logs = client.read_logs(by_run, sort=LogSort.TIMESTAMP_ASC)
            flow = [log for log in logs if not log.name.startswith(WORKER_LOGGERS)]
            if flow:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} has no log line of its own: {logs}")
            time.sleep(POLL_S)
    worker = [log for log in logs if log.name.startswith(WORKER_LOGGERS)]
    times: dict[str, Any] = {
        "flow_s": flow[0].timestamp.timestamp() - started,
        "first_flow_log": flow[0].message,
    }
    if worker:
        times["worker_s"] = worker[0].timestamp.timestamp() - started
    return times


def cli_first_log(stack: Stack, path: Path) -> dict[str, Any]:
    """``prefect deployment run`` of the small job, timed to the flow's first log line."""
    from tests.e2e.conftest import VENV_BIN, flow_run_id_from

    params = json.dumps({"signal": str(path), "options": OPTIONS})
    deployment = f"{FLOW_NAME}/{DEPLOYMENT_NAME}"
    started = time.time()
    done = subprocess.run(  # noqa: S603 - our venv's prefect, fixed arguments
        [str(VENV_BIN / "prefect"), "deployment", "run", deployment, "--params", params],
        cwd=REPO_ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return first_log_seconds(flow_run_id_from(done.stdout), started)


def direct_first_log(stack: Stack, path: Path) -> dict[str, Any]:
    """A fresh ``python -c`` calling the flow, timed to its first log line."""
    code = (
        "from flows.mr_reconstruction import mr_reconstruction; "
        f"print(mr_reconstruction(signal={str(path)!r}, options={OPTIONS!r}).output)"
    )
    started = time.time()
    done = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=stack.env | {"PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"direct flow call failed:\n{done.stderr[-2000:]}")
    run_id = done.stdout.strip().splitlines()[-1].rstrip("/").rsplit("/", 1)[-1]
    return first_log_seconds(run_id, started)


# --- main ----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = repeats_for(args, quick_default=1)
    jobs = [SMALL] if args.quick else [SMALL, LARGE]
    metrics: list[Metric] = []
    runs: dict[str, Any] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sciflow-bench-") as tmp:
        workdir = Path(tmp)
        inputs = {job.name: write_input(job, workdir) for job in jobs}
        with server_and_worker(workdir) as stack:
            for job in jobs:
                path = inputs[job.name]
                threads = numerics_threads(path)
                # A warm-up run of the small job (imports, the worker's first run); the large
                # one's runs each take tens of seconds and start no colder than the later ones.
                warmup = 1 if job is SMALL else 0
                direct_s, direct_runs = time_median(
                    lambda p=path, t=threads: direct_numerics(p, t), repeats, warmup
                )
                record: list[dict[str, Any]] = []
                deployed_s, deployed_runs = median_of(
                    lambda p=path, r=record: deployment_run(stack, p, r), repeats, warmup
                )
                runs[job.name] = {
                    "job": job.label(),
                    "threads": threads,
                    "direct_s": direct_runs,
                    "deployment_s": deployed_runs,
                    "deployment_runs": record[-len(deployed_runs) :],
                }
                goal = job is LARGE
                ratio = deployed_s / direct_s
                metrics.append(
                    Metric(
                        job.name,
                        deployed_s,
                        direct_s,
                        f"numerics called directly on {threads} threads",
                        "s",
                        f"<= {GOAL_RATIO:g}x" if goal else None,
                        bool(ratio <= GOAL_RATIO) if goal else None,
                    )
                )
                last = record[-1]
                print(
                    f"{job.name} ({job.label()}): deployment {deployed_s:.1f} s, numerics "
                    f"{direct_s:.1f} s, ratio {ratio:.2f}; last run: pickup "
                    f"{last['pickup_s']:.1f} s, process start {last['start_s']:.1f} s, running "
                    f"{last['running_s']:.1f} s (flow timings {last['flow_timings_s']})"
                )

            small = inputs[SMALL.name]
            cli = [cli_first_log(stack, small) for _ in range(repeats)]
            direct = [direct_first_log(stack, small) for _ in range(repeats)]
            egress = stack.proxy.requests
    if egress:
        raise RuntimeError(f"something reached beyond loopback: {egress}")
    runs["first_log"] = {"deployment_run": cli, "python_direct": direct}
    cli_s = statistics.median(r["flow_s"] for r in cli)
    direct_log_s = statistics.median(r["flow_s"] for r in direct)
    print(
        f"first log line: {cli_s:.1f} s after `prefect deployment run` "
        f"(worker's first line at {cli[-1].get('worker_s', float('nan')):.1f} s), "
        f"{direct_log_s:.1f} s after `python -c` calling the flow"
    )
    metrics.append(
        Metric(
            "first_log",
            cli_s,
            direct_log_s,
            "fresh `python -c` calling the flow",
            "s",
        )
    )
    write_results(
        NAME,
        metrics,
        args,
        options=OPTIONS,
        jobs={job.name: job.label() for job in jobs},
        repeats=repeats,
        runs_s=runs,
        worker_query_s=WORKER_QUERY_S,
        machine_load_1m=os.getloadavg()[0],
        wall_s=time.perf_counter() - started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
