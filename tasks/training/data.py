"""Training sets: (input, target) image pairs in a directory or S3 prefix, streamed per sample.

A set is ``manifest.json`` plus sample files (``.npy``, ``.nii``, ``.nii.gz``) under the same
directory, named relative to it. The manifest is written last, so a half-built set has none
and is refused. ``ImageDataset`` holds only the URI, the manifest and an ``ObjectStore``: it
pickles small for DataLoader workers and reads each sample when asked, so memory does not
grow with the set.
"""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from torch.utils.data import Dataset

from tasks.errors import InputError, describe_validation
from tasks.storage.objects import Location, ObjectStore, join_uri
from tasks.storage.registry import check_relative_path

MANIFEST = "manifest.json"
FORMAT = "sciflow-training-set"
SAMPLES = "samples"
SUFFIXES = (".npy", ".nii", ".nii.gz")
SNR_NAME = "SNR.nii.gz"  # written by the mr_reconstruction flow
SIMULATION_NAME = "simulation.h5"  # written by the multinode_simulation flow
Split = Literal["train", "validation"]


class Sample(BaseModel):
    """One pair: paths relative to the set's directory."""

    model_config = ConfigDict(extra="forbid")

    input: str
    target: str
    source: str | None = None

    @field_validator("input", "target")
    @classmethod
    def _inside_the_set(cls, path: str) -> str:
        check_relative_path(path)  # a name in the manifest must not lead out of the set
        return path


class Manifest(BaseModel):
    """What a training set holds: image shape, splits, and what it was built from."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["sciflow-training-set"]
    version: Literal[1]
    channels: int
    shape: tuple[int, int]
    train: list[Sample]
    validation: list[Sample]
    sources: list[str] = []

    def split(self, name: Split) -> list[Sample]:
        """The samples of one split."""
        return self.train if name == "train" else self.validation

    def files(self) -> set[str]:
        """Every sample file, relative to the set's directory."""
        return {path for s in self.train + self.validation for path in (s.input, s.target)}


def set_root(uri: str) -> str:
    """The set's directory for a directory URI or its ``manifest.json`` URI."""
    loc = Location.parse(uri)
    if PurePosixPath(loc.key).name == MANIFEST:
        if loc.is_s3:
            return str(Location("s3", loc.bucket, str(PurePosixPath(loc.key).parent)))
        return str(loc.path.parent)
    return str(loc)


def load_manifest(uri: str, store: ObjectStore | None = None) -> Manifest:
    """Read and check a set's manifest, and that every sample file it names is there.

    Args:
        uri: The set's directory (local or ``s3://``) or its ``manifest.json``.
        store: Storage client; a new one if omitted.

    Returns:
        The manifest.

    Raises:
        InputError: No manifest, invalid JSON or schema, an empty train split, or sample
            files missing; the message names the URI.
    """
    store = store or ObjectStore()
    root = set_root(uri)
    path = join_uri(root, MANIFEST)
    expected = "expected a training set directory with manifest.json (see build_training_set)"
    try:
        raw = store.read_bytes(path)
    except InputError as exc:
        raise InputError(
            f"no training set at {root}: cannot read {path} ({exc}); {expected}"
        ) from exc
    try:
        manifest = Manifest.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise InputError(f"training set manifest {path} is not valid JSON: {exc}") from None
    except ValidationError as exc:
        raise InputError(
            f"training set manifest {path} is invalid: {describe_validation(exc)}"
        ) from None
    if not manifest.train:
        raise InputError(f"empty data set: {path} lists no train samples; {expected}")
    bad = sorted(f for f in manifest.files() if not f.endswith(SUFFIXES))
    if bad:
        raise InputError(f"{path} lists {bad[0]!r}; expected sample files ending in {SUFFIXES}")
    loc = Location.parse(root)
    if loc.is_s3:  # one listing, not a HEAD per file
        present = set(store.walk(root))
        missing = sorted(manifest.files() - present)
    else:
        missing = sorted(f for f in manifest.files() if not (loc.path / f).is_file())
    if missing:
        raise InputError(
            f"training set {root} is incomplete: {len(missing)} sample file(s) listed in "
            f"{MANIFEST} are missing, first {join_uri(root, missing[0])}"
        )
    return manifest


