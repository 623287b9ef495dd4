"""quadra_ad.deploy.Predictor: training's preparation in NumPy, the training run's scores, any input kind."""

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from quadra_ad.deploy import Predictor
from quadra_ad.deploy.images import read_image_array
from quadra_ad.deploy.preprocess import resize_antialiased
from quadra_ad.errors import ConfigError, DatasetError

RELATIVE = 1e-4


def _training_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "predictions.csv").open() as handle:
        return list(csv.DictReader(handle))


def _assert_scores_match(got: dict[str, float], expected: dict[str, float]) -> None:
    assert set(got) == set(expected)
    scale = max(abs(v) for v in expected.values())
    worst = max(abs(got[p] - expected[p]) / max(abs(expected[p]), scale * 1e-3) for p in expected)
    assert worst <= RELATIVE, worst


@pytest.mark.parametrize(("height", "width", "size"), [(300, 420, (256, 256)), (32, 32, (64, 48)), (777, 1000, (96, 128)),
                                                      (28, 28, (32, 32))])
def test_the_numpy_resize_is_the_training_resize(height, width, size):
    image = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
    training = F.resize(torch.from_numpy(image.transpose(2, 0, 1).copy()), list(size), antialias=True)
    ours = resize_antialiased(image, size)
    assert ours.shape == (*size, 3)
    np.testing.assert_allclose(ours, training.numpy().transpose(1, 2, 0), atol=1e-5)  # float32 rounding


@pytest.mark.parametrize("file_name", ["model.onnx", "model.pt"])
def test_the_predictor_gives_the_training_runs_scores_and_labels(trained, file_name):
    training, _ = trained
    rows = [row for row in _training_rows(training.output_dir) if row["label"] != ""]
    predictor = Predictor.load(training.output_dir / "deployment_model" / file_name)
    predictions = predictor.predict([row["image_path"] for row in rows], batch_size=5)
    _assert_scores_match({p.source: p.score for p in predictions}, {r["image_path"]: float(r["raw_score"]) for r in rows})
    threshold = float(rows[0]["threshold"])
    assert np.float32(predictor.threshold) == np.float32(threshold)
    assert predictor.threshold_source == "training image threshold (model.json)"
    for prediction, row in zip(predictions, rows, strict=True):
        if abs(prediction.score - threshold) > RELATIVE * abs(threshold):  # not a near-tie
            assert prediction.label == int(row["predicted_label"]), row
        assert prediction.normalized_score == pytest.approx(float(row["normalized_score"]), abs=1e-4)
        assert prediction.anomaly_map.shape == (32, 32)
        assert prediction.anomaly_map_original.shape == (32, 32)


def test_the_predictor_applies_the_training_crop_and_region_of_interest(trained_with_crop_and_roi):
    training = trained_with_crop_and_roi
    rows = [row for row in _training_rows(training.output_dir) if row["label"] != ""]
    predictor = Predictor.load(training.output_dir / "deployment_model")  # the folder: ONNX preferred
    assert predictor.model.format == "onnx"
    predictions = predictor.predict([row["image_path"] for row in rows])
    _assert_scores_match({p.source: p.score for p in predictions}, {r["image_path"]: float(r["raw_score"]) for r in rows})
    # The map at the original resolution covers the crop [2, 2, 30, 30] only.
    full = predictions[0].anomaly_map_original
    assert full.shape == (32, 32) and not full[:2].any() and not full[:, 30:].any() and full[2:30, 2:30].any()


