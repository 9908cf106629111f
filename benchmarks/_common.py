"""Helpers every benchmark shares: argument parsing, timing, machine facts and results.

A benchmark module defines ``main(argv) -> int``, times our code and a named baseline in the
same process, and calls ``write_results`` with one ``Metric`` per measured quantity.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tasks.provenance import package_versions

# Credentials and region for moto's server: never real ones, never another address.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextmanager
def aws_pointed_at(endpoint: str) -> Iterator[None]:
    """This process's AWS variables set to ``FAKE_AWS`` and ``endpoint``; restored after."""
    updates = FAKE_AWS | {"AWS_ENDPOINT_URL": endpoint}
    saved = {key: os.environ.get(key) for key in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REPEATS = 5
VERSIONED = ("prefect", "dask", "distributed", "numpy", "torch", "sciflow")


@dataclass(frozen=True)
class Metric:
    """One measured quantity: ours against a baseline.

    Attributes:
        name: Metric name, unique within the benchmark.
        ours: Our value (median of the repeats).
        baseline: The baseline's value, measured in the same run.
        baseline_name: What the baseline is, in a few words.
        unit: Unit of ``ours`` and ``baseline`` (e.g. ``"ms"``).
        goal: A human-readable goal on ``ratio`` such as ``"<= 50x"``, or None.
        goal_met: Whether the goal is met, or None without a goal.
    """

    name: str
    ours: float
    baseline: float
    baseline_name: str
    unit: str
    goal: str | None = None
    goal_met: bool | None = None

    @property
    def ratio(self) -> float | None:
        """``ours / baseline``; None when the baseline is zero."""
        return self.ours / self.baseline if self.baseline else None

    def as_json(self) -> dict[str, Any]:
        """The metric as written to the results file (with ``ratio``, without ``name``)."""
        row = asdict(self)
        del row["name"]
        row["ratio"] = self.ratio
        return row


def parse_args(description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the options every benchmark takes: ``--quick`` and ``--repeats N``.

    Args:
        description: What the benchmark measures, for ``--help``.
        argv: Arguments without the program name; ``sys.argv[1:]`` if None.

    Returns:
        Namespace with ``quick`` (bool) and ``repeats`` (int, at least 1).
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="run a smaller case, well under a minute"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed repeats; the median is reported (default {DEFAULT_REPEATS})",
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    return args


def repeats_for(args: argparse.Namespace, quick_default: int = 3) -> int:
    """Repeats to run: ``--repeats`` if given, else ``quick_default`` or ``DEFAULT_REPEATS``."""
    if args.repeats is not None:
        return int(args.repeats)
    return quick_default if args.quick else DEFAULT_REPEATS


def median_of(fn: Callable[[], float], repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """Median of what ``fn`` reports, for a function that times itself.

    Args:
        fn: Runs one case and returns the seconds it measured.
        repeats: Runs that count.
        warmup: Runs first, not counted (imports, caches, server start-up).

    Returns:
        Median seconds and the seconds of every counted run.
    """
    for _ in range(warmup):
        fn()
    runs = [float(fn()) for _ in range(repeats)]
    return statistics.median(runs), runs


def time_median(
    fn: Callable[[], object], repeats: int, warmup: int = 1
) -> tuple[float, list[float]]:
    """Median wall time of ``fn()`` with ``time.perf_counter``.

    Args:
        fn: The case to time; its return value is ignored.
        repeats: Runs that count.
        warmup: Runs first, not counted.

    Returns:
        Median seconds and the seconds of every counted run.
    """

    def timed() -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    return median_of(timed, repeats, warmup)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _total_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gpu_name() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return str(torch.cuda.get_device_name(0))


def machine_info() -> dict[str, Any]:
    """CPU model, logical cores, total memory in bytes and GPU name (None without CUDA)."""
    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "memory_bytes": _total_memory_bytes(),
        "gpu": _gpu_name(),
        "platform": platform.platform(),
    }


def versions() -> dict[str, str | None]:
    """Versions of Python and the packages benchmarks touch (None when not installed)."""
    return package_versions(VERSIONED)


def write_results(
    name: str, metrics: Sequence[Metric], args: argparse.Namespace, **extra: Any
) -> Path:
    """Write ``benchmarks/results/<name>.json`` atomically and print a table of ``metrics``.

    Args:
        name: Benchmark name, the module's name.
        metrics: What was measured.
        args: The parsed options, recorded beside the raw ``argv``.
        **extra: More JSON-able facts to record (problem sizes, raw repeat times).

    Returns:
        Path of the results file.
    """
    document = {
        "benchmark": name,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "args": vars(args),
        "machine": machine_info(),
        "versions": versions(),
        "metrics": {m.name: m.as_json() for m in metrics},
        **extra,
    }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    target = RESULTS_DIR / f"{name}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".json.tmp", dir=RESULTS_DIR)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    print(f"\n{name}")
    print(format_table(metric_rows(name, document["metrics"]), with_benchmark=False))
    print(f"results: {target}")
    return target


def fmt_number(value: float | None) -> str:
    """A number in 4 significant digits (``-`` for None)."""
    if value is None:
        return "-"
    return f"{value:.4g}"


def metric_rows(benchmark: str, metrics: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Table rows for the ``metrics`` mapping of a results file."""
    rows = []
    for metric, m in metrics.items():
        met = m.get("goal_met")
        rows.append(
            [
                benchmark,
                metric,
                fmt_number(m.get("ours")),
                f"{fmt_number(m.get('baseline'))} ({m.get('baseline_name')})",
                str(m.get("unit", "")),
                "-" if m.get("ratio") is None else f"{m['ratio']:.3g}x",
                m.get("goal") or "-",
                "-" if met is None else ("yes" if met else "NO"),
            ]
        )
    return rows


HEADER = ["benchmark", "metric", "ours", "baseline", "unit", "ratio", "goal", "met"]


def format_table(rows: Sequence[Sequence[str]], with_benchmark: bool = True) -> str:
    """Rows as a plain-text table with the standard header."""
    header = HEADER if with_benchmark else HEADER[1:]
    body = [list(r) if with_benchmark else list(r[1:]) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
        for row in [header, ["-" * w for w in widths], *body]
    ]
    return "\n".join(line.rstrip() for line in lines)
