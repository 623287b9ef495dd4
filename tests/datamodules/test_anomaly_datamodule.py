"""AnomalyDataModule: an MVTec-style folder as dataloaders of anomalib ImageBatch objects."""

from pathlib import Path

import numpy as np
import pytest
import torch
from anomalib.data import ImageBatch
from dm_helpers import SIDE, assert_one_line, random_image, square_mask, write_image

from quadra_ad.datamodules import AnomalyDataModule
from quadra_ad.datamodules.images import read_image
from quadra_ad.errors import ConfigError, DatasetError

IMAGE_SIZE = (8, 12)  # non-square: a (w, h) mix-up shows


def _all_batches(loader) -> list[ImageBatch]:
    return list(loader)


def _single_batch(loader) -> ImageBatch:
    batches = list(loader)
    assert len(batches) == 1
    return batches[0]


def _module(root: Path, **kwargs) -> AnomalyDataModule:
    kwargs.setdefault("image_size", IMAGE_SIZE)
    kwargs.setdefault("train_batch_size", 2)
    kwargs.setdefault("test_batch_size", 16)
    dm = AnomalyDataModule(data_path=root, **kwargs)
    dm.setup()
    return dm


def _write_constant_dataset(root: Path, value: int = 255, side: int = SIDE, mask: np.ndarray | None = None) -> Path:
    """A dataset whose every image is ``value`` everywhere; one anomalous image with ``mask``."""
    image = np.full((side, side, 3), value, dtype=np.uint8)
    write_image(root / "train" / "good" / "t.png", image)
    write_image(root / "test" / "good" / "g.png", image)
    write_image(root / "test" / "scratch" / "s.png", image)
    write_image(root / "ground_truth" / "scratch" / "s_mask.png", np.full((side, side), 255, np.uint8) if mask is None else mask)
    return root


# --------------------------------------------------------------------------------------------
# Batches


def test_train_dataloader_yields_image_batches_at_image_size(make_anomaly_folder) -> None:
    dm = _module(make_anomaly_folder(n_train=3))

    batches = _all_batches(dm.train_dataloader())

    assert sum(b.image.shape[0] for b in batches) == 3
    for batch in batches:
        assert isinstance(batch, ImageBatch)
        assert batch.image.dtype == torch.float32
        assert tuple(batch.image.shape[1:]) == (3, *IMAGE_SIZE)
        assert not batch.gt_label.any()  # training images are all normal
    assert sorted(p for b in batches for p in b.image_path) == sorted(str(s.image_path) for s in dm.layout.train)


def test_test_batches_carry_labels_and_masks_in_layout_order(make_anomaly_folder) -> None:
    dm = _module(make_anomaly_folder(n_test_good=2, defects={"scratch": 2, "dent": 1}))

    batch = _single_batch(dm.test_dataloader())

    assert isinstance(batch, ImageBatch)
    assert tuple(batch.image.shape) == (5, 3, *IMAGE_SIZE)
    assert batch.image_path == [str(s.image_path) for s in dm.layout.test]
    assert [int(v) for v in batch.gt_label.tolist()] == [s.label for s in dm.layout.test]
    assert batch.gt_mask is not None
    assert tuple(batch.gt_mask.shape) == (5, *IMAGE_SIZE)
    assert batch.gt_mask.dtype == torch.bool
    for mask, sample in zip(batch.gt_mask, dm.layout.test, strict=True):
        if sample.label == 0:
            assert not mask.any(), f"normal image {sample.image_path.name} got a non-empty mask"
        else:
            assert mask.any(), f"anomalous image {sample.image_path.name} got an empty mask"


def test_val_dataloader_serves_the_labelled_test_images(make_anomaly_folder) -> None:
    dm = _module(make_anomaly_folder(n_unknown=2))

    val = _single_batch(dm.val_dataloader())
    test = _single_batch(dm.test_dataloader())

    assert val.image_path == test.image_path
    assert torch.equal(val.image, test.image)
    assert torch.equal(val.gt_label, test.gt_label)
    assert all("unknown" not in p for p in val.image_path)


def test_mask_content_matches_the_ground_truth_file(make_anomaly_folder) -> None:
    dm = _module(make_anomaly_folder(defects={"scratch": 1}), image_size=(SIDE, SIDE))

    batch = _single_batch(dm.test_dataloader())

    (index,) = [i for i, s in enumerate(dm.layout.test) if s.label == 1]
    assert torch.equal(batch.gt_mask[index], torch.from_numpy(square_mask() > 0))


