"""The Trainer gets what the model asks for (anomalib's trainer_arguments) unless the config sets
the key; a memory-bank model always trains its one epoch."""

import logging

import pytest
from anomalib.models import Padim, Stfpm
from omegaconf import OmegaConf

from quadra_ad.checks.composition import compose_config
from quadra_ad.models.offline import random_backbone_weights
from quadra_ad.models.trainer_arguments import merge_trainer_arguments
from quadra_ad.run import run
from tests.conftest import training_config


def _trainer_cfg(**overrides):
    cfg = compose_config(["experiment=base/anomaly/padim"]).trainer
    return OmegaConf.merge(cfg, overrides)


def _padim():
    return Padim(backbone="resnet18", pre_trained=False, pre_processor=False, post_processor=False,
                 evaluator=False, visualizer=False)


def test_experiments_leave_epochs_and_sanity_steps_to_the_model():
    cfg = compose_config(["experiment=base/anomaly/padim"])
    assert cfg.trainer.max_epochs is None and cfg.trainer.num_sanity_val_steps is None
    assert cfg.trainer.accelerator == "cpu"  # the root config's trainer, not restated by the experiment


def test_the_model_fills_what_the_config_leaves_unset():
    merged = merge_trainer_arguments(_trainer_cfg(), _padim())
    assert merged.max_epochs == 1 and merged.num_sanity_val_steps == 0 and merged.val_check_interval == 1.0
    assert "check_val_every_n_epoch" not in merged  # null: Lightning's own default, not None
    assert merged.accelerator == "cpu" and merged._target_ == "lightning.pytorch.Trainer"


def test_a_key_the_config_sets_wins_over_the_model():
    merged = merge_trainer_arguments(_trainer_cfg(num_sanity_val_steps=2, gradient_clip_val=0.5), _padim())
    assert merged.num_sanity_val_steps == 2 and merged.gradient_clip_val == 0.5


def test_trainable_model_gets_its_gradient_clipping_and_keeps_the_configured_epochs():
    with random_backbone_weights():  # STFPM has no pre_trained switch
        stfpm = Stfpm(backbone="resnet18", pre_processor=False, post_processor=False, evaluator=False, visualizer=False)
    merged = merge_trainer_arguments(_trainer_cfg(max_epochs=7), stfpm)
    assert merged.max_epochs == 7 and merged.gradient_clip_val == 0 and merged.num_sanity_val_steps == 0


def test_a_memory_bank_model_trains_one_epoch_whatever_max_epochs_says(caplog):
    with caplog.at_level(logging.WARNING):
        merged = merge_trainer_arguments(_trainer_cfg(max_epochs=5), _padim())
    assert merged.max_epochs == 1
    assert "trainer.max_epochs=5 ignored" in caplog.text


def test_a_model_that_declares_no_epochs_trains_one_when_nothing_sets_them(caplog):
    with random_backbone_weights():
        stfpm = Stfpm(backbone="resnet18", pre_processor=False, post_processor=False, evaluator=False, visualizer=False)
    with caplog.at_level(logging.WARNING):
        merged = merge_trainer_arguments(_trainer_cfg(), stfpm)
    assert merged.max_epochs == 1  # not Lightning's 1000
    assert "trainer.max_epochs is not set" in caplog.text


@pytest.mark.parametrize("extra", [(), ("trainer.max_epochs=3",)])
def test_padim_run_trains_exactly_one_epoch_and_records_it(segmentation_dataset, tmp_path, extra):
    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, "export.types=[]", *extra)
    task = run(cfg, output_dir=tmp_path / "run")
    assert task.trainer.max_epochs == 1 and task.trainer.current_epoch == 1
    assert task.trainer.num_sanity_val_steps == 0
    # The config the run records (MLflow params, config_resolved.yaml) says what the Trainer got.
    recorded = OmegaConf.load(tmp_path / "run" / "config_resolved.yaml").trainer
    assert recorded.max_epochs == 1 and recorded.num_sanity_val_steps == 0 and recorded.val_check_interval == 1.0
