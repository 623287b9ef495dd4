"""The run report shared by training and inference: tables, metrics, plots, masks, one HTML page.

Everything lands in the run folder and is returned, so the task logs it to MLflow with the rest
of the run; the last thing written is a short table of the results in the log (the terminal).
"""

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

from quadra_ad.evaluation.metrics import Metrics
from quadra_ad.evaluation.scored_set import ScoredSet
from quadra_ad.evaluation.thresholds import Calibration
from quadra_ad.reports.defect_confusion import (
    AVG_SCORE_BY_LABEL_CSV,
    DEFECT_CONFUSION_CSV,
    DEFECT_CONFUSION_PNG,
    defect_confusion,
    false_defects,
    plot_defect_confusion,
    score_statistics,
    write_defect_confusion,
    write_score_statistics,
)
from quadra_ad.reports.html_report import MAX_SHOWN_MISTAKES, REPORT_HTML, worst_mistakes, write_html_report
from quadra_ad.reports.plots import (
    CONFUSION_MATRIX_PNG,
    SCORE_HISTOGRAM_PNG,
    plot_confusion_matrix,
    plot_score_histogram,
)
from quadra_ad.reports.predictions import (
    METRICS_JSON,
    PREDICTIONS_CSV,
    PREDICTIONS_JSONL,
    write_metrics,
    write_predictions,
    write_predictions_jsonl,
)

if TYPE_CHECKING:  # the heatmap code imports the datamodules, whose imports load pyplot: only when drawing
    from quadra_ad.datamodules.dataset import ImagePreparation

log = logging.getLogger(__name__)

#: Metrics of the terminal table, in this order, when the data defines them.
SUMMARY_METRICS = ("image_AUROC", "image_F1", "image_AP", "pixel_AUROC", "pixel_F1", "pixel_AUPRO")


def write_report(scored: ScoredSet, metrics: Metrics, output_dir: Path, normalization: Calibration,
                 threshold: float | None = None, *, calibration: Calibration | None = None,
                 preparation: "ImagePreparation | None" = None, about: dict[str, str] | None = None) -> list[Path]:
    """Write the report files that the data allows; return them (folders included) for MLflow.

    ``normalization`` (the training calibration) defines the normalised scores. ``calibration``
    holds the thresholds this run decides by (default: ``normalization``'s); ``threshold``, when
    given, replaces its image threshold. With ``preparation`` (how the model saw each image) the
    predicted masks are written when there is a pixel threshold, and the HTML page shows the worst
    mistakes as heatmaps. ``about``: the run's tracking tags, for the page's run section.
    """
    from quadra_ad.reports.heatmaps import PREDICTED_MASKS_DIR, heatmap_strip, write_predicted_masks

    decided = normalization if calibration is None else calibration
    if threshold is not None:
        decided = decided.with_thresholds(threshold, decided.pixel_threshold)
    threshold = decided.image_threshold
    written = [write_metrics(metrics, output_dir / METRICS_JSON)]
    plots: dict[str, Path] = {}
    rows, statistics, strips = [], [], {}
    if len(scored):
        masks = None
        if preparation is not None and decided.pixel_threshold is not None:
            masks = write_predicted_masks(scored, preparation, output_dir, decided.pixel_threshold)
        written.append(write_predictions(scored, output_dir / PREDICTIONS_CSV, threshold, normalization))
        written.append(write_predictions_jsonl(scored, output_dir / PREDICTIONS_JSONL, threshold, normalization,
                                               PREDICTED_MASKS_DIR if masks is not None else None))
        if masks is not None:
            written.append(masks)
        plots["score histogram"] = plot_score_histogram(scored.scores, scored.labels, threshold,
                                                        output_dir / SCORE_HISTOGRAM_PNG)
        rows = defect_confusion(scored, threshold)
        written.append(write_defect_confusion(rows, output_dir / DEFECT_CONFUSION_CSV))
        statistics = score_statistics(scored, normalization)
        written.append(write_score_statistics(statistics, output_dir / AVG_SCORE_BY_LABEL_CSV))
        if preparation is not None:
            for indices in worst_mistakes(scored, threshold):
                strips.update({i: heatmap_strip(scored, i, preparation, decided) for i in indices[:MAX_SHOWN_MISTAKES]})
    if "image_tp" in metrics:
        counts = {k: int(metrics[f"image_{k}"]) for k in ("tp", "fp", "fn", "tn")}
        plots["confusion matrix"] = plot_confusion_matrix(counts, output_dir / CONFUSION_MATRIX_PNG)
    if any(row.label is not None for row in rows):
        plots["per defect type"] = plot_defect_confusion(rows, output_dir / DEFECT_CONFUSION_PNG)
    written += [path for path in plots.values() if path not in written]
    page = output_dir / REPORT_HTML
    written.append(write_html_report(
        page, scored=scored, metrics=metrics, calibration=decided, normalization=normalization, defect_rows=rows,
        statistics=statistics, plots=plots, strips=strips, about={**(about or {}), "quadra_ad.run_folder": str(output_dir)},
        files=sorted(_relative(path, output_dir) for path in written if path != page),
    ))
    log.info("Results:\n%s", summary_table(scored, metrics, decided, normalization, rows, page))
    return written


def _relative(path: Path, folder: Path) -> str:
    relative = Path(path).relative_to(folder).as_posix()
    return relative + "/" if Path(path).is_dir() else relative


def summary_table(scored: ScoredSet, metrics: Metrics, calibration: Calibration, normalization: Calibration,
                  rows: list, page: Path) -> str:
    """A few aligned lines for the terminal: the main metrics, the thresholds and where they came
    from, the confusion counts, and where the full report is."""
    labelled = sum(label is not None for label in scored.labels)
    lines = [("images", f"{len(scored)} ({labelled} labelled, {len(scored) - labelled} unlabelled)")]
    for name in SUMMARY_METRICS:
        if name in metrics and not (isinstance(metrics[name], float) and math.isnan(metrics[name])):
            lines.append((name, f"{metrics[name]:.4f}"))
        elif name in metrics.not_applicable:
            lines.append((name, f"n/a ({metrics.not_applicable[name]})"))
    provenance = getattr(metrics, "provenance", {}).get("image_threshold")
    lines.append(("image threshold", f"{calibration.image_threshold:.6g} raw = "
                                     f"{float(normalization.normalize(calibration.image_threshold)):.4f} normalised"
                  + (f" ({provenance})" if provenance else "")))
    if calibration.pixel_threshold is not None:
        lines.append(("pixel threshold", f"{calibration.pixel_threshold:.6g}"))
    if "image_tp" in metrics:
        lines.append(("TP FP FN TN", " ".join(str(int(metrics[f"image_{k}"])) for k in ("tp", "fp", "fn", "tn"))
                      + f"  (false defects: {false_defects(rows)})"))
    lines.append(("report", str(page)))
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"  {name.ljust(width)}  {value}" for name, value in lines)
