from urllib.parse import parse_qs

import pytest
from prefect.testing.standard_test_suites.blocks import BlockStandardTestSuite

from blocks.compute_unit import (
    DEFAULT_LIMITS,
    SIZE_CLASSES,
    ComputeUnit,
    DaskWorkers,
    SizeLimits,
    load_unit,
    local_unit,
)
from tasks.aws.clients import client
from tasks.errors import InputError

EXTERNAL_ID = "sciflow-lab-aws-7f3c91"


def terraform_output(**overrides):
    values = {
        "unit_name": "lab-aws",
        "mode": "user",
        "region": "eu-west-1",
        "role_arn": "arn:aws:iam::123456789012:role/sciflow-runner",
        "external_id": EXTERNAL_ID,
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


def test_from_terraform_output_wires_the_prefect_api_secrets_into_the_unit():
    """Guards against a unit whose Dask tasks and pools cannot reach Prefect: the secrets the
    prefect-worker module outputs become the unit's ECS ``secrets`` entries."""
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:lab-aws/prefect-api"
    unit = ComputeUnit.from_terraform_output(
        terraform_output(
            prefect_api_url_secret_arn=f"{arn}-url-AbC123",
            prefect_api_key_secret_arn=f"{arn}-key-DeF456",
        )
    )
    assert unit.fargate.prefect_api_secrets() == [
        {"name": "PREFECT_API_URL", "valueFrom": f"{arn}-url-AbC123"},
        {"name": "PREFECT_API_KEY", "valueFrom": f"{arn}-key-DeF456"},
    ]
    # A self-hosted server without auth: Terraform outputs a null key secret.
    unit = ComputeUnit.from_terraform_output(
        terraform_output(prefect_api_url_secret_arn=f"{arn}-url", prefect_api_key_secret_arn=None)
    )
    assert unit.fargate.prefect_api_secrets() == [
        {"name": "PREFECT_API_URL", "valueFrom": f"{arn}-url"}
    ]


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


def _sent_assume_roles(monkeypatch) -> list[dict[str, list[str]]]:
    """The AssumeRole requests every boto3 session's STS clients send, as parsed bodies."""
    import boto3.session

    sent: list[dict[str, list[str]]] = []
    make = boto3.session.Session.client

    def record(request, **_):
        sent.append(
            parse_qs(request.body.decode() if isinstance(request.body, bytes) else request.body)
        )

    def client_with_hook(self, service, *args, **kwargs):
        made = make(self, service, *args, **kwargs)
        made.meta.events.register("before-send.sts.AssumeRole", record)
        return made

    monkeypatch.setattr(boto3.session.Session, "client", client_with_hook)
    return sent


def test_user_mode_session_assumes_the_role_with_the_external_id(aws, monkeypatch):
    sent = _sent_assume_roles(monkeypatch)
    unit = ComputeUnit.from_terraform_output(terraform_output())

    identity = client("sts", unit.aws_account()).get_caller_identity()

    assert ":assumed-role/sciflow-runner/sciflow-lab-aws" in identity["Arn"]
    assert len(sent) == 1
    assert sent[0]["RoleArn"] == ["arn:aws:iam::123456789012:role/sciflow-runner"]
    assert sent[0]["ExternalId"] == [EXTERNAL_ID]


def test_every_client_and_the_units_storage_assume_the_role_with_it(aws, monkeypatch):
    sent = _sent_assume_roles(monkeypatch)
    unit = ComputeUnit.from_terraform_output(terraform_output())
    client("batch", unit.aws_account())
    unit.object_store().s3  # noqa: B018  # makes the store's client, assuming the role
    assert len(sent) == 2
    assert all(body["ExternalId"] == [EXTERNAL_ID] for body in sent)


def test_user_mode_without_an_external_id_is_refused_in_one_line():
    outputs = terraform_output()
    del outputs["external_id"]
    with pytest.raises(InputError) as caught:
        ComputeUnit.from_terraform_output(outputs)
    message = str(caught.value)
    assert "external_id is required when mode is 'user' (Mode 2)" in message
    assert "sts:ExternalId" in message
    assert "\n" not in message
    with pytest.raises(ValueError, match="external_id is required"):
        ComputeUnit(name="x", mode="user", role_arn="arn:aws:iam::1:role/r", external_id="")


def test_the_external_id_stays_out_of_reprs_records_and_errors():
    unit = ComputeUnit.from_terraform_output(terraform_output())
    assert EXTERNAL_ID not in repr(unit)
    assert EXTERNAL_ID not in repr(unit.aws_account())
    assert EXTERNAL_ID not in str(unit.aws_account().to_dict())
    assert unit.aws_account().external_id == EXTERNAL_ID
    # A cross-field refusal's input is every field: the message must not echo it.
    with pytest.raises(InputError) as caught:
        ComputeUnit.from_terraform_output(terraform_output(unit_name="audit"))
    assert "name 'audit' is taken" in str(caught.value)
    assert EXTERNAL_ID not in str(caught.value)


def test_a_managed_unit_may_assume_a_role_without_an_external_id(aws, monkeypatch):
    sent = _sent_assume_roles(monkeypatch)
    outputs = terraform_output(mode="managed")
    del outputs["external_id"]
    unit = ComputeUnit.from_terraform_output(outputs)
    client("sts", unit.aws_account()).get_caller_identity()
    assert "ExternalId" not in sent[0]


# --- limits per size class ---------------------------------------------------------------------


def test_every_size_class_has_default_limits_that_hold_todays_jobs():
    unit = ComputeUnit(name="x")
    for size in SIZE_CLASSES:
        limits = unit.size_limits(size)
        assert limits == DEFAULT_LIMITS[size]
        workers = unit.dask_workers[size]
        assert workers.worker_cpu / 1024 <= limits.vcpus
        assert workers.worker_mem <= limits.memory_mib
        assert limits.wall_time_s >= 3600
    # Batch's default node and the parameter server's Fargate tasks fit the large class.
    large = unit.size_limits("large")
    assert (large.vcpus, large.memory_mib) >= (1, 4096)
    assert unit.size_limits("small").wall_time_s < large.wall_time_s


def test_limits_set_for_one_class_keep_the_others_defaults():
    small = SizeLimits(vcpus=2, memory_mib=8192, wall_time_s=600, concurrent_runs=3)
    unit = ComputeUnit(name="x", limits={"small": small.model_dump()})
    assert unit.size_limits("small") == small
    assert unit.size_limits("gpu") == DEFAULT_LIMITS["gpu"]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("vcpus", 0, "greater than or equal to 0.25"),
        ("vcpus", 500, "less than or equal to 192"),
        ("memory_mib", 100, "greater than or equal to 512"),
        ("wall_time_s", 59, "greater than or equal to 60"),
        ("wall_time_s", -1, "greater than or equal to 60"),
        ("wall_time_s", 8 * 24 * 3600, "less than or equal to 604800"),
        ("concurrent_runs", 0, "greater than or equal to 1"),
        ("unknown", 1, "Extra inputs are not permitted"),
    ],
)
def test_bad_limits_are_refused_naming_the_field(field, value, message):
    fields = DEFAULT_LIMITS["large"].model_dump() | {field: value}
    with pytest.raises(ValueError, match=message) as caught:
        ComputeUnit(name="x", limits={"large": fields})
    assert field in str(caught.value)


