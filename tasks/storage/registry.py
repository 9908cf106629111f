"""The model registry: published model versions, their stages, and verified loading.

Layout under a registry root (``<storage root>/registry``, ``ComputeUnit.registry()``)::

    <model>/<version>/<files>              what was uploaded, relative paths kept
    <model>/<version>/_publishing.json     the publisher's claim while it uploads
    <model>/<version>/manifest.json        written last: its presence publishes the version
    <model>/stages/<stage>.json            the version a stage (alias) points at

Publishing claims the version (``_publishing.json``, created with a conditional write and
kept alive by a renewed lease, ``tasks.storage.claim``: a second live upload is refused
before it sends a byte, and a rerun of an upload whose process died takes the claim over
and resumes), uploads the files in parallel with ``upload_verified`` (size and SHA-256 of
each), then writes ``manifest.json`` with ``put_once``: of two concurrent publishers
exactly one creates it, and a reader lists only versions whose manifest exists, so it never
sees one without all its files. The same holds on a local directory (an exclusive create).

Versions are integers (``0`` to ``999999999``) or semantic ``MAJOR.MINOR.PATCH`` (each number
likewise), without leading zeros; one model uses one kind. The next version is one past the
highest that has anything under it (published or being published): ``N`` gives ``N+1``,
``X.Y.Z`` gives ``X.Y.(Z+1)``; a model's first is ``1``. Stages (``staging``, ``production``;
lowercase, starting with a letter) are small objects moved with ``put_if_match``.

``load`` downloads a version with verification into a local cache directory named by the
SHA-256 of its manifest (``SCIFLOW_MODEL_CACHE``), or, on a unit with FSx for Lustre mounted
here, verifies and returns the version's directory on the file system.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import re
import shutil
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Self
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tasks.errors import InputError, describe_validation
from tasks.settings import get_settings
from tasks.storage.claim import Claim, ClaimHeld, Lease, take
from tasks.storage.fsx import FsxLink
from tasks.storage.objects import Location, ObjectStore, join_uri
from tasks.storage.purge import Purge, purge_prefix
from tasks.storage.transfer import (
    AlreadyExists,
    IntegrityError,
    UploadedFile,
    download_verified,
    put_if_match,
    put_once,
    read_with_etag,
    upload_verified,
)

REGISTRY_DIR = "registry"
MANIFEST_NAME = "manifest.json"
CLAIM_NAME = "_publishing.json"
STAGES_DIR = "stages"
RESERVED_NAMES = frozenset({MANIFEST_NAME, CLAIM_NAME})
MODEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
STAGE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
_NUMBER = r"(0|[1-9][0-9]{0,8})"
INTEGER_VERSION = re.compile(_NUMBER)
SEMANTIC_VERSION = re.compile(rf"{_NUMBER}\.{_NUMBER}\.{_NUMBER}")
MAX_NUMBER = 999_999_999
FIRST_VERSION = "1"
# Files uploaded at once; each large file also sends its parts in parallel.
FILE_CONCURRENCY = 4
# Tries of an automatic next version that another publisher took first.
NEXT_VERSION_TRIES = 5
DEFAULT_STAGE = "production"

Progress = Callable[[int], None]


# --- names and versions -----------------------------------------------------------------


def check_model_name(name: str) -> str:
    """``name`` if it is a model name: 1-64 letters, digits, ``-``, ``_``; a letter or digit first.

    Raises:
        InputError: It is not.
    """
    if not isinstance(name, str) or not MODEL_PATTERN.fullmatch(name):
        raise InputError(
            f"model name {name!r} is invalid; expected 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def check_stage(name: str) -> str:
    """``name`` if it is a stage name: 1-32 lowercase letters, digits, ``-``, ``_``; a letter first.

    Raises:
        InputError: It is not.
    """
    if not isinstance(name, str) or not STAGE_PATTERN.fullmatch(name):
        raise InputError(
            f"stage {name!r} is invalid; expected 1-32 lowercase letters, digits, '-' or '_', "
            "starting with a letter (e.g. 'staging', 'production')"
        )
    return name


@dataclass(frozen=True, slots=True, order=True)
class Version:
    """A model version: one integer, or semantic ``MAJOR.MINOR.PATCH``; ordered numerically."""

    numbers: tuple[int, ...]

    @classmethod
    def parse(cls, text: str) -> Self:
        """The version ``text`` names.

        Raises:
            InputError: ``text`` is neither ``N`` nor ``X.Y.Z`` (numbers 0-999999999, no
                leading zeros).
        """
        if isinstance(text, str) and (
            INTEGER_VERSION.fullmatch(text) or SEMANTIC_VERSION.fullmatch(text)
        ):
            return cls(tuple(int(part) for part in text.split(".")))
        raise InputError(
            f"version {text!r} is invalid; expected an integer such as '3' or a semantic "
            "version such as '1.2.3' (numbers 0-999999999, no leading zeros)"
        )

    @property
    def kind(self) -> Literal["integer", "semantic"]:
        """Which of the two kinds this version is."""
        return "integer" if len(self.numbers) == 1 else "semantic"

    def next(self) -> Version:
        """The version after this one: ``N+1``, or the next patch of ``X.Y.Z``.

        Raises:
            InputError: The number would exceed 999999999.
        """
        if self.numbers[-1] >= MAX_NUMBER:
            raise InputError(f"version {self} has no next: numbers stop at {MAX_NUMBER}")
        return Version((*self.numbers[:-1], self.numbers[-1] + 1))

    def __str__(self) -> str:
        return ".".join(str(n) for n in self.numbers)


def next_version(taken: list[Version]) -> Version:
    """One past the highest version in ``taken``; ``1`` for none."""
    return max(taken).next() if taken else Version.parse(FIRST_VERSION)


# --- the manifest -----------------------------------------------------------------------


class FileEntry(BaseModel):
    """One file of a version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str = Field(description="Path relative to the version's directory, '/'-separated.")
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the content, hex.")

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        check_relative_path(path)
        return path


