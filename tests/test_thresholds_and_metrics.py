"""The threshold function against brute force, the calibration, normalisation, and metric edge
cases — scikit-learn and anomalib give the numbers the hand-written loops gave."""

import json
import math

import numpy as np
import pytest
import torch

from quadra_ad.deploy.model_card import SCHEMA_VERSION, ModelCard, write_card_json
from quadra_ad.errors import ConfigError
from quadra_ad.evaluation.metrics import aupro, image_metrics, pixel_metrics
from quadra_ad.evaluation.thresholds import Calibration, f1_optimal_threshold, normalize_scores


def _f1_at(scores, labels, threshold) -> float:
    predicted = scores >= threshold
    tp = int((predicted & labels).sum())
    fp = int((predicted & ~labels).sum())
    fn = int((~predicted & labels).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


@pytest.mark.parametrize("seed", range(8))
def test_f1_optimal_threshold_matches_brute_force(seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.rand(60, generator=generator) < 0.4
    # Rounded scores create ties, the hard case for a cumulative-sum implementation.
    scores = (torch.randn(60, generator=generator) + labels.float() * 1.2).round(decimals=1)
    best = max(_f1_at(scores, labels, t) for t in scores.unique())
    # Among thresholds with the best F1, the highest one (what the hand-written loop picked).
    highest_best = max(float(t) for t in scores.unique() if _f1_at(scores, labels, t) == best)
    assert f1_optimal_threshold(scores, labels) == highest_best


def test_f1_optimal_threshold_takes_numpy_and_torch_alike():
    scores = np.array([0.1, 0.4, 0.35, 0.8], dtype=np.float32)
    labels = np.array([0, 0, 1, 1])
    assert f1_optimal_threshold(scores, labels) == f1_optimal_threshold(torch.from_numpy(scores), torch.from_numpy(labels))
    assert f1_optimal_threshold(scores, labels) == pytest.approx(0.35)


def test_threshold_without_anomalies_classifies_every_sample_normal():
    scores = torch.tensor([0.1, 0.5, 0.3])
    threshold = f1_optimal_threshold(scores, torch.zeros(3, dtype=torch.bool))
    assert threshold > 0.5 and not (scores >= threshold).any()


def test_threshold_with_only_anomalies_flags_every_sample():
    scores = torch.tensor([0.1, 0.5, 0.3])
    assert f1_optimal_threshold(scores, torch.ones(3, dtype=torch.bool)) == pytest.approx(0.1)


def test_normalisation_maps_threshold_to_one_half_without_clipping():
    scores = torch.tensor([0.0, 2.0, 4.0, 10.0])
    normalized = normalize_scores(scores, threshold=2.0, score_min=0.0, score_max=4.0)
    assert normalized.tolist() == pytest.approx([0.0, 0.5, 1.0, 2.5])


def test_image_metrics_on_a_perfect_separation():
    metrics = image_metrics(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1]), threshold=0.8)
    assert metrics["image_AUROC"] == pytest.approx(1.0)
    assert metrics["image_F1"] == pytest.approx(1.0)
    assert (metrics["image_tp"], metrics["image_fp"], metrics["image_fn"], metrics["image_tn"]) == (2, 0, 0, 2)


def test_image_auroc_is_skipped_without_both_classes():
    metrics = image_metrics(torch.tensor([0.1, 0.2]), torch.tensor([0, 0]), threshold=0.5)
    assert "image_AUROC" not in metrics and metrics["image_fp"] == 0


def test_pixel_metrics_use_every_pixel():
    maps = torch.zeros(2, 4, 4)
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    maps[0, :2, :2] = 1.0
    masks[0, :2, :2] = True
    metrics = pixel_metrics(maps, masks, threshold=0.5)
    assert metrics["pixel_AUROC"] == pytest.approx(1.0) and metrics["pixel_F1"] == pytest.approx(1.0)
    assert not math.isnan(metrics["pixel_F1"])


def test_auroc_keeps_the_ranking_of_large_raw_scores():
    # Raw scores far above 1: a sigmoid would map them all to 1.0 and report 0.5.
    scores = torch.tensor([150.0, 160.0, 170.0, 300.0, 310.0, 320.0])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    assert image_metrics(scores, labels, threshold=250.0)["image_AUROC"] == pytest.approx(1.0)
    maps = torch.tensor([[100.0, 400.0], [120.0, 500.0]])
    masks = torch.tensor([[False, True], [False, True]])
    assert pixel_metrics(maps, masks, threshold=300.0)["pixel_AUROC"] == pytest.approx(1.0)


def test_confusion_counts_and_f1_of_an_imperfect_split():
    metrics = image_metrics(torch.tensor([0.1, 0.6, 0.4, 0.9, 0.5]), torch.tensor([0, 0, 1, 1, 0]), threshold=0.5)
    assert (metrics["image_tp"], metrics["image_fp"], metrics["image_fn"], metrics["image_tn"]) == (1, 2, 1, 1)
    assert metrics["image_precision"] == pytest.approx(1 / 3) and metrics["image_recall"] == pytest.approx(0.5)
    assert metrics["image_F1"] == pytest.approx(2 * (1 / 3) * 0.5 / (1 / 3 + 0.5))


