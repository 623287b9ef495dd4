"""Scan an MVTec-style folder into labelled samples.

::

    <root>/train/good/*.png                         normal training images
    <root>/test/good/*.png                          normal test images
    <root>/test/<defect>/*.png                      anomalous test images, one folder per defect
    <root>/test/unknown/*.png                       optional: unlabelled, predicted but never scored
    <root>/ground_truth/<defect>/<stem><suffix>.png optional masks (suffix ``_mask`` by default)

When ``ground_truth/`` is absent the task is classification: there are no pixel metrics.
"""

from dataclasses import dataclass, field
from pathlib import Path

from quadra_ad.datamodules.images import is_image_file
from quadra_ad.errors import DatasetError

GOOD = "good"
UNKNOWN = "unknown"
LAYOUT_HINT = "expected train/good, test/good, test/<defect>/ and optionally ground_truth/<defect>/"


@dataclass(frozen=True)
class Sample:
    """One image: ``label`` is 0 (good), 1 (anomalous) or None (unknown)."""

    image_path: Path
    label: int | None
    defect_type: str
    mask_path: Path | None = None


@dataclass
class AnomalyLayout:
    """The samples of one dataset folder, split as the folder says."""

    root: Path
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)
    unknown: list[Sample] = field(default_factory=list)
    has_masks: bool = False

    @property
    def task_type(self) -> str:
        return "segmentation" if self.has_masks else "classification"

    def fingerprint(self) -> str:
        """Short content hash of the file list (relative paths and sizes of images and masks)."""
        import hashlib

        samples = (*self.train, *self.test, *self.unknown)
        files = [s.image_path for s in samples] + [s.mask_path for s in samples if s.mask_path is not None]
        digest = hashlib.sha256()
        for path in sorted(files):
            digest.update(f"{path.relative_to(self.root).as_posix()}:{path.stat().st_size}\n".encode())
        return digest.hexdigest()[:16]


def list_categories(root: str | Path) -> list[str]:
    """The category folders under ``root`` (an MVTec-style collection): those holding ``train/good``."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    return sorted(child.name for child in root.iterdir()
                  if not child.name.startswith(".") and (child / "train" / "good").is_dir())


def category_folder(data_path: str | Path, category: str | None) -> Path:
    """``data_path`` itself, or its ``category`` subfolder (``datamodule.category``)."""
    data_path = Path(data_path).expanduser()
    if category is None or str(category) == "":
        return data_path
    folder = data_path / str(category)
    if not folder.is_dir():
        known = list_categories(data_path)
        hint = f"categories there: {', '.join(known)}" if known else "no category folders (holding train/good) there"
        raise DatasetError(f"datamodule.category '{category}': no folder '{folder}' ({hint})")
    return folder


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def _require_folder(root: Path, relative: str) -> Path:
    folder = root / relative
    if not folder.is_dir():
        raise DatasetError(f"datamodule.data_path '{root}' does not follow the layout: missing folder '{relative}' ({LAYOUT_HINT})")
    return folder


def _find_mask(root: Path, defect: str, image: Path, mask_suffix: str) -> Path | None:
    folder = root / "ground_truth" / defect
    for suffix in (".png", image.suffix, ".bmp", ".tif", ".tiff", ".jpg"):
        candidate = folder / f"{image.stem}{mask_suffix}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def scan_anomaly_folder(root: str | Path, mask_suffix: str = "_mask", phase: str = "train") -> AnomalyLayout:
    """Read the folder layout; raise DatasetError naming the first thing that does not fit.

    ``phase="train"`` needs ``train/good`` and ``test``; ``phase="test"`` (inference) only ``test``.
    """
    if phase not in ("train", "test"):
        raise DatasetError(f"datamodule.phase must be 'train' or 'test', got '{phase}'")
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"datamodule.data_path '{root}' does not exist: point it at your dataset folder")
    if not root.is_dir():
        raise DatasetError(f"datamodule.data_path '{root}' is a file, not a folder ({LAYOUT_HINT})")
    root = root.resolve()
    layout = AnomalyLayout(root=root, has_masks=(root / "ground_truth").is_dir())

    if phase == "train":
        train_good = _require_folder(root, "train/good")
        layout.train = [Sample(p, 0, GOOD) for p in _images_in(train_good)]
        if not layout.train:
            raise DatasetError(f"datamodule.data_path: '{train_good}' holds no images; put the normal training images there")

    test_root = _require_folder(root, "test")
    for folder in sorted(p for p in test_root.iterdir() if p.is_dir()):
        images = _images_in(folder)
        if folder.name == UNKNOWN:
            layout.unknown = [Sample(p, None, UNKNOWN) for p in images]
            continue
        label = 0 if folder.name == GOOD else 1
        for image in images:
            mask = _find_mask(root, folder.name, image, mask_suffix) if layout.has_masks else None
            if layout.has_masks and label == 1 and mask is None:
                expected = Path("ground_truth") / folder.name / f"{image.stem}{mask_suffix}.png"
                raise DatasetError(
                    f"missing mask '{expected}' for '{image.relative_to(root)}': add it, or set "
                    f"datamodule.mask_suffix if your masks are named differently"
                )
            layout.test.append(Sample(image, label, folder.name, mask))
    if not layout.test and not layout.unknown:
        raise DatasetError(f"datamodule.data_path: '{test_root}' holds no images in test/good, test/<defect>/ or test/unknown/")
    return layout
