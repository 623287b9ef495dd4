"""Run the ``quadra-ad`` command as a user types it, in a real subprocess."""

import os
import subprocess
import sys
import time
from pathlib import Path

QUADRA_AD = [sys.executable, "-m", "quadra_ad"]


def quadra_ad_env(extra: dict | None = None) -> dict:
    """The test process's environment, offline, without HYDRA_FULL_ERROR (we check one-line errors)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update({"HF_HUB_OFFLINE": "1", **(extra or {})})
    return env


def quadra_ad(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*QUADRA_AD, *args], cwd=cwd, env=quadra_ad_env(env), capture_output=True, text=True,
                          timeout=timeout)


def wait_until_training_runs(process: subprocess.Popen, folder: Path, timeout: float = 180) -> None:
    """Until Lightning's CSV log under ``folder`` holds the first epoch's training loss: training is
    under way. The file itself can appear a moment earlier, with the validation row only (the
    epoch's training loss is written at the epoch's very end); a signal sent then finds no epoch
    logged. ``folder/stderr.txt`` is shown if the command ends first."""
    deadline = time.monotonic() + timeout
    while not any("train_loss_epoch" in path.read_text()
                  for path in folder.glob("outputs/**/lightning_logs/*/metrics.csv")):
        assert process.poll() is None, (folder / "stderr.txt").read_text()[-3000:]
        assert time.monotonic() < deadline, f"training did not start within {timeout:.0f} s"
        time.sleep(0.2)


def signal_mask(pid: int, field: str) -> int:
    """A signal set of a process from Linux's /proc: ``SigIgn`` (ignored), ``SigCgt`` (caught)…;
    bit ``n - 1`` stands for signal ``n``."""
    with open(f"/proc/{pid}/status") as status:
        return int(next(line.split()[1] for line in status if line.startswith(f"{field}:")), 16)
