"""The ``callbacks`` config group turned into Lightning callbacks."""

import logging
from collections.abc import Callable

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from quadra_ad.callbacks.memory_bank_gather import MemoryBankGather
from quadra_ad.callbacks.score_collector import VALIDATION_AUROC, ScoreCollector
from quadra_ad.callbacks.training_start import OnTrainingStart
from quadra_ad.config.instantiation import instantiate_node

log = logging.getLogger(__name__)


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    """Instantiate every ``callbacks.<name>`` entry that is not null and not ``enabled: false``."""
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None or "_target_" not in node:
            continue
        if node.get("enabled", True) is False:
            continue
        callback_node = OmegaConf.masked_copy(node, [k for k in node if k != "enabled"])
        callbacks.append(instantiate_node(OmegaConf.create({"callbacks": {name: callback_node}}), f"callbacks.{name}"))
    return callbacks


def training_callbacks(cfg: DictConfig, collector: ScoreCollector, both_labels: bool,
                       on_training_start: Callable[..., None] | None = None) -> list[Callback]:
    """What a training run's Trainer gets: the score collector, the memory-bank gathering (a no-op
    in one process), the ``callbacks`` group and, when given, a hook run once training starts.
    ``both_labels``: the validation images are good and anomalous; else no checkpoint can follow
    their AUROC."""
    callbacks = [collector, MemoryBankGather(), *build_callbacks(cfg)]
    if on_training_start is not None:
        callbacks.append(OnTrainingStart(on_training_start))
    return callbacks if both_labels else without_auroc_checkpoints(callbacks)


def without_auroc_checkpoints(callbacks: list[Callback]) -> list[Callback]:
    """``callbacks`` minus checkpoints that monitor the validation AUROC.

    For validation images that are not both good and anomalous: there is no AUROC, so no best
    epoch; the last epoch is used.
    """
    dropped = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor == VALIDATION_AUROC]
    if dropped:
        log.warning("The test images are not both good and anomalous: no best-epoch checkpoint; the last epoch is used.")
    return [cb for cb in callbacks if cb not in dropped]
