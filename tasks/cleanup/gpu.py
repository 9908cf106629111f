"""GPU car wash: free the caching allocator, zero every free byte of device memory, verify.

For each CUDA device this process sees: empty torch's caching allocator (so the blocks a run
freed go back to the driver), then allocate the device's free memory in chunks of zeros
(halving a chunk that does not fit, down to ``MIN_CHUNK``), read back a random sample of every
chunk, free them all and empty the cache again. A small kernel with a known answer checks the
device still computes. Memory in use (device-wide, every process) is recorded before and after.

What this does not do:
- Reset the device: GPU machines may be shared or lent, and a reset would kill other
  processes' work.
- Reach memory held by other processes, or the last fragments smaller than ``MIN_CHUNK``;
  the record gives the fraction of free memory overwritten, and less than ``MIN_COVERAGE``
  fails the check.
- Wash GPUs on other machines: it runs where cleanup runs (the flow's process). A GPU Dask
  worker on ECS leaves with its task; its instance is the capacity provider's to recycle.

Without a usable CUDA device the check says "no GPU" and is marked ``skipped``: it passes, and
the record shows that nothing was scrubbed rather than a silent pass. The device is reached
through the small ``GpuDevice`` interface, so tests drive every failure path on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tasks.cleanup.audit import Check

GIB = 1024**3
MIB = 1024**2
# Largest zero block asked for at once; halved on out-of-memory down to MIN_CHUNK.
MAX_CHUNK = GIB
# Below this, torch's allocator rounds up to its 2 MiB pages anyway: stop halving.
MIN_CHUNK = 2 * MIB
# The fraction of the free memory (after emptying the cache) that must be overwritten.
MIN_COVERAGE = 0.97
# Bytes read back per chunk, at random offsets (plus its first and last byte).
SAMPLES_PER_CHUNK = 64
# The health kernel: sum of squares 1..n on the device, exact in float32 for this n.
HEALTH_N = 256
NAME = "gpu scrubbed"
# Where the NVIDIA driver lists its GPUs: absent means no GPU, without importing torch.
NVIDIA_GPUS = Path("/proc/driver/nvidia/gpus")


class GpuDevice(Protocol):
    """What the wash needs from one device; ``TorchCuda`` is the real one."""

    name: str

    def memory(self) -> tuple[int, int]:
        """(free, total) bytes on the device, every process counted (``cudaMemGetInfo``)."""
        ...

    def empty_cache(self) -> None:
        """Give this process's cached, unused blocks back to the driver."""
        ...

    def zeros(self, nbytes: int) -> Any:
        """A block of ``nbytes`` zero bytes on the device; ``MemoryError`` if it does not fit."""
        ...

    def sample(self, block: Any, count: int) -> list[int]:
        """Byte values of ``block`` at ``count`` random offsets, its first and last byte."""
        ...

    def release(self, block: Any) -> None:
        """Drop ``block`` (back to the caching allocator)."""
        ...

    def square_sum(self, n: int) -> float:
        """``sum(k**2 for k in 1..n)`` computed on the device."""
        ...


class TorchCuda:
    """A CUDA device through torch."""

    def __init__(self, index: int) -> None:
        import torch

        self._torch = torch
        self._device = torch.device("cuda", index)
        self.name = f"cuda:{index} {torch.cuda.get_device_name(index)}"

    def memory(self) -> tuple[int, int]:
        """(free, total) bytes on the device (``torch.cuda.mem_get_info``)."""
        free, total = self._torch.cuda.mem_get_info(self._device)
        return int(free), int(total)

    def empty_cache(self) -> None:
        """``torch.cuda.empty_cache`` on this device."""
        with self._torch.cuda.device(self._device):
            self._torch.cuda.empty_cache()

    def zeros(self, nbytes: int) -> Any:
        """A zero-filled uint8 tensor of ``nbytes`` (written by a fill kernel)."""
        torch = self._torch
        try:
            block = torch.zeros(nbytes, dtype=torch.uint8, device=self._device)
            torch.cuda.synchronize(self._device)
        except torch.cuda.OutOfMemoryError as exc:
            raise MemoryError(str(exc)) from None
        return block

    def sample(self, block: Any, count: int) -> list[int]:
        """Bytes at random offsets, gathered on the device and copied back."""
        torch = self._torch
        offsets = torch.randint(0, block.numel(), (count,), device=self._device)
        ends = torch.tensor([0, block.numel() - 1], device=self._device)
        return [int(v) for v in block[torch.cat([offsets, ends])].cpu().tolist()]

    def release(self, block: Any) -> None:
        """Nothing to do beyond dropping the reference (the caller's ``del``)."""

    def square_sum(self, n: int) -> float:
        """Sum of squares of 1..n, as a dot product on the device."""
        torch = self._torch
        values = torch.arange(1, n + 1, dtype=torch.float32, device=self._device)
        return float(torch.dot(values, values).cpu())


