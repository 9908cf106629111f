"""sciflow's Prefect worker types, registered when Prefect imports this module.

Prefect imports it through the ``prefect.collections`` entry point in ``pyproject.toml``, so
``prefect worker start --type aws-batch`` and ``--type sciflow-ecs`` find these workers.
"""

from tasks.compute.batch_worker import AwsBatchWorker
from tasks.compute.ecs_worker import SciflowEcsWorker

__all__ = ["AwsBatchWorker", "SciflowEcsWorker"]