def test_every_kind_of_input_gives_the_same_score(trained, tmp_path):
    training, _ = trained
    predictor = Predictor.load(training.output_dir / "deployment_model" / "model.onnx")
    path = sorted((Path(training.datamodule.layout.root) / "test").rglob("*.png"))[0]
    expected = predictor.predict(path).score
    rgb8 = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    rgb16 = rgb8.astype(np.uint16) * 257  # the same image at 16 bits
    cv2.imwrite(str(tmp_path / "16bit.png"), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    kinds = {
        "str": str(path),
        "PIL": Image.open(path),
        "uint8 array": rgb8,
        "uint16 array": rgb16,
        "float array": rgb8.astype(np.float32) / 255,
        "16-bit file": tmp_path / "16bit.png",
    }
    for kind, image in kinds.items():
        assert predictor.predict(image).score == pytest.approx(expected, rel=1e-6), kind
    batch = predictor.predict(np.stack([rgb8, rgb8, rgb8]))
    assert [p.score for p in batch] == pytest.approx([expected] * 3, rel=1e-6)
    gray = cv2.cvtColor(rgb8, cv2.COLOR_RGB2GRAY)
    gray_as_rgb = np.repeat(gray[:, :, None], 3, axis=2)
    assert predictor.predict(gray).score == pytest.approx(predictor.predict(gray_as_rgb).score, rel=1e-6)


def test_the_threshold_can_be_the_pixel_one_or_a_number_and_score_at_it_is_anomalous(trained):
    training, _ = trained
    folder = training.output_dir / "deployment_model"
    image = sorted((Path(training.datamodule.layout.root) / "test").rglob("*.png"))[0]
    score = Predictor.load(folder).predict(image).score
    at = Predictor.load(folder, threshold=score).predict(image)
    assert (at.label, at.threshold, at.threshold_source) == (1, score, "given")
    above = Predictor.load(folder, threshold=float(np.nextafter(np.float32(score), np.float32(np.inf)))).predict(image)
    assert above.label == 0
    pixel = Predictor.load(folder, threshold="training_pixel")
    assert pixel.threshold == training.calibration.pixel_threshold
    with pytest.raises(ConfigError, match="give 'training', 'training_pixel' or a raw score"):
        Predictor.load(folder, threshold="median")


def test_wrong_inputs_are_one_line_each(trained, tmp_path):
    training, _ = trained
    predictor = Predictor.load(training.output_dir / "deployment_model")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="empty, corrupt or not an image"):
        predictor.predict(tmp_path / "empty.png")
    with pytest.raises(DatasetError, match="5 channels"):
        predictor.predict(np.zeros((32, 32, 5), dtype=np.uint8)[None])
    with pytest.raises(DatasetError, match="int32 pixel values are taken as 8-bit and must lie in 0-255"):
        predictor.predict(np.full((32, 32), 1000, dtype=np.int32))
    with pytest.raises(ConfigError, match="cannot predict on a value of type dict"):
        predictor.predict({"image": 1})
    with pytest.raises(ConfigError, match="^Predictor.load path '.*': no model.onnx, model.xml, model.pt in"):
        Predictor.load(tmp_path)
    with pytest.raises(ConfigError, match="^device=cud: quadra_ad|^device must be 'cpu' or 'cuda"):
        Predictor.load(training.output_dir / "deployment_model", device="cud")


def test_the_predictor_runs_an_onnx_model_without_torch(trained):
    training, _ = trained
    rows = [row for row in _training_rows(training.output_dir) if row["label"] != ""][:4]
    script = (
        "import sys; sys.modules['torch'] = None  # any import of torch now fails\n"
        "from quadra_ad.deploy import Predictor\n"
        f"p = Predictor.load({str(training.output_dir / 'deployment_model')!r})\n"
        f"print(*[r.score for r in p.predict({[r['image_path'] for r in rows]!r})])\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torchvision', 'lightning', 'anomalib', 'hydra', 'mlflow')]\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    got = dict(zip([r["image_path"] for r in rows], map(float, done.stdout.split()), strict=True))
    _assert_scores_match(got, {r["image_path"]: float(r["raw_score"]) for r in rows})


def test_the_inference_task_takes_the_deployment_folder(trained, segmentation_dataset, tmp_path):
    from tests.tasks.test_anomaly_inference import infer

    training, _ = trained
    task = infer(training.output_dir / "deployment_model", segmentation_dataset, tmp_path / "run",
                 "task.use_training_threshold=true")
    assert task.model.format == "onnx"
    assert task.metrics["image_AUROC"] == pytest.approx(training.metrics["image_AUROC"], abs=1e-12)


def test_read_image_array_reads_what_the_training_reads(trained):
    from quadra_ad.datamodules.images import read_image

    training, _ = trained
    path = sorted((Path(training.datamodule.layout.root) / "test").rglob("*.png"))[0]
    np.testing.assert_array_equal(read_image_array(path).transpose(2, 0, 1), read_image(path).numpy())


@pytest.fixture(scope="session")
def trained_openvino(segmentation_dataset, tmp_path_factory):
    """PaDiM exported to all three types."""
    from quadra_ad.run import run
    from tests.conftest import training_config

    folder = tmp_path_factory.mktemp("openvino")
    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, "export.types=[torchscript,onnx,openvino]")
    return run(cfg, output_dir=folder / "run")


