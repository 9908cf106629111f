"""The per-rank program of a multi-node Bloch simulation: spins split across MPI ranks.

Run it as ranks: ``mpiexec -n 4 python -m mpi4py -m tasks.simulation.mpi_simulate --spec
spec.json --out raw.h5`` (``tasks.simulation.mpi.mpi4py_argv`` builds that command; under
``python -m mpi4py`` a rank that raises aborts the job instead of leaving the others waiting).

Every rank reads the same ``SimulationSpec`` (JSON), builds the phantom and the sequence,
simulates its ``spin_range(total, rank, size)`` share of the phantom's global spin list and
sums its (coils, ADC samples) complex128 signal into rank 0 with ``Reduce`` on NumPy buffers.
Rank 0 alone adds thermal noise, makes a noise-only scan, builds Cartesian k-space and writes
one ISMRMRD/MRD file (temporary name, then rename). Spin positions are a counter-based hash of
the spin index, so the k-space does not depend on the rank count beyond summation order.

Output lines, which ``flows.multinode_simulation`` parses (each rank prints its own):

- ``spins 2048/8192 (of 16384), 3.1e+07 spin-samples/s``: this rank's spins done, its share,
  the phantom's total, its throughput so far.
- ``RESULT {...}``: rank 0 at the end, JSON with ``out``, ``spins``, ``adc_samples``,
  ``coils``, ``seconds``, ``spin_samples_per_s`` and ``ranks``.

Spec, sequence and NIfTI inputs may be local paths or ``s3://`` URIs, and so may ``--out``
(rank 0 then writes locally and uploads one object).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.errors import InputError, describe_validation
from tasks.forms import plain_optional_fields
from tasks.mr.phantom import correlated_covariance
from tasks.simulation import sequence as builders
from tasks.simulation.bloch import (
    add_noise,
    noise_scan,
    simulate,
    spin_samples_per_second,
    to_kspace,
)
from tasks.simulation.phantoms import Phantom, coil_maps, from_nifti, shepp_logan, spin_range, spins
from tasks.simulation.pulseq import read_seq
from tasks.simulation.sequence import MAX_MATRIX, Sequence

if TYPE_CHECKING:
    from tasks.storage.objects import ObjectStore

BUILDERS: dict[str, Callable[..., Sequence]] = {
    "gre": builders.gre,
    "bssfp": builders.bssfp,
    "spin_echo": builders.spin_echo,
    "inversion_recovery": builders.inversion_recovery,
}
# Seconds between a rank's progress lines (and one after its last chunk).
PROGRESS_EVERY_S = 2.0
PROGRESS_LINE = re.compile(
    r"^spins (?P<done>\d+)/(?P<share>\d+) \(of (?P<total>\d+)\), "
    r"(?P<rate>[-+.\deinfa]+) spin-samples/s$"
)
RESULT_PREFIX = "RESULT "
# Field caps, fixed when the code loads; the unit's memory bounds the product at run time
# (``memory_estimate``). 10,000 isochromats per voxel is ten times what intravoxel dephasing
# studies use; a noise scan of 10 million samples per coil is 40 times the default's at nx 1024;
# 4 million spins per chunk is 5 GiB of working set, enough to fill a GPU.
MAX_SPINS_PER_VOXEL = 10_000
MAX_NOISE_SAMPLES = 10_000_000
MAX_CHUNK = 1 << 22
Side = Annotated[int, Field(ge=2, le=MAX_MATRIX)]


class PhantomSpec(BaseModel):
    """Which numerical phantom to simulate, and how many spins each voxel gets."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=plain_optional_fields)

    kind: Literal["shepp_logan", "nifti"] = Field(
        "shepp_logan",
        description="`shepp_logan` (analytic, per-tissue PD/T1/T2) or `nifti` (maps from files).",
    )
    matrix: tuple[Side, Side] = Field(
        (64, 64),
        description=f"Shepp-Logan voxels (nx, ny), each 2 to {MAX_MATRIX}.",
        examples=[[64, 64]],
    )
    fov_m: tuple[float, float] = Field(
        (0.256, 0.256), description="Shepp-Logan field of view (x, y), in m."
    )
    thickness_m: float = Field(5e-3, gt=0, description="Shepp-Logan slice thickness, in m.")
    pd: str | None = Field(None, description="NIfTI proton-density map (path or s3:// URI).")
    t1: str | None = Field(None, description="NIfTI T1 map in s (path or s3:// URI).")
    t2: str | None = Field(None, description="NIfTI T2 map in s (path or s3:// URI).")
    df: str | None = Field(None, description="NIfTI off-resonance map in Hz (optional).")
    spins_per_voxel: int = Field(
        1,
        ge=1,
        le=MAX_SPINS_PER_VOXEL,
        description=f"Isochromats in each voxel with PD > 0, 1 to {MAX_SPINS_PER_VOXEL}.",
    )
    sampling: Literal["grid", "random", "centre"] = Field(
        "grid",
        description=(
            "Where spins sit in their voxel: `grid` (a sub-voxel grid folded along the "
            "sequence's dephasing periods; converges fastest), `random` (uniform, seeded) or "
            "`centre`."
        ),
    )
    seed: int = Field(0, ge=0, description="Seeds the spins' positions with `sampling=random`.")

    @model_validator(mode="after")
    def _maps_for_nifti(self) -> PhantomSpec:
        if self.kind == "nifti" and not (self.pd and self.t1 and self.t2):
            raise ValueError("kind='nifti' needs the pd, t1 and t2 map URIs")
        if min(self.fov_m) <= 0:
            raise ValueError(f"fov_m={self.fov_m}; expected > 0")
        return self


