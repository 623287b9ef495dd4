"""Results per defect type: where the mistakes are, and how the scores of each kind of image spread.

``defect_confusion.csv`` (and its PNG): one row per true defect type — ``good``, each defect
folder, then the unlabelled folders — against the predicted label. The ``good`` row's
"predicted anomalous" count is the false defects (good parts the line would reject); a defect
row's "predicted good" count is its missed defects.

``avg_score_by_label.csv``: count, mean, standard deviation (population, so one image gives 0),
min and max of the image score, raw and normalised, per label and per defect type.
"""

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from quadra_ad.evaluation.scored_set import ScoredSet
from quadra_ad.evaluation.thresholds import Calibration
from quadra_ad.files import atomic_path
from quadra_ad.reports.plots import save_figure

DEFECT_CONFUSION_CSV = "defect_confusion.csv"
DEFECT_CONFUSION_PNG = "defect_confusion_matrix.png"
AVG_SCORE_BY_LABEL_CSV = "avg_score_by_label.csv"
LABEL_NAMES = {0: "good", 1: "anomalous", None: "unlabelled"}
STATISTICS = ("count", "mean", "std", "min", "max")


@dataclass(frozen=True)
class DefectRow:
    """The images of one true defect type (one folder) and how they were predicted."""

    defect_type: str
    label: int | None
    predicted_good: int
    predicted_anomalous: int

    @property
    def images(self) -> int:
        return self.predicted_good + self.predicted_anomalous

    @property
    def mistake_kind(self) -> str:
        return {0: "false defect", 1: "missed defect"}.get(self.label, "")

    @property
    def mistakes(self) -> int | None:
        """False defects for good images, missed defects for anomalous ones, None without a label."""
        return {0: self.predicted_anomalous, 1: self.predicted_good}.get(self.label)


def defect_confusion(scored: ScoredSet, threshold: float) -> list[DefectRow]:
    """Rows for good images first, then each defect type, then unlabelled folders (names sorted)."""
    counts = {group: [0, 0] for group in _groups(scored)}
    for label, defect_type, score in zip(scored.labels, scored.defect_types, scored.scores, strict=True):
        counts[(label, defect_type)][int(score >= threshold)] += 1
    return [DefectRow(defect_type, label, good, anomalous) for (label, defect_type), (good, anomalous) in counts.items()]


def _groups(scored: ScoredSet) -> list[tuple[int | None, str]]:
    """(label, defect type) pairs present: good first, then the defect types, then unlabelled folders."""
    order = {0: 0, 1: 1, None: 2}
    return sorted(set(zip(scored.labels, scored.defect_types, strict=True)), key=lambda group: (order[group[0]], group[1]))


def false_defects(rows: list[DefectRow]) -> int:
    """Good images predicted anomalous."""
    return sum(row.predicted_anomalous for row in rows if row.label == 0)


def write_defect_confusion(rows: list[DefectRow], path: Path) -> Path:
    with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["defect_type", "label", "images", "predicted_good", "predicted_anomalous", "mistakes", "mistake_kind"])
        for row in rows:
            writer.writerow([row.defect_type, "" if row.label is None else row.label, row.images, row.predicted_good,
                             row.predicted_anomalous, "" if row.mistakes is None else row.mistakes, row.mistake_kind])
    return Path(path)


def plot_defect_confusion(rows: list[DefectRow], path: Path) -> Path:
    """Counts per (true defect type, predicted label), shaded by the share of the row so small
    defect types read as clearly as big ones; the mistakes are framed in red."""
    matrix = np.array([[row.predicted_good, row.predicted_anomalous] for row in rows], dtype=np.int64).reshape(-1, 2)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(4.6, 1.2 + 0.45 * max(len(rows), 2)))
    axis = figure.subplots()
    axis.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for (index, column), value in np.ndenumerate(matrix):
        axis.text(column, index, str(value), ha="center", va="center", fontsize=11,
                  color="white" if shares[index, column] > 0.5 else "black")
        wrong_column = {0: 1, 1: 0}.get(rows[index].label)
        if column == wrong_column and value:
            axis.add_patch(Rectangle((column - 0.48, index - 0.48), 0.96, 0.96, fill=False, edgecolor="tab:red", linewidth=2))
    axis.set_xticks([0, 1], ["good", "anomalous"])
    axis.set_yticks(range(len(rows)), [_row_name(row) for row in rows])
    axis.set_xlabel("predicted")
    axis.set_ylabel("true defect type")
    axis.set_title(f"false defects: {false_defects(rows)}", fontsize=10)
    figure.tight_layout()
    save_figure(figure, path)
    return Path(path)


def _row_name(row: DefectRow) -> str:
    return f"{row.defect_type} (no label)" if row.label is None else row.defect_type


def score_statistics(scored: ScoredSet, normalization: Calibration) -> list[dict]:
    """One dict per group: ``group`` (label or defect_type), ``name``, then ``raw_<stat>`` and
    ``normalized_<stat>`` for each of :data:`STATISTICS`."""
    raw = np.asarray(scored.scores, dtype=np.float64)
    normalized = np.asarray(normalization.normalize(raw), dtype=np.float64)
    groups: list[tuple[str, str, np.ndarray]] = []
    labels = np.array([-1 if label is None else label for label in scored.labels])
    for label in (0, 1, None):
        chosen = labels == (-1 if label is None else label)
        if chosen.any():
            groups.append(("label", LABEL_NAMES[label], chosen))
    pairs = list(zip(scored.labels, scored.defect_types, strict=True))
    for label, defect_type in _groups(scored):
        chosen = np.array([pair == (label, defect_type) for pair in pairs])
        groups.append(("defect_type", _row_name(DefectRow(defect_type, label, 0, 0)), chosen))
    table = []
    for group, name, chosen in groups:
        entry: dict = {"group": group, "name": name}
        for prefix, values in (("raw", raw[chosen]), ("normalized", normalized[chosen])):
            entry.update({f"{prefix}_count": int(values.size), f"{prefix}_mean": float(values.mean()),
                          f"{prefix}_std": float(values.std()), f"{prefix}_min": float(values.min()),
                          f"{prefix}_max": float(values.max())})
        entry["count"] = entry.pop("raw_count")
        entry.pop("normalized_count")
        table.append(entry)
    return table


def write_score_statistics(table: list[dict], path: Path) -> Path:
    columns = ["group", "name", "count", *(f"{prefix}_{stat}" for prefix in ("raw", "normalized")
                                            for stat in STATISTICS if stat != "count")]
    with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for entry in table:
            writer.writerow([f"{entry[c]:.9g}" if isinstance(entry[c], float) else entry[c] for c in columns])
    return Path(path)
