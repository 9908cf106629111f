"""The torch (CUDA) path of ``tasks.mr.snr.snr_map``: AC, PMR and CR for RSS and B1.

Selected by ``SnrSpec.device``: ``"cuda"`` runs here on the GPU; ``"torch-cpu"`` runs the very
same code on torch's CPU device (used by the tests on machines without a GPU). ``"cpu"`` (the
default) never imports this module; this module imports torch only inside its functions, and
``tasks.mr.snr`` imports it lazily, so importing the numerics never imports torch.

What runs on the device: the k-space and the whitener are moved once; prewhitening is a matmul
with ``W = L^-1`` (lower triangular, from ``noise.prewhitening_matrix``, which also validates
Psi); the coil images are one batched centred orthonormal ``torch.fft.ifft2``; the RSS / B1
combination, the inner coil maps and the pseudo replicas (noise, combination, running
moments) all stay on the device. Only small (x, y) images come back: the reference RSS for the
mask (``coils.coil_mask`` uses scipy morphology on the CPU) and the results. ESPIRiT maps or
masks are computed on the CPU (``snr._sensitivities``) from the prewhitened reference k-space
and moved to the device.

Pseudo-noise: replica ``i`` draws ``CN(0, I)`` (``normal_`` on a real view, each component of
variance 1/2) from a ``torch.Generator`` on the device, re-seeded per replica with
the ``i``-th word of ``SeedSequence(seed)``'s state, so the maps depend only on ``seed`` (not on
``batch``), as on the NumPy path. The numbers differ from the NumPy path's SFC64 streams (and
between CUDA and torch-CPU), but the distribution is the same, so PMR/CR statistics agree with
the NumPy path within the primer's replica-count tolerances (section 5). AC is deterministic and
matches the NumPy path to float rounding (1e-5 relative in complex64).

Running moments (Welford/Chan, as ``snr._Moments``) accumulate in float64 on the device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from tasks.mr.snr import ReconSpec, SnrSpec

TORCH_RECONS = ("rss", "b1")
TORCH_METHODS = ("ac", "pmr", "cr")
_HALF_STD = math.sqrt(0.5)


@dataclass(slots=True)
class TorchResult:
    """What ``snr_map`` needs from the device, as NumPy arrays."""

    clean: np.ndarray
    """Noise-free reconstruction (x, y): real for RSS, complex for B1."""
    values: np.ndarray | None = None
    """AC SNR map (x, y) (NaN/inf not yet cleaned)."""
    count: int = 0
    mean: np.ndarray | None = None
    m2: np.ndarray | None = None
    last: np.ndarray | None = None
    sensitivities: np.ndarray | None = None
    mask: np.ndarray | None = None
    device_name: str = ""


def import_torch() -> Any:
    """torch, or an InputError saying how to get it."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dev dependency
        raise InputError(
            "device other than 'cpu' needs PyTorch; install torch or use device='cpu'"
        ) from exc
    return torch


def torch_device(name: str) -> Any:
    """The torch device for ``SnrSpec.device`` (``"cuda"`` or ``"torch-cpu"``)."""
    torch = import_torch()
    if name == "cuda":
        if not torch.cuda.is_available():
            raise InputError(
                "device='cuda' but torch sees no CUDA device (CPU-only build or no GPU); "
                "expected a CUDA-enabled torch and GPU, or device='cpu'"
            )
        return torch.device("cuda")
    if name == "torch-cpu":
        return torch.device("cpu")
    raise InputError(f"device={name!r}; expected 'cpu', 'cuda' or 'torch-cpu'")


def check_supported(recon: ReconSpec, snr: SnrSpec) -> None:
    """Raise unless the torch path covers this recon and method."""
    if recon.recon not in TORCH_RECONS or snr.method not in TORCH_METHODS:
        raise InputError(
            f"device={snr.device!r} supports recon in {list(TORCH_RECONS)} with method in "
            f"{list(TORCH_METHODS)}; got recon={recon.recon!r}, method={snr.method!r} "
            "(use device='cpu' for SENSE, GRAPPA and multiple replicas)"
        )


