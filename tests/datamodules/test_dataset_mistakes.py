"""Broken dataset folders: one line naming the file or key, exit code 2, before anything is trained.

A catalogue of the ways a folder goes wrong in the field (a decompression bomb, a named pipe, a
mask that says the opposite of its folder, ``test/Good`` …), each run through the real command
line (:func:`tests.cli.test_mistakes._refused`: no torch imported, no run folder left). Then the
folders that look odd but are fine, and the Python API, which refuses the same listings.
"""

import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

from quadra_ad.checks.dataset import check_dataset
from quadra_ad.errors import DatasetError
from quadra_ad.testing.synthetic import write_synthetic_dataset
from tests.cli.test_mistakes import _refused

PADIM = ("experiment=base/anomaly/padim", "backbone.pre_trained=false", "transforms.input_size=[32,32]")


def _dataset(root: Path, **counts) -> Path:
    sizes = {"n_train": 4, "n_test_good": 3, "n_test_defect": 3, "size": 32, **counts}
    return write_synthetic_dataset(root, **sizes)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png(path: Path, side: int = 20_000) -> Path:
    """A real, decodable 1-bit PNG of side x side black pixels: a few KB that decode to side² pixels.

    Written row by row through zlib, so the test never holds the decoded image.
    """
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + the packed bits of one row
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", data)
                     + _png_chunk(b"IEND", b""))
    return path


def _lying_png(path: Path) -> Path:
    """A tiny PNG whose header claims 100000 x 100000 pixels."""
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _png_chunk(b"IEND", b""))
    return path


def _gray(path: Path, height: int, width: int, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width), value, np.uint8))
    return path


def _symlink_loop(folder: Path) -> None:
    os.symlink(folder / "b.png", folder / "a.png")
    os.symlink(folder / "a.png", folder / "b.png")


def _move(data: Path, source: str, target: str) -> None:
    (data / target).parent.mkdir(parents=True, exist_ok=True)
    shutil.move(data / source, data / target)


def _only_unknown(data: Path) -> None:
    for image in [*(data / "test").glob("*/*.png")]:
        _move(data, image.relative_to(data).as_posix(), f"test/unknown/{image.parent.name}_{image.name}")
    for folder in ("good", "blob"):
        (data / "test" / folder).rmdir()
    shutil.rmtree(data / "ground_truth")


