"""Parity check: quadra-ad against a plain anomalib Engine fit/test on the same folder.

Both sides use the same model settings, seed, input size and normalisation, and compute
thresholds on the test split (``val_split_mode=same_as_test``, as quadra-ad does). Used by
``tests/test_engine_parity.py``, ``scripts/engine_parity.py`` and ``scripts/benchmark.py``; not
part of the user API.
"""

from pathlib import Path

TOLERANCE = 0.005
LAYERS = {"padim": ["layer1", "layer2", "layer3"], "patchcore": ["layer2", "layer3"]}


def quadra_ad_auroc(model: str, data: Path, size: int, seed: int, workdir: Path) -> float:
    from quadra_ad.config.compose import compose_config
    from quadra_ad.run import run

    cfg = compose_config([
        f"experiment=base/anomaly/{model}",
        f"datamodule.data_path={data}",
        "backbone=resnet18",
        "backbone.pre_trained=false",
        f"transforms.input_size=[{size},{size}]",
        "datamodule.num_workers=0",
        f"core.seed={seed}",
        "~logger",
        "export.types=[]",
        "trainer.enable_progress_bar=false",
        "callbacks=none",
    ])
    task = run(cfg, output_dir=workdir / f"quadra_ad_{model}")
    return float(task.metrics["image_AUROC"])


def engine_setup(model: str, data: Path, size: int, seed: int, workdir: Path, num_workers: int = 0, **model_kwargs):
    """A plain anomalib Engine, model and Folder datamodule with quadra-ad's default settings.

    Same model settings, input size, normalisation, batch sizes and validation split
    (``same_as_test``) as ``quadra-ad experiment=base/anomaly/<model>``; also used by
    ``scripts/benchmark.py``.
    """
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.models import Padim, Patchcore
    from anomalib.pre_processing import PreProcessor
    from lightning.pytorch import seed_everything
    from torchvision.transforms.v2 import Compose, Normalize, Resize

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
    anomalib_model = model_class(
        backbone="resnet18", layers=LAYERS[model], pre_trained=False, pre_processor=pre_processor, visualizer=False,
        **kwargs, **model_kwargs,
    )
    engine = Engine(default_root_dir=workdir / f"engine_{model}", logger=False, enable_progress_bar=False,
                    accelerator="cpu", devices=1)
    return engine, anomalib_model, datamodule


def raw_score_auroc(engine, anomalib_model, datamodule) -> float:
    """AUROC of the fitted model's raw (un-normalised) test scores, as quadra-ad computes it."""
    import torch

    from quadra_ad.metrics import auroc

    anomalib_model.post_processor.enable_normalization = False
    batches = engine.predict(model=anomalib_model, dataloaders=datamodule.test_dataloader())
    scores = torch.cat([b.pred_score.flatten() for b in batches])
    labels = torch.cat([b.gt_label.flatten() for b in batches])
    return auroc(scores, labels)


def engine_aurocs(model: str, data: Path, size: int, seed: int, workdir: Path) -> tuple[float, float]:
    """Fit and test with anomalib's own Engine; return (exact AUROC of its raw scores, its reported AUROC).

    The first figure is what quadra-ad computes (scikit-learn on raw scores). The second is the
    ``image_AUROC`` anomalib's Evaluator reports: it is computed on scores min-max normalised and
    clamped to [0, 1], and the clamp turns the highest (or lowest) scores into ties, which can
    move AUROC by itself. It is printed for information.
    """
    engine, anomalib_model, datamodule = engine_setup(model, data, size, seed, workdir)
    engine.fit(model=anomalib_model, datamodule=datamodule)
    reported = float(engine.test(model=anomalib_model, datamodule=datamodule, verbose=False)[0]["image_AUROC"])
    return raw_score_auroc(engine, anomalib_model, datamodule), reported


def compare(model: str, data: Path, size: int, seed: int, workdir: Path) -> dict[str, float]:
    ours = quadra_ad_auroc(model, data, size, seed, workdir)
    theirs, clamped = engine_aurocs(model, data, size, seed, workdir)
    return {
        "model": model,
        "quadra_ad_image_AUROC": ours,
        "engine_image_AUROC": theirs,
        "abs_diff": abs(ours - theirs),
        "engine_normalized_image_AUROC": clamped,
    }
