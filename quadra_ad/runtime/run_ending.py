"""How a run ends, decided in one place: what stopped it becomes the run's status and the command's exit code.

:func:`ending_the_run` is used twice, one inside the other:

    with ending_the_run(record=..., explain=...):      # Task.execute, around its steps: the status
        ...
    with ending_the_run(say=..., exits=True):          # the command, around the job: the exit code
        ...

================================================================  ========  ====  ==================
what ended the block                                              status    exit  raised on as
================================================================  ========  ====  ==================
nothing                                                           FINISHED  0
Ctrl-C (KeyboardInterrupt; inside a task also Lightning's         KILLED    130   KeyboardInterrupt
``sys.exit(1)`` after it)
SIGTERM (Terminated; Lightning's SystemExit; a DataLoader worker  KILLED    143   Terminated
killed by it; any error once it arrived)
the output's reader went away (BrokenPipeError on our stdout or   KILLED    141   OutputClosed
stderr; rich's SystemExit)
a user mistake (QuadraADError; ``explain`` turns a full disk      FAILED    2     the mistake
into DiskFullError)
a crash (any other Exception)                                     FAILED    1     the error
================================================================  ========  ====  ==================

Anything else (GeneratorExit, a SystemExit that is the command's own decision) goes through untouched.
"""

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NoReturn

from quadra_ad.errors import QuadraADError
from quadra_ad.runtime.closed_output import OutputClosed, end_for_broken_pipe, ended_by_closed_output, is_closed_output
from quadra_ad.runtime.exit_codes import (
    EXIT_BROKEN_PIPE,
    EXIT_CRASH,
    EXIT_INTERRUPTED,
    EXIT_MISTAKE,
    EXIT_OK,
    EXIT_TERMINATED,
)
from quadra_ad.runtime.signals import (
    Terminated,
    other_ddp_process,
    release_logging_lock_left_by_interrupt,
    signals_deferred,
    sigterm_pending,
    sigterm_received,
    stopped_by_sigterm,
    wait_for_ddp_processes,
)

log = logging.getLogger(__name__)

FINISHED, FAILED, KILLED = "FINISHED", "FAILED", "KILLED"


@dataclass
class Ending:
    """How the block ended: the run's status, the command's exit code and the error the run is
    reported with (already translated: a Ctrl-C that Lightning turned into a SystemExit is a
    KeyboardInterrupt again, a full disk a DiskFullError)."""

    status: str = FINISHED
    exit_code: int = EXIT_OK
    error: BaseException | None = None
    #: Set when ``say`` dealt with a failure and the caller goes on after the block (a sweep's job).
    went_on: bool = False

    @property
    def stopped(self) -> bool:
        """Stopped from outside (Ctrl-C, SIGTERM, a closed output), not failed."""
        return self.status == KILLED

    @property
    def terminated(self) -> bool:
        return self.exit_code == EXIT_TERMINATED

    @property
    def mistake(self) -> bool:
        return self.exit_code == EXIT_MISTAKE


def how_it_ended(error: BaseException, explain: Callable[[Exception], Exception] | None = None,
                 inside_task: bool = False) -> Ending | None:
    """The table of this module's docstring; None for what is not a run's ending (passed on untouched).

    ``inside_task``: the block runs a task's steps, where only Lightning calls ``sys.exit`` (after
    a Ctrl-C it caught, on its SIGTERM flag, when rich finds its output closed). Around a command,
    a SystemExit is the command's own decision (an exit code already chosen) and goes through.
    """
    if isinstance(error, SystemExit) and not inside_task:
        return None
    if isinstance(error, Terminated) or sigterm_received() or (isinstance(error, Exception) and stopped_by_sigterm(error)):
        # Any error once SIGTERM arrived is part of that stop (a Ctrl-C or Lightning's SystemExit on
        # the way out, a DataLoader worker it killed): the run was stopped, not broken.
        return Ending(KILLED, EXIT_TERMINATED, error if isinstance(error, Terminated) else Terminated("terminated by SIGTERM"))
    if is_closed_output(error) or ended_by_closed_output(error):
        closed = error if isinstance(error, OutputClosed) else OutputClosed("the command's output was closed "
                                                                            "(its reader went away)")
        return Ending(KILLED, EXIT_BROKEN_PIPE, closed)
    if isinstance(error, KeyboardInterrupt):
        return Ending(KILLED, EXIT_INTERRUPTED, error)
    if isinstance(error, SystemExit):
        # Lightning catches Ctrl-C inside fit/test, shuts down and calls sys.exit(1).
        return Ending(KILLED, EXIT_INTERRUPTED, KeyboardInterrupt("interrupted (Ctrl-C)"))
    if isinstance(error, Exception):
        error = explain(error) if explain is not None else error
        return Ending(FAILED, EXIT_MISTAKE if isinstance(error, QuadraADError) else EXIT_CRASH, error)
    return None