#: name -> (break the folder in place (returns extra overrides), text the one line must hold)
BROKEN: dict[str, tuple[Callable[[Path], list[str] | None], str]] = {
    "decompression_bomb": (lambda d: _bomb_png(d / "train/good/000.png"),
                           "'train/good/000.png' is 20000x20000 pixels (WxH), over the 268,435,456 pixels"),
    "header_claiming_gigapixels": (lambda d: _lying_png(d / "test/good/001.png"),
                                   "'test/good/001.png' is 100000x100000 pixels (WxH), over the"),
    "one_pixel_training_image": (lambda d: _gray(d / "train/good/001.png", 1, 1),
                                 "'train/good/001.png' is 1x1 pixels (WxH); images must be at least 4 pixels"),
    "two_by_two_test_image": (lambda d: _gray(d / "test/good/000.png", 2, 2),
                              "'test/good/000.png' is 2x2 pixels (WxH)"),
    "named_pipe_as_image": (lambda d: os.mkfifo(d / "train/good/camera.png"),
                            "'train/good/camera.png' is a named pipe (FIFO), not an image file"),
    "folder_with_an_image_name": (lambda d: (d / "test/good/batch.png").mkdir(),
                                  "'test/good/batch.png' is a folder, not an image file"),
    "symbolic_link_loop": (lambda d: _symlink_loop(d / "train/good"),
                           "'train/good/a.png' is a symbolic link that loops back on itself"),
    "dangling_symbolic_link": (lambda d: os.symlink(d / "gone.png", d / "test/good/link.png"),
                               "'test/good/link.png' is a symbolic link to"),
    "text_file_named_png": (lambda d: (d / "train/good/notes.png").write_text("not an image"),
                            "'train/good/notes.png' is not an image, or is corrupt"),
    "gif_image": (lambda d: (d / "test/blob/003.gif").write_bytes(b"GIF89a"),
                  "'test/blob/003.gif' is a .gif image, which is not read: convert it to PNG"),
    "mask_without_image": (lambda d: _gray(d / "ground_truth/blob/007_mask.png", 32, 32, 255),
                           "mask 'ground_truth/blob/007_mask.png' belongs to no image"),
    "all_zero_mask_of_a_defect": (lambda d: _gray(d / "ground_truth/blob/001_mask.png", 32, 32, 0),
                                  "mask 'ground_truth/blob/001_mask.png' is all zero, so its image 'test/blob/001.png' "
                                  "has no defect pixel"),
    "defect_mask_for_a_good_image": (lambda d: _gray(d / "ground_truth/good/000_mask.png", 32, 32, 255),
                                     "mask 'ground_truth/good/000_mask.png' marks defect pixels but its image "
                                     "'test/good/000.png' is a good one"),
    "empty_defect_folder": (lambda d: (d / "test/scratch").mkdir(), "'test/scratch' holds no images"),
    "defect_folder_of_other_files": (lambda d: (d / "test/scratch").mkdir() or (d / "test/scratch/a.txt").write_text("x"),
                                     "'test/scratch' holds no images (only 1 file(s) not ending in"),
    "train_Good": (lambda d: _move(d, "train/good", "train/Good"),
                   "missing folder 'train/good' (found 'train/Good': folder names are case-sensitive"),
    "test_Good": (lambda d: _move(d, "test/good", "test/Good"),
                  "'test/Good' would be read as a defect type: folder names are case-sensitive, rename it to 'test/good'"),
    "masks_in_GT": (lambda d: _move(d, "ground_truth", "GT"),
                    "'GT' looks like a mask folder, but masks are read from ground_truth/<defect>/ only"),
    "image_loose_in_test": (lambda d: _move(d, "test/good/002.png", "test/002.png"),
                            "'test/002.png' lies directly in test/, in no class folder"),
    "images_in_a_subfolder": (lambda d: _move(d, "train/good/003.png", "train/good/more/003.png"),
                              "'train/good/more' is a folder inside a class folder: its images are not read"),
    "defects_in_train": (lambda d: _move(d, "test/blob/002.png", "train/blob/002.png"),
                         "'train/blob' is not read: training uses normal images from train/good only"),
    "unlabelled_validation_images": (lambda d: _move(d, "test/good/002.png", "val/unknown/002.png"),
                                     "'val/unknown' holds unlabelled images, which cannot set a threshold"),
    "only_unknown_test_images": (lambda d: _only_unknown(d), "no labelled test images to set thresholds on"),
    "from_test_with_one_good_and_one_anomalous": (
        lambda d: [(d / f"test/{c}/{i:03d}.png").unlink() for c in ("good", "blob") for i in (1, 2)]
        and [(d / f"ground_truth/blob/{i:03d}_mask.png").unlink() for i in (1, 2)] and ["datamodule.val_split=from_test"],
        "datamodule.val_split=from_test needs at least 2 test images of each class present (one to set the threshold, "
        "one to score); test/ has 1 good and 1 anomalous: test/good and test/<defect>/ hold only one"),
    "from_test_with_one_anomalous": (
        lambda d: [(d / f"test/blob/{i:03d}.png").unlink() for i in (1, 2)]
        and [(d / f"ground_truth/blob/{i:03d}_mask.png").unlink() for i in (1, 2)] and ["datamodule.val_split=from_test"],
        "test/ has 3 good and 1 anomalous: test/<defect>/ holds only one"),
    "from_test_with_only_unknown_images": (
        lambda d: _only_unknown(d) or ["datamodule.val_split=from_test"],
        "test/ has 0 good and 0 anomalous: none is labelled"),
    "valid_area_mask_is_a_named_pipe": (lambda d: os.mkfifo(d.parent / "roi.png") or [f"datamodule.valid_area_mask={d.parent / 'roi.png'}"],
                                        "datamodule.valid_area_mask '{tmp}/roi.png' is a named pipe (FIFO), not an image file"),
    "valid_area_mask_is_a_folder": (lambda d: (d.parent / "roi.png").mkdir() or [f"datamodule.valid_area_mask={d.parent / 'roi.png'}"],
                                    "datamodule.valid_area_mask '{tmp}/roi.png' is a folder, not an image file"),
    "valid_area_mask_all_zero": (lambda d: _gray(d.parent / "roi.png", 32, 32, 0) and [f"datamodule.valid_area_mask={d.parent / 'roi.png'}"],
                                 "datamodule.valid_area_mask '{tmp}/roi.png' is all zero, so no pixel would be looked at"),
    "valid_area_mask_is_a_bomb": (lambda d: _bomb_png(d.parent / "roi.png") and [f"datamodule.valid_area_mask={d.parent / 'roi.png'}"],
                                  "datamodule.valid_area_mask '{tmp}/roi.png' is 20000x20000 pixels (WxH), over the"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_a_broken_dataset_folder_is_refused_in_one_line_naming_it(tmp_path, name):
    data = _dataset(tmp_path / "data")
    breaks, expected = BROKEN[name]
    extra = breaks(data)
    extra = extra if isinstance(extra, list) else []
    message = _refused(tmp_path, *PADIM, f"datamodule.data_path={data}", *extra)
    assert expected.format(tmp=tmp_path) in message, message


@pytest.mark.parametrize("make_root, expected", [
    pytest.param(lambda tmp: os.mkfifo(tmp / "pipe") or tmp / "pipe", "is a named pipe (FIFO), not a folder", id="named_pipe"),
    pytest.param(lambda tmp: os.symlink(tmp / "b", tmp / "a") or os.symlink(tmp / "a", tmp / "b") or tmp / "a",
                 "is a symbolic link that loops back on itself", id="symbolic_link_loop"),
    pytest.param(lambda tmp: _gray(tmp / "one.png", 32, 32), "is a file, not a folder", id="image_file"),
])
def test_a_data_path_that_is_no_folder_is_named_for_what_it_is(tmp_path, make_root, expected):
    root = make_root(tmp_path)
    message = _refused(tmp_path, *PADIM, f"datamodule.data_path={root}")
    assert message.startswith(f"datamodule.data_path '{root}' {expected}"), message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_image_is_named(tmp_path):
    data = _dataset(tmp_path / "data")
    (data / "train" / "good" / "000.png").chmod(0)
    message = _refused(tmp_path, *PADIM, f"datamodule.data_path={data}")
    assert "'train/good/000.png' cannot be read (permission denied)" in message


def test_every_problem_of_a_folder_comes_in_the_one_line(tmp_path):
    data = _dataset(tmp_path / "data")
    os.mkfifo(data / "train" / "good" / "pipe.png")
    _bomb_png(data / "test" / "good" / "000.png")
    _gray(data / "ground_truth" / "blob" / "000_mask.png", 32, 32, 0)
    message = _refused(tmp_path, *PADIM, f"datamodule.data_path={data}")
    assert message.startswith(f"datamodule.data_path '{data}': 3 problems: ")
    assert all(text in message for text in ("'train/good/pipe.png' is a named pipe", "'test/good/000.png' is 20000x20000",
                                            "mask 'ground_truth/blob/000_mask.png' is all zero"))


@pytest.mark.parametrize("arrange", [
    pytest.param(lambda d: _gray(d / "train/good/000.png", 48, 40), id="images_of_mixed_sizes"),
    pytest.param(lambda d: (d / "train/good/.DS_Store").write_text("x") or (d / "test/notes.txt").write_text("x")
                 or (d / "train/good/.hidden.png").write_text("x"), id="hidden_files_and_notes"),
    pytest.param(lambda d: shutil.rmtree(d / "test/blob") or shutil.rmtree(d / "ground_truth/blob"),
                 id="only_good_test_images_and_an_empty_ground_truth"),
    pytest.param(lambda d: os.symlink(d / "train/good/000.png", d / "train/good/link.png"), id="symbolic_link_to_an_image"),
    pytest.param(lambda d: _gray(d / "ground_truth/good/000_mask.png", 32, 32, 0), id="blank_mask_for_a_good_image"),
])
def test_folders_that_look_odd_but_are_fine_pass_the_preflight(tmp_path, arrange):
    data = _dataset(tmp_path / "data")
    arrange(data)
    layout = check_dataset(data)
    assert layout.train and layout.val


def test_from_test_with_two_of_each_class_keeps_one_of_each_to_score(tmp_path):
    data = _dataset(tmp_path / "data", n_test_good=2, n_test_defect=2)
    layout = check_dataset(data, val_split="from_test")
    assert sorted(s.label for s in layout.val) == [0, 1] and sorted(s.label for s in layout.test) == [0, 1]


def test_a_good_only_test_folder_with_from_test_sets_the_threshold_on_good_images(tmp_path):
    data = _dataset(tmp_path / "data", n_test_defect=0, with_masks=False)
    layout = check_dataset(data, val_split="from_test")
    assert {s.label for s in layout.val} == {0} and {s.label for s in layout.test} == {0}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["named_pipe_as_image", "test_Good", "masks_in_GT", "image_loose_in_test",
                                  "from_test_with_one_good_and_one_anomalous", "valid_area_mask_is_a_named_pipe"])
def test_the_python_api_refuses_the_same_listings_without_hanging(tmp_path, name):
    from quadra_ad.datamodules import AnomalyDataModule

    data = _dataset(tmp_path / "data")
    extra = BROKEN[name][0](data)
    settings = dict(item.split("=", 1) for item in (extra if isinstance(extra, list) else []))
    datamodule = AnomalyDataModule(data_path=data, image_size=(32, 32), **{
        key.removeprefix("datamodule."): value for key, value in settings.items()})
    with pytest.raises(DatasetError) as refused:
        datamodule.setup()
    message = str(refused.value)
    assert "\n" not in message and BROKEN[name][1].format(tmp=tmp_path) in message
