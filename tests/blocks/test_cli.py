import json
import subprocess
import sys

from prefect.settings import PREFECT_API_URL

from blocks.__main__ import main
from blocks.compute_unit import ComputeUnit
from tests.blocks.test_registration import full_output


def test_save_unit_from_terraform_output(tmp_path, capsys):
    """Guards against save-unit saving the unit without its blocks and work pools."""
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(full_output("cli-unit")))
    assert main(["save-unit", str(path), "--name", "cli-unit", "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "saved ComputeUnit 'cli-unit' (user, eu-west-1) with blocks 'sciflow-cli-unit'" in out
    assert "cli-unit-small, cli-unit-large, cli-unit-batch" in out
    assert ComputeUnit.load("cli-unit").batch_job_queue.endswith("job-queue/cli-unit-mnp")


def test_save_unit_refuses_outputs_of_another_unit(tmp_path, capsys):
    """Guards against --name being ignored: outputs of another environment saved as it."""
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(full_output("cli-other")))
    assert main(["save-unit", str(path), "--name", "cli-meant"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "unit_name='cli-other'; expected 'cli-meant'" in err


def test_save_unit_reports_a_bad_file_in_one_line(tmp_path, capsys):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps({"region": {"value": "x"}}))
    assert main(["save-unit", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "terraform output lacks" in err


def test_prefect_registers_the_block_types_from_the_module(tmp_path):
    env = {"PREFECT_API_URL": PREFECT_API_URL.value(), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "blocks"],
        env=env | {"HOME": str(tmp_path), "DO_NOT_TRACK": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "sciflow Compute Unit" in done.stdout
