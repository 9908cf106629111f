"""The compute-unit flows, with a recording stand-in `terraform` on PATH.

The stand-in (written per test below) is not Terraform: it appends its argv, working
directory and TF_DATA_DIR to a JSON-lines file, prints a line per call as Terraform would,
prints a canned `terraform output -json` for `output -json`, and exits non-zero for the
subcommand named in STANDIN_TERRAFORM_FAIL. It proves what the flows run and in what order;
it provisions nothing. Blocks and pools go to the session's real Prefect server; AWS calls go
to moto's server on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from uuid import uuid4

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.states import Running

import tasks.compute.units as units_module
from blocks.compute_unit import ComputeUnit
from blocks.terraform_record import TerraformRecord
from flows.compute_units import (
    create_compute_unit,
    delete_compute_unit,
    get_compute_unit,
    list_compute_units,
    record_name,
)
from tasks.aws.clients import client
from tasks.compute.units import TerraformFailed
from tasks.errors import InputError
from tests.blocks.test_registration import full_output, what_exists

STANDIN = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["STANDIN_TERRAFORM_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "cwd": os.getcwd(),
                          "data_dir": os.environ.get("TF_DATA_DIR")}}) + "\\n")
if args and args[0] == os.environ.get("STANDIN_TERRAFORM_FAIL"):
    print("Error: stand-in refused " + args[0])
    sys.exit(1)
if args[:2] == ["output", "-json"]:
    print(open(os.environ["STANDIN_TERRAFORM_OUTPUT"]).read())
else:
    print("stand-in terraform " + " ".join(args[:1]) + " complete!")
"""
BACKEND = {"bucket": "tf-state", "region": "us-east-1"}


@pytest.fixture
def terraform(tmp_path, monkeypatch):
    """A recording stand-in `terraform` first on PATH; environments mode1, mode2 under tmp."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "terraform"
    script.write_text(STANDIN.format(python=sys.executable))
    script.chmod(0o755)
    log = tmp_path / "terraform.jsonl"
    environments = tmp_path / "environments"
    for mode in ("mode1", "mode2"):
        (environments / mode).mkdir(parents=True)
    monkeypatch.setattr(units_module, "ENVIRONMENTS", environments)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setenv("STANDIN_TERRAFORM_LOG", str(log))
    monkeypatch.setenv("STANDIN_TERRAFORM_OUTPUT", str(tmp_path / "outputs.json"))

    class Recorder:
        environments_dir = environments

        def outputs(self, outputs: dict) -> None:
            (tmp_path / "outputs.json").write_text(json.dumps(outputs))

        def calls(self) -> list[dict]:
            if not log.exists():
                return []
            return [json.loads(line) for line in log.read_text().splitlines()]

        def commands(self) -> list[str]:
            return [" ".join(call["argv"][:2]) for call in self.calls()]

    return Recorder()


def fresh_name() -> str:
    return f"cu-{uuid4().hex[:10]}"


def test_create_applies_the_environment_and_registers_the_unit(terraform, tmp_path, caplog):
    """Guards against create skipping init/backend settings, applying without the var file,
    not streaming Terraform's output to the run log, or not registering the unit."""
    name = fresh_name()
    terraform.outputs(full_output(name))
    work = tmp_path / "work"
    caplog.set_level(logging.INFO)

    created = create_compute_unit(
        name=name,
        environment="mode2",
        variables={"region": "eu-west-1", "max_vcpus": 64},
        backend=BACKEND,
        work_dir=str(work),
    )

    calls = terraform.calls()
    assert [c["argv"][0] for c in calls] == ["init", "apply", "output"]
    assert {c["cwd"] for c in calls} == {str(terraform.environments_dir / "mode2")}
    assert {c["data_dir"] for c in calls} == {str(work / ".terraform")}
    init = calls[0]["argv"]
    assert "-backend-config=bucket=tf-state" in init
    assert f"-backend-config=key=sciflow/{name}/terraform.tfstate" in init
    assert calls[1]["argv"][:2] == ["apply", "-auto-approve"]
    var_file = work / "sciflow.tfvars.json"
    assert f"-var-file={var_file}" in calls[1]["argv"]
    assert json.loads(var_file.read_text()) == {
        "max_vcpus": 64,
        "region": "eu-west-1",
        "unit_name": name,
    }
    assert calls[2]["argv"] == ["output", "-json"]
    assert "terraform: stand-in terraform apply complete!" in caplog.text
    assert "sciflow-7f3c91-reg" not in caplog.text  # output -json is not logged: external id
    assert created.work_pools == [f"{name}-small", f"{name}-large", f"{name}-batch", f"{name}-gpu"]
    assert ComputeUnit.load(name).region == "eu-west-1"
    assert TerraformRecord.load(record_name(name)).environment == "mode2"


