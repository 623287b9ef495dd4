"""The training's image preparation, reproduced with NumPy (no torch): what the model card says.

Order as in training: pixels outside the valid-area mask set to 0, the crop box cut out, an
antialiased bilinear resize to the input size, per-channel normalisation. The resize is the
same separable triangle filter that torch's ``interpolate(..., antialias=True)`` (and PIL)
apply, written as two small matrix products, so scores match the training's to float32
rounding.
"""

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from quadra_ad.deploy.images import read_mask_array
from quadra_ad.deploy.model_card import ModelCard
from quadra_ad.errors import DatasetError


@lru_cache(maxsize=32)
def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of the antialiased bilinear filter (align_corners=False)."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = scale * (i + 0.5)
        first = max(int(center - support + 0.5), 0)
        last = min(int(center + support + 0.5), in_size)
        taps = np.arange(first, last)
        row = np.clip(1.0 - np.abs((taps - center + 0.5) * inverse), 0.0, None)
        total = row.sum()
        weights[i, first:last] = row / total if total > 0 else row
    return weights.astype(np.float32)


def resize_antialiased(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """H×W×C float32 resized to ``size`` (height, width), as torch's antialiased bilinear does."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    rows = np.tensordot(_resize_weights(image.shape[0], height), image, axes=(1, 0))
    return np.ascontiguousarray(np.tensordot(rows, _resize_weights(image.shape[1], width), axes=(1, 1)).transpose(0, 2, 1))


class Preprocessor:
    """Float RGB H×W×3 in [0, 1] → the graph's normalised (3, h, w) input, per the model card."""

    def __init__(self, card: ModelCard, folder: Path) -> None:
        self.input_size = (int(card.input_size[0]), int(card.input_size[1]))
        self.mean = np.asarray(card.mean, dtype=np.float32)
        self.std = np.asarray(card.std, dtype=np.float32)
        self.crop_area = list(card.crop_area) if card.crop_area is not None else None
        self.valid_area = read_mask_array(Path(folder) / card.valid_area_mask) if card.valid_area_mask else None

    def region(self, image: np.ndarray, source: str) -> np.ndarray:
        """The part of the image the model looks at: valid-area masked, then cropped."""
        if self.valid_area is not None:
            if self.valid_area.shape != image.shape[:2]:
                raise DatasetError(
                    f"the model's valid area mask is {self.valid_area.shape} (HxW) but {source} is "
                    f"{image.shape[:2]}: give images of the size the model was trained on"
                )
            image = image * self.valid_area[:, :, None].astype(np.float32)
        if self.crop_area is not None:
            x1, y1, x2, y2 = self.crop_area
            height, width = image.shape[:2]
            if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                raise DatasetError(f"the model's crop_area {self.crop_area} lies outside {source} ({width}x{height} WxH)")
            image = image[y1:y2, x1:x2]
        return image

    def __call__(self, image: np.ndarray, source: str = "the image") -> np.ndarray:
        resized = resize_antialiased(self.region(image, source), self.input_size)
        return ((resized - self.mean) / self.std).transpose(2, 0, 1).astype(np.float32, copy=False)

    def to_original(self, anomaly_map: np.ndarray, original_size: tuple[int, int]) -> np.ndarray:
        """A (h, w) map of the model's input laid back over the original image (0 outside the crop)."""
        height, width = original_size
        x1, y1, x2, y2 = self.crop_area if self.crop_area is not None else (0, 0, width, height)
        full = np.zeros((height, width), dtype=np.float32)
        full[y1:y2, x1:x2] = cv2.resize(anomaly_map.astype(np.float32), (x2 - x1, y2 - y1), interpolation=cv2.INTER_LINEAR)
        return full
