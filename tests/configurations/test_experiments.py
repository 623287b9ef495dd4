"""Every shipped experiment composes, and every ``_target_`` accepts the keys given to it."""

import difflib
import importlib
import inspect

import pytest
from omegaconf import DictConfig, OmegaConf

from quadra_ad.checks.command_line import check_group_choices
from quadra_ad.checks.composition import compose_config
from quadra_ad.config.locations import package_experiments_dir
from quadra_ad.errors import ConfigError

EXPERIMENTS = sorted(p.relative_to(package_experiments_dir()).with_suffix("").as_posix() for p in package_experiments_dir().rglob("*.yaml"))
REQUIRED = {
    "base/anomaly/padim", "base/anomaly/patchcore", "generic/mnist/anomaly/padim",
    "generic/mnist/anomaly/patchcore", "generic/digits/anomaly/padim", "base/anomaly/inference",
    "generic/mnist/anomaly/inference", "generic/digits/anomaly/inference",
}


def _import(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _check_keys(node: DictConfig, where: str) -> None:
    """Fail with a "did you mean" when a key is not a parameter of the target."""
    target = _import(node["_target_"])
    signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
    params = signature.parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        # **kwargs forwarded to a base class: check against the base signatures too.
        params = dict(params)
        for base in inspect.getmro(target)[1:] if inspect.isclass(target) else []:
            if "__init__" in vars(base):
                params.update(inspect.signature(base.__init__).parameters)
    for key in node:
        # model.tiling is applied by quadra_ad's model factory, not passed to the model (models/tiling.py).
        if key.startswith("_") or (key == "enabled" and where.startswith("callbacks.")) or (key, where) == ("tiling", "model"):
            continue
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=1)
            pytest.fail(f"{where}.{key} is not a parameter of {node['_target_']}" + (f"; did you mean {close[0]}?" if close else ""))


def test_required_experiments_ship():
    assert set(EXPERIMENTS) >= REQUIRED


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_targets_accept_their_keys(experiment, tmp_path):
    cfg = compose_config([f"experiment={experiment}", f"datamodule.data_path={tmp_path}"])
    OmegaConf.resolve(cfg)
    assert cfg.core.name
    if experiment.endswith("/inference"):
        assert cfg.task._target_ == "quadra_ad.tasks.AnomalyInferenceTask" and cfg.datamodule.phase == "test"
        assert "model" not in cfg and "trainer" not in cfg
        _check_keys(cfg.task, "task")
        _check_keys(cfg.datamodule, "datamodule")
        return
    for group in ("datamodule", "model", "trainer", "task"):
        _check_keys(cfg[group], group)
    for name, callback in (cfg.get("callbacks") or {}).items():
        if callback is not None:
            _check_keys(callback, f"callbacks.{name}")
    assert set(cfg.export.types) <= {"torchscript", "onnx"}
    assert cfg.logger.mlflow.tracking_uri.startswith("sqlite:///")


def test_offline_experiments_do_not_ask_for_pretrained_weights():
    for experiment in (e for e in EXPERIMENTS if e.startswith("generic/digits/") and not e.endswith("/inference")):
        cfg = compose_config([f"experiment={experiment}"])
        assert cfg.model.pre_trained is False, experiment


def test_base_experiments_keep_pretrained_backbones():
    for experiment in ("base/anomaly/padim", "base/anomaly/patchcore"):
        assert compose_config([f"experiment={experiment}"]).model.pre_trained is True


def test_user_experiment_in_working_directory_is_found(tmp_path, monkeypatch):
    user_dir = tmp_path / "experiments" / "my_line"
    user_dir.mkdir(parents=True)
    (user_dir / "bottle_padim.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /experiment/base/anomaly/padim\n  - _self_\ncore:\n  name: bottle\n"
    )
    monkeypatch.chdir(tmp_path)
    cfg = compose_config(["experiment=my_line/bottle_padim"])
    assert cfg.core.name == "bottle"
    assert cfg.model._target_ == "anomalib.models.Padim"


def test_experiments_folder_named_by_environment_variable_is_found(tmp_path, monkeypatch):
    (tmp_path / "team.yaml").write_text("# @package _global_\ncore:\n  name: team_run\n")
    monkeypatch.setenv("QUADRA_AD_EXPERIMENTS_DIR", str(tmp_path))
    assert compose_config(["experiment=team"]).core.name == "team_run"


def test_unknown_experiment_is_one_line_with_suggestion():
    with pytest.raises(ConfigError) as error:
        check_group_choices(["experiment=base/anomaly/padin"])
    message = str(error.value)
    assert "\n" not in message and "Unknown experiment 'base/anomaly/padin'" in message
    assert "base/anomaly/padim" in message


def test_unknown_model_is_one_line_with_suggestion():
    with pytest.raises(ConfigError, match=r"Unknown model 'patchcor'.*Did you mean: patchcore"):
        check_group_choices(["model=patchcor"])


def test_sweep_choices_are_each_checked():
    check_group_choices(["experiment=base/anomaly/padim,base/anomaly/patchcore", "trainer.max_epochs=3"])
    with pytest.raises(ConfigError, match="nope"):
        check_group_choices(["-m", "experiment=base/anomaly/padim,nope"])


def test_the_shared_part_is_not_a_model_option():
    from quadra_ad.checks.command_line import group_options

    assert not [name for name in group_options("model") if "anomalib_components" in name]
    with pytest.raises(ConfigError, match=r"Unknown model 'anomalib_components'"):
        check_group_choices(["model=anomalib_components"])


def test_every_model_file_includes_the_shared_anomalib_components():
    for model in (m for m in EXPERIMENTS if m.startswith("base/anomaly/") and not m.endswith("/inference")):
        cfg = compose_config([f"experiment={model}"])
        assert cfg.model.post_processor is False and cfg.model.evaluator is False and cfg.model.visualizer is False
        # Models that size their layers from it set the pre-processor again; the rest have it off.
        assert cfg.model.pre_processor is False or cfg.model.pre_processor._target_.endswith("PreProcessor")
