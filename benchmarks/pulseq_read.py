"""Reading Pulseq ``.seq`` files: our parser (``tasks.simulation.pulseq.read_seq``) vs pypulseq.

Files: a 2D RF-spoiled GRE (``sequence.gre``, 64x64, or 128x128 without ``--quick``) written
by ``write_seq`` (Pulseq 1.4), and the pypulseq-written 1.5 test fixture
``tests/simulation/data/pulseq/v1_5.seq`` (shaped sinc pulse, block pulse, trapezoids, an
arbitrary gradient). Both readers read the same file in the same process; times are medians.

- ``read_gre`` and ``read_fixture_1_5``: ``read_seq`` (file to sciflow ``Sequence``) against
  ``pypulseq.Sequence.read`` plus ``get_block`` of every block. The baseline is a lower bound
  on a pypulseq-based reader: turning its blocks into a ``Sequence`` is not counted. Goal,
  on the GRE: ours no slower (ratio <= 1). The sub-millisecond fixture carries no goal: it
  shows both readers' fixed costs, which swing either way between runs.

The JSON also records (``checks``) what each reader does with a file edited after signing
(pypulseq reads the ``[SIGNATURE]`` without comparing it; ``read_seq`` refuses the file) and
with a 1.3 shape stored as long as its samples (pypulseq 1.5.0 raises ``TypeError``).

``python -m benchmarks.pulseq_read [--quick] [--repeats N]`` from the repository root;
pypulseq comes with ``pip install pypulseq==1.5.0.post1`` (the ``dev`` extra).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

from benchmarks._common import (
    REPO_ROOT,
    Metric,
    parse_args,
    repeats_for,
    time_median,
    write_results,
)
from tasks.errors import InputError
from tasks.simulation.pulseq import read_seq, write_seq
from tasks.simulation.sequence import gre

NAME = "pulseq_read"
FIXTURE = REPO_ROOT / "tests" / "simulation" / "data" / "pulseq" / "v1_5.seq"
MATRIX_QUICK, MATRIX_FULL = 64, 128
GOAL_RATIO = 1.0


def _pypulseq_read(path: Path) -> int:
    """Read with pypulseq and take every block, as a converter to our model would; block count."""
    import pypulseq

    seq = pypulseq.Sequence()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # notices about older versions and rasters
        seq.read(str(path))
        return len([seq.get_block(key) for key in seq.block_events])


def _metric(
    name: str, path: Path, repeats: int, goal: bool = True
) -> tuple[Metric, dict[str, object]]:
    ours, ours_runs = time_median(lambda: read_seq(path), repeats)
    theirs, their_runs = time_median(lambda: _pypulseq_read(path), repeats)
    blocks = len(read_seq(path).blocks)
    if _pypulseq_read(path) != blocks:
        raise RuntimeError(f"{path}: pypulseq reads a different number of blocks than {blocks}")
    metric = Metric(
        name,
        ours * 1e3,
        theirs * 1e3,
        "pypulseq Sequence.read + get_block",
        "ms",
        goal=f"<= {GOAL_RATIO:g}x" if goal else None,
        goal_met=ours <= GOAL_RATIO * theirs if goal else None,
    )
    raw = {"file": path.name, "bytes": path.stat().st_size, "blocks": blocks}
    return metric, raw | {"ours_s": ours_runs, "pypulseq_s": their_runs}


def _tampered_checks(directory: Path) -> dict[str, bool]:
    """Whether each reader accepts the fixture with one trapezoid time changed after signing."""
    text = FIXTURE.read_text()
    tampered = directory / "tampered.seq"
    tampered.write_text(text.replace("640  40   0", "650  40   0", 1))
    try:
        read_seq(tampered)
        ours = True
    except InputError:
        ours = False
    # Before 1.4 a shape as long as its samples is still compressed; pypulseq 1.5.0 fails on it.
    old = directory / "v1_3.seq"
    packed = "num_samples 5\n0.1\n0.1\n2\n0.4\n"
    old.write_text(
        (FIXTURE.parent / "v1_3.seq").read_text().replace(packed, "num_samples 3\n1\n2\n3\n")
    )
    try:
        theirs_old = _pypulseq_read(old) > 0
    except Exception:  # recording that it fails, whatever the failure
        theirs_old = False
    return {
        "tampered_file_read_by_read_seq": ours,
        "tampered_file_read_by_pypulseq": _pypulseq_read(tampered) > 0,
        "full_length_1_3_shape_read_by_read_seq": len(read_seq(old).blocks) > 0,
        "full_length_1_3_shape_read_by_pypulseq": theirs_old,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = repeats_for(args, quick_default=5)
    matrix = MATRIX_QUICK if args.quick else MATRIX_FULL
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        gre_path = write_seq(gre(matrix=(matrix, matrix)), directory / "gre.seq")
        gre_metric, gre_raw = _metric("read_gre", gre_path, repeats)
        fixture_metric, fixture_raw = _metric("read_fixture_1_5", FIXTURE, repeats, goal=False)
        checks = _tampered_checks(directory)
    for key, value in checks.items():
        print(f"{key}: {value}")
    write_results(
        NAME,
        [gre_metric, fixture_metric],
        args,
        files={"read_gre": gre_raw | {"matrix": matrix}, "read_fixture_1_5": fixture_raw},
        checks=checks,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