class SequenceSpec(BaseModel):
    """Which pulse sequence to play: a built-in builder and its parameters, or a .seq file."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=plain_optional_fields)

    builder: str | None = Field(
        "gre",
        description=(
            "Built-in 2D Cartesian builder: gre, bssfp, spin_echo or inversion_recovery; "
            "ignored when `seq` is given."
        ),
    )
    params: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Builder keyword arguments (s, degrees; e.g. tr, te, flip_deg, dummy_scans); "
            "matrix and fov default to the phantom's."
        ),
        examples=[{"tr": 0.01, "te": 0.004, "flip_deg": 15, "dummy_scans": 100}],
    )
    seq: str | None = Field(None, description="Pulseq .seq file (path or s3:// URI).")


class SimulationSpec(BaseModel):
    """Everything every rank needs to simulate its share: what one spec.json holds."""

    model_config = ConfigDict(extra="forbid")

    phantom: PhantomSpec = Field(default_factory=PhantomSpec, description="The phantom.")
    sequence: SequenceSpec = Field(default_factory=SequenceSpec, description="The sequence.")
    coils: int = Field(8, ge=1, le=128, description="Receive coils (birdcage-like maps).")
    noise: Literal["none", "white", "correlated"] = Field(
        "correlated",
        description="Thermal noise: none, white (std * I) or correlated between coils.",
    )
    noise_std: float = Field(
        0.05, ge=0, description="Noise standard deviation per complex sample, signal units."
    )
    noise_correlation: float = Field(
        0.3, ge=0, lt=0.5, description="Neighbouring coils' noise correlation (correlated)."
    )
    noise_samples: int = Field(
        0,
        ge=0,
        le=MAX_NOISE_SAMPLES,
        description=(
            f"Noise-scan samples per coil, at most {MAX_NOISE_SAMPLES}; 0 for 256 readouts' worth."
        ),
    )
    noise_seed: int = Field(0, ge=0, description="Seeds the noise.")
    chunk: int = Field(
        65536,
        ge=1,
        le=MAX_CHUNK,
        description=f"Spins simulated at once (bounds memory), 1 to {MAX_CHUNK}.",
    )
    backend: Literal["numpy", "torch"] = Field("numpy", description="Array backend.")
    device: Literal["cpu", "cuda"] = Field(
        "cpu", description="torch device; `cuda` gives each rank the GPU of its local rank."
    )
    precision: Literal["float64", "float32"] = Field("float64", description="Arithmetic.")

    @classmethod
    def from_json(cls, text: str | bytes, where: str) -> SimulationSpec:
        """Parse a spec; ``where`` names it in errors."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise InputError(f"spec {where}: {describe_validation(exc)}") from None


