"""Tags every cloud resource a run creates carries; cleanup finds leftovers by them alone."""

from __future__ import annotations

import re
from collections.abc import Mapping

RUN_ID_TAG = "sciflow:run-id"
UNIT_TAG = "sciflow:unit"
FLOW_TAG = "sciflow:flow"

# AWS allows letters, digits, spaces and _ . : / = + - @ in tag keys and values.
_NOT_ALLOWED = re.compile(r"[^\w .:/=+\-@]", re.ASCII)
MAX_VALUE_LENGTH = 256


def clean_tag(value: str) -> str:
    """``value`` with characters AWS tags reject replaced by ``_``, cut to 256 characters."""
    return _NOT_ALLOWED.sub("_", value)[:MAX_VALUE_LENGTH]


def run_tags(
    run_id: str, unit: str, flow: str, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The tags for every resource a flow run creates.

    Args:
        run_id: The flow run's id.
        unit: The compute unit's name.
        flow: The flow's name.
        extra: The unit's own tags (cost centre, project); the run tags win on a clash.
    """
    tags = {clean_tag(k): clean_tag(v) for k, v in (extra or {}).items()}
    tags |= {RUN_ID_TAG: clean_tag(run_id), UNIT_TAG: clean_tag(unit), FLOW_TAG: clean_tag(flow)}
    return tags


def to_aws(tags: Mapping[str, str], key: str = "Key", value: str = "Value") -> list[dict[str, str]]:
    """Tags as the ``[{"Key": k, "Value": v}]`` list most AWS APIs take (ECS: ``key``/``value``)."""
    return [{key: k, value: v} for k, v in tags.items()]


def from_aws(items: list[dict[str, str]]) -> dict[str, str]:
    """The inverse of ``to_aws``, whichever capitalisation the API used."""
    return {
        item.get("Key", item.get("key", "")): item.get("Value", item.get("value", ""))
        for item in items
    }
