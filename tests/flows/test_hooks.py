"""Every flow ends the same way: the same stop and cleanup hooks on every kind of end."""

from __future__ import annotations

import importlib
import json
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from prefect import Flow
from prefect.runtime import flow_run

from blocks.compute_unit import DEFAULT_LIMITS, ComputeUnit, UnitLimits, local_unit
from tasks.compute import hooks
from tasks.compute.hooks import (
    END_HOOKS,
    cleanup_on_exit,
    run_wall_time_s,
    sciflow_flow,
    stop_launches,
)
from tasks.compute.launches import current_record, process_launch

FLOW_MODULES = sorted(
    p.stem
    for p in (Path(__file__).resolve().parents[2] / "flows").glob("*.py")
    if p.stem != "__init__"
)


def _flows() -> list[Flow]:
    found = []
    for name in FLOW_MODULES:
        module = importlib.import_module(f"flows.{name}")
        found += [
            v
            for v in vars(module).values()
            if isinstance(v, Flow) and v.__module__ == module.__name__
        ]
    return found


def test_every_flow_module_defines_a_flow():
    assert {f.fn.__module__ for f in _flows()} == {f"flows.{name}" for name in FLOW_MODULES}


@pytest.mark.parametrize(
    "hooks",
    ["on_completion_hooks", "on_failure_hooks", "on_crashed_hooks", "on_cancellation_hooks"],
)
def test_every_flow_stops_its_launches_then_cleans_up(hooks):
    for flow in _flows():
        assert list(getattr(flow, hooks)) == [stop_launches, cleanup_on_exit], flow.name
    assert END_HOOKS == (stop_launches, cleanup_on_exit)


def _limits(**wall_time_s: int) -> UnitLimits:
    """The default limits with these wall times (s) by size class."""
    return UnitLimits(
        **{
            size: DEFAULT_LIMITS[size].model_copy(update={"wall_time_s": seconds})
            for size, seconds in wall_time_s.items()
        }
    )


def test_a_runs_wall_time_is_that_of_the_size_class_its_pool_serves():
    unit = ComputeUnit(
        name="lab",
        limits=_limits(small=60, large=120, multinode=300, gpu=600),
        work_pools={"small": "lab-small", "large": "lab-large", "multinode": "lab-batch",
                    "gpu": "lab-batch"},
    )  # fmt: skip
    assert run_wall_time_s(unit, "lab-small") == 60
    assert run_wall_time_s(unit, "lab-large") == 120
    assert run_wall_time_s(unit, "lab-batch") == 600  # two classes: the longer
    assert run_wall_time_s(unit, None) == 600  # in no pool (called from Python): the longest
    assert run_wall_time_s(unit, "elsewhere") == 600


def test_the_local_units_one_pool_gets_its_longest_wall_time():
    unit = local_unit()
    longest = max(unit.size_limits(size).wall_time_s for size in unit.work_pools)
    assert run_wall_time_s(unit, "sciflow-local") == longest


def test_the_wall_clock_leaves_a_flows_form_and_version_as_prefect_makes_them():
    from flows.multinode_simulation import multinode_simulation

    source = Path(multinode_simulation.fn.__wrapped__.__code__.co_filename)
    assert source.name == "multinode_simulation.py"
    from prefect.utilities.hashing import file_hash

    assert multinode_simulation.version == file_hash(str(source))
    assert "phantom" in multinode_simulation.parameters.properties


@sciflow_flow(name="test-outlives-its-limit")
def outlives_its_limit(unit: str = "local", hold_s: float = 120.0) -> None:
    """Launch a recorded ``sleep`` in its own session, then wait ``hold_s``."""
    child = subprocess.Popen(["sleep", str(hold_s)], start_new_session=True)
    current_record().add(process_launch(child.pid, "sleeper"))
    Path(local_unit().run_dir(flow_run.get_id()), "sleeper.pid").write_text(str(child.pid))
    deadline = time.monotonic() + hold_s
    while time.monotonic() < deadline:
        time.sleep(0.1)


def test_a_run_past_its_wall_time_is_timed_out_and_its_launches_stopped(monkeypatch):
    monkeypatch.setattr(hooks, "run_wall_time_s", lambda unit, pool: 2)
    started = time.monotonic()

    state = outlives_its_limit(return_state=True)

    assert time.monotonic() - started < 60
    assert state.name == "TimedOut"
    assert state.is_failed()
    assert "ran past its limit of 2 s (unit 'local', limits.<size class>.wall_time_s" in (
        state.message
    )
    run_id = str(state.state_details.flow_run_id)
    sleeper = int(Path(local_unit().run_dir(run_id), "sleeper.pid").read_text())
    assert not psutil.pid_exists(sleeper) or psutil.Process(sleeper).status() == "zombie"
    record = json.loads(Path(local_unit().audit_uri(run_id)).read_text())
    assert record["trigger"] == "end of run (TimedOut)"
    assert {c["name"]: (c["ok"], c["detail"]) for c in record["checks"]}["launches stopped"] == (
        True,
        "none left",
    )
    assert record["ok"] is True
