"""Dataset preflight: check a folder before anything heavy is imported, every problem at once.

The folder layout is scanned first (a layout that does not fit is one line, as always; what it
lists but cannot use is collected, see :mod:`quadra_ad.datamodules.layout`). Then every image
and mask header is read, in parallel threads: empty, unreadable or corrupt files, images too
large (a decompression bomb) or too small (:func:`quadra_ad.deploy.images.size_problem`, the
rule every reader applies), masks of another size than their image, masks that are blank for a
defect image or set for a good one, a region-of-interest mask or crop box that does not fit an
image, too few training images. Nothing is opened before ``os.stat`` says it is a regular file,
so a named pipe never blocks the check. Headers (and the masks' pixels) are enough to find
these, so a folder of thousands of images is checked in seconds; a file whose header is fine but
whose data fails to decode later still gets the one line the image reader gives it.

All problems come back in one line (the first ones named, the rest counted), raised before the
run starts: no torch, no anomalib, no run folder. The training datamodule runs the same check, so
the Python API refuses the same folders."""

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from quadra_ad.datamodules.layout import (
    AnomalyLayout,
    Sample,
    entry_problem,
    problems_line,
    relative_to_root,
    scan_anomaly_folder,
    split_validation,
)
from quadra_ad.deploy.images import size_problem
from quadra_ad.errors import DatasetError

#: Fewer training images than this cannot fit a model (PaDiM's covariance, BatchNorm statistics).
MIN_TRAIN_IMAGES = 2


@dataclass(frozen=True)
class _Header:
    path: Path
    size: tuple[int, int] | None  # (height, width); None when the file cannot be used
    problem: str | None = None
    #: Masks only: True when no pixel is set (None for images, or when unread).
    blank: bool | None = None


@contextmanager
def _sizes_judged_by_our_rule() -> Iterator[None]:
    """Pillow refuses (or warns about) large headers by a limit of its own; ``size_problem`` is the one
    rule, so Pillow's check is off while the headers are read (and its error never reaches a user)."""
    from PIL import Image

    saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _pillow_size(path: Path) -> tuple[int, int] | None:
    """(height, width) from the header, None when Pillow cannot read it; OSError when the file cannot be opened."""
    from PIL import Image, UnidentifiedImageError

    with path.open("rb") as handle:
        try:
            with Image.open(handle) as image:
                width, height = image.size
            return height, width
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError,
                Image.DecompressionBombError, Image.DecompressionBombWarning):  # the latter outside _sizes_judged_by_our_rule
            return None


def _opencv_size(path: Path) -> tuple[int, int] | None:
    """Pillow does not know every variant OpenCV reads: decode the file before calling it bad."""
    import cv2
    import numpy as np

    try:
        array = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except (OSError, cv2.error):
        array = None
    return None if array is None else (int(array.shape[0]), int(array.shape[1]))


def _read_header(path: Path, is_mask: bool = False) -> _Header:
    problem = entry_problem(path)  # before opening: a named pipe would block the read forever
    if problem:
        return _Header(path, None, problem)
    try:
        if path.stat().st_size == 0:
            return _Header(path, None, "is empty (0 bytes)")
        size = _pillow_size(path) or _opencv_size(path)
    except OSError as error:
        return _Header(path, None, f"cannot be read ({error.strerror})")
    if size is None:
        return _Header(path, None, "is not an image, or is corrupt")
    problem = size_problem(size[1], size[0])
    if problem:
        return _Header(path, None, problem)
    if not is_mask:
        return _Header(path, size)
    from quadra_ad.deploy.images import read_mask_array

    try:
        return _Header(path, size, blank=not bool(read_mask_array(path).any()))
    except DatasetError:
        return _Header(path, None, "is not an image, or is corrupt")