def test_resized_mask_stays_binary(make_anomaly_folder) -> None:
    dm = _module(make_anomaly_folder(defects={"scratch": 1}, side=32), image_size=(10, 6))

    batch = _single_batch(dm.test_dataloader())

    assert batch.gt_mask.dtype == torch.bool
    assert tuple(batch.gt_mask.shape[1:]) == (10, 6)


def test_normal_images_get_all_zero_masks_even_with_ground_truth_good_missing(make_anomaly_folder) -> None:
    root = make_anomaly_folder(n_train=2, n_test_good=3, defects={"scratch": 1})
    assert not (root / "ground_truth" / "good").exists()
    dm = _module(root)

    batch = _single_batch(dm.test_dataloader())
    train_batches = _all_batches(dm.train_dataloader())

    good = [i for i, s in enumerate(dm.layout.test) if s.label == 0]
    assert len(good) == 3
    assert not batch.gt_mask[good].any()
    for train_batch in train_batches:
        assert train_batch.gt_mask is not None
        assert not train_batch.gt_mask.any()


def test_classification_folder_has_labels_but_no_masks(make_anomaly_folder) -> None:
    dm = _module(make_anomaly_folder(with_masks=False))

    batch = _single_batch(dm.test_dataloader())

    assert not dm.has_masks
    assert batch.gt_mask is None
    assert [int(v) for v in batch.gt_label.tolist()] == [0, 0, 1, 1]
    assert all(b.gt_mask is None for b in dm.train_dataloader())


def test_predict_dataloader_yields_the_unknown_images(make_anomaly_folder) -> None:
    dm = _module(make_anomaly_folder(n_unknown=3))

    batch = _single_batch(dm.predict_dataloader())

    assert isinstance(batch, ImageBatch)
    assert tuple(batch.image.shape) == (3, 3, *IMAGE_SIZE)
    assert batch.image_path == [str(s.image_path) for s in dm.layout.unknown]
    assert all(Path(p).parent.name == "unknown" for p in batch.image_path)
    assert batch.gt_label is None
    assert batch.gt_mask is None


def test_predict_dataloader_is_empty_without_unknown_images(make_anomaly_folder) -> None:
    dm = _module(make_anomaly_folder())

    assert _all_batches(dm.predict_dataloader()) == []


def test_test_phase_works_without_train_folder(make_anomaly_folder) -> None:
    dm = _module(make_anomaly_folder(with_train=False, n_unknown=1), phase="test")

    assert dm.layout.train == []
    assert _single_batch(dm.test_dataloader()).image.shape[0] == 4
    assert _single_batch(dm.predict_dataloader()).image.shape[0] == 1


def test_has_masks_sets_the_module_up_on_demand(make_anomaly_folder) -> None:
    dm = AnomalyDataModule(data_path=make_anomaly_folder(), image_size=IMAGE_SIZE)
    assert dm.layout is None

    assert dm.has_masks is True
    assert dm.layout is not None


def test_second_setup_keeps_the_first_layout(make_anomaly_folder) -> None:
    root = make_anomaly_folder(n_train=2)
    dm = _module(root)
    layout = dm.layout
    write_image(root / "train" / "good" / "added_later.png", random_image(np.random.default_rng(9)))

    dm.setup("test")

    assert dm.layout is layout
    assert len(dm.layout.train) == 2


def test_normalisation_uses_mean_and_std(tmp_path: Path) -> None:
    root = _write_constant_dataset(tmp_path / "white", value=255)
    dm = _module(root, mean=(0.5, 0.25, 0.0), std=(0.25, 0.5, 2.0))

    batch = _single_batch(dm.test_dataloader())

    assert torch.allclose(batch.image[:, 0], torch.full_like(batch.image[:, 0], 2.0))  # (1 - 0.5) / 0.25
    assert torch.allclose(batch.image[:, 1], torch.full_like(batch.image[:, 1], 1.5))  # (1 - 0.25) / 0.5
    assert torch.allclose(batch.image[:, 2], torch.full_like(batch.image[:, 2], 0.5))  # (1 - 0) / 2


def test_default_normalisation_is_imagenet(tmp_path: Path) -> None:
    root = _write_constant_dataset(tmp_path / "black", value=0)
    dm = _module(root)

    image = _single_batch(dm.test_dataloader()).image[0]

    expected = [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]
    for channel, value in enumerate(expected):
        assert torch.allclose(image[channel], torch.full_like(image[channel], value), atol=1e-5)


