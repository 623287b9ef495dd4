"""Run one composed config: seed, build the task named by ``cfg.task``, execute its lifecycle."""

import logging
from pathlib import Path

from omegaconf import DictConfig

from quadra_ad.config.instantiation import instantiate_node
from quadra_ad.tasks.base import Task

log = logging.getLogger(__name__)


def hydra_output_dir() -> Path:
    """The run folder Hydra created for this job (Hydra does not chdir into it)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def run(cfg: DictConfig, output_dir: Path | None = None) -> Task:
    """Execute the task in ``cfg`` and return it (outputs are in ``task.output_dir``)."""
    from lightning.pytorch import seed_everything

    output_dir = Path(output_dir) if output_dir is not None else hydra_output_dir()
    output_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.core.seed, workers=True, verbose=False)
    # Partial first: hydra's instantiate() owns the keyword ``config`` itself.
    task_factory = instantiate_node(cfg, "task", _partial_=True, _recursive_=False)
    task: Task = task_factory(config=cfg, output_dir=output_dir)
    task.execute()
    return task
