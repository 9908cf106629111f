"""Where ``tasks.mr.snr`` computes: NumPy on the CPU, or torch on a CPU or CUDA device.

``snr`` writes every SNR formula once (prewhitening, the reconstruction pipelines, the
pseudo-replica and multiple-replica loops, the running moments, AC/PMR/CR) against an
``Arrays`` object, the way ``tasks.simulation.backends`` serves the Bloch kernels. The object
supplies the few array kernels whose fast spelling differs between the libraries:

- ``NumpyArrays`` hands them to the NumPy functions of ``tasks.mr.fft``, ``noise``, ``recon``
  and ``coils`` themselves (sign-modulated in-place FFTs, blocked prewhitening, einsum on real
  pair views), so the CPU path is those functions, unchanged;
- ``TorchArrays`` spells the same kernels in torch on its device; torch is imported when one is
  made, never when this module is, so importing the numerics does not import torch.

Setup steps that need LAPACK or scipy (the coil mask's morphology, ESPIRiT, the SENSE unmixing
``pinv``, GRAPPA's weights) run on the host from ``to_numpy`` copies; only (x, y) images and
small matrices travel. Results come back through ``to_numpy``.

Pseudo-noise: replica ``i`` of a run draws standard normal pairs from child ``i`` of one
``SeedSequence`` tree (``snr`` spawns it). ``NumpyArrays`` draws them with
``Generator(SFC64(child))``; ``TorchArrays`` seeds a ``torch.Generator`` on its device with the
child's first 63-bit state word, so its maps also depend only on the seed (not on the batch),
but its numbers differ from NumPy's (and between CUDA and the CPU): same distribution, other
draws.

``DEVICE_RECONS`` is the one rule of what runs where; ``device_problem`` applies it for
``snr.snr_map`` and for ``options.MrOptions``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from tasks.errors import InputError
from tasks.mr import coils, fft, noise, recon

DEVICES = ("cpu", "cuda", "torch-cpu")
# Every device runs AC, MR, PMR and CR; GRAPPA's kernels are NumPy-only.
DEVICE_RECONS: dict[str, tuple[str, ...]] = {
    "cpu": ("rss", "b1", "sense", "grappa"),
    "cuda": ("rss", "b1", "sense"),
    "torch-cpu": ("rss", "b1", "sense"),
}


def device_problem(device: str, recon_name: str) -> str | None:
    """Why ``recon_name`` cannot run on ``device`` (a message naming both), or None if it can."""
    recons = DEVICE_RECONS.get(device)
    if recons is None:
        return f"device={device!r} is unknown; expected one of {list(DEVICES)}"
    if recon_name in recons:
        return None
    return (
        f"device={device!r} supports recon in {list(recons)}; got recon={recon_name!r} "
        "(use device='cpu' for it)"
    )


def arrays_for(device: str) -> NumpyArrays | TorchArrays:
    """The ``Arrays`` for ``SnrSpec.device``: ``"cpu"``, ``"cuda"`` or ``"torch-cpu"``."""
    if device == "cpu":
        return NumpyArrays()
    if device in ("cuda", "torch-cpu"):
        return TorchArrays(device)
    raise InputError(f"device={device!r} is unknown; expected one of {list(DEVICES)}")


class NumpyArrays:
    """NumPy arrays on the CPU: the kernels are ``tasks.mr``'s own NumPy functions."""

    xp: Any = np
    batched = False
    """Replicas run one per thread (NumPy releases the GIL), not as one batched array."""

    def asarray(self, array: Any) -> np.ndarray:
        """``array`` as NumPy, not copied."""
        return np.asarray(array)

    def to_numpy(self, array: Any) -> np.ndarray:
        """``array`` as NumPy on the host, not copied."""
        return np.asarray(array)

    def sync(self) -> None:
        """Nothing to wait for."""

    def info(self) -> dict[str, str]:
        """Nothing to add to ``SnrMaps.info``."""
        return {}

    def float64(self, array: np.ndarray) -> np.ndarray:
        """``array`` in float64 (not copied if it is)."""
        return array.astype(np.float64, copy=False)

    def copy(self, array: np.ndarray) -> np.ndarray:
        """A copy of ``array``."""
        return array.copy()

    def complex_contiguous(self, array: np.ndarray) -> np.ndarray:
        """``array`` C-contiguous, complex64 or complex128."""
        array = np.ascontiguousarray(array)
        if array.dtype not in (np.complex64, np.complex128):
            array = array.astype(np.complex128)
        return array

    def ifft2c(self, kspace: np.ndarray, axes: tuple[int, int] = (0, 1), own: bool = False) -> Any:
        """``fft.ifft2c``; ``own``: ``kspace`` is a temporary (``fft.ifft2c_inplace``)."""
        return fft.ifft2c_inplace(kspace, axes) if own else fft.ifft2c(kspace, axes)

    def prewhiten(self, data: np.ndarray, whitener: np.ndarray) -> np.ndarray:
        """``noise.prewhiten``: ``W`` (NumPy, (coils, coils)) along the last axis."""
        return noise.prewhiten(data, whitener)

    def coil_power(self, images: np.ndarray) -> np.ndarray:
        """``recon.coil_power``: ``sum_c |rho_c|^2`` over the last axis."""
        return recon.coil_power(images)

    def coil_dot(self, weights: np.ndarray, images: np.ndarray) -> np.ndarray:
        """``recon.coil_dot``: ``sum_c conj(w_c) rho_c`` over the last axis."""
        return recon.coil_dot(weights, images)

    def inverse_norm(self, sensitivities: np.ndarray) -> np.ndarray:
        """``recon.inverse_norm``: ``1/sqrt(s^H s)``, 0 where ``s = 0``."""
        return recon.inverse_norm(sensitivities)

    def inner_maps(self, images: np.ndarray, rss: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``coils.inner_maps``: ``I_c / rss`` times the host ``mask``."""
        return coils.inner_maps(images, rss, mask)

    def acl_kspace(self, kspace: np.ndarray, acl: tuple[int | None, int | None]) -> np.ndarray:
        """``coils.acl_kspace``: the central calibration block, zero elsewhere."""
        return coils.acl_kspace(kspace, acl)

    def undersample(self, kspace: np.ndarray, acceleration: int, axis: int) -> np.ndarray:
        """``recon.undersample``: lines 0, R, ... along ``axis``, zero elsewhere."""
        return recon.undersample(kspace, acceleration, axis=axis)

    def aliased_images(self, kspace: np.ndarray, acceleration: tuple[int, int]) -> np.ndarray:
        """``recon.aliased_images``: folded coil images (..., x/Rx, y/Ry, coils)."""
        return recon.aliased_images(kspace, acceleration)

    def sense_apply(
        self, aliased: np.ndarray, unmixing: np.ndarray, acceleration: tuple[int, int]
    ) -> np.ndarray:
        """``recon.sense_apply``: ``v = U a`` per aliased pixel, unfolded to (..., x, y)."""
        return recon.sense_apply(aliased, unmixing, acceleration)

    def normals(self, size: int, like: np.ndarray) -> NumpyNormals:
        """A buffer of ``size`` complex standard normal pairs shaped like ``like``."""
        return NumpyNormals(size, like)


class NumpyNormals:
    """``buffer`` (size, *shape), complex; each real component N(0, 1), drawn per slot."""

    def __init__(self, size: int, like: np.ndarray) -> None:
        self.real = np.float32 if like.dtype == np.complex64 else np.float64
        self.pairs = np.empty((size, *like.shape, 2), dtype=self.real)  # peak memory: one batch
        self.buffer = self.pairs.view(like.dtype)[..., 0]

    def fill(self, slot: int, stream: np.random.SeedSequence) -> None:
        """Draw slot ``slot`` from ``Generator(SFC64(stream))`` (thread-safe across slots)."""
        generator = np.random.Generator(np.random.SFC64(stream))
        generator.standard_normal(out=self.pairs[slot], dtype=self.real)


def import_torch() -> Any:
    """torch, or an InputError saying how to get it."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dev dependency
        raise InputError(
            "device other than 'cpu' needs PyTorch; install torch or use device='cpu'"
        ) from exc
    return torch


class TorchArrays:
    """torch tensors on ``"cuda"`` or, for ``"torch-cpu"``, on the CPU: the same code."""

    batched = True
    """A batch of replicas runs as one batched tensor (one kernel launch per step)."""

    def __init__(self, device: str) -> None:
        torch = import_torch()
        if device == "cuda" and not torch.cuda.is_available():
            raise InputError(
                "device='cuda' but torch sees no CUDA device (CPU-only build or no GPU); "
                "expected a CUDA-enabled torch and GPU, or device='cpu'"
            )
        if device not in ("cuda", "torch-cpu"):
            raise InputError(f"device={device!r}; expected 'cuda' or 'torch-cpu'")
        self.torch = torch
        self.xp: Any = torch
        self.device = torch.device("cuda" if device == "cuda" else "cpu")

    def asarray(self, array: Any) -> Any:
        """``array`` as a tensor on this device (NumPy dtypes kept)."""
        if isinstance(array, self.torch.Tensor):
            return array.to(self.device)
        return self.torch.from_numpy(np.ascontiguousarray(array)).to(self.device)

    def to_numpy(self, array: Any) -> np.ndarray:
        """``array`` as NumPy on the host."""
        if isinstance(array, self.torch.Tensor):
            return array.detach().cpu().numpy()
        return np.asarray(array)

    def sync(self) -> None:
        """Wait for the device, so that stage timings are true."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def info(self) -> dict[str, str]:
        """``device_name`` for ``SnrMaps.info``: the GPU's name, or ``"torch-cpu"``."""
        if self.device.type == "cuda":
            return {"device_name": str(self.torch.cuda.get_device_name(self.device))}
        return {"device_name": "torch-cpu"}

    def float64(self, array: Any) -> Any:
        """``array`` in float64."""
        return array.to(self.torch.float64)

    def copy(self, array: Any) -> Any:
        """A copy of ``array``."""
        return array.clone()

    def complex_contiguous(self, array: Any) -> Any:
        """``array`` contiguous, complex64 or complex128."""
        if not array.is_complex():
            array = array.to(self.torch.complex128)
        return array.contiguous()

    def ifft2c(self, kspace: Any, axes: tuple[int, int] = (0, 1), own: bool = False) -> Any:
        """Centred orthonormal inverse 2D FFT over ``axes`` (``own`` is NumPy's concern)."""
        fft_ = self.torch.fft
        shifted = fft_.ifftshift(kspace, dim=axes)
        return fft_.fftshift(fft_.ifft2(shifted, dim=axes, norm="ortho"), dim=axes)

    def prewhiten(self, data: Any, whitener: np.ndarray) -> Any:
        """``rho = W k`` per sample, as ``(..., coils) @ W^T``; ``W`` is NumPy."""
        return data @ self.asarray(np.ascontiguousarray(whitener.T))

    def coil_power(self, images: Any) -> Any:
        """``sum_c |rho_c|^2`` over the last axis, real."""
        if images.is_complex():
            return self.torch.sum(images.real**2 + images.imag**2, dim=-1)
        return self.torch.sum(images**2, dim=-1)

    def coil_dot(self, weights: Any, images: Any) -> Any:
        """``sum_c conj(w_c) rho_c`` over the last axis, broadcasting leading axes."""
        return self.torch.linalg.vecdot(weights, images, dim=-1)

    def inverse_norm(self, sensitivities: Any) -> Any:
        """``1/sqrt(s^H s)``, 0 where ``s = 0``."""
        norm = self.torch.sqrt(self.coil_power(sensitivities))
        positive = norm > 0
        return self.torch.where(positive, 1 / self.torch.where(positive, norm, 1), 0)

    def inner_maps(self, images: Any, rss: Any, mask: np.ndarray) -> Any:
        """``I_c / rss`` times the host ``mask``, 0 where ``rss`` is 0 or the mask false."""
        keep = (rss > 0) & self.asarray(mask)
        scale = self.torch.where(keep, 1 / self.torch.where(keep, rss, 1), 0).to(rss.dtype)
        return images * scale[..., None]

    def acl_kspace(self, kspace: Any, acl: tuple[int | None, int | None]) -> Any:
        """The central calibration block (``coils.acl_region``), zero elsewhere."""
        region = coils.acl_region(tuple(kspace.shape[:2]), acl)
        block = self.torch.zeros_like(kspace)
        block[region] = kspace[region]
        return block

    def undersample(self, kspace: Any, acceleration: int, axis: int) -> Any:
        """Lines 0, R, ... along ``axis``, zero elsewhere."""
        keep = [slice(None)] * kspace.ndim
        keep[axis] = slice(0, None, acceleration)
        out = self.torch.zeros_like(kspace)
        out[tuple(keep)] = kspace[tuple(keep)]
        return out

    def aliased_images(self, kspace: Any, acceleration: tuple[int, int]) -> Any:
        """``sqrt(Rx Ry) ifft2c(K_us)`` cropped to (..., x/Rx, y/Ry, coils)."""
        rx, ry = acceleration
        nx, ny = kspace.shape[-3], kspace.shape[-2]
        images = self.ifft2c(kspace, axes=(-3, -2))
        return images[..., : nx // rx, : ny // ry, :] * math.sqrt(rx * ry)

    def sense_apply(self, aliased: Any, unmixing: Any, acceleration: tuple[int, int]) -> Any:
        """``v = U a`` per aliased pixel, unfolded to (..., x, y)."""
        rx, ry = acceleration
        folded = self.torch.einsum("xyic,...xyc->...xyi", unmixing.to(aliased.dtype), aliased)
        *lead, mx, my, _ = folded.shape
        n = len(lead)
        order = (*range(n), n + 2, n, n + 3, n + 1)
        full = folded.reshape(*lead, mx, my, rx, ry).permute(order)
        return full.reshape(*lead, rx * mx, ry * my)

    def normals(self, size: int, like: Any) -> TorchNormals:
        """A buffer of ``size`` complex standard normal pairs shaped like ``like``."""
        return TorchNormals(self.torch, self.device, size, like)


class TorchNormals:
    """``buffer`` (size, *shape), complex; each real component N(0, 1), drawn per slot."""

    def __init__(self, torch: Any, device: Any, size: int, like: Any) -> None:
        self.torch = torch
        self.buffer = torch.empty((size, *like.shape), dtype=like.dtype, device=device)
        self.generator = torch.Generator(device=device)

    def fill(self, slot: int, stream: np.random.SeedSequence) -> None:
        """Draw slot ``slot`` with the generator seeded from ``stream`` (63 bits)."""
        word = stream.generate_state(1, dtype=np.uint64)[0]
        self.generator.manual_seed(int(word >> np.uint64(1)))
        self.torch.view_as_real(self.buffer[slot]).normal_(0.0, 1.0, generator=self.generator)
