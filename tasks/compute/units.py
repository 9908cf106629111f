"""Compute units as a service: Terraform as a subprocess, unit health, runs still on a unit.

``flows/compute_units.py`` reads as the pipeline; the steps live here. Terraform runs in an
environment's directory (``infrastructure/terraform/environments/<mode1|mode2>``) with its
own data directory (``TF_DATA_DIR``) in the unit's work directory, variables from a
``.tfvars.json`` file written there, and remote state settings as ``-backend-config``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from blocks.compute_unit import ComputeUnit
from tasks.aws.clients import call, client
from tasks.errors import InputError, SciflowError
from tasks.progress import run_logger
from tasks.settings import get_settings
from tasks.storage.objects import Location

Environment = Literal["mode1", "mode2"]
REPO = Path(__file__).resolve().parents[2]
ENVIRONMENTS = REPO / "infrastructure" / "terraform" / "environments"
# Variables that carry secrets: flow-run parameters are stored, so these come through the
# worker's environment (TF_VAR_<name>) instead.
SECRET_VARIABLE = re.compile(r"secret|password|token|external_id|private_key|access_key", re.I)
BACKEND_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
# Lines of Terraform's output kept for an error message.
TAIL_LINES = 20


class TerraformFailed(SciflowError):
    """``terraform`` exited non-zero; the message holds the end of its output."""


@dataclass(frozen=True)
class Terraform:
    """One environment's Terraform for one unit: where it runs and with what."""

    environment: Environment
    work_dir: Path
    variables: Mapping[str, Any]
    backend: Mapping[str, str]

    @property
    def env_dir(self) -> Path:
        """The environment's Terraform directory."""
        return ENVIRONMENTS / self.environment

    @property
    def var_file(self) -> Path:
        """The variables file Terraform reads (``-var-file``)."""
        return self.work_dir / "sciflow.tfvars.json"

    def check(self) -> str:
        """The ``terraform`` binary's path, after checking every input.

        Raises:
            InputError: ``terraform`` is not on PATH, the environment has no Terraform
                directory, a variable name looks like a secret, or a backend setting is
                malformed.
        """
        if not self.env_dir.is_dir():
            raise InputError(
                f"environment={self.environment!r} has no Terraform at {self.env_dir}; expected "
                "one of infrastructure/terraform/environments/mode1, mode2"
            )
        if secret := sorted(k for k in self.variables if SECRET_VARIABLE.search(k)):
            raise InputError(
                f"variables {secret} look like secrets, and flow-run parameters are stored; "
                "expected them as TF_VAR_<name> in the worker's environment instead"
            )
        if not self.backend:
            raise InputError(
                "backend is empty; expected remote state settings for -backend-config "
                "(e.g. bucket, key, region of the S3 backend)"
            )
        for key, value in self.backend.items():
            if not BACKEND_KEY.match(key) or not isinstance(value, str) or "\n" in value:
                raise InputError(
                    f"backend setting {key!r}={value!r}; expected a lowercase name and a "
                    "one-line string value"
                )
        binary = shutil.which("terraform")
        if binary is None:
            raise InputError(
                "terraform is not on PATH; expected the Terraform CLI (1.5 or later) on the "
                "worker that runs this flow"
            )
        return binary

    def run(self, *args: str, stream: bool = True) -> str:
        """``terraform <args>`` in the environment; its stdout, streamed to the run log.

        Args:
            *args: The subcommand and its options.
            stream: Log each line as it comes (``False`` for output that holds secrets,
                such as ``output -json``).

        Raises:
            InputError: ``terraform`` is not on PATH.
            TerraformFailed: It exited non-zero.
        """
        binary = self.check()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,  # the worker's credentials and TF_VAR_* secrets
            "TF_DATA_DIR": str(self.work_dir / ".terraform"),
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
        }
        logger = run_logger()
        command = ["terraform", *args]
        logger.info("%s (in %s)", " ".join(command), self.env_dir)
        lines: list[str] = []
        tail: deque[str] = deque(maxlen=TAIL_LINES)
        with subprocess.Popen(  # noqa: S603  # a fixed binary and our own arguments
            [binary, *args],
            cwd=self.env_dir,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            assert process.stdout is not None  # noqa: S101  # stdout=PIPE above
            for line in process.stdout:
                lines.append(line)
                tail.append(line.rstrip())
                if stream:
                    logger.info("terraform: %s", line.rstrip())
            code = process.wait()
        if code != 0:
            shown = " | ".join(tail) if stream else "(output withheld: it may hold secrets)"
            raise TerraformFailed(
                f"`{' '.join(command)}` in {self.env_dir} exited with {code}: {shown}"
            )
        return "".join(lines)

    def init(self) -> None:
        """``terraform init`` with the remote state settings; variables written first."""
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.var_file.write_text(json.dumps(dict(self.variables), indent=2, sort_keys=True))
        configs = [f"-backend-config={key}={value}" for key, value in self.backend.items()]
        self.run("init", "-input=false", "-reconfigure", *configs)

    def apply(self) -> dict[str, Any]:
        """``terraform apply -auto-approve``; then ``terraform output -json``, parsed."""
        self.run("apply", "-auto-approve", "-input=false", f"-var-file={self.var_file}")
        text = self.run("output", "-json", stream=False)
        try:
            outputs: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TerraformFailed(f"`terraform output -json` printed no JSON: {exc}") from None
        return outputs

    def destroy(self) -> None:
        """``terraform destroy -auto-approve`` with the same variables."""
        self.run("destroy", "-auto-approve", "-input=false", f"-var-file={self.var_file}")


def work_dir_for(name: str) -> Path:
    """The default work directory of unit ``name``'s Terraform: under the scratch root."""
    return get_settings().scratch_root / "terraform" / name


class UnitHealth(BaseModel):
    """A compute unit and whether it works: its credentials resolve, its storage answers."""

    name: str = Field(description="Unit name.")
    platform: str = Field(description="local or aws.")
    mode: str = Field(description="managed (Mode 1) or user (Mode 2).")
    region: str | None = Field(None, description="AWS region.")
    storage_root: str | None = Field(None, description="Where runs write.")
    work_pools: dict[str, str] = Field(description="Work pool per size class.")
    credentials: str = Field(description="'ok', or why the unit's credentials do not resolve.")
    storage: str = Field(description="'ok', or why the storage root cannot be reached.")

    @property
    def healthy(self) -> bool:
        """Whether both checks passed."""
        return self.credentials == "ok" and self.storage == "ok"


def unit_health(unit: ComputeUnit) -> UnitHealth:
    """Cheap checks of ``unit``: STS GetCallerIdentity as it, and its storage root's bucket."""
    credentials = storage = "ok"
    root = unit.storage_root or str(get_settings().storage_root)
    if unit.is_local:
        if not Path(root).is_dir():
            storage = f"{root} is not a directory yet (it is made on the first run)"
    else:
        account = unit.aws_account()
        try:
            call(client("sts", account).get_caller_identity, "resolve the unit's credentials")
        except SciflowError as exc:
            credentials = str(exc)
        try:
            where = Location.parse(root)
            s3 = client("s3", account)
            call(
                s3.list_objects_v2,
                f"list {root}",
                Bucket=where.bucket,
                Prefix=where.key,
                MaxKeys=1,
            )
        except SciflowError as exc:
            storage = str(exc)
    return UnitHealth(
        name=unit.name,
        platform=unit.platform,
        mode=unit.mode,
        region=unit.region,
        storage_root=root,
        work_pools=dict(unit.work_pools),
        credentials=credentials,
        storage=storage,
    )


def active_runs(unit: str) -> list[str]:
    """Ids of flow runs pending, running or cancelling on ``unit``, as the API knows them.

    A run is on ``unit`` if its ``unit`` parameter names it, or names none and ``unit`` is
    the default unit. The calling flow run is left out.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.runtime import flow_run

    active = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
    default = get_settings().default_unit
    found: list[str] = []
    with get_client(sync_client=True) as prefect:
        offset = 0
        while True:
            page = prefect.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=active))
                ),
                limit=200,
                offset=offset,
            )
            for run in page:
                named = (run.parameters or {}).get("unit") or default
                if named == unit and str(run.id) != flow_run.get_id():
                    found.append(str(run.id))
            if len(page) < 200:
                return found
            offset += 200
