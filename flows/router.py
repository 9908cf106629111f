"""The router: estimate a job, pick its size class on the caller's unit, start that deployment.

MR Optimum's job chooser made general (``tasks.compute.routing``): parameters of a flow →
refuse pasted credentials → unit, budget, reach → the job's size (header-only for MR, spins x
ADC samples for a simulation, the model's memory for training) → the smallest size class of
the unit whose thresholds hold it → ``run_deployment`` of ``<flow>/<deployment>`` on the
class's work queue → its flow run.
"""

from __future__ import annotations

from typing import Any, Literal

from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.runtime import flow_run as current_run
from pydantic import ValidationError

from blocks.compute_unit import ComputeUnit, SizeClass, load_unit
from flows import mr_reconstruction as mr
from flows import multinode_simulation as simulation
from tasks.compute.batch_run import batch_size_class
from tasks.compute.hooks import sciflow_flow
from tasks.compute.routing import JobSize, Route, route
from tasks.compute.run_context import RunContext
from tasks.compute.spending import check_run_cost, check_spending
from tasks.errors import InputError, describe_validation
from tasks.mr.options import is_job_uri, parse_job, refuse_pasted_credentials
from tasks.progress import publish_summary, run_logger
from tasks.simulation.mpi_simulate import (
    PhantomSpec,
    SequenceSpec,
    SimulationSpec,
    check_ranks,
    memory_estimate,
    plan,
)
from tasks.training.config import TrainConfig, TrainingSettings

JobFlow = Literal["mr-reconstruction", "multinode-simulation", "distributed-training"]
JOB_FLOWS: tuple[JobFlow, ...] = (
    "mr-reconstruction",
    "multinode-simulation",
    "distributed-training",
)


def size_mr_job(params: dict[str, Any], unit: ComputeUnit, run: RunContext) -> JobSize:
    """An MR job's memory and time from its signal's header (``estimate_job``).

    An ``s3://`` signal is fetched once into the router's scratch to read its header.
    """
    options = params.get("options")
    access = unit.access()
    if is_job_uri(options):
        access.check_read(options, "parameters.options")
        job = mr.read_job(options, run)
    else:
        job = parse_job(options)
    signal, noise = params.get("signal"), params.get("noise")
    mr.check_reach(access, signal, noise, job, params.get("output"))
    signal = signal or job.signal
    if not signal:
        raise InputError(
            "parameters has no signal: pass parameters.signal or an MR Optimum job naming one"
        )
    estimate = mr.estimate(mr.stage_input(signal, run), job.options, job.key)
    return JobSize(
        what=f"MR job {estimate.describe()}",
        memory_bytes=estimate.memory_bytes,
        seconds=estimate.seconds,
    )


def size_simulation(params: dict[str, Any], unit: ComputeUnit, run: RunContext) -> JobSize:
    """A simulation's spins x ADC samples and its rank-0 node's memory (``memory_estimate``)."""
    nodes = _int(params, "nodes", 1)
    ranks_per_node = _int(params, "ranks_per_node", 2)
    try:
        spec = SimulationSpec(
            phantom=PhantomSpec.model_validate(params.get("phantom") or {}),
            sequence=SequenceSpec.model_validate(params.get("sequence") or {}),
            coils=params.get("coils", 8),
            backend=params.get("backend", "numpy"),
        )
    except ValidationError as exc:
        raise InputError(f"parameters: {describe_validation(exc)}") from None
    simulation.check_reach(unit.access(), spec.phantom, spec.sequence, params.get("output"))
    phantom, sequence = plan(spec, run.scratch / "inputs", run.store)
    ranks = nodes * ranks_per_node
    check_ranks(ranks, phantom.n_spins)
    return JobSize(
        what=(
            f"simulation of {phantom.n_spins} spins x {sequence.adc_samples} ADC samples x "
            f"{spec.coils} coils on {nodes} node(s) x {ranks_per_node} rank(s)"
        ),
        memory_bytes=memory_estimate(spec, phantom, sequence, ranks, ranks_per_node),
        spin_samples=phantom.n_spins * sequence.adc_samples,
        nodes=nodes,
    )


def size_training(params: dict[str, Any], unit: ComputeUnit, run: RunContext) -> JobSize:
    """One node's training memory: ``procs_per_node`` x ``models.memory_estimate``."""
    from tasks.training.data import load_manifest
    from tasks.training.models import memory_estimate as model_memory

    dataset = params.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise InputError(
            f"parameters.dataset={dataset!r}; expected the URI of a training set (manifest.json)"
        )
    unit.access().check_read(dataset, "parameters.dataset")
    try:
        settings = TrainingSettings.model_validate(params.get("settings") or {})
    except ValidationError as exc:
        raise InputError(f"parameters.settings: {describe_validation(exc)}") from None
    cfg = TrainConfig.from_settings(settings, dataset=dataset, output=run.root)
    manifest = load_manifest(cfg.dataset, run.store)
    batch = (cfg.per_process_batch, manifest.channels, *manifest.shape)
    process = model_memory(cfg.model, cfg.model_options, batch, cfg.loader_workers)
    return JobSize(
        what=f"training of model {cfg.model!r} on batches of {batch}",
        memory_bytes=cfg.procs_per_node * process,
        nodes=cfg.nodes,
    )


