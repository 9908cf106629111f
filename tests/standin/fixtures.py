"""The stand-in's fixtures (a pytest plugin, loaded by tests/conftest.py).

``standin_network``: the session's block, bridge and relays (skips, printing why, where
namespaces cannot be made). ``ecs_standin``: moto's ECS runs its tasks for one test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.standin import guard
from tests.standin.containers import Relay, image_environment
from tests.standin.ecs import EcsStandIn
from tests.standin.network import NamespacesUnavailable, Network, cannot_make_namespaces

REGION = "us-east-1"
STANDIN_FIXTURES = {"standin_network", "ecs_standin", "batch_standin"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the stand-in ``standin``: real processes, the slow ones."""
    for item in items:
        if STANDIN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.standin)


@dataclass
class StandInNetwork:
    """The session's stand-in network, what containers start with, and relays inward."""

    network: Network
    moto: Relay
    image_env: dict[str, str]
    logs_dir: Path
    relays: list[Relay] = field(default_factory=list)

    @property
    def block(self) -> str:
        """The CIDR tests make their VPC in (subnets inside it)."""
        return str(self.network.block)

    @property
    def host_address(self) -> str:
        return self.network.host_address

    def relay(self, port: int) -> Relay:
        """A relay from the bridge to ``127.0.0.1:port`` (a server containers must reach)."""
        relay = Relay(self.network.host_address, port)
        self.relays.append(relay)
        return relay

    def subnet(self, index: int) -> str:
        """The ``index``-th /24 of the block, for a moto subnet."""
        assert self.network.block is not None
        return str(list(self.network.block.subnets(new_prefix=24))[index])

    def make_vpc(self, cluster: str | None = "sciflow", region: str = REGION) -> dict[str, Any]:
        """In moto: a VPC on the block (DNS hostnames on), two subnets, a group, a cluster.

        Returns:
            ``vpc``, ``subnets``, ``group`` and, unless ``cluster`` is None, ``cluster`` (ARN):
            the keys ``tests/training/moto_ecs.make_network`` returns.
        """
        ec2 = boto3.client("ec2", region_name=region)
        vpc = ec2.create_vpc(CidrBlock=self.block)["Vpc"]["VpcId"]
        # Cloud Map private DNS needs DNS hostnames on, and so do moto's task ENIs.
        ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})
        subnets = [
            ec2.create_subnet(VpcId=vpc, CidrBlock=self.subnet(i))["Subnet"]["SubnetId"]
            for i in (1, 2)
        ]
        group = ec2.create_security_group(GroupName="standin", Description="stand-in", VpcId=vpc)
        made: dict[str, Any] = {"vpc": vpc, "subnets": subnets, "group": group["GroupId"]}
        if cluster is not None:
            ecs = boto3.client("ecs", region_name=region)
            made["cluster"] = ecs.create_cluster(clusterName=cluster)["cluster"]["clusterArn"]
        return made


@pytest.fixture(scope="session")
def standin_network(
    moto_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StandInNetwork]:
    reason = cannot_make_namespaces()
    if reason:
        print(f"SKIP stand-in: {reason}")
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("standin")
    try:
        network = Network().__enter__()
    except NamespacesUnavailable as exc:
        print(f"SKIP stand-in: {exc}")
        pytest.skip(str(exc))
    guard.admit(network.block)
    # The proxies CI sets (.ci/run) must let this process reach the bridge and nothing more.
    # httpx and botocore match NO_PROXY by host, not by CIDR: the host address is what
    # this process dials over HTTP (relays); tasks are reached by raw TCP.
    saved_bypass = {var: os.environ.get(var) for var in ("NO_PROXY", "no_proxy")}
    for var, value in saved_bypass.items():
        os.environ[var] = ",".join(filter(None, [value, network.host_address]))
    moto_port = int(moto_server.rsplit(":", 1)[1])
    moto = Relay(network.host_address, moto_port)
    (base / "home").mkdir()
    (base / "logs").mkdir()
    env = image_environment(network, base / "home", moto.url(), REGION)
    stand_in = StandInNetwork(network, moto, env, base / "logs")
    try:
        yield stand_in
    finally:
        for relay in [moto, *stand_in.relays]:
            relay.close()
        guard.revoke(network.block)
        for var, value in saved_bypass.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value
        network.close()


@pytest.fixture
def ecs_standin(aws: str, standin_network: StandInNetwork) -> Iterator[EcsStandIn]:
    """moto's ECS runs each task it is asked to, for this test."""
    stand_in = EcsStandIn(
        standin_network.network, standin_network.image_env, standin_network.logs_dir, REGION
    )
    with stand_in.installed():
        yield stand_in
