"""How a process and a run end, and what the process does around the work. One owner each:

- :mod:`~quadra_ad.runtime.run_ending`: :func:`~quadra_ad.runtime.run_ending.ending_the_run`, the
  one context manager that maps what stopped a run to its status (FINISHED/FAILED/KILLED) and the
  command's exit code;
- :mod:`~quadra_ad.runtime.exit_codes`: those exit codes, named;
- :mod:`~quadra_ad.runtime.signals`: SIGTERM handled like Ctrl-C, signals held back while a stopped
  run is logged, a DDP run stopped whole;
- :mod:`~quadra_ad.runtime.closed_output`: ``quadra-ad … | head`` ends quietly;
- :mod:`~quadra_ad.runtime.quiet_terminal`, :mod:`~quadra_ad.runtime.garbage_collection`,
  :mod:`~quadra_ad.runtime.resources`: the terminal, the collector, memory figures;
- :mod:`~quadra_ad.runtime.distributed`: what the processes of a DDP run exchange;
- :mod:`~quadra_ad.runtime.ddp_processes`: whether a DDP run's other processes can start.

Only this room sets signal handlers, leaves a process with ``os._exit``, or catches what stops a
run (``tests/test_package_structure.py`` holds every other room to it). It imports nothing above
:mod:`quadra_ad.errors`: every other room may use it.
"""
