"""MNISTAnomalyDataModule and read_idx, on tiny IDX files written here (never downloaded)."""

import gzip
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from dm_helpers import assert_one_line, fake_mnist_arrays, idx_bytes, write_idx

import quadra_ad.datamodules.mnist as mnist
from quadra_ad.datamodules import MNISTAnomalyDataModule
from quadra_ad.datamodules.mnist import MNIST_FILES, find_mnist_files, read_idx
from quadra_ad.errors import DatasetError

OFFLINE_DEMO = "generic/digits/anomaly/padim"


@pytest.fixture
def no_download(monkeypatch) -> None:
    """Make any download attempt fail the test: these tests must work from local files only."""

    def fail(data_path: Path) -> None:
        raise AssertionError(f"the test tried to download MNIST into {data_path}")

    monkeypatch.setattr(mnist, "download_mnist", fail)


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def _read_gray(path: Path) -> np.ndarray:
    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


def _module(data_path: Path, **kwargs) -> MNISTAnomalyDataModule:
    kwargs.setdefault("image_size", (28, 28))
    kwargs.setdefault("test_batch_size", 64)
    return MNISTAnomalyDataModule(data_path=data_path, **kwargs)


# --------------------------------------------------------------------------------------------
# read_idx / find_mnist_files


@pytest.mark.parametrize("gzipped", [False, True])
def test_read_idx_reads_plain_and_gzipped_files(tmp_path: Path, gzipped: bool) -> None:
    images, labels = fake_mnist_arrays(7)
    image_file = write_idx(tmp_path / "images-idx3-ubyte", images, gzipped)
    label_file = write_idx(tmp_path / "labels-idx1-ubyte", labels, gzipped)

    read_images = read_idx(image_file)
    read_labels = read_idx(label_file)

    assert read_images.dtype == np.uint8
    assert read_images.shape == (7, 28, 28)
    assert np.array_equal(read_images, images)
    assert np.array_equal(read_labels, labels)


def test_read_idx_on_truncated_file_raises_naming_it(tmp_path: Path) -> None:
    images, _ = fake_mnist_arrays(5)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(images)[:-10])

    with pytest.raises(DatasetError) as info:
        read_idx(path)

    message = assert_one_line(info.value)
    assert str(path) in message
    assert "truncated" in message


def test_read_idx_on_file_cut_inside_the_header_raises(tmp_path: Path) -> None:
    images, _ = fake_mnist_arrays(5)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(images)[:9])

    with pytest.raises(DatasetError) as info:
        read_idx(path)

    assert str(path) in assert_one_line(info.value)


