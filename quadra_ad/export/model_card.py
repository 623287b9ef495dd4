"""A trained model's ``model.json`` (the model card) and the valid area mask it names, written
beside its exported graphs.

The card is built here from plain values the training run hands over (no task, model or
datamodule object) and written by :meth:`quadra_ad.deploy.model_card.ModelCard.write`, which hashes
every file it names and its own content: the format and its checks are the deploy room's, which
reads the card back.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from quadra_ad.deploy.model_card import VALID_AREA_MASK, ModelCard
from quadra_ad.evaluation.thresholds import Calibration
from quadra_ad.files import atomic_path
from quadra_ad.versions import package_versions


def write_valid_area_mask(valid_area: Any, folder: Path) -> Path | None:
    """The training's region-of-interest mask (H×W, non-zero = valid; a CPU tensor or an array) as
    ``valid_area_mask.png`` (0/255) beside the graphs, so inference applies the same one; None when
    the training had none."""
    if valid_area is None:
        return None
    import cv2
    import numpy as np

    path = Path(folder) / VALID_AREA_MASK
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), (np.asarray(valid_area) != 0).astype(np.uint8) * 255):
            raise OSError(f"cannot write the valid area mask to '{path}'")
    return path


def write_model_card(
    folder: Path, *, model_type: type, input_size: list[int], mean: list[float], std: list[float],
    calibration: Calibration, task_type: str, valid_area: Any, crop_area: list[int] | None,
    exported: Mapping[str, tuple[Path, int | None]], has_anomaly_map: bool, training: dict[str, Any],
) -> Path:
    """Write ``folder/model.json`` (and the valid area mask, when there is one) for graphs already
    written into ``folder``; returns the card's path.

    ``exported``: ``{format: (graph file, fixed batch size or None)}`` as the writers return it;
    ``training``: where the model comes from (experiment, run folder, dataset, seed).
    """
    folder = Path(folder)
    mask_file = write_valid_area_mask(valid_area, folder)
    card = ModelCard(
        model_class=f"{model_type.__module__}.{model_type.__name__}",
        input_size=list(input_size),
        mean=list(mean),
        std=list(std),
        calibration=calibration,
        task_type=task_type,
        valid_area_mask=mask_file.name if mask_file is not None else None,
        crop_area=crop_area,
        files={export_format: path.name for export_format, (path, _) in exported.items()},
        fixed_batch_size={export_format: batch for export_format, (_, batch) in exported.items() if batch is not None},
        has_anomaly_map=has_anomaly_map,
        versions=package_versions(),
        training=dict(training),
    )
    return card.write(folder)
