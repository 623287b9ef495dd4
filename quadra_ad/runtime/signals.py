"""The signals that stop a run: SIGTERM handled like Ctrl-C, and both held back while a stopped run is logged.

SIGTERM is what systemd, Docker, ``kill`` and SLURM pre-emption send. Without a handler, Python
dies at once (a training run left RUNNING in MLflow), and inside a Lightning fit the signal only
sets a flag that is read between batches (a test or an export went on for minutes). With
:func:`install_sigterm_handler`, the first SIGTERM raises :class:`Terminated` in the main thread
wherever it is; :mod:`quadra_ad.runtime.run_ending` turns that into a KILLED run and exit 143.
DataLoader workers that die of the same signal make the main process raise other errors on the
way out: :func:`stopped_by_sigterm` tells they are part of the same stop, and the clean-up noise
of their iterators' destructors is not printed. Forked workers inherit the handler; in them it
restores the default action, so they just die.

A DDP run is stopped whole: the launching process passes the signal on to the processes
Lightning started from it (:func:`ddp_processes_started_here`), waits for them
(:func:`wait_for_ddp_processes`) and alone reports the run. Lightning's own SIGTERM handler is
kept out of the way while a trainer runs (:func:`keep_sigterm_from_lightning`).
"""

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from quadra_ad.errors import exception_chain

log = logging.getLogger(__name__)

_received = False
#: True while a SIGTERM whose Terminated a destructor swallowed is being sent again.
_swallowed = False
_installer_pid: int | None = None
#: True while :func:`signals_deferred` holds signals back, and the signals it has held so far.
_deferring = False
_held: list[int] = []
#: The DDP processes this process passed SIGTERM on to (psutil.Process objects).
_forwarded: list = []
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
    for seen in exception_chain(error):
        if isinstance(seen, RuntimeError) and _WORKER_KILLED_BY_SIGTERM in str(seen):
            _note_sigterm()
            return True
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
    """Destructors failing while the process stops (DataLoader iterators of killed workers).

    Python runs a signal handler between any two bytecodes, also inside a destructor (a garbage
    collection in the middle of a training step), and drops whatever a destructor raises. A
    :class:`Terminated` dropped there would leave the run training, its SIGTERM spent (seen under
    load, one SIGTERM to the process group in a few): it is sent again, to be raised outside.
    """
    global _swallowed
    if isinstance(unraisable.exc_value, Terminated) and os.getpid() == _installer_pid:
        _swallowed = True
        # A moment later, from another thread: sent from here, the handler would run at once, inside the hook.
        resend = threading.Timer(0.05, os.kill, args=(os.getpid(), signal.SIGTERM))
        resend.daemon = True
        resend.start()
        return
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
    global _swallowed
    if _swallowed:
        _swallowed = False
    elif _received:
        return  # already stopping: a second signal must not interrupt the clean-up
    _note_sigterm()
    _forward_to_ddp_processes(signum)
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


def die_of_sigpipe() -> None:
    """Let SIGPIPE end this process, as it ends ``cat``: for commands that only print through a
    library (Hydra's ``--cfg``, ``--info``) that would print a BrokenPipeError's traceback itself."""
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)


def ddp_processes_started_here() -> list:
    """The other processes of a DDP run that Lightning started from this one (psutil.Process objects).

    Lightning starts them by running the command line again with ``LOCAL_RANK`` ≥ 1 in their
    environment; DataLoader workers are forks of this process and carry the environment it was
    started with, so they are not among them.
    """
    if os.environ.get("LOCAL_RANK", "0") not in ("", "0"):
        return []  # one of those processes itself: the launching one owns the others
    import psutil

    found = []
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return []
    for child in children:
        try:
            if child.environ().get("LOCAL_RANK", "0") not in ("", "0"):
                found.append(child)
        except psutil.Error:
            continue  # gone already, or not ours to read
    return found


def other_ddp_process() -> bool:
    """True in the processes Lightning's ``ddp`` strategy started besides the first (it sets their rank):
    the first one alone reports the run."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("RANK", "LOCAL_RANK"))


def _forward_to_ddp_processes(signum: int) -> None:
    """Pass the signal on: a DDP process that is not stopped waits for the one that was, in its next
    collective, until gloo's timeout (30 minutes), or fails there with a traceback of its own."""
    for process in ddp_processes_started_here():
        try:
            process.send_signal(signum)
            _forwarded.append(process)
        except Exception:  # noqa: BLE001 - gone already: nothing left to stop
            continue


def wait_for_ddp_processes(timeout_s: float = 60.0) -> None:
    """Wait until the DDP processes SIGTERM was passed on to have ended; kill those still there
    after ``timeout_s`` (a process stuck in a collective its peer left cannot stop by itself)."""
    if not _forwarded:
        return
    import psutil

    _, alive = psutil.wait_procs(_forwarded, timeout=timeout_s)
    for process in alive:
        log.warning("DDP process %s did not stop within %.0f s of SIGTERM: killing it", process.pid, timeout_s)
        try:
            process.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(alive, timeout=5)


def _lightning_sigterm_notifier(self, signum, frame) -> None:
    """Stands in for Lightning's: our handler, which runs right after it, stops this process and
    passes the signal on."""


def keep_sigterm_from_lightning() -> None:
    """Leave SIGTERM to our handler while a Lightning trainer runs (only once it is installed).

    During fit and test Lightning puts a handler of its own in front of ours. Under DDP that
    handler runs a broadcast to the other processes from inside the signal handler; the other
    processes are then in another collective (a gradient all-reduce) or in their own handler's
    broadcast, or already gone, and the broadcast fails ("Connection closed by peer": a traceback
    and a FAILED run instead of KILLED) or waits for gloo's 30-minute timeout.
    """
    if _installer_pid != os.getpid():
        return
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    _SignalConnector._sigterm_notifier_fn = _lightning_sigterm_notifier


def release_logging_lock_left_by_interrupt() -> None:
    """Release the logging module's lock if this thread still holds it.

    Ctrl-C and SIGTERM raise in the main thread between any two bytecodes, also between
    ``logging``'s taking its module lock and the ``try`` that releases it. The main thread can
    take that lock again (it is reentrant), so nothing shows until another thread logs and
    waits on it forever (MLflow's system-metrics thread did). Called where an interrupt is
    handled, outside any logging call: holding the lock there can only be such a leftover.
    """
    lock = getattr(logging, "_lock", None)
    owned = getattr(lock, "_is_owned", None)
    while owned is not None and owned():
        lock.release()
