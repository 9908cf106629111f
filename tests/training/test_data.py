"""Training sets: manifests, streamed datasets locally and on S3, and building from flow outputs."""

from __future__ import annotations

import gc
import gzip
import json
import multiprocessing
import pickle
import re
import tracemalloc
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import boto3
import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tasks.errors import InputError
from tasks.mr.export import nifti_bytes
from tasks.mr.io import write_mrd
from tasks.mr.phantom import make_phantom, phantom_acquisition
from tasks.training.data import (
    ImageDataset,
    Manifest,
    build_training_set,
    check_shards,
    load_manifest,
    write_synthetic_set,
)

BUCKET = "training-sets"


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    """A small local set: 12 train, 4 validation pairs of 16x16 images."""
    write_synthetic_set(str(tmp_path / "set"), train=12, validation=4, size=16, seed=3)
    return tmp_path / "set"


def items(dataset: ImageDataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [dataset[i] for i in range(len(dataset))]


def edit_manifest(root: Path, **changes: object) -> None:
    path = root / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


# --- synthetic sets and the dataset ------------------------------------------------------------


def test_synthetic_set_round_trips(synthetic: Path) -> None:
    manifest = load_manifest(str(synthetic / "manifest.json"))
    assert (manifest.channels, manifest.shape) == (1, (16, 16))
    train, validation = ImageDataset(str(synthetic)), ImageDataset(str(synthetic), "validation")
    assert (len(train), len(validation)) == (12, 4)
    noisy, clean = train[0]
    assert noisy.shape == clean.shape == (1, 16, 16)
    assert noisy.dtype == clean.dtype == torch.float32
    assert clean.min() >= 0
    assert clean.max() == pytest.approx(1.0)
    # The noise has the requested std (0.1) and differs between pairs.
    assert (noisy - clean).std().item() == pytest.approx(0.1, rel=0.3)
    assert not torch.equal(train[1][1], clean)


def test_synthetic_set_is_deterministic_in_seed(tmp_path: Path, synthetic: Path) -> None:
    write_synthetic_set(str(tmp_path / "again"), train=12, validation=4, size=16, seed=3)
    write_synthetic_set(str(tmp_path / "other"), train=12, validation=4, size=16, seed=4)
    first, again = items(ImageDataset(str(synthetic))), items(ImageDataset(str(tmp_path / "again")))
    other = items(ImageDataset(str(tmp_path / "other")))
    for (a_in, a_out), (b_in, b_out) in zip(first, again, strict=True):
        assert torch.equal(a_in, b_in)
        assert torch.equal(a_out, b_out)
    assert not torch.equal(first[0][1], other[0][1])


def test_s3_set_reads_back_equal_to_the_local_one(aws: str, synthetic: Path) -> None:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    uri = write_synthetic_set(f"s3://{BUCKET}/set", train=12, validation=4, size=16, seed=3)
    assert uri == f"s3://{BUCKET}/set/manifest.json"
    for split in ("train", "validation"):
        remote, local = ImageDataset(uri, split), ImageDataset(str(synthetic), split)
        for (r_in, r_out), (l_in, l_out) in zip(items(remote), items(local), strict=True):
            assert torch.equal(r_in, l_in)
            assert torch.equal(r_out, l_out)


def test_nifti_samples_read_locally_and_from_s3(aws: str, tmp_path: Path, rng) -> None:
    image = rng.random((8, 12)).astype(np.float32)
    (tmp_path / "a.nii").write_bytes(gzip.decompress(nifti_bytes(image)))
    (tmp_path / "b.nii.gz").write_bytes(nifti_bytes(2 * image))
    manifest = {
        "format": "sciflow-training-set",
        "version": 1,
        "channels": 1,
        "shape": [8, 12],
        "train": [{"input": "a.nii", "target": "b.nii.gz"}],
        "validation": [],
        "sources": ["test"],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    for name in ("a.nii", "b.nii.gz", "manifest.json"):
        boto3.client("s3").upload_file(str(tmp_path / name), BUCKET, f"nifti/{name}")
    for uri in (str(tmp_path), f"s3://{BUCKET}/nifti"):
        noisy, clean = ImageDataset(uri)[0]
        np.testing.assert_array_equal(noisy.numpy(), image[None])
        np.testing.assert_array_equal(clean.numpy(), 2 * image[None])


def test_s3_missing_sample_is_found_by_one_listing(aws: str) -> None:
    boto3.client("s3").create_bucket(Bucket=BUCKET)
    write_synthetic_set(f"s3://{BUCKET}/set", train=4, validation=0, size=8)
    boto3.client("s3").delete_object(Bucket=BUCKET, Key="set/samples/00002_target.npy")
    with pytest.raises(InputError, match=rf"s3://{BUCKET}/set/samples/00002_target.npy"):
        load_manifest(f"s3://{BUCKET}/set")


# --- refusals ----------------------------------------------------------------------------------


def test_missing_manifest_names_the_uri(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=rf"no training set at {tmp_path}.*manifest.json"):
        ImageDataset(str(tmp_path))


def test_empty_set_is_refused(synthetic: Path) -> None:
    edit_manifest(synthetic, train=[])
    with pytest.raises(InputError, match=rf"empty data set: {synthetic}/manifest.json"):
        load_manifest(str(synthetic))


def test_missing_sample_file_is_named(synthetic: Path) -> None:
    (synthetic / "samples" / "00003_input.npy").unlink()
    with pytest.raises(InputError, match=r"1 sample file.*samples/00003_input.npy"):
        load_manifest(str(synthetic))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "other"}, r"format='other' is invalid"),
        ({"shape": [16]}, r"shape.* is invalid"),
        ({"train": [{"input": "x.npy"}]}, r"train\.0\.target"),
    ],
)
def test_bad_schema_names_the_manifest_and_field(synthetic: Path, change, message) -> None:
    edit_manifest(synthetic, **change)
    with pytest.raises(InputError, match=rf"manifest {synthetic}/manifest.json is invalid.*"):
        load_manifest(str(synthetic))
    with pytest.raises(InputError, match=message):
        load_manifest(str(synthetic))


