"""Build the runtime images, tag them with the git commit and push them to a unit's ECR.

    python images/build.py flows mpi gpu                      # build here (docker --load)
    python images/build.py flows mpi --push --unit my-unit    # build and push to the unit's ECR

Each image is built with ``docker buildx build --platform linux/amd64 --provenance=false``
(Lambda and some registries reject the provenance attestation manifest) from the repository
root, tagged ``<repository>:<commit>``. Pushing logs in to the registry with a token from ECR's
``GetAuthorizationToken`` through the unit's AWS session (the password goes to
``docker login --password-stdin``, never on a command line) and prints ``repository@digest``
for each image: the reference the work pool templates and job definitions use, since a tag can
move and a digest cannot. ``mpi`` is built on the ``flows`` image of the same commit.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

from tasks.errors import InputError

REPO = Path(__file__).resolve().parents[1]
IMAGES = ("flows", "mpi", "gpu")
# The images each image is built on; they are built first.
BUILT_ON = {"mpi": "flows"}
PLATFORM = "linux/amd64"


def commit(repo: Path = REPO) -> str:
    """The checked-out commit, refused when the tree has changes a tag would not name."""
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    if status:
        raise InputError(
            "working tree has uncommitted changes; commit them first: an image is tagged "
            "with the commit it was built from"
        )
    return _git(repo, "rev-parse", "--short=12", "HEAD")


def build_command(
    image: str,
    ref: str,
    metadata: Path,
    push: bool,
    build_args: Mapping[str, str] | None = None,
    network: str | None = None,
) -> list[str]:
    """The ``docker buildx build`` argv for ``image`` tagged ``ref``."""
    argv = [
        "docker", "buildx", "build",
        "--platform", PLATFORM,
        "--provenance=false",
        "--file", str(REPO / "images" / image / "Dockerfile"),
        "--tag", ref,
        "--metadata-file", str(metadata),
        "--push" if push else "--load",
    ]  # fmt: skip
    for name, value in (build_args or {}).items():
        argv += ["--build-arg", f"{name}={value}"]
    if network:
        argv += ["--network", network]
    return [*argv, str(REPO)]


def login(repository: str, ecr_client) -> None:
    """``docker login`` to ``repository``'s registry with an ECR authorization token."""
    registry = repository.split("/", 1)[0]
    response = ecr_client.get_authorization_token()
    token = response["authorizationData"][0]["authorizationToken"]
    user, _, password = base64.b64decode(token).decode().partition(":")
    _run(
        ["docker", "login", "--username", user, "--password-stdin", registry],
        stdin=password,
    )


def build(
    images: Sequence[str],
    repositories: dict[str, str] | None,
    tag: str,
    ecr_client=None,
    *,
    build_args: Mapping[str, str] | None = None,
    network: str | None = None,
) -> dict[str, str]:
    """Build ``images`` (pushing when ``repositories`` is given); each image's reference.

    The reference is ``repository@digest`` when pushed, the local ``sciflow-<image>:<tag>``
    otherwise. ``build_args`` go to every build (e.g. ``PYTHON_IMAGE``, the base image, and
    ``PIP_NO_INDEX``/``PIP_FIND_LINKS`` for a wheelhouse); ``network`` is the builds' RUN network.
    """
    push = repositories is not None
    if push:
        missing = [image for image in images if image not in repositories]
        if missing:
            raise InputError(
                f"images {missing} have no ECR repository in the unit; it names "
                f"{sorted(repositories)}"
            )
        for registry_repo in {repositories[image] for image in images}:
            login(registry_repo, ecr_client)
    refs: dict[str, str] = {}
    for image in _in_build_order(images):
        repository = repositories[image] if push else f"sciflow-{image}"
        args = {"FLOWS_IMAGE": refs[BUILT_ON[image]]} if image in BUILT_ON else {}
        args.update(build_args or {})
        with tempfile.TemporaryDirectory() as scratch:
            metadata = Path(scratch) / "metadata.json"
            argv = build_command(image, f"{repository}:{tag}", metadata, push, args, network)
            _run(argv)
            digest = json.loads(metadata.read_text())["containerimage.digest"]
        refs[image] = f"{repository}@{digest}" if push else f"{repository}:{tag}"
    return refs


def _in_build_order(images: Sequence[str]) -> list[str]:
    """``images`` with each base image first (added when it was not asked for)."""
    wanted = {*images, *(BUILT_ON[image] for image in images if image in BUILT_ON)}
    return [image for image in IMAGES if image in wanted]


def _git(repo: Path, *args: str) -> str:
    argv = ["git", "-C", str(repo), *args]
    return subprocess.run(  # noqa: S603 - fixed argv, no shell
        argv,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _run(argv: list[str], stdin: str | None = None) -> None:
    if shutil.which(argv[0]) is None:
        raise InputError(f"`{argv[0]}` is not on PATH; install Docker with buildx to build images")
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, check=True, input=stdin, text=True)  # noqa: S603 - argv built here


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build (and push) the named images, print their references."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("images", nargs="+", choices=IMAGES, help="Images to build.")
    parser.add_argument("--push", action="store_true", help="Push to the unit's ECR.")
    parser.add_argument("--unit", help="Compute unit whose ECR repositories receive the push.")
    args = parser.parse_args(argv)
    try:
        if args.push and not args.unit:
            raise InputError("--push needs --unit: the compute unit whose ECR receives it")
        tag = commit()
        repositories = ecr_client = None
        if args.push:
            repositories, ecr_client = _unit_registry(args.unit)
        refs = build(args.images, repositories, tag, ecr_client)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: `{' '.join(exc.cmd[:3])}` exited with {exc.returncode}", file=sys.stderr)
        return 1
    for image, ref in refs.items():
        print(f"{image}: {ref}")
    return 0


def _unit_registry(name: str):
    """The unit's ECR repository per image, and an ECR client in its account and region."""
    from blocks.compute_unit import load_unit
    from tasks.aws.clients import client

    unit = load_unit(name)
    repositories = dict(unit.ecr_repositories)
    for image, repository in repositories.items():
        if urlparse(f"//{repository}").hostname is None:
            raise InputError(f"ecr_repositories[{image!r}]={repository!r} is not a repository URL")
    return repositories, client("ecr", unit.aws_account(), region=unit.region)


if __name__ == "__main__":
    sys.exit(main())
