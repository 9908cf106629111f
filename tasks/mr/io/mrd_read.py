"""Read ISMRMRD/MRD HDF5 files with h5py, against the ISMRMRD 1.x spec.

Not through the ``ismrmrd`` package: one bulk read of the headers and a chunked read of the
samples (``benchmarks/mrd_read.py`` times both); the tests cross-check against the package.

- noise = acquisitions with ``ACQ_IS_NOISE_MEASUREMENT`` (flag 19) when no noise file is
  given; imaging acquisitions are placed by ``kspace_encode_step_1`` (y), ``slice`` and
  ``repetition`` (replicas); averages are averaged; contrast/phase/set other than 0,
  navigator, phase-correction, feedback, dummy and phase-stabilisation readouts are left out
  and counted in ``summary``;
- calibration-only readouts (``ACQ_IS_PARALLEL_CALIBRATION``, flag 20, without flag 21: a
  separately acquired reference scan) are placed on the same grid, averaged over repetitions,
  and returned as ``RawData.reference``: the reference for the coil maps and the GRAPPA
  calibration, not part of the signal;
- readout oversampling (encoded x = 2 x recon x) is removed from the signal by default, as on
  the Siemens path (``oversampling_removed=True``); the noise keeps it;
- dwell = ``sample_time_us``; geometry from ``position``/``read_dir``/``phase_dir``/
  ``slice_dir`` per ``affine_from_geometry``;
- 3-D Cartesian: an encoded matrix z > 1 or any ``kspace_encode_step_2`` > 0 makes the file
  3-D; partitions are placed by ``kspace_encode_step_2`` and returned in hybrid space
  (``tasks.mr.io.geometry``), the header's ``accelerationFactor`` steps 1 and 2 give
  ``(R_y, R_z)`` and the calibration readouts' distinct step-1/step-2 counters the ACS block;
- multi-slab 3-D: the ``slice`` counter numbers the slabs. Each slab is transformed on its
  own and its x positions follow the previous slab's on the slice axis; the slabs must be
  alike (readouts, lines and partitions, orientation) and, where the file has geometry,
  contiguous (centres one slab thickness apart along ``slice_dir``, in slab order), so they
  stack along z into one volume placed by slab 0. Anything else is refused, naming what was
  found.

Non-Cartesian trajectories are not read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from tasks.errors import InputError
from tasks.mr.io.geometry import (
    affine_from_geometry,
    remove_readout_oversampling,
    volume_as_slices,
)
from tasks.mr.io.hdf5 import open_hdf5
from tasks.mr.io.mrd_spec import (
    ACQ_IS_NOISE_MEASUREMENT,
    ACQ_IS_PARALLEL_CALIBRATION,
    ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING,
    NOT_IMAGE_FLAGS,
    flags_set,
)
from tasks.mr.io.mrd_xml import parse_header, xml_value, xml_values
from tasks.mr.io.types import Header, NoisePart, SignalPart

_READ_BLOCK = 4096  # MRD acquisitions per h5py read, at most
_READ_GAP = 64  # unwanted acquisitions read through rather than starting a new read


@contextlib.contextmanager
def _mrd_group(path: Path, group: str | None, what: str) -> Iterator[h5py.Group]:
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(open_hdf5(path))
        except OSError as exc:
            raise InputError(
                f"{what} {path} cannot be opened as HDF5 ({exc}); expected an intact ISMRMRD file"
            ) from exc
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
    """(index, complex64 (channels, samples)) for each selected acquisition, read in blocks.

    A block spans at most ``_READ_BLOCK`` acquisitions and no gap over ``_READ_GAP``: a batch
    of slices reads its own readouts, not everything between them.
    """
    data = grp["data"]
    for chunk in _blocks(indices):
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


def _blocks(indices: np.ndarray) -> Iterator[np.ndarray]:
    """Sorted ``indices`` cut where a block would span ``_READ_BLOCK`` or jump ``_READ_GAP``."""
    start = 0
    for i in range(1, len(indices) + 1):
        if (
            i == len(indices)
            or indices[i] - indices[start] >= _READ_BLOCK
            or indices[i] - indices[i - 1] > _READ_GAP
        ):
            yield indices[start:i]
            start = i


def _mrd_selection(heads: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Indices of imaging, noise and calibration-only readouts, and counts of what was left out.

    Calibration-only readouts (flag 20 without 21) pass the same filters as imaging ones.
    """
    noise = flags_set(heads, ACQ_IS_NOISE_MEASUREMENT)
    skipped: dict[str, int] = {}
    keep = ~noise
    for name, mask in [(label, flags_set(heads, bit)) for bit, label in NOT_IMAGE_FLAGS.items()]:
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
    calibration_only = flags_set(heads, ACQ_IS_PARALLEL_CALIBRATION) & ~flags_set(
        heads, ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
    )
    return (
        np.flatnonzero(keep & ~calibration_only),
        np.flatnonzero(noise),
        np.flatnonzero(keep & calibration_only),
        skipped,
    )