def test_worker_processes_load_the_same_batches(make_anomaly_folder) -> None:
    root = make_anomaly_folder(n_test_good=2, defects={"scratch": 2})
    in_process = _single_batch(_module(root).test_dataloader())

    with_workers = _single_batch(_module(root, num_workers=2).test_dataloader())

    assert with_workers.image_path == in_process.image_path
    assert torch.equal(with_workers.image, in_process.image)
    assert torch.equal(with_workers.gt_mask, in_process.gt_mask)


def test_data_path_is_given_as_string(make_anomaly_folder) -> None:
    dm = _module(str(make_anomaly_folder()))
    assert len(dm.layout.test) == 4


# --------------------------------------------------------------------------------------------
# crop_area and valid_area_mask


def test_crop_area_cuts_x1_y1_x2_y2_before_resizing(tmp_path: Path) -> None:
    root = tmp_path / "gradient"
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)
    mask = np.zeros((SIDE, SIDE), dtype=np.uint8)
    mask[3, 5] = 255  # inside the crop
    mask[0, 0] = 255  # outside the crop
    write_image(root / "train" / "good" / "t.png", image)
    path = write_image(root / "test" / "scratch" / "s.png", image)
    write_image(root / "ground_truth" / "scratch" / "s_mask.png", mask)
    x1, y1, x2, y2 = 4, 2, 12, 10  # an 8x8 crop: resizing to 8x8 keeps the pixels untouched

    dm = _module(root, crop_area=[x1, y1, x2, y2], image_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    batch = _single_batch(dm.test_dataloader())

    assert torch.allclose(batch.image[0], read_image(path)[:, y1:y2, x1:x2])
    expected_mask = torch.from_numpy(mask[y1:y2, x1:x2] > 0)
    assert torch.equal(batch.gt_mask[0], expected_mask)
    assert int(batch.gt_mask[0].sum()) == 1


def test_crop_area_then_resize_to_image_size(make_anomaly_folder) -> None:
    dm = _module(make_anomaly_folder(side=32), crop_area=[0, 0, 20, 10], image_size=(6, 7))

    batch = _single_batch(dm.test_dataloader())

    assert tuple(batch.image.shape[1:]) == (3, 6, 7)
    assert tuple(batch.gt_mask.shape[1:]) == (6, 7)


def test_crop_area_outside_the_image_raises_naming_it(make_anomaly_folder) -> None:
    dm = _module(make_anomaly_folder(), crop_area=[0, 0, SIDE + 1, SIDE])

    with pytest.raises(DatasetError) as info:
        next(iter(dm.test_dataloader()))

    message = assert_one_line(info.value)
    assert "crop_area" in message


def test_crop_area_with_wrong_number_of_values_raises(make_anomaly_folder) -> None:
    dm = AnomalyDataModule(data_path=make_anomaly_folder(), crop_area=[0, 0, 8])

    with pytest.raises(DatasetError) as info:
        dm.setup()

    assert "crop_area" in assert_one_line(info.value)


def test_valid_area_mask_zeroes_pixels_outside_it(tmp_path: Path) -> None:
    root = _write_constant_dataset(tmp_path / "white", value=255)
    valid = np.zeros((SIDE, SIDE), dtype=np.uint8)
    valid[:, : SIDE // 2] = 255  # left half valid
    valid_path = write_image(tmp_path / "valid.png", valid)

    dm = _module(root, valid_area_mask=valid_path, image_size=(SIDE, SIDE), mean=(0, 0, 0), std=(1, 1, 1))
    batch = _single_batch(dm.test_dataloader())

    assert torch.all(batch.image[..., : SIDE // 2] == 1.0)
    assert torch.all(batch.image[..., SIDE // 2 :] == 0.0)
    # the mask is cut the same way: the full defect mask keeps only its valid half
    (index,) = [i for i, s in enumerate(dm.layout.test) if s.label == 1]
    assert torch.all(batch.gt_mask[index][:, : SIDE // 2])
    assert not batch.gt_mask[index][:, SIDE // 2 :].any()


def test_valid_area_mask_is_applied_before_normalisation(tmp_path: Path) -> None:
    root = _write_constant_dataset(tmp_path / "white", value=255)
    valid = np.zeros((SIDE, SIDE), dtype=np.uint8)
    valid[: SIDE // 2] = 255  # top half valid
    valid_path = write_image(tmp_path / "valid.png", valid)

    dm = _module(root, valid_area_mask=str(valid_path), image_size=(SIDE, SIDE), mean=(0.5,) * 3, std=(0.5,) * 3)
    image = _single_batch(dm.test_dataloader()).image

    assert torch.allclose(image[..., : SIDE // 2, :], torch.tensor(1.0))  # (1 - 0.5) / 0.5
    assert torch.allclose(image[..., SIDE // 2 :, :], torch.tensor(-1.0))  # (0 - 0.5) / 0.5: zeroed first


def test_valid_area_mask_is_applied_before_crop(tmp_path: Path) -> None:
    root = _write_constant_dataset(tmp_path / "white", value=255)
    valid = np.zeros((SIDE, SIDE), dtype=np.uint8)
    valid[:, : SIDE // 2] = 255  # full image size, not crop size
    valid_path = write_image(tmp_path / "valid.png", valid)

    dm = _module(
        root, valid_area_mask=valid_path, crop_area=[4, 0, 12, 8], image_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1)
    )
    image = _single_batch(dm.test_dataloader()).image

    assert torch.all(image[..., :4] == 1.0)  # columns 4..7 of the original: valid
    assert torch.all(image[..., 4:] == 0.0)  # columns 8..11: outside the valid area


def test_valid_area_mask_of_wrong_size_raises_naming_it(make_anomaly_folder, tmp_path: Path) -> None:
    root = make_anomaly_folder()
    valid_path = write_image(tmp_path / "valid.png", np.full((SIDE, SIDE + 4), 255, dtype=np.uint8))
    dm = _module(root, valid_area_mask=valid_path)

    with pytest.raises(DatasetError) as info:
        next(iter(dm.test_dataloader()))

    message = assert_one_line(info.value)
    assert "valid_area_mask" in message
    assert str(dm.layout.test[0].image_path) in message


def test_missing_valid_area_mask_file_raises_naming_it(make_anomaly_folder, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_valid_area.png"
    dm = AnomalyDataModule(data_path=make_anomaly_folder(), valid_area_mask=missing)

    with pytest.raises(DatasetError) as info:
        dm.setup()

    assert str(missing) in assert_one_line(info.value)


# --------------------------------------------------------------------------------------------
# Errors


def test_mask_of_different_size_than_its_image_raises_naming_the_mask(make_anomaly_folder) -> None:
    root = make_anomaly_folder(defects={"scratch": 1})
    mask_path = root / "ground_truth" / "scratch" / "scratch_000_mask.png"
    write_image(mask_path, square_mask(SIDE * 2))
    dm = _module(root)

    with pytest.raises(DatasetError) as info:
        _all_batches(dm.test_dataloader())

    message = assert_one_line(info.value)
    assert str(mask_path.resolve()) in message
    assert "scratch_000.png" in message


def test_corrupt_image_raises_dataset_error_naming_it_when_loaded(make_anomaly_folder) -> None:
    root = make_anomaly_folder()
    corrupt = root / "test" / "good" / "good_000.png"
    corrupt.write_bytes(b"\x89PNG but not really")
    dm = _module(root)

    with pytest.raises(DatasetError) as info:
        _all_batches(dm.test_dataloader())

    assert str(corrupt.resolve()) in assert_one_line(info.value)


@pytest.mark.parametrize("data_path", ["", "   ", None])
def test_empty_data_path_raises_config_error(data_path) -> None:
    with pytest.raises(ConfigError) as info:
        AnomalyDataModule(data_path=data_path)

    assert "datamodule.data_path" in assert_one_line(info.value)


def test_missing_data_path_raises_dataset_error_on_setup(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    dm = AnomalyDataModule(data_path=missing)

    with pytest.raises(DatasetError) as info:
        dm.setup()

    assert str(missing) in assert_one_line(info.value)


def test_bad_phase_raises_dataset_error_on_setup(make_anomaly_folder) -> None:
    dm = AnomalyDataModule(data_path=make_anomaly_folder(), phase="fit")

    with pytest.raises(DatasetError) as info:
        dm.setup()

    assert "phase" in assert_one_line(info.value)


# --------------------------------------------------------------------------------------------
# Recovery


def test_setup_after_a_failed_setup_raises_again(make_anomaly_folder, tmp_path: Path) -> None:
    dm = AnomalyDataModule(data_path=make_anomaly_folder(), valid_area_mask=tmp_path / "missing_valid.png")
    with pytest.raises(DatasetError):
        dm.setup()

    with pytest.raises(DatasetError):
        dm.setup()
        next(iter(dm.test_dataloader()))
