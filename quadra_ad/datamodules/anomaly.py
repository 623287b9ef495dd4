"""AnomalyDataModule: an MVTec-style folder as Lightning dataloaders.

Train on ``train/good``; validate (thresholds, normalisation stats) and test on the labelled
test images, as Quadra does; predict ``test/unknown`` without scoring it.
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib.data import ImageBatch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from quadra_ad.datamodules.augmentations import build_train_augmentation
from quadra_ad.datamodules.dataset import AnomalyDataset, ImagePreparation
from quadra_ad.datamodules.images import image_size_of
from quadra_ad.datamodules.layout import (
    AnomalyLayout,
    category_folder,
    entry_problem,
    problems_line,
    scan_anomaly_folder,
    split_validation,
)
from quadra_ad.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AnomalyDataModule(LightningDataModule):
    """Dataloaders for one anomaly-detection folder.

    Args:
        data_path: dataset root (see :mod:`quadra_ad.datamodules.layout`), or a collection of
            category folders with ``category`` naming one (``/data/mvtec`` + ``bottle``).
        phase: ``train`` (needs train/good and test) or ``test`` (inference: only test).
        image_size: (height, width) fed to the model.
        mean, std: normalisation statistics.
        mask_suffix: masks are ``ground_truth/<defect>/<stem><mask_suffix>.png``.
        valid_area_mask: optional binary image; pixels outside are zeroed in images and masks.
        crop_area: optional ``[x1, y1, x2, y2]`` crop applied before resizing.
        train_batch_size, test_batch_size, num_workers: dataloader settings.
    """

    def __init__(
        self,
        data_path: str | Path,
        phase: str = "train",
        image_size: Sequence[int] = (256, 256),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        mask_suffix: str = "_mask",
        valid_area_mask: str | Path | None = None,
        crop_area: Sequence[int] | None = None,
        train_batch_size: int = 32,
        test_batch_size: int = 32,
        num_workers: int = 0,
        category: str | None = None,
        val_split: str = "auto",
        val_fraction: float = 0.3,
        val_seed: int = 0,
        train_augmentations: Sequence[Any] | None = None,
    ) -> None:
        super().__init__()
        if data_path is None or str(data_path).strip() == "":
            raise ConfigError("datamodule.data_path is not set: add datamodule.data_path=<folder> to the command line")
        self.data_path = Path(data_path).expanduser()
        self.phase = phase
        self.image_size = [int(s) for s in image_size]
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.mask_suffix = mask_suffix
        self.valid_area_mask = valid_area_mask
        self.crop_area = crop_area
        self.train_batch_size = train_batch_size
        self.test_batch_size = test_batch_size
        self.num_workers = num_workers
        self.category = category
        self.val_split, self.val_fraction, self.val_seed = val_split, val_fraction, val_seed
        self.augmentation = build_train_augmentation(train_augmentations)
        self.layout: AnomalyLayout | None = None
        self._preparation: ImagePreparation | None = None

    def dataset_root(self) -> Path:
        """The folder holding the layout (subclasses that generate data override this)."""
        return category_folder(self.data_path, self.category)

    def setup(self, stage: str | None = None) -> None:
        if self.layout is not None:
            return
        # What the listing cannot use is refused here too, so the Python API does not silently skip it; the
        # file contents (sizes, masks) are checked as each file is read (the CLI's preflight reads them all first).
        layout = scan_anomaly_folder(self.dataset_root(), self.mask_suffix, self.phase)
        if layout.problems:
            raise DatasetError(problems_line(layout.root, layout.problems))
        if self.phase == "train":
            split_validation(layout, self.val_split, self.val_fraction, self.val_seed)
            if self.augmentation is not None and layout.train:
                self.augmentation.check_keeps_size(*image_size_of(layout.train[0].image_path))
        if self.valid_area_mask:  # never opened unless a regular file: a named pipe would block the read
            roi = Path(self.valid_area_mask).expanduser()
            if problem := entry_problem(roi):
                raise DatasetError(f"datamodule.valid_area_mask '{roi}' {problem}")
        self._preparation = ImagePreparation(self.image_size, self.mean, self.std, self.valid_area_mask, self.crop_area)
        # Set last: a setup that failed above must fail again, not leave a half-built module.
        self.layout = layout
        anomalous = sum(1 for s in self.layout.test if s.label == 1)
        log.info(
            "Dataset %s: %d train, %d test (%d anomalous), %d unknown; task=%s",
            self.layout.root, len(self.layout.train), len(self.layout.test), anomalous,
            len(self.layout.unknown), self.layout.task_type,
        )
        if self.layout.val_source:
            log.info("Thresholds are set on %s", self.layout.val_source)
        if self.phase == "train":
            self._warn_about_one_class()

    def _warn_about_one_class(self) -> None:
        """Validation and test images of one class only: say what that does to thresholds and metrics."""
        for split, what in (("val", "validation"), ("test", "test")):
            samples = getattr(self.layout, split)
            good, anomalous = (sum(1 for s in samples if s.label == label) for label in (0, 1))
            if split == "val" and not (good and anomalous):
                log.warning("The %s images are all %s: an F1-optimal threshold cannot be set on them (metrics.json "
                            "says how the threshold was set instead).", what, "anomalous" if anomalous else "good")
            if split == "test" and not (good and anomalous) and (good or anomalous):
                log.warning("The %s images are all %s: AUROC, F1, precision and recall are not applicable "
                            "(metrics.json says why).", what, "anomalous" if anomalous else "good")

    @property
    def preparation(self) -> ImagePreparation:
        """How images are cropped, resized and normalised for the model."""
        self.setup()
        return self._preparation

    @property
    def has_masks(self) -> bool:
        self.setup()
        return self.layout.has_masks

    def _dataset(self, samples, augmentation=None) -> AnomalyDataset:
        self.setup()
        return AnomalyDataset(samples, self._preparation, with_masks=self.layout.has_masks, augmentation=augmentation)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        self.setup()
        return DataLoader(
            self._dataset(getattr(self.layout, split), self.augmentation if split == "train" else None),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=ImageBatch.collate,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.train_batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val" if self.phase == "train" else "test", self.test_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.test_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("unknown", self.test_batch_size, shuffle=False)
