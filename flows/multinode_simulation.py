"""Multi-node MR simulation: an MPI Bloch simulation of a phantom, written as MRD raw data.

check inputs → spec.json → MPI job (``mpiexec`` here, an AWS Batch multi-node job on an AWS
unit) → simulation.h5 in the run directory (or ``output``) → summary artifact.

Every rank runs ``tasks.simulation.mpi_simulate``; on this machine its output lines reach the
flow's log with the rank in front, and its progress lines move a progress artifact. On AWS the
job's CloudWatch lines reach the log through ``JobFollower``, and cancelling the flow run
terminates the job.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from prefect import task
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from blocks.compute_unit import load_unit
from tasks.compute.batch_run import batch_size_class, job_seconds, run_batch_job
from tasks.compute.channel import TOKEN_VARIABLE
from tasks.compute.hooks import sciflow_flow
from tasks.compute.run_context import RunContext
from tasks.compute.spending import check_spending
from tasks.compute.timeouts import local_timeout_s, timed_out
from tasks.errors import InputError, SciflowError
from tasks.progress import Progress, publish_summary, run_logger
from tasks.retry import transient_retries
from tasks.simulation.mpi import MpiTimeout, mpi4py_argv, mpiexec_path, run_mpi
from tasks.simulation.mpi_simulate import (
    PhantomSpec,
    SequenceSpec,
    SimulationSpec,
    check_ranks,
    memory_estimate,
    parse_progress,
    parse_result,
    plan,
)
from tasks.storage.access import Access
from tasks.storage.objects import join_uri
from tasks.storage.transfer import put_once

RANK_MODULE = "tasks.simulation.mpi_simulate"
RAW_NAME = "simulation.h5"
# The unit's `batch_job_definitions` entry whose image has the simulator and MPICH.
BATCH_RUNTIME = "simulation"
# Seconds between polls of a Batch job.
BATCH_POLL_S = 10.0
# Most nodes and ranks per node, TrainingSettings' caps: 65,536 ranks, past any cluster a
# unit gives one run.
MAX_NODES = 256
MAX_RANKS_PER_NODE = 256

DEFAULT_PHANTOM = PhantomSpec()  # 64x64 Shepp-Logan, one spin per voxel
DEFAULT_SEQUENCE = SequenceSpec()  # spoiled GRE


class SimulationResult(BaseModel):
    """Where the simulated raw data is and how fast it was made."""

    raw_uri: str = Field(description="URI of the MRD file (k-space and noise scan).")
    spins: int = Field(description="Spins simulated (the phantom's isochromats).")
    adc_samples: int = Field(description="ADC samples per coil in the sequence.")
    seconds: float = Field(description="Wall time of the simulation, in s.")
    spin_samples_per_s: float = Field(description="Throughput: spins x ADC samples / seconds.")
    ranks: int = Field(description="MPI ranks that shared the spins.")
    progress_updates: int = Field(
        0, description="Progress lines received from the ranks (0 on AWS: they go to CloudWatch)."
    )


def check_reach(
    access: Access, phantom: PhantomSpec, sequence: SequenceSpec, output: str | None
) -> None:
    """Refuse any file the run would read or write outside what its unit may reach.

    Called before anything is read: the phantom's NIfTI maps, the ``.seq`` file and ``output``.
    """
    for name in ("pd", "t1", "t2", "df"):
        if uri := getattr(phantom, name):
            access.check_read(uri, f"phantom.{name}")
    if sequence.seq:
        access.check_read(sequence.seq, "sequence.seq")
    if output:
        access.check_write(output, "output")


@task
def check_inputs(
    spec: SimulationSpec, nodes: int, ranks_per_node: int, run: RunContext
) -> dict[str, int]:
    """Build phantom and sequence once, before any rank starts: bad input fails here.

    A job whose memory estimate (``memory_estimate``, the node of rank 0) exceeds the unit's
    class for ``nodes`` is refused here too.
    """
    if run.unit.is_local:
        mpiexec_path()  # InputError naming how to install it
    phantom, sequence = plan(spec, run.scratch / "inputs", run.store)
    ranks = nodes * ranks_per_node
    check_ranks(ranks, phantom.n_spins)
    run.unit.check_fits(
        memory_estimate(spec, phantom, sequence, ranks, ranks_per_node),
        f"simulation of {phantom.n_spins} spins (matrix {phantom.shape[:2]}, spins_per_voxel "
        f"{spec.phantom.spins_per_voxel}) x {sequence.adc_samples} ADC samples x {spec.coils} "
        f"coils, ranks_per_node={ranks_per_node}",
        sizes=(batch_size_class(nodes),),
    )
    return {"spins": phantom.n_spins, "adc_samples": sequence.adc_samples}


@task(**transient_retries())
def write_spec(run: RunContext, spec: SimulationSpec) -> str:
    """spec.json where every rank can read it: local scratch, or the run directory on S3."""
    text = spec.model_dump_json(indent=2)
    if run.unit.is_local:
        path = run.scratch / "simulation" / "spec.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)
    return run.store.write_text(run.uri("simulation", "spec.json"), text, tags=run.tags)


@task
def simulate_locally(
    spec_path: str, out_path: str, ranks: int, spins: int, key: str, timeout_s: float
) -> dict[str, Any]:
    """``mpiexec -n ranks``: rank lines into the log, progress lines into an artifact.

    ``mpiexec`` and its ranks are stopped (their process group) after ``timeout_s`` seconds.
    """
    logger = run_logger()
    result: dict[str, Any] = {}
    done: dict[int, int] = {}
    updates = 0
    with Progress(total=spins, what="spins", key=key) as bar:

        def on_line(rank: int | None, line: str) -> None:
            nonlocal updates
            logger.info("[%s] %s", "mpiexec" if rank is None else f"rank {rank}", line)
            if rank is None:
                return
            if (progress := parse_progress(line)) is not None:
                updates += 1
                step = progress[0] - done.get(rank, 0)
                done[rank] = progress[0]
                if step > 0:
                    bar.advance(step)
            elif (found := parse_result(line)) is not None:
                result.update(found)

        argv = mpi4py_argv(RANK_MODULE, "--spec", spec_path, "--out", out_path)
        run_mpi(argv, ranks, on_line=on_line, timeout_s=timeout_s)
    if not result:
        raise SciflowError(f"the MPI simulation on {ranks} ranks ended without a RESULT line")
    return {**result, "progress_updates": updates}


@task(**transient_retries())
def publish_raw(run: RunContext, local: str, uri: str) -> str:
    """Copy the MRD file from scratch to its place once (``put_once``), with the run's tags."""
    return put_once(run.store, uri, Path(local), tags=run.tags)


