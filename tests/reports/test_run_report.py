"""The fuller run report of a real training run and of inference with its exported model."""

import csv
import json
import logging
import re
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from quadra_ad.checks.composition import compose_config
from quadra_ad.datamodules.dataset import ImagePreparation
from quadra_ad.evaluation.metrics import scored_set_metrics
from quadra_ad.evaluation.scored_set import ScoredSet
from quadra_ad.evaluation.thresholds import Calibration
from quadra_ad.reports.heatmaps import full_resolution_map
from quadra_ad.reports.html_report import MAX_SHOWN_MISTAKES
from quadra_ad.reports.report import write_report
from quadra_ad.run import run
from tests.conftest import IMAGE_SIZE
from tests.reports.conftest import DEFECT_TYPES


def _csv(path):
    with path.open() as handle:
        return list(csv.DictReader(handle))


def _label(text: str):
    return None if text == "" else int(text)


def test_defect_confusion_agrees_with_predictions_and_metrics(report_run):
    task, _ = report_run
    folder = task.output_dir
    predictions = _csv(folder / "predictions.csv")
    counted = Counter((row["defect_type"], row["label"], row["predicted_label"]) for row in predictions)
    rows = _csv(folder / "defect_confusion.csv")
    # good first, then the defect folders, then the unlabelled folder
    assert [row["defect_type"] for row in rows] == ["good", *sorted(DEFECT_TYPES), "unknown"]
    for row in rows:
        assert int(row["predicted_good"]) == counted[(row["defect_type"], row["label"], "0")]
        assert int(row["predicted_anomalous"]) == counted[(row["defect_type"], row["label"], "1")]
    good = rows[0]
    assert good["mistake_kind"] == "false defect" and int(good["mistakes"]) == task.metrics["image_fp"]
    assert sum(int(row["mistakes"]) for row in rows[1:3]) == task.metrics["image_fn"]
    assert rows[3]["label"] == "" and rows[3]["mistakes"] == ""
    assert (folder / "defect_confusion_matrix.png").stat().st_size > 1000


def test_average_scores_by_label_and_defect_type(report_run):
    task, _ = report_run
    predictions = _csv(task.output_dir / "predictions.csv")
    table = {(row["group"], row["name"]): row for row in _csv(task.output_dir / "avg_score_by_label.csv")}
    names = {"good": ("0",), "anomalous": ("1",), "unlabelled": ("",)}
    groups = {("label", name): [r for r in predictions if r["label"] in labels] for name, labels in names.items()}
    groups.update({("defect_type", kind): [r for r in predictions if r["defect_type"] == kind and r["label"] != ""]
                   for kind in ("good", *DEFECT_TYPES)})
    groups[("defect_type", "unknown (no label)")] = [r for r in predictions if r["label"] == ""]
    assert set(table) == set(groups)
    for key, members in groups.items():
        for kind in ("raw", "normalized"):
            values = np.array([float(r[f"{kind}_score"]) for r in members])
            row = table[key]
            assert int(row["count"]) == len(values)
            for stat, expected in (("mean", values.mean()), ("std", values.std()), ("min", values.min()),
                                   ("max", values.max())):
                assert float(row[f"{kind}_{stat}"]) == pytest.approx(expected, rel=1e-6, abs=1e-6), (key, kind, stat)


def test_jsonl_matches_the_csv_and_names_each_predicted_mask(report_run):
    task, _ = report_run
    folder = task.output_dir
    lines = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    rows = _csv(folder / "predictions.csv")
    assert len(lines) == len(rows) == 17
    for line, row in zip(lines, rows, strict=True):
        assert line["image_path"] == row["image_path"] and line["label"] == _label(row["label"])
        assert f"{line['raw_score']:.9g}" == row["raw_score"]
        assert line["predicted_label"] == int(row["predicted_label"])
        assert (folder / line["predicted_mask"]).is_file()


