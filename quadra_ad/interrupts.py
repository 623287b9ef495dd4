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
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

_received = False
_installer_pid: int | None = None
#: True while :func:`signals_deferred` holds signals back, and the signals it has held so far.
_deferring = False
_held: list[int] = []
#: What torch says when a DataLoader worker dies of SIGTERM (signal.strsignal(SIGTERM) on Linux).
_WORKER_KILLED_BY_SIGTERM = "is killed by signal: Terminated"


class Terminated(BaseException):
    """The process received SIGTERM: stop, as on Ctrl-C (a BaseException, so no step swallows it)."""


def sigterm_received() -> bool:
    """True once SIGTERM has arrived in this process."""
    return _received


def stopped_by_sigterm(error: BaseException) -> bool:
    """True when ``error`` is part of a SIGTERM stop: one has arrived, or ``error`` says a DataLoader
    worker died of it (torch's SIGCHLD check can raise that inside another SIGTERM handler,
    Lightning's, before ours runs). The latter counts as the SIGTERM having arrived."""
    if _received:
        return True
    seen = error
    while seen is not None:
        if isinstance(seen, RuntimeError) and _WORKER_KILLED_BY_SIGTERM in str(seen):
            _note_sigterm()
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def sigterm_pending() -> bool:
    """True when a SIGTERM arrived while :func:`signals_deferred` held it back."""
    return signal.SIGTERM in _held


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Within the block, Ctrl-C and SIGTERM are held back; they take effect when it ends.

    Done in Python, not with a thread signal mask: the process's other threads (torch, ONNX
    Runtime) would still take the signal, and Python runs its handler in the main thread anyway.
    Outside the main thread (where no handler can be set) the block defers nothing.
    """
    global _deferring
    if threading.current_thread() is not threading.main_thread() or _deferring:
        yield
        return
    previous_sigint = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, lambda signum, frame: _held.append(signum))
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        signal.signal(signal.SIGINT, previous_sigint)
        held = list(_held)
        _held.clear()
        if signal.SIGTERM in held:
            raise Terminated("terminated by SIGTERM")
        if signal.SIGINT in held:
            raise KeyboardInterrupt


def _quiet_unraisable(unraisable) -> None:
    """Destructors failing while the process stops (DataLoader iterators of killed workers)."""
    log.debug("while stopping: %s in %r", unraisable.exc_value, unraisable.object)


def _note_sigterm() -> None:
    global _received
    _received = True
    sys.unraisablehook = _quiet_unraisable
    # torch's DataLoader raises from a SIGCHLD handler when a worker dies of the same signal, at
    # any point in the main thread, e.g. halfway through logging the KILLED run: not any more.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)


def _on_sigterm(signum, frame) -> None:
    if os.getpid() != _installer_pid:
        # A forked child (a DataLoader worker): die of the signal, as it would without us.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        return
    if _received:
        return  # already stopping: a second signal must not interrupt the clean-up
    _note_sigterm()
    if _deferring:
        _held.append(signum)  # raised when the deferring block ends
        return
    raise Terminated("terminated by SIGTERM")


def install_sigterm_handler() -> None:
    """Route SIGTERM to :class:`Terminated` in this process (main thread only, as Python requires)."""
    global _installer_pid
    _installer_pid = os.getpid()
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Lightning wraps this handler in one that first logs "Received SIGTERM" from inside the signal
    # handler: when the main thread is writing to the same stream, or forking, that write fails and
    # logging prints a traceback of its own. The one line the CLI prints says the same thing.
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").setLevel(logging.WARNING)


def release_logging_lock_left_by_interrupt() -> None:
    """Release the logging module's lock if this thread still holds it.

    Ctrl-C and SIGTERM raise in the main thread between any two bytecodes, also between
    ``logging``'s taking its module lock and the ``try`` that releases it. The main thread can
    take that lock again (it is reentrant), so nothing shows until another thread logs and
    waits on it forever (MLflow's system-metrics thread did). Called where an interrupt is
    handled, outside any logging call: holding the lock there can only be such a leftover.
    """
    import logging

    lock = getattr(logging, "_lock", None)
    owned = getattr(lock, "_is_owned", None)
    while owned is not None and owned():
        lock.release()
