"""Run the ``quadra-ad`` command as a user types it, in a real subprocess."""

import os
import subprocess
import sys
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
