"""Helpers for the datamodule tests: tiny images, masks and IDX files written to disk.

Nothing here downloads anything or touches the network; every image is at most 32x32.
"""

import gzip
import struct
from pathlib import Path

import cv2
import numpy as np

SIDE = 16


def write_image(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` with OpenCV (so 3-channel arrays are BGR, 4-channel BGRA)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), f"could not write test image {path}"
    return path


def random_image(rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    return rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)


def square_mask(side: int = SIDE) -> np.ndarray:
    mask = np.zeros((side, side), dtype=np.uint8)
    mask[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = 255
    return mask


def assert_one_line(error: BaseException) -> str:
    """Errors for users are a single line; return the message for further checks."""
    message = str(error)
    assert message, "error message is empty"
    assert "\n" not in message, f"error message spans several lines: {message!r}"
    return message


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in the IDX format used by MNIST.

    Two zero bytes, the dtype byte (0x08 = uint8), the number of dimensions, each dimension as a
    big-endian uint32, then the raw data.
    """
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gzipped: bool) -> Path:
    """Write ``array`` as IDX to ``path`` (``path`` + ``.gz`` when gzipped); return the file written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = idx_bytes(array)
    if gzipped:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def fake_mnist_arrays(n: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random 28x28 uint8 images with labels cycling 0..9."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 10).astype(np.uint8)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    return images, labels
