"""Every flow's parameters make a usable form in the Prefect UI.

The UI builds the run form from ``flow.parameters`` (``prefect.utilities.callables.
parameter_schema``): an ``anyOf`` becomes a type picker ("Property is type None" before a path
can be typed), an object without properties or a schema without a type a raw JSON box, and a
parameter without a description leaves the scientist reading code.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import pytest
from prefect import Flow

import flows

# JSON boxes on purpose: (flow name, parameter) -> why no form fits.
JSON_BOXES_ALLOWED = {
    ("mr-reconstruction", "job"): "an MR Optimum job is pasted unchanged; its keys vary by "
    "version (job or web GUI wrapper), and a job file's URI goes in the same box",
    ("model-upload", "metadata"): "free-form notes stored in the manifest as given",
    ("route-job", "parameters"): "the chosen flow's own parameters, whichever flow `flow` names",
    ("create-compute-unit", "variables"): "Terraform variables differ per environment",
    ("create-compute-unit", "backend"): "Terraform backend settings differ per backend type",
    # Fields of the option models the forms nest: (model title, field).
    ("TrainingSettings", "model_options"): "keyword arguments of the chosen model; each model "
    "takes its own",
    ("SequenceSpec", "params"): "keyword arguments of the chosen sequence builder; each "
    "builder takes its own",
}


def every_flow() -> list[Flow[Any, Any]]:
    """The flows defined in flows/*.py (each module's own, not those it imports)."""
    found = []
    for module_info in pkgutil.iter_modules(flows.__path__):
        module = importlib.import_module(f"flows.{module_info.name}")
        found += [
            obj
            for obj in vars(module).values()
            if isinstance(obj, Flow) and obj.__module__ == module.__name__
        ]
    return sorted(found, key=lambda f: f.name)


FLOWS = every_flow()


def field_problems(owner: str, name: str, prop: dict[str, Any], definitions: dict) -> list[str]:
    """What keeps one property from rendering as a plain, described field."""
    where = f"{owner}.{name}"
    problems = []
    if not (prop.get("description") or "").strip():
        problems.append(f"{where}: no description (add it to the docstring's Args)")
    for picker in ("anyOf", "oneOf"):
        if picker in prop:
            kinds = [p.get("type", p.get("$ref", "?")) for p in prop[picker]]
            problems.append(f"{where}: {picker} {kinds} renders as a type picker")
    for item in [*prop.get("prefixItems", []), prop.get("items") or {}]:
        if "anyOf" in item or "oneOf" in item:
            problems.append(f"{where}: a list entry renders as a type picker")
    ref = prop.get("$ref", "").rsplit("/", 1)[-1]
    if ref and ref not in definitions:
        problems.append(f"{where}: $ref {ref} has no definition")
    untyped = not ref and not {"enum", "type", "anyOf", "oneOf", "allOf"} & prop.keys()
    free_object = prop.get("type") == "object" and "properties" not in prop
    if (untyped or free_object) and (owner, name) not in JSON_BOXES_ALLOWED:
        problems.append(f"{where}: renders as a raw JSON box")
    return problems


def form_problems(flow: Flow[Any, Any]) -> list[str]:
    """What keeps ``flow``'s parameters, and the fields of forms they nest, from rendering well."""
    schema = flow.parameters.model_dump()
    definitions = schema.get("definitions") or {}
    problems = []
    for name, prop in schema["properties"].items():
        problems += field_problems(flow.name, name, prop, definitions)
    for model, definition in definitions.items():
        for name, prop in definition.get("properties", {}).items():
            problems += field_problems(model, name, prop, definitions)
    return problems


def test_every_flow_module_is_walked():
    names = {f.name for f in FLOWS}
    assert {"mr-reconstruction", "distributed-training", "research-pipeline"} <= names
    assert len(names) >= 12


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_every_parameter_renders_as_a_described_field(flow):
    assert form_problems(flow) == []


def test_allowed_json_boxes_exist_and_are_json_boxes():
    """The allow-list names only real parameters, and only ones that still need a JSON box."""
    by_name = {f.name: f.parameters.model_dump()["properties"] for f in FLOWS}
    for flow in FLOWS:
        for model, definition in (flow.parameters.model_dump().get("definitions") or {}).items():
            by_name[model] = definition["properties"]
    for flow_name, param in JSON_BOXES_ALLOWED:
        prop = by_name[flow_name][param]
        assert "$ref" not in prop, (flow_name, param)
        assert "properties" not in prop, (flow_name, param)


def test_the_checker_catches_a_picker_a_json_box_and_a_missing_description():
    from prefect import flow

    @flow(name="bad-form")
    def bad(path: str | None = None, extra: dict[str, Any] | None = None, n: int = 1) -> None:
        """Bad.

        Args:
            path: A path.
            extra: Anything.
        """

    problems = form_problems(bad)
    assert any("bad-form.path: anyOf ['string', 'null']" in p for p in problems), problems
    assert any("bad-form.extra: anyOf" in p for p in problems), problems
    assert "bad-form.n: no description (add it to the docstring's Args)" in problems


def test_mr_reconstruction_offers_text_fields_the_options_form_and_a_job_box():
    from flows.mr_reconstruction import mr_reconstruction

    props = mr_reconstruction.parameters.model_dump()["properties"]
    for name in ("signal", "noise", "output", "unit"):
        assert props[name]["type"] == "string", props[name]
    assert props["options"]["$ref"].endswith("/MrOptions")
    assert set(props["job"]) <= {"default", "description", "position", "title"}


def test_a_job_replaces_options_left_at_the_form_defaults():
    from flows.mr_reconstruction import job_or_options
    from tasks.mr.options import MrOptions

    job = {"version": "v0", "options": {"name": "AC"}}
    assert job_or_options(None, job) is job
    assert job_or_options(MrOptions(), job) is job  # the UI sends the untouched form too
    assert job_or_options({"method": "mr"}, None) == {"method": "mr"}
    assert job_or_options({"method": "mr"}, {}) == {"method": "mr"}


def test_a_job_and_changed_options_are_refused():
    from flows.mr_reconstruction import job_or_options
    from tasks.errors import InputError
    from tasks.mr.options import MrOptions

    with pytest.raises(InputError, match="both job and options are given; expected one"):
        job_or_options(MrOptions(method="mr"), "s3://bucket/job.json")
