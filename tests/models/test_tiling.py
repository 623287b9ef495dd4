"""Tiling (model.tiling): PaDiM on 64 px images cut into 32 px tiles trains, and its TorchScript
and ONNX exports cut and stitch the same way (same scores at inference as in training)."""


import pytest
import torch
from anomalib.data.utils.tiler import Tiler

from quadra_ad.checks.composition import compose_config
from quadra_ad.export.graph import AnomalyGraph
from quadra_ad.run import run
from quadra_ad.testing.smoke import EXPORT_FILES, compare_scores, inference_overrides, smoke_overrides
from quadra_ad.testing.synthetic import write_synthetic_dataset


@pytest.mark.slow
def test_tiled_padim_exports_reproduce_its_scores(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", n_train=12, n_test_good=4, n_test_defect=4, size=64,
                                   defect_contrast=0.4)
    overrides = [*smoke_overrides("padim", data, tmp_path), "~logger", "model.tiling.enabled=true",
                 "model.tiling.tile_size=32", "model.tiling.stride=16"]
    training = run(compose_config(overrides), output_dir=tmp_path / "train")
    torch_model = training.model.model
    assert isinstance(torch_model.tiler, Tiler) and torch_model.tiler.tile_size_h == 32
    # The tiler is in the forward pass: without it the same weights give other maps.
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        tiled = AnomalyGraph(torch_model)(image)[1]
        torch_model.tiler = None
        whole = AnomalyGraph(torch_model)(image)[1]
    assert tiled.shape == whole.shape == (1, 1, 64, 64) and not torch.allclose(tiled, whole)

    assert {t: batch for t, (_, batch) in training.exported.items()} == {"torchscript": None, "onnx": None}
    expected = dict(zip(training.collector.test.image_paths, training.collector.test.scores, strict=True))
    for export_type, file_name in EXPORT_FILES.items():
        inference = run(compose_config(inference_overrides(tmp_path / "train" / "deployment_model" / file_name, data)),
                        output_dir=tmp_path / f"infer_{export_type}")
        comparison = compare_scores(expected, dict(zip(inference.labelled.image_paths, inference.labelled.scores, strict=True)),
                                    export_type)
        assert comparison.within_tolerance, (export_type, comparison.max_diff)
        assert inference.metrics["image_AUROC"] == pytest.approx(training.metrics["image_AUROC"], abs=1e-9)
