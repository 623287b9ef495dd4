"""The ``callbacks`` config group turned into Lightning callbacks."""

import logging

from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from quadra_ad.callbacks.score_collector import VALIDATION_AUROC
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


def without_auroc_checkpoints(callbacks: list[Callback]) -> list[Callback]:
    """``callbacks`` minus checkpoints that monitor the validation AUROC.

    For validation images that are not both good and anomalous: there is no AUROC, so no best
    epoch; the last epoch is used.
    """
    dropped = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint) and cb.monitor == VALIDATION_AUROC]
    if dropped:
        log.warning("The test images are not both good and anomalous: no best-epoch checkpoint; the last epoch is used.")
    return [cb for cb in callbacks if cb not in dropped]