@task
def simulate_on_batch(
    run: RunContext, spec_uri: str, raw_uri: str, nodes: int, ranks_per_node: int
) -> dict[str, Any]:
    """One AWS Batch (multi-node) job running the entrypoint; followed to its end.

    Several nodes prove ``SCIFLOW_RUN_TOKEN`` (scoped to the job id) to each other, so the
    unit's job definition must give it as a `secrets` entry; Batch's SubmitJob carries no
    secrets, so the token is the definition's, not made per run.

    A cancelled or failed follow terminates the job, so no node is left running.
    """
    program = ["python", "-m", "mpi4py", "-m", RANK_MODULE, "--spec", spec_uri, "--out", raw_uri]
    command = ["python", "-m", "tasks.simulation.multinode", "--slots", str(ranks_per_node)]
    started = time.perf_counter()
    job = run_batch_job(
        run,
        runtime=BATCH_RUNTIME,
        name="sciflow-simulation",
        command=[*command, "--", *program],
        nodes=nodes,
        size=batch_size_class(nodes),
        poll_s=BATCH_POLL_S,
        # The nodes prove the run token to the main node's control channel.
        secrets_needed=(TOKEN_VARIABLE,) if nodes > 1 else (),
    )
    if not run.store.exists(raw_uri):
        raise SciflowError(f"Batch job {job.job_id} SUCCEEDED but wrote no {raw_uri}")
    seconds = job_seconds(job, time.perf_counter() - started)
    return {"out": raw_uri, "seconds": seconds, "job_id": job.job_id}


