"""Raw MR k-space and noise from ISMRMRD/MRD HDF5, Siemens twix, NumPy and MATLAB files.

Everything comes back in the package layout (``tasks.mr``): the signal is complex
``(x, y, coils, slices, replicas)`` and the noise is complex ``(samples, coils)``.
``read_info`` gives the header and the signal shape without reading the data arrays, for
memory and time estimates.

Formats are told apart by content (NumPy magic, zip, MATLAB text header, HDF5 signature at
byte 0 or 512); the ``.dat`` suffix or ``vendor="siemens"`` selects twix, which has no
reliable magic. ``vendor`` (MR Optimum's field: ``siemens``, ``numpy``, ``matlab``; also
``mrd``/``ismrmrd``/``twix``) is a hint: content that says otherwise wins and
``summary["vendor_hint_ignored"]`` records it (a Siemens scan converted to MRD is still MRD).

Accepted shapes, NumPy ``.npy``/``.npz`` and MATLAB ``.mat`` (v5 and v7.3), coils last:

- signal ``(x, y, coils)``: one slice, one replica;
- signal ``(x, y, coils, slices)``: the default reading of a 4-D array (``layout="slices"``);
- signal ``(x, y, coils, replicas)``: MR Optimum's multiple-replica input, with
  ``layout="replicas"``;
- signal ``(x, y, coils, slices, replicas)``;
- noise ``(samples, coils)``, ``(readout, lines, coils)`` (flattened) or
  ``(readout, lines, coils, slices)`` (MR Optimum's per-slice noise, pooled);
- ``.npz`` member / MATLAB variable: ``key`` (``noise_key`` for the noise file; MR Optimum's
  ``npz_key``/``mat_key``), else the only array, else one named ``kspace`` (MR Optimum's
  default; ``noise`` for noise files).

Real-valued NumPy/MATLAB arrays (float or integer) are accepted and converted to complex
(``summary["converted_from_real"]``), since a real k-space is legal if unusual; MATLAB's
complex compound ``{real, imag}`` (v7.3) and NumPy structured ``{real, imag}`` arrays are
read as complex. Boolean, text and object arrays are refused. NaN or Inf anywhere in the
signal or noise raises ``InputError`` with the count.

MRD (``/dataset/xml`` + ``/dataset/data``, read with h5py against the ISMRMRD 1.x spec, not
the ``ismrmrd`` package: one bulk read of the headers, a chunked read of the samples, and no
xsdata dependency; ``write_mrd`` writes the same layout and the tests cross-check it):

- noise = acquisitions with ``ACQ_IS_NOISE_MEASUREMENT`` (flag 19) when no noise file is
  given; imaging acquisitions are placed by ``kspace_encode_step_1`` (y), ``slice`` and
  ``repetition`` (replicas); averages are averaged; contrast/phase/set other than 0,
  calibration-only (flag 20), navigator, phase-correction, feedback, dummy and
  phase-stabilisation readouts are left out and counted in ``summary``;
- readout oversampling (encoded x = 2 x recon x) is removed from the signal by default, as on
  the Siemens path (``oversampling_removed=True``); the noise keeps it;
- dwell = ``sample_time_us``; geometry from ``position``/``read_dir``/``phase_dir``/
  ``slice_dir`` per ``affine_from_geometry``;
- 3-D Cartesian (one slab): an encoded matrix z > 1 or any ``kspace_encode_step_2`` > 0 makes
  the file 3-D; partitions are placed by ``kspace_encode_step_2`` (see "3-D data" below), the
  header's ``accelerationFactor`` steps 1 and 2 give ``(R_y, R_z)`` and the calibration
  readouts' distinct step-1/step-2 counters the ACS block. Multi-slab 3-D is refused.

Siemens twix (``twixtools``; VB and VD/VE/XA, multi-RAID):

- signal = the ``image`` data of the last measurement (twixtools ``map_twix``), readout
  oversampling removed (twixtools' ``remove_oversampling``, which halves white-noise variance),
  averages averaged, Set/Phase/Echo index 0;
- embedded noise = every ``NOISEADJSCAN`` readout of every measurement, oversampling kept;
- a separate noise file is an RF-off run: its ``image`` data (oversampling kept), or its
  noise-adjust readouts when it has no image data;
- ``signal_dwell_s`` = ``sRXSPEC.alDwellTime[0]`` (ns, per ADC sample *including* the
  oversampling); noise-adjust dwell follows siemens_to_ismrmrd's rule (5 us for
  ``AdjCoilSens``/``AdjQuietCoilSens`` measurements, otherwise ``1e6/N/130`` us on VB and
  ``floor(76800/N)/10`` us on VD/VE, N samples per noise readout). MR Optimum itself uses
  5000 ns for multi-RAID noise. An RF-off noise file has its own ``alDwellTime``.

3-D data (MRD partitions, NumPy/MATLAB ``layout="volume"``): a volume k-space
``(x, y, z, coils[, replicas])`` with the readout x fully sampled is always returned in
*hybrid space* (``volume_as_slices``): a centred orthonormal inverse FFT along x only, then
the axes ``(y, z, coils, x, replicas)``. Every x position is then a (ky, kz) plane carrying
the 2-D undersampling pattern, i.e. an in-plane 2-D acceleration problem, so the per-slice
SNR code runs unchanged with "slices" = x positions, in-plane axes ``(y, z)`` and
acceleration ``(R_y, R_z)``. The transform is orthonormal: the k-space noise covariance
applies unchanged and the 2-D ``ifft2c`` of each plane completes the 3-D centred transform.
``AcquisitionInfo.kind == "3d"`` says so; ``matrix`` is then ``(y, z, x)`` (the returned
axes), ``volume_matrix`` ``(x, y, z)``, ``acceleration`` ``(R_y, R_z)``, ``acs_block`` the
calibration block ``(y, z)``, and ``fov_mm``/``affine`` describe the ``(x, y, z)`` volume.
Maps computed per slice, stacked as ``(y, z, x)``, go back to ``(x, y, z)`` with
``maps_as_volume`` before they are written. ``slices_as_volume`` inverts the transform.

Not read: 3-D twix (partition-encoded), multi-slab 3-D MRD and non-Cartesian data are
refused; a separately acquired autocalibration scan (twix ``refscan``/``PATREFSCAN``, MRD
calibration-only readouts) is not part of ``signal`` (counted in ``summary``); twix EPI lines
are reflected (twixtools) but not phase-corrected or regridded.

Dwell convention, all formats: ``signal_dwell_s`` and ``noise_dwell_s`` are the ADC dwell per
acquired sample, before any oversampling removal. With ``oversampling_removed`` the signal's
samples are twice as far apart and carry half the white-noise variance, which is why the
noise referral multiplies by ``noise_dwell/signal_dwell`` *and* by 1/2 (primer section 2).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
import uuid
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import scipy.fft
import scipy.io

from tasks.errors import InputError

Format = Literal["mrd", "twix", "numpy", "matlab"]
Layout = Literal["slices", "replicas", "volume"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ISMRMRD_NAMESPACE = "http://www.ismrm.org/ISMRMRD"

# ISMRMRD acquisition flags (1-based bit numbers, set when flags & (1 << (bit - 1))).
ACQ_FIRST_IN_ENCODE_STEP1 = 1
ACQ_LAST_IN_ENCODE_STEP1 = 2
ACQ_FIRST_IN_SLICE = 7
ACQ_LAST_IN_SLICE = 8
ACQ_FIRST_IN_REPETITION = 13
ACQ_LAST_IN_REPETITION = 14
ACQ_IS_NOISE_MEASUREMENT = 19
ACQ_IS_PARALLEL_CALIBRATION = 20
ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING = 21
ACQ_LAST_IN_MEASUREMENT = 25
# Readouts that are neither image nor noise data (navigator, phase correction, feedback,
# dummy scans, surface-coil correction, phase stabilisation).
_NOT_IMAGE_FLAGS = {
    23: "navigation",
    24: "phasecorr",
    26: "hpfeedback",
    27: "dummyscan",
    28: "rtfeedback",
    29: "surfacecoilcorrection",
    30: "phase_stabilization_reference",
    31: "phase_stabilization",
}

_ENCODING_COUNTERS = np.dtype(
    [
        ("kspace_encode_step_1", "<u2"),
        ("kspace_encode_step_2", "<u2"),
        ("average", "<u2"),
        ("slice", "<u2"),
        ("contrast", "<u2"),
        ("phase", "<u2"),
        ("repetition", "<u2"),
        ("set", "<u2"),
        ("segment", "<u2"),
        ("user", "<u2", (8,)),
    ]
)
# ISMRMRD_AcquisitionHeader, packed (340 bytes), fields in the C struct's order.
ACQUISITION_HEADER = np.dtype(
    [
        ("version", "<u2"),
        ("flags", "<u8"),
        ("measurement_uid", "<u4"),
        ("scan_counter", "<u4"),
        ("acquisition_time_stamp", "<u4"),
        ("physiology_time_stamp", "<u4", (3,)),
        ("number_of_samples", "<u2"),
        ("available_channels", "<u2"),
        ("active_channels", "<u2"),
        ("channel_mask", "<u8", (16,)),
        ("discard_pre", "<u2"),
        ("discard_post", "<u2"),
        ("center_sample", "<u2"),
        ("encoding_space_ref", "<u2"),
        ("trajectory_dimensions", "<u2"),
        ("sample_time_us", "<f4"),
        ("position", "<f4", (3,)),
        ("read_dir", "<f4", (3,)),
        ("phase_dir", "<f4", (3,)),
        ("slice_dir", "<f4", (3,)),
        ("patient_table_position", "<f4", (3,)),
        ("idx", _ENCODING_COUNTERS),
        ("user_int", "<i4", (8,)),
        ("user_float", "<f4", (8,)),
    ]
)
# One readout: header, trajectory and samples; both as float32 arrays, the samples
# interleaved real/imag with shape (active_channels, number_of_samples).
ACQUISITION = np.dtype(
    [
        ("head", ACQUISITION_HEADER),
        ("traj", h5py.vlen_dtype(np.dtype("<f4"))),
        ("data", h5py.vlen_dtype(np.dtype("<f4"))),
    ]
)
_READ_BLOCK = 4096  # MRD acquisitions per h5py read


@dataclass(frozen=True, kw_only=True, slots=True)
class AcquisitionInfo:
    """What the header says about an acquisition, in the package layout.

    Attributes:
        format: Which reader read it.
        vendor: Scanner vendor from the header (``"SIEMENS"``, MRD ``systemVendor``), or None.
        matrix: ``(x, y, slices)`` of the returned signal, after oversampling removal.
        coils: Receive channels.
        replicas: Repetitions (the last signal axis).
        signal_dwell_s: ADC dwell per acquired signal sample (before oversampling removal).
        noise_dwell_s: ADC dwell per noise sample.
        oversampling_removed: Readout oversampling was removed from the signal (not the noise).
        fov_mm: Field of view of the returned signal ``(x, y, slice thickness or slab)``.
        affine: 4x4 voxel -> RAS mm from the file's geometry, or None.
        flip_angle_deg: Excitation flip angle.
        acceleration: ``(R_freq, R_phase)`` from the header, ``(1, 1)`` if unknown.
        acs_lines: Autocalibration lines from the header, or None.
        summary: JSON-able header summary for info.json.
        kind: ``"2d"`` (slices) or ``"3d"`` (a volume returned in hybrid space: the signal
            axes are ``(y, z, coils, x, replicas)``, see the module docstring).
        volume_matrix: ``(x, y, z)`` of a 3-D volume, else None.
        acs_block: Calibration block ``(along axis 0, along axis 1)`` of the returned slices
            from the header (3-D: ``(y, z)``), or None.
    """

    format: Literal["mrd", "twix", "numpy", "matlab"]
    vendor: str | None
    matrix: tuple[int, int, int]
    coils: int
    replicas: int
    signal_dwell_s: float | None
    noise_dwell_s: float | None
    oversampling_removed: bool
    fov_mm: tuple[float, float, float] | None
    affine: np.ndarray | None
    flip_angle_deg: float | None
    acceleration: tuple[int, int]
    acs_lines: int | None
    summary: dict[str, Any]
    kind: Literal["2d", "3d"] = "2d"
    volume_matrix: tuple[int, int, int] | None = None
    acs_block: tuple[int | None, int | None] | None = None


@dataclass(slots=True)
class RawData:
    """Signal, noise and header of one acquisition.

    Attributes:
        signal: Complex k-space, shape ``(x, y, coils, slices, replicas)``; for 3-D data
            (``info.kind == "3d"``) hybrid space ``(y, z, coils, x, replicas)``.
        noise: Complex noise samples, shape ``(samples, coils)``, or None.
        info: The header.
    """

    signal: np.ndarray
    noise: np.ndarray | None
    info: AcquisitionInfo

    def noise_by_readout(self) -> np.ndarray | None:
        """The noise as ``(readout, readouts, coils)`` where the readout length is known.

        Noise samples are stored readout-contiguous; the readout axis matters for the noise
        bandwidth (``tasks.mr.noise.noise_bandwidth``). Without a known readout count the
        samples are one long line, ``(samples, 1, coils)``.
        """
        if self.noise is None:
            return None
        samples, coils = self.noise.shape
        readouts = int(self.info.summary.get("noise", {}).get("readouts") or 1)
        if samples % readouts:
            readouts = 1
        return self.noise.reshape(readouts, samples // readouts, coils).transpose(1, 0, 2)


@dataclass(slots=True)
class _Part:
    """One file's contribution: header fields, shape and (when loaded) arrays."""

    fields: dict[str, Any]
    shape: tuple[int, ...]
    signal: np.ndarray | None = None
    noise: np.ndarray | None = None
    noise_shape: tuple[int, int] | None = None
    noise_readouts: int | None = None
    noise_dwell_s: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------


