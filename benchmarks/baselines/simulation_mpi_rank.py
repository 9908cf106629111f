"""MPI ranks for ``benchmarks.simulation``: each rank simulates its share of a phantom's spins.

Run as ranks (``run_mpi(mpi4py_argv("benchmarks.baselines.simulation_mpi_rank", ...), n)``).
Every rank reads the same ``.seq`` file and builds its spins ``spin_range(total, rank, size)``
of a Shepp-Logan phantom (untimed); then, per timed run, the ranks meet at a barrier, simulate
and ``Reduce`` the signal to rank 0, which reads ``MPI.Wtime`` after the reduction. Rank 0
prints one ``RESULT {json}`` line per case: ``spins``, ``samples`` and the seconds of each
counted run; ``--save DIR`` also writes the reduced signal of the last run as
``DIR/signal_<spv>.npy``. Start-up (interpreter, imports, phantom) is outside the timings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seq", type=Path, help="Pulseq file to simulate")
    parser.add_argument("--spv", type=int, nargs="+", required=True, help="spins per voxel")
    parser.add_argument("--repeats", type=int, default=3, help="counted runs per case")
    parser.add_argument("--warmup", type=int, default=1, help="uncounted runs first")
    parser.add_argument("--chunk", type=int, default=65536, help="spins per chunk")
    parser.add_argument("--save", type=Path, default=None, help="folder for rank 0's signals")
    args = parser.parse_args(argv)

    from mpi4py import MPI

    from tasks.simulation.bloch import simulate
    from tasks.simulation.phantoms import shepp_logan, spin_range, spins
    from tasks.simulation.pulseq import read_seq

    comm = MPI.COMM_WORLD
    sequence = read_seq(args.seq)
    for spv in args.spv:
        phantom = shepp_logan(spins_per_voxel=spv)
        start, stop = spin_range(phantom.n_spins, comm.rank, comm.size)
        mine = spins(phantom, start, stop, sequence)
        total = np.zeros((1, sequence.adc_samples), dtype=np.complex128)
        seconds = []
        for run in range(args.warmup + args.repeats):
            comm.Barrier()
            started = MPI.Wtime()
            part = np.ascontiguousarray(simulate(mine, sequence, chunk=args.chunk))
            comm.Reduce(part, total, op=MPI.SUM, root=0)
            elapsed = MPI.Wtime() - started
            if run >= args.warmup:
                seconds.append(elapsed)
        if comm.rank == 0:
            if args.save is not None:
                np.save(args.save / f"signal_{spv}.npy", total)
            result = {
                "ranks": comm.size,
                "spv": spv,
                "spins": phantom.n_spins,
                "samples": sequence.adc_samples,
                "seconds": seconds,
            }
            print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