class Framework(BaseModel):
    """What the model was made with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Framework name, e.g. 'pytorch'.")
    versions: dict[str, str] = Field(
        default_factory=dict, description="Package to version, e.g. {'torch': '2.5.1'}."
    )


class Lineage(BaseModel):
    """Where a version came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field(description="URI the files were uploaded from.")
    flow_runs: list[str] = Field(
        default_factory=list, description="Prefect flow runs that produced it (training, upload)."
    )
    data: list[str] = Field(default_factory=list, description="Data sets it was trained on.")


class Manifest(BaseModel):
    """A published version: its files with sizes and digests, and where it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = Field(1, description="Manifest format version.")
    model: str = Field(description="Model name.")
    version: str = Field(description="Version.")
    files: list[FileEntry] = Field(min_length=1, description="Every file of the version.")
    framework: Framework = Field(description="Framework and package versions.")
    metrics: dict[str, float | int | str | bool] = Field(
        default_factory=dict, description="Scalar metrics of the model (e.g. val_loss)."
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="The publisher's notes.")
    lineage: Lineage = Field(description="Flow runs and data that produced the version.")
    created: datetime = Field(description="When it was published (UTC).")
    created_by: str = Field(description="Who published it: user@host.")
    publish_id: str = Field(description="Unique id of the upload that published it.")

    @field_validator("model")
    @classmethod
    def _model_name(cls, name: str) -> str:
        return _as_value_error(check_model_name, name)

    @field_validator("version")
    @classmethod
    def _version(cls, version: str) -> str:
        _as_value_error(Version.parse, version)
        return version

    @field_validator("files")
    @classmethod
    def _unique(cls, files: list[FileEntry]) -> list[FileEntry]:
        paths = [f.path for f in files]
        if duplicated := sorted({p for p in paths if paths.count(p) > 1}):
            raise ValueError(f"files list {duplicated} more than once")
        return files

    @property
    def size(self) -> int:
        """Bytes in all files."""
        return sum(f.size for f in self.files)

    def to_json(self) -> bytes:
        """The manifest as stored: indented JSON."""
        return json.dumps(self.model_dump(mode="json"), indent=2).encode()

    @classmethod
    def from_json(cls, data: bytes, uri: str) -> Self:
        """A stored manifest; ``IntegrityError`` if it does not parse or validate."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise IntegrityError(f"manifest {uri} is invalid: {describe_validation(exc)}") from None


