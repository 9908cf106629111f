"""Prefect flows; each module's @flow is a deployment entrypoint (``flows/<name>.py:<flow>``)."""
