"""Values a run decides once it has started, written back into its composed config.

``config_resolved.yaml`` and the MLflow params then say what ran, not what was asked for: the
Trainer arguments the model filled in (not ``null``), the batch size Lightning's finder chose (not
the one it started from). The one place a run rewrites its own config.
"""

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

#: The key the batch size finder decides.
FOUND_BATCH_SIZE_KEY = "datamodule.train_batch_size"


def record_value(cfg: DictConfig, key: str, value: Any) -> None:
    """Set ``key`` (dotted) to ``value`` in ``cfg``, replacing what it held, whether or not the key was there."""
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False, force_add=True)


def finds_batch_size(cfg: DictConfig) -> bool:
    """True when Lightning's batch size finder picks :data:`FOUND_BATCH_SIZE_KEY` once training starts."""
    return bool(OmegaConf.select(cfg, "callbacks.batch_size_finder.enabled", default=False))
