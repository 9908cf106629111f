"""Benchmarks: time sciflow's code against a named baseline in the same run.

Run one with ``python -m benchmarks.<name> [--quick] [--repeats N]`` or all of them with
``python -m benchmarks [--quick]``. Each writes ``benchmarks/results/<name>.json``. They are not
tests: a slow machine never fails CI.
"""
