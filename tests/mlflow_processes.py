"""Real ``mlflow server`` / ``mlflow ui`` processes on loopback for the tests that need one."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_mlflow(arguments: list[str], cwd: Path, log_path: Path, port: int | None = None,
                 timeout_s: float = 120) -> tuple[subprocess.Popen, str]:
    """Start ``python -m mlflow <arguments> --host 127.0.0.1 --port <port> --workers 1`` and wait
    until it answers ``/health``; return the process and its URI."""
    port = port or free_port()
    command = [sys.executable, "-m", "mlflow", *arguments, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with Path(log_path).open("w") as log_file:
        # Own process group: mlflow runs uvicorn as a child, which must stop with it.
        process = subprocess.Popen(command, cwd=cwd, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow exited with {process.returncode}:\n{Path(log_path).read_text()[-3000:]}")
        if time.monotonic() > deadline:
            stop_mlflow(process)
            raise RuntimeError(f"mlflow did not answer within {timeout_s} s:\n{Path(log_path).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return process, uri
        except OSError:
            time.sleep(0.5)


def stop_mlflow(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
