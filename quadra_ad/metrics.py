"""Image- and pixel-level metrics, computed on raw scores so no ranking is lost.

AUROC and AP come from scikit-learn in float64. torchmetrics is not used for them: it passes
any score outside [0, 1] through a sigmoid, which saturates raw anomaly scores (a PaDiM score of
40 and one of 400 both become 1.0) and silently turns the ranking into ties.
"""

import numpy as np
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from quadra_ad.scored_set import ScoredSet


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact area under the ROC curve of raw scores (any range)."""
    return float(roc_auc_score(labels.flatten().numpy().astype(np.int64), scores.flatten().double().numpy()))


def average_precision(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Average precision of raw scores (any range)."""
    return float(average_precision_score(labels.flatten().numpy().astype(np.int64), scores.flatten().double().numpy()))


def _counts(predicted: torch.Tensor, labels: torch.Tensor) -> dict[str, int]:
    predicted, labels = predicted.bool(), labels.bool()
    return {
        "tp": int((predicted & labels).sum()),
        "fp": int((predicted & ~labels).sum()),
        "fn": int((~predicted & labels).sum()),
        "tn": int((~predicted & ~labels).sum()),
    }


def _f1_precision_recall(counts: dict[str, int]) -> tuple[float, float, float]:
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return f1, precision, recall


def image_metrics(scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> dict[str, float]:
    """AUROC, AP, F1, precision, recall and confusion counts of ``score >= threshold``."""
    scores, labels = scores.flatten(), labels.flatten().long()
    counts = _counts(scores >= threshold, labels)
    f1, precision, recall = _f1_precision_recall(counts)
    metrics: dict[str, float] = {"image_F1": f1, "image_precision": precision, "image_recall": recall}
    if 0 < int(labels.sum()) < labels.numel():
        metrics["image_AUROC"] = auroc(scores, labels)
        metrics["image_AP"] = average_precision(scores, labels)
    metrics.update({f"image_{k}": v for k, v in counts.items()})
    return metrics


def pixel_metrics(maps: torch.Tensor, masks: torch.Tensor, threshold: float) -> dict[str, float]:
    """Pixel AUROC and F1 over every pixel of every labelled map."""
    maps, masks = maps.flatten(), masks.flatten().long()
    counts = _counts(maps >= threshold, masks)
    f1, _, _ = _f1_precision_recall(counts)
    metrics = {"pixel_F1": f1}
    if 0 < int(masks.sum()) < masks.numel():
        metrics["pixel_AUROC"] = auroc(maps, masks)
    return metrics


def aupro(maps: torch.Tensor, masks: torch.Tensor, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit`` (anomalib's implementation)."""
    from anomalib.metrics.aupro import _AUPRO

    metric = _AUPRO(fpr_limit=fpr_limit)
    metric.update(maps.float(), masks.int())
    return float(metric.compute())


def scored_set_metrics(scored: ScoredSet, image_threshold: float, pixel_threshold: float | None) -> dict[str, float]:
    """Image metrics over the labelled images; pixel metrics too when masks and a pixel threshold exist."""
    labelled = scored.labelled
    if not labelled:
        return {}
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
