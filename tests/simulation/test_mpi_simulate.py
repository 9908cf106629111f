"""The per-rank simulation program under mpiexec for real: rank count changes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tasks.errors import InputError
from tasks.mr.io import read_raw
from tasks.simulation.mpi import MpiError, mpi4py_argv, run_mpi
from tasks.simulation.mpi_simulate import (
    PhantomSpec,
    SequenceSpec,
    SimulationSpec,
    check_ranks,
    parse_progress,
    parse_result,
    plan,
    progress_line,
)

MODULE = "tasks.simulation.mpi_simulate"
# Bound for every job here: a hang fails the test instead of the CI run.
JOB_TIMEOUT_S = 60.0
SMALL = SimulationSpec(
    phantom=PhantomSpec(matrix=(24, 24), spins_per_voxel=2),
    sequence=SequenceSpec(builder="gre", params={"tr": 0.008, "te": 0.003}),
    coils=3,
)


def _run(spec: SimulationSpec, tmp_path: Path, ranks: int) -> tuple[Path, list[tuple]]:
    spec_path = tmp_path / f"spec-{ranks}.json"
    spec_path.write_text(spec.model_dump_json())
    out = tmp_path / f"raw-{ranks}.h5"
    lines: list[tuple[int | None, str]] = []
    argv = mpi4py_argv(MODULE, "--spec", str(spec_path), "--out", str(out))
    run_mpi(argv, ranks, on_line=lambda r, line: lines.append((r, line)), timeout_s=JOB_TIMEOUT_S)
    return out, lines


def _nifti(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data.astype(np.float32), np.diag([2.0, 2.0, 5.0, 1.0])), path)
    return str(path)


def test_two_ranks_give_one_ranks_kspace_to_summation_order(tmp_path):
    one, _ = _run(SMALL, tmp_path, 1)
    two, lines = _run(SMALL, tmp_path, 2)
    a, b = read_raw(one), read_raw(two)
    assert a.signal.shape == b.signal.shape == (24, 24, 3, 1, 1)
    scale = np.abs(a.signal).max()
    assert scale > 0
    assert np.abs(b.signal - a.signal).max() <= 1e-6 * scale
    np.testing.assert_array_equal(a.noise, b.noise)  # rank 0 alone draws the seeded noise
    results = [(rank, parse_result(line)) for rank, line in lines if parse_result(line)]
    assert [rank for rank, _ in results] == [0]  # rank 0 alone reports and writes
    total = plan(SMALL, tmp_path)[0].n_spins
    assert results[0][1]["spins"] == total
    assert results[0][1]["ranks"] == 2
    finals = {rank: parse_progress(line) for rank, line in lines if parse_progress(line)}
    assert sorted(finals) == [0, 1]
    assert sum(p[0] for p in finals.values()) == total  # the shares cover every spin once


def test_a_rank_failing_on_bad_input_fails_the_job_with_its_error_and_no_hang(tmp_path):
    shape = (6, 6)
    t1 = np.full(shape, 1.0)
    t1[2, 3] = -0.5
    maps = {
        "pd": _nifti(tmp_path / "pd.nii.gz", np.ones(shape)),
        "t1": _nifti(tmp_path / "t1.nii.gz", t1),
        "t2": _nifti(tmp_path / "t2.nii.gz", np.full(shape, 0.1)),
    }
    spec = SimulationSpec(phantom=PhantomSpec(kind="nifti", **maps), coils=2)
    start = time.monotonic()
    with pytest.raises(MpiError, match=r"t1 map .*t1\.nii\.gz has negative values"):
        _run(spec, tmp_path, 2)
    assert time.monotonic() - start < 20  # MPI_Abort ended it, not the timeout
    assert not list(tmp_path.glob("raw-*.h5"))


def test_more_ranks_than_spins_fails_on_rank_0_with_a_clear_error(tmp_path):
    spec = SimulationSpec(phantom=PhantomSpec(matrix=(2, 2)), coils=1)  # one spin
    with pytest.raises(MpiError, match="2 MPI ranks for a phantom of 1 spins") as caught:
        _run(spec, tmp_path, 2)
    assert 0 in caught.value.rank_errors
    assert not list(tmp_path.glob("raw-*.h5"))


def test_an_unknown_builder_names_itself():
    spec = SimulationSpec(sequence=SequenceSpec(builder="epi"))
    with pytest.raises(InputError, match="sequence builder 'epi'; expected one of"):
        plan(spec, Path("."))


def test_a_bad_builder_parameter_names_the_builder(tmp_path):
    spec = SimulationSpec(sequence=SequenceSpec(builder="gre", params={"echo_time": 0.004}))
    with pytest.raises(InputError, match=r"sequence builder 'gre'.*echo_time"):
        plan(spec, tmp_path)


def test_a_bad_spec_file_names_the_file():
    with pytest.raises(InputError, match=r"spec s3://b/spec\.json: .*coils"):
        SimulationSpec.from_json('{"coils": 0}', "s3://b/spec.json")


def test_ranks_beyond_the_spins_are_refused():
    check_ranks(4, 4)
    with pytest.raises(InputError, match="5 MPI ranks for a phantom of 4 spins"):
        check_ranks(5, 4)


def test_progress_lines_round_trip():
    line = progress_line(2048, 8192, 16384, 3.14e7)
    assert line == "spins 2048/8192 (of 16384), 3.14e+07 spin-samples/s"
    assert parse_progress(line) == (2048, 8192, 16384, 3.14e7)
    assert parse_progress("spins, maybe") is None


def test_a_seq_file_plays_like_the_builder_it_was_written_from(tmp_path):
    from tasks.simulation.pulseq import write_seq

    built = plan(SMALL, tmp_path)[1]
    path = write_seq(built, tmp_path / "gre.seq")
    spec = SMALL.model_copy(update={"sequence": SequenceSpec(seq=str(path))})
    read = plan(spec, tmp_path)[1]
    assert read.adc_samples == built.adc_samples
    assert read.matrix == built.matrix


def test_maps_sharing_a_basename_in_two_prefixes_stay_two_maps(aws, tmp_path):
    import boto3

    from tasks.simulation.mpi_simulate import build_phantom

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="maps")
    shape = (4, 4)
    values = {"pd": 1.0, "t1": 0.9, "t2": 0.08}
    for name, value in values.items():
        local = _nifti(tmp_path / f"{name}.nii.gz", np.full(shape, value))
        s3.upload_file(local, "maps", f"{name}/map.nii.gz")
    uris = {name: f"s3://maps/{name}/map.nii.gz" for name in values}
    workdir = tmp_path / "work"

    phantom = build_phantom(PhantomSpec(kind="nifti", **uris), workdir)

    for name, value in values.items():
        np.testing.assert_allclose(getattr(phantom, name), value, rtol=1e-6)
    assert len(list(workdir.glob("*.nii.gz"))) == 3
