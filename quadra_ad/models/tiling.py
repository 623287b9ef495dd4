"""Tiling: a high-resolution image cut into tiles, each scored, the maps stitched back.

``model.tiling`` (every model file has it, off by default) hands anomalib's :class:`Tiler` to
the model, as anomalib's ``TilerConfigurationCallback`` does, but when the model is built: the
tiler is then part of the forward pass that trains, tests and is exported, so the TorchScript
and ONNX graphs cut and stitch the same way. anomalib implements it for the models whose torch
model has a ``tiler`` attribute (PaDiM, PatchCore, STFPM, Reverse Distillation).

Tiles must cover the input exactly: ``tile_size <= input side`` and ``(side - tile_size)`` a
multiple of ``stride``. anomalib would otherwise pad the image, and the models that stitch
feature maps (not images) back together then misplace the padded border; such settings are
refused before training, naming the key.
"""

import copy
from typing import Any

from omegaconf import DictConfig, ListConfig, open_dict

from quadra_ad.errors import ConfigError

KEY = "model.tiling"


def _pair(value: Any, key: str) -> tuple[int, int]:
    """An int or [h, w] of positive whole numbers as (h, w); anything else is one line naming ``key``."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value, value]
    if not (isinstance(value, (list, tuple, ListConfig)) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise ConfigError(f"{key}={value!r}: give a positive whole number of pixels or [height, width]")
    return int(value[0]), int(value[1])


def tiling_settings(cfg: DictConfig) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """``(tile_size, stride)`` when ``model.tiling.enabled``, checked against ``transforms.input_size``;
    None when tiling is off. Raises ConfigError naming the key when the tiles do not fit the input."""
    tiling = cfg.model.get("tiling") if "model" in cfg else None
    if not tiling or not tiling.get("enabled", False):
        return None
    if tiling.get("enabled") is not True:
        raise ConfigError(f"{KEY}.enabled={tiling.get('enabled')!r}: give true or false")
    if tiling.get("tile_size") is None:
        raise ConfigError(f"{KEY}.tile_size is not set: give the tile side in pixels (e.g. {KEY}.tile_size=256)")
    tile = _pair(tiling.tile_size, f"{KEY}.tile_size")
    stride = tile if tiling.get("stride") is None else _pair(tiling.stride, f"{KEY}.stride")
    size = _pair(list(cfg.transforms.input_size), "transforms.input_size")
    for axis, side, tile_side, step in zip(("height", "width"), size, tile, stride, strict=True):
        if tile_side > side:
            raise ConfigError(f"{KEY}.tile_size={list(tile)} is larger than the input {axis} {side} "
                              f"(transforms.input_size={list(size)}): use tiles of at most {side} px")
        if step > tile_side:
            raise ConfigError(f"{KEY}.stride={list(stride)} is larger than the tile {axis} {tile_side}: "
                              f"tiles would leave gaps; use a stride of at most {tile_side} px")
        if (side - tile_side) % step:
            raise ConfigError(f"{KEY}: tiles of {tile_side} px every {step} px do not cover the input {axis} {side} "
                              f"exactly (transforms.input_size={list(size)}); pick {KEY}.tile_size/stride so that "
                              f"(input - tile_size) is a multiple of stride")
    return tile, stride


def without_tiling(cfg: DictConfig) -> DictConfig:
    """A copy of ``cfg`` whose model node has no ``tiling`` key (the model constructors do not take it)."""
    if "tiling" not in cfg.get("model", {}):
        return cfg
    stripped = copy.deepcopy(cfg)
    with open_dict(stripped):
        del stripped.model["tiling"]
    return stripped


def apply_tiling(model: Any, settings: tuple[tuple[int, int], tuple[int, int]]) -> None:
    """Give ``model`` anomalib's tiler; a model that cannot use one is refused in one line."""
    from anomalib.data.utils.tiler import Tiler

    torch_model = getattr(model, "model", None)
    if torch_model is None or not hasattr(torch_model, "tiler"):
        raise ConfigError(f"{KEY}.enabled=true: {type(model).__name__} does not support tiling (anomalib tiles for "
                          f"PaDiM, PatchCore, STFPM and Reverse Distillation); set {KEY}.enabled=false")
    tile, stride = settings
    torch_model.tiler = Tiler(tile_size=tile, stride=stride)
