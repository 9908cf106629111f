"""The record on S3: locked where the bucket has Object Lock; run roles denied its delete."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from botocore.exceptions import ClientError

from tasks.cleanup import audit
from tasks.cleanup.audit import (
    Check,
    ValidationRecord,
    audit_protection_statements,
    new_key,
    object_lock_arguments,
    verify,
    write_record,
)
from tasks.errors import InputError, SciflowError
from tasks.storage.objects import ObjectStore

KEY = bytes.fromhex(new_key())
RUN = "0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b"
RECORD_KEY = f"runs/audit/lab/{RUN}/cleanup_validation.json"
ROLE = "arn:aws:iam::123456789012:role/sciflow-run"


def _record() -> ValidationRecord:
    return ValidationRecord(
        run_id=RUN, unit="lab", trigger="t", checks=[Check("scratch removed", True, "none")]
    )


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> None:
    """Overrides the suite's Prefect harness: nothing here calls Prefect."""


@pytest.fixture
def s3(aws):
    return boto3.client("s3", region_name="us-east-1")


def test_a_record_in_an_object_lock_bucket_cannot_be_deleted(s3):
    s3.create_bucket(Bucket="locked", ObjectLockEnabledForBucket=True)

    uri = write_record(ObjectStore(), f"s3://locked/{RECORD_KEY}", _record(), KEY)

    head = s3.head_object(Bucket="locked", Key=RECORD_KEY)
    assert head["ObjectLockMode"] == "GOVERNANCE"
    until = head["ObjectLockRetainUntilDate"]
    expected = datetime.now(UTC) + timedelta(days=audit.AUDIT_RETENTION_DAYS)
    assert abs(until - expected) < timedelta(minutes=5)
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket="locked", Key=RECORD_KEY, VersionId=head["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    # A delete without a version only hides it behind a marker: the locked version stays.
    s3.delete_object(Bucket="locked", Key=RECORD_KEY)
    kept = s3.get_object(Bucket="locked", Key=RECORD_KEY, VersionId=head["VersionId"])
    assert verify(kept["Body"].read().decode(), KEY)["run_id"] == RUN
    assert uri == f"s3://locked/{RECORD_KEY}"


def test_a_bucket_default_retention_is_left_to_the_bucket(s3):
    s3.create_bucket(Bucket="ruled", ObjectLockEnabledForBucket=True)
    s3.put_object_lock_configuration(
        Bucket="ruled",
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}},
        },
    )
    assert object_lock_arguments(s3, "ruled") == {}


def test_without_object_lock_the_record_is_written_plainly(s3):
    s3.create_bucket(Bucket="plain")
    assert object_lock_arguments(s3, "plain") == {}
    write_record(ObjectStore(), f"s3://plain/{RECORD_KEY}", _record(), KEY)
    head = s3.head_object(Bucket="plain", Key=RECORD_KEY)
    assert "ObjectLockMode" not in head


def test_an_unreadable_lock_configuration_stops_the_write():
    class Forbidden:
        def get_object_lock_configuration(self, Bucket):
            error = {"Error": {"Code": "AccessDenied", "Message": "no"}}
            raise ClientError(error, "GetObjectLockConfiguration")

    with pytest.raises(SciflowError, match="Object Lock configuration of s3://b"):
        object_lock_arguments(Forbidden(), "b")


def test_the_policy_statement_denies_run_roles_removing_records():
    other = "arn:aws:iam::123456789012:role/sciflow-batch-job"
    statements = audit_protection_statements("lab", [ROLE, other], prefix="/runs/")
    assert statements == [
        {
            "Sid": "SciflowRunRolesKeepAuditRecords",
            "Effect": "Deny",
            "Principal": {"AWS": [other, ROLE]},
            "Action": [
                "s3:DeleteObject",
                "s3:DeleteObjectVersion",
                "s3:PutObjectLegalHold",
                "s3:BypassGovernanceRetention",
            ],
            "Resource": "arn:aws:s3:::lab/runs/audit/*",
        }
    ]
    json.dumps(statements)  # plain JSON for Terraform's jsonencode
    cn = audit_protection_statements("lab", ["arn:aws-cn:iam::123456789012:role/r"])
    assert cn[0]["Resource"] == "arn:aws-cn:s3:::lab/audit/*"


@pytest.mark.parametrize(
    "roles", [[], ["sciflow-run"], ["arn:aws:iam::123456789012:user/me"], ["arn:aws:s3:::b"]]
)
def test_a_policy_needs_role_arns(roles):
    with pytest.raises(InputError, match="run_role_arns"):
        audit_protection_statements("lab", roles)


def test_moto_applies_the_statement_to_audit_keys_only(s3):
    """moto checks a bucket policy's Action and Resource but not its Principal (every caller
    is denied, the test's included), so this proves the statement's scope, not whom it binds;
    that it binds only the run roles is IAM's evaluation, checked here only in its JSON."""
    s3.create_bucket(Bucket="lab")
    s3.put_object(Bucket="lab", Key=RECORD_KEY, Body=b"{}")
    s3.put_object(Bucket="lab", Key=f"runs/lab/{RUN}/tmp/x", Body=b"x")
    policy = {
        "Version": "2012-10-17",
        "Statement": audit_protection_statements("lab", [ROLE], "runs"),
    }
    s3.put_bucket_policy(Bucket="lab", Policy=json.dumps(policy))

    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket="lab", Key=RECORD_KEY)
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    s3.delete_object(Bucket="lab", Key=f"runs/lab/{RUN}/tmp/x")  # intermediates still go
    assert s3.get_object(Bucket="lab", Key=RECORD_KEY)["Body"].read() == b"{}"
