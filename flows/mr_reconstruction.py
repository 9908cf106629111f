"""MR reconstruction and SNR mapping: what MR Optimum computes, as a Prefect flow.

signal → stage → estimate (a job past the unit's largest class stops here) → noise →
noise statistics → SNR per slice batch (Dask; each task reads only its own slices) → maps,
previews and info.json in the run directory → summary artifact.

The Dask workers read the signal by URI, never by the flow host's path: on an AWS unit they
run on Fargate and see nothing of the flow host's disk. A file that can be read by slice as
it is (``.npy``, 2-D MRD) is read from where it is (``s3://``); anything else is staged once
and the staged copy put in the run directory. A worker fetches the file into its own scratch
once, then reads only its batch.

3-D Cartesian data (MRD and twix partitions, NumPy/MATLAB ``layout="volume"``) arrive from
``tasks.mr.io.read_raw`` in hybrid space, ``(y, z, coils, x, replicas)``: the "slices" are the x
positions, each an in-plane (y, z) problem with the header's acceleration ``(R_y, R_z)`` and
calibration block. ``options.slices`` then counts x positions (of every slab, one slab after
another, for multi-slab MRD); the maps are stacked as ``(y, z, x)`` and written as
``(x, y, z)``, slabs stacked along z (``tasks.mr.io.maps_as_volume``), previews show the
central z plane. Calibration-only MRD readouts (a separate reference scan) are read by slice
too and are each slice's reference for the coil maps and the GRAPPA calibration.

Credentials: the Prefect server stores a run's parameters when the run is created (by the UI,
``run_deployment``, the CLI, or the engine for a direct call), before any code of ours runs,
and keeps them for anyone who may read the run. So a job with a bearer token or presigned URL
must not be pasted at all: the flow's first statement refuses one (``refuse_pasted_credentials``),
naming its JSON path, before anything is read, written or started. That is the earliest point
that does not itself leak: a pydantic validator on the parameter runs slightly earlier (in
Prefect's parameter validation, before the run turns Running), but a ``ValueError`` there makes
Prefect log the validation errors with their inputs and the whole parameters dict, the token
included; and the server's own schema check cannot express "no secret at any depth" (it
refuses recursive schemas). A job passed by URI (``job="s3://bucket/job.json"``) is read by
the ``read_job`` task and has its credentials dropped before it is parsed, so ``info.json``,
logs and artifacts never see them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from prefect import task
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from blocks.compute_unit import SizeClass, load_unit
from tasks.compute.dask import dask_task_runner
from tasks.compute.hooks import sciflow_flow
from tasks.compute.run_context import RunContext
from tasks.compute.spending import check_run_cost, check_spending
from tasks.errors import AlreadyExists, InputError
from tasks.forms import JSON_BOX
from tasks.mr import export
from tasks.mr.estimate import JobEstimate, estimate_job
from tasks.mr.io import AcquisitionInfo, read_info, read_raw
from tasks.mr.io.slices import SliceSource, read_reference, read_slices, slice_source
from tasks.mr.noise import Convention, NoiseStatistics
from tasks.mr.noise import noise_statistics as referred_noise
from tasks.mr.options import (
    MrOptions,
    ParsedJob,
    is_job_uri,
    load_job,
    parse_job,
    refuse_pasted_credentials,
)
from tasks.mr.snr import SnrMaps, snr_map
from tasks.progress import Progress, publish_summary, run_logger
from tasks.retry import transient_retries
from tasks.storage.access import Access
from tasks.storage.objects import Location, staged_name
from tasks.storage.transfer import put_once

# Slices per Dask task: enough work per task to hide scheduling, few enough to spread.
SLICES_PER_TASK = 4
INFO_NAME = "info.json"  # written last: a finished output's record
# The size classes an SNR job runs in (``JobEstimate.size_class``).
MR_SIZES: tuple[SizeClass, ...] = ("small", "large")
DEFAULT_OPTIONS = MrOptions()


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
    """A local path for ``uri``: local files as they are, S3 objects copied to scratch.

    The copy is named by the whole URI (``staged_name``): a signal and a noise file with the
    same basename in two prefixes stay two files.
    """
    loc = Location.parse(uri)
    if not loc.is_s3:
        if not loc.path.is_file():
            raise InputError(f"cannot read {uri}: no such file")
        return str(loc.path)
    target = run.scratch / "inputs" / staged_name(uri)
    if not target.exists():
        run.store.download_file(uri, target)
    return str(target)


@task(**transient_retries())
def read_job(uri: str, run: RunContext) -> ParsedJob:
    """The MR Optimum job in file ``uri``, its credentials dropped (``load_job``)."""
    return load_job(uri, run.store.read_bytes)


@task
def estimate(signal_path: str, options: MrOptions, key: str | None) -> JobEstimate:
    """Memory and time from the header alone, to pick a size class."""
    _, shape = read_info(Path(signal_path), key=key, layout=options.layout)
    return estimate_job(shape, options)


# Results derived from a patient's data stay in memory: never written to Prefect's result storage.
@task(persist_result=False)
def noise_statistics(
    signal_path: str, noise_path: str | None, key: str | None, convention: Convention, layout: str
) -> NoiseStatistics:
    """Noise covariance referred to the signal's sampling, its coefficients and NBW."""
    raw = read_raw(
        Path(signal_path), Path(noise_path) if noise_path else None, key=key, layout=layout
    )
    oversampled = None  # no noise scan: the readout margins, read with oversampling kept
    info = raw.info
    if (
        raw.noise is None
        and info.oversampling_removed
        and info.kind == "2d"
        and convention != "mroptimum"
    ):
        kept = read_raw(Path(signal_path), key=key, layout=layout, remove_oversampling=False)
        oversampled = kept.signal
    return referred_noise(raw, convention, oversampled=oversampled)


