"""SNR outputs as bytes: NIfTI volumes, PNG previews and MR Optimum's info.json.

Nothing here touches storage: each function returns the file's bytes and the caller writes
them atomically (``write_snr_outputs`` hands every file to the caller's ``put``). File names
and ids follow MR Optimum (``mrotools/snr.py``), so its viewer
and scripts find them: ``data/SNR.nii.gz`` (id 0), ``data/NC.nii.gz`` (1), ``data/NCC.nii.gz``
(2), ``data/IG.nii.gz`` (3), ``data/G.nii.gz`` (4), ``data/G_GRAPPA.nii.gz`` (5),
``data/IG_GRAPPA.nii.gz`` (6), ``data/sensitivity_XX.nii.gz`` (10 + XX) and
``data/mask_00.nii.gz`` (100).
"""

from __future__ import annotations

import gzip
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from typing import Any, Literal

import numpy as np

from tasks import provenance
from tasks.credentials import without_credentials
from tasks.errors import InputError
from tasks.mr.io import AcquisitionInfo, maps_as_volume, volume_as_maps
from tasks.mr.noise import NoiseStatistics, noise_coefficient
from tasks.mr.options import MrOptions
from tasks.mr.snr import SnrMaps, flip_angle_corrected

MapKind = Literal["snr", "g", "mask", "sensitivity"]
MatrixKind = Literal["covariance", "coefficient"]
OutputType = Literal["output", "accessory", "mask"]

# MR Optimum's output ids and files (mrotools/mro.py, snr.py).
MRO_OUTPUTS: dict[str, tuple[int, str, str, OutputType]] = {
    "snr": (0, "data/SNR.nii.gz", "SNR", "output"),
    "noise_covariance": (1, "data/NC.nii.gz", "Noise Covariance", "output"),
    "noise_coefficients": (2, "data/NCC.nii.gz", "Noise Coefficients", "output"),
    "inverse_g": (3, "data/IG.nii.gz", "Inverse G Factor", "accessory"),
    "g": (4, "data/G.nii.gz", "G Factor", "accessory"),
    "g_grappa": (5, "data/G_GRAPPA.nii.gz", "G Factor GRAPPA", "accessory"),
    "inverse_g_grappa": (6, "data/IG_GRAPPA.nii.gz", "Inverse G Factor GRAPPA", "accessory"),
    "mask": (100, "data/mask_00.nii.gz", "Coil Sensitivity Mask 00", "mask"),
}
SENSITIVITY_ID = 10  # coil c is id 10 + c, data/sensitivity_{c:02d}.nii.gz

PNG_SIZE_PX = (640, 512)  # width, height of every preview
PNG_DPI = 100
PERCENTILE = 99.0
COLORMAPS: dict[str, str] = {
    "snr": "viridis",
    "g": "magma",
    "sensitivity": "cividis",
    "mask": "gray",
    "covariance": "viridis",
    "coefficient": "viridis",
}
PACKAGES = ("sciflow", "numpy", "scipy", "nibabel", "matplotlib", "pydantic")


# --- NIfTI -----------------------------------------------------------------------------------


def nifti_bytes(
    volume: np.ndarray,
    affine: np.ndarray | None = None,
    voxel_mm: Sequence[float] | None = None,
) -> bytes:
    """A gzipped NIfTI-1 file (``.nii.gz``) of a real map, float32.

    NaN and Inf become 0, as MR Optimum writes them. Slices are stacked on the last axis.

    Args:
        volume: Real map, shape (x, y, slices), or (x, y) for one slice.
        affine: Voxel-to-world (RAS, mm) 4x4 matrix; it takes precedence over ``voxel_mm``.
        voxel_mm: (dx, dy[, dz]) in mm when there is no geometry: the affine is then
            ``diag(dx, dy, dz, 1)`` (dz = 1 when omitted); 1 mm when both are None.

    Returns:
        The ``.nii.gz`` bytes; ``nibabel.Nifti1Image.from_bytes(gzip.decompress(b))`` reads them.
    """
    data = np.asarray(volume)
    if np.iscomplexobj(data):
        raise InputError(
            "volume is complex; expected a real map (take np.abs, or use "
            "sensitivity_nifti_bytes for complex coil maps)"
        )
    if data.ndim == 2:
        data = data[..., np.newaxis]
    if data.ndim != 3 or 0 in data.shape:
        raise InputError(f"volume has shape {data.shape}; expected (x, y, slices)")
    return _nifti(_finite(data.astype(np.float32)), affine, voxel_mm)


