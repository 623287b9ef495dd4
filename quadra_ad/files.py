"""Files written whole or not at all, and telling a full disk from other failures.

Every file of a run folder is first written under a hidden temporary name beside its target and
renamed over it once complete (``os.replace`` is atomic on one filesystem). A write that fails —
a full disk, a kill — leaves the previous file or none, never a truncated one that a later step
(inference, ``quadra-ad-upload``) would take for real.
"""

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quadra_ad.errors import exception_chain

#: Errors that mean "no room left", whatever the filesystem.
FULL_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
#: Below this many free bytes, a failed write is taken for a full disk (libraries that report
#: write failures without an errno: torch's zip writer, OpenCV).
NEARLY_FULL_BYTES = 1 << 20


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (same suffix, for writers that go by it), renamed over
    ``path`` when the block succeeds and removed when it fails."""
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    """``path`` holds ``text`` (UTF-8), written whole or not at all."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def disk_is_full(error: BaseException, folder: str | Path) -> bool:
    """True when ``error`` (or what caused it) is a write that ran out of space in ``folder``."""
    writing = False
    for seen in exception_chain(error):
        if isinstance(seen, OSError) and seen.errno in FULL_DISK_ERRNOS:
            return True
        # torch's zip writer reports a full disk as a RuntimeError without an errno.
        writing = writing or isinstance(seen, (OSError, RuntimeError)) or "write" in str(seen).lower()
    if not writing:
        return False
    try:
        return shutil.disk_usage(folder).free < NEARLY_FULL_BYTES
    except OSError:
        return False


def file_kind(mode: int) -> str:
    """What an ``os.stat`` mode is, in words ("a file", "a folder", "a named pipe (FIFO)" …).

    Callers check the mode before opening a path: a named pipe or a device blocks on open.
    """
    for test, kind in ((stat.S_ISREG, "a file"), (stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return kind
    return "not a regular file"
