"""Preflight: check that a compute unit can store, compute in parallel and launch MPI."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from prefect import task
from pydantic import BaseModel, Field

from blocks.compute_unit import SizeClass, load_unit
from tasks.cleanup.audit import Check
from tasks.compute.dask import dask_task_runner
from tasks.compute.hooks import sciflow_flow
from tasks.compute.run_context import RunContext
from tasks.compute.spending import check_spending
from tasks.progress import Progress, publish_summary


class PreflightResult(BaseModel):
    """The checks a preflight made."""

    ok: bool = Field(description="Whether every check passed.")
    checks: list[dict[str, str | bool]] = Field(description="name, ok and detail per check.")
    report_uri: str = Field(description="URI of preflight.json in the run directory.")


@task
def probe_storage(run: RunContext) -> Check:
    """Write, read back and delete a file in the run directory."""
    uri = run.uri("preflight", "probe.bin")
    payload = os.urandom(1024)
    run.store.write_bytes(uri, payload, tags=run.tags)
    same = run.store.read_bytes(uri) == payload
    run.store.remove(run.uri("preflight"))
    return Check("storage round trip", same, f"{len(payload)} bytes via {run.root}")


@task
def probe_worker(index: int) -> tuple[int, str, str]:
    """Which Dask worker (local workers share one process) and host ran this task."""
    from distributed import get_worker

    return index, get_worker().address, platform.node()


@task
def probe_mpiexec() -> Check:
    """The MPI launcher this environment ships (the MPICH wheel's ``mpiexec``)."""
    mpiexec = shutil.which("mpiexec") or str(Path(sys.executable).with_name("mpiexec"))
    if not Path(mpiexec).exists():
        return Check("mpiexec", False, "not found beside Python nor on PATH")
    out = subprocess.run(  # noqa: S603 - fixed argv, no shell
        [mpiexec, "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    version = next((ln for ln in out.stdout.splitlines() if "Version:" in ln), "version unknown")
    return Check("mpiexec", out.returncode == 0, f"{mpiexec}: {version.strip()}")


@sciflow_flow(name="preflight")
def preflight(unit: str = "local", size: SizeClass = "small", probes: int = 8) -> PreflightResult:
    """Check a compute unit end to end before real work goes to it.

    Args:
        unit: Compute unit to check.
        size: Size class whose Dask cluster to start.
        probes: Tasks spread over the Dask workers.
    """
    compute_unit = load_unit(unit)
    check_spending(compute_unit, size)
    run = RunContext.current(compute_unit)
    checks = [probe_storage(run), probe_mpiexec()]

    started = time.perf_counter()
    with dask_task_runner(compute_unit, size, run.tags, run.launches) as runner:
        futures = [runner.submit(probe_worker, {"index": i}) for i in range(probes)]
        with Progress(total=probes, what="probes", key=f"preflight-{run.run_id[:8]}") as bar:
            answers = []
            for future in futures:
                answers.append(future.result())
                bar.advance()
    workers = {(address, host) for _, address, host in answers}
    expected = compute_unit.dask_workers[size].n_workers
    checks.append(
        Check(
            "dask workers",
            len(answers) == probes and len(workers) <= expected,
            f"{probes} tasks on {len(workers)} of {expected} workers "
            f"in {time.perf_counter() - started:.1f} s",
        )
    )

    rows = [{"check": c.name, "ok": c.ok, "detail": c.detail} for c in checks]
    report_uri = run.store.write_text(run.uri("preflight.json"), json.dumps(rows, indent=2))
    publish_summary(f"Preflight of unit {unit}", rows, key=f"preflight-{unit}")
    return PreflightResult(ok=all(c.ok for c in checks), checks=rows, report_uri=report_uri)
