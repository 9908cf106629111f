"""MR SNR maps: ``tasks.mr.snr.snr_map`` against MR Optimum's reference code, sigpy and pygrappa.

Baseline 1 is ``benchmarks.baselines.mroptimum`` (MR Optimum's algorithms run the way its code
runs them: complex64, per-pixel coil combination, one full reconstruction per pseudo replica,
replicas stacked). Baseline 2, when ``sigpy`` and ``pygrappa`` import, is sigpy's
``EspiritCalib`` and ``SenseRecon`` and pygrappa's ``cgrappa`` against ``tasks.mr.espirit``,
``tasks.mr.recon`` (SENSE) and ``tasks.mr.grappa`` on the same data.

Metrics (data: ``tasks.mr.phantom``, one slice, complex64 k-space, the phantom's exact Psi
handed to both sides):

- ``pmr_b1_cpu``: PMR with B1, NR replicas (full 128 at 256x256x16; quick 32 at 128x128x8);
- ``ac_b1_cpu``, ``ac_rss_cpu``: AC (Kellman) B1 and RSS maps, same size;
- ``pmr_memory``: peak resident memory of a PMR-B1 run of 1,000 replicas at 256x256x32
  (quick: 100 at 128x128x8), each side in its own subprocess;
- ``espirit_cpu``, ``sense_cpu``, ``grappa_cpu``: baseline 2 (skipped with a printed reason when
  the packages are missing; ``pip install sigpy pygrappa scikit-image``).

Speed metrics are throughputs (replicas/s, maps/s), so ``ratio = ours / baseline`` is the
speedup ``baseline_time / our_time``. Each run also cross-checks the maps (``checks`` in the
JSON): deterministic outputs by ``max|ours - baseline| / max|baseline|``, PMR (independent noise
on each side) by the relative difference of the ROI means against the primer's tolerance.

GPU variants (``pmr_b1_gpu``, ``ac_b1_gpu``, ``coil_fft_gpu``) run when torch sees a CUDA
device and are recorded as skipped, with the reason, otherwise: see ``gpu_metrics``.

Run from the repository root: ``python -m benchmarks.mr_snr [--quick] [--repeats N]``.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks._common import (
    REPO_ROOT,
    Metric,
    parse_args,
    repeats_for,
    time_median,
    write_results,
)

NAME = "mr_snr"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Size:
    """One problem size: image (nx, ny), coils and pseudo replicas."""

    nx: int
    ny: int
    coils: int
    replicas: int

    def label(self) -> str:
        """E.g. ``256x256x16, NR 128``."""
        return f"{self.nx}x{self.ny}x{self.coils}, NR {self.replicas}"


FULL = Size(256, 256, 16, 128)
QUICK = Size(128, 128, 8, 32)
MEMORY_FULL = Size(256, 256, 32, 1000)
MEMORY_QUICK = Size(128, 128, 8, 100)
MEMORY_GOAL_MIB = 2048.0
# Baseline 2 geometry: SENSE/GRAPPA acceleration along y and ACS lines.
ACCELERATION = 2
ACS_LINES = 24
# Equality tolerance for deterministic outputs (relative to the baseline's peak).
TOLERANCE = 1e-4


def phantom_data(size: Size, seed: int = 0) -> tuple[Any, np.ndarray, np.ndarray]:
    """The phantom, one noisy complex64 slice (x, y, coils) and its noise covariance Psi."""
    from tasks.mr.phantom import make_phantom, phantom_acquisition

    phantom = make_phantom(size.nx, size.ny, size.coils, seed=seed)
    signal, _ = phantom_acquisition(phantom, seed=seed + 1, noise_samples=16)
    return phantom, signal[..., 0, 0].astype(np.complex64), phantom.noise_cov


def max_rel_diff(ours: np.ndarray, baseline: np.ndarray) -> float:
    """``max|ours - baseline| / max|baseline|``: the largest difference relative to the peak."""
    ours, baseline = np.asarray(ours), np.asarray(baseline)
    peak = float(np.max(np.abs(baseline)))
    return float(np.max(np.abs(ours - baseline)) / peak) if peak else float("inf")


def equal_check(ours: np.ndarray, baseline: np.ndarray, note: str = "") -> dict[str, Any]:
    """A deterministic cross-check: relative difference, tolerance and the verdict."""
    diff = max_rel_diff(ours, baseline)
    check: dict[str, Any] = {
        "max_rel_diff": diff,
        "tolerance": TOLERANCE,
        "agree": diff <= TOLERANCE,
    }
    if note:
        check["note"] = note
    return check


def speed_metric(
    name: str,
    unit_count: float,
    ours_s: float,
    baseline_s: float,
    baseline: str,
    unit: str,
    goal: float | None,
) -> Metric:
    """Throughputs (count per second) so ``ratio`` is the speedup; ``goal`` on the speedup."""
    ours, base = unit_count / ours_s, unit_count / baseline_s
    met = None if goal is None else bool(ours / base >= goal)
    return Metric(name, ours, base, baseline, unit, None if goal is None else f">= {goal:g}x", met)


# --- baseline 1: MR Optimum ---------------------------------------------------------------------


def bench_mroptimum(
    size: Size, repeats: int, baseline_repeats: int, checks: dict[str, Any], runs: dict[str, Any]
) -> list[Metric]:
    """PMR-B1 and AC B1/RSS: ours against MR Optimum's loops."""
    from benchmarks.baselines import mroptimum as mro
    from tasks.mr.snr import ReconSpec, SnrSpec, snr_map

    phantom, kspace, psi = phantom_data(size)
    metrics = []

    # AC (Kellman), B1 and RSS: deterministic, so the maps must agree to rounding.
    for recon, goal in (("b1", 50.0), ("rss", None)):
        spec, snr_spec = ReconSpec(recon=recon), SnrSpec(method="ac")
        ours_map = snr_map(kspace, psi, spec, snr_spec).snr
        base_map = np.abs(mro.ac_snr(kspace, psi, recon))
        checks[f"ac_{recon}"] = equal_check(ours_map, base_map)
        ours_s, ours_runs = time_median(
            lambda s=spec, n=snr_spec: snr_map(kspace, psi, s, n), repeats
        )
        base_s, base_runs = time_median(
            lambda r=recon: mro.ac_snr(kspace, psi, r), baseline_repeats, warmup=0
        )
        runs[f"ac_{recon}"] = {"ours_s": ours_runs, "baseline_s": base_runs}
        metrics.append(
            speed_metric(
                f"ac_{recon}_cpu",
                1,
                ours_s,
                base_s,
                f"MR Optimum cm2DKellman{recon.upper()} (per-pixel loop)",
                "maps/s",
                goal,
            )
        )

    # PMR with B1: MR Optimum's semantics on both sides (numerator = last replica).
    nr = size.replicas
    spec = ReconSpec(recon="b1")
    snr_spec = SnrSpec(method="pmr", replicas=nr, convention="mroptimum", seed=0)
    ours_s, ours_runs = time_median(lambda: snr_map(kspace, psi, spec, snr_spec), repeats)
    base_map: np.ndarray | None = None

    def baseline_run() -> None:
        nonlocal base_map
        base_map = np.abs(mro.pmr_snr(kspace, psi, "b1", nr, seed=0))

    base_s, base_runs = time_median(baseline_run, baseline_repeats, warmup=0)
    runs["pmr_b1"] = {"ours_s": ours_runs, "baseline_s": base_runs}
    assert base_map is not None
    ours_map = snr_map(kspace, psi, spec, snr_spec).snr
    checks["pmr_b1"] = pmr_check(ours_map, base_map, phantom.support, nr)
    metrics.insert(
        0,
        speed_metric(
            "pmr_b1_cpu",
            nr,
            ours_s,
            base_s,
            "MR Optimum PMR loop + cm2DReconB1 (per pixel)",
            "replicas/s",
            20.0,
        ),
    )
    return metrics


