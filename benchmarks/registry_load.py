"""Registry load timing for the upload benchmark: a first (verified) load against a cached one.

``measure_load`` is called by ``benchmarks/upload.py`` on a version it published; the
issue's target is a cached load under 1% of the download.
"""

from __future__ import annotations

import shutil
import statistics
import time

from tasks.storage.registry import Registry


def measure_load(
    registry: Registry, model: str, version: str, repeats: int = 5
) -> tuple[float, float]:
    """Seconds of a load from an empty cache, and the median of ``repeats`` cached loads."""
    path = registry.load(model, version)
    shutil.rmtree(path)  # start cold: the first load downloads and verifies every byte
    start = time.perf_counter()
    registry.load(model, version)
    first = time.perf_counter() - start
    cached = []
    for _ in range(repeats):
        start = time.perf_counter()
        registry.load(model, version)
        cached.append(time.perf_counter() - start)
    return first, statistics.median(cached)
