"""The cleanup validation record: every check, what it found and removed, sealed with an HMAC.

The record is JSON with an ``hmac`` field: HMAC-SHA256, keyed by the unit's audit key, over
the canonical JSON of everything else. Changing any byte of the content makes ``verify``
fail. The HMAC detects tampering; it does not prevent it.

What prevents it on S3: ``write_record`` puts the record under S3 Object Lock when the bucket
has Object Lock enabled (the bucket's default retention if it has one, else
``AUDIT_LOCK_MODE`` for ``AUDIT_RETENTION_DAYS``), so no version of it can be deleted before
its date; and ``audit_protection_statements`` gives the bucket policy (Terraform applies it)
that denies run roles delete, version delete and retention changes under ``audit/``. An
overwrite is not denied, since the flow's end hook and the cleanup flow both write the run's
record by design; on a versioned bucket (Object Lock requires versioning) it adds a version
and every earlier one stays. On a local disk nothing stops root from rewriting the file
together with its HMAC if root also holds the key: there the HMAC only detects tampering.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tasks.aws.clients import aws_errors, error_code
from tasks.errors import InputError, SciflowError
from tasks.storage.objects import Location, ObjectStore

# The Prefect Secret block holding the hex key (one per workspace).
AUDIT_KEY_BLOCK = "sciflow-audit-key"
# The storage root's folder for audit records (``ComputeUnit.audit_uri``).
AUDIT_PREFIX = "audit/"
# Object Lock for a record when the bucket has no default retention. GOVERNANCE: only a
# principal granted s3:BypassGovernanceRetention (never a run role; the policy below denies
# it) can shorten or remove it, so an administrator can still retire old records.
AUDIT_LOCK_MODE = "GOVERNANCE"
AUDIT_RETENTION_DAYS = 365
ROLE_ARN = r"arn:aws(-cn|-us-gov)?:iam::\d{12}:role/[\w+=,.@/-]+"
# What run roles may never do to audit records.
# s3:PutObjectRetention stays allowed: writing a locked record needs it, and shortening or
# removing a GOVERNANCE retention also needs s3:BypassGovernanceRetention, denied here.
AUDIT_DENIED_ACTIONS = (
    "s3:DeleteObject",
    "s3:DeleteObjectVersion",
    "s3:PutObjectLegalHold",
    "s3:BypassGovernanceRetention",
)


class RecordTampered(SciflowError):
    """A cleanup record whose HMAC does not match its content."""


@dataclass(frozen=True, slots=True)
class Check:
    """One verified condition: what was found, what was removed, whether it holds.

    ``skipped`` marks a check with nothing to act on here (no GPU on this machine): it passes,
    and its detail says why, so the record never shows an unmade check as a clean one.
    """

    name: str
    ok: bool
    detail: str
    removed: int = 0
    seconds: float = 0.0
    skipped: bool = False


@dataclass(slots=True)
class ValidationRecord:
    """What cleanup checked and did for one run."""

    run_id: str
    unit: str
    trigger: str
    dry_run: bool = False
    started_at: str = ""
    finished_at: str = ""
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every check passed (a record with no checks proves nothing)."""
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failed(self) -> list[Check]:
        """The checks that did not pass."""
        return [check for check in self.checks if not check.ok]

    def content(self) -> dict[str, Any]:
        """The record as plain data, verdict included (what the HMAC covers)."""
        return {**asdict(self), "ok": self.ok}

    def seal(self, key: bytes) -> str:
        """The record as indented JSON with its HMAC."""
        content = self.content()
        return json.dumps({**content, "hmac": _mac(content, key)}, indent=2)


def verify(text: str, key: bytes) -> dict[str, Any]:
    """The record's content if its HMAC matches; ``RecordTampered`` if not."""
    try:
        sealed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordTampered(f"cleanup record is not JSON: {exc}") from exc
    if not isinstance(sealed, dict) or "hmac" not in sealed:
        raise RecordTampered("cleanup record carries no hmac")
    mac = sealed.pop("hmac")
    if not hmac.compare_digest(str(mac), _mac(sealed, key)):
        raise RecordTampered("cleanup record's hmac does not match its content")
    return sealed


def new_key() -> str:
    """A fresh 256-bit audit key, hex."""
    return secrets.token_hex(32)


