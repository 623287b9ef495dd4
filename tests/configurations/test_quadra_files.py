"""A Quadra user's anomaly experiment files run here as they are, or fail with one line per key
that has no counterpart, naming ours. The files below are written the way Quadra's own
experiments are (its option names, its ``model.model.*`` keys, its task and callback keys)."""

import subprocess
import sys
import textwrap

import pytest
from omegaconf import OmegaConf

from quadra_ad.checks.composition import compose_config
from quadra_ad.errors import ConfigErrors
from quadra_ad.run import run
from tests.conftest import IMAGE_SIZE

QUADRA_PADIM = """\
# @package _global_
defaults:
  - override /datamodule: base/anomaly
  - override /model: anomalib/padim
  - override /optimizer: null
  - override /scheduler: null
  - override /transforms: default_resize
  - override /loss: null
  - override /task: anomalib/padim
  - override /backbone: null
  - override /trainer: lightning_cpu
  - override /callbacks: default_anomalib
  - _self_

datamodule:
  num_workers: 0
  train_batch_size: 8
  test_batch_size: 8
  task: ${model.dataset.task}
  category:
  phase: train
  seed: ${core.seed}
  train_transform: ${transforms.train_transform}
  test_transform: ${transforms.test_transform}
  val_transform: ${transforms.val_transform}

model:
  dataset:
    task: segmentation
    tiling:
      apply: false
      tile_size: null
      stride: null
      remove_border_count: 0
      use_random_tiling: False
      random_tile_count: 16
  model:
    name: padim
    input_size: [%(size)d, %(size)d]
    backbone: resnet18
    layers: [layer1, layer2]
    pre_trained: false
    n_features: null
  metrics:
    image: [F1Score, AUROC]
    pixel: [F1Score, AUROC]
    threshold:
      method: adaptive
      manual_image: null
      manual_pixel: null

callbacks:
  score_normalization:
    threshold_type: image
  visualizer:
    disable: true
    plot_only_wrong: false
  batch_size_finder:
    disable: true

task:
  run_test: true
  report: true
  export_config:
    types: [onnx]
    input_shapes:
    onnx:
      opset_version: 18
      simplify: true

print_config: false

core:
  tag: "run"
  name: padim_${model.model.backbone}_${trainer.max_epochs}
  test_after_training: true

logger:
  mlflow:
    experiment_name:
    run_name: ${core.name}

trainer:
  max_epochs: 1
  check_val_every_n_epoch: ${trainer.max_epochs}
  enable_progress_bar: false
  amp_backend: native
  auto_lr_find: false
  replace_sampler_ddp: true
"""


@pytest.fixture
def quadra_experiment(tmp_path, monkeypatch):
    """A working directory whose ./experiments/quadra/padim.yaml is a Quadra-style experiment."""
    folder = tmp_path / "experiments" / "quadra"
    folder.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    def write(text: str, name: str = "padim") -> str:
        (folder / f"{name}.yaml").write_text(text)
        return f"experiment=quadra/{name}"

    return write


def test_a_quadra_experiment_becomes_ours(quadra_experiment, segmentation_dataset):
    cfg = compose_config([quadra_experiment(QUADRA_PADIM % {"size": IMAGE_SIZE}),
                          f"datamodule.data_path={segmentation_dataset}"])
    assert "model" not in cfg.model and "dataset" not in cfg.model and "metrics" not in cfg.model
    assert cfg.model._target_ == "anomalib.models.Padim" and list(cfg.model.layers) == ["layer1", "layer2"]
    assert cfg.backbone.name == "resnet18" and cfg.backbone.pre_trained is False
    assert list(cfg.transforms.input_size) == [IMAGE_SIZE, IMAGE_SIZE]
    assert cfg.task._target_ == "quadra_ad.tasks.AnomalyTrainingTask" and cfg.task.threshold_rule == "f1"
    assert list(cfg.export.types) == ["onnx"] and cfg.export.onnx_opset == 18
    assert cfg.core.test_after_training is True
    # Interpolations that pointed at Quadra's keys follow them to ours.
    assert cfg.core.name == "padim_resnet18_1" and cfg.logger.mlflow.experiment_name == "padim_resnet18_1"
    assert cfg.callbacks.visualizer.enabled is False and cfg.callbacks.batch_size_finder.enabled is False
    for gone in ("task", "seed", "train_transform"):
        assert gone not in cfg.datamodule
    assert "amp_backend" not in cfg.trainer and "score_normalization" not in cfg.callbacks
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves


def test_a_quadra_experiment_trains_tests_and_exports(quadra_experiment, segmentation_dataset, tmp_path):
    cfg = compose_config([quadra_experiment(QUADRA_PADIM % {"size": IMAGE_SIZE}),
                          f"datamodule.data_path={segmentation_dataset}",
                          f"logger.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"])
    task = run(cfg, output_dir=tmp_path / "run")
    assert task.tracked_run is not None and task.tracked_run.experiment_name == "padim_resnet18_1"
    assert "image_AUROC" in task.metrics
    assert (tmp_path / "run" / "deployment_model" / "model.onnx").is_file()
    assert not (tmp_path / "run" / "deployment_model" / "model.pt").exists()  # types: [onnx] was honoured


