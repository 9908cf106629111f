"""The ISMRMRD XML header of an MRD file, parsed with defusedxml (it is file content)."""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET  # the parsed tree's types; parsing is defusedxml's
from pathlib import Path
from typing import Any

import defusedxml.ElementTree as SafeET
import h5py
from defusedxml import DefusedXmlException

from tasks.errors import InputError


def parse_header(grp: h5py.Group, path: Path, what: str) -> ET.Element:
    """The group's ``xml`` dataset, parsed; ``what`` and ``path`` name the file in errors."""
    raw = grp["xml"]
    value = raw[()] if raw.shape == () else raw[0]
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    try:
        # The header comes from the file: defusedxml refuses entity declarations and external
        # references rather than expanding or fetching them.
        return SafeET.fromstring(text)
    except DefusedXmlException as exc:
        raise InputError(
            f"{what} {path}: XML header declares entities or external references ({exc!r}); "
            "expected plain ISMRMRD XML"
        ) from exc
    except ET.ParseError as exc:
        raise InputError(
            f"{what} {path}: XML header does not parse ({exc}); expected ISMRMRD XML"
        ) from exc


def xml_value(root: ET.Element, path: str, cast: type = float) -> Any:
    """The text at ``path`` (slash-separated, any namespace) as ``cast``, or None."""
    node = root.find("/".join(f"{{*}}{p}" for p in path.split("/")))
    if node is None or node.text is None or not node.text.strip():
        return None
    try:
        return cast(node.text.strip())
    except ValueError:
        return None


def xml_values(root: ET.Element, path: str) -> list[float]:
    """Every number at ``path`` (slash-separated, any namespace)."""
    nodes = root.findall("/".join(f"{{*}}{p}" for p in path.split("/")))
    out = []
    for node in nodes:
        with contextlib.suppress(TypeError, ValueError):
            out.append(float(node.text))  # type: ignore[arg-type]
    return out