@dataclass(frozen=True, slots=True)
class SharedSlices:
    """The slice file as every Dask worker reaches it: by URI.

    Attributes:
        uri: The file: a local path on a local unit (the workers are this process's
            threads); on an AWS unit the ``s3://`` input itself or its staged copy in the
            run directory.
        source: How to read it (reader, shape, MRD group); its ``path`` is the flow host's
            copy and means nothing on a worker.
        reference_uri: The staged calibration reference (``SliceSource.reference``) as the
            workers reach it, when it is a file of its own; None otherwise.
    """

    uri: str
    source: SliceSource
    reference_uri: str | None = None


@task(**transient_retries())
def stage_slices(
    signal: str, signal_path: str, key: str | None, layout: str, run: RunContext
) -> SharedSlices:
    """Where the slice batches read from: the file itself, or a copy staged once.

    ``.npy`` and 2-D MRD files are read by slice as they are; other formats and 3-D data are
    staged as one ``.npy`` (``tasks.mr.io.slices``). On an AWS unit a file not already on
    S3 goes to the run directory, so nothing the workers read lives only on this machine.
    """
    source = slice_source(Path(signal_path), run.scratch / "staged", key=key, layout=layout)
    own_reference = source.reference is not None and source.reference != source.path
    if run.unit.is_local:
        return SharedSlices(
            str(source.path), source, str(source.reference) if own_reference else None
        )
    reference_uri = None
    if own_reference and source.reference is not None:
        reference_uri = run.uri("staged", source.reference.name)
        if not run.store.exists(reference_uri):
            run.store.upload_file(source.reference, reference_uri, tags=run.tags)
    if source.path == Path(signal_path) and Location.parse(signal).is_s3:
        return SharedSlices(signal, source, reference_uri)
    uri = run.uri("staged", source.path.name)
    if not run.store.exists(uri):
        run.store.upload_file(source.path, uri, tags=run.tags)
    return SharedSlices(uri, source, reference_uri)


def local_slices(shared: SharedSlices, run: RunContext) -> SliceSource:
    """The slice source on this machine: a local file as it is, an S3 one fetched once.

    The copy goes to this machine's scratch under a name made from the URI, so the worker's
    next batch reads it again rather than fetching it again. It is not the flow host's staged
    input: sharing that file with the workers' threads crashed h5py in the local run.
    """

    def fetched(uri: str) -> Path:
        loc = Location.parse(uri)
        if not loc.is_s3:
            return loc.path
        local = run.scratch / "slices" / staged_name(uri)
        if not local.exists():
            run.store.download_file(uri, local)
        return local

    path = fetched(shared.uri)
    reference = shared.source.reference
    if shared.reference_uri:  # a staged file of its own
        reference = fetched(shared.reference_uri)
    elif reference is not None and shared.source.reader == "mrd":  # the MRD file itself
        reference = path
    return replace(shared.source, path=path, reference=reference)


