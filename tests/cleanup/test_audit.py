"""The cleanup record: sealed with an HMAC that any changed byte breaks."""

from __future__ import annotations

import json

import pytest

from tasks.cleanup.audit import (
    AUDIT_KEY_BLOCK,
    Check,
    RecordTampered,
    ValidationRecord,
    audit_key,
    new_key,
    verify,
)
from tasks.errors import InputError

KEY = bytes.fromhex(new_key())


def _record() -> ValidationRecord:
    return ValidationRecord(
        run_id="0b9d2c4e-6f3a-4d1e-9c7b-2a5f8e1d3c6b",
        unit="local",
        trigger="secure-cleanup",
        checks=[Check("scratch removed", True, "removed 3 files", removed=3, seconds=0.01)],
    )


def test_a_sealed_record_verifies_with_its_key():
    content = verify(_record().seal(KEY), KEY)
    assert content["ok"] is True
    assert content["checks"][0]["removed"] == 3


def test_one_changed_byte_fails_verification():
    text = _record().seal(KEY)
    position = text.index('"removed": 3') + len('"removed": ')
    tampered = text[:position] + "4" + text[position + 1 :]
    json.loads(tampered)  # still valid JSON: only the HMAC can tell
    with pytest.raises(RecordTampered, match="does not match"):
        verify(tampered, KEY)


def test_another_key_fails_verification():
    with pytest.raises(RecordTampered):
        verify(_record().seal(KEY), bytes.fromhex(new_key()))


def test_a_record_without_checks_is_not_ok():
    record = ValidationRecord(run_id="x", unit="local", trigger="t")
    assert not record.ok


@pytest.fixture
def no_key():
    """The session's Prefect API without the audit key (other tests may have made it)."""
    from prefect.blocks.system import Secret

    def drop() -> None:
        try:
            Secret.delete(AUDIT_KEY_BLOCK)
        except ValueError:  # none saved
            pass

    drop()
    yield
    drop()


def test_the_key_is_made_once_for_the_local_unit_and_required_elsewhere(no_key):
    with pytest.raises(InputError, match="sciflow-audit-key"):
        audit_key(create=False)
    made = audit_key(create=True)
    assert len(made) == 32
    assert audit_key(create=False) == made