def mrd_signal(
    path: Path,
    key: str | None,
    remove_os: bool,
    *,
    load: bool,
    batch: np.ndarray | None = None,
    signal: bool = True,
) -> SignalPart:
    """The imaging readouts of an MRD file (its headers only unless ``load``).

    Args:
        path: The MRD file.
        key: Its HDF5 group, else the first ISMRMRD group found.
        remove_os: Remove 2x readout oversampling.
        load: Read the samples (else the headers only).
        batch: 2-D only: load only these slices (sorted, unique), in this order on the
            slice axis; the embedded noise is then not loaded.
        signal: With ``load``, read the imaging readouts too (else only the calibration
            reference).
    """
    what = "signal file"
    with _mrd_group(path, key, what) as grp:
        root = parse_header(grp, path, what)
        heads = _mrd_heads(grp, path, what)
        images, noise_idx, calib_idx, skipped = _mrd_selection(heads)
        if len(images) == 0:
            raise InputError(
                f"{what} {path} has no imaging acquisitions; expected Cartesian k-space readouts"
            )
        trajectory = (xml_value(root, "encoding/trajectory", str) or "cartesian").lower()
        if trajectory != "cartesian":
            raise InputError(f"{what} {path}: trajectory {trajectory!r}; expected cartesian")
        h = heads[images]
        idx = h["idx"]
        # Calibration-only readouts share the imaging grid: they size it too.
        every = heads[np.concatenate([images, calib_idx])]
        enc = [xml_value(root, f"encoding/encodedSpace/matrixSize/{a}", int) for a in "xyz"]
        rec = [xml_value(root, f"encoding/reconSpace/matrixSize/{a}", int) for a in "xyz"]
        fov = [xml_value(root, f"encoding/encodedSpace/fieldOfView_mm/{a}") for a in "xyz"]
        volume = int(every["idx"]["kspace_encode_step_2"].max()) > 0 or (enc[2] or 1) > 1
        coils = np.unique(every["active_channels"])
        if len(coils) != 1:
            raise InputError(
                f"{what} {path}: imaging and calibration readouts have {coils.tolist()} "
                "channels; expected one"
            )
        nx = int(every["number_of_samples"].max())
        ny = max(int(every["idx"]["kspace_encode_step_1"].max()) + 1, enc[1] or 0)
        slices = max(
            int(every["idx"]["slice"].max()) + 1,
            (xml_value(root, "encoding/encodingLimits/slice/maximum", int) or 0) + 1,
        )
        replicas = int(idx["repetition"].max()) + 1
        nz = 1
        if volume:
            nz = max(int(every["idx"]["kspace_encode_step_2"].max()) + 1, enc[2] or 1)
        slabs = slices if volume else 1  # 3-D: the slice counter numbers the slabs
        if slabs > 1:
            _check_slabs(h, slabs, path, what)
        oversampled = bool(enc[0] and rec[0] and enc[0] == 2 * rec[0] and nx == enc[0])
        crop = oversampled and remove_os
        out_x = nx // 2 if crop else nx
        shape = (out_x, ny, int(coils[0]), slices, replicas)
        if volume:  # hybrid space (y, z, coils, x, replicas); slabs one after another on x
            shape = (ny, nz, int(coils[0]), slabs * out_x, replicas)
        averages = int(idx["average"].max()) + 1
        part = SignalPart(header=Header(), shape=shape)
        if load:
            # The plane of each readout: its slice, or slab * nz + partition for 3-D.
            plane = heads["idx"]["slice"].astype(np.int64)
            planes = nz * slabs if volume else slices
            if volume:
                plane = plane * nz + heads["idx"]["kspace_encode_step_2"]
            elif batch is not None:  # only the batch's readouts are read
                slot = np.full(slices, -1)
                slot[batch] = np.arange(len(batch))
                plane, planes = slot[np.minimum(plane, slices - 1)], len(batch)

            def assemble(readouts: np.ndarray, repetitions: int) -> np.ndarray:
                kspace = _mrd_assemble(
                    grp,
                    readouts[plane[readouts] >= 0],
                    heads,
                    (nx, ny, int(coils[0]), planes, repetitions),
                    path,
                    what,
                    plane,
                )
                if crop:
                    kspace = remove_readout_oversampling(kspace, axis=0)
                if volume:
                    kspace = _slabs_as_slices(kspace, slabs)
                return kspace

            if signal:
                part.signal = assemble(images, replicas)
            if len(calib_idx):  # one reference; repeated calibration readouts averaged
                part.reference = assemble(calib_idx, 1)[..., 0]
        if len(noise_idx):
            noise_heads = heads[noise_idx]
            part.noise_shape = (
                int(noise_heads["number_of_samples"].astype(np.int64).sum()),
                int(noise_heads["active_channels"][0]),
            )
            part.noise_readouts = len(noise_idx)
            part.noise_dwell_s = float(noise_heads["sample_time_us"][0]) * 1e-6 or None
            if load and batch is None and signal:
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
            if slabs > 1:  # contiguous slabs stack along z: slab 0 places the volume
                _check_slab_positions(geometry, nz, dz, path, what)
                geometry = geometry[:1]
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
        r_step1 = xml_value(root, f"{factor}1", int) or 1
        r_step2 = xml_value(root, f"{factor}2", int) or 1
        calibration = flags_set(heads, ACQ_IS_PARALLEL_CALIBRATION) | flags_set(
            heads, ACQ_IS_PARALLEL_CALIBRATION_AND_IMAGING
        )
        acs, acs_z = None, None
        if calibration.any():
            acs = len(np.unique(heads["idx"]["kspace_encode_step_1"][calibration]))
            acs_z = len(np.unique(heads["idx"]["kspace_encode_step_2"][calibration]))
        dwell = float(h["sample_time_us"][0]) * 1e-6 or None
        flip = xml_values(root, "sequenceParameters/flipAngle_deg")
        part.header = Header(
            vendor=xml_value(root, "acquisitionSystemInformation/systemVendor", str),
            signal_dwell_s=dwell,
            oversampling_removed=crop,
            fov_mm=fov_mm,
            affine=affine,
            flip_angle_deg=flip[0] if flip else None,
            acceleration=(r_step1, r_step2) if volume else (1, r_step1),
            acs_lines=acs,
            acs_block=((acs, acs_z) if volume else (None, acs)) if acs else None,
            kind="3d" if volume else "2d",
            volume_matrix=(out_x, ny, nz * slabs) if volume else None,
            reference=len(calib_idx) > 0,
            slabs=slabs,
        )
        part.summary = {
            "dtype": "complex64",
            "group": grp.name.lstrip("/"),
            "acquisitions": len(heads),
            "imaging_acquisitions": len(images),
            "noise_acquisitions": len(noise_idx),
            "calibration_acquisitions": len(calib_idx),
            "skipped_acquisitions": skipped,
            "averages_averaged": averages,
            "encoded_matrix": enc,
            "recon_matrix": rec,
            "encoded_fov_mm": fov,
            "recon_fov_mm": [
                xml_value(root, f"encoding/reconSpace/fieldOfView_mm/{a}") for a in "xyz"
            ],
            "readout_oversampling": (enc[0] / rec[0]) if enc[0] and rec[0] else None,
            "trajectory": trajectory,
            "calibration_mode": xml_value(root, "encoding/parallelImaging/calibrationMode", str),
            "system_model": xml_value(root, "acquisitionSystemInformation/systemModel", str),
            "field_strength_t": xml_value(
                root, "acquisitionSystemInformation/systemFieldStrength_T"
            ),
            "larmor_hz": xml_value(root, "experimentalConditions/H1resonanceFrequency_Hz"),
            "relative_receiver_noise_bandwidth": xml_value(
                root, "acquisitionSystemInformation/relativeReceiverNoiseBandwidth"
            ),
            "protocol_name": xml_value(root, "measurementInformation/protocolName", str),
            "tr_ms": xml_values(root, "sequenceParameters/TR"),
            "te_ms": xml_values(root, "sequenceParameters/TE"),
            "ti_ms": xml_values(root, "sequenceParameters/TI"),
            "flip_angle_deg": flip,
            "geometry": "MRD acquisition headers (LPS) -> RAS" if affine is not None else None,
        }
        if volume:
            part.summary["hybrid_space"] = "inverse FFT along x; axes (y, z, coils, x, replicas)"
            part.summary["partitions"] = nz
            part.summary["slabs"] = slabs
        if affine_note:
            part.summary["affine_note"] = affine_note
    return part


