"""A non-editable install carries the configs and experiments and works from any directory."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_ships_configs_and_runs_from_another_directory(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=600,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("quadra_ad-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "quadra_ad/configs/config.yaml" in names
    assert "quadra_ad/experiments/base/anomaly/padim.yaml" in names
    assert "quadra_ad/experiments/generic/digits/anomaly/padim.yaml" in names

    target = tmp_path / "site"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr[-2000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", "import quadra_ad.cli.train, sys; print(quadra_ad.cli.train.__file__); "
         "sys.argv=['quadra-ad','experiment=generic/mnist/anomaly/padim','--cfg','job']; quadra_ad.cli.train.main()"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[0].startswith(str(target))
    assert "name: mnist_padim" in result.stdout
