"""Everything checked before a run starts, in about a second and without torch or anomalib:
the values of the keys, the working directory, the dataset folder and, for inference, the
exported model and its card.

The CLI calls :func:`check_before_run` on the composed config before Hydra creates a run folder,
so a mistake costs one line, exit code 2, and leaves nothing behind.
"""

import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from quadra_ad.checks.values import validate_values
from quadra_ad.config.quadra_keys import INFERENCE_TASK
from quadra_ad.datamodules.augmentations import check_augmentations
from quadra_ad.errors import ConfigError
from quadra_ad.models.backbone_weights import check_backbone_weights_file

#: The datamodule whose folder the user gives (the digit datamodules write their own).
FOLDER_DATAMODULE = "quadra_ad.datamodules.AnomalyDataModule"


def check_working_directory(folder: Path | None = None) -> None:
    """quadra-ad writes ``outputs/`` and ``mlflow.db`` into the directory it runs from.

    Tried with a real file, not ``os.access``: that says yes to root on folders nobody can write
    (``/proc``, read-only mounts).
    """
    folder = Path.cwd() if folder is None else Path(folder)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError:
        raise ConfigError(f"the working directory '{folder}' is not writable: quadra-ad writes "
                          f"outputs/ and mlflow.db there; run it from a folder you can write to") from None


def _inference_preparation(cfg: DictConfig) -> dict:
    """For an inference run: the card's checks, and the crop and mask it brings."""
    from quadra_ad.deploy.model_card import check_input_size, locate_exported_model, preparation_from_card
    from quadra_ad.deploy.model_uri import is_model_uri

    model_path = OmegaConf.select(cfg, "task.model_path")
    if is_model_uri(model_path):  # fetched by the task from the MLflow store; its card is checked there
        return {"crop_area": None, "valid_area_mask": None}
    path, card = locate_exported_model(model_path)
    check_input_size(OmegaConf.select(cfg, "datamodule.image_size"), card)
    return preparation_from_card(card, path.parent)


def check_dataset_folder(cfg: DictConfig) -> None:
    """The dataset preflight for a folder datamodule, with the preparation the run will use."""
    node = cfg.get("datamodule")
    if node is None or node.get("_target_") != FOLDER_DATAMODULE:
        return
    from quadra_ad.checks.dataset import check_dataset
    from quadra_ad.datamodules.layout import category_folder

    preparation = {"crop_area": node.get("crop_area"), "valid_area_mask": node.get("valid_area_mask")}
    if OmegaConf.select(cfg, "task._target_") == INFERENCE_TASK:
        from_card = _inference_preparation(cfg)
        preparation = {key: value if value is not None else from_card[key] for key, value in preparation.items()}
    crop = preparation["crop_area"]
    check_dataset(category_folder(node.data_path, node.get("category")), node.get("phase", "train"), node.get("mask_suffix", "_mask"),
                  preparation["valid_area_mask"], list(crop) if crop is not None else None,
                  val_split=node.get("val_split", "auto"))


def check_before_run(cfg: DictConfig) -> None:
    """Raise the one-line error of the first kind of mistake found; return when the run can start."""
    validate_values(cfg)
    check_augmentations(cfg)
    check_backbone_weights_file(cfg)
    check_working_directory()
    if OmegaConf.select(cfg, "task._target_") == INFERENCE_TASK and cfg.datamodule.get("_target_") != FOLDER_DATAMODULE:
        _inference_preparation(cfg)
    check_dataset_folder(cfg)
