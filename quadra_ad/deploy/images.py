"""Images as NumPy arrays, without torch: any bit depth and channel count in, float RGB in [0, 1] out.

The one reader of image files: training (through :mod:`quadra_ad.datamodules.images`) and the
:class:`~quadra_ad.deploy.predictor.Predictor` on a line PC both read files here. 8- and
16-bit, grayscale, RGB and RGBA are read with their real dynamic range (a 16-bit PNG is scaled
by 65535, not clipped to 8 bits); alpha is dropped.
"""

from pathlib import Path

import cv2
import numpy as np

from quadra_ad.errors import DatasetError

#: Largest image read, in pixels (width x height): 2^28 = 268 M pixels, 16384 x 16384. A bigger
#: file (or a "decompression bomb": a few KB of PNG that decode to gigabytes) is refused from its
#: header, before any pixel is decoded; as float RGB it would need over 3 GB.
MAX_IMAGE_PIXELS = 1 << 28
#: Smallest image side accepted: a model cannot see a defect in fewer pixels.
MIN_IMAGE_SIDE = 4

#: File endings treated as images; anything else in a folder (``.DS_Store``, ``Thumbs.db``) is ignored.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


def is_image_file(path: Path) -> bool:
    """True for visible files with an image ending."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


def size_problem(width: int, height: int) -> str | None:
    """Why an image of ``width`` x ``height`` pixels cannot be used, or None when it can."""
    if width * height > MAX_IMAGE_PIXELS:
        return (f"is {width}x{height} pixels (WxH), over the {MAX_IMAGE_PIXELS:,} pixels an image may have "
                f"(a decompression bomb, or a scan to tile first)")
    if min(width, height) < MIN_IMAGE_SIDE:
        return f"is {width}x{height} pixels (WxH); images must be at least {MIN_IMAGE_SIDE} pixels on each side"
    return None


def read_raw(path: str | Path) -> np.ndarray:
    """The file's pixels as stored (BGR order, any dtype); one DatasetError line when unreadable."""
    # cv2.imread does not accept every non-ASCII path; decoding the bytes does.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise DatasetError(f"cannot read image file '{path}': {error.strerror}") from None
    return decode_image(data, f"image file '{path}'")


def decode_image(data: bytes | np.ndarray, source: str) -> np.ndarray:
    """An encoded image file's bytes (PNG, JPEG, TIFF …) as stored pixels (BGR order, any dtype)."""
    buffer = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    if array is None:
        raise DatasetError(f"cannot read {source}: it is empty, corrupt or not an image")
    return array


def to_unit_rgb(array: np.ndarray, bgr: bool, source: str = "the image") -> np.ndarray:
    """``array`` (H×W, H×W×1/3/4; uint8, uint16 or float) as float32 H×W×3 RGB in [0, 1].

    ``bgr``: the channels are in OpenCV's order (files); False for RGB arrays (PIL, users).
    """
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        array = array.astype(np.float32) / 65535.0
    elif array.dtype in (np.float16, np.float32, np.float64):
        array = np.clip(array.astype(np.float32), 0.0, 1.0)
    else:
        raise DatasetError(f"cannot read {source}: unsupported pixel type {array.dtype} (uint8, uint16 or float)")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3:
        raise DatasetError(f"cannot read {source}: shape {array.shape}, expected H×W or H×W×C")
    if array.shape[2] not in (1, 3, 4):
        raise DatasetError(f"cannot read {source}: {array.shape[2]} channels, expected 1, 3 or 4")
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(array)


def read_image_array(path: str | Path) -> np.ndarray:
    """An image file as float32 H×W×3 RGB in [0, 1]."""
    return to_unit_rgb(read_raw(path), bgr=True, source=f"image file '{path}'")


def read_mask_array(path: str | Path) -> np.ndarray:
    """A mask file as bool H×W: any non-zero pixel is set."""
    array = read_raw(path)
    if array.ndim == 3:
        array = array[:, :, :3].max(axis=2) if array.shape[2] >= 3 else array[:, :, 0]
    return array > 0
