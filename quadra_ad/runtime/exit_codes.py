"""What a ``quadra-ad`` command exits with, by how it ended: the table line scripts and shells read.

A process a signal stopped reports ``128 + the signal's number`` in a shell, so a run stopped by
Ctrl-C, SIGTERM or a closed output exits as if that signal had ended it, and a script cannot
tell the difference.
"""

#: The run finished (a sweep: every job did).
EXIT_OK = 0
#: A crash (a bug, a library's error): the traceback was printed. A sweep with a crashed job.
EXIT_CRASH = 1
#: A user mistake (config, data, model file), said in one line. A sweep whose failed jobs were all mistakes.
EXIT_MISTAKE = 2
#: Ctrl-C (128 + SIGINT).
EXIT_INTERRUPTED = 130
#: The reader of the output went away, ``quadra-ad … | head`` (128 + SIGPIPE).
EXIT_BROKEN_PIPE = 141
#: SIGTERM: ``kill``, systemd, Docker, SLURM pre-emption (128 + SIGTERM).
EXIT_TERMINATED = 143