@task(persist_result=False, **transient_retries())
def snr_for_slices(
    shared: SharedSlices,
    slices: list[int],
    noise_cov: np.ndarray,
    options: MrOptions,
    header: AcquisitionInfo,
    run: RunContext,
) -> list[SnrMaps]:
    """SNR maps for a batch of slices, reading only those (replicas vectorised per slice).

    A calibration reference in the file (separately acquired calibration readouts) is the
    reference for the coil maps and the GRAPPA calibration.
    """
    source = local_slices(shared, run)
    signal = read_slices(source, slices)
    reference = read_reference(source, slices)
    header_acl = header.acs_block or ((None, header.acs_lines) if header.acs_lines else None)
    recon_spec = options.recon_spec(header_acceleration=header.acceleration, header_acl=header_acl)
    snr_spec = options.snr_spec()
    maps = []
    for index in range(len(slices)):
        kspace = signal[:, :, :, index, :]
        kspace = kspace if snr_spec.method == "mr" else kspace[..., 0]
        ref = None if reference is None else reference[:, :, :, index]
        maps.append(snr_map(kspace, noise_cov, recon_spec, snr_spec, reference=ref))
    return maps


def refuse_another_result(run: RunContext, output: str, options: MrOptions) -> None:
    """Refuse, before any work, an ``output`` whose info.json records other options.

    Every file is compared again when written (``put_once``); this catches the usual case,
    another job sent into a finished output, before anything is read or computed.

    Raises:
        AlreadyExists: The output holds the result of a job with other options.
    """
    uri = str(Location.parse(output).join(INFO_NAME))
    if not run.store.exists(uri):
        return
    try:
        recorded = json.loads(run.store.read_bytes(uri))["sciflow"]["options"]
    except (ValueError, KeyError, TypeError):
        recorded = None
    wanted = json.loads(json.dumps(options.model_dump(mode="json")))
    if recorded == wanted:
        return
    if isinstance(recorded, dict):
        keys = sorted(
            k for k in recorded.keys() | wanted.keys() if recorded.get(k) != wanted.get(k)
        )
        what = ", ".join(f"{k}={recorded.get(k)!r} (this job: {wanted.get(k)!r})" for k in keys)
    else:
        what = "options it does not record"
    raise AlreadyExists(
        f"cannot write {uri}: it holds the result of a job with {what}; outputs are written "
        "once, so choose another output"
    )


@task(**transient_retries())
def write_outputs(
    run: RunContext,
    output: str,
    maps: list[SnrMaps],
    stats: NoiseStatistics,
    info: AcquisitionInfo,
    options: MrOptions,
    timings: dict[str, float],
    provenance: dict[str, Any],
    slices: list[int],
    flip_angle_path: str | None = None,
) -> MrResult:
    """Maps, previews and info.json under ``output`` (``export.write_snr_outputs``), each once.

    Every file is written with ``put_once``: a retry writes the same bytes and succeeds, a
    different result is refused rather than overwrite another run's. An info.json that
    differs only in the run id and timings is kept: the rerun found its result already there.
    """
    root = Location.parse(output)

    def put(name: str, data: bytes) -> str:
        uri = str(root.join(name))
        try:
            return put_once(run.store, uri, data, tags=run.tags)
        except AlreadyExists:
            if name != INFO_NAME or not export.same_result(run.store.read_bytes(uri), data):
                raise
            run_logger().info("%s already holds this result from an earlier run; kept", uri)
            return uri

    written = export.write_snr_outputs(
        put, maps, stats, info, options, timings, provenance, slices, run.run_id, flip_angle_path
    )
    return MrResult(
        output=str(root),
        snr=written.snr,
        previews=written.previews,
        info=written.info,
        median_snr=written.median_snr,
        mean_g=written.mean_g,
    )


def job_or_options(options: MrOptions | dict[str, Any] | str | None, job: Any) -> Any:
    """What the run parses: ``job`` when given, else ``options``.

    A form submitted from the UI carries the options form too, so options equal to the
    defaults do not count as given alongside a job.

    Raises:
        InputError: Both ``job`` and options other than the defaults are given.
    """
    if job in (None, "", {}):
        return options
    if options in (None, "", {}) or options == MrOptions():
        return job
    raise InputError("both job and options are given; expected one: a job brings its own options")


def check_reach(
    access: Access, signal: str | None, noise: str | None, job: ParsedJob, output: str | None
) -> None:
    """Refuse any file the run would read or write outside what its unit may reach.

    Called before anything is staged: the signal and noise (the parameters, else those the
    job in ``options`` names), the flip-angle map, and ``output``.
    """
    for name, given, named in (("signal", signal, job.signal), ("noise", noise, job.noise)):
        if given or named:
            access.check_read(given or named, name if given else f"options (MR Optimum job) {name}")
    opts = job.options
    if opts.flip_angle_correction and opts.flip_angle_map:
        access.check_read(opts.flip_angle_map, "options.flip_angle_map")
    if output:
        access.check_write(output, "output")


