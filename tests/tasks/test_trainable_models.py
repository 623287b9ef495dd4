"""Trainable models: per-epoch losses reach MLflow, the best epoch is checkpointed and exported,
and the batch-size finder runs when switched on."""

from lightning.pytorch.callbacks import BatchSizeFinder
from mlflow.tracking import MlflowClient

from quadra_ad.checks.composition import compose_config
from quadra_ad.run import run
from tests.conftest import IMAGE_SIZE


def stfpm_config(data, tracking_dir, *extra):
    overrides = [
        "experiment=base/anomaly/stfpm",
        f"datamodule.data_path={data}",
        "backbone.pre_trained=false",
        "transforms.input_size=[64,64]",
        "datamodule.num_workers=0",
        "datamodule.train_batch_size=4",
        "trainer.max_epochs=3",
        "trainer.enable_progress_bar=false",
        "export.types=[]",
    ]
    overrides.append(f"logger.mlflow.tracking_uri=sqlite:///{tracking_dir}/mlflow.db" if tracking_dir else "~logger")
    return compose_config(overrides + list(extra))


def test_per_epoch_losses_and_validation_auroc_reach_mlflow(segmentation_dataset, tmp_path):
    task = run(stfpm_config(segmentation_dataset, tmp_path), output_dir=tmp_path / "run")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    losses = client.get_metric_history(task.tracked_run.run_id, "train_loss_epoch")
    assert [m.step for m in losses] == [0, 1, 2]
    assert len(client.get_metric_history(task.tracked_run.run_id, "val_image_AUROC")) == 3
    # The best validation F1 too: Quadra's checkpoints monitor it (validation_image_F1 there).
    assert len(client.get_metric_history(task.tracked_run.run_id, "val_image_F1")) == 3


def test_best_validation_epoch_is_checkpointed_and_tested(segmentation_dataset, tmp_path):
    task = run(stfpm_config(segmentation_dataset, None), output_dir=tmp_path / "run")
    best = task.checkpoint.best_model_path
    assert best and best.endswith(".ckpt")
    assert task.checkpoint.best_model_score is not None
    assert len(list((tmp_path / "run").rglob("*.ckpt"))) == 1  # save_top_k=1


def test_one_pass_models_write_no_checkpoint(segmentation_dataset, tmp_path):
    cfg = compose_config([
        "experiment=base/anomaly/padim", f"datamodule.data_path={segmentation_dataset}", "backbone.pre_trained=false",
        f"transforms.input_size=[{IMAGE_SIZE},{IMAGE_SIZE}]", "datamodule.num_workers=0", "export.types=[]", "~logger",
    ])
    task = run(cfg, output_dir=tmp_path / "run")
    assert task.checkpoint is None and not list((tmp_path / "run").rglob("*.ckpt"))


def test_batch_size_finder_runs_when_enabled(segmentation_dataset, tmp_path):
    task = run(
        stfpm_config(segmentation_dataset, None, "callbacks.batch_size_finder.enabled=true",
                     "+callbacks.batch_size_finder.init_val=2", "+callbacks.batch_size_finder.max_trials=3",
                     "trainer.max_epochs=1"),
        output_dir=tmp_path / "run",
    )
    finder = next(cb for cb in task.trainer.callbacks if isinstance(cb, BatchSizeFinder))
    # Power scaling from 2 over three trials that all fit: 2, 4, 8. The training used what it found,
    # not the configured 4.
    assert finder.optimal_batch_size == 8
    assert task.datamodule.train_batch_size == 8
    assert "image_AUROC" in task.metrics


def test_trainable_model_without_anomalous_test_images_uses_the_last_epoch(tmp_path):
    from quadra_ad.testing.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", n_train=6, n_test_good=3, n_test_defect=0, size=64)
    task = run(stfpm_config(data, None, "trainer.max_epochs=2"), output_dir=tmp_path / "run")
    assert task.checkpoint is None
    assert "image_AUROC" not in task.metrics
    # Three good test images, no anomalous one: every image lands in tn or fp.
    assert task.metrics["image_fp"] + task.metrics["image_tn"] == 3
    assert task.metrics["image_tp"] == task.metrics["image_fn"] == 0


def test_thresholds_come_from_the_best_epoch_that_is_exported(segmentation_dataset, tmp_path):
    from quadra_ad.deploy.model_card import ModelCard
    from quadra_ad.evaluation.thresholds import calibrate

    task = run(stfpm_config(segmentation_dataset, None, "export.types=[torchscript]"), output_dir=tmp_path / "run")
    assert task.checkpoint.best_model_path
    card = ModelCard.read(tmp_path / "run" / "deployment_model" / "model.json")
    # The test pass runs the best weights on the same images the thresholds were set on.
    assert card.calibration.image_threshold == calibrate(task.collector.test).image_threshold
