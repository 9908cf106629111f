"""Deploy sciflow's flows onto a saved AWS compute unit's work pools.

From the repository root, with ``PREFECT_API_URL`` pointing at the server the unit is saved on::

    python -m deployments.deploy_unit lab-a           # prefect deploy --all of what it writes
    python -m deployments.deploy_unit lab-a --print   # only print that prefect.yaml

Every deployment ``local`` of ``deployments/prefect.yaml`` becomes one deployment
``<unit>-<class>`` for each size class it runs in that the unit has a pool for
(``ComputeUnit.work_pools``), e.g. ``mr-reconstruction/lab-a-small`` on ``work_pools["small"]``,
the names ``flows/router.py`` starts. Each one:

- has the unit as its ``unit`` parameter (the flows' default is ``local``);
- sends its runs (``route-job``'s excepted: they stay in ``default``) to the pool's work
  queue named after the class (``make pools`` gives it
  ``limits.<class>.concurrent_runs``), so runs started from the UI, the CLI or a schedule
  wait for the class's limit as routed ones do;
- pulls nothing: the flows image installs sciflow, so entrypoints are given as modules
  (``flows.mr_reconstruction:mr_reconstruction``), found from any working directory;
- leaves image, cluster, network and roles to the pool's defaults, which ``register_unit``
  filled from the unit's ``terraform output``; Batch classes name their ``size_class``;
- keeps the description, tags and schedules (on its smallest class only: one hourly sweep
  per unit, one inactive nightly retrain).

The compute-unit flows stay local: they run Terraform and manage units from the server side.
Nothing here names an account: the unit block holds it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from blocks.compute_unit import LOCAL_UNIT, SIZE_CLASSES, SizeClass, load_unit
from tasks.errors import InputError

REPO = Path(__file__).resolve().parents[1]
PREFECT_FILE = REPO / "deployments" / "prefect.yaml"
# The classes a flow runs in, smallest first, as the router picks them; a flow not named
# here runs in `small`.
CLASSES: dict[str, tuple[SizeClass, ...]] = {
    "flows.mr_reconstruction:mr_reconstruction": ("small", "large"),
    "flows.multinode_simulation:multinode_simulation": ("small", "large", "multinode"),
    "flows.distributed_training:distributed_training": ("small", "large", "multinode", "gpu"),
}
LOCAL_ONLY = "flows.compute_units:"
# A routing run that waits holds its queue's slot while the run it started needs one: in the
# class's queue, a class limit of 1 would never let that run start.
ROUTER = "flows.router:route_job"
# Classes whose pool is an aws-batch pool (blocks.registration.POOL_TYPES): a pool may serve
# both, so the deployment says which it is.
BATCH_CLASSES: tuple[SizeClass, ...] = ("multinode",)  # gpu runs on ECS (EC2 GPU capacity)


def module_entrypoint(entrypoint: str) -> str:
    """``flows/x.py:f`` as ``flows.x:f``: importable from the installed package anywhere."""
    path, _, func = entrypoint.partition(":")
    return f"{path.removesuffix('.py').replace('/', '.')}:{func}"


def unit_deployments(unit_name: str, prefect_file: Path = PREFECT_FILE) -> dict[str, Any]:
    """The prefect.yaml that deploys ``prefect_file``'s flows onto unit ``unit_name``.

    Raises:
        InputError: The unit is ``local`` (its deployments are ``prefect_file`` itself) or
            not saved, or it has no pool for any class a flow runs in.
    """
    if unit_name == LOCAL_UNIT:
        raise InputError(
            f"unit={unit_name!r} is deployed by {prefect_file.name} itself (`make deploy`); "
            "expected a saved AWS unit"
        )
    unit = load_unit(unit_name)
    config = yaml.safe_load(prefect_file.read_text())
    deployments = []
    for local in config["deployments"]:
        entrypoint = module_entrypoint(local["entrypoint"])
        if entrypoint.startswith(LOCAL_ONLY):
            continue
        sizes = [s for s in CLASSES.get(entrypoint, ("small",)) if s in unit.work_pools]
        for index, size in enumerate(sizes):
            deployment: dict[str, Any] = {
                "name": f"{unit.name}-{size}",
                "entrypoint": entrypoint,
                "description": local["description"],
                "tags": list(local["tags"]),
                "parameters": {"unit": unit.name},
                "work_pool": {
                    "name": unit.work_pool(size),
                    "work_queue_name": "default" if entrypoint == ROUTER else size,
                    "job_variables": {"size_class": size} if size in BATCH_CLASSES else {},
                },
                "pull": [],
            }
            if index == 0 and local.get("schedules"):
                deployment["schedules"] = [dict(s) for s in local["schedules"]]
            deployments.append(deployment)
    if not deployments:
        raise InputError(
            f"unit {unit.name!r} has work_pools for {sorted(unit.work_pools)}; expected at "
            f"least one of {list(SIZE_CLASSES)}"
        )
    return {
        "name": f"sciflow-{unit.name}",
        "prefect-version": config["prefect-version"],
        "build": None,
        "push": None,
        "pull": [],
        "deployments": deployments,
    }


def deploy(unit_name: str) -> None:
    """``prefect deploy --all`` of ``unit_deployments(unit_name)`` from the repository root."""
    text = yaml.safe_dump(unit_deployments(unit_name), sort_keys=False)
    with tempfile.TemporaryDirectory() as tmp:
        prefect_file = Path(tmp) / f"prefect-{unit_name}.yaml"
        prefect_file.write_text(text)
        argv = [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"]
        subprocess.run(  # noqa: S603 - our own interpreter and a file we wrote
            [*argv, "--prefect-file", str(prefect_file)], cwd=REPO, check=True
        )


def main(argv: list[str] | None = None) -> int:
    """Command line: deploy (or ``--print``) a unit's deployments."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("unit", help="name of a saved ComputeUnit block")
    parser.add_argument(
        "--print", action="store_true", help="print the prefect.yaml instead of deploying it"
    )
    args = parser.parse_args(argv)
    try:
        if args.print:
            print(yaml.safe_dump(unit_deployments(args.unit), sort_keys=False), end="")
        else:
            deploy(args.unit)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        return exc.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