def test_read_idx_on_truncated_gzip_raises_naming_it(tmp_path: Path) -> None:
    images, _ = fake_mnist_arrays(5)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes(images))[:40])

    with pytest.raises(DatasetError) as info:
        read_idx(path)

    assert str(path) in assert_one_line(info.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\x00", b"<html>Too many requests</html>", b"\x01\x00\x08\x01\x00\x00\x00\x01\x07", b"\x00\x00\x42\x01"],
    ids=["empty", "two_bytes", "html", "bad_magic", "bad_dtype"],
)
def test_read_idx_on_non_idx_file_raises_naming_it(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(content)

    with pytest.raises(DatasetError) as info:
        read_idx(path)

    assert str(path) in assert_one_line(info.value)


def test_read_idx_on_gzip_of_non_idx_data_raises(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(b"this is not idx data"))

    with pytest.raises(DatasetError) as info:
        read_idx(path)

    assert "not an IDX file" in assert_one_line(info.value)


def test_read_idx_on_plain_file_named_gz_raises(tmp_path: Path) -> None:
    images, _ = fake_mnist_arrays(2)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(idx_bytes(images))  # not actually gzipped

    with pytest.raises(DatasetError) as info:
        read_idx(path)

    assert str(path) in assert_one_line(info.value)


@pytest.mark.parametrize("subfolder", [".", "raw", "MNIST/raw"])
def test_find_mnist_files_looks_in_data_path_raw_and_mnist_raw(tmp_path: Path, subfolder: str) -> None:
    folder = tmp_path / subfolder
    images, labels = fake_mnist_arrays(3)
    for key, stem in MNIST_FILES.items():
        write_idx(folder / stem, images if "images" in key else labels, gzipped=key.startswith("test"))

    found = find_mnist_files(tmp_path)

    assert found is not None
    assert set(found) == set(MNIST_FILES)
    assert all(p.parent == folder.resolve() or p.parent == folder for p in found.values())


def test_find_mnist_files_is_none_when_one_file_is_missing(make_mnist_raw) -> None:
    data_path = make_mnist_raw()
    (data_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()

    assert find_mnist_files(data_path) is None


# --------------------------------------------------------------------------------------------
# The generated layout


@pytest.mark.parametrize("gzipped", [True, False])
def test_layout_has_good_digit_in_train_and_one_test_folder_per_other_digit(
    make_mnist_raw, no_download, gzipped: bool
) -> None:
    data_path = make_mnist_raw(gzipped=gzipped, n_train=30, n_test=30)
    train_images, train_labels = fake_mnist_arrays(30, seed=1)
    test_images, test_labels = fake_mnist_arrays(30, seed=2)
    dm = _module(data_path, good_number=3, limit_data=None)

    dm.setup()

    root = data_path / "anomaly_good3_limitNone"
    assert dm.layout.root == root.resolve()
    assert dm.layout.task_type == "segmentation"

    train_good = _pngs(root / "train" / "good")
    assert len(train_good) == 3
    for path in train_good:
        index = int(path.stem)
        assert train_labels[index] == 3
        assert np.array_equal(_read_gray(path), train_images[index])
    assert sorted(p.name for p in (root / "train").iterdir()) == ["good"]

    test_folders = sorted(p.name for p in (root / "test").iterdir())
    assert test_folders == sorted(["good"] + [str(d) for d in range(10) if d != 3])
    for folder in test_folders:
        digit = 3 if folder == "good" else int(folder)
        images = _pngs(root / "test" / folder)
        assert len(images) == 3
        for path in images:
            index = int(path.stem)
            assert test_labels[index] == digit
            assert np.array_equal(_read_gray(path), test_images[index])


def test_ground_truth_masks_are_full_for_anomalies_and_empty_for_good(make_mnist_raw, no_download) -> None:
    data_path = make_mnist_raw()
    dm = _module(data_path, good_number=9, limit_data=None)
    dm.setup()
    root = data_path / "anomaly_good9_limitNone"

    for folder in (root / "test").iterdir():
        for image in _pngs(folder):
            mask = _read_gray(root / "ground_truth" / folder.name / f"{image.stem}_mask.png")
            assert mask.shape == (28, 28)
            expected = 0 if folder.name == "good" else 255
            assert np.all(mask == expected), f"{folder.name}/{image.name}: mask is not all {expected}"

    batch = next(iter(dm.test_dataloader()))
    for label, mask in zip(batch.gt_label.tolist(), batch.gt_mask, strict=True):
        assert bool(mask.all()) if label else not mask.any()
    assert sorted(int(v) for v in batch.gt_label.tolist()) == [0] * 3 + [1] * 27


def test_dataloaders_serve_the_generated_layout(make_mnist_raw, no_download) -> None:
    dm = _module(make_mnist_raw(), good_number=0, limit_data=None, image_size=(16, 16), train_batch_size=8)
    dm.setup()

    train = list(dm.train_dataloader())
    test = list(dm.test_dataloader())

    assert sum(b.image.shape[0] for b in train) == 3
    assert tuple(train[0].image.shape[1:]) == (3, 16, 16)
    assert sum(b.image.shape[0] for b in test) == 30
    assert tuple(test[0].gt_mask.shape[1:]) == (16, 16)
    assert list(dm.predict_dataloader()) == []


def test_limit_data_caps_train_good_test_good_and_anomalous_images(make_mnist_raw, no_download) -> None:
    # 20 images of each digit per split; limit 18 -> 18 good train, 18 good test, 2 per other digit.
    data_path = make_mnist_raw(n_train=200, n_test=200)
    dm = _module(data_path, good_number=5, limit_data=18)

    dm.setup()

    root = data_path / "anomaly_good5_limit18"
    assert len(_pngs(root / "train" / "good")) == 18
    assert len(_pngs(root / "test" / "good")) == 18
    anomalous = [p for p in (root / "test").iterdir() if p.name != "good"]
    assert len(anomalous) == 9
    assert all(len(_pngs(folder)) == 2 for folder in anomalous)
    assert len(dm.layout.train) == 18
    assert sum(1 for s in dm.layout.test if s.label == 1) == 18


def test_limit_data_above_available_images_takes_them_all(make_mnist_raw, no_download) -> None:
    data_path = make_mnist_raw()
    dm = _module(data_path, good_number=9, limit_data=100)

    dm.setup()

    assert len(dm.layout.train) == 3
    assert len(dm.layout.test) == 30


def test_tiny_limit_data_still_keeps_one_image_of_every_anomalous_digit(make_mnist_raw, no_download) -> None:
    dm = _module(make_mnist_raw(), good_number=9, limit_data=5)

    dm.setup()

    assert len(dm.layout.train) <= 5
    assert sum(1 for s in dm.layout.test if s.label == 0) <= 5
    assert sorted({s.defect_type for s in dm.layout.test if s.label == 1}) == [str(d) for d in range(9)]


def test_layout_is_reused_on_a_second_setup_without_the_source_files(make_mnist_raw, monkeypatch) -> None:
    data_path = make_mnist_raw()
    first = _module(data_path, good_number=2, limit_data=None)
    first.setup()
    written = sorted(p.relative_to(data_path) for p in data_path.rglob("*.png"))

    # The raw files are gone and neither reading nor downloading may happen: the folder is reused.
    for path in (data_path / "MNIST" / "raw").iterdir():
        path.unlink()

    def fail(*args, **kwargs):
        raise AssertionError("the finished layout was not reused")

    monkeypatch.setattr(mnist, "download_mnist", fail)
    monkeypatch.setattr(MNISTAnomalyDataModule, "load_arrays", fail)
    second = _module(data_path, good_number=2, limit_data=None)
    second.setup()

    assert sorted(p.relative_to(data_path) for p in data_path.rglob("*.png")) == written
    assert [s.image_path for s in second.layout.test] == [s.image_path for s in first.layout.test]
    assert [s.image_path for s in second.layout.train] == [s.image_path for s in first.layout.train]


def test_other_good_number_writes_its_own_folder(make_mnist_raw, no_download) -> None:
    data_path = make_mnist_raw()
    _module(data_path, good_number=1, limit_data=None).setup()
    dm = _module(data_path, good_number=7, limit_data=None)

    dm.setup()

    assert (data_path / "anomaly_good1_limitNone").is_dir()
    assert dm.layout.root == (data_path / "anomaly_good7_limitNone").resolve()
    assert all(int(s.image_path.stem) % 10 == 7 for s in dm.layout.train)


@pytest.mark.parametrize("good_number", [-1, 10])
def test_good_number_outside_0_to_9_raises(tmp_path: Path, good_number: int) -> None:
    with pytest.raises(DatasetError) as info:
        MNISTAnomalyDataModule(data_path=tmp_path, good_number=good_number)

    assert "good_number" in assert_one_line(info.value)


def test_corrupt_idx_file_in_data_path_raises_on_setup(make_mnist_raw, no_download) -> None:
    data_path = make_mnist_raw(gzipped=False)
    bad = data_path / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    bad.write_bytes(b"garbage")

    with pytest.raises(DatasetError) as info:
        _module(data_path).setup()

    assert str(bad) in assert_one_line(info.value)


# --------------------------------------------------------------------------------------------
# Offline / download


def test_offline_without_files_raises_naming_data_path_raw_folder_and_offline_demo(tmp_path: Path, monkeypatch) -> None:
    # Simulates the network being unavailable: torchvision's download would raise an OSError
    # (URLError is one). Nothing is fetched for real.
    def offline(data_path: Path) -> None:
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(mnist, "download_mnist", offline)
    data_path = tmp_path / "mnist_offline"

    with pytest.raises(DatasetError) as info:
        _module(data_path).setup()

    message = assert_one_line(info.value)
    assert str(data_path) in message
    assert str(data_path / "MNIST" / "raw") in message
    assert OFFLINE_DEMO in message
    assert "train-images-idx3-ubyte.gz" in message
    assert "OSError" in message


def test_download_that_leaves_no_files_raises(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(mnist, "download_mnist", lambda data_path: None)
    data_path = tmp_path / "mnist_empty"

    with pytest.raises(DatasetError) as info:
        _module(data_path).setup()

    assert str(data_path) in assert_one_line(info.value)


def test_missing_files_are_downloaded_into_mnist_raw(tmp_path: Path, monkeypatch) -> None:
    data_path = tmp_path / "mnist_download"
    calls: list[Path] = []

    def fake_download(target: Path) -> None:
        # Stands in for torchvision: writes the gzipped IDX files where torchvision puts them.
        calls.append(target)
        train_images, train_labels = fake_mnist_arrays(30, seed=1)
        test_images, test_labels = fake_mnist_arrays(30, seed=2)
        raw = target / "MNIST" / "raw"
        write_idx(raw / MNIST_FILES["train_images"], train_images, gzipped=True)
        write_idx(raw / MNIST_FILES["train_labels"], train_labels, gzipped=True)
        write_idx(raw / MNIST_FILES["test_images"], test_images, gzipped=True)
        write_idx(raw / MNIST_FILES["test_labels"], test_labels, gzipped=True)

    monkeypatch.setattr(mnist, "download_mnist", fake_download)
    dm = _module(data_path, good_number=4, limit_data=None)

    dm.setup()

    assert calls == [data_path]
    assert len(dm.layout.train) == 3
    assert len(dm.layout.test) == 30
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch.image, torch.Tensor)
