"""``Predictor``: the one way to run an exported model — Python API, ``quadra-ad-predict`` and
the inference task all go through it.

    from quadra_ad.deploy import Predictor
    predictor = Predictor.load("outputs/bottle/<run>/deployment_model")      # or model.onnx / model.pt
    result = predictor.predict("part_0001.png")                              # or arrays, PIL images, lists
    result.label, result.score, result.normalized_score, result.anomaly_map_original

Images are prepared exactly as the training prepared them (the model card's valid-area mask,
crop, size and normalisation) with NumPy and OpenCV; with an ONNX graph nothing here imports
torch. Labels follow the card's rule, ``score >= threshold`` (float32 scores, as the training
run's predictions.csv).
"""

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quadra_ad.deploy.images import read_image_array, to_unit_rgb
from quadra_ad.deploy.loader import load_exported_model
from quadra_ad.deploy.model_card import ModelCard
from quadra_ad.deploy.model_uri import fetch_deployment_folder, is_model_uri
from quadra_ad.deploy.preprocess import Preprocessor
from quadra_ad.deploy.runners import ExportedModel
from quadra_ad.errors import ConfigError, DatasetError
from quadra_ad.thresholds import Calibration


@dataclass
class Prediction:
    """What the model says about one image.

    ``score`` is raw (the graph's own units); ``normalized_score`` maps the training threshold to
    0.5 and the training score range to width 1, whatever threshold decides ``label``.
    Anomaly maps are raw, at the model's input size and laid back over the original image
    (0 outside the crop); None for image-level models, which produce no real map.
    """

    score: float
    normalized_score: float
    label: int
    threshold: float
    threshold_source: str
    anomaly_map: np.ndarray | None
    anomaly_map_original: np.ndarray | None
    source: str = ""
    #: The image as read (float RGB in [0, 1], original size), kept only when asked (``keep_images``).
    image: np.ndarray | None = None

    @property
    def is_anomalous(self) -> bool:
        return self.label == 1


#: The settings in the loader's messages, as :meth:`Predictor.load`'s arguments.
PYTHON_KEY_NAMES = {"task.model_path": "Predictor.load path", "task.device": "device"}


