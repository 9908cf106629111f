"""The ISMRMRD 1.x HDF5 layout our MRD reader and writer share: flags and record dtypes.

An MRD file holds ``/<group>/xml`` (the XML header) and ``/<group>/data``, one record per
readout: a packed 340-byte ``ISMRMRD_AcquisitionHeader``, the trajectory and the samples.
"""

from __future__ import annotations

import h5py
import numpy as np

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
NOT_IMAGE_FLAGS = {
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


def bit(flag: int) -> int:
    """The mask of ISMRMRD flag number ``flag`` (1-based)."""
    return 1 << (flag - 1)


def flags_set(heads: np.ndarray, flag: int) -> np.ndarray:
    """Which acquisition headers have ``flag`` set, shape (acquisitions,) bool."""
    return (heads["flags"] & np.uint64(bit(flag))) != 0


def interleave(samples: np.ndarray) -> np.ndarray:
    """(channels, samples) complex -> flat float32 real/imag pairs, as ISMRMRD stores them."""
    return np.ascontiguousarray(samples, dtype=np.complex64).view(np.float32).ravel()
