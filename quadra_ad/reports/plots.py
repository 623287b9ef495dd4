"""Summary plots: confusion matrix, score histogram with the threshold line, comparison bars.

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
    save_figure(figure, path)
    return Path(path)


def plot_score_histogram(scores: list[float], labels: list[int | None], threshold: float, path: Path) -> Path:
    """Histogram of raw image scores by true label, with the threshold as a vertical line."""
    save_figure(score_histogram_figure(scores, labels, threshold), path)
    return Path(path)


def score_histogram_figure(scores: list[float], labels: list[int | None], threshold: float) -> Figure:
    """The figure of :func:`plot_score_histogram`."""
    scores_array = np.asarray(scores, dtype=np.float64)
    groups = {
        "good": [s for s, label in zip(scores_array, labels, strict=True) if label == 0],
        "anomalous": [s for s, label in zip(scores_array, labels, strict=True) if label == 1],
        "unknown": [s for s, label in zip(scores_array, labels, strict=True) if label is None],
    }
    bins = np.histogram_bin_edges(np.append(scores_array, threshold), bins=30)
    figure = Figure(figsize=(6, 3.8))
    axis = figure.subplots()
    for name, colour in (("good", "tab:green"), ("anomalous", "tab:red"), ("unknown", "tab:gray")):
        if groups[name]:
            axis.hist(groups[name], bins=bins, alpha=0.6, label=f"{name} ({len(groups[name])})", color=colour)
    axis.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    # The x range is the scores' own (with the threshold), never stretched to 0: raw scores often
    # cluster far from it, and a stretched axis squeezes every bar into a sliver.
    pad = 0.02 * (bins[-1] - bins[0] or 1.0)
    axis.set_xlim(bins[0] - pad, bins[-1] + pad)
    axis.set_xlabel("raw anomaly score")
    axis.set_ylabel("images")
    axis.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=4, fontsize=8, frameon=False)  # above, off the bars
    figure.tight_layout()
    return figure


def plot_metric_by_model(runs: list[tuple[str, str, float]], metric: str, path: Path) -> Path:
    """Bar chart of ``metric`` per run (``(run, model, value)``), runs of one model side by side in one colour."""
    save_figure(metric_by_model_figure(runs, metric), path)
    return Path(path)


def metric_by_model_figure(runs: list[tuple[str, str, float]], metric: str) -> Figure:
    """The figure of :func:`plot_metric_by_model`: the bar axis spans the values' range (see
    :func:`clustered_limits`), the legend sits right of the bars."""
    ordered = sorted(runs, key=lambda item: (item[1], -item[2]))
    models = list(dict.fromkeys(model for _, model, _ in ordered))
    colours = {model: colormaps["tab10"](i % 10) for i, model in enumerate(models)}
    figure = Figure(figsize=(max(5.5, 0.5 * len(ordered) + 2), 4.2))
    axis = figure.subplots()
    positions = np.arange(len(ordered))
    bars = axis.bar(positions, [value for _, _, value in ordered], color=[colours[m] for _, m, _ in ordered])
    for bar, (_, _, value) in zip(bars, ordered, strict=True):
        axis.annotate(f"{value:.3f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                      ha="center", va="bottom", fontsize=7)
    axis.set_ylim(*clustered_limits([value for _, _, value in ordered]))
    axis.set_xticks(positions, [run for run, _, _ in ordered], rotation=45, ha="right", fontsize=7)
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} per run, grouped by model", fontsize=10)
    axis.legend(handles=[Rectangle((0, 0), 1, 1, color=colours[m]) for m in models], labels=models,
                fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return figure


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
    if best:
        axis.set_ylim(*clustered_limits(list(best.values())))
    crowded = len(categories) > 6
    axis.set_xticks(range(len(categories)), categories, rotation=45 if crowded else 0, ha="right" if crowded else "center")
    axis.set_ylabel(metric)
    axis.set_title(f"{metric} per category and model", fontsize=10)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    save_figure(figure, path)
    return Path(path)


def clustered_limits(values: list[float]) -> tuple[float, float]:
    """Bar-axis limits from the values' own range: close values (0.97 against 0.99) stay apart
    instead of all reaching the top of an axis that starts at 0. Never below 0 for non-negative
    values; room above the highest bar for its label."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    margin = max(0.02, 0.15 * (high - low))
    return (max(0.0, low - margin) if low >= 0 else low - margin), high + margin / 2


def save_figure(figure: Figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format=Path(path).suffix.lstrip(".") or "png")
