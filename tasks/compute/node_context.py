"""Which part of a multi-node job this process is: one adapter over Batch, MPI and torchrun.

Simulation and training read ``NodeContext``, never ``AWS_BATCH_*``, ``PMI_*`` or ``RANK``,
so ``mpiexec`` on a laptop, ``torchrun`` and an AWS Batch multi-node job share code.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Self

from pydantic import Field, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.errors import InputError

LOOPBACK = "127.0.0.1"

# What AWS Batch sets in every node of a multi-node parallel job (the main node lacks the
# main node's address: it is that node).
BATCH_NODE_INDEX = "AWS_BATCH_JOB_NODE_INDEX"
BATCH_NUM_NODES = "AWS_BATCH_JOB_NUM_NODES"
BATCH_MAIN_NODE_INDEX = "AWS_BATCH_JOB_MAIN_NODE_INDEX"
BATCH_MAIN_NODE_ADDRESS = "AWS_BATCH_JOB_MAIN_NODE_PRIVATE_IPV4_ADDRESS"
BATCH_JOB_ID = "AWS_BATCH_JOB_ID"
# Rank and size as MPI launchers export them: MPICH's Hydra (PMI), then Open MPI.
MPI_RANK_SIZE = (("PMI_RANK", "PMI_SIZE"), ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"))
# Every variable a launcher sets that sciflow reads; ``launcher_env`` reads exactly these.
LAUNCHER_VARIABLES = (
    BATCH_JOB_ID,
    BATCH_NODE_INDEX,
    BATCH_NUM_NODES,
    BATCH_MAIN_NODE_INDEX,
    BATCH_MAIN_NODE_ADDRESS,
    *(name for pair in MPI_RANK_SIZE for name in pair),
    "MPI_LOCALRANKID",
    "OMPI_COMM_WORLD_LOCAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RESTART_COUNT",
)


class _LauncherSettings(BaseSettings):
    """What AWS Batch, ``mpiexec`` or ``torchrun`` told this process, read from its environment.

    Like ``tasks.settings`` (sciflow's own ``SCIFLOW_*`` knobs), the one place these are read;
    everything else takes a mapping.
    """

    model_config = SettingsConfigDict(extra="ignore", case_sensitive=True, frozen=True)


_LauncherVariables = create_model(
    "_LauncherVariables",
    __base__=_LauncherSettings,
    **{name.lower(): (str | None, Field(None, alias=name)) for name in LAUNCHER_VARIABLES},
)


def launcher_env() -> dict[str, str]:
    """The launcher variables (``LAUNCHER_VARIABLES``) set in this process's environment."""
    return _LauncherVariables().model_dump(by_alias=True, exclude_none=True)


def own_ip() -> str:
    """This host's first non-loopback IPv4 address from its name, else 127.0.0.1.

    Opens no connection (a UDP ``connect`` trick would reach for the network).
    """
    try:
        infos = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        return LOOPBACK
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if not address.startswith("127."):
            return address
    return LOOPBACK


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except KeyError:
        raise InputError(f"{name} is not set; expected it in a multi-node job") from None
    except ValueError:
        raise InputError(f"{name}={env[name]!r} is not an integer") from None


@dataclass(frozen=True, slots=True)
class NodeContext:
    """One participant (node or rank) of a job of ``count``.

    Attributes:
        index: This participant's index, ``0 <= index < count``.
        count: Participants in the job.
        main_addr: Address of the main participant (where rendezvous happens).
        main_index: Index of the main participant.
        local_index: Index on this host (``LOCAL_RANK``; picks the GPU), 0 if unknown.
    """

    index: int
    count: int
    main_addr: str
    main_index: int = 0
    local_index: int = 0

    def __post_init__(self) -> None:
        if self.count < 1:
            raise InputError(f"count={self.count}: a job has at least one participant")
        if not 0 <= self.index < self.count:
            raise InputError(f"index={self.index} is outside 0..{self.count - 1}")
        if not 0 <= self.main_index < self.count:
            raise InputError(f"main_index={self.main_index} is outside 0..{self.count - 1}")

    @property
    def is_main(self) -> bool:
        """Whether this is the main participant (the one that writes outputs)."""
        return self.index == self.main_index

    @classmethod
    def single(cls) -> Self:
        """A job of one, on this machine."""
        return cls(0, 1, LOOPBACK)

    @classmethod
    def from_batch_env(cls, env: Mapping[str, str]) -> Self:
        """This node of an AWS Batch job; a single-container job is a job of one.

        Args:
            env: The environment (``launcher_env()``) with Batch's ``AWS_BATCH_JOB_*``.
        """
        if BATCH_NODE_INDEX not in env:
            return cls(0, 1, own_ip())
        index, count = _int(env, BATCH_NODE_INDEX), _int(env, BATCH_NUM_NODES)
        main_index = _int(env, BATCH_MAIN_NODE_INDEX) if BATCH_MAIN_NODE_INDEX in env else 0
        main = env.get(BATCH_MAIN_NODE_ADDRESS) or own_ip()
        return cls(index, count, main, main_index)

    @classmethod
    def from_mpi_env(cls, env: Mapping[str, str]) -> Self:
        """This rank of an MPI job (MPICH Hydra's ``PMI_*`` or Open MPI's ``OMPI_*``).

        MPI ranks find each other through the launcher, so ``main_addr`` is not needed and
        is loopback.

        Args:
            env: The environment the launcher gave this rank.

        Raises:
            InputError: No launcher's rank variables are set.
        """
        for rank, size in MPI_RANK_SIZE:
            if rank in env:
                # mpiexec.gforker (local runs) sets no local rank; it is single-host, so the
                # global rank is the local one and ranks do not all pick device 0.
                local = (
                    env.get("MPI_LOCALRANKID") or env.get("OMPI_COMM_WORLD_LOCAL_RANK") or env[rank]
                )
                return cls(_int(env, rank), _int(env, size), LOOPBACK, 0, int(local))
        raise InputError(
            "no MPI rank in the environment: expected PMI_RANK/PMI_SIZE (MPICH) or "
            "OMPI_COMM_WORLD_RANK/OMPI_COMM_WORLD_SIZE (Open MPI); run under mpiexec"
        )

    @classmethod
    def from_torchrun_env(cls, env: Mapping[str, str]) -> Self:
        """This rank of a ``torchrun`` job (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``).

        Raises:
            InputError: torchrun's variables are not set.
        """
        index, count = _int(env, "RANK"), _int(env, "WORLD_SIZE")
        local = int(env.get("LOCAL_RANK", "0"))
        return cls(index, count, env.get("MASTER_ADDR") or LOOPBACK, 0, local)

    @classmethod
    def from_process(cls) -> Self:
        """Whichever launcher started this process, from its environment (``from_env``)."""
        return cls.from_env(launcher_env())

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        """Whichever launcher started this process: torchrun, MPI, Batch, else a job of one."""
        if "RANK" in env and "WORLD_SIZE" in env:
            return cls.from_torchrun_env(env)
        if any(rank in env for rank, _ in MPI_RANK_SIZE):
            return cls.from_mpi_env(env)
        if BATCH_NODE_INDEX in env:
            return cls.from_batch_env(env)
        return cls.single()
