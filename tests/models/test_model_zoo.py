"""Every model trains, tests, exports to TorchScript and ONNX and passes the inference parity
check, on tiny generated data on CPU with random backbone weights (nothing is downloaded)."""

from pathlib import Path

import pytest
from sklearn.metrics import roc_auc_score

from quadra_ad.checks.composition import compose_config
from quadra_ad.run import run
from quadra_ad.testing.smoke import EXPORT_FILES, RECIPES, compare_scores, inference_overrides, smoke_overrides
from quadra_ad.testing.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    made = {}

    def get(size: int) -> Path:
        if size not in made:
            made[size] = write_synthetic_dataset(tmp_path_factory.mktemp(f"zoo{size}"), n_train=20, n_test_good=4,
                                                 n_test_defect=4, size=size, defect_contrast=0.4)
        return made[size]

    return get


#: Models whose exports do not reproduce them yet (the support matrix shows the numbers).
EXPORT_MISMATCH = {"rad": "anomalib's RAD traces to other scores (Δ 0.12 at batch 1); its ONNX export is refused"}


def _marks(model: str) -> tuple:
    marks = (pytest.mark.slow,) if RECIPES[model].slow else ()
    if model in EXPORT_MISMATCH:
        marks += (pytest.mark.xfail(reason=EXPORT_MISMATCH[model], strict=True),)
    return marks


@pytest.mark.parametrize("model", [pytest.param(m, marks=_marks(m)) for m in RECIPES])
def test_model_trains_exports_and_reproduces_its_scores_at_inference(model, datasets, tmp_path):
    data = datasets(RECIPES[model].size)
    training = run(compose_config([*smoke_overrides(model, data, tmp_path), "~logger"]), output_dir=tmp_path / "train")
    test_set = training.collector.test
    labelled = test_set.labelled
    assert training.metrics["image_AUROC"] == roc_auc_score(
        [test_set.labels[i] for i in labelled], [test_set.scores[i] for i in labelled])
    assert set(training.exported) == {"torchscript", "onnx"}
    expected = dict(zip(training.collector.test.image_paths, training.collector.test.scores, strict=True))
    for export_type, file_name in EXPORT_FILES.items():
        model_path = tmp_path / "train" / "deployment_model" / file_name
        inference = run(compose_config(inference_overrides(model_path, data)), output_dir=tmp_path / f"infer_{file_name}")
        got = dict(zip(inference.labelled.image_paths, inference.labelled.scores, strict=True))
        assert set(got) == set(expected)
        if RECIPES[model].batch_dependent:
            continue  # scores depend on batch composition (see SmokeRecipe.batch_dependent)
        comparison = compare_scores(expected, got, export_type)
        assert comparison.within_tolerance, (file_name, comparison.max_diff)
        if comparison.order_meaningful:
            assert inference.metrics["image_AUROC"] == pytest.approx(training.metrics["image_AUROC"], abs=1e-9)
