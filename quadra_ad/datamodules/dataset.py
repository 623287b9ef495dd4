"""A map-style dataset over :class:`~quadra_ad.datamodules.layout.Sample` items.

Items are anomalib ``ImageItem`` objects so anomalib models consume them unchanged. Images are
resized and normalised here, not inside the model: the exported graph then takes exactly
what ``model.json`` describes (input size, mean, std).
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from anomalib.data import ImageItem
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F
from torchvision.tv_tensors import Image, Mask

from quadra_ad.datamodules.images import read_image, read_mask
from quadra_ad.datamodules.layout import Sample
from quadra_ad.errors import DatasetError


class ImagePreparation:
    """Valid-area masking, cropping, resizing and normalisation, in that order.

    Args:
        image_size: (height, width) the model sees.
        mean, std: per-channel normalisation applied after scaling to [0, 1].
        valid_area_mask: optional binary image; pixels outside it are set to 0 in images and masks.
        crop_area: optional ``[x1, y1, x2, y2]`` box cut from every image and mask before resizing.
    """

    def __init__(
        self,
        image_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        valid_area_mask: str | Path | None = None,
        crop_area: Sequence[int] | None = None,
    ) -> None:
        self.image_size = [int(s) for s in image_size]
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.valid_area = read_mask(Path(valid_area_mask).expanduser()) if valid_area_mask else None
        if crop_area is not None and len(crop_area) != 4:
            raise DatasetError(f"datamodule.crop_area must be [x1, y1, x2, y2], got {list(crop_area)}")
        self.crop_area = [int(c) for c in crop_area] if crop_area is not None else None

    def _mask_and_crop(self, tensor: torch.Tensor, path: Path) -> torch.Tensor:
        if self.valid_area is not None:
            if tuple(self.valid_area.shape) != tuple(tensor.shape[-2:]):
                raise DatasetError(
                    f"datamodule.valid_area_mask is {tuple(self.valid_area.shape)} (HxW) but '{path}' is "
                    f"{tuple(tensor.shape[-2:])}: they must have the same size"
                )
            tensor = tensor * self.valid_area.to(tensor.dtype)
        if self.crop_area is not None:
            x1, y1, x2, y2 = self.crop_area
            height, width = tensor.shape[-2:]
            if not (0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                raise DatasetError(f"datamodule.crop_area {self.crop_area} lies outside '{path}' ({width}x{height} WxH)")
            tensor = tensor[..., y1:y2, x1:x2]
        return tensor

    def image(self, image: torch.Tensor, path: Path) -> torch.Tensor:
        return F.normalize(self.display_image(image, path), self.mean, self.std)

    def display_image(self, image: torch.Tensor, path: Path) -> torch.Tensor:
        """The image as the model sees it, before normalisation (values in [0, 1])."""
        image = self._mask_and_crop(image, path)
        return F.resize(image, self.image_size, antialias=True)

    def region_size(self, image: torch.Tensor, path: Path) -> tuple[int, int]:
        """(height, width) of the part of the original image the model looks at."""
        return tuple(self._mask_and_crop(image[:1], path).shape[-2:])

    def mask(self, mask: torch.Tensor, path: Path) -> torch.Tensor:
        mask = self._mask_and_crop(mask.to(torch.uint8), path)
        mask = F.resize(mask[None], self.image_size, interpolation=F.InterpolationMode.NEAREST)[0]
        return mask


class AnomalyDataset(Dataset):
    """Reads samples; gives masks (zeros for good images) only when ``with_masks``."""

    def __init__(self, samples: Sequence[Sample], preparation: ImagePreparation, with_masks: bool,
                 augmentation=None) -> None:
        self.samples = list(samples)
        self.preparation = preparation
        self.with_masks = with_masks
        #: Train-time augmentation (float RGB H×W×3 in, same out), applied before the preparation.
        self.augmentation = augmentation

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> ImageItem:
        sample = self.samples[index]
        raw_image = read_image(sample.image_path)
        if self.augmentation is not None:
            raw_image = torch.from_numpy(np.ascontiguousarray(
                self.augmentation(raw_image.permute(1, 2, 0).numpy()).transpose(2, 0, 1)))
        image = self.preparation.image(raw_image, sample.image_path)
        gt_mask = None
        if self.with_masks and sample.label is not None:
            if sample.mask_path is not None:
                raw_mask = read_mask(sample.mask_path)
                if tuple(raw_mask.shape) != tuple(raw_image.shape[-2:]):
                    raise DatasetError(
                        f"mask '{sample.mask_path}' is {tuple(raw_mask.shape)} (HxW) but its image "
                        f"'{sample.image_path}' is {tuple(raw_image.shape[-2:])}: they must have the same size"
                    )
            else:
                raw_mask = torch.zeros(raw_image.shape[-2:], dtype=torch.bool)
            gt_mask = Mask(self.preparation.mask(raw_mask, sample.mask_path or sample.image_path).bool())
        return ImageItem(
            image=Image(image),
            gt_label=torch.tensor(sample.label) if sample.label is not None else None,
            gt_mask=gt_mask,
            image_path=str(sample.image_path),
            # Never None: anomalib's collate drops a key that is None on a batch's first item.
            mask_path=str(sample.mask_path) if sample.mask_path else "",
        )
