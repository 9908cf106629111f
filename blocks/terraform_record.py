"""The Terraform settings a compute unit was applied with, so it can be destroyed alike."""

from __future__ import annotations

from typing import Any, Literal

from prefect.blocks.core import Block
from pydantic import Field


class TerraformRecord(Block):
    """How ``create_compute_unit`` applied a unit's environment: no secrets, only settings.

    Saved as ``sciflow-terraform-<unit>``; ``delete_compute_unit`` destroys with it.

    Example:
        ```python
        from blocks.terraform_record import TerraformRecord

        record = TerraformRecord.load("BLOCK_NAME")
        ```
    """

    _block_type_name = "sciflow Terraform Record"
    _block_type_slug = "sciflow-terraform-record"

    environment: Literal["mode1", "mode2"] = Field(
        description="The environment applied: mode1 (managed) or mode2 (the user's account)."
    )
    variables: dict[str, Any] = Field(
        default_factory=dict, description="Terraform variables written to the -var-file."
    )
    backend: dict[str, str] = Field(
        default_factory=dict, description="Remote state settings passed as -backend-config."
    )

    def settings(self) -> dict[str, Any]:
        """The record as plain data, to compare with another apply's."""
        return {
            "environment": self.environment,
            "variables": self.variables,
            "backend": self.backend,
        }