def local_copy(uri: str, workdir: Path, store: ObjectStore | None = None) -> Path:
    """A local path for ``uri``: paths as they are, ``s3://`` objects downloaded to workdir.

    A download is named by the whole URI (``staged_name``), so PD and T1 maps that share a
    basename in two prefixes stay two files. ``store`` reads S3: the unit's on the flow host;
    a rank (its node's own credentials) passes none.
    """
    if not uri.startswith("s3://"):
        path = Path(uri.removeprefix("file://"))
        if not path.is_file():
            raise InputError(f"{uri}: no such file")
        return path
    from tasks.storage.objects import ObjectStore, staged_name  # boto3 only where S3 is used

    return (store or ObjectStore()).download_file(uri, workdir / staged_name(uri))


def build_phantom(spec: PhantomSpec, workdir: Path, store: ObjectStore | None = None) -> Phantom:
    """The phantom ``spec`` describes (NIfTI maps fetched into ``workdir`` by ``store``)."""
    if spec.kind == "shepp_logan":
        return shepp_logan(
            spec.matrix,
            spec.fov_m,
            spins_per_voxel=spec.spins_per_voxel,
            seed=spec.seed,
            sampling=spec.sampling,
            thickness=spec.thickness_m,
        )
    maps = {
        name: local_copy(uri, workdir, store)
        for name in ("pd", "t1", "t2", "df")
        if (uri := getattr(spec, name))
    }
    return from_nifti(
        **maps, spins_per_voxel=spec.spins_per_voxel, seed=spec.seed, sampling=spec.sampling
    )


def build_sequence(
    spec: SequenceSpec, phantom: Phantom, workdir: Path, store: ObjectStore | None = None
) -> Sequence:
    """The sequence ``spec`` describes; a builder's matrix and fov default to the phantom's."""
    if spec.seq:
        return read_seq(local_copy(spec.seq, workdir, store))
    if spec.builder not in BUILDERS:
        raise InputError(f"sequence builder {spec.builder!r}; expected one of {sorted(BUILDERS)}")
    nx, ny, _ = phantom.shape
    params = {"matrix": (nx, ny), "fov": phantom.fov[:2], "thickness": phantom.fov[2]}
    params.update(spec.params)
    for key in ("matrix", "fov"):
        params[key] = tuple(params[key])
    try:
        return BUILDERS[spec.builder](**params)
    except TypeError as exc:  # an unknown or missing keyword
        raise InputError(f"sequence builder {spec.builder!r}: {exc}") from None


def noise_covariance(spec: SimulationSpec) -> np.ndarray | None:
    """The coils' noise covariance ``Psi = E[n n^H]``, or None for no noise."""
    if spec.noise == "none" or spec.noise_std == 0:
        return None
    variance = spec.noise_std**2
    if spec.noise == "white":
        return variance * np.eye(spec.coils, dtype=np.complex128)
    rng = np.random.default_rng([spec.noise_seed, 1])
    return variance * correlated_covariance(spec.coils, spec.noise_correlation, rng)


