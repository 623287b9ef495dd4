"""Thresholds and score normalisation, carried together as one :class:`Calibration`.

Convention everywhere in quadra_ad: a score **at or above** the threshold is anomalous.
Normalised scores map the threshold to 0.5 and the validation range to a width of 1, without
clipping, so ranking (and AUROC) is never lost.

A :class:`Calibration` travels unchanged from the validation step (the score collector) to the
model card (``model.json``), the report, the heatmaps and the inference task. This module needs
NumPy only (scikit-learn when a threshold is computed), so a runtime without torch can read it.
"""

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from quadra_ad.scored_set import ScoredSet

log = logging.getLogger(__name__)


def f1_optimal_threshold(scores: Any, labels: Any) -> float:
    """Threshold maximising F1 of ``score >= threshold`` against binary ``labels``.

    Works on any number of values (image scores or every pixel of every map), given as NumPy
    arrays or CPU tensors. The candidate thresholds and their precision/recall come from
    scikit-learn's ``precision_recall_curve``; where several thresholds reach the same F1, the
    highest one wins. Without positive labels F1 is undefined: the threshold is then put just
    above the highest score, so every given sample counts as normal; without negatives, at the
    lowest score.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    if scores.size == 0:
        raise ValueError("f1_optimal_threshold needs at least one score")
    positives = int(labels.sum())
    if positives == 0:
        log.warning("No anomalous samples to tune a threshold on: using the highest normal score.")
        # Next float32 up, so the comparison agrees whether done in float32 or float64.
        return float(np.nextafter(np.float32(scores.max()), np.float32(math.inf)))
    if positives == labels.size:
        return float(scores.min())
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(labels, scores)
    # F1 from the integer counts behind each point, so equal F1s compare equal (2PR/(P+R) in
    # floating point can split a tie and pick another threshold).
    true_positives = np.rint(recall[:-1] * positives)
    with np.errstate(divide="ignore", invalid="ignore"):
        predicted = np.where(true_positives > 0, np.rint(true_positives / precision[:-1]), 0.0)
    f1 = 2.0 * true_positives / (predicted + positives)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # thresholds ascend: the last maximum is the highest
    return float(thresholds[best])


def normalize_scores(scores: Any, threshold: float, score_min: float, score_max: float) -> Any:
    """Map raw scores so that ``threshold`` becomes 0.5 and the [min, max] range has width 1."""
    value_range = score_max - score_min
    if not math.isfinite(value_range) or value_range <= 0:
        value_range = 1.0
    return (scores - threshold) / value_range + 0.5


@dataclass(frozen=True)
class Calibration:
    """Raw thresholds and score ranges: what labels images and pixels, and what normalises scores.

    ``pixel_*`` are None when the images had no masks (no pixel threshold) or the model has no
    anomaly map (no pixel range).
    """

    image_threshold: float
    image_min: float
    image_max: float
    pixel_threshold: float | None = None
    pixel_min: float | None = None
    pixel_max: float | None = None

    @property
    def mask_threshold(self) -> float:
        """The threshold that turns an anomaly map into a mask: the pixel one, else the image one."""
        return self.pixel_threshold if self.pixel_threshold is not None else self.image_threshold

    @property
    def map_range(self) -> tuple[float, float]:
        """Range of anomaly-map values for colouring, (0, 1) when none was measured."""
        low = self.pixel_min if self.pixel_min is not None else 0.0
        high = self.pixel_max if self.pixel_max is not None else 1.0
        return low, high

    def normalize(self, scores: Any) -> Any:
        """Image scores normalised so that this calibration's image threshold is 0.5."""
        return normalize_scores(scores, self.image_threshold, self.image_min, self.image_max)

    def with_thresholds(self, image_threshold: float, pixel_threshold: float | None) -> "Calibration":
        """The same score ranges with other thresholds deciding the labels."""
        return replace(self, image_threshold=float(image_threshold),
                       pixel_threshold=None if pixel_threshold is None else float(pixel_threshold))


#: How the image threshold is set on the validation scores.
IMAGE_RULES = ("f1", "manual", "target_fpr", "good_percentile")


