"""Every place that names how a threshold was set tells the truth: the rule asked for is not always
the rule that could apply (F1 needs anomalous images), and the calibration carries the words for
what was really done, from the validation step to the log, metrics.json, the report, MLflow and
model.json."""

import json
import logging

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from quadra_ad.deploy.model_card import ModelCard
from quadra_ad.evaluation.scored_set import ScoredSet
from quadra_ad.evaluation.thresholds import Calibration, ThresholdRule, calibrate

F1 = "F1-optimal on the validation images"


def _scored(labels: list[int], scores: list[float], defect_pixels: bool | None = None) -> ScoredSet:
    """Images with raw scores; with ``defect_pixels`` set, 4x4 maps and masks (a defect square when True)."""
    scored = ScoredSet()
    count = len(labels)
    maps = masks = None
    if defect_pixels is not None:
        maps = torch.tensor(scores, dtype=torch.float32)[:, None, None].expand(count, 4, 4).clone()
        masks = torch.zeros(count, 4, 4, dtype=torch.bool)
        if defect_pixels:
            for index, label in enumerate(labels):
                masks[index, 1:3, 1:3] = bool(label)
                maps[index, 1:3, 1:3] += 1.0 * label
    scored.add_batch([f"/data/test/{'blob' if label else 'good'}/{i}.png" for i, label in enumerate(labels)],
                     torch.tensor(labels), torch.tensor(scores), maps, masks)
    return scored


BOTH = ([0, 0, 0, 1, 1], [1.0, 1.5, 2.0, 3.0, 4.0])
ONLY_GOOD = ([0, 0, 0, 0], [1.0, 1.5, 2.0, 2.5])
ONLY_ANOMALOUS = ([1, 1, 1], [3.0, 4.0, 5.0])


@pytest.mark.parametrize("validation, rule, expected", [
    pytest.param(BOTH, ThresholdRule(), F1, id="f1_with_both_classes"),
    pytest.param(ONLY_GOOD, ThresholdRule(),
                 "just above the highest score of the 4 good validation images (F1-optimal needs anomalous validation "
                 "images, and there were none: every one of them is normal at this threshold)", id="f1_without_anomalous"),
    pytest.param(ONLY_ANOMALOUS, ThresholdRule(), "at the lowest score of the 3 anomalous validation images (F1-optimal "
                 "needs good validation images too", id="f1_without_good"),
    pytest.param(BOTH, ThresholdRule("manual", manual_image=2.5), "manual image threshold 2.5 (raw)", id="manual_raw"),
    pytest.param(BOTH, ThresholdRule("manual", manual_image=0.6, normalized=True), "manual image threshold 0.6 (normalised)",
                 id="manual_normalised"),
    pytest.param(ONLY_GOOD, ThresholdRule("manual", manual_image=0.6, normalized=True),
                 "manual image threshold 0.6 (normalised); its 0.5 is the threshold put just above the highest score of "
                 "the 4 good validation images", id="manual_normalised_without_anomalous"),
    pytest.param(ONLY_GOOD, ThresholdRule("target_fpr", target_fpr=0.25),
                 "target_fpr=0.25: at most 0.25 of 4 good validation images at or above it", id="target_fpr"),
    pytest.param(BOTH, ThresholdRule("good_percentile", good_percentile=50.0),
                 "good_percentile=50: at most 0.5 of 3 good validation images at or above it", id="good_percentile"),
])
def test_the_calibration_says_how_its_image_threshold_was_really_set(validation, rule, expected):
    calibration = calibrate(_scored(*validation), rule)
    assert calibration.image_threshold_rule.startswith(expected)
    assert calibration.pixel_threshold_rule is None  # no maps: no pixel threshold, no words for one


def test_without_anomalous_images_the_threshold_is_where_the_words_say():
    labels, scores = ONLY_GOOD
    calibration = calibrate(_scored(labels, scores))
    assert calibration.image_threshold > max(scores)
    assert not (np.float32(scores) >= np.float32(calibration.image_threshold)).any()  # every image normal, as written
    assert calibrate(_scored(*ONLY_ANOMALOUS)).image_threshold == min(ONLY_ANOMALOUS[1])


