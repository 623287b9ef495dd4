"""Fixtures for the datamodule tests: tiny datasets written into ``tmp_path``."""

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

# Make the helper module importable whatever pytest's import mode (prepend, append, importlib).
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

from dm_helpers import SIDE, fake_mnist_arrays, random_image, square_mask, write_idx, write_image


@pytest.fixture
def make_anomaly_folder(tmp_path: Path) -> Callable[..., Path]:
    """Return a factory writing an MVTec-style folder under ``tmp_path`` and returning its root.

    Layout: ``train/good`` (n_train), ``test/good`` (n_test_good), ``test/<defect>`` (per
    ``defects``), optional ``test/unknown`` (n_unknown) and, with ``with_masks``,
    ``ground_truth/<defect>/<stem><mask_suffix>.png`` for each anomalous image.
    """

    def make(
        name: str = "dataset",
        n_train: int = 3,
        n_test_good: int = 2,
        defects: dict[str, int] | None = None,
        n_unknown: int = 0,
        with_masks: bool = True,
        mask_suffix: str = "_mask",
        side: int = SIDE,
        with_train: bool = True,
    ) -> Path:
        defects = {"scratch": 2} if defects is None else defects
        rng = np.random.default_rng(0)
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        if with_train:
            for i in range(n_train):
                write_image(root / "train" / "good" / f"train_{i:03d}.png", random_image(rng, side))
        for i in range(n_test_good):
            write_image(root / "test" / "good" / f"good_{i:03d}.png", random_image(rng, side))
        for defect, count in defects.items():
            for i in range(count):
                stem = f"{defect}_{i:03d}"
                write_image(root / "test" / defect / f"{stem}.png", random_image(rng, side))
                if with_masks:
                    write_image(root / "ground_truth" / defect / f"{stem}{mask_suffix}.png", square_mask(side))
        for i in range(n_unknown):
            write_image(root / "test" / "unknown" / f"unknown_{i:03d}.png", random_image(rng, side))
        return root

    return make


@pytest.fixture
def make_mnist_raw(tmp_path: Path) -> Callable[..., Path]:
    """Return a factory writing the four MNIST IDX files to ``<data_path>/MNIST/raw``.

    Both splits hold ``n`` random 28x28 images with labels cycling 0..9 (3 of each digit for n=30).
    """

    def make(data_path: Path | None = None, gzipped: bool = True, n_train: int = 30, n_test: int = 30) -> Path:
        data_path = tmp_path / "mnist" if data_path is None else data_path
        raw = data_path / "MNIST" / "raw"
        train_images, train_labels = fake_mnist_arrays(n_train, seed=1)
        test_images, test_labels = fake_mnist_arrays(n_test, seed=2)
        write_idx(raw / "train-images-idx3-ubyte", train_images, gzipped)
        write_idx(raw / "train-labels-idx1-ubyte", train_labels, gzipped)
        write_idx(raw / "t10k-images-idx3-ubyte", test_images, gzipped)
        write_idx(raw / "t10k-labels-idx1-ubyte", test_labels, gzipped)
        return data_path

    return make
