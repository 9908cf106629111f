"""MR reconstruction and SNR mapping: what MR Optimum computes, as a Prefect flow.

signal (+ noise) → stage → estimate → noise statistics → SNR per slice batch (Dask) → maps,
previews and info.json in the run directory → summary artifact.

3-D Cartesian data (MRD partitions, NumPy/MATLAB ``layout="volume"``) arrive from
``readers.read_raw`` in hybrid space, ``(y, z, coils, x, replicas)``: the "slices" are the x
positions, each an in-plane (y, z) problem with the header's acceleration ``(R_y, R_z)`` and
calibration block. ``options.slices`` then counts x positions; the maps are stacked as
``(y, z, x)`` and written as ``(x, y, z)`` (``readers.maps_as_volume``), previews show the
central z plane.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from prefect import task
from pydantic import BaseModel, Field

from blocks.compute_unit import SizeClass, load_unit
from tasks.compute.dask import dask_task_runner
from tasks.compute.hooks import sciflow_flow
from tasks.compute.run_context import RunContext
from tasks.errors import InputError
from tasks.mr import export, readers
from tasks.mr.estimate import JobEstimate, estimate_job
from tasks.mr.noise import (
    noise_bandwidth,
    noise_coefficient,
    noise_covariance,
    signal_noise_covariance,
)
from tasks.mr.options import MrOptions, parse_job
from tasks.mr.snr import SnrMaps, flip_angle_corrected, snr_map
from tasks.progress import Progress, publish_summary, run_logger
from tasks.retry import transient_retries
from tasks.storage.objects import Location

# Slices per Dask task: enough work per task to hide scheduling, few enough to spread.
SLICES_PER_TASK = 4


class MrResult(BaseModel):
    """Where the maps are and the numbers a person looks at first."""

    output: str = Field(description="URI of the directory holding every output.")
    snr: str = Field(description="URI of SNR.nii.gz.")
    previews: dict[str, str] = Field(description="Map name to the URI of its PNG preview.")
    info: str = Field(description="URI of info.json.")
    median_snr: float = Field(description="Median SNR inside the mask over all slices.")
    mean_g: float | None = Field(None, description="Mean g-factor inside the mask, if computed.")


@task(**transient_retries())
def stage_input(uri: str, run: RunContext) -> str:
    """A local path for ``uri``: local files as they are, S3 objects copied to scratch."""
    loc = Location.parse(uri)
    if not loc.is_s3:
        if not loc.path.is_file():
            raise InputError(f"cannot read {uri}: no such file")
        return str(loc.path)
    target = run.scratch / "inputs" / Path(loc.key).name
    if not target.exists():
        run.store.download_file(uri, target)
    return str(target)


@task
def estimate(signal_path: str, options: MrOptions, key: str | None) -> JobEstimate:
    """Memory and time from the header alone, to pick a size class."""
    _, shape = readers.read_info(Path(signal_path), key=key, layout=options.layout)
    return estimate_job(shape, options)


@task
def noise_statistics(
    signal_path: str, noise_path: str | None, key: str | None, convention: str, layout: str
) -> dict[str, Any]:
    """Noise covariance referred to the signal's sampling, its coefficients and NBW."""
    raw = readers.read_raw(
        Path(signal_path), Path(noise_path) if noise_path else None, key=key, layout=layout
    )
    info = raw.info
    coils = raw.signal.shape[2]
    if raw.noise is None:
        # MR Optimum: with no noise at all, Psi = I.
        return {"noise_cov": np.eye(coils, dtype=np.complex128), "nbw": None, "samples": 0}
    measured = noise_covariance(raw.noise)
    nbw = noise_bandwidth(raw.noise_by_readout())
    referred = signal_noise_covariance(
        measured,
        noise_dwell_s=info.noise_dwell_s,
        signal_dwell_s=info.signal_dwell_s,
        oversampling_removed=info.oversampling_removed,
        nbw=nbw,
        convention=convention,
    )
    return {
        "noise_cov": referred,
        "measured_cov": measured,
        "nbw": nbw,
        "samples": int(raw.noise.shape[0]),
    }


@task(**transient_retries())
def snr_for_slices(
    signal_path: str, key: str | None, slices: list[int], noise_cov: np.ndarray, options: MrOptions
) -> list[SnrMaps]:
    """SNR maps for a batch of slices (replicas vectorised inside each slice)."""
    raw = readers.read_raw(Path(signal_path), key=key, layout=options.layout)
    header_acl = raw.info.acs_block or ((None, raw.info.acs_lines) if raw.info.acs_lines else None)
    recon_spec = options.recon_spec(
        header_acceleration=raw.info.acceleration, header_acl=header_acl
    )
    snr_spec = options.snr_spec()
    maps = []
    for index in slices:
        kspace = raw.signal[:, :, :, index, :]
        kspace = kspace if snr_spec.method == "mr" else kspace[..., 0]
        maps.append(snr_map(kspace, noise_cov, recon_spec, snr_spec))
    return maps


