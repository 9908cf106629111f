"""Write ISMRMRD 1.x HDF5 files (the simulator's output, and the tests' fixtures).

The layout is ``tasks.mr.io.mrd_spec``'s; the tests cross-check it against the ``ismrmrd``
package's reader.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET  # builds our own header; never parses file content
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from tasks.errors import InputError
from tasks.mr.io.hdf5 import open_hdf5
from tasks.mr.io.mrd_spec import (
    ACQ_FIRST_IN_ENCODE_STEP1,
    ACQ_FIRST_IN_REPETITION,
    ACQ_FIRST_IN_SLICE,
    ACQ_IS_NOISE_MEASUREMENT,
    ACQ_IS_PARALLEL_CALIBRATION,
    ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING,
    ACQ_LAST_IN_ENCODE_STEP1,
    ACQ_LAST_IN_MEASUREMENT,
    ACQ_LAST_IN_REPETITION,
    ACQ_LAST_IN_SLICE,
    ACQUISITION,
    ISMRMRD_NAMESPACE,
    bit,
    interleave,
)


def write_mrd(
    path: Path,
    signal: np.ndarray,
    noise: np.ndarray | None = None,
    *,
    fov_mm: tuple[float, float, float],
    dwell_s: float,
    noise_dwell_s: float | None = None,
    flip_angle_deg: float | None = None,
    oversampling: int = 1,
    positions_mm: np.ndarray | None = None,
    directions: np.ndarray | None = None,
    larmor_hz: float = 127.74e6,
    vendor: str = "sciflow",
    group: str = "dataset",
    volume: bool = False,
    acceleration: tuple[int, int] = (1, 1),
    acs: tuple[int, int] | None = None,
    reference: np.ndarray | None = None,
    slabs: int = 1,
) -> Path:
    """Write an ISMRMRD 1.x HDF5 file: XML header plus one acquisition per readout.

    Written under a temporary name and renamed, so a reader never sees half a file.

    Noise readouts (flag ``ACQ_IS_NOISE_MEASUREMENT``) come first, one per ``x`` samples, then
    the calibration-only readouts of a ``reference`` (slice by slice, line by line), then
    the imaging readouts repetition by repetition, slice by slice, line by line, with the
    first/last-in-line/slice/repetition and last-in-measurement flags set. Samples are stored
    as complex64.

    Args:
        path: Output file (overwritten).
        signal: Complex k-space ``(x, y, coils, slices, replicas)``; with ``volume`` a 3-D
            slab ``(x, y, z, coils, replicas)``, written with ``kspace_encode_step_2`` = z and
            encoded matrix z.
        noise: Complex noise ``(samples, coils)``, or None.
        fov_mm: Reconstructed field of view ``(x, y, slice thickness)``; 3-D: ``(x, y, slab)``.
        dwell_s: ADC dwell per signal sample (``sample_time_us``).
        noise_dwell_s: ADC dwell per noise sample (default ``dwell_s``).
        flip_angle_deg: Written to ``sequenceParameters`` when given.
        oversampling: Readout oversampling of ``signal`` (1 or 2): the encoded x matrix and
            FOV are this times the reconstructed ones.
        positions_mm: Slice centres in LPS mm, shape (slices, 3); default ``z = k * thickness``.
        directions: Rows read, phase, slice direction cosines (LPS), shape (3, 3); default I.
        larmor_hz: ``H1resonanceFrequency_Hz`` (required by the schema).
        vendor: ``systemVendor``.
        group: HDF5 group of the dataset.
        volume: ``signal`` is a 3-D slab (see ``signal``); positions default to the origin.
        acceleration: ``(R_step1, R_step2)`` written as ``accelerationFactor``; when > 1 only
            readouts on the grid (lines 0, R, 2R, ... along y and z) and in the ``acs`` block
            are written (R_step2 > 1 needs ``volume``).
        acs: Calibration block ``(lines along y, partitions along z)``, centred from
            ``N//2 - n//2`` as ``coils.acl_region``; its readouts carry
            ``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING`` (without ``reference``).
        reference: A separately acquired calibration scan, complex, ``signal``'s shape
            without replicas: its ``acs`` block is written as calibration-only readouts
            (``ACQ_IS_PARALLEL_CALIBRATION``), and the imaging readouts are then the
            acquired grid only. Needs ``acs``.
        slabs: With ``volume``, the partition axis z holds this many slabs one after another
            (each ``z / slabs`` partitions of its own k-space), written with ``slice`` = slab
            and ``kspace_encode_step_2`` = partition; ``fov_mm[2]`` is one slab's thickness,
            and the default slab centres are one thickness apart along z. Acceleration and
            ``acs`` along z apply within each slab.

    Returns:
        ``path``.
    """
    signal = np.asarray(signal)
    if signal.ndim != 5 or not np.iscomplexobj(signal):
        expected = "(x, y, z, coils, replicas)" if volume else "(x, y, coils, slices, replicas)"
        raise InputError(
            f"write_mrd signal has shape {signal.shape} and dtype {signal.dtype}; "
            f"expected complex {expected}"
        )
    if volume:  # (x, y, z, c, r) -> (x, y, c, z, r): partitions take the slice loop
        signal = signal.transpose(0, 1, 3, 2, 4)
    nx, ny, coils, slices, replicas = signal.shape
    if slabs < 1 or slices % slabs or (slabs > 1 and not volume):
        raise InputError(
            f"write_mrd slabs={slabs}; expected an integer >= 1 dividing the {slices} "
            "partitions, and 1 unless volume=True"
        )
    nz = slices // slabs if volume else 1  # partitions per slab
    r_y, r_z = (int(r) for r in acceleration)
    if r_y < 1 or r_z < 1 or ny % r_y or nz % r_z or (r_z > 1 and not volume):
        raise InputError(
            f"write_mrd acceleration={acceleration}; expected integers >= 1 dividing "
            f"({ny}, {nz}), R_step2 = 1 unless volume=True"
        )
    if noise is not None:
        noise = np.asarray(noise)
        if noise.ndim != 2 or noise.shape[1] != coils:
            raise InputError(
                f"write_mrd noise has shape {noise.shape}; expected (samples, {coils})"
            )
    if oversampling not in (1, 2) or (oversampling == 2 and nx % 2):
        raise InputError(f"write_mrd oversampling={oversampling}; expected 1, or 2 with even x")
    directions = np.eye(3) if directions is None else np.asarray(directions, dtype=np.float64)
    n_positions = slabs if volume else slices
    if positions_mm is None:
        positions_mm = np.zeros((n_positions, 3))
        positions_mm[:, 2] = np.arange(n_positions) * fov_mm[2]
    positions_mm = np.asarray(positions_mm, dtype=np.float64).reshape(n_positions, 3)
    xml = _mrd_header_xml(
        (nx, ny, slices, replicas, coils),
        fov_mm,
        oversampling,
        flip_angle_deg,
        larmor_hz,
        vendor,
        volume=volume,
        acceleration=(r_y, r_z),
        slabs=slabs,
    )
    noise_chunks = [] if noise is None else [noise[i : i + nx] for i in range(0, len(noise), nx)]
    first = len(noise_chunks)
    # Imaging readouts in (replica, slice or partition, line) order; the acquired ones only.
    r, s, y = np.unravel_index(np.arange(ny * slices * replicas), (replicas, slices, ny))
    acquired = (y % r_y == 0) & (s % nz % r_z == 0)
    in_acs = np.zeros(len(y), dtype=bool)
    if acs is not None:
        y0, z0 = ny // 2 - int(acs[0]) // 2, nz // 2 - int(acs[1]) // 2
        in_acs = (y >= y0) & (y < y0 + int(acs[0]))
        in_acs &= (s % nz >= z0) & (s % nz < z0 + int(acs[1])) if volume else True
    calib_lines = np.zeros((0, coils, nx), dtype=np.complex64)
    calib_s = calib_y = np.zeros(0, dtype=np.int64)
    if reference is not None:
        reference = np.asarray(reference)
        expected = (nx, ny, slices, coils) if volume else (nx, ny, coils, slices)
        if acs is None or reference.shape != expected:
            raise InputError(
                f"write_mrd reference has shape {reference.shape} (acs={acs}); expected "
                f"{expected}, the signal's without replicas, and acs given"
            )
        if volume:  # (x, y, z, c) -> (x, y, c, z), as the signal
            reference = reference.transpose(0, 1, 3, 2)
        calib_s, calib_y = np.unravel_index(np.arange(ny * slices), (slices, ny))
        block = (calib_y >= y0) & (calib_y < y0 + int(acs[0]))
        block &= (calib_s % nz >= z0) & (calib_s % nz < z0 + int(acs[1])) if volume else True
        calib_s, calib_y = calib_s[block], calib_y[block]
        calib_lines = reference[:, calib_y, :, calib_s].transpose(0, 2, 1)  # (readouts, c, x)
        in_acs[:] = False  # the imaging readouts are the grid alone
    keep = acquired | in_acs
    r, s, y, in_acs = r[keep], s[keep], y[keep], in_acs[keep]
    n_calib = len(calib_y)
    first += n_calib
    total = first + len(y)
    acquisitions = np.zeros(total, dtype=ACQUISITION)
    head = acquisitions["head"]
    head["version"] = 1
    head["scan_counter"] = np.arange(1, total + 1)
    head["available_channels"] = head["active_channels"] = coils
    for c in range(coils):
        head["channel_mask"][:, c // 64] |= np.uint64(1 << (c % 64))
    head["read_dir"], head["phase_dir"], head["slice_dir"] = directions
    empty = np.zeros(0, dtype=np.float32)
    for i, chunk in enumerate(noise_chunks):
        head["flags"][i] = bit(ACQ_IS_NOISE_MEASUREMENT)
        head["number_of_samples"][i] = len(chunk)
        head["sample_time_us"][i] = (noise_dwell_s or dwell_s) * 1e6
        acquisitions["data"][i] = interleave(chunk.T)
    calib = head[first - n_calib : first]
    calib["flags"] = bit(ACQ_IS_PARALLEL_CALIBRATION)
    calib["number_of_samples"], calib["center_sample"] = nx, nx // 2
    calib["sample_time_us"] = dwell_s * 1e6
    calib["position"] = positions_mm[calib_s // nz]
    calib["idx"]["kspace_encode_step_1"] = calib_y
    calib["idx"]["kspace_encode_step_2"], calib["idx"]["slice"] = calib_s % nz, calib_s // nz
    for i, line in enumerate(calib_lines, start=first - n_calib):
        acquisitions["data"][i] = interleave(line)
    image = head[first:]
    image["number_of_samples"], image["center_sample"] = nx, nx // 2
    image["sample_time_us"] = dwell_s * 1e6
    image["position"] = positions_mm[s // nz]
    image["idx"]["kspace_encode_step_1"], image["idx"]["repetition"] = y, r
    image["idx"]["kspace_encode_step_2"], image["idx"]["slice"] = s % nz, s // nz
    # First/last acquired readout of each slab/slice and repetition.
    block = r * slices + s // nz
    starts = np.r_[True, block[1:] != block[:-1]] if len(y) else np.zeros(0, dtype=bool)
    ends = np.r_[block[1:] != block[:-1], True] if len(y) else np.zeros(0, dtype=bool)
    rep_starts = np.r_[True, r[1:] != r[:-1]] if len(y) else starts
    rep_ends = np.r_[r[1:] != r[:-1], True] if len(y) else ends
    flags = np.full(len(y), bit(ACQ_FIRST_IN_ENCODE_STEP1) | bit(ACQ_LAST_IN_ENCODE_STEP1))
    flags |= np.where(starts, bit(ACQ_FIRST_IN_SLICE), 0)
    flags |= np.where(rep_starts, bit(ACQ_FIRST_IN_REPETITION), 0)
    flags |= np.where(ends, bit(ACQ_LAST_IN_SLICE), 0)
    flags |= np.where(rep_ends, bit(ACQ_LAST_IN_REPETITION), 0)
    flags |= np.where(in_acs, bit(ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING), 0)
    if len(flags):
        flags[-1] |= bit(ACQ_LAST_IN_MEASUREMENT)
    image["flags"] = flags
    lines = np.ascontiguousarray(signal.transpose(4, 3, 1, 2, 0), dtype=np.complex64)
    lines = lines.reshape(-1, coils, nx)[keep]
    lines = lines.view(np.float32).reshape(total - first, -1)  # (readouts, coils * 2 * x)
    for i, line in enumerate(lines, start=first):
        acquisitions["data"][i] = line
    for i in range(total):
        acquisitions["traj"][i] = empty
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open_hdf5(tmp, "w") as f:
            grp = f.create_group(group)
            grp.create_dataset("xml", shape=(1,), dtype=h5py.string_dtype("utf-8"))[0] = xml
            grp.create_dataset("data", data=acquisitions, maxshape=(None,), chunks=True)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _mrd_header_xml(
    sizes: tuple[int, int, int, int, int],
    fov_mm: tuple[float, float, float],
    oversampling: int,
    flip_angle_deg: float | None,
    larmor_hz: float,
    vendor: str,
    *,
    volume: bool = False,
    acceleration: tuple[int, int] = (1, 1),
    slabs: int = 1,
) -> str:
    nx, ny, slices, replicas, coils = sizes
    nz = slices // slabs if volume else 1
    slices = slabs if volume else slices

    def sub(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
        node = ET.SubElement(parent, f"{{{ISMRMRD_NAMESPACE}}}{tag}")
        if text is not None:
            node.text = str(text)
        return node

    def space(
        parent: ET.Element, tag: str, matrix: tuple[int, int, int], fov: tuple[float, float, float]
    ) -> None:
        node = sub(parent, tag)
        size = sub(node, "matrixSize")
        for axis, value in zip("xyz", matrix, strict=True):
            sub(size, axis, value)
        extent = sub(node, "fieldOfView_mm")
        for axis, value in zip("xyz", fov, strict=True):
            sub(extent, axis, f"{value:.6g}")

    def limit(parent: ET.Element, tag: str, count: int) -> None:
        node = sub(parent, tag)
        sub(node, "minimum", 0)
        sub(node, "maximum", count - 1)
        sub(node, "center", count // 2 if tag.startswith("kspace") else 0)

    root = ET.Element(f"{{{ISMRMRD_NAMESPACE}}}ismrmrdHeader")
    system = sub(root, "acquisitionSystemInformation")
    sub(system, "systemVendor", vendor)
    sub(system, "receiverChannels", coils)
    sub(sub(root, "experimentalConditions"), "H1resonanceFrequency_Hz", round(larmor_hz))
    encoding = sub(root, "encoding")
    fx, fy, fz = fov_mm
    space(encoding, "encodedSpace", (nx, ny, nz), (fx * oversampling, fy, fz))
    space(encoding, "reconSpace", (nx // oversampling, ny, nz), (fx, fy, fz))
    limits = sub(encoding, "encodingLimits")
    limit(limits, "kspace_encoding_step_1", ny)
    limit(limits, "kspace_encoding_step_2", nz)
    limit(limits, "average", 1)
    limit(limits, "slice", slices)
    limit(limits, "contrast", 1)
    limit(limits, "phase", 1)
    limit(limits, "repetition", replicas)
    limit(limits, "set", 1)
    limit(limits, "segment", 1)
    sub(encoding, "trajectory", "cartesian")
    parallel = sub(encoding, "parallelImaging")
    factor = sub(parallel, "accelerationFactor")
    sub(factor, "kspace_encoding_step_1", acceleration[0])
    sub(factor, "kspace_encoding_step_2", acceleration[1])
    sub(parallel, "calibrationMode", "other")
    if flip_angle_deg is not None:
        sub(sub(root, "sequenceParameters"), "flipAngle_deg", f"{flip_angle_deg:.6g}")
    body = ET.tostring(root, encoding="unicode", default_namespace=ISMRMRD_NAMESPACE)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body
