"""Images as NumPy arrays, without torch: any bit depth and channel count in, float RGB in [0, 1] out.

The one reader of image files: training (through :mod:`quadra_ad.datamodules.images`) and the
:class:`~quadra_ad.deploy.predictor.Predictor` on a line PC both read files here. 8- and
16-bit, grayscale, RGB and RGBA are read with their real dynamic range (a 16-bit PNG is scaled
by 65535, not clipped to 8 bits); alpha is dropped.

The one rule for pixels, whatever carries them (a file, encoded bytes, a PIL image, an array):

- shape H×W (grey) or H×W×C with C = 1, 3 or 4 (grey, RGB, RGB + alpha): the channels come last;
- at least :data:`MIN_IMAGE_SIDE` pixels a side and at most :data:`MAX_IMAGE_PIXELS` pixels;
- values by type: uint8 0-255, uint16 0-65535, bool (True is white), other integer types 0-255
  (taken as 8-bit; cast 16-bit pixels to uint16), float 0-1 (finite; 0-255 floats are refused,
  not clipped to white).

Anything else is one :class:`~quadra_ad.errors.DatasetError` line saying what was found and the fix.
"""

import io
import os
import stat
import threading
from pathlib import Path

import cv2
import numpy as np

from quadra_ad.errors import DatasetError
from quadra_ad.files import file_kind

#: Largest image read, in pixels (width x height): 2^28 = 268 M pixels, 16384 x 16384. A bigger
#: file (or a "decompression bomb": a few KB of PNG that decode to gigabytes) is refused from its
#: header, before any pixel is decoded; as float RGB it would need over 3 GB.
MAX_IMAGE_PIXELS = 1 << 28
#: Smallest image side accepted: a model cannot see a defect in fewer pixels.
MIN_IMAGE_SIDE = 4
#: The channel counts of one image (grey, RGB, RGB + alpha), on its last axis.
IMAGE_CHANNELS = (1, 3, 4)
#: How far float pixels may stray outside [0, 1] (rounding in a resize or a colour conversion)
#: before they are refused rather than clipped: a quarter of an 8-bit step.
FLOAT_TOLERANCE = 1e-3

#: File endings treated as images; anything else in a folder (``.DS_Store``, ``Thumbs.db``) is ignored.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})

# Pillow's own bomb limit is a process-wide setting: it is set aside only while one header is read.
_PILLOW_LIMIT_LOCK = threading.Lock()


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


def shape_problem(shape: tuple[int, ...]) -> str | None:
    """Why an array of ``shape`` is not one image (H×W or H×W×C, C = 1, 3 or 4), or None when it is."""
    if len(shape) == 2 or (len(shape) == 3 and shape[2] in IMAGE_CHANNELS):
        return None
    if len(shape) != 3:
        return f"has shape {shape} ({len(shape)}-D); one image is H×W or H×W×C with C = 1, 3 or 4"
    if shape[0] in IMAGE_CHANNELS:
        return (f"has shape {shape}, which looks channels-first (C×H×W); the channels come last: "
                f"pass array.transpose(1, 2, 0)")
    return (f"has {shape[2]} channels (shape {shape}); give 1, 3 or 4 channels on the last axis "
            f"(N grey images are a batch N×H×W×1: array[..., None])")


def read_raw(path: str | Path) -> np.ndarray:
    """The file's pixels as stored (BGR order, any dtype); one DatasetError line when unreadable.

    Only a regular file is opened (a named pipe would block the read forever), and its size is
    checked from its header before any pixel is decoded.
    """
    source = f"image file '{path}'"
    _check_regular_file(path, source)
    _check_header(str(path), source)
    # cv2.imread does not accept every non-ASCII path; decoding the bytes does.
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as error:
        raise DatasetError(f"cannot read {source}: {error.strerror}") from None
    return _decode(data, source)


def decode_image(data: bytes | bytearray | memoryview | np.ndarray, source: str) -> np.ndarray:
    """An encoded image file's bytes (PNG, JPEG, TIFF …) as stored pixels (BGR order, any dtype)."""
    try:
        buffer = data.reshape(-1).view(np.uint8) if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError):
        raise DatasetError(f"cannot read {source}: its bytes are not one contiguous buffer; pass bytes(data)") from None
    if buffer.size:
        _check_header(io.BytesIO(buffer.tobytes()), source)
    return _decode(buffer, source)