def plan(
    spec: SimulationSpec, workdir: Path, store: ObjectStore | None = None
) -> tuple[Phantom, Sequence]:
    """Phantom and sequence, checked: every rank and the flow's pre-launch check call this.

    Args:
        spec: The simulation.
        workdir: Where S3 inputs are fetched to.
        store: Reads S3 inputs; the flow host passes its unit's (``RunContext.store``).
    """
    phantom = build_phantom(spec.phantom, workdir, store)
    sequence = build_sequence(spec.sequence, phantom, workdir, store)
    if sequence.adc_samples == 0:
        raise InputError(f"sequence {sequence.name!r} has no ADC samples; expected a readout")
    if sequence.matrix is None:
        raise InputError(f"sequence {sequence.name!r} has no Cartesian matrix for k-space")
    return phantom, sequence


# Bytes of the memory model (``memory_estimate``), rounded up from what the code holds.
RANK_BASE_BYTES = 256 * 2**20  # Python, NumPy, SciPy, mpi4py and h5py loaded in one rank
SPIN_BYTES = 160  # SpinSet (7 float64) and the temporaries of building it, per spin
VOXEL_BYTES = 48  # PD, T1, T2, off-resonance (float64) and labels, per phantom voxel
CHUNK_COMPLEX = 80  # complex values per spin of a chunk's working set (``bloch.simulate``)


