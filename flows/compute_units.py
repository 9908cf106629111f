"""Compute units on demand: create, list, get and delete them, with Terraform underneath.

``create_compute_unit`` applies an environment (``mode1``: the team's account, ``mode2``: the
user's, reached through a role with an external id) and registers what it made as a unit
(``blocks.registration``). ``delete_compute_unit`` refuses while runs are active on the unit,
then cleans up after its ended runs, destroys the infrastructure and removes the unit's blocks
and pools. Terraform runs as a subprocess (``tasks.compute.units.Terraform``); the settings
each unit was applied with are kept in a ``TerraformRecord`` block ``sciflow-terraform-<unit>``,
so delete destroys with the same variables and state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from blocks.compute_unit import LOCAL_UNIT, UNIT_NAME_PATTERN, ComputeUnit, load_unit
from blocks.registration import register_unit, unregister_unit
from blocks.terraform_record import TerraformRecord
from flows.cleanup_sweep import cleanup_sweep
from tasks.compute.hooks import sciflow_flow
from tasks.compute.units import (
    Environment,
    Terraform,
    UnitHealth,
    active_runs,
    unit_health,
    work_dir_for,
)
from tasks.errors import InputError
from tasks.forms import JSON_BOX
from tasks.progress import publish_summary, run_logger


class CreatedUnit(BaseModel):
    """What ``create_compute_unit`` made."""

    name: str = Field(description="The unit's name.")
    environment: str = Field(description="The Terraform environment applied (mode1, mode2).")
    work_pools: list[str] = Field(description="Work pools registered for the unit.")
    credentials_block: str = Field(description="AwsCredentials and S3Bucket block name.")


class DeletedUnit(BaseModel):
    """What ``delete_compute_unit`` removed."""

    name: str = Field(description="The unit's name.")
    swept_runs: int = Field(description="Ended runs whose leftovers the sweep cleaned.")
    removed: list[str] = Field(description="Blocks and work pools removed.")


def record_name(unit: str) -> str:
    """Name of the TerraformRecord block of unit ``unit``."""
    return f"sciflow-terraform-{unit}"


@sciflow_flow(name="create-compute-unit")
def create_compute_unit(
    name: str,
    environment: Environment,
    variables: Annotated[dict[str, Any] | None, JSON_BOX] = None,
    backend: Annotated[dict[str, str] | None, JSON_BOX] = None,
    overwrite: bool = False,
    work_dir: str | SkipJsonSchema[None] = "",
) -> CreatedUnit:
    """Apply an environment's Terraform for unit ``name`` and register the unit it makes.

    Args:
        name: The unit's name (lowercase letters, digits, dashes); passed to Terraform as
            the variable ``unit_name``.
        environment: ``mode1`` (managed) or ``mode2`` (the user's account).
        variables: Terraform variables (no secrets: flow-run parameters are stored; give
            those as TF_VAR_<name> in the worker's environment).
        backend: Remote state settings for ``-backend-config`` (S3 backend: bucket, region,
            dynamodb_table...); ``key`` defaults to ``sciflow/<name>/terraform.tfstate``.
        overwrite: Replace a unit of that name applied with other settings.
        work_dir: Where the variables file and Terraform's data directory go; under the
            scratch root if omitted.

    Raises:
        InputError: A bad name, variable or backend setting; Terraform is not on PATH; the
            name is taken; the outputs do not make a unit (nothing is registered then).
        TerraformFailed: ``terraform init``, ``apply`` or ``output`` failed.
    """
    work_dir = work_dir or None  # "": an empty form field
    logger = run_logger()
    variables = dict(variables or {})
    check_name(name)
    if variables.setdefault("unit_name", name) != name:
        raise InputError(
            f"variables.unit_name={variables['unit_name']!r} differs from name={name!r}; "
            "expected the same (or leave unit_name out)"
        )
    settings = {"environment": environment, "variables": variables, "backend": dict(backend or {})}
    if settings["backend"]:
        settings["backend"].setdefault("key", f"sciflow/{name}/terraform.tfstate")
    terraform = Terraform(
        environment,
        Path(work_dir) if work_dir else work_dir_for(name),
        variables,
        settings["backend"],
    )
    terraform.check()
    check_name_free(name, settings, overwrite)

    TerraformRecord(**settings).save(record_name(name), overwrite=True)  # delete can destroy
    terraform.init()
    outputs = terraform.apply()
    saved = register_unit(outputs, name, overwrite=overwrite)
    logger.info(
        "unit %r registered: work pools %s, blocks %r",
        name,
        ", ".join(saved.pools),
        saved.credentials_block,
    )
    return CreatedUnit(
        name=name,
        environment=environment,
        work_pools=saved.pools,
        credentials_block=saved.credentials_block,
    )


@sciflow_flow(name="list-compute-units")
def list_compute_units() -> list[UnitHealth]:
    """Every saved compute unit (and ``local``) with its health: credentials, storage."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        documents = client.read_block_documents_by_type(
            block_type_slug=ComputeUnit.get_block_type_slug()
        )
    names = sorted({doc.name for doc in documents if doc.name} | {LOCAL_UNIT})
    report = [unit_health(load_unit(name)) for name in names]
    publish_summary(
        "Compute units",
        [
            {
                "unit": u.name,
                "mode": u.mode,
                "region": u.region or "",
                "storage": u.storage,
                "credentials": u.credentials,
            }
            for u in report
        ],
        key="compute-units",
        notes="Health: credentials resolve (STS) and the storage root answers a listing.",
    )
    return report


@sciflow_flow(name="get-compute-unit")
def get_compute_unit(name: str) -> UnitHealth:
    """Unit ``name`` with its health: its credentials resolve, its storage root answers.

    Args:
        name: The saved compute unit's name (``local`` is this machine).
    """
    return unit_health(load_unit(name))


@sciflow_flow(name="delete-compute-unit")
def delete_compute_unit(name: str) -> DeletedUnit:
    """Destroy unit ``name``'s infrastructure and remove its blocks and work pools.

    Refused while a flow run on the unit is pending, running or cancelling. Then the
    cleanup sweep cleans every ended run that still holds something, ``terraform destroy``
    runs with the settings the unit was applied with, and the unit's blocks and pools go.

    Args:
        name: The unit to delete, as ``create_compute_unit`` named it.

    Raises:
        InputError: The unit is ``local`` or was not made by ``create_compute_unit``, runs
            on it are active, or Terraform is not on PATH. Nothing is changed then.
        CleanupFailed: Cleanup of some run failed; nothing is destroyed.
        TerraformFailed: ``terraform destroy`` failed; the blocks are kept.
    """
    logger = run_logger()
    check_name(name)
    if name == LOCAL_UNIT:
        raise InputError(f"name={name!r} is the built-in unit; expected a unit Terraform made")
    try:
        settings = TerraformRecord.load(record_name(name)).settings()
    except ValueError:
        raise InputError(
            f"unit {name!r} has no Terraform record (block {record_name(name)!r}): it was not "
            "made by create_compute_unit, so its infrastructure is not sciflow's to destroy"
        ) from None
    terraform = Terraform(
        settings["environment"],
        work_dir_for(name),
        settings["variables"],
        settings["backend"],
    )
    terraform.check()
    registered = _is_registered(name)
    if registered and (runs := active_runs(name)):
        raise InputError(
            f"unit {name!r} has {len(runs)} active flow run(s) ({', '.join(runs[:5])}); "
            "expected none: wait for them to end or cancel them, then delete: nothing changed"
        )

    swept = 0
    if registered:
        sweep = cleanup_sweep(unit=name, older_than_hours=0.0)
        swept = len(sweep.ids("cleaned"))
    terraform.init()
    terraform.destroy()
    removed = unregister_unit(name)
    _delete_record(name)
    removed.append(f"sciflow-terraform-record block {record_name(name)}")
    logger.info("unit %r deleted: %s", name, "; ".join(removed))
    return DeletedUnit(name=name, swept_runs=swept, removed=removed)


def check_name(name: str) -> None:
    """Refuse a unit name that cannot name blocks, paths and tags."""
    import re

    if not re.match(UNIT_NAME_PATTERN, name):
        raise InputError(
            f"name={name!r}; expected 1-63 lowercase letters, digits and dashes, starting "
            "with a letter or digit"
        )


def check_name_free(name: str, settings: dict[str, Any], overwrite: bool) -> None:
    """Refuse a name taken by a unit applied with other settings, or saved by hand.

    The same settings again (a retried create) are allowed: apply and register are
    idempotent.
    """
    if overwrite:
        return
    try:
        before = TerraformRecord.load(record_name(name)).settings()
    except ValueError:
        before = None
    if before is not None and before != settings:
        raise InputError(
            f"unit name {name!r} is taken: it was applied with other settings; pass "
            "overwrite=True to apply these instead: nothing was applied"
        )
    if before is None and _is_registered(name):
        raise InputError(
            f"unit name {name!r} is taken by a unit not made here (saved with save-unit); "
            "pass overwrite=True to replace it: nothing was applied"
        )


def _delete_record(name: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        doc = client.read_block_document_by_name(
            name=record_name(name), block_type_slug=TerraformRecord.get_block_type_slug()
        )
        client.delete_block_document(doc.id)


def _is_registered(name: str) -> bool:
    try:
        ComputeUnit.load(name)
    except ValueError:
        return False
    return True
