"""A real training run whose data has two defect types, and a headless chromium to open its report.

Chromium is Debian's ``chromium`` package, driven by Playwright (``playwright`` in the ``test``
extra; it downloads no browser of its own). When it is missing the set-up installs it with
``apt-get`` as CI needs; only a non-root user without it gets a skip.
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


def _install_chromium() -> str:
    """The chromium executable; installed with apt-get when missing (root only, else skip)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("chromium is not installed and installing it needs root: apt-get install -y chromium")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "chromium"]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    if result.returncode != 0:  # a fresh CI image has no package lists yet
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=1200)
    found = shutil.which("chromium")
    if result.returncode != 0 or not found:
        pytest.fail(f"the HTML report test needs chromium and 'apt-get install -y chromium' failed "
                    f"(exit {result.returncode}):\n{(result.stdout + result.stderr)[-2000:]}")
    return found


@pytest.fixture(scope="session")
def chromium_path() -> str:
    return _install_chromium()


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
