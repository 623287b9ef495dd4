"""End-to-end training runs on tiny generated data: outputs, exports, MLflow, errors."""

import csv
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mlflow.tracking import MlflowClient

from quadra_ad.deploy.model_card import ModelCard
from quadra_ad.errors import ConfigError, DatasetError
from quadra_ad.run import run
from tests.conftest import IMAGE_SIZE, training_config


def _predictions(run_dir: Path) -> list[dict]:
    with (run_dir / "predictions.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_training_writes_exports_model_json_metrics_and_predictions(trained):
    task, _ = trained
    run_dir = task.output_dir
    deployment = run_dir / "deployment_model"
    for name in ("model.pt", "model.onnx", "model.json"):
        assert (deployment / name).is_file(), name
    card = ModelCard.read(deployment / "model.json")
    assert card.input_size == [IMAGE_SIZE, IMAGE_SIZE]
    assert card.mean == pytest.approx([0.485, 0.456, 0.406])
    assert card.task_type == "segmentation"
    calibration = card.calibration
    assert calibration.pixel_threshold is not None
    assert calibration.image_min <= calibration.image_threshold <= calibration.image_max
    assert calibration == task.calibration
    assert card.files == {"torchscript": "model.pt", "onnx": "model.onnx"}
    assert {"anomalib", "torch", "quadra_ad"} <= set(card.versions)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.5 < metrics["image_AUROC"] <= 1.0
    assert {"image_F1", "pixel_AUROC", "pixel_F1", "image_tp", "image_threshold"} <= set(metrics)

    rows = _predictions(run_dir)
    unknown = [r for r in rows if r["defect_type"] == "unknown"]
    assert len(rows) == 12 + 3 and len(unknown) == 3
    assert all(r["label"] == "" for r in unknown)
    assert {r["label"] for r in rows if r["defect_type"] != "unknown"} == {"0", "1"}


def test_training_logs_params_metrics_and_artifacts_to_mlflow(trained):
    task, workdir = trained
    run_info = task.tracked_run
    assert run_info is not None
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir}/mlflow.db")
    mlflow_run = client.get_run(run_info.run_id)
    assert mlflow_run.info.status == "FINISHED"
    tags = mlflow_run.data.tags
    assert tags["quadra_ad.model"] in ("Padim", "Patchcore") and len(tags["quadra_ad.dataset_hash"]) == 16
    assert {"version.anomalib", "version.torch", "version.lightning", "version.quadra_ad"} <= set(tags)
    assert "quadra_ad.git_commit" in tags and "quadra_ad.command" in tags
    assert mlflow_run.data.params["model.backbone"] == "resnet18"
    assert mlflow_run.data.params["datamodule.data_path"] == str(task.datamodule.data_path)
    assert mlflow_run.data.metrics["image_AUROC"] == pytest.approx(task.metrics["image_AUROC"])
    top = {a.path for a in client.list_artifacts(run_info.run_id)}
    assert {"deployment_model", "metrics.json", "predictions.csv", "config_resolved.yaml",
            "confusion_matrix.png", "score_histogram.png"} <= top
    exported = {a.path for a in client.list_artifacts(run_info.run_id, "deployment_model")}
    assert {"deployment_model/model.pt", "deployment_model/model.onnx", "deployment_model/model.json"} <= exported


def _test_batches(task):
    for batch in task.datamodule.test_dataloader():
        yield batch.image_path, batch.image


