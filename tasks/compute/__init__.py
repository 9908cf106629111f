"""Compute units, resource tags and task runners (local Dask or Dask on Fargate)."""
