"""How a process and a run end, and what the process does around the work: signals (Ctrl-C,
SIGTERM, a closed output), the run's final status and exit code, the quiet terminal, the garbage
collector, memory figures, and what the processes of a DDP run exchange.

Imports nothing above :mod:`quadra_ad.errors`: every other room may use it.
"""
