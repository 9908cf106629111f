"""MRD read: our vectorised h5py reader against the ``ismrmrd`` package's acquisition loop.

Both read the same file written by ``write_mrd`` (noise readouts first, then imaging
readouts over slices and replicas) into the same arrays: the signal
``(x, y, coils, slices, replicas)`` and the noise ``(samples, coils)``. Ours is
``tasks.mr.io.read_raw``: one bulk read of the acquisition headers, then the samples in
blocks. The baseline is what a user of the reference library writes: ``ismrmrd.Dataset``,
``read_acquisition(i)`` for every acquisition, each placed by its ``idx`` counters, plus the
XML header parsed by ``ismrmrd.xsd``. The two results are compared before anything is timed.
The ratio is ours / baseline (below 1: ours is faster); the goal records why the h5py reader
is kept rather than replaced by the package.

Run: ``python -m benchmarks.mrd_read [--quick] [--repeats N]``.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks._common import Metric, parse_args, repeats_for, time_median, write_results
from tasks.mr.io import read_raw, write_mrd

NAME = "mrd_read"
# (x, y, coils, slices, replicas): 64 MiB of samples in 1,024 readouts, and 2 MiB in 256
# for --quick. The baseline's time grows with the readouts (about 7 ms each here), so the
# full case stays at a size whose baseline runs in seconds.
SHAPE_FULL = (256, 256, 16, 4, 1)
SHAPE_QUICK = (128, 64, 8, 2, 2)
NOISE_READOUTS = 64
# Ours must be at least this much faster to keep a hand-written reader.
GOAL_RATIO = 0.5
NOISE_FLAG = 1 << (19 - 1)  # ACQ_IS_NOISE_MEASUREMENT


def write_case(path: Path, shape: tuple[int, int, int, int, int]) -> Path:
    """An MRD file of ``shape`` with ``NOISE_READOUTS`` noise readouts, seeded."""
    rng = np.random.default_rng(7)

    def normal(*dims: int) -> np.ndarray:
        return (rng.standard_normal(dims) + 1j * rng.standard_normal(dims)).astype(np.complex64)

    nx, coils = shape[0], shape[2]
    return write_mrd(
        path,
        normal(*shape),
        normal(nx * NOISE_READOUTS, coils),
        fov_mm=(256.0, 256.0, 5.0),
        dwell_s=5e-6,
    )


def read_with_ismrmrd(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Signal and noise through ``ismrmrd.Dataset``, one acquisition at a time."""
    import ismrmrd

    with ismrmrd.Dataset(str(path), "dataset", create_if_needed=False) as dset:
        header = ismrmrd.xsd.CreateFromDocument(dset.read_xml_header())
        encoding = header.encoding[0]
        limits = encoding.encodingLimits
        nx = encoding.encodedSpace.matrixSize.x
        ny = encoding.encodedSpace.matrixSize.y
        slices = limits.slice.maximum + 1
        replicas = limits.repetition.maximum + 1
        coils = header.acquisitionSystemInformation.receiverChannels
        signal = np.zeros((nx, ny, coils, slices, replicas), dtype=np.complex64)
        noise = []
        for i in range(dset.number_of_acquisitions()):
            acq = dset.read_acquisition(i)
            if acq.flags & NOISE_FLAG:
                noise.append(acq.data.T)
                continue
            idx = acq.idx
            signal[:, idx.kspace_encode_step_1, :, idx.slice, idx.repetition] = acq.data.T
    return signal, np.concatenate(noise, axis=0)


def read_ours(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Signal and noise through ``tasks.mr.io.read_raw``."""
    raw = read_raw(path)
    if raw.noise is None:
        raise RuntimeError(f"{path}: read_raw found no noise readouts")
    return raw.signal, raw.noise


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    shape = SHAPE_QUICK if args.quick else SHAPE_FULL
    repeats = repeats_for(args, quick_default=3)
    with tempfile.TemporaryDirectory(prefix="sciflow-bench-mrd-") as tmp:
        path = write_case(Path(tmp) / "case.h5", shape)
        ours, theirs = read_ours(path), read_with_ismrmrd(path)
        for name, a, b in zip(("signal", "noise"), ours, theirs, strict=True):
            if a.shape != b.shape or not np.array_equal(a, b):
                raise RuntimeError(f"{name} differs between our reader and ismrmrd's")
        ours_s, ours_runs = time_median(lambda: read_ours(path), repeats)
        theirs_s, theirs_runs = time_median(lambda: read_with_ismrmrd(path), repeats)
        size = path.stat().st_size
    ratio = ours_s / theirs_s
    metric = Metric(
        "read_raw",
        ours_s * 1000,
        theirs_s * 1000,
        "ismrmrd.Dataset read_acquisition loop",
        "ms",
        goal=f"<= {GOAL_RATIO}x",
        goal_met=ratio <= GOAL_RATIO,
    )
    print(f"ours {ours_s * 1000:.1f} ms, ismrmrd {theirs_s * 1000:.1f} ms: {1 / ratio:.1f}x faster")
    write_results(
        NAME,
        [metric],
        args,
        shape=list(shape),
        noise_readouts=NOISE_READOUTS,
        file_bytes=size,
        repeats=repeats,
        runs_s={"ours": ours_runs, "ismrmrd": theirs_runs},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
