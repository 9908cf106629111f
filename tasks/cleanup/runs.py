"""Flow runs as the Prefect API knows them: does one exist, which unit it ran on, has it ended.

Cleanup deletes only for runs the API knows: a well-formed id that names no flow run is a
typo or another server's run, and nothing is deleted for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL

from tasks.cleanup.sweep import check_run_id
from tasks.errors import InputError


def read_run(run_id: str) -> FlowRun:
    """The flow run ``run_id`` from the Prefect API.

    Raises:
        InputError: ``run_id`` is not a flow-run id, or no flow run has it.
    """
    check_run_id(run_id)
    with get_client(sync_client=True) as client:
        try:
            return client.read_flow_run(UUID(run_id))
        except ObjectNotFound:
            raise InputError(
                f"run_id={run_id!r} names no flow run on the Prefect API at "
                f"{PREFECT_API_URL.value() or 'the ephemeral API'}; expected the id of a run "
                "this server knows (the run's page in the UI): nothing was deleted"
            ) from None


def read_runs(run_ids: Iterable[str]) -> dict[str, FlowRun]:
    """The flow runs the API knows among ``run_ids``, by id; malformed ids name none."""
    ids = []
    for run_id in run_ids:
        try:
            ids.append(UUID(run_id))
        except ValueError:  # a tag value anyone could write: not a run this API knows
            continue
    found: dict[str, FlowRun] = {}
    with get_client(sync_client=True) as client:
        for start in range(0, len(ids), 200):  # the API's page limit
            page = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids[start : start + 200])),
                limit=200,
            )
            found.update({str(run.id): run for run in page})
    return found


def unit_name(flow_run: FlowRun) -> str | None:
    """The unit the run's ``unit`` parameter names (``None``: the default unit)."""
    return (flow_run.parameters or {}).get("unit") or None


def ended_at(flow_run: FlowRun) -> datetime | None:
    """When the run reached a final state (completed, failed, crashed, cancelled); else None."""
    state = flow_run.state
    if state is None or not state.is_final():
        return None
    return flow_run.end_time or state.timestamp


def started_by(flow_run: FlowRun) -> str:
    """Who created the run: ``automation 'name'``, ``deployment``, or ``''`` if not recorded."""
    creator = flow_run.created_by
    if creator is None:
        return ""
    if creator.type == "AUTOMATION":
        return f"automation {creator.display_value!r}"
    return (creator.type or "").lower()
