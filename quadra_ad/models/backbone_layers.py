"""The layers of the backbones we ship a config for, known without importing torch, and the one
line that names a layer a backbone does not have (checked before the run and when the model is built)."""

import difflib
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

#: The feature maps (timm ``feature_info``: module name → channels) of the backbones we ship a
#: config for, so that ``model.layers`` is checked without importing torch. Other timm backbones
#: are checked when the model is built (quadra_ad/models/factory.py); a test compares this to timm.
BACKBONE_FEATURES = {
    "resnet18": {"act1": 64, "layer1": 64, "layer2": 128, "layer3": 256, "layer4": 512},
    "resnet50": {"act1": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048},
    "wide_resnet50_2": {"act1": 64, "layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048},
    "efficientnet_lite0": {"blocks.0": 16, "blocks.1": 24, "blocks.2": 40, "blocks.4": 112, "blocks.6": 320},
}


def unknown_layer_message(key: str, value: Any, backbone: str, available: list[str]) -> str | None:
    """The mistake line for layer names in ``value`` (one name or a list) that ``backbone`` does
    not have (anomalib drops them with a warning and trains on the others, or on none); None when
    all exist or the value holds no names."""
    names = [value] if isinstance(value, str) else list(value) if isinstance(value, (list, tuple, ListConfig)) else []
    unknown = [name for name in names if isinstance(name, str) and name not in available]
    if not unknown:
        return None
    close = difflib.get_close_matches(unknown[0], available, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (f"{key}={_shown(value)}: backbone {backbone} has no layer {', '.join(unknown)}{hint}; "
            f"its layers are {', '.join(available)}")


def _shown(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return repr(value) if isinstance(value, str) else str(value)