def read_raw(
    signal: Path,
    noise: Path | None = None,
    *,
    key: str | None = None,
    vendor: str | None = None,
    noise_key: str | None = None,
    layout: Layout = "slices",
    remove_oversampling: bool = True,
) -> RawData:
    """Read a signal file (and optionally a separate noise file) into the package layout.

    Args:
        signal: The raw data file (MRD ``.h5``, twix ``.dat``, ``.npy``/``.npz``, ``.mat``).
        noise: A separate noise-only file (any of those formats); without it the noise comes
            from the signal file's noise readouts (MRD, twix) or is None.
        key: ``.npz`` member, MATLAB variable or MRD group of the signal.
        vendor: MR Optimum's vendor; ``siemens``/``twix`` selects twix for files without
            the ``.dat`` suffix; decisive content overrides it.
        noise_key: ``.npz`` member, MATLAB variable or MRD group of the noise file.
        layout: What the 4th axis of a 4-D NumPy/MATLAB signal is; ``"volume"``: the
            array is a 3-D volume ``(x, y, z, coils[, replicas])``.
        remove_oversampling: Remove 2x readout oversampling from MRD and twix signals.

    Returns:
        Signal ``(x, y, coils, slices, replicas)`` (3-D: hybrid space ``(y, z, coils, x,
        replicas)``, module docstring), noise ``(samples, coils)`` and header.

    Raises:
        InputError: Unreadable, truncated or wrong-format files, unsupported shapes, coil
            counts that differ between signal and noise, NaN or Inf values.
    """
    signal = Path(signal)
    part = _read_signal(signal, key, vendor, layout, remove_oversampling, load=True)
    if part.signal is None:  # every reader fills it when load=True
        raise RuntimeError(f"reader returned no signal for {signal}")
    _check_finite(part.signal, f"signal file {signal}")
    noise_array, noise_dwell = part.noise, part.noise_dwell_s
    noise_summary: dict[str, Any] = {}
    where = f"noise readouts in signal file {signal}"
    if part.noise is not None:
        noise_summary["source"] = "noise readouts in the signal file"
        noise_summary["readouts"] = part.noise_readouts
    if noise is not None:
        noise = Path(noise)
        where = f"noise file {noise}"
        noise_array, noise_dwell, noise_summary = _read_noise_file(noise, noise_key)
        noise_summary["file"] = noise.name
        if part.noise is not None:
            noise_summary["embedded_noise_ignored"] = True
    if noise_array is not None:
        _check_finite(noise_array, where)
        coils = part.shape[2]
        if noise_array.shape[1] != coils:
            raise InputError(
                f"{where} has {noise_array.shape[1]} coils but signal file {signal} has {coils}; "
                "expected the same receive channels (noise shaped (samples, coils))"
            )
        noise_summary["samples"] = int(noise_array.shape[0])
    info = _finish_info(part, noise_dwell, noise_summary)
    return RawData(signal=part.signal, noise=noise_array, info=info)


def read_info(
    signal: Path,
    *,
    key: str | None = None,
    vendor: str | None = None,
    layout: Layout = "slices",
    remove_oversampling: bool = True,
) -> tuple[AcquisitionInfo, tuple[int, ...]]:
    """Header and signal shape without reading the data arrays (for memory/time estimates).

    ``.npy`` is memory-mapped, ``.npz`` members and MATLAB variables are sized from their
    headers, MRD from the acquisition headers, twix from the measurement data headers.

    Returns:
        The header and the shape ``(x, y, coils, slices, replicas)`` ``read_raw`` would return
        (3-D: ``(y, z, coils, x, replicas)``).
        ``summary["dtype"]`` is the signal's complex dtype, ``summary["noise"]["samples"]`` the
        embedded noise samples (MRD, twix) when there are any.
    """
    part = _read_signal(Path(signal), key, vendor, layout, remove_oversampling, load=False)
    noise_summary = {}
    if part.noise_shape is not None:
        noise_summary["samples"] = part.noise_shape[0]
    return _finish_info(part, part.noise_dwell_s, noise_summary), part.shape


