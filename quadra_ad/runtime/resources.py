"""The peak resident memory of this process, per job.

``ru_maxrss`` only grows over a process's life, and launchers reuse processes for several jobs
(the basic launcher runs a whole sweep in one, joblib's workers take job after job). Linux lets a
process reset its high-water mark (``/proc/self/clear_refs``), so each job can report its own peak.
"""

import resource
import sys
from pathlib import Path

_STATUS = Path("/proc/self/status")


def reset_peak_memory() -> bool:
    """Start a new peak from the current resident size; False where the system cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_memory_mb() -> float:
    """The highest resident size since the last reset (or the process start), in MB."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere
