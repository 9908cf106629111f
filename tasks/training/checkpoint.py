"""Checkpoints that survive failure: a torn or duplicate write is never resumed from.

A checkpoint is two files under one directory URI (local or ``s3://``):
``step-000000050.pt``, the ``torch.save`` bytes, and then ``step-000000050.json``, its
sidecar (step, sha256, size, model, time). The blob is written atomically (temporary name and
rename locally; one PUT or one multipart upload on S3) and the sidecar only after it, so the
sidecar marks completion: a blob without one, or one whose size or sha256 disagrees with it,
is never chosen. Loading uses ``weights_only=True``, so a checkpoint can hold tensors,
numbers, strings and dicts/lists/tuples of them, and never runs code when read.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pickle import UnpicklingError
from typing import Any

import numpy as np
import torch

from tasks.errors import InputError, SciflowError
from tasks.storage.objects import ObjectStore, join_uri

FORMAT = 1
_NAME = re.compile(r"^step-(\d+)\.(pt|json)$")
# Leaves torch's weights_only unpickler accepts; anything else is refused before writing.
_LEAVES = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device)


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One complete checkpoint, as its sidecar describes it."""

    step: int
    uri: str
    sha256: str
    bytes: int
    model: dict[str, Any]


class CheckpointStore:
    """Numbered checkpoints under one directory URI; the newest complete one is resumed.

    Args:
        root: Directory or S3 prefix (a run's ``TrainConfig.checkpoints``).
        store: Object store to use; a default one if omitted.
        tags: S3 object tags for every file written (ignored locally).
        keep: Complete checkpoints kept after a save; older ones are deleted.
    """

    def __init__(
        self,
        root: str,
        store: ObjectStore | None = None,
        tags: Mapping[str, str] | None = None,
        keep: int = 3,
    ) -> None:
        if keep < 1:
            raise InputError(f"keep={keep}; expected at least 1 checkpoint to keep")
        self.root = join_uri(root)
        self.store = store or ObjectStore()
        self.tags = dict(tags or {})
        self.keep = keep
        # Bytes latest() just verified, so load() right after it does not read them again.
        self._verified: tuple[str, str, bytes] | None = None

    def save(self, step: int, state: Mapping[str, Any], model_spec: Mapping[str, Any]) -> str:
        """Write a checkpoint for ``step``, then prune old ones; returns the blob's URI.

        Args:
            step: Optimizer steps done; names the files.
            state: Tensors, numbers, strings and dicts/lists/tuples of them (state dicts,
                sampler position, ``capture_rng()``); on any device, loaded onto the CPU.
            model_spec: ``TrainConfig.model_spec``; ``load`` refuses another model's state.

        Raises:
            InputError: ``step`` is negative, or ``state`` holds an object that a
                ``weights_only`` load would refuse.
            SciflowError: A complete checkpoint of this step exists; a failed or duplicate
                run must not overwrite it.
        """
        if step < 0:
            raise InputError(f"step={step}; expected a step count >= 0")
        _check_plain(state, "state")
        spec = _plain_json(model_spec)
        blob, sidecar = self._uris(step)
        names = self._names()
        if _filename(step, "json") in names and _filename(step, "pt") in names:
            if self._verify(step) is not None:
                raise SciflowError(
                    f"checkpoint {blob} is complete already; refusing to overwrite it "
                    "(is another run writing to the same output?)"
                )
        buffer = io.BytesIO()
        torch.save(dict(state), buffer)
        data = buffer.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        # upload_fileobj goes multipart on S3 for big states; either way all or nothing.
        self.store.upload_fileobj(io.BytesIO(data), blob, self.tags)
        meta = {
            "step": step,
            "sha256": digest,
            "bytes": len(data),
            "model": spec,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "format": FORMAT,
        }
        self.store.write_text(sidecar, json.dumps(meta, indent=2), self.tags)
        self._prune(step)
        return blob

    def latest(self) -> CheckpointInfo | None:
        """The newest complete checkpoint, or ``None``; reads and hashes blobs until one fits."""
        groups = _group(self._names())
        for step in sorted(groups, reverse=True):
            if groups[step] >= {"pt", "json"}:
                info = self._verify(step, remember=True)
                if info is not None:
                    return info
        return None

    def steps(self) -> list[int]:
        """Steps of every complete checkpoint, ascending (each blob is read and hashed)."""
        groups = _group(self._names())
        both = [s for s in sorted(groups) if groups[s] >= {"pt", "json"}]
        return [s for s in both if self._verify(s) is not None]

    def load(self, info: CheckpointInfo, model_spec: Mapping[str, Any]) -> dict[str, Any]:
        """The state saved in a checkpoint, tensors on the CPU.

        Args:
            info: From ``latest()``.
            model_spec: The model this run trains.

        Raises:
            InputError: The checkpoint was written by another model.
            SciflowError: The blob changed since its sidecar was written, or holds objects
                other than tensors and plain containers.
        """
        check_model(info, model_spec)
        cached, self._verified = self._verified, None
        if cached is not None and cached[:2] == (info.uri, info.sha256):
            data = cached[2]
        else:
            data = self.store.read_bytes(info.uri)
            if hashlib.sha256(data).hexdigest() != info.sha256:
                raise SciflowError(
                    f"checkpoint {info.uri} does not match the sha256 in its sidecar; it "
                    "changed after it was written: delete it to resume from an older one"
                )
        try:
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except UnpicklingError as exc:
            raise SciflowError(
                f"checkpoint {info.uri} holds objects other than tensors and plain "
                f"containers; refusing to unpickle it: {str(exc).splitlines()[0]}"
            ) from exc

    def load_latest(self, model_spec: Mapping[str, Any]) -> tuple[int, dict[str, Any]] | None:
        """``(step, state)`` of the newest complete checkpoint, or ``None`` if there is none."""
        info = self.latest()
        return None if info is None else (info.step, self.load(info, model_spec))

    # --- internals -------------------------------------------------------------------------

    def _uris(self, step: int) -> tuple[str, str]:
        return join_uri(self.root, _filename(step, "pt")), join_uri(
            self.root, _filename(step, "json")
        )

    def _names(self) -> set[str]:
        """File names directly under the root (one listing)."""
        return {rel for rel in self.store.walk(self.root) if "/" not in rel}

    def _verify(self, step: int, remember: bool = False) -> CheckpointInfo | None:
        """The checkpoint of ``step`` if its blob matches its sidecar, else ``None``."""
        blob, sidecar = self._uris(step)
        try:
            meta = json.loads(self.store.read_bytes(sidecar))
            data = self.store.read_bytes(blob)
        except (InputError, ValueError):  # deleted meanwhile, or a torn/foreign sidecar
            return None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("step") != step:
            return None
        if meta.get("bytes") != len(data) or meta.get("sha256") != hashlib.sha256(data).hexdigest():
            return None
        if remember:
            self._verified = (blob, meta["sha256"], data)
        return CheckpointInfo(step, blob, meta["sha256"], len(data), meta.get("model") or {})

    def _prune(self, written: int) -> None:
        """Delete complete checkpoints beyond ``keep`` and stale incomplete ones below.

        Completeness here is both files being present, not a hash check (that would read
        every blob on every save). The checkpoint just written is never deleted, nor an
        incomplete one above it, which may be another writer's upload in flight.
        """
        groups = _group(self._names())
        complete = sorted((s for s in groups if groups[s] >= {"pt", "json"}), reverse=True)
        keep = set(complete[: self.keep]) | {written}
        for step, kinds in sorted(groups.items()):
            whole = kinds >= {"pt", "json"}
            if step in keep or (not whole and step > written):
                continue
            # The sidecar goes first: a crash in between leaves an orphan blob, not a sidecar
            # pointing at nothing; the next save clears the orphan.
            for kind in ("json", "pt"):
                if kind in kinds:
                    self.store.remove(join_uri(self.root, _filename(step, kind)))


