"""EfficientAd with its two downloads made explicit: the teacher weights and ImageNette.

anomalib's EfficientAd fetches both at the start of training into its cache. Here the teacher
can be a local file (``teacher_weights``), ImageNette a local folder (``imagenet_dir``), and
when either is missing and cannot be downloaded the run stops with one line saying what to put
where — before any epoch is spent.
"""

import logging
from pathlib import Path

import torch
from anomalib.models import EfficientAd as AnomalibEfficientAd

from quadra_ad.errors import ConfigError, first_line

log = logging.getLogger(__name__)

TEACHER_ARCHIVE = "https://github.com/open-edge-platform/anomalib/releases/download/efficientad_pretrained_weights/efficientad_pretrained_weights.zip"


class EfficientAd(AnomalibEfficientAd):
    """anomalib's EfficientAd plus ``teacher_weights``: a local ``pretrained_teacher_<size>.pth``."""

    def __init__(self, teacher_weights: str | Path | None = None, imagenet_dir: str | Path = "./datasets/imagenette", **kwargs) -> None:
        super().__init__(imagenet_dir=Path(imagenet_dir).expanduser(), **kwargs)
        self.teacher_weights = Path(teacher_weights).expanduser() if teacher_weights else None

    def _size_name(self) -> str:
        return self.model_size.value if hasattr(self.model_size, "value") else str(self.model_size)

    def prepare_pretrained_model(self) -> None:
        if self.teacher_weights is None:
            try:
                super().prepare_pretrained_model()
            except (OSError, RuntimeError) as error:
                raise ConfigError(
                    f"EfficientAd needs its pretrained teacher and the download failed ({type(error).__name__}): "
                    f"get pretrained_teacher_{self._size_name()}.pth from {TEACHER_ARCHIVE} and set "
                    f"model.teacher_weights=<that file>"
                ) from None
            return
        if not self.teacher_weights.is_file():
            raise ConfigError(f"model.teacher_weights '{self.teacher_weights}' does not exist")
        log.info("Loading the EfficientAd teacher from %s", self.teacher_weights)
        state = torch.load(self.teacher_weights, map_location=self.device, weights_only=True)
        try:
            self.model.teacher.load_state_dict(state)
        except RuntimeError as error:
            raise ConfigError(
                f"model.teacher_weights '{self.teacher_weights}' does not fit the {self._size_name()} teacher "
                f"({first_line(error)}); "
                f"use pretrained_teacher_{self._size_name()}.pth or set model.model_size"
            ) from None

    def prepare_imagenette_data(self, image_size) -> None:
        folder = Path(self.imagenet_dir)
        if not folder.is_dir():
            try:
                super().prepare_imagenette_data(image_size)
            except (OSError, RuntimeError) as error:
                raise ConfigError(
                    f"model.imagenet_dir '{folder}' does not exist and ImageNette could not be downloaded "
                    f"({type(error).__name__}): put ImageNette there (one sub-folder of images per class)"
                ) from None
            return
        if not any(p.is_dir() for p in folder.iterdir()):
            raise ConfigError(f"model.imagenet_dir '{folder}' has no class sub-folders of images (ImageNette layout)")
        super().prepare_imagenette_data(image_size)
