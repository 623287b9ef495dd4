"""DSR with its pretrained VQ model made explicit.

anomalib's DSR downloads ``vq_model_pretrained_128_4096.pckl`` (its discrete VQ-VAE, never
trained by DSR itself) into anomalib's cache when training starts. Here it can be a local file
(``vq_weights``); with ``pre_trained=false`` the VQ model keeps random weights (smoke tests and
offline demos only: its latent space then means nothing); and when the file is missing and the
download fails the run stops with one line saying what to put where, before any epoch is spent.
"""

import logging
from pathlib import Path

from anomalib.models import Dsr as AnomalibDsr
from anomalib.models.image.dsr.lightning_model import WEIGHTS_DOWNLOAD_INFO

from quadra_ad.errors import ConfigError

log = logging.getLogger(__name__)


class Dsr(AnomalibDsr):
    """anomalib's DSR plus ``vq_weights`` (a local VQ model file) and ``pre_trained``."""

    def __init__(self, vq_weights: str | Path | None = None, pre_trained: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.vq_weights = Path(vq_weights).expanduser() if vq_weights else None
        self.pre_trained = pre_trained
        if self.vq_weights is not None and not self.vq_weights.is_file():
            raise ConfigError(f"model.vq_weights '{self.vq_weights}' does not exist: give the path of "
                              f"{WEIGHTS_DOWNLOAD_INFO.name}")

    def prepare_pretrained_model(self) -> Path:
        if self.vq_weights is not None:
            return self.vq_weights
        try:
            return super().prepare_pretrained_model()
        except (OSError, RuntimeError) as error:
            raise ConfigError(
                f"DSR needs its pretrained VQ model and the download failed ({type(error).__name__}): get "
                f"{WEIGHTS_DOWNLOAD_INFO.name} from {WEIGHTS_DOWNLOAD_INFO.url} (a zip) and set "
                f"model.vq_weights=<that file>, or backbone.pre_trained=false for random weights"
            ) from None

    def on_train_start(self) -> None:
        if self.pre_trained:
            super().on_train_start()
            return
        log.warning("DSR's VQ model keeps random weights (backbone.pre_trained=false): scores prove the mechanics only")
