"""The one check that keeps credentials out of job bodies.

A Batch SubmitJob or RegisterJobDefinition body and an ECS RegisterTaskDefinition or RunTask
body are readable by anyone who may describe the job or task, and CloudTrail keeps them. So a
credential reaches a container only as a ``secrets`` entry (a Secrets Manager or SSM ARN the
container's execution role reads), and AWS credentials only through the container's role.
``refuse_clear_credentials`` walks a body and refuses any ``environment`` entry that carries
one in clear, before the body is sent.

Nothing here imports Prefect or boto3.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tasks.errors import InputError

API_KEY_VARIABLE = "PREFECT_API_KEY"
AWS_CREDENTIAL_VARIABLES = frozenset(
    {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"}
)
CREDENTIAL_VARIABLES = AWS_CREDENTIAL_VARIABLES | {API_KEY_VARIABLE}


def _environment_names(body: Any) -> Iterator[str]:
    """Names set by every ``environment`` in ``body``: AWS's list of name/value, or a dict."""
    if isinstance(body, dict):
        for key, value in body.items():
            if key == "environment" and isinstance(value, dict):  # {"NAME": "value"}
                yield from value
            elif key == "environment" and isinstance(value, list):
                yield from (e["name"] for e in value if isinstance(e, dict) and "name" in e)
            else:
                yield from _environment_names(value)
    elif isinstance(body, list | tuple):
        for item in body:
            yield from _environment_names(item)


def clear_credentials(body: Any) -> list[str]:
    """The credential variables (``CREDENTIAL_VARIABLES``) set in clear anywhere in ``body``.

    Args:
        body: A request body (SubmitJob, RegisterJobDefinition, RegisterTaskDefinition,
            RunTask), a list of them, or ``{"environment": {"NAME": "value"}}``.
    """
    return sorted(CREDENTIAL_VARIABLES.intersection(_environment_names(body)))


def refuse_clear_credentials(
    body: Any, *, what: str, api_key_from: str | None, role_from: str
) -> None:
    """Refuse ``body`` if its environment carries a credential in clear; values never shown.

    Args:
        body: As for ``clear_credentials``.
        what: What the body starts, for the message (e.g. ``"Batch job sim-1234"``).
        api_key_from: The exact setting that gives the container PREFECT_API_KEY as a secret;
            ``None`` where the containers never call the Prefect API.
        role_from: The exact setting that gives the container its AWS role.

    Raises:
        InputError: One line naming the variables (values redacted) and the setting to use.
    """
    found = clear_credentials(body)
    if not found:
        return
    fixes = []
    if API_KEY_VARIABLE in found and api_key_from:
        fixes.append(
            f"give the container {API_KEY_VARIABLE} through {api_key_from} (the ARN of a "
            "Secrets Manager secret or SSM parameter, sent as a `secrets` entry)"
        )
    elif API_KEY_VARIABLE in found:
        fixes.append(f"leave {API_KEY_VARIABLE} out: these containers never call the Prefect API")
    if AWS_CREDENTIAL_VARIABLES.intersection(found):
        fixes.append(
            f"give the container AWS access through {role_from}, never through environment"
        )
    shown = ", ".join(f"{name}=<redacted>" for name in found)
    raise InputError(
        f"{what}: environment holds {shown} in clear, which DescribeJobs/DescribeTasks and "
        f"CloudTrail show to anyone who may read them; {'; and '.join(fixes)}"
    )
