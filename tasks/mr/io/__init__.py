"""Raw MR k-space and noise from ISMRMRD/MRD HDF5, Siemens twix, NumPy and MATLAB files.

- ``types``: the header (``AcquisitionInfo``), ``RawData`` and the shared checks;
- ``read``: ``read_raw``/``read_info`` for any format, through one table of readers;
- ``mrd_read`` (with ``mrd_xml``), ``mrd_write`` (with ``mrd_spec``, the layout both share),
  ``twix``, ``arrays`` (NumPy and MATLAB): one format each;
- ``slices``: one batch of slices at a time, staging what cannot be read by slice;
- ``geometry``: affines, readout oversampling and the 3-D hybrid space.
"""

from tasks.mr.io.geometry import (
    affine_from_geometry,
    maps_as_volume,
    remove_readout_oversampling,
    slices_as_volume,
    volume_as_maps,
    volume_as_slices,
)
from tasks.mr.io.mrd_write import write_mrd
from tasks.mr.io.read import detect_format, read_info, read_raw
from tasks.mr.io.types import AcquisitionInfo, Format, Layout, RawData

__all__ = [
    "AcquisitionInfo",
    "Format",
    "Layout",
    "RawData",
    "affine_from_geometry",
    "detect_format",
    "maps_as_volume",
    "read_info",
    "read_raw",
    "remove_readout_oversampling",
    "slices_as_volume",
    "volume_as_maps",
    "volume_as_slices",
    "write_mrd",
]