def test_unknown_size_class_in_limits_is_refused():
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        ComputeUnit(name="x", limits={"huge": DEFAULT_LIMITS["large"].model_dump()})
    with pytest.raises(InputError, match=r"size class 'huge'; expected one of"):
        ComputeUnit(name="x").size_limits("huge")


def test_dask_workers_larger_than_their_class_limits_are_refused():
    limits = {"small": {**DEFAULT_LIMITS["small"].model_dump(), "memory_mib": 2048}}
    with pytest.raises(ValueError, match=r"dask_workers\['small'\] asks 1 vCPU and 4096 MiB"):
        ComputeUnit(name="x", limits=limits)


def test_a_unit_saved_before_limits_existed_loads_with_the_defaults():
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import BlockDocumentUpdate

    ComputeUnit(name="older", storage_root="/tmp/older").save("older-unit", overwrite=True)
    with get_client(sync_client=True) as prefect:
        saved = prefect.read_block_document_by_name("older-unit", "sciflow-compute-unit")
        data = {k: v for k, v in saved.data.items() if k != "limits"}
        prefect.update_block_document(
            saved.id, BlockDocumentUpdate(data=data, merge_existing_data=False)
        )
        assert "limits" not in prefect.read_block_document(saved.id).data
    unit = load_unit("older-unit")
    assert unit.storage_root == "/tmp/older"
    assert unit.size_limits("multinode") == DEFAULT_LIMITS["multinode"]


def test_limits_render_as_a_form_with_described_fields():
    schema = ComputeUnit.model_json_schema()
    assert schema["properties"]["limits"]["description"]
    definitions = schema["definitions"]
    assert set(definitions["UnitLimits"]["properties"]) == set(SIZE_CLASSES)
    fields = definitions["SizeLimits"]["properties"]
    assert set(fields) == {
        "vcpus",
        "memory_mib",
        "wall_time_s",
        "concurrent_runs",
        "price_usd_per_hour",
    }
    assert all(f["description"].endswith(".") for f in fields.values())
    assert "MiB" in fields["memory_mib"]["description"]
    assert "concurrency limit of the class's work queue" in fields["concurrent_runs"]["description"]
