"""A real Prefect server and process worker on loopback, behind a proxy that records egress.

Every subprocess here gets ``HTTP_PROXY``/``HTTPS_PROXY``/``ALL_PROXY`` pointing at
``RecordingProxy`` and ``NO_PROXY=127.0.0.1,localhost``: anything that tries to reach a
non-loopback address over HTTP(S) goes to the proxy, which records it and answers 502.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx
import pytest

from tests.compute.moto_batch import make_job_queue, use_batch_without_docker
from tests.conftest import FAKE_AWS_ENV

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT_S = 90.0
WORKER_START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.2
LOOPBACK_HOSTS = "127.0.0.1,localhost"
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")
WORK_POOL = "sciflow-local"
# The aws-batch pool and the moto job queue its runs go to (tests/compute/moto_batch.py).
BATCH_POOL = "sciflow-batch-e2e"
BATCH_QUEUE = "sciflow-e2e"


class _ProxyHandler(socketserver.StreamRequestHandler):
    server: _ProxyServer

    def handle(self) -> None:
        try:
            line = self.rfile.readline(65536).decode("latin-1").strip()
            while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                pass  # drain headers
        except OSError:
            return
        if line:
            self.server.record(line)
        try:
            self.wfile.write(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        except OSError:
            pass


class _ProxyServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.lock = threading.Lock()
        self.requests: list[str] = []

    def record(self, line: str) -> None:
        with self.lock:
            self.requests.append(line)


class RecordingProxy:
    """An HTTP proxy on 127.0.0.1 that records each request line (or CONNECT) and answers 502."""

    def __init__(self) -> None:
        self._server = _ProxyServer()
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[str]:
        """Request lines seen so far, e.g. ``CONNECT example.org:443 HTTP/1.1``."""
        with self._server.lock:
            return list(self._server.requests)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@dataclass
class Service:
    """A subprocess started by a fixture, with its log file."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def check_alive(self) -> None:
        """Fail with the process's log if it has exited."""
        if (code := self.process.poll()) is not None:
            raise RuntimeError(f"{self.name} exited with {code}:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM the process group (it may have children), then SIGKILL after a timeout."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(timeout=STOP_TIMEOUT_S)
        # Children left in the group (e.g. uvicorn under `prefect server start`).
        _signal_group(self.process, signal.SIGKILL)
        self._log.close()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)  # our own session: the group id is the process id
    except ProcessLookupError:
        pass


def start_service(name: str, argv: list[str], env: Mapping[str, str], log_path: Path) -> Service:
    """Start ``argv`` in its own process group with output going to ``log_path``."""
    log = log_path.open("wb")
    process = subprocess.Popen(
        argv,
        cwd=REPO,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Service(name, process, log_path, log)


@dataclass
class PrefectServer:
    """A running ``prefect server start``; ``env`` is for CLI subprocesses that talk to it."""

    api_url: str
    env: dict[str, str]
    storage_root: Path
    scratch_root: Path
    proxy: RecordingProxy
    service: Service

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``prefect <args>`` from the repository root, as a user in a shell there would."""
        env = {**self.env, "PWD": str(REPO)}  # a shell sets PWD; `{{ $PWD }}` reads it
        result = subprocess.run(
            [str(VENV_BIN / "prefect"), *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert result.returncode == 0, (
            f"prefect {' '.join(args)} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
        return result


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_healthy(url: str, service: Service, timeout: float) -> None:
    """Poll ``url`` until it answers 200; fail if the process exits or the deadline passes."""
    deadline = time.monotonic() + timeout
    last: object = None
    with httpx.Client(trust_env=False, timeout=2) as client:
        while time.monotonic() < deadline:
            service.check_alive()
            try:
                response = client.get(url)
                if response.status_code == 200:
                    return
                last = response.status_code
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(POLL_S)
    raise TimeoutError(
        f"{service.name} not healthy at {url} after {timeout:.0f} s (last: {last!r})\n"
        f"{service.log()}"
    )


def subprocess_env(
    home: Path, api_url: str, storage: Path, scratch: Path, proxy: str
) -> dict[str, str]:
    """The environment of a user's shell set up for this server: offline, no telemetry.

    Workers started with it stop the infrastructure of runs cancelled while being submitted.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "SCIFLOW_"))}
    for var in PROXY_VARS:
        env[var] = env[var.lower()] = proxy
    env["NO_PROXY"] = env["no_proxy"] = LOOPBACK_HOSTS
    env.update(
        {
            "PATH": os.pathsep.join([str(VENV_BIN), env.get("PATH", "")]),
            "DO_NOT_TRACK": "1",
            "PREFECT_HOME": str(home),
            "PREFECT_API_URL": api_url,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
            # A 503 (SQLite busy under load) is logged with its cause, for a failing test.
            "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true",
            "SCIFLOW_STORAGE_ROOT": str(storage),
            "SCIFLOW_SCRATCH_ROOT": str(scratch),
            # As every worker sciflow starts or documents: without it a Prefect 3.8 worker
            # lets a run cancelled while it is being submitted start anyway.
            "PREFECT_WORKER_ENABLE_CANCELLATION": "true",
        }
    )
    return env


