"""The GPU wash: every failure path on a fake device; the real one where CUDA is present."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from tasks.cleanup import gpu
from tasks.cleanup.gpu import GIB, MIB, TorchCuda, cuda_devices, scrub_gpus, wash

EXPECTED_HEALTH = 256 * 257 * 513 / 6


@pytest.fixture(scope="session", autouse=True)
def prefect_api() -> None:
    """Overrides the suite's Prefect harness: nothing here calls Prefect."""


@dataclass
class FakeDevice:
    """A device's memory as counters: other processes' use, our cache, our live blocks."""

    name: str = "fake:0"
    total: int = 8 * GIB
    others: int = GIB  # held by other processes: never ours to free
    cached: int = 512 * MIB  # freed by the run, still held by its caching allocator
    largest: int | None = None  # the largest block that fits (fragmentation), if limited
    dirty: bool = False
    health: float = EXPECTED_HEALTH
    fault: Exception | None = None
    live: int = 0
    calls: list[str] = field(default_factory=list)

    def memory(self) -> tuple[int, int]:
        return self.total - self.others - self.cached - self.live, self.total

    def empty_cache(self) -> None:
        self.calls.append("empty_cache")
        self.cached = 0

    def zeros(self, nbytes: int) -> int:
        if self.fault is not None:
            raise self.fault
        free, _ = self.memory()
        if nbytes > free or (self.largest is not None and nbytes > self.largest):
            raise MemoryError(f"cannot allocate {nbytes}")
        self.live += nbytes
        return nbytes

    def sample(self, block: int, count: int) -> list[int]:
        return [7 if self.dirty else 0] * (count + 2)

    def release(self, block: int) -> None:
        self.live -= block

    def square_sum(self, n: int) -> float:
        return self.health


def _only(device: FakeDevice):
    return lambda: ([device], "")


def test_a_clean_device_is_zeroed_sampled_and_left_with_its_cache_empty():
    device = FakeDevice()
    free_after_cache = device.total - device.others
    check = scrub_gpus(find=_only(device))
    assert check.ok, check.detail
    assert not check.skipped
    assert device.live == 0  # every block given back
    assert device.calls[-1] == "empty_cache"
    assert "zeroed 7.00 of 7.00 GiB free (100.0%) in 7 chunks" in check.detail
    # In use before: other processes and our cache; after: other processes only.
    assert "in use before 1.50 GiB, after 1.00 GiB" in check.detail
    result = wash(FakeDevice())
    assert result.scrubbed == free_after_cache
    assert result.sampled == 7 * (gpu.SAMPLES_PER_CHUNK + 2)


def test_a_block_that_does_not_fit_is_halved_until_the_memory_is_covered():
    device = FakeDevice(largest=300 * MIB)
    result = wash(device)
    assert result.ok, result.describe()
    assert result.scrubbed == 7 * GIB
    assert result.chunks > 7


def test_a_non_zero_byte_read_back_fails_the_check():
    check = scrub_gpus(find=_only(FakeDevice(dirty=True)))
    assert not check.ok
    assert "bytes read back were not zero" in check.detail


def test_a_wrong_kernel_answer_fails_the_check():
    check = scrub_gpus(find=_only(FakeDevice(health=EXPECTED_HEALTH + 1)))
    assert not check.ok
    assert f"health kernel gave {EXPECTED_HEALTH + 1}" in check.detail


def test_free_memory_left_unwritten_fails_the_check():
    device = FakeDevice(largest=MIB)  # below the smallest chunk: nothing can be written
    check = scrub_gpus(find=_only(device))
    assert not check.ok
    assert "overwrote less than 97% of the free memory" in check.detail


def test_a_device_error_fails_the_check_and_other_devices_are_still_washed():
    broken = FakeDevice(name="fake:0", fault=RuntimeError("CUDA error: an illegal memory access"))
    fine = FakeDevice(name="fake:1")
    check = scrub_gpus(find=lambda: ([broken, fine], ""))
    assert not check.ok
    assert "fake:0: " in check.detail
    assert "wash failed: CUDA error" in check.detail
    assert "fake:1: zeroed 7.00" in check.detail
    assert fine.live == 0


def test_a_dry_run_names_the_devices_and_touches_none():
    device = FakeDevice()
    check = scrub_gpus(dry_run=True, find=_only(device))
    assert check.ok
    assert check.skipped
    assert check.detail == "would scrub fake:0"
    assert device.calls == []


def test_without_a_driver_the_record_says_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu, "NVIDIA_GPUS", tmp_path / "absent")
    check = scrub_gpus()
    assert check.ok
    assert check.skipped
    assert check.detail == "no GPU: nothing to scrub (no NVIDIA driver on this machine)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine's torch can use CUDA")
def test_a_driver_without_cuda_torch_says_no_gpu(monkeypatch, tmp_path):
    monkeypatch.setattr(gpu, "NVIDIA_GPUS", tmp_path)  # a driver listing, as on a GPU host
    devices, why = cuda_devices()
    assert devices == []
    assert why == f"torch {torch.__version__} cannot use CUDA here"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (a lent GPU machine)")
def test_a_real_cuda_device_is_washed():
    device = TorchCuda(0)
    held = torch.ones(64 * MIB, dtype=torch.uint8, device="cuda")
    del held  # freed into the caching allocator: the wash must give it back and zero it
    result = wash(device)
    assert result.ok, result.describe()
    assert result.nonzero == 0
    assert result.scrubbed >= gpu.MIN_COVERAGE * result.free
    assert torch.cuda.memory_reserved(0) == 0
