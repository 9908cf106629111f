"""Bloch simulation and MPI launchers."""
