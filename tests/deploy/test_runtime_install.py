"""The line-PC install: ``pip install quadra_ad`` without extras runs exported ONNX models, no torch."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent


def _folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.fixture(scope="module")
def runtime_venv(tmp_path_factory) -> Path:
    """A fresh virtual environment with quadra_ad installed from its wheel, without extras."""
    folder = tmp_path_factory.mktemp("runtime")
    subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True, timeout=300)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(ROOT), "-w", str(folder / "dist")],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((folder / "dist").glob("quadra_ad-*.whl"))
    install = subprocess.run([str(folder / "venv" / "bin" / "pip"), "install", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, install.stderr[-3000:]
    return folder / "venv"


@pytest.mark.slow
def test_the_runtime_install_predicts_without_torch_the_training_runs_scores(trained, runtime_venv, tmp_path):
    training, _ = trained
    python = runtime_venv / "bin" / "python"
    for package in ("torch", "lightning", "anomalib", "hydra", "mlflow", "sklearn"):
        probe = subprocess.run([str(python), "-c", f"import {package}"], capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0, f"{package} is installed in the runtime-only environment"
    done = subprocess.run([str(runtime_venv / "bin" / "quadra-ad-predict"), str(training.output_dir / "deployment_model"),
                           str(Path(training.datamodule.layout.root) / "test"), "--out", str(tmp_path / "out.csv")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with (training.output_dir / "predictions.csv").open() as handle:
        expected = {row["image_path"]: float(row["raw_score"]) for row in csv.DictReader(handle)}
    with (tmp_path / "out.csv").open() as handle:
        got = {row["image_path"]: float(row["raw_score"]) for row in csv.DictReader(handle)}
    assert set(got) == set(expected)
    for path, score in expected.items():
        assert got[path] == pytest.approx(score, rel=1e-4)
    # Training needs the extra: one line saying which.
    train = subprocess.run([str(runtime_venv / "bin" / "quadra-ad"), "experiment=base/anomaly/padim"],
                           capture_output=True, text=True, timeout=60)
    assert train.returncode == 2
    assert train.stderr.strip().splitlines() == [train.stderr.strip()]
    assert train.stderr.startswith("quadra-ad: needs quadra_ad's training extra (missing: torch, torchvision")
    assert "pip install 'quadra_ad[train]'" in train.stderr
    full, runtime = _folder_size(Path(sys.prefix)), _folder_size(runtime_venv)
    print(f"runtime-only environment {runtime / 1e6:.0f} MB, full environment {full / 1e6:.0f} MB")
    assert runtime < full / 5