def _report_log(request: pytest.FixtureRequest, service: Service) -> None:
    """Print a service's log to the terminal, past output capture, if any test failed."""
    if not request.session.testsfailed:
        return
    text = service.log()
    plugins = request.config.pluginmanager
    capture, reporter = plugins.get_plugin("capturemanager"), plugins.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        print(text, file=sys.stderr)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        reporter.write_sep("-", f"{service.name} log ({service.log_path})")
        reporter.write_line(text)


@pytest.fixture(scope="session")
def recording_proxy() -> Iterator[RecordingProxy]:
    """The proxy every e2e subprocess is pointed at."""
    with RecordingProxy() as proxy:
        yield proxy


@pytest.fixture(scope="session")
def prefect_server(
    tmp_path_factory: pytest.TempPathFactory,
    recording_proxy: RecordingProxy,
    request: pytest.FixtureRequest,
) -> Iterator[PrefectServer]:
    """``prefect server start`` on 127.0.0.1 and a free port, with its own home and database."""
    base = tmp_path_factory.mktemp("prefect-e2e")
    home, storage, scratch = base / "home", base / "sciflow" / "runs", base / "sciflow" / "scratch"
    home.mkdir()
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = subprocess_env(home, api_url, storage, scratch, recording_proxy.url)
    service = start_service(
        "prefect server",
        [str(VENV_BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env,
        base / "server.log",
    )
    try:
        wait_until_healthy(f"{api_url}/health", service, SERVER_START_TIMEOUT_S)
        yield PrefectServer(api_url, env, storage, scratch, recording_proxy, service)
    finally:
        service.stop()
        _report_log(request, service)


@pytest.fixture(scope="session")
def process_worker(
    prefect_server: PrefectServer, request: pytest.FixtureRequest
) -> Iterator[Service]:
    """``prefect worker start --pool sciflow-local --type process``, ready once it heartbeats.

    The worker creates the pool, as ``make worker`` does. (``prefect work-pool create`` would
    make the server fetch Prefect's collections registry from GitHub; this path fetches nothing.)
    """
    env = {
        **prefect_server.env,
        # Poll for scheduled runs every second rather than every 10 s: tests wait less.
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    service = start_service(
        "process worker",
        [
            str(VENV_BIN / "prefect"),
            "worker",
            "start",
            "--pool",
            WORK_POOL,
            "--type",
            "process",
        ],
        env,
        prefect_server.service.log_path.with_name("worker.log"),
    )
    try:
        wait_for_worker(prefect_server.api_url, WORK_POOL, service, WORKER_START_TIMEOUT_S)
        yield service
    finally:
        service.stop()
        _report_log(request, service)


def wait_for_worker(api_url: str, pool: str, service: Service, timeout: float) -> None:
    """Poll the API until a worker for ``pool`` has sent a heartbeat."""
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=5) as client:
        while time.monotonic() < deadline:
            service.check_alive()
            response = client.post(f"{api_url}/work_pools/{pool}/workers/filter", json={})
            if response.status_code == 200 and response.json():
                return
            time.sleep(POLL_S)
    raise TimeoutError(f"no {pool} worker heartbeat after {timeout:.0f} s\n{service.log()}")


def flow_run_id_from(output: str) -> str:
    """The flow run id ``prefect deployment run`` prints."""
    match = re.search(r"UUID:\s*([0-9a-f-]{36})", output)
    assert match, f"no flow run UUID in:\n{output}"
    return match.group(1)


@pytest.fixture
def batch_worker(prefect_server: PrefectServer, aws: str) -> Iterator[Service]:
    """``prefect worker start --pool sciflow-batch-e2e --type aws-batch``, AWS being moto.

    The worker runs in this host's namespace and reaches moto on 127.0.0.1. moto's Batch is
    the Docker-less one (jobs finish at once) unless a test installs ``batch_standin``.
    """
    use_batch_without_docker(aws)
    make_job_queue(BATCH_QUEUE)
    env = {
        **prefect_server.env,
        **FAKE_AWS_ENV,
        "AWS_ENDPOINT_URL": aws,
        "PREFECT_WORKER_QUERY_SECONDS": "1",
    }
    service = start_service(
        "aws-batch worker",
        [str(VENV_BIN / "prefect"), "worker", "start", "--pool", BATCH_POOL, "--type", "aws-batch"],
        env,
        prefect_server.service.log_path.with_name("batch-worker.log"),
    )
    try:
        wait_for_worker(prefect_server.api_url, BATCH_POOL, service, WORKER_START_TIMEOUT_S)
        yield service
    finally:
        service.stop()