def test_invalid_json_is_refused(synthetic: Path) -> None:
    (synthetic / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match=r"manifest.json is not valid JSON"):
        load_manifest(str(synthetic))


def test_shape_mismatched_file_names_file_and_shapes(synthetic: Path) -> None:
    np.save(synthetic / "samples" / "00001_target.npy", np.zeros((1, 16, 12), np.float32))
    dataset = ImageDataset(str(synthetic))
    dataset[0]  # the others still load
    with pytest.raises(
        InputError, match=r"mismatched data set: .*00001_target.npy .*\(1, 16, 12\).*\(1, 16, 16\)"
    ):
        dataset[1]


def test_check_shards_needs_a_sample_per_process() -> None:
    check_shards(4, 4, "train split")
    with pytest.raises(InputError, match=r"more processes than data shards: train split has 3 .*4"):
        check_shards(3, 4, "train split")


# --- streaming ---------------------------------------------------------------------------------


def iteration_memory(dataset: ImageDataset, reads: int = 256) -> tuple[int, int]:
    """Peak traced bytes while reading ``reads`` items (cycling), and bytes still held after.

    One read first warms lazy imports. numpy's header parser (``ast.literal_eval``) leaves
    small garbage cycles per read that the collector frees on its own schedule; with the same
    number of reads for every set that garbage is alike, and only cached pixels (the whole
    set) would differ.
    """
    dataset[0]
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(reads):
            dataset[i % len(dataset)]
        gc.collect()
        retained, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, retained


def _small_and_large_memory(small_set: str, large_set: str) -> tuple[int, int, int]:
    small, large = ImageDataset(small_set), ImageDataset(large_set)
    iteration_memory(small)  # one-time costs (imports, first allocations) land here
    (small_peak, _), (large_peak, large_retained) = iteration_memory(small), iteration_memory(large)
    return small_peak, large_peak, large_retained


def test_memory_does_not_grow_with_the_set(tmp_path: Path) -> None:
    small, large = (
        ImageDataset(write_synthetic_set(str(tmp_path / str(n)), train=n, validation=0))
        for n in (16, 256)
    )
    data_bytes = 256 * 2 * 32 * 32 * 4  # 2 MiB: what caching the large set would hold
    # Measured in a fresh process: tracemalloc counts every thread, and this one holds the
    # Prefect harness's, whose allocations came and went with earlier tests' events.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        small_peak, large_peak, large_retained = pool.submit(
            _small_and_large_memory, small.root, large.root
        ).result()
    assert large_peak < small_peak + data_bytes / 16
    assert large_retained < 16 * 1024
    # Pickles hold the manifest (paths), never pixels: ~100 bytes a sample.
    growth = len(pickle.dumps(large)) - len(pickle.dumps(small))
    assert growth < 240 * 200 < data_bytes / 10


