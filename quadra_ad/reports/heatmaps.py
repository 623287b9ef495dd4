"""Per-image heatmap overlays and raw full-resolution outputs.

One panel strip per image: the image as the model saw it, the anomaly map, the predicted mask
outlined on the image, and the true mask when there is one. With ``raw_outputs`` the anomaly
map (float32 TIFF) and predicted mask (PNG) are also written at the image's own resolution.
Used by the inference task and by the training task's visualizer callback.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from quadra_ad.datamodules.dataset import ImagePreparation
from quadra_ad.datamodules.images import read_image
from quadra_ad.files import atomic_path
from quadra_ad.scored_set import ScoredSet
from quadra_ad.thresholds import Calibration

HEATMAPS_DIR = "heatmaps"
RAW_OUTPUTS_DIR = "raw_outputs"
_MIN_PANEL = 256


@dataclass(frozen=True)
class HeatmapSettings:
    """How to draw: the calibration gives the thresholds for labels and masks and the map range
    for colours; the flags say what to write."""

    calibration: Calibration
    only_wrong: bool = False
    raw_outputs: bool = False


def _to_bgr(image: torch.Tensor) -> np.ndarray:
    array = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return cv2.cvtColor(array, cv2.COLOR_RGB2BGR)


def _colour_map(anomaly_map: np.ndarray, low: float, high: float) -> np.ndarray:
    scaled = np.clip((anomaly_map - low) / (high - low if high > low else 1.0), 0, 1)
    return cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)


def _outline(image: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int]) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    drawn = image.copy()
    cv2.drawContours(drawn, contours, -1, colour, max(1, image.shape[0] // 128))
    return drawn


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    bar = np.full((24, panel.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(bar, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, panel])


def _strip(image: np.ndarray, anomaly_map: np.ndarray, pred_mask: np.ndarray, true_mask: np.ndarray | None,
           settings: HeatmapSettings, caption: str) -> np.ndarray:
    scale = max(1, int(np.ceil(_MIN_PANEL / max(image.shape[:2]))))
    size = (image.shape[1] * scale, image.shape[0] * scale)

    def up(array: np.ndarray, nearest: bool = False) -> np.ndarray:
        return cv2.resize(array, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)

    big_image = up(image)
    heat = cv2.addWeighted(big_image, 0.4, up(_colour_map(anomaly_map, *settings.calibration.map_range)), 0.6, 0)
    panels = [
        _titled(big_image, caption),
        _titled(heat, "anomaly map"),
        _titled(_outline(big_image, up(pred_mask.astype(np.uint8), nearest=True), (0, 0, 255)), "predicted mask"),
    ]
    if true_mask is not None:
        panels.append(_titled(_outline(big_image, up(true_mask.astype(np.uint8), nearest=True), (0, 200, 0)), "true mask"))
    return np.hstack(panels)


def write_heatmaps(scored: ScoredSet, preparation: ImagePreparation, output_dir: Path, settings: HeatmapSettings) -> int:
    """Write overlays (and raw outputs when asked) for the images of ``scored``; return how many."""
    if not scored.has_maps:
        return 0
    written = 0
    image_threshold, mask_threshold = settings.calibration.image_threshold, settings.calibration.mask_threshold
    for i, image_path in enumerate(scored.image_paths):
        label = scored.labels[i]
        predicted = int(scored.scores[i] >= image_threshold)
        if settings.only_wrong and (label is None or predicted == label):
            continue
        path = Path(image_path)
        original = read_image(path)
        anomaly_map = scored.maps[i].numpy()
        pred_mask = anomaly_map >= mask_threshold
        true_mask = scored.masks[i].numpy() if scored.has_masks else None
        caption = f"label={'?' if label is None else label} pred={predicted} score={scored.scores[i]:.4g}"
        strip = _strip(_to_bgr(preparation.display_image(original, path)), anomaly_map, pred_mask, true_mask, settings, caption)
        target = output_dir / HEATMAPS_DIR / scored.defect_types[i]
        target.mkdir(parents=True, exist_ok=True)
        write_image(target / f"{path.stem}.png", strip)
        if settings.raw_outputs:
            _write_raw(scored.maps[i], preparation.region_size(original, path), mask_threshold,
                       output_dir / RAW_OUTPUTS_DIR / scored.defect_types[i], path.stem)
        written += 1
    return written


def _write_raw(anomaly_map: torch.Tensor, size: tuple[int, int], pixel_threshold: float, folder: Path, stem: str) -> None:
    full = F.interpolate(anomaly_map[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / f"{stem}_anomaly_map.tiff", full.astype(np.float32))
    write_image(folder / f"{stem}_pred_mask.png", ((full >= pixel_threshold) * 255).astype(np.uint8))


def write_image(path: Path, array: np.ndarray) -> Path:
    """``cv2.imwrite`` whole or not at all; OpenCV reports a failed write only by returning False."""
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), array):
            raise OSError(f"cannot write image '{path}'")
    return path