@dataclass(frozen=True)
class ThresholdRule:
    """How a training run sets its thresholds (``task.threshold_rule`` and the keys beside it).

    ``f1``: F1-optimal on good and anomalous images. ``manual``: ``manual_image`` — a raw score,
    or with ``normalized`` a normalised one (0.5 = the F1-optimal threshold, 1 = the validation
    score range above it), as Quadra's ``custom_normalized_threshold``. ``target_fpr``: the lowest
    threshold with at most that share of good images at or above it; ``good_percentile``: the
    same with a share of 1 - percentile/100 — both need good images only. The pixel threshold is
    ``manual_pixel`` (raw) when given, else F1-optimal on the masks.
    """

    image: str = "f1"
    manual_image: float | None = None
    manual_pixel: float | None = None
    normalized: bool = False
    target_fpr: float = 0.01
    good_percentile: float = 99.0

    @property
    def needs_anomalous_images(self) -> bool:
        return self.image == "f1" or (self.image == "manual" and self.normalized)

    @property
    def good_share(self) -> float:
        """The share of good images allowed at or above the threshold (target_fpr, good_percentile)."""
        return self.target_fpr if self.image == "target_fpr" else 1.0 - self.good_percentile / 100.0

    def describe(self, good_images: int | None = None) -> str:
        if self.image == "manual":
            kind = "normalised" if self.normalized else "raw"
            return f"manual image threshold {self.manual_image:g} ({kind})"
        if self.image in ("target_fpr", "good_percentile"):
            on = f" of {good_images} good validation images" if good_images is not None else ""
            setting = f"target_fpr={self.target_fpr:g}" if self.image == "target_fpr" else f"good_percentile={self.good_percentile:g}"
            return f"{setting}: at most {self.good_share:.4g}{on} at or above it"
        return "F1-optimal on the validation images"


def good_share_threshold(good_scores: Any, share: float) -> float:
    """The lowest threshold that leaves at most ``share`` of ``good_scores`` at or above it."""
    ordered = np.sort(np.asarray(good_scores, dtype=np.float64).ravel())[::-1]
    if ordered.size == 0:
        raise ValueError("good_share_threshold needs good scores")
    allowed = int(math.floor(share * ordered.size + 1e-9))
    if allowed >= ordered.size:
        return float(ordered[-1])
    # Next float32 up from the first score that must stay below: ties with it stay below too.
    return float(np.nextafter(np.float32(ordered[allowed]), np.float32(math.inf)))


def calibrate(scored: "ScoredSet", rule: ThresholdRule | None = None) -> Calibration:
    """Image (and pixel, with masks) thresholds set by ``rule`` (F1-optimal by default) plus the
    score ranges of ``scored``."""
    rule = rule or ThresholdRule()
    labelled = scored.labelled
    scores = scored.score_tensor(labelled).numpy()
    labels = scored.label_tensor(labelled).numpy()
    pixel_threshold = pixel_min = pixel_max = None
    if scored.has_maps:
        maps = scored.map_tensor(labelled).numpy()
        pixel_min, pixel_max = float(maps.min()), float(maps.max())
        if rule.manual_pixel is not None:
            pixel_threshold = float(rule.manual_pixel)
        elif scored.has_masks:
            pixel_threshold = f1_optimal_threshold(maps, scored.mask_tensor(labelled).numpy())
    image_min, image_max = float(scores.min()), float(scores.max())
    if rule.image in ("target_fpr", "good_percentile"):
        image_threshold = good_share_threshold(scores[labels == 0], rule.good_share)
    elif rule.image == "manual" and not rule.normalized:
        image_threshold = float(rule.manual_image)
    else:
        image_threshold = f1_optimal_threshold(scores, labels)
        if rule.image == "manual":  # normalised: relative to the F1-optimal threshold and the range
            width = image_max - image_min if image_max > image_min else 1.0
            image_threshold = (float(rule.manual_image) - 0.5) * width + image_threshold
    return Calibration(
        image_threshold=image_threshold,
        image_min=image_min,
        image_max=image_max,
        pixel_threshold=pixel_threshold,
        pixel_min=pixel_min,
        pixel_max=pixel_max,
    )
