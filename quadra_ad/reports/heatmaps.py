"""Per-image heatmap overlays and raw full-resolution outputs.

One panel strip per image: the image as the model saw it, the anomaly map, the predicted mask
outlined on the image, and the true mask when there is one. With ``raw_outputs`` the anomaly
map (float32 TIFF) and predicted mask (PNG) are also written at the image's own resolution.
Used by the inference task and by the training task's visualizer callback; the run report uses
:func:`heatmap_strip` for its worst mistakes and :func:`write_predicted_masks` (the masks alone,
at the image's resolution) when the run has a pixel threshold, i.e. the data had masks.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from quadra_ad.datamodules.dataset import ImagePreparation
from quadra_ad.datamodules.images import read_image
from quadra_ad.evaluation.scored_set import ScoredSet
from quadra_ad.evaluation.thresholds import Calibration
from quadra_ad.files import atomic_path

HEATMAPS_DIR = "heatmaps"
RAW_OUTPUTS_DIR = "raw_outputs"
PREDICTED_MASKS_DIR = "predicted_masks"
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
           calibration: Calibration, caption: str) -> np.ndarray:
    scale = max(1, int(np.ceil(_MIN_PANEL / max(image.shape[:2]))))
    size = (image.shape[1] * scale, image.shape[0] * scale)

    def up(array: np.ndarray, nearest: bool = False) -> np.ndarray:
        return cv2.resize(array, size, interpolation=cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)

    big_image = up(image)
    heat = cv2.addWeighted(big_image, 0.4, up(_colour_map(anomaly_map, *calibration.map_range)), 0.6, 0)
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
        strip = heatmap_strip(scored, i, preparation, settings.calibration, original)
        target = output_dir / HEATMAPS_DIR / scored.defect_types[i]
        target.mkdir(parents=True, exist_ok=True)
        write_image(target / f"{path.stem}.png", strip)
        if settings.raw_outputs:
            _write_raw(scored.maps[i], preparation.region_size(original, path), mask_threshold,
                       output_dir / RAW_OUTPUTS_DIR / scored.defect_types[i], path.stem)
        written += 1
    return written


def heatmap_strip(scored: ScoredSet, index: int, preparation: ImagePreparation, calibration: Calibration,
                  original: torch.Tensor | None = None) -> np.ndarray:
    """The panel strip (BGR) of image ``index``: the image, and with a map the map and the masks.

    ``calibration`` labels the image and the pixels; ``original`` saves reading the file again.
    """
    path = Path(scored.image_paths[index])
    original = read_image(path) if original is None else original
    label, score = scored.labels[index], scored.scores[index]
    predicted = int(score >= calibration.image_threshold)
    caption = f"label={'?' if label is None else label} pred={predicted} score={score:.4g}"
    image = _to_bgr(preparation.display_image(original, path))
    if not scored.has_maps:  # an image-level model: the image and its verdict are all there is
        scale = max(1, int(np.ceil(_MIN_PANEL / max(image.shape[:2]))))
        return _titled(cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR), caption)
    anomaly_map = scored.maps[index].numpy()
    true_mask = scored.masks[index].numpy() if scored.has_masks else None
    return _strip(image, anomaly_map, anomaly_map >= calibration.mask_threshold, true_mask, calibration, caption)


def full_resolution_map(anomaly_map: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """The anomaly map resized (bilinear) to ``size`` = (height, width) of the region the model saw."""
    return F.interpolate(anomaly_map[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def predicted_mask(full_map: np.ndarray, pixel_threshold: float) -> np.ndarray:
    """Binary mask as an 8-bit image: 255 where the map reaches the pixel threshold, else 0."""
    return ((full_map >= pixel_threshold) * 255).astype(np.uint8)


def _write_raw(anomaly_map: torch.Tensor, size: tuple[int, int], pixel_threshold: float, folder: Path, stem: str) -> None:
    full = full_resolution_map(anomaly_map, size)
    folder.mkdir(parents=True, exist_ok=True)
    write_image(folder / f"{stem}_anomaly_map.tiff", full.astype(np.float32))
    write_image(folder / f"{stem}_pred_mask.png", predicted_mask(full, pixel_threshold))


def write_image(path: Path, array: np.ndarray) -> Path:
    """``cv2.imwrite`` whole or not at all; OpenCV reports a failed write only by returning False."""
    with atomic_path(path) as temporary:
        if not cv2.imwrite(str(temporary), array):
            raise OSError(f"cannot write image '{path}'")
    return path


def write_predicted_masks(scored: ScoredSet, preparation: ImagePreparation, output_dir: Path,
                          pixel_threshold: float) -> Path | None:
    """``predicted_masks/<defect type>/<image stem>.png`` for every image with a map: 255 where the map
    reaches ``pixel_threshold``, at the size of the image region the model saw (the whole image
    unless a crop was set). None when the model gives no maps."""
    if not scored.has_maps:
        return None
    folder = output_dir / PREDICTED_MASKS_DIR
    for i, image_path in enumerate(scored.image_paths):
        path = Path(image_path)
        size = preparation.region_size(read_image(path), path)
        target = folder / scored.defect_types[i]
        target.mkdir(parents=True, exist_ok=True)
        write_image(target / f"{path.stem}.png", predicted_mask(full_resolution_map(scored.maps[i], size), pixel_threshold))
    return folder
