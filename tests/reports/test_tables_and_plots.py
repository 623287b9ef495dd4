"""Per-defect tables on a hand-made scored set; plots readable at a glance (axes from the data,
legends off the bars)."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from quadra_ad.evaluation.scored_set import ScoredSet
from quadra_ad.evaluation.thresholds import Calibration
from quadra_ad.reports.defect_confusion import defect_confusion, false_defects, score_statistics
from quadra_ad.reports.plots import metric_by_model_figure, score_histogram_figure


def _scored() -> ScoredSet:
    scored = ScoredSet()
    for path, label, score in [
        ("d/test/good/0.png", 0, 1.0), ("d/test/good/1.png", 0, 3.0), ("d/test/good/2.png", 0, 2.5),
        ("d/test/crack/0.png", 1, 4.0), ("d/test/crack/1.png", 1, 1.5),
        ("d/test/hole/0.png", 1, 5.0),
        ("d/new/0.png", None, 2.9), ("d/new/1.png", None, 0.5),
    ]:
        scored.image_paths.append(path)
        scored.labels.append(label)
        scored.defect_types.append(path.split("/")[-2])
        scored.scores.append(score)
    return scored


def test_rows_per_defect_type_with_false_defects_and_missed_defects():
    rows = defect_confusion(_scored(), threshold=2.0)
    summary = [(r.defect_type, r.label, r.predicted_good, r.predicted_anomalous, r.mistakes, r.mistake_kind) for r in rows]
    assert summary == [
        ("good", 0, 1, 2, 2, "false defect"),
        ("crack", 1, 1, 1, 1, "missed defect"),
        ("hole", 1, 0, 1, 0, "missed defect"),
        ("new", None, 1, 1, None, ""),
    ]
    assert false_defects(rows) == 2


def test_score_statistics_raw_and_normalised():
    calibration = Calibration(image_threshold=2.0, image_min=0.0, image_max=6.0)
    table = {(e["group"], e["name"]): e for e in score_statistics(_scored(), calibration)}
    assert list(table) == [("label", "good"), ("label", "anomalous"), ("label", "unlabelled"), ("defect_type", "good"),
                           ("defect_type", "crack"), ("defect_type", "hole"), ("defect_type", "new (no label)")]
    crack = table[("defect_type", "crack")]
    assert crack["count"] == 2 and crack["raw_mean"] == 2.75 and crack["raw_std"] == 1.25
    assert (crack["raw_min"], crack["raw_max"]) == (1.5, 4.0)
    normalized = calibration.normalize(np.array([4.0, 1.5]))
    assert crack["normalized_mean"] == pytest.approx(normalized.mean())
    assert table[("label", "anomalous")]["count"] == 3 and table[("defect_type", "hole")]["raw_std"] == 0.0


def _boxes(figure):
    renderer = FigureCanvasAgg(figure).get_renderer()
    axis = figure.axes[0]
    return axis, axis.get_window_extent(renderer), axis.get_legend().get_window_extent(renderer)


def test_histogram_x_axis_spans_the_scores_and_the_legend_sits_above_the_bars():
    scores = list(np.linspace(100.0, 101.0, 20))
    figure = score_histogram_figure(scores, [0] * 10 + [1] * 10, threshold=100.5)
    axis, plot_box, legend_box = _boxes(figure)
    low, high = axis.get_xlim()
    assert 99.0 < low < 100.0 and 101.0 < high < 102.0
    assert legend_box.y0 >= plot_box.y1 - 1  # above the plotting area, not over a bar


def test_compare_plot_y_axis_from_clustered_values_and_legend_beside_the_bars():
    runs = [("a", "Padim", 0.97), ("b", "Padim", 0.975), ("c", "Patchcore", 0.99)]
    axis, plot_box, legend_box = _boxes(metric_by_model_figure(runs, "image_AUROC"))
    low, high = axis.get_ylim()
    assert 0.9 < low < 0.97 and high > 0.99
    assert legend_box.x0 >= plot_box.x1 - 1


def test_compare_plot_keeps_zero_when_values_spread_from_it():
    axis, _, _ = _boxes(metric_by_model_figure([("a", "Padim", 0.01), ("b", "Stfpm", 0.9)], "image_AUROC"))
    assert axis.get_ylim()[0] == 0.0
