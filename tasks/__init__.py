"""Prefect tasks and the plain functions they wrap, by domain.

Numerics (``tasks.mr``, ``tasks.simulation``) import neither Prefect, boto3 nor torch;
``tasks.storage``, ``tasks.compute`` and ``tasks.cleanup`` hold the machinery every flow uses.
"""
