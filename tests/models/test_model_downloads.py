"""Models that download data or weights of their own fail offline with one line saying what to do.

The downloads are replaced by functions that raise URLError, the way urllib fails with no
network: the tests never reach the internet, even on a machine that has it.
"""

from urllib.error import URLError

import pytest

from quadra_ad.checks.composition import compose_config
from quadra_ad.errors import ConfigError
from quadra_ad.models.efficient_ad import EfficientAd
from quadra_ad.models.factory import build_model


def _offline(*args, **kwargs):
    raise URLError("[Errno -2] Name or service not known")


def test_draem_without_textures_offline_names_dtd_dir(monkeypatch, tmp_path):
    import anomalib.models.image.draem.lightning_model as draem

    monkeypatch.setattr(draem, "download_and_extract", _offline)
    cfg = compose_config(["experiment=base/anomaly/draem", f"model.dtd_dir={tmp_path / 'no-dtd'}"])
    with pytest.raises(ConfigError) as error:
        build_model(cfg)
    assert "\n" not in str(error.value) and "model.dtd_dir" in str(error.value)


def test_efficient_ad_teacher_download_failure_names_teacher_weights(monkeypatch, tmp_path):
    import anomalib.models.image.efficient_ad.lightning_model as efficient_ad

    monkeypatch.setattr(efficient_ad, "download_and_extract", _offline)
    monkeypatch.setattr(efficient_ad, "get_pretrained_weights_dir", lambda: tmp_path / "empty-cache")
    model = EfficientAd(pre_processor=False, post_processor=False, evaluator=False, visualizer=False)
    with pytest.raises(ConfigError, match=r"pretrained_teacher_small\.pth .* model\.teacher_weights=<that file>"):
        model.prepare_pretrained_model()


def test_efficient_ad_missing_teacher_file(tmp_path):
    model = EfficientAd(teacher_weights=tmp_path / "nope.pth", pre_processor=False, visualizer=False)
    with pytest.raises(ConfigError, match=r"model\.teacher_weights .* does not exist"):
        model.prepare_pretrained_model()


def test_efficient_ad_teacher_of_another_size_is_refused(tmp_path):
    import torch

    teacher = tmp_path / "pretrained_teacher_medium.pth"
    medium = EfficientAd(model_size="medium", pre_processor=False, visualizer=False)
    torch.save(medium.model.teacher.state_dict(), teacher)
    model = EfficientAd(teacher_weights=teacher, pre_processor=False, visualizer=False)
    with pytest.raises(ConfigError, match="does not fit the small teacher"):
        model.prepare_pretrained_model()


def test_efficient_ad_without_imagenette_offline_names_imagenet_dir(monkeypatch, tmp_path):
    import anomalib.models.image.efficient_ad.lightning_model as efficient_ad

    monkeypatch.setattr(efficient_ad, "download_and_extract", _offline)
    model = EfficientAd(imagenet_dir=tmp_path / "imagenette", pre_processor=False, visualizer=False)
    with pytest.raises(ConfigError, match=r"model\.imagenet_dir .* could not be downloaded"):
        model.prepare_imagenette_data((256, 256))


def test_every_model_has_a_base_and_an_mnist_experiment():
    from quadra_ad.checks.command_line import group_options
    from quadra_ad.config.locations import package_experiments_dir

    models = group_options("model")
    assert len(models) >= 13
    for model in models:
        assert (package_experiments_dir() / "base" / "anomaly" / f"{model}.yaml").is_file(), model
        assert (package_experiments_dir() / "generic" / "mnist" / "anomaly" / f"{model}.yaml").is_file(), model


def test_switching_model_is_one_word(tmp_path):
    padim = compose_config(["experiment=base/anomaly/padim", "model=stfpm"])
    assert padim.model._target_ == "anomalib.models.Stfpm"
