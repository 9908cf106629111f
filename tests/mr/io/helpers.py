"""Builders the reader tests share: random complex arrays, MATLAB v7.3 and twix files, memory."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import h5py
import numpy as np


def random_complex(
    rng: np.random.Generator, shape: tuple[int, ...], dtype=np.complex64
) -> np.ndarray:
    """Standard complex normal samples (unit variance per real and imaginary part)."""
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def write_mat73(path: Path, **arrays: np.ndarray) -> Path:
    """A MATLAB v7.3 file as MATLAB writes one: HDF5 after a 512-byte text header, arrays
    transposed (column-major), complex as a {real, imag} compound, a MATLAB_class attribute."""
    with h5py.File(path, "w", userblock_size=512) as f:
        for name, array in arrays.items():
            if np.iscomplexobj(array):
                data = np.empty(array.shape[::-1], dtype=[("real", "<f8"), ("imag", "<f8")])
                data["real"], data["imag"] = array.real.T, array.imag.T
            else:
                data = array.T
            f.create_dataset(name, data=data).attrs["MATLAB_class"] = np.bytes_("double")
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Nov 24 12:00:00 2026"
    text += b" HDF5 schema 1.00 ."
    header = text.ljust(116) + b"\x00" * 8 + struct.pack("<H", 0x0200) + b"IM"
    with path.open("r+b") as stream:
        stream.write(header.ljust(512, b"\x00"))
    return path


def peak_bytes(fn) -> int:
    """Peak bytes traced by tracemalloc while ``fn()`` runs."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def twix_header(yaps: dict[str, object], meas: str = "", dicom: str = "") -> np.ndarray:
    """A twix measurement header: buffers of ASCCONV (MeasYaps) and XProtocol text."""
    ascconv = "".join(f"{key} = {value}\n" for key, value in yaps.items())
    buffers = {
        "Config": "",
        "Dicom": dicom,
        "Meas": meas,
        "MeasYaps": f"### ASCCONV BEGIN ###\n{ascconv}### ASCCONV END ###\n",
        "Phoenix": "",
    }
    body = b""
    for name, text in buffers.items():
        content = text.encode("latin1") + b"\x00"
        body += name.encode() + b"\x00" + struct.pack("<I", len(content)) + content
    length = 8 + len(body)
    length += -length % 32
    raw = (struct.pack("<II", length, len(buffers)) + body).ljust(length, b"\x00")
    return np.frombuffer(raw, dtype="S1").copy()


def write_twix(
    path: Path,
    kspace_os: np.ndarray,
    noise_readouts: np.ndarray,
    *,
    volume: bool = False,
    slabs: int = 1,
    yaps: dict[str, object] | None = None,
    oversampling: float = 2.0,
) -> Path:
    """A VE multi-RAID file: RAID 0 the AdjCoilSens noise scan, RAID 1 the image data.

    Args:
        kspace_os: (2*x, y, coils, slices, replicas), readout oversampled; with ``volume``
            one 3-D slab (2*x, y, partitions, coils, replicas), written with ``Counter.Par``
            and ``sKSpace.ucDimension`` 4. Readouts that are all zero are not written (an
            undersampled acquisition).
        noise_readouts: (readouts, coils, samples).
        slabs: With ``volume``, the partitions split into this many slabs (``Counter.Sli``).
        yaps: Protocol entries added to (or replacing) the defaults.
        oversampling: ``flReadoutOSFactor``: 2 (the readout is oversampled) or 1.
    """
    import twixtools
    from twixtools.mdb import Mdb_local

    def acqend() -> Mdb_local:
        mdb = Mdb_local()
        mdb.add_flag("ACQEND")
        return mdb

    noise = []
    for readout in noise_readouts:
        mdb = Mdb_local(readout)
        mdb.add_flag("NOISEADJSCAN")
        noise.append(mdb)
    if volume:  # partitions take the slice loop: (x, y, coils, z, replicas)
        kspace_os = kspace_os.transpose(0, 1, 3, 2, 4)
    nx, ny, _, slices, replicas = kspace_os.shape
    image = []
    for r in range(replicas):
        for s in range(slices):
            for y in range(ny):
                line = np.ascontiguousarray(kspace_os[:, y, :, s, r].T)
                if not line.any():
                    continue
                mdb = Mdb_local(line)
                mdb.mdh.Counter.Lin, mdb.mdh.Counter.Rep = y, r
                if volume:
                    per_slab = slices // slabs
                    mdb.mdh.Counter.Par, mdb.mdh.Counter.Sli = s % per_slab, s // per_slab
                else:
                    mdb.mdh.Counter.Sli = s
                    mdb.mdh.SliceData.SlicePos.Tra = 5.0 * s
                mdb.mdh.SliceData.Quaternion[:] = (1.0, 0.0, 0.0, 0.0)
                image.append(mdb)
    protocol = {
        "tProtocolName": '"synthetic"',
        "sRXSPEC.alDwellTime[0]": 5000,
        "sKSpace.lBaseResolution": nx // 2,
        "sKSpace.lPhaseEncodingLines": ny,
        "sSliceArray.asSlice[0].dReadoutFOV": 200.0,
        "sSliceArray.asSlice[0].dPhaseFOV": 150.0,
        "sSliceArray.asSlice[0].dThickness": 5.0,
        "adFlipAngleDegree[0]": 15.0,
    }
    if volume:
        protocol |= {
            "sKSpace.ucDimension": 4,
            "sKSpace.lPartitions": slices // slabs,
            "sKSpace.lImagesPerSlab": slices // slabs,
        }
    protocol |= yaps or {}
    meas = f'<ParamDouble."flReadoutOSFactor">  {{ <Precision> 6  {oversampling:.6f}  }}\n'
    dicom = '<ParamString."Manufacturer">  { "SIEMENS"  }\n'
    scans = [
        {"hdr_str": twix_header({"tProtocolName": '"AdjCoilSens"'}), "mdb": [*noise, acqend()]},
        {"hdr_str": twix_header(protocol, meas, dicom), "mdb": [*image, acqend()]},
    ]
    twixtools.write_twix(scans, str(path))
    return path
