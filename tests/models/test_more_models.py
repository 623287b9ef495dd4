"""The image models added after the first thirteen (anomalib 2.7's other trainable ones): every
config composes and builds offline with random weights, and tiling settings that cannot cover the
input are refused in one line naming the key — all before any training. Training, export and
parity for each run in tests/models/test_model_zoo.py (slow)."""


import pytest

from quadra_ad.checks.composition import compose_config
from quadra_ad.errors import ConfigError
from quadra_ad.models.factory import build_model
from quadra_ad.testing.smoke import smoke_overrides

NEW_MODELS = ("cfa", "fre", "ganomaly", "mh_patchcore", "glass", "patchflow", "uninet", "dsr", "anomaly_dino",
              "dinomaly", "inp_former", "foundad", "general_ad", "l2bt", "rad", "super_add")

PADIM_64 = ("padim", ())
BAD_TILING = {
    "tile_larger_than_input": (["model.tiling.enabled=true", "model.tiling.tile_size=128"], "model.tiling.tile_size"),
    "stride_larger_than_tile": (["model.tiling.enabled=true", "model.tiling.tile_size=32", "model.tiling.stride=48"],
                                "model.tiling.stride"),
    "tiles_do_not_cover": (["model.tiling.enabled=true", "model.tiling.tile_size=40", "model.tiling.stride=16"],
                           "model.tiling: tiles of 40 px every 16 px"),
    "no_tile_size": (["model.tiling.enabled=true"], "model.tiling.tile_size is not set"),
    "model_without_tiler": (["model=cfa", "model.tiling.enabled=true", "model.tiling.tile_size=32"],
                            "Cfa does not support tiling"),
}


@pytest.mark.parametrize("case", [f"build-{m}" for m in NEW_MODELS] + [f"tiling-{c}" for c in BAD_TILING])
def test_config_builds_offline_or_is_refused_in_one_line(case, tmp_path):
    kind, name = case.split("-", 1)
    model, extra, refusal = (name, [], None) if kind == "build" else ("padim", *BAD_TILING[name])
    cfg = compose_config([*smoke_overrides(model, tmp_path / "data", tmp_path), "~logger", *extra])
    if refusal is None:
        built = build_model(cfg)
        assert type(built).__name__.lower().replace("_", "") in cfg.model._target_.lower().replace("_", "")
        return
    with pytest.raises(ConfigError) as error:
        build_model(cfg)
    assert "\n" not in str(error.value) and refusal in str(error.value)


@pytest.mark.slow
def test_dsr_without_its_vq_model_offline_stops_with_one_line_naming_the_file(tmp_path, monkeypatch):
    from anomalib.models.image.dsr import lightning_model

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(lightning_model, "get_pretrained_weights_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(lightning_model, "download_and_extract", offline)
    cfg = compose_config([*smoke_overrides("dsr", tmp_path / "data", tmp_path), "~logger", "backbone.pre_trained=true"])
    model = build_model(cfg)
    with pytest.raises(ConfigError) as error:
        model.prepare_pretrained_model()
    assert "\n" not in str(error.value)
    assert "vq_model_pretrained_128_4096.pckl" in str(error.value) and "model.vq_weights=" in str(error.value)

    with pytest.raises(ConfigError, match="model.vq_weights"):
        build_model(compose_config([*smoke_overrides("dsr", tmp_path / "data", tmp_path), "~logger",
                                    f"model.vq_weights={tmp_path / 'missing.pckl'}"]))
