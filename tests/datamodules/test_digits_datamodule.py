"""DigitsAnomalyDataModule: the offline demo built from scikit-learn's bundled digits."""

import socket
from pathlib import Path

import cv2
import numpy as np
import pytest
from anomalib.data import ImageBatch

from quadra_ad.datamodules import DigitsAnomalyDataModule
from quadra_ad.datamodules.digits import load_digits_arrays


@pytest.fixture
def offline(monkeypatch) -> None:
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the digits demo tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def digits_arrays():
    return load_digits_arrays()


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def test_load_digits_arrays_gives_32x32_uint8_images_split_70_30(digits_arrays) -> None:
    train_images, train_labels, test_images, test_labels = digits_arrays

    assert train_images.dtype == np.uint8
    assert train_images.shape[1:] == (32, 32)
    assert test_images.shape[1:] == (32, 32)
    assert len(train_images) == len(train_labels)
    assert len(test_images) == len(test_labels)
    total = len(train_labels) + len(test_labels)
    assert len(train_labels) == int(0.7 * total)
    assert set(np.unique(test_labels).tolist()) == set(range(10))
    assert train_images.max() > 200  # scaled from 0..16 to 0..255


def test_setup_works_offline_and_writes_good_digit_only_to_train(tmp_path: Path, offline, digits_arrays) -> None:
    train_images, train_labels, test_images, test_labels = digits_arrays
    data_path = tmp_path / "digits"
    dm = DigitsAnomalyDataModule(data_path=data_path, good_number=9, limit_data=10, image_size=(32, 32))

    dm.setup()

    root = data_path / "anomaly_good9_limit10"
    assert dm.layout.root == root.resolve()
    assert dm.layout.task_type == "segmentation"

    train_good = _pngs(root / "train" / "good")
    assert len(train_good) == 10
    for path in train_good:
        index = int(path.stem)
        assert train_labels[index] == 9
        assert np.array_equal(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), train_images[index])

    folders = sorted(p.name for p in (root / "test").iterdir())
    assert folders == sorted(["good"] + [str(d) for d in range(9)])
    for folder in folders:
        digit = 9 if folder == "good" else int(folder)
        images = _pngs(root / "test" / folder)
        assert images, f"test/{folder} is empty"
        assert all(test_labels[int(p.stem)] == digit for p in images)
        for image in images:
            mask = cv2.imread(str(root / "ground_truth" / folder / f"{image.stem}_mask.png"), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (32, 32)
            assert np.all(mask == (0 if folder == "good" else 255))

    assert len(dm.layout.train) == 10
    assert all(s.defect_type == "good" for s in dm.layout.train)
    assert {s.defect_type for s in dm.layout.test if s.label == 1} == {str(d) for d in range(9)}


def test_dataloaders_yield_batches_from_the_demo(tmp_path: Path, offline) -> None:
    dm = DigitsAnomalyDataModule(
        data_path=tmp_path / "digits", good_number=0, limit_data=9, image_size=(16, 16), train_batch_size=4, test_batch_size=64
    )
    dm.setup()

    train = next(iter(dm.train_dataloader()))
    test = next(iter(dm.test_dataloader()))

    assert isinstance(train, ImageBatch)
    assert tuple(train.image.shape) == (4, 3, 16, 16)
    assert tuple(test.gt_mask.shape[1:]) == (16, 16)
    labels = [int(v) for v in test.gt_label.tolist()]
    assert labels.count(0) == 9
    assert labels.count(1) == 9  # one per other digit
    assert sum(b.image.shape[0] for b in dm.predict_dataloader()) == 0


def test_demo_layout_is_reused_on_a_second_setup(tmp_path: Path, offline, monkeypatch) -> None:
    data_path = tmp_path / "digits"
    first = DigitsAnomalyDataModule(data_path=data_path, good_number=1, limit_data=9)
    first.setup()

    def fail(self):
        raise AssertionError("the finished layout was not reused")

    monkeypatch.setattr(DigitsAnomalyDataModule, "load_arrays", fail)
    second = DigitsAnomalyDataModule(data_path=data_path, good_number=1, limit_data=9)
    second.setup()

    assert [s.image_path for s in second.layout.test] == [s.image_path for s in first.layout.test]
    assert [s.image_path for s in second.layout.train] == [s.image_path for s in first.layout.train]


def test_digits_data_path_may_be_a_string(tmp_path: Path, offline) -> None:
    dm = DigitsAnomalyDataModule(data_path=str(tmp_path / "digits"), good_number=3, limit_data=9)

    dm.setup()

    assert (tmp_path / "digits" / "anomaly_good3_limit9" / ".complete").is_file()