def sensitivity_nifti_bytes(
    maps: np.ndarray,
    affine: np.ndarray | None = None,
    voxel_mm: Sequence[float] | None = None,
    *,
    store: Literal["magnitude", "complex"] = "magnitude",
) -> bytes:
    """A gzipped NIfTI-1 file of multi-coil (complex) sensitivity maps.

    ``store="magnitude"`` writes |S| as float32, shape (x, y, slices, coils): viewers show
    coils as the 4th (time) dimension. ``store="complex"`` keeps the phase as complex64,
    shape (x, y, slices, 1, coils): coils go on NIfTI's 5th dimension (a singleton time axis
    keeps them from being read as time points). MR Optimum writes one complex64 file per coil,
    ``data/sensitivity_XX.nii.gz``; pass ``maps[..., c:c + 1]`` with ``store="complex"`` and
    squeeze for that layout. NaN and Inf become 0.

    Args:
        maps: Coil maps, shape (x, y, slices, coils), complex or real.
        affine: As for ``nifti_bytes``.
        voxel_mm: As for ``nifti_bytes``.
        store: ``magnitude`` or ``complex``.
    """
    data = np.asarray(maps)
    if data.ndim != 4 or 0 in data.shape:
        raise InputError(f"maps has shape {data.shape}; expected (x, y, slices, coils)")
    if store == "magnitude":
        out = np.abs(data).astype(np.float32)
    elif store == "complex":
        out = data.astype(np.complex64)[:, :, :, np.newaxis, :]
    else:
        raise InputError(f"store={store!r} is not supported; expected 'magnitude' or 'complex'")
    return _nifti(_finite(out), affine, voxel_mm)


def _finite(data: np.ndarray) -> np.ndarray:
    if np.iscomplexobj(data):
        bad = ~np.isfinite(data.real) | ~np.isfinite(data.imag)
    else:
        bad = ~np.isfinite(data)
    if bad.any():
        data = data.copy()
        data[bad] = 0
    return data


def voxel_affine(voxel_mm: Sequence[float] | None = None) -> np.ndarray:
    """``diag(dx, dy, dz, 1)`` for data without geometry (primer section 7); 1 mm default."""
    sizes = [1.0, 1.0, 1.0] if voxel_mm is None else [float(v) for v in voxel_mm]
    if len(sizes) == 2:
        sizes.append(1.0)
    if len(sizes) != 3 or not all(math.isfinite(v) and v > 0 for v in sizes):
        raise InputError(f"voxel_mm={tuple(voxel_mm or ())}; expected 2 or 3 positive sizes in mm")
    return np.diag([*sizes, 1.0])


