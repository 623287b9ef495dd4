"""Backbone weights from a local file or a package, loaded into a model's timm feature extractors."""

import logging
from pathlib import Path
from typing import Any

import torch

from quadra_ad.errors import ConfigError

log = logging.getLogger(__name__)


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    loaded: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise ConfigError(f"backbone.weights_file '{path}' does not hold a state dict")
    return loaded


def load_backbone_weights(model: torch.nn.Module, weights_file: str | Path, backbone_name: str) -> int:
    """Load a timm state dict from a local file into every timm feature extractor of ``model``.

    Returns the number of tensors loaded; raises ConfigError when none match.
    """
    path = Path(weights_file).expanduser()
    if not path.is_file():
        raise ConfigError(f"backbone.weights_file '{path}' does not exist")
    return load_backbone_state(model, _state_dict_from_file(path), backbone_name, f"backbone.weights_file '{path}'")


def load_backbone_state(model: torch.nn.Module, state: dict[str, torch.Tensor], backbone_name: str, source: str) -> int:
    """Copy the matching tensors of a timm state dict into every timm feature extractor of ``model``."""
    from anomalib.models.components.feature_extractors import TimmFeatureExtractor

    extractors = [m for m in model.modules() if isinstance(m, TimmFeatureExtractor)]
    if not extractors:
        raise ConfigError(f"{source} is set but {type(model).__name__} has no timm backbone to load it into")
    loaded = 0
    for extractor in extractors:
        target = extractor.feature_extractor.state_dict()
        matching = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
        extractor.feature_extractor.load_state_dict(matching, strict=False)
        loaded += len(matching)
    if loaded == 0:
        raise ConfigError(
            f"{source} has no tensors that fit backbone '{backbone_name}': "
            f"is it a timm state dict of that architecture?"
        )
    log.info("Loaded %d backbone tensors from %s", loaded, source)
    return loaded