def candidate_sizes(flow: JobFlow, params: dict[str, Any], job: JobSize) -> tuple[SizeClass, ...]:
    """The classes ``flow`` may run ``job`` in, smallest first."""
    if job.nodes > 1:
        return ("multinode",)
    if flow == "distributed-training":
        device = (params.get("settings") or {}).get("device", "auto")
        if device != "cpu":
            return (batch_size_class(1, gpu=True),)
    return ("small", "large")


SIZERS = {
    "mr-reconstruction": size_mr_job,
    "multinode-simulation": size_simulation,
    "distributed-training": size_training,
}


@sciflow_flow(name="route-job")
def route_job(
    flow: JobFlow,
    parameters: dict[str, Any],
    unit: str = "local",
    wait: bool = False,
) -> FlowRun:
    """Start a job on the deployment of the smallest size class that holds it.

    The job is one flow's parameters, as that flow's deployment would take them:

    - ``mr-reconstruction``: ``signal``, ``noise``, ``options`` (analysis options, a pasted MR
      Optimum job, or a job file's URI), ``output``; sized from the signal's header.
    - ``multinode-simulation``: ``phantom``, ``sequence``, ``coils``, ``nodes``,
      ``ranks_per_node``, ``backend``, ``output``; sized by spins x ADC samples and memory.
    - ``distributed-training``: ``dataset``, ``settings``, ``output``, ``publish_as``; sized
      by the model's memory per node; a GPU run (``settings.device`` not ``cpu``) goes to
      ``gpu``.

    The class is the first of small, large (multinode for several nodes) whose thresholds on
    the unit (``ComputeUnit.routing`` within ``limits``) hold the estimate; the deployment is
    ``<flow>/local`` on a local unit's ``sciflow-local`` pool, else ``<flow>/<unit>-<class>``,
    and the run goes to the pool's work queue named after the class, which holds it while the
    class is at ``limits.<class>.concurrent_runs``.

    Args:
        flow: Which flow runs the job.
        parameters: That flow's parameters (JSON), without ``unit``: the router adds it.
        unit: Compute unit to run on; its thresholds pick the class.
        wait: Wait for the started run to end (holding this run's worker slot meanwhile);
            otherwise return it once created.

    Returns:
        The started flow run.
    """
    refuse_pasted_credentials(parameters)
    if "unit" in parameters and parameters["unit"] != unit:
        raise InputError(
            f"parameters.unit={parameters['unit']!r} but unit={unit!r}; expected the unit "
            "once, as the router's `unit`"
        )
    if flow not in SIZERS:
        raise InputError(f"flow={flow!r}; expected one of {list(JOB_FLOWS)}")
    logger = run_logger()
    compute_unit = load_unit(unit)
    check_spending(compute_unit)
    run = RunContext.current(compute_unit)
    job = SIZERS[flow](parameters, compute_unit, run)
    chosen = route(compute_unit, flow, job, candidate_sizes(flow, parameters, job))
    # As the flows do: the class's price for its whole time limit, per node.
    check_run_cost(compute_unit, chosen.size, nodes=job.nodes)
    logger.info(
        "%s → %s on pool %s: %s",
        job.what,
        chosen.deployment,
        chosen.work_pool,
        "; ".join(chosen.reasons),
    )
    started = run_deployment(
        name=chosen.deployment,
        parameters={**parameters, "unit": unit},
        timeout=None if wait else 0,
        # The class's queue (make pools gives it limits.<class>.concurrent_runs), named here
        # for every unit: a local unit's `<flow>/local` serves all its classes from the
        # `default` queue of sciflow-local; deploy_unit's `<unit>-<class>` sits in it already.
        work_queue_name=chosen.size,
        # A retried router run finds the run it started rather than starting another.
        idempotency_key=f"route-job-{current_run.get_id()}",
    )
    _publish(chosen, job, started, unit)
    return started


def _publish(chosen: Route, job: JobSize, started: FlowRun, unit: str) -> None:
    publish_summary(
        "Routed job",
        [
            {
                "deployment": chosen.deployment,
                "size class": chosen.size,
                "work pool": chosen.work_pool,
                "flow run": str(started.id),
            }
        ],
        key=f"route-job-{unit}",
        notes=f"{job.what}\n\n" + "\n".join(f"- {r}" for r in chosen.reasons),
    )


def _int(params: dict[str, Any], key: str, default: int) -> int:
    value = params.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"parameters.{key}={value!r}; expected a positive integer")
    return value