def _mrd_assemble(
    grp: h5py.Group,
    readouts: np.ndarray,
    heads: np.ndarray,
    shape: tuple[int, ...],
    path: Path,
    what: str,
    plane: np.ndarray,
) -> np.ndarray:
    """Readouts placed into ``shape`` (x, y, coils, S, replicas); repeats (averages) averaged.

    S is indexed by ``plane``, one entry per acquisition header (the slice, its place in a
    batch, or slab * partitions + partition for 3-D). With one replica in ``shape`` every
    repetition lands on it (averaged).
    """
    signal = np.zeros(shape, dtype=np.complex64)
    counts = np.zeros((shape[1], shape[3], shape[4]), dtype=np.int32)
    nx = shape[0]
    for i, samples in _mrd_samples(grp, readouts, heads, path, what):
        head = heads[i]
        y, r = int(head["idx"]["kspace_encode_step_1"]), int(head["idx"]["repetition"])
        s = int(plane[i])
        r = r if shape[4] > 1 else 0
        n = samples.shape[1]
        offset = 0 if n == nx else max(0, min(nx - n, nx // 2 - int(head["center_sample"])))
        signal[offset : offset + n, y, :, s, r] += samples.T
        counts[y, s, r] += 1
    repeated = counts > 1
    if repeated.any():
        scale = np.where(repeated, 1.0 / np.maximum(counts, 1), 1.0).astype(np.float32)
        signal *= scale[None, :, None, :, :]
    return signal


def _slabs_as_slices(kspace: np.ndarray, slabs: int) -> np.ndarray:
    """(x, y, coils, slabs * z, replicas) k-space -> hybrid (y, z, coils, slabs * x, replicas).

    Each slab is transformed along x on its own (``volume_as_slices``); slab ``b``'s x
    positions become slices ``b * x ... (b + 1) * x - 1``.
    """
    nx, ny, coils, planes, replicas = kspace.shape
    nz = planes // slabs
    volumes = kspace.reshape(nx, ny, coils, slabs, nz, replicas).transpose(0, 1, 4, 2, 3, 5)
    hybrid = volume_as_slices(volumes.reshape(nx, ny, nz, coils, slabs * replicas))
    hybrid = hybrid.reshape(ny, nz, coils, nx, slabs, replicas).transpose(0, 1, 2, 4, 3, 5)
    return np.ascontiguousarray(hybrid.reshape(ny, nz, coils, slabs * nx, replicas))


def _check_slabs(h: np.ndarray, slabs: int, path: Path, what: str) -> None:
    """Refuse multi-slab 3-D data whose slabs are not alike.

    Every slab must hold readouts, the same number of them over the same lines and
    partitions, in the same orientation.

    Args:
        h: The imaging acquisition headers.
        slabs: Slabs the file declares.
        path: The file, for messages.
        what: What the file is, for messages.
    """
    idx = h["idx"]
    found = np.unique(idx["slice"])
    if len(found) != slabs:
        missing = sorted(set(range(slabs)) - set(found.tolist()))
        raise InputError(
            f"{what} {path} is 3-D with {slabs} slabs but slabs {missing} have no readouts; "
            "expected every slab acquired"
        )
    layouts = []
    for slab in range(slabs):
        mine = idx["slice"] == slab
        steps = {
            (int(a), int(b))
            for a, b in zip(
                idx["kspace_encode_step_1"][mine], idx["kspace_encode_step_2"][mine], strict=True
            )
        }
        layouts.append((int(mine.sum()), len(steps), 1 + max(b for _, b in steps)))
        if layouts[-1] != layouts[0]:
            count, lines, partitions = layouts[-1]
            count0, lines0, partitions0 = layouts[0]
            raise InputError(
                f"{what} {path}: slab {slab} has {count} readouts on {lines} (line, partition) "
                f"positions over {partitions} partitions, slab 0 {count0} on {lines0} over "
                f"{partitions0}; expected every slab encoded alike"
            )
        first = h[np.flatnonzero(mine)[0]]
        for name in ("read_dir", "phase_dir", "slice_dir"):
            if not np.allclose(first[name], h[0][name], atol=1e-4):
                raise InputError(
                    f"{what} {path}: slab {slab} has {name} {_rounded(first[name])}, "
                    f"slab 0 {_rounded(h[0][name])}; expected parallel slabs"
                )


def _rounded(values: np.ndarray) -> list[float]:
    """Direction cosines as short floats for a message."""
    return [round(float(v), 4) for v in values]


def _check_slab_positions(
    geometry: list[np.void], partitions: int, partition_mm: float, path: Path, what: str
) -> None:
    """Refuse slabs that overlap, leave gaps or run against the slice direction.

    Slab ``b``'s centre must lie ``b`` slab thicknesses (``partitions * partition_mm``) along
    ``slice_dir`` from slab 0's, so the slabs stack into one volume on the partition grid
    (within 1% of a partition).

    Args:
        geometry: The first imaging header of each slab, in slab order.
        partitions: Partitions per slab.
        partition_mm: Partition thickness.
        path: The file, for messages.
        what: What the file is, for messages.
    """
    thickness_mm = partitions * partition_mm
    centres = np.array([g["position"] for g in geometry], dtype=np.float64)
    normal = np.asarray(geometry[0]["slice_dir"], dtype=np.float64)
    expected = centres[0] + np.arange(len(centres))[:, None] * thickness_mm * normal
    if not np.allclose(centres, expected, atol=0.01 * partition_mm):
        steps = np.round((centres[1:] - centres[:-1]) @ normal, 3).tolist()
        raise InputError(
            f"{what} {path}: slab centres step {steps} mm along the slice direction; expected "
            f"contiguous slabs {thickness_mm:.4g} mm apart (the slab thickness), in slab order"
        )


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


def mrd_noise_file(path: Path, key: str | None) -> NoisePart:
    """The noise readouts of an MRD file, or every imaging readout of an RF-off run."""
    what = "noise file"
    with _mrd_group(path, key, what) as grp:
        heads = _mrd_heads(grp, path, what)
        images, noise_idx, _, _ = _mrd_selection(heads)
        source = "noise acquisitions"
        if len(noise_idx) == 0:  # an RF-off run: every imaging readout is noise
            noise_idx, source = images, "imaging acquisitions of an RF-off run"
        if len(noise_idx) == 0:
            raise InputError(
                f"{what} {path} has no noise or imaging acquisitions; expected noise readouts"
            )
        dwell = float(heads["sample_time_us"][noise_idx[0]]) * 1e-6 or None
        noise = _mrd_noise(grp, noise_idx, heads, path, what)
    return NoisePart(noise, dwell, {"format": "mrd", "source": source, "readouts": len(noise_idx)})
