"""``predictions.csv`` (and ``.jsonl``) and ``metrics.json``: the same files from training and inference."""

import csv
import json
import math
from pathlib import Path

import numpy as np

from quadra_ad.evaluation.metrics import Metrics
from quadra_ad.evaluation.scored_set import ScoredSet
from quadra_ad.evaluation.thresholds import Calibration
from quadra_ad.files import atomic_path, write_text

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSONL = "predictions.jsonl"
METRICS_JSON = "metrics.json"
COLUMNS = ["image_path", "defect_type", "label", "raw_score", "normalized_score", "predicted_label", "threshold"]


def write_predictions(scored: ScoredSet, path: Path, threshold: float, normalization: Calibration) -> Path:
    """One row per image; ``label`` is empty for unknown images.

    ``threshold`` decides the predicted label; ``normalization`` (the training calibration)
    defines the normalised score, so 0.5 there is always the training threshold.
    """
    normalized = normalization.normalize(np.asarray(scored.scores, dtype=np.float64))
    with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i, image_path in enumerate(scored.image_paths):
            label = scored.labels[i]
            score = scored.scores[i]
            writer.writerow([
                image_path,
                scored.defect_types[i],
                "" if label is None else label,
                f"{score:.9g}",  # 9 digits: the float32 score itself, so the CSV decides as the run did
                f"{float(normalized[i]):.8g}",
                int(score >= threshold),
                f"{threshold:.9g}",
            ])
    return Path(path)


def write_predictions_jsonl(scored: ScoredSet, path: Path, threshold: float, normalization: Calibration,
                            mask_folder: str | None = None) -> Path:
    """The rows of ``predictions.csv`` as one JSON object per line, for programs: numbers as numbers,
    ``label`` null for unknown images, and ``predicted_mask`` (the file, relative to the run folder)
    when ``mask_folder`` names the folder the predicted masks were written to."""
    normalized = normalization.normalize(np.asarray(scored.scores, dtype=np.float64))
    with atomic_path(path) as temporary, temporary.open("w", encoding="utf-8") as handle:
        for i, image_path in enumerate(scored.image_paths):
            score = scored.scores[i]
            row = {
                "image_path": image_path,
                "defect_type": scored.defect_types[i],
                "label": scored.labels[i],
                "raw_score": score,
                "normalized_score": float(normalized[i]),
                "predicted_label": int(score >= threshold),
                "threshold": float(threshold),
            }
            if mask_folder is not None:
                row["predicted_mask"] = f"{mask_folder}/{scored.defect_types[i]}/{Path(image_path).stem}.png"
            handle.write(json.dumps(row) + "\n")
    return Path(path)


def write_metrics(metrics: Metrics, path: Path) -> Path:
    """Metrics as JSON: values, null for the ones not applicable to the data, and
    ``not_applicable: {metric: reason}`` (left out when every metric applies)."""
    clean: dict = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    clean.update({name: None for name in metrics.not_applicable})
    if metrics.not_applicable:
        clean["not_applicable"] = dict(sorted(metrics.not_applicable.items()))
    if getattr(metrics, "provenance", None):
        clean["thresholds"] = dict(sorted(metrics.provenance.items()))
    return write_text(path, json.dumps(clean, indent=2, sort_keys=True) + "\n")
