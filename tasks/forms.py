"""JSON-schema help for the Prefect UI's run form.

The UI builds its run form from the JSON schema of a flow's parameters and checks each value
against it before it submits. A ``T | None`` field shows as a type picker ("Property is type
None") before anything can be typed; its ``null`` default fails the form's own check ("None is
not of type 'number'") once the picker is gone. ``plain_optional_fields`` shows such a field
of an option model as a plain ``T`` field that starts empty and is left out when left empty;
the model still takes None. ``tests/flows/test_parameter_forms.py`` walks every flow's form.
"""

from __future__ import annotations

from typing import Any

from pydantic import WithJsonSchema

# A JSON box in the form, for a free-form dict: a schema with no type takes any JSON, the
# ``null`` default ("not given") included, where ``{"type": "object"}`` would refuse it.
JSON_BOX = WithJsonSchema({})


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with ``anyOf: [T, null]`` made ``T`` and a ``null`` default dropped."""
    choices = schema.get("anyOf")
    if choices and {"type": "null"} in choices:
        rest = [c for c in choices if c != {"type": "null"}]
        if len(rest) == 1:
            schema = {k: v for k, v in schema.items() if k != "anyOf"} | rest[0]
    if "prefixItems" in schema:  # a tuple's entries, e.g. (int | None, int | None)
        schema["prefixItems"] = [_without_null(item) for item in schema["prefixItems"]]
    if "default" in schema and schema["default"] is None:
        del schema["default"]
    return schema


def plain_optional_fields(schema: dict[str, Any]) -> None:
    """Show a model's ``T | None`` fields as plain ``T`` fields, starting empty.

    For ``json_schema_extra``: validation is unchanged, only the form's schema.

    Example:
        ``model_config = ConfigDict(json_schema_extra=plain_optional_fields)``
    """
    for name, prop in schema.get("properties", {}).items():
        schema["properties"][name] = _without_null(prop)
