"""The README's two commands install once: a second ``make demo`` / ``make test`` runs no pip, and
an edit of pyproject.toml installs again. Checked with ``make -n`` (what make would run) on a copy
of the Makefile, so nothing is installed."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _planned(folder: Path, target: str) -> str:
    done = subprocess.run(["make", "-n", target], cwd=folder, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def project(tmp_path) -> Path:
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, tmp_path / name)
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.touch()
    return tmp_path


def test_a_fresh_venv_installs_then_the_next_commands_run_no_pip(project):
    assert "pip" in _planned(project, "demo") and "pip" in _planned(project, "test")
    later = time.time() + 5
    for stamp in (".installed-train", ".installed-test"):  # what a finished install leaves
        (project / ".venv" / stamp).touch()
        os.utime(project / ".venv" / stamp, (later, later))
    assert "pip" not in _planned(project, "demo") and "quadra-ad experiment=" in _planned(project, "demo")
    assert "pip" not in _planned(project, "test") and "pytest" in _planned(project, "test")

    edited = later + 5
    os.utime(project / "pyproject.toml", (edited, edited))  # a new dependency
    assert "pip -q install -e \".[train]\"" in _planned(project, "demo")
    assert "pip -q install -e \".[train,test]\"" in _planned(project, "test")
