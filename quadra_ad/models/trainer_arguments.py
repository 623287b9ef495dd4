"""The Trainer arguments a model asks for, merged with the ``trainer`` config.

anomalib models declare ``trainer_arguments`` (PaDiM: one epoch, no sanity steps; most others:
no sanity steps, their gradient clipping). anomalib's Engine lays them over the user's arguments;
here the config wins wherever it sets a key (a value that is not null), and the model fills in
the rest — so experiment files need not restate what the model already says.

One exception: a memory-bank model (PaDiM, PatchCore, DFM, DFKDE) fits its memory once, at the
end of its first training epoch, and never again; later epochs would only collect features it
never uses. Such a model always trains the epochs it declares, whatever ``trainer.max_epochs``.
When neither the config nor the model gives ``max_epochs`` (a trainable model picked with
``model=<name>`` on an experiment of another model), one epoch is trained and a warning names
the key: Lightning's own default would be 1000 epochs.

:func:`record_trainer_arguments` writes the merged arguments back into the run's config (so
``config_resolved.yaml`` and MLflow say what ran) and :func:`build_trainer` makes the Trainer from
them, refusing a DDP run whose other processes could not start.
"""

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from quadra_ad.config.instantiation import instantiate_node
from quadra_ad.config.recorded_values import record_value
from quadra_ad.runtime.ddp_processes import check_processes_can_start

log = logging.getLogger(__name__)

#: Epochs when neither the config nor the model sets them (what the trainer config said before).
DEFAULT_MAX_EPOCHS = 1


def fits_once(model: Any) -> bool:
    """True for anomalib's memory-bank models, which fit at the end of their first epoch."""
    from anomalib.models.components import MemoryBankMixin

    return isinstance(model, MemoryBankMixin)


def model_trainer_arguments(model: Any) -> dict[str, Any]:
    """The model's own ``trainer_arguments`` (empty for a model that declares none)."""
    return dict(getattr(model, "trainer_arguments", None) or {})


def merge_trainer_arguments(trainer_cfg: DictConfig, model: Any) -> DictConfig:
    """``trainer_cfg`` with null keys dropped and the model's arguments filling what it leaves unset."""
    container = OmegaConf.to_container(trainer_cfg, resolve=True)
    merged = {key: value for key, value in container.items() if value is not None}
    for key, value in model_trainer_arguments(model).items():
        if key not in merged:
            merged[key] = value
        elif merged[key] != value:
            log.debug("trainer.%s=%s from the config, not %s as %s asks", key, merged[key], value, type(model).__name__)
    one_pass_epochs = model_trainer_arguments(model).get("max_epochs")
    if fits_once(model) and one_pass_epochs is not None and merged.get("max_epochs") != one_pass_epochs:
        log.warning(
            "trainer.max_epochs=%s ignored: %s fits its memory bank once, after its first epoch; "
            "more epochs would only collect features it never uses",
            merged.get("max_epochs"), type(model).__name__,
        )
        merged["max_epochs"] = one_pass_epochs
    if merged.get("max_epochs") is None and merged.get("max_steps", -1) == -1:
        log.warning("trainer.max_epochs is not set and %s declares no epochs: training 1 epoch; "
                    "set trainer.max_epochs (its experiment base/anomaly/<model> has the recipe's)", type(model).__name__)
        merged["max_epochs"] = DEFAULT_MAX_EPOCHS
    return OmegaConf.create(merged)


def record_trainer_arguments(cfg: DictConfig, model: Any) -> None:
    """``cfg.trainer`` replaced by what the Trainer really gets: the config's keys, the model's filling the rest."""
    record_value(cfg, "trainer", merge_trainer_arguments(cfg.trainer, model))


def build_trainer(cfg: DictConfig, callbacks: list, output_dir: Path, enable_checkpointing: bool) -> Any:
    """The Trainer ``cfg.trainer`` describes, with ``callbacks``, logging its history as CSV in
    ``output_dir`` (``lightning_logs/``); refused (ConfigError) when it is a DDP run whose other
    processes cannot start from this command line."""
    from lightning.pytorch.loggers import CSVLogger

    trainer = instantiate_node(
        cfg,
        "trainer",
        callbacks=callbacks,
        logger=CSVLogger(save_dir=str(output_dir), name="lightning_logs"),
        default_root_dir=str(output_dir),
        enable_checkpointing=enable_checkpointing,
    )
    check_processes_can_start(trainer, cfg.trainer.get("strategy"))
    return trainer
