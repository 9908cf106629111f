"""Flow runs made directly on the test API: cleanup refuses ids the API does not know."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Completed, Running, State


@flow(name="some-research-run")
def some_research_run(unit: str = "local") -> None:
    """Stands for whatever flow a cleaned-up run was; never called."""


def make_flow_run(state: State | None = None, parameters: dict[str, Any] | None = None) -> str:
    """A flow run the API knows, now in ``state`` (Completed by default); returns its id."""
    with get_client(sync_client=True) as client:
        run = client.create_flow_run(some_research_run, parameters=parameters, state=Running())
        final = state or Completed()
        if final.type != run.state_type:
            client.set_flow_run_state(run.id, final, force=True)
    return str(run.id)
