"""The one exception family for user mistakes.

Raised at the boundary (config keys, files on disk) with a single line that names the key or
path at fault and what to do. The CLI prints it without a traceback unless
``HYDRA_FULL_ERROR=1``.
"""

from collections.abc import Iterator

#: What the command prints when Ctrl-C stops it before a run started (exit code 130).
INTERRUPTED_AT_START = "quadra-ad: interrupted before the run started: nothing was written"


class QuadraADError(Exception):
    """A user-fixable problem, described in one line."""


class ConfigError(QuadraADError):
    """A config key is missing, unknown or has a value we cannot use."""


class ConfigErrors(ConfigError):
    """Several config keys at fault at once (e.g. a Quadra file's keys with no counterpart):
    one line each, all reported together so that one run shows every fix."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = list(lines)


class DatasetError(QuadraADError):
    """A dataset folder or file does not follow the expected layout or cannot be read."""


class ExportError(QuadraADError):
    """A model cannot be exported in the requested format."""


class DiskFullError(QuadraADError):
    """The disk of the run folder filled up: what was written before is complete and kept."""


def first_line(error: BaseException, typed: bool = False, limit: int = 200) -> str:
    """The first line of an error's message, for one-line reports, logs and run tags (at most
    ``limit`` characters); its type's name when the message is empty. ``typed``: prefixed with the
    type's name (``OSError: ...``), where the reader needs to know what failed, not only why."""
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else ""
    if typed:
        return f"{type(error).__name__}: {line}"[:limit]
    return (line or type(error).__name__)[:limit]


def mistake_line(error: BaseException) -> str:
    """The line a user reads for a mistake: the whole message on one line.

    An error raised in a DataLoader worker comes back re-wrapped with the worker's traceback in
    its message; the line we wrote is the last one, after ``module.ErrorClass: ``.
    """
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(error):
        last = lines[-1]
        prefix = f"{type(error).__module__}.{type(error).__name__}: "
        return last[len(prefix):] if last.startswith(prefix) else last
    return " ".join(line.strip() for line in lines)


def exception_chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error``, then what caused it (or was being handled when it was raised), and so on, each once.

    A chain can loop: an error re-raised inside the handler of the error that wraps it (as
    ``instantiate_node`` does with Hydra's ``InstantiationException``) becomes the context of its
    own wrapper, and a walk that does not remember where it has been never ends.
    """
    visited: set[int] = set()
    while error is not None and id(error) not in visited:
        visited.add(id(error))
        yield error
        error = error.__cause__ or error.__context__
