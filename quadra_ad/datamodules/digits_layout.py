"""Write a digit dataset (MNIST, scikit-learn digits) as an MVTec-style anomaly folder.

One digit is "good"; every other digit is a defect type with its own ``test/<digit>/`` folder.
Following Quadra, good images get empty masks and anomalous ones full masks, so the
pixel-level code path is exercised even though digits have no localised defects.
"""

import logging
from pathlib import Path

import cv2
import numpy as np

from quadra_ad.datamodules.anomaly import AnomalyDataModule
from quadra_ad.errors import DatasetError
from quadra_ad.files import write_text

log = logging.getLogger(__name__)

_DONE_MARKER = ".complete"


def _take(rng: np.random.Generator, indices: np.ndarray, limit: int | None) -> np.ndarray:
    if limit is None or len(indices) <= limit:
        return indices
    return np.sort(rng.choice(indices, size=limit, replace=False))


def _write(folder: Path, name: str, image: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / name), image)


def write_digit_anomaly_folder(
    root: Path,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    good_number: int,
    limit_data: int | None,
    seed: int = 0,
) -> Path:
    """Write the layout under ``root`` (once; a finished folder is reused) and return ``root``.

    ``limit_data`` caps train/good and test/good at that many images each; the anomalous test
    images share the same budget, split evenly over the other digits with at least one per digit
    (so a tiny ``limit_data`` still shows every defect type).
    """
    if (root / _DONE_MARKER).is_file():
        return root
    rng = np.random.default_rng(seed)
    train_good = _take(rng, np.flatnonzero(train_labels == good_number), limit_data)
    test_good = _take(rng, np.flatnonzero(test_labels == good_number), limit_data)
    others = sorted(int(d) for d in np.unique(test_labels) if d != good_number)
    per_digit = None if limit_data is None else max(1, limit_data // max(1, len(others)))
    log.info("Writing the digit anomaly layout (good=%d) to %s", good_number, root)

    for i in train_good:
        _write(root / "train" / "good", f"{i:05d}.png", train_images[i])
    for i in test_good:
        _write(root / "test" / "good", f"{i:05d}.png", test_images[i])
        _write(root / "ground_truth" / "good", f"{i:05d}_mask.png", np.zeros_like(test_images[i]))
    for digit in others:
        for i in _take(rng, np.flatnonzero(test_labels == digit), per_digit):
            _write(root / "test" / str(digit), f"{i:05d}.png", test_images[i])
            _write(root / "ground_truth" / str(digit), f"{i:05d}_mask.png", np.full_like(test_images[i], 255))
    write_text(root / _DONE_MARKER, "written by quadra_ad\n")
    return root


class OneDigitNormalDataModule(AnomalyDataModule):
    """Base for datamodules that generate their folder from a digit dataset.

    Args:
        data_path: where the source files are and where the layout is written.
        good_number: the digit treated as normal.
        limit_data: at most this many images in train/good and test/good; anomalous test images
            share the same budget over the other digits, at least one each.
        Other arguments as :class:`AnomalyDataModule`.
    """

    def __init__(self, data_path: str | Path, good_number: int = 9, limit_data: int | None = 100, **kwargs) -> None:
        super().__init__(data_path=data_path, **kwargs)
        if not 0 <= int(good_number) <= 9:
            raise DatasetError(f"datamodule.good_number must be a digit 0-9, got {good_number}")
        self.good_number = int(good_number)
        self.limit_data = limit_data

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return (train_images, train_labels, test_images, test_labels) as uint8 images and ints."""
        raise NotImplementedError

    def dataset_root(self) -> Path:
        root = self.data_path / f"anomaly_good{self.good_number}_limit{self.limit_data}"
        if (root / _DONE_MARKER).is_file():
            return root
        return write_digit_anomaly_folder(root, *self.load_arrays(), self.good_number, self.limit_data)
