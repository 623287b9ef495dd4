"""The run report shared by training and inference: CSV, metrics, summary plots."""

from pathlib import Path

from quadra_ad.metrics import Metrics
from quadra_ad.reports.plots import CONFUSION_MATRIX_PNG, SCORE_HISTOGRAM_PNG, plot_confusion_matrix, plot_score_histogram
from quadra_ad.reports.predictions import METRICS_JSON, PREDICTIONS_CSV, write_metrics, write_predictions
from quadra_ad.scored_set import ScoredSet
from quadra_ad.thresholds import Calibration


def write_report(scored: ScoredSet, metrics: Metrics, output_dir: Path, normalization: Calibration,
                 threshold: float | None = None) -> list[Path]:
    """Write predictions.csv, metrics.json, and the plots that the data allows; return the files.

    ``threshold`` labels the images (default: the calibration's image threshold); normalised
    scores always come from ``normalization``, the training calibration.
    """
    threshold = normalization.image_threshold if threshold is None else threshold
    written = [write_metrics(metrics, output_dir / METRICS_JSON)]
    if len(scored):
        written.append(write_predictions(scored, output_dir / PREDICTIONS_CSV, threshold, normalization))
        written.append(plot_score_histogram(scored.scores, scored.labels, threshold, output_dir / SCORE_HISTOGRAM_PNG))
    if "image_tp" in metrics:
        counts = {k: int(metrics[f"image_{k}"]) for k in ("tp", "fp", "fn", "tn")}
        written.append(plot_confusion_matrix(counts, output_dir / CONFUSION_MATRIX_PNG))
    return written
