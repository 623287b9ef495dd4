"""An export written by a forked copy of the training process while the training process goes on.

The ONNX exporter traces the model in Python, on one core, for 3-4 s of a short run; the test step
that comes before it needs the same trained model but not the file. A forked child holds that
model as it was at the fork (copy-on-write: nothing is copied up front), writes the file and sends
back its path, or the error it met; the parent collects it when the export step comes, then checks
the file against the model as it checks any export. While the child runs, this process's torch
threads leave it a core. On 2 cores a PaDiM run ended 1-2 s sooner (timed by hand, runs
alternating with and without; ``scripts/benchmark.py`` shows the export step's share).

Only where forking is safe and pays: Linux, one process (no DDP), CUDA never initialised (a
forked child cannot use it), more than one core. The child runs torch on one thread: GNU
OpenMP's thread pool does not survive a fork (DataLoader workers do the same). It dies of Ctrl-C
and SIGTERM quietly, with the default handlers; the parent kills and reaps it when a step fails
or is interrupted.

A fork copies only the thread that forks: a lock another thread held at that moment stays held
in the child forever (seen once in a long test session, never in a command's run). A child that
uses no CPU for :data:`STALL_SECONDS` while the parent waits for it is such a child: it is
killed, and :class:`ExportStalled` tells the caller to export in-process instead.
"""

import os
import pickle
import select
import signal
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import torch

#: Seconds without CPU use after which a child being waited for counts as stuck.
STALL_SECONDS = 10.0


class ExportStalled(RuntimeError):
    """The forked exporter stopped making progress; it has been killed."""


def can_fork_exports(world_size: int) -> bool:
    """Linux, one process, CUDA untouched, and a second core for the child to run on."""
    return (sys.platform.startswith("linux") and world_size == 1 and not torch.cuda.is_initialized()
            and len(os.sched_getaffinity(0)) > 1)


class BackgroundExport:
    """``write()`` run in a forked child; :meth:`result` waits for its path or raises its error."""

    def __init__(self, write: Callable[[], Path]) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_end)
            _run_child(write, write_end)
        os.close(write_end)
        self._pid: int | None = pid
        self._pipe = os.fdopen(read_end, "rb")
        # The child takes one core; this process's torch threads leave it to it until the result.
        self._threads = torch.get_num_threads()
        torch.set_num_threads(max(1, self._threads - 1))

    def result(self) -> Path:
        try:
            self._wait_while_it_works()
            payload = self._pipe.read()  # until the child closes its end: it has written, or died
            ended = self._reap(wait=True)
        finally:
            self.cancel()
        if not payload:
            raise RuntimeError(f"the exporting process ended without a result ({ended})")
        outcome, value = pickle.loads(payload)
        if outcome == "error":
            raise value
        return Path(value)

    def _wait_while_it_works(self) -> None:
        """Until the child sends its outcome (or dies); :class:`ExportStalled` when it stops using CPU."""
        used, still_since = None, time.monotonic()
        while not select.select([self._pipe], [], [], 1.0)[0]:
            now_used = _cpu_ticks(self._pid)
            if now_used != used:
                used, still_since = now_used, time.monotonic()
            elif time.monotonic() - still_since > STALL_SECONDS:
                raise ExportStalled(f"the forked exporter used no CPU for {STALL_SECONDS:.0f} s")

    def cancel(self) -> None:
        """Stop the child if it still runs, and reap it; safe to call more than once."""
        if self._pid is not None and not self._reap(wait=False):
            with suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            self._reap(wait=True)
        self._pipe.close()
        if self._threads:
            torch.set_num_threads(self._threads)
            self._threads = 0

    def _reap(self, wait: bool) -> str | None:
        """How the child ended, once it has (``None`` while it runs and ``wait`` is false)."""
        if self._pid is None:
            return "already reaped"
        pid, status = os.waitpid(self._pid, 0 if wait else os.WNOHANG)
        if pid == 0:
            return None
        self._pid = None
        return _describe(status)


def _cpu_ticks(pid: int | None) -> int | None:
    """CPU time a process has used (user + system, in clock ticks), or None when it cannot be read."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def _run_child(write: Callable[[], Path], pipe_fd: int) -> None:
    """In the child: write, send the outcome, and leave without running the parent's exit handlers."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        torch.set_num_threads(1)
        outcome = ("ok", str(write()))
    except BaseException as error:  # noqa: BLE001 - every failure goes back to the parent
        outcome = ("error", error)
    try:
        payload = pickle.dumps(outcome)
    except Exception:  # noqa: BLE001 - an error that cannot be pickled goes back as its text
        error = outcome[1]
        payload = pickle.dumps(("error", RuntimeError(f"{type(error).__name__}: {error}")))
    with suppress(OSError), os.fdopen(pipe_fd, "wb") as pipe:
        pipe.write(payload)
    os._exit(0)
