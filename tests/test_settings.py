from pathlib import Path

import pytest

from tasks.errors import InputError
from tasks.settings import Settings, get_settings


def test_defaults_need_no_configuration(monkeypatch):
    for name in ("SCIFLOW_STORAGE_ROOT", "SCIFLOW_SCRATCH_ROOT"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.storage_root == ".sciflow"
    assert settings.default_unit == "local"
    assert settings.log_level == "INFO"
    assert settings.part_size_mib == 16


def test_values_come_from_sciflow_prefixed_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("SCIFLOW_STORAGE_ROOT", "s3://bucket/runs")
    monkeypatch.setenv("SCIFLOW_DEFAULT_UNIT", "lab-aws")
    monkeypatch.setenv("SCIFLOW_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("SCIFLOW_PART_SIZE_MIB", "32")
    monkeypatch.setenv("SCIFLOW_SCRATCH_ROOT", str(tmp_path))
    get_settings.cache_clear()
    settings = get_settings()
    assert settings.storage_root == "s3://bucket/runs"
    assert settings.default_unit == "lab-aws"
    assert settings.log_level == "DEBUG"
    assert settings.part_size_mib == 32
    assert settings.scratch_root == Path(tmp_path)


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SCIFLOW_PART_SIZE_MIB", "abc", "valid integer"),
        ("SCIFLOW_PART_SIZE_MIB", "2", "greater than or equal to 5"),
        ("SCIFLOW_LOG_LEVEL", "LOUD", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
        ("SCIFLOW_DEFAULT_UNIT", "Lab AWS", "should match pattern"),
    ],
)
def test_a_malformed_setting_is_one_line_naming_variable_value_and_rule(
    monkeypatch, variable, value, expected
):
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    with pytest.raises(InputError) as caught:
        get_settings()
    message = str(caught.value)
    assert "\n" not in message
    assert f"{variable}={value!r}" in message
    assert expected in message


def test_only_the_settings_module_reads_sciflow_variables():
    """Launchers may pass their environment on to children; SCIFLOW_* is read in one place."""
    root = Path(__file__).resolve().parents[1]
    readers = [
        f"{path.relative_to(root).as_posix()}:{number}"
        for folder in ("flows", "tasks", "blocks")
        for path in (root / folder).rglob("*.py")
        if path.name != "settings.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "SCIFLOW_" in line and ("environ" in line or "getenv" in line)
    ]
    assert readers == []


def test_importing_flows_opts_out_of_telemetry(monkeypatch):
    import importlib

    import flows

    monkeypatch.delenv("DO_NOT_TRACK", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_ANALYTICS_ENABLED", raising=False)
    importlib.reload(flows)
    import os

    assert os.environ["DO_NOT_TRACK"] == "1"
    # A script run outside the repository starts a temporary server that only reads this.
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
