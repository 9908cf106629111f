import pytest
from prefect.testing.standard_test_suites.blocks import BlockStandardTestSuite

from blocks.compute_unit import (
    SIZE_CLASSES,
    ComputeUnit,
    DaskWorkers,
    load_unit,
    local_unit,
)
from tasks.aws.clients import client
from tasks.errors import InputError


def terraform_output(**overrides):
    values = {
        "unit_name": "lab-aws",
        "mode": "user",
        "region": "eu-west-1",
        "role_arn": "arn:aws:iam::123456789012:role/sciflow-runner",
        "storage_root": "s3://lab-sciflow/runs",
        "work_pools": {"small": "ecs-small", "large": "ecs-large", "multinode": "batch-mnp"},
        "batch_job_queue": "sciflow-mnp",
        "dask_image": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/sciflow:1",
        "subnets": ["subnet-a", "subnet-b"],
        "security_groups": ["sg-dask"],
        "public_subnets": False,
        "spending_cap_usd": 50.0,
        "tags": {"project": "mr"},
    } | overrides
    return {key: {"value": value, "type": "string"} for key, value in values.items()}


class TestComputeUnitBlockStandards(BlockStandardTestSuite):
    @pytest.fixture
    def block(self):
        return ComputeUnit

    @pytest.mark.skip(reason="fetches the logo over the network; ComputeUnit has no logo")
    def test_has_a_valid_image(self, block):
        pass

    @pytest.mark.skip(reason="sciflow has no hosted documentation site; the docstring is it")
    def test_has_a_documentation_url(self, block):
        pass


def test_local_unit_needs_no_registration():
    unit = load_unit("local")
    assert unit.is_local
    assert unit.name == "local"
    assert set(unit.work_pools) == set(SIZE_CLASSES)


def test_local_unit_caps_dask_workers_at_this_machines_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert max(w.n_workers for w in local_unit().dask_workers.values()) == 2


def test_default_unit_comes_from_settings(monkeypatch):
    from tasks.settings import get_settings

    monkeypatch.setenv("SCIFLOW_DEFAULT_UNIT", "local")
    get_settings.cache_clear()
    assert load_unit().name == "local"


def test_unknown_unit_names_itself_and_what_is_expected():
    with pytest.raises(InputError, match=r"compute unit 'nowhere' not found.*'local'"):
        load_unit("nowhere")


def test_saved_unit_loads_by_name():
    ComputeUnit(name="laptop-big", storage_root="/tmp/elsewhere").save("laptop-big", overwrite=True)
    unit = load_unit("laptop-big")
    assert unit.storage_root == "/tmp/elsewhere"


def test_aws_unit_requires_a_region():
    with pytest.raises(ValueError, match="region is required"):
        ComputeUnit(name="x", platform="aws", storage_root="s3://b/p")


def test_aws_unit_requires_s3_storage():
    with pytest.raises(ValueError, match=r"storage_root='/data'.*s3://"):
        ComputeUnit(name="x", platform="aws", region="us-east-1", storage_root="/data")


def test_user_mode_requires_a_role_to_assume():
    with pytest.raises(ValueError, match="role_arn is required when mode is 'user'"):
        ComputeUnit(name="x", mode="user")


def test_dask_workers_must_cover_every_size_class():
    with pytest.raises(ValueError, match=r"lacks size classes \['gpu'"):
        ComputeUnit(
            name="x",
            dask_workers={
                "small": DaskWorkers(),
                "large": DaskWorkers(),
                "multinode": DaskWorkers(),
            },
        )


def test_unit_names_are_safe_for_paths_and_tags():
    with pytest.raises(ValueError, match="should match pattern"):
        ComputeUnit(name="../etc")


def test_from_terraform_output_reads_every_field():
    unit = ComputeUnit.from_terraform_output(terraform_output())
    assert unit.platform == "aws"
    assert unit.mode == "user"
    assert unit.region == "eu-west-1"
    assert unit.role_arn.endswith("role/sciflow-runner")
    assert unit.work_pool("multinode") == "batch-mnp"
    assert unit.fargate is not None
    assert unit.fargate.subnets == ["subnet-a", "subnet-b"]
    assert unit.fargate.public_subnets is False
    assert unit.spending_cap_usd == 50.0
    assert unit.tags == {"project": "mr"}


def test_from_terraform_output_names_missing_outputs():
    outputs = terraform_output()
    del outputs["region"], outputs["work_pools"]
    with pytest.raises(InputError, match=r"lacks \['region', 'work_pools'\]"):
        ComputeUnit.from_terraform_output(outputs)


def test_from_terraform_output_rejects_plain_values():
    outputs = {k: v["value"] for k, v in terraform_output().items()}
    with pytest.raises(InputError, match="not `terraform output -json`"):
        ComputeUnit.from_terraform_output(outputs)


def test_from_terraform_output_reports_an_invalid_value_in_one_line():
    with pytest.raises(InputError) as caught:
        ComputeUnit.from_terraform_output(terraform_output(mode="shared"))
    assert "\n" not in str(caught.value)
    assert "mode='shared'" in str(caught.value)


def test_missing_work_pool_for_a_size_names_what_exists():
    unit = ComputeUnit.from_terraform_output(terraform_output())
    with pytest.raises(InputError, match=r"no work pool for size 'gpu'"):
        unit.work_pool("gpu")


def test_user_mode_session_assumes_the_role(aws):
    unit = ComputeUnit.from_terraform_output(terraform_output())
    identity = client("sts", unit.aws_account()).get_caller_identity()
    assert ":assumed-role/sciflow-runner/sciflow-lab-aws" in identity["Arn"]
