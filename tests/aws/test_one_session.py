"""Every AWS call sciflow makes goes through the unit's session (tasks/aws/clients.py).

A static check that nothing else makes AWS clients or sessions, and checks at run time with
the process's ambient credentials gone while the unit's ``AwsCredentials`` block is right:
what the flow host reads before it starts anything (training's manifest, samples and
checkpoints; a simulation's NIfTI maps) and dask-cloudprovider's own clients reach the unit's
account, or nothing.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import boto3
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
BUCKET = "user-data"
CREDENTIALS_BLOCK = "unit-credentials"
# Another account in moto: credentials from assuming a role there act in it.
USER_ACCOUNT = "111111111111"
USER_ROLE = f"arn:aws:iam::{USER_ACCOUNT}:role/sciflow-runner"

# Modules that may make AWS clients or sessions, and why. Nothing else may.
ALLOWED: dict[str, str] = {
    "tasks/aws/clients.py": "the one AWS module: the unit's session, one retry policy",
}
# Importing these makes clients or file systems over AWS with credentials of their own.
CLIENT_MODULES = ("boto3", "aiobotocore", "s3fs", "fsspec", "botocore.session", "botocore.client")
# Calls that make a client or session, whatever the module was imported as.
CLIENT_CALLS = ("create_client", "get_session", "get_boto3_session", "Session", "resource")


def aws_client_makers(source: str, where: str) -> list[str]:
    """Where ``source`` imports an AWS client library or calls a client or session maker.

    Imports under ``if TYPE_CHECKING:`` are for annotations and do not count.
    """
    tree = ast.parse(source)
    hidden = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for node in ast.walk(block)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [f"{node.module or ''}.{alias.name}" for alias in node.names]
        for name in names:
            if any(name == m or name.startswith(m + ".") for m in CLIENT_MODULES):
                found.append(f"{where}:{node.lineno} imports {name}")
        if isinstance(node, ast.Call):
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            text = ast.unparse(func)
            if called in CLIENT_CALLS or text in ("boto3.client", "session.client"):
                found.append(f"{where}:{node.lineno} calls {text}")
    return found


def test_no_module_but_the_aws_one_makes_aws_clients_or_sessions():
    """Guards against a module reaching AWS with its own (ambient) credentials: in Mode 2
    those are another account's. boto3, botocore, aiobotocore, s3fs and fsspec clients and
    sessions are made only by the modules in ALLOWED."""
    found = []
    for path in sorted([*ROOT.glob("tasks/**/*.py"), *ROOT.glob("blocks/**/*.py")]):
        rel = str(path.relative_to(ROOT))
        if rel not in ALLOWED:
            found += aws_client_makers(path.read_text(), rel)
    for path in sorted(ROOT.glob("flows/*.py")):
        found += aws_client_makers(path.read_text(), str(path.relative_to(ROOT)))
    assert found == []
    for rel in ALLOWED:  # an entry for a module that no longer exists is a stale exemption
        assert (ROOT / rel).is_file(), rel


@pytest.mark.parametrize(
    "source",
    [
        "import boto3\n",
        "from aiobotocore.session import get_session\n",
        "import s3fs\n",
        "from botocore.session import Session\n",
        "def f(s):\n    return s.create_client('ecs')\n",
        "def f(creds):\n    return creds.get_boto3_session().client('s3')\n",
    ],
)
def test_the_static_check_finds_each_kind_of_client_maker(source):
    """The check above can fail: each way of making a client is found."""
    assert aws_client_makers(source, "planted.py")


def test_annotations_and_botocore_errors_are_not_client_makers():
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import boto3\n"
        "from botocore.exceptions import ClientError\nfrom botocore.config import Config\n"
    )
    assert aws_client_makers(source, "ok.py") == []


@pytest.fixture
def unit_credentials_only(aws, tmp_path, monkeypatch):
    """The unit's credentials in an ``AwsCredentials`` block, and none in the environment.

    moto accepts any key, so a wrong ambient key would still work against it; no ambient
    credentials at all is what makes a call that ignores the unit's session fail.
    """
    from prefect_aws import AwsCredentials

    boto3.client("s3", region_name=REGION).create_bucket(Bucket=BUCKET)
    AwsCredentials(
        aws_access_key_id="unit-key",
        aws_secret_access_key="unit-secret",  # noqa: S106  # moto takes any
        region_name=REGION,
    ).save(CREDENTIALS_BLOCK, overwrite=True)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # it cached the credentials above
    with pytest.raises(Exception, match="credentials"):  # ambient: nothing
        boto3.client("s3", region_name=REGION).list_buckets()
    return aws


def _unit(**fields):
    from blocks.compute_unit import ComputeUnit

    return ComputeUnit(
        name="lab",
        platform="aws",
        region=REGION,
        aws_credentials_block=CREDENTIALS_BLOCK,
        storage_root=f"s3://{BUCKET}/runs",
        **fields,
    )


def _run(unit, tmp_path):
    from tasks.compute.run_context import RunContext

    return RunContext(unit=unit, run_id="r-session", flow="f", store=unit.object_store())


def test_training_prechecks_read_manifest_samples_and_checkpoints_with_the_units_session(
    unit_credentials_only, tmp_path
):
    """Guards against the training pre-checks reading the data set and checkpoints with the
    flow host's ambient credentials (in Mode 2 the wrong account): they use the unit's."""
    from flows.distributed_training import check_inputs
    from tasks.training.config import TrainConfig, TrainingSettings
    from tasks.training.data import write_synthetic_set

    run = _run(_unit(), tmp_path)
    dataset = f"s3://{BUCKET}/sets/small"
    write_synthetic_set(dataset, train=8, validation=2, size=16, seed=1, store=run.store)
    settings = TrainingSettings(model="linear", strategy="ddp", procs_per_node=2, batch_size=4)
    cfg = TrainConfig.from_settings(settings, dataset=dataset, output=run.uri("training"))

    sizes = check_inputs.fn(run, cfg)

    assert (sizes["train"], sizes["validation"]) == (8, 2)


def test_simulation_prechecks_fetch_nifti_maps_with_the_units_session(
    unit_credentials_only, tmp_path
):
    """Guards against the simulation's pre-launch plan fetching S3 inputs with ambient
    credentials: the flow host passes the unit's store."""
    import nibabel as nib

    from tasks.simulation.mpi_simulate import PhantomSpec, build_phantom

    run = _run(_unit(), tmp_path)
    uris = {}
    for name, value in (("pd", 1.0), ("t1", 0.8), ("t2", 0.08)):
        local = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(np.full((4, 4, 1), value, np.float32), np.eye(4)), local)
        uris[name] = run.store.upload_file(local, f"s3://{BUCKET}/maps/{name}.nii.gz")

    phantom = build_phantom(PhantomSpec(kind="nifti", **uris), tmp_path / "in", run.store)

    assert phantom.shape == (4, 4, 1)


