"""Quadra's anomaly tutorial, as its files are written (``quadra_tutorial/``: the tutorial's
training, generic MNIST and inference files, from Quadra's main branch and its 1.5 release), runs
here unchanged: copied into a user's ``./experiments/`` and started with the tutorial's commands.

The only addition on the command line is what an offline machine needs: ``model.pre_trained=false``
(no ImageNet download) and a tracking store in the test's folder; the MNIST files are generated
where the MNIST datamodule looks for them, under a temporary ``HOME``.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from quadra_ad.checks.before_run import check_before_run
from quadra_ad.checks.composition import compose_config
from quadra_ad.config.device_fallback import gpus_visible
from quadra_ad.errors import ConfigErrors
from tests.datamodules.dm_helpers import fake_mnist_arrays, write_idx

TUTORIAL = Path(__file__).parent / "quadra_tutorial"
VERSIONS = ["current", "v1_5"]
TRAIN = "experiment=generic/mnist/anomaly/padim"
INFERENCE = "experiment=generic/mnist/anomaly/inference"
OFFLINE = "model.pre_trained=false"
no_gpu = pytest.mark.skipif(gpus_visible(), reason="this machine has a GPU: the tutorial's GPU trainer runs on it")


def _write_mnist(home: Path, n: int) -> None:
    raw = home / ".quadra_ad" / "datasets" / "MNIST" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, seed in (("train", 1), ("t10k", 2)):
        images, labels = fake_mnist_arrays(n, seed=seed)
        write_idx(raw / f"{split}-images-idx3-ubyte", images, gzipped=True)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels, gzipped=True)


@pytest.fixture
def tutorial(tmp_path, monkeypatch, request):
    """A working directory whose ./experiments/ holds the tutorial's files of one Quadra version,
    with HOME in the test's folder (the MNIST datamodule's default data_path is under HOME)."""
    version = getattr(request, "param", "current")
    shutil.copytree(TUTORIAL / version, tmp_path / "experiments")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("tutorial", VERSIONS, indirect=True)
def test_the_tutorials_training_file_is_translated_whole(tutorial):
    cfg = compose_config([TRAIN, OFFLINE])
    assert cfg.model._target_ == "anomalib.models.Padim" and cfg.backbone.name == "resnet18"
    assert list(cfg.transforms.input_size) == [224, 224] and "model" not in cfg.model
    assert list(cfg.export.types) == ["torchscript"]
    assert cfg.core.name == "padim_9_resnet18_1" and cfg.logger.mlflow.experiment_name == "mnist-anomaly"
    assert cfg.datamodule._target_ == "quadra_ad.datamodules.MNISTAnomalyDataModule"
    assert "min_max_normalization" not in cfg.callbacks and "score_normalization" not in cfg.callbacks
    if not gpus_visible():
        assert cfg.trainer.accelerator == "cpu" and cfg.trainer.devices == 1
    OmegaConf.to_container(cfg, resolve=True)
    check_before_run(cfg)  # nothing the pre-training checks refuse


@pytest.mark.parametrize("tutorial", VERSIONS, indirect=True)
def test_the_tutorials_inference_file_takes_size_and_normalisation_from_the_model(tutorial):
    cfg = compose_config([INFERENCE, "task.model_path=/somewhere/model.pt"])
    assert cfg.task._target_ == "quadra_ad.tasks.AnomalyInferenceTask"
    # transforms: default_resize gives defaults only: model.json decides, no clash with the graph.
    assert cfg.transforms.input_size is None and cfg.transforms.mean is None and cfg.transforms.std is None
    assert cfg.datamodule.phase == "test" and cfg.task.use_training_threshold is False


@pytest.mark.parametrize("tutorial", ["current"], indirect=True)
def test_an_inference_size_the_user_sets_still_counts(tutorial):
    cfg = compose_config([INFERENCE, "task.model_path=/somewhere/model.pt", "transforms.input_size=[64,64]"])
    assert list(cfg.transforms.input_size) == [64, 64]


@pytest.mark.parametrize("tutorial", VERSIONS, indirect=True)
def test_whats_still_untranslatable_comes_with_every_other_mistake_at_once(tutorial):
    with pytest.raises(ConfigErrors) as caught:
        compose_config([TRAIN, OFFLINE, "++trainer.auto_lr_find=true", "++model.model.wobble=3", "core.seed=x"])
    lines = caught.value.lines
    assert any(line.startswith("trainer.auto_lr_find (Quadra): a Lightning 1 argument") for line in lines), lines
    assert any(line.startswith("model.model.wobble (Quadra): no such setting of Padim") for line in lines), lines
    assert any(line.startswith("core.seed='x' (takes a whole number)") for line in lines), lines
    assert len(lines) == 3, lines


def test_a_normalisation_threshold_type_that_is_neither_image_nor_pixel_is_refused(tutorial):
    with pytest.raises(ConfigErrors) as caught:
        compose_config([TRAIN, OFFLINE, "callbacks.score_normalization.threshold_type=imag"])
    assert caught.value.lines == ["callbacks.score_normalization.threshold_type (Quadra): 'imag' is neither image "
                                  "nor pixel"]


def test_a_backbone_key_on_a_file_that_empties_the_backbone_says_how_to_set_it(tutorial):
    done = subprocess.run([sys.executable, "-m", "quadra_ad", TRAIN, "backbone.pre_trained=false"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("quadra-ad: error: backbone.pre_trained: the experiment file leaves 'backbone' "
                                   "empty (override /backbone: null) and fills it later: write "
                                   "+backbone.pre_trained=<value>")
    cfg = compose_config([TRAIN, "+backbone.pre_trained=false"])
    assert cfg.backbone.name == "resnet18" and cfg.backbone.pre_trained is False


def test_cfg_job_prints_the_config_that_runs(tutorial):
    done = subprocess.run([sys.executable, "-m", "quadra_ad", TRAIN, OFFLINE, "--cfg", "job"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = OmegaConf.create(done.stdout)
    assert list(printed.transforms.input_size) == [224, 224] and "model" not in printed.model
    assert "dataset" not in printed.model and "score_normalization" not in printed.callbacks
    assert printed.backbone.name == "resnet18" and printed.model.pre_trained is False
    if not gpus_visible():
        assert printed.trainer.accelerator == "cpu" and printed.trainer.devices == 1
    assert done.stderr == ""  # the CPU-fallback line belongs to the run, not to a printed config
    resolved = subprocess.run([sys.executable, "-m", "quadra_ad", TRAIN, OFFLINE, "--cfg", "job", "--resolve",
                               "--package", "core"], capture_output=True, text=True, timeout=120)
    assert resolved.returncode == 0, resolved.stderr
    assert resolved.stdout.startswith("# @package core\n") and "name: padim_9_resnet18_1" in resolved.stdout


@pytest.mark.slow
@no_gpu
@pytest.mark.parametrize("tutorial", VERSIONS, indirect=True)
def test_the_tutorial_trains_and_infers_unchanged_on_a_machine_without_gpu(tutorial):
    _write_mnist(Path(os.environ["HOME"]), n=60)
    tracking = f"logger.mlflow.tracking_uri=sqlite:///{tutorial / 'mlflow.db'}"

    train = subprocess.run([sys.executable, "-m", "quadra_ad", TRAIN, OFFLINE, tracking],
                           capture_output=True, text=True, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    said = (train.stdout + train.stderr).splitlines()
    fallback = [line for line in said if "this machine has no GPU: running on the CPU" in line]
    assert len(fallback) == 1, said  # one warning line, then the run
    model = next(tutorial.glob("outputs/padim_9_resnet18_1/*/deployment_model/model.pt"))

    infer = subprocess.run([sys.executable, "-m", "quadra_ad", INFERENCE, f"task.model_path={model}", tracking],
                           capture_output=True, text=True, timeout=600)
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert list(tutorial.glob("outputs/inference_9/*/predictions.csv"))
