"""Scan an MVTec-style folder into labelled samples.

::

    <root>/train/good/*.png                         normal training images
    <root>/test/good/*.png                          normal test images
    <root>/test/<defect>/*.png                      anomalous test images, one folder per defect
    <root>/test/unknown/*.png                       optional: unlabelled, predicted but never scored
    <root>/ground_truth/<defect>/<stem><suffix>.png optional masks (suffix ``_mask`` by default)
    <root>/val/good, <root>/val/<defect>/           optional validation images (thresholds are set on them)

When ``ground_truth/`` is absent the task is classification: there are no pixel metrics.
:func:`split_validation` decides which images set the thresholds (``datamodule.val_split``).
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
    #: Labelled images of ``val/`` (empty without that folder).
    val_folder: list[Sample] = field(default_factory=list)
    #: The images thresholds are set on (see :func:`split_validation`), and how they were chosen.
    val: list[Sample] = field(default_factory=list)
    val_source: str = ""

    @property
    def task_type(self) -> str:
        return "segmentation" if self.has_masks else "classification"

    def fingerprint(self) -> str:
        """Short content hash of the file list (relative paths and sizes of images and masks)."""
        import hashlib

        samples = (*self.train, *self.test, *self.unknown, *self.val_folder)
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


def _scan_labelled(root: Path, split_root: Path, mask_suffix: str, has_masks: bool) -> tuple[list[Sample], list[Sample]]:
    """``<split>/good`` and ``<split>/<defect>/`` as labelled samples (with their masks), and ``<split>/unknown``."""
    labelled, unknown = [], []
    for folder in sorted(p for p in split_root.iterdir() if p.is_dir()):
        images = _images_in(folder)
        if folder.name == UNKNOWN:
            unknown = [Sample(p, None, UNKNOWN) for p in images]
            continue
        label = 0 if folder.name == GOOD else 1
        for image in images:
            mask = _find_mask(root, folder.name, image, mask_suffix) if has_masks else None
            if has_masks and label == 1 and mask is None:
                expected = Path("ground_truth") / folder.name / f"{image.stem}{mask_suffix}.png"
                raise DatasetError(
                    f"missing mask '{expected}' for '{image.relative_to(root)}': add it, or set "
                    f"datamodule.mask_suffix if your masks are named differently"
                )
            labelled.append(Sample(image, label, folder.name, mask))
    return labelled, unknown


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
    layout.test, layout.unknown = _scan_labelled(root, test_root, mask_suffix, layout.has_masks)
    if (root / "val").is_dir():
        layout.val_folder, _ = _scan_labelled(root, root / "val", mask_suffix, layout.has_masks)
    if not layout.test and not layout.unknown:
        raise DatasetError(f"datamodule.data_path: '{test_root}' holds no images in test/good, test/<defect>/ or test/unknown/")
    return layout


#: ``datamodule.val_split``: where the images that set the thresholds come from.
VAL_SPLITS = ("auto", "same_as_test", "from_test", "folder")


def split_validation(layout: AnomalyLayout, val_split: str = "auto", fraction: float = 0.3, seed: int = 0) -> AnomalyLayout:
    """Choose ``layout.val`` (and ``val_source``, saying how) as ``val_split`` says.

    ``same_as_test``: the test images themselves (Quadra's behaviour without a validation set: the
    reported metrics are then tuned on the images they score). ``from_test``: a seeded fraction of
    each test class, taken out of the test split so it is not scored. ``folder``: ``val/good`` and
    ``val/<defect>/``. ``auto``: ``folder`` when ``val/`` holds images, else ``same_as_test``.
    """
    if val_split not in VAL_SPLITS:
        raise DatasetError(f"datamodule.val_split={val_split!r}: choose one of {', '.join(VAL_SPLITS)}")
    if val_split == "auto":
        val_split = "folder" if layout.val_folder else "same_as_test"
    if val_split == "folder":
        if not layout.val_folder:
            raise DatasetError(f"datamodule.val_split=folder but '{layout.root / 'val'}' holds no images in val/good or "
                               f"val/<defect>/; add them, or use datamodule.val_split=from_test")
        layout.val = list(layout.val_folder)
        layout.val_source = f"folder: val/ ({_counts(layout.val)})"
    elif val_split == "from_test":
        layout.val, layout.test = _stratified_split(layout.test, fraction, seed)
        layout.val_source = (f"from_test: {_counts(layout.val)} taken from test/ (fraction {fraction:g}, seed {seed}), "
                             f"not scored")
    else:
        layout.val = list(layout.test)
        layout.val_source = f"same_as_test: the test images ({_counts(layout.val)}), also scored"
    return layout


def _counts(samples: list[Sample]) -> str:
    anomalous = sum(1 for s in samples if s.label == 1)
    return f"{len(samples)} images, {anomalous} anomalous"


def _stratified_split(samples: list[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(validation, rest): ``fraction`` of each label, at least one, never a whole class, chosen by ``seed``."""
    import random

    chooser = random.Random(seed)
    chosen: set[Path] = set()
    for label in (0, 1):
        group = sorted((s for s in samples if s.label == label), key=lambda s: str(s.image_path))
        if len(group) < 2:
            continue
        count = min(len(group) - 1, max(1, round(fraction * len(group))))
        chosen.update(s.image_path for s in chooser.sample(group, count))
    return [s for s in samples if s.image_path in chosen], [s for s in samples if s.image_path not in chosen]
