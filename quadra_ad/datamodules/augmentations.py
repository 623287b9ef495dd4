"""Train-time augmentations with albumentations 2.0 (MIT; its successor AlbumentationsX is AGPL
and not used): ``transforms.train_augmentations``, a list of ``_target_: albumentations.X`` nodes,
applied to the training images only, before the deterministic preparation (region of interest,
crop, resize, normalisation) that the model card carries to inference.

An augmentation must keep the image's size: cropping and resizing belong to ``datamodule.crop_area``
and ``transforms.input_size``, which inference repeats. Each entry is checked before training.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from quadra_ad.errors import ConfigError

KEY = "transforms.train_augmentations"


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
        import albumentations  # noqa: F401
    except ImportError:
        raise ConfigError(f"{KEY} needs albumentations: pip install 'albumentations>=2.0,<2.1'") from None
    return TrainAugmentation(list(transforms))
