"""What a run may spend: refused at the start of a flow, before anything is launched.

Two limits of a ``ComputeUnit``:

- ``spending_cap_usd``, the most one run may spend: a run whose estimate (its size class's
  ``price_usd_per_hour`` times its time limit and node count) exceeds it is refused. The
  price is an estimate (``blocks.compute_unit.DEFAULT_PRICE_USD_PER_HOUR``), not a bill.
- ``budget_usd``, the unit's monthly budget: the AWS Budget ``sciflow-<unit>`` that
  Terraform's monitoring module creates. Once AWS reports its actual spend at or over its
  limit, new work on the unit is refused. Cleanup flows are not refused: they end spending.

Local units cost nothing and are never refused.
"""

from __future__ import annotations

from blocks.compute_unit import ComputeUnit, SizeClass
from tasks.aws.clients import call, client, error_code
from tasks.errors import InputError, SciflowError

# AWS Budgets is a global service with one endpoint, in us-east-1.
BUDGETS_REGION = "us-east-1"


class BudgetExhausted(InputError):
    """The unit's AWS Budget is spent: no new work until it resets or is raised."""


def check_spending(
    unit: ComputeUnit,
    size: SizeClass | None = None,
    seconds: float | None = None,
    nodes: int = 1,
) -> None:
    """Refuse a run that would exceed the unit's spending cap, or a unit whose budget is spent.

    Args:
        unit: The unit the run is on.
        size: The run's size class; without it only the budget is checked (the flow checks
            the run's estimate with ``check_run_cost`` once it knows the class).
        seconds: The run's time limit; the class's wall time if omitted.
        nodes: Containers (Batch nodes) the run holds at once.

    Raises:
        InputError: The estimate exceeds ``spending_cap_usd``.
        BudgetExhausted: The unit's AWS Budget has no money left.
    """
    if size is not None:
        check_run_cost(unit, size, seconds, nodes)
    check_budget(unit)


def check_run_cost(
    unit: ComputeUnit, size: SizeClass, seconds: float | None = None, nodes: int = 1
) -> float:
    """The run's estimated dollars; refused if over ``unit.spending_cap_usd``.

    Raises:
        InputError: The estimate exceeds the cap.
    """
    if unit.is_local:
        return 0.0
    seconds = float(unit.size_limits(size).wall_time_s if seconds is None else seconds)
    estimate = unit.estimated_cost_usd(size, seconds, nodes)
    cap = unit.spending_cap_usd
    if cap is not None and estimate > cap:
        price = unit.limits.price_usd_per_hour(size)
        raise InputError(
            f"run estimate ${estimate:.2f} ({nodes} x {size} at ${price:g}/h for "
            f"{seconds / 3600:.2f} h) exceeds unit {unit.name!r}'s spending_cap_usd={cap:g}; "
            "expected fewer nodes, a shorter time limit or a smaller size class "
            "(limits.<class>), or a higher cap: nothing was started"
        )
    return estimate


def check_budget(unit: ComputeUnit) -> None:
    """Refuse new work on a unit whose AWS Budget's actual spend has reached its limit.

    Raises:
        BudgetExhausted: Actual spend >= the budget's limit.
        InputError: The unit names a budget that AWS does not have (the monitoring module
            was not applied?): refused rather than run unchecked.
    """
    if unit.is_local or unit.budget_usd is None:
        return
    account = unit.aws_account()
    identity = call(client("sts", account).get_caller_identity, "read the unit's account id")
    budgets = client("budgets", account, region=BUDGETS_REGION)
    name = unit.budget_name
    try:
        found = call(
            budgets.describe_budget,
            f"read AWS Budget {name!r}",
            AccountId=identity["Account"],
            BudgetName=name,
        )
    except SciflowError as exc:
        if error_code(exc) != "NotFoundException":
            raise
        raise InputError(
            f"unit {unit.name!r} has budget_usd={unit.budget_usd:g} but AWS has no budget "
            f"{name!r} in account {identity['Account']}; expected the one Terraform's "
            "monitoring module creates: no new work until it exists"
        ) from None
    budget = found["Budget"]
    limit = float(budget["BudgetLimit"]["Amount"])
    spent = float(budget.get("CalculatedSpend", {}).get("ActualSpend", {}).get("Amount", 0))
    if spent >= limit:
        raise BudgetExhausted(
            f"unit {unit.name!r} has spent ${spent:.2f} of its ${limit:.2f} budget "
            f"({name!r}): no new work until the budget period resets or its limit (budget_usd "
            "in Terraform) is raised"
        )