def test_openvino_is_a_third_export_checked_for_parity_and_run_by_the_predictor(trained_openvino):
    from quadra_ad.deploy.model_card import ModelCard

    training = trained_openvino
    folder = training.output_dir / "deployment_model"
    card = ModelCard.read(folder / "model.json")
    assert card.files["openvino"] == "model.xml" and (folder / "model.bin").is_file()
    assert set(card.sha256) == {"torchscript", "onnx", "openvino", "openvino_weights"}
    rows = [row for row in _training_rows(training.output_dir) if row["label"] != ""]
    predictor = Predictor.load(folder / "model.xml")
    assert predictor.model.format == "openvino"
    predictions = predictor.predict([row["image_path"] for row in rows])
    _assert_scores_match({p.source: p.score for p in predictions}, {r["image_path"]: float(r["raw_score"]) for r in rows})


def test_openvino_weights_of_another_model_are_refused(trained_openvino, tmp_path):
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(trained_openvino.output_dir / "deployment_model", folder)
    weights = np.fromfile(folder / "model.bin", dtype=np.uint8)
    weights[len(weights) // 2] ^= 1  # one weight's last bit: the same size, another model
    weights.tofile(folder / "model.bin")
    with pytest.raises(ConfigError, match="was written for other graph files"):
        Predictor.load(folder / "model.xml")
    (folder / "model.bin").unlink()
    with pytest.raises(ConfigError, match="its weights 'model.bin' are missing beside it"):
        Predictor.load(folder / "model.xml")


def test_large_onnx_weights_go_beside_the_graph_and_are_checked(segmentation_dataset, tmp_path):
    """Weights over export.writers.ONNX_EXTERNAL_DATA_BYTES go to model.onnx.data (the limit is
    lowered so a test-sized PaDiM crosses it); scores, hashes and file mode as for one file."""
    import os
    import shutil

    from quadra_ad.deploy.model_card import ModelCard
    from quadra_ad.export import writers
    from quadra_ad.run import run
    from tests.conftest import training_config

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writers, "ONNX_EXTERNAL_DATA_BYTES", 0)
        training = run(training_config("base/anomaly/padim", segmentation_dataset, None, "export.types=[onnx]"),
                       output_dir=tmp_path / "run")
    folder = training.output_dir / "deployment_model"
    weights = folder / "model.onnx.data"
    assert weights.stat().st_size > 10 * (folder / "model.onnx").stat().st_size
    assert os.stat(weights).st_mode & 0o777 == os.stat(folder / "model.onnx").st_mode & 0o777
    assert set(ModelCard.read(folder / "model.json").sha256) == {"onnx", "onnx_weights"}
    rows = [row for row in _training_rows(training.output_dir) if row["label"] != ""]
    predictions = Predictor.load(folder).predict([row["image_path"] for row in rows])
    _assert_scores_match({p.source: p.score for p in predictions}, {r["image_path"]: float(r["raw_score"]) for r in rows})

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = np.fromfile(copy / "model.onnx.data", dtype=np.uint8)
    data[len(data) // 2] ^= 1
    data.tofile(copy / "model.onnx.data")
    with pytest.raises(ConfigError, match="was written for other graph files"):
        Predictor.load(copy)
