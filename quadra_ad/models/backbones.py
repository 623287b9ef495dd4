"""Backbone weights: pretrained from the hub when online, from a local file when asked.

anomalib models build their timm feature extractor with ``pre_trained=True`` by downloading
weights. Offline, huggingface_hub retries for most of a minute and then fails deep in the
stack; we check reachability first, switch the hub to offline mode (so a local cache still
works) and turn a failure into one line naming the keys that fix it.
"""

import concurrent.futures
import logging
import socket
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from quadra_ad.config.instantiation import instantiate_node
from quadra_ad.errors import ConfigError

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"

#: What to do when a model's own download (not its backbone's) fails.
DOWNLOAD_HINTS = {
    "Draem": "set model.dtd_dir to a folder of DTD textures (an existing empty folder makes DRAEM use Perlin noise only)",
}


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """True when the weights hub's name resolves within ``timeout_s``."""
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return bool(pool.submit(socket.getaddrinfo, HUB_HOST, 443).result(timeout=timeout_s))
    except (OSError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)


def _use_hub_offline() -> None:
    import huggingface_hub.constants as hub_constants

    hub_constants.HF_HUB_OFFLINE = True


def _is_download_failure(error: BaseException) -> bool:
    seen = error
    while seen is not None:
        name = type(seen).__name__
        module = type(seen).__module__
        if module.startswith(("huggingface_hub", "urllib", "requests", "httpx", "httpcore", "socket")) or name in (
            "gaierror", "ConnectionError", "LocalEntryNotFoundError", "OfflineModeIsEnabled", "URLError",
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """Instantiate ``cfg.model``, handling pretrained and local backbone weights."""
    backbone = cfg.get("backbone") or {}
    has_switch = "pre_trained" in cfg.model
    # Models without a pre_trained argument always download: backbone.pre_trained decides for them.
    pre_trained = bool(cfg.model.get("pre_trained") if has_switch else backbone.get("pre_trained", True))
    weights_file = backbone.get("weights_file")
    packaged = backbone.get("packaged_weights")
    name = cfg.model.get("backbone", backbone.get("name", "?"))
    if packaged:
        from quadra_ad.models.packaged_weights import packaged_state_dict

        state = packaged_state_dict(str(packaged), str(name))
        model = instantiate_node(cfg, "model", pre_trained=False, _convert_="all")
        load_backbone_state(model, state, str(name), f"backbone.packaged_weights={packaged}")
        return model
    if weights_file:
        # Local weights replace the download entirely.
        model = instantiate_node(cfg, "model", pre_trained=False, _convert_="all")
        load_backbone_weights(model, weights_file, str(name))
        return model
    if pre_trained and not hub_reachable():
        log.warning("%s is not reachable: looking for %s weights in the local cache only", HUB_HOST, name)
        _use_hub_offline()
    try:
        if not pre_trained and not has_switch:
            from quadra_ad.models.offline import random_backbone_weights

            with random_backbone_weights():
                return instantiate_node(cfg, "model", _convert_="all")
        # Plain lists, not ListConfig: Lightning checkpoints must load with weights_only=True.
        return instantiate_node(cfg, "model", _convert_="all")
    except Exception as error:
        if _is_download_failure(error):
            model_name = cfg.model._target_.rsplit(".", 1)[-1]
            if model_name in DOWNLOAD_HINTS:
                raise ConfigError(f"{model_name} needs a download that failed (offline?): {DOWNLOAD_HINTS[model_name]}") from error
            key = "model.pre_trained=false" if has_switch else "backbone.pre_trained=false"
            raise ConfigError(
                f"cannot download what {cfg.model._target_.rsplit('.', 1)[-1]} needs (backbone '{name}' weights or data; "
                f"offline?): set {key} for random weights, or backbone.weights_file=<local timm .pth/.safetensors file>"
            ) from error
        raise
