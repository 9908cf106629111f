"""Command line for sciflow's blocks.

``python -m blocks save-unit OUTPUTS.json`` saves a ComputeUnit made from
``terraform output -json`` of an environment, under the unit's own name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from blocks.compute_unit import ComputeUnit
from tasks.errors import InputError


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m blocks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("save-unit", help="save a ComputeUnit from terraform outputs")
    save.add_argument("outputs", type=Path, help="file written by `terraform output -json`")
    save.add_argument("--overwrite", action="store_true", help="replace a saved unit")
    args = parser.parse_args(argv)

    try:
        outputs = json.loads(args.outputs.read_text())
        unit = ComputeUnit.from_terraform_output(outputs)
        unit.save(unit.name, overwrite=args.overwrite)
    except (OSError, json.JSONDecodeError, InputError) as exc:
        print(f"error: {args.outputs}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # Prefect: a block with that name exists
        print(f"error: {exc}; pass --overwrite to replace it", file=sys.stderr)
        return 2
    print(f"saved ComputeUnit {unit.name!r} ({unit.mode}, {unit.region})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
