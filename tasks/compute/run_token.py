"""A run's token as a Secrets Manager secret: how it reaches ECS containers, never in clear.

The flow makes a fresh token (``tasks.compute.channel.new_token``), stores it in a secret named
``sciflow/run-token/<run id>`` with the run's tags, and names the secret's ARN in the task
definitions' ``secrets`` (``SCIFLOW_RUN_TOKEN``), which ECS resolves with the execution role.
The job bodies hold only the ARN. The secret is deleted, without a recovery window, when the
launch ends.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from tasks.aws.clients import AwsAccount, call, client
from tasks.aws.tags import to_aws
from tasks.compute.channel import new_token

SECRET_PREFIX = "sciflow/run-token/"  # noqa: S105 - a name prefix, not a secret


@contextmanager
def token_secret(
    account: AwsAccount | None, run_id: str, tags: Mapping[str, str], region: str | None = None
) -> Iterator[str]:
    """A fresh run token in Secrets Manager for the ``with`` block; yields the secret's ARN.

    Args:
        account: The unit's AWS account; ambient if ``None``.
        run_id: The flow run's id; names the secret.
        tags: The run's tags, put on the secret (cleanup by tag finds it).
        region: The region of the tasks that read it; the account's if ``None``.
    """
    secrets = client("secretsmanager", account, region=region)
    name = f"{SECRET_PREFIX}{run_id}"
    arn = call(
        secrets.create_secret,
        f"create the run token secret {name}",
        Name=name,
        SecretString=new_token(),
        Description="sciflow: the token a run's processes prove to each other",
        Tags=to_aws(dict(tags)),
    )["ARN"]
    try:
        yield arn
    finally:
        call(
            secrets.delete_secret,
            f"delete the run token secret {name}",
            SecretId=arn,
            ForceDeleteWithoutRecovery=True,
        )
