import pytest

from tasks.compute.node_context import LOOPBACK, NodeContext, launcher_env
from tasks.errors import InputError

# What AWS Batch sets on a child node and on the main node of a 3-node job.
BATCH_CHILD = {
    "AWS_BATCH_JOB_ID": "abc#2",
    "AWS_BATCH_JOB_NODE_INDEX": "2",
    "AWS_BATCH_JOB_NUM_NODES": "3",
    "AWS_BATCH_JOB_MAIN_NODE_INDEX": "0",
    "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS": "10.0.1.17",
}
BATCH_MAIN = {
    k: v for k, v in BATCH_CHILD.items() if k != "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"
} | {"AWS_BATCH_JOB_NODE_INDEX": "0", "AWS_BATCH_JOB_ID": "abc#0"}


def test_a_batch_child_node_knows_its_index_and_the_main_nodes_address():
    ctx = NodeContext.from_batch_env(BATCH_CHILD)
    assert ctx == NodeContext(2, 3, "10.0.1.17", main_index=0)
    assert not ctx.is_main


def test_the_batch_main_node_uses_its_own_address():
    ctx = NodeContext.from_batch_env(BATCH_MAIN)
    assert (ctx.index, ctx.count, ctx.is_main) == (0, 3, True)
    assert ctx.main_addr  # this host's address, loopback where it has no other


def test_a_single_container_batch_job_is_a_job_of_one():
    ctx = NodeContext.from_batch_env({"AWS_BATCH_JOB_ID": "abc"})
    assert (ctx.index, ctx.count, ctx.is_main) == (0, 1, True)


def test_mpich_and_open_mpi_ranks():
    assert NodeContext.from_mpi_env({"PMI_RANK": "1", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1"}) == (
        NodeContext(1, 4, LOOPBACK, 0, 1)
    )
    ompi = {
        "OMPI_COMM_WORLD_RANK": "3",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
    }
    assert NodeContext.from_mpi_env(ompi) == NodeContext(3, 4, LOOPBACK, 0, 1)


def test_torchrun_ranks():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "10.0.0.2"}
    assert NodeContext.from_torchrun_env(env) == NodeContext(5, 8, "10.0.0.2", 0, 1)


def test_from_env_picks_the_launcher_and_defaults_to_a_job_of_one():
    assert NodeContext.from_env({"PMI_RANK": "0", "PMI_SIZE": "2"}).count == 2
    assert NodeContext.from_env(BATCH_CHILD).index == 2
    assert NodeContext.from_env({}) == NodeContext.single()


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({}, "no MPI rank in the environment"),
        ({"PMI_RANK": "x", "PMI_SIZE": "2"}, "PMI_RANK='x' is not an integer"),
        ({"PMI_RANK": "2", "PMI_SIZE": "2"}, r"index=2 is outside 0..1"),
    ],
)
def test_bad_launcher_environments_name_the_variable(env, match):
    with pytest.raises(InputError, match=match):
        NodeContext.from_mpi_env(env)


def test_node_context_is_frozen():
    ctx = NodeContext.single()
    with pytest.raises(AttributeError):
        ctx.index = 1  # type: ignore[misc]


def test_from_process_reads_only_the_launcher_variables(monkeypatch):
    for name, value in BATCH_CHILD.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("UNRELATED", "x")
    assert launcher_env() == BATCH_CHILD
    assert NodeContext.from_process() == NodeContext(2, 3, "10.0.1.17")


def test_single_host_mpi_without_a_local_rank_uses_the_global_rank():
    context = NodeContext.from_mpi_env({"PMI_RANK": "1", "PMI_SIZE": "2"})
    assert context.local_index == 1