# An MR Optimum job: a JSON object pasted unchanged, or the quoted URI of a job file; one JSON
# box takes either (a job's keys vary by version).
PastedJob = Annotated[dict[str, Any] | str | None, JSON_BOX]


@sciflow_flow(name="mr-reconstruction")
def mr_reconstruction(
    signal: str | SkipJsonSchema[None] = "",
    noise: str | SkipJsonSchema[None] = "",
    options: MrOptions | SkipJsonSchema[dict[str, Any] | str | None] = DEFAULT_OPTIONS,
    output: str | SkipJsonSchema[None] = "",
    unit: str = "local",
    job: PastedJob = None,
) -> MrResult:
    """SNR maps (and g-factor, sensitivities, masks) from multi-coil MR raw data.

    Args:
        signal: URI of the raw data (path, file:// or s3://): ISMRMRD/MRD HDF5, Siemens
            twix .dat, NumPy .npy/.npz or MATLAB .mat. Taken from the MR Optimum job when
            empty.
        noise: URI of a separate noise scan; MRD noise acquisitions or the twix
            noise-adjust scan are used when empty.
        options: Analysis options (the form). From Python, ``options`` also takes what
            ``job`` takes.
        output: Where to write; the run directory if empty.
        unit: Compute unit to run on.
        job: An MR Optimum job (or web GUI job) pasted unchanged, or the URI of a job file
            (``s3://bucket/job.json`` or a local ``.json`` path), instead of ``options``. A
            pasted job that carries a credential (bearer token, presigned URL) is refused;
            a job file's credentials are dropped on reading.
    """
    # The earliest point sciflow's code sees the parameters (see the module docstring).
    refuse_pasted_credentials(
        {"signal": signal, "noise": noise, "options": options, "job": job, "output": output}
    )
    signal, noise, output = signal or None, noise or None, output or None  # "": not given
    options = job_or_options(options, job)
    logger = run_logger()
    compute_unit = load_unit(unit)
    check_spending(compute_unit)
    access = compute_unit.access()
    by_uri = is_job_uri(options)
    if by_uri:
        access.check_read(options, "options")
    run = RunContext.current(compute_unit)
    job = read_job(options, run) if by_uri else parse_job(options)
    opts = job.options
    check_reach(access, signal, noise, job, output)
    signal = signal or job.signal
    noise = noise or job.noise
    if not signal:
        raise InputError("no signal given: pass `signal` or an MR Optimum job naming one")
    if output is not None:
        refuse_another_result(run, output, opts)
    timings: dict[str, float] = {}
    started = time.perf_counter()

    signal_path = stage_input(signal, run)
    job_estimate = estimate(signal_path, opts, job.key)
    logger.info(
        "estimate: %.2f GiB, %.0f s, size class %s",
        job_estimate.memory_bytes / 2**30,
        job_estimate.seconds,
        job_estimate.size_class,
    )
    compute_unit.check_fits(
        job_estimate.memory_bytes, f"MR job {job_estimate.describe()}", sizes=MR_SIZES
    )
    check_run_cost(compute_unit, job_estimate.size_class)
    noise_path = stage_input(noise, run) if noise else None
    timings["stage"] = time.perf_counter() - started

    mark = time.perf_counter()
    stats = noise_statistics(signal_path, noise_path, job.key, opts.convention, opts.layout)
    timings["noise"] = time.perf_counter() - mark
    logger.log(logging.WARNING if stats.warning else logging.INFO, "noise: %s", stats.describe())

    info, shape = read_info(Path(signal_path), key=job.key, layout=opts.layout)
    slices = opts.slices if opts.slices is not None else list(range(shape[3]))
    if bad := [s for s in slices if not 0 <= s < shape[3]]:
        raise InputError(f"options.slices has {bad}; expected indices below {shape[3]}")
    batches = [slices[i : i + SLICES_PER_TASK] for i in range(0, len(slices), SLICES_PER_TASK)]

    mark = time.perf_counter()
    shared = stage_slices(signal, signal_path, job.key, opts.layout, run)
    size: SizeClass = job_estimate.size_class
    maps: list[SnrMaps] = []
    with dask_task_runner(compute_unit, size, run.tags, run.launches) as runner:
        futures = [
            runner.submit(
                snr_for_slices,
                {
                    "shared": shared,
                    "slices": batch,
                    "noise_cov": stats.noise_cov,
                    "options": opts,
                    "header": info,
                    "run": run,
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
            + f"\n\nNoise: {stats.describe()}"
            + f"\n\nOptions: `{json.dumps(opts.model_dump(mode='json'))}`"
        ),
        images={name: run.store.read_bytes(uri) for name, uri in result.previews.items()},
    )
    return result