@dataclass(frozen=True, slots=True)
class Wash:
    """What washing one device found."""

    device: str
    in_use_before: int
    in_use_after: int
    free: int
    scrubbed: int
    chunks: int
    sampled: int
    nonzero: int
    health: float
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """No problem found."""
        return not self.problems

    def describe(self) -> str:
        """One line for the record."""
        coverage = self.scrubbed / self.free if self.free else 1.0
        line = (
            f"{self.device}: zeroed {self.scrubbed / GIB:.2f} of {self.free / GIB:.2f} GiB free "
            f"({coverage:.1%}) in {self.chunks} chunks, {self.sampled} bytes read back, "
            f"{self.nonzero} non-zero; in use before {self.in_use_before / GIB:.2f} GiB, "
            f"after {self.in_use_after / GIB:.2f} GiB"
        )
        return line + ("; " + "; ".join(self.problems) if self.problems else "")


def wash(device: GpuDevice) -> Wash:
    """Empty the cache, zero the free memory in chunks, read samples back, check a kernel."""
    free_before, total = device.memory()
    device.empty_cache()
    free, _ = device.memory()
    blocks: list[Any] = []
    scrubbed = sampled = nonzero = chunks = 0
    chunk = MAX_CHUNK
    try:
        while chunk >= MIN_CHUNK and free - scrubbed >= MIN_CHUNK:
            size = min(chunk, free - scrubbed)
            try:
                blocks.append(device.zeros(size))  # held in the list only, so freeable below
            except MemoryError:
                chunk //= 2
                continue
            chunks += 1
            scrubbed += size
            values = device.sample(blocks[-1], SAMPLES_PER_CHUNK)
            sampled += len(values)
            nonzero += sum(1 for v in values if v != 0)
    finally:
        for block in blocks:
            device.release(block)
        blocks.clear()
        device.empty_cache()
    health = device.square_sum(HEALTH_N)
    free_after, _ = device.memory()
    problems = []
    if nonzero:
        problems.append(f"{nonzero} of {sampled} bytes read back were not zero")
    if free and scrubbed / free < MIN_COVERAGE:
        problems.append(f"overwrote less than {MIN_COVERAGE:.0%} of the free memory")
    expected = HEALTH_N * (HEALTH_N + 1) * (2 * HEALTH_N + 1) / 6
    if health != expected:
        problems.append(f"health kernel gave {health}; expected {expected}")
    return Wash(
        device=device.name,
        in_use_before=total - free_before,
        in_use_after=total - free_after,
        free=free,
        scrubbed=scrubbed,
        chunks=chunks,
        sampled=sampled,
        nonzero=nonzero,
        health=health,
        problems=tuple(problems),
    )


def _wash_or_fail(device: GpuDevice) -> Wash:
    """``wash``, with a device error (CUDA raises RuntimeError) as a failed wash."""
    try:
        return wash(device)
    except (RuntimeError, MemoryError, OSError) as exc:
        return Wash(device.name, 0, 0, 0, 0, 0, 0, 0, 0.0, (f"wash failed: {exc}",))


def cuda_devices() -> tuple[list[GpuDevice], str]:
    """This process's CUDA devices, or none and why.

    Looks for the NVIDIA driver before importing torch, so a machine without a GPU pays
    nothing for the question.
    """
    if not NVIDIA_GPUS.is_dir():
        return [], "no NVIDIA driver on this machine"
    import torch

    if not torch.cuda.is_available():
        return [], f"torch {torch.__version__} cannot use CUDA here"
    return [TorchCuda(i) for i in range(torch.cuda.device_count())], ""


def scrub_gpus(
    dry_run: bool = False,
    find: Callable[[], tuple[Sequence[GpuDevice], str]] = cuda_devices,
) -> Check:
    """Wash every CUDA device this process sees; "no GPU" (skipped) when there is none.

    Args:
        dry_run: Only name the devices that would be washed.
        find: Lists the devices and, when there are none, why (tests pass fakes).
    """
    devices, why = find()
    if not devices:
        return Check(NAME, True, f"no GPU: nothing to scrub ({why})", skipped=True)
    if dry_run:
        names = ", ".join(device.name for device in devices)
        return Check(NAME, True, f"would scrub {names}", skipped=True)
    washes = [_wash_or_fail(device) for device in devices]
    return Check(NAME, all(w.ok for w in washes), "; ".join(w.describe() for w in washes))
