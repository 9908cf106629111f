"""The ECS work pool's base job template (deployments/work-pools), filled as an operator would."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ECS_TEMPLATE = REPO / "deployments" / "work-pools" / "ecs-fargate.json"


def load_template() -> dict[str, Any]:
    """The template as committed."""
    return json.loads(ECS_TEMPLATE.read_text())


def with_defaults(template: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``template`` whose variables default to ``values`` (a unit's terraform outputs).

    What an operator does before ``prefect work-pool create``: the pool then runs deployments
    that set no job variables.
    """
    filled = copy.deepcopy(template)
    properties = filled["variables"]["properties"]
    if unknown := set(values) - set(properties):
        raise KeyError(f"the template has no variables {sorted(unknown)}")
    for name, value in values.items():
        properties[name]["default"] = value
    return filled
