"""As a scientist in the Prefect UI: a custom run of mr-reconstruction from the form, in Chromium.

Debian's ``chromium`` driven by the ``playwright`` package (``make install`` installs both;
Playwright's own browser download cannot be fetched here). Chromium sends anything beyond
loopback to a closed port: even with its background services off it calls Google's account
service, which must not land in the shared recording proxy that other e2e tests check.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.conftest import LOOPBACK_HOSTS, POLL_S, PrefectServer, Service, free_port

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium calls out to Google at start, and the closed network refuses it.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEPLOYMENT = "mr-reconstruction/local"
TRAINING_DEPLOYMENT = "distributed-training/local"
RUN_TIMEOUT_S = 180.0
UI_TIMEOUT_MS = 60_000
# Where a screenshot is copied for CI to keep, besides the test's tmp dir (if set).
ARTIFACTS_ENV = "SCIFLOW_TEST_ARTIFACTS"


def browser_missing() -> str | None:
    """Why the UI cannot be driven here, or None."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} not found (make install: apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (make install: the dev extras)"
    return None


@pytest.fixture(scope="module")
def browser_page(prefect_server: PrefectServer, tmp_path_factory: pytest.TempPathFactory):
    """A Chromium page with a fresh profile, non-loopback traffic sent to a closed port."""
    if reason := browser_missing():
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            proxy={"server": f"http://127.0.0.1:{free_port()}", "bypass": LOOPBACK_HOSTS},
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield context.new_page()
        finally:
            context.close()


def deploy(server: PrefectServer, name: str) -> dict[str, Any]:
    """``prefect deploy --name <name>``; the deployment as the API returns it."""
    server.cli("deploy", "--name", name, "--prefect-file", "deployments/prefect.yaml")
    with httpx.Client(trust_env=False, timeout=10) as client:
        response = client.get(f"{server.api_url}/deployments/name/{name}")
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def mr_deployed(prefect_server: PrefectServer, process_worker: Service) -> dict[str, Any]:
    return deploy(prefect_server, DEPLOYMENT)


@pytest.fixture(scope="module")
def training_deployed(prefect_server: PrefectServer, process_worker: Service) -> dict[str, Any]:
    return deploy(prefect_server, TRAINING_DEPLOYMENT)


def start_run(server: PrefectServer, deployment: dict[str, Any], parameters: dict) -> str:
    """A flow run of ``deployment`` created through the API (the worker picks it up); its id.

    Plain HTTP: Playwright's sync API holds an event loop here, which turns Prefect's
    ``run_deployment`` into an un-awaited coroutine.
    """
    with httpx.Client(trust_env=False, timeout=10) as client:
        response = client.post(
            f"{server.api_url}/deployments/{deployment['id']}/create_flow_run",
            json={"parameters": parameters},
        )
    response.raise_for_status()
    return response.json()["id"]


def ui_url(server: PrefectServer, path: str) -> str:
    return server.api_url.removesuffix("/api") + path