class ImageDataset(Dataset):
    """One split of a training set; each item is read from storage when asked.

    Args:
        uri: The set's directory or its ``manifest.json`` (local or ``s3://``).
        split: ``"train"`` or ``"validation"``.
        store: Storage client; a new one if omitted.
        manifest: The already loaded manifest (skips reading and checking it again).

    Items are ``(input, target)``, float32 tensors shaped ``(C, H, W)`` as in the manifest.
    """

    def __init__(
        self,
        uri: str,
        split: Split = "train",
        store: ObjectStore | None = None,
        manifest: Manifest | None = None,
    ) -> None:
        if split not in ("train", "validation"):
            raise InputError(f"split={split!r}; expected 'train' or 'validation'")
        self.root = set_root(uri)
        self._location = Location.parse(self.root)
        self.split = split
        self.store = store or ObjectStore()
        self.manifest = manifest or load_manifest(self.root, self.store)
        self.samples = self.manifest.split(split)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        return self._load(sample.input), self._load(sample.target)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every item."""
        return (self.manifest.channels, *self.manifest.shape)

    def _load(self, name: str) -> torch.Tensor:
        # Joining a parsed root skips re-parsing (and urllib's URL cache) per item.
        loc = self._location.join(name)
        uri = str(loc)
        image = _read(loc, self.store)
        if image.ndim == 2:
            image = image[None]
        if image.shape != self.shape:
            raise InputError(
                f"mismatched data set: {uri} holds an image of shape {image.shape}; "
                f"expected {self.shape} (C, H, W) from {MANIFEST}"
            )
        return torch.from_numpy(np.array(image, dtype=np.float32))  # copies out of the mmap


def read_image(uri: str, store: ObjectStore) -> np.ndarray:
    """One image file as an array, without reading more than that file.

    ``.npy`` holds ``(C, H, W)`` or ``(H, W)``. NIfTI stores spatial axes first, so a NIfTI
    file holds ``(H, W)`` or ``(H, W, C)``, returned as ``(C, H, W)``.
    """
    return _read(Location.parse(uri), store)


def _read(loc: Location, store: ObjectStore) -> np.ndarray:
    uri = str(loc)
    try:
        if uri.endswith(".npy"):
            if loc.is_s3:
                return np.load(io.BytesIO(store.read_bytes(uri)), allow_pickle=False)
            return np.load(loc.path, mmap_mode="r", allow_pickle=False)
        import nibabel as nib

        if loc.is_s3:
            data = store.read_bytes(uri)
            data = gzip.decompress(data) if uri.endswith(".gz") else data
            image = nib.Nifti1Image.from_bytes(data)
        else:
            image = nib.load(loc.path)
        array = np.asarray(image.dataobj, dtype=np.float32)
    except (OSError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"cannot read image {uri}: {exc}") from exc
    return np.moveaxis(array, -1, 0) if array.ndim == 3 else array


def check_shards(dataset_len: int, processes: int, what: str) -> None:
    """Refuse more processes than samples: each process needs at least one.

    Args:
        dataset_len: Samples in the split.
        processes: Processes that each take a shard.
        what: The split, for the message (e.g. ``"train split of s3://bucket/set"``).

    Raises:
        InputError: More processes than data shards.
    """
    if processes > dataset_len:
        raise InputError(
            f"more processes than data shards: {what} has {dataset_len} sample(s) but the run "
            f"has {processes} processes; each process needs at least one sample"
        )


# --- writing sets -----------------------------------------------------------------------------


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32))
    return buffer.getvalue()


def _write_manifest(dest: str, manifest: Manifest, store: ObjectStore) -> str:
    return store.write_text(join_uri(dest, MANIFEST), manifest.model_dump_json(indent=1))


def smooth_images(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random smooth images in [0, 1]: sums of 3 to 6 Gaussian blobs, shape (count, size, size)."""
    grid = np.linspace(-1, 1, size)
    x, y = grid[None, None, :, None], grid[None, None, None, :]
    blobs = 6
    centre = rng.uniform(-0.7, 0.7, (count, blobs, 2, 1, 1))
    width = rng.uniform(0.1, 0.5, (count, blobs, 1, 1))
    amplitude = rng.uniform(0.2, 1.0, (count, blobs, 1, 1))
    amplitude *= np.arange(blobs)[None, :, None, None] < rng.integers(
        3, blobs + 1, (count, 1, 1, 1)
    )
    distance2 = (x - centre[:, :, 0]) ** 2 + (y - centre[:, :, 1]) ** 2
    images = (amplitude * np.exp(-distance2 / (2 * width**2))).sum(axis=1)
    return images / images.max(axis=(1, 2), keepdims=True)


