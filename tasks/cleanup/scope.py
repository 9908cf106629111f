"""What one cleanup covers: parts a caller picks by name (a multi-select in the Prefect UI).

- ``local``: what the run left on this machine and in its run directory: scratch, half-written
  files, and the processes its launch record holds.
- ``intermediates``: every version under the run's ``tmp/`` prefix.
- ``cloud``: what its launch record holds, then every cloud resource tagged with its run id.
- ``all``: the three.

No part reaches beyond the run: files under its own directories, resources by its exact tag.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal, get_args

from tasks.errors import InputError

Part = Literal["local", "intermediates", "cloud"]
Scope = Literal["all", "local", "intermediates", "cloud"]
PARTS: frozenset[Part] = frozenset(get_args(Part))


def resolve_scope(scope: Iterable[str]) -> frozenset[Part]:
    """The parts ``scope`` names (``"all"``: every part).

    Raises:
        InputError: ``scope`` is empty or names an unknown part (checked before anything is
            touched).
    """
    names = [scope] if isinstance(scope, str) else list(scope)
    if unknown := sorted({str(n) for n in names} - set(get_args(Scope))):
        raise InputError(
            f"scope names {unknown}; expected some of {list(get_args(Scope))}: nothing was touched"
        )
    if not names:
        raise InputError(
            f"scope is empty: nothing would be cleaned; expected some of {list(get_args(Scope))}"
        )
    return PARTS if "all" in names else frozenset(names)  # type: ignore[arg-type]
