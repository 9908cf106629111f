"""Memory and time of an SNR job from the raw data's header shape alone, and its size class.

A planning model, not a benchmark: it counts the arrays a run holds at its peak and the
floating-point work it does, then divides by a conservative throughput. It errs high, so a
job it calls "small" fits the small worker.

Memory at the peak (bytes, ``b`` = bytes per complex sample):

- input k-space ``x*y*c*s*r*b`` (the reader loads the whole file);
- per slice (slices run one at a time): signal, prewhitened k-space and coil images
  ``3*x*y*c*b``; a batch of ``min(batch, replicas)`` noisy replicas with their coil images
  ``2*batch*x*y*c*b`` (pseudo replicas are streamed with running moments, so memory does not
  grow with NR); coil maps ``x*y*c*b`` (b1, sense); SENSE unfolding ``x*y*c*b``; GRAPPA
  calibration ``x*acl*c*kx*ky*b`` and g-factor image weights ``x*y*c^2*b``; ESPIRiT per-pixel
  ``c x c`` matrices ``x*y*c^2*b``;
- outputs, float32 ``x*y*s*4`` per map (complex64 coil maps ``x*y*s*c*8``);
- ``BASE_BYTES`` for the interpreter and libraries.

Time (flop, real operations): a centred 2D FFT of N = x*y points costs ``5 N log2 N`` per
coil image; each reconstruction transforms ``c`` coil images and combines per pixel (RSS,
B1 ``8c``; SENSE ``50 c R^2`` per aliased pixel for ``E^H E``, its pseudo-inverse and the
unfold; GRAPPA ``8 c^2 kx ky`` per missing sample). Pseudo replicas also colour their noise,
``8 c^2`` per sample. Reconstructions per slice: AC 1, MR the data's repetitions, PMR and CR
NR + 1 (twice with a PMR g-factor: full and accelerated). One-off costs per slice: the
sensitivity reference, GRAPPA calibration (a least-squares fit per missing offset), ESPIRiT
(per-pixel eigen-decomposition) and the CR box filter. Seconds = flop / (``flops_per_core``
x ``cores``) + reading the input at ``READ_BYTES_PER_S``.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from tasks.errors import InputError

if TYPE_CHECKING:
    from tasks.mr.options import MrOptions

GIB = 1024**3
# The small class: 3 GiB leaves headroom under the 4 GiB small worker (blocks/compute_unit.py)
# and MR Optimum's 4096 MB Lambda; 900 s is Lambda's 15-minute limit, which MR Optimum's
# Lambda path also runs under (mroptimum-app calculation/template.yaml: Timeout 900).
SMALL_MEMORY_BYTES = 3 * GIB
SMALL_SECONDS = 900.0
# Sustained throughput of NumPy/SciPy array code per core: FFTs reach several Gflop/s, but
# elementwise complex arithmetic is memory-bound, so 1 Gflop/s is a deliberately low figure.
FLOPS_PER_CORE = 1e9
READ_BYTES_PER_S = 200e6  # reading raw data from local disk or S3
BASE_BYTES = 512 * 1024**2  # Python, NumPy, SciPy, nibabel and matplotlib loaded
REPLICA_BATCH = 16  # SnrSpec.batch default: pseudo replicas reconstructed at once
DEFAULT_ACL = 24  # calibration lines assumed when the header does not say


@dataclass(frozen=True)
class JobEstimate:
    """What a job will need, and where it should run.

    Attributes:
        memory_bytes: Peak resident memory.
        seconds: Wall time on the assumed cores.
        size_class: ``small`` if both fit the small limits, else ``large``.
        reasons: Sentences explaining the class, biggest contributions first.
        memory_parts: Peak memory by part, bytes.
        flops: Floating-point operations in total.
        shape: The header's shape, (x, y, coils, slices, replicas).
    """

    memory_bytes: int
    seconds: float
    size_class: Literal["small", "large"]
    reasons: list[str]
    memory_parts: dict[str, int] = field(default_factory=dict)
    flops: float = 0.0
    shape: tuple[int, ...] = ()

    def describe(self) -> str:
        """The shape and the three largest memory parts, for a one-line message."""
        biggest = sorted(self.memory_parts.items(), key=lambda kv: kv[1], reverse=True)[:3]
        parts = ", ".join(f"{name} {_gib(size)}" for name, size in biggest)
        return f"of shape (x, y, coils, slices, replicas)={self.shape} ({parts})"


def estimate_job(
    shape: tuple[int, ...],
    options: MrOptions,
    *,
    bytes_per_sample: int = 16,
    cores: int = 1,
    flops_per_core: float = FLOPS_PER_CORE,
    small_memory_bytes: int = SMALL_MEMORY_BYTES,
    small_seconds: float = SMALL_SECONDS,
) -> JobEstimate:
    """Estimate peak memory and time of an SNR job, and pick its size class.

    Args:
        shape: k-space shape from the header, (x, y, coils[, slices[, replicas]]); missing
            trailing axes count as 1. For 3D data, partitions count as slices.
        options: The analysis options (method, recon, replicas, acceleration, ...); an
            empty ``acceleration`` (from the header) counts as R = 1.
        bytes_per_sample: Bytes per complex sample: 16 (complex128) or 8 (complex64).
        cores: Cores the job may use.
        flops_per_core: Sustained floating-point operations per second per core.
        small_memory_bytes: Memory limit of the small class (default 3 GiB).
        small_seconds: Time limit of the small class (default 900 s).

    Returns:
        The estimate; ``reasons`` says which limit decided.

    Raises:
        InputError: A bad shape, a non-positive parameter, or a slice index beyond the data.
    """
    x, y, coils, n_slices, n_replicas = _shape(shape)
    if bytes_per_sample < 1 or cores < 1 or flops_per_core <= 0:
        raise InputError(
            f"bytes_per_sample={bytes_per_sample}, cores={cores}, flops_per_core="
            f"{flops_per_core}; expected positive values"
        )
    if options.slices is not None and max(options.slices) >= n_slices:
        raise InputError(
            f"options.slices={options.slices} names slice {max(options.slices)}, but the data "
            f"have {n_slices} slices (0..{n_slices - 1})"
        )
    computed_slices = len(options.slices) if options.slices is not None else n_slices
    memory_parts = _memory(
        (x, y, coils, n_slices, n_replicas), computed_slices, options, bytes_per_sample
    )
    memory = sum(memory_parts.values())
    flops = computed_slices * _flops_per_slice(x, y, coils, n_replicas, options)
    read_seconds = memory_parts["input k-space"] / READ_BYTES_PER_S
    seconds = flops / (flops_per_core * cores) + read_seconds

    reasons = []
    biggest = sorted(memory_parts.items(), key=lambda kv: kv[1], reverse=True)[:3]
    parts = ", ".join(f"{name} {_gib(size)}" for name, size in biggest)
    verdict = "exceeds" if memory > small_memory_bytes else "is within"
    reasons.append(
        f"peak memory {_gib(memory)} {verdict} the small limit {_gib(small_memory_bytes)} ({parts})"
    )
    verdict = "exceeds" if seconds > small_seconds else "is within"
    reasons.append(
        f"estimated time {seconds:.0f} s {verdict} the small limit {small_seconds:.0f} s "
        f"({flops:.3g} flop for {computed_slices} slice(s) at {flops_per_core * cores:.3g} "
        f"flop/s, plus {read_seconds:.0f} s reading)"
    )
    large = memory > small_memory_bytes or seconds > small_seconds
    if large:
        reasons = [r for r in reasons if " exceeds " in r] + [
            r for r in reasons if " exceeds " not in r
        ]
    return JobEstimate(
        memory_bytes=int(memory),
        seconds=float(seconds),
        size_class="large" if large else "small",
        reasons=reasons,
        memory_parts=memory_parts,
        flops=float(flops),
        shape=(x, y, coils, n_slices, n_replicas),
    )


def _shape(shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError:
        dims = ()
    if not 3 <= len(dims) <= 5 or min(dims) < 1:
        raise InputError(
            f"shape={tuple(shape)}; expected 3 to 5 positive ints "
            "(x, y, coils[, slices[, replicas]])"
        )
    x, y, coils, n_slices, n_replicas = (*dims, 1, 1)[:5]
    return x, y, coils, n_slices, n_replicas


def _acceleration(options: MrOptions) -> int:
    factors = options.acceleration or (1, 1)
    return factors[0] * factors[1]


def _acl_lines(options: MrOptions, y: int) -> int:
    lines = options.acl[1] if options.acl is not None else DEFAULT_ACL
    return min(y, lines or y)


def _memory(
    dims: tuple[int, int, int, int, int], computed_slices: int, o: MrOptions, b: int
) -> dict[str, int]:
    x, y, c, n_slices, n_replicas = dims
    image = x * y * c * b  # one multi-coil slice
    replicas = {"pmr": o.replicas, "cr": o.replicas, "mr": n_replicas}.get(o.method, 0)
    batch = min(REPLICA_BATCH, replicas)
    parts = {
        "input k-space": x * y * c * n_slices * n_replicas * b,
        "slice working set": 3 * image,
        "replica batch": 2 * batch * image,
    }
    if o.recon in ("b1", "sense"):
        parts["coil maps"] = image
    if o.recon == "sense":
        parts["SENSE unfolding"] = image
    if o.recon == "grappa":
        kx, ky = o.grappa_kernel
        parts["GRAPPA calibration"] = x * _acl_lines(o, y) * c * kx * ky * b
        if o.gfactor:
            parts["GRAPPA g-factor weights"] = x * y * c * c * b
    if "espirit" in (o.sensitivity, o.mask) and o.recon in ("b1", "sense"):
        parts["ESPIRiT"] = x * y * c * c * b
    maps = 1 + (2 if o.gfactor else 0) + (1 if o.coil_sensitivity_output else 0)
    parts["outputs"] = x * y * computed_slices * 4 * maps
    if o.coil_sensitivity_output:
        parts["outputs"] += x * y * computed_slices * c * 8
    parts["interpreter and libraries"] = BASE_BYTES
    return {name: int(size) for name, size in parts.items()}


def _flops_per_slice(x: int, y: int, c: int, n_replicas: int, o: MrOptions) -> float:
    pixels = x * y
    fft = 5 * pixels * math.log2(max(pixels, 2)) * c  # one multi-coil transform
    r = _acceleration(o)
    combine = {
        "rss": 8 * c * pixels,
        "b1": 8 * c * pixels,
        "sense": 50 * c * r * r * (pixels / r),
        "grappa": 8 * c * c * o.grappa_kernel[0] * o.grappa_kernel[1] * pixels * (r - 1) / r
        + 8 * c * pixels,
    }[o.recon]
    recon = fft + combine
    if o.method == "ac":
        count, noise = 1, 0.0
    elif o.method == "mr":
        count, noise = n_replicas, 0.0
    else:
        count, noise = o.replicas + 1, 8 * c * c * pixels
        if o.gfactor:
            count *= 2  # Robson g: the same replicas, fully sampled and accelerated
    total = count * (recon + noise)
    if o.recon in ("b1", "sense"):
        total += fft  # the sensitivity reference
    if o.recon == "grappa":
        n = c * o.grappa_kernel[0] * o.grappa_kernel[1]
        placements = x * _acl_lines(o, y)
        total += max(r - 1, 1) * 8 * placements * n * n  # least-squares fit per offset
        if o.gfactor:
            total += c * fft + 8 * c * c * pixels
    if "espirit" in (o.sensitivity, o.mask) and o.recon in ("b1", "sense"):
        total += c * fft + 80 * c**3 * pixels
    if o.method == "cr":
        total += 3 * (2 * o.box_size + 1) ** 2 * pixels
    return float(total)


def _gib(size: float) -> str:
    return f"{size / GIB:.2f} GiB"
