"""Siemens twix raw data (``twixtools``; VB and VD/VE/XA, multi-RAID).

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

3-D twix (partition-encoded, ``sKSpace.ucDimension`` 4): one Cartesian slab, partitions
placed by ``Counter.Par`` and returned in hybrid space (``tasks.mr.io.geometry``) like 3-D
MRD; ``sPat.lAccelFactPE``/``lAccelFact3D`` give ``(R_y, R_z)`` and ``lRefLinesPE``/
``lRefLines3D`` the calibration block; the partition thickness is the slab thickness over
``sKSpace.lImagesPerSlab``. Several slabs, a non-Cartesian ``sKSpace.ucTrajectory`` and
partition counters beyond ``sKSpace.lPartitions`` are refused, naming what was found.

Not read: a separately acquired autocalibration scan (``refscan``/``PATREFSCAN``) is not part
of the signal (counted in ``summary``); EPI lines are reflected (twixtools) but not
phase-corrected or regridded.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks.errors import InputError
from tasks.mr.io.geometry import affine_from_geometry, volume_as_slices
from tasks.mr.io.types import Header, NoisePart, SignalPart


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


def twix_signal(path: Path, remove_os: bool, *, load: bool) -> SignalPart:
    """The image data of the last measurement (its headers only unless ``load``)."""
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
    size = image.size
    pe_lines = int(_number(_yaps(hdr, "sKSpace", "lPhaseEncodingLines")) or 0)
    ny = max(int(size["Lin"]), pe_lines)
    shape = (int(size["Col"]), ny, int(size["Cha"]), int(size["Sli"]), int(size["Rep"]))
    partitions = _twix_partitions(hdr, base, path, what)  # 0 for 2-D
    volume = partitions > 0
    if volume:  # hybrid space (y, z, coils, x, replicas)
        shape = (ny, partitions, int(size["Cha"]), int(size["Col"]), int(size["Rep"]))
    ignored = {
        d: int(base[d])
        for d in ("Ide", "Idd", "Idc", "Idb", "Ida", "Set", "Phs", "Eco")
        if int(base[d]) > 1
    }

    part = SignalPart(header=Header(), shape=shape)
    if load:
        kept = ("Rep", "Par", "Sli", "Lin", "Cha", "Col")
        index = tuple(slice(None) if d in kept else 0 for d in image.dims)
        with contextlib.redirect_stdout(io.StringIO()):
            data = image[index]  # (Rep, Par, Sli, Lin, Cha, Col)
        if volume:  # (x, y, z, coils, replicas), one slab
            kspace = np.zeros((shape[3], ny, partitions, shape[2], shape[4]), np.complex64)
            lines, planes = data.shape[3], data.shape[1]
            kspace[:, :lines, :planes] = data[:, :, 0].transpose(4, 2, 1, 3, 0)
            part.signal = volume_as_slices(kspace)
        else:
            signal = np.zeros(shape, dtype=np.complex64)
            signal[:, : data.shape[3]] = data[:, 0].transpose(4, 2, 3, 1, 0)
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
    nx = shape[3] if volume else shape[0]
    fov_mm = (dx * nx, dy * ny, thickness) if dx and dy else None
    # 3-D: partitions of the slab thickness (slice oversampling adds partitions, not images).
    images_per_slab = int(_number(_yaps(hdr, "sKSpace", "lImagesPerSlab")) or partitions or 1)
    dz = thickness / images_per_slab if volume else thickness
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
                positions, read, phase, normal, (dx, dy), (nx, ny), dz
            )
            if volume:  # the slab centre is the centred FFT's centre partition
                affine[:3, 3] -= (partitions // 2) * affine[:3, 2]
    flip = _number(_yaps(hdr, "adFlipAngleDegree", 0))
    accel = int(_number(_yaps(hdr, "sPat", "lAccelFactPE")) or 1)
    acs = _number(_yaps(hdr, "sPat", "lRefLinesPE"))
    accel_3d = int(_number(_yaps(hdr, "sPat", "lAccelFact3D")) or 1) if volume else 1
    acs_3d = _number(_yaps(hdr, "sPat", "lRefLines3D")) if accel_3d > 1 else None
    acs_y = int(acs) if acs and accel > 1 else None
    acs_block = (None, acs_y) if acs_y else None
    if volume and (acs_y or acs_3d):
        acs_block = (acs_y, int(acs_3d) if acs_3d else None)
    part.header = Header(
        vendor=hdr.get("Dicom", {}).get("Manufacturer") or "Siemens",
        signal_dwell_s=_twix_dwell_s(hdr),
        oversampling_removed=crop,
        fov_mm=fov_mm,
        affine=affine,
        flip_angle_deg=flip,
        acceleration=(accel, accel_3d) if volume else (1, accel),
        acs_lines=acs_y,
        acs_block=acs_block,
        kind="3d" if volume else "2d",
        volume_matrix=(nx, ny, partitions) if volume else None,
    )
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
    if volume:
        part.summary["hybrid_space"] = "inverse FFT along x; axes (y, z, coils, x, replicas)"
        part.summary["partitions"] = partitions
        part.summary["images_per_slab"] = images_per_slab
    if affine_note:
        part.summary["affine_note"] = affine_note
    if messages:
        part.summary["twixtools_messages"] = messages.splitlines()[:20]
    return part


#: ``sKSpace.ucTrajectory`` values (Siemens ``SEQ::Trajectory``); only Cartesian is read.
_TRAJECTORIES = {1: "Cartesian", 2: "radial", 4: "spiral", 8: "PROPELLER"}


def _twix_partitions(hdr: dict[str, Any], base: Any, path: Path, what: str) -> int:
    """Partitions of a 3-D (partition-encoded) measurement, 0 for 2-D.

    Raises:
        InputError: A 3-D layout not read: several slabs, a non-Cartesian trajectory, or
            partition counters beyond the protocol's ``lPartitions``.
    """
    dimension = _number(_yaps(hdr, "sKSpace", "ucDimension"))
    protocol = int(_number(_yaps(hdr, "sKSpace", "lPartitions")) or 0)
    found = int(base["Par"])
    if found <= 1 and not (dimension == 4 and protocol > 1):
        return 0
    slabs = int(base["Sli"])
    if slabs > 1:
        raise InputError(
            f"{what} {path} is 3-D with {slabs} slabs of {found} partitions; expected one slab "
            "(multi-slab twix is not read: convert it to MRD with siemens_to_ismrmrd)"
        )
    trajectory = _number(_yaps(hdr, "sKSpace", "ucTrajectory"))
    if trajectory is not None and int(trajectory) != 1:
        name = _TRAJECTORIES.get(int(trajectory), f"code {int(trajectory)}")
        raise InputError(
            f"{what} {path} is 3-D with a {name} trajectory (sKSpace.ucTrajectory="
            f"{int(trajectory)}); expected Cartesian (1)"
        )
    if protocol and found > protocol:
        raise InputError(
            f"{what} {path}: partition counters reach {found - 1} but the protocol has "
            f"sKSpace.lPartitions={protocol}; expected partitions 0 to {protocol - 1}"
        )
    return max(found, protocol)


def twix_noise_file(path: Path) -> NoisePart:
    """An RF-off run's image readouts, else its noise-adjust readouts, as (samples, coils)."""
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
    summary = {"format": "twix", "source": source, "readouts": len(mdbs)}
    return NoisePart(_stack_readouts(mdbs), dwell, summary)
