"""Smoke-run recipes: every model on CPU in seconds, offline, with random backbone weights.

Used by the model tests and by ``scripts/support_matrix.py``; not part of the user API. A recipe is the smallest input
size a model runs at, the backbone to use, and the local stand-ins for what a model would
otherwise download (an empty DTD folder for DRAEM; a random teacher and a tiny ImageNette for
EfficientAd). Scores from random weights only prove the mechanics, not the quality.
"""

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch


@dataclass(frozen=True)
class SmokeRecipe:
    size: int
    backbone: str | None = "resnet18"
    epochs: int = 1
    slow: bool = False
    extra: tuple[str, ...] = ()
    #: anomalib's implementation normalises scores over each batch, so a score depends on the
    #: other images in its batch: inference reproduces training only with identical batches.
    batch_dependent: bool = False


RECIPES: dict[str, SmokeRecipe] = {
    "padim": SmokeRecipe(64),
    "patchcore": SmokeRecipe(64),
    "fastflow": SmokeRecipe(64),
    "stfpm": SmokeRecipe(64),
    "reverse_distillation": SmokeRecipe(64),
    "dfm": SmokeRecipe(64),
    "dfkde": SmokeRecipe(64),
    "uflow": SmokeRecipe(64),
    "supersimplenet": SmokeRecipe(128, slow=True),
    "draem": SmokeRecipe(64, backbone=None, slow=True),
    "efficient_ad": SmokeRecipe(256, backbone=None, slow=True),
    # At 128 px an image has 16 feature fibres; the default fibre batch (64) needs 4 images.
    "cflow": SmokeRecipe(128, slow=True, extra=("model.fiber_batch_size=16",), batch_dependent=True),
    "csflow": SmokeRecipe(128, backbone=None, slow=True),
    "cfa": SmokeRecipe(64, slow=True),
    "fre": SmokeRecipe(64, slow=True),
    "ganomaly": SmokeRecipe(64, backbone=None, slow=True),
    "mh_patchcore": SmokeRecipe(64, slow=True, extra=("model.memory_bank_size=200", "model.local_coreset_size=16")),
    "glass": SmokeRecipe(64, slow=True, extra=("model.pretrain_embed_dim=256", "model.target_embed_dim=256",
                                               "model.discriminator_hidden=128")),
    "patchflow": SmokeRecipe(64, slow=True),
    "uninet": SmokeRecipe(64, backbone="resnet50", slow=True),  # its bottleneck takes ResNet-50 channels
    "dsr": SmokeRecipe(64, backbone=None, slow=True),
    # The ViT models at their smallest: the small encoders, 8 x 8 patches of 14 (or 4 x 4 of 16) px.
    "anomaly_dino": SmokeRecipe(112, backbone=None, slow=True),
    "dinomaly": SmokeRecipe(112, backbone=None, slow=True, extra=("model.encoder_name=vit_small_patch14_reg4_dinov2",)),
    "inp_former": SmokeRecipe(112, backbone=None, slow=True, extra=("model.encoder_name=vit_small_patch14_reg4_dinov2",)),
    "foundad": SmokeRecipe(112, backbone=None, slow=True, extra=("model.encoder_name=dinov2_vit_small_14",)),
    "general_ad": SmokeRecipe(112, backbone=None, slow=True, extra=(
        "model.backbone=vit_small_patch14_dinov2.lvd142m", "model.layers=[12]", "model.hidden_dim=256")),
    "l2bt": SmokeRecipe(112, backbone=None, slow=True),
    "rad": SmokeRecipe(64, backbone=None, slow=True, extra=("model.backbone=vit_small_patch16_dinov3", "model.k_image=4")),
    "super_add": SmokeRecipe(64, backbone=None, slow=True, extra=(
        "model.backbone=vit_small_patch16_dinov3", "model.patch_size=64", "model.layers=[11]")),
}


def _efficient_ad_stand_ins(folder: Path) -> list[str]:
    """A random teacher file and a two-class ImageNette stand-in."""
    from anomalib.models import EfficientAd

    teacher = folder / "pretrained_teacher_small.pth"
    torch.save(EfficientAd(model_size="small", pre_processor=False, visualizer=False).model.teacher.state_dict(), teacher)
    rng = np.random.default_rng(0)
    for name in ("n01440764", "n02102040"):
        (folder / "imagenette" / name).mkdir(parents=True, exist_ok=True)
        for i in range(2):
            cv2.imwrite(str(folder / "imagenette" / name / f"{i}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    return [f"model.teacher_weights={teacher}", f"model.imagenet_dir={folder / 'imagenette'}"]


def smoke_overrides(model: str, data: Path, folder: Path) -> list[str]:
    """Overrides that run ``experiment=base/anomaly/<model>`` on ``data`` as a smoke run."""
    recipe = RECIPES[model]
    overrides = [
        f"experiment=base/anomaly/{model}",
        f"datamodule.data_path={data}",
        f"transforms.input_size=[{recipe.size},{recipe.size}]",
        "backbone.pre_trained=false",
        "datamodule.num_workers=0",
        "datamodule.test_batch_size=8",
        f"trainer.max_epochs={recipe.epochs}",
        "trainer.enable_progress_bar=false",
    ]
    if model != "efficient_ad":
        overrides.append("datamodule.train_batch_size=10")
    overrides += list(recipe.extra)
    if recipe.backbone:
        overrides.append(f"backbone={recipe.backbone}")
    if model == "draem":
        (folder / "dtd").mkdir(parents=True, exist_ok=True)
        overrides.append(f"model.dtd_dir={folder / 'dtd'}")
    if model == "efficient_ad":
        overrides += _efficient_ad_stand_ins(folder)
    return overrides


#: Largest score difference allowed between an exported file and the trained model, per unit of
#: score magnitude (scores above 1 scale it).
PARITY_TOLERANCE = {"torchscript": 1e-4, "onnx": 1e-3, "openvino": 1e-3}
EXPORT_FILES = {"torchscript": "model.pt", "onnx": "model.onnx"}  # the default export.types


@dataclass(frozen=True)
class ScoreComparison:
    """Exported-model scores against the training scores of the same images."""

    max_diff: float
    within_tolerance: bool
    #: False when every training score is equal up to float noise (random weights, e.g. CS-Flow):
    #: the order of such scores is noise too, so equal AUROCs cannot be asked for.
    order_meaningful: bool


def compare_scores(expected: dict[str, float], got: dict[str, float], export_type: str) -> ScoreComparison:
    """Compare scores keyed by image path (``got`` must cover every image of ``expected``)."""
    tolerance = PARITY_TOLERANCE[export_type] * max(1.0, max(abs(v) for v in expected.values()))
    worst = max(abs(got[p] - expected[p]) for p in expected)
    spread = max(expected.values()) - min(expected.values())
    return ScoreComparison(worst, worst <= tolerance, spread > 100 * tolerance)


def inference_overrides(model_path: Path, data: Path) -> list[str]:
    """Inference on ``data`` with the training threshold, no heatmaps, no tracking."""
    return [
        "experiment=base/anomaly/inference",
        f"task.model_path={model_path}",
        f"datamodule.data_path={data}",
        "datamodule.num_workers=0",
        "task.use_training_threshold=true",
        "task.plot_heatmaps=false",
        "~logger",
    ]
