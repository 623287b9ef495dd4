"""DigitsAnomalyDataModule: the offline demo dataset.

scikit-learn ships the 8×8 UCI handwritten digits inside its wheel, so this works on a machine
with no internet. The images are upscaled to 32×32 and written as the same MVTec-style layout as
MNIST (one digit good, the rest anomalous).
"""

import cv2
import numpy as np

from quadra_ad.datamodules.digits_layout import OneDigitNormalDataModule

_SIDE = 32


def load_digits_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Bundled digits as uint8 32×32 images, split 70/30 into train and test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.stack(
        [cv2.resize((img * (255.0 / 16.0)).astype(np.uint8), (_SIDE, _SIDE), interpolation=cv2.INTER_CUBIC) for img in bunch.images]
    )
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    cut = int(0.7 * len(order))
    train, test = order[:cut], order[cut:]
    return images[train], labels[train], images[test], labels[test]


class DigitsAnomalyDataModule(OneDigitNormalDataModule):
    """The offline demo: scikit-learn's digits, ``good_number`` normal and the rest anomalous."""

    def load_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return load_digits_arrays()
