"""Backbone weights from a local file or a package, loaded into a model's timm feature extractors.

:func:`check_backbone_weights_file` runs before the run starts, without torch: the file must be
a regular file (a FIFO or a device is refused without being opened) holding a whole PyTorch
archive or safetensors file. Loading then refuses a file that fits the backbone only in part,
which would otherwise train on a mix of loaded and random weights.
"""

from __future__ import annotations

import json
import logging
import stat
import struct
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from quadra_ad.errors import ConfigError, first_line

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

KEY = "backbone.weights_file"
WHAT_IT_TAKES = "a timm state dict saved with torch.save (.pth/.pt) or safetensors"
#: BatchNorm's step counters: not weights, and often left out of converted checkpoints.
NOT_WEIGHTS = ("num_batches_tracked",)


def weights_file_kind(path: Path) -> str:
    """``torch`` (zip archive), ``torch-legacy`` (pickle) or ``safetensors``; ConfigError for a
    file that is none of them or is cut short. Reads the header and the directory, not the tensors."""
    where = f"{KEY} '{path}'"
    try:
        info = path.stat()
    except OSError as error:
        raise ConfigError(f"{where} cannot be read ({error.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{where} is a folder: give the weights file in it ({WHAT_IT_TAKES})")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"{where} is not a regular file (a pipe, socket or device): give {WHAT_IT_TAKES}")
    if info.st_size == 0:
        raise ConfigError(f"{where} is empty (0 bytes): give {WHAT_IT_TAKES}")
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
            if head.startswith(b"PK\x03\x04"):
                return _torch_archive_kind(path, where)
            if head[:1] == b"\x80":
                return "torch-legacy"  # torch.save(..., _use_new_zipfile_serialization=False)
            return _safetensors_kind(handle, head, info.st_size, where)
    except OSError as error:
        raise ConfigError(f"{where} cannot be read ({error.strerror})") from None


def _torch_archive_kind(path: Path, where: str) -> str:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise ConfigError(f"{where} is a truncated or damaged archive: copy the file again") from None
    if not any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        raise ConfigError(f"{where} is a zip archive but not a PyTorch file: give {WHAT_IT_TAKES}")
    return "torch"


def _safetensors_kind(handle, head: bytes, size: int, where: str) -> str:
    not_weights = ConfigError(f"{where} is not a PyTorch or safetensors file (text, or another format): "
                              f"give {WHAT_IT_TAKES}")
    if len(head) < 8:
        raise not_weights
    (header_size,) = struct.unpack("<Q", head)
    if header_size > 100 * 2**20 or handle.read(1) != b"{":
        raise not_weights
    if 8 + header_size > size:
        raise ConfigError(f"{where} is truncated ({size} bytes, its header alone says {8 + header_size}): copy it again")
    try:
        header = json.loads(b"{" + handle.read(header_size - 1))
    except (ValueError, UnicodeDecodeError):
        raise not_weights from None
    ends = [entry["data_offsets"][1] for name, entry in header.items()
            if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry]
    if ends and 8 + header_size + max(ends) > size:
        raise ConfigError(f"{where} is truncated ({size} bytes, its tensors need {8 + header_size + max(ends)}): "
                          f"copy it again")
    return "safetensors"


def check_backbone_weights_file(cfg: DictConfig) -> None:
    """The weights file a run names, checked before anything is imported or built."""
    value = OmegaConf.select(cfg, KEY, throw_on_missing=False)
    if value is None:
        return
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{KEY}={value!r}: give the path of {WHAT_IT_TAKES}, or null")
    path = Path(value).expanduser()
    if not path.exists() and not path.is_symlink():
        raise ConfigError(f"{KEY} '{path}' does not exist")
    weights_file_kind(path)


def _state_dict_from_file(path: Path) -> dict[str, torch.Tensor]:
    kind = weights_file_kind(path)
    try:
        if kind == "safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        loaded: Any = torch.load(str(path), map_location="cpu", weights_only=True)
    except ConfigError:
        raise
    except Exception as error:  # a file torch cannot read is the user's file at fault
        raise ConfigError(f"{KEY} '{path}' cannot be loaded as {WHAT_IT_TAKES} ({first_line(error)})") from error
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise ConfigError(f"{KEY} '{path}' does not hold a state dict")
    return loaded


def load_backbone_weights(model: torch.nn.Module, weights_file: str | Path, backbone_name: str) -> int:
    """Load a timm state dict from a local file into every timm feature extractor of ``model``.

    Returns the number of tensors loaded; raises ConfigError unless every weight of the backbone
    the model uses is in the file.
    """
    path = Path(weights_file).expanduser()
    if not path.exists():
        raise ConfigError(f"{KEY} '{path}' does not exist")
    return load_backbone_state(model, _state_dict_from_file(path), backbone_name, f"{KEY} '{path}'")


def load_backbone_state(model: torch.nn.Module, state: dict[str, torch.Tensor], backbone_name: str, source: str) -> int:
    """Copy a timm state dict into every timm feature extractor of ``model``; all or nothing."""
    from anomalib.models.components.feature_extractors import TimmFeatureExtractor

    extractors = [m for m in model.modules() if isinstance(m, TimmFeatureExtractor)]
    if not extractors:
        raise ConfigError(f"{source} is set but {type(model).__name__} has no timm backbone to load it into")
    loaded = 0
    for extractor in extractors:
        target = extractor.feature_extractor.state_dict()
        weights = [k for k in target if not k.endswith(NOT_WEIGHTS)]
        matching = {k: v for k, v in state.items() if k in target and target[k].shape == v.shape}
        fitting = sum(1 for k in weights if k in matching)
        if fitting < len(weights):
            # A partial fit would train on a mix of loaded and random weights, with no sign of it.
            kind = "no tensors" if fitting == 0 else f"{fitting} of the {len(weights)} tensors"
            raise ConfigError(
                f"{source} has {kind} that fit backbone '{backbone_name}' (by name and shape): "
                f"give a timm state dict of that architecture, or set backbone.name to the one the file is for")
        extractor.feature_extractor.load_state_dict(matching, strict=False)
        loaded += len(matching)
    log.info("Loaded %d backbone tensors from %s", loaded, source)
    return loaded
