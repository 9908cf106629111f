"""The Batch stand-in's fixture (a pytest plugin, loaded by tests/conftest.py).

``batch_standin``: moto's Batch runs its jobs, each node a process in a namespace, for one
test. It needs ``standin_network`` (tests/standin/fixtures.py), so it skips where that does.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.standin.batch import BatchStandIn
from tests.standin.fixtures import REGION, StandInNetwork


@pytest.fixture
def batch_standin(aws: str, standin_network: StandInNetwork) -> Iterator[BatchStandIn]:
    """moto's Batch runs each job it is asked to, for this test."""
    stand_in = BatchStandIn(
        standin_network.network, standin_network.image_env, standin_network.logs_dir, REGION
    )
    with stand_in.installed():
        yield stand_in
