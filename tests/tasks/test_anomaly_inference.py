"""Inference with exported models: parity with training, thresholds, outputs, errors."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from quadra_ad.checks.composition import compose_config
from quadra_ad.deploy.model_card import SCHEMA_VERSION, ModelCard, file_sha256
from quadra_ad.errors import ConfigError
from quadra_ad.run import run
from quadra_ad.testing.synthetic import write_synthetic_dataset
from tests.conftest import IMAGE_SIZE

TOLERANCE = {"model.pt": 1e-4, "model.onnx": 1e-3}


def inference_config(model_path: Path, data_path: Path, tracking_dir: Path | None = None, *extra: str):
    overrides = [
        "experiment=base/anomaly/inference",
        f"task.model_path={model_path}",
        f"datamodule.data_path={data_path}",
        "datamodule.num_workers=0",
        "datamodule.test_batch_size=5",
    ]
    overrides.append(f"logger.mlflow.tracking_uri=sqlite:///{tracking_dir}/mlflow.db" if tracking_dir else "~logger")
    return compose_config(overrides + list(extra))


def infer(model_path: Path, data_path: Path, output_dir: Path, *extra: str, tracking_dir: Path | None = None):
    return run(inference_config(model_path, data_path, tracking_dir, *extra), output_dir=output_dir)


def _rows(run_dir: Path) -> list[dict]:
    with (run_dir / "predictions.csv").open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("file_name", ["model.pt", "model.onnx"])
def test_inference_on_the_training_test_split_reproduces_training_scores(trained, segmentation_dataset, tmp_path, file_name):
    training, _ = trained
    model_path = training.output_dir / "deployment_model" / file_name
    task = infer(model_path, segmentation_dataset, tmp_path / "run", "task.use_training_threshold=true")
    expected = dict(zip(training.collector.test.image_paths, training.collector.test.scores, strict=True))
    got = dict(zip(task.labelled.image_paths, task.labelled.scores, strict=True))
    assert set(got) == set(expected)
    worst = max(abs(got[p] - expected[p]) for p in expected)
    assert worst <= TOLERANCE[file_name]
    assert task.metrics["image_AUROC"] == pytest.approx(training.metrics["image_AUROC"], abs=1e-12)
    # The unknown images are predicted too.
    assert len(task.unknown) == 3


def test_inference_writes_predictions_metrics_plots_and_heatmaps(trained, segmentation_dataset, tmp_path):
    training, _ = trained
    task = infer(training.output_dir / "deployment_model" / "model.onnx", segmentation_dataset, tmp_path / "run",
                 "task.plot_raw_outputs=true", tracking_dir=tmp_path)
    run_dir = tmp_path / "run"
    rows = _rows(run_dir)
    assert list(rows[0]) == ["image_path", "defect_type", "label", "raw_score", "normalized_score", "predicted_label", "threshold"]
    assert len(rows) == 15 and sum(r["label"] == "" for r in rows) == 3
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("image_AUROC", "image_F1", "image_precision", "image_recall", "image_AP", "image_tp", "image_fp",
                "image_fn", "image_tn", "pixel_AUROC", "pixel_F1", "pixel_AUPRO"):
        assert key in metrics, key
    assert (run_dir / "confusion_matrix.png").is_file() and (run_dir / "score_histogram.png").is_file()
    assert len(list((run_dir / "heatmaps").rglob("*.png"))) == 15
    raw_maps = sorted((run_dir / "raw_outputs").rglob("*_anomaly_map.tiff"))
    assert len(raw_maps) == 15
    import cv2

    full = cv2.imread(str(raw_maps[0]), cv2.IMREAD_UNCHANGED)
    assert full.dtype.name == "float32" and full.shape == (IMAGE_SIZE, IMAGE_SIZE)  # the images' own size

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    mlflow_run = client.get_run(task.tracked_run.run_id)
    assert mlflow_run.data.tags["quadra_ad.training_run_folder"] == str(training.output_dir)
    assert mlflow_run.data.metrics["image_AUROC"] == pytest.approx(task.metrics["image_AUROC"])
    logged = {a.path for a in client.list_artifacts(task.tracked_run.run_id)}
    assert {"predictions.csv", "metrics.json", "heatmaps", "confusion_matrix.png"} <= logged


def test_plot_only_wrong_draws_only_mistakes(trained, segmentation_dataset, tmp_path):
    training, _ = trained
    # A threshold above every score makes every anomalous image a mistake.
    card = ModelCard.read(training.output_dir / "deployment_model" / "model.json")
    folder = tmp_path / "model"
    shutil.copytree(training.output_dir / "deployment_model", folder)
    card.calibration = card.calibration.with_thresholds(max(training.collector.test.scores) + 1.0,
                                                        card.calibration.pixel_threshold)
    card.write(folder)
    task = infer(folder / "model.pt", segmentation_dataset, tmp_path / "run",
                 "task.use_training_threshold=true", "task.plot_only_wrong=true")
    anomalous = sum(1 for label in task.labelled.labels if label == 1)
    assert len(list((tmp_path / "run" / "heatmaps").rglob("*.png"))) == anomalous == 6


def test_default_recomputes_the_f1_optimal_threshold_on_the_new_data(trained, segmentation_dataset, tmp_path):
    from quadra_ad.evaluation.thresholds import f1_optimal_threshold

    training, _ = trained
    task = infer(training.output_dir / "deployment_model" / "model.pt", segmentation_dataset, tmp_path / "run")
    labelled = task.labelled
    expected = f1_optimal_threshold(labelled.score_tensor(labelled.labelled), labelled.label_tensor(labelled.labelled))
    assert task.calibration.image_threshold == pytest.approx(expected)
    assert task.threshold_source.startswith("recomputed")
    assert all(float(r["threshold"]) == pytest.approx(expected, rel=1e-6) for r in _rows(tmp_path / "run"))


def test_reused_training_threshold_normalises_to_one_half(trained, segmentation_dataset, tmp_path):
    training, _ = trained
    task = infer(training.output_dir / "deployment_model" / "model.pt", segmentation_dataset, tmp_path / "run",
                 "task.use_training_threshold=true")
    card = ModelCard.read(training.output_dir / "deployment_model" / "model.json")
    assert task.calibration.image_threshold == card.calibration.image_threshold
    assert task.metrics["image_threshold_normalized"] == pytest.approx(0.5)
    for row in _rows(tmp_path / "run"):
        assert (float(row["normalized_score"]) >= 0.5) == (row["predicted_label"] == "1")


@pytest.mark.parametrize("value", [0.5, 0.8])
def test_a_custom_normalized_threshold_labels_at_that_normalised_score(trained, segmentation_dataset, tmp_path, value):
    training, _ = trained
    task = infer(training.output_dir / "deployment_model" / "model.onnx", segmentation_dataset, tmp_path / "run",
                 f"task.custom_normalized_threshold={value}")
    card = ModelCard.read(training.output_dir / "deployment_model" / "model.json")
    assert float(card.calibration.normalize(task.calibration.image_threshold)) == pytest.approx(value)
    assert task.threshold_source == f"custom normalised threshold {value:g} (training normalisation)"
    for row in _rows(tmp_path / "run"):
        normalized = float(card.calibration.normalize(float(row["raw_score"])))
        if abs(normalized - value) > 1e-6:  # not a tie at the threshold
            assert (normalized >= value) == (row["predicted_label"] == "1")


def test_inference_reuses_training_pixel_threshold(trained, segmentation_dataset, tmp_path):
    training, _ = trained
    task = infer(training.output_dir / "deployment_model" / "model.pt", segmentation_dataset, tmp_path / "run",
                 "task.use_training_threshold=true", "task.training_threshold_type=pixel")
    card = ModelCard.read(training.output_dir / "deployment_model" / "model.json")
    assert task.calibration.image_threshold == card.calibration.pixel_threshold
    assert task.calibration.pixel_threshold == card.calibration.pixel_threshold


def test_folder_with_only_unknown_images_gives_predictions_without_metrics(trained, tmp_path):
    training, _ = trained
    data = write_synthetic_dataset(tmp_path / "data", n_train=0, n_test_good=0, n_test_defect=0, size=IMAGE_SIZE, n_unknown=4)
    task = infer(training.output_dir / "deployment_model" / "model.onnx", data, tmp_path / "run")
    assert task.metrics == {}
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == {}
    rows = _rows(tmp_path / "run")
    assert len(rows) == 4 and all(r["label"] == "" for r in rows)
    assert "training" in task.threshold_source


# -- errors ------------------------------------------------------------------------------------


def _error(model_path, data_path, tmp_path, *extra) -> str:
    with pytest.raises(ConfigError) as error:
        infer(model_path, data_path, tmp_path / "run", *extra)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_model_path_not_set_names_the_key(segmentation_dataset, tmp_path):
    cfg = compose_config(["experiment=base/anomaly/inference", f"datamodule.data_path={segmentation_dataset}", "~logger"])
    with pytest.raises(ConfigError, match=r"^task\.model_path is not set"):
        run(cfg, output_dir=tmp_path / "run")


def test_model_path_that_does_not_exist(segmentation_dataset, tmp_path):
    message = _error(tmp_path / "nope.pt", segmentation_dataset, tmp_path)
    assert "task.model_path" in message and "does not exist" in message


def test_model_path_with_unknown_extension(trained, segmentation_dataset, tmp_path):
    training, _ = trained
    weird = tmp_path / "model.h5"
    weird.write_bytes(b"x")
    message = _error(weird, segmentation_dataset, tmp_path)
    assert "unknown model format '.h5'" in message


@pytest.mark.parametrize("file_name", ["model.pt", "model.onnx"])
def test_corrupt_model_file_names_the_format(trained, segmentation_dataset, tmp_path, file_name):
    training, _ = trained
    folder = tmp_path / "model"
    shutil.copytree(training.output_dir / "deployment_model", folder)
    (folder / file_name).write_bytes((folder / file_name).read_bytes()[:200])
    # Its hash gives it away before any runtime opens it ...
    message = _error(folder / file_name, segmentation_dataset, tmp_path)
    assert "was written for other graph files" in message and str(folder / file_name) in message
    # ... and with a card written for the damaged file, the runtime's refusal is one line too.
    ModelCard.read(folder / "model.json").write(folder)
    message = _error(folder / file_name, segmentation_dataset, tmp_path)
    assert "cannot be loaded as" in message and str(folder / file_name) in message


def test_missing_model_json(trained, segmentation_dataset, tmp_path):
    training, _ = trained
    folder = tmp_path / "model"
    shutil.copytree(training.output_dir / "deployment_model", folder)
    (folder / "model.json").unlink()
    assert "no model.json beside task.model_path" in _error(folder / "model.pt", segmentation_dataset, tmp_path)


@pytest.mark.parametrize("file_name", ["model.pt", "model.onnx"])
def test_model_json_input_size_that_does_not_match_the_graph(trained, segmentation_dataset, tmp_path, file_name):
    training, _ = trained
    if type(training.model).__name__ == "Patchcore" and file_name == "model.pt":
        pytest.skip("PatchCore's TorchScript graph runs at any input size: there is no mismatch to detect")
    folder = tmp_path / "model"
    shutil.copytree(training.output_dir / "deployment_model", folder)
    card = ModelCard.read(folder / "model.json")
    card.input_size = [IMAGE_SIZE * 2, IMAGE_SIZE * 2]
    card.write(folder)
    message = _error(folder / file_name, segmentation_dataset, tmp_path)
    assert "model.json" in message and ("does not match" in message or "input_size" in message or "outputs shapes" in message)


def test_graph_with_other_outputs_than_model_json_says(trained, segmentation_dataset, tmp_path):
    training, _ = trained
    folder = tmp_path / "model"
    shutil.copytree(training.output_dir / "deployment_model", folder)
    torch.jit.script(_MapOnlyGraph()).save(str(folder / "map_only.pt"))
    _card_for(folder, "map_only.pt")
    message = _error(folder / "map_only.pt", segmentation_dataset, tmp_path)
    assert "expected (pred_score, anomaly_map)" in message


def _card_for(folder: Path, graph_file: str) -> ModelCard:
    """The folder's model.json rewritten to name ``graph_file`` as its graph (hash included)."""
    card = ModelCard.read(folder / "model.json")
    card.files = {"torchscript": graph_file}
    card.write(folder)
    return card


