"""Credentials inside values a user gives: found by their shape, wherever they sit.

A pasted MR Optimum web job carries the user's bearer token and presigned URLs, under keys
nobody can list in advance. ``find_credentials`` walks any JSON-like value and reports each
credential by its JSON path and kind, never its value: a key whose name says secret
(``token``, ``password``, ``presignedURL``, …) holding something, and any string shaped like
one under whatever key (a presigned URL's signature parameters, ``Bearer …``, a JWT, an AWS
access key id, a private key, a Prefect API key, ``user:password@`` in a URL).
``without_credentials`` is the same walk returning a copy with each one replaced by
``REDACTED``; ``refuse_credentials`` turns the findings into one ``InputError`` line.

Nothing here imports Prefect or boto3.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tasks.errors import InputError

REDACTED = "<redacted>"

# Key names (lower case, separators removed) whose non-empty value is a credential.
SECRET_KEY_PARTS = (
    "token",
    "secret",
    "password",
    "passwd",
    "presigned",
    "authorization",
    "credential",
    "signature",
    "apikey",
    "accesskey",
    "privatekey",
    "cookie",
)

# Query parameters that make a URL a credential: AWS SigV4 and SigV2 presigning, GCS signed
# URLs, Azure SAS, OAuth tokens in the query. ``=`` may arrive URL-encoded.
_SIGNED_QUERY = re.compile(
    r"(?:^|[?&;#])(x-amz-signature|x-amz-credential|x-amz-security-token|awsaccesskeyid|"
    r"signature|x-goog-signature|x-goog-credential|sig|access_token|id_token|api_key|apikey)"
    r"(?:=|%3d)",
    re.IGNORECASE,
)
_SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("bearer token", re.compile(r"\bbearer\s+[A-Za-z0-9._~+/-]{8,}=*", re.IGNORECASE)),
    ("JWT", re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")),
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")),
    ("private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    ("Prefect API key", re.compile(r"\bpnu_[A-Za-z0-9]{30,}\b")),
    ("password in a URL", re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.I)),
)
_BASIC = re.compile(r"\bbasic\s+([A-Za-z0-9+/]{8,}={0,2})", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Credential:
    """One credential found in a value.

    Attributes:
        path: Its JSON path from the value's root (``task.options.signal.url``, ``files[0]``).
        kind: What it looks like (``presigned URL``, ``bearer token``, ``secret-named key``).
    """

    path: str
    kind: str


def credential_kind(text: str) -> str | None:
    """What credential ``text`` holds (anywhere inside it), or None."""
    if _SIGNED_QUERY.search(text):
        return "presigned URL"
    for kind, pattern in _SHAPES:
        if pattern.search(text):
            return kind
    for match in _BASIC.finditer(text):
        try:
            if b":" in base64.b64decode(match.group(1), validate=True):
                return "basic credentials"
        except (binascii.Error, ValueError):
            continue
    return None


def _secret_name(key: str) -> bool:
    folded = re.sub(r"[^a-z0-9]", "", key.lower())
    return any(part in folded for part in SECRET_KEY_PARTS)


def _empty(value: Any) -> bool:
    """Nothing to hide: absent, empty, or already ``REDACTED``."""
    if value is None or value == REDACTED:
        return True
    return isinstance(value, str | Mapping | list | tuple) and not value


def _child(path: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    name = str(key)
    if credential_kind(name):  # a key that is itself a token must not reach the message
        return f"{path}.{REDACTED}" if path else REDACTED
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", name):
        return f"{path}.{name}" if path else name
    return f"{path}[{name!r}]"


def _walk(value: Any, path: str) -> Iterator[tuple[str, str | None]]:
    """``(path, kind)`` for each leaf or secret subtree; kind None where clean."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = _child(path, key)
            if credential_kind(str(key)):
                yield where, "credential as a key"
            elif _secret_name(str(key)) and not _empty(item):
                yield where, "secret-named key"
            else:
                yield from _walk(item, where)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, _child(path, index))
    elif isinstance(value, str | bytes):
        text = value.decode(errors="replace") if isinstance(value, bytes) else value
        yield path, credential_kind(text)
    else:
        yield path, None


def find_credentials(value: Any, path: str = "") -> list[Credential]:
    """Every credential in ``value`` (mappings, lists and strings, nested to any depth).

    Args:
        value: A JSON-like value: a job, a request body, a flow's parameters.
        path: The name of ``value`` itself, prefixed to every reported path.
    """
    return [Credential(where, kind) for where, kind in _walk(value, path) if kind]


def without_credentials(value: Any) -> Any:
    """A JSON-like copy of ``value`` with each credential replaced by ``REDACTED``.

    A secret-named key keeps its name; a key that is itself a credential is dropped.
    """
    if isinstance(value, Mapping):
        kept: dict[str, Any] = {}
        for key, item in value.items():
            if credential_kind(str(key)):
                continue
            secret = _secret_name(str(key)) and not _empty(item)
            kept[str(key)] = REDACTED if secret else without_credentials(item)
        return kept
    if isinstance(value, list | tuple):
        return [without_credentials(item) for item in value]
    if isinstance(value, str):
        return REDACTED if credential_kind(value) else value
    if value is None or isinstance(value, bool | int | float):
        return value
    return without_credentials(str(value))


def describe(found: list[Credential], limit: int = 5) -> str:
    """``a.b (bearer token), c[0] (presigned URL)``: paths and kinds, never values."""
    shown = ", ".join(f"{c.path or '<value>'} ({c.kind})" for c in found[:limit])
    more = len(found) - limit
    return shown + (f" and {more} more" if more > 0 else "")


def refuse_credentials(value: Any, *, what: str, fix: str, path: str = "") -> None:
    """Raise if ``value`` carries a credential anywhere.

    Args:
        value: As for ``find_credentials``.
        what: What the value is, for the message (``"mr-reconstruction parameters"``).
        fix: What to do instead, one clause.
        path: As for ``find_credentials``.

    Raises:
        InputError: One line naming where each credential sits and its kind (values
            never shown), then ``fix``.
    """
    if found := find_credentials(value, path):
        verb = "carries a credential" if len(found) == 1 else "carry credentials"
        raise InputError(f"{what}: {describe(found)} {verb}; {fix}")
