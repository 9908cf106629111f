"""What a run leaves in Prefect's result storage: its flow's result, never a patient's arrays."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

from flows.mr_reconstruction import mr_reconstruction, noise_statistics, snr_for_slices
from tasks.mr.io import write_mrd
from tasks.mr.phantom import make_phantom, phantom_acquisition

# Modules whose objects are arrays; a pickle naming one holds (or rebuilds) an array.
ARRAY_MODULES = (b"numpy", b"torch")


def _payload(stored: bytes) -> bytes:
    """The pickle inside one stored result: a JSON result record, or a bare base64 pickle."""
    try:
        record = json.loads(stored)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return base64.b64decode(stored)
    return base64.b64decode(record["result"])


@pytest.fixture
def result_storage(tmp_path: Path) -> Path:
    storage = tmp_path / "prefect-results"
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}):
        yield storage


def test_a_reconstruction_persists_its_flow_result_and_no_array(result_storage, tmp_path):
    phantom = make_phantom(16, 16, 2, amplitude=40.0, correlation=0.3, seed=5)
    signal, noise = phantom_acquisition(phantom, slices=2, noise_samples=16 * 50, seed=6)
    mrd = write_mrd(tmp_path / "p.h5", signal, noise, fov_mm=(256.0, 256.0, 5.0), dwell_s=5e-6)

    result = mr_reconstruction(
        signal=str(mrd), options={"method": "ac", "recon": "b1"}, output=str(tmp_path / "out")
    )

    stored = {path.name: _payload(path.read_bytes()) for path in result_storage.iterdir()}
    with_arrays = [
        name for name, payload in stored.items() if any(m in payload for m in ARRAY_MODULES)
    ]
    assert with_arrays == [], f"array-holding results persisted: {with_arrays}"
    # What is kept is the flow's result (URIs and numbers), readable from another process.
    assert any(result.snr.encode() in payload for payload in stored.values()), sorted(stored)


def test_array_returning_tasks_never_persist_whatever_the_settings_say():
    # Prefect's settings come from wherever a flow starts (a user's profile may turn
    # persistence on), so these tasks say it themselves.
    assert noise_statistics.persist_result is False
    assert snr_for_slices.persist_result is False
