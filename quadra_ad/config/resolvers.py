"""OmegaConf resolvers used by the shipped configs.

``${cwd:}`` is the directory quadra-ad was started from. Unlike ``${hydra:runtime.cwd}`` it also
resolves outside a Hydra run (compose API, tests), so the same configs work everywhere.

``${sweep_experiment:<name>}`` is ``<name>`` in a single run and ``sweep_<sweep folder name>`` in a
multirun, so every job of one sweep lands in one MLflow experiment even when the jobs run
different experiment files (whose ``core.name`` differ).

``${sweep_job_folder:<job number>,<core.name>,<category or null>}`` names a sweep job's folder
(``hydra.sweep.subdir``): ``0_padim_bottle``. Hydra's launchers hand the registered resolvers to
their workers.
"""

import os
import re
from pathlib import Path

from omegaconf import OmegaConf


def sweep_id() -> str | None:
    """Name of the current multirun's sweep folder, or None outside a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(str(hydra_cfg.sweep.dir)).name


def _sweep_experiment(single_run_name: str) -> str:
    sweep = sweep_id()
    return f"sweep_{sweep}" if sweep else str(single_run_name)


#: Characters a job folder name keeps; any other becomes "-" (a category may hold spaces or slashes).
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
#: Longest piece of a job folder name taken from the config (a long name must not hit path limits).
_PIECE_CHARS = 40


def job_folder_name(number: int | str, name: str, category: str | None = None) -> str:
    """``<job number>_<core.name>[_<category>]``, e.g. ``0_padim_bottle``: what the job ran, safe
    as a folder name on any system. The number leads: the report reads the job order from it."""
    pieces = [str(name)]
    if category and str(category) not in str(name).split("_"):  # a name such as padim_bottle has it already
        pieces.append(str(category))
    safe = [_UNSAFE.sub("-", piece).strip("-.")[:_PIECE_CHARS] or "-" for piece in pieces]
    return "_".join([str(number), *safe])


def register_resolvers() -> None:
    """Register our resolvers once; later calls are no-ops."""
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", lambda: os.getcwd())
    if not OmegaConf.has_resolver("sweep_experiment"):
        OmegaConf.register_new_resolver("sweep_experiment", _sweep_experiment)
    if not OmegaConf.has_resolver("sweep_job_folder"):
        OmegaConf.register_new_resolver("sweep_job_folder", job_folder_name)