def test_exported_graphs_reproduce_training_test_scores(trained):
    task, _ = trained
    deployment = task.output_dir / "deployment_model"
    expected = {r["image_path"]: float(r["raw_score"]) for r in _predictions(task.output_dir)}
    scripted = torch.jit.load(str(deployment / "model.pt"))
    session = ort.InferenceSession(str(deployment / "model.onnx"), providers=["CPUExecutionProvider"])
    worst_ts, worst_onnx = 0.0, 0.0
    with torch.no_grad():
        for paths, images in _test_batches(task):
            ts_scores, ts_maps = scripted(images)
            onnx_scores, onnx_maps = session.run(None, {"image": images.numpy()})
            assert ts_maps.shape == (len(paths), 1, IMAGE_SIZE, IMAGE_SIZE)
            assert onnx_maps.shape == (len(paths), 1, IMAGE_SIZE, IMAGE_SIZE)
            reference = np.array([expected[p] for p in paths])
            worst_ts = max(worst_ts, float(np.abs(ts_scores.numpy() - reference).max()))
            worst_onnx = max(worst_onnx, float(np.abs(onnx_scores - reference).max()))
    assert worst_ts <= 1e-4
    assert worst_onnx <= 1e-3


def test_seeded_runs_give_identical_scores(segmentation_dataset, tmp_path):
    scores = []
    for attempt in ("first", "second"):
        cfg = training_config("base/anomaly/patchcore", segmentation_dataset, None, "backbone=resnet18", "export.types=[]")
        task = run(cfg, output_dir=tmp_path / attempt)
        scores.append(task.collector.test.scores)
    assert scores[0] == scores[1]


def test_folder_without_masks_is_classification_without_pixel_metrics(trained_padim_classification):
    task = trained_padim_classification
    assert not any(key.startswith("pixel_") for key in task.metrics)
    card = ModelCard.read(task.output_dir / "deployment_model" / "model.json")
    assert card.task_type == "classification" and card.calibration.pixel_threshold is None


def test_tracking_failure_keeps_finished_outputs(segmentation_dataset, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    cfg = training_config(
        "base/anomaly/padim", segmentation_dataset, None, "export.types=[torchscript]",
        f"+logger.mlflow.tracking_uri=sqlite:///{blocker}/mlflow.db",
        "+logger.mlflow.experiment_name=x",
    )
    task = run(cfg, output_dir=tmp_path / "run")
    assert task.tracked_run is None
    for name in ("metrics.json", "predictions.csv", "deployment_model/model.pt", "deployment_model/model.json"):
        assert (tmp_path / "run" / name).is_file(), name
    assert task.tracking_error.startswith("MLflow tracking failed")
    assert f"quadra-ad-upload {tmp_path / 'run'}" in task.tracking_error and "\n" not in task.tracking_error


def test_missing_data_path_names_the_key(tmp_path):
    from quadra_ad.checks.composition import compose_config

    cfg = compose_config(["experiment=base/anomaly/padim", "~logger"])
    with pytest.raises(ConfigError, match=r"^datamodule\.data_path is not set"):
        run(cfg, output_dir=tmp_path / "run")


def test_test_folder_with_only_unknown_images_cannot_set_thresholds(tmp_path):
    from quadra_ad.testing.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", n_train=4, n_test_good=0, n_test_defect=0, size=IMAGE_SIZE, n_unknown=2)
    cfg = training_config("base/anomaly/padim", data, None)
    with pytest.raises(DatasetError, match="no labelled test images"):
        run(cfg, output_dir=tmp_path / "run")


def test_visualizer_callback_writes_heatmaps_when_enabled(segmentation_dataset, tmp_path):
    cfg = training_config(
        "base/anomaly/padim", segmentation_dataset, None, "export.types=[]", "callbacks=default",
        "callbacks.visualizer.enabled=true", "callbacks.visualizer.plot_raw_outputs=true",
    )
    task = run(cfg, output_dir=tmp_path / "run")
    overlays = sorted((tmp_path / "run" / "heatmaps").rglob("*.png"))
    assert len(overlays) == len(task.collector.test) == 12
    assert len(list((tmp_path / "run" / "raw_outputs").rglob("*_anomaly_map.tiff"))) == 12


def test_visualizer_callback_is_off_by_default(segmentation_dataset, tmp_path):
    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, "export.types=[]", "callbacks=default")
    run(cfg, output_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "heatmaps").exists()