def test_nothing_predicted_anomalous_leaves_precision_undefined_not_zero():
    metrics = image_metrics(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0, 1, 1]), threshold=0.9)
    assert "image_precision" not in metrics and "predicted anomalous" in metrics.not_applicable["image_precision"]
    assert metrics["image_F1"] == 0.0 and metrics["image_recall"] == 0.0 and metrics["image_fn"] == 2


@pytest.mark.parametrize("labels, word", [([1, 1, 1], "every"), ([0, 0, 0], "no")])
def test_one_class_only_gives_counts_and_no_perfect_or_zero_scores(labels, word):
    metrics = image_metrics(torch.tensor([0.1, 0.5, 0.9]), torch.tensor(labels), threshold=0.1)
    for name in ("image_AUROC", "image_AP", "image_F1", "image_precision", "image_recall"):
        assert name not in metrics and metrics.not_applicable[name].startswith(f"{word} labelled test image")
    assert metrics["image_tp"] + metrics["image_fp"] == 3  # the counts are still real


def test_aupro_is_not_applicable_when_masks_cover_whole_images():
    from quadra_ad.evaluation.metrics import region_metrics

    maps = torch.rand(4, 8, 8, generator=torch.Generator().manual_seed(0))
    masks = torch.zeros(4, 8, 8, dtype=torch.bool)
    masks[2:] = True  # the digits convention: an anomalous image's mask is the whole image
    metrics = region_metrics(maps, masks)
    assert "pixel_AUPRO" not in metrics and "cover the whole image" in metrics.not_applicable["pixel_AUPRO"]
    masks[3, :2] = False
    assert "pixel_AUPRO" not in region_metrics(maps, masks)  # one whole-image mask is enough to refuse
    masks[2, :2] = False
    assert 0.0 < region_metrics(maps, masks)["pixel_AUPRO"] <= 1.0


def test_metrics_json_shows_null_with_the_reason(tmp_path):
    from quadra_ad.reports.predictions import write_metrics

    metrics = image_metrics(torch.tensor([0.1, 0.5, 0.9]), torch.tensor([1, 1, 1]), threshold=0.1)
    written = json.loads(write_metrics(metrics, tmp_path / "metrics.json").read_text())
    assert written["image_F1"] is None and written["image_tp"] == 3
    assert written["not_applicable"]["image_F1"].startswith("every labelled test image is anomalous")


def test_aupro_is_anomalib_aupro():
    from anomalib.metrics.aupro import _AUPRO  # the implementation behind anomalib's public AUPRO

    generator = torch.Generator().manual_seed(0)
    maps = torch.rand(6, 32, 32, generator=generator)
    masks = torch.zeros(6, 32, 32, dtype=torch.bool)
    masks[:3, 8:20, 8:20] = True
    masks[3, 2:6, 20:30] = True
    maps[masks] += 0.4
    reference = _AUPRO(fpr_limit=0.3)
    reference.update(maps, masks.int())
    value = aupro(maps, masks)
    assert value == pytest.approx(float(reference.compute()), abs=1e-6)  # quadra_ad.evaluation.aupro: same value, float32 rounding
    assert 0.5 < value < 1.0


def test_perfectly_separated_regions_give_aupro_one():
    maps = torch.zeros(2, 16, 16)
    masks = torch.zeros(2, 16, 16, dtype=torch.bool)
    masks[0, 4:8, 4:8] = True
    maps[masks] = 1.0
    assert aupro(maps, masks) == pytest.approx(1.0)


def test_calibration_fallbacks_when_the_training_had_no_masks():
    calibration = Calibration(image_threshold=3.0, image_min=1.0, image_max=5.0)
    assert calibration.mask_threshold == 3.0 and calibration.map_range == (0.0, 1.0)
    with_maps = Calibration(3.0, 1.0, 5.0, pixel_threshold=2.5, pixel_min=0.5, pixel_max=6.0)
    assert with_maps.mask_threshold == 2.5 and with_maps.map_range == (0.5, 6.0)
    assert calibration.normalize(np.array([3.0, 7.0])).tolist() == [0.5, 1.5]


def test_other_thresholds_keep_the_training_normalisation():
    training = Calibration(3.0, 1.0, 5.0, pixel_threshold=2.5, pixel_min=0.5, pixel_max=6.0)
    decided = training.with_thresholds(4.0, None)
    assert (decided.image_threshold, decided.pixel_threshold) == (4.0, None)
    assert (decided.image_min, decided.image_max, decided.map_range) == (1.0, 5.0, (0.5, 6.0))


