"""Shared fixtures: tiny generated datasets and a fast training config."""

import os
import tempfile
from pathlib import Path

import pytest

from quadra_ad.config.compose import compose_config
from quadra_ad.testing.synthetic import write_synthetic_dataset

# Keep every test offline: the hub must never be asked for weights.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Keep every test out of the user's home: the store template and the models:/ cache live in
# XDG_CACHE_HOME, here a temporary folder of this test session (subprocesses inherit it).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="quadra_ad_test_cache_")
os.environ["QUADRA_AD_MODEL_CACHE"] = os.path.join(os.environ["XDG_CACHE_HOME"], "models")

IMAGE_SIZE = 32


@pytest.fixture(scope="session")
def segmentation_dataset(tmp_path_factory) -> Path:
    """Train/test folders with masks and a few unknown images."""
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("segmentation"), n_train=12, n_test_good=6, n_test_defect=6,
        size=IMAGE_SIZE, defect_contrast=0.3, n_unknown=3,
    )


@pytest.fixture(scope="session")
def classification_dataset(tmp_path_factory) -> Path:
    """Train/test folders without ground_truth masks."""
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("classification"), n_train=12, n_test_good=6, n_test_defect=6,
        size=IMAGE_SIZE, with_masks=False, defect_contrast=0.3,
    )


def fast_overrides(data_path: Path, tracking_dir: Path | None, *extra: str) -> list[str]:
    """Overrides that keep a training run to a few seconds on two CPU cores."""
    overrides = [
        f"datamodule.data_path={data_path}",
        "backbone.pre_trained=false",
        f"transforms.input_size=[{IMAGE_SIZE},{IMAGE_SIZE}]",
        "datamodule.num_workers=0",
        "datamodule.train_batch_size=8",
        "datamodule.test_batch_size=8",
        "trainer.enable_progress_bar=false",
        "callbacks=none",
    ]
    if tracking_dir is None:
        overrides.append("~logger")
    else:
        overrides.append(f"logger.mlflow.tracking_uri=sqlite:///{tracking_dir}/mlflow.db")
    return overrides + list(extra)


def training_config(experiment: str, data_path: Path, tracking_dir: Path | None, *extra: str):
    """Compose ``experiment`` with the fast overrides."""
    return compose_config([f"experiment={experiment}", *fast_overrides(data_path, tracking_dir, *extra)])
