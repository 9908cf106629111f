"""A sciflow flow for the SIGKILL test: it launches what would outlive it, then waits to die.

Its launched process runs in its own session with no parent-death signal, as a Batch job or
an ECS task outlives a killed flow process; only the launch record says it is there.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from prefect.runtime import flow_run

from blocks.compute_unit import load_unit
from tasks.compute.hooks import sciflow_flow
from tasks.compute.launches import current_record, process_launch
from tasks.settings import get_settings

PID_FILE = "flow.pid"


@sciflow_flow(name="e2e-crash-victim")
def crash_victim(unit: str = "local", hold_s: float = 300.0) -> None:
    """Launch a recorded ``sleep``, write scratch and intermediates, then wait ``hold_s``."""
    run_id = flow_run.get_id()
    run_dir = Path(load_unit(unit).run_dir(run_id))
    # Not on this process's stdout: the worker reads that pipe until every holder closes it.
    child = subprocess.Popen(
        ["sleep", str(hold_s)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    current_record().add(process_launch(child.pid, "outlives its flow"))
    scratch = get_settings().scratch_root / run_id
    scratch.mkdir(parents=True)
    (scratch / "kspace.npy").write_bytes(b"patient data")
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    (run_dir / "tmp" / "slice-0.npy").write_bytes(b"slice")
    # Last, so a reader that sees it sees everything above.
    (run_dir / PID_FILE).write_text(str(os.getpid()))
    deadline = time.monotonic() + hold_s
    while time.monotonic() < deadline:  # until the test kills this process
        time.sleep(0.5)