def _problems(layout: AnomalyLayout, samples: list[Sample], headers: dict[Path, _Header], roi: _Header | None,
              crop_area: Sequence[int] | None) -> list[str]:
    root = layout.root
    problems = list(layout.problems)
    problems += [f"'{relative_to_root(h.path, root)}' {h.problem}" for h in headers.values() if h.problem]
    for sample in samples:
        size = headers[sample.image_path].size
        if size is None:
            continue
        if sample.mask_path is not None:
            problems += _mask_problems(sample, size, headers[sample.mask_path], root)
        if roi is not None and roi.size is not None and roi.size != size:
            problems.append(f"datamodule.valid_area_mask is {roi.size[1]}x{roi.size[0]} but "
                            f"'{relative_to_root(sample.image_path, root)}' is {size[1]}x{size[0]} (WxH)")
        if crop_area is not None:
            x1, y1, x2, y2 = crop_area
            if not (0 <= x1 < x2 <= size[1] and 0 <= y1 < y2 <= size[0]):
                problems.append(f"datamodule.crop_area {list(crop_area)} lies outside "
                                f"'{relative_to_root(sample.image_path, root)}' ({size[1]}x{size[0]} WxH)")
    return problems


def _mask_problems(sample: Sample, size: tuple[int, int], mask: _Header, root: Path) -> list[str]:
    """A mask that does not fit its image, or says the opposite of its image's folder."""
    name, image = relative_to_root(sample.mask_path, root), relative_to_root(sample.image_path, root)
    if mask.size is None:
        return []
    if mask.size != size:
        return [f"mask '{name}' is {mask.size[1]}x{mask.size[0]} but its image is {size[1]}x{size[0]} (WxH)"]
    if sample.label == 1 and mask.blank:
        return [f"mask '{name}' is all zero, so its image '{image}' has no defect pixel: draw the defect in the mask, "
                f"or move the image to {image.split('/', 1)[0]}/good"]
    if sample.label == 0 and not mask.blank:
        return [f"mask '{name}' marks defect pixels but its image '{image}' is a good one: empty the mask or move "
                f"the image to a defect folder"]
    return []


def _unique_samples(layout: AnomalyLayout) -> list[Sample]:
    """Every image once: ``from_test`` moved some test images into ``layout.val``; ``val`` may repeat ``test``."""
    samples = {s.image_path: s for s in (*layout.train, *layout.test, *layout.unknown, *layout.val_folder, *layout.val)}
    return list(samples.values())


def check_dataset(data_path: str | Path, phase: str = "train", mask_suffix: str = "_mask",
                  valid_area_mask: str | Path | None = None, crop_area: Sequence[int] | None = None,
                  threads: int = 8, val_split: str = "auto", val_fraction: float = 0.3, val_seed: int = 0,
                  min_train_images: int = MIN_TRAIN_IMAGES) -> AnomalyLayout:
    """Scan and check the folder; raise one DatasetError naming every problem found, or return its layout."""
    if crop_area is not None and len(crop_area) != 4:
        raise DatasetError(f"datamodule.crop_area must be [x1, y1, x2, y2], got {list(crop_area)}")
    layout = scan_anomaly_folder(data_path, mask_suffix, phase)
    if phase == "train" and not layout.problems:  # the listing's problems first: they can explain the split's
        split_validation(layout, val_split, val_fraction, val_seed)
    samples = _unique_samples(layout)
    masks = {s.mask_path for s in samples if s.mask_path is not None}
    with _sizes_judged_by_our_rule(), ThreadPoolExecutor(max_workers=threads) as pool:
        headers = {h.path: h for h in pool.map(_read_header, [s.image_path for s in samples])}
        headers.update({h.path: h for h in pool.map(lambda path: _read_header(path, is_mask=True), sorted(masks))})
        roi = _valid_area_header(valid_area_mask)
    problems = _problems(layout, samples, headers, roi, crop_area)
    if phase == "train" and len(layout.train) < min_train_images:
        problems.insert(0, f"train/good holds {len(layout.train)} image; at least {min_train_images} are needed to fit a model")
    if problems:
        raise DatasetError(problems_line(layout.root, problems))
    return layout


def _valid_area_header(valid_area_mask: str | Path | None) -> _Header | None:
    """The region-of-interest mask's header; a file that cannot be one is its own line (it is not in the folder)."""
    if not valid_area_mask:
        return None
    roi_path = Path(valid_area_mask).expanduser()
    roi = _read_header(roi_path, is_mask=True)
    if roi.problem:
        raise DatasetError(f"datamodule.valid_area_mask '{roi_path}' {roi.problem}")
    if roi.blank:
        raise DatasetError(f"datamodule.valid_area_mask '{roi_path}' is all zero, so no pixel would be looked at: "
                           f"mark the area to inspect with non-zero pixels")
    return roi
