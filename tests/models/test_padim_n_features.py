"""PaDiM's n_features: a backbone swap is one override (a quarter of the layers' channels, at
most 550, where anomalib has no default that fits), and a value above the channels is refused
in one line before anything is built."""

import logging

import pytest

from quadra_ad.checks.composition import compose_config
from quadra_ad.errors import ConfigError
from quadra_ad.models.factory import build_model, model_arguments
from quadra_ad.models.padim import default_n_features


def _padim(*overrides: str):
    return compose_config(["experiment=base/anomaly/padim", "backbone.pre_trained=false", *overrides])


@pytest.mark.parametrize(("channels", "kept"), [(1792, 448), (176, 44), (448, 112), (4000, 550), (2, 1)])
def test_default_n_features_is_a_quarter_of_the_channels_at_most_550(channels, kept):
    assert default_n_features(channels) == kept


def test_padim_on_resnet50_builds_and_logs_the_value_kept(caplog):
    with caplog.at_level(logging.INFO, logger="quadra_ad.models.padim"):
        model = build_model(_padim("backbone=resnet50"))
    assert model.model.n_features == 448
    assert "keeps 448 of the 1792 channels" in caplog.text and "model.n_features=<n>" in caplog.text


@pytest.mark.parametrize(("overrides", "expected"), [
    (["model.backbone=resnet50"], {"n_features": 448}),
    (["backbone.name=convnext_tiny", "model.layers=[stages.0,stages.1,stages.2]"], {"n_features": 168}),
    (["backbone.name=mobilenetv3_large_100", "model.layers=[blocks.1,blocks.2,blocks.4]"], {"n_features": 44}),
    # anomalib's own default where the layers can give it, the rule where they cannot:
    ([], {}),
    (["backbone=wide_resnet50_2"], {}),
    (["model.layers=[layer1]"], {"n_features": 16}),
    (["backbone=resnet50", "model.n_features=100"], {}),
])
def test_padim_gets_n_features_only_where_anomalib_has_none_that_fits(overrides, expected):
    assert model_arguments(_padim(*overrides)) == expected


def test_patchcore_gets_no_n_features():
    cfg = compose_config(["experiment=base/anomaly/patchcore", "backbone=resnet50"])
    assert model_arguments(cfg) == {}


def test_n_features_above_the_layers_channels_is_refused_in_one_line():
    cfg = _padim("backbone.name=convnext_tiny", "model.layers=[stages.0,stages.1]", "model.n_features=500")
    with pytest.raises(ConfigError) as error:
        build_model(cfg)
    assert str(error.value) == ("model.n_features=500: layers ['stages.0', 'stages.1'] of convnext_tiny give 288 "
                                "features; take at most 288, or null for PaDiM's default")