@sciflow_flow(name="multinode-simulation")
def multinode_simulation(
    phantom: PhantomSpec = DEFAULT_PHANTOM,
    sequence: SequenceSpec = DEFAULT_SEQUENCE,
    coils: int = 8,
    nodes: int = 1,
    ranks_per_node: int = 2,
    backend: Literal["numpy", "torch"] = "numpy",
    output: str | SkipJsonSchema[None] = "",
    unit: str = "local",
    timeout_s: float = 0,
) -> SimulationResult:
    """Simulate an MR acquisition of a phantom with spins split over MPI ranks.

    Args:
        phantom: The phantom; a 64x64 Shepp-Logan with one spin per voxel if omitted.
        sequence: Builder and parameters, or a .seq URI; a spoiled GRE if omitted.
        coils: Receive coils.
        nodes: Nodes (more than 1 only on an AWS unit: a Batch multi-node parallel job).
        ranks_per_node: MPI ranks on each node.
        backend: ``numpy`` or ``torch`` array backend of the Bloch kernels.
        output: Directory for simulation.h5; the run directory if omitted.
        unit: Compute unit to run on.
        timeout_s: Seconds a simulation on this machine may run before it is stopped; the
            unit's size-class wall time (``limits.large``) if 0, never more. An AWS job
            stops at its class's wall time, so leave it at 0 there.
    """
    output, timeout_s = output or None, timeout_s or None  # "", 0: an empty form field
    logger = run_logger()
    if not (1 <= nodes <= MAX_NODES and 1 <= ranks_per_node <= MAX_RANKS_PER_NODE):
        raise InputError(
            f"nodes={nodes}, ranks_per_node={ranks_per_node}; expected nodes 1 to {MAX_NODES} "
            f"and ranks_per_node 1 to {MAX_RANKS_PER_NODE}"
        )
    compute_unit = load_unit(unit)
    if compute_unit.is_local and nodes > 1:
        raise InputError(f"nodes={nodes} on the local unit {unit!r}; expected 1 (or an AWS unit)")
    size = batch_size_class(nodes)
    limit_s = local_timeout_s(compute_unit, size, timeout_s)
    check_spending(compute_unit, size, limit_s, nodes)
    run = RunContext.current(compute_unit)
    ranks = nodes * ranks_per_node
    spec = SimulationSpec(
        phantom=phantom or PhantomSpec(),
        sequence=sequence or SequenceSpec(),
        coils=coils,
        backend=backend,
    )
    check_reach(compute_unit.access(), spec.phantom, spec.sequence, output)
    sizes = check_inputs(spec, nodes, ranks_per_node, run)
    logger.info(
        "%d spins x %d ADC samples x %d coils on %d rank(s) of %d node(s)",
        sizes["spins"],
        sizes["adc_samples"],
        coils,
        ranks,
        nodes,
    )
    raw_uri = _raw_uri(run, output)
    spec_uri = write_spec(run, spec)
    if compute_unit.is_local:
        local = str(run.scratch / "simulation" / RAW_NAME)
        key = f"bloch-{run.run_id[:8]}"
        try:
            done = simulate_locally(spec_uri, local, ranks, sizes["spins"], key, limit_s)
        except MpiTimeout as exc:
            raise timed_out("the local MPI simulation", limit_s, size, timeout_s) from exc
        raw_uri = publish_raw(run, local, raw_uri)
    else:
        done = simulate_on_batch(run, spec_uri, raw_uri, nodes, ranks_per_node)
    seconds = float(done["seconds"])
    samples = sizes["spins"] * sizes["adc_samples"]
    result = SimulationResult(
        raw_uri=raw_uri,
        spins=sizes["spins"],
        adc_samples=sizes["adc_samples"],
        seconds=seconds,
        spin_samples_per_s=samples / seconds if seconds > 0 else 0.0,
        ranks=ranks,
        progress_updates=int(done.get("progress_updates", 0)),
    )
    publish_summary(
        "Multi-node simulation",
        [{"output": RAW_NAME, "uri": raw_uri}],
        key=f"simulation-{unit}",
        notes=(
            f"{result.spins} spins x {result.adc_samples} ADC samples on {ranks} rank(s): "
            f"**{result.spin_samples_per_s:.3g} spin-samples/s** ({seconds:.2f} s)"
        ),
    )
    return result


def _raw_uri(run: RunContext, output: str | None) -> str:
    return join_uri(output, RAW_NAME) if output else run.uri(RAW_NAME)
