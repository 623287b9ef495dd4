"""scan_anomaly_folder: an MVTec-style folder into labelled samples, or one-line DatasetErrors."""

import shutil
from pathlib import Path

import numpy as np
import pytest
from dm_helpers import assert_one_line, random_image, square_mask, write_image

from quadra_ad.datamodules.layout import AnomalyLayout, scan_anomaly_folder
from quadra_ad.errors import DatasetError


def test_proper_layout_gives_counts_labels_defect_types_and_masks(make_anomaly_folder) -> None:
    root = make_anomaly_folder(n_train=3, n_test_good=2, defects={"scratch": 2, "dent": 1})

    layout = scan_anomaly_folder(root)

    assert isinstance(layout, AnomalyLayout)
    assert layout.root == root.resolve()
    assert layout.has_masks
    assert layout.task_type == "segmentation"

    assert len(layout.train) == 3
    assert all(s.label == 0 and s.defect_type == "good" and s.mask_path is None for s in layout.train)
    assert [s.image_path.name for s in layout.train] == ["train_000.png", "train_001.png", "train_002.png"]

    assert len(layout.test) == 5
    by_name = {s.image_path.name: s for s in layout.test}
    assert set(by_name) == {"good_000.png", "good_001.png", "scratch_000.png", "scratch_001.png", "dent_000.png"}
    for name in ("good_000.png", "good_001.png"):
        assert by_name[name].label == 0
        assert by_name[name].defect_type == "good"
        assert by_name[name].mask_path is None  # no ground_truth/good: good images get empty masks later
    for name, defect in (("scratch_000.png", "scratch"), ("scratch_001.png", "scratch"), ("dent_000.png", "dent")):
        sample = by_name[name]
        assert sample.label == 1
        assert sample.defect_type == defect
        stem = name.removesuffix(".png")
        assert sample.mask_path == root.resolve() / "ground_truth" / defect / f"{stem}_mask.png"
        assert sample.image_path == root.resolve() / "test" / defect / name

    assert layout.unknown == []


def test_without_ground_truth_the_task_is_classification(make_anomaly_folder) -> None:
    root = make_anomaly_folder(with_masks=False)

    layout = scan_anomaly_folder(root)

    assert not layout.has_masks
    assert layout.task_type == "classification"
    assert [s.label for s in layout.test] == [0, 0, 1, 1]
    assert all(s.mask_path is None for s in layout.test)


def test_unknown_images_are_unlabelled_and_kept_out_of_test(make_anomaly_folder) -> None:
    root = make_anomaly_folder(n_test_good=2, defects={"scratch": 1}, n_unknown=3)

    layout = scan_anomaly_folder(root)

    assert len(layout.unknown) == 3
    assert all(s.label is None and s.defect_type == "unknown" and s.mask_path is None for s in layout.unknown)
    assert {s.image_path.parent.name for s in layout.unknown} == {"unknown"}
    assert len(layout.test) == 3
    assert all(s.image_path.parent.name != "unknown" for s in layout.test)
    assert all(s.label is not None for s in layout.test)


def test_unknown_images_need_no_masks_when_ground_truth_exists(make_anomaly_folder) -> None:
    root = make_anomaly_folder(n_unknown=2, with_masks=True)
    assert not (root / "ground_truth" / "unknown").exists()

    layout = scan_anomaly_folder(root)

    assert len(layout.unknown) == 2


def test_non_image_files_are_ignored(make_anomaly_folder) -> None:
    root = make_anomaly_folder(n_train=2, n_test_good=1, defects={"scratch": 1})
    for folder in (root / "train" / "good", root / "test" / "good", root / "test" / "scratch", root / "test"):
        for name in (".DS_Store", "Thumbs.db", "notes.txt"):
            (folder / name).write_bytes(b"junk")

    layout = scan_anomaly_folder(root)

    assert len(layout.train) == 2
    assert len(layout.test) == 2
    every_sample = layout.train + layout.test + layout.unknown
    assert all(s.image_path.suffix == ".png" for s in every_sample)


def test_only_non_image_files_in_train_good_counts_as_empty(make_anomaly_folder) -> None:
    root = make_anomaly_folder(n_train=0)
    (root / "train" / "good").mkdir(parents=True)
    (root / "train" / "good" / ".DS_Store").write_bytes(b"junk")
    (root / "train" / "good" / "Thumbs.db").write_bytes(b"junk")

    with pytest.raises(DatasetError) as info:
        scan_anomaly_folder(root)

    assert "train/good" in assert_one_line(info.value)


def test_custom_mask_suffix_is_used(make_anomaly_folder) -> None:
    root = make_anomaly_folder(defects={"scratch": 2}, mask_suffix="_gt")

    layout = scan_anomaly_folder(root, mask_suffix="_gt")

    masks = [s.mask_path for s in layout.test if s.label == 1]
    assert [m.name for m in masks] == ["scratch_000_gt.png", "scratch_001_gt.png"]


