"""Command line for sciflow's blocks.

``python -m blocks save-unit OUTPUTS.json`` saves a ComputeUnit made from
``terraform output -json`` of an environment, under the unit's own name, with its
AwsCredentials and S3Bucket blocks and its work pools (``blocks.registration``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from blocks.registration import register_unit
from tasks.errors import InputError


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the command; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m blocks", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    save = commands.add_parser("save-unit", help="save a ComputeUnit from terraform outputs")
    save.add_argument("outputs", type=Path, help="file written by `terraform output -json`")
    save.add_argument(
        "--name", help="the unit meant: refuse outputs naming another (default: their unit_name)"
    )
    save.add_argument("--overwrite", action="store_true", help="replace a saved unit")
    args = parser.parse_args(argv)

    try:
        saved = register_unit(args.outputs, args.name, overwrite=args.overwrite)
    except InputError as exc:
        print(f"error: {args.outputs}: {exc}", file=sys.stderr)
        return 2
    unit = saved.unit
    print(
        f"saved ComputeUnit {unit.name!r} ({unit.mode}, {unit.region}) with blocks "
        f"{saved.credentials_block!r} and work pools {', '.join(saved.pools) or '(none)'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
