"""The one image reader: any bit depth and channel count in, float RGB in [0, 1] out.

8- and 16-bit, grayscale, RGB and RGBA files are all read with their real dynamic range
(a 16-bit PNG is scaled by 65535, not clipped to 8 bits); alpha is dropped.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from quadra_ad.errors import DatasetError

if TYPE_CHECKING:
    import torch

#: File endings treated as images; anything else in a folder (``.DS_Store``, ``Thumbs.db``) is ignored.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


def is_image_file(path: Path) -> bool:
    """True for visible files with an image ending."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def _read_raw(path: Path) -> np.ndarray:
    # cv2.imread does not accept every non-ASCII path; decoding the bytes does.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise DatasetError(f"cannot read image file '{path}': {error.strerror}") from None
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None:
        raise DatasetError(f"cannot read image file '{path}': it is empty, corrupt or not an image")
    return array


def _to_unit_float(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16:
        return array.astype(np.float32) / 65535.0
    if array.dtype in (np.float32, np.float64):
        return np.clip(array.astype(np.float32), 0.0, 1.0)
    raise DatasetError(f"cannot read image file '{path}': unsupported pixel type {array.dtype}")


def read_image(path: str | Path) -> "torch.Tensor":
    """Read an image as a float32 tensor of shape (3, H, W) with values in [0, 1]."""
    import torch  # here, not at the top: the dataset preflight reads files without torch

    path = Path(path)
    array = _to_unit_float(_read_raw(path), path)
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    elif array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    elif array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGB)
    elif array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    else:
        raise DatasetError(f"cannot read image file '{path}': {array.shape[2]} channels, expected 1, 3 or 4")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def read_mask(path: str | Path) -> "torch.Tensor":
    """Read a mask as a bool tensor of shape (H, W): any non-zero pixel is anomalous."""
    import torch

    path = Path(path)
    array = _read_raw(path)
    if array.ndim == 3:
        array = array[:, :, :3].max(axis=2) if array.shape[2] >= 3 else array[:, :, 0]
    return torch.from_numpy(array > 0)


def image_size_of(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file."""
    array = _read_raw(Path(path))
    return int(array.shape[0]), int(array.shape[1])