def write_synthetic_set(
    dest: str,
    train: int = 64,
    validation: int = 16,
    size: int = 32,
    noise: float = 0.1,
    seed: int = 0,
    store: ObjectStore | None = None,
) -> str:
    """Write a set of (noisy, clean) pairs of random smooth images, for tests and benchmarks.

    Args:
        dest: Directory or S3 prefix of the set.
        train: Train pairs.
        validation: Validation pairs.
        size: Images are ``(1, size, size)``.
        noise: Std of the Gaussian noise added to the clean image (in [0, 1] units).
        seed: Same seed, same set.
        store: Storage client; a new one if omitted.

    Returns:
        The URI of ``manifest.json``.
    """
    if train < 1 or validation < 0 or size < 1 or noise < 0:
        raise InputError(
            f"write_synthetic_set(train={train}, validation={validation}, size={size}, "
            f"noise={noise}); expected train >= 1, validation >= 0, size >= 1, noise >= 0"
        )
    store = store or ObjectStore()
    rng = np.random.default_rng(seed)
    clean = smooth_images(train + validation, size, rng)
    noisy = clean + noise * rng.standard_normal(clean.shape)
    samples = []
    for i in range(len(clean)):
        pair = Sample(input=f"{SAMPLES}/{i:05d}_input.npy", target=f"{SAMPLES}/{i:05d}_target.npy")
        store.write_bytes(join_uri(dest, pair.input), _npy(noisy[i][None]))
        store.write_bytes(join_uri(dest, pair.target), _npy(clean[i][None]))
        samples.append(pair)
    manifest = Manifest(
        format=FORMAT,
        version=1,
        channels=1,
        shape=(size, size),
        train=samples[:train],
        validation=samples[train:],
        sources=[f"synthetic:seed={seed},noise={noise}"],
    )
    return _write_manifest(dest, manifest, store)


def _normalise(images: np.ndarray, where: str) -> list[np.ndarray]:
    """Each slice of (H, W, slices) over its 99.5th percentile, clipped to [0, 1]; empty ones go."""
    out = []
    for k in range(images.shape[-1]):
        image = np.nan_to_num(images[..., k].astype(np.float64))
        scale = np.percentile(image, 99.5)
        if scale > 0:
            out.append(np.clip(image / scale, 0, 1))
    if not out:
        raise InputError(f"{where} has no slice with signal; expected a non-zero image")
    return out


def _reconstruction_images(uri: str, store: ObjectStore) -> list[np.ndarray]:
    """Slices of a mr_reconstruction output's SNR map."""
    import nibabel as nib

    path = join_uri(uri, SNR_NAME)
    image = nib.Nifti1Image.from_bytes(gzip.decompress(store.read_bytes(path)))
    volume = np.asarray(image.dataobj, dtype=np.float64)
    volume = volume[..., None] if volume.ndim == 2 else volume.reshape(*volume.shape[:2], -1)
    return _normalise(volume, path)


def _simulation_images(uri: str, store: ObjectStore) -> list[np.ndarray]:
    """Root-sum-of-squares magnitude slices of a multinode_simulation MRD file."""
    from tasks.mr.fft import ifft2c
    from tasks.mr.io import read_raw

    loc = Location.parse(uri)
    with tempfile.TemporaryDirectory() as scratch:
        path = loc.path if not loc.is_s3 else store.download_file(uri, Path(scratch) / "raw.h5")
        raw = read_raw(Path(path))
    # Averaging replicas in k-space raises the target's SNR; (x, y, coils, slices).
    coils = ifft2c(raw.signal.mean(axis=4))
    rss = np.sqrt((np.abs(coils) ** 2).sum(axis=2))
    return _normalise(rss, uri)


def _source_images(source: str, store: ObjectStore) -> tuple[str, list[np.ndarray]]:
    """Clean images of one source and the URI they were read from."""
    if source.endswith((".h5", ".mrd")):
        if not store.exists(source):
            raise InputError(f"training source {source} does not exist; expected an MRD file")
        return source, _simulation_images(source, store)
    names = set(store.walk(source))
    if SNR_NAME in names:
        return source, _reconstruction_images(source, store)
    if SIMULATION_NAME in names:
        raw = join_uri(source, SIMULATION_NAME)
        return raw, _simulation_images(raw, store)
    raise InputError(
        f"training source {source} is neither a mr_reconstruction output (a directory "
        f"with {SNR_NAME}) nor a multinode_simulation output ({SIMULATION_NAME} or its "
        "directory)"
    )


