"""sciflow's error types: whether a failure deserves a retry is a type, not message text."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from botocore.exceptions import ClientError

# AWS error codes that mean "slow down" or "try again" rather than "you asked wrongly".
THROTTLING = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "EC2ThrottledException",
        "PriorRequestNotComplete",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
    }
)
# Codes that mean the thing the user named is not there.
NOT_FOUND = frozenset({"NoSuchBucket", "NoSuchKey", "404", "NotFound", "NoSuchUpload"})


class SciflowError(Exception):
    """A failure sciflow understood; its message says what to check.

    Attributes:
        code: The AWS error code (``ThrottlingException``) when AWS refused a call.
        operation: The AWS operation (``DescribeJobs``) that was refused.
    """

    code: str | None = None
    operation: str | None = None


class InputError(SciflowError, ValueError):
    """The caller asked for something that cannot work; never retried."""


class TransientError(SciflowError):
    """Throttling, a 5xx or a lost node: the same call may succeed later."""


class AlreadyExists(InputError):
    """An exclusive create found the object already there with other content."""


class ConcurrentUpdate(SciflowError):
    """A conditional update lost a race: the object changed since it was read."""


class IntegrityError(SciflowError):
    """Data read back does not match the size or digest it was recorded with."""


def classify(exc: ClientError, doing: str) -> SciflowError:
    """Turn a botocore ``ClientError`` into sciflow's type for it.

    Args:
        exc: The error boto3 raised.
        doing: What was being attempted, e.g. ``"read s3://bucket/key"``.

    Returns:
        ``TransientError`` for throttling and 5xx, ``InputError`` for missing or forbidden
        resources the caller named, ``SciflowError`` otherwise; each carries the AWS error
        ``code`` and ``operation``.
    """
    response: dict[str, Any] = exc.response
    code = str(response.get("Error", {}).get("Code", "Unknown"))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    detail = response.get("Error", {}).get("Message") or ""
    message = f"cannot {doing}: {exc.operation_name} returned {code} (HTTP {status})"
    if detail and detail != code:
        message += f": {detail}"
    kind: type[SciflowError] = SciflowError
    if code in THROTTLING or status >= 500:
        kind = TransientError
    elif code in NOT_FOUND or status in (403, 404):
        kind = InputError
    error = kind(message)
    error.code, error.operation = code, exc.operation_name
    return error


def is_transient(exc: BaseException | None) -> bool:
    """Whether a failure is worth retrying; Prefect's ``retry_condition_fn`` uses it."""
    return isinstance(exc, TransientError)


def describe_validation(exc: Exception, name_of: Callable[[str], str] = str) -> str:
    """One line from a pydantic ``ValidationError``: each bad field, its value and the rule.

    Args:
        exc: The validation error (other exceptions give their text).
        name_of: Turns a dotted field path into the name the user typed (an env variable,
            a terraform output).
    """
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    problems = []
    for error in errors():
        if not error["loc"]:  # a cross-field check: its input is every field, secrets too
            problems.append(error["msg"])
            continue
        field = ".".join(str(part) for part in error["loc"])
        problems.append(f"{name_of(field)}={error.get('input')!r} is invalid: {error['msg']}")
    return "; ".join(problems)
