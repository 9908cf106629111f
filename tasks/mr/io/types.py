"""What every reader returns: the header, the raw arrays and the checks they share.

Axes follow the package layout (``tasks.mr``): the signal is complex
``(x, y, coils, slices, replicas)`` (3-D data: hybrid space ``(y, z, coils, x, replicas)``,
``tasks.mr.io.geometry.volume_as_slices``) and the noise is complex ``(samples, coils)``.

Dwell convention, all formats: ``signal_dwell_s`` and ``noise_dwell_s`` are the ADC dwell per
acquired sample, before any oversampling removal. With ``oversampling_removed`` the signal's
samples are twice as far apart and carry half the white-noise variance, which is why the
noise referral multiplies by ``noise_dwell/signal_dwell`` *and* by 1/2 (primer section 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from tasks.errors import InputError

Format = Literal["mrd", "twix", "numpy", "matlab"]
Layout = Literal["slices", "replicas", "volume"]
Kind = Literal["2d", "3d"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


@dataclass(frozen=True, kw_only=True, slots=True)
class Header:
    """What one format's reader learnt from its file's header (defaults: not stated).

    Attributes:
        vendor: Scanner vendor (``"SIEMENS"``, MRD ``systemVendor``), or None.
        signal_dwell_s: ADC dwell per acquired signal sample (before oversampling removal).
        oversampling_removed: Readout oversampling was removed from the signal.
        fov_mm: Field of view of the returned signal ``(x, y, slice thickness or slab)``.
        affine: 4x4 voxel -> RAS mm, or None.
        flip_angle_deg: Excitation flip angle.
        acceleration: ``(R_freq, R_phase)``; 3-D ``(R_y, R_z)``.
        acs_lines: Autocalibration lines, or None.
        kind: ``"2d"`` (slices) or ``"3d"`` (hybrid space).
        volume_matrix: ``(x, y, z)`` of a 3-D volume, else None.
        acs_block: Calibration block of the returned slices (3-D: ``(y, z)``), or None.
        reference: The file holds calibration-only readouts, returned as the reference.
        slabs: 3-D slabs stacked along z (their x positions one slab after another).
    """

    vendor: str | None = None
    signal_dwell_s: float | None = None
    oversampling_removed: bool = False
    fov_mm: tuple[float, float, float] | None = None
    affine: np.ndarray | None = None
    flip_angle_deg: float | None = None
    acceleration: tuple[int, int] = (1, 1)
    acs_lines: int | None = None
    kind: Kind = "2d"
    volume_matrix: tuple[int, int, int] | None = None
    acs_block: tuple[int | None, int | None] | None = None
    reference: bool = False
    slabs: int = 1


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
            axes are ``(y, z, coils, x, replicas)``, see ``tasks.mr.io.geometry``).
        volume_matrix: ``(x, y, z)`` of a 3-D volume, else None.
        acs_block: Calibration block ``(along axis 0, along axis 1)`` of the returned slices
            from the header (3-D: ``(y, z)``), or None.
        reference: Calibration-only readouts (a separate reference scan) come with the signal
            as ``RawData.reference``.
        slabs: 3-D slabs (multi-slab MRD): slab ``b``'s x positions are slices
            ``b * x ... (b + 1) * x - 1`` and its partitions ``b * z ...`` of
            ``volume_matrix`` (``tasks.mr.io.geometry.maps_as_volume``).
    """

    format: Format
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
    kind: Kind = "2d"
    volume_matrix: tuple[int, int, int] | None = None
    acs_block: tuple[int | None, int | None] | None = None
    reference: bool = False
    slabs: int = 1


@dataclass(slots=True)
class RawData:
    """Signal, noise and header of one acquisition.

    Attributes:
        signal: Complex k-space, shape ``(x, y, coils, slices, replicas)``; for 3-D data
            (``info.kind == "3d"``) hybrid space ``(y, z, coils, x, replicas)``.
        noise: Complex noise samples, shape ``(samples, coils)``, or None.
        info: The header.
        reference: Calibration-only readouts (a separately acquired reference scan) on the
            signal's grid, zero elsewhere, shape ``signal.shape[:4]`` (same layout, no
            replicas), or None. The reference for coil maps and the GRAPPA calibration
            (``tasks.mr.snr.snr_map``'s ``reference``).
    """

    signal: np.ndarray
    noise: np.ndarray | None
    info: AcquisitionInfo
    reference: np.ndarray | None = None

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
class SignalPart:
    """One signal file as a format's reader returns it: header, shape and (when loaded) arrays.

    Attributes:
        header: The header fields the file states.
        shape: The signal shape ``read_raw`` returns (package layout).
        signal: The signal, when loaded.
        noise: Noise readouts embedded in the file ``(samples, coils)``, when loaded.
        reference: Calibration-only readouts ``shape[:4]``, when loaded and present.
        noise_shape: ``(samples, coils)`` of the embedded noise, when there is any.
        noise_readouts: Embedded noise readouts.
        noise_dwell_s: ADC dwell per embedded noise sample.
        summary: JSON-able notes for info.json.
    """

    header: Header
    shape: tuple[int, ...]
    signal: np.ndarray | None = None
    noise: np.ndarray | None = None
    reference: np.ndarray | None = None
    noise_shape: tuple[int, int] | None = None
    noise_readouts: int | None = None
    noise_dwell_s: float | None = None
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NoisePart:
    """A separate noise file: samples ``(samples, coils)``, their dwell and notes."""

    samples: np.ndarray
    dwell_s: float | None
    summary: dict[str, Any]


def check_finite(array: np.ndarray, where: str) -> None:
    """Refuse NaN or Inf, with the count.

    Raises:
        InputError: ``array`` holds non-finite values.
    """
    bad = array.size - int(np.count_nonzero(np.isfinite(array)))
    if bad:
        raise InputError(
            f"{where} has {bad} non-finite values (NaN or Inf) out of {array.size}; "
            "expected finite k-space"
        )


def jsonable(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays as Python values, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
