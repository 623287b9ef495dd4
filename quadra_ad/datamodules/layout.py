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

Anything in the folder that would silently change what is trained or scored is a problem named
in :attr:`AnomalyLayout.problems` (the dataset preflight reports them all in one line): an entry
with an image ending that is not a readable file (a named pipe, a folder, a symbolic link that
loops or points nowhere), an image in a format we do not read, images outside the class folders,
a class folder without images, ``test/Good`` for ``test/good``, masks without an image, masks in
a folder named other than ``ground_truth``. Hidden files and files with other endings (notes,
``Thumbs.db``) are ignored.
"""

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from quadra_ad.datamodules.images import IMAGE_SUFFIXES
from quadra_ad.errors import DatasetError
from quadra_ad.files import file_kind

GOOD = "good"
UNKNOWN = "unknown"
LAYOUT_HINT = "expected train/good, test/good, test/<defect>/ and optionally ground_truth/<defect>/"
GROUND_TRUTH = "ground_truth"
#: Image formats users have that we do not read: named, not silently skipped.
UNREAD_IMAGE_SUFFIXES = frozenset({".gif", ".heic", ".heif", ".avif", ".jfif", ".jxl", ".svg", ".dng", ".cr2",
                                   ".nef", ".arw", ".raw"})
#: Folder names meant as ``ground_truth`` (the masks would be ignored under them).
MASK_FOLDER_ALIASES = frozenset({"gt", "groundtruth", "ground-truth", "ground truth", "masks", "mask"})


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
    #: What in the folder cannot be used as it is, one phrase each, paths relative to ``root``.
    problems: list[str] = field(default_factory=list)
    #: Class folders holding no image, one phrase each (added to ``problems`` once the scan is done).
    empty_folders: list[str] = field(default_factory=list)

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


#: Problems named in a message; the others are counted.
SHOWN_PROBLEMS = 8


def problems_line(root: Path, problems: list[str]) -> str:
    """Every problem of a dataset folder in one line: the first :data:`SHOWN_PROBLEMS` named, the rest counted."""
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
    count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
    return f"datamodule.data_path '{root}': {count}: {shown}{more}"


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


def entry_problem(path: Path, expected: str = "file") -> str | None:
    """Why ``path`` is not a readable regular file (or folder, with ``expected="folder"``); None when it is.

    From ``os.stat`` alone, so a named pipe or a device is never opened (opening one waits forever).
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "is a symbolic link that loops back on itself"
        if path.is_symlink():
            return f"is a symbolic link to '{os.readlink(path)}', which does not exist"
        if error.errno == errno.ENOENT:
            return "does not exist"
        return f"cannot be read ({error.strerror})"
    if expected == "folder":
        return None if stat.S_ISDIR(mode) else f"is {file_kind(mode)}, not a folder"
    if stat.S_ISREG(mode):
        return None if os.access(path, os.R_OK) else "cannot be read (permission denied)"
    return f"is {file_kind(mode)}, not an image file"


