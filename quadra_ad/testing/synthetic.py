"""A synthetic MVTec-style dataset: textured "good" parts and parts with blob defects.

For tests, benchmarks and trying quadra-ad without data (``scripts/make_synthetic_dataset.py``).
Deterministic for a given seed.
"""

from pathlib import Path

import cv2
import numpy as np


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth, slightly varying texture: stripes plus low-frequency noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.2 * np.sin(xx / size * 6 * np.pi + phase)
    noise = cv2.GaussianBlur(rng.normal(0, 0.08, (size, size)).astype(np.float32), (0, 0), size / 16)
    base = np.clip(stripes + noise + rng.normal(0, 0.01, (size, size)), 0, 1)
    tint = np.array([0.9, 1.0, 0.8], dtype=np.float32) * rng.uniform(0.95, 1.05)
    return np.clip(base[:, :, None] * tint, 0, 1)


def add_defect(rng: np.random.Generator, image: np.ndarray, contrast: float) -> tuple[np.ndarray, np.ndarray]:
    """``image`` with an elliptic blob moved by ``contrast`` in brightness, and the blob's mask."""
    size = image.shape[0]
    mask = np.zeros((size, size), dtype=np.uint8)
    center = tuple(int(c) for c in rng.integers(size // 5, size - size // 5, 2))
    axes = tuple(int(a) for a in rng.integers(max(2, size // 16), max(3, size // 7), 2))
    cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
    sign = rng.choice([-1.0, 1.0])
    defective = image.copy()
    defective[mask > 0] = np.clip(defective[mask > 0] + sign * contrast, 0, 1)
    return defective, mask


def _save(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 3:
        image = cv2.cvtColor((image * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(path), image)


def write_synthetic_dataset(
    root: str | Path,
    n_train: int = 20,
    n_test_good: int = 8,
    n_test_defect: int = 8,
    size: int = 64,
    seed: int = 0,
    with_masks: bool = True,
    defect_types: tuple[str, ...] = ("blob",),
    n_unknown: int = 0,
    defect_contrast: float = 0.45,
) -> Path:
    """Write ``root/{train/good,test/good,test/<defect>,ground_truth/<defect>}`` and return root.

    ``defect_contrast`` is how far defect pixels move from the texture (0-1): small values make
    defects hard to see, so metrics are not all 1.0.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        _save(root / "train" / "good" / f"{i:03d}.png", texture(rng, size))
    for i in range(n_test_good):
        _save(root / "test" / "good" / f"{i:03d}.png", texture(rng, size))
    for defect in defect_types:
        for i in range(n_test_defect):
            image, mask = add_defect(rng, texture(rng, size), defect_contrast)
            _save(root / "test" / defect / f"{i:03d}.png", image)
            if with_masks:
                _save(root / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    for i in range(n_unknown):
        image = texture(rng, size) if i % 2 else add_defect(rng, texture(rng, size), defect_contrast)[0]
        _save(root / "test" / "unknown" / f"{i:03d}.png", image)
    return root
