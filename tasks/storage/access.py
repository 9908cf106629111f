"""What a run may read and write: its unit's storage root and the prefixes the unit declares.

A confined unit (every AWS unit; a local unit with ``confined=True``) refuses a read or write
of anything outside them before anything is transferred. Local paths are compared after
``realpath``, so ``..`` segments and symlinks that point out are judged by where they lead;
S3 keys are compared as they are sent, and a ``.`` or ``..`` segment in one is refused. A
prefix matches on a path-component boundary: ``/data/a`` admits ``/data/a/x``, never
``/data/ab``. An unconfined unit (the built-in ``local``: the person at the keyboard) reaches
whatever its user can.

The checks are pure: no I/O beyond resolving local paths.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from tasks.errors import InputError
from tasks.storage.objects import Location

Verb = Literal["read", "write"]


@dataclass(frozen=True, slots=True)
class Access:
    """Where one unit's runs may read and write.

    Attributes:
        unit: The unit's name, for messages.
        confined: Whether anything outside the prefixes is refused.
        readable: Prefixes reads may reach (storage root, writable and readable prefixes).
        writable: Prefixes writes may reach (storage root and writable prefixes).
    """

    unit: str
    confined: bool
    readable: tuple[str, ...]
    writable: tuple[str, ...]

    def check_read(self, uri: str, parameter: str) -> str:
        """``uri`` if the unit's runs may read it.

        Raises:
            InputError: One line naming ``parameter``, the value and the readable prefixes.
        """
        return self._check(uri, parameter, "read", self.readable)

    def check_write(self, uri: str, parameter: str) -> str:
        """``uri`` if the unit's runs may write it (or under it).

        Raises:
            InputError: One line naming ``parameter``, the value and the writable prefixes.
        """
        return self._check(uri, parameter, "write", self.writable)

    def _check(self, uri: str, parameter: str, verb: Verb, prefixes: tuple[str, ...]) -> str:
        if not self.confined:
            return uri
        allowed = f"expected a path under {list(prefixes)}"
        where = f"{parameter}={shown(uri)!r}: compute unit {self.unit!r} may not {verb} it"
        try:
            place = Location.parse(uri)
        except InputError:  # its message repeats the value unredacted
            raise InputError(f"{where} (not a path, file:// or s3:// URI); {allowed}") from None
        if place.is_s3 and (dots := _dot_segments(place.key)):
            raise InputError(f"{where} (S3 key has {dots[0]!r} segments); {allowed}")
        if not any(_under(place, check_prefix(prefix)) for prefix in prefixes):
            leads = f" (it resolves to {place})" if not place.is_s3 and str(place) != uri else ""
            raise InputError(f"{where}{leads}; {allowed}")
        return uri


def check_prefix(prefix: str) -> Location:
    """``prefix`` parsed: a local path (resolved) or ``s3://bucket[/key]``.

    Raises:
        InputError: It is empty, has another scheme, or its S3 key has ``.``/``..`` segments.
    """
    place = Location.parse(prefix)
    if place.is_s3 and (dots := _dot_segments(place.key)):
        raise InputError(
            f"storage prefix {prefix!r} has {dots[0]!r} segments; expected s3://bucket/prefix"
        )
    return place


def shown(value: str) -> str:
    """``value`` as a message may show it: a URL's password and query string left out."""
    parts = urlsplit(value)
    if not (parts.password or parts.query):
        return value
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _under(place: Location, prefix: Location) -> bool:
    if place.is_s3 != prefix.is_s3:
        return False
    if place.is_s3:
        if place.bucket != prefix.bucket:
            return False
        base = prefix.key.strip("/")
        return not base or place.key == base or place.key.startswith(f"{base}/")
    # Location.parse resolved both (symlinks and '..'); compare whole components.
    return PurePosixPath(place.key).is_relative_to(prefix.key)


def _dot_segments(key: str) -> list[str]:
    return [segment for segment in key.split("/") if segment in (".", "..")]
