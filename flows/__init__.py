"""Prefect flows; each module's @flow is a deployment entrypoint (``flows/<name>.py:<flow>``)."""

from tasks.settings import disable_telemetry

disable_telemetry()
