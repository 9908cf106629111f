"""Prefect task overhead: N trivial tasks on Prefect's runners against plain equivalents.

(a) ``add_one.map`` on Prefect's default ``ThreadPoolTaskRunner`` against plain function calls;
(b) the same tasks on ``DaskTaskRunner`` over a 2-worker ``LocalCluster`` (``dask_task_runner``
of the built-in ``local`` unit) against plain ``dask.delayed`` on an equivalent cluster.
Reported per task in ms; the ratio says how many times slower Prefect is (informational).

Run from the repository root so ``pyproject.toml``'s ``[tool.prefect]`` (the embedded, offline
default) applies: ``python -m benchmarks.task_overhead [--quick] [--repeats N]``.
"""

from __future__ import annotations

import itertools
import logging
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmarks._common import Metric, median_of, parse_args, repeats_for, write_results

NAME = "task_overhead"
N_FULL = 200
N_QUICK = 50

# Fresh inputs for every batch: results persist by default, so the default cache policy
# (inputs + task source + flow run id) would turn a repeated batch in one flow run into
# cache hits rather than task runs.
_inputs = itertools.count()


def add_one(x: int) -> int:
    """The trivial unit of work every variant runs."""
    return x + 1


def _fresh(n: int) -> list[int]:
    return [next(_inputs) for _ in range(n)]


def _prefect_variants(n: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per batch of ``n`` tasks on the thread-pool and Dask task runners.

    Each variant is one flow run that times its batches itself: only submit + gather of the
    tasks counts, not the ephemeral API server's start-up (first use), the flow run's own
    bookkeeping or the Dask cluster's start and stop. Timing inside the flow is exact where
    subtracting a 0-task flow's time would add the noise of two cluster start-ups.
    """
    from prefect import flow, task

    from blocks.compute_unit import local_unit
    from tasks.compute.dask import dask_task_runner

    add_task = task(add_one, name="add_one")

    def batch(submit: Any) -> float:
        started = time.perf_counter()
        futures = submit(add_task, _fresh(n))
        results = [f.result() for f in futures]
        elapsed = time.perf_counter() - started
        assert len(results) == n
        return elapsed

    @flow(name="bench-task-overhead-threads")
    def on_threads() -> list[float]:
        return median_of(lambda: batch(lambda t, xs: t.map(xs)), repeats)[1]

    @flow(name="bench-task-overhead-dask")
    def on_dask() -> list[float]:
        # Built inside the flow so the workers get this flow's API URL (PREFECT_API_URL).
        with dask_task_runner(local_unit(), "small", tags={}) as runner:
            return median_of(lambda: batch(lambda t, xs: runner.map(t, {"x": xs})), repeats)[1]

    return {"threads": on_threads(), "dask": on_dask()}


def _dask_delayed(n: int, repeats: int) -> list[float]:
    """Seconds per ``dask.compute`` of ``n`` delayed calls; the cluster starts once, untimed."""
    import dask
    from distributed import Client, LocalCluster

    from blocks.compute_unit import local_unit
    from tasks.compute.dask import cluster_spec

    _, kwargs = cluster_spec(local_unit(), "small", {})
    kwargs.pop("env", None)  # The workers talk to no Prefect API here.
    with LocalCluster(**kwargs) as cluster, Client(cluster):

        def compute() -> float:
            started = time.perf_counter()
            results = dask.compute(*[dask.delayed(add_one)(x) for x in _fresh(n)])
            elapsed = time.perf_counter() - started
            assert len(results) == n
            return elapsed

        return median_of(compute, repeats)[1]


def _plain_calls(n: int, repeats: int) -> list[float]:
    """Seconds per ``n`` plain calls of ``add_one``."""

    def calls() -> float:
        xs = _fresh(n)
        started = time.perf_counter()
        results = [add_one(x) for x in xs]
        elapsed = time.perf_counter() - started
        assert len(results) == n
        return elapsed

    return median_of(calls, repeats)[1]


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # Task runs still log to the API; only the console (200 lines a batch) is quieted.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    args = parse_args(__doc__.splitlines()[0], argv)
    n = N_QUICK if args.quick else N_FULL
    repeats = repeats_for(args, quick_default=3)
    logging.getLogger("distributed").setLevel(logging.WARNING)

    runs = _prefect_variants(n, repeats)
    runs["plain"] = _plain_calls(n, repeats)
    runs["delayed"] = _dask_delayed(n, repeats)

    def per_task_ms(seconds: list[float]) -> float:
        return statistics.median(seconds) * 1000 / n

    metrics = [
        Metric(
            "per_task_threads",
            per_task_ms(runs["threads"]),
            per_task_ms(runs["plain"]),
            "plain function calls",
            "ms",
        ),
        Metric(
            "per_task_dask",
            per_task_ms(runs["dask"]),
            per_task_ms(runs["delayed"]),
            "dask.delayed on LocalCluster",
            "ms",
        ),
    ]
    write_results(NAME, metrics, args, n_tasks=n, repeats=repeats, runs_s=runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
