"""Image- and pixel-level metrics, computed on raw scores so no ranking is lost.

AUROC, AP, confusion counts and F1/precision/recall come from scikit-learn (AUROC and AP in
float64); AUPRO from anomalib's ``AUPRO`` metric. torchmetrics is not used for AUROC: it passes
any score outside [0, 1] through a sigmoid, which saturates raw anomaly scores (a PaDiM score of
40 and one of 400 both become 1.0) and silently turns the ranking into ties.
"""

from typing import NamedTuple

import numpy as np
import torch
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score

from quadra_ad.scored_set import ScoredSet
from quadra_ad.thresholds import Calibration


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact area under the ROC curve of raw scores (any range)."""
    return float(roc_auc_score(labels.flatten().numpy().astype(np.int64), scores.flatten().double().numpy()))


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision of raw scores (any range)."""
    return float(average_precision_score(labels.flatten().numpy().astype(np.int64), scores.flatten().double().numpy()))


def _counts(predicted: torch.Tensor, labels: torch.Tensor) -> dict[str, int]:
    """Confusion counts of binary predictions against binary labels (scikit-learn's matrix)."""
    matrix = confusion_matrix(labels.flatten().numpy().astype(bool), predicted.flatten().numpy().astype(bool),
                              labels=[False, True])
    tn, fp, fn, tp = (int(v) for v in matrix.ravel())
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _f1_precision_recall(predicted: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
    """F1, precision and recall of the anomalous class; 0 where undefined (no predicted or true anomalies)."""
    precision, recall, f1, _ = precision_recall_fscore_support(
        labels.flatten().numpy().astype(bool), predicted.flatten().numpy().astype(bool),
        labels=[True], average=None, zero_division=0,
    )
    return float(f1[0]), float(precision[0]), float(recall[0])


def image_metrics(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """AUROC, AP, F1, precision, recall and confusion counts of ``score >= threshold``."""
    scores, labels = scores.flatten(), labels.flatten().long()
    predicted = scores >= threshold
    counts = _counts(predicted, labels)
    f1, precision, recall = _f1_precision_recall(predicted, labels)
    metrics: dict[str, float] = {"image_F1": f1, "image_precision": precision, "image_recall": recall}
    if 0 < int(labels.sum()) < labels.numel():
        metrics["image_AUROC"] = auroc(scores, labels)
        metrics["image_AP"] = average_precision(scores, labels)
    metrics.update({f"image_{k}": v for k, v in counts.items()})
    return metrics


def pixel_metrics(maps: torch.Tensor, masks: torch.Tensor, threshold: float) -> dict[str, float]:
    """Pixel AUROC and F1 over every pixel of every labelled map."""
    maps, masks = maps.flatten(), masks.flatten().long()
    f1, _, _ = _f1_precision_recall(maps >= threshold, masks)
    metrics = {"pixel_F1": f1}
    if 0 < int(masks.sum()) < masks.numel():
        metrics["pixel_AUROC"] = auroc(maps, masks)
    return metrics


class _MapsAndMasks(NamedTuple):
    """The two batch fields anomalib's AUPRO reads."""

    anomaly_map: torch.Tensor
    gt_mask: torch.Tensor


def aupro(maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, by anomalib's ``AUPRO`` metric."""
    from anomalib.metrics import AUPRO

    metric = AUPRO(fields=list(_MapsAndMasks._fields), fpr_limit=fpr_limit)
    metric.update(_MapsAndMasks(maps.float(), masks.int()))
    return float(metric.compute())


def scored_set_metrics(scored: ScoredSet, calibration: Calibration) -> dict[str, float]:
    """Image metrics over the labelled images at the calibration's thresholds; pixel metrics too
    when there are masks, maps and a pixel threshold."""
    labelled = scored.labelled
    if not labelled:
        return {}
    image_threshold, pixel_threshold = calibration.image_threshold, calibration.pixel_threshold
    metrics = image_metrics(scored.score_tensor(labelled), scored.label_tensor(labelled), image_threshold)
    metrics["image_threshold"] = image_threshold
    if scored.has_masks and scored.has_maps and pixel_threshold is not None:
        maps = scored.map_tensor(labelled)
        masks = scored.mask_tensor(labelled)
        metrics.update(pixel_metrics(maps, masks, pixel_threshold))
        if bool(masks.any()):
            metrics["pixel_AUPRO"] = aupro(maps, masks)
        metrics["pixel_threshold"] = pixel_threshold
    return metrics
