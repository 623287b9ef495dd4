"""The model factory: ``cfg.model`` built into an anomalib model, with its backbone weights
pretrained from the hub when online, from a local file or a package when asked.

anomalib models build their timm feature extractor with ``pre_trained=True`` by downloading
weights. Offline, huggingface_hub retries for most of a minute and then fails deep in the
stack; we check reachability first, switch the hub to offline mode for the construction only
(so a local cache still works) and turn a failure into one line naming the keys that fix it.
"""

import concurrent.futures
import functools
import logging
import socket
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig

from quadra_ad.config.instantiation import instantiate_node
from quadra_ad.errors import ConfigError, exception_chain
from quadra_ad.models.backbone_weights import load_backbone_state, load_backbone_weights
from quadra_ad.models.tiling import apply_tiling, tiling_settings, without_tiling

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"

#: What to do when a model's own download (not its backbone's) fails.
DOWNLOAD_HINTS = {
    "Draem": "set model.dtd_dir to a folder of DTD textures (an existing empty folder makes DRAEM use Perlin noise only)",
    "Glass": "set model.anomaly_source_path to a folder of DTD textures, or null for Perlin-noise anomalies only",
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


@contextmanager
def hub_offline() -> Iterator[None]:
    """Within the block the Hugging Face hub is in offline mode (only its local cache answers);
    the previous mode is restored after."""
    import huggingface_hub.constants as hub_constants

    previous = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = previous


def _is_download_failure(error: BaseException) -> bool:
    for seen in exception_chain(error):
        name = type(seen).__name__
        module = type(seen).__module__
        if module.startswith(("huggingface_hub", "urllib", "requests", "httpx", "httpcore", "socket")) or name in (
            "gaierror", "ConnectionError", "LocalEntryNotFoundError", "OfflineModeIsEnabled", "URLError",
        ):
            return True
    return False


def build_model(cfg: DictConfig) -> torch.nn.Module:
    """Instantiate ``cfg.model``, handling pretrained and local backbone weights and tiling."""
    tiling = tiling_settings(cfg)  # refused before anything is built when the tiles do not fit
    model = _build_model(without_tiling(cfg))
    if tiling is not None:
        apply_tiling(model, tiling)
    return model


def check_backbone_layers(cfg: DictConfig) -> None:
    """``model.layers`` the backbone does not have, for backbones the checks before the run do not
    know: anomalib would drop them with a warning and train on the rest (or fail on none)."""
    from quadra_ad.models.backbone_layers import BACKBONE_FEATURES, unknown_layer_message

    backbone = cfg.model.get("backbone")
    if not isinstance(backbone, str) or backbone in BACKBONE_FEATURES:
        return
    for key in ("layers", "layer"):
        value = cfg.model.get(key)
        if not isinstance(value, str | ListConfig) or not value:
            continue
        available = list(feature_channels(backbone))
        if available and (message := unknown_layer_message(f"model.{key}", value, backbone, available)):
            raise ConfigError(message)


@functools.cache
def feature_channels(backbone: str) -> dict[str, int]:
    """The feature maps timm offers for ``backbone`` and their channels (built on the meta
    device: no memory, no weights, no random draw); empty when timm does not know it (the
    model's build then says so)."""
    import timm

    try:
        with torch.device("meta"):
            extractor = timm.create_model(backbone, pretrained=False, features_only=True)
    except Exception:  # noqa: BLE001 - not a timm CNN: nothing to check here
        return {}
    return {info["module"]: info["num_chs"] for info in extractor.feature_info.info}


def model_arguments(cfg: DictConfig) -> dict[str, Any]:
    """Arguments the model gets on top of ``cfg.model``: PaDiM's ``n_features`` where the config
    leaves it null and anomalib has no default the layers can give (:mod:`quadra_ad.models.padim`)."""
    model = cfg.model
    backbone, layers = model.get("backbone"), model.get("layers")
    if not str(model.get("_target_", "")).endswith(".Padim") or not isinstance(backbone, str):
        return {}
    if not isinstance(layers, ListConfig | list) or not layers:
        return {}
    channels = feature_channels(backbone)
    if not channels or any(layer not in channels for layer in layers):
        return {}  # not a timm CNN, or layers anomalib refuses in its own words
    from quadra_ad.models.padim import padim_n_features

    layers = [str(layer) for layer in layers]
    n_features = padim_n_features(model.get("n_features"), backbone, layers, sum(channels[k] for k in layers))
    return {} if n_features is None else {"n_features": n_features}


def _build_model(cfg: DictConfig) -> torch.nn.Module:
    check_backbone_layers(cfg)
    arguments = model_arguments(cfg)
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
        model = instantiate_node(cfg, "model", pre_trained=False, _convert_="all", **arguments)
        load_backbone_state(model, state, str(name), f"backbone.packaged_weights={packaged}")
        return model
    if weights_file:
        # Local weights replace the download entirely.
        model = instantiate_node(cfg, "model", pre_trained=False, _convert_="all", **arguments)
        load_backbone_weights(model, weights_file, str(name))
        return model
    offline = pre_trained and not hub_reachable()
    if offline:
        log.warning("%s is not reachable: looking for %s weights in the local cache only", HUB_HOST, name)
    try:
        with hub_offline() if offline else nullcontext():
            if not pre_trained and not has_switch:
                from quadra_ad.models.offline import random_backbone_weights

                with random_backbone_weights():
                    return instantiate_node(cfg, "model", _convert_="all", **arguments)
            # Plain lists, not ListConfig: Lightning checkpoints must load with weights_only=True.
            return instantiate_node(cfg, "model", _convert_="all", **arguments)
    except ConfigError:
        raise  # already one line naming the key (a model's own check)
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