def test_empty_mask_suffix_matches_masks_named_like_their_images(make_anomaly_folder) -> None:
    root = make_anomaly_folder(defects={"scratch": 1}, mask_suffix="")

    layout = scan_anomaly_folder(root, mask_suffix="")

    (anomalous,) = [s for s in layout.test if s.label == 1]
    assert anomalous.mask_path.name == "scratch_000.png"
    assert anomalous.mask_path.parent.parent.name == "ground_truth"


def test_default_mask_suffix_does_not_find_differently_named_masks(make_anomaly_folder) -> None:
    root = make_anomaly_folder(defects={"scratch": 1}, mask_suffix="_gt")

    with pytest.raises(DatasetError) as info:
        scan_anomaly_folder(root)

    message = assert_one_line(info.value)
    assert "scratch_000_mask.png" in message
    assert "mask_suffix" in message


def test_mask_with_another_image_ending_is_found(make_anomaly_folder) -> None:
    root = make_anomaly_folder(defects={"scratch": 1}, with_masks=False)
    write_image(root / "ground_truth" / "scratch" / "scratch_000_mask.bmp", square_mask())

    layout = scan_anomaly_folder(root)

    (anomalous,) = [s for s in layout.test if s.label == 1]
    assert anomalous.mask_path.name == "scratch_000_mask.bmp"


def test_test_phase_needs_only_the_test_folder(make_anomaly_folder) -> None:
    root = make_anomaly_folder(with_train=False, n_unknown=1)
    assert not (root / "train").exists()

    layout = scan_anomaly_folder(root, phase="test")

    assert layout.train == []
    assert len(layout.test) == 4
    assert len(layout.unknown) == 1


def test_test_phase_with_only_unknown_images(tmp_path: Path) -> None:
    root = tmp_path / "inference"
    write_image(root / "test" / "unknown" / "a.png", random_image(np.random.default_rng(0)))

    layout = scan_anomaly_folder(root, phase="test")

    assert layout.test == []
    assert len(layout.unknown) == 1
    assert layout.task_type == "classification"


def test_train_phase_ignores_train_folders_other_than_good(make_anomaly_folder) -> None:
    root = make_anomaly_folder(n_train=2)
    write_image(root / "train" / "scratch" / "x.png", random_image(np.random.default_rng(1)))

    layout = scan_anomaly_folder(root)

    assert len(layout.train) == 2
    assert all(s.image_path.parent.name == "good" for s in layout.train)


def test_data_path_given_as_string_with_user_home_is_expanded(make_anomaly_folder, monkeypatch) -> None:
    root = make_anomaly_folder()
    monkeypatch.setenv("HOME", str(root.parent))

    layout = scan_anomaly_folder(f"~/{root.name}")

    assert layout.root == root.resolve()


# --------------------------------------------------------------------------------------------
# Errors: each a DatasetError, one line, naming the path or key at fault.


def test_missing_data_path_raises_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "does_not_exist"

    with pytest.raises(DatasetError) as info:
        scan_anomaly_folder(missing)

    message = assert_one_line(info.value)
    assert str(missing) in message
    assert "does not exist" in message


def test_data_path_that_is_a_file_raises_naming_it(tmp_path: Path) -> None:
    a_file = tmp_path / "dataset.zip"
    a_file.write_bytes(b"PK")

    with pytest.raises(DatasetError) as info:
        scan_anomaly_folder(a_file)

    message = assert_one_line(info.value)
    assert str(a_file) in message
    assert "file" in message


def test_missing_train_good_raises_naming_it(make_anomaly_folder) -> None:
    root = make_anomaly_folder(with_train=False)

    with pytest.raises(DatasetError) as info:
        scan_anomaly_folder(root)

    message = assert_one_line(info.value)
    assert "train/good" in message
    assert str(root) in message


def test_empty_train_good_raises_naming_it(make_anomaly_folder) -> None:
    root = make_anomaly_folder(n_train=0)
    (root / "train" / "good").mkdir(parents=True)

    with pytest.raises(DatasetError) as info:
        scan_anomaly_folder(root)

    message = assert_one_line(info.value)
    assert "train/good" in message
    assert "no images" in message


def test_missing_test_folder_raises_naming_it(make_anomaly_folder) -> None:
    root = make_anomaly_folder()
    shutil.rmtree(root / "test")

    with pytest.raises(DatasetError) as info:
        scan_anomaly_folder(root)

    message = assert_one_line(info.value)
    assert "'test'" in message
    assert str(root) in message


