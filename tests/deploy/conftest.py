"""One tiny exported model shared by the deploy input tests (PaDiM at 32 px, ONNX, no tracking)."""

from pathlib import Path

import pytest

from tests.conftest import training_config


@pytest.fixture(scope="session")
def deployment(segmentation_dataset, tmp_path_factory) -> Path:
    """A deployment_model folder: model.onnx and its model.json, trained in a few seconds."""
    from quadra_ad.run import run

    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, "export.types=[onnx]")
    return run(cfg, output_dir=tmp_path_factory.mktemp("deploy_inputs") / "run").output_dir / "deployment_model"


@pytest.fixture(scope="session")
def good_png(segmentation_dataset) -> Path:
    """A uint8 RGB PNG the model was tested on."""
    return sorted((Path(segmentation_dataset) / "test" / "good").glob("*.png"))[0]
