"""The cleanup automation: installed once, pointing at the cleanup deployment, and which events
start it (a sciflow run's bad end: yes; secure-cleanup's own, an untagged run's, a success: no).

The end-to-end proof on a real server is tests/e2e/test_cleanup_automation.py.
"""

from __future__ import annotations

from uuid import uuid4

import pytest
from prefect.client.orchestration import get_client
from prefect.server.events.schemas.automations import EventTrigger as ServerEventTrigger
from prefect.server.events.schemas.events import ReceivedEvent

from tasks.cleanup.automation import cleanup_automation, ensure_cleanup_automation, main
from tasks.errors import InputError


@pytest.fixture
def deployments() -> dict[str, str]:
    """Two deployments of the secure-cleanup flow, with names unique to the test."""
    suffix = uuid4().hex[:8]
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("secure-cleanup")
        return {
            f"secure-cleanup/{name}": str(
                client.create_deployment(
                    flow_id=flow_id,
                    name=name,
                    entrypoint="flows/secure_cleanup.py:secure_cleanup",
                )
            )
            for name in (f"a-{suffix}", f"b-{suffix}")
        }


def _named(name: str) -> list:
    with get_client(sync_client=True) as client:
        return client.read_automations_by_name(name)


def test_installing_twice_leaves_one_automation_and_follows_the_deployment(deployments):
    (first, first_id), (second, second_id) = deployments.items()
    name = f"cleanup-{uuid4().hex[:8]}"

    created = ensure_cleanup_automation(first, name)
    again = ensure_cleanup_automation(second, name)

    [stored] = _named(name)
    assert stored.id == created.id == again.id
    [action] = stored.actions
    assert str(action.deployment_id) == second_id != first_id
    assert action.parameters == {
        "run_id": {"__prefect_kind": "jinja", "template": "{{ flow_run.id }}"}
    }
    assert stored.enabled


def test_the_command_line_installs_it(deployments, capsys):
    deployment = next(iter(deployments))
    name = f"cleanup-{uuid4().hex[:8]}"
    main(["--deployment", deployment, "--name", name])
    assert len(_named(name)) == 1
    assert f"runs {deployment}" in capsys.readouterr().out


def test_a_missing_deployment_is_refused_and_nothing_is_installed():
    name = f"cleanup-{uuid4().hex[:8]}"
    with pytest.raises(InputError, match=r"no deployment 'secure-cleanup/nowhere'.*make deploy"):
        ensure_cleanup_automation("secure-cleanup/nowhere", name)
    assert _named(name) == []


def _event(state: str, flow: str, tags: list[str]) -> ReceivedEvent:
    """A flow-run state event as Prefect's server emits it (prefect/server/models/events.py)."""
    return ReceivedEvent.model_validate(
        {
            "occurred": "2026-01-01T00:00:00Z",
            "event": f"prefect.flow-run.{state}",
            "resource": {
                "prefect.resource.id": f"prefect.flow-run.{uuid4()}",
                "prefect.resource.name": "clever-otter",
                "prefect.state-name": state,
            },
            "related": [
                {
                    "prefect.resource.id": f"prefect.flow.{uuid4()}",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": flow,
                },
                *(
                    {"prefect.resource.id": f"prefect.tag.{tag}", "prefect.resource.role": "tag"}
                    for tag in tags
                ),
            ],
            "id": str(uuid4()),
        }
    )


@pytest.mark.parametrize(
    ("state", "flow", "tags", "fires"),
    [
        ("Crashed", "mr-reconstruction", ["sciflow", "mr"], True),
        ("Failed", "research-pipeline", ["sciflow", "pipeline"], True),
        ("Cancelled", "distributed-training", ["sciflow", "training"], True),
        ("Completed", "mr-reconstruction", ["sciflow", "mr"], False),
        ("Running", "mr-reconstruction", ["sciflow", "mr"], False),
        ("Crashed", "someone-elses-flow", ["etl"], False),
        ("Crashed", "mr-reconstruction", [], False),
        ("Failed", "secure-cleanup", ["sciflow", "cleanup"], False),  # no loop
        ("Crashed", "secure-cleanup", ["sciflow", "cleanup"], False),
    ],
)
def test_which_flow_run_events_start_a_cleanup(state, flow, tags, fires):
    trigger = ServerEventTrigger.model_validate(
        cleanup_automation(uuid4()).trigger.model_dump(mode="json")
    )
    assert trigger.covers(_event(state, flow, tags)) is fires