def ifft2c(torch: Any, kspace: torch.Tensor, dims: tuple[int, int] = (-3, -2)) -> torch.Tensor:
    """Centred orthonormal inverse 2D FFT over ``dims`` (as ``tasks.mr.fft.ifft2c``)."""
    shifted = torch.fft.ifftshift(kspace, dim=dims)
    return torch.fft.fftshift(torch.fft.ifft2(shifted, dim=dims, norm="ortho"), dim=dims)


def _rss(torch: Any, images: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(torch.sum(images.real**2 + images.imag**2, dim=-1))


def replica_seeds(seed: int, count: int) -> list[int]:
    """One 63-bit seed per replica from ``SeedSequence(seed)`` (batch-independent)."""
    words = np.random.SeedSequence(seed).generate_state(count, dtype=np.uint64)
    return [int(w >> np.uint64(1)) for w in words]


class _Moments:
    """Chan/Welford running mean and M2 on the device, float64."""

    def __init__(self, torch: Any) -> None:
        self.torch = torch
        self.count = 0
        self.mean: Any = None
        self.m2: Any = None

    def update(self, values: torch.Tensor) -> None:
        values = values.to(self.torch.float64)
        n_b = values.shape[0]
        mean_b = values.mean(dim=0)
        m2_b = ((values - mean_b) ** 2).sum(dim=0)
        if self.mean is None:
            self.mean, self.m2, self.count = mean_b, m2_b, n_b
            return
        total = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * n_b / total)
        self.count = total


def run(
    data: np.ndarray,
    whitener: np.ndarray,
    reference: np.ndarray | None,
    recon: ReconSpec,
    snr: SnrSpec,
    progress: Callable[[int, int], None] | None,
    timings: dict[str, float],
    sensitivities: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray]],
    reference_kspace: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
) -> TorchResult:
    """AC/PMR/CR maps' ingredients on the torch device.

    Args:
        data: Checked k-space (x, y, coils), complex64 or complex128.
        whitener: ``W = L^-1`` (coils, coils), same dtype.
        reference: Optional un-whitened reference k-space (x, y, coils).
        recon: RSS or B1, unaccelerated (``check_supported`` and ``snr._build`` rules).
        snr: Method AC, PMR or CR; ``device`` is ``"cuda"`` or ``"torch-cpu"``.
        progress: ``progress(done, total)`` after each batch.
        timings: Filled with per-stage seconds (device-synchronised).
        sensitivities: ``snr._sensitivities`` bound to the specs: ``(reference_pw, images)`` ->
            (maps, mask), the CPU fallback for ESPIRiT.
        reference_kspace: ``snr._reference_kspace`` bound to the spec: (base_pw, ref_pw) ->
            reference k-space, on NumPy arrays (used on the CPU fallback only).
    """
    torch = import_torch()
    device = torch_device(snr.device)
    check_supported(recon, snr)
    if recon.acceleration != (1, 1):
        raise InputError(
            f"acceleration={recon.acceleration} with recon {recon.recon!r}; "
            "expected (1, 1), or recon 'sense' or 'grappa'"
        )

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    clock = time.perf_counter()
    k = torch.from_numpy(np.ascontiguousarray(data)).to(device)
    w_t = torch.from_numpy(np.ascontiguousarray(whitener.T)).to(device)
    base_pw = k @ w_t  # rho = W k per sample: (x, y, c) @ W^T
    ref_pw = None
    if reference is not None:
        ref_pw = torch.from_numpy(np.ascontiguousarray(reference)).to(device) @ w_t
    del k
    sync()
    timings["prewhiten"] = time.perf_counter() - clock

    clock = time.perf_counter()
    images = ifft2c(torch, base_pw)
    sens_np = mask_np = None
    if recon.recon == "rss":

        def combine(domain: torch.Tensor) -> torch.Tensor:
            return _rss(torch, domain)

        linear = False
        noise_std = None
    else:
        same = ref_pw is None and not recon.decimate and recon.sensitivity == "inner"
        espirit = "espirit" in (recon.sensitivity, recon.mask)
        if same and not espirit:
            sens, mask_np = _inner_on_device(torch, images, recon, snr)
            sens_np = sens.cpu().numpy()
        else:
            base_np = base_pw.cpu().numpy()
            ref_np = None if ref_pw is None else ref_pw.cpu().numpy()
            ref_k = reference_kspace(base_np, ref_np)
            sens_np, mask_np = sensitivities(ref_k, images.cpu().numpy() if same else None)
            sens = torch.from_numpy(np.ascontiguousarray(sens_np)).to(device)
        norm = _rss(torch, sens)
        inverse_norm = torch.where(norm > 0, 1 / torch.where(norm > 0, norm, 1), 0).to(norm.dtype)
        weights = sens.conj() * inverse_norm[..., None]

        def combine(domain: torch.Tensor) -> torch.Tensor:
            return torch.sum(weights * domain, dim=-1)

        linear = True
        noise_std = (inverse_norm > 0).to(torch.float64)
    del base_pw, ref_pw
    sync()
    timings["setup"] = time.perf_counter() - clock

    clock = time.perf_counter()
    clean = combine(images)
    result = TorchResult(
        clean=clean.cpu().numpy(),
        sensitivities=sens_np,
        mask=mask_np,
        device_name=_device_name(torch, device),
    )
    if snr.method == "ac":
        magnitude = math.sqrt(2) * clean.abs().to(torch.float64)
        if noise_std is not None:
            magnitude = magnitude / noise_std
        result.values = magnitude.cpu().numpy()
        if progress is not None:
            progress(1, 1)
        timings["snr"] = time.perf_counter() - clock
        return result

    moments, last = _pseudo_replicas(torch, device, images, combine, clean, linear, snr, progress)
    result.count = moments.count
    result.mean = moments.mean.cpu().numpy()
    result.m2 = moments.m2.cpu().numpy()
    result.last = last.cpu().numpy()
    sync()
    timings["snr"] = time.perf_counter() - clock
    return result