def test_dask_cloudprovider_clients_get_the_units_credentials_region_and_endpoint(
    unit_credentials_only, tmp_path
):
    """Guards against dask-cloudprovider's aiobotocore clients using the ambient default
    session: every client the cluster makes acts in the unit's account (here the role's, in
    another moto account), its region and sciflow's endpoint."""
    from aiobotocore.session import get_session

    from tasks.aws.clients import AioClients, client
    from tasks.compute.dask import FARGATE_CLUSTER, _tolerant_cluster_class

    account = _unit(role_arn=USER_ROLE, external_id="lab-external-id").aws_account()
    ecs = client("ecs", account)
    made = ecs.create_cluster(clusterName="in-the-users-account")["cluster"]["clusterArn"]
    assert f":{USER_ACCOUNT}:" in made

    clients = AioClients(account, REGION)
    settings = clients.settings("ecs")
    assert settings["region_name"] == REGION
    assert settings["endpoint_url"] == unit_credentials_only
    # The cluster class's own client factory, as its scheduler and worker tasks call it.
    cluster_type = _tolerant_cluster_class(FARGATE_CLUSTER)
    cluster = cluster_type.__new__(cluster_type)
    cluster._aws_clients = clients
    cluster.session = get_session()

    async def list_clusters() -> list[str]:
        async with cluster._client("ecs") as aio_ecs:
            return (await aio_ecs.list_clusters())["clusterArns"]

    assert asyncio.run(list_clusters()) == [made]


def test_aiobotocore_clients_assume_the_role_again_before_its_credentials_expire(
    unit_credentials_only,
):
    """Guards against a long-lived cluster's clients carrying the role's one-hour credentials
    past their expiry; the new ones are made inside the library's event loop, where the
    unit's credentials block could not be loaded, and stay in the unit's account."""
    from tasks.aws.clients import ROLE_REFRESH_S, AioClients

    account = _unit(role_arn=USER_ROLE, external_id="lab-external-id").aws_account()
    clients = AioClients(account, REGION)
    first = clients.settings("sts")["aws_access_key_id"]
    assert clients.settings("sts")["aws_access_key_id"] == first  # one AssumeRole, reused
    clients._made -= ROLE_REFRESH_S + 1  # as if half an hour had passed

    async def identity() -> tuple[str, str]:
        async with clients("sts") as sts:
            answer = await sts.get_caller_identity()
        return clients.settings("sts")["aws_access_key_id"], answer["Account"]

    key, in_account = asyncio.run(identity())
    assert key != first
    assert in_account == USER_ACCOUNT
