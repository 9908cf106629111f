"""Sealed scratch files: written encrypted under a per-run key that cleanup destroys.

Deleting a file does not erase it: on an SSD the flash blocks keep the bytes until the drive
reuses them, and a network file system (EFS) or a snapshot may keep them longer. Overwriting
in place is no better, since the drive writes the new bytes elsewhere. A file written
encrypted is different: once its key is gone, whatever copies of its blocks survive are
ciphertext. That is the shred this module offers: ``RunKey.write`` seals a file with
AES-256-GCM under the run's key, ``RunKey.read`` opens it, and ``RunKey.destroy`` removes the
key, after which no sealed file of the run can be read.

Where the key lives: one 32-byte file per run, mode 0600, in a 0700 directory of this user
on ``/dev/shm`` (memory, never written to a disk unless the machine swaps it out), outside
every run's scratch directory so a sweep of the data cannot race the key. Without ``/dev/shm``
it falls back to ``<scratch root>/.keys/``, on the same disk as the data, where destroying the
key is a delete like any other and guarantees no more than deleting the files.

A key serves one machine: processes on other machines (MPI ranks on EFS) do not share it.
Python cannot wipe the key's copies in a process's memory; they go with the process.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tasks.errors import InputError, SciflowError
from tasks.settings import get_settings

KEY_BYTES = 32
NONCE_BYTES = 12
# First bytes of every sealed file: what it is and the format's version.
MAGIC = b"sciflow-sealed-1\n"
# The memory file system a key prefers (Linux, containers included).
TMPFS = Path("/dev/shm")  # noqa: S108 - keys go in a 0700 dir of this user, checked


class SealedFileError(SciflowError):
    """A sealed file that cannot be opened: wrong key, key destroyed, or changed bytes."""


def key_dir() -> Path:
    """Where run keys live: this user's directory on ``/dev/shm``, else under the scratch root."""
    if TMPFS.is_dir() and os.access(TMPFS, os.W_OK):
        return TMPFS / f"sciflow-keys-{os.getuid()}"
    return get_settings().scratch_root / ".keys"


def key_path(run_id: str, directory: Path | None = None) -> Path:
    """The key file of flow run ``run_id``; its name is the canonical UUID, so it stays inside."""
    try:
        canonical = str(uuid.UUID(run_id))
    except (ValueError, TypeError, AttributeError):
        canonical = None
    if canonical != run_id:
        raise InputError(f"run_id={run_id!r} is not a flow-run id; expected a UUID")
    return (directory or key_dir()) / f"{canonical}.key"


@dataclass(frozen=True)
class RunKey:
    """A run's scratch key: seals and opens the files it writes to scratch.

    Build it with ``RunKey.for_run(run_id)`` in every process of the run on this machine:
    the first creates the key, the others read it.
    """

    run_id: str
    path: Path
    _key: bytes = field(repr=False)

    @classmethod
    def for_run(cls, run_id: str, directory: Path | None = None) -> RunKey:
        """The run's key, created (0600, in a 0700 directory of this user) if there is none.

        Raises:
            InputError: ``run_id`` is not a flow-run id, or the key directory is not this
                user's alone.
        """
        path = key_path(run_id, directory)
        _private_dir(path.parent)
        key = secrets.token_bytes(KEY_BYTES)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key)
        try:
            os.link(tmp, path)  # appears whole, and only if no other process made one first
        except FileExistsError:
            key = _read_key(path)
        finally:
            tmp.unlink()
        return cls(run_id, path, key)

    def seal(self, data: bytes, name: str) -> bytes:
        """``data`` encrypted and authenticated; ``name`` is bound to it (a renamed file fails)."""
        nonce = secrets.token_bytes(NONCE_BYTES)
        return MAGIC + nonce + AESGCM(self._key).encrypt(nonce, data, name.encode())

    def open(self, sealed: bytes, name: str) -> bytes:
        """The plaintext of ``seal(data, name)``.

        Raises:
            SealedFileError: Not a sealed file, another key or name, or changed bytes.
        """
        if not sealed.startswith(MAGIC):
            raise SealedFileError(f"{name} is not a sealed file (no {MAGIC!r} header)")
        body = sealed[len(MAGIC) :]
        nonce, ciphertext = body[:NONCE_BYTES], body[NONCE_BYTES:]
        try:
            return AESGCM(self._key).decrypt(nonce, ciphertext, name.encode())
        except InvalidTag:
            raise SealedFileError(
                f"{name} does not open with run {self.run_id}'s key: another run's file, "
                "a renamed file, or changed bytes"
            ) from None

    def write(self, path: str | os.PathLike[str], data: bytes) -> Path:
        """Write ``data`` sealed to ``path`` (0600, atomically: temporary name, then rename)."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(self.seal(data, target.name))
            tmp.replace(target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    def read(self, path: str | os.PathLike[str]) -> bytes:
        """The plaintext of a file ``write`` sealed."""
        target = Path(path)
        return self.open(target.read_bytes(), target.name)


def destroy_key(run_id: str, directory: Path | None = None) -> bool:
    """Overwrite the run's key file with zeros, then delete it; True if there was one.

    On ``/dev/shm`` the overwrite reaches the page that held the key; on a disk it is no
    guarantee (see the module docstring), and the delete is what counts.
    """
    path = key_path(run_id, directory)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(bytes(KEY_BYTES))
        handle.flush()
        os.fsync(handle.fileno())
    with contextlib.suppress(FileNotFoundError):  # another cleanup got there first
        path.unlink()
    return True


def _private_dir(directory: Path) -> None:
    """Make ``directory`` (0700), or accept it only if it is this user's and no one else's."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise InputError(
            f"key directory {directory} is not a directory of user {os.getuid()} with mode "
            f"0700 (it is {stat.filemode(info.st_mode)}, owner {info.st_uid}); expected one "
            "only this user can read"
        )


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        key = handle.read()
    if len(key) != KEY_BYTES:
        raise SciflowError(f"run key {path} holds {len(key)} bytes; expected {KEY_BYTES}")
    return key
