"""Thresholds have one decider, :mod:`quadra_ad.evaluation.thresholds`: the config checks, the
training task, the inference task and the Predictor ask it for the rules, the normalisation and
the threshold that labels images, and say what it says."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from quadra_ad.checks.values import threshold_mistakes
from quadra_ad.errors import ConfigError
from quadra_ad.evaluation.scored_set import ScoredSet
from quadra_ad.evaluation.thresholds import (
    RECOMPUTED_THRESHOLD,
    TRAINING_THRESHOLD_KEPT,
    Calibration,
    ThresholdRule,
    calibrate,
    choose_threshold,
    denormalize_score,
    f1_optimal_threshold,
    image_threshold_words,
    inference_calibration,
    normalize_scores,
    threshold_key_mistakes,
    threshold_rule_from_settings,
    training_threshold_mistake,
)

PACKAGE = Path(__file__).resolve().parents[2] / "quadra_ad"
TRAINING = Calibration(2.0, 0.0, 4.0, pixel_threshold=3.0, pixel_min=0.0, pixel_max=5.0,
                       image_threshold_rule="F1-optimal on the validation images", pixel_threshold_rule="pixel words")


def _scored(labels: list[int], scores: list[float]) -> ScoredSet:
    scored = ScoredSet()
    scored.add_batch([f"/data/{i}.png" for i in range(len(labels))], torch.tensor(labels), torch.tensor(scores), None, None)
    return scored


@pytest.mark.parametrize("keys", [
    {"task": {"threshold_rule": "manual"}},
    {"task": {"threshold_rule": "target_fpr", "manual_image_threshold": 3.0}},
    {"task": {"threshold_rule": "f1", "manual_threshold_normalized": True}},
    {"task": {"threshold_rule": "f1", "manual_image_threshold": 0.7, "manual_threshold_normalized": True}},
    {"task": {"threshold_rule": "good_percentile", "good_percentile": 95.0}},
])
def test_the_config_check_and_the_training_task_say_the_same_about_threshold_keys(keys):
    task = {"threshold_rule": "f1", "manual_image_threshold": None, "manual_pixel_threshold": None,
            "manual_threshold_normalized": False, "target_fpr": 0.01, "good_percentile": 99.0, **keys["task"]}
    checked = threshold_mistakes(OmegaConf.create({"task": task}))
    try:
        threshold_rule_from_settings(task["threshold_rule"], task["manual_image_threshold"],
                                     task["manual_pixel_threshold"], task["manual_threshold_normalized"],
                                     task["target_fpr"], task["good_percentile"])
    except ConfigError as error:
        assert checked == [str(error)]
    else:
        assert checked == []


def test_a_rule_setting_the_rule_ignores_is_a_mistake_before_the_run():
    lines = threshold_key_mistakes("f1", changed_settings={"target_fpr": 0.05})
    assert lines == ["task.target_fpr=0.05 has no effect with task.threshold_rule=f1: add task.threshold_rule=target_fpr "
                     "to use it, or remove task.target_fpr"]
    assert threshold_key_mistakes("target_fpr", changed_settings={"target_fpr": 0.05}) == []


def test_rules_set_on_good_images_need_good_images():
    assert ThresholdRule("target_fpr").needs_good_images and ThresholdRule("good_percentile").needs_good_images
    assert not ThresholdRule().needs_good_images and not ThresholdRule("manual", manual_image=1.0).needs_good_images


@pytest.mark.parametrize("value", [0.0, 0.25, 0.5, 0.8, 1.7])
def test_denormalising_is_the_inverse_of_normalising(value):
    for low, high in ((0.0, 4.0), (3.0, 3.0), (1.0, float("inf"))):
        raw = denormalize_score(value, 2.0, low, high)
        assert normalize_scores(raw, 2.0, low, high) == pytest.approx(value)


def test_a_normalised_manual_threshold_and_a_custom_normalised_one_use_the_same_formula():
    scored = _scored([0, 0, 1, 1], [1.0, 2.0, 3.0, 5.0])
    training = calibrate(scored)
    manual = calibrate(scored, ThresholdRule("manual", manual_image=0.8, normalized=True))
    custom, words = inference_calibration(training, ScoredSet(), custom_normalized_threshold=0.8)
    assert manual.image_threshold == custom.image_threshold == training.denormalize(0.8)
    assert words == "custom normalised threshold 0.8 (training normalisation)"


def test_the_predictor_and_the_inference_task_name_a_reused_training_threshold_alike():
    for kind, choice in (("image", "training"), ("pixel", "training_pixel")):
        value, predictor_words = choose_threshold(TRAINING, choice)
        calibration, task_words = inference_calibration(TRAINING, ScoredSet(), use_training_threshold=True,
                                                        training_threshold_type=kind)
        assert task_words == predictor_words == f"training {kind} threshold (model.json)"
        assert calibration.image_threshold == value
        assert calibration.pixel_threshold == TRAINING.pixel_threshold


def test_inference_recomputes_the_threshold_on_both_classes_else_keeps_the_training_one():
    both = _scored([0, 0, 1, 1], [1.0, 1.5, 3.0, 3.5])
    calibration, words = inference_calibration(TRAINING, both)
    expected = f1_optimal_threshold(np.array([1.0, 1.5, 3.0, 3.5]), np.array([0, 0, 1, 1]))
    assert (calibration.image_threshold, words) == (expected, RECOMPUTED_THRESHOLD)
    assert (calibration.image_min, calibration.image_max) == (TRAINING.image_min, TRAINING.image_max)
    assert calibration.pixel_threshold == TRAINING.pixel_threshold  # no maps here: the training one stays
    kept, words = inference_calibration(TRAINING, _scored([0, 0], [1.0, 1.5]))
    assert (kept, words) == (TRAINING, TRAINING_THRESHOLD_KEPT)


def test_inference_threshold_keys_are_checked_before_any_image():
    assert training_threshold_mistake(None, False, "mask").startswith("task.training_threshold_type must be")
    no_pixel = Calibration(2.0, 0.0, 4.0)
    assert "no pixel threshold" in training_threshold_mistake(no_pixel, True, "pixel")
    assert training_threshold_mistake(no_pixel, False, "pixel") is None
    assert training_threshold_mistake(TRAINING, True, "pixel") is None


def test_the_image_threshold_words_are_the_calibrations_once_it_is_set():
    rule = ThresholdRule("target_fpr", target_fpr=0.05)
    assert image_threshold_words(rule, None) == rule.describe()
    assert image_threshold_words(rule, TRAINING) == TRAINING.image_threshold_rule


#: Modules that may still compare or list threshold rule names: the decider itself.
DECIDER = PACKAGE / "evaluation" / "thresholds.py"


def test_no_other_module_types_the_threshold_rule_names():
    """A tuple of the rule names, or the normalised-threshold formula, written anywhere else is a second decider."""
    offending = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == DECIDER:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                names = {element.value for element in node.elts if isinstance(element, ast.Constant)}
                if {"target_fpr", "good_percentile"} <= names or names == {"training", "training_pixel"}:
                    offending.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offending == []
