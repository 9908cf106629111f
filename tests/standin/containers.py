"""What the stand-in runs: the project as its image, a process as a container, relays inward.

The "image" is this repository and its venv: a container's command runs with the venv's
``bin`` and the image's own commands (``images/bin``: ``dask-scheduler``/``dask-worker``) first
on ``PATH``, and the repository on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from tests.standin.network import Host, Network

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
# What a container's own loopback proxy settings point at: nothing listens there.
DEAD_PROXY = "http://127.0.0.1:9"
# docker stop's default: SIGTERM, then SIGKILL this long after.
STOP_GRACE_S = 10.0

# The commands the images add (images/flows/Dockerfile copies them to /usr/local/bin).
IMAGE_BIN = REPO / "images" / "bin"


def image_environment(
    network: Network, home: Path, aws_endpoint: str, region: str
) -> dict[str, str]:
    """The environment every container starts with, before its task's own variables.

    AWS credentials are what a task role would give: moto's fake ones, and moto's endpoint
    on the bridge. Proxies are dead and only the stand-in's block bypasses them, so a
    container reaches nothing but the stand-in's hosts.
    """
    bypass = ",".join(["localhost", "127.0.0.1", network.host_address, str(network.block)])
    env = {
        "PATH": os.pathsep.join(
            [str(IMAGE_BIN), str(VENV_BIN), "/usr/local/bin", "/usr/bin", "/bin"]
        ),
        "PYTHONPATH": str(REPO),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "DO_NOT_TRACK": "1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": aws_endpoint,
        "NO_PROXY": bypass,
        "no_proxy": bypass,
    }
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env[var] = env[var.lower()] = DEAD_PROXY
    return env


class Container:
    """A command running in a host's namespace, in its own session (so its whole tree stops).

    Each line it writes goes to ``on_line``; ``on_exit`` gets the exit status once it ends.
    """

    def __init__(
        self,
        host: Host,
        argv: list[str],
        env: Mapping[str, str],
        log_path: Path,
        on_line: Callable[[str], None],
        on_exit: Callable[[int], None],
        cwd: Path = REPO,
    ) -> None:
        self.host = host
        self.argv = argv
        self.log_path = log_path
        self._on_line = on_line
        self._on_exit = on_exit
        self.stopping = False
        self.process = subprocess.Popen(
            host.command(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._pump, name=f"log {host.hostname}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        with self.log_path.open("ab") as log:
            for raw in self.process.stdout:
                log.write(raw)
                log.flush()
                try:
                    self._on_line(raw.decode(errors="replace").rstrip("\n"))
                except Exception as exc:  # a log sink's failure must not stop the container
                    log.write(f"[stand-in] log sink failed: {exc!r}\n".encode())
        code = self.process.wait()
        self._on_exit(code)

    def stop(self, grace: float = STOP_GRACE_S) -> None:
        """SIGTERM the container's processes, SIGKILL them ``grace`` seconds later."""
        self.stopping = True
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self._signal(signal.SIGKILL)  # what a container leaves goes with it
        self.process.wait()

    def wait(self, timeout: float | None = None) -> int:
        """The exit status, once the output has been read to its end."""
        self._reader.join(timeout)
        if self._reader.is_alive():
            raise TimeoutError(f"{self.argv[0]} in {self.host.hostname} still runs")
        return self.process.returncode

    def _signal(self, sig: signal.Signals) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass


class _RelayHandler(socketserver.BaseRequestHandler):
    server: _RelayServer

    def handle(self) -> None:
        try:
            upstream = socket.create_connection(self.server.target, timeout=30)
        except OSError:
            return
        upstream.settimeout(None)
        self.request.settimeout(None)

        def pipe(source: socket.socket, sink: socket.socket) -> None:
            try:
                while data := source.recv(65536):
                    sink.sendall(data)
            except OSError:
                pass
            finally:
                for sock in (source, sink):
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pipe, args=(upstream, self.request), daemon=True)
        back.start()
        pipe(self.request, upstream)
        back.join()
        upstream.close()


class _RelayServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        super().__init__(listen, _RelayHandler)


class Relay:
    """Listens on ``address`` (the bridge's host address) and passes bytes to a loopback port.

    moto and the Prefect server listen on 127.0.0.1 only; containers reach them here.
    """

    def __init__(self, address: str, target_port: int, port: int = 0) -> None:
        self._server = _RelayServer((address, port), ("127.0.0.1", target_port))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def url(self, path: str = "") -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def wait_for(predicate: Callable[[], object], timeout: float, what: str) -> object:
    """Poll ``predicate`` until it returns something true; fail naming ``what`` at ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")