def test_dataloader_workers_yield_every_sample_once(synthetic: Path) -> None:
    dataset = ImageDataset(str(synthetic))
    expected = {tuple(target.flatten()[:8].tolist()) for _, target in items(dataset)}
    # spawn: forking this pytest process, which holds the Prefect harness's threads, kills
    # the child (exit 1); training ranks, where loaders run, hold no such threads.
    loader = DataLoader(
        dataset, batch_size=3, num_workers=2, shuffle=True, multiprocessing_context="spawn"
    )
    seen = [tuple(row[:8].tolist()) for _, targets in loader for row in targets.flatten(1)]
    assert len(seen) == len(dataset) == len(set(seen))
    assert set(seen) == expected


def test_dataset_pickles_without_a_client(synthetic: Path, aws: str) -> None:
    """``aws``: a region and endpoint, so creating the client asks no metadata service."""
    dataset = ImageDataset(str(synthetic))
    dataset.store.s3  # noqa: B018 -- create the client, which must not travel
    copy = pickle.loads(pickle.dumps(dataset))  # noqa: S301 -- our own bytes
    assert copy.store._client is None
    assert torch.equal(copy[5][0], dataset[5][0])


# --- building sets from flow outputs -----------------------------------------------------------


def reconstruction_dir(root: Path, slices: int = 3, size: int = 32) -> Path:
    """What mr_reconstruction writes: SNR.nii.gz (x, y, slices) and info.json."""
    x, y = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    snr = np.stack([(k + 1) * 40 * np.exp(-(x**2 + y**2) / 0.3) for k in range(slices)], -1)
    root.mkdir(parents=True)
    (root / "SNR.nii.gz").write_bytes(nifti_bytes(snr))
    (root / "info.json").write_text("{}")
    return root


def simulation_file(root: Path, slices: int = 2, size: int = 32) -> Path:
    """What multinode_simulation writes: simulation.h5, an MRD file of a coil phantom."""
    signal, noise = phantom_acquisition(make_phantom(size, size, 4), slices=slices)
    root.mkdir(parents=True)
    return write_mrd(root / "simulation.h5", signal, noise, fov_mm=(200, 200, 5), dwell_s=1e-5)


def test_build_from_reconstruction_and_simulation(tmp_path: Path) -> None:
    recon = reconstruction_dir(tmp_path / "recon")
    sim = simulation_file(tmp_path / "sim")
    uri = build_training_set(
        [str(recon), str(sim.parent)],
        str(tmp_path / "set"),
        noise_levels=(0.05, 0.2),
        validation_fraction=0.4,
    )
    manifest = load_manifest(uri)
    images, levels, variants = 3 + 2, 2, 8
    assert len(manifest.train) + len(manifest.validation) == images * levels * variants
    assert len(manifest.validation) == 2 * levels * variants  # 40% of 5 source slices
    assert manifest.sources == [str(recon), str(sim)]
    assert (manifest.channels, manifest.shape) == (1, (32, 32))
    train_sources = {s.source for s in manifest.train}
    validation_sources = {s.source for s in manifest.validation}
    assert len(train_sources) == 3
    assert len(validation_sources) == 2
    assert not train_sources & validation_sources
    for split in ("train", "validation"):
        for noisy, clean in items(ImageDataset(uri, split, manifest=manifest)):
            assert noisy.shape == clean.shape == (1, 32, 32)
            assert clean.min() >= 0
            assert 0.9 < clean.max() <= 1
            assert noisy.min() >= 0  # magnitude of target plus complex noise: Rician
    stds = {s.input[-6:]: [] for s in manifest.train}
    dataset = ImageDataset(uri, manifest=manifest)
    for i, sample in enumerate(manifest.train):
        noisy, clean = dataset[i]
        stds[sample.input[-6:]].append((noisy - clean)[clean > 0.5].std().item())
    assert np.mean(stds["n1.npy"]) > 2.5 * np.mean(stds["n0.npy"])  # levels 0.2 vs 0.05