def _check_regular_file(path: str | Path, source: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise DatasetError(f"cannot read {source}: {error.strerror}") from None
    except ValueError as error:  # a NUL byte in the path
        raise DatasetError(f"cannot read {source}: {error}") from None
    if not stat.S_ISREG(mode):
        kind = file_kind(mode)
        raise DatasetError(f"cannot read {source}: it is {kind}, not an image file")


def _check_header(file: str | io.BytesIO, source: str) -> None:
    """Refuse an image whose header gives a size outside :func:`size_problem`'s rule, before decoding it.

    Pillow reads only the header; a format Pillow does not know is left to OpenCV's decoder
    (whose result is checked in :func:`_decode`).
    """
    from PIL import Image, UnidentifiedImageError

    with _PILLOW_LIMIT_LOCK:
        pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our rule, not Pillow's
        try:
            with Image.open(file) as image:
                width, height = image.size
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            return
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit
    problem = size_problem(width, height)
    if problem:
        raise DatasetError(f"cannot read {source}: it {problem}")


def _decode(buffer: np.ndarray, source: str) -> np.ndarray:
    try:
        array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    except cv2.error:
        array = None
    if array is None:
        raise DatasetError(f"cannot read {source}: it is empty, corrupt or not an image")
    problem = size_problem(int(array.shape[1]), int(array.shape[0]))
    if problem:
        raise DatasetError(f"cannot read {source}: it {problem}")
    return array


def to_unit_rgb(array: np.ndarray, bgr: bool, source: str = "the image") -> np.ndarray:
    """``array`` (one image, per the module's rule) as float32 H×W×3 RGB in [0, 1].

    ``bgr``: the channels are in OpenCV's order (files); False for RGB arrays (PIL, users).
    """
    problem = shape_problem(array.shape)
    if problem is None:
        problem = size_problem(int(array.shape[1]), int(array.shape[0]))
    if problem:
        raise DatasetError(f"cannot read {source}: it {problem}")
    array = _unit_values(array, source)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.shape[2] == 1:
        return np.repeat(array, 3, axis=2)
    if array.shape[2] == 4:
        return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB if bgr else cv2.COLOR_RGBA2RGB)
    return cv2.cvtColor(array, cv2.COLOR_BGR2RGB) if bgr else np.ascontiguousarray(array)


def _unit_values(array: np.ndarray, source: str) -> np.ndarray:
    """The pixel values as float32 in [0, 1], by the module's rule for each type."""
    kind, dtype = array.dtype.kind, array.dtype
    if kind == "b":
        return array.astype(np.float32)
    if kind == "u" and dtype.itemsize <= 2:  # uint8, uint16 in either byte order
        return array.astype(np.float32) / np.float32(255.0 if dtype.itemsize == 1 else 65535.0)
    if kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            fix = "pass array.astype(np.uint16) for 16-bit pixels" if low >= 0 and high <= 65535 else "scale them into 0-255"
            raise DatasetError(f"cannot read {source}: {dtype} pixel values are taken as 8-bit and must lie in 0-255, "
                               f"found {low} to {high}; {fix}")
        return array.astype(np.float32) / np.float32(255.0)
    if kind == "f":
        return _unit_floats(array, source)
    raise DatasetError(f"cannot read {source}: unsupported pixel type {dtype} (give uint8, uint16 or float in [0, 1])")


def _unit_floats(array: np.ndarray, source: str) -> np.ndarray:
    array = array.astype(np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        raise DatasetError(f"cannot read {source}: {array.size - int(finite.sum())} of its {array.size} values are "
                           f"NaN or infinite; an image must hold finite pixel values")
    low, high = float(array.min()), float(array.max())
    if low < -FLOAT_TOLERANCE or high > 1.0 + FLOAT_TOLERANCE:
        if low < -FLOAT_TOLERANCE:
            fix = "scale them into [0, 1] (an already normalised image? give it unnormalised: the model normalises)"
        elif high <= 255.0:
            fix = "they look 8-bit: divide by 255"
        elif high <= 65535.0:
            fix = "they look 16-bit: divide by 65535"
        else:
            fix = "scale them into [0, 1]"
        raise DatasetError(f"cannot read {source}: float pixel values must lie in [0, 1], found {low:g} to {high:g}; {fix}")
    return np.clip(array, 0.0, 1.0)


def read_image_array(path: str | Path) -> np.ndarray:
    """An image file as float32 H×W×3 RGB in [0, 1]."""
    return to_unit_rgb(read_raw(path), bgr=True, source=f"image file '{path}'")


def read_mask_array(path: str | Path) -> np.ndarray:
    """A mask file as bool H×W: any non-zero pixel is set."""
    array = read_raw(path)
    if array.ndim == 3:
        array = array[:, :, :3].max(axis=2) if array.shape[2] >= 3 else array[:, :, 0]
    return array > 0
