"""Adapters that run the external Bloch simulators on our phantom and ``.seq`` file.

The baselines of ``benchmarks.simulation``, each optional (``pip install blochsimulator
mrzerocore``; see the benchmark's docstring):

- ``blochsimulator`` (C/OpenMP): ``load_pulseq`` of the file, our Shepp-Logan maps as its
  2D ``Phantom``, ``BlochSimulator(num_threads=n).simulate_sequence`` with
  ``spoiler_mode="gradient"`` (spoiling from the gradients, as ours) and ``SpinSampling`` of
  ``s x s`` stratified spins per voxel (``spins_per_voxel`` must be a square).
- MRzero (``MRzeroCore``): ``Sequence.import_file`` of the file, our maps as a
  ``VoxelGridPhantom`` (box voxels, no T2', no diffusion), then ``isochromat_sim`` with
  ``spins_per_voxel`` random spins per voxel, or the phase-distribution graph
  (``compute_graph`` + ``execute_graph``) as the whole-image reference.
- ``*_at_positions``: the same simulators on the isochromats of a ``SpinSet`` (positions,
  PD, T1, T2, off-resonance), one spin each, so their signals can be compared with ours spin
  for spin. MRzero's ``isochromat_sim`` takes one spin per "voxel" at ``voxel_pos``; a Nyquist
  frequency of 1e12 /m makes its random intra-voxel offset 1e-12 m.

Phase conventions (``tasks.simulation.bloch``'s docstring has the comparison): blochsimulator
negates the RF and ADC phases of a ``.seq`` file against Pulseq, KomaMRI, MRzero and us, so
its adapters are given ``negated_phases(file)`` when the same experiment is wanted.

Each returns the signal as complex128 of shape (Nadc,) and the wall seconds of the simulation
alone (file import and phantom set-up are outside the timing).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from tasks.simulation.bloch import SpinSet
from tasks.simulation.phantoms import Phantom
from tasks.simulation.pulseq import read_seq, write_seq


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null (MRzero's Rust pre-pass prints its timings there)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _masked(phantom: Phantom, name: str) -> np.ndarray:
    """A 2D map with 1 s outside the tissue, where T1/T2 of 0 would be rejected."""
    values = getattr(phantom, name)[..., 0]
    return np.where(phantom.pd[..., 0] > 0, values, 1.0) if name in ("t1", "t2") else values


def negated_phases(seq_path: Path, out: Path) -> Path:
    """``seq_path`` with every RF and ADC phase offset negated, written to ``out``.

    blochsimulator plays an RF phase ``p`` about the axis at ``-p`` and demodulates with
    ``exp(+i phase)`` (its compiler's comment says so); given this file it simulates the
    experiment the original file describes to Pulseq, KomaMRI, MRzero and us.
    """
    sequence = read_seq(seq_path)
    blocks = [
        dataclasses.replace(
            block,
            rf=None if block.rf is None else dataclasses.replace(block.rf, phase=-block.rf.phase),
            adc=None
            if block.adc is None
            else dataclasses.replace(block.adc, phase=-block.adc.phase),
        )
        for block in sequence.blocks
    ]
    return write_seq(dataclasses.replace(sequence, blocks=blocks), out)


def blochsimulator_signal(
    seq_path: Path, phantom: Phantom, spins_per_voxel: int, threads: int
) -> tuple[np.ndarray, float]:
    """Signal and seconds of blochsimulator on ``threads`` OpenMP threads."""
    import blochsimulator as bs
    from blochsimulator.phantom import Phantom as BsPhantom

    side = math.isqrt(spins_per_voxel)
    if side * side != spins_per_voxel:
        raise ValueError(f"spins_per_voxel={spins_per_voxel}; blochsimulator needs a square")
    program = bs.load_pulseq(seq_path)
    nx, ny, _ = phantom.shape
    target = BsPhantom(
        shape=(nx, ny),
        fov=(phantom.fov[0], phantom.fov[1]),
        t1_map=_masked(phantom, "t1"),
        t2_map=_masked(phantom, "t2"),
        pd_map=phantom.pd[..., 0],
        df_map=phantom.df[..., 0],
        mask=phantom.pd[..., 0] > 0,
    )
    simulator = bs.BlochSimulator(use_parallel=threads > 1, num_threads=threads)
    sampling = bs.SpinSampling(counts_xyz=(side, side, 1), method="stratified")
    started = time.perf_counter()
    result = simulator.simulate_sequence(
        program, target, spoiler_mode="gradient", spin_sampling=sampling
    )
    elapsed = time.perf_counter() - started
    return np.asarray(result.signal, dtype=np.complex128).ravel(), elapsed


def _mrzero_inputs(seq_path: Path, phantom: Phantom) -> tuple[object, object]:
    import MRzeroCore as mr0
    import torch

    shape = phantom.shape
    affine = torch.eye(4)
    for axis in range(3):  # mm per voxel, grid centred as ours (index n // 2 at 0)
        size = phantom.fov[axis] / shape[axis] * 1000
        affine[axis, axis] = size
        affine[axis, 3] = -(shape[axis] // 2) * size
    grid = mr0.VoxelGridPhantom(
        PD=torch.tensor(phantom.pd),
        T1=torch.tensor(_masked(phantom, "t1")[..., None]),
        T2=torch.tensor(_masked(phantom, "t2")[..., None]),
        T2dash=torch.full(shape, 1e9),
        D=torch.zeros(shape),
        B0=torch.tensor(phantom.df),
        B1=torch.ones((1, *shape)),
        coil_sens=torch.ones((1, *shape)),
        affine=affine,
    )
    data = grid.build(voxel_shape="box")
    sequence = mr0.Sequence.import_file(str(seq_path), print_stats=False)
    return sequence, data


def mrzero_isochromat_signal(
    seq_path: Path, phantom: Phantom, spins_per_voxel: int, threads: int = 1
) -> tuple[np.ndarray, float]:
    """MRzero's isochromat simulator: signal and seconds on ``threads`` torch threads."""
    import MRzeroCore as mr0
    import torch

    with _quiet_stdout():
        sequence, data = _mrzero_inputs(seq_path, phantom)
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch casts inside isochromat_sim
        started = time.perf_counter()
        signal = mr0.isochromat_sim(sequence, data, spins_per_voxel, print_progress=False)
        elapsed = time.perf_counter() - started
    return signal.detach().numpy().astype(np.complex128).ravel(), elapsed


def mrzero_pdg_signal(
    seq_path: Path, phantom: Phantom, threads: int = 2
) -> tuple[np.ndarray, float]:
    """MRzero's phase-distribution graph (pre-pass + main pass): signal and seconds."""
    import MRzeroCore as mr0
    import torch

    with _quiet_stdout():
        sequence, data = _mrzero_inputs(seq_path, phantom)
    torch.set_num_threads(threads)
    with _quiet_stdout():
        started = time.perf_counter()
        graph = mr0.compute_graph(sequence, data, 200, 1e-4)
        signal = mr0.execute_graph(graph, sequence, data, print_progress=False)
        elapsed = time.perf_counter() - started
    return signal.detach().numpy().astype(np.complex128).ravel(), elapsed


def _single(spin_set: SpinSet) -> None:
    if spin_set.replicas is not None:
        raise ValueError("these spins stand for replicas, which the baselines cannot take")


def blochsimulator_at_positions(
    seq_path: Path, spin_set: SpinSet, threads: int = 1
) -> tuple[np.ndarray, float]:
    """The isochromats of ``spin_set`` (no replicas) in blochsimulator: signal and seconds."""
    _single(spin_set)
    import blochsimulator as bs
    from blochsimulator.phantom import Phantom as BsPhantom

    n = len(spin_set)
    target = BsPhantom(
        shape=(n,),
        fov=(1.0,),
        t1_map=spin_set.t1,
        t2_map=spin_set.t2,
        pd_map=spin_set.m0,
        df_map=spin_set.dw / (2 * np.pi),
        mask=np.ones(n, dtype=bool),
    )
    # Positions off any grid, as its simulate_sequence_probes sets them.
    target.positions = spin_set.positions.copy()
    target.x, target.y, target.z = (spin_set.positions[:, a].copy() for a in range(3))
    simulator = bs.BlochSimulator(use_parallel=threads > 1, num_threads=threads)
    program = bs.load_pulseq(seq_path)
    started = time.perf_counter()
    result = simulator.simulate_sequence(program, target, spoiler_mode="gradient")
    elapsed = time.perf_counter() - started
    return np.asarray(result.signal, dtype=np.complex128).ravel(), elapsed


def mrzero_isochromat_at_positions(
    seq_path: Path, spin_set: SpinSet, threads: int = 1
) -> tuple[np.ndarray, float]:
    """MRzero's ``isochromat_sim`` on exactly the isochromats of ``spin_set`` (no replicas)."""
    _single(spin_set)
    import MRzeroCore as mr0
    import torch
    from MRzeroCore.phantom.sim_data import SimData

    n = len(spin_set)

    def column(values: np.ndarray) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32)

    data = SimData(
        PD=column(spin_set.m0),
        T1=column(np.minimum(spin_set.t1, 1e9)),
        T2=column(np.minimum(spin_set.t2, 1e9)),
        T2dash=torch.full((n,), math.inf),
        D=torch.zeros(n),
        B0=column(spin_set.dw / (2 * np.pi)),
        B1=torch.ones((1, n)),
        coil_sens=torch.ones((1, n)),
        size=torch.ones(3),
        affine=torch.eye(4),
        voxel_pos=column(spin_set.positions),
        nyquist=torch.full((3,), 1e12),  # intra-voxel offsets of 1e-12 m: the spin itself
        dephasing_func=lambda k, _nyquist: torch.ones(k.shape[0]),
    )
    with _quiet_stdout():
        sequence = mr0.Sequence.import_file(str(seq_path), print_stats=False)
    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        started = time.perf_counter()
        signal = mr0.isochromat_sim(sequence, data, 1, print_progress=False)
        elapsed = time.perf_counter() - started
    return signal.detach().numpy().astype(np.complex128).ravel(), elapsed
