"""Bloch simulation speed: a 64x64 RF-spoiled GRE from a .seq file on Shepp-Logan, vs baselines.

Workload (issue 6, "Speed"): ``sequence.gre()`` (64x64, RF spoiling, 4,096 ADC samples)
written with ``write_seq`` and read back with ``read_seq``; a Shepp-Logan phantom with
``spins_per_voxel`` spins (the folded sub-voxel grid) in each of its 2,039 tissue voxels.
Throughput is spin-samples per second: spins x ADC samples / wall seconds of the simulation
(median of the repeats; phantom and file set-up untimed).

- ``ours_1rank``: ``simulate`` in this process, against ``blochsimulator`` (C/OpenMP) on one
  thread; ``ours_2ranks``: two MPI ranks (our own rank program
  ``benchmarks/baselines/simulation_mpi_rank.py`` under ``run_mpi``: spins split with
  ``spin_range``, signal ``Reduce``d; timed from a barrier to the end of the reduction), against
  ``blochsimulator`` on two threads. Goal: at least 3x each.
- ``parallel_efficiency``: ``T(1 rank) / (2 T(2 ranks))`` with the same rank program, for a
  1e6-spin phantom (2e5 with ``--quick``). Goal: at least 85%. Baseline: blochsimulator's own
  1 -> 2 thread efficiency on the throughput phantom. ``parallel_efficiency_mpi_simulate``:
  the same for whole ``tasks.simulation.mpi_simulate`` jobs (set-up and MRD file included;
  one job per rank count with ``--quick``), against the bare rank program's figure. The JSON
  also holds this machine's own 2-process NumPy scaling: cores shared with other work cap
  every parallel figure.
- ``peak_memory``: ``tracemalloc`` peak of ``simulate`` at a fixed chunk on two phantom sizes;
  bounded by the chunk when the larger phantom's peak is within 1.25x of the smaller one's.
- ``stretch_whole_image``: the whole image at 64 spins per voxel on two ranks against MRzero's
  phase-distribution-graph simulator (PDG); met when ours is no slower and its image error is
  under 5%.
- ``image_error``: relative L2 error of the magnitude image (``ifft2c`` of ``to_kspace``)
  against the reference simulation: MRzero PDG when it imports, else our own simulation at
  256 spins per voxel (128 with ``--quick``); a real least-squares scale is fitted first (the
  simulators normalise signal differently). The baseline is MRzero's isochromat image at the
  throughput spins per voxel, against the same reference.
- ``cuda``: ``backend="torch", device="cuda"`` at 64 spins per voxel; skipped without CUDA.
- ``convergence`` (JSON, and ``results/simulation_convergence.png``): image error against the
  same reference by spins per voxel (4, 16, 64, 256; to 64 with ``--quick``) for ours on the
  folded sub-voxel grid and on random positions, blochsimulator and MRzero's isochromat
  simulator, each placing spins its own way, with the seconds of each run.

Our spins are on the sub-voxel grid folded along the sequence's dephasing periods
(``tasks.simulation.phantoms``), the default.

Signals of every baseline are compared with ours on the same phantom (relative L2 after a
fitted complex scale, and the magnitude-image error), under ``signal_comparison`` in the JSON:
``same_isochromats`` gives blochsimulator and MRzero's isochromat simulator our grid's points
(not folded: each stands for itself), spin for spin, and compares with ours on the same
(they agree to about 1e-4: ``tests/simulation/test_conventions.py``); ``own_sampling``
lets each place its own spins in the voxels, so those figures are mostly sampling error.
blochsimulator reads RF and ADC phases with the opposite sign (``tasks.simulation.bloch``'s
docstring), so it is always given the ``.seq`` file with its phases negated.
Baselines are optional: ``pip install blochsimulator==2.9.5 mrzerocore==1.2.0`` (with the
project's CPU torch); a missing one is skipped with its reason, printed and in the JSON.

``python -m benchmarks.simulation [--quick] [--repeats N]`` from the repository root.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import (
    REPO_ROOT,
    RESULTS_DIR,
    Metric,
    median_of,
    parse_args,
    repeats_for,
    time_median,
    write_results,
)
from tasks.mr.fft import ifft2c
from tasks.simulation.bloch import simulate, spin_samples_per_second, to_kspace
from tasks.simulation.mpi import mpi4py_argv, run_mpi
from tasks.simulation.phantoms import shepp_logan, spins
from tasks.simulation.pulseq import read_seq, write_seq
from tasks.simulation.sequence import Sequence as SimSequence
from tasks.simulation.sequence import gre

NAME = "simulation"
RANK_MODULE = "benchmarks.baselines.simulation_mpi_rank"
# Spins per voxel of the throughput phantom (blochsimulator needs a square).
SPV_QUICK, SPV_FULL = 4, 16
# Spins of the parallel-efficiency phantom.
EFFICIENCY_QUICK, EFFICIENCY_FULL = 100_000, 1_000_000
STRETCH_SPV = 64
REFERENCE_SPV_QUICK, REFERENCE_SPV_FULL = 128, 256
MEMORY_CHUNK = 16384
# Spins per voxel of the convergence curve (squares: blochsimulator samples s x s a voxel).
CONVERGENCE_QUICK, CONVERGENCE_FULL = (4, 16, 64), (4, 16, 64, 256)
GOAL_SPEEDUP = 3.0
GOAL_EFFICIENCY = 85.0
GOAL_IMAGE_ERROR = 5.0
GOAL_MEMORY_RATIO = 1.25
MPI_TIMEOUT_S = 600.0


def _rel(reference: np.ndarray, value: np.ndarray, complex_scale: bool) -> float:
    """``|ref - a value| / |ref|`` with ``a`` the least-squares scale (complex or real)."""
    ref, val = reference.ravel(), value.ravel()
    scale = np.vdot(val, ref) / np.vdot(val, val) if np.vdot(val, val) else 0.0
    if not complex_scale:
        scale = scale.real
    return float(np.linalg.norm(ref - scale * val) / np.linalg.norm(ref))


def _image(signal: np.ndarray, sequence: SimSequence) -> np.ndarray:
    kspace = to_kspace(np.asarray(signal).reshape(1, -1), sequence)
    return np.abs(ifft2c(kspace)[..., 0])


def _compare(ours: np.ndarray, other: np.ndarray, sequence: SimSequence) -> dict[str, float]:
    """Signal and magnitude-image relative errors of ``other`` against ``ours``, in %."""
    return {
        "signal_rel_error_pct": 100 * _rel(ours, other, complex_scale=True),
        "image_rel_error_pct": 100 * _rel(_image(ours, sequence), _image(other, sequence), False),
    }


def _ranks(
    seq_path: Path,
    ranks: int,
    spvs: Sequence[int],
    repeats: int,
    warmup: int,
    save: Path | None = None,
) -> dict[int, dict[str, Any]]:
    """Run the rank program; its ``RESULT`` lines by spins per voxel."""
    argv = [str(seq_path), "--spv", *map(str, spvs), "--repeats", str(repeats)]
    argv += ["--warmup", str(warmup)]
    if save is not None:
        argv += ["--save", str(save)]
    results: dict[int, dict[str, Any]] = {}

    def on_line(rank: int | None, line: str) -> None:
        if line.startswith("RESULT "):
            row = json.loads(line.removeprefix("RESULT "))
            results[int(row["spv"])] = row
        elif line.strip():
            print(f"  [rank {rank}] {line}", file=sys.stderr)

    env = {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    run_mpi(
        mpi4py_argv(RANK_MODULE, *argv), ranks, env=env, on_line=on_line, timeout_s=MPI_TIMEOUT_S
    )
    missing = set(spvs) - set(results)
    if missing:
        raise RuntimeError(f"rank program printed no RESULT for spins per voxel {sorted(missing)}")
    return results


def _mpi_simulate(
    seq_path: Path, spv: int, ranks: int, runs: int, workdir: Path
) -> list[dict[str, Any]]:
    """``tasks.simulation.mpi_simulate`` jobs (1 coil, no noise): each job's ``RESULT``.

    Its ``seconds`` are the whole job's on rank 0: spec, phantom and sequence set-up, the
    simulation, the reduction and the MRD file, but not interpreter start-up.
    """
    from tasks.simulation.mpi_simulate import parse_result

    spec = {
        "phantom": {"kind": "shepp_logan", "spins_per_voxel": spv},
        "sequence": {"seq": str(seq_path)},
        "coils": 1,
        "noise": "none",
    }
    spec_path = workdir / f"spec_{spv}.json"
    spec_path.write_text(json.dumps(spec))
    results: list[dict[str, Any]] = []

    def on_line(rank: int | None, line: str) -> None:
        row = parse_result(line) if rank == 0 else None
        if row is not None:
            results.append(row)

    env = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for run in range(runs):
        out = workdir / f"raw_{spv}_{ranks}_{run}.h5"
        argv = mpi4py_argv("tasks.simulation.mpi_simulate", "--spec", str(spec_path))
        run_mpi([*argv, "--out", str(out)], ranks, env=env, on_line=on_line, timeout_s=600)
        out.unlink(missing_ok=True)
    if len(results) != runs:
        raise RuntimeError(f"mpi_simulate printed {len(results)} RESULT lines for {runs} jobs")
    return results


def _rate(row: dict[str, Any]) -> float:
    return spin_samples_per_second(row["spins"], row["samples"], statistics.median(row["seconds"]))


_PROBE = (
    "import time, numpy as np\n"
    "z = np.exp(1j * np.linspace(0, 1, 1 << 16))\n"
    "t = time.perf_counter()\n"
    "for _ in range(400): z = z * z / np.abs(z)\n"
    "print(time.perf_counter() - t)\n"
)


def _machine_scaling() -> float:
    """Two plain NumPy processes at once against one alone, in % (100: two free cores).

    Context for ``parallel_efficiency``: on a machine whose cores are shared with other work
    no program can scale, and this says so without MPI or our simulator involved.
    """

    def run(count: int) -> float:
        procs = [
            subprocess.Popen(  # noqa: S603 - our own interpreter, a fixed script
                [sys.executable, "-c", _PROBE], stdout=subprocess.PIPE, text=True
            )
            for _ in range(count)
        ]
        return max(float(proc.communicate()[0]) for proc in procs)

    alone = statistics.median(run(1) for _ in range(3))
    both = statistics.median(run(2) for _ in range(3))
    return 100 * alone / both


def _peak_bytes(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _optional(package: str, skipped: dict[str, str]) -> bool:
    try:
        __import__(package)
    except Exception as exc:
        skipped[package] = f"{package} does not import ({type(exc).__name__}: {exc})"
        print(f"skipped {package} baselines: {skipped[package]}")
        return False
    return True


def _speedup(name: str, ours: float, base: float, baseline: str) -> Metric:
    return Metric(
        name,
        ours,
        base,
        baseline,
        "spin-samples/s",
        f">= {GOAL_SPEEDUP:g}x",
        bool(base) and ours / base >= GOAL_SPEEDUP,
    )


def _convergence(
    seq_path: Path,
    sequence: SimSequence,
    image_error: Callable[[np.ndarray], float],
    counts: Sequence[int],
    bs_seq: Path | None,
    mrzero: bool,
) -> dict[str, Any]:
    """Image error (%) against the reference by spins per voxel, each simulator its own way.

    Ours on the folded grid (``sampling="grid"``, the default) and on random positions (the
    former default); blochsimulator with its stratified ``s x s`` spins (given the file with
    its phases negated) and MRzero's ``isochromat_sim`` with random ones, each on 2 threads.
    One run per point; ``seconds`` are the simulation's alone.
    """
    from benchmarks.baselines.simulation_external import (
        blochsimulator_signal,
        mrzero_isochromat_signal,
    )

    curves: dict[str, dict[str, list[float]]] = {}

    def point(name: str, run: Callable[[], tuple[np.ndarray, float]]) -> None:
        signal, seconds = run()
        curve = curves.setdefault(name, {"error_pct": [], "seconds": []})
        curve["error_pct"].append(image_error(signal))
        curve["seconds"].append(seconds)

    def ours(spv: int, sampling: str) -> tuple[np.ndarray, float]:
        phantom = shepp_logan(spins_per_voxel=spv, sampling=sampling)  # type: ignore[arg-type]
        spin_set = spins(phantom, sequence=sequence)
        started = time.perf_counter()
        signal = simulate(spin_set, sequence)[0]
        return signal, time.perf_counter() - started

    maps = shepp_logan()
    for spv in counts:
        point("ours_grid", lambda spv=spv: ours(spv, "grid"))
        point("ours_random", lambda spv=spv: ours(spv, "random"))
        if bs_seq is not None:
            point("blochsimulator", lambda spv=spv: blochsimulator_signal(bs_seq, maps, spv, 2))
        if mrzero:
            point(
                "mrzero_isochromat",
                lambda spv=spv: mrzero_isochromat_signal(seq_path, maps, spv, 2),
            )
        print(
            f"convergence at {spv} spins/voxel: "
            + ", ".join(f"{name} {c['error_pct'][-1]:.1f}%" for name, c in curves.items()),
            flush=True,
        )
    return {"spins_per_voxel": list(counts), "curves": curves}


def _plot_convergence(convergence: dict[str, Any], target: Path) -> Path:
    """The convergence curve as a PNG (log-log, the goal as a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    labels = {
        "ours_grid": "sciflow, folded sub-voxel grid",
        "ours_random": "sciflow, random positions",
        "blochsimulator": "blochsimulator 2.9.5 (stratified)",
        "mrzero_isochromat": "MRzero isochromat_sim (random)",
    }
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    counts = convergence["spins_per_voxel"]
    for name, curve in convergence["curves"].items():
        axes.loglog(counts, curve["error_pct"], marker="o", label=labels.get(name, name))
    axes.axhline(
        GOAL_IMAGE_ERROR, color="grey", linestyle="--", label=f"goal {GOAL_IMAGE_ERROR:g}%"
    )
    axes.set_xlabel("spins per voxel")
    axes.set_ylabel(f"image error vs {convergence['reference']} (%)")
    axes.set_title("RF-spoiled GRE 64x64, Shepp-Logan")
    axes.set_xticks(counts, [str(c) for c in counts])
    axes.xaxis.set_minor_formatter(NullFormatter())
    low, high = axes.get_ylim()
    axes.set_yticks([t for t in (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100) if low <= t <= high])
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(NullFormatter())
    axes.legend(fontsize=8)
    figure.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, dpi=120)
    plt.close(figure)
    print(f"convergence plot: {target}")
    return target