def _nifti(data: np.ndarray, affine: np.ndarray | None, voxel_mm: Sequence[float] | None) -> bytes:
    import nibabel as nib

    if affine is None:
        matrix = voxel_affine(voxel_mm)
    else:
        matrix = np.asarray(affine, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.all(np.isfinite(matrix)):
            raise InputError(f"affine has shape {matrix.shape}; expected a finite 4x4 matrix")
    image = nib.Nifti1Image(data, matrix)
    image.header.set_xyzt_units(xyz="mm")
    image.header.set_qform(matrix, code=1)
    image.header.set_sform(matrix, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


# --- PNG previews ----------------------------------------------------------------------------


def display_limits(values: np.ndarray, kind: MapKind) -> tuple[float, float]:
    """Colour limits of a preview: vmin 0 (g: 1), vmax at the 99th percentile.

    The percentile runs over finite values; g maps ignore values <= 0 (pixels MR Optimum
    sets to 0 where g is undefined). Masks are always (0, 1). When the percentile does not
    exceed vmin, vmax = vmin + 1 so the colour bar stays readable.
    """
    if kind == "mask":
        return 0.0, 1.0
    vmin = 1.0 if kind == "g" else 0.0
    data = np.abs(np.asarray(values)) if np.iscomplexobj(values) else np.asarray(values, float)
    finite = data[np.isfinite(data)]
    if kind == "g":
        finite = finite[finite > 0]
    vmax = float(np.percentile(finite, PERCENTILE)) if finite.size else vmin
    return vmin, vmax if vmax > vmin else vmin + 1.0


def map_png(values: np.ndarray, *, title: str, label: str, kind: MapKind) -> bytes:
    """A PNG preview of one map, ``PNG_SIZE_PX`` pixels, with a labelled colour bar.

    Orientation: x (readout) runs down the rows and y (phase encoding) to the right, pixel
    (0, 0) at the top left: ``imshow(values)`` as MR Optimum's own preview, and the axes
    say so. Colour maps are perceptually uniform (viridis for SNR, magma for g, cividis for
    coil maps) and limits come from ``display_limits``. Complex values are shown as magnitude.

    Args:
        values: The map, shape (x, y).
        title: Figure title.
        label: Colour bar label with units, e.g. ``"SNR (per-component units)"``.
        kind: ``snr``, ``g``, ``mask`` or ``sensitivity``.
    """
    data = np.asarray(values)
    if data.ndim != 2 or 0 in data.shape:
        raise InputError(f"values has shape {data.shape}; expected (x, y)")
    if kind not in ("snr", "g", "mask", "sensitivity"):
        raise InputError(f"kind={kind!r}; expected 'snr', 'g', 'mask' or 'sensitivity'")
    data = np.abs(data) if np.iscomplexobj(data) else data.astype(np.float64)
    vmin, vmax = display_limits(data, kind)
    figure, axes = _figure()
    image = axes.imshow(
        np.ma.masked_invalid(data),
        cmap=COLORMAPS[kind],
        vmin=vmin,
        vmax=vmax,
        origin="upper",
        interpolation="nearest",
    )
    axes.set_title(title)
    axes.set_xlabel("y (phase encoding)")
    axes.set_ylabel("x (readout)")
    extend = "max" if kind != "mask" and np.nanmax(data, initial=vmin) > vmax else "neither"
    colorbar = figure.colorbar(image, ax=axes, extend=extend)
    colorbar.set_label(label)
    return _png(figure)


def matrix_png(matrix: np.ndarray, *, title: str, kind: MatrixKind) -> bytes:
    """A heatmap of a noise matrix with coil indices (from 0) and a colour bar.

    ``covariance`` shows |Psi_ij| from 0 to its largest entry; ``coefficient`` shows |rho_ij|
    on the fixed range 0..1.

    Args:
        matrix: Square matrix, shape (coils, coils), complex or real.
        title: Figure title.
        kind: ``covariance`` or ``coefficient``.
    """
    data = np.asarray(matrix)
    if data.ndim != 2 or data.shape[0] != data.shape[1] or data.shape[0] == 0:
        raise InputError(f"matrix has shape {data.shape}; expected (coils, coils)")
    if kind not in ("covariance", "coefficient"):
        raise InputError(f"kind={kind!r}; expected 'covariance' or 'coefficient'")
    magnitude = np.abs(data).astype(np.float64)
    if kind == "coefficient":
        vmax, label = 1.0, "|rho| (noise correlation coefficient)"
    else:
        peak = float(np.nanmax(magnitude, initial=0.0))
        vmax, label = (peak if peak > 0 else 1.0), "|Psi| (noise covariance)"
    figure, axes = _figure()
    image = axes.imshow(
        np.ma.masked_invalid(magnitude),
        cmap=COLORMAPS[kind],
        vmin=0.0,
        vmax=vmax,
        interpolation="nearest",
    )
    coils = data.shape[0]
    ticks = np.arange(0, coils, max(1, math.ceil(coils / 16)))
    axes.set_xticks(ticks)
    axes.set_yticks(ticks)
    axes.set_xlabel("coil")
    axes.set_ylabel("coil")
    axes.set_title(title)
    figure.colorbar(image, ax=axes).set_label(label)
    return _png(figure)


def _figure() -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    width, height = PNG_SIZE_PX
    figure = Figure(figsize=(width / PNG_DPI, height / PNG_DPI), dpi=PNG_DPI, layout="constrained")
    return figure, figure.add_subplot()


def _png(figure: Any) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = BytesIO()
    figure.savefig(buffer, format="png", dpi=PNG_DPI)
    return buffer.getvalue()


# --- info.json -------------------------------------------------------------------------------


def output_entry(
    filename: str,
    *,
    output_id: int,
    name: str,
    dtype: np.dtype | str,
    output_type: OutputType = "output",
    dim: int = 3,
) -> dict[str, Any]:
    """One ``data`` entry of MR Optimum's info.json.

    Args:
        filename: Path inside the output folder, e.g. ``data/SNR.nii.gz``.
        output_id: MR Optimum's id (``MRO_OUTPUTS``; coil maps ``SENSITIVITY_ID + c``).
        name: Name the viewer shows.
        dtype: The dtype as written (``numpyPixelType``); complex gives ``pixelType`` complex.
        output_type: ``output``, ``accessory`` or ``mask``.
        dim: 3 for maps (slices stacked last), 2 for coil-by-coil matrices.
    """
    kind = np.dtype(dtype)
    return {
        "filename": filename,
        "id": int(output_id),
        "dim": int(dim),
        "name": name,
        "type": output_type,
        "numpyPixelType": kind.name,
        "pixelType": "complex" if kind.kind == "c" else "real",
    }


def mro_output(key: str, dtype: np.dtype | str = np.float32, *, coil: int | None = None) -> dict:
    """The ``data`` entry MR Optimum writes for a named output (``MRO_OUTPUTS`` or coil maps)."""
    if key == "sensitivity":
        if coil is None or coil < 0:
            raise InputError(f"coil={coil!r}; expected a coil index >= 0 for 'sensitivity'")
        return output_entry(
            filename_for_coil(coil),
            output_id=SENSITIVITY_ID + coil,
            name=f"Coils Sensitivity {coil:02d}",
            dtype=dtype,
            output_type="accessory",
        )
    if key not in MRO_OUTPUTS:
        raise InputError(f"output {key!r} is unknown; expected one of {sorted(MRO_OUTPUTS)}")
    output_id, filename, name, output_type = MRO_OUTPUTS[key]
    dim = 2 if key in ("noise_covariance", "noise_coefficients") else 3
    return output_entry(
        filename, output_id=output_id, name=name, dtype=dtype, output_type=output_type, dim=dim
    )


def info_json(
    *,
    options: Mapping[str, Any],
    header: Mapping[str, Any],
    outputs: Sequence[Mapping[str, Any]],
    timings_s: Mapping[str, float],
    extra: Mapping[str, Any],
) -> bytes:
    """MR Optimum's info.json, plus what sciflow adds under ``sciflow``.

    MR Optimum's part: ``headers{calculation_time, options, log}``, ``data[{filename, id,
    dim, name, type, numpyPixelType, pixelType}]`` sorted by id, and ``info{calculation_time,
    slices}``. ``headers.options`` is the job as given (``extra["job"]``) when the run came
    from an MR Optimum job, otherwise ``options``; ``headers.log`` is ``extra["log"]``.

    sciflow's part: the options as run, the header, the noise convention, NBW and noise
    sample count, acceleration, ACL, GRAPPA kernel, NR, boxSize, seed, per-stage timings
    and package versions. Each of these is read from ``extra`` first, then ``options``
    (sciflow's field names or MR Optimum's: ``replicas``/``NR``, ``box_size``/``boxSize``).

    Args:
        options: The analysis options as run (``MrOptions.model_dump(mode="json")``).
        header: What the reader found: matrix, coils, slices (a count or a list), voxel size.
        outputs: ``data`` entries (``output_entry``/``mro_output``). An entry with only a
            ``filename`` (and ``name``) is completed: id and type from MR Optimum's names
            (``MRO_OUTPUTS``), dim 2 for noise matrices and 3 otherwise, float32 pixels;
            other keys it has are kept.
        timings_s: Seconds per stage; ``total`` if given, else their sum, is calculation_time.
        extra: ``job``, ``log``, ``nbw``, ``noise_samples``, ``noise_convention`` (or a
            ``noise`` mapping of ``nbw``, ``samples``, ``convention``, and ``source`` and
            ``detail``: where the noise came from, ``NoiseStatistics``) and anything else worth
            keeping (stored under ``sciflow.extra``).
    """
    data = [_complete_entry(entry, i) for i, entry in enumerate(outputs)]
    data.sort(key=lambda e: e["id"])
    timings = {str(k): float(v) for k, v in timings_s.items()}
    total = timings.get("total", sum(timings.values()))
    slices = header.get("slices")
    if isinstance(slices, Sequence) and not isinstance(slices, str):
        slices = len(slices)
    known = {"job", "log", "nbw", "noise_samples", "noise_convention"}
    noise = extra.get("noise")
    if isinstance(noise, Mapping):
        known.add("noise")
    else:
        noise = {}

    def pick(*names: str) -> Any:
        for source in (extra, noise, options):
            for name in names:
                if name in source and source[name] is not None:
                    return source[name]
        return None

    document = {
        "headers": {
            "calculation_time": total,
            "options": extra.get("job") or options,
            "log": list(extra.get("log") or []),
        },
        "data": data,
        "info": {"calculation_time": total, "slices": slices},
        "sciflow": {
            "options": options,
            "header": header,
            "noise": {
                "convention": pick("noise_convention", "convention"),
                "nbw": pick("nbw", "NBW"),
                "samples": pick("noise_samples", "samples", "Ns"),
                # Where the noise came from, when the caller says (write_snr_outputs does).
                **{k: noise[k] for k in ("source", "detail") if noise.get(k) is not None},
            },
            "acceleration": pick("acceleration", "accelerations"),
            "acl": pick("acl"),
            "grappa_kernel": pick("grappa_kernel", "kernelSize"),
            "replicas": pick("replicas", "NR"),
            "box_size": pick("box_size", "boxSize"),
            "seed": pick("seed"),
            "timings_s": timings,
            "packages": package_versions(),
            "extra": {k: v for k, v in extra.items() if k not in known},
        },
    }
    # The last guard: whatever reached the document, no credential is written (a job read
    # from a file has had them dropped already; tasks.credentials).
    clean = without_credentials(_jsonable(document))
    return json.dumps(clean, indent=2, allow_nan=False).encode()


def same_result(stored: bytes, written: bytes) -> bool:
    """Whether two info.json documents record the same result, apart from which run made it.

    Timings and the run id differ between two runs of the same job; everything else (options,
    header, outputs, noise, packages, the job) must match for a rerun to count as identical.
    """
    try:
        documents = [json.loads(stored), json.loads(written)]
    except ValueError:
        return False
    for document in documents:
        if not isinstance(document, dict):
            return False
        for part in ("headers", "info"):
            if isinstance(document.get(part), dict):
                document[part].pop("calculation_time", None)
        sciflow = document.get("sciflow")
        if isinstance(sciflow, dict):
            sciflow.pop("timings_s", None)
            if isinstance(sciflow.get("extra"), dict):
                sciflow["extra"].pop("run_id", None)
                sciflow["extra"].pop("timings_s", None)  # the SNR step's own
    return documents[0] == documents[1]


_ENTRY_KEYS = ("filename", "id", "dim", "name", "type", "numpyPixelType", "pixelType")
_OUTPUT_ALIASES = {
    "nc": "noise_covariance",
    "ncc": "noise_coefficients",
    "noise_coefficient": "noise_coefficients",
    "ig": "inverse_g",
    "mask_00": "mask",
}
_NOISE_MATRICES = {"noise_covariance", "noise_coefficients", "noise_coefficient", "nc", "ncc"}


def _complete_entry(entry: Mapping[str, Any], index: int) -> dict[str, Any]:
    """MR Optimum's keys for one output, filled from its name where the caller left them out."""
    filename = entry.get("filename")
    if not isinstance(filename, str) or not filename:
        raise InputError(f"outputs[{index}] has no filename; expected e.g. 'data/SNR.nii.gz'")
    stem = filename.rsplit("/", 1)[-1].split(".", 1)[0]
    name = str(entry.get("name") or stem)
    known = _known_output(name) or _known_output(stem)
    if known is not None:
        output_id, _, mro_name, output_type = known
    else:
        output_id, mro_name, output_type = 1000 + index, name, "output"
    dtype = np.dtype(entry.get("numpyPixelType", np.float32))
    defaults = {
        "filename": filename,
        "id": output_id,
        "dim": 2 if name.lower() in _NOISE_MATRICES or stem.lower() in _NOISE_MATRICES else 3,
        "name": mro_name if "name" not in entry else name,
        "type": output_type,
        "numpyPixelType": dtype.name,
        "pixelType": "complex" if dtype.kind == "c" else "real",
    }
    completed = {key: entry.get(key, defaults[key]) for key in _ENTRY_KEYS}
    return completed | {k: v for k, v in entry.items() if k not in completed}


def _known_output(name: str) -> tuple[int, str, str, OutputType] | None:
    """MR Optimum's (id, filename, name, type) for a sciflow key, file stem or MRO name."""
    lowered = name.lower()
    key = _OUTPUT_ALIASES.get(lowered, lowered)
    if key in MRO_OUTPUTS:
        return MRO_OUTPUTS[key]
    for entry in MRO_OUTPUTS.values():
        if name in (entry[2], entry[1].rsplit("/", 1)[-1].split(".", 1)[0]):
            return entry
    if lowered.startswith("sensitivity_") and lowered[12:].isdigit():
        coil = int(lowered[12:])
        return (
            SENSITIVITY_ID + coil,
            filename_for_coil(coil),
            f"Coils Sensitivity {coil:02d}",
            "accessory",
        )
    return None


def filename_for_coil(coil: int) -> str:
    """MR Optimum's file for coil ``coil``'s sensitivity map."""
    return f"data/sensitivity_{coil:02d}.nii.gz"


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the numbers, and Python's."""
    return provenance.package_versions(PACKAGES)


def _jsonable(value: Any) -> Any:
    """Plain JSON types: NumPy scalars and arrays unwrapped, tuples as lists, NaN/Inf as null."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, list | tuple | set | frozenset):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, complex):
        return {"real": _jsonable(value.real), "imag": _jsonable(value.imag)}
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, bool | int | str):
        return value
    if hasattr(value, "model_dump"):
        return _jsonable(value.model_dump(mode="json"))
    return str(value)


# ---------------------------------------------------------------------------------------
# A run's outputs
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrittenOutputs:
    """What ``write_snr_outputs`` wrote.

    Attributes:
        snr: URI of SNR.nii.gz.
        previews: Map name to the URI of its PNG preview.
        info: URI of info.json.
        median_snr: Median SNR inside the mask over all slices.
        mean_g: Mean g-factor inside the mask, if computed.
    """

    snr: str
    previews: dict[str, str]
    info: str
    median_snr: float
    mean_g: float | None


def write_snr_outputs(
    put: Callable[[str, bytes], str],
    maps: Sequence[SnrMaps],
    stats: NoiseStatistics,
    info: AcquisitionInfo,
    options: MrOptions,
    timings: Mapping[str, float],
    provenance: Mapping[str, Any],
    slices: Sequence[int],
    run_id: str,
    flip_angle_path: str | None = None,
) -> WrittenOutputs:
    """Write maps, previews and info.json through ``put``, info.json last.

    info.json is written last, so its presence marks a complete output.

    Args:
        put: Writes one file, ``(name, bytes) -> URI``, atomically.
        maps: Per-slice maps in slice order.
        stats: The noise the maps were computed with.
        info: The signal's header (geometry, 3-D or not, summary for info.json).
        options: The analysis options as run.
        timings: Seconds per stage so far.
        provenance: The pasted MR Optimum job (``job``) and notes on how it was read
            (``log``), both kept in info.json.
        slices: The slice indices ``maps`` belong to.
        run_id: The flow run, recorded in info.json.
        flip_angle_path: A NIfTI flip-angle map in degrees for the legacy flip-angle
            correction, ``(x, y[, slices])``; 3-D ``(x, y, z)``.
    """
    volume_3d = info.kind == "3d"
    slabs = info.slabs

    def as_volume(data: np.ndarray) -> np.ndarray:
        """Per-slice maps (.., slices) as written: 3-D (y, z, x) -> (x, y, z).

        Several slabs stack along z; slices left out of a run stay 0 there.
        """
        if not volume_3d:
            return data
        if slabs > 1 and len(slices) != info.matrix[2]:
            full = np.zeros((*data.shape[:2], info.matrix[2], *data.shape[3:]), data.dtype)
            full[:, :, list(slices)] = data
            data = full
        return maps_as_volume(data, slabs)

    def stacked(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        """Per-slice maps stacked on the last axis, as written (``as_volume``)."""
        data = _stack_optional(arrays)
        return as_volume(data) if data is not None else data

    snr = np.stack([m.snr for m in maps], axis=-1)
    if flip_angle_path is not None:
        import nibabel as nib

        flip_angle = np.asarray(nib.load(flip_angle_path).get_fdata())
        if volume_3d:  # an (x, y, z) map, as per-slice maps
            flip_angle = volume_as_maps(flip_angle, slabs)[:, :, list(slices)]
        else:
            flip_angle = flip_angle.reshape(*flip_angle.shape[:2], -1)[..., list(slices)]
        snr = flip_angle_corrected(snr, flip_angle)
    snr = as_volume(snr)
    mask = stacked([m.mask for m in maps])
    if mask is not None:
        inside = mask.astype(bool)
    else:  # every computed pixel (not the slices a multi-slab run left out)
        inside = as_volume(np.ones((*maps[0].snr.shape, len(maps)), dtype=bool))
    outputs: list[dict[str, Any]] = []
    previews: dict[str, str] = {}

    def volume(name: str, data: np.ndarray, kind: MapKind, title: str, label: str) -> str:
        uri = put(f"{name}.nii.gz", nifti_bytes(data, info.affine, None))
        outputs.append({"name": name, "filename": f"{name}.nii.gz", "shape": list(data.shape)})
        plane = data[..., data.shape[-1] // 2] if volume_3d else data[..., 0]
        previews[name] = put(f"{name}.png", map_png(plane, title=title, label=label, kind=kind))
        return uri

    snr_uri = volume("SNR", snr, "snr", f"SNR ({options.method.upper()})", "SNR")
    mean_g = None
    g = stacked([m.g for m in maps])
    if g is not None:
        volume("G", g, "g", "g-factor", "g")
        volume("IG", stacked([m.inverse_g for m in maps]), "g", "1/g", "1/g")
        mean_g = float(np.mean(g[inside])) if inside.any() else None
    if mask is not None:
        volume("mask", mask.astype(np.float32), "mask", "Mask", "inside")
    sens = [m.sensitivities for m in maps]
    if options.coil_sensitivity_output and all(s is not None for s in sens):
        data = as_volume(np.stack(sens, axis=2))  # (x, y, slices, coils); 3-D: (x, y, z, coils)
        put("sensitivity.nii.gz", sensitivity_nifti_bytes(data, info.affine))
        outputs.append({"name": "sensitivity", "filename": "sensitivity.nii.gz"})

    matrices: list[tuple[str, np.ndarray, MatrixKind, str]] = [
        ("noise_covariance", stats.noise_cov, "covariance", "Noise covariance |Psi|"),
        (
            "noise_coefficient",
            noise_coefficient(stats.noise_cov),
            "coefficient",
            "Noise correlation coefficients |rho|",
        ),
    ]
    for name, matrix, kind, title in matrices:
        put(f"{name}.nii.gz", nifti_bytes(np.abs(matrix)[:, :, None], None, None))
        previews[name] = put(f"{name}.png", matrix_png(matrix, title=title, kind=kind))
        outputs.append({"name": name, "filename": f"{name}.nii.gz"})

    median_snr = float(np.median(snr[inside])) if inside.any() else 0.0
    info_uri = put(
        "info.json",
        info_json(
            options=options.model_dump(mode="json"),
            header=info.summary,
            outputs=outputs,
            timings_s=timings,
            extra={
                **provenance,
                "noise": {
                    "nbw": stats.nbw,
                    "samples": stats.samples,
                    "convention": options.convention,
                    "source": stats.source,
                    "detail": stats.detail,
                },
                "median_snr_in_mask": median_snr,
                "mean_g_in_mask": mean_g,
                "run_id": run_id,
                **maps[0].info,
            },
        ),
    )
    return WrittenOutputs(
        snr=snr_uri, previews=previews, info=info_uri, median_snr=median_snr, mean_g=mean_g
    )


def _stack_optional(arrays: list[np.ndarray | None]) -> np.ndarray | None:
    if any(a is None for a in arrays):
        return None
    return np.stack(arrays, axis=-1)
