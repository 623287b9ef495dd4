"""Training runs shared by the task, deploy and tracking tests (one per model, per session); a plugin
that the root conftest loads, so that each runs once whichever folder asks for it."""

import pytest

from quadra_ad.run import run
from tests.conftest import IMAGE_SIZE, training_config

EXPERIMENTS = {"padim": "base/anomaly/padim", "patchcore": "base/anomaly/patchcore"}


@pytest.fixture(scope="session", params=sorted(EXPERIMENTS))
def trained(request, segmentation_dataset, tmp_path_factory):
    """A full training run (with MLflow in its own store); returns (task, its work folder)."""
    workdir = tmp_path_factory.mktemp(request.param)
    cfg = training_config(EXPERIMENTS[request.param], segmentation_dataset, workdir, "backbone=resnet18")
    task = run(cfg, output_dir=workdir / "run")
    return task, workdir


@pytest.fixture(scope="session")
def trained_padim_classification(classification_dataset, tmp_path_factory):
    """A PaDiM run on a folder without masks (so model.json has no pixel threshold)."""
    workdir = tmp_path_factory.mktemp("padim_classification")
    cfg = training_config("base/anomaly/padim", classification_dataset, None)
    return run(cfg, output_dir=workdir / "run")


@pytest.fixture(scope="session")
def trained_with_crop_and_roi(segmentation_dataset, tmp_path_factory):
    """PaDiM trained on a crop of the images with a region-of-interest mask."""
    import cv2
    import numpy as np

    folder = tmp_path_factory.mktemp("crop_roi")
    roi = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    roi[2:30, 3:29] = 255
    cv2.imwrite(str(folder / "roi.png"), roi)
    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, "datamodule.crop_area=[2,2,30,30]",
                          f"datamodule.valid_area_mask={folder / 'roi.png'}")
    return run(cfg, output_dir=folder / "run")