def test_model_card_carries_one_calibration_under_the_flat_model_json_keys(tmp_path):
    calibration = Calibration(3.0, 1.0, 5.0, pixel_threshold=2.5, pixel_min=0.5, pixel_max=6.0)
    card = ModelCard(model_class="anomalib.models.Padim", input_size=[32, 32], mean=[0.5] * 3, std=[0.2] * 3,
                     calibration=calibration, task_type="segmentation")
    written = json.loads(card.write(tmp_path).read_text())
    assert "calibration" not in written
    assert {k: written[k] for k in ("image_threshold", "image_min", "image_max", "pixel_threshold", "pixel_min",
                                   "pixel_max")} == {"image_threshold": 3.0, "image_min": 1.0, "image_max": 5.0,
                                                    "pixel_threshold": 2.5, "pixel_min": 0.5, "pixel_max": 6.0}
    assert list(written)[:6] == ["model_class", "input_size", "mean", "std", "image_threshold", "pixel_threshold"]
    assert ModelCard.read(tmp_path / "model.json") == card


def test_model_json_without_thresholds_is_refused(tmp_path):
    write_card_json({"model_class": "x", "input_size": [8, 8], "schema_version": SCHEMA_VERSION}, tmp_path)
    with pytest.raises(ConfigError, match="missing key.*image_threshold"):
        ModelCard.read(tmp_path / "model.json")


def test_model_json_without_its_pixel_keys_is_refused(tmp_path):
    calibration = Calibration(3.0, 1.0, 5.0)
    card = ModelCard(model_class="x", input_size=[8, 8], mean=[0.0] * 3, std=[1.0] * 3, calibration=calibration,
                     task_type="classification")
    values = card.to_json()
    assert values["pixel_threshold"] is None  # written as null, not left out
    del values["pixel_threshold"]
    write_card_json(values, tmp_path)
    with pytest.raises(ConfigError, match="missing key.*pixel_threshold"):
        ModelCard.read(tmp_path / "model.json")


def test_a_score_equal_to_the_threshold_is_anomalous_on_every_path(tmp_path):
    import csv

    from quadra_ad.evaluation.scored_set import ScoredSet
    from quadra_ad.reports.predictions import write_predictions

    # float32 scores as the models give them; the threshold is one of them (as the F1 rule picks it).
    scores = torch.tensor([10.104093, 10.104094, 10.104095, 3.0], dtype=torch.float32)
    labels = torch.tensor([0, 1, 1, 0])
    threshold = f1_optimal_threshold(scores, labels)
    assert threshold == float(scores[1])
    metrics = image_metrics(scores, labels, threshold)
    assert (metrics["image_tp"], metrics["image_fp"]) == (2, 0)  # the tie counts as anomalous
    scored = ScoredSet()
    scored.add_batch([f"/d/test/x/{i}.png" for i in range(4)], labels, scores, None, None)
    write_predictions(scored, tmp_path / "predictions.csv", threshold, Calibration(threshold, 3.0, 10.2))
    with (tmp_path / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["predicted_label"] for row in rows] == ["0", "1", "1", "0"]
    # The CSV holds the float32 values themselves: re-deciding from the text gives the same labels.
    redone = [int(np.float32(row["raw_score"]) >= np.float32(row["threshold"])) for row in rows]
    assert redone == [0, 1, 1, 0]


@pytest.mark.parametrize("share", [0.0, 0.01, 0.05, 0.25, 0.5])
def test_a_good_share_threshold_leaves_at_most_that_share_of_good_scores_at_or_above(share):
    from quadra_ad.evaluation.thresholds import good_share_threshold

    scores = np.random.default_rng(0).normal(size=200).astype(np.float32)
    scores[:20] = scores[20]  # ties must not let more through
    threshold = good_share_threshold(scores, share)
    above = int((scores >= np.float32(threshold)).sum())
    assert above <= math.floor(share * len(scores))
    # The lowest such threshold: the next good score below it would let one more through.
    below = scores[scores < np.float32(threshold)]
    assert int((scores >= below.max()).sum()) > math.floor(share * len(scores))


@pytest.mark.parametrize(("settings", "message"), [
    ({"rule": "manual"}, "task.threshold_rule=manual needs task.manual_image_threshold=<score>"),
    ({"rule": "target_fpr", "manual_image": 3.0}, "task.manual_image_threshold is set but task.threshold_rule=target_fpr"),
    ({"normalized": True}, "task.manual_threshold_normalized=true applies to task.manual_image_threshold"),
    ({"rule": "youden"}, "task.threshold_rule='youden': choose one of f1, manual, target_fpr, good_percentile"),
])
def test_contradicting_threshold_settings_are_one_line(settings, message):
    from quadra_ad.errors import ConfigError
    from quadra_ad.evaluation.thresholds import threshold_rule_from_settings

    values = {"rule": "f1", "manual_image": None, "manual_pixel": None, "normalized": False, "target_fpr": 0.01,
              "good_percentile": 99.0, **settings}
    with pytest.raises(ConfigError) as raised:
        threshold_rule_from_settings(*values.values())
    assert str(raised.value).startswith(message)


def test_a_manual_image_threshold_alone_means_the_manual_rule():
    from quadra_ad.evaluation.thresholds import threshold_rule_from_settings

    rule = threshold_rule_from_settings("f1", 4.5, None, False, 0.01, 99.0)
    assert rule.image == "manual" and rule.manual_image == 4.5
