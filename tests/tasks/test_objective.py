"""The Hydra task function returns the test metric ``core.optimized_metric`` names (for sweepers)."""

import logging
import math

from omegaconf import OmegaConf

import quadra_ad.run
from quadra_ad.run import objective


def _with_metric(cfg, name):
    return OmegaConf.merge(cfg, {"core": {"optimized_metric": name}})


def test_objective_is_the_named_test_metric(trained):
    task, _ = trained
    assert objective(task, task.config) == task.metrics["image_AUROC"]  # the default
    assert objective(task, _with_metric(task.config, "pixel_AUROC")) == task.metrics["pixel_AUROC"]


def test_no_objective_when_none_is_named(trained):
    task, _ = trained
    assert objective(task, _with_metric(task.config, None)) is None


def test_a_metric_the_run_does_not_have_is_nan_and_a_warning_in_a_sweep(trained, caplog, monkeypatch):
    task, _ = trained
    with caplog.at_level(logging.DEBUG, logger="quadra_ad.run"):
        assert math.isnan(objective(task, _with_metric(task.config, "image_AUROCC")))
    assert [r.levelno for r in caplog.records if "image_AUROCC" in r.getMessage()] == [logging.DEBUG]
    caplog.clear()
    monkeypatch.setattr(quadra_ad.run, "sweep_id", lambda: "2026-11-27_12-00-00")  # as inside a multirun
    assert math.isnan(objective(task, _with_metric(task.config, "image_AUROCC")))
    assert [r.levelno for r in caplog.records if "image_AUROCC" in r.getMessage()] == [logging.WARNING]