def _mac(content: dict[str, Any], key: bytes) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def audit_key(create: bool) -> bytes:
    """The workspace's audit key, from the Prefect Secret block ``sciflow-audit-key``.

    Args:
        create: Make and save a key when there is none (the local unit); an AWS unit's key
            is provisioned with its infrastructure, and its absence is an error.

    Raises:
        InputError: No key and ``create`` is false.
    """
    from prefect.blocks.system import Secret

    for _ in range(2):  # a second process may save the key between our load and save
        try:
            return bytes.fromhex(Secret.load(AUDIT_KEY_BLOCK).get())
        except ValueError as exc:
            if "Unable to find block document" not in str(exc):
                raise
        if not create:
            raise InputError(
                f"no Prefect Secret block {AUDIT_KEY_BLOCK!r}: create it with a 64-hex-digit "
                "key (`python -c 'import secrets; print(secrets.token_hex(32))'`) before "
                "running cleanup on this unit"
            )
        try:
            Secret(value=new_key()).save(AUDIT_KEY_BLOCK)
        except ValueError:
            continue  # saved by another process first: load that one
    return bytes.fromhex(Secret.load(AUDIT_KEY_BLOCK).get())


def write_record(store: ObjectStore, uri: str, record: ValidationRecord, key: bytes) -> str:
    """Write the sealed record to ``uri``, under Object Lock where the bucket has it on.

    Returns:
        The URI.

    Raises:
        SciflowError: The bucket's Object Lock configuration cannot be read (the writer's
            role needs s3:GetBucketObjectLockConfiguration), or the write failed.
    """
    loc = Location.parse(uri)
    if not loc.is_s3:
        return store.write_text(uri, record.seal(key))
    lock = object_lock_arguments(store.s3, loc.bucket)
    with aws_errors(f"write cleanup record {loc}"):
        store.s3.put_object(
            Bucket=loc.bucket,
            Key=loc.key,
            Body=record.seal(key).encode(),
            ContentType="application/json",
            **lock,
        )
    return str(loc)


def object_lock_arguments(s3: Any, bucket: str) -> dict[str, Any]:
    """``put_object`` arguments that lock a record in ``bucket``; none without Object Lock.

    A bucket whose Object Lock configuration has a default retention rule locks every new
    version itself, in the mode and for the period its owner chose: nothing is added.
    """
    try:
        with aws_errors(f"read the Object Lock configuration of s3://{bucket}"):
            answer = s3.get_object_lock_configuration(Bucket=bucket)
    except SciflowError as exc:
        if error_code(exc) == "ObjectLockConfigurationNotFoundError":
            return {}
        raise
    config = answer.get("ObjectLockConfiguration", {})
    if config.get("ObjectLockEnabled") != "Enabled" or config.get("Rule", {}).get(
        "DefaultRetention"
    ):
        return {}
    return {
        "ObjectLockMode": AUDIT_LOCK_MODE,
        "ObjectLockRetainUntilDate": datetime.now(UTC) + timedelta(days=AUDIT_RETENTION_DAYS),
    }


def audit_protection_statements(
    bucket: str, run_role_arns: Sequence[str], prefix: str = ""
) -> list[dict[str, Any]]:
    """Bucket policy statements that keep run roles from removing audit records.

    Terraform adds them to the storage bucket's policy. A Deny in a bucket policy holds
    whatever the roles' own policies allow.

    Args:
        bucket: The storage bucket.
        run_role_arns: The roles runs assume (task and job roles, Mode 2 roles).
        prefix: The storage root's key prefix in the bucket (``runs`` for
            ``s3://bucket/runs``); records sit under ``<prefix>/audit/``.

    Raises:
        InputError: No role given, or one that is not an IAM ARN.
    """
    if not run_role_arns:
        raise InputError("run_role_arns is empty; expected the ARNs of the roles runs assume")
    if bad := [arn for arn in run_role_arns if not re.fullmatch(ROLE_ARN, arn)]:
        raise InputError(f"run_role_arns has {bad}; expected IAM role ARNs (arn:aws:iam::...)")
    partition = run_role_arns[0].split(":")[1]  # aws, aws-cn or aws-us-gov: the bucket's too
    root = prefix.strip("/")
    records = f"{root}/{AUDIT_PREFIX}" if root else AUDIT_PREFIX
    return [
        {
            "Sid": "SciflowRunRolesKeepAuditRecords",
            "Effect": "Deny",
            "Principal": {"AWS": sorted(run_role_arns)},
            "Action": list(AUDIT_DENIED_ACTIONS),
            "Resource": f"arn:{partition}:s3:::{bucket}/{records}*",
        }
    ]