def relative_to_root(path: Path, root: Path) -> str:
    """``path`` as the user sees it inside the dataset folder (the full path when outside it)."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _images_in(folder: Path, layout: AnomalyLayout, empty_is_a_problem: bool = True) -> list[Path]:
    """The image files of ``folder``; what looks like one but cannot be read goes to ``layout.problems``."""
    images, others, problems_before = [], 0, len(layout.problems)
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        where = f"'{relative_to_root(path, layout.root)}'"
        suffix = path.suffix.lower()
        if suffix in UNREAD_IMAGE_SUFFIXES:
            layout.problems.append(f"{where} is a {suffix} image, which is not read: convert it to PNG "
                                   f"(or {', '.join(sorted(IMAGE_SUFFIXES))})")
        elif suffix in IMAGE_SUFFIXES:
            problem = entry_problem(path)
            if problem:
                layout.problems.append(f"{where} {problem}")
            else:
                images.append(path)
        elif path.is_dir():
            layout.problems.append(f"{where} is a folder inside a class folder: its images are not read; move them "
                                   f"up into '{relative_to_root(folder, layout.root)}'")
        else:
            others += 1
    if empty_is_a_problem and not images and len(layout.problems) == problems_before:
        held = f" (only {others} file(s) not ending in {', '.join(sorted(IMAGE_SUFFIXES))})" if others else ""
        layout.empty_folders.append(f"'{relative_to_root(folder, layout.root)}' holds no images{held}: add them or remove the folder")
    return images


def _require_folder(root: Path, relative: str) -> Path:
    folder = root / relative
    if not folder.is_dir():
        hint = _case_variant(folder)
        hint = f"found '{hint}': folder names are case-sensitive, rename it" if hint else LAYOUT_HINT
        raise DatasetError(f"datamodule.data_path '{root}' does not follow the layout: missing folder '{relative}' ({hint})")
    return folder


def _case_variant(folder: Path) -> str | None:
    """``train/Good`` when ``train/good`` is missing: the relative name of a folder differing only in case."""
    parent = folder.parent
    if not parent.is_dir():
        return None
    for child in parent.iterdir():
        if child.name.lower() == folder.name.lower() and child.name != folder.name and child.is_dir():
            return f"{parent.name}/{child.name}"
    return None


def _find_mask(root: Path, defect: str, image: Path, mask_suffix: str) -> Path | None:
    folder = root / "ground_truth" / defect
    for suffix in (".png", image.suffix, ".bmp", ".tif", ".tiff", ".jpg"):
        candidate = folder / f"{image.stem}{mask_suffix}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _scan_labelled(layout: AnomalyLayout, split_root: Path, mask_suffix: str) -> tuple[list[Sample], list[Sample]]:
    """``<split>/good`` and ``<split>/<defect>/`` as labelled samples (with their masks), and ``<split>/unknown``."""
    root, has_masks = layout.root, layout.has_masks
    labelled, unknown = [], []
    _loose_images(layout, split_root, "good, <defect>/ or unknown/")
    for folder in sorted(p for p in split_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if folder.name.lower() in (GOOD, UNKNOWN) and folder.name not in (GOOD, UNKNOWN):
            # test/Good would be a defect type: every normal image in it labelled anomalous.
            name = relative_to_root(folder, root)
            layout.problems.append(f"'{name}' would be read as a defect type: folder names are case-sensitive, "
                                   f"rename it to '{relative_to_root(folder.with_name(folder.name.lower()), root)}'")
            continue
        images = _images_in(folder, layout)
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
    What can be listed but not used goes to ``layout.problems`` (reported by the dataset preflight).
    """
    if phase not in ("train", "test"):
        raise DatasetError(f"datamodule.phase must be 'train' or 'test', got '{phase}'")
    root = Path(root).expanduser()
    problem = entry_problem(root, expected="folder")
    if problem == "does not exist":
        raise DatasetError(f"datamodule.data_path '{root}' does not exist: point it at your dataset folder")
    if problem:
        raise DatasetError(f"datamodule.data_path '{root}' {problem} ({LAYOUT_HINT})")
    root = root.resolve()
    layout = AnomalyLayout(root=root, has_masks=(root / GROUND_TRUTH).is_dir())
    _misnamed_mask_folders(layout)

    if phase == "train":
        train_good = _require_folder(root, "train/good")
        _loose_images(layout, root / "train", "good/")
        for other in sorted(p for p in (root / "train").iterdir() if p.is_dir() and p.name != GOOD):
            if not other.name.startswith(".") and other.name.lower() != GOOD:
                layout.problems.append(f"'train/{other.name}' is not read: training uses normal images from train/good "
                                       f"only; move defect images to test/{other.name}/")
        problems_before = len(layout.problems)
        layout.train = [Sample(p, 0, GOOD) for p in _images_in(train_good, layout, empty_is_a_problem=False)]
        if not layout.train and len(layout.problems) == problems_before:
            raise DatasetError(f"datamodule.data_path: '{train_good}' holds no images; put the normal training images there")

    test_root = _require_folder(root, "test")
    layout.test, layout.unknown = _scan_labelled(layout, test_root, mask_suffix)
    if (root / "val").is_dir():
        layout.val_folder, val_unknown = _scan_labelled(layout, root / "val", mask_suffix)
        if val_unknown:
            layout.problems.append("'val/unknown' holds unlabelled images, which cannot set a threshold: move them to "
                                   "val/good or val/<defect>/, or to test/unknown/ to have them predicted")
    if not layout.test and not layout.unknown and not layout.problems:
        raise DatasetError(f"datamodule.data_path: '{test_root}' holds no images in test/good, test/<defect>/ or test/unknown/")
    if layout.has_masks:
        _masks_without_images(layout, mask_suffix)
    layout.problems += layout.empty_folders
    return layout