def test_missing_test_folder_raises_in_test_phase_too(tmp_path: Path) -> None:
    root = tmp_path / "empty_dataset"
    root.mkdir()

    with pytest.raises(DatasetError) as info:
        scan_anomaly_folder(root, phase="test")

    assert "'test'" in assert_one_line(info.value)


def test_test_folder_without_images_raises(make_anomaly_folder) -> None:
    root = make_anomaly_folder(n_test_good=0, defects={})
    (root / "test" / "good").mkdir(parents=True)

    with pytest.raises(DatasetError) as info:
        scan_anomaly_folder(root)

    message = assert_one_line(info.value)
    assert str(root / "test") in message
    assert "no images" in message


def test_missing_mask_for_anomalous_image_raises_naming_the_expected_mask(make_anomaly_folder) -> None:
    root = make_anomaly_folder(defects={"scratch": 2})
    (root / "ground_truth" / "scratch" / "scratch_001_mask.png").unlink()

    with pytest.raises(DatasetError) as info:
        scan_anomaly_folder(root)

    message = assert_one_line(info.value)
    assert str(Path("ground_truth") / "scratch" / "scratch_001_mask.png") in message
    assert str(Path("test") / "scratch" / "scratch_001.png") in message


def test_missing_mask_folder_for_a_defect_raises_when_ground_truth_exists(make_anomaly_folder) -> None:
    root = make_anomaly_folder(defects={"scratch": 1})
    write_image(root / "test" / "dent" / "dent_000.png", random_image(np.random.default_rng(2)))

    with pytest.raises(DatasetError) as info:
        scan_anomaly_folder(root)

    assert str(Path("ground_truth") / "dent" / "dent_000_mask.png") in assert_one_line(info.value)


@pytest.mark.parametrize("phase", ["fit", "TRAIN", "", "predict"])
def test_bad_phase_raises_naming_the_key_and_value(make_anomaly_folder, phase: str) -> None:
    root = make_anomaly_folder()

    with pytest.raises(DatasetError) as info:
        scan_anomaly_folder(root, phase=phase)

    message = assert_one_line(info.value)
    assert "phase" in message
    assert f"'{phase}'" in message


def _with_val_folder(root: Path) -> Path:
    """Copies of some test images (and their masks) as val/good and val/blob, under new names."""
    for label in ("good", "blob"):
        (root / "val" / label).mkdir(parents=True)
        for index, image in enumerate(sorted((root / "test" / label).glob("*.png"))[:2]):
            shutil.copy(image, root / "val" / label / f"v{index}.png")
            if label == "blob":
                masks = root / "ground_truth" / "blob"
                shutil.copy(masks / f"{image.stem}_mask.png", masks / f"v{index}_mask.png")
    return root


@pytest.fixture
def synthetic(tmp_path):
    from quadra_ad.testing.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path / "data", n_train=4, n_test_good=6, n_test_defect=5, size=32)


def test_auto_validation_is_the_test_split_without_a_val_folder_and_the_folder_with_one(synthetic):
    from quadra_ad.datamodules.layout import split_validation

    layout = split_validation(scan_anomaly_folder(synthetic))
    assert layout.val == layout.test and layout.val_source.startswith("same_as_test: the test images (11 images, 5 anomalous)")
    layout = split_validation(scan_anomaly_folder(_with_val_folder(synthetic)))
    assert [s.image_path.name for s in layout.val] == ["v0.png", "v1.png", "v0.png", "v1.png"]
    assert all(s.mask_path is not None for s in layout.val if s.label == 1)
    assert len(layout.test) == 11 and layout.val_source == "folder: val/ (4 images, 2 anomalous)"


def test_from_test_takes_a_seeded_stratified_share_out_of_the_test_split(synthetic):
    from quadra_ad.datamodules.layout import split_validation

    layouts = [split_validation(scan_anomaly_folder(synthetic), "from_test", 0.3, seed) for seed in (1, 1, 2)]
    first, again, other = layouts
    assert [s.image_path for s in first.val] == [s.image_path for s in again.val]  # seeded
    assert {s.image_path for s in first.val} != {s.image_path for s in other.val}
    assert not {s.image_path for s in first.val} & {s.image_path for s in first.test}  # not scored
    assert sorted(s.label for s in first.val) == [0, 0, 1, 1]  # round(0.3 * 6), round(0.3 * 5)
    assert len(first.test) == 7 and first.val_source.startswith("from_test: 4 images, 2 anomalous taken from test/")


def test_a_validation_folder_asked_for_but_absent_is_one_line(synthetic):
    from quadra_ad.datamodules.layout import split_validation

    with pytest.raises(DatasetError, match=r"^datamodule.val_split=folder but '.*val' holds no images"):
        split_validation(scan_anomaly_folder(synthetic), "folder")
