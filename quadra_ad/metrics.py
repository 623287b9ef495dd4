"""Image- and pixel-level metrics, computed on raw scores so no ranking is lost."""

import torch
from torchmetrics.functional.classification import binary_auroc, binary_average_precision


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
    scores, labels = scores.flatten().float(), labels.flatten().long()
    counts = _counts(scores >= threshold, labels)
    f1, precision, recall = _f1_precision_recall(counts)
    metrics: dict[str, float] = {"image_F1": f1, "image_precision": precision, "image_recall": recall}
    if 0 < int(labels.sum()) < labels.numel():
        metrics["image_AUROC"] = float(binary_auroc(scores, labels))
        metrics["image_AP"] = float(binary_average_precision(scores, labels))
    metrics.update({f"image_{k}": v for k, v in counts.items()})
    return metrics


def pixel_metrics(maps: torch.Tensor, masks: torch.Tensor, threshold: float) -> dict[str, float]:
    """Pixel AUROC and F1 over every pixel of every labelled map."""
    maps, masks = maps.flatten().float(), masks.flatten().long()
    counts = _counts(maps >= threshold, masks)
    f1, _, _ = _f1_precision_recall(counts)
    metrics = {"pixel_F1": f1}
    if 0 < int(masks.sum()) < masks.numel():
        metrics["pixel_AUROC"] = float(binary_auroc(maps, masks))
    return metrics
