"""``report.html``: one self-contained page per run, to read in a browser or in MLflow's artifact view.

Metrics, where the thresholds came from, the score histogram, the confusion matrices, the scores
per defect type, and the worst false positives and negatives drawn as heatmap strips. Every image
is inlined as a ``data:`` URI and there is no script or external stylesheet: the page opens the
same from the run folder, from a copy of it, or from MLflow (whose UI shows HTML artifacts in a
sandboxed frame that can load nothing else). Strips are downscaled JPEGs and at most
:data:`MAX_SHOWN_MISTAKES` of each kind are shown, so a page stays a few hundred kB.
"""

import base64
import datetime
import html
import math
from pathlib import Path

import cv2
import numpy as np

from quadra_ad.evaluation.metrics import Metrics
from quadra_ad.evaluation.scored_set import ScoredSet
from quadra_ad.evaluation.thresholds import Calibration
from quadra_ad.files import write_text
from quadra_ad.reports.defect_confusion import DefectRow, false_defects

REPORT_HTML = "report.html"
MAX_SHOWN_MISTAKES = 6
#: Width (px) a heatmap strip is shrunk to in the page; the heatmaps/ folder keeps the full ones.
STRIP_WIDTH = 640
_JPEG_QUALITY = 85
_TASK_KINDS = {"AnomalyTrainingTask": "training", "AnomalyInferenceTask": "inference"}
#: Tags shown in the page's run section, in this order, by the name shown.
_RUN_TAGS = {
    "model": "quadra_ad.model", "dataset": "quadra_ad.dataset", "dataset hash": "quadra_ad.dataset_hash",
    "model path": "quadra_ad.model_path", "training run folder": "quadra_ad.training_run_folder",
    "threshold rule": "quadra_ad.threshold_rule", "threshold source": "quadra_ad.threshold_source",
    "validation images": "quadra_ad.validation_images", "command": "quadra_ad.command",
    "git commit": "quadra_ad.git_commit", "host": "quadra_ad.host", "quadra-ad version": "quadra_ad.version",
    "sweep": "quadra_ad.sweep_id", "tag": "quadra_ad.tag",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 72em; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: .5em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.na td { color: #888; } .bad { color: #b00; font-weight: 600; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: .5em 0; } figcaption { font-size: .85em; color: #444; word-break: break-all; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
details { margin: .5em 0; } code { font-size: .9em; }
"""


def worst_mistakes(scored: ScoredSet, threshold: float) -> tuple[list[int], list[int]]:
    """Indices of the false positives (good images at or above ``threshold``), highest score first,
    and of the false negatives (anomalous images below it), lowest score first."""
    false_positives = [i for i, label in enumerate(scored.labels) if label == 0 and scored.scores[i] >= threshold]
    false_negatives = [i for i, label in enumerate(scored.labels) if label == 1 and scored.scores[i] < threshold]
    return (sorted(false_positives, key=lambda i: -scored.scores[i]),
            sorted(false_negatives, key=lambda i: scored.scores[i]))


def write_html_report(path: Path, *, scored: ScoredSet, metrics: Metrics, calibration: Calibration,
                      normalization: Calibration, defect_rows: list[DefectRow], statistics: list[dict],
                      plots: dict[str, Path], strips: dict[int, np.ndarray], about: dict[str, str],
                      files: list[str]) -> Path:
    """Write the page. ``plots``: caption → PNG already written; ``strips``: image index → BGR
    heatmap strip for the mistakes to show; ``about``: the run's tags; ``files``: what else the
    report wrote, relative to the run folder."""
    kind = _TASK_KINDS.get(about.get("quadra_ad.task", ""), about.get("quadra_ad.task", "run"))
    model = about.get("quadra_ad.model", "")
    run_folder = Path(about.get("quadra_ad.run_folder") or path.parent)
    title = f"quadra-ad {kind} report: {model + ' ' if model else ''}{run_folder.name}"
    false_positives, false_negatives = worst_mistakes(scored, calibration.image_threshold)
    body = [
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(str(run_folder))} · {len(scored)} images · written '
        f'{datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}</p>',
        "<h2>Metrics</h2>", _metrics_table(metrics),
        "<h2>Thresholds</h2>", _thresholds_table(metrics, calibration, normalization),
        "<h2>Scores</h2>", _plots_html({k: v for k, v in plots.items() if "histogram" in k}),
        _statistics_table(statistics),
        "<h2>Confusion</h2>", _plots_html({k: v for k, v in plots.items() if "histogram" not in k}),
        _defect_table(defect_rows),
        f"<h2>Worst false positives ({len(false_positives)})</h2>",
        "<p>Good images with the highest scores among those predicted anomalous.</p>",
        _mistakes_html(scored, false_positives, strips, normalization),
        f"<h2>Worst false negatives ({len(false_negatives)})</h2>",
        "<p>Anomalous images with the lowest scores among those predicted good.</p>",
        _mistakes_html(scored, false_negatives, strips, normalization),
        "<h2>Run</h2>", _run_table(about),
        "<h2>Files</h2>", "<p>Written beside this page in the run folder:</p>",
        "<ul>" + "".join(f"<li><code>{_e(name)}</code></li>" for name in files) + "</ul>",
    ]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<link rel="icon" href="data:,">'  # no favicon request: nothing leaves the page
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")
    return write_text(path, page)


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def _number(value) -> str:
    """Counts whole, metrics to 4 decimals, anything large or tiny (raw scores) to 6 digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _e(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if 1e-2 <= abs(value) < 1e4 or value == 0 else f"{value:.6g}"


def _metrics_table(metrics: Metrics) -> str:
    order = ["image_AUROC", "image_AP", "image_F1", "image_precision", "image_recall", "image_tp", "image_fp",
             "image_fn", "image_tn", "pixel_AUROC", "pixel_F1", "pixel_AUPRO"]
    names = sorted(set(metrics) | set(metrics.not_applicable),
                   key=lambda n: (order.index(n) if n in order else len(order), n))
    names = [n for n in names if not n.endswith("_threshold") and n != "image_threshold_normalized"]
    if not names:
        return "<p>No metrics: the images have no labels.</p>"
    rows = []
    for name in names:
        if name in metrics.not_applicable:
            rows.append(f'<tr class="na"><td>{_e(name)}</td><td>n/a</td><td>{_e(metrics.not_applicable[name])}</td></tr>')
        else:
            value = metrics[name]
            shown = "n/a" if isinstance(value, float) and math.isnan(value) else _number(value)
            rows.append(f'<tr><td>{_e(name)}</td><td class="num">{shown}</td><td></td></tr>')
    return "<table><tr><th>metric</th><th>value</th><th>note</th></tr>" + "".join(rows) + "</table>"


def _thresholds_table(metrics: Metrics, calibration: Calibration, normalization: Calibration) -> str:
    rows = [("image threshold (raw score)", f"{calibration.image_threshold:.6g}"),
            ("image threshold (normalised score)", _number(float(normalization.normalize(calibration.image_threshold)))),
            ("pixel threshold (raw map value)",
             "none (no masks)" if calibration.pixel_threshold is None else f"{calibration.pixel_threshold:.6g}"),
            ("normalisation", f"training score range {normalization.image_min:.6g} … "
                              f"{normalization.image_max:.6g}, training threshold at 0.5")]
    rows += [(f"source: {name}", _e(text)) for name, text in sorted(getattr(metrics, "provenance", {}).items())]
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _plots_html(plots: dict[str, Path]) -> str:
    figures = [f'<figure><img alt="{_e(caption)}" src="{_data_uri(Path(png).read_bytes(), "image/png")}">'
               f"<figcaption>{_e(caption)}</figcaption></figure>" for caption, png in plots.items()]
    return f'<div class="plots">{"".join(figures)}</div>' if figures else ""


def _statistics_table(statistics: list[dict]) -> str:
    if not statistics:
        return ""
    head = ("<tr><th>group</th><th>name</th><th>count</th>"
            + "".join(f"<th>{kind} {stat}</th>" for kind in ("raw", "normalised") for stat in ("mean", "std", "min", "max"))
            + "</tr>")
    rows = []
    for entry in statistics:
        cells = [entry["group"], entry["name"]]
        values = [entry["count"], *(entry[f"{prefix}_{stat}"] for prefix in ("raw", "normalized")
                                    for stat in ("mean", "std", "min", "max"))]
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells)
                    + "".join(f'<td class="num">{_number(v)}</td>' for v in values) + "</tr>")
    return "<p>Image scores per label and per defect type:</p><table>" + head + "".join(rows) + "</table>"


def _defect_table(rows: list[DefectRow]) -> str:
    if not rows:
        return ""
    lines = []
    for row in rows:
        mistakes = "" if row.mistakes is None else (f'<span class="bad">{row.mistakes}</span>' if row.mistakes else "0")
        lines.append(f"<tr><td>{_e(row.defect_type)}{' (no label)' if row.label is None else ''}</td>"
                     f'<td class="num">{row.images}</td><td class="num">{row.predicted_good}</td>'
                     f'<td class="num">{row.predicted_anomalous}</td><td class="num">{mistakes}</td>'
                     f"<td>{_e(row.mistake_kind)}</td></tr>")
    return (f"<p>Per defect type; false defects (good images predicted anomalous): "
            f"<b>{false_defects(rows)}</b>.</p><table><tr><th>true defect type</th><th>images</th>"
            "<th>predicted good</th><th>predicted anomalous</th><th>mistakes</th><th>kind</th></tr>"
            + "".join(lines) + "</table>")


def _mistakes_html(scored: ScoredSet, indices: list[int], strips: dict[int, np.ndarray], normalization: Calibration) -> str:
    if not indices:
        return "<p>None.</p>"
    shown = indices[:MAX_SHOWN_MISTAKES]
    parts = [] if len(indices) <= len(shown) else [f"<p>The {len(shown)} worst of {len(indices)}.</p>"]
    for i in shown:
        caption = (f"{scored.defect_types[i]}/{Path(scored.image_paths[i]).name} · raw score {scored.scores[i]:.4g} · "
                   f"normalised {float(normalization.normalize(scored.scores[i])):.3f}")
        image = f'<img alt="{_e(caption)}" src="{_strip_uri(strips[i])}">' if i in strips else ""
        parts.append(f"<figure>{image}<figcaption>{_e(caption)}<br>{_e(scored.image_paths[i])}</figcaption></figure>")
    return "".join(parts)


def _strip_uri(strip: np.ndarray) -> str:
    if strip.shape[1] > STRIP_WIDTH:
        height = max(1, round(strip.shape[0] * STRIP_WIDTH / strip.shape[1]))
        strip = cv2.resize(strip, (STRIP_WIDTH, height), interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", strip, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise OSError("cannot encode a heatmap strip as JPEG")
    return _data_uri(encoded.tobytes(), "image/jpeg")


def _run_table(about: dict[str, str]) -> str:
    rows = [(name, about[tag]) for name, tag in _RUN_TAGS.items() if about.get(tag)]
    versions = sorted((tag.removeprefix("version."), value) for tag, value in about.items() if tag.startswith("version."))
    table = "<table>" + "".join(f"<tr><th>{_e(k)}</th><td><code>{_e(v)}</code></td></tr>" for k, v in rows) + "</table>"
    if versions:
        table += ("<details><summary>package versions</summary><table>"
                  + "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in versions) + "</table></details>")
    return table