def pmr_check(ours: np.ndarray, baseline: np.ndarray, roi: np.ndarray, nr: int) -> dict[str, Any]:
    """Two PMR maps from independent noise: compare ROI means (primer section 5 tolerance).

    Each ROI mean has relative error about ``1/sqrt(2 (N - 1) M)`` (M pixels, white noise);
    the difference of two has sqrt(2) times that, so the tolerance is
    ``max(1%, 3 sqrt(2) / sqrt(2 (N - 1) M))``. Both use the last replica as numerator and the
    same N, so the ``1/(4N)`` bias of the sample std cancels.
    """
    m = int(roi.sum())
    ours_mean, base_mean = float(np.mean(ours[roi])), float(np.mean(baseline[roi]))
    diff = abs(ours_mean / base_mean - 1)
    tolerance = max(0.01, 3 * math.sqrt(2) / math.sqrt(2 * (nr - 1) * m))
    per_pixel = np.abs(ours[roi] / baseline[roi] - 1)
    return {
        "roi_mean_rel_diff": diff,
        "tolerance": tolerance,
        "agree": diff <= tolerance,
        "roi_pixels": m,
        "roi_mean_ours": ours_mean,
        "roi_mean_baseline": base_mean,
        "per_pixel_median_rel_diff": float(np.median(per_pixel)),
        "per_pixel_max_rel_diff": float(np.max(per_pixel)),
        "note": "independent pseudo noise on each side: per-pixel differences are statistical "
        f"(std of a sample std ~ 1/sqrt(2(N-1)) = {1 / math.sqrt(2 * (nr - 1)):.3f} each)",
    }