def wait_for_final(server: PrefectServer, flow_run_id: str) -> dict[str, Any]:
    """Poll the API until the flow run is final, or fail at the deadline."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with httpx.Client(trust_env=False, timeout=10) as client:
        while True:
            run = client.get(f"{server.api_url}/flow_runs/{flow_run_id}").json()
            if run["state"] and run["state"]["type"] in {
                "COMPLETED",
                "FAILED",
                "CRASHED",
                "CANCELLED",
            }:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"flow run {flow_run_id} still {run['state_name']}")
            time.sleep(POLL_S)


def submit(page: Any, tries: int = 3) -> Any:
    """Click Submit; the server's response to the flow run it creates.

    A 503 is the Prefect server's "retry this" (SQLite busy under load, logged by the server
    as a retryable error); the UI shows "Something went wrong" and keeps the form, and the
    scientist clicks Submit again, as this does. Prefect's Python client retries those itself.
    """
    for _ in range(tries):
        with page.expect_response(
            lambda r: r.request.method == "POST" and r.url.endswith("/create_flow_run")
        ) as created:
            page.get_by_role("button", name="Submit").click()
        if created.value.status != 503:
            break
    return created.value


def form_field(page: Any, label: str) -> Any:
    """The innermost form property whose label reads ``label`` (e.g. ``signal (Optional)``).

    An options group is itself a property holding its fields' labels: the last match is the
    field, not the group.
    """
    labels = page.locator(".schema-form-property__label", has_text=label)
    return page.locator(".schema-form-property").filter(has=labels).last


def keep_screenshot(page: Any, path: Path) -> Path:
    page.screenshot(path=str(path), full_page=True)
    if target := os.environ.get(ARTIFACTS_ENV):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


def test_a_custom_run_from_the_form_completes_and_shows_its_snr_map(
    prefect_server, mr_deployed, browser_page, tmp_path
):
    from tasks.mr.phantom import make_phantom, phantom_acquisition

    signal, noise = phantom_acquisition(make_phantom(32, 32, 4), noise_samples=4096)
    np.save(tmp_path / "signal.npy", signal[..., 0, 0])
    np.save(tmp_path / "noise.npy", noise)
    page = browser_page

    # The deployment's page, Run -> Custom run: the form built from the flow's parameters.
    page.goto(ui_url(prefect_server, f"/deployments/deployment/{mr_deployed['id']}"))
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run", exact=True).first.click()
    form_field(page, "signal (Optional)").locator("textarea").fill(str(tmp_path / "signal.npy"))
    form_field(page, "noise (Optional)").locator("textarea").fill(str(tmp_path / "noise.npy"))
    form_field(page, "Random seed (Optional)").locator("input").fill("7")
    assert page.get_by_text("Property is type").count() == 0  # no type picker anywhere
    created = submit(page)
    assert created.status == 201, (created.status, created.text())
    flow_run_id = created.json()["id"]

    # The UI goes back to the deployment, whose Runs tab links the new run.
    page.locator(f"a[href$='/runs/flow-run/{flow_run_id}']").first.wait_for()
    run = wait_for_final(prefect_server, flow_run_id)
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert run["parameters"]["signal"] == str(tmp_path / "signal.npy")
    assert run["parameters"]["options"]["seed"] == 7
    run_dir = prefect_server.storage_root / "local" / flow_run_id
    assert (run_dir / "SNR.png").read_bytes().startswith(b"\x89PNG")

    show_images(
        page,
        prefect_server,
        flow_run_id,
        "mr-snr-local",
        ("SNR", "noise_covariance"),
        tmp_path / "ui-mr-reconstruction-run.png",
    )


def test_the_mask_g_factor_and_loss_curve_render_on_their_runs_pages(
    prefect_server, mr_deployed, training_deployed, browser_page, tmp_path
):
    """A SENSE run's mask and g-factor and a training run's loss curve, as images in Chromium.

    The runs start through the API (the form is the test above); the pictures are what the
    scientist opens: the run's page -> Artifacts -> the summary.
    """
    from tasks.mr.phantom import make_phantom, phantom_acquisition
    from tasks.training.data import write_synthetic_set

    signal, noise = phantom_acquisition(make_phantom(32, 32, 2), noise_samples=4096)
    np.save(tmp_path / "signal.npy", signal[..., 0, 0])
    np.save(tmp_path / "noise.npy", noise)
    write_synthetic_set(str(tmp_path / "set"), train=16, validation=8, size=16)
    sense = start_run(
        prefect_server,
        mr_deployed,
        {
            "signal": str(tmp_path / "signal.npy"),
            "noise": str(tmp_path / "noise.npy"),
            "options": {
                "method": "ac",
                "recon": "sense",
                "acceleration": [1, 2],
                "decimate": True,
                "gfactor": True,
                "mask": "reference",
            },
        },
    )
    training = start_run(
        prefect_server,
        training_deployed,
        {
            "dataset": str(tmp_path / "set"),
            "settings": {"model_options": {"width": 8}, "epochs": 1, "checkpoint_every": 2},
        },
    )
    for flow_run_id in (sense, training):
        run = wait_for_final(prefect_server, flow_run_id)
        assert run["state"]["type"] == "COMPLETED", run["state"]

    show_images(
        browser_page,
        prefect_server,
        sense,
        "mr-snr-local",
        ("SNR", "G", "mask"),
        tmp_path / "ui-mr-sense-run.png",
    )
    show_images(
        browser_page,
        prefect_server,
        training,
        "training-local",
        ("loss and validation curves",),
        tmp_path / "ui-distributed-training-run.png",
    )


def show_images(
    page: Any,
    server: PrefectServer,
    flow_run_id: str,
    artifact: str,
    names: tuple[str, ...],
    shot: Path,
) -> None:
    """The run's page -> Artifacts -> ``artifact``: each of ``names`` an image Chromium loaded.

    The summary inlines each preview as a data: URL under its name as the alt text; a broken
    or missing picture never completes with a width. The page is kept as a screenshot.
    """
    page.goto(ui_url(server, f"/runs/flow-run/{flow_run_id}"))
    page.get_by_text("Completed", exact=True).first.wait_for()
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text(artifact).first.click()
    for name in names:
        image = page.locator(f"img[alt='{name}']")
        image.wait_for()
        page.wait_for_function(
            "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
        assert image.evaluate("img => img.naturalWidth") > 100, name
    assert keep_screenshot(page, shot).stat().st_size > 0