def test_manual_thresholds_in_quadra_keys_are_ours(quadra_experiment, segmentation_dataset):
    text = QUADRA_PADIM.replace("method: adaptive", "method: manual").replace(
        "manual_image: null", "manual_image: 12.5").replace("manual_pixel: null", "manual_pixel: 3.0")
    cfg = compose_config([quadra_experiment(text % {"size": IMAGE_SIZE}), f"datamodule.data_path={segmentation_dataset}"])
    assert cfg.task.threshold_rule == "manual" and cfg.task.manual_image_threshold == 12.5
    assert cfg.task.manual_pixel_threshold == 3.0 and cfg.task.manual_threshold_normalized is False


def test_quadra_generic_mnist_experiment_composes(quadra_experiment):
    text = textwrap.dedent("""\
        # @package _global_
        defaults:
          - base/anomaly/padim
          - override /datamodule: generic/mnist/anomaly/base

        model:
          model:
            input_size: [224, 224]
            backbone: resnet18

        datamodule:
          num_workers: 12
          train_batch_size: 32
          task: ${model.dataset.task}
          good_number: 9

        callbacks:
          score_normalization:
            threshold_type: "image"

        print_config: false

        core:
          tag: "run"
          test_after_training: true
          upload_artifacts: true
          name: padim_${datamodule.good_number}_${model.model.backbone}_${trainer.max_epochs}

        logger:
          mlflow:
            experiment_name: mnist-anomaly
            run_name: ${core.name}

        trainer:
          devices: 1
          max_epochs: 1
          check_val_every_n_epoch: ${trainer.max_epochs}
        """)
    cfg = compose_config([quadra_experiment(text, "mnist_padim")])
    assert cfg.datamodule._target_ == "quadra_ad.datamodules.MNISTAnomalyDataModule"
    assert cfg.datamodule.good_number == 9 and list(cfg.transforms.input_size) == [224, 224]
    assert cfg.core.name == "padim_9_resnet18_1"


def test_quadra_keys_without_a_counterpart_are_one_line_each(quadra_experiment, segmentation_dataset):
    text = (QUADRA_PADIM % {"size": IMAGE_SIZE}).replace("    n_features: null", "    n_features: null\n    wobble: 3")
    text = text.replace("  report: true", "  report: false").replace("auto_lr_find: false", "auto_lr_find: true")
    text = text.replace("  batch_size_finder:\n    disable: true\n",
                        "  batch_size_finder:\n    disable: true\n  log_gradients:\n"
                        "    _target_: quadra.callbacks.mlflow.LogGradients\n    norm: 2\n")
    with pytest.raises(ConfigErrors) as caught:
        compose_config([quadra_experiment(text), f"datamodule.data_path={segmentation_dataset}"])
    lines = caught.value.lines
    assert len(lines) == 4, lines
    assert lines[0].startswith("model.model.wobble (Quadra): no such setting of Padim") and "layers, n_features" in lines[0]
    assert any(line.startswith("task.report (Quadra): every run writes its report") for line in lines)
    assert any(line.startswith("callbacks.log_gradients (Quadra): ") and "disable=true" in line for line in lines)
    assert any(line.startswith("trainer.auto_lr_find (Quadra): a Lightning 1 argument") for line in lines)


def test_the_cli_prints_each_quadra_key_on_its_line_and_exits_2(quadra_experiment, segmentation_dataset, tmp_path):
    text = (QUADRA_PADIM % {"size": IMAGE_SIZE}).replace("  report: true", "  report: false").replace(
        "    name: padim\n", "    name: padim\n    wobble: 3\n")
    quadra_experiment(text)
    done = subprocess.run([sys.executable, "-m", "quadra_ad", "experiment=quadra/padim",
                           f"datamodule.data_path={segmentation_dataset}", "~logger"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(errors) == 2 and all(line.startswith("quadra-ad: error: ") for line in errors), errors
    assert not list(tmp_path.glob("outputs/**/deployment_model"))  # refused before any training


def test_quadra_model_checkpoint_is_our_checkpoint(quadra_experiment, segmentation_dataset):
    text = (QUADRA_PADIM % {"size": IMAGE_SIZE}).replace("  batch_size_finder:\n    disable: true\n", (
        "  batch_size_finder:\n    disable: true\n  model_checkpoint:\n"
        "    _target_: pytorch_lightning.callbacks.ModelCheckpoint\n    monitor: validation_image_F1\n"
        "    mode: max\n    dirpath: checkpoints/\n    filename: final_model\n    save_last: true\n"))
    cfg = compose_config([quadra_experiment(text), f"datamodule.data_path={segmentation_dataset}"])
    assert "model_checkpoint" not in cfg.callbacks
    assert cfg.callbacks.checkpoint.monitor == "val_image_F1" and cfg.callbacks.checkpoint.enabled is True
    assert cfg.callbacks.checkpoint._target_ == "lightning.pytorch.callbacks.ModelCheckpoint"