# --- peak memory ---------------------------------------------------------------------------------


def memory_child(which: str, nx: int, ny: int, coils: int, replicas: int) -> None:
    """Run one PMR-B1 and print ``{"peak_mib", "before_mib", "seconds"}`` (in a subprocess).

    ``before_mib`` is the peak after imports and data, so ``peak - before`` is the run's own.
    """
    import resource

    from benchmarks.baselines import mroptimum as mro
    from tasks.mr.snr import ReconSpec, SnrSpec, snr_map

    _, kspace, psi = phantom_data(Size(nx, ny, coils, replicas))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    if which == "ours":
        spec = SnrSpec(method="pmr", replicas=replicas, convention="mroptimum")
        snr_map(kspace, psi, ReconSpec(recon="b1"), spec)
    else:
        mro.pmr_snr(kspace, psi, "b1", replicas, per_pixel=False)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_mib": peak, "before_mib": before, "seconds": seconds}))


def measure_memory(which: str, size: Size) -> dict[str, Any]:
    """Peak RSS of ``memory_child`` in a fresh interpreter."""
    code = (
        "from benchmarks.mr_snr import memory_child; "
        f"memory_child({which!r}, {size.nx}, {size.ny}, {size.coils}, {size.replicas})"
    )
    done = subprocess.run(  # noqa: S603 - our interpreter, fixed code
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory run {which!r} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_memory(size: Size, runs: dict[str, Any]) -> Metric:
    """Peak memory of PMR-B1 at ``size``; the goal is on ours, absolute."""
    ours = measure_memory("ours", size)
    base = measure_memory("baseline", size)
    runs["pmr_memory"] = {"size": size.label(), "ours": ours, "baseline": base}
    print(
        f"peak memory, PMR-B1 {size.label()}: ours {ours['peak_mib']:.0f} MiB "
        f"({ours['seconds']:.1f} s), MR Optimum stack {base['peak_mib']:.0f} MiB "
        f"({base['seconds']:.1f} s); before the run {ours['before_mib']:.0f} / "
        f"{base['before_mib']:.0f} MiB"
    )
    return Metric(
        "pmr_memory",
        ours["peak_mib"],
        base["peak_mib"],
        "MR Optimum PMR replica stack (combination vectorised)",
        "MiB",
        f"ours < {MEMORY_GOAL_MIB:g} MiB",
        bool(ours["peak_mib"] < MEMORY_GOAL_MIB),
    )


# --- baseline 2: sigpy and pygrappa ------------------------------------------------------------


def baseline2_modules() -> tuple[dict[str, Any], dict[str, str]]:
    """Importable baseline-2 modules, and a reason for each one that is not."""
    found: dict[str, Any] = {}
    missing: dict[str, str] = {}
    try:
        import sigpy
        import sigpy.mri

        found["sigpy"] = sigpy
    except Exception as exc:
        missing["sigpy"] = f"{type(exc).__name__}: {exc}"
    try:
        import pygrappa

        found["pygrappa"] = pygrappa
    except Exception as exc:
        missing["pygrappa"] = f"{type(exc).__name__}: {exc}"
    return found, missing


def bench_espirit(
    sigpy: Any, kspace: np.ndarray, repeats: int, checks: dict[str, Any], runs: dict[str, Any]
) -> Metric:
    """ESPIRiT maps: ours against ``sigpy.mri.app.EspiritCalib`` with the same parameters."""
    from tasks.mr.espirit import espirit_maps

    params = {"calib_width": 24, "kernel_width": 6, "thresh": 0.02, "crop": 0.95, "max_iter": 30}
    coils_first = np.ascontiguousarray(np.moveaxis(kspace, -1, 0))

    def theirs() -> np.ndarray:
        app = sigpy.mri.app.EspiritCalib(coils_first, show_pbar=False, **params)
        return np.moveaxis(np.asarray(app.run()), 0, -1)

    def ours() -> np.ndarray:
        return espirit_maps(kspace, **params)

    checks["espirit"] = equal_check(
        ours(), theirs(), "same algorithm (power iteration from ones, max_iter 30, both sides)"
    )
    ours_s, ours_runs = time_median(ours, repeats)
    base_s, base_runs = time_median(theirs, repeats)
    runs["espirit"] = {"ours_s": ours_runs, "baseline_s": base_runs}
    return speed_metric("espirit_cpu", 1, ours_s, base_s, "sigpy EspiritCalib", "maps/s", 1.0)


def bench_sense(
    sigpy: Any, kspace_pw: np.ndarray, repeats: int, checks: dict[str, Any], runs: dict[str, Any]
) -> Metric:
    """SENSE R=2: our direct unfolding against sigpy's iterative ``SenseRecon`` (CG, lamda 0)."""
    from tasks.mr import coils, recon

    r = ACCELERATION
    maps = coils.sensitivities_acl(kspace_pw, (None, ACS_LINES))
    undersampled = recon.undersample(kspace_pw, r)
    mask = np.zeros(kspace_pw.shape[:2], dtype=np.float32)
    mask[:, ::r] = 1
    y = np.ascontiguousarray(np.moveaxis(undersampled, -1, 0))
    mps = np.ascontiguousarray(np.moveaxis(maps, -1, 0))
    max_iter = 100

    def theirs() -> np.ndarray:
        app = sigpy.mri.app.SenseRecon(
            y, mps, lamda=0, weights=mask, max_iter=max_iter, show_pbar=False
        )
        return np.asarray(app.run())

    def ours() -> np.ndarray:
        aliased = recon.aliased_images(undersampled, (1, r))
        return recon.sense_unfold(aliased, maps, (1, r))[0]

    checks["sense"] = equal_check(
        ours(),
        theirs(),
        f"definitions differ: sigpy solves min ||M F S x - y|| by conjugate gradient over the "
        f"whole image ({max_iter} iterations, lamda 0); ours unfolds each fold set directly "
        "(pinv of E^H E); both give the least-squares image, so they agree once CG converges",
    )
    ours_s, ours_runs = time_median(ours, repeats)
    base_s, base_runs = time_median(theirs, repeats)
    runs["sense"] = {"ours_s": ours_runs, "baseline_s": base_runs, "cg_iterations": max_iter}
    return speed_metric(
        "sense_cpu", 1, ours_s, base_s, f"sigpy SenseRecon (CG, {max_iter} it)", "images/s", 1.0
    )


def bench_grappa(
    pygrappa: Any, kspace_pw: np.ndarray, repeats: int, checks: dict[str, Any], runs: dict[str, Any]
) -> Metric:
    """GRAPPA R=2 fill: ours against ``pygrappa.cgrappa`` with the same kernel geometry.

    Like for like, because the definitions differ in three places:

    - kernel: pygrappa's ``kernel_size=(3, 4)`` (MR Optimum's GUI default) counts grid lines
      around the target, holes included; at R = 2 its sources are the acquired lines just below
      and above, which is our ``(3, 2)`` (``tasks.mr.grappa`` docstring);
    - regularisation: pygrappa ``lamda`` scales ``0.01 ||S^H S||_F / n``, ours is relative to
      ``sigma_max(S)``; both are off here (``lamda=0``, ``regularization=0``);
    - calibration: pygrappa zero-pads the ACS (``kx // 2`` readout samples each side,
      ``ky // 2`` lines) and fits on every window of the padded block, so windows straddling the
      ACS edge count with zeros; ours fits only windows wholly inside. Ours is given the ACS
      padded the same way (1 sample each side in x, 1 line before and 2 after in y, which
      reproduces pygrappa's set of windows); the difference with the plain ACS is recorded too;
    - k-space edges: pygrappa zero-pads k-space, we wrap, so the outermost readout sample and
      line on each side are left out of the comparison.
    """
    from tasks.mr import recon
    from tasks.mr.coils import acl_region
    from tasks.mr.grappa import grappa_reconstruct

    r = ACCELERATION
    data = kspace_pw.astype(np.complex128)  # MR Optimum casts to complex128 for cgrappa
    undersampled = recon.undersample(data, r)
    acs = np.ascontiguousarray(data[acl_region(data.shape[:2], (None, ACS_LINES))])

    def theirs() -> np.ndarray:
        return pygrappa.cgrappa(undersampled, acs, kernel_size=(3, 4), lamda=0, coil_axis=-1)

    padded = np.pad(acs, ((1, 1), (1, 2), (0, 0)))

    def ours(calibration: np.ndarray = padded) -> np.ndarray:
        return grappa_reconstruct(undersampled, calibration, r, (3, 2), regularization=0)

    edge = 1
    interior = (slice(edge, -edge), slice(edge, -edge))
    ours_k, theirs_k = ours(), theirs()
    check = equal_check(
        ours_k[interior],
        theirs_k[interior],
        "filled k-space without the outermost readout sample and line on each side (pygrappa "
        "zero-pads k-space there, ours wraps); kernels matched (pygrappa (3, 4) grid window = "
        "ours (3, 2) acquired lines at R = 2), both unregularised, our ACS zero-padded as "
        "pygrappa pads its calibration",
    )
    check["max_rel_diff_whole_kspace"] = max_rel_diff(ours_k, theirs_k)
    check["max_rel_diff_plain_acs"] = max_rel_diff(ours(acs)[interior], theirs_k[interior])
    checks["grappa"] = check
    ours_s, ours_runs = time_median(ours, repeats)
    base_s, base_runs = time_median(theirs, repeats)
    runs["grappa"] = {"ours_s": ours_runs, "baseline_s": base_runs}
    return speed_metric("grappa_cpu", 1, ours_s, base_s, "pygrappa cgrappa", "fills/s", 1.0)


def bench_baseline2(
    size: Size, repeats: int, checks: dict[str, Any], runs: dict[str, Any]
) -> tuple[list[Metric], dict[str, str]]:
    """Baseline-2 metrics for the packages that import; reasons for those skipped."""
    from tasks.mr.noise import prewhiten, prewhitening_matrix

    found, missing = baseline2_modules()
    skipped = {}
    for package, reason in missing.items():
        what = "espirit_cpu, sense_cpu" if package == "sigpy" else "grappa_cpu"
        skipped[package] = reason
        print(f"skipped {what}: {package} does not import ({reason})")
    if not found:
        return [], skipped
    _, kspace, psi = phantom_data(size)
    kspace_pw = prewhiten(kspace, prewhitening_matrix(psi).astype(np.complex64))
    metrics: list[Metric] = []
    cases: list[tuple[str, Callable[[], Metric]]] = []
    if "sigpy" in found:
        sigpy = found["sigpy"]
        cases.append(("espirit", lambda: bench_espirit(sigpy, kspace_pw, repeats, checks, runs)))
        cases.append(("sense", lambda: bench_sense(sigpy, kspace_pw, repeats, checks, runs)))
    if "pygrappa" in found:
        grappa = found["pygrappa"]
        cases.append(("grappa", lambda: bench_grappa(grappa, kspace_pw, repeats, checks, runs)))
    for name, case in cases:
        try:
            metrics.append(case())
        except Exception as exc:
            skipped[name] = f"{type(exc).__name__}: {exc}"
            print(f"skipped {name}_cpu: {type(exc).__name__}: {exc}")
    return metrics, skipped


# --- GPU ------------------------------------------------------------------------------------------


GPU_BATCH = 64  # replicas per batch on the GPU (256x256x16 complex64: 0.5 GiB of noise)
GPU_FFT_BATCH = 8  # (batch, x, y, coils) slices per batched coil-FFT call
COPY_MIB = 1024  # device-to-device copy buffer for the bandwidth reference


def gpu_metrics(
    size: Size, repeats: int, checks: dict[str, Any], runs: dict[str, Any]
) -> tuple[list[Metric], dict[str, Any]]:
    """GPU variants (``SnrSpec(device="cuda")``), or the reason they were skipped.

    - ``pmr_b1_gpu``: the ``pmr_b1_cpu`` case (same phantom, size and semantics) on CUDA against
      our CPU NumPy path, end to end (host-to-device copies and results back included), after
      one warm-up run (CUDA context, cuFFT plans); goal >= 20x. Cross-checked against the CPU
      map by ROI mean (independent noise streams, primer tolerance).
    - ``ac_b1_gpu``: AC B1 on CUDA against our CPU path, cross-checked to 1e-5 relative.
    - ``coil_fft_gpu``: ``arrays.TorchArrays.ifft2c`` (centred orthonormal, with its shifts) on a
      (batch, x, y, coils) complex64 stack, in GB/s of ``2 * bytes`` (read + write), against the
      device's measured device-to-device copy bandwidth (``clone`` of a 1 GiB buffer, same
      accounting), both timed with CUDA events; goal >= 0.5.

    Returns:
        The metrics and a JSON note: ``status`` ("measured" or "skipped"), the reason when
        skipped, the device's name and memory, and ``nvidia-smi`` readings when it exists.
    """
    try:
        import torch
    except ImportError as exc:
        reason = f"skipped: torch is not installed ({exc})"
        print(reason)
        return [], {"status": "skipped", "reason": reason}
    if not torch.cuda.is_available():
        reason = (
            f"skipped: torch {torch.__version__} sees no CUDA device "
            f"(torch.version.cuda={torch.version.cuda}); GPU metrics need a CUDA GPU"
        )
        print(reason)
        return [], {"status": "skipped", "reason": reason}
    from tasks.mr.snr import ReconSpec, SnrSpec, snr_map

    props = torch.cuda.get_device_properties(0)
    note: dict[str, Any] = {
        "status": "measured",
        "device": props.name,
        "memory_gib": props.total_memory / 1024**3,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    phantom, kspace, psi = phantom_data(size)
    metrics = []
    nr = size.replicas
    spec = ReconSpec(recon="b1")
    cpu_spec = SnrSpec(method="pmr", replicas=nr, convention="mroptimum", seed=0)
    gpu_spec = SnrSpec(
        method="pmr", replicas=nr, convention="mroptimum", seed=0, batch=GPU_BATCH, device="cuda"
    )
    cpu_s, cpu_runs = time_median(lambda: snr_map(kspace, psi, spec, cpu_spec), repeats)
    gpu_s, gpu_runs = time_median(lambda: snr_map(kspace, psi, spec, gpu_spec), repeats)
    runs["pmr_b1_gpu"] = {"ours_s": gpu_runs, "baseline_s": cpu_runs}
    cpu_map = snr_map(kspace, psi, spec, cpu_spec).snr
    gpu_map = snr_map(kspace, psi, spec, gpu_spec).snr
    checks["pmr_b1_gpu"] = pmr_check(gpu_map, cpu_map, phantom.support, nr)
    metrics.append(
        speed_metric("pmr_b1_gpu", nr, gpu_s, cpu_s, "our CPU NumPy path", "replicas/s", 20.0)
    )

    ac_cpu, ac_gpu = SnrSpec(method="ac"), SnrSpec(method="ac", device="cuda")
    cpu_s, cpu_runs = time_median(lambda: snr_map(kspace, psi, spec, ac_cpu), repeats)
    gpu_s, gpu_runs = time_median(lambda: snr_map(kspace, psi, spec, ac_gpu), repeats)
    runs["ac_b1_gpu"] = {"ours_s": gpu_runs, "baseline_s": cpu_runs}
    check = equal_check(
        snr_map(kspace, psi, spec, ac_gpu).snr, snr_map(kspace, psi, spec, ac_cpu).snr
    )
    check["tolerance"] = 1e-5
    check["agree"] = check["max_rel_diff"] <= 1e-5
    checks["ac_b1_gpu"] = check
    metrics.append(speed_metric("ac_b1_gpu", 1, gpu_s, cpu_s, "our CPU NumPy path", "maps/s", None))

    fft_gbs, copy_gbs, raw_gbs = _fft_and_copy_bandwidth(torch, size, repeats)
    note.update(
        coil_fft_gbs=fft_gbs, copy_gbs=copy_gbs, raw_ifft2_gbs=raw_gbs, fft_batch=GPU_FFT_BATCH
    )
    metrics.append(
        Metric(
            "coil_fft_gpu",
            fft_gbs,
            copy_gbs,
            "device-to-device copy (clone, 1 GiB)",
            "GB/s",
            ">= 0.5x",
            bool(fft_gbs >= 0.5 * copy_gbs),
        )
    )
    note["nvidia_smi"] = _nvidia_smi()
    return metrics, note


def _fft_and_copy_bandwidth(torch: Any, size: Size, repeats: int) -> tuple[float, float, float]:
    """GB/s of the batched coil iFFT (ours, and plain ``ifft2``) and of a device copy."""
    from tasks.mr.arrays import TorchArrays

    ifft2c = TorchArrays("cuda").ifft2c

    def event_seconds(fn: Callable[[], object]) -> float:  # median of CUDA-event timings
        fn()  # warm-up: plans, allocator
        times = []
        for _ in range(max(repeats, 5)):
            start = torch.cuda.Event(enable_timing=True)
            stop = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        return float(np.median(times))

    generator = torch.Generator(device="cuda").manual_seed(0)
    shape = (GPU_FFT_BATCH, size.nx, size.ny, size.coils)
    stack = torch.randn(shape, dtype=torch.complex64, device="cuda", generator=generator)
    moved = 2 * stack.numel() * stack.element_size() / 1e9
    fft_gbs = moved / event_seconds(lambda s=stack: ifft2c(s, axes=(-3, -2)))
    raw_gbs = moved / event_seconds(lambda s=stack: torch.fft.ifft2(s, dim=(-3, -2), norm="ortho"))
    del stack
    buffer = torch.empty(COPY_MIB * MIB, dtype=torch.uint8, device="cuda")
    copy_gbs = 2 * buffer.numel() / 1e9 / event_seconds(buffer.clone)
    del buffer
    torch.cuda.empty_cache()
    return fft_gbs, copy_gbs, raw_gbs


def _nvidia_smi() -> dict[str, str] | str:
    """GPU name, memory and utilisation from ``nvidia-smi``, or why not."""
    query = "name,memory.total,memory.used,utilization.gpu,driver_version"
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return "unavailable: nvidia-smi is not on PATH"
    try:
        done = subprocess.run(  # noqa: S603 - fixed arguments, resolved executable
            [executable, f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {type(exc).__name__}: {exc}"
    values = [v.strip() for v in done.stdout.strip().splitlines()[0].split(",")]
    return dict(zip(query.split(","), values, strict=False))


# --- main --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    size = QUICK if args.quick else FULL
    memory_size = MEMORY_QUICK if args.quick else MEMORY_FULL
    repeats = repeats_for(args, quick_default=3)
    # MR Optimum's PMR runs for tens of seconds at full size: at most 3 repeats, no warm-up.
    baseline_repeats = repeats if args.quick else min(repeats, 3)
    checks: dict[str, Any] = {}
    runs: dict[str, Any] = {}
    started = time.perf_counter()

    metrics = bench_mroptimum(size, repeats, baseline_repeats, checks, runs)
    metrics.append(bench_memory(memory_size, runs))
    more, skipped = bench_baseline2(size, repeats, checks, runs)
    metrics.extend(more)
    gpu, gpu_note = gpu_metrics(size, repeats, checks, runs)
    metrics.extend(gpu)

    for name, check in checks.items():
        key = "max_rel_diff" if "max_rel_diff" in check else "roi_mean_rel_diff"
        verdict = "agree" if check["agree"] else "DIFFER"
        print(
            f"check {name}: {key} {check[key]:.3g} (tolerance {check['tolerance']:.3g}) {verdict}"
        )
    write_results(
        NAME,
        metrics,
        args,
        size=size.label(),
        memory_size=memory_size.label(),
        dtype="complex64",
        repeats=repeats,
        baseline_repeats=baseline_repeats,
        checks=checks,
        skipped=skipped,
        gpu=gpu_note,
        runs_s=runs,
        wall_s=time.perf_counter() - started,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
