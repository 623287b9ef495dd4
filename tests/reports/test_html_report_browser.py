"""``report.html`` in a real headless chromium: from the run folder, and inside ``mlflow ui``'s
artifact view of the run (the UI fetches it with /get-artifact and shows it in a sandboxed frame)."""

import os
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.mlflow_processes import start_mlflow, stop_mlflow
from tests.reports.conftest import find_or_install_chromium


def _watch(page) -> list[str]:
    """Console errors, page errors and failed requests of ``page``, as they come."""
    problems: list[str] = []
    page.on("console", lambda message: message.type == "error" and problems.append(
        f"console: {message.text} ({message.location.get('url', '')})"))
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url[:120]}"))
    return problems


def _images(frame) -> list[list]:
    """[complete, naturalWidth, alt] of every <img> once each has loaded or failed."""
    frame.wait_for_function("Array.from(document.images).every(image => image.complete)", timeout=20_000)
    return frame.evaluate("Array.from(document.images).map(image => [image.complete, image.naturalWidth, image.alt])")


def _assert_rendered(frame, title: str) -> None:
    assert frame.title() == title
    assert frame.locator("h1").inner_text() == title
    text = frame.locator("body").inner_text()
    for heading in ("Metrics", "Thresholds", "Scores", "Confusion", "Worst false positives", "Worst false negatives", "Run"):
        assert heading in text, heading
    assert "image_AUROC" in text and "F1-optimal on the validation images" in text
    images = _images(frame)
    assert len(images) >= 4
    broken = [alt for complete, width, alt in images if not (complete and width > 0)]
    assert not broken, broken


def test_report_renders_from_the_run_folder_in_chromium(report_run, browser):
    task, _ = report_run
    page = browser.new_page()
    problems = _watch(page)
    page.goto((task.output_dir / "report.html").as_uri())
    _assert_rendered(page.main_frame, "quadra-ad training report: Padim run")
    assert not problems, problems
    page.close()


@pytest.fixture
def mlflow_ui(report_run, tmp_path):
    """``mlflow ui`` over the training run's embedded store, as the CLI's hint starts it (one worker, no job runner)."""
    _, workdir = report_run
    process, uri = start_mlflow(["ui", "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db"], workdir,
                                tmp_path / "ui.log")
    try:
        yield uri
    finally:
        stop_mlflow(process)


def test_report_opens_in_the_mlflow_ui_artifact_view(report_run, browser, mlflow_ui):
    task, workdir = report_run
    run = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db").get_run(task.tracked_run.run_id)
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    # What the UI fetches is the run folder's page, byte for byte.
    with urllib.request.urlopen(f"{mlflow_ui}/get-artifact?path=report.html&run_uuid={run_id}", timeout=30) as answer:
        assert answer.read() == (task.output_dir / "report.html").read_bytes()

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems = _watch(page)
    page.goto(f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{run_id}/artifacts/report.html")
    frame = page.wait_for_selector("iframe.mlflow-html-iframe", timeout=60_000).content_frame()
    frame.wait_for_load_state()
    _assert_rendered(frame, "quadra-ad training report: Padim run")
    # The UI's own calls to endpoints this local server does not have (e.g. the current user) are its business.
    ours = [problem for problem in problems if "/ajax-api/" not in problem]
    assert not ours, ours
    page.close()


def test_without_chromium_or_apt_get_the_browser_tests_skip_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither chromium nor apt-get on it
    announced = []
    with pytest.raises(pytest.skip.Exception, match="no apt-get to install it"):
        find_or_install_chromium(announced.append)
    assert announced == []


def test_a_failing_chromium_install_is_announced_then_skips_with_apt_gets_words(tmp_path, monkeypatch):
    apt_get = tmp_path / "apt-get"  # as apt-get answers offline or without the package
    apt_get.write_text("#!/bin/sh\necho 'E: Unable to locate package chromium' >&2\nexit 100\n")
    apt_get.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    announced = []
    with pytest.raises(pytest.skip.Exception, match=r"failed \(exit 100: E: Unable to locate package chromium\)"):
        find_or_install_chromium(announced.append)
    assert len(announced) == 1 and "installing it with 'apt-get install -y chromium'" in announced[0]
