"""Read any supported raw file: the format is found from content, then one table names its reader.

Everything comes back in the package layout (``tasks.mr``): the signal is complex
``(x, y, coils, slices, replicas)`` and the noise is complex ``(samples, coils)``.
``read_info`` gives the header and the signal shape without reading the data arrays, for
memory and time estimates. NaN or Inf anywhere in the signal or noise raises ``InputError``
with the count.

Formats are told apart by content (NumPy magic, zip, MATLAB text header, HDF5 signature at
byte 0 or 512); the ``.dat`` suffix or ``vendor="siemens"`` selects twix, which has no
reliable magic. ``vendor`` (MR Optimum's field: ``siemens``, ``numpy``, ``matlab``; also
``mrd``/``ismrmrd``/``twix``) is a hint: content that says otherwise wins and
``summary["vendor_hint_ignored"]`` records it (a Siemens scan converted to MRD is still MRD).
What each format accepts: ``tasks.mr.io.mrd_read``, ``twix`` and ``arrays``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import InputError
from tasks.mr.io.arrays import array_noise_file, array_signal
from tasks.mr.io.mrd_read import mrd_noise_file, mrd_signal
from tasks.mr.io.twix import twix_noise_file, twix_signal
from tasks.mr.io.types import (
    HDF5_SIGNATURE,
    AcquisitionInfo,
    Format,
    Layout,
    NoisePart,
    RawData,
    SignalPart,
    check_finite,
    jsonable,
)


@dataclass(frozen=True, slots=True)
class FormatReader:
    """How one format is read.

    Attributes:
        signal: ``(path, key, layout, remove_oversampling, load=...)`` -> the signal part;
            headers only unless ``load``.
        noise: ``(path, key)`` -> a separate noise file's samples.
    """

    signal: Callable[..., SignalPart]
    noise: Callable[[Path, str | None], NoisePart]


READERS: dict[Format, FormatReader] = {
    "mrd": FormatReader(
        signal=lambda path, key, layout, remove_os, *, load: mrd_signal(
            path, key, remove_os, load=load
        ),
        noise=mrd_noise_file,
    ),
    "twix": FormatReader(
        signal=lambda path, key, layout, remove_os, *, load: twix_signal(
            path, remove_os, load=load
        ),
        noise=lambda path, key: twix_noise_file(path),
    ),
    "numpy": FormatReader(
        signal=lambda path, key, layout, remove_os, *, load: array_signal(
            path, "numpy", key, layout, load=load
        ),
        noise=lambda path, key: array_noise_file(path, "numpy", key),
    ),
    "matlab": FormatReader(
        signal=lambda path, key, layout, remove_os, *, load: array_signal(
            path, "matlab", key, layout, load=load
        ),
        noise=lambda path, key: array_noise_file(path, "matlab", key),
    ),
}

# MR Optimum's vendor field (and our aliases) -> the format it suggests.
VENDOR_FORMATS: dict[str, Format] = {
    "siemens": "twix",
    "twix": "twix",
    "numpy": "numpy",
    "matlab": "matlab",
    "mrd": "mrd",
    "ismrmrd": "mrd",
}


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
        replicas)``, ``tasks.mr.io.geometry``), noise ``(samples, coils)``, header, and the
        calibration-only readouts as ``reference`` (MRD) when the file has them.

    Raises:
        InputError: Unreadable, truncated or wrong-format files, unsupported shapes, coil
            counts that differ between signal and noise, NaN or Inf values.
    """
    signal = Path(signal)
    fmt, part = _read_signal(signal, key, vendor, layout, remove_oversampling, load=True)
    if part.signal is None:  # every reader fills it when load=True
        raise RuntimeError(f"reader returned no signal for {signal}")
    check_finite(part.signal, f"signal file {signal}")
    if part.reference is not None:
        check_finite(part.reference, f"calibration readouts of signal file {signal}")
    noise_array, noise_dwell = part.noise, part.noise_dwell_s
    noise_summary: dict[str, Any] = {}
    where = f"noise readouts in signal file {signal}"
    if part.noise is not None:
        noise_summary["source"] = "noise readouts in the signal file"
        noise_summary["readouts"] = part.noise_readouts
    if noise is not None:
        noise = Path(noise)
        where = f"noise file {noise}"
        noise_part = READERS[detect_format(noise)].noise(noise, noise_key)
        noise_array, noise_dwell = noise_part.samples, noise_part.dwell_s
        noise_summary = dict(noise_part.summary)
        noise_summary["file"] = noise.name
        if part.noise is not None:
            noise_summary["embedded_noise_ignored"] = True
    if noise_array is not None:
        check_finite(noise_array, where)
        coils = part.shape[2]
        if noise_array.shape[1] != coils:
            raise InputError(
                f"{where} has {noise_array.shape[1]} coils but signal file {signal} has {coils}; "
                "expected the same receive channels (noise shaped (samples, coils))"
            )
        noise_summary["samples"] = int(noise_array.shape[0])
    info = _finish_info(part, fmt, noise_dwell, noise_summary)
    return RawData(signal=part.signal, noise=noise_array, info=info, reference=part.reference)


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
    fmt, part = _read_signal(Path(signal), key, vendor, layout, remove_oversampling, load=False)
    noise_summary = {}
    if part.noise_shape is not None:
        noise_summary["samples"] = part.noise_shape[0]
    return _finish_info(part, fmt, part.noise_dwell_s, noise_summary), part.shape


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
    wanted = VENDOR_FORMATS.get((vendor or "").lower())
    if wanted == "twix" or (vendor is None and path.suffix.lower() == ".dat"):
        return "twix"
    hint = f" (vendor={vendor!r}; known: {sorted(VENDOR_FORMATS)})" if vendor else ""
    raise InputError(
        f"{path}: unrecognised content (first bytes {head[:8]!r}){hint}; expected ISMRMRD HDF5 "
        "(.h5/.mrd), Siemens twix (.dat), NumPy (.npy/.npz) or MATLAB (.mat)"
    )


