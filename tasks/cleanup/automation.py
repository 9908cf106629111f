"""The automation that cleans up after a run whose own hooks did not (a killed process).

Every sciflow flow cleans up in its end hooks, but a flow run whose process is killed
(SIGKILL, the node lost) runs none: its worker reports it Crashed and nothing else happens.
This Prefect automation runs the secure-cleanup deployment on every ``Crashed``, ``Failed``
or ``Cancelled`` event of a flow run that carries the tag ``sciflow`` (every deployment in
``deployments/prefect.yaml`` gives it to its runs), except secure-cleanup's own runs (matched by
flow name), so a failed cleanup does not start another. The cleanup run gets only ``run_id``;
``secure_cleanup`` reads the run's ``unit`` parameter from the Prefect API itself.

Install it after the deployments (``make deploy`` does)::

    python -m tasks.cleanup.automation [--deployment secure-cleanup/local]
"""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from prefect.automations import Automation, EventTrigger, RunDeployment
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from tasks.errors import InputError

AUTOMATION_NAME = "sciflow-cleanup-after-crash"
CLEANUP_DEPLOYMENT = "secure-cleanup/local"
# The tag every sciflow deployment gives its runs, and the flow the automation starts.
RUN_TAG = "sciflow"
CLEANUP_FLOW = "secure-cleanup"
# A Failed run already ran its hooks; cleaning again is harmless and covers a hook that died.
END_EVENTS = frozenset(
    {"prefect.flow-run.Crashed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled"}
)


def cleanup_automation(deployment_id: Any, name: str = AUTOMATION_NAME) -> Automation:
    """The automation (not yet saved) that runs deployment ``deployment_id`` after bad ends."""
    return Automation(
        name=name,
        description=(
            "Run secure-cleanup for a sciflow flow run that crashed, failed or was cancelled "
            "(its hooks do not run when its process is killed)."
        ),
        trigger=EventTrigger(
            expect=set(END_EVENTS),
            match={"prefect.resource.id": "prefect.flow-run.*"},
            # Every entry must match some related resource: the run's tag, and its flow
            # being anything but secure-cleanup ("!" negates a label pattern).
            match_related=[
                {"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{RUN_TAG}"},
                {"prefect.resource.role": "flow", "prefect.resource.name": f"!{CLEANUP_FLOW}"},
            ],
            for_each={"prefect.resource.id"},  # one firing per flow run
            posture="Reactive",
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=deployment_id,
                # `flow_run` is the event's run, read from the API when the action renders.
                parameters={"run_id": {"__prefect_kind": "jinja", "template": "{{ flow_run.id }}"}},
            )
        ],
    )


def ensure_cleanup_automation(
    deployment_name: str = CLEANUP_DEPLOYMENT, name: str = AUTOMATION_NAME
) -> Automation:
    """Create the automation, or bring the one called ``name`` up to date; returns it.

    Idempotent: running it again leaves one automation, pointing at ``deployment_name``.

    Raises:
        InputError: No deployment is called ``deployment_name`` (deploy first).
    """
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(deployment_name)
        except ObjectNotFound:
            raise InputError(
                f"no deployment {deployment_name!r} on the Prefect API; expected "
                "'<flow>/<deployment>' of the secure-cleanup flow: run `make deploy` first"
            ) from None
        existing = client.read_automations_by_name(name)
    wanted = cleanup_automation(deployment.id, name)
    if not existing:
        return wanted.create()
    for extra in existing[1:]:  # made by a race; one is enough
        Automation(**extra.model_dump()).delete()
    wanted.id = existing[0].id
    wanted.update()
    return wanted


def main(argv: list[str] | None = None) -> None:
    """``python -m tasks.cleanup.automation``: install the automation on $PREFECT_API_URL."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deployment", default=CLEANUP_DEPLOYMENT, help="%(default)s")
    parser.add_argument("--name", default=AUTOMATION_NAME, help="%(default)s")
    args = parser.parse_args(argv)
    automation = ensure_cleanup_automation(args.deployment, args.name)
    print(f"automation {automation.name!r} ({automation.id}) runs {args.deployment}")


if __name__ == "__main__":
    main()