def _cuda(sequence: SimSequence, repeats: int, skipped: dict[str, str]) -> dict[str, Any]:
    """Our torch backend on CUDA at 64 spins per voxel, or the reason it was skipped."""
    try:
        import torch
    except ImportError as exc:
        skipped["cuda"] = f"torch is not installed ({exc})"
    else:
        if not torch.cuda.is_available():
            skipped["cuda"] = f"torch {torch.__version__} sees no CUDA device"
    if "cuda" in skipped:
        print(f"skipped cuda: {skipped['cuda']}")
        return {"status": "skipped", "reason": skipped["cuda"]}
    spin_set = spins(shepp_logan(spins_per_voxel=STRETCH_SPV), sequence=sequence)

    def run() -> None:
        simulate(spin_set, sequence, backend="torch", device="cuda", chunk=1 << 20)
        torch.cuda.synchronize()

    seconds, runs = time_median(run, repeats)
    rate = spin_samples_per_second(len(spin_set), sequence.adc_samples, seconds)
    return {
        "status": "measured",
        "device": torch.cuda.get_device_name(0),
        "spins": len(spin_set),
        "seconds": runs,
        "rate": rate,
    }


def main(argv: Sequence[str] | None = None) -> int:
    started = time.perf_counter()
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = repeats_for(args, quick_default=3)
    spv = SPV_QUICK if args.quick else SPV_FULL
    eff_spins = EFFICIENCY_QUICK if args.quick else EFFICIENCY_FULL
    ref_spv = REFERENCE_SPV_QUICK if args.quick else REFERENCE_SPV_FULL
    skipped: dict[str, str] = {}
    metrics: list[Metric] = []
    notes: dict[str, Any] = {"load_average_at_start": os.getloadavg()}

    with tempfile.TemporaryDirectory(prefix="bench-sim-") as tmp:
        seq_path = write_seq(gre(matrix=(64, 64), spoil="rf"), Path(tmp) / "gre.seq")
        sequence = read_seq(seq_path)
        samples = sequence.adc_samples
        phantom = shepp_logan(spins_per_voxel=spv)
        spin_set = spins(phantom, sequence=sequence)
        print(
            f"workload: {seq_path.name} ({samples} ADC samples), {phantom.n_spins} spins "
            f"({spv}/voxel)",
            flush=True,
        )

        # --- ours: one rank in this process ---------------------------------------------
        ours_signal = simulate(spin_set, sequence)[0]
        t1, runs1 = time_median(lambda: simulate(spin_set, sequence), repeats)
        ours1 = spin_samples_per_second(len(spin_set), samples, t1)

        # --- ours: MPI ranks --------------------------------------------------------------
        eff_spv = max(1, math.ceil(eff_spins / len(phantom.voxels)))
        save = Path(tmp)
        # NumPy has nothing to warm up; --quick skips the uncounted run to stay under a minute.
        warmup = 0 if args.quick else 1
        cases = list(dict.fromkeys([spv, STRETCH_SPV, eff_spv]))
        two = _ranks(seq_path, 2, cases, repeats, warmup, save=save)
        one = _ranks(seq_path, 1, [eff_spv], repeats, warmup)
        ours2 = _rate(two[spv])
        efficiency = (
            100
            * statistics.median(one[eff_spv]["seconds"])
            / (2 * statistics.median(two[eff_spv]["seconds"]))
        )
        # The project's own rank program, end to end (set-up and MRD file included).
        job_runs = 1 if args.quick else repeats
        jobs = {r: _mpi_simulate(seq_path, eff_spv, r, job_runs, save) for r in (1, 2)}
        job_s = {r: statistics.median(row["seconds"] for row in jobs[r]) for r in (1, 2)}
        job_efficiency = 100 * job_s[1] / (2 * job_s[2])
        notes["mpi_simulate_jobs"] = jobs
        notes["machine_two_process_efficiency_pct"] = _machine_scaling()
        print(
            f"parallel efficiency 1->2 ranks {efficiency:.1f}%; this machine's own 2-process "
            f"NumPy scaling {notes['machine_two_process_efficiency_pct']:.1f}% "
            f"(load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores)"
        )
        mpi_signal = np.load(save / f"signal_{spv}.npy")[0]
        stretch_signal = np.load(save / f"signal_{STRETCH_SPV}.npy")[0]
        notes["mpi_vs_one_process_signal_rel_error"] = _rel(ours_signal, mpi_signal, False)
        notes["mpi_runs"] = {"1_rank": one, "2_ranks": two}
        notes["mpi_program"] = (
            f"{RANK_MODULE} under run_mpi for the headline metrics (simulation alone); "
            "tasks.simulation.mpi_simulate under run_mpi for parallel_efficiency_mpi_simulate"
        )

        # --- memory: peak of simulate at a fixed chunk on two phantom sizes ---------------
        peaks = {}
        for size_spv in (spv, 4 * spv):
            mem_spins = spins(shepp_logan(spins_per_voxel=size_spv), sequence=sequence)
            peaks[len(mem_spins)] = _peak_bytes(
                lambda s=mem_spins: simulate(s, sequence, chunk=MEMORY_CHUNK)
            )
        (small, small_peak), (large, large_peak) = sorted(peaks.items())
        print(
            f"peak traced memory at chunk={MEMORY_CHUNK}: {small} spins "
            f"{small_peak / 2**20:.1f} MiB, {large} spins {large_peak / 2**20:.1f} MiB"
        )
        metrics.append(
            Metric(
                "peak_memory",
                large_peak / 2**20,
                small_peak / 2**20,
                f"ours, {small} spins (ours: {large} spins; chunk {MEMORY_CHUNK})",
                "MiB",
                f"<= {GOAL_MEMORY_RATIO:g}x",
                large_peak <= GOAL_MEMORY_RATIO * small_peak,
            )
        )

        # --- baselines --------------------------------------------------------------------
        comparisons: dict[str, dict[str, float]] = {}
        same: dict[str, dict[str, float]] = {}  # on our isochromats, spin for spin
        plain = spins(phantom)  # the grid's points, each standing for itself alone
        plain_signal = simulate(plain, sequence)[0]
        bs_seq = seq_path
        bs_rates: dict[int, float] = {}
        if _optional("blochsimulator", skipped):
            from benchmarks.baselines.simulation_external import (
                blochsimulator_at_positions,
                blochsimulator_signal,
                negated_phases,
            )

            # blochsimulator negates RF and ADC phases: its own file plays our experiment.
            bs_seq = negated_phases(seq_path, Path(tmp) / "gre_blochsimulator.seq")
            for threads in (1, 2):
                last: list[np.ndarray] = []

                def run_bs(threads: int = threads, last: list[np.ndarray] = last) -> float:
                    signal, seconds = blochsimulator_signal(bs_seq, phantom, spv, threads)
                    last[:] = [signal]
                    return seconds

                seconds, _ = median_of(run_bs, repeats)
                bs_rates[threads] = spin_samples_per_second(len(spin_set), samples, seconds)
            comparisons["blochsimulator"] = _compare(ours_signal, last[0], sequence)
            same["blochsimulator"] = _compare(
                plain_signal, blochsimulator_at_positions(bs_seq, plain, 2)[0], sequence
            )
            metrics.append(
                _speedup("ours_1rank", ours1, bs_rates[1], f"blochsimulator 1 thread, {spv} spv")
            )
            metrics.append(
                _speedup("ours_2ranks", ours2, bs_rates[2], f"blochsimulator 2 threads, {spv} spv")
            )
        metrics.append(
            Metric(
                "parallel_efficiency_mpi_simulate",
                job_efficiency,
                efficiency,
                "our bare rank program (simulate + Reduce only)",
                "%",
                f">= {GOAL_EFFICIENCY:g}% ({one[eff_spv]['spins']} spins, whole job)",
                job_efficiency >= GOAL_EFFICIENCY,
            )
        )
        bs_eff = 100 * bs_rates[2] / (2 * bs_rates[1]) if bs_rates else 0.0
        metrics.append(
            Metric(
                "parallel_efficiency",
                efficiency,
                bs_eff,
                f"blochsimulator 1->2 threads, {len(spin_set)} spins"
                if bs_rates
                else "blochsimulator (not installed)",
                "%",
                f">= {GOAL_EFFICIENCY:g}% ({one[eff_spv]['spins']} spins)",
                efficiency >= GOAL_EFFICIENCY,
            )
        )

        reference_name = f"ours at {ref_spv} spins/voxel"
        pdg = None
        if _optional("MRzeroCore", skipped):
            from benchmarks.baselines.simulation_external import (
                mrzero_isochromat_at_positions,
                mrzero_isochromat_signal,
                mrzero_pdg_signal,
            )

            iso_runs: list[float] = []
            iso_signal = np.zeros(0)
            for _ in range(2 if args.quick else 1 + min(repeats, 2)):
                iso_signal, seconds = mrzero_isochromat_signal(seq_path, phantom, spv, 1)
                iso_runs.append(seconds)
            iso_rate = spin_samples_per_second(
                len(spin_set), samples, statistics.median(iso_runs[1:])
            )
            comparisons["mrzero_isochromat"] = _compare(ours_signal, iso_signal, sequence)
            same["mrzero_isochromat"] = _compare(
                plain_signal, mrzero_isochromat_at_positions(seq_path, plain, 2)[0], sequence
            )
            notes["mrzero_isochromat_rate_1thread"] = iso_rate
            metrics.append(
                Metric(
                    "ours_1rank_vs_mrzero_iso",
                    ours1,
                    iso_rate,
                    f"MRzero isochromat_sim 1 thread, {spv} spv",
                    "spin-samples/s",
                )
            )
            pdg_runs = []
            for _ in range(2 if args.quick else 1 + repeats):
                pdg, seconds = mrzero_pdg_signal(seq_path, shepp_logan(), threads=2)
                pdg_runs.append(seconds)
            pdg_seconds = statistics.median(pdg_runs[1:])
            comparisons["mrzero_pdg"] = _compare(ours_signal, pdg, sequence)
            reference_name = "MRzero PDG"

        if pdg is None:
            ref_phantom = spins(shepp_logan(spins_per_voxel=ref_spv), sequence=sequence)
            reference = _image(simulate(ref_phantom, sequence)[0], sequence)
        else:
            reference = _image(pdg, sequence)

        def image_error(signal: np.ndarray) -> float:
            return 100 * _rel(reference, _image(signal, sequence), complex_scale=False)

        ours_error = image_error(ours_signal)
        stretch_error = image_error(stretch_signal)
        notes["image_error_pct"] = {
            "reference": reference_name,
            f"ours_{spv}spv": ours_error,
            f"ours_{STRETCH_SPV}spv_2ranks": stretch_error,
        }
        if "mrzero_isochromat" in comparisons:
            notes["image_error_pct"][f"mrzero_isochromat_{spv}spv"] = image_error(iso_signal)
        convergence = _convergence(
            seq_path,
            sequence,
            image_error,
            CONVERGENCE_QUICK if args.quick else CONVERGENCE_FULL,
            bs_seq if "blochsimulator" in comparisons else None,
            mrzero="mrzero_isochromat" in comparisons,
        )
        convergence["reference"] = reference_name
        plot = _plot_convergence(convergence, RESULTS_DIR / f"{NAME}_convergence.png")
        metrics.append(
            Metric(
                "image_error",
                stretch_error,
                notes["image_error_pct"].get(f"mrzero_isochromat_{spv}spv", 0.0),
                f"MRzero isochromat {spv} spv vs {reference_name}"
                if "mrzero_isochromat" in comparisons
                else f"none (ours {STRETCH_SPV} spv vs {reference_name})",
                "%",
                f"< {GOAL_IMAGE_ERROR:g}% (ours {STRETCH_SPV} spv vs {reference_name})",
                stretch_error < GOAL_IMAGE_ERROR,
            )
        )
        stretch_seconds = statistics.median(two[STRETCH_SPV]["seconds"])
        if pdg is not None:
            metrics.append(
                Metric(
                    "stretch_whole_image",
                    stretch_seconds,
                    pdg_seconds,
                    "MRzero PDG whole image (2 threads)",
                    "s",
                    f"<= 1x and image error < {GOAL_IMAGE_ERROR:g}%",
                    stretch_seconds <= pdg_seconds and stretch_error < GOAL_IMAGE_ERROR,
                )
            )
        else:
            skipped["stretch_whole_image"] = "MRzero (mrzerocore) is not installed"
            print("skipped stretch_whole_image: MRzero (mrzerocore) is not installed")

        cuda = _cuda(sequence, repeats, skipped)
        if cuda["status"] == "measured":
            metrics.append(
                Metric(
                    "cuda_1gpu",
                    cuda["rate"],
                    1e9,
                    "goal 1e9 (KomaMRI reports ~4e8 on a GPU)",
                    "spin-samples/s",
                    ">= 1x",
                    cuda["rate"] >= 1e9,
                )
            )

    write_results(
        NAME,
        metrics,
        args,
        workload={
            "sequence": "gre 64x64 RF-spoiled, written and read back as Pulseq .seq",
            "adc_samples": samples,
            "phantom": "Shepp-Logan 64x64, 2039 tissue voxels",
            "spins_per_voxel": spv,
            "spins": len(spin_set),
            "stretch_spins_per_voxel": STRETCH_SPV,
            "efficiency_spins": one[eff_spv]["spins"],
            "image_reference": reference_name,
            "image_error_method": "relative L2 of |ifft2c(to_kspace)| after a fitted real scale",
        },
        repeats=repeats,
        ours_1rank_runs_s=runs1,
        ours_1rank_rate=ours1,
        ours_2ranks_rate=ours2,
        stretch_2ranks_rate=_rate(two[STRETCH_SPV]),
        blochsimulator_rates=bs_rates,
        signal_comparison={
            "against": f"ours, {spv} spins/voxel, one process",
            "method": "signal: relative L2 after a fitted complex scale; image: as image_error",
            "same_isochromats": same,
            "own_sampling": comparisons,
        },
        peak_memory_bytes=peaks,
        convergence={**convergence, "plot": str(plot)},
        cuda=cuda,
        skipped=skipped,
        notes={**notes, "load_average_at_end": os.getloadavg()},
        wall_s=time.perf_counter() - started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
