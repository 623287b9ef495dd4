"""``Predictor``: the one way to run an exported model — Python API, ``quadra-ad-predict`` and
the inference task all go through it.

    from quadra_ad.deploy import Predictor
    predictor = Predictor.load("outputs/bottle/<run>/deployment_model")      # or model.onnx / model.pt
    result = predictor.predict("part_0001.png")                              # or arrays, PIL images, lists
    result.label, result.score, result.normalized_score, result.anomaly_map_original

One image is a path, an image file's bytes, a PIL image or a NumPy array in RGB order; a 3-D
array is always ONE image, H×W×C with the channels last (C = 1, 3 or 4), and several images are
a list (or any sequence or iterator) of those or an N×H×W×C array. Pixel values follow
:mod:`quadra_ad.deploy.images`'s rule (uint8 0-255, uint16 0-65535, float 0-1, finite); an input
outside it is one :class:`~quadra_ad.errors.DatasetError` line (a value of another type: a
ConfigError line), never a guess.

Images are prepared exactly as the training prepared them (the model card's valid-area mask,
crop, size and normalisation) with NumPy and OpenCV; with an ONNX graph nothing here imports
torch. Labels follow the card's rule, ``score >= threshold`` (float32 scores, as the training
run's predictions.csv).
"""

import numbers
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quadra_ad.deploy.images import IMAGE_CHANNELS, decode_image, read_image_array, size_problem, to_unit_rgb
from quadra_ad.deploy.loader import load_exported_model
from quadra_ad.deploy.model_card import ModelCard
from quadra_ad.deploy.model_uri import fetch_deployment_folder, is_model_uri
from quadra_ad.deploy.preprocess import Preprocessor
from quadra_ad.deploy.runners import ExportedModel, first_line
from quadra_ad.errors import ConfigError, DatasetError
from quadra_ad.evaluation.thresholds import Calibration, choose_threshold


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
            pixel one, as Quadra's ``training_threshold_type=pixel``) or a raw score; which one, and
            the words for it, :func:`quadra_ad.evaluation.thresholds.choose_threshold` decides.
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
        """One image → one :class:`Prediction`; several → a list, in their order.

        One image: a path, an encoded image file's bytes (``bytes``, ``bytearray``,
        ``memoryview``), a PIL image, or an array H×W or H×W×C (C = 1, 3 or 4, channels last: a
        3-D array is always one image). Several: a list, tuple, iterator (any iterable but a
        mapping or a set, which have no order) of those, or an N×H×W×C array. See the module's docstring for the pixel values accepted.
        """
        _check_batch_size(batch_size)
        if _is_single(images):
            return next(self._stream([images], 1, None, False, single=True))
        return list(self.predict_stream(images, batch_size))

    def predict_stream(
        self, images: Iterable[Any], batch_size: int = 16, on_error: Callable[[str, DatasetError], None] | None = None,
        keep_images: bool = False,
    ) -> Iterator[Prediction]:
        """Predictions one by one, ``batch_size`` images in memory at a time (any number of images).

        ``images``: several images as :meth:`predict` takes them (a list, an iterator, an
        N×H×W×C array). ``on_error(source, error)``: called for an image that cannot be read or
        prepared (a DatasetError), which is then skipped; without it the error is raised.
        ``keep_images``: each prediction carries the image it scored (for overlays, without
        reading the file twice). Arguments are checked here, before the first image is read.
        """
        _check_batch_size(batch_size)
        if _is_single(images):
            raise ConfigError(f"predict_stream takes several images (a list, an iterator or an N×H×W×C array), got "
                              f"one {type(images).__name__}: use predict(image) or predict_stream([image])")
        return self._stream(images, batch_size, on_error, keep_images)

    def _stream(self, images: Iterable[Any], batch_size: int, on_error: Callable[[str, DatasetError], None] | None,
                keep_images: bool, single: bool = False) -> Iterator[Prediction]:
        pending: list[tuple[np.ndarray, tuple[int, int], str, np.ndarray | None]] = []
        for index, image in enumerate(images):
            source = _source_of(image, "the image" if single else f"image {index}")
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


#: What one image may be, in the one-line errors.
ONE_IMAGE = "a path, an image file's bytes, a PIL image or a NumPy array (H×W or H×W×C)"
#: PIL modes whose pixels are the module's rule as they are (bool, 8-bit, RGB(A), float).
PIL_DIRECT_MODES = ("1", "L", "RGB", "RGBA", "F")
#: PIL modes with a palette, an alpha or padding channel: converted to RGBA by PIL.
PIL_RGBA_MODES = ("P", "PA", "LA", "La", "RGBa", "RGBX")


