import json

import pytest

from tasks.credentials import (
    REDACTED,
    Credential,
    credential_kind,
    find_credentials,
    refuse_credentials,
    without_credentials,
)
from tasks.errors import InputError

# Stand-ins shaped like the real thing; none is a working credential.
SIGV4 = (
    "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=ASIAFAKE%2F20261205&X-Amz-Signature=feedface"
)
SIGV2 = "https://b.s3.amazonaws.com/k?AWSAccessKeyId=FAKE&Expires=1&Signature=c2ln"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJmYWtlIn0.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (SIGV4, "presigned URL"),
        (SIGV2, "presigned URL"),
        ("https://b.s3.amazonaws.com/k?X-Amz-Security-Token=abc", "presigned URL"),
        ("https://storage.googleapis.com/b/k?X-Goog-Signature=abc", "presigned URL"),
        ("Bearer abcdefgh12345678", "bearer token"),
        (f"see {JWT} here", "JWT"),
        ("AKIAABCDEFGHIJKLMNOP", "AWS access key id"),
        ("-----BEGIN RSA PRIVATE KEY-----\nMII", "private key"),
        ("pnu_" + "a" * 36, "Prefect API key"),
        ("https://user:hunter2@example.org/x", "password in a URL"),
        ("Basic dXNlcjpwYXNz", "basic credentials"),  # user:pass
    ],
)
def test_each_credential_shape_is_recognised_inside_any_text(text, kind):
    assert credential_kind(text) == kind
    assert credential_kind(f"prefix {text} suffix") == kind


@pytest.mark.parametrize(
    "text",
    [
        "s3://mrodata/u1/signal.dat",
        "https://b.s3.amazonaws.com/plain/key.h5",
        "Basic reconstruction of the knee",
        "/data/token-free/scan.h5",
        "PMR",
    ],
)
def test_ordinary_values_are_not_credentials(text):
    assert credential_kind(text) is None


def test_a_credential_is_found_by_shape_under_an_innocent_key_at_any_depth():
    """Guards against redaction by key name alone, which let a presigned URL under
    ``link`` or ``filename`` through."""
    job = {"task": {"files": [{"name": "s.dat"}, {"link": SIGV4}]}, "alias": "knee"}
    assert find_credentials(job, "options") == [
        Credential("options.task.files[1].link", "presigned URL")
    ]


def test_secret_named_keys_count_only_when_they_hold_something():
    value = {"accessToken": "x", "X-Api-Key": "y", "password": "", "token": None, "npz_key": "k"}
    assert [c.path for c in find_credentials(value)] == ["accessToken", "X-Api-Key"]
    assert find_credentials({"token": REDACTED}) == []  # already dropped


def test_a_key_that_is_itself_a_token_is_not_echoed_in_the_path():
    found = find_credentials({JWT: 1})
    assert found == [Credential(REDACTED, "credential as a key")]
    assert without_credentials({JWT: 1, "a": 2}) == {"a": 2}


def test_without_credentials_keeps_everything_else():
    job = {
        "token": "Bearer abcdefgh12345678",
        "signal": {"bucket": "b", "key": "u1/s.dat", "url": SIGV4},
        "accelerations": [1, 2],
        "decimate": True,
    }
    clean = without_credentials(job)
    assert clean == {
        "token": REDACTED,
        "signal": {"bucket": "b", "key": "u1/s.dat", "url": REDACTED},
        "accelerations": [1, 2],
        "decimate": True,
    }
    assert find_credentials(clean) == []
    assert "feedface" not in json.dumps(clean)


def test_refusal_is_one_line_with_paths_and_never_the_value():
    with pytest.raises(InputError) as caught:
        refuse_credentials({"a": {"b": SIGV4}}, what="options", fix="pass it by URI")
    message = str(caught.value)
    assert message == "options: a.b (presigned URL) carries a credential; pass it by URI"
    assert "feedface" not in message
