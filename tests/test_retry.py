import pytest
from prefect import flow, task

from tasks.errors import InputError, TransientError
from tasks.retry import transient_retries


def test_transient_faults_are_retried_until_success():
    calls = []

    @task(**transient_retries(delays_s=[0, 0, 0]))
    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("ThrottlingException (HTTP 400)")
        return "done"

    @flow
    def run() -> str:
        return flaky()

    assert run() == "done"
    assert len(calls) == 3


def test_bad_input_is_never_retried():
    calls = []

    @task(**transient_retries(delays_s=[0, 0, 0]))
    def strict() -> None:
        calls.append(1)
        raise InputError("signal has shape (3,); expected (x, y, coils)")

    @flow
    def run() -> None:
        strict()

    with pytest.raises(InputError, match="expected"):
        run()
    assert len(calls) == 1


def test_retry_budget_is_the_number_of_delays():
    options = transient_retries()
    assert options["retries"] == len(options["retry_delay_seconds"]) == 4
    assert options["retry_jitter_factor"] > 0
