"""How long a run on this machine (mpiexec, torchrun, the parameter server) may take.

A flow's ``timeout_s`` parameter, bounded by the unit's size-class wall time, or that wall
time when the parameter is omitted: a local run never runs unbounded, and a scientist can ask
for less. The launchers (``run_mpi``, ``run_processes``) stop the whole process group at it.
"""

from __future__ import annotations

from blocks.compute_unit import ComputeUnit, SizeClass
from tasks.errors import InputError, SciflowError


def local_timeout_s(unit: ComputeUnit, size: SizeClass, timeout_s: float | None) -> float:
    """Seconds a local run of size class ``size`` may take: ``timeout_s`` or the wall time.

    Args:
        unit: The unit the run is on (a local one: AWS jobs stop at their class's wall time).
        size: The run's size class; ``unit.size_limits(size).wall_time_s`` bounds it.
        timeout_s: The flow's ``timeout_s`` parameter, if given.

    Raises:
        InputError: ``timeout_s`` on an AWS unit, or not in (0, the class's wall time].
    """
    wall_s = unit.size_limits(size).wall_time_s
    if timeout_s is None:
        return float(wall_s)
    if not unit.is_local:
        raise InputError(
            f"timeout_s={timeout_s:g} on the AWS unit {unit.name!r}: it bounds runs on this "
            f"machine; an AWS job stops at the unit's limits.{size}.wall_time_s ({wall_s} s), "
            "so leave timeout_s unset"
        )
    if not 0 < timeout_s <= wall_s:  # also NaN
        raise InputError(
            f"timeout_s={timeout_s:g}: expected seconds > 0 and at most the {size!r} wall time "
            f"of unit {unit.name!r} ({wall_s} s)"
        )
    return float(timeout_s)


def timed_out(
    what: str, timeout_s: float, size: SizeClass, requested: float | None
) -> SciflowError:
    """The error for a local run stopped at its limit: which limit, and how to change it."""
    source = (
        "the flow's timeout_s"
        if requested is not None
        else f"the unit's {size!r} wall time; the flow's timeout_s can only lower it"
    )
    return SciflowError(
        f"{what} ran past its limit of {timeout_s:g} s ({source}) and was stopped with all "
        "its processes; give a larger timeout_s or a smaller job"
    )
