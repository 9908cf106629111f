"""Numerical phantoms for the Bloch simulator: Shepp-Logan and NIfTI maps, as spins.

A phantom is a voxel grid of PD, T1, T2 and off-resonance maps. Its spins are a global list:
every voxel with PD > 0, in C order, contributes ``spins_per_voxel`` spins whose PD sums to the
voxel's, so image scale does not depend on the count. Where spin ``j`` sits in its voxel
depends only on ``j`` (and the seed, or the sequence), so ``spins(phantom, start, stop)`` is
the same slice whatever process computes it: splitting the list across MPI ranks gives the
same phantom as one rank. ``Phantom.sampling`` says where:

- ``"grid"`` (default): a regular sub-voxel grid. Given the sequence, along each axis whose
  moments between RF pulses repeat with a period ``P`` shorter than the voxel
  (``bloch.dephasing_periods``: a spoiler, the readout's net moment) the spins span one
  period, ``spins_per_voxel`` per period, and each stands for its replicas ``P`` apart across
  the voxel (``bloch.Replicas``); along axes with no moment between pulses (rewound phase
  encoding, the slice) one spin stands for the whole voxel width. Other axes get the points
  over the voxel. The points form a rank-1 lattice (Fibonacci-like), so each axis alone sees
  them all at distinct, evenly spaced positions. Without the sequence: that lattice over the
  voxel along the axes with more than one voxel, the centre along the others.
- ``"random"``: uniform within the voxel, from a counter-based hash of ``(seed, j)``; along the
  axes with more than one voxel only.
- ``"centre"``: every spin at its voxel centre.

Why a grid: an RF-spoiled GRE leaves coherences dephased by whole multiples of its per-TR
moment, which random positions integrate with an error of ``1/sqrt(spins)`` and a plain grid
aliases once a coherence winds as many turns across the voxel as the grid has points;
folding along the period lets ``spins_per_voxel`` points per period resolve a voxel that
holds several periods (``benchmarks/simulation.py`` measures the image error of each against
MRzero's phase-distribution graph).

Voxel ``(i, j, k)`` of an ``(nx, ny, nz)`` grid is centred at ``((i - nx/2) dx, (j - ny/2) dy,
(k - nz/2) dz)``, the positions ``tasks.mr.fft.ifft2c`` puts pixel ``(i, j)`` at.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from scipy.interpolate import RegularGridInterpolator

from tasks.errors import InputError
from tasks.mr.phantom import coil_sensitivities
from tasks.simulation.bloch import Replicas, SpinSet, dephasing_periods
from tasks.simulation.sequence import MAX_MATRIX, Sequence

Sampling = Literal["grid", "random", "centre"]

MAX_VOXELS = MAX_MATRIX**2
"""Most voxels a NIfTI phantom may have (16.8 million: 4096 x 4096, or 512 x 512 x 64)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Tissue:
    """Relaxation and off-resonance of one tissue."""

    pd: float
    """Proton density (equilibrium magnetisation per voxel)."""
    t1: float
    """Longitudinal relaxation time, s."""
    t2: float
    """Transverse relaxation time, s."""
    df: float = 0.0
    """Off-resonance, Hz."""


# Illustrative 1.5 T values (not a standard; cf. Gach et al. 2008 for an MR Shepp-Logan).
SHEPP_LOGAN_TISSUES: dict[str, Tissue] = {
    "scalp": Tissue(pd=0.8, t1=0.30, t2=0.07),
    "white_matter": Tissue(pd=0.65, t1=0.60, t2=0.08),
    "gray_matter": Tissue(pd=0.8, t1=1.00, t2=0.10),
    "csf": Tissue(pd=1.0, t1=4.00, t2=2.00),
    "lesion": Tissue(pd=0.9, t1=1.20, t2=0.15),
}

# Modified Shepp-Logan ellipses (Toft): centre x, y, semi-axes a, b (fractions of fov/2),
# angle (deg), tissue. Later ellipses paint over earlier ones.
_ELLIPSES: tuple[tuple[float, float, float, float, float, str], ...] = (
    (0.0, 0.0, 0.69, 0.92, 0.0, "scalp"),
    (0.0, -0.0184, 0.6624, 0.874, 0.0, "white_matter"),
    (0.22, 0.0, 0.11, 0.31, -18.0, "csf"),
    (-0.22, 0.0, 0.16, 0.41, 18.0, "csf"),
    (0.0, 0.35, 0.21, 0.25, 0.0, "gray_matter"),
    (0.0, 0.1, 0.046, 0.046, 0.0, "lesion"),
    (0.0, -0.1, 0.046, 0.046, 0.0, "lesion"),
    (-0.08, -0.605, 0.046, 0.023, 0.0, "gray_matter"),
    (0.0, -0.605, 0.023, 0.023, 0.0, "gray_matter"),
    (0.06, -0.605, 0.023, 0.046, 0.0, "gray_matter"),
)


