"""A catalogue of config mistakes: each is one line naming the key at fault, exit code 2, before
anything is trained (and, where the check needs no network model, before torch is imported)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from quadra_ad.checks.values import CORESET_SAMPLERS, EXPORT_TYPES
from quadra_ad.config.device_fallback import gpus_visible
from quadra_ad.models.backbone_layers import BACKBONE_FEATURES
from quadra_ad.testing.synthetic import write_synthetic_dataset
from tests.cli.test_mistakes import _one_error_line, _refused
from tests.cli_runner import quadra_ad

PADIM = "experiment=base/anomaly/padim"
FLIP = "_target_:albumentations.HorizontalFlip"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "set", n_train=4, n_test_good=2,
                                   n_test_defect=2, size=32)


def _augmentations(*entries: str) -> str:
    return f"transforms.train_augmentations=[{','.join(entries)}]"


CATALOGUE = [
    # Trainers and launchers
    pytest.param(["trainer.accelerator=gpux"], "trainer.accelerator='gpux' (takes one of auto, cpu", id="accelerator-typo"),
    pytest.param(["trainer.deterministic=maybe"], "trainer.deterministic='maybe' (takes true, false or warn)",
                 id="deterministic-not-a-bool"),
    pytest.param(["trainer.devices=0"], "trainer.devices=0", id="zero-devices"),
    pytest.param(["trainer.max_epochs=-1"], "trainer.max_epochs=-1 (takes a whole number >= 1)", id="negative-epochs"),
    pytest.param(["trainer.max_epochs=abc"], "trainer.max_epochs='abc'", id="epochs-a-string"),
    pytest.param(["hydra/launcher=joblibb"], "hydra/launcher=joblibb: no such launcher; did you mean joblib? the "
                 "launchers are basic, joblib", id="launcher-typo"),
    pytest.param(["hydra/sweeper=optunna"], "hydra/sweeper=optunna: no such sweeper; did you mean optuna?",
                 id="sweeper-typo"),
    pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=0"], "hydra.launcher.n_jobs=0 (takes a whole number "
                 ">= 1, or -1", id="launcher-zero-jobs"),
    pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=-4"], "hydra.launcher.n_jobs=-4", id="launcher-negative-jobs"),
    pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=two"], "hydra.launcher.n_jobs=two", id="launcher-jobs-a-string"),
    pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_job=2"], "hydra.launcher.n_job: hydra/launcher=joblib has no "
                 "setting 'n_job'; did you mean hydra.launcher.n_jobs?", id="launcher-setting-typo"),
    # Augmentations (albumentations 2.0 validates them; we build each one before training)
    pytest.param([_augmentations(f"{{{FLIP},p:2}}")], "transforms.train_augmentations[0] albumentations.HorizontalFlip: "
                 "p: Input should be less than or equal to 1", id="augmentation-p-above-1"),
    pytest.param([_augmentations(f"{{{FLIP},p:abc}}")], "transforms.train_augmentations[0] albumentations.HorizontalFlip: p:",
                 id="augmentation-p-a-string"),
    pytest.param([_augmentations(f"{{{FLIP}}}", "{_target_:albumentations.GaussNoise,std_range:[0.5,0.1]}")],
                 "transforms.train_augmentations[1] albumentations.GaussNoise: std_range: First value should be less",
                 id="augmentation-reversed-range"),
    pytest.param([_augmentations("{_target_:albumentations.HorizontalFlipp,p:0.5}")],
                 "transforms.train_augmentations[0]._target_: albumentations has no transform 'HorizontalFlipp': did you "
                 "mean albumentations.HorizontalFlip?", id="augmentation-class-typo"),
    pytest.param([_augmentations(f"{{{FLIP},prob:0.5}}")], "transforms.train_augmentations[0].prob: "
                 "albumentations.HorizontalFlip has no argument 'prob'; did you mean p?", id="augmentation-argument-typo"),
    pytest.param([_augmentations("flip")], "transforms.train_augmentations[0] is 'flip', not a transform",
                 id="augmentation-plain-string"),
    pytest.param([_augmentations("{_target_:builtins.str}")], "transforms.train_augmentations[0]._target_: builtins.str is "
                 "not an albumentations transform", id="augmentation-not-a-transform-class"),
    pytest.param([_augmentations("{p:0.5}")], "transforms.train_augmentations[0] is {'p': 0.5}, not a transform",
                 id="augmentation-without-target"),
    pytest.param([_augmentations("{_target_:nowhere.Flip}")], "transforms.train_augmentations[0]._target_: cannot import "
                 "'nowhere.Flip'", id="augmentation-unimportable"),
    pytest.param(["transforms.train_augmentations=flip"], "transforms.train_augmentations='flip': give a list",
                 id="augmentations-not-a-list"),
    pytest.param([_augmentations("{_target_:albumentations.OneOf,transforms:[{_target_:albumentations.Blur,blur_limit:-3}]}")],
                 "transforms.train_augmentations[0].transforms[0] albumentations.Blur: blur_limit: Invalid kernel size",
                 id="augmentation-nested-value-albumentations-would-change"),
    pytest.param([f"datamodule.train_augmentations=[{{{FLIP},p:-1}}]"], "datamodule.train_augmentations[0] "
                 "albumentations.HorizontalFlip: p:", id="augmentation-set-on-the-datamodule"),
    # Model
    pytest.param(["model.layers=[layer9]"], "model.layers=['layer9']: backbone resnet18 has no layer layer9 (did you mean "
                 "layer4?); its layers are act1, layer1, layer2, layer3, layer4", id="layer-unknown"),
    pytest.param(["model.layers=[layer1,layer5]"], "backbone resnet18 has no layer layer5", id="layer-one-of-two-unknown"),
    pytest.param(["model.layers=layer1"], "model.layers='layer1' (takes a non-empty list of layer names",
                 id="layers-a-string"),
    pytest.param(["model.layers=[]"], "model.layers=[] (takes a non-empty list", id="layers-empty"),
    pytest.param(["backbone=efficientnet_lite0"], "model.layers=['layer1', 'layer2', 'layer3']: backbone efficientnet_lite0 "
                 "has no layer layer1, layer2, layer3", id="layers-of-another-backbone"),
    pytest.param(["model.n_features=1000"], "model.n_features=1000: layers ['layer1', 'layer2', 'layer3'] of resnet18 give "
                 "448 features; take at most 448", id="n-features-above-the-layers"),
    pytest.param(["model=patchcore", "model.coreset_sampler=foo"], "model.coreset_sampler='foo' (takes fast or anomalib)",
                 id="coreset-sampler-unknown"),
    pytest.param(["model=dfm", "model.layer=layer7"], "model.layer='layer7': backbone resnet18 has no layer layer7",
                 id="single-layer-unknown"),
    # Thresholds
    pytest.param(["task.target_fpr=0.05"], "task.target_fpr=0.05 has no effect with task.threshold_rule=f1: add "
                 "task.threshold_rule=target_fpr", id="target-fpr-under-f1"),
    pytest.param(["task.threshold_rule=target_fpr", "task.good_percentile=95"], "task.good_percentile=95 has no effect with "
                 "task.threshold_rule=target_fpr", id="good-percentile-under-target-fpr"),
    pytest.param(["task.threshold_rule=manual"], "task.threshold_rule=manual needs task.manual_image_threshold=",
                 id="manual-rule-without-threshold"),
    pytest.param(["task.threshold_rule=good_percentile", "task.manual_image_threshold=0.5"],
                 "task.manual_image_threshold is set but task.threshold_rule=good_percentile", id="manual-threshold-and-rule"),
    pytest.param(["task.manual_threshold_normalized=true"], "task.manual_threshold_normalized=true applies to "
                 "task.manual_image_threshold", id="normalized-without-threshold"),
    # Values typed wrong
    pytest.param(["core.seed=abc"], "core.seed='abc' (takes a whole number)", id="seed-a-string"),
    pytest.param(["core.seed=1.5"], "core.seed=1.5", id="seed-a-fraction"),
    pytest.param(["core.name="], "core.name='' (takes a non-empty name", id="empty-name"),
    pytest.param(["core.name=line/bottle"], "core.name='line/bottle'", id="name-with-a-slash"),
    pytest.param(["datamodule.train_batch_size=-2"], "datamodule.train_batch_size=-2", id="negative-batch"),
    pytest.param(["datamodule.test_batch_size=big"], "datamodule.test_batch_size='big'", id="batch-a-string"),
    pytest.param(["transforms.input_size=[0,0]"], "transforms.input_size=[0, 0]", id="input-size-zero"),
    pytest.param(["transforms.input_size=[64,64,3]"], "transforms.input_size=[64, 64, 3]", id="input-size-three-sides"),
    pytest.param(["export.types=[onnxx]"], "export.types=['onnxx'] (takes a list of torchscript, onnx, openvino",
                 id="export-type-typo"),
    pytest.param(["export.types=onnx"], "export.types='onnx'", id="export-types-not-a-list"),
    pytest.param(["export.onnx_opset=3"], "export.onnx_opset=3 (takes a whole number >= 7", id="onnx-opset-too-old"),
    pytest.param(["logger.mlflow.tracking_uri=foo://bar"], "logger.mlflow.tracking_uri='foo://bar' (takes an MLflow URI",
                 id="tracking-uri-scheme"),
    pytest.param(["+modle.layers=[layer1]"], "'modle' is not a section of the config", id="unknown-section-override"),
]


@pytest.mark.parametrize("overrides, expected", CATALOGUE)
def test_config_mistake_is_one_line_before_anything_heavy(tmp_path, data, overrides, expected):
    message = _refused(tmp_path, PADIM, f"datamodule.data_path={data}", *overrides)
    assert expected in message, message


@pytest.mark.skipif(gpus_visible(), reason="this machine has a GPU: the GPU trainer runs on it")
@pytest.mark.parametrize("overrides, expected", [
    (["trainer=gpu"], {"accelerator": "cpu", "devices": 1, "strategy": "auto"}),
    (["trainer=gpu", "trainer.devices=[0]"], {"accelerator": "cpu", "devices": 1, "strategy": "auto"}),
    (["trainer=ddp"], {"accelerator": "cpu", "devices": 1, "strategy": "auto"}),  # devices=auto: every GPU of none
    (["trainer=ddp", "trainer.devices=[0,1]"], {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}),
    (["trainer=cpu", "trainer.accelerator=auto", "trainer.devices=[2]"], {"accelerator": "cpu", "devices": 1}),
])
def test_gpu_trainer_on_a_machine_without_gpus_runs_on_the_cpu(data, overrides, expected, caplog):
    from quadra_ad.checks.before_run import check_before_run
    from quadra_ad.checks.composition import compose_config

    with caplog.at_level("WARNING"):
        cfg = compose_config([PADIM, f"datamodule.data_path={data}", *overrides])
    for key, value in expected.items():
        assert cfg.trainer[key] == value, (key, cfg.trainer[key])
    warnings = [r.getMessage() for r in caplog.records if "this machine has no GPU: running on the CPU" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("trainer.accelerator="), warnings
    check_before_run(cfg)  # and nothing else refuses it


def test_cpu_trainers_are_left_as_they_are(data, caplog):
    from quadra_ad.checks.composition import compose_config

    with caplog.at_level("WARNING"):
        cfg = compose_config([PADIM, f"datamodule.data_path={data}", "trainer=ddp_cpu"])
    assert cfg.trainer.devices == 2 and cfg.trainer.strategy == "ddp" and not caplog.records


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="elsewhere Lightning decides")
def test_gpus_hidden_by_cuda_visible_devices_count_as_none(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not gpus_visible()


def _user_experiment(tmp_path: Path, body: str) -> None:
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "mine.yaml").write_text(
        f"# @package _global_\ndefaults:\n  - /experiment/base/anomaly/padim\n  - _self_\n{body}")


@pytest.mark.parametrize("section, expected", [
    ("modle", "did you mean model?"),
    ("trainr", "did you mean trainer?"),
    ("augmentation", "the sections are backbone, callbacks, core"),  # the group fills transforms, not a section
])
def test_unknown_section_in_a_users_experiment_file(tmp_path, data, section, expected):
    _user_experiment(tmp_path, f"{section}:\n  max_epochs: 3\n")
    message = _refused(tmp_path, "experiment=mine", f"datamodule.data_path={data}")
    assert message.startswith(f"'{section}' is not a section of the config") and expected in message


# --- backbone.weights_file: refused before torch when the file itself is wrong -----------------

def _text(path: Path) -> Path:
    path.write_text("these are not weights\n")
    return path


def _truncated_torch(path: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00." * 1000)
    path.write_bytes(path.read_bytes()[:200])
    return path


def _truncated_safetensors(path: Path) -> Path:
    header = b'{"w":{"dtype":"F32","shape":[64],"data_offsets":[0,256]}}'
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 100)
    return path


def _zip_of_something_else(path: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    return path


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


def _empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize("make, expected", [
    pytest.param(_text, "is not a PyTorch or safetensors file", id="text-file"),
    pytest.param(_truncated_torch, "is a truncated or damaged archive", id="truncated-pth"),
    pytest.param(_truncated_safetensors, "is truncated", id="truncated-safetensors"),
    pytest.param(_zip_of_something_else, "is a zip archive but not a PyTorch file", id="zip-not-torch"),
    pytest.param(_fifo, "is not a regular file", id="fifo"),  # opening it would block
    pytest.param(_folder, "is a folder", id="folder"),
    pytest.param(_empty, "is empty (0 bytes)", id="empty-file"),
])
def test_weights_file_that_is_not_weights(tmp_path, data, make, expected):
    weights = make(tmp_path / "weights.pth")
    message = _refused(tmp_path, PADIM, f"datamodule.data_path={data}", f"backbone.weights_file={weights}")
    assert message.startswith(f"backbone.weights_file '{weights}' {expected}"), message


# --- checks that need torch: through the command, refused before training ---------------------

def _refused_after_build(tmp_path: Path, data: Path, *overrides: str) -> str:
    result = quadra_ad(PADIM, f"datamodule.data_path={data}", "transforms.input_size=[32,32]", "backbone.pre_trained=false",
                       "export.types=[]", f"logger.mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", *overrides,
                       cwd=tmp_path, timeout=240)
    assert result.returncode == 2, result.stderr[-2000:]
    assert not list(tmp_path.glob("outputs/*/*/deployment_model")), "a refused run trained and exported"
    errors = [line for line in result.stderr.splitlines() if line.startswith("quadra-ad: error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    return _one_error_line(errors[0])


def _resnet18_state(**changes):
    import timm

    state = timm.create_model("resnet18", pretrained=False).state_dict()
    return {**state, **changes}


def test_weights_of_another_network_or_only_part_of_the_backbone(tmp_path, data):
    import torch

    other = tmp_path / "other.pth"
    torch.save({"encoder.block.weight": torch.zeros(3, 3)}, other)
    message = _refused_after_build(tmp_path, data, f"backbone.weights_file={other}")
    assert message.startswith(f"backbone.weights_file '{other}' has no tensors that fit backbone 'resnet18'")

    partial = tmp_path / "partial.safetensors"
    from safetensors.torch import save_file

    state = {k: v for k, v in _resnet18_state().items() if not k.startswith("layer3")}
    save_file(state, str(partial))
    message = _refused_after_build(tmp_path, data, f"backbone.weights_file={partial}")
    assert "tensors that fit backbone 'resnet18'" in message and " of the " in message


def test_layer_names_of_a_backbone_the_preflight_does_not_know(tmp_path, data):
    message = _refused_after_build(tmp_path, data, "backbone.name=resnet34", "model.layers=[layer1,layer8]")
    assert message.startswith("model.layers=['layer1', 'layer8']: backbone resnet34 has no layer layer8")
    assert "its layers are act1, layer1, layer2, layer3, layer4" in message


# --- the torch-free tables stay in step with the libraries they mirror -----------------------

def test_backbone_feature_table_matches_timm():
    import timm
    import torch

    for name, features in BACKBONE_FEATURES.items():
        with torch.device("meta"):
            extractor = timm.create_model(name, pretrained=False, features_only=True)
        assert {i["module"]: i["num_chs"] for i in extractor.feature_info.info} == features, name


def test_export_types_and_samplers_match_their_owners():
    from quadra_ad.export.writers import EXPORT_TYPES as WRITERS_TYPES
    from quadra_ad.models.patchcore import SAMPLERS

    assert set(EXPORT_TYPES) == set(WRITERS_TYPES)
    assert set(CORESET_SAMPLERS) == set(SAMPLERS)


def test_augmentation_check_leaves_torch_unimported(tmp_path):
    probe = ("import sys\nfrom quadra_ad.datamodules.augmentations import import_albumentations_for_checks\n"
             "A = import_albumentations_for_checks()\nA.HorizontalFlip(p=0.5)\nprint('torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.stdout.strip() == "False", result.stderr[-2000:]
