"""Thresholds and score normalisation, carried together as one :class:`Calibration`.

Convention everywhere in quadra_ad: a score **at or above** the threshold is anomalous.
Normalised scores map the threshold to 0.5 and the validation range to a width of 1, without
clipping, so ranking (and AUROC) is never lost.

A :class:`Calibration` travels unchanged from the validation step (the score collector) to the
model card (``model.json``), the report, the heatmaps and the inference task. It says how each
threshold was really set (``image_threshold_rule``, ``pixel_threshold_rule``): the rule asked for
is not always the one that could apply (F1 needs anomalous images), and every place that names
a threshold's rule (log, metrics.json, report, MLflow, model.json) reads it from there. This module needs
NumPy only (scikit-learn when a threshold is computed), so a runtime without torch can read it.
"""

import logging
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from quadra_ad.evaluation.scored_set import ScoredSet

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
        log.warning("No anomalous samples to tune a threshold on: it is put just above the highest normal score.")
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
    anomaly map (no pixel range). ``*_threshold_rule`` says in words how that threshold was set
    (None when unknown, e.g. a card written before they existed); equality compares the numbers only.
    """

    image_threshold: float
    image_min: float
    image_max: float
    pixel_threshold: float | None = None
    pixel_min: float | None = None
    pixel_max: float | None = None
    image_threshold_rule: str | None = field(default=None, compare=False)
    pixel_threshold_rule: str | None = field(default=None, compare=False)

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

    def with_thresholds(self, image_threshold: float, pixel_threshold: float | None, image_rule: str | None = None,
                        pixel_rule: str | None = None) -> "Calibration":
        """The same score ranges with other thresholds deciding the labels.

        A threshold that keeps its value keeps its rule unless another is given; one that changes
        takes ``image_rule``/``pixel_rule`` (None: not known), never the old rule's words.
        """
        image_threshold = float(image_threshold)
        pixel_threshold = None if pixel_threshold is None else float(pixel_threshold)
        if image_rule is None and image_threshold == self.image_threshold:
            image_rule = self.image_threshold_rule
        if pixel_rule is None and pixel_threshold == self.pixel_threshold:
            pixel_rule = self.pixel_threshold_rule
        return replace(self, image_threshold=image_threshold, pixel_threshold=pixel_threshold,
                       image_threshold_rule=image_rule, pixel_threshold_rule=pixel_rule)


#: How the image threshold is set on the validation scores.
IMAGE_RULES = ("f1", "manual", "target_fpr", "good_percentile")
#: How ``f1_optimal_threshold`` places the threshold when the labels hold one class only.
F1_WITHOUT_ANOMALOUS = ("just above the highest score of the {count} good {what} (F1-optimal needs anomalous "
                        "{what}, and there were none: every one of them is normal at this threshold)")
F1_WITHOUT_GOOD = ("at the lowest score of the {count} anomalous {what} (F1-optimal needs good {what} too, and "
                   "there were none: every one of them is anomalous at this threshold)")
F1_IMAGE_RULE = "F1-optimal on the validation images"


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
        return F1_IMAGE_RULE


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


def f1_rule(labels: Any, what: str = "validation images", both: str = F1_IMAGE_RULE) -> str:
    """What :func:`f1_optimal_threshold` really does on ``labels``, in words: ``both`` when they hold
    both classes, else where the threshold is put instead."""
    labels = np.asarray(labels).ravel().astype(bool)
    positives = int(labels.sum())
    if positives == 0:
        return F1_WITHOUT_ANOMALOUS.format(count=labels.size, what=what)
    if positives == labels.size:
        return F1_WITHOUT_GOOD.format(count=labels.size, what=what)
    return both


def calibrate(scored: "ScoredSet", rule: ThresholdRule | None = None) -> Calibration:
    """Image (and pixel, with masks) thresholds set by ``rule`` (F1-optimal by default) plus the
    score ranges of ``scored``, each threshold with the words saying how it was set."""
    rule = rule or ThresholdRule()
    labelled = scored.labelled
    scores = scored.score_tensor(labelled).numpy()
    labels = scored.label_tensor(labelled).numpy()
    pixel_threshold = pixel_min = pixel_max = pixel_rule = None
    if scored.has_maps:
        maps = scored.map_tensor(labelled).numpy()
        pixel_min, pixel_max = float(maps.min()), float(maps.max())
        if rule.manual_pixel is not None:
            pixel_threshold = float(rule.manual_pixel)
            pixel_rule = f"manual pixel threshold {rule.manual_pixel:g} (raw)"
        elif scored.has_masks:
            masks = scored.mask_tensor(labelled).numpy()
            pixel_threshold = f1_optimal_threshold(maps, masks)
            pixel_rule = f1_rule(masks, "mask pixels", "F1-optimal on the mask pixels of the validation images")
    image_min, image_max = float(scores.min()), float(scores.max())
    if rule.image in ("target_fpr", "good_percentile"):
        image_threshold = good_share_threshold(scores[labels == 0], rule.good_share)
        image_rule = rule.describe(int((labels == 0).sum()))
    elif rule.image == "manual" and not rule.normalized:
        image_threshold = float(rule.manual_image)
        image_rule = rule.describe()
    else:
        image_threshold = f1_optimal_threshold(scores, labels)
        image_rule = f1_rule(labels)
        if rule.image == "manual":  # normalised: relative to the F1-optimal threshold and the range
            width = image_max - image_min if image_max > image_min else 1.0
            image_threshold = (float(rule.manual_image) - 0.5) * width + image_threshold
            # Without both classes 0.5 is not an F1-optimal threshold: say what it is then.
            image_rule = rule.describe() + ("" if image_rule == F1_IMAGE_RULE else f"; its 0.5 is the threshold put {image_rule}")
    return Calibration(
        image_threshold=image_threshold,
        image_min=image_min,
        image_max=image_max,
        pixel_threshold=pixel_threshold,
        pixel_min=pixel_min,
        pixel_max=pixel_max,
        image_threshold_rule=image_rule,
        pixel_threshold_rule=pixel_rule,
    )