def test_a_test_set_without_good_images_reports_no_perfect_scores(tmp_path):
    from mlflow.tracking import MlflowClient

    from quadra_ad.testing.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", n_train=6, n_test_good=0, n_test_defect=4, size=IMAGE_SIZE)
    task = run(training_config("base/anomaly/padim", data, tmp_path, "export.types=[]"), output_dir=tmp_path / "run")
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for name in ("image_F1", "image_precision", "image_recall", "image_AUROC"):
        assert written[name] is None, name
        assert written["not_applicable"][name].startswith("every labelled test image is anomalous")
    assert written["image_tp"] + written["image_fn"] == 4
    logged = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db").get_run(task.tracked_run.run_id).data.metrics
    assert "image_F1" not in logged and "image_precision" not in logged and logged["image_tp"] + logged["image_fn"] == 4


def test_unknown_export_type_is_refused_before_training(segmentation_dataset, tmp_path):
    cfg = training_config("base/anomaly/padim", segmentation_dataset, tmp_path, "export.types=[torchscript,tflite]")
    with pytest.raises(ConfigError, match=r"^export\.types: unknown type\(s\) \['tflite'\]"):
        run(cfg, output_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "lightning_logs").exists()  # nothing was trained
    assert not (tmp_path / "mlflow.db").exists()  # and no run was logged


@pytest.mark.parametrize("opset", ["16.5", "3", "999"])
def test_onnx_opset_out_of_range_is_refused_before_training(segmentation_dataset, tmp_path, opset):
    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, f"export.onnx_opset={opset}")
    with pytest.raises(ConfigError, match=rf"^export\.onnx_opset={opset}: give a whole number"):
        run(cfg, output_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "lightning_logs").exists()


def test_onnx_opset_asked_for_is_the_one_written(segmentation_dataset, tmp_path):
    import onnx

    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, "export.types=[onnx]", "export.onnx_opset=20")
    run(cfg, output_dir=tmp_path / "run")
    written = onnx.load(str(tmp_path / "run" / "deployment_model" / "model.onnx"), load_external_data=False)
    assert next(entry.version for entry in written.opset_import if entry.domain in ("", "ai.onnx")) == 20


def test_onnx_opset_the_exporter_cannot_honour_fails_the_run_in_one_line(segmentation_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    from quadra_ad.errors import ExportError

    # PaDiM's graph does not convert below opset 18; the exporter used to keep 18 without a word.
    cfg = training_config("base/anomaly/padim", segmentation_dataset, tmp_path, "export.types=[onnx]",
                          "export.onnx_opset=17")
    with pytest.raises(ExportError, match=r"^export\.onnx_opset=17: the ONNX exporter could not convert") as error:
        run(cfg, output_dir=tmp_path / "run")
    assert "\n" not in str(error.value)
    assert (tmp_path / "run" / "metrics.json").is_file()  # what was done is kept
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (logged,) = client.search_runs([client.get_experiment_by_name("padim").experiment_id])
    assert logged.info.status == "FAILED" and logged.data.tags["quadra_ad.error"].startswith("ExportError: export.onnx_opset=17")


def _labelled_predictions(run_dir: Path) -> list[dict]:
    return [row for row in _predictions(run_dir) if row["label"] != ""]


@pytest.mark.parametrize("rule", ["manual", "manual_normalized", "target_fpr", "good_percentile"])
def test_threshold_rules_set_the_threshold_the_run_labels_and_exports_with(segmentation_dataset, tmp_path, rule):
    from quadra_ad.deploy.model_card import ModelCard
    from quadra_ad.evaluation.thresholds import f1_optimal_threshold

    settings = {"manual": ["task.manual_image_threshold=2.5"],
                "manual_normalized": ["task.manual_image_threshold=0.5", "task.manual_threshold_normalized=true"],
                "target_fpr": ["task.threshold_rule=target_fpr", "task.target_fpr=0.25"],
                "good_percentile": ["task.threshold_rule=good_percentile", "task.good_percentile=75"]}[rule]
    task = run(training_config("base/anomaly/padim", segmentation_dataset, None, "export.types=[onnx]", *settings),
               output_dir=tmp_path / "run")
    rows = _labelled_predictions(task.output_dir)
    scores = np.array([float(r["raw_score"]) for r in rows], dtype=np.float32)
    labels = np.array([int(r["label"]) for r in rows])
    threshold = ModelCard.read(task.output_dir / "deployment_model" / "model.json").calibration.image_threshold
    if rule == "manual":
        assert threshold == 2.5
    elif rule == "manual_normalized":  # 0.5 normalised is the F1-optimal threshold itself
        assert threshold == pytest.approx(f1_optimal_threshold(scores, labels), rel=1e-6)
    else:  # at most a quarter of the good validation (= test) images at or above the threshold
        good = scores[labels == 0]
        assert 0 < (good >= np.float32(threshold)).sum() <= len(good) // 4
    assert all(int(r["predicted_label"]) == int(np.float32(r["raw_score"]) >= np.float32(threshold)) for r in rows)
    recorded = json.loads((task.output_dir / "metrics.json").read_text())["thresholds"]["image_threshold"]
    assert recorded.startswith({"manual": "manual image threshold 2.5 (raw)",
                                "manual_normalized": "manual image threshold 0.5 (normalised)",
                                "target_fpr": "target_fpr=0.25: at most 0.25 of ",
                                "good_percentile": "good_percentile=75: at most 0.25 of "}[rule])


def test_a_line_with_only_good_images_gets_a_target_fpr_threshold(tmp_path):
    from quadra_ad.testing.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "good_only", n_train=8, n_test_good=8, n_test_defect=0, size=32)
    task = run(training_config("base/anomaly/padim", data, None, "export.types=[onnx]", "task.threshold_rule=target_fpr",
                               "task.target_fpr=0.125"), output_dir=tmp_path / "run")
    rows = _labelled_predictions(task.output_dir)
    assert len(rows) == 8 and sum(int(r["predicted_label"]) for r in rows) == 1  # 1/8 of the good images


