"""A local run's time limit: the flow's timeout_s, bounded by the unit's size-class wall time."""

from __future__ import annotations

import math

import pytest

from blocks.compute_unit import ComputeUnit, local_unit
from tasks.compute.timeouts import local_timeout_s, timed_out
from tasks.errors import InputError


def test_without_a_parameter_the_limit_is_the_classs_wall_time():
    unit = local_unit()
    assert local_timeout_s(unit, "large", None) == unit.size_limits("large").wall_time_s
    assert local_timeout_s(unit, "small", None) == unit.size_limits("small").wall_time_s


def test_a_parameter_lowers_the_limit():
    assert local_timeout_s(local_unit(), "large", 0.25) == 0.25


@pytest.mark.parametrize("value", [0, -1, math.nan, 6 * 3600 + 1])
def test_a_limit_outside_zero_to_the_wall_time_is_refused_naming_both(value):
    with pytest.raises(InputError, match=r"timeout_s=.*: expected seconds > 0 .*\(21600 s\)"):
        local_timeout_s(local_unit(), "large", value)


def test_a_limit_on_an_aws_unit_is_refused_pointing_at_the_units_wall_time():
    unit = ComputeUnit(name="lab", platform="aws", region="eu-west-1", storage_root="s3://b/r")
    assert local_timeout_s(unit, "large", None) == unit.size_limits("large").wall_time_s
    with pytest.raises(InputError, match=r"AWS unit 'lab'.*limits\.large\.wall_time_s"):
        local_timeout_s(unit, "large", 60)


def test_the_timeout_error_says_which_limit_stopped_the_run():
    asked = str(timed_out("the local MPI simulation", 0.5, "large", 0.5))
    assert asked.startswith("the local MPI simulation ran past its limit of 0.5 s")
    assert "(the flow's timeout_s)" in asked
    default = str(timed_out("ddp training", 21600, "large", None))
    assert "the unit's 'large' wall time" in default