def _resample(image: np.ndarray, size: int) -> np.ndarray:
    tensor = torch.from_numpy(image)[None, None]
    out = torch.nn.functional.interpolate(
        tensor, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0, 0].clamp(0, 1).numpy()  # antialiased weights are non-negative: stays in [0, 1]


def _variants(image: np.ndarray, augment: bool) -> list[np.ndarray]:
    """The image, and with ``augment`` its rotations and flips (8; 4 when not square)."""
    if not augment:
        return [image]
    turns = (0, 1, 2, 3) if image.shape[0] == image.shape[1] else (0, 2)
    rotated = [np.rot90(image, k) for k in turns]
    return rotated + [np.flip(r, axis=1) for r in rotated]


def build_training_set(
    sources: list[str],
    dest: str,
    *,
    noise_levels: Sequence[float] = (0.05, 0.1, 0.2),
    validation_fraction: float = 0.2,
    augment: bool = True,
    size: int | None = None,
    seed: int = 0,
    store: ObjectStore | None = None,
) -> str:
    """Write (low-SNR input, high-SNR target) pairs made from the project's flow outputs.

    Each 2-D slice of a source, normalised by its 99.5th percentile to [0, 1], is a target;
    its inputs are ``|target + n|`` with complex Gaussian ``n`` of each std in
    ``noise_levels`` (Rician, as magnitude images are). Train and validation are split by
    source slice, so validation images are unseen in any variant.

    Args:
        sources: ``mr_reconstruction`` output directories (holding ``SNR.nii.gz``), and
            ``multinode_simulation`` MRD files (``simulation.h5`` or its directory).
        dest: Directory or S3 prefix for the set.
        noise_levels: Noise stds, in units of the normalised target.
        validation_fraction: Share of source slices held out for validation.
        augment: Also write the rot90 x flip variants of each slice.
        size: Resample every slice to ``size x size``; needed when sources differ in shape.
        seed: Same seed, same set.
        store: Storage client; a new one if omitted.

    Returns:
        The URI of ``manifest.json`` (written last).

    Raises:
        InputError: An unrecognised or empty source, sources of different shapes without
            ``size``, or invalid levels/fraction.
    """
    if not sources or not noise_levels or min(noise_levels) < 0:
        raise InputError(
            f"sources={sources!r}, noise_levels={list(noise_levels)}; expected at least one "
            "source and at least one non-negative noise level"
        )
    if not 0 <= validation_fraction < 1 or (size is not None and size < 1):
        raise InputError(
            f"validation_fraction={validation_fraction}, size={size}; expected "
            "0 <= validation_fraction < 1 and size >= 1"
        )
    store = store or ObjectStore()
    images: list[tuple[str, int, np.ndarray]] = []  # (source, slice, image)
    shapes: dict[tuple[int, ...], str] = {}
    read_from = []
    for source in sources:
        uri, slices = _source_images(source, store)
        read_from.append(uri)
        for k, image in enumerate(slices):
            image = _resample(image, size) if size else image
            shapes.setdefault(image.shape, uri)
            images.append((uri, k, image))
    if len(shapes) > 1:
        (a, first), (b, second) = list(shapes.items())[:2]
        raise InputError(
            f"training sources differ in shape: {first} has {a}, {second} has {b}; "
            "expected one shape: pass size=... to resample them"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    held_out = round(validation_fraction * len(images))
    if validation_fraction > 0 and len(images) > 1:
        held_out = min(max(held_out, 1), len(images) - 1)  # both splits non-empty
    validation_ids = set(order[:held_out].tolist())
    splits: dict[str, list[Sample]] = {"train": [], "validation": []}
    for i, (uri, k, clean) in enumerate(images):
        split = "validation" if i in validation_ids else "train"
        for v, target in enumerate(_variants(clean, augment)):
            stem = f"{SAMPLES}/{i:05d}_v{v}"
            store.write_bytes(join_uri(dest, f"{stem}_target.npy"), _npy(target[None]))
            for level, std in enumerate(noise_levels):
                noise = rng.standard_normal((2, *target.shape)) * std
                noisy = np.hypot(target + noise[0], noise[1])
                name = f"{stem}_n{level}.npy"
                store.write_bytes(join_uri(dest, name), _npy(noisy[None]))
                splits[split].append(
                    Sample(input=name, target=f"{stem}_target.npy", source=f"{uri}#slice={k}")
                )
    (shape,) = shapes
    manifest = Manifest(
        format=FORMAT, version=1, channels=1, shape=shape, sources=read_from, **splits
    )
    return _write_manifest(dest, manifest, store)
