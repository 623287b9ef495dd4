"""Summary plots: confusion matrix and score histogram with the threshold line.

Figures are made with matplotlib's object API (``Figure``), not ``pyplot``: they are written to
files only, so no backend is chosen or switched for the process that imports this module.
"""

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from quadra_ad.files import atomic_path

CONFUSION_MATRIX_PNG = "confusion_matrix.png"
SCORE_HISTOGRAM_PNG = "score_histogram.png"


def plot_confusion_matrix(counts: dict[str, int], path: Path) -> Path:
    """2×2 matrix of true (rows) against predicted (columns) labels."""
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    figure = Figure(figsize=(4, 3.6))
    axis = figure.subplots()
    axis.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        axis.text(col, row, str(value), ha="center", va="center", color=colour, fontsize=14)
    axis.set_xticks([0, 1], ["good", "anomalous"])
    axis.set_yticks([0, 1], ["good", "anomalous"])
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    figure.tight_layout()
    _save(figure, path)
    return Path(path)


def plot_score_histogram(scores: list[float], labels: list[int | None], threshold: float, path: Path) -> Path:
    """Histogram of raw image scores by true label, with the threshold as a vertical line."""
    scores_array = np.asarray(scores, dtype=np.float64)
    groups = {
        "good": [s for s, label in zip(scores_array, labels) if label == 0],
        "anomalous": [s for s, label in zip(scores_array, labels) if label == 1],
        "unknown": [s for s, label in zip(scores_array, labels) if label is None],
    }
    bins = np.histogram_bin_edges(np.append(scores_array, threshold), bins=30)
    figure = Figure(figsize=(6, 3.6))
    axis = figure.subplots()
    for name, colour in (("good", "tab:green"), ("anomalous", "tab:red"), ("unknown", "tab:gray")):
        if groups[name]:
            axis.hist(groups[name], bins=bins, alpha=0.6, label=f"{name} ({len(groups[name])})", color=colour)
    axis.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    axis.set_xlabel("raw anomaly score")
    axis.set_ylabel("images")
    axis.legend()
    figure.tight_layout()
    _save(figure, path)
    return Path(path)


def plot_metric_by_model(runs: list[tuple[str, str, float]], metric: str, path: Path) -> Path:
    """Bar chart of ``metric`` per run (``(run, model, value)``), runs of one model side by side in one colour."""
    ordered = sorted(runs, key=lambda item: (item[1], -item[2]))
    models = list(dict.fromkeys(model for _, model, _ in ordered))
    colours = {model: colormaps["tab10"](i % 10) for i, model in enumerate(models)}
    figure = Figure(figsize=(max(5.5, 0.5 * len(ordered) + 2), 4.2))
    axis = figure.subplots()
    positions = np.arange(len(ordered))
    bars = axis.bar(positions, [value for _, _, value in ordered], color=[colours[m] for _, m, _ in ordered])
    for bar, (_, _, value) in zip(bars, ordered):
        axis.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=7)
    axis.set_xticks(positions, [run for run, _, _ in ordered], rotation=45, ha="right", fontsize=7)
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} per run, grouped by model", fontsize=10)
    axis.legend(handles=[Rectangle((0, 0), 1, 1, color=colours[m]) for m in models], labels=models,
                fontsize=7, loc="lower right")
    figure.tight_layout()
    _save(figure, path)
    return Path(path)


def plot_metric_by_category(jobs: list[tuple[str, str, float | None]], metric: str, path: Path) -> Path:
    """Grouped bars of ``metric`` per category (``(category, model, value)``), one colour per model.

    Several jobs of one (category, model) — a settings sweep — show their best value. The axis
    starts near the lowest value, not at 0, so close scores stay apart; the legend sits outside.
    """
    best: dict[tuple[str, str], float] = {}
    for category, model, value in jobs:
        if value is not None and np.isfinite(value):
            best[(category, model)] = max(value, best.get((category, model), -np.inf))
    categories = sorted({c for c, _ in best})
    models = sorted({m for _, m in best})
    colours = {model: colormaps["tab10"](i % 10) for i, model in enumerate(models)}
    width = 0.8 / max(1, len(models))
    figure = Figure(figsize=(max(5.5, 0.6 * len(categories) * max(1, len(models)) + 2.5), 4.2))
    axis = figure.subplots()
    for index, model in enumerate(models):
        xs = [i + (index - (len(models) - 1) / 2) * width for i, c in enumerate(categories) if (c, model) in best]
        axis.bar(xs, [best[(c, model)] for c in categories if (c, model) in best], width=width, color=colours[model],
                 label=model)
    values = list(best.values())
    if values:
        low, high = min(values), max(values)
        margin = max(0.02, 0.15 * (high - low))
        axis.set_ylim(max(0.0, low - margin) if low >= 0 else low - margin, high + margin / 2)
    axis.set_xticks(range(len(categories)), categories, rotation=45 if len(categories) > 6 else 0, ha="right" if len(categories) > 6 else "center")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} per category and model", fontsize=10)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    _save(figure, path)
    return Path(path)


def _save(figure: Figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