@pytest.mark.parametrize("validation, defect_pixels, rule, expected", [
    pytest.param(BOTH, True, ThresholdRule(), "F1-optimal on the mask pixels of the validation images", id="masks_with_defects"),
    pytest.param(ONLY_GOOD, False, ThresholdRule(), "just above the highest score of the 64 good mask pixels (F1-optimal "
                 "needs anomalous mask pixels", id="blank_masks"),
    pytest.param(BOTH, True, ThresholdRule(manual_pixel=0.7), "manual pixel threshold 0.7 (raw)", id="manual_pixel"),
])
def test_the_calibration_says_how_its_pixel_threshold_was_really_set(validation, defect_pixels, rule, expected):
    calibration = calibrate(_scored(*validation, defect_pixels=defect_pixels), rule)
    assert calibration.pixel_threshold_rule.startswith(expected)


def test_a_threshold_moved_elsewhere_loses_the_words_of_the_old_one():
    training = Calibration(3.0, 1.0, 5.0, 2.5, 0.5, 6.0, image_threshold_rule=F1, pixel_threshold_rule="pixel words")
    kept = training.with_thresholds(3.0, 2.5)
    assert (kept.image_threshold_rule, kept.pixel_threshold_rule) == (F1, "pixel words")
    moved = training.with_thresholds(4.0, 2.5)
    assert (moved.image_threshold_rule, moved.pixel_threshold_rule) == (None, "pixel words")
    told = training.with_thresholds(4.0, None, image_rule="given")
    assert (told.image_threshold_rule, told.pixel_threshold_rule) == ("given", None)


def test_model_json_carries_the_words_with_the_thresholds(tmp_path):
    calibration = calibrate(_scored(*ONLY_GOOD, defect_pixels=False))
    card = ModelCard(model_class="anomalib.models.Padim", input_size=[32, 32], mean=[0.5] * 3, std=[0.2] * 3,
                     calibration=calibration, task_type="segmentation")
    written = json.loads(card.write(tmp_path).read_text())
    assert written["image_threshold_rule"] == calibration.image_threshold_rule
    read = ModelCard.read(tmp_path / "model.json").calibration
    assert (read.image_threshold_rule, read.pixel_threshold_rule) == (calibration.image_threshold_rule,
                                                                      calibration.pixel_threshold_rule)


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def good_only_run(tmp_path_factory):
    """A real tiny PaDiM training whose validation (= test) images are all good, under the default F1 rule,
    with masks (an empty ground_truth/) and an MLflow store; and the lines its task logged."""
    from quadra_ad.run import run
    from quadra_ad.testing.synthetic import write_synthetic_dataset
    from tests.conftest import training_config

    root = tmp_path_factory.mktemp("good_only")
    data = write_synthetic_dataset(root / "data", n_train=6, n_test_good=5, n_test_defect=0, size=32)
    (data / "ground_truth").mkdir(exist_ok=True)
    logger, lines = logging.getLogger("quadra_ad.tasks.anomaly_training"), _Lines()
    logger.addHandler(lines)
    level, logger.level = logger.level, logging.INFO
    try:
        task = run(training_config("base/anomaly/padim", data, root, "export.types=[onnx]"), output_dir=root / "run")
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    return task, root, lines.lines


def test_a_run_without_anomalous_validation_images_never_calls_its_threshold_f1_optimal(good_only_run):
    task, root, logged = good_only_run
    words = task.calibration.image_threshold_rule
    assert words.startswith("just above the highest score of the 5 good validation images (F1-optimal needs anomalous")
    pixel_words = task.calibration.pixel_threshold_rule
    assert pixel_words.startswith("just above the highest score of the") and "good mask pixels" in pixel_words
    thresholds = json.loads((task.output_dir / "metrics.json").read_text())["thresholds"]
    assert thresholds["image_threshold"] == words and thresholds["pixel_threshold"] == pixel_words
    card = json.loads((task.output_dir / "deployment_model" / "model.json").read_text())
    assert (card["image_threshold_rule"], card["pixel_threshold_rule"]) == (words, pixel_words)
    tags = MlflowClient(f"sqlite:///{root}/mlflow.db").get_run(task.tracked_run.run_id).data.tags
    assert tags["quadra_ad.threshold_rule"] == words
    page = (task.output_dir / "report.html").read_text()
    assert words.split(" (")[0] in page and F1 not in page
    assert any(line.startswith("Image threshold from validation") and line.endswith(words) for line in logged)
    assert not any(F1 in line for line in logged)
