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

It is the one place that decides thresholds; everything else asks it:

- which rules there are (:data:`IMAGE_RULES`, :data:`TRAINING_THRESHOLD_TYPES`) and how the task's keys
  (``threshold_rule``, ``manual_image_threshold`` …) become a :class:`ThresholdRule`, or the one line
  saying how they contradict each other (:func:`threshold_rule_from_settings`, :func:`threshold_key_mistakes`);
- the thresholds a validation set gives (:func:`calibrate`) and the normalisation both ways
  (:func:`normalize_scores`, :func:`denormalize_score`);
- which threshold labels images after training, and the words for it: the Python API and
  ``quadra-ad-predict`` (:func:`choose_threshold`), the inference task (:func:`inference_calibration`).
"""

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from quadra_ad.errors import ConfigError

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


def _score_width(score_min: float, score_max: float) -> float:
    """The width of a score range that normalised scores divide by: 1 when it is empty or not finite."""
    width = score_max - score_min
    return width if math.isfinite(width) and width > 0 else 1.0


def normalize_scores(scores: Any, threshold: float, score_min: float, score_max: float) -> Any:
    """Map raw scores so that ``threshold`` becomes 0.5 and the [min, max] range has width 1."""
    return (scores - threshold) / _score_width(score_min, score_max) + 0.5


def denormalize_score(normalized: float, threshold: float, score_min: float, score_max: float) -> float:
    """The raw score that :func:`normalize_scores` maps to ``normalized`` (its inverse)."""
    return (float(normalized) - 0.5) * _score_width(score_min, score_max) + threshold


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

    def denormalize(self, normalized: float) -> float:
        """The raw image score that this calibration normalises to ``normalized``."""
        return denormalize_score(normalized, self.image_threshold, self.image_min, self.image_max)

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


#: How the image threshold is set on the validation scores (``task.threshold_rule``).
IMAGE_RULES = ("f1", "manual", "target_fpr", "good_percentile")
#: The rules that set the image threshold on the good validation images alone; each reads the task
#: key of its own name (``task.target_fpr``, ``task.good_percentile``), which the other rules ignore.
GOOD_IMAGE_RULES = ("target_fpr", "good_percentile")
#: Which training threshold labels images when an inference run reuses it (Quadra's ``training_threshold_type``).
TRAINING_THRESHOLD_TYPES = ("image", "pixel")
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
    def needs_good_images(self) -> bool:
        """True for the rules set on the good validation images alone (:data:`GOOD_IMAGE_RULES`)."""
        return self.image in GOOD_IMAGE_RULES

    @property
    def good_share(self) -> float:
        """The share of good images allowed at or above the threshold (target_fpr, good_percentile)."""
        return self.target_fpr if self.image == "target_fpr" else 1.0 - self.good_percentile / 100.0

    def describe(self, good_images: int | None = None) -> str:
        if self.image == "manual":
            kind = "normalised" if self.normalized else "raw"
            return f"manual image threshold {self.manual_image:g} ({kind})"
        if self.needs_good_images:
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
    if rule.needs_good_images:
        image_threshold = good_share_threshold(scores[labels == 0], rule.good_share)
        image_rule = rule.describe(int((labels == 0).sum()))
    elif rule.image == "manual" and not rule.normalized:
        image_threshold = float(rule.manual_image)
        image_rule = rule.describe()
    else:
        image_threshold = f1_optimal_threshold(scores, labels)
        image_rule = f1_rule(labels)
        if rule.image == "manual":  # normalised: relative to the F1-optimal threshold and the range
            image_threshold = denormalize_score(rule.manual_image, image_threshold, image_min, image_max)
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


# -- the task's threshold keys -------------------------------------------------------------------
def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def threshold_key_mistakes(rule: str, manual_image: Any = None, normalized: Any = False,
                           changed_settings: Mapping[str, Any] | None = None) -> list[str]:
    """How ``task.threshold_rule`` and the keys beside it contradict each other, one line each
    (empty when they do not): the same lines before a run (the config checks) and in the task.

    A manual image threshold alone means ``threshold_rule=manual`` (as in Quadra).
    ``changed_settings``: the rule settings (``target_fpr``, ``good_percentile``) given values other
    than their defaults; one the rule does not read has no effect, which is a mistake too.
    """
    if rule == "f1" and manual_image is not None:
        rule = "manual"
    if rule not in IMAGE_RULES:
        return [f"task.threshold_rule={rule!r}: choose one of {', '.join(IMAGE_RULES)}"]
    if rule == "manual" and manual_image is None:
        return ["task.threshold_rule=manual needs task.manual_image_threshold=<score>"]
    if rule != "manual" and manual_image is not None:
        return [f"task.manual_image_threshold is set but task.threshold_rule={rule}: give one of the two"]
    if normalized and manual_image is None:
        return ["task.manual_threshold_normalized=true applies to task.manual_image_threshold, which is not set"]
    return [f"task.{key}={_shown(value)} has no effect with task.threshold_rule={rule}: add "
            f"task.threshold_rule={key} to use it, or remove task.{key}"
            for key, value in (changed_settings or {}).items() if key in GOOD_IMAGE_RULES and key != rule]


def threshold_rule_from_settings(rule: str, manual_image: Any, manual_pixel: Any, normalized: Any, target_fpr: Any,
                                 good_percentile: Any) -> ThresholdRule:
    """The task's threshold keys (``threshold_rule``, ``manual_image_threshold``,
    ``manual_pixel_threshold``, ``manual_threshold_normalized``, ``target_fpr``,
    ``good_percentile``) as one rule; settings that contradict each other are one ConfigError line."""
    mistakes = threshold_key_mistakes(rule, manual_image, normalized)
    if mistakes:
        raise ConfigError(mistakes[0])
    if rule == "f1" and manual_image is not None:
        rule = "manual"
    return ThresholdRule(image=rule, manual_image=None if manual_image is None else float(manual_image),
                         manual_pixel=None if manual_pixel is None else float(manual_pixel),
                         normalized=bool(normalized), target_fpr=float(target_fpr), good_percentile=float(good_percentile))


def image_threshold_words(rule: ThresholdRule, calibration: Calibration | None) -> str:
    """How the image threshold was set once it is (the calibration's words); before, the rule asked for."""
    if calibration is not None and calibration.image_threshold_rule:
        return calibration.image_threshold_rule
    return rule.describe()


# -- the threshold that labels images after training -----------------------------------------------
#: What labels images when an inference run cannot recompute the threshold on its data.
TRAINING_THRESHOLD_KEPT = "training image threshold (no good and anomalous images to recompute it on)"
#: An inference run's threshold recomputed on the labelled images it was given.
RECOMPUTED_THRESHOLD = "recomputed: F1-optimal on this data"


def _finite_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def choose_threshold(calibration: Calibration, threshold: str | float) -> tuple[float, str]:
    """The raw threshold that decides labels, and where it comes from: ``"training"`` (model.json's
    image threshold), ``"training_pixel"`` (its pixel one, as Quadra's ``training_threshold_type=pixel``),
    or a finite number (or its text: the CLI's ``--threshold=12.5``)."""
    if isinstance(threshold, str) and threshold in ("training", "training_pixel"):
        kind = "image" if threshold == "training" else "pixel"
        key = f"{kind}_threshold"
        value = getattr(calibration, key)
        if value is None:
            raise ConfigError("threshold 'training_pixel': the training had no masks, so model.json has no pixel "
                              "threshold; use 'training' or a number")
        if not _finite_number(value):
            raise ConfigError(f"threshold '{threshold}': model.json's {key} is {value!r}, not a finite number; "
                              f"export the model again, or give a number")
        return float(value), f"training {kind} threshold (model.json)"
    value = None
    if not isinstance(threshold, bool | bytes | bytearray):  # float(True) and float(b"1") would pass
        try:
            value = float(threshold)
        except (TypeError, ValueError, OverflowError):
            value = None
    if value is None:
        raise ConfigError(f"threshold {threshold!r}: give 'training', 'training_pixel' or a raw score (a number)")
    if not math.isfinite(value):
        raise ConfigError(f"threshold {threshold!r}: give a finite number")
    return value, "given"


def training_threshold_mistake(training: Calibration | None, use_training_threshold: bool,
                               training_threshold_type: str) -> str | None:
    """Why the inference task's threshold keys cannot be used with this training calibration
    (None when they can; without one, only the keys themselves are checked), before any image is read."""
    if training_threshold_type not in TRAINING_THRESHOLD_TYPES:
        return f"task.training_threshold_type must be 'image' or 'pixel', got '{training_threshold_type}'"
    if (training is not None and use_training_threshold and training_threshold_type == "pixel"
            and training.pixel_threshold is None):
        return ("task.use_training_threshold=true with task.training_threshold_type=pixel, but the training run had "
                "no masks so model.json has no pixel threshold: use task.training_threshold_type=image")
    return None


def inference_calibration(training: Calibration, labelled: "ScoredSet", use_training_threshold: bool = False,
                          training_threshold_type: str = "image",
                          custom_normalized_threshold: float | None = None) -> tuple[Calibration, str]:
    """The training calibration with the thresholds an inference run labels by, and the words for them.

    In this order: ``custom_normalized_threshold`` (Quadra's: a normalised score under the training
    normalisation); the training threshold (``use_training_threshold``, of ``training_threshold_type``:
    the pixel one labels images as Quadra's ``training_threshold_type=pixel``); else recomputed,
    F1-optimal on ``labelled`` — or, when it lacks good or anomalous images, the training one kept.
    Scores stay normalised with the training statistics whichever threshold decides.
    """
    if custom_normalized_threshold is not None:
        value = float(custom_normalized_threshold)
        words = f"custom normalised threshold {value:g} (training normalisation)"
        return training.with_thresholds(training.denormalize(value), training.pixel_threshold), words
    if use_training_threshold:
        image, words = choose_threshold(training, "training_pixel" if training_threshold_type == "pixel" else "training")
        return training.with_thresholds(image, training.pixel_threshold), words
    labels = {labelled.labels[i] for i in labelled.labelled}
    if labels != {0, 1}:
        log.warning("Cannot recompute the threshold without both good and anomalous images: using the training one.")
        return training, TRAINING_THRESHOLD_KEPT
    recomputed = calibrate(labelled)
    pixel = recomputed.pixel_threshold if recomputed.pixel_threshold is not None else training.pixel_threshold
    return training.with_thresholds(recomputed.image_threshold, pixel), RECOMPUTED_THRESHOLD
