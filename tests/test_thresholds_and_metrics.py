"""The threshold function against brute force, normalisation, and metric edge cases."""

import math

import pytest
import torch

from quadra_ad.metrics import image_metrics, pixel_metrics
from quadra_ad.thresholds import f1_optimal_threshold, normalize_scores


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
    threshold = f1_optimal_threshold(scores, labels)
    assert _f1_at(scores, labels, threshold) == pytest.approx(best)
    assert threshold in scores.tolist()


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
