"""AWS errors injected below botocore's retries, so the one retry layer is what gets tested.

A ``before-send`` handler answers an attempt in place of the HTTP round trip; botocore then
parses it and its retry handler decides, exactly as for an answer from AWS. (A Stubber or a
``before-call`` handler would skip botocore's retries altogether.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from typing import Any

from botocore.awsrequest import AWSResponse


class _Body:
    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


def error_response(code: str, status: int) -> AWSResponse:
    """An AWS JSON-protocol error answer (Batch, ECS, Cloud Map, CloudWatch Logs)."""
    body = json.dumps({"__type": code, "message": f"{code} (injected)"}).encode()
    headers = {"x-amzn-ErrorType": code, "Content-Type": "application/x-amz-json-1.1"}
    return AWSResponse("http://127.0.0.1/", status, headers, _Body(body))


def inject_errors(
    client: Any, operation: str, errors: Sequence[tuple[str, int]], *, forever: bool = False
) -> list[str]:
    """Answer the first attempts of ``operation`` with ``errors`` (code, HTTP status).

    Args:
        client: A boto3 client.
        operation: The API operation, e.g. ``"DescribeJobQueues"``.
        errors: One answer per attempt, in order; later attempts reach the endpoint.
        forever: Keep answering with the last error.

    Returns:
        A list that gets the operation's name at every attempt (answered or not).
    """
    attempts: list[str] = []
    service = client.meta.service_model.service_id.hyphenize()

    def before_send(**_: Any) -> AWSResponse | None:
        attempts.append(operation)
        index = len(attempts) - 1
        if index < len(errors):
            return error_response(*errors[index])
        if forever and errors:
            return error_response(*errors[-1])
        return None

    client.meta.events.register(f"before-send.{service}.{operation}", before_send)
    return attempts