def build_manifest(**fields: Any) -> Manifest:
    """A manifest from its fields, checked; ``InputError`` naming the bad field if not."""
    for name in ("metrics", "metadata"):
        try:
            json.dumps(fields.get(name), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"the manifest's {name} are not plain JSON ({exc}); expected strings, "
                "finite numbers, booleans, lists and objects"
            ) from None
    try:
        return Manifest(**fields)
    except ValidationError as exc:
        raise InputError(f"the manifest is invalid: {describe_validation(exc)}") from None


def check_relative_path(path: str) -> None:
    """Refuse a file path that would escape a version's directory or hide from listings."""
    parts = path.split("/")
    bad = (
        not path
        or path.startswith("/")
        or "\\" in path
        or any(part in ("", ".", "..") for part in parts)
        or any(part.startswith(".") and part.endswith(".tmp") for part in parts)
    )
    if bad:
        raise ValueError(
            f"file path {path!r} is invalid; expected a relative '/'-separated path without "
            "'.', '..' or empty parts"
        )


def _as_value_error(check: Callable[[str], Any], value: str) -> Any:
    """Run a check that raises InputError inside a pydantic validator (which wants ValueError)."""
    try:
        return check(value)
    except InputError as exc:
        raise ValueError(str(exc)) from None


def who() -> str:
    """``user@host`` of this process."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container user without a passwd entry
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


# --- sources ----------------------------------------------------------------------------


def local_files(source: str | Path, skip: tuple[str, ...] = ()) -> dict[str, Path]:
    """The files to publish from a local file or directory: relative path -> local path.

    Args:
        source: A file (published under its own name) or a directory (every file under it,
            relative paths kept; hidden temporaries left out).
        skip: Top-level directory names to leave out (a training run's ``checkpoints``).

    Raises:
        InputError: ``source`` does not exist, holds no file, or holds a reserved name
            (``manifest.json`` or ``_publishing.json`` at the top).
    """
    path = Path(source).expanduser()
    if path.is_file():
        files = {path.name: path}
    elif path.is_dir():
        files = {
            p.relative_to(path).as_posix(): p
            for p in sorted(path.rglob("*"))
            if p.is_file()
            and not (p.name.startswith(".") and p.name.endswith(".tmp"))
            and p.relative_to(path).parts[0] not in skip
        }
    else:
        raise InputError(f"model source {path} does not exist; expected a file or directory")
    if not files:
        raise InputError(f"model source {path} holds no files; expected the model's files")
    if reserved := sorted(RESERVED_NAMES & files.keys()):
        raise InputError(
            f"model source {path} holds {reserved}, names the registry keeps for itself; "
            "rename them or move them into a subdirectory"
        )
    return files


# --- the registry -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """A version just published."""

    manifest: Manifest
    manifest_uri: str
    seconds: float

    @property
    def version(self) -> str:
        """The version published."""
        return self.manifest.version


class VersionExists(InputError):
    """The version is published already, or another upload is publishing it."""


class Registry:
    """Model versions under one registry root, local or on S3.

    Args:
        store: The object store to read and write with.
        root: The registry root URI (``<storage root>/registry``).
        cache: Where ``load`` keeps downloaded versions; ``SCIFLOW_MODEL_CACHE`` if omitted.
        fsx: The unit's FSx for Lustre file system, if versions are imported into one.
    """

    def __init__(
        self,
        store: ObjectStore,
        root: str,
        cache: Path | None = None,
        fsx: FsxLink | None = None,
    ) -> None:
        self.store = store
        self.root = str(Location.parse(root))
        self.cache = Path(cache) if cache is not None else get_settings().model_cache
        self.fsx = fsx

    @classmethod
    def default(cls) -> Self:
        """The registry under ``SCIFLOW_STORAGE_ROOT``, with the ambient credentials."""
        settings = get_settings()
        store = ObjectStore(None, settings.part_size_mib, settings.transfer_concurrency)
        return cls(store, join_uri(settings.storage_root, REGISTRY_DIR))

    # --- where things are --------------------------------------------------------------

    def version_uri(self, model: str, version: str) -> str:
        """The directory of one version."""
        return join_uri(self.root, check_model_name(model), str(Version.parse(version)))

    def manifest_uri(self, model: str, version: str) -> str:
        """The manifest of one version."""
        return join_uri(self.version_uri(model, version), MANIFEST_NAME)

    def stage_uri(self, model: str, stage: str) -> str:
        """The object naming the version a stage points at."""
        return join_uri(
            self.root, check_model_name(model), STAGES_DIR, f"{check_stage(stage)}.json"
        )

    # --- reading -----------------------------------------------------------------------

    def list_versions(self, model: str) -> list[str]:
        """The published versions of ``model`` (those with a manifest), oldest first."""
        published = [v for v, names in self._version_dirs(model).items() if MANIFEST_NAME in names]
        return [str(v) for v in sorted(published)]

    def stages(self, model: str) -> dict[str, str]:
        """Stage name -> the version it points at."""
        stage_dir = join_uri(self.root, check_model_name(model), STAGES_DIR)
        out = {}
        for rel in self.store.walk(stage_dir):
            if "/" not in rel and rel.endswith(".json"):
                out[rel.removesuffix(".json")] = self._read_stage(model, rel.removesuffix(".json"))
        return {k: v for k, v in out.items() if v is not None}

    def resolve(self, model: str, version_or_stage: str) -> str:
        """The version ``version_or_stage`` names (a stage is looked up).

        Raises:
            InputError: No such published version, or the stage is unset.
        """
        check_model_name(model)
        if STAGE_PATTERN.fullmatch(version_or_stage or ""):
            version = self._read_stage(model, version_or_stage)
            if version is None:
                raise InputError(
                    f"model {model!r} has no stage {version_or_stage!r} in {self.root}; "
                    f"its stages: {sorted(self.stages(model)) or 'none'}"
                )
            return version
        version = str(Version.parse(version_or_stage))
        if not self.store.exists(self.manifest_uri(model, version)):
            raise InputError(
                f"model {model!r} has no published version {version!r} in {self.root}; "
                f"published: {self.list_versions(model) or 'none'}"
            )
        return version

    def get(self, model: str, version_or_stage: str) -> Manifest:
        """The manifest of a published version (or of the version a stage points at)."""
        return self._manifest(model, self.resolve(model, version_or_stage))[0]

    def _manifest(self, model: str, version: str) -> tuple[Manifest, bytes]:
        uri = self.manifest_uri(model, version)
        data = self.store.read_bytes(uri)
        manifest = Manifest.from_json(data, uri)
        if (manifest.model, manifest.version) != (model, version):
            raise IntegrityError(
                f"manifest {uri} describes {manifest.model} {manifest.version}; "
                f"expected {model} {version}"
            )
        return manifest, data

    def _read_stage(self, model: str, stage: str) -> str | None:
        found = read_with_etag(self.store, self.stage_uri(model, stage))
        return None if found is None else _stage_version(found[0], self.stage_uri(model, stage))

    def _version_dirs(self, model: str) -> dict[Version, set[str]]:
        """Every version directory of ``model`` with the top-level names in it."""
        out: dict[Version, set[str]] = {}
        for rel in self.store.walk(join_uri(self.root, check_model_name(model))):
            head, _, rest = rel.partition("/")
            if not rest:
                continue
            try:
                version = Version.parse(head)
            except InputError:
                continue  # stages/, or something that is not ours
            out.setdefault(version, set()).add(rest.split("/")[0])
        return out

    # --- publishing --------------------------------------------------------------------

    def publish(
        self,
        files: Mapping[str, Path],
        model: str,
        version: str | None = None,
        *,
        source: str,
        framework: Framework,
        metrics: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        lineage: Lineage | None = None,
        on_file: Callable[[UploadedFile], None] | None = None,
        on_progress: Progress | None = None,
    ) -> Published:
        """Upload ``files`` as ``model`` ``version`` and publish it by writing its manifest last.

        Args:
            files: Relative path in the version -> local file (``local_files``).
            model: Model name.
            version: The version; the next one if omitted.
            source: URI the files came from (recorded, and what a rerun must match to resume).
            framework: Framework and package versions.
            metrics: Scalar metrics.
            metadata: Free-form JSON notes.
            lineage: Flow runs and data behind the model; ``source`` alone if omitted.
            on_file: Called with each file once it is stored.
            on_progress: Called with bytes uploaded since its last call (from several threads).

        Raises:
            VersionExists: The version is published, or another source is being published
                as it; nothing of this call is published.
            InputError: A bad name, version, file path or manifest field, before any upload.
        """
        check_model_name(model)
        if version is not None:
            Version.parse(version)
        start = time.perf_counter()
        for rel in files:
            _as_input_error(check_relative_path, rel)
        if reserved := sorted(RESERVED_NAMES & set(files)):
            raise InputError(f"file names {reserved} are the registry's own; rename them")
        sizes = {rel: Path(path).stat().st_size for rel, path in sorted(files.items())}
        claim = Claim.mine(source, sizes, holder=uuid4().hex)
        # Everything that can be checked without uploading is checked before the claim.
        draft = dict(
            model=model,
            framework=framework,
            metrics=dict(metrics or {}),
            metadata=dict(metadata or {}),
            lineage=lineage or Lineage(source=source),
            created_by=who(),
            publish_id=claim.holder,
        )
        dummy = [FileEntry(path=rel, size=size, sha256="0" * 64) for rel, size in sizes.items()]
        build_manifest(
            **draft, version=version or FIRST_VERSION, files=dummy, created=datetime.now(UTC)
        )

        chosen, tag = self._claim(model, version, claim)
        claim_uri = join_uri(self.root, model, chosen, CLAIM_NAME)
        manifest_uri = self.manifest_uri(model, chosen)
        with Lease(self.store, claim_uri, claim, tag) as lease:
            version_dir = join_uri(self.root, model, chosen)
            uploaded = self._upload(files, version_dir, on_file, on_progress)
            manifest = build_manifest(
                **draft,
                version=chosen,
                files=[FileEntry(path=rel, size=f.size, sha256=f.sha256) for rel, f in uploaded],
                created=datetime.now(UTC),
            )
            if lease.lost:
                raise VersionExists(
                    f"model {model!r} version {chosen}: another upload took this one's claim "
                    f"over while it stalled; this upload of {source} is not published"
                )
            try:
                put_once(self.store, manifest_uri, manifest.to_json())
            except AlreadyExists:
                raise VersionExists(
                    f"model {model!r} version {chosen} was published by another upload while "
                    f"this one uploaded; this upload of {source} is not published"
                ) from None
        self.store.remove(claim_uri)
        return Published(manifest, manifest_uri, time.perf_counter() - start)

    def _claim(self, model: str, version: str | None, claim: Claim) -> tuple[str, str]:
        """Claim ``version`` (or the next free one); returns the version and the claim's tag.

        Without a version, an unfinished version abandoned by the same upload (same source
        and file sizes; its process gone) is taken over and resumed.
        """
        dirs = self._version_dirs(model)
        if version is not None:
            wanted = Version.parse(version)
            _check_kind(model, wanted, list(dirs))
            return str(wanted), self._claim_one(model, wanted, dirs.get(wanted, set()), claim)
        for candidate, names in sorted(dirs.items()):
            if MANIFEST_NAME not in names and CLAIM_NAME in names:
                found = read_with_etag(
                    self.store, join_uri(self.root, model, str(candidate), CLAIM_NAME)
                )
                held = Claim.parse(found[0]) if found else None
                if held is not None and held.same_upload(claim) and held.abandoned():
                    try:
                        return str(candidate), self._claim_one(model, candidate, names, claim)
                    except VersionExists:
                        continue  # another rerun resumed it first
        for _ in range(NEXT_VERSION_TRIES):
            candidate = next_version(list(dirs))
            try:
                return str(candidate), self._claim_one(model, candidate, set(), claim)
            except VersionExists:
                dirs = self._version_dirs(model)  # another publisher took it: look again
        raise VersionExists(
            f"model {model!r}: {NEXT_VERSION_TRIES} next versions in a row were taken by "
            "other uploads; give a version"
        )

    def _claim_one(self, model: str, version: Version, names: set[str], claim: Claim) -> str:
        text = str(version)
        if MANIFEST_NAME in names or self.store.exists(self.manifest_uri(model, text)):
            raise VersionExists(
                f"model {model!r} version {text} is already published in {self.root}; "
                "give another version, or leave it out for the next one"
            )
        try:
            return take(self.store, join_uri(self.root, model, text, CLAIM_NAME), claim)
        except ClaimHeld as exc:
            raise VersionExists(
                f"model {model!r} version {text} cannot be published: {exc}"
            ) from None

    def _upload(
        self,
        files: Mapping[str, Path],
        version_dir: str,
        on_file: Callable[[UploadedFile], None] | None,
        on_progress: Progress | None,
    ) -> list[tuple[str, UploadedFile]]:
        if Location.parse(version_dir).is_s3:
            _ = self.store.s3  # made once, before the threads share it

        def one(rel: str) -> tuple[str, UploadedFile]:
            stored = upload_verified(
                self.store, files[rel], join_uri(version_dir, rel), on_progress=on_progress
            )
            if on_file is not None:
                on_file(stored)
            return rel, stored

        with ThreadPoolExecutor(max_workers=min(FILE_CONCURRENCY, len(files))) as pool:
            return list(pool.map(one, sorted(files)))

    # --- stages and deletion -----------------------------------------------------------

    def promote(self, model: str, version: str, stage: str) -> str | None:
        """Point ``stage`` at a published ``version``; returns the version it pointed at before.

        The stage object is replaced only if it is still what was read (``put_if_match``).

        Raises:
            InputError: The version is not published.
            ConcurrentUpdate: Another promotion moved the stage meanwhile; read it again.
        """
        uri = self.stage_uri(model, stage)
        version = self.resolve(model, str(Version.parse(version)))
        found = read_with_etag(self.store, uri)
        previous = None if found is None else _stage_version(found[0], uri)
        pointer = {
            "model": model,
            "stage": stage,
            "version": version,
            "previous": previous,
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            "by": who(),
        }
        data = json.dumps(pointer, indent=2).encode()
        put_if_match(self.store, uri, data, None if found is None else found[1])
        return previous

    def delete(self, model: str, version: str) -> Purge:
        """Remove a version, every object version under it on S3 (published or not).

        The manifest goes first, so readers stop listing the version before its files go.

        Raises:
            InputError: A stage points at the version (promote another first), a live
                upload is publishing it, or nothing is there.
        """
        text = str(Version.parse(version))
        if pointing := sorted(s for s, v in self.stages(model).items() if v == text):
            raise InputError(
                f"model {model!r} version {text} is what stage(s) {pointing} point at; "
                "promote another version to them first"
            )
        version_dir = self.version_uri(model, text)
        if not self.store.exists(version_dir):
            raise InputError(f"model {model!r} has no version {text} in {self.root}")
        found = read_with_etag(self.store, join_uri(version_dir, CLAIM_NAME))
        held = Claim.parse(found[0]) if found else None
        if held is not None and not held.abandoned():
            raise InputError(
                f"model {model!r} version {text} is being published from {held.describe()}; "
                "delete it once that upload has ended"
            )
        self.store.remove(self.manifest_uri(model, text))
        return purge_prefix(self.store, version_dir)

    # --- loading -----------------------------------------------------------------------

    def load(self, model: str, version_or_stage: str = DEFAULT_STAGE) -> Path:
        """A local directory holding the version's files, each checked against its manifest.

        On a unit with FSx for Lustre mounted here and the version imported, that directory
        on the file system; otherwise the cache's copy, downloaded with verification the first
        time and checked by size after.

        Raises:
            IntegrityError: A file's size or SHA-256 differs from the manifest's; nothing is
                cached from it.
        """
        version = self.resolve(model, version_or_stage)
        manifest, data = self._manifest(model, version)
        if self.fsx is not None:
            mounted = self.fsx.local_path(self.version_uri(model, version))
            if mounted is not None and (mounted / MANIFEST_NAME).is_file():
                verify_dir(mounted, manifest)
                return mounted
        digest = hashlib.sha256(data).hexdigest()
        cached = self.cache / digest
        if (cached / MANIFEST_NAME).is_file():
            if _sizes_match(cached, manifest):
                return cached
            shutil.rmtree(cached, ignore_errors=True)  # damaged: fetch it again
        return self._download(model, version, manifest, data, cached)

    def _download(
        self, model: str, version: str, manifest: Manifest, data: bytes, cached: Path
    ) -> Path:
        tmp = cached.with_name(f".{cached.name}.{uuid4().hex}.tmp")
        version_dir = self.version_uri(model, version)
        try:
            with ThreadPoolExecutor(max_workers=min(FILE_CONCURRENCY, len(manifest.files))) as pool:
                list(
                    pool.map(
                        lambda f: download_verified(
                            self.store,
                            join_uri(version_dir, f.path),
                            tmp / f.path,
                            size=f.size,
                            sha256=f.sha256,
                        ),
                        manifest.files,
                    )
                )
            (tmp / MANIFEST_NAME).write_bytes(data)  # last: a cache entry counts once it is there
            try:
                tmp.rename(cached)
            except OSError:
                if not (cached / MANIFEST_NAME).is_file():  # not a concurrent loader's copy
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cached


def _stage_version(data: bytes, uri: str) -> str:
    try:
        return str(Version.parse(json.loads(data)["version"]))
    except (ValueError, KeyError, TypeError, InputError) as exc:
        raise IntegrityError(f"stage {uri} does not name a version: {exc}") from None


def _check_kind(model: str, wanted: Version, taken: list[Version]) -> None:
    kinds = {v.kind for v in taken}
    if kinds and wanted.kind not in kinds:
        raise InputError(
            f"version {wanted} of model {model!r} is {wanted.kind}, but its versions are "
            f"{kinds.pop()}; one model uses one kind of version"
        )


def _as_input_error(check: Callable[[str], None], value: str) -> None:
    try:
        check(value)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _sizes_match(directory: Path, manifest: Manifest) -> bool:
    for entry in manifest.files:
        path = directory / entry.path
        if not path.is_file() or path.stat().st_size != entry.size:
            return False
    return True


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a local file, read in 1 MiB chunks."""
    hasher = hashlib.sha256()
    with path.open("rb") as src:
        while chunk := src.read(1024 * 1024):
            hasher.update(chunk)
    return hasher.hexdigest()


def verify_dir(directory: Path, manifest: Manifest) -> list[str]:
    """Check every file of ``manifest`` under ``directory``; returns the paths checked.

    Raises:
        IntegrityError: A file is missing or its size or SHA-256 differs.
    """
    for entry in manifest.files:
        path = directory / entry.path
        if not path.is_file():
            raise IntegrityError(f"{path} is missing; {manifest.model} {manifest.version} lists it")
        size = path.stat().st_size
        if size != entry.size or (digest := file_sha256(path)) != entry.sha256:
            got = f"{size} bytes" if size != entry.size else f"SHA-256 {digest}"
            raise IntegrityError(
                f"refusing {path}: it has {got}; the manifest of {manifest.model} "
                f"{manifest.version} records {entry.size} bytes with SHA-256 {entry.sha256}"
            )
    return [entry.path for entry in manifest.files]


def load(
    model: str, version_or_stage: str = DEFAULT_STAGE, registry: Registry | None = None
) -> Path:
    """``Registry.load`` on ``registry``, or on the registry under ``SCIFLOW_STORAGE_ROOT``.

    A unit's registry (its storage root, credentials, FSx) is ``ComputeUnit.registry()``.
    """
    return (registry or Registry.default()).load(model, version_or_stage)


__all__ = [
    "DEFAULT_STAGE",
    "REGISTRY_DIR",
    "FileEntry",
    "Framework",
    "Lineage",
    "Manifest",
    "Published",
    "Registry",
    "Version",
    "VersionExists",
    "load",
    "local_files",
    "next_version",
    "verify_dir",
]
