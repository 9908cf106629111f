"""Every flow ends the same way: the same stop and cleanup hooks on every kind of end."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
from prefect import Flow

from tasks.compute.hooks import END_HOOKS, cleanup_on_exit, stop_launches

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