def _loose_images(layout: AnomalyLayout, split_root: Path, where: str) -> None:
    """Images directly in ``train/``, ``test/`` or ``val/`` belong to no class: they would be skipped."""
    loose = [p for p in sorted(split_root.iterdir()) if not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
             and not p.is_dir()]
    if loose:
        split = relative_to_root(split_root, layout.root)
        which = f"'{relative_to_root(loose[0], layout.root)}'" + (f" and {len(loose) - 1} more images lie" if len(loose) > 1 else " lies")
        layout.problems.append(f"{which} directly in {split}/, in no class folder: move them into {split}/{where}")


def _misnamed_mask_folders(layout: AnomalyLayout) -> None:
    """``GT/`` or ``Ground_Truth/`` beside train/ and test/ and no ``ground_truth/``: its masks would be ignored."""
    if layout.has_masks:
        return
    for child in sorted(layout.root.iterdir()):
        name = child.name.lower()
        if child.is_dir() and child.name != GROUND_TRUTH and (name == GROUND_TRUTH or name in MASK_FOLDER_ALIASES):
            layout.problems.append(f"'{child.name}' looks like a mask folder, but masks are read from {GROUND_TRUTH}/"
                                   f"<defect>/ only: rename it to '{GROUND_TRUTH}' (or remove it to train without masks)")


def _masks_without_images(layout: AnomalyLayout, mask_suffix: str) -> None:
    """Masks that belong to no image: a misspelt defect folder or a moved image, found now, not as a missing metric."""
    used = {s.mask_path for s in (*layout.test, *layout.val_folder) if s.mask_path is not None}
    orphans = []
    for folder in sorted(p for p in (layout.root / GROUND_TRUTH).iterdir() if p.is_dir()):
        orphans += [p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES
                    and not p.name.startswith(".") and p not in used]
    if orphans:
        first = relative_to_root(orphans[0], layout.root)
        stem = orphans[0].stem.removesuffix(mask_suffix) if mask_suffix else orphans[0].stem
        more = f" and {len(orphans) - 1} more masks belong" if len(orphans) > 1 else " belongs"
        layout.problems.append(f"mask '{first}'{more} to no image (expected an image named '{stem}.*' in "
                               f"test/{orphans[0].parent.name}/ or val/{orphans[0].parent.name}/, and masks named "
                               f"<image stem>{mask_suffix}.png)")


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
        _check_from_test(layout)
        layout.val, layout.test = _stratified_split(layout.test, fraction, seed)
        layout.val_source = (f"from_test: {_counts(layout.val)} taken from test/ (fraction {fraction:g}, seed {seed}), "
                             f"not scored")
    else:
        layout.val = list(layout.test)
        layout.val_source = f"same_as_test: the test images ({_counts(layout.val)}), also scored"
    if not any(s.label is not None for s in layout.val):
        raise DatasetError(f"datamodule.data_path '{layout.root}': no labelled test images to set thresholds on "
                           f"(test/good and test/<defect>/ hold none; the {len(layout.unknown)} in test/unknown/ have no "
                           f"label): add good and anomalous images there")
    return layout


def _check_from_test(layout: AnomalyLayout) -> None:
    """``from_test`` keeps at least one image of each class in test/: a class needs 2 images to give one.

    A class of one image would silently be left out of validation (thresholds set without it).
    """
    good = sum(1 for s in layout.test if s.label == 0)
    anomalous = sum(1 for s in layout.test if s.label == 1)
    short = [name for name, count in (("test/good", good), ("test/<defect>/", anomalous)) if count == 1]
    if good + anomalous and not short:
        return
    problem = ("none is labelled" if not good + anomalous
               else f"{' and '.join(short)} hold{'s' if len(short) == 1 else ''} only one")
    raise DatasetError(f"datamodule.val_split=from_test needs at least 2 test images of each class present (one to set "
                       f"the threshold, one to score); test/ has {good} good and {anomalous} anomalous: {problem}; add "
                       f"images, or use datamodule.val_split=same_as_test or a val/ folder")


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
