"""Process settings read from ``SCIFLOW_*`` environment variables.

Settings are process knobs; blocks hold shared named configuration; flow parameters hold
per-run choices. This is the only module that reads the environment for sciflow.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tasks.errors import InputError, describe_validation

ENV_PREFIX = "SCIFLOW_"
# The run's channel token (tasks.compute.channel): a per-run secret handed to a run's own
# processes, read fresh each time rather than kept with the cached settings.
RUN_TOKEN_VARIABLE = f"{ENV_PREFIX}RUN_TOKEN"


class Settings(BaseSettings):
    """sciflow's process settings; each field is ``SCIFLOW_<FIELD>`` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore", frozen=True
    )

    storage_root: str = Field(
        ".sciflow",
        description=(
            "Where runs write when their compute unit names no storage root: a local path, "
            "file:// URI or s3://bucket/prefix."
        ),
        min_length=1,
    )
    default_unit: str = Field(
        "local",
        description="Compute unit a flow uses when its `unit` parameter is not given.",
        pattern=r"^[a-z0-9][a-z0-9-]*$",
    )
    scratch_root: Path = Field(
        Path(tempfile.gettempdir()) / "sciflow-scratch",
        description="Local scratch space for temporary files; each run's is swept at its end.",
    )
    model_cache: Path = Field(
        Path.home() / ".cache" / "sciflow" / "models",
        description=(
            "Where registry loads keep verified model versions, one directory per manifest digest."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO",
        description=(
            "Level of sciflow's logger outside Prefect runs (inside, Prefect's applies); "
            "DEBUG also lets Dask's INFO lines through."
        ),
    )
    part_size_mib: int = Field(
        16, ge=5, le=5120, description="S3 multipart part size and threshold, in MiB."
    )
    transfer_concurrency: int = Field(
        8, ge=1, le=64, description="Parallel S3 part transfers per file."
    )
    aws_retry_mode: Literal["standard", "adaptive"] = Field(
        "adaptive",
        description=(
            "botocore's retry mode for every AWS call: `standard` (backoff with jitter) or "
            "`adaptive` (standard plus client-side rate limiting)."
        ),
    )
    aws_max_attempts: int = Field(
        8,
        ge=1,
        le=20,
        description="Attempts per AWS call, the first included, before a throttle or 5xx fails it.",
    )


@cache
def get_settings() -> Settings:
    """The process's settings, read once.

    Raises:
        InputError: A ``SCIFLOW_*`` variable has a value the field does not accept; the
            message names the variable, the value and what is expected.
    """
    try:
        return Settings()
    except ValidationError as exc:
        raise InputError(describe_validation(exc, _variable)) from None


def _variable(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper().replace('.', '__')}"


def run_token_value(env: Mapping[str, str] | None = None) -> str:
    """``SCIFLOW_RUN_TOKEN`` from ``env`` (this process's environment if None), else ""."""
    return (os.environ if env is None else env).get(RUN_TOKEN_VARIABLE, "")


def disable_telemetry() -> None:
    """Opt this process and its children out of Prefect's client telemetry.

    The server's analytics are off in pyproject.toml, which Prefect reads only in the
    repository root; this covers flows started from anywhere else. ``DO_NOT_TRACK`` (the
    cross-tool convention) covers Prefect's client; the temporary server a flow starts when no
    API is configured reads only its own setting.
    """
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