def _read_signal(
    path: Path, key: str | None, vendor: str | None, layout: Layout, remove_os: bool, *, load: bool
) -> tuple[Format, SignalPart]:
    if layout not in ("slices", "replicas", "volume"):
        raise InputError(f"layout={layout!r}; expected 'slices', 'replicas' or 'volume'")
    fmt = detect_format(path, vendor)
    part = READERS[fmt].signal(path, key, layout, remove_os, load=load)
    part.summary = {"format": fmt, "file": path.name, "bytes": path.stat().st_size, **part.summary}
    if vendor is not None and VENDOR_FORMATS.get(vendor.lower()) != fmt:
        part.summary["vendor_hint_ignored"] = f"{vendor} (the content is {fmt})"
    return fmt, part


def _finish_info(
    part: SignalPart, fmt: Format, noise_dwell_s: float | None, noise_summary: dict[str, Any]
) -> AcquisitionInfo:
    x, y, coils, slices, replicas = part.shape
    summary = dict(part.summary)
    summary["shape"] = list(part.shape)
    if noise_summary:
        summary["noise"] = {**summary.get("noise", {}), **noise_summary}
    if noise_dwell_s is not None:
        summary.setdefault("noise", {})["dwell_s"] = noise_dwell_s
    header = part.header
    return AcquisitionInfo(
        format=fmt,
        vendor=header.vendor,
        matrix=(x, y, slices),
        coils=coils,
        replicas=replicas,
        signal_dwell_s=header.signal_dwell_s,
        noise_dwell_s=noise_dwell_s,
        oversampling_removed=header.oversampling_removed,
        fov_mm=header.fov_mm,
        affine=header.affine,
        flip_angle_deg=header.flip_angle_deg,
        acceleration=header.acceleration,
        acs_lines=header.acs_lines,
        summary=jsonable(summary),
        kind=header.kind,
        volume_matrix=header.volume_matrix,
        acs_block=header.acs_block,
        reference=header.reference,
        slabs=header.slabs,
    )
