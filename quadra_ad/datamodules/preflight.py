"""Dataset preflight: check a folder before anything heavy is imported, every problem at once.

The folder layout is scanned first (a layout that does not fit is one line, as always). Then
every image and mask header is read, in parallel threads: empty, unreadable or corrupt files,
masks of another size than their image, a region-of-interest mask or crop box that does not fit
an image, too few training images. Headers are enough to find these, so a folder of thousands
of images is checked in seconds; a file whose header is fine but whose data fails to decode
later still gets the one line the image reader gives it.

All problems come back in one line (the first ones named, the rest counted), raised before the
run starts: no torch, no anomalib, no run folder.
"""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from quadra_ad.datamodules.layout import AnomalyLayout, scan_anomaly_folder, split_validation
from quadra_ad.errors import DatasetError

#: Fewer training images than this cannot fit a model (PaDiM's covariance, BatchNorm statistics).
MIN_TRAIN_IMAGES = 2
#: Problems named in the message; the others are counted.
SHOWN_PROBLEMS = 8


@dataclass(frozen=True)
class _Header:
    path: Path
    size: tuple[int, int] | None  # (height, width); None when the file cannot be read
    problem: str | None = None


def _read_header(path: Path) -> _Header:
    try:
        if path.stat().st_size == 0:
            return _Header(path, None, "is empty (0 bytes)")
    except OSError as error:
        return _Header(path, None, f"cannot be read ({error.strerror})")
    try:
        from PIL import Image, UnidentifiedImageError

        with Image.open(path) as image:
            width, height = image.size
        return _Header(path, (height, width))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        pass
    # Pillow does not know every variant OpenCV reads: decode the file before calling it bad.
    import cv2
    import numpy as np

    try:
        array = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except (OSError, cv2.error):
        array = None
    if array is None:
        return _Header(path, None, "is not an image, or is corrupt")
    return _Header(path, (int(array.shape[0]), int(array.shape[1])))


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _problems(layout: AnomalyLayout, headers: dict[Path, _Header], roi: _Header | None,
              crop_area: Sequence[int] | None) -> list[str]:
    root = layout.root
    problems = [f"'{_relative(h.path, root)}' {h.problem}" for h in headers.values() if h.problem]
    for sample in (*layout.train, *layout.test, *layout.unknown):
        size = headers[sample.image_path].size
        if size is None:
            continue
        if sample.mask_path is not None:
            mask_size = headers[sample.mask_path].size
            if mask_size is not None and mask_size != size:
                problems.append(f"mask '{_relative(sample.mask_path, root)}' is {mask_size[1]}x{mask_size[0]} but its "
                                f"image is {size[1]}x{size[0]} (WxH)")
        if roi is not None and roi.size is not None and roi.size != size:
            problems.append(f"datamodule.valid_area_mask is {roi.size[1]}x{roi.size[0]} but "
                            f"'{_relative(sample.image_path, root)}' is {size[1]}x{size[0]} (WxH)")
        if crop_area is not None:
            x1, y1, x2, y2 = crop_area
            if not (0 <= x1 < x2 <= size[1] and 0 <= y1 < y2 <= size[0]):
                problems.append(f"datamodule.crop_area {list(crop_area)} lies outside "
                                f"'{_relative(sample.image_path, root)}' ({size[1]}x{size[0]} WxH)")
    return problems


def check_dataset(data_path: str | Path, phase: str = "train", mask_suffix: str = "_mask",
                  valid_area_mask: str | Path | None = None, crop_area: Sequence[int] | None = None,
                  threads: int = 8, val_split: str = "auto") -> AnomalyLayout:
    """Scan and check the folder; raise one DatasetError naming every problem found, or return its layout."""
    layout = scan_anomaly_folder(data_path, mask_suffix, phase)
    if phase == "train":
        split_validation(layout, val_split)
    files = [s.image_path for s in (*layout.train, *layout.test, *layout.unknown, *layout.val_folder)]
    files += [s.mask_path for s in (*layout.test, *layout.val_folder) if s.mask_path is not None]
    with ThreadPoolExecutor(max_workers=threads) as pool:
        headers = {h.path: h for h in pool.map(_read_header, files)}
    roi = None
    if valid_area_mask:
        roi_path = Path(valid_area_mask).expanduser()
        if not roi_path.is_file():
            raise DatasetError(f"datamodule.valid_area_mask '{roi_path}' does not exist")
        roi = _read_header(roi_path)
        if roi.problem:
            raise DatasetError(f"datamodule.valid_area_mask '{roi_path}' {roi.problem}")
    problems = _problems(layout, headers, roi, crop_area)
    if phase == "train" and len(layout.train) < MIN_TRAIN_IMAGES:
        problems.insert(0, f"train/good holds {len(layout.train)} image; at least {MIN_TRAIN_IMAGES} are needed to fit a model")
    if problems:
        shown = "; ".join(problems[:SHOWN_PROBLEMS])
        more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
        count = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}"
        raise DatasetError(f"datamodule.data_path '{layout.root}': {count}: {shown}{more}")
    return layout
