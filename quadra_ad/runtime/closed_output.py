"""An output whose reader went away (``quadra-ad … | head``): the command ends quietly, as
``SIGPIPE`` ends ``yes | head``, with no BrokenPipeError traceback and exit 141."""

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

from quadra_ad.runtime.exit_codes import EXIT_BROKEN_PIPE


class OutputClosed(BrokenPipeError):
    """The command's output has no reader any more (``quadra-ad … | head``): the run was stopped."""


def ended_by_closed_output(error: BaseException) -> bool:
    """True for the SystemExit with which rich (Lightning's progress bar and summaries) answers a
    closed stdout, after pointing stdout at /dev/null (``Console.on_broken_pipe``)."""
    import traceback

    return isinstance(error, SystemExit) and any(
        frame.f_code.co_name == "on_broken_pipe" for frame, _ in traceback.walk_tb(error.__traceback__))


def _reader_gone(stream) -> bool:
    """True when ``stream`` writes into a pipe whose reading end was closed."""
    import select

    try:
        poller = select.poll()
        poller.register(stream.fileno(), 0)  # POLLERR is reported whatever the mask: the reader has gone
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, ValueError, OSError):
        return False  # not a real file (captured by a test, closed)


def output_reader_gone() -> bool:
    """True when stdout or stderr writes into a pipe whose reading end was closed."""
    return _reader_gone(sys.stdout) or _reader_gone(sys.stderr)


def is_closed_output(error: BaseException) -> bool:
    """True for a broken pipe that is this command's own output (not a DataLoader worker's, a server's)."""
    return isinstance(error, OutputClosed) or (isinstance(error, BrokenPipeError) and output_reader_gone())


def silence_outputs_without_reader() -> None:
    """Point stdout and stderr at /dev/null where their reader has gone, so that nothing, not even
    the interpreter's last flush, writes to them again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        if _reader_gone(stream):
            os.dup2(devnull, stream.fileno())
    os.close(devnull)


def end_for_broken_pipe() -> NoReturn:
    """End the command quietly once its reader has gone."""
    silence_outputs_without_reader()
    sys.exit(EXIT_BROKEN_PIPE)


@contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """Within the block, a write to an output whose reader has gone ends the command quietly
    (exit 141) instead of a BrokenPipeError traceback. Other broken pipes (a DataLoader worker's,
    a server's) are errors as before."""
    try:
        yield
        sys.stdout.flush()  # what is still buffered, while a broken pipe can still end quietly
    except BrokenPipeError as error:
        if not is_closed_output(error):
            raise
        end_for_broken_pipe()