@task(**transient_retries())
def write_outputs(
    run: RunContext,
    output: str,
    maps: list[SnrMaps],
    stats: dict[str, Any],
    info: readers.AcquisitionInfo,
    options: MrOptions,
    timings: dict[str, float],
    provenance: dict[str, Any],
    slices: list[int],
    flip_angle_path: str | None = None,
) -> MrResult:
    """Write maps, previews and info.json; info.json last, so it marks a complete output.

    ``provenance`` holds the pasted MR Optimum job (``job``) and notes on how it was read
    (``log``), both kept in info.json. ``flip_angle_path`` is a NIfTI flip-angle map in
    degrees for the legacy flip-angle correction.
    """
    root = Location.parse(output)
    store, tags = run.store, run.tags

    def put(name: str, data: bytes) -> str:
        return store.write_bytes(str(root.join(name)), data, tags=tags)

    volume_3d = info.kind == "3d"

    def stacked(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        """Per-slice maps stacked on the last axis; 3-D: (y, z, x) -> (x, y, z)."""
        data = _stack_optional(arrays)
        return readers.maps_as_volume(data) if volume_3d and data is not None else data

    snr = np.stack([m.snr for m in maps], axis=-1)
    snr = readers.maps_as_volume(snr) if volume_3d else snr
    if flip_angle_path is not None:
        flip_angle = np.asarray(nib.load(flip_angle_path).get_fdata())
        if volume_3d:  # (x, y, z) map, x positions selected
            flip_angle = flip_angle[slices]
        else:
            flip_angle = flip_angle.reshape(*flip_angle.shape[:2], -1)[..., slices]
        snr = flip_angle_corrected(snr, flip_angle)
    mask = stacked([m.mask for m in maps])
    inside = mask.astype(bool) if mask is not None else np.ones(snr.shape, dtype=bool)
    outputs: list[dict[str, Any]] = []
    previews: dict[str, str] = {}

    def volume(name: str, data: np.ndarray, kind: str, title: str, label: str) -> str:
        uri = put(f"{name}.nii.gz", export.nifti_bytes(data, info.affine, None))
        outputs.append({"name": name, "filename": f"{name}.nii.gz", "shape": list(data.shape)})
        plane = data[..., data.shape[-1] // 2] if volume_3d else data[..., 0]
        previews[name] = put(
            f"{name}.png", export.map_png(plane, title=title, label=label, kind=kind)
        )
        return uri

    snr_uri = volume("SNR", snr, "snr", f"SNR ({options.method.upper()})", "SNR")
    mean_g = None
    g = stacked([m.g for m in maps])
    if g is not None:
        volume("G", g, "g", "g-factor", "g")
        volume("IG", stacked([m.inverse_g for m in maps]), "g", "1/g", "1/g")
        mean_g = float(np.mean(g[inside])) if inside.any() else None
    if mask is not None:
        volume("mask", mask.astype(np.float32), "mask", "Mask", "inside")
    sens = [m.sensitivities for m in maps]
    if options.coil_sensitivity_output and all(s is not None for s in sens):
        data = np.stack(sens, axis=2)  # (x, y, slices, coils); 3-D: (y, z, x, coils)
        data = readers.maps_as_volume(data) if volume_3d else data
        put("sensitivity.nii.gz", export.sensitivity_nifti_bytes(data, info.affine))
        outputs.append({"name": "sensitivity", "filename": "sensitivity.nii.gz"})

    for name, matrix, kind, title in (
        ("noise_covariance", stats["noise_cov"], "covariance", "Noise covariance |Psi|"),
        (
            "noise_coefficient",
            noise_coefficient(stats["noise_cov"]),
            "coefficient",
            "Noise correlation coefficients |rho|",
        ),
    ):
        put(f"{name}.nii.gz", export.nifti_bytes(np.abs(matrix)[:, :, None], None, None))
        previews[name] = put(f"{name}.png", export.matrix_png(matrix, title=title, kind=kind))
        outputs.append({"name": name, "filename": f"{name}.nii.gz"})

    median_snr = float(np.median(snr[inside])) if inside.any() else 0.0
    info_uri = put(
        "info.json",
        export.info_json(
            options=options.model_dump(mode="json"),
            header=info.summary,
            outputs=outputs,
            timings_s=timings,
            extra={
                **provenance,
                "noise": {
                    "nbw": stats["nbw"],
                    "samples": stats["samples"],
                    "convention": options.convention,
                },
                "median_snr_in_mask": median_snr,
                "mean_g_in_mask": mean_g,
                "run_id": run.run_id,
                **maps[0].info,
            },
        ),
    )
    return MrResult(
        output=str(root),
        snr=snr_uri,
        previews=previews,
        info=info_uri,
        median_snr=median_snr,
        mean_g=mean_g,
    )


def _stack_optional(arrays: list[np.ndarray | None]) -> np.ndarray | None:
    if any(a is None for a in arrays):
        return None
    return np.stack(arrays, axis=-1)


@sciflow_flow(name="mr-reconstruction")
def mr_reconstruction(
    signal: str | None = None,
    noise: str | None = None,
    options: MrOptions | dict[str, Any] | None = None,
    output: str | None = None,
    unit: str = "local",
) -> MrResult:
    """SNR maps (and g-factor, sensitivities, masks) from multi-coil MR raw data.

    Args:
        signal: URI of the raw data (path, file:// or s3://): ISMRMRD/MRD HDF5, Siemens
            twix .dat, NumPy .npy/.npz or MATLAB .mat. Taken from an MR Optimum job in
            ``options`` when not given.
        noise: URI of a separate noise scan; MRD noise acquisitions or the twix
            noise-adjust scan are used when omitted.
        options: Analysis options, or an MR Optimum job (or web GUI job) pasted unchanged.
        output: Where to write; the run directory if omitted.
        unit: Compute unit to run on.
    """
    logger = run_logger()
    job = parse_job(options)
    opts = job.options
    signal = signal or job.signal
    noise = noise or job.noise
    if not signal:
        raise InputError("no signal given: pass `signal` or an MR Optimum job naming one")
    compute_unit = load_unit(unit)
    run = RunContext.current(compute_unit)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    signal_path = stage_input(signal, run)
    noise_path = stage_input(noise, run) if noise else None
    job_estimate = estimate(signal_path, opts, job.key)
    logger.info(
        "estimate: %.2f GiB, %.0f s, size class %s",
        job_estimate.memory_bytes / 2**30,
        job_estimate.seconds,
        job_estimate.size_class,
    )
    timings["stage"] = time.perf_counter() - started

    mark = time.perf_counter()
    stats = noise_statistics(signal_path, noise_path, job.key, opts.convention, opts.layout)
    timings["noise"] = time.perf_counter() - mark

    info, shape = readers.read_info(Path(signal_path), key=job.key, layout=opts.layout)
    slices = opts.slices if opts.slices is not None else list(range(shape[3]))
    if bad := [s for s in slices if not 0 <= s < shape[3]]:
        raise InputError(f"options.slices has {bad}; expected indices below {shape[3]}")
    batches = [slices[i : i + SLICES_PER_TASK] for i in range(0, len(slices), SLICES_PER_TASK)]

    mark = time.perf_counter()
    size: SizeClass = job_estimate.size_class
    maps: list[SnrMaps] = []
    with dask_task_runner(compute_unit, size, run.tags) as runner:
        futures = [
            runner.submit(
                snr_for_slices,
                {
                    "signal_path": signal_path,
                    "key": job.key,
                    "slices": batch,
                    "noise_cov": stats["noise_cov"],
                    "options": opts,
                },
            )
            for batch in batches
        ]
        with Progress(total=len(slices), what="slices", key=f"snr-{run.run_id[:8]}") as bar:
            for batch, future in zip(batches, futures, strict=True):
                maps.extend(future.result())
                bar.advance(len(batch))
    timings["snr"] = time.perf_counter() - mark

    mark = time.perf_counter()
    provenance = {"job": job.job if job.source != "sciflow" else None, "log": job.notes}
    flip_angle_path = stage_input(opts.flip_angle_map, run) if opts.flip_angle_correction else None
    result = write_outputs(
        run,
        output or run.root,
        maps,
        stats,
        info,
        opts,
        timings,
        provenance,
        slices,
        flip_angle_path,
    )
    timings["write"] = time.perf_counter() - mark
    publish_summary(
        "MR reconstruction",
        [
            {"output": name, "preview": uri}
            for name, uri in {"SNR.nii.gz": result.snr, **result.previews}.items()
        ],
        key=f"mr-snr-{unit}",
        notes=(
            f"Median SNR in mask: **{result.median_snr:.1f}**"
            + (f"; mean g: **{result.mean_g:.3f}**" if result.mean_g is not None else "")
            + f"\n\nOptions: `{json.dumps(opts.model_dump(mode='json'))}`"
        ),
    )
    return result
