"""MNISTAnomalyDataModule: one MNIST digit is normal, the others are anomalies.

Reads MNIST's IDX files from ``data_path`` (``data_path``, ``data_path/raw`` or
``data_path/MNIST/raw``, gzipped or not). When they are missing it downloads them with
torchvision; offline with no copy it fails with one line saying where to put the files.
"""

import gzip
import logging
from pathlib import Path

import numpy as np

from quadra_ad.datamodules.digits_layout import OneDigitNormalDataModule
from quadra_ad.errors import DatasetError

log = logging.getLogger(__name__)

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), plain or gzipped."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as error:
        raise DatasetError(f"cannot read MNIST file '{path}': {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"'{path}' is not an IDX file: delete it and let quadra-ad fetch MNIST again")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - offset < expected:
        raise DatasetError(f"MNIST file '{path}' is truncated: delete it and let quadra-ad fetch MNIST again")
    return np.frombuffer(data, dtype=dtype, count=int(np.prod(shape)), offset=offset).reshape(shape)


def find_mnist_files(data_path: Path) -> dict[str, Path] | None:
    """Locate the four IDX files under ``data_path``; None when any is missing."""
    for folder in (data_path, data_path / "raw", data_path / "MNIST" / "raw"):
        found = {}
        for key, stem in MNIST_FILES.items():
            for candidate in (folder / stem, folder / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(MNIST_FILES):
            return found
    return None


def download_mnist(data_path: Path) -> None:
    """Fetch MNIST into ``data_path/MNIST/raw`` with torchvision (needs internet)."""
    from torchvision.datasets import MNIST

    MNIST(root=str(data_path), train=True, download=True)
    MNIST(root=str(data_path), train=False, download=True)


class MNISTAnomalyDataModule(OneDigitNormalDataModule):
    """MNIST as an anomaly-detection folder (``good_number`` normal, other digits anomalous)."""

    def _mnist_files(self) -> dict[str, Path]:
        files = find_mnist_files(self.data_path)
        if files is not None:
            return files
        log.info("MNIST not found under %s: downloading it", self.data_path)
        try:
            download_mnist(self.data_path)
        except Exception as error:  # noqa: BLE001 - any network failure means the same thing here
            raise DatasetError(
                f"MNIST is not in datamodule.data_path '{self.data_path}' and could not be downloaded "
                f"({type(error).__name__}); put {', '.join(f + '.gz' for f in MNIST_FILES.values())} in "
                f"'{self.data_path / 'MNIST' / 'raw'}', or run the offline demo: "
                f"quadra-ad experiment=generic/digits/anomaly/padim"
            ) from None
        files = find_mnist_files(self.data_path)
        if files is None:
            raise DatasetError(f"MNIST download into '{self.data_path}' left no IDX files; remove the folder and retry")
        return files

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        files = self._mnist_files()
        arrays = {key: read_idx(path) for key, path in files.items()}
        return arrays["train_images"], arrays["train_labels"], arrays["test_images"], arrays["test_labels"]
