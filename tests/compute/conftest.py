"""Batch in moto for the compute tests."""

from __future__ import annotations

import pytest

from tests.compute.moto_batch import QUEUE, make_job_queue, use_batch_without_docker


@pytest.fixture
def batch_queue(aws: str) -> str:
    """A job queue in moto's Docker-less Batch (state is reset after each test by ``aws``)."""
    use_batch_without_docker(aws)
    make_job_queue(QUEUE)
    return QUEUE
