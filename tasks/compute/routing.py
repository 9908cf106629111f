"""Which size class and deployment a job goes to: MR Optimum's job chooser made general.

MR Optimum's Step Function sent a small job to Lambda and a large one to Fargate. sciflow's
router (``flows/router.py``) estimates a job before it runs (``JobSize``) and sends it to the
smallest size class that holds it: a class holds a job when the estimate is at most each of
the class's thresholds. The thresholds are data on the unit: ``ComputeUnit.routing`` per class
(``ClassRule``), each bounded by the class's ``limits``; a class without a rule is bounded by
its limits alone. A job on several nodes fits only ``multinode``. The caller's unit picks the
account (Mode 1 or Mode 2).

Deployments are named by unit and class (``deployment_name``): ``local`` for a local unit's
class on the ``sciflow-local`` pool, ``<unit>-<class>`` otherwise, deployed on the unit's
``work_pools[<class>]``. A local unit that names another pool for a class (say
``work_pools = {"large": "lab-large", ...}``) so gets ``<unit>-large`` for its large jobs.
"""

from __future__ import annotations

from dataclasses import dataclass

from blocks.compute_unit import LOCAL_WORK_POOL, ComputeUnit, SizeClass
from tasks.errors import InputError

MIB = 2**20


@dataclass(frozen=True, slots=True)
class JobSize:
    """What the router knows of a job before it runs.

    Attributes:
        what: The job in words, naming its inputs, for messages.
        memory_bytes: Peak memory of one container (the node of rank 0 on several nodes).
        seconds: Estimated wall time, if the flow estimates one.
        spin_samples: Spins x ADC samples of a simulation, if it is one.
        nodes: Containers the job holds at once.
    """

    what: str
    memory_bytes: int
    seconds: float | None = None
    spin_samples: int | None = None
    nodes: int = 1


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The most a job may need for size class ``size`` of a unit to hold it."""

    size: SizeClass
    memory_mib: int
    seconds: float
    spin_samples: int | None


@dataclass(frozen=True, slots=True)
class Route:
    """Where a job goes.

    Attributes:
        size: The size class chosen.
        deployment: ``<flow>/<deployment>``, as ``run_deployment`` takes it.
        work_pool: The unit's work pool for the class (where the deployment should be).
        reasons: Why each smaller class was passed over, then why this one holds the job.
    """

    size: SizeClass
    deployment: str
    work_pool: str
    reasons: tuple[str, ...]


def thresholds(unit: ComputeUnit, size: SizeClass) -> Thresholds:
    """Class ``size``'s thresholds on ``unit``: its routing rule, capped by its limits."""
    limits = unit.size_limits(size)
    rule = unit.routing.get(size)
    memory = limits.memory_mib
    seconds = float(limits.wall_time_s)
    spin_samples = None
    if rule is not None:
        memory = min(memory, rule.max_memory_mib or memory)
        seconds = min(seconds, rule.max_seconds or seconds)
        spin_samples = rule.max_spin_samples
    return Thresholds(size, memory, seconds, spin_samples)


def misfits(unit: ComputeUnit, size: SizeClass, job: JobSize) -> list[str]:
    """Why class ``size`` of ``unit`` cannot hold ``job``: one phrase per threshold exceeded."""
    bound = thresholds(unit, size)
    found = []
    if job.nodes > 1 and size != "multinode":
        found.append(f"{job.nodes} nodes need the multinode class")
    if job.memory_bytes > bound.memory_mib * MIB:
        found.append(
            f"memory {job.memory_bytes / MIB:.0f} MiB > {bound.memory_mib} MiB "
            f"(routing.{size}.max_memory_mib, limits.{size}.memory_mib)"
        )
    if job.seconds is not None and job.seconds > bound.seconds:
        found.append(
            f"time {job.seconds:.0f} s > {bound.seconds:.0f} s "
            f"(routing.{size}.max_seconds, limits.{size}.wall_time_s)"
        )
    if (
        job.spin_samples is not None
        and bound.spin_samples is not None
        and job.spin_samples > bound.spin_samples
    ):
        found.append(
            f"{job.spin_samples} spin-samples > {bound.spin_samples} "
            f"(routing.{size}.max_spin_samples)"
        )
    return found


def choose_size(
    unit: ComputeUnit, job: JobSize, sizes: tuple[SizeClass, ...]
) -> tuple[SizeClass, tuple[str, ...]]:
    """The first of ``sizes`` (smallest first) that holds ``job``, and why.

    Raises:
        InputError: No class of ``sizes`` holds the job; the message says what each lacks.
    """
    if unit.is_local and job.nodes > 1:
        raise InputError(
            f"{job.what}: nodes={job.nodes} on the local unit {unit.name!r}; expected 1 "
            "(or an AWS unit)"
        )
    passed = []
    for size in sizes:
        if not (why := misfits(unit, size, job)):
            return size, (*passed, f"{size}: holds {_describe(job)}")
        passed.append(f"{size}: {'; '.join(why)}")
    raise InputError(
        f"{job.what}: no size class of unit {unit.name!r} holds it ({' | '.join(passed)}); "
        f"expected a smaller job, or larger thresholds (routing, limits) on the unit"
    )


def deployment_name(unit: ComputeUnit, size: SizeClass) -> str:
    """The deployment of a flow that runs class ``size`` of ``unit`` (without the flow name).

    ``local`` for a local unit's class whose pool is ``sciflow-local``; ``<unit>-<class>``
    otherwise (``team-small``, ``team-multinode``), deployed on ``unit.work_pools[size]``.
    """
    if unit.is_local and unit.work_pool(size) == LOCAL_WORK_POOL:
        return "local"
    return f"{unit.name}-{size}"


def route(unit: ComputeUnit, flow: str, job: JobSize, sizes: tuple[SizeClass, ...]) -> Route:
    """Where ``job`` of ``flow`` goes on ``unit``: its class, deployment and pool.

    Args:
        unit: The caller's unit.
        flow: The flow's name (``mr-reconstruction``).
        job: The job's estimate.
        sizes: The classes the flow may run in, smallest first.

    Raises:
        InputError: No class of ``sizes`` holds the job.
    """
    size, reasons = choose_size(unit, job, sizes)
    return Route(
        size=size,
        deployment=f"{flow}/{deployment_name(unit, size)}",
        work_pool=unit.work_pool(size),
        reasons=reasons,
    )


def _describe(job: JobSize) -> str:
    parts = [f"memory {job.memory_bytes / MIB:.0f} MiB"]
    if job.seconds is not None:
        parts.append(f"time {job.seconds:.0f} s")
    if job.spin_samples is not None:
        parts.append(f"{job.spin_samples} spin-samples")
    if job.nodes > 1:
        parts.append(f"{job.nodes} nodes")
    return ", ".join(parts)