class _MapOnlyGraph(torch.nn.Module):
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return image[:, :1]


def test_images_of_another_channel_count_than_the_model(trained, segmentation_dataset, tmp_path):
    training, _ = trained
    folder = tmp_path / "model"
    shutil.copytree(training.output_dir / "deployment_model", folder)
    one_channel = torch.jit.script(_OneChannelGraph())
    one_channel.save(str(folder / "gray.pt"))
    card = _card_for(folder, "gray.pt")
    card.input_channels = 1
    card.write(folder)
    message = _error(folder / "gray.pt", segmentation_dataset, tmp_path)
    assert "1-channel" in message and "3-channel" in message


class _OneChannelGraph(torch.nn.Module):
    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if image.shape[1] != 1:
            raise RuntimeError("expects 1 channel")
        return image.amax(dim=(1, 2, 3)), image


def test_reusing_a_pixel_threshold_the_training_run_did_not_have(trained_padim_classification, classification_dataset, tmp_path):
    model_path = trained_padim_classification.output_dir / "deployment_model" / "model.pt"
    message = _error(model_path, classification_dataset, tmp_path, "task.use_training_threshold=true", "task.training_threshold_type=pixel")
    assert "training_threshold_type=pixel" in message and "no pixel threshold" in message


def test_cuda_asked_without_a_gpu(trained, segmentation_dataset, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present here")
    training, _ = trained
    message = _error(training.output_dir / "deployment_model" / "model.pt", segmentation_dataset, tmp_path, "task.device=cuda")
    assert "task.device=cuda" in message


def test_torchscript_is_frozen_and_optimised_for_cpu_with_unchanged_scores(trained):
    from quadra_ad.deploy.loader import load_exported_model
    from quadra_ad.deploy.runners import TorchScriptModel

    training, _ = trained
    path = training.output_dir / "deployment_model" / "model.pt"
    loaded = load_exported_model(path)
    plain = TorchScriptModel(path, loaded.card, "cpu")
    assert list(plain.module.parameters()) and not list(loaded.module.parameters())  # weights folded into the graph
    images = torch.rand(3, 3, IMAGE_SIZE, IMAGE_SIZE).numpy()
    (plain_scores, plain_maps), (scores, maps) = plain(images), loaded(images)
    np.testing.assert_allclose(scores, plain_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(maps, plain_maps, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def other_padim(segmentation_dataset, tmp_path_factory):
    """Another PaDiM of the same input size (other feature subset): a model.json that is not theirs."""
    from tests.conftest import training_config

    folder = tmp_path_factory.mktemp("other_padim")
    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, "core.seed=7", "model.n_features=40")
    return run(cfg, output_dir=folder / "run")


@pytest.mark.parametrize("file_name", ["model.pt", "model.onnx"])
def test_model_json_of_another_model_is_refused(trained, other_padim, segmentation_dataset, tmp_path, file_name):
    # Same input size and format, another training run: its thresholds would silently apply here.
    training, _ = trained
    folder = tmp_path / "model"
    shutil.copytree(training.output_dir / "deployment_model", folder)
    shutil.copy(other_padim.output_dir / "deployment_model" / "model.json", folder / "model.json")
    message = _error(folder / file_name, segmentation_dataset, tmp_path)
    assert "was written for other graph files" in message and str(folder / file_name) in message


def test_model_json_names_the_content_of_each_exported_file(trained):
    training, _ = trained
    folder = training.output_dir / "deployment_model"
    card = ModelCard.read(folder / "model.json")
    assert card.sha256 == {fmt: file_sha256(folder / name) for fmt, name in card.files.items()}
    assert card.schema_version == SCHEMA_VERSION


@pytest.mark.parametrize("file_name", ["model.pt", "model.onnx"])
def test_inference_applies_the_training_crop_and_region_of_interest_by_itself(trained_with_crop_and_roi,
                                                                               segmentation_dataset, tmp_path, file_name):
    training = trained_with_crop_and_roi
    folder = training.output_dir / "deployment_model"
    card = ModelCard.read(folder / "model.json")
    assert card.crop_area == [2, 2, 30, 30] and card.valid_area_mask == "valid_area_mask.png"
    assert (folder / "valid_area_mask.png").is_file()
    # The inference command repeats neither the crop nor the mask.
    task = infer(folder / file_name, segmentation_dataset, tmp_path / "run", "task.use_training_threshold=true")
    preparation = task.datamodule.preparation
    assert preparation.crop_area == [2, 2, 30, 30] and preparation.valid_area is not None
    expected = dict(zip(training.collector.test.image_paths, training.collector.test.scores, strict=True))
    got = dict(zip(task.labelled.image_paths, task.labelled.scores, strict=True))
    assert max(abs(got[p] - expected[p]) for p in expected) <= TOLERANCE[file_name]
    assert task.metrics["image_AUROC"] == pytest.approx(training.metrics["image_AUROC"], abs=1e-12)


def test_a_deployment_folder_without_its_region_of_interest_mask_is_refused(trained_with_crop_and_roi,
                                                                          segmentation_dataset, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(trained_with_crop_and_roi.output_dir / "deployment_model", folder)
    (folder / "valid_area_mask.png").unlink()
    message = _error(folder / "model.onnx", segmentation_dataset, tmp_path)
    assert "valid area mask 'valid_area_mask.png'" in message and "copy the whole deployment_model folder" in message


def test_an_input_size_the_graph_was_not_exported_for_is_refused(trained, segmentation_dataset, tmp_path):
    training, _ = trained
    message = _error(training.output_dir / "deployment_model" / "model.onnx", segmentation_dataset, tmp_path,
                     "transforms.input_size=[64,64]")
    assert message.startswith("transforms.input_size=[64, 64] but the model was exported for [32, 32]")