@contextmanager
def ending_the_run(*, record: Callable[[Ending], None] | None = None,
                   explain: Callable[[Exception], Exception] | None = None,
                   say: Callable[[Ending], bool | None] | None = None,
                   exits: bool = False, traceback_for_mistakes: bool = False) -> Iterator[Ending]:
    """Within the block a run's work is done; how the block ends is mapped by :func:`how_it_ended`.

    Inside a task (``exits`` false): ``record(ending)`` logs a run that did not finish, with Ctrl-C
    and SIGTERM held back until it is logged (and KILLED if a SIGTERM is already on its way: the
    error being handled may be its first symptom); a failure to record is a warning, never the
    run's error. Then the translated error is raised on (a SystemExit of Lightning's as the
    Ctrl-C or SIGTERM it stands for). ``explain`` turns a low-level error into the user's.

    Around a command (``exits`` true): ``say(ending)`` prints its last lines; when it returns True
    it has dealt with the failure (a sweep's job: recorded, the sweep goes on), the block ends
    quietly and ``ending.went_on`` is set. Otherwise a stop ends the process with its exit code
    (the other processes of a DDP run first end quietly, the first one waits for them and alone
    says it), a mistake exits 2 (raised on with its traceback when ``traceback_for_mistakes``), and
    a crash is raised on (the traceback, exit 1).
    """
    ending = Ending()
    try:
        yield ending
    except BaseException as error:  # sorted by how_it_ended; what it does not know is raised on untouched
        found = how_it_ended(error, explain, inside_task=not exits)
        if found is None:
            raise
        ending.status, ending.exit_code, ending.error = found.status, found.exit_code, found.error
        if record is not None:
            _record(record, ending)
        if exits:
            _end_the_command(ending, say, traceback_for_mistakes)
            if ending.went_on:
                return
        if ending.error is error:
            raise
        raise ending.error from error


def _record(record: Callable[[Ending], None], ending: Ending) -> None:
    release_logging_lock_left_by_interrupt()
    with signals_deferred():
        if sigterm_received() or sigterm_pending():
            ending.status, ending.exit_code, ending.error = KILLED, EXIT_TERMINATED, Terminated("terminated by SIGTERM")
        try:
            record(ending)
        except Exception:  # the original error is the one the user must see
            log.warning("could not log the %s run", ending.status, exc_info=True)


def _end_the_command(ending: Ending, say: Callable[[Ending], bool | None] | None, traceback_for_mistakes: bool) -> None:
    if ending.stopped:
        if ending.exit_code == EXIT_BROKEN_PIPE:
            end_for_broken_pipe()  # nobody reads the output any more: a sweep's next jobs must not run either
        if other_ddp_process():
            sys.exit(ending.exit_code)  # process 0 reports the run
        wait_for_ddp_processes()
    if say is not None and say(ending):
        ending.went_on = True
        return
    if ending.stopped:
        sys.exit(ending.exit_code)
    if ending.mistake and not traceback_for_mistakes:
        sys.exit(EXIT_MISTAKE)
    # A crash, or a mistake shown whole: raised on, Python prints the traceback.


def exit_at_once(code: int) -> NoReturn:
    """End the process now, with ``code``, after flushing what was printed. For a Ctrl-C before the
    run started: nothing is written yet, and a Ctrl-C that landed inside the import of a large
    library can leave it half-initialised, so that the interpreter's own shutdown was seen to end
    the process with the signal (-2) instead of the exit code."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
