"""A tiny MPI program for tests: each rank says where it runs, then the ranks sum a vector.

Run it as ranks: ``mpiexec -n 2 python -m mpi4py -m tasks.simulation.mpi_hello``. Every rank
prints one JSON line (``HELLO {...}``: rank, size, processor name, the host Hydra gave it and
its network namespace); rank 0 then prints ``RESULT {...}`` with the ``Allreduce`` sum of the
ranks' shares of ``sum_k sin(0.001 * i * k)`` over ``i < --terms``, split across ranks, so
the result does not depend on the rank count beyond summation order.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

# Length of the reduced vector.
COMPONENTS = 8


def partial_sums(rank: int, size: int, terms: int) -> np.ndarray:
    """This rank's share of the sums, shape (COMPONENTS,), float64."""
    start, stop = terms * rank // size, terms * (rank + 1) // size
    i = np.arange(start, stop, dtype=np.float64)[:, None]
    k = np.arange(COMPONENTS, dtype=np.float64)[None, :]
    return np.sin(0.001 * i * k).sum(axis=0)


def expected_sums(terms: int) -> np.ndarray:
    """The sums on one process, shape (COMPONENTS,)."""
    return partial_sums(0, 1, terms)


def _netns() -> int | None:
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    """Report, reduce, print; ``--fail-rank N`` makes rank N raise before the reduction."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--terms", type=int, default=10_000, help="Terms summed (default 10000).")
    parser.add_argument("--fail-rank", type=int, default=None, help="Rank that raises.")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    hello = {
        "rank": comm.rank,
        "size": comm.size,
        "host": MPI.Get_processor_name(),
        "pmi_host": os.environ.get("PMI_HOSTNAME"),
        "netns": _netns(),
        "pid": os.getpid(),
    }
    print("HELLO " + json.dumps(hello), flush=True)
    if comm.rank == args.fail_rank:
        raise RuntimeError(f"rank {comm.rank} fails on purpose (--fail-rank)")
    total = np.zeros(COMPONENTS)
    comm.Allreduce(partial_sums(comm.rank, comm.size, args.terms), total, op=MPI.SUM)
    if comm.rank == 0:
        print("RESULT " + json.dumps({"size": comm.size, "sums": total.tolist()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