def test_create_without_terraform_on_path_is_a_clear_error(terraform, monkeypatch, tmp_path):
    """Guards against a missing Terraform surfacing as a bare FileNotFoundError."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    name = fresh_name()
    with pytest.raises(InputError, match="terraform is not on PATH"):
        create_compute_unit(name=name, environment="mode1", backend=BACKEND)
    assert what_exists(name) == []


def test_a_failed_apply_registers_nothing(terraform, monkeypatch):
    """Guards against registering a unit from a failed apply, and a failure without the
    command, exit code and Terraform's last lines."""
    name = fresh_name()
    terraform.outputs(full_output(name))
    monkeypatch.setenv("STANDIN_TERRAFORM_FAIL", "apply")
    with pytest.raises(TerraformFailed, match=r"`terraform apply .*exited with 1: .*refused apply"):
        create_compute_unit(name=name, environment="mode2", backend=BACKEND)
    assert terraform.commands()[-1].startswith("apply")
    assert what_exists(name) == []


def test_bad_parameters_are_refused_before_terraform_runs(terraform):
    """Guards against secrets in stored flow parameters and against Terraform running for
    input that cannot work (no backend, mismatched unit name, unknown environment)."""
    name = fresh_name()
    cases = [
        ({"variables": {"external_id": "x"}}, r"variables \['external_id'\] look like secrets"),
        ({"backend": {}}, "backend is empty"),
        ({"variables": {"unit_name": "other"}}, r"variables.unit_name='other' differs"),
        ({"backend": {"Bad Key": "v"}}, r"backend setting 'Bad Key'"),
    ]
    for extra, pattern in cases:
        kwargs = {"name": name, "environment": "mode1", "backend": BACKEND} | extra
        with pytest.raises(InputError, match=pattern):
            create_compute_unit(**kwargs)
    assert terraform.calls() == []


def test_outputs_of_another_unit_are_not_registered(terraform):
    """Guards against create registering whatever the environment's state holds."""
    name = fresh_name()
    terraform.outputs(full_output(f"{name}-x"))
    with pytest.raises(InputError, match=rf"unit_name='{name}-x'; expected '{name}'"):
        create_compute_unit(name=name, environment="mode2", backend=BACKEND)
    assert what_exists(name) == []


def test_a_unit_saved_by_hand_is_not_taken_over(terraform):
    """Guards against create applying Terraform over a name another unit holds."""
    name = fresh_name()
    ComputeUnit(name=name).save(name)
    with pytest.raises(InputError, match=rf"unit name '{name}' is taken"):
        create_compute_unit(name=name, environment="mode1", backend=BACKEND)
    assert terraform.calls() == []


@flow
def busy_flow(unit: str) -> None:
    """A run on a unit, put in Running by the test (never executed)."""


def test_delete_refuses_while_a_run_on_the_unit_is_active(terraform, aws):
    """Guards against destroying a unit's infrastructure under a running flow."""
    name = fresh_name()
    terraform.outputs(full_output(name, region="us-east-1"))
    create_compute_unit(name=name, environment="mode2", backend=BACKEND)
    with get_client(sync_client=True) as prefect:
        run = prefect.create_flow_run(busy_flow, parameters={"unit": name}, state=Running())
    before = terraform.commands()

    with pytest.raises(InputError, match=rf"unit '{name}' has 1 active flow run\(s\) \({run.id}\)"):
        delete_compute_unit(name=name)

    assert terraform.commands() == before
    assert len(what_exists(name)) == 7


def test_delete_sweeps_destroys_and_removes_the_blocks(terraform, aws):
    """Guards against delete leaving blocks, pools or the Terraform record behind, skipping
    destroy, or destroying with other settings than the unit was applied with."""
    name = fresh_name()
    terraform.outputs(full_output(name, region="us-east-1"))
    create_compute_unit(name=name, environment="mode2", variables={"x": 1}, backend=BACKEND)
    client("s3").create_bucket(Bucket=f"{name}-bucket")

    deleted = delete_compute_unit(name=name)

    destroy = terraform.calls()[-1]
    assert destroy["argv"][:2] == ["destroy", "-auto-approve"]
    assert destroy["cwd"] == str(terraform.environments_dir / "mode2")
    assert terraform.commands()[-2] == "init -input=false"
    assert len(deleted.removed) == 8
    assert what_exists(name) == []
    with pytest.raises(ValueError, match="Unable to find block document"):
        TerraformRecord.load(record_name(name))


def test_delete_of_a_unit_not_made_here_is_refused(terraform):
    """Guards against destroying infrastructure sciflow did not apply."""
    name = fresh_name()
    ComputeUnit(name=name).save(name)
    with pytest.raises(InputError, match=rf"unit '{name}' has no Terraform record"):
        delete_compute_unit(name=name)
    assert terraform.calls() == []


def test_get_and_list_report_health(aws):
    """Guards against a health report that says healthy without checking credentials and
    storage, or that hides an unreachable storage root."""
    good, bad = fresh_name(), fresh_name()
    for name in (good, bad):
        ComputeUnit(
            name=name, platform="aws", region="us-east-1", storage_root=f"s3://{name}/runs"
        ).save(name)
    client("s3").create_bucket(Bucket=good)

    healthy = get_compute_unit(name=good)
    assert healthy.healthy
    assert (healthy.credentials, healthy.storage) == ("ok", "ok")
    broken = get_compute_unit(name=bad)
    assert not broken.healthy
    assert broken.credentials == "ok"
    assert "NoSuchBucket" in broken.storage

    listed = {unit.name: unit for unit in list_compute_units()}
    assert listed[good].healthy
    assert not listed[bad].healthy
    assert "local" in listed
    assert Path(listed["local"].storage_root or "").name == "runs"
