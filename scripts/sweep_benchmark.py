"""A 4-job sweep run one job after another (Hydra's basic launcher) and 2 at a time (joblib).

Each sweep runs in a fresh folder with a fresh embedded store (``./mlflow.db``), so the parallel
jobs also race to create it; the script checks that every job's run was logged FINISHED.
Jobs: PaDiM on the offline digits demo at ``--size`` px, four values of ``model.n_features``.

    python scripts/sweep_benchmark.py
    python scripts/sweep_benchmark.py --size 64 --n-jobs 2
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _sweep(folder: Path, size: int, launcher: list[str]) -> tuple[float, int]:
    """(wall seconds, FINISHED job runs in the store) of one 4-job sweep."""
    from mlflow.tracking import MlflowClient

    folder.mkdir()
    command = [sys.executable, "-m", "quadra_ad", "-m", "experiment=generic/digits/anomaly/padim",
               "model.n_features=10,20,30,40", f"transforms.input_size=[{size},{size}]",
               "trainer.enable_progress_bar=false", *launcher]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"sweep failed ({' '.join(launcher) or 'basic'}):\n{done.stderr[-2000:]}")
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    runs = [run for experiment in client.search_experiments() for run in client.search_runs([experiment.experiment_id])
            if run.data.tags.get("quadra_ad.task") == "AnomalyTrainingTask" and run.info.status == "FINISHED"]
    return seconds, len(runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--n-jobs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # The digits are written once, before timing, into the shared cache both sweeps read.
        subprocess.run([sys.executable, "-m", "quadra_ad", "experiment=generic/digits/anomaly/padim", "~logger",
                        "export.types=[]", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp}/warm"],
                       cwd=tmp, check=True, capture_output=True)
        sequential = _sweep(Path(tmp) / "basic", args.size, [])
        parallel = _sweep(Path(tmp) / "joblib", args.size, ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.n_jobs}"])
    print(f"4-job sweep, PaDiM on the digits at {args.size} px, {len(os.sched_getaffinity(0))} cores")
    print(f"{'launcher':<28} {'wall s':>7} {'runs logged FINISHED':>21}")
    print(f"{'basic (one after another)':<28} {sequential[0]:>7.1f} {sequential[1]:>21}")
    print(f"{f'joblib, {args.n_jobs} at a time':<28} {parallel[0]:>7.1f} {parallel[1]:>21}")
    print(f"speed-up: {sequential[0] / parallel[0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
