"""Run one composed config: seed, build the task named by ``cfg.task``, execute its lifecycle,
and give back the objective a sweeper optimises."""

import logging
import math
from pathlib import Path

from omegaconf import DictConfig

from quadra_ad.config.instantiation import instantiate_node
from quadra_ad.config.resolvers import sweep_id
from quadra_ad.tasks.base import Task

log = logging.getLogger(__name__)


def hydra_output_dir() -> Path:
    """The run folder Hydra created for this job (Hydra does not chdir into it)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def build_task(cfg: DictConfig, output_dir: Path | None = None) -> Task:
    """Seed everything and build the task ``cfg.task`` names, writing into ``output_dir``
    (default: the run folder Hydra made)."""
    from lightning.pytorch import seed_everything

    output_dir = Path(output_dir) if output_dir is not None else hydra_output_dir()
    output_dir.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.core.seed, workers=True, verbose=False)
    # Partial first: hydra's instantiate() owns the keyword ``config`` itself.
    task_factory = instantiate_node(cfg, "task", _partial_=True, _recursive_=False)
    return task_factory(config=cfg, output_dir=output_dir)


def run(cfg: DictConfig, output_dir: Path | None = None) -> Task:
    """Execute the task in ``cfg`` and return it (outputs are in ``task.output_dir``)."""
    task = build_task(cfg, output_dir)
    task.execute()
    return task


def objective(task: Task, cfg: DictConfig) -> float | None:
    """The test metric ``core.optimized_metric`` names, as the value a Hydra sweeper optimises.

    None when no metric is named; NaN (which a sweeper records as a failed trial) when the run
    could not compute it, e.g. AUROC without both good and anomalous test images.
    """
    name = cfg.core.get("optimized_metric")
    if not name:
        return None
    value = task.metrics.get(str(name))
    if value is None:
        # Only a sweep uses the value: a single run on data without this metric need not hear of it.
        level = logging.WARNING if sweep_id() is not None else logging.DEBUG
        log.log(level, "core.optimized_metric=%s: this run has no such metric (it has: %s); returning NaN",
                name, ", ".join(sorted(task.metrics)) or "none")
        return math.nan
    return float(value)
