"""Images and masks as torch tensors, read by :mod:`quadra_ad.deploy.images` (the one reader).

8- and 16-bit, grayscale, RGB and RGBA files are all read with their real dynamic range
(a 16-bit PNG is scaled by 65535, not clipped to 8 bits); alpha is dropped.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from quadra_ad.deploy.images import IMAGE_SUFFIXES, is_image_file, read_image_array, read_mask_array, read_raw

if TYPE_CHECKING:
    import torch

__all__ = ["IMAGE_SUFFIXES", "image_size_of", "is_image_file", "read_image", "read_mask"]


def read_image(path: str | Path) -> "torch.Tensor":
    """Read an image as a float32 tensor of shape (3, H, W) with values in [0, 1]."""
    import torch  # here, not at the top: the dataset preflight reads files without torch

    return torch.from_numpy(np.ascontiguousarray(read_image_array(Path(path)).transpose(2, 0, 1)))


def read_mask(path: str | Path) -> "torch.Tensor":
    """Read a mask as a bool tensor of shape (H, W): any non-zero pixel is anomalous."""
    import torch

    return torch.from_numpy(read_mask_array(Path(path)))


def image_size_of(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file."""
    array = read_raw(Path(path))
    return int(array.shape[0]), int(array.shape[1])
