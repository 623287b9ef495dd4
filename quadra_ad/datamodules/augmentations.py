"""Train-time augmentations with albumentations 2.0 (MIT; its successor AlbumentationsX is AGPL
and not used): ``transforms.train_augmentations``, a list of ``_target_: albumentations.X`` nodes,
applied to the training images only, before the deterministic preparation (region of interest,
crop, resize, normalisation) that the model card carries to inference.

An augmentation must keep the image's size: cropping and resizing belong to ``datamodule.crop_area``
and ``transforms.input_size``, which inference repeats. Each entry is checked before training.
"""

import difflib
import inspect
import os
import re
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from quadra_ad.errors import ConfigError

KEY = "transforms.train_augmentations"
EXAMPLE = "{_target_: albumentations.HorizontalFlip, p: 0.5}"


class TrainAugmentation:
    """Callable on a float32 H×W×3 RGB array in [0, 1]; returns one of the same shape and range."""

    def __init__(self, transforms: Sequence[Any]) -> None:
        import albumentations as A

        for index, transform in enumerate(transforms):
            if not isinstance(transform, A.BasicTransform | A.BaseCompose):
                raise ConfigError(f"{KEY}[{index}] is a {type(transform).__module__}.{type(transform).__name__}, not an "
                                  f"albumentations transform; use _target_: albumentations.<Transform>")
        self.transforms = list(transforms)
        self.names = [type(t).__name__ for t in transforms]
        self.pipeline = A.Compose(self.transforms)

    def check_keeps_size(self, height: int, width: int, trials: int = 8) -> None:
        """Refuse an entry that changes an image of this size (each applied for sure, several draws)."""
        import copy

        import albumentations as A

        probe = np.random.default_rng(0).random((height, width, 3), dtype=np.float32)
        for index, transform in enumerate(self.transforms):
            certain = copy.deepcopy(transform)
            certain.p = 1.0
            for seed in range(trials):
                out = A.Compose([certain], seed=seed)(image=probe)["image"]
                if out.shape != probe.shape:
                    raise ConfigError(
                        f"{KEY}[{index}] albumentations.{type(transform).__name__} changes the size of the training "
                        f"images ({width}x{height} -> {out.shape[1]}x{out.shape[0]}): crops and resizes belong in "
                        f"datamodule.crop_area and transforms.input_size, which inference repeats")

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = self.pipeline(image=np.ascontiguousarray(image, dtype=np.float32))["image"]
        return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)

    def __repr__(self) -> str:
        return f"TrainAugmentation({', '.join(self.names)})"


def build_train_augmentation(transforms: Sequence[Any] | None) -> TrainAugmentation | None:
    """None when there is nothing to apply; albumentations is imported only when there is."""
    if not transforms:
        return None
    try:
        import albumentations  # noqa: F401 - only to tell whether it is installed
    except ImportError:
        raise ConfigError(f"{KEY} needs albumentations: pip install 'albumentations>=2.0,<2.1'") from None
    return TrainAugmentation(list(transforms))


def import_albumentations_for_checks():
    """albumentations without its optional ``albumentations.pytorch`` part, which imports torch
    (seconds) although the checks before a run need none of it; and without its update check,
    which waits on the network. The training imports it whole later (``ToTensorV2`` excepted)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    if "albumentations" in sys.modules or "torch" in sys.modules:
        import albumentations

        return albumentations
    sys.modules["albumentations.pytorch"] = None  # its package __init__ skips it on ImportError
    try:
        import albumentations
    finally:
        del sys.modules["albumentations.pytorch"]
    return albumentations


def augmentations_key(cfg: DictConfig) -> str:
    """Where the user wrote the list: the transforms group, unless the datamodule's own key was set."""
    datamodule = cfg.get("datamodule")
    if isinstance(datamodule, DictConfig) and "train_augmentations" in datamodule and not OmegaConf.is_interpolation(
            datamodule, "train_augmentations"):
        return "datamodule.train_augmentations"
    return KEY


