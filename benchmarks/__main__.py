"""Run every benchmark and print one table: ``python -m benchmarks [--quick] [--repeats N]``.

Each ``benchmarks/<name>.py`` that defines ``main(argv)`` runs in its own subprocess
(``python -m benchmarks.<name>``) from the repository root, so one crash does not stop the rest.
Then the ``benchmarks/results/<name>.json`` files those runs wrote are read back into one table.
"""

from __future__ import annotations

import argparse
import ast
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks._common import REPO_ROOT, RESULTS_DIR, format_table, metric_rows

PACKAGE_DIR = Path(__file__).resolve().parent


def benchmark_names() -> list[str]:
    """Modules in this package with a top-level ``def main(argv...)``, found without importing."""
    names = []
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        if path.name.startswith("_"):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        if any(
            isinstance(node, ast.FunctionDef) and node.name == "main" and node.args.args
            for node in tree.body
        ):
            names.append(path.stem)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller cases, each under a minute")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per benchmark")
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    args = parser.parse_args(argv)

    names = args.names or benchmark_names()
    forwarded = (["--quick"] if args.quick else []) + (
        ["--repeats", str(args.repeats)] if args.repeats is not None else []
    )
    rows: list[list[str]] = []
    failed: list[str] = []
    for name in names:
        print(f"== {name}", flush=True)
        started = time.time()
        code = subprocess.run(  # noqa: S603 - our own interpreter and module, fixed argv
            [sys.executable, "-m", f"benchmarks.{name}", *forwarded], cwd=REPO_ROOT, check=False
        ).returncode
        result = RESULTS_DIR / f"{name}.json"
        fresh = result.exists() and result.stat().st_mtime >= started
        if code != 0 or not fresh:
            failed.append(f"{name} (exit {code}{'' if fresh else ', no results'})")
            continue
        rows.extend(metric_rows(name, json.loads(result.read_text()).get("metrics", {})))

    print("\nAll benchmarks")
    print(format_table(rows) if rows else "(no results)")
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