def _filename(step: int, kind: str) -> str:
    return f"step-{step:09d}.{kind}"


def _group(names: set[str]) -> dict[int, set[str]]:
    """Step -> the kinds (``pt``, ``json``) present for it."""
    groups: dict[int, set[str]] = {}
    for name in names:
        match = _NAME.match(name)
        if match:
            groups.setdefault(int(match[1]), set()).add(match[2])
    return groups


def _check_plain(value: Any, where: str) -> None:
    """Refuse, before anything is written, what a weights_only load could not read back."""
    if isinstance(value, torch.Tensor) or type(value) in _LEAVES:
        return
    if type(value) in (dict, OrderedDict):
        for key, item in value.items():
            _check_plain(key, f"{where} key {key!r}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    if type(value) in (list, tuple, torch.Size):
        for index, item in enumerate(value):
            _check_plain(item, f"{where}[{index}]")
        return
    raise InputError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}; checkpoints hold "
        "only tensors, numbers, strings and dicts/lists/tuples of them (convert it, e.g. "
        "with .tolist() or int())"
    )


def check_model(info: CheckpointInfo, model_spec: Mapping[str, Any]) -> None:
    """Refuse a checkpoint written by another model than ``model_spec`` (bad input)."""
    spec = _plain_json(model_spec)
    if info.model != spec:
        raise InputError(
            f"checkpoint {info.uri} was written by model {_describe(info.model)}, this run "
            f"trains {_describe(spec)}; use another output (resume=False over it is refused too)"
        )


def _plain_json(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The spec as JSON reads it back (tuples become lists), so comparisons are fair."""
    return json.loads(json.dumps(dict(spec), sort_keys=True))


def _describe(spec: Mapping[str, Any]) -> str:
    options = spec.get("options") or {}
    args = ", ".join(f"{key}={options[key]!r}" for key in sorted(options))
    return f"{spec.get('name', '?')}({args})"


# --- random streams --------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """This process's Python, NumPy, torch and CUDA generator states, weights_only-loadable.

    In DDP each rank has its own streams; this captures the calling process's only.
    """
    version, words, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    python = {"version": version, "state": torch.tensor(words, dtype=torch.int64), "gauss": gauss}
    numpy = {
        "kind": str(kind),
        "keys": torch.from_numpy(keys.astype(np.int64)),  # uint32 words; torch lacks uint32 ops
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }
    state: dict[str, Any] = {"python": python, "numpy": numpy, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    """Put back generator states from ``capture_rng`` (CUDA ones on as many devices as exist)."""
    py = state["python"]
    words = tuple(int(w) for w in py["state"].tolist())
    random.setstate((int(py["version"]), words, py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)