@dataclass(frozen=True, kw_only=True, slots=True, eq=False)
class Phantom:
    """Voxel maps and how they become spins."""

    pd: np.ndarray
    """Proton density, shape (nx, ny, nz); voxels with PD > 0 get spins."""
    t1: np.ndarray
    """T1, s, same shape."""
    t2: np.ndarray
    """T2, s, same shape."""
    df: np.ndarray
    """Off-resonance, Hz, same shape."""
    fov: tuple[float, float, float]
    """Extent of the grid ``(x, y, z)``, m."""
    spins_per_voxel: int = 1
    """Spins in each voxel with PD > 0."""
    seed: int = 0
    """Seeds the positions of ``sampling="random"``."""
    sampling: Sampling = "grid"
    """Where spins sit in their voxel: ``"grid"``, ``"random"`` or ``"centre"`` (module
    docstring)."""
    labels: np.ndarray | None = None
    """Tissue index per voxel (Shepp-Logan), shape (nx, ny, nz), or None."""

    def __post_init__(self) -> None:
        shapes = {name: np.shape(getattr(self, name)) for name in ("pd", "t1", "t2", "df")}
        if len(set(shapes.values())) != 1 or len(shapes["pd"]) != 3:
            raise InputError(f"phantom maps have shapes {shapes}; expected one (nx, ny, nz) shape")
        for name in ("pd", "t1", "t2", "df"):
            values = np.asarray(getattr(self, name), dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise InputError(f"phantom {name} map has NaN or inf; expected finite values")
            object.__setattr__(self, name, values)
        for name in ("pd", "t1", "t2"):
            if np.any(getattr(self, name) < 0):
                raise InputError(f"phantom {name} map has negative values; expected >= 0")
        tissue = self.pd > 0
        for name in ("t1", "t2"):
            if np.any(getattr(self, name)[tissue] <= 0):
                raise InputError(f"phantom {name} is 0 where pd > 0; expected > 0 s there")
        if self.spins_per_voxel < 1:
            raise InputError(f"spins_per_voxel={self.spins_per_voxel}; expected >= 1")
        if self.sampling not in ("grid", "random", "centre"):
            raise InputError(f"sampling={self.sampling!r}; expected 'grid', 'random' or 'centre'")
        if len(self.fov) != 3 or min(self.fov) <= 0:
            raise InputError(f"phantom fov={self.fov}; expected (x, y, z) in m, all > 0")

    @property
    def shape(self) -> tuple[int, int, int]:
        """Grid shape ``(nx, ny, nz)``."""
        return self.pd.shape  # type: ignore[return-value]

    @property
    def voxels(self) -> np.ndarray:
        """Flat (C-order) indices of voxels with PD > 0."""
        return np.flatnonzero(self.pd.ravel() > 0)

    @property
    def n_spins(self) -> int:
        """Length of the global spin list."""
        return int(self.voxels.size * self.spins_per_voxel)


def shepp_logan(
    matrix: tuple[int, int] = (64, 64),
    fov: tuple[float, float] = (0.256, 0.256),
    *,
    spins_per_voxel: int = 1,
    seed: int = 0,
    sampling: Sampling = "grid",
    tissues: Mapping[str, Tissue] | None = None,
    thickness: float = 5e-3,
) -> Phantom:
    """Modified Shepp-Logan with per-tissue PD/T1/T2/off-resonance at any resolution.

    Args:
        matrix: ``(nx, ny)`` voxels.
        fov: ``(x, y)`` extent, m; the head spans about 92% of ``y``.
        spins_per_voxel: Spins per tissue voxel.
        seed: Seeds ``sampling="random"``.
        sampling: Where spins sit in their voxel (module docstring).
        tissues: Overrides for ``SHEPP_LOGAN_TISSUES`` by name.
        thickness: Slice thickness (the grid's z extent), m.
    """
    table = dict(SHEPP_LOGAN_TISSUES)
    for name, tissue in (tissues or {}).items():
        if name not in table:
            raise InputError(f"tissue {name!r} is unknown; expected one of {sorted(table)}")
        table[name] = tissue
    nx, ny = matrix
    if nx < 1 or ny < 1:
        raise InputError(f"matrix={matrix}; expected (nx, ny), both >= 1")
    x = (np.arange(nx) - nx // 2) * (2 / nx)
    y = (np.arange(ny) - ny // 2) * (2 / ny)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    names = list(table)
    labels = np.full((nx, ny), -1)
    for cx, cy, a, b, angle, tissue in _ELLIPSES:
        th = math.radians(angle)
        u = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
        v = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
        labels[(u / a) ** 2 + (v / b) ** 2 <= 1] = names.index(tissue)
    maps = {key: np.zeros((nx, ny, 1)) for key in ("pd", "t1", "t2", "df")}
    for index, name in enumerate(names):
        where = labels[..., None] == index
        for key in maps:
            maps[key][where] = getattr(table[name], key)
    return Phantom(
        **maps,
        fov=(float(fov[0]), float(fov[1]), float(thickness)),
        spins_per_voxel=spins_per_voxel,
        seed=seed,
        sampling=sampling,
        labels=labels[..., None],
    )


def from_nifti(
    pd: Path,
    t1: Path,
    t2: Path,
    df: Path | None = None,
    *,
    spins_per_voxel: int = 1,
    seed: int = 0,
    sampling: Sampling = "grid",
) -> Phantom:
    """A phantom from NIfTI maps: PD, T1 and T2 (s), and optionally off-resonance (Hz).

    The field of view is the grid shape times the voxel size in the header (mm). 2D maps may
    be (nx, ny) or (nx, ny, 1).
    """
    import nibabel as nib

    paths = {"pd": Path(pd), "t1": Path(t1), "t2": Path(t2)}
    if df is not None:
        paths["df"] = Path(df)
    maps: dict[str, np.ndarray] = {}
    zooms: tuple[float, ...] = ()
    for name, path in paths.items():
        try:
            image = nib.load(path)
        except (OSError, ValueError, nib.filebasedimages.ImageFileError) as exc:
            raise InputError(f"{name} map {path}: cannot read as NIfTI ({exc})") from exc
        if (voxels := math.prod(image.shape)) > MAX_VOXELS:  # the header's, before reading
            raise InputError(
                f"{name} map {path} has shape {image.shape} ({voxels} voxels); expected at "
                f"most {MAX_VOXELS} voxels"
            )
        data = np.asarray(image.dataobj, dtype=np.float64)
        if data.ndim == 2:
            data = data[..., None]
        if data.ndim != 3:
            raise InputError(f"{name} map {path} has shape {data.shape}; expected 2D or 3D")
        maps[name] = data
        zooms = zooms or tuple(float(z) for z in image.header.get_zooms()[:3])
    shapes = {f"{name} ({paths[name].name})": maps[name].shape for name in maps}
    if len(set(shapes.values())) != 1:
        raise InputError(f"NIfTI maps disagree in shape: {shapes}; expected one shape")
    shape = maps["pd"].shape
    zooms = (*zooms, 1.0, 1.0)[:3]
    fov = tuple(n * z / 1000 for n, z in zip(shape, zooms, strict=True))
    for name in ("pd", "t1", "t2"):
        if np.any(maps[name] < 0):
            raise InputError(f"{name} map {paths[name]} has negative values; expected >= 0")
    return Phantom(
        pd=maps["pd"],
        t1=maps["t1"],
        t2=maps["t2"],
        df=maps.get("df", np.zeros(shape)),
        fov=fov,  # type: ignore[arg-type]
        spins_per_voxel=spins_per_voxel,
        seed=seed,
        sampling=sampling,
    )


def spin_range(total: int, rank: int, size: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank`` of ``size``, as ``numpy.array_split`` splits ``total``."""
    if size < 1 or not 0 <= rank < size:
        raise InputError(f"rank={rank} of size={size}; expected 0 <= rank < size")
    if size > total:
        raise InputError(f"{size} ranks for {total} spins; expected at most one rank per spin")
    base, extra = divmod(total, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def spins(
    phantom: Phantom, start: int = 0, stop: int | None = None, sequence: Sequence | None = None
) -> SpinSet:
    """Spins ``[start, stop)`` of the phantom's global spin list.

    Args:
        phantom: The phantom.
        start: First spin.
        stop: One past the last spin; None for all.
        sequence: What they will be simulated with: ``sampling="grid"`` folds its points along
            the sequence's dephasing periods (module docstring). Simulate the spins with this
            sequence only (``bloch.simulate`` refuses others where the folding would be
            wrong).
    """
    total = phantom.n_spins
    stop = total if stop is None else stop
    if not 0 <= start <= stop <= total:
        raise InputError(f"spin range [{start}, {stop}); expected 0 <= start <= stop <= {total}")
    index = np.arange(start, stop, dtype=np.int64)
    per_voxel = phantom.spins_per_voxel
    voxel = phantom.voxels[index // per_voxel]
    ijk = np.stack(np.unravel_index(voxel, phantom.shape), axis=1).astype(np.float64)
    shape = np.array(phantom.shape, dtype=np.float64)
    size = np.array(phantom.fov) / shape
    positions = (ijk - shape // 2) * size
    replicas = None
    stands_for = per_voxel
    if phantom.sampling == "random":
        for axis in range(3):
            if phantom.shape[axis] > 1:
                positions[:, axis] += (_uniform(phantom.seed, index, axis) - 0.5) * size[axis]
    elif phantom.sampling == "grid":
        base, offsets, box = _grid(phantom, sequence)
        pattern = index % per_voxel
        positions += base[pattern]
        if sequence is not None:
            replicas = Replicas(index=pattern, offsets=offsets, box=box)
            stands_for = sum(len(o) for o in offsets)
    flat = {name: getattr(phantom, name).ravel()[voxel] for name in ("pd", "t1", "t2", "df")}
    return SpinSet(
        positions=positions,
        m0=flat["pd"] / stands_for,
        t1=flat["t1"],
        t2=flat["t2"],
        dw=2 * np.pi * flat["df"],
        replicas=replicas,
    )


def _grid(
    phantom: Phantom, sequence: Sequence | None
) -> tuple[np.ndarray, tuple[np.ndarray, ...], np.ndarray]:
    """The sub-voxel grid, in m: points, each point's replica offsets and the box half-widths.

    Points are offsets from the voxel centre, shape (spins_per_voxel, 3); replicas and box as
    in ``bloch.Replicas``.
    """
    size = np.array(phantom.fov) / np.array(phantom.shape)
    if sequence is None:
        periods = np.where(np.array(phantom.shape) > 1, math.nan, 0.0)
    else:
        periods = dephasing_periods(sequence)
    box = np.where(np.isinf(periods), size / 2, 0.0)
    periodic = np.isfinite(periods) & (periods > 0) & (periods < size * (1 - 1e-9))
    sampled = [a for a in range(3) if periodic[a] or np.isnan(periods[a])]
    count = phantom.spins_per_voxel
    cell = np.where(periodic, periods, size)
    base = np.zeros((count, 3))
    for axis, column in zip(sampled, _lattice(count, len(sampled)).T, strict=True):
        base[:, axis] = -size[axis] / 2 + column * cell[axis]
    offsets = []
    for point in base:
        along = [
            np.arange(math.ceil((size[a] / 2 - point[a]) / periods[a])) * periods[a]
            if periodic[a]
            else np.zeros(1)
            for a in range(3)
        ]
        grid = np.meshgrid(*along, indexing="ij")
        offsets.append(np.stack([g.ravel() for g in grid], axis=1))
    return base, tuple(offsets), box


def _lattice(count: int, dims: int) -> np.ndarray:
    """``count`` midpoints of a rank-1 lattice in ``[0, 1)^dims``, shape (count, dims).

    Generator ``(1, g, g^2)`` with ``g`` the integer nearest ``count / golden ratio`` that is
    prime to ``count``: every column is the ``count``-point midpoint grid, in another order.
    """
    g = max(1, round(count / ((1 + math.sqrt(5)) / 2)))
    while math.gcd(g, count) != 1:
        g += 1
    j = np.arange(count)
    columns = [((j * g**d) % count + 0.5) / count for d in range(dims)]
    return np.stack(columns, axis=1) if columns else np.zeros((count, 0))


def coil_maps(phantom: Phantom, spin_set: SpinSet, coils: int) -> np.ndarray:
    """Receive sensitivities at the spins, complex, shape (coils, N).

    ``tasks.mr.phantom.coil_sensitivities`` on the phantom's (x, y) grid, interpolated
    bilinearly (extrapolated at the edges) to each spin's position.
    """
    if coils < 1:
        raise InputError(f"coils={coils}; expected >= 1")
    nx, ny, _ = phantom.shape
    maps = coil_sensitivities(nx, ny, coils)
    grid = [(np.arange(n) - n // 2) * (phantom.fov[a] / n) for a, n in enumerate((nx, ny))]
    if nx < 2 or ny < 2:
        raise InputError(f"phantom grid {phantom.shape}; expected at least 2 x 2 for coil maps")
    points = spin_set.positions[:, :2]
    out = np.empty((coils, len(spin_set)), dtype=np.complex128)
    for c in range(coils):
        for part, values in (("real", maps[..., c].real), ("imag", maps[..., c].imag)):
            f = RegularGridInterpolator(grid, values, bounds_error=False, fill_value=None)
            if part == "real":
                out[c] = f(points)
            else:
                out[c] += 1j * f(points)
    return out


def _uniform(seed: int, index: np.ndarray, stream: int) -> np.ndarray:
    """Uniform [0, 1) per index from splitmix64 of ``(seed, stream, index)``: order-free."""
    with np.errstate(over="ignore"):
        key = np.uint64((seed * 0x9E3779B97F4A7C15 + stream * 0xD1B54A32D192ED03) % (1 << 64))
        z = index.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) + key
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