def check_augmentations(cfg: DictConfig) -> None:
    """Refuse, in one line naming the entry, an augmentation the training could not build or
    that would silently ignore an argument: checked before anything is trained."""
    key = augmentations_key(cfg)
    entries = OmegaConf.select(cfg, key, throw_on_missing=False)
    if entries is None:
        return
    if not isinstance(entries, ListConfig):
        raise ConfigError(f"{key}={_shown(entries)}: give a list of transforms such as [{EXAMPLE}], or [] for none")
    if len(entries) == 0:
        return
    albumentations = import_albumentations_for_checks()
    for index, entry in enumerate(entries):
        _check_entry(albumentations, entry, f"{key}[{index}]")


def _shown(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value)
    return repr(value)


def _check_entry(albumentations, entry: Any, where: str) -> None:
    if not isinstance(entry, DictConfig) or "_target_" not in entry:
        raise ConfigError(f"{where} is {_shown(entry)}, not a transform: write it as {EXAMPLE}")
    target = entry._target_
    transform_class = _transform_class(albumentations, target, where)
    _check_arguments(transform_class, [str(k) for k in entry if not str(k).startswith("_")], where, target)
    children = entry.get("transforms") if issubclass(transform_class, albumentations.BaseCompose) else None
    if isinstance(children, ListConfig):
        for index, child in enumerate(children):
            _check_entry(albumentations, child, f"{where}.transforms[{index}]")
    from hydra.utils import instantiate

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            instantiate(entry)
    except Exception as error:  # whatever the constructor refuses, the value is at fault
        cause = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise ConfigError(f"{where} {target}: {_constructor_complaint(cause)}") from error
    # albumentations replaces some values it cannot use ("Range automatically adjusted") with a
    # UserWarning: the training would then run with other values than the user wrote.
    adjusted = [w for w in caught if w.category is UserWarning]
    if adjusted:
        raise ConfigError(f"{where} {target}: {str(adjusted[0].message).splitlines()[0]}")


def _transform_names(albumentations) -> list[str]:
    kinds = (albumentations.BasicTransform, albumentations.BaseCompose)
    return sorted(name for name in dir(albumentations)
                  if isinstance(getattr(albumentations, name), type) and issubclass(getattr(albumentations, name), kinds))


def _transform_class(albumentations, target: Any, where: str) -> type:
    kinds = (albumentations.BasicTransform, albumentations.BaseCompose)
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{where}._target_={target!r}: give a class path such as albumentations.HorizontalFlip")
    module, _, name = target.rpartition(".")
    if module == "albumentations" or module.startswith("albumentations."):
        found = getattr(albumentations, name, None)
        if not (isinstance(found, type) and issubclass(found, kinds)):
            close = difflib.get_close_matches(name, _transform_names(albumentations), n=1, cutoff=0.6)
            hint = f"did you mean albumentations.{close[0]}?" if close else "see the albumentations 2.0 docs for the names"
            raise ConfigError(f"{where}._target_: albumentations has no transform '{name}': {hint}")
        return found
    import importlib

    try:
        found = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(f"{where}._target_: cannot import '{target}'; use albumentations.<Transform>") from None
    if not (isinstance(found, type) and issubclass(found, kinds)):
        raise ConfigError(f"{where}._target_: {target} is not an albumentations transform; use albumentations.<Transform>")
    return found


def _check_arguments(transform_class: type, names: list[str], where: str, target: str) -> None:
    parameters = inspect.signature(transform_class.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    known = [name for name in parameters if name != "self"]
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.4)  # short names: prob → p
            hint = f"did you mean {close[0]}? " if close else ""
            # albumentations only warns and drops an unknown argument: the user's setting would do nothing.
            raise ConfigError(f"{where}.{name}: {target} has no argument '{name}'; {hint}it takes {', '.join(known)}")


def _constructor_complaint(error: BaseException) -> str:
    """albumentations 2 validates its arguments with pydantic: ``field: message`` for each, on one line."""
    lines = str(error).splitlines()
    if len(lines) < 3 or "validation error" not in lines[0]:
        return " ".join(line.strip() for line in lines if line.strip()) or type(error).__name__
    complaints, field = [], None
    for line in lines[1:]:
        if not line.startswith(" "):
            field = line.strip()
        elif field is not None and not line.strip().startswith("For further information"):
            message = re.sub(r"\s*\[type=.*$", "", line.strip()).removeprefix("Value error, ")
            complaints.append(f"{field}: {message}")
            field = None
    return "; ".join(complaints) or lines[0]
