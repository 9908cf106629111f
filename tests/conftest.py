"""Fixtures every test module shares: the Prefect harness, moto on loopback, no egress."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tasks.settings import get_settings
from tests.standin import guard

# Fake credentials: tests never hold real ones, and a stray call fails at moto, not AWS.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


pytest_plugins = ["tests.standin.fixtures", "tests.standin.batch_fixtures"]


def _is_loopback(address: object) -> bool:
    """Loopback, or the stand-in's own block while its network is up (tests/standin)."""
    if not isinstance(address, tuple):  # AF_UNIX paths and the like stay on this machine
        return True
    host = str(address[0])
    return host == "localhost" or guard.admitted(host)


@pytest.fixture(scope="session", autouse=True)
def loopback_only() -> Iterator[None]:
    """Fail any connection from the test process to an address other than loopback."""
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def guard(address: object) -> None:
        if not _is_loopback(address):
            raise ConnectionRefusedError(
                f"tests may only reach 127.0.0.1 and the stand-in's block, not {address!r}"
            )

    def connect(self: socket.socket, address: object) -> None:
        guard(address)
        return original_connect(self, address)

    def connect_ex(self: socket.socket, address: object) -> int:
        guard(address)
        return original_connect_ex(self, address)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex  # type: ignore[method-assign]
    yield
    socket.socket.connect, socket.socket.connect_ex = original_connect, original_connect_ex  # type: ignore[method-assign]


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> Iterator[None]:
    """One temporary Prefect API and database for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def sciflow_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test writes runs and scratch under its own temporary directory."""
    root = tmp_path / "sciflow"
    monkeypatch.setenv("SCIFLOW_STORAGE_ROOT", str(root / "runs"))
    monkeypatch.setenv("SCIFLOW_SCRATCH_ROOT", str(root / "scratch"))
    monkeypatch.setenv("SCIFLOW_MODEL_CACHE", str(root / "models"))
    get_settings.cache_clear()
    yield root
    get_settings.cache_clear()


REPO = Path(__file__).resolve().parents[1]
# Real Siemens data: twixtools' sdist ships it; `make install` extracts it here.
TWIX_EXAMPLE = REPO / ".cache" / "twixtools" / "twixtools-0.24" / "example_data" / "gre.dat"


@pytest.fixture(scope="session")
def twix_example() -> Path:
    """twixtools' example VE11 GRE (2 coils, 2x oversampled, no noise scan)."""
    if not TWIX_EXAMPLE.is_file():
        pytest.skip(f"{TWIX_EXAMPLE.relative_to(REPO)} is missing: `make install` extracts it")
    return TWIX_EXAMPLE


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: statistical tests are repeatable."""
    return np.random.default_rng(20261124)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """moto's server on 127.0.0.1, on a free port; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Real boto3 over HTTP to moto: endpoint, fake credentials, region; state reset after."""
    for key in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(key)
    for key, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    yield moto_server
    with httpx.Client(trust_env=False, timeout=30) as client:
        client.post(f"{moto_server}/moto-api/reset").raise_for_status()


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """botocore retries at once (no backoff, no adaptive rate limit); returns the delays."""
    from botocore.retries import bucket, standard  # the one retry layer (tasks.aws.clients)

    monkeypatch.setattr(bucket.TokenBucket, "acquire", lambda self, amount=1, block=True: True)

    delays: list[float] = []
    original = standard.ExponentialBackoff.delay_amount

    def record(self: Any, context: Any) -> float:
        delays.append(original(self, context))
        return 0.0

    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", record)
    return delays