def test_build_is_deterministic_and_variants_are_rotations(tmp_path: Path) -> None:
    recon = reconstruction_dir(tmp_path / "recon", slices=2)
    first = build_training_set([str(recon)], str(tmp_path / "a"), noise_levels=(0.1,), seed=5)
    again = build_training_set([str(recon)], str(tmp_path / "b"), noise_levels=(0.1,), seed=5)
    a, b = ImageDataset(first), ImageDataset(again)
    assert len(a) == len(b) == 8  # one train slice x 8 variants
    for (a_in, a_out), (b_in, b_out) in zip(items(a), items(b), strict=True):
        assert torch.equal(a_in, b_in)
        assert torch.equal(a_out, b_out)
    targets = [target[0] for _, target in items(a)]
    torch.testing.assert_close(targets[1], torch.rot90(targets[0]))
    torch.testing.assert_close(targets[4], torch.flip(targets[0], dims=[1]))


def test_build_without_augment_from_an_mrd_file(tmp_path: Path) -> None:
    sim = simulation_file(tmp_path / "sim", slices=3)
    uri = build_training_set(
        [str(sim)], str(tmp_path / "set"), augment=False, validation_fraction=0.0, size=16
    )
    manifest = load_manifest(uri)
    assert (len(manifest.train), len(manifest.validation), manifest.shape) == (9, 0, (16, 16))
    # The phantom is a disc: the centre is bright, the corner is background.
    _, clean = ImageDataset(uri)[0]
    assert clean[0, 8, 8] > 0.5 > clean[0, 0, 0]


def test_sources_of_different_shapes_need_a_size(tmp_path: Path) -> None:
    recon = reconstruction_dir(tmp_path / "recon", size=32)
    sim = simulation_file(tmp_path / "sim", size=24)
    dest = str(tmp_path / "set")
    with pytest.raises(InputError, match=r"\(32, 32\).*\(24, 24\).*size="):
        build_training_set([str(recon), str(sim)], dest)
    assert not (tmp_path / "set").exists()
    uri = build_training_set([str(recon), str(sim)], dest, size=16, augment=False)
    assert load_manifest(uri).shape == (16, 16)
    assert ImageDataset(uri)[0][1].shape == (1, 16, 16)


def test_bad_source_is_named(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hi")
    with pytest.raises(InputError, match=rf"training source {tmp_path}/other is neither.*SNR"):
        build_training_set([str(tmp_path / "other")], str(tmp_path / "set"))
    with pytest.raises(InputError, match=r"missing.h5 does not exist"):
        build_training_set([str(tmp_path / "missing.h5")], str(tmp_path / "set"))


def test_manifest_model_requires_format_and_version() -> None:
    with pytest.raises(ValueError, match="format"):
        Manifest.model_validate({"channels": 1, "shape": [4, 4], "train": [], "validation": []})


def test_nifti_sample_slices_stay_readable(tmp_path: Path) -> None:
    # A (H, W, C) NIfTI is channels-last on disk and (C, H, W) in the dataset.
    volume = np.arange(4 * 6 * 2, dtype=np.float32).reshape(4, 6, 2)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), tmp_path / "v.nii.gz")
    manifest = Manifest(
        format="sciflow-training-set",
        version=1,
        channels=2,
        shape=(4, 6),
        train=[{"input": "v.nii.gz", "target": "v.nii.gz"}],
        validation=[],
    )
    (tmp_path / "manifest.json").write_text(manifest.model_dump_json())
    noisy, _ = ImageDataset(str(tmp_path))[0]
    np.testing.assert_array_equal(noisy.numpy(), np.moveaxis(volume, -1, 0))


@pytest.mark.parametrize("name", ["/etc/hosts.npy", "../other-set/samples/x.npy", "./x.npy"])
def test_a_sample_path_leading_out_of_the_set_is_refused(synthetic: Path, name: str) -> None:
    """Guards against a manifest naming files outside its set (absolute or with '..')."""
    edit_manifest(synthetic, train=[{"input": name, "target": "samples/00000_target.npy"}])
    with pytest.raises(InputError, match=rf"train\.0\.input.*file path '{re.escape(name)}'"):
        load_manifest(str(synthetic))
