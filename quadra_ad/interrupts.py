"""SIGTERM — what systemd, Docker, ``kill`` and SLURM pre-emption send — handled like Ctrl-C.

Without a handler, Python dies at once (a training run left RUNNING in MLflow), and inside a
Lightning fit the signal only sets a flag that is read between batches (a test or an export
went on for minutes). With :func:`install_sigterm_handler`, the first SIGTERM raises
:class:`Terminated` in the main thread wherever it is; the task ends its run KILLED and the CLI
exits 143 with one line. DataLoader workers that die of the same signal make the main process
raise other errors on the way out: :func:`sigterm_received` tells the task they are part of
the same stop, and the clean-up noise of their iterators' destructors is not printed.
Forked workers inherit the handler; in them it restores the default action, so they just die.
"""

import logging
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_received = False
_installer_pid: int | None = None


class Terminated(BaseException):
    """The process received SIGTERM: stop, as on Ctrl-C (a BaseException, so no step swallows it)."""


def sigterm_received() -> bool:
    """True once SIGTERM has arrived in this process."""
    return _received


def sigterm_pending() -> bool:
    """True when a SIGTERM is waiting to be handled (while :func:`signals_deferred` holds it)."""
    return signal.SIGTERM in signal.sigpending()


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM wait (their handlers run when it ends)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _quiet_unraisable(unraisable) -> None:
    """Destructors failing while the process stops (DataLoader iterators of killed workers)."""
    log.debug("while stopping: %s in %r", unraisable.exc_value, unraisable.object)


def _on_sigterm(signum, frame) -> None:
    global _received
    if os.getpid() != _installer_pid:
        # A forked child (a DataLoader worker): die of the signal, as it would without us.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if _received:
        return  # already stopping: a second signal must not interrupt the clean-up
    _received = True
    sys.unraisablehook = _quiet_unraisable
    # torch's DataLoader raises from a SIGCHLD handler when a worker dies of the same signal, at
    # any point in the main thread, e.g. halfway through logging the KILLED run: not any more.
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    raise Terminated("terminated by SIGTERM")


def install_sigterm_handler() -> None:
    """Route SIGTERM to :class:`Terminated` in this process (main thread only, as Python requires)."""
    global _installer_pid
    _installer_pid = os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)
