"""A flow run's context: its unit, id and flow, its directory and the tags of what it creates.

Every file a run writes lives under ``<root>/<unit>/<flow-run-id>/`` (``ComputeUnit.run_dir``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from blocks.compute_unit import ComputeUnit
from tasks.aws.tags import run_tags
from tasks.compute.launches import LaunchRecord
from tasks.errors import SciflowError
from tasks.settings import get_settings
from tasks.storage.objects import ObjectStore, join_uri


@dataclass(frozen=True)
class RunContext:
    """What a flow run needs to write its outputs and tag what it creates.

    Build it with ``RunContext.current(unit)`` inside a flow; it pickles, so tasks on Dask
    workers can take it.
    """

    unit: ComputeUnit
    run_id: str
    flow: str
    store: ObjectStore = field(compare=False)

    @classmethod
    def current(cls, unit: ComputeUnit) -> RunContext:
        """The context of the flow run this is called from."""
        from prefect.runtime import flow_run

        run_id, flow = flow_run.get_id(), flow_run.get_flow_name()
        if not run_id or not flow:
            raise SciflowError("RunContext.current() was called outside a flow run")
        return cls(unit=unit, run_id=run_id, flow=flow, store=unit.object_store())

    @property
    def root(self) -> str:
        """URI of this run's directory."""
        return self.unit.run_dir(self.run_id)

    @property
    def tags(self) -> dict[str, str]:
        """Tags for every resource this run creates."""
        return run_tags(self.run_id, self.unit.name, self.flow, self.unit.tags)

    @property
    def scratch(self) -> Path:
        """This run's local scratch directory (created on first use, swept at the end)."""
        path = get_settings().scratch_root / self.run_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def launches(self) -> LaunchRecord:
        """The record of what this run launched (``tasks.compute.launches``)."""
        return LaunchRecord(
            self.store, self.root, None if self.unit.is_local else self.unit.aws_account()
        )

    def uri(self, *parts: str) -> str:
        """URI of a file in this run's directory."""
        return join_uri(self.root, *parts)
