"""The one place AWS clients are made: endpoint, retry policy, errors with code and operation."""

from __future__ import annotations

import pickle

import pytest

from tasks.aws.clients import AwsAccount, call, client
from tasks.errors import InputError, SciflowError, TransientError
from tasks.settings import get_settings
from tests.aws.fakes import inject_errors

REGION = "us-east-1"


@pytest.mark.parametrize("service", ["batch", "ecs", "logs", "s3", "servicediscovery", "ec2"])
def test_every_client_carries_the_one_retry_config_and_the_endpoint(aws, service):
    settings = get_settings()

    made = client(service, AwsAccount(region=REGION))

    assert made.meta.endpoint_url == aws
    assert made.meta.region_name == REGION
    assert made.meta.config.retries == {
        "mode": settings.aws_retry_mode,
        "total_max_attempts": settings.aws_max_attempts,
    }


def test_cloud_map_skips_the_host_prefix_that_custom_endpoints_do_not_serve(aws):
    assert client("servicediscovery", region=REGION).meta.config.inject_host_prefix is False
    assert client("ecs", region=REGION).meta.config.inject_host_prefix is True


def test_a_store_may_fail_fast_but_keeps_the_retry_mode(aws):
    made = client("s3", max_attempts=1, max_pool_connections=20)
    assert made.meta.config.retries == {
        "mode": get_settings().aws_retry_mode,
        "total_max_attempts": 1,
    }
    assert made.meta.config.max_pool_connections == 20


def test_the_account_is_plain_data_that_round_trips():
    account = AwsAccount(
        region=REGION,
        role_arn="arn:aws:iam::123456789012:role/r",
        credentials_block="lab",
        session_name="sciflow-lab",
    )
    assert AwsAccount.from_dict(account.to_dict()) == account
    assert pickle.loads(pickle.dumps(account)) == account  # noqa: S301  # our own bytes


def test_throttling_is_retried_by_botocore_alone_then_a_transient_error(aws, no_backoff):
    batch = client("batch", region=REGION)
    attempts = inject_errors(
        batch, "DescribeJobQueues", [("ThrottlingException", 400)], forever=True
    )

    with pytest.raises(TransientError, match="DescribeJobQueues returned ThrottlingException"):
        call(batch.describe_job_queues, "look up job queue q", jobQueues=["q"])

    # One retry layer: botocore's attempts, not multiplied by a loop of ours.
    assert len(attempts) == get_settings().aws_max_attempts
    assert len(no_backoff) == get_settings().aws_max_attempts - 1


def test_throttling_then_5xx_then_success_is_one_successful_call(aws, no_backoff):
    batch = client("batch", region=REGION)
    attempts = inject_errors(
        batch, "DescribeJobQueues", [("TooManyRequestsException", 429), ("ServerException", 500)]
    )

    found = call(batch.describe_job_queues, "look up job queue q", jobQueues=["q"])

    assert found["jobQueues"] == []
    assert len(attempts) == 3


def test_the_error_carries_the_aws_code_and_operation(aws, no_backoff):
    ecs = client("ecs", region=REGION)
    inject_errors(ecs, "DescribeTasks", [("ThrottlingException", 400)], forever=True)

    with pytest.raises(TransientError) as caught:
        call(ecs.describe_tasks, "describe tasks", cluster="c", tasks=["t"])

    assert (caught.value.code, caught.value.operation) == ("ThrottlingException", "DescribeTasks")
    assert pickle.loads(pickle.dumps(caught.value)).code == "ThrottlingException"  # noqa: S301


def test_a_bad_request_is_not_retried_and_is_not_transient(aws, no_backoff):
    batch = client("batch", region=REGION)
    attempts = inject_errors(batch, "DescribeJobQueues", [("ClientException", 400)])

    with pytest.raises(SciflowError, match="ClientException") as caught:
        call(batch.describe_job_queues, "look up job queue q", jobQueues=["q"])

    assert not isinstance(caught.value, TransientError)
    assert caught.value.code == "ClientException"
    assert attempts == ["DescribeJobQueues"]


def test_a_missing_resource_is_an_input_error_by_status(aws):
    s3 = client("s3", region=REGION)
    with pytest.raises(InputError) as caught:
        call(s3.get_object, "read s3://nothing/key", Bucket="nothing", Key="key")
    assert (caught.value.code, caught.value.operation) == ("NoSuchBucket", "GetObject")
