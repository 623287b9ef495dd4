"""The one threshold function, and the score normalisation that goes with it.

Convention everywhere in quadra_ad: a score **at or above** the threshold is anomalous.
Normalised scores map the threshold to 0.5 and the validation range to a width of 1, without
clipping, so ranking (and AUROC) is never lost.
"""

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from quadra_ad.scored_set import ScoredSet

log = logging.getLogger(__name__)


def f1_optimal_threshold(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Threshold maximising F1 of ``score >= threshold`` against binary ``labels``.

    Works on any number of values (image scores or every pixel of every map). Without positive
    labels F1 is undefined: the threshold is then put just above the highest score, so every
    given sample counts as normal; without negatives, at the lowest score.
    """
    scores = scores.detach().flatten().double()
    labels = labels.detach().flatten().bool()
    if scores.numel() == 0:
        raise ValueError("f1_optimal_threshold needs at least one score")
    positives = int(labels.sum())
    if positives == 0:
        log.warning("No anomalous samples to tune a threshold on: using the highest normal score.")
        # Next float32 up, so the comparison agrees whether done in float32 or float64.
        highest = scores.max().float()
        return float(torch.nextafter(highest, torch.tensor(math.inf)))
    if positives == labels.numel():
        return float(scores.min())
    order = torch.argsort(scores, descending=True)
    sorted_scores = scores[order]
    true_positives = torch.cumsum(labels[order].double(), dim=0)
    predicted = torch.arange(1, scores.numel() + 1, dtype=torch.float64)
    # Only the last index of a run of equal scores is a reachable cut.
    last_of_run = torch.ones_like(sorted_scores, dtype=torch.bool)
    last_of_run[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    f1 = 2 * true_positives / (predicted + positives)
    f1 = torch.where(last_of_run, f1, torch.full_like(f1, -1.0))
    return float(sorted_scores[int(torch.argmax(f1))])


def normalize_scores(scores: torch.Tensor | float, threshold: float, score_min: float, score_max: float) -> torch.Tensor | float:
    """Map raw scores so that ``threshold`` becomes 0.5 and the [min, max] range has width 1."""
    value_range = score_max - score_min
    if not math.isfinite(value_range) or value_range <= 0:
        value_range = 1.0
    return (scores - threshold) / value_range + 0.5


@dataclass
class Calibration:
    """Raw thresholds and score ranges measured on the validation set."""

    image_threshold: float
    image_min: float
    image_max: float
    pixel_threshold: float | None = None
    pixel_min: float | None = None
    pixel_max: float | None = None


def calibrate(scored: "ScoredSet") -> Calibration:
    """F1-optimal image (and pixel, with masks) thresholds plus score ranges of ``scored``."""
    labelled = scored.labelled
    scores = scored.score_tensor(labelled)
    calibration = Calibration(
        image_threshold=f1_optimal_threshold(scores, scored.label_tensor(labelled)),
        image_min=float(scores.min()),
        image_max=float(scores.max()),
    )
    if scored.has_maps:
        maps = scored.map_tensor(labelled)
        calibration.pixel_min = float(maps.min())
        calibration.pixel_max = float(maps.max())
        if scored.has_masks:
            masks = scored.mask_tensor(labelled)
            calibration.pixel_threshold = f1_optimal_threshold(maps, masks)
    return calibration
