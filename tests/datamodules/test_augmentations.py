"""Train-time augmentations (albumentations 2.0): training images only, size kept, mistakes in one line."""

import albumentations as A
import pytest
import torch

from quadra_ad.datamodules.anomaly import AnomalyDataModule
from quadra_ad.errors import ConfigError
from quadra_ad.testing.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("aug") / "data", n_train=4, n_test_good=2, n_test_defect=2,
                                   size=32)


def _module(data, augmentations):
    return AnomalyDataModule(data, image_size=[32, 32], mean=[0.0] * 3, std=[1.0] * 3, train_augmentations=augmentations)


def test_augmentations_apply_to_training_images_only(data):
    plain, flipped = _module(data, []), _module(data, [A.HorizontalFlip(p=1.0)])
    for module in (plain, flipped):
        module.setup()
    train = [loader().dataset[0].image for loader in (plain.train_dataloader, flipped.train_dataloader)]
    assert torch.equal(train[1], torch.flip(train[0], dims=[-1])) and not torch.equal(train[0], train[1])
    for split in ("val_dataloader", "test_dataloader"):
        assert torch.equal(getattr(plain, split)().dataset[0].image, getattr(flipped, split)().dataset[0].image)


@pytest.mark.parametrize("transform", [A.RandomCrop(16, 16), A.Resize(48, 48), A.LongestMaxSize(max_size=20)])
def test_an_augmentation_that_changes_the_size_is_refused_before_training(data, transform):
    module = _module(data, [A.HorizontalFlip(p=0.5), transform])
    with pytest.raises(ConfigError, match=rf"^transforms.train_augmentations\[1\] albumentations.{type(transform).__name__} "
                                          r"changes the size of the training images \(32x32 -> .*datamodule.crop_area"):
        module.setup()


def test_something_else_than_an_albumentations_transform_is_one_line(data):
    with pytest.raises(ConfigError, match=r"^transforms.train_augmentations\[0\] is a builtins.dict, not an albumentations"):
        _module(data, [{"name": "flip"}])


def test_right_angle_rotations_are_fine_on_square_images(data):
    module = _module(data, [A.RandomRotate90(p=1.0)])
    module.setup()
    assert module.train_dataloader().dataset[0].image.shape == (3, 32, 32)


def test_a_preset_is_one_override_and_trains(tmp_path):
    from quadra_ad.run import run
    from tests.conftest import training_config

    data = write_synthetic_dataset(tmp_path / "data", n_train=6, n_test_good=3, n_test_defect=3, size=32)
    task = run(training_config("base/anomaly/padim", data, None, "augmentation=textures", "export.types=[]"),
               output_dir=tmp_path / "run")
    assert task.datamodule.augmentation.names == ["HorizontalFlip", "VerticalFlip", "RandomRotate90"]
    assert "image_AUROC" in task.metrics
