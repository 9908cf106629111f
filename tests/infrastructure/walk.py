"""Reads infrastructure/terraform with python-hcl2; finds where modules and environments disagree.

python-hcl2 8 keeps HCL's quoting: block labels and string values come back as ``'"name"'``
and expressions as ``'${...}'``; ``unquote`` strips both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hcl2

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "infrastructure" / "terraform"
MODULES = TERRAFORM / "modules"
ENVIRONMENTS = TERRAFORM / "environments"
COMPUTE_UNIT = REPO / "blocks" / "compute_unit.py"

# Arguments of a module block that are Terraform's, not the module's variables.
META_ARGUMENTS = frozenset({"source", "version", "count", "for_each", "depends_on", "providers"})
REFERENCE = re.compile(r"\bmodule\.([A-Za-z_][\w-]*)\.([A-Za-z_][\w-]*)")
VAR_REFERENCE = re.compile(r"\bvar\.([A-Za-z_][\w-]*)")


def unquote(text: Any) -> Any:
    """``'"x"'`` -> ``'x'``; anything else unchanged."""
    if isinstance(text, str) and len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def parse(path: Path) -> dict[str, Any]:
    """One .tf or .tfvars file, parsed (each version once: the walk reads modules often)."""
    return _parse(path.resolve(), path.stat().st_mtime_ns)


@cache
def _parse(path: Path, mtime_ns: int) -> dict[str, Any]:
    with path.open() as handle:
        return hcl2.load(handle)


def blocks(parsed: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    """Labelled blocks of one kind (``variable``, ``output``, ``module``) by their label."""
    found: dict[str, dict[str, Any]] = {}
    for entry in parsed.get(kind, []):
        for label, body in entry.items():
            found[unquote(label)] = body
    return found


@dataclass
class Config:
    """A directory of .tf files: its variables, outputs, module calls and raw text."""

    path: Path
    variables: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)
    terraform: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""

    @classmethod
    def load(cls, path: Path) -> Config:
        config = cls(path)
        for tf in sorted(path.glob("*.tf")):
            parsed = parse(tf)
            config.variables |= blocks(parsed, "variable")
            config.outputs |= blocks(parsed, "output")
            config.modules |= blocks(parsed, "module")
            config.terraform += parsed.get("terraform", [])
            config.text += tf.read_text()
        return config

    def required(self) -> set[str]:
        """Variables without a default: every caller must pass them."""
        return {name for name, body in self.variables.items() if "default" not in body}


def call_problems(caller: Config) -> list[str]:
    """Where ``caller``'s module calls and ``module.X.Y`` references miss their modules."""
    problems = []
    called: dict[str, Config] = {}
    for name, body in caller.modules.items():
        source = (caller.path / unquote(body["source"])).resolve()
        if not source.is_dir():
            problems.append(f"{caller.path.name}: module {name} has no source {source}")
            continue
        module = called[name] = Config.load(source)
        passed = set(body) - META_ARGUMENTS - {"__is_block__", "__comments__"}
        for missing in sorted(module.required() - passed):
            problems.append(f"{caller.path.name}: module {name} lacks required variable {missing}")
        for unknown in sorted(passed - set(module.variables)):
            problems.append(f"{caller.path.name}: module {name} has no variable {unknown}")
    for module_name, output in sorted(set(REFERENCE.findall(caller.text))):
        if module_name not in called:
            problems.append(f"{caller.path.name}: module.{module_name} is not called")
        elif output not in called[module_name].outputs:
            problems.append(f"{caller.path.name}: module {module_name} has no output {output}")
    return problems


def variable_problems(config: Config) -> list[str]:
    """Variables that are untyped, undescribed or (unless boolean) unvalidated; unknown var.X."""
    problems = []
    for name, body in config.variables.items():
        if "type" not in body:
            problems.append(f"{config.path.name}: variable {name} has no type")
        if not unquote(body.get("description", "")):
            problems.append(f"{config.path.name}: variable {name} has no description")
        if body.get("type") != "bool" and not body.get("validation"):
            problems.append(f"{config.path.name}: variable {name} has no validation")
    for name in sorted(set(VAR_REFERENCE.findall(config.text)) - set(config.variables)):
        problems.append(f"{config.path.name}: var.{name} is not declared")
    return problems


def unit_outputs_read() -> set[str]:
    """The outputs ``ComputeUnit.from_terraform_output`` reads: the names its body reads, and
    ``TERRAFORM_OUTPUTS`` where blocks/compute_unit.py lists them."""
    source = COMPUTE_UNIT.read_text()
    body = source[source.index("def from_terraform_output") :]
    body = body[: body.find("\ndef ")]  # up to the next top-level function
    names = set(re.findall(r"""value(?:\.get\(|\[)["']([a-z_]+)["']""", body))
    if listed := re.search(r"^TERRAFORM_OUTPUTS = \((.*?)^\)", source, re.M | re.S):
        names |= set(re.findall(r'"([a-z_]+)"', listed.group(1)))
    return names