def detect_format(path: Path, vendor: str | None = None) -> Format:
    """Which reader a file needs: its content, else twix for ``.dat`` or ``vendor="siemens"``.

    Twix has no reliable magic, so the suffix or vendor selects it.

    A ``vendor`` that disagrees with decisive content (MR Optimum's ``"Siemens"`` on an MRD
    file converted from a Siemens scan) is a hint only; ``read_raw`` notes it in ``summary``.

    Raises:
        InputError: Missing or empty file, or content no reader recognises.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; expected a raw data file")
    with path.open("rb") as stream:
        head = stream.read(520)
    if not head:
        raise InputError(f"{path} is empty; expected raw MR data")
    found: Format | None = None
    if head.startswith(b"\x93NUMPY") or head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        found = "numpy"
    elif head.startswith(b"MATLAB") or head[512:520] == HDF5_SIGNATURE:
        found = "matlab"
    elif head.startswith(HDF5_SIGNATURE):
        found = "mrd"
    if found is not None:
        return found
    wanted = _VENDOR_FORMATS.get((vendor or "").lower())
    if wanted == "twix" or (vendor is None and path.suffix.lower() == ".dat"):
        return "twix"
    hint = f" (vendor={vendor!r}; known: {sorted(_VENDOR_FORMATS)})" if vendor else ""
    raise InputError(
        f"{path}: unrecognised content (first bytes {head[:8]!r}){hint}; expected ISMRMRD HDF5 "
        "(.h5/.mrd), Siemens twix (.dat), NumPy (.npy/.npz) or MATLAB (.mat)"
    )


def affine_from_geometry(
    positions_mm: np.ndarray,
    read_dir: Sequence[float],
    phase_dir: Sequence[float],
    slice_dir: Sequence[float],
    spacing_mm: tuple[float, float],
    matrix_xy: tuple[int, int],
    thickness_mm: float,
) -> tuple[np.ndarray, str | None]:
    """Voxel -> RAS affine from LPS slice geometry (primer section 7).

    Columns are ``read_dir*dx, phase_dir*dy, slice_dir*dz``; the origin is slice 0's centre
    minus ``(N//2)`` pixels along read and phase (the centred FFT's centre pixel); the x and y
    rows are negated to go from LPS (DICOM/ISMRMRD) to RAS (NIfTI).

    Args:
        positions_mm: Slice centres in LPS mm, shape (slices, 3), in slice-index order.
        read_dir: Readout direction cosines (LPS).
        phase_dir: Phase-encoding direction cosines (LPS).
        slice_dir: Slice direction cosines (LPS).
        spacing_mm: Pixel spacing ``(dx, dy)``.
        matrix_xy: Image size ``(Nx, Ny)``.
        thickness_mm: Slice spacing used when there is one slice.

    Returns:
        The 4x4 affine and a note when the slices are not evenly spaced along one axis (then
        the affine fits slices 0 and 1 only), else None.
    """
    positions = np.asarray(positions_mm, dtype=np.float64).reshape(-1, 3)
    read, phase, normal = (
        np.asarray(v, dtype=np.float64) for v in (read_dir, phase_dir, slice_dir)
    )
    dx, dy = spacing_mm
    dz, note = float(thickness_mm), None
    if len(positions) > 1:
        step = positions[1] - positions[0]
        along = float(step @ normal)
        if abs(along) > 1e-6:
            dz = along
        expected = positions[0] + np.arange(len(positions))[:, None] * step
        if not np.allclose(positions, expected, atol=1e-2):
            note = "slice positions are not evenly spaced in index order; affine fits slices 0-1"
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2] = read * dx, phase * dy, normal * dz
    affine[:3, 3] = (
        positions[0] - (matrix_xy[0] // 2) * dx * read - (matrix_xy[1] // 2) * dy * phase
    )
    affine[:2, :] *= -1
    return affine, note


def remove_readout_oversampling(kspace: np.ndarray, axis: int = 0) -> np.ndarray:
    """Drop the outer half of the readout field of view (twixtools' ``remove_oversampling``).

    Centred inverse FFT along ``axis``, keep ``[n//4 : 3n//4]``, FFT back, with backward
    (unnormalised forward) scaling: in-band signal amplitude is kept and white-noise variance
    halves. Precision is preserved.
    """
    n = kspace.shape[axis]
    image = scipy.fft.fftshift(
        scipy.fft.ifft(scipy.fft.ifftshift(kspace, axes=axis), axis=axis), axes=axis
    )
    image = np.take(image, np.arange(n // 4, (3 * n) // 4), axis=axis)
    shifted = scipy.fft.ifftshift(image, axes=axis)
    return scipy.fft.fftshift(scipy.fft.fft(shifted, axis=axis), axes=axis)


def volume_as_slices(volume: np.ndarray) -> np.ndarray:
    """3-D k-space ``(x, y, z, coils[, replicas])`` -> hybrid space ``(y, z, coils, x, replicas)``.

    A centred orthonormal inverse FFT along the fully sampled readout x only
    (``fftshift(ifft(ifftshift(K, 0), axis=0, norm="ortho"), 0)``, as ``tasks.mr.fft``), then x
    moved to the slice axis. Each x position is a (ky, kz) plane, an in-plane 2-D problem whose
    ``ifft2c`` completes the 3-D transform; white noise keeps its covariance. Precision is kept.

    Raises:
        InputError: Not a 4-D or 5-D complex (or real) array.
    """
    volume = np.asarray(volume)
    if volume.ndim == 4:
        volume = volume[..., np.newaxis]
    if volume.ndim != 5:
        raise InputError(f"volume has shape {volume.shape}; expected (x, y, z, coils[, replicas])")
    if not np.iscomplexobj(volume):
        volume = volume.astype(np.complex64 if volume.dtype.itemsize <= 4 else np.complex128)
    hybrid = scipy.fft.fftshift(
        scipy.fft.ifft(scipy.fft.ifftshift(volume, axes=0), axis=0, norm="ortho", workers=-1),
        axes=0,
    )
    return np.ascontiguousarray(hybrid.transpose(1, 2, 3, 0, 4))


def slices_as_volume(hybrid: np.ndarray) -> np.ndarray:
    """The inverse of ``volume_as_slices``: hybrid space back to 3-D k-space.

    ``(y, z, coils, x, replicas)`` -> ``(x, y, z, coils, replicas)``.
    """
    hybrid = np.asarray(hybrid)
    if hybrid.ndim != 5:
        raise InputError(f"hybrid has shape {hybrid.shape}; expected (y, z, coils, x, replicas)")
    volume = hybrid.transpose(3, 0, 1, 2, 4)
    return scipy.fft.fftshift(
        scipy.fft.fft(scipy.fft.ifftshift(volume, axes=0), axis=0, norm="ortho", workers=-1),
        axes=0,
    )


def maps_as_volume(maps: np.ndarray) -> np.ndarray:
    """Per-slice maps of 3-D data stacked as ``(y, z, x[, ...])`` -> ``(x, y, z[, ...])``."""
    maps = np.asarray(maps)
    if maps.ndim < 3:
        raise InputError(f"maps have shape {maps.shape}; expected (y, z, x[, ...])")
    return np.moveaxis(maps, 2, 0)


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
) -> Path:
    """Write an ISMRMRD 1.x HDF5 file: XML header plus one acquisition per readout.

    Written under a temporary name and renamed, so a reader never sees half a file.

    Noise readouts (flag ``ACQ_IS_NOISE_MEASUREMENT``) come first, one per ``x`` samples, then
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
            ``ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING``.

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
    r_y, r_z = (int(r) for r in acceleration)
    if r_y < 1 or r_z < 1 or ny % r_y or slices % r_z or (r_z > 1 and not volume):
        raise InputError(
            f"write_mrd acceleration={acceleration}; expected integers >= 1 dividing "
            f"({ny}, {slices}), R_step2 = 1 unless volume=True"
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
    n_positions = 1 if volume else slices
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
    )
    noise_chunks = [] if noise is None else [noise[i : i + nx] for i in range(0, len(noise), nx)]
    first = len(noise_chunks)
    # Imaging readouts in (replica, slice or partition, line) order; the acquired ones only.
    r, s, y = np.unravel_index(np.arange(ny * slices * replicas), (replicas, slices, ny))
    acquired = (y % r_y == 0) & (s % r_z == 0)
    in_acs = np.zeros(len(y), dtype=bool)
    if acs is not None:
        y0, z0 = ny // 2 - int(acs[0]) // 2, slices // 2 - int(acs[1]) // 2
        in_acs = (y >= y0) & (y < y0 + int(acs[0]))
        in_acs &= (s >= z0) & (s < z0 + int(acs[1])) if volume else True
    keep = acquired | in_acs
    r, s, y, in_acs = r[keep], s[keep], y[keep], in_acs[keep]
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
        head["flags"][i] = _bit(ACQ_IS_NOISE_MEASUREMENT)
        head["number_of_samples"][i] = len(chunk)
        head["sample_time_us"][i] = (noise_dwell_s or dwell_s) * 1e6
        acquisitions["data"][i] = _interleave(chunk.T)
    image = head[first:]
    image["number_of_samples"], image["center_sample"] = nx, nx // 2
    image["sample_time_us"] = dwell_s * 1e6
    image["position"] = positions_mm[0 if volume else s]
    image["idx"]["kspace_encode_step_1"], image["idx"]["repetition"] = y, r
    image["idx"]["kspace_encode_step_2" if volume else "slice"] = s
    # First/last acquired readout of each slab/slice and repetition.
    block = r * slices + (0 if volume else s)
    starts = np.r_[True, block[1:] != block[:-1]] if len(y) else np.zeros(0, dtype=bool)
    ends = np.r_[block[1:] != block[:-1], True] if len(y) else np.zeros(0, dtype=bool)
    rep_starts = np.r_[True, r[1:] != r[:-1]] if len(y) else starts
    rep_ends = np.r_[r[1:] != r[:-1], True] if len(y) else ends
    flags = np.full(len(y), _bit(ACQ_FIRST_IN_ENCODE_STEP1) | _bit(ACQ_LAST_IN_ENCODE_STEP1))
    flags |= np.where(starts, _bit(ACQ_FIRST_IN_SLICE), 0)
    flags |= np.where(rep_starts, _bit(ACQ_FIRST_IN_REPETITION), 0)
    flags |= np.where(ends, _bit(ACQ_LAST_IN_SLICE), 0)
    flags |= np.where(rep_ends, _bit(ACQ_LAST_IN_REPETITION), 0)
    flags |= np.where(in_acs, _bit(ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING), 0)
    if len(flags):
        flags[-1] |= _bit(ACQ_LAST_IN_MEASUREMENT)
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
        with h5py.File(tmp, "w") as f:
            grp = f.create_group(group)
            grp.create_dataset("xml", shape=(1,), dtype=h5py.string_dtype("utf-8"))[0] = xml
            grp.create_dataset("data", data=acquisitions, maxshape=(None,), chunks=True)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------
# Dispatch and shared checks
# ---------------------------------------------------------------------------------------


_VENDOR_FORMATS: dict[str, Format] = {
    "siemens": "twix",
    "twix": "twix",
    "numpy": "numpy",
    "matlab": "matlab",
    "mrd": "mrd",
    "ismrmrd": "mrd",
}


def _read_signal(
    path: Path, key: str | None, vendor: str | None, layout: Layout, remove_os: bool, *, load: bool
) -> _Part:
    if layout not in ("slices", "replicas", "volume"):
        raise InputError(f"layout={layout!r}; expected 'slices', 'replicas' or 'volume'")
    fmt = detect_format(path, vendor)
    if fmt == "mrd":
        part = _mrd_signal(path, key, remove_os, load=load)
    elif fmt == "twix":
        part = _twix_signal(path, remove_os, load=load)
    else:
        part = _array_signal(path, fmt, key, layout, load=load)
    part.fields["format"] = fmt
    part.summary = {"format": fmt, "file": path.name, "bytes": path.stat().st_size, **part.summary}
    if vendor is not None and _VENDOR_FORMATS.get(vendor.lower()) != fmt:
        part.summary["vendor_hint_ignored"] = f"{vendor} (the content is {fmt})"
    return part


def _read_noise_file(
    path: Path, key: str | None
) -> tuple[np.ndarray, float | None, dict[str, Any]]:
    fmt = detect_format(path)
    if fmt == "mrd":
        return _mrd_noise_file(path, key)
    if fmt == "twix":
        return _twix_noise_file(path)
    array, name, real = _load_array(path, fmt, key, noise=True)
    summary: dict[str, Any] = {"format": fmt, "shape_in_file": list(array.shape)}
    if name:
        summary["key"] = name
    if real:
        summary["converted_from_real"] = True
    if array.ndim >= 3:
        summary["readouts"] = int(np.prod(array.shape[1:])) // int(array.shape[2])
    return _noise_samples(array, f"noise file {path}"), None, summary


def _finish_info(
    part: _Part, noise_dwell_s: float | None, noise_summary: dict[str, Any]
) -> AcquisitionInfo:
    x, y, coils, slices, replicas = part.shape
    summary = dict(part.summary)
    summary["shape"] = list(part.shape)
    if noise_summary:
        summary["noise"] = {**summary.get("noise", {}), **noise_summary}
    if noise_dwell_s is not None:
        summary.setdefault("noise", {})["dwell_s"] = noise_dwell_s
    fields = {
        "vendor": None,
        "signal_dwell_s": None,
        "oversampling_removed": False,
        "fov_mm": None,
        "affine": None,
        "flip_angle_deg": None,
        "acceleration": (1, 1),
        "acs_lines": None,
        "kind": "2d",
        "volume_matrix": None,
        "acs_block": None,
        **part.fields,
    }
    return AcquisitionInfo(
        matrix=(x, y, slices),
        coils=coils,
        replicas=replicas,
        noise_dwell_s=noise_dwell_s,
        summary=_jsonable(summary),
        **fields,
    )


def _check_finite(array: np.ndarray, where: str) -> None:
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(
            f"{where} has {bad} non-finite values (NaN or Inf) out of {array.size}; "
            "expected finite k-space"
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _bit(flag: int) -> int:
    return 1 << (flag - 1)


def _interleave(samples: np.ndarray) -> np.ndarray:
    """(channels, samples) complex -> flat float32 real/imag pairs, as ISMRMRD stores them."""
    return np.ascontiguousarray(samples, dtype=np.complex64).view(np.float32).ravel()


# ---------------------------------------------------------------------------------------
# NumPy and MATLAB
# ---------------------------------------------------------------------------------------


def _array_signal(path: Path, fmt: Format, key: str | None, layout: Layout, *, load: bool) -> _Part:
    where = f"signal file {path}"
    if load:
        array, name, real = _load_array(path, fmt, key, noise=False)
        file_shape, dtype = array.shape, array.dtype
    else:
        file_shape, dtype, name = _array_header(path, fmt, key, noise=False)
        real = not (np.issubdtype(dtype, np.complexfloating) or dtype.names)
        _complex_dtype(dtype, where)
    shape = _signal_shape(file_shape, layout, where)
    volume = layout == "volume"
    summary: dict[str, Any] = {
        "shape_in_file": list(file_shape),
        "layout": layout,
        "dtype": str(_complex_dtype(dtype, where)),
    }
    if name:
        summary["key"] = name
    if real:
        summary["converted_from_real"] = True
    fields: dict[str, Any] = {}
    if volume:
        fields = {"kind": "3d", "volume_matrix": (shape[3], shape[0], shape[1])}
        summary["hybrid_space"] = "inverse FFT along x; axes (y, z, coils, x, replicas)"
    part = _Part(fields=fields, shape=shape, summary=summary)
    if load:
        part.signal = volume_as_slices(array) if volume else array.reshape(shape)
    return part


def _signal_shape(shape: tuple[int, ...], layout: Layout, where: str) -> tuple[int, ...]:
    if layout == "volume":
        if len(shape) in (4, 5):
            x, y, z, coils = shape[:4]
            return (y, z, coils, x, shape[4] if len(shape) == 5 else 1)
        raise InputError(
            f"{where} has shape {tuple(shape)} with layout='volume'; expected "
            "(x, y, z, coils) or (x, y, z, coils, replicas)"
        )
    if len(shape) == 3:
        return (*shape, 1, 1)
    if len(shape) == 4:
        return (*shape, 1) if layout == "slices" else (*shape[:3], 1, shape[3])
    if len(shape) == 5:
        return tuple(shape)
    raise InputError(
        f"{where} has shape {tuple(shape)}; expected (x, y, coils), (x, y, coils, slices), "
        "(x, y, coils, replicas) with layout='replicas', (x, y, coils, slices, replicas), or "
        "a volume (x, y, z, coils[, replicas]) with layout='volume'"
    )


def _noise_samples(array: np.ndarray, where: str) -> np.ndarray:
    """Noise as (samples, coils), readout-contiguous (consecutive samples along the readout)."""
    if array.ndim == 2:
        return array
    if array.ndim == 3:  # (readout, lines, coils)
        return np.moveaxis(array, 0, 1).reshape(-1, array.shape[2])
    if array.ndim == 4:  # (readout, lines, coils, slices)
        return np.moveaxis(array, (3, 1), (0, 1)).reshape(-1, array.shape[2])
    raise InputError(
        f"{where} has shape {array.shape}; expected (samples, coils), (readout, lines, coils) "
        "or (readout, lines, coils, slices)"
    )


def _complex_dtype(dtype: np.dtype, where: str) -> np.dtype:
    if dtype.names and {"real", "imag"} <= set(dtype.names):
        dtype = dtype["real"]
    if np.issubdtype(dtype, np.complexfloating):
        return np.dtype(np.complex64 if dtype.itemsize <= 8 else np.complex128)
    if np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer):
        small = dtype.itemsize <= (4 if dtype.kind == "f" else 2)
        return np.dtype(np.complex64 if small else np.complex128)
    raise InputError(f"{where} holds {dtype} values; expected complex (or real numeric) k-space")


def _as_complex(array: np.ndarray, where: str) -> tuple[np.ndarray, bool]:
    """The array as complex64/complex128, and whether it was real-valued."""
    target = _complex_dtype(array.dtype, where)
    if array.dtype.names:
        out = np.empty(array.shape, dtype=target)
        out.real, out.imag = array["real"], array["imag"]
        return out, False
    if array.dtype == target:
        return array, False
    return array.astype(target), not np.iscomplexobj(array)


def _pick(names: Sequence[str], key: str | None, path: Path, *, noise: bool, what: str) -> str:
    if key is not None:
        if key not in names:
            raise InputError(f"{path} has no {what} {key!r}; it has {sorted(names)}")
        return key
    if len(names) == 1:
        return names[0]
    for preferred in ("noise", "kspace") if noise else ("kspace", "signal"):
        if preferred in names:
            return preferred
    option = "noise_key" if noise else "key"
    raise InputError(
        f"{path} holds {len(names)} arrays {sorted(names)}; expected one, or pass {option}="
    )


# What NumPy, zipfile, scipy.io and h5py raise on damaged files.
_READ_ERRORS = (
    ValueError,
    OSError,
    EOFError,
    KeyError,
    TypeError,
    zipfile.BadZipFile,
    NotImplementedError,
    scipy.io.matlab.MatReadError,
)


@contextlib.contextmanager
def _reading(where: str, fmt: str) -> Iterator[None]:
    try:
        yield
    except InputError:
        raise
    except _READ_ERRORS as exc:
        raise InputError(
            f"{where} cannot be read as {fmt} ({exc}); expected an intact file"
        ) from exc


def _load_array(
    path: Path, fmt: Format, key: str | None, *, noise: bool
) -> tuple[np.ndarray, str | None, bool]:
    """Read one array; returns it as complex, the member/variable name and whether it was real."""
    where = f"{'noise' if noise else 'signal'} file {path}"
    with _reading(where, fmt):
        if fmt == "numpy":
            array, name = _load_numpy(path, key, noise)
        else:
            array, name = _load_matlab(path, key, noise)
    complex_array, real = _as_complex(array, where)
    return complex_array, name, real


def _load_numpy(path: Path, key: str | None, noise: bool) -> tuple[np.ndarray, str | None]:
    loaded = np.load(path, allow_pickle=False)
    if isinstance(loaded, np.ndarray):
        return loaded, None
    with loaded:
        name = _pick(loaded.files, key, path, noise=noise, what="member")
        return loaded[name], name


def _load_matlab(path: Path, key: str | None, noise: bool) -> tuple[np.ndarray, str | None]:
    if _is_mat73(path):
        with h5py.File(path, "r") as f:
            variables = _mat73_variables(f)
            name = _pick(list(variables), key, path, noise=noise, what="variable")
            data = variables[name][()]
            return np.asarray(data).T, name
    name = _pick(list(_mat5_variables(path)), key, path, noise=noise, what="numeric variable")
    return scipy.io.loadmat(path, variable_names=[name])[name], name


def _mat5_variables(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Numeric variables of a MATLAB v5 file: name -> (shape, MATLAB class)."""
    return {
        name: (tuple(shape), kind)
        for name, shape, kind in scipy.io.whosmat(path)
        if kind not in ("struct", "cell", "char", "object", "sparse")
    }


def _array_header(
    path: Path, fmt: Format, key: str | None, *, noise: bool
) -> tuple[tuple[int, ...], np.dtype, str | None]:
    """Shape and dtype of the chosen array without reading its values."""
    where = f"{'noise' if noise else 'signal'} file {path}"
    with _reading(where, fmt):
        if fmt == "numpy" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                members = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
                name = _pick(members, key, path, noise=noise, what="member")
                with archive.open(name + ".npy") as stream:
                    version = np.lib.format.read_magic(stream)
                    reader = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = reader(stream)
                    return tuple(shape), np.dtype(dtype), name
        if fmt == "numpy":
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            return mapped.shape, mapped.dtype, None
        if _is_mat73(path):
            with h5py.File(path, "r") as f:
                variables = _mat73_variables(f)
                name = _pick(list(variables), key, path, noise=noise, what="variable")
                return tuple(reversed(variables[name].shape)), variables[name].dtype, name
        variables = _mat5_variables(path)
        name = _pick(list(variables), key, path, noise=noise, what="numeric variable")
        shape, kind = variables[name]
        return shape, _MAT_CLASSES.get(kind, np.dtype(np.complex128)), name


# whosmat does not say whether a variable is complex; size floats as complex.
_MAT_CLASSES = {
    "double": np.dtype(np.complex128),
    "single": np.dtype(np.complex64),
    "int8": np.dtype(np.int8),
    "uint8": np.dtype(np.uint8),
    "int16": np.dtype(np.int16),
    "uint16": np.dtype(np.uint16),
    "int32": np.dtype(np.int32),
    "uint32": np.dtype(np.uint32),
    "int64": np.dtype(np.int64),
    "uint64": np.dtype(np.uint64),
    "logical": np.dtype(np.bool_),
}


def _is_mat73(path: Path) -> bool:
    with path.open("rb") as stream:
        head = stream.read(520)
    return head[512:520] == HDF5_SIGNATURE or head.startswith(HDF5_SIGNATURE)


def _mat73_variables(f: h5py.File) -> dict[str, h5py.Dataset]:
    """Numeric top-level variables of a MATLAB v7.3 file (structs, cells and refs left out)."""
    out = {}
    for name, item in f.items():
        if name.startswith("#") or not isinstance(item, h5py.Dataset):
            continue
        kind = item.attrs.get("MATLAB_class", b"")
        kind = kind.decode() if isinstance(kind, bytes) else str(kind)
        if kind in ("cell", "struct", "char", "function_handle") or "MATLAB_empty" in item.attrs:
            continue
        out[name] = item
    return out


# ---------------------------------------------------------------------------------------
# ISMRMRD / MRD HDF5
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _mrd_group(path: Path, group: str | None, what: str) -> Iterator[h5py.Group]:
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(
            f"{what} {path} cannot be opened as HDF5 ({exc}); expected an intact ISMRMRD file"
        ) from exc
    with f:
        names = [group] if group else ["dataset", *[n for n in f if n != "dataset"]]
        for name in names:
            item = f.get(name)
            if isinstance(item, h5py.Group) and "data" in item and "xml" in item:
                yield item
                return
        found = group or "dataset"
        raise InputError(
            f"{what} {path} has no ISMRMRD group {found!r} with 'data' and 'xml' "
            f"(top level: {sorted(f)}); expected an ISMRMRD HDF5 file"
        )


def _mrd_heads(grp: h5py.Group, path: Path, what: str) -> np.ndarray:
    data = grp["data"]
    if data.dtype.names is None or "head" not in data.dtype.names or "data" not in data.dtype.names:
        raise InputError(
            f"{what} {path}: {grp.name}/data is not acquisitions; expected {{head, traj, data}}"
        )
    try:
        return data["head"]
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(
            f"{what} {path}: acquisition headers unreadable ({exc}); expected an intact file"
        ) from exc


def _mrd_samples(
    grp: h5py.Group, indices: np.ndarray, heads: np.ndarray, path: Path, what: str
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, complex64 (channels, samples)) for each selected acquisition, read in blocks."""
    data = grp["data"]
    for start in range(0, len(indices), _READ_BLOCK):
        chunk = indices[start : start + _READ_BLOCK]
        lo, hi = int(chunk[0]), int(chunk[-1]) + 1
        try:
            block = data[lo:hi, "data"]
        except (OSError, ValueError) as exc:
            raise InputError(
                f"{what} {path}: acquisition samples unreadable ({exc}); expected an intact file"
            ) from exc
        for i in chunk:
            head = heads[i]
            flat = np.asarray(block[int(i) - lo], dtype=np.float32)
            channels, samples = int(head["active_channels"]), int(head["number_of_samples"])
            if flat.size != 2 * channels * samples:
                raise InputError(
                    f"{what} {path}: acquisition {int(i)} holds {flat.size} floats; expected "
                    f"2 x {channels} channels x {samples} samples"
                )
            yield int(i), flat.view(np.complex64).reshape(channels, samples)


def _flags_set(heads: np.ndarray, flag: int) -> np.ndarray:
    return (heads["flags"] & np.uint64(_bit(flag))) != 0


def _mrd_header(grp: h5py.Group, path: Path, what: str) -> ET.Element:
    raw = grp["xml"]
    value = raw[()] if raw.shape == () else raw[0]
    text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    try:
        # The header comes from the file; expat >= 2.4 caps entity expansion and ElementTree
        # never fetches external entities.
        return ET.fromstring(text)  # noqa: S314
    except ET.ParseError as exc:
        raise InputError(
            f"{what} {path}: XML header does not parse ({exc}); expected ISMRMRD XML"
        ) from exc


def _xml_value(root: ET.Element, path: str, cast: type = float) -> Any:
    node = root.find("/".join(f"{{*}}{p}" for p in path.split("/")))
    if node is None or node.text is None or not node.text.strip():
        return None
    try:
        return cast(node.text.strip())
    except ValueError:
        return None


def _xml_values(root: ET.Element, path: str) -> list[float]:
    nodes = root.findall("/".join(f"{{*}}{p}" for p in path.split("/")))
    out = []
    for node in nodes:
        with contextlib.suppress(TypeError, ValueError):
            out.append(float(node.text))  # type: ignore[arg-type]
    return out


def _mrd_selection(heads: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Indices of imaging and noise readouts, and counts of what was left out."""
    noise = _flags_set(heads, ACQ_IS_NOISE_MEASUREMENT)
    skipped: dict[str, int] = {}
    keep = ~noise
    calibration_only = _flags_set(heads, ACQ_IS_PARALLEL_CALIBRATION) & ~_flags_set(
        heads, ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
    )
    for name, mask in [("calibration_only", calibration_only)] + [
        (label, _flags_set(heads, bit)) for bit, label in _NOT_IMAGE_FLAGS.items()
    ]:
        hit = keep & mask
        if hit.any():
            skipped[name] = int(hit.sum())
        keep &= ~mask
    idx = heads["idx"]
    for counter in ("contrast", "phase", "set"):
        hit = keep & (idx[counter] > 0)
        if hit.any():
            skipped[f"{counter}>0"] = int(hit.sum())
        keep &= idx[counter] == 0
    hit = keep & (heads["encoding_space_ref"] > 0)
    if hit.any():
        skipped["encoding_space_ref>0"] = int(hit.sum())
    keep &= heads["encoding_space_ref"] == 0
    return np.flatnonzero(keep), np.flatnonzero(noise), skipped


def _mrd_signal(path: Path, key: str | None, remove_os: bool, *, load: bool) -> _Part:
    what = "signal file"
    with _mrd_group(path, key, what) as grp:
        root = _mrd_header(grp, path, what)
        heads = _mrd_heads(grp, path, what)
        images, noise_idx, skipped = _mrd_selection(heads)
        if len(images) == 0:
            raise InputError(
                f"{what} {path} has no imaging acquisitions; expected Cartesian k-space readouts"
            )
        trajectory = (_xml_value(root, "encoding/trajectory", str) or "cartesian").lower()
        if trajectory != "cartesian":
            raise InputError(f"{what} {path}: trajectory {trajectory!r}; expected cartesian")
        h = heads[images]
        idx = h["idx"]
        enc = [_xml_value(root, f"encoding/encodedSpace/matrixSize/{a}", int) for a in "xyz"]
        rec = [_xml_value(root, f"encoding/reconSpace/matrixSize/{a}", int) for a in "xyz"]
        fov = [_xml_value(root, f"encoding/encodedSpace/fieldOfView_mm/{a}") for a in "xyz"]
        volume = int(idx["kspace_encode_step_2"].max()) > 0 or (enc[2] or 1) > 1
        coils = np.unique(h["active_channels"])
        if len(coils) != 1:
            raise InputError(
                f"{what} {path}: imaging readouts have {coils.tolist()} channels; expected one"
            )
        nx = int(h["number_of_samples"].max())
        ny = max(int(idx["kspace_encode_step_1"].max()) + 1, enc[1] or 0)
        slices = max(
            int(idx["slice"].max()) + 1,
            (_xml_value(root, "encoding/encodingLimits/slice/maximum", int) or 0) + 1,
        )
        replicas = int(idx["repetition"].max()) + 1
        nz = max(int(idx["kspace_encode_step_2"].max()) + 1, enc[2] or 1) if volume else 1
        if volume and slices > 1:
            raise InputError(
                f"{what} {path} is 3-D with {slices} slabs; expected one 3-D slab (or 2-D slices)"
            )
        oversampled = bool(enc[0] and rec[0] and enc[0] == 2 * rec[0] and nx == enc[0])
        crop = oversampled and remove_os
        out_x = nx // 2 if crop else nx
        shape = (out_x, ny, int(coils[0]), slices, replicas)
        if volume:  # hybrid space (y, z, coils, x, replicas)
            shape = (ny, nz, int(coils[0]), out_x, replicas)
        averages = int(idx["average"].max()) + 1
        part = _Part(fields={}, shape=shape)
        if load:
            counter = "kspace_encode_step_2" if volume else "slice"
            part.signal = _mrd_assemble(
                grp,
                images,
                heads,
                (nx, ny, int(coils[0]), nz if volume else slices, replicas),
                path,
                what,
                counter,
            )
            if crop:
                part.signal = remove_readout_oversampling(part.signal, axis=0)
            if volume:
                part.signal = volume_as_slices(part.signal.transpose(0, 1, 3, 2, 4))
        if len(noise_idx):
            noise_heads = heads[noise_idx]
            part.noise_shape = (
                int(noise_heads["number_of_samples"].astype(np.int64).sum()),
                int(noise_heads["active_channels"][0]),
            )
            part.noise_readouts = len(noise_idx)
            part.noise_dwell_s = float(noise_heads["sample_time_us"][0]) * 1e-6 or None
            if load:
                part.noise = _mrd_noise(grp, noise_idx, heads, path, what)

        dx = (fov[0] / enc[0]) if fov[0] and enc[0] else None
        dy = (fov[1] / enc[1]) if fov[1] and enc[1] else None
        fov_mm = (dx * out_x, dy * ny, float(fov[2] or 0.0)) if dx and dy else None
        # 3-D: partitions of fov_z / nz; otherwise the slice thickness.
        dz = float(fov[2]) / nz if volume and fov[2] else float(fov[2] or 1.0)
        affine, affine_note = None, None
        first = {int(s): heads[i] for i, s in zip(images[::-1], idx["slice"][::-1], strict=True)}
        geometry = [first[s] for s in sorted(first)]
        if dx and dy and np.any(geometry[0]["read_dir"]) and np.any(geometry[0]["phase_dir"]):
            affine, affine_note = affine_from_geometry(
                np.array([g["position"] for g in geometry]),
                geometry[0]["read_dir"],
                geometry[0]["phase_dir"],
                geometry[0]["slice_dir"],
                (dx, dy),
                (out_x, ny),
                dz,
            )
            if volume:  # the slab centre is the centred FFT's centre partition
                affine[:3, 3] -= (nz // 2) * affine[:3, 2]
        factor = "encoding/parallelImaging/accelerationFactor/kspace_encoding_step_"
        r_step1 = _xml_value(root, f"{factor}1", int) or 1
        r_step2 = _xml_value(root, f"{factor}2", int) or 1
        calibration = _flags_set(heads, ACQ_IS_PARALLEL_CALIBRATION) | _flags_set(
            heads, ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
        )
        acs, acs_z = None, None
        if calibration.any():
            acs = len(np.unique(heads["idx"]["kspace_encode_step_1"][calibration]))
            acs_z = len(np.unique(heads["idx"]["kspace_encode_step_2"][calibration]))
        dwell = float(h["sample_time_us"][0]) * 1e-6 or None
        flip = _xml_values(root, "sequenceParameters/flipAngle_deg")
        part.fields = {
            "vendor": _xml_value(root, "acquisitionSystemInformation/systemVendor", str),
            "signal_dwell_s": dwell,
            "oversampling_removed": crop,
            "fov_mm": fov_mm,
            "affine": affine,
            "flip_angle_deg": flip[0] if flip else None,
            "acceleration": (r_step1, r_step2) if volume else (1, r_step1),
            "acs_lines": acs,
            "acs_block": ((acs, acs_z) if volume else (None, acs)) if acs else None,
        }
        if volume:
            part.fields.update(kind="3d", volume_matrix=(out_x, ny, nz))
        part.summary = {
            "dtype": "complex64",
            "group": grp.name.lstrip("/"),
            "acquisitions": len(heads),
            "imaging_acquisitions": len(images),
            "noise_acquisitions": len(noise_idx),
            "skipped_acquisitions": skipped,
            "averages_averaged": averages,
            "encoded_matrix": enc,
            "recon_matrix": rec,
            "encoded_fov_mm": fov,
            "recon_fov_mm": [
                _xml_value(root, f"encoding/reconSpace/fieldOfView_mm/{a}") for a in "xyz"
            ],
            "readout_oversampling": (enc[0] / rec[0]) if enc[0] and rec[0] else None,
            "trajectory": trajectory,
            "calibration_mode": _xml_value(root, "encoding/parallelImaging/calibrationMode", str),
            "system_model": _xml_value(root, "acquisitionSystemInformation/systemModel", str),
            "field_strength_t": _xml_value(
                root, "acquisitionSystemInformation/systemFieldStrength_T"
            ),
            "larmor_hz": _xml_value(root, "experimentalConditions/H1resonanceFrequency_Hz"),
            "relative_receiver_noise_bandwidth": _xml_value(
                root, "acquisitionSystemInformation/relativeReceiverNoiseBandwidth"
            ),
            "protocol_name": _xml_value(root, "measurementInformation/protocolName", str),
            "tr_ms": _xml_values(root, "sequenceParameters/TR"),
            "te_ms": _xml_values(root, "sequenceParameters/TE"),
            "ti_ms": _xml_values(root, "sequenceParameters/TI"),
            "flip_angle_deg": flip,
            "geometry": "MRD acquisition headers (LPS) -> RAS" if affine is not None else None,
        }
        if volume:
            part.summary["hybrid_space"] = "inverse FFT along x; axes (y, z, coils, x, replicas)"
            part.summary["partitions"] = nz
        if affine_note:
            part.summary["affine_note"] = affine_note
    return part


def _mrd_assemble(
    grp: h5py.Group,
    images: np.ndarray,
    heads: np.ndarray,
    shape: tuple[int, ...],
    path: Path,
    what: str,
    counter: str = "slice",
) -> np.ndarray:
    """Readouts placed into ``shape`` (x, y, coils, S, replicas); repeats (averages) averaged.

    S is indexed by ``counter``: ``slice``, or ``kspace_encode_step_2`` for 3-D.
    """
    signal = np.zeros(shape, dtype=np.complex64)
    counts = np.zeros((shape[1], shape[3], shape[4]), dtype=np.int32)
    nx = shape[0]
    for i, samples in _mrd_samples(grp, images, heads, path, what):
        head = heads[i]
        y, s, r = (int(head["idx"][c]) for c in ("kspace_encode_step_1", counter, "repetition"))
        n = samples.shape[1]
        offset = 0 if n == nx else max(0, min(nx - n, nx // 2 - int(head["center_sample"])))
        signal[offset : offset + n, y, :, s, r] += samples.T
        counts[y, s, r] += 1
    repeated = counts > 1
    if repeated.any():
        scale = np.where(repeated, 1.0 / np.maximum(counts, 1), 1.0).astype(np.float32)
        signal *= scale[None, :, None, :, :]
    return signal


def _mrd_noise(
    grp: h5py.Group, noise_idx: np.ndarray, heads: np.ndarray, path: Path, what: str
) -> np.ndarray:
    parts = [samples.T for _, samples in _mrd_samples(grp, noise_idx, heads, path, what)]
    coils = {p.shape[1] for p in parts}
    if len(coils) != 1:
        raise InputError(
            f"{what} {path}: noise readouts have {sorted(coils)} channels; expected one count"
        )
    return np.concatenate(parts, axis=0)


def _mrd_noise_file(path: Path, key: str | None) -> tuple[np.ndarray, float | None, dict[str, Any]]:
    what = "noise file"
    with _mrd_group(path, key, what) as grp:
        heads = _mrd_heads(grp, path, what)
        images, noise_idx, _ = _mrd_selection(heads)
        source = "noise acquisitions"
        if len(noise_idx) == 0:  # an RF-off run: every imaging readout is noise
            noise_idx, source = images, "imaging acquisitions of an RF-off run"
        if len(noise_idx) == 0:
            raise InputError(
                f"{what} {path} has no noise or imaging acquisitions; expected noise readouts"
            )
        dwell = float(heads["sample_time_us"][noise_idx[0]]) * 1e-6 or None
        noise = _mrd_noise(grp, noise_idx, heads, path, what)
    return noise, dwell, {"format": "mrd", "source": source, "readouts": len(noise_idx)}


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
) -> str:
    nx, ny, slices, replicas, coils = sizes
    nz = slices if volume else 1
    slices = 1 if volume else slices

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


# ---------------------------------------------------------------------------------------
# Siemens twix
# ---------------------------------------------------------------------------------------


def _twix_scans(path: Path, what: str) -> tuple[list[dict[str, Any]], bool, str]:
    """Parsed measurements (headers and mdh; samples stay on disk), VB flag and messages."""
    import twixtools  # deferred: only twix needs it
    from twixtools.helpers import idea_version_check

    messages = io.StringIO()
    with contextlib.ExitStack() as stack:
        name = path
        if not path.suffix:  # read_twix appends ".dat" to suffix-less names
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            name = tmp / "raw.dat"
            os.symlink(path.resolve(), name)
        stack.enter_context(contextlib.redirect_stdout(messages))
        try:
            with path.open("rb") as stream:
                is_ve, _ = idea_version_check(stream)
            scans = twixtools.read_twix(
                str(name), verbose=False, parse_pmu=False, parse_geometry=False, keep_acqend=True
            )
        except Exception as exc:  # twixtools raises anything from struct errors to NameError
            raise InputError(
                f"{what} {path} is unreadable ({exc!r}); expected a Siemens twix raw file"
            ) from exc
    scans = [s for s in scans if isinstance(s, dict)]
    if not scans or not scans[-1].get("mdb"):
        raise InputError(f"{what} {path} has no measurement data; expected a Siemens twix raw file")
    last = scans[-1]["mdb"][-1]
    if not last.is_flag_set("ACQEND"):
        raise InputError(
            f"{what} {path} is truncated (no ACQEND block); expected a complete twix file"
        )
    return scans, not is_ve, messages.getvalue().strip()


def _yaps(hdr: dict[str, Any], *keys: str | int) -> Any:
    node: Any = hdr.get("MeasYaps", {})
    for key in keys:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _twix_dwell_s(hdr: dict[str, Any]) -> float | None:
    dwell = _number(_yaps(hdr, "sRXSPEC", "alDwellTime", 0))
    if not dwell:
        meas = hdr.get("Meas", {}).get("alDwellTime")
        dwell = _number(meas[0]) if isinstance(meas, list) and meas else None
    return dwell * 1e-9 if dwell else None


def _siemens_text(value: Any) -> str | None:
    """A protocol string; Siemens writes some as UTF-7 (``gre+AF8-noise`` is ``gre_noise``)."""
    if value is None:
        return None
    text = str(value).strip('"')
    with contextlib.suppress(UnicodeError):
        text = text.encode("ascii").decode("utf-7")
    return text


def _noise_adjust(
    scans: list[dict[str, Any]], is_vb: bool, path: Path, what: str
) -> tuple[list[Any], float | None, str | None]:
    """Every NOISEADJSCAN readout of every measurement, and their dwell.

    The dwell follows siemens_to_ismrmrd's ``compute_noise_sample_in_us``: 5 us in an
    ``AdjCoilSens``/``AdjQuietCoilSens`` measurement, else ``1e6/N/130`` us (VB) or
    ``floor(76800/N)/10`` us (VD/VE), N the samples per noise readout.
    """
    found = [
        (i, m) for i, scan in enumerate(scans) for m in scan["mdb"] if m.is_flag_set("NOISEADJSCAN")
    ]
    if not found:
        return [], None, None
    channels = {int(m.mdh.UsedChannels) for _, m in found}
    if len(channels) != 1:
        raise InputError(
            f"{what} {path}: noise readouts have {sorted(channels)} channels; expected one"
        )
    samples = int(found[0][1].mdh.SamplesInScan)
    protocol = _siemens_text(_yaps(scans[found[0][0]]["hdr"], "tProtocolName"))
    if protocol in ("AdjCoilSens", "AdjQuietCoilSens"):
        dwell_us, rule = 5.0, f"{protocol} measurement: 5 us"
    elif is_vb:
        dwell_us, rule = 1e6 / samples / 130.0, f"VB: 1e6/{samples}/130 us"
    else:
        dwell_us, rule = (
            math.floor(76800.0 / samples) / 10.0,
            f"VD/VE: floor(76800/{samples})/10 us",
        )
    return [m for _, m in found], dwell_us * 1e-6, f"{rule} (siemens_to_ismrmrd's rule)"


def _stack_readouts(mdbs: Sequence[Any]) -> np.ndarray:
    """(samples, coils) from readouts of (coils, samples) each."""
    with contextlib.redirect_stdout(io.StringIO()):
        return np.concatenate([np.asarray(m.data).T for m in mdbs], axis=0).astype(
            np.complex64, copy=False
        )


def _mdh_directions(quaternion: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """read, phase, slice directions (LPS) from a Siemens mdh quaternion (W, X, Y, Z).

    As siemens_to_ismrmrd: the rotation matrix's columns are phase, read, slice.
    """
    w, a, b, c = (float(q) for q in quaternion)
    phase = np.array([1 - 2 * (b * b + c * c), 2 * (a * b + c * w), 2 * (a * c - b * w)])
    read = np.array([2 * (a * b - c * w), 1 - 2 * (a * a + c * c), 2 * (b * c + a * w)])
    normal = np.array([2 * (a * c + b * w), 2 * (b * c - a * w), 1 - 2 * (a * a + b * b)])
    return read, phase, normal


def _twix_signal(path: Path, remove_os: bool, *, load: bool) -> _Part:
    import twixtools

    what = "signal file"
    scans, is_vb, messages = _twix_scans(path, what)
    meas = scans[-1]
    hdr = meas["hdr"]
    mapped = twixtools.map_twix(meas)
    if "image" not in mapped:
        raise InputError(
            f"{what} {path}: the last measurement has no image data; expected imaging readouts"
        )
    image = mapped["image"]
    base = image.base_size
    os_factor = (
        _number(hdr.get("Meas", {}).get("flReadoutOSFactor"))
        or _number(hdr.get("Dicom", {}).get("flReadoutOSFactor"))
        or 2.0
    )
    crop = remove_os and os_factor >= 2 and int(base["Col"]) % 2 == 0
    image.flags["remove_os"] = crop
    if int(base["Par"]) > 1:
        raise InputError(
            f"{what} {path} is 3-D encoded ({int(base['Par'])} partitions); expected 2-D slices"
        )
    size = image.size
    pe_lines = int(_number(_yaps(hdr, "sKSpace", "lPhaseEncodingLines")) or 0)
    ny = max(int(size["Lin"]), pe_lines)
    shape = (int(size["Col"]), ny, int(size["Cha"]), int(size["Sli"]), int(size["Rep"]))
    ignored = {
        d: int(base[d])
        for d in ("Ide", "Idd", "Idc", "Idb", "Ida", "Set", "Phs", "Eco")
        if int(base[d]) > 1
    }

    part = _Part(fields={}, shape=shape)
    if load:
        index = tuple(
            slice(None) if d in ("Rep", "Sli", "Lin", "Cha", "Col") else 0 for d in image.dims
        )
        with contextlib.redirect_stdout(io.StringIO()):
            data = image[index]  # (Rep, Sli, Lin, Cha, Col)
        signal = np.zeros(shape, dtype=np.complex64)
        signal[:, : data.shape[2]] = data.transpose(4, 2, 3, 1, 0)
        part.signal = signal

    noise_mdbs, part.noise_dwell_s, dwell_rule = _noise_adjust(scans, is_vb, path, what)
    if noise_mdbs:
        samples = sum(int(m.mdh.SamplesInScan) for m in noise_mdbs)
        part.noise_shape = (samples, int(noise_mdbs[0].mdh.UsedChannels))
        part.noise_readouts = len(noise_mdbs)
        if load:
            part.noise = _stack_readouts(noise_mdbs)

    slice0 = _yaps(hdr, "sSliceArray", "asSlice", 0) or {}
    ro_fov, pe_fov = _number(slice0.get("dReadoutFOV")), _number(slice0.get("dPhaseFOV"))
    thickness = _number(slice0.get("dThickness")) or 1.0
    base_res = _number(_yaps(hdr, "sKSpace", "lBaseResolution"))
    # Pixel size is FOV/BaseResolution with or without oversampling (both double).
    dx = ro_fov / base_res if ro_fov and base_res else None
    dy = pe_fov / pe_lines if pe_fov and pe_lines else None
    fov_mm = (dx * shape[0], dy * ny, thickness) if dx and dy else None
    affine, affine_note = None, None
    first: dict[int, Any] = {}
    for m in image.mdb_list:
        first.setdefault(int(m.mdh.Counter.Sli), m.mdh.SliceData)
    if dx and dy and first:
        geometry = [first[s] for s in sorted(first)]
        read, phase, normal = _mdh_directions(geometry[0].Quaternion)
        positions = np.array([[g.SlicePos.Sag, g.SlicePos.Cor, g.SlicePos.Tra] for g in geometry])
        if np.linalg.norm(normal) > 0.5:
            affine, affine_note = affine_from_geometry(
                positions, read, phase, normal, (dx, dy), (shape[0], ny), thickness
            )
    flip = _number(_yaps(hdr, "adFlipAngleDegree", 0))
    accel = int(_number(_yaps(hdr, "sPat", "lAccelFactPE")) or 1)
    acs = _number(_yaps(hdr, "sPat", "lRefLinesPE"))
    part.fields = {
        "vendor": hdr.get("Dicom", {}).get("Manufacturer") or "Siemens",
        "signal_dwell_s": _twix_dwell_s(hdr),
        "oversampling_removed": crop,
        "fov_mm": fov_mm,
        "affine": affine,
        "flip_angle_deg": flip,
        "acceleration": (1, accel),
        "acs_lines": int(acs) if acs and accel > 1 else None,
        "acs_block": (None, int(acs)) if acs and accel > 1 else None,
    }
    categories = {k: len(v.mdb_list) for k, v in mapped.items() if hasattr(v, "mdb_list")}
    part.summary = {
        "dtype": "complex64",
        "software": "VB" if is_vb else "VD/VE/XA",
        "software_version": hdr.get("Dicom", {}).get("SoftwareVersions"),
        "model": hdr.get("Dicom", {}).get("ManufacturersModelName"),
        "measurements": len(scans),
        "protocol_name": _siemens_text(_yaps(hdr, "tProtocolName")),
        "sequence": _siemens_text(_yaps(hdr, "tSequenceFileName")),
        "field_strength_t": _number(_yaps(hdr, "sProtConsistencyInfo", "flNominalB0")),
        "base_resolution": base_res,
        "phase_encoding_lines": pe_lines or None,
        "readout_fov_mm": ro_fov,
        "phase_fov_mm": pe_fov,
        "slice_thickness_mm": thickness,
        "readout_oversampling": os_factor,
        "tr_us": _number(_yaps(hdr, "alTR", 0)),
        "te_us": _number(_yaps(hdr, "alTE", 0)),
        "flip_angle_deg": flip,
        "averages_averaged": int(base["Ave"]),
        "ignored_dimensions_index0": ignored,
        "readouts_by_category": categories,
        "noise_adjust_readouts": len(noise_mdbs),
        "noise_dwell_rule": dwell_rule,
        "geometry": "mdh quaternion, siemens_to_ismrmrd convention (not checked on scanner data)"
        if affine is not None
        else None,
    }
    if affine_note:
        part.summary["affine_note"] = affine_note
    if messages:
        part.summary["twixtools_messages"] = messages.splitlines()[:20]
    return part


def _twix_noise_file(path: Path) -> tuple[np.ndarray, float | None, dict[str, Any]]:
    import twixtools

    what = "noise file"
    scans, is_vb, _ = _twix_scans(path, what)
    mapped = twixtools.map_twix(scans[-1])
    if "image" in mapped:  # an RF-off run of the imaging sequence
        mdbs, dwell = mapped["image"].mdb_list, _twix_dwell_s(scans[-1]["hdr"])
        source = "image readouts of an RF-off run (oversampling kept)"
        channels = {int(m.mdh.UsedChannels) for m in mdbs}
        if len(channels) != 1:
            raise InputError(
                f"{what} {path}: readouts have {sorted(channels)} channels; expected one"
            )
    else:
        mdbs, dwell, rule = _noise_adjust(scans, is_vb, path, what)
        if not mdbs:
            raise InputError(
                f"{what} {path} has neither image nor noise-adjust readouts; expected noise"
            )
        source = f"noise-adjust readouts, dwell {rule}"
    return _stack_readouts(mdbs), dwell, {"format": "twix", "source": source, "readouts": len(mdbs)}
