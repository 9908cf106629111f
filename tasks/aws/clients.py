"""boto3 clients for an AWS account, with one retry policy, and AWS errors as sciflow's.

Every boto3 client sciflow uses is made by ``client``: the account's session (its
``AwsCredentials`` block, then its role), its region, and one botocore ``Config`` whose
retries (``SCIFLOW_AWS_RETRY_MODE``, ``SCIFLOW_AWS_MAX_ATTEMPTS``) are the only retry layer
of an AWS call: callers do not loop around calls. botocore reads ``AWS_ENDPOINT_URL`` itself,
so tests point every client at moto's server on 127.0.0.1. A library that makes its own
aiobotocore clients (dask-cloudprovider) gets them from ``AioClients``: the same account,
region and endpoint, handed over explicitly. Nothing outside this module makes a boto3,
botocore or aiobotocore client or session (tests/aws/test_one_session.py checks it).

``call`` and ``aws_errors`` turn what boto3 raises into ``tasks.errors`` types (decided by
error code and HTTP status, never message text) that carry the AWS ``code`` and ``operation``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Self, TypeVar

from tasks.errors import InputError, SciflowError, TransientError, classify
from tasks.settings import get_settings

if TYPE_CHECKING:
    import boto3
    from botocore.config import Config
    from prefect_aws import AwsCredentials

T = TypeVar("T")
DEFAULT_SESSION_NAME = "sciflow"
# Services whose custom endpoints (moto, VPC endpoints) do not serve the prefixed host of
# some operations: Cloud Map's DiscoverInstances would go to `data-<endpoint host>`.
NO_HOST_PREFIX = frozenset({"servicediscovery"})
# Seconds after which AioClients assumes its role again (AssumeRole's credentials last an hour).
ROLE_REFRESH_S = 1800.0


@dataclass(frozen=True, slots=True)
class AwsAccount:
    """Which AWS account and region calls go to, and as whom; no secrets.

    A compute unit gives its own (``ComputeUnit.aws_account()``); the default is the
    ambient credentials and region of the process. It is plain data, so a launch record
    can store it and another process can stop what a run started.
    """

    region: str | None = None
    """AWS region; the credentials block's or the environment's if unset."""
    role_arn: str | None = None
    """IAM role to assume (Mode 2: the user's account)."""
    credentials_block: str | None = None
    """Name of a prefect-aws ``AwsCredentials`` block; ambient credentials if unset."""
    session_name: str = DEFAULT_SESSION_NAME
    """``RoleSessionName`` when assuming ``role_arn`` (shows in CloudTrail)."""
    external_id: str | None = field(default=None, repr=False)
    """``ExternalId`` sent on every ``AssumeRole`` of ``role_arn`` (Mode 2's confused-deputy
    guard); kept out of ``repr`` and ``to_dict``."""

    def to_dict(self) -> dict[str, str | None]:
        """The account as JSON-ready values, without ``external_id``."""
        data = asdict(self)
        del data["external_id"]  # records and logs carry no credentials
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """The inverse of ``to_dict``."""
        return cls(
            region=data.get("region"),
            role_arn=data.get("role_arn"),
            credentials_block=data.get("credentials_block"),
            session_name=data.get("session_name") or DEFAULT_SESSION_NAME,
        )


def retry_config() -> Config:
    """The botocore ``Config`` every client gets: the process's retry mode and attempts."""
    from botocore.config import Config

    settings = get_settings()
    # total_max_attempts counts the first try; botocore's max_attempts would not.
    retries = {"mode": settings.aws_retry_mode, "total_max_attempts": settings.aws_max_attempts}
    return Config(retries=retries)


def session(
    account: AwsAccount | None = None, credentials: AwsCredentials | None = None
) -> boto3.Session:
    """A boto3 session in ``account``: its credentials block, then its role.

    Args:
        account: The account; the ambient credentials and region if ``None``.
        credentials: A prefect-aws credentials object to use instead of the account's
            block (the ``aws-batch`` worker's job variable).
    """
    account = account or AwsAccount()
    if credentials is None and not (account.credentials_block or account.role_arn):
        import boto3

        return boto3.Session(region_name=account.region)
    from prefect_aws import AwsCredentials
    from prefect_aws.assume_role_parameters import AssumeRoleParameters

    if credentials is None:
        if account.credentials_block:
            credentials = AwsCredentials.load(account.credentials_block)
        else:
            credentials = AwsCredentials()
    updates: dict[str, Any] = {}
    if account.region and not credentials.region_name:
        updates["region_name"] = account.region
    if not account.role_arn:
        return credentials.model_copy(update=updates).get_boto3_session()
    updates["assume_role_arn"] = account.role_arn
    updates["assume_role_kwargs"] = AssumeRoleParameters(
        RoleSessionName=account.session_name, ExternalId=account.external_id
    )
    # prefect-aws assumes the role here, with its own STS client.
    with aws_errors(
        f"assume role {account.role_arn} (check its trust policy and, in Mode 2, that its "
        "sts:ExternalId condition matches the unit's external_id)"
    ):
        return credentials.model_copy(update=updates).get_boto3_session()


def client(
    service: str,
    account: AwsAccount | None = None,
    *,
    region: str | None = None,
    credentials: AwsCredentials | None = None,
    max_attempts: int | None = None,
    max_pool_connections: int | None = None,
    config: Config | None = None,
) -> Any:
    """A boto3 client for ``service`` in ``account``, with the one retry policy.

    Args:
        service: boto3 service name (``"batch"``, ``"ecs"``, ``"s3"`` ...).
        account: The account; the ambient credentials and region if ``None``.
        region: Region to use instead of the session's.
        credentials: prefect-aws credentials to use instead of the account's block.
        max_attempts: Attempts per call instead of ``SCIFLOW_AWS_MAX_ATTEMPTS`` (a store
            that must fail fast); still botocore's one retry layer.
        max_pool_connections: HTTP connections kept for parallel transfers (S3).
        config: More botocore settings (S3 options), merged over the ones above.
    """
    from botocore.config import Config

    policy = retry_config()
    extra: dict[str, Any] = {}
    if max_attempts is not None:
        extra["retries"] = {**(policy.retries or {}), "total_max_attempts": max_attempts}
    if max_pool_connections is not None:
        extra["max_pool_connections"] = max_pool_connections
    if service in NO_HOST_PREFIX:
        extra["inject_host_prefix"] = False
    merged = policy
    if extra:
        merged = merged.merge(Config(**extra))
    if config is not None:
        merged = merged.merge(config)
    kwargs: dict[str, Any] = {"config": merged}
    if region:
        kwargs["region_name"] = region
    return session(account, credentials).client(service, **kwargs)


class AioClients:
    """aiobotocore clients in an account, for a library that makes its own (dask-cloudprovider).

    Each client gets, explicitly, the credentials, region and endpoint that ``client`` would
    use for the same service: left to itself aiobotocore would read the process's ambient
    credentials, which in Mode 2 are another account's. The account's credentials block is
    loaded here, once (the clients are made inside the library's event loop, where a Prefect
    block cannot be loaded synchronously); a role is assumed again after
    ``ROLE_REFRESH_S``, before its one-hour credentials expire under a long-lived cluster.

    Args:
        account: The account; the ambient credentials and region if ``None``.
        region: Region to use instead of the session's.
    """

    def __init__(self, account: AwsAccount | None = None, region: str | None = None) -> None:
        self._account = account or AwsAccount()
        self._credentials: AwsCredentials | None = None
        if self._account.credentials_block:
            from prefect_aws import AwsCredentials

            self._credentials = AwsCredentials.load(self._account.credentials_block)
        self._session = session(self._account, self._credentials)
        self._made = time.monotonic()
        self.region = region or self._session.region_name
        self._endpoints: dict[str, str] = {}

    def settings(self, service: str) -> dict[str, Any]:
        """``create_client`` keyword arguments for ``service``: credentials, region, endpoint."""
        if self._account.role_arn and time.monotonic() - self._made > ROLE_REFRESH_S:
            self._session = session(self._account, self._credentials)
            self._made = time.monotonic()
        if service not in self._endpoints:
            self._endpoints[service] = self._session.client(
                service, region_name=self.region, config=retry_config()
            ).meta.endpoint_url
        with aws_errors(f"read the credentials for {service}"):
            credentials = self._session.get_credentials()
        if credentials is None:
            raise InputError(
                f"cannot make a {service} client: no AWS credentials; expected them from the "
                "compute unit's AwsCredentials block, its role or the environment"
            )
        frozen = credentials.get_frozen_credentials()
        return {
            "aws_access_key_id": frozen.access_key,
            "aws_secret_access_key": frozen.secret_key,
            "aws_session_token": frozen.token,
            "region_name": self.region,
            "endpoint_url": self._endpoints[service],
        }

    def __call__(self, service: str, aio_session: Any = None) -> Any:
        """An aiobotocore ``create_client`` context for ``service``, with the one retry policy.

        Args:
            service: Service name (``"ecs"``, ``"ec2"``, ``"logs"`` ...).
            aio_session: The library's aiobotocore session; a new one if ``None``.
        """
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        policy = retry_config()
        return (aio_session or get_session()).create_client(
            service, config=AioConfig(retries=policy.retries), **self.settings(service)
        )


def transfer_manager(s3: Any, part_size: int, concurrency: int) -> Any:
    """boto3's S3 TransferManager over ``s3`` (a ``client("s3", ...)``): multipart, parallel.

    Args:
        s3: The S3 client whose retry policy the transfers use.
        part_size: Multipart threshold and part size in bytes.
        concurrency: Parallel part transfers.
    """
    from boto3.s3.transfer import TransferConfig, create_transfer_manager

    config = TransferConfig(
        multipart_threshold=part_size, multipart_chunksize=part_size, max_concurrency=concurrency
    )
    return create_transfer_manager(s3, config)


def call(fn: Callable[..., T], doing: str, **kwargs: Any) -> T:
    """``fn(**kwargs)`` (a client method), with what boto3 raises turned into sciflow's errors.

    One attempt here: botocore has already retried throttling and 5xx.

    Args:
        fn: A boto3 client method, e.g. ``batch.describe_jobs``.
        doing: What is being attempted, for the message (``"describe Batch job j-1"``).
        **kwargs: The call's parameters.

    Raises:
        TransientError: Still throttled, failing with 5xx or unreachable after botocore's
            retries.
        InputError: A resource the caller named is missing or forbidden, or a parameter
            is invalid.
        SciflowError: Any other AWS error.
    """
    with aws_errors(doing):
        return fn(**kwargs)


@contextmanager
def aws_errors(doing: str) -> Iterator[None]:
    """Turn boto3 failures inside the block into one-line sciflow errors naming ``doing``."""
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        HTTPClientError,
        NoCredentialsError,
        NoRegionError,
        ParamValidationError,
    )

    try:
        yield
    except ClientError as exc:
        raise classify(exc, doing) from exc
    except ParamValidationError as exc:  # e.g. an invalid bucket name
        detail = " ".join(str(exc).split())
        raise InputError(f"cannot {doing}: {detail}") from exc
    except (NoCredentialsError, NoRegionError) as exc:
        raise InputError(
            f"cannot {doing}: {exc}; expected AWS credentials and a region "
            "from the compute unit's AwsCredentials block or the environment"
        ) from exc
    except (ConnectionError, HTTPClientError) as exc:  # refused, reset, timed out
        raise TransientError(f"cannot {doing}: {exc}") from exc


def error_code(error: BaseException) -> str:
    """The AWS error code a sciflow error carries, or ``""``."""
    return (error.code or "") if isinstance(error, SciflowError) else ""
