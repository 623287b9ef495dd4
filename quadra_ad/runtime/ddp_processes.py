"""Whether the other processes of a DDP run can start, checked before any of them is started.

Lightning's ``ddp`` starts the N-1 other processes by running the same command line again (its
``_SubprocessScriptLauncher``); each of them then runs the whole task. That works from the
``quadra-ad`` command (Hydra gives them this run's folder) and under torchrun or SLURM (which start
the processes themselves), never from ``run()`` inside a Python session (a pytest session, a
notebook: their command line is not the run) nor inside a multirun, whose command line is the
whole sweep. Lightning and Hydra are imported by the functions, only when a check runs.
"""

from typing import Any

from quadra_ad.errors import ConfigError


def relaunches_command_line(trainer: Any) -> bool:
    """True when fitting will start the other DDP processes by running this command line again."""
    # Lightning's launcher class is private: no public name says "runs the command line again".
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    return (trainer.world_size > 1 and isinstance(launcher, _SubprocessScriptLauncher)
            and not launcher.cluster_environment.creates_processes_externally)


def check_processes_can_start(trainer: Any, strategy: Any) -> None:
    """Refuse a DDP run whose command line cannot be run again as the other processes."""
    if not relaunches_command_line(trainer):
        return
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        raise ConfigError(
            f"trainer.strategy={strategy} with {trainer.world_size} processes starts the others by "
            f"running the command line again: start the run with the quadra-ad command (or torchrun), not from "
            f"quadra_ad.run.run() in a Python session")
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(
            f"trainer.strategy={strategy} cannot run inside a multirun (-m): its other processes "
            f"would run the whole sweep again; run each configuration as its own quadra-ad command")