def memory_estimate(
    spec: SimulationSpec, phantom: Phantom, sequence: Sequence, ranks: int, ranks_per_node: int
) -> int:
    """Peak memory of the node that holds rank 0, bytes: a planning model that errs high.

    Every rank holds the phantom's maps, its share of the spins with their coil sensitivities
    (complex128 per coil), a chunk's working set and its signal twice (backend and NumPy copy,
    ``coils x Nadc`` complex128); rank 0 also holds the reduced signal, its noisy copy,
    k-space and the noise scan.
    """
    share = -(-phantom.n_spins // ranks)
    signal = spec.coils * sequence.adc_samples * 16
    rank = (
        RANK_BASE_BYTES
        + phantom.pd.size * VOXEL_BYTES
        + share * (SPIN_BYTES + 32 * spec.coils)
        + min(spec.chunk, share) * CHUNK_COMPLEX * 16
        + 2 * signal
    )
    nx = sequence.matrix[0] if sequence.matrix else 1
    noise = spec.coils * (spec.noise_samples or 256 * nx) * 16
    return int(min(ranks, ranks_per_node) * rank + 3 * signal + noise)


def check_ranks(ranks: int, total: int) -> None:
    """Raise unless ``1 <= ranks <= total`` spins."""
    if ranks < 1 or ranks > total:
        raise InputError(
            f"{ranks} MPI ranks for a phantom of {total} spins; expected 1 to {total} ranks "
            "(fewer ranks, or more spins per voxel)"
        )


def progress_line(done: int, share: int, total: int, rate: float) -> str:
    """One progress line; ``PROGRESS_LINE`` parses it."""
    return f"spins {done}/{share} (of {total}), {rate:.3g} spin-samples/s"


def simulate_rank(
    spec: SimulationSpec,
    phantom: Phantom,
    sequence: Sequence,
    rank: int,
    size: int,
    local_rank: int = 0,
) -> np.ndarray:
    """This rank's share of the received signal, complex128, shape (coils, Nadc)."""
    total = phantom.n_spins
    start, stop = spin_range(total, rank, size)
    share = stop - start
    mine = spins(phantom, start, stop, sequence)
    samples = sequence.adc_samples
    began = last = time.perf_counter()

    def report(done: int, _: int) -> None:
        nonlocal last
        now = time.perf_counter()
        if done == share or now - last >= PROGRESS_EVERY_S:
            last = now
            rate = spin_samples_per_second(done, samples, now - began)
            print(progress_line(done, share, total, rate), flush=True)

    device = f"cuda:{local_rank}" if spec.device == "cuda" else "cpu"
    signal = simulate(
        mine,
        sequence,
        coil_maps(phantom, mine, spec.coils),
        chunk=spec.chunk,
        backend=spec.backend,
        device=device,
        precision=spec.precision,
        progress=report,
    )
    if share == 0:  # an empty share never calls progress
        print(progress_line(0, 0, total, 0.0), flush=True)
    return np.ascontiguousarray(signal, dtype=np.complex128)


def write_raw(
    spec: SimulationSpec, sequence: Sequence, signal: np.ndarray, out: str, workdir: Path
) -> str:
    """Noise, k-space and the MRD file (rank 0 only); returns ``out``."""
    from tasks.mr.io import write_mrd

    cov = noise_covariance(spec)
    rng = np.random.default_rng([spec.noise_seed, 2])
    nx = sequence.matrix[0] if sequence.matrix else 1
    noise = None
    if cov is not None:
        signal = add_noise(signal, cov, rng)
        noise = noise_scan(cov, spec.noise_samples or 256 * nx, rng)
    kspace = to_kspace(signal, sequence)[:, :, :, None, None]
    fov = sequence.fov or (1.0, 1.0, 1.0)
    flip = sequence.parameters.get("flip_deg")
    is_s3 = out.startswith("s3://")
    target = workdir / Path(out).name if is_s3 else Path(out.removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    write_mrd(
        target,
        kspace,
        noise,
        fov_mm=tuple(1000.0 * f for f in fov),  # type: ignore[arg-type]
        dwell_s=sequence.dwell or 1e-5,
        flip_angle_deg=float(flip) if isinstance(flip, int | float) else None,
    )
    if is_s3:
        from tasks.storage.objects import ObjectStore
        from tasks.storage.transfer import put_once

        put_once(ObjectStore(), out, target)  # a final output: never replaces another run's
    return out


def main(argv: list[str] | None = None) -> int:
    """Read the spec, simulate this rank's share, reduce to rank 0, which writes the MRD."""
    parser = argparse.ArgumentParser(
        prog="python -m mpi4py -m tasks.simulation.mpi_simulate",
        description="One rank of an MPI Bloch simulation.",
    )
    parser.add_argument("--spec", required=True, help="SimulationSpec JSON (path or s3:// URI).")
    parser.add_argument("--out", required=True, help="MRD output (path or s3:// URI).")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    from tasks.compute.node_context import NodeContext

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    node = NodeContext.from_process()
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sciflow-sim-") as tmp:
        workdir = Path(tmp)
        spec = SimulationSpec.from_json(local_copy(args.spec, workdir).read_bytes(), args.spec)
        phantom, sequence = plan(spec, workdir)
        total = phantom.n_spins
        if size > total:
            if rank == 0:
                check_ranks(size, total)  # raises: MPI_Abort ends the job with this error
            comm.Barrier()  # the other ranks wait here until the abort
        local = simulate_rank(spec, phantom, sequence, rank, size, node.local_index)
        total_signal = np.zeros_like(local)  # (coils, Nadc): small; only rank 0's is filled
        comm.Reduce(local, total_signal, op=MPI.SUM, root=0)
        if rank != 0:
            return 0
        seconds = time.perf_counter() - began
        out = write_raw(spec, sequence, total_signal, args.out, workdir)
    result = {
        "out": out,
        "spins": total,
        "adc_samples": sequence.adc_samples,
        "coils": spec.coils,
        "seconds": seconds,
        "spin_samples_per_s": spin_samples_per_second(total, sequence.adc_samples, seconds),
        "ranks": size,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def parse_result(line: str) -> dict[str, Any] | None:
    """The ``RESULT`` line's JSON, or None for any other line."""
    if not line.startswith(RESULT_PREFIX):
        return None
    value = json.loads(line.removeprefix(RESULT_PREFIX))
    return value if isinstance(value, dict) else None


def parse_progress(line: str) -> tuple[int, int, int, float] | None:
    """``(done, share, total, rate)`` from a progress line, or None for any other line."""
    match = PROGRESS_LINE.match(line)
    if not match:
        return None
    rate = float(match["rate"])
    return int(match["done"]), int(match["share"]), int(match["total"]), rate


if __name__ == "__main__":
    sys.exit(main())
