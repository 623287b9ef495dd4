"""A real training run whose data has two defect types, and a headless chromium to open its report.

Chromium is Debian's ``chromium`` package, driven by Playwright (``playwright`` in the ``test``
extra; it downloads no browser of its own). When it is missing the set-up says so on the terminal
and installs it with ``apt-get``, as CI needs; where that cannot be done (not root, no apt-get, the
install fails, e.g. offline) the browser tests are skipped with the reason, not errored.
"""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from quadra_ad.run import run
from quadra_ad.testing.synthetic import write_synthetic_dataset
from tests.conftest import IMAGE_SIZE, training_config

DEFECT_TYPES = ("blob", "scratch")


@pytest.fixture(scope="session")
def two_defect_dataset(tmp_path_factory) -> Path:
    """Masks, two defect folders, a few unknown images; defects faint enough for some mistakes."""
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("two_defects"), n_train=12, n_test_good=6, n_test_defect=4, size=IMAGE_SIZE,
        defect_contrast=0.2, n_unknown=3, defect_types=DEFECT_TYPES,
    )


@pytest.fixture(scope="session")
def report_run(two_defect_dataset, tmp_path_factory):
    """A PaDiM training run logged to its own embedded MLflow store; returns (task, work folder)."""
    workdir = tmp_path_factory.mktemp("report_run")
    cfg = training_config("base/anomaly/padim", two_defect_dataset, workdir, "backbone=resnet18")
    return run(cfg, output_dir=workdir / "run"), workdir


APT_INSTALL = ["apt-get", "install", "-y", "chromium"]
#: apt-get install may fetch ~100 MB; a stuck mirror must not hold the suite for ever.
APT_TIMEOUT_S = 1200


def _apt_get(arguments: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(arguments, env=env, capture_output=True, text=True, timeout=APT_TIMEOUT_S)


def _last_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def find_or_install_chromium(announce) -> str:
    """The chromium executable, installed with apt-get when missing (``announce`` says so first);
    skips the caller's tests with the reason when it is missing and cannot be installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.skip("chromium is not installed and there is no apt-get to install it: install chromium to run "
                    "the browser tests")
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it needs root: sudo apt-get install -y chromium")
    announce("chromium is missing: installing it with 'apt-get install -y chromium' for the HTML report browser "
             "tests (a few minutes; install it beforehand to skip this)")
    try:
        result = _apt_get(APT_INSTALL)
        if result.returncode != 0:  # a fresh CI image has no package lists yet
            _apt_get(["apt-get", "update"])
            result = _apt_get(APT_INSTALL)
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"chromium is not installed and 'apt-get install -y chromium' could not run: {error}")
    found = shutil.which("chromium")
    if result.returncode != 0 or not found:
        pytest.skip(f"chromium is not installed and 'apt-get install -y chromium' failed (exit {result.returncode}: "
                    f"{_last_line(result)})")
    return found


def _terminal_line(config: pytest.Config):
    """A function that writes one line to the terminal now, past pytest's output capture."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None:
            return
        with capture.global_and_fixture_disabled():
            reporter.write_line(line, yellow=True)

    return write


@pytest.fixture(scope="session")
def chromium_path(pytestconfig) -> str:
    return find_or_install_chromium(_terminal_line(pytestconfig))


@pytest.fixture(scope="module")
def browser(chromium_path):
    """A headless chromium (the system one) under Playwright, for one test module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path, headless=True)
        try:
            yield launched
        finally:
            launched.close()
