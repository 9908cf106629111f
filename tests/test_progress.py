import logging

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from tasks.progress import Progress, artifact_key, markdown_table, publish_summary


def test_progress_logs_count_total_and_rate(caplog):
    caplog.set_level(logging.INFO, logger="sciflow")
    with Progress(total=4, what="replicas", every_s=0.0) as bar:
        for _ in range(4):
            bar.advance()
    lines = [r.getMessage() for r in caplog.records if r.name == "sciflow"]
    assert lines[-1].startswith("replicas: 4/4 (100.0%), ")
    assert lines[-1].endswith("replicas/s")
    assert len(lines) == 4


def test_progress_throttles_log_lines_but_always_reports_the_end(caplog):
    caplog.set_level(logging.INFO, logger="sciflow")
    with Progress(total=1000, what="spins", every_s=3600) as bar:
        for _ in range(1000):
            bar.advance()
    lines = [r.getMessage() for r in caplog.records if r.name == "sciflow"]
    assert len(lines) == 1
    assert lines[0].startswith("spins: 1000/1000")


def test_progress_rejects_a_negative_total():
    with pytest.raises(ValueError, match="total=-1; expected a count >= 0"):
        Progress(total=-1)


def test_progress_and_summary_artifacts_appear_in_a_flow_run():
    @flow
    def counting() -> str:
        with Progress(total=3, what="steps", key="Counting Steps", every_s=0.0) as bar:
            for _ in range(3):
                bar.advance()
        publish_summary("Counting", [{"output": "a.npy", "median": 1.5}], key="counting-summary")
        from prefect.runtime import flow_run

        return flow_run.get_id()

    run_id = counting()
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    by_type = {a.type: a for a in artifacts}
    assert by_type["progress"].data == 100.0
    assert by_type["progress"].key == "counting-steps"
    assert "| a.npy | 1.5 |" in by_type["markdown"].data


def test_artifact_keys_are_made_valid():
    assert artifact_key("Preflight of", "Unit_1!") == "preflight-of-unit-1"


def test_markdown_table_escapes_pipes_and_unions_columns():
    table = markdown_table([{"a": "x|y"}, {"b": 2}])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x\\|y |  |", "|  | 2 |"]


def test_sciflow_log_level_setting_filters_progress_outside_runs(monkeypatch, caplog):
    from tasks.settings import get_settings

    monkeypatch.setenv("SCIFLOW_LOG_LEVEL", "WARNING")
    get_settings.cache_clear()
    caplog.set_level(logging.DEBUG)
    with Progress(total=2, what="quiet", every_s=0.0) as bar:
        bar.advance(2)
    assert not [r for r in caplog.records if r.name == "sciflow"]
    logging.getLogger("sciflow").setLevel(logging.NOTSET)


def test_summary_images_are_inline_pngs_a_browser_can_load():
    import base64
    import re

    from tasks.progress import INLINE_IMAGE_LIMIT, inline_images

    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    text = publish_summary("T", [{"a": 1}], key="t", images={"SNR": png})
    found = re.search(r"!\[SNR\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert found, text
    assert base64.b64decode(found.group(1)) == png
    big = b"\x89PNG" + b"\x00" * INLINE_IMAGE_LIMIT
    assert inline_images({"mask": big}) == "_mask: 512 KiB, too large to show here_"
    with pytest.raises(ValueError, match="image 'G' is not a PNG; expected PNG bytes"):
        inline_images({"G": b"GIF89a"})