def _inner_on_device(
    torch: Any, images: torch.Tensor, recon: ReconSpec, snr: SnrSpec
) -> tuple[torch.Tensor, np.ndarray]:
    """Inner maps ``I_c / RSS`` times the mask; the mask is built on the CPU from the RSS."""
    from tasks.mr.coils import coil_mask

    ref_rss = _rss(torch, images)
    rss_np = ref_rss.cpu().numpy()
    nx, ny = rss_np.shape
    ref_image = rss_np / np.sqrt(nx * ny) if snr.convention == "mroptimum" else rss_np
    mask_np = coil_mask(ref_image, recon.mask, recon.mask_value)
    keep = (ref_rss > 0) & torch.from_numpy(mask_np).to(images.device)
    scale = torch.where(keep, 1 / torch.where(keep, ref_rss, 1), 0).to(ref_rss.dtype)
    return images * scale[..., None], mask_np


def _pseudo_replicas(
    torch: Any,
    device: Any,
    images: torch.Tensor,
    combine: Callable[[torch.Tensor], torch.Tensor],
    clean: torch.Tensor,
    linear: bool,
    snr: SnrSpec,
    progress: Callable[[int, int], None] | None,
) -> tuple[_Moments, torch.Tensor]:
    """``snr.replicas`` reconstructions of ``images + CN(0, I)``, streamed in batches."""
    seeds = replica_seeds(snr.seed, snr.replicas)
    generator = torch.Generator(device=device)
    size = min(snr.batch, snr.replicas)
    noise = torch.empty((size, *images.shape), dtype=images.dtype, device=device)
    moments = _Moments(torch)
    last = clean
    for start in range(0, snr.replicas, snr.batch):
        count = min(snr.batch, snr.replicas - start)
        for slot in range(count):
            generator.manual_seed(seeds[start + slot])
            # CN(0, I): real and imaginary parts N(0, 1/2), drawn through a real view.
            torch.view_as_real(noise[slot]).normal_(0.0, _HALF_STD, generator=generator)
        block = noise[:count]
        if linear:
            recon = combine(block) + clean  # combine(images + n) = combine(n) + combine(images)
        else:
            block += images
            recon = combine(block)
        moments.update(recon.abs())
        last = recon[-1].clone()
        del recon, block
        if progress is not None:
            progress(start + count, snr.replicas)
    return moments, last


def _device_name(torch: Any, device: Any) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return "torch-cpu"