def as_rgb(image: Any, source: str = "the image") -> np.ndarray:
    """One image (see :meth:`Predictor.predict`; arrays and PIL images in RGB order) as float RGB H×W×3 in [0, 1]."""
    if isinstance(image, str | os.PathLike):
        return read_image_array(image)
    if isinstance(image, bytes | bytearray | memoryview):
        return to_unit_rgb(decode_image(image, source), bgr=True, source=source)
    if _is_pil(image):
        return to_unit_rgb(_pil_pixels(image, source), bgr=False, source=source)
    if isinstance(image, np.ndarray):
        return to_unit_rgb(image, bgr=False, source=source)
    hint = ("; pixels as nested lists: pass np.asarray(pixels, dtype=np.uint8)" if isinstance(image, list | tuple)
            else "; pass np.asarray(...) of it, channels last" if hasattr(image, "__array__")
            else "; several images go in a list, in order" if isinstance(image, Iterable) else "")
    raise ConfigError(f"{source}: cannot predict on a value of type {type(image).__name__}; give {ONE_IMAGE}{hint}")


def _is_pil(image: Any) -> bool:
    return hasattr(image, "mode") and hasattr(image, "size") and hasattr(image, "convert") and not isinstance(image, np.ndarray)


def _pil_pixels(image: Any, source: str) -> np.ndarray:
    """A PIL image's pixels for :func:`to_unit_rgb`, its size checked before a lazily opened file is decoded."""
    problem = size_problem(*image.size)
    if problem:
        raise DatasetError(f"cannot read {source}: it {problem}")
    mode = image.mode
    try:
        if mode.startswith("I;16"):
            return np.asarray(image).astype(np.uint16)
        if mode == "I":  # what Pillow gives for 16-bit files of some formats: 32-bit signed
            pixels = np.asarray(image)
            low, high = int(pixels.min()), int(pixels.max())
            if low < 0 or high > 65535:
                raise DatasetError(f"cannot read {source}: a PIL image in mode 'I' is taken as 16-bit, its values must "
                                   f"lie in 0-65535, found {low} to {high}; convert it to mode 'L' or 'RGB'")
            return pixels.astype(np.uint16)
        if mode in PIL_DIRECT_MODES:
            return np.asarray(image)
        if mode in PIL_RGBA_MODES:
            return np.asarray(image.convert("RGBA"))
        return np.asarray(image.convert("RGB"))  # other colour models (CMYK, YCbCr, LAB, HSV): Pillow's conversion
    except (OSError, ValueError) as error:
        raise DatasetError(f"cannot read {source}: PIL cannot give its pixels in RGB ({first_line(error)}); "
                           f"convert it to mode 'RGB' first") from None


def _source_of(image: Any, fallback: str) -> str:
    """How the one-line errors and the predictions name an image: its path, else its place."""
    return str(image) if isinstance(image, str | os.PathLike) else fallback


def _check_batch_size(batch_size: Any) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise ConfigError(f"batch_size {batch_size!r}: give a whole number of at least 1")


def _is_single(images: Any) -> bool:
    """True for one image, False for several (a sequence, an iterator or an N×H×W×C array)."""
    if isinstance(images, np.ndarray):
        if images.ndim <= 3:
            return True  # to_unit_rgb explains a 3-D shape that is not H×W×C
        _check_batch_shape(images.shape)
        return False
    if isinstance(images, str | bytes | bytearray | memoryview | os.PathLike) or _is_pil(images):
        return True
    if hasattr(images, "__array__"):  # a tensor is iterable, but its rows are not images: as_rgb refuses it
        return True
    # A mapping or a set has no order to give the predictions back in: as_rgb refuses it.
    return not isinstance(images, Iterable) or isinstance(images, Mapping | AbstractSet)


def _check_batch_shape(shape: tuple[int, ...]) -> None:
    """An array of several images is N×H×W×C, C = 1, 3 or 4."""
    if len(shape) == 4 and shape[3] in IMAGE_CHANNELS:
        return
    if len(shape) == 4 and shape[1] in IMAGE_CHANNELS:
        raise DatasetError(f"the images have shape {shape}, which looks channels-first (N×C×H×W); the channels come "
                           f"last: pass array.transpose(0, 2, 3, 1)")
    if len(shape) == 4:
        raise DatasetError(f"the images have {shape[3]} channels (shape {shape}); a batch is N×H×W×C with C = 1, 3 or 4")
    raise DatasetError(f"the array has shape {shape} ({len(shape)}-D); give one image (H×W or H×W×C) or several "
                       f"(N×H×W×C, or a list)")