@pytest.mark.parametrize("split", ["from_test", "folder"])
def test_thresholds_set_on_a_validation_split_that_is_not_scored(tmp_path, split):
    import shutil

    from quadra_ad.evaluation.thresholds import f1_optimal_threshold
    from quadra_ad.testing.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", n_train=8, n_test_good=6, n_test_defect=6, size=32)
    if split == "folder":  # used without asking: datamodule.val_split=auto finds val/
        for label in ("good", "blob"):
            (data / "val" / label).mkdir(parents=True)
            for index, image in enumerate(sorted((data / "test" / label).glob("*.png"))[:3]):
                shutil.move(image, data / "val" / label / f"v{index}.png")
                if label == "blob":
                    shutil.move(data / "ground_truth" / "blob" / f"{image.stem}_mask.png",
                                data / "ground_truth" / "blob" / f"v{index}_mask.png")
    overrides = ["datamodule.val_split=from_test", "datamodule.val_fraction=0.5"] if split == "from_test" else []
    task = run(training_config("base/anomaly/padim", data, tmp_path, "export.types=[onnx]", *overrides),
               output_dir=tmp_path / "run")
    validation = {str(s.image_path) for s in task.datamodule.layout.val}
    scored = {row["image_path"] for row in _labelled_predictions(task.output_dir)}
    assert len(validation) == 6 and len(scored) == 6 and not validation & scored
    # The threshold is the F1-optimal one of the validation images, not of the scored ones.
    collected = task.collector.validation
    assert {str(p) for p in collected.image_paths} == validation
    labelled = collected.labelled
    expected = f1_optimal_threshold(collected.score_tensor(labelled).numpy(), collected.label_tensor(labelled).numpy())
    assert task.calibration.image_threshold == expected
    source = json.loads((task.output_dir / "metrics.json").read_text())["thresholds"]["validation_images"]
    assert source.startswith("from_test: 6 images, 3 anomalous" if split == "from_test" else "folder: val/ (6 images, 3 anomalous)")
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(task.tracked_run.run_id).data.tags[
        "quadra_ad.validation_images"] == source
