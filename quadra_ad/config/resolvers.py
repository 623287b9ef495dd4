"""OmegaConf resolvers used by the shipped configs.

``${cwd:}`` is the directory quadra-ad was started from. Unlike ``${hydra:runtime.cwd}`` it also
resolves outside a Hydra run (compose API, tests), so the same configs work everywhere.

``${sweep_experiment:<name>}`` is ``<name>`` in a single run and ``sweep_<sweep folder name>`` in a
multirun, so every job of one sweep lands in one MLflow experiment even when the jobs run
different experiment files (whose ``core.name`` differ).
"""

import os
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


def register_resolvers() -> None:
    """Register our resolvers once; later calls are no-ops."""
    if not OmegaConf.has_resolver("cwd"):
        OmegaConf.register_new_resolver("cwd", lambda: os.getcwd())
    if not OmegaConf.has_resolver("sweep_experiment"):
        OmegaConf.register_new_resolver("sweep_experiment", _sweep_experiment)