def test_predicted_masks_are_the_maps_at_the_pixel_threshold_at_image_size(report_run):
    task, _ = report_run
    folder = task.output_dir / "predicted_masks"
    assert len(list(folder.rglob("*.png"))) == 17
    test = task.collector.test
    threshold = task.calibration.pixel_threshold
    for i, image_path in enumerate(test.image_paths):
        mask = cv2.imread(str(folder / test.defect_types[i] / f"{image_path.rsplit('/', 1)[1]}"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (IMAGE_SIZE, IMAGE_SIZE) and set(np.unique(mask)) <= {0, 255}
        expected = full_resolution_map(test.maps[i], (IMAGE_SIZE, IMAGE_SIZE)) >= threshold
        assert np.array_equal(mask == 255, expected)


def test_metrics_json_says_where_the_thresholds_came_from(report_run):
    task, _ = report_run
    metrics = json.loads((task.output_dir / "metrics.json").read_text())
    assert metrics["thresholds"]["image_threshold"] == "F1-optimal on the validation images"
    assert metrics["image_threshold"] == pytest.approx(task.calibration.image_threshold)


def test_html_report_is_self_contained_and_small(report_run):
    task, _ = report_run
    page = (task.output_dir / "report.html").read_text()
    assert "<title>quadra-ad training report: Padim run</title>" in page
    assert "<script" not in page.lower() and 'rel="stylesheet"' not in page
    sources = re.findall(r'\ssrc="([^"]*)"', page) + re.findall(r'\shref="([^"]*)"', page)
    assert sources and all(source.startswith("data:") for source in sources)
    # plots (histogram, confusion, per defect type) + the worst mistakes, at most 6 of each kind
    fp, fn = int(task.metrics["image_fp"]), int(task.metrics["image_fn"])
    strips = len(re.findall(r'<img alt="[^"]*raw score', page))
    assert strips == min(fp, MAX_SHOWN_MISTAKES) + min(fn, MAX_SHOWN_MISTAKES) > 0
    assert page.count("<img ") == 3 + strips
    assert len(page.encode()) < 600_000
    for text in ("image_AUROC", "false defects", "F1-optimal on the validation images", "Worst false positives",
                 "avg_score_by_label.csv", "predicted_masks/"):
        assert text in page, text


def test_report_files_are_artifacts_of_the_mlflow_run(report_run):
    task, workdir = report_run
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    run_id = task.tracked_run.run_id
    logged = {artifact.path for artifact in client.list_artifacts(run_id)}
    assert {"report.html", "predictions.jsonl", "defect_confusion.csv", "defect_confusion_matrix.png",
            "avg_score_by_label.csv", "predicted_masks", "metrics.json"} <= logged
    assert len(client.list_artifacts(run_id, "predicted_masks/good")) == 6
    copy = client.download_artifacts(run_id, "report.html", str(workdir / "downloaded"))
    assert Path(copy).read_bytes() == (task.output_dir / "report.html").read_bytes()


def test_inference_reports_threshold_provenance_and_logs_a_results_table(report_run, two_defect_dataset, tmp_path,
                                                                          caplog):
    training, _ = report_run
    cfg = compose_config([
        "experiment=base/anomaly/inference", f"task.model_path={training.output_dir / 'deployment_model' / 'model.onnx'}",
        f"datamodule.data_path={two_defect_dataset}", "datamodule.num_workers=0", "~logger",
    ])
    with caplog.at_level(logging.INFO, logger="quadra_ad.reports.report"):
        task = run(cfg, output_dir=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["thresholds"] == {"image_threshold": "recomputed: F1-optimal on this data"}
    table = caplog.text
    for text in (f"image_AUROC      {task.metrics['image_AUROC']:.4f}", "image threshold  ", "pixel threshold  ",
                 "TP FP FN TN      " + " ".join(str(int(task.metrics[f"image_{k}"])) for k in ("tp", "fp", "fn", "tn")),
                 "(recomputed: F1-optimal on this data)", str(tmp_path / "run" / "report.html")):
        assert text in table, text
    page = (tmp_path / "run" / "report.html").read_text()
    assert "quadra-ad inference report: Padim run" in page and "recomputed: F1-optimal on this data" in page
    assert len(list((tmp_path / "run" / "predicted_masks").rglob("*.png"))) == 17


def test_report_of_a_model_without_maps_shows_at_most_six_mistakes_of_a_kind_and_writes_no_masks(two_defect_dataset,
                                                                                                 tmp_path):
    scored = ScoredSet()
    good = sorted((two_defect_dataset / "test" / "good").glob("*.png"))
    paths = good + good + sorted((two_defect_dataset / "test" / "blob").glob("*.png"))
    # every good image above the threshold, every blob image below: all are mistakes
    scores = list(np.linspace(0.95, 0.6, 12)) + [0.4, 0.3, 0.2, 0.1]
    scored.add_batch([str(p) for p in paths], torch.tensor([0] * 12 + [1] * 4), torch.tensor(scores), None, None)
    calibration = Calibration(image_threshold=0.5, image_min=0.0, image_max=1.0, pixel_threshold=0.5)
    metrics = scored_set_metrics(scored, calibration)
    preparation = ImagePreparation([IMAGE_SIZE, IMAGE_SIZE], [0.5] * 3, [0.25] * 3)
    written = write_report(scored, metrics, tmp_path, calibration, preparation=preparation)
    assert not (tmp_path / "predicted_masks").exists() and "predicted_mask" not in (tmp_path / "predictions.jsonl").read_text()
    page = (tmp_path / "report.html").read_text()
    assert len(re.findall(r'<img alt="[^"]*raw score', page)) == MAX_SHOWN_MISTAKES + 4
    assert page.count("The 6 worst of 12") == 1 and {p.name for p in written} >= {"report.html", "defect_confusion.csv"}