class Predictor:
    """An exported model with its card, ready to score images.

    Args:
        model: a loaded graph (see :meth:`load`).
        threshold: ``"training"`` (the image threshold in model.json), ``"training_pixel"`` (the
            pixel one, as Quadra's ``training_threshold_type=pixel``) or a raw score.
    """

    def __init__(self, model: ExportedModel, threshold: str | float = "training") -> None:
        self.model = model
        self.card: ModelCard = model.card
        self.preprocess = Preprocessor(self.card, Path(model.path).parent)
        self.threshold, self.threshold_source = choose_threshold(self.card.calibration, threshold)

    @classmethod
    def load(cls, path: str | Path, threshold: str | float = "training", device: str = "cpu",
             tracking_uri: str | None = None, key_names: dict[str, str] | None = None) -> "Predictor":
        """``path``: a deployment folder (model.onnx preferred, then model.xml, then model.pt), a
        graph file with its model.json beside it, or an MLflow model URI (``models:/bottle/3``,
        ``models:/bottle@champion``, ``runs:/<run id>/model``) in the store at ``tracking_uri``.

        ``key_names``: what the caller's user calls ``task.model_path`` and ``task.device`` in the
        one-line errors (the CLI's ``MODEL``); by default this method's argument names.
        """
        try:
            if is_model_uri(path):
                path = fetch_deployment_folder(str(path), tracking_uri)
            return cls(load_exported_model(path, device), threshold)
        except ConfigError as error:
            message = str(error)
            for key, name in (PYTHON_KEY_NAMES if key_names is None else key_names).items():
                message = message.replace(key, name)
            raise type(error)(message) from None

    @property
    def calibration(self) -> Calibration:
        """The training calibration (thresholds and score ranges from model.json)."""
        return self.card.calibration

    def prepare(self, image: Any, source: str = "the image") -> tuple[np.ndarray, tuple[int, int]]:
        """One image (path, PIL image or array) → the graph's input (3, h, w) and the original (H, W)."""
        rgb = as_rgb(image, source)
        return self.preprocess(rgb, source), rgb.shape[:2]

    def run(self, prepared: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw scores (B,) and maps (B, h, w) of prepared images (B, 3, h, w); maps None for
        image-level models."""
        scores, maps = self.model(prepared)
        return scores, (maps.reshape(len(scores), *maps.shape[-2:]) if self.card.has_anomaly_map else None)

    def predict(self, images: Any, batch_size: int = 16) -> "Prediction | list[Prediction]":
        """One image → one :class:`Prediction`; a list of images or an (N, H, W[, C]) array → a list."""
        if _is_single(images):
            return next(self.predict_stream([images], batch_size=1))
        return list(self.predict_stream(list(images), batch_size))

    def predict_stream(
        self, images: Iterable[Any], batch_size: int = 16, on_error: Callable[[str, DatasetError], None] | None = None,
        keep_images: bool = False,
    ) -> Iterator[Prediction]:
        """Predictions one by one, ``batch_size`` images in memory at a time (any number of images).

        ``on_error(source, error)``: called for an image that cannot be read or prepared, which is
        then skipped; without it the error is raised. ``keep_images``: each prediction carries the
        image it scored (for overlays, without reading the file twice).
        """
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        pending: list[tuple[np.ndarray, tuple[int, int], str, np.ndarray | None]] = []
        for index, image in enumerate(images):
            source = str(image) if isinstance(image, str | Path) else f"image {index}"
            try:
                rgb = as_rgb(image, source)
                prepared = self.preprocess(rgb, source)
            except DatasetError as error:
                if on_error is None:
                    raise
                on_error(source, error)
                continue
            pending.append((prepared, rgb.shape[:2], source, rgb if keep_images else None))
            if len(pending) == batch_size:
                yield from self._predict_batch(pending)
                pending = []
        if pending:
            yield from self._predict_batch(pending)

    def _predict_batch(self, pending: list[tuple[np.ndarray, tuple[int, int], str, np.ndarray | None]]
                       ) -> Iterator[Prediction]:
        scores, maps = self.run(np.stack([prepared for prepared, _, _, _ in pending]))
        normalized = self.calibration.normalize(scores.astype(np.float64))
        for i, (_, original_size, source, rgb) in enumerate(pending):
            score = float(scores[i])
            anomaly_map = maps[i] if maps is not None else None
            yield Prediction(
                score=score,
                normalized_score=float(normalized[i]),
                label=int(score >= self.threshold),
                threshold=self.threshold,
                threshold_source=self.threshold_source,
                anomaly_map=anomaly_map,
                anomaly_map_original=None if anomaly_map is None else self.preprocess.to_original(anomaly_map, original_size),
                source=source,
                image=rgb,
            )


def choose_threshold(calibration: Calibration, threshold: str | float) -> tuple[float, str]:
    """The raw threshold that decides labels, and where it comes from."""
    if threshold == "training":
        return float(calibration.image_threshold), "training image threshold (model.json)"
    if threshold == "training_pixel":
        if calibration.pixel_threshold is None:
            raise ConfigError("threshold 'training_pixel': the training had no masks, so model.json has no pixel "
                              "threshold; use 'training' or a number")
        return float(calibration.pixel_threshold), "training pixel threshold (model.json)"
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise ConfigError(f"threshold '{threshold}': give 'training', 'training_pixel' or a raw score (a number)") from None
    if not math.isfinite(value):
        raise ConfigError(f"threshold {threshold}: give a finite number")
    return value, "given"


def as_rgb(image: Any, source: str = "the image") -> np.ndarray:
    """A path, PIL image or array (H×W, H×W×C; uint8, uint16 or float; RGB order) as float RGB."""
    if isinstance(image, str | Path):
        return read_image_array(image)
    if hasattr(image, "mode") and hasattr(image, "size") and not isinstance(image, np.ndarray):  # a PIL image
        if image.mode in ("I;16", "I;16B", "I;16L"):
            return to_unit_rgb(np.asarray(image, dtype=np.uint16), bgr=False, source=source)
        return to_unit_rgb(np.asarray(image.convert("RGBA") if image.mode in ("P", "LA", "PA") else image), bgr=False, source=source)
    if isinstance(image, np.ndarray):
        return to_unit_rgb(image, bgr=False, source=source)
    raise ConfigError(f"{source}: cannot predict on a {type(image).__name__}; give a path, a PIL image or a NumPy array")


def _is_single(images: Any) -> bool:
    if isinstance(images, np.ndarray):
        # (H, W), (H, W, C) with C ≤ 4: one image; (N, H, W, C) or (N, H, W) with a 4th axis: a batch.
        return images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4))
    return not isinstance(images, Sequence | Iterator) or isinstance(images, str)
