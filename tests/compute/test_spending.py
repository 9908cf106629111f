"""Spending cap per run and the unit's AWS Budget, against moto's server on 127.0.0.1."""

from __future__ import annotations

from uuid import uuid4

import pytest

from blocks.compute_unit import DEFAULT_PRICE_USD_PER_HOUR, ComputeUnit, SizeLimits, UnitLimits
from flows.model_upload import model_upload
from flows.multinode_simulation import multinode_simulation
from tasks.aws.clients import client
from tasks.compute.spending import BudgetExhausted, check_budget, check_run_cost, check_spending
from tasks.errors import InputError

ACCOUNT = "123456789012"  # moto's


def aws_unit(**fields: object) -> ComputeUnit:
    name = f"spend-{uuid4().hex[:8]}"
    values = {
        "name": name,
        "platform": "aws",
        "region": "us-east-1",
        "storage_root": f"s3://{name}/runs",
    } | fields
    return ComputeUnit(**values)


def make_budget(unit: ComputeUnit, limit: float, spent: float) -> None:
    client("budgets", region="us-east-1").create_budget(
        AccountId=ACCOUNT,
        Budget={
            "BudgetName": unit.budget_name,
            "BudgetLimit": {"Amount": str(limit), "Unit": "USD"},
            "TimeUnit": "MONTHLY",
            "BudgetType": "COST",
            "CalculatedSpend": {"ActualSpend": {"Amount": str(spent), "Unit": "USD"}},
        },
    )


def test_a_run_estimated_over_the_cap_is_refused_in_one_line():
    """Guards against spending_cap_usd being stored and never read: a multinode run of
    4 nodes for 12 h at the default $4.61/h (~$221) must not start under a $100 cap."""
    unit = aws_unit(spending_cap_usd=100.0)
    with pytest.raises(InputError) as caught:
        check_spending(unit, "multinode", 12 * 3600, nodes=4)
    message = str(caught.value)
    assert "run estimate $221.28 (4 x multinode at $4.61/h for 12.00 h)" in message
    assert "spending_cap_usd=100" in message
    assert "\n" not in message
    assert check_run_cost(unit, "multinode", 12 * 3600, nodes=1) == pytest.approx(55.32)


def test_the_estimate_uses_the_units_own_price_and_the_class_wall_time():
    """Guards against a unit's price_usd_per_hour being ignored for the default estimate."""
    limits = UnitLimits(
        small=SizeLimits(
            vcpus=4, memory_mib=8192, wall_time_s=7200, concurrent_runs=1, price_usd_per_hour=3
        )
    )
    unit = aws_unit(limits=limits, spending_cap_usd=5.0)
    with pytest.raises(InputError, match=r"\$6.00 \(1 x small at \$3/h for 2.00 h\)"):
        check_run_cost(unit, "small")
    assert check_run_cost(unit, "large", 3600) == DEFAULT_PRICE_USD_PER_HOUR["large"]


def test_local_units_and_units_without_a_cap_are_not_refused():
    """Guards against refusing runs that cost nothing (local) or have no cap."""
    local = ComputeUnit(name="spend-local", spending_cap_usd=0.0)
    assert check_run_cost(local, "gpu", 3600) == 0.0
    assert check_run_cost(aws_unit(), "gpu", 3600) == pytest.approx(1.212)


def test_an_exhausted_budget_refuses_new_work(aws):
    """Guards against flows starting work on a unit whose AWS Budget is spent."""
    unit = aws_unit(budget_usd=100.0)
    make_budget(unit, limit=100.0, spent=100.0)
    with pytest.raises(BudgetExhausted) as caught:
        check_budget(unit)
    assert f"spent $100.00 of its $100.00 budget ('sciflow-{unit.name}')" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_budget_with_money_left_lets_work_start(aws):
    """Guards against refusing a unit whose budget is not spent (spend below the limit)."""
    unit = aws_unit(budget_usd=100.0)
    make_budget(unit, limit=100.0, spent=99.99)
    check_budget(unit)


def test_a_missing_budget_is_refused_rather_than_unchecked(aws):
    """Guards against a unit with budget_usd running unchecked when the budget is absent."""
    unit = aws_unit(budget_usd=100.0)
    with pytest.raises(InputError, match=rf"AWS has no budget 'sciflow-{unit.name}'"):
        check_budget(unit)


def _bucket_keys(unit: ComputeUnit) -> list[str]:
    """Keys in the unit's bucket but the cleanup records the end hook writes for every run,
    refused ones included."""
    bucket = unit.storage_root.removeprefix("s3://").split("/")[0]
    listed = client("s3").list_objects_v2(Bucket=bucket)
    keys = [item["Key"] for item in listed.get("Contents", [])]
    return [key for key in keys if not key.endswith("/cleanup_validation.json")]


def test_the_simulation_flow_refuses_a_run_over_the_cap_before_writing(aws):
    """Guards against the check running after the flow has written or launched anything."""
    unit = aws_unit(spending_cap_usd=10.0)
    unit.save(unit.name, overwrite=True)
    client("s3").create_bucket(Bucket=unit.name)
    with pytest.raises(InputError, match=r"2 x multinode .* spending_cap_usd=10"):
        multinode_simulation(unit=unit.name, nodes=2)
    assert _bucket_keys(unit) == []


def test_the_upload_flow_refuses_new_work_on_an_exhausted_budget(aws, tmp_path):
    """Guards against a flow that uses a unit skipping the budget check."""
    unit = aws_unit(budget_usd=50.0)
    unit.save(unit.name, overwrite=True)
    client("s3").create_bucket(Bucket=unit.name)
    make_budget(unit, limit=50.0, spent=75.0)
    (tmp_path / "model.bin").write_bytes(b"weights")
    with pytest.raises(BudgetExhausted, match=r"spent \$75.00 of its \$50.00"):
        model_upload(source=str(tmp_path / "model.bin"), model_name="m", unit=unit.name)
    assert _bucket_keys(unit) == []
