"""The cleanup validation record: every check, what it found and removed, sealed with an HMAC.

The record is JSON with an ``hmac`` field: HMAC-SHA256, keyed by the unit's audit key, over
the canonical JSON of everything else. Changing any byte of the content makes ``verify``
fail. The HMAC detects tampering; it does not prevent it: on S3 the record's prefix is
protected by a bucket policy that denies run roles delete (Terraform), and on a local disk
nothing stops root from rewriting the file together with its HMAC if root also holds the key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass, field
from typing import Any

from tasks.errors import InputError, SciflowError
from tasks.storage.objects import ObjectStore

# The Prefect Secret block holding the hex key (one per workspace).
AUDIT_KEY_BLOCK = "sciflow-audit-key"


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
    """Write the sealed record to ``uri``; returns the URI."""
    return store.write_text(uri, record.seal(key))
