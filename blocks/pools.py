"""Create or update every work pool sciflow uses, with its concurrency limits: ``make pools``.

``python -m blocks.pools`` (with ``PREFECT_API_URL`` set) applies ``sciflow-local``, the
``process`` pool of the built-in ``local`` unit, then the pools of every ``ComputeUnit`` saved
on the server (``blocks.registration.apply_pools``): each pool's concurrency limit and a work
queue per size class it serves, limited to ``limits.<class>.concurrent_runs``. Blocks are read,
never saved. Running it again changes nothing that is already right.
"""

from __future__ import annotations

import sys

from prefect.client.orchestration import get_client

from blocks.compute_unit import LOCAL_UNIT, ComputeUnit, load_unit, local_unit
from blocks.registration import PoolPlan, apply_pools
from tasks.errors import InputError


def saved_units() -> list[str]:
    """Names of the ``ComputeUnit`` blocks saved on the server, sorted."""
    slug = ComputeUnit.get_block_type_slug()
    with get_client(sync_client=True) as client:
        documents = client.read_block_documents_by_type(slug, include_secrets=False)
    # A block named `local` is never loaded: `local` is the built-in unit (load_unit).
    names = {doc.name for doc in documents if doc.name and not doc.is_anonymous}
    return sorted(names - {LOCAL_UNIT})


def apply_all() -> dict[str, list[PoolPlan]]:
    """Apply the local unit's pools and every saved unit's; returns each unit's pools.

    Raises:
        InputError: A saved unit is invalid or its pools are refused (naming the unit); the
            units before it were applied.
    """
    applied = {local_unit().name: apply_pools(local_unit())}
    for name in saved_units():
        try:
            applied[name] = apply_pools(load_unit(name))
        except InputError as exc:
            raise InputError(f"compute unit {name!r}: {exc}") from None
    return applied


def main() -> int:
    """Apply every pool and print one line per pool; exit 1 with the reason on bad input."""
    try:
        applied = apply_all()
    except InputError as exc:
        print(f"make pools: {exc}", file=sys.stderr)
        return 1
    for unit, pools in applied.items():
        for pool in pools:
            queues = ", ".join(f"{size} {limit}" for size, limit in pool.limits.items())
            print(
                f"unit {unit!r}: {pool.type} pool {pool.name!r}, at most "
                f"{pool.concurrency_limit} runs (queues: {queues})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
