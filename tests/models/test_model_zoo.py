"""Every model trains, tests, exports to TorchScript and ONNX and passes the inference parity
check, on tiny generated data on CPU with random backbone weights (nothing is downloaded)."""

from pathlib import Path

import pytest
import torch

from quadra_ad.config.compose import compose_config
from quadra_ad.datamodules.synthetic import write_synthetic_dataset
from quadra_ad.run import run

# model -> (smallest input size it runs at, backbone override, marks)
MODELS = {
    "padim": (64, "resnet18", ()),
    "patchcore": (64, "resnet18", ()),
    "fastflow": (64, "resnet18", ()),
    "stfpm": (64, "resnet18", ()),
    "reverse_distillation": (64, "resnet18", ()),
    "dfm": (64, "resnet18", ()),
    "dfkde": (64, "resnet18", ()),
    "uflow": (64, "resnet18", ()),
    "supersimplenet": (128, "resnet18", (pytest.mark.slow,)),
    "draem": (64, None, (pytest.mark.slow,)),
    "efficient_ad": (256, None, (pytest.mark.slow,)),
    "cflow": (128, "resnet18", (pytest.mark.slow,)),
    "csflow": (128, None, (pytest.mark.slow,)),
}
TOLERANCE = {"model.pt": 1e-4, "model.onnx": 1e-3}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    made = {}

    def get(size: int) -> Path:
        if size not in made:
            made[size] = write_synthetic_dataset(tmp_path_factory.mktemp(f"zoo{size}"), n_train=20, n_test_good=4,
                                                 n_test_defect=4, size=size, defect_contrast=0.4)
        return made[size]

    return get


def efficient_ad_files(folder: Path) -> list[str]:
    """A random teacher and a two-class ImageNette stand-in: EfficientAd's downloads, offline."""
    import cv2
    import numpy as np
    from anomalib.models.image.efficient_ad.torch_model import PDN_S

    teacher = folder / "pretrained_teacher_small.pth"
    torch.save(PDN_S(out_channels=384, padding=False).state_dict(), teacher)
    rng = np.random.default_rng(0)
    for cls in ("n01440764", "n02102040"):
        (folder / "imagenette" / cls).mkdir(parents=True)
        for i in range(2):
            cv2.imwrite(str(folder / "imagenette" / cls / f"{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return [f"model.teacher_weights={teacher}", f"model.imagenet_dir={folder / 'imagenette'}"]


def zoo_overrides(model: str, size: int, backbone: str | None, data: Path, folder: Path) -> list[str]:
    overrides = [
        f"experiment=base/anomaly/{model}",
        f"datamodule.data_path={data}",
        f"transforms.input_size=[{size},{size}]",
        "backbone.pre_trained=false",
        "datamodule.num_workers=0",
        "datamodule.train_batch_size=10",
        "datamodule.test_batch_size=8",
        "trainer.max_epochs=1" if model != "efficient_ad" else "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false",
        "~logger",
    ]
    if backbone:
        overrides.append(f"backbone={backbone}")
    if model == "draem":
        (folder / "dtd").mkdir()
        overrides.append(f"model.dtd_dir={folder / 'dtd'}")
    if model == "efficient_ad":
        overrides += efficient_ad_files(folder)
    return overrides


@pytest.mark.parametrize("model", [pytest.param(m, marks=MODELS[m][2]) for m in MODELS])
def test_model_trains_exports_and_reproduces_its_scores_at_inference(model, datasets, tmp_path):
    size, backbone, _ = MODELS[model]
    data = datasets(size)
    training = run(compose_config(zoo_overrides(model, size, backbone, data, tmp_path)), output_dir=tmp_path / "train")
    assert 0.0 <= training.metrics["image_AUROC"] <= 1.0
    assert set(training.exported) == {"torchscript", "onnx"}
    expected = dict(zip(training.collector.test.image_paths, training.collector.test.scores))
    for file_name, tolerance in TOLERANCE.items():
        cfg = compose_config([
            "experiment=base/anomaly/inference",
            f"task.model_path={tmp_path / 'train' / 'deployment_model' / file_name}",
            f"datamodule.data_path={data}",
            "datamodule.num_workers=0",
            "task.use_training_threshold=true",
            "task.plot_heatmaps=false",
            "~logger",
        ])
        inference = run(cfg, output_dir=tmp_path / f"infer_{file_name}")
        got = dict(zip(inference.labelled.image_paths, inference.labelled.scores))
        worst = max(abs(got[p] - expected[p]) for p in expected)
        scale = max(1.0, max(abs(v) for v in expected.values()))
        assert worst <= tolerance * scale, (file_name, worst)
        assert inference.metrics["image_AUROC"] == pytest.approx(training.metrics["image_AUROC"], abs=1e-9)
