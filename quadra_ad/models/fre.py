"""FRE with the autoencoder's input size worked out instead of typed in.

anomalib's FRE takes ``input_dim``, the length of the pooled feature vector, which depends on the
backbone, the layer, the pooling and the image size (65536 only for resnet50/layer3 at 256 px).
A wrong value fails at the first batch; here it is measured once on a blank image of
``input_size`` when it is not given.
"""

import torch
from anomalib.models import Fre as AnomalibFre
from anomalib.models.image.fre.torch_model import TiedAE
from torch.nn import functional

from quadra_ad.errors import ConfigError


class Fre(AnomalibFre):
    """anomalib's FRE plus ``input_size`` (H, W), from which ``input_dim`` follows when left null."""

    def __init__(self, input_size: list[int] | tuple[int, int], input_dim: int | None = None, latent_dim: int = 220,
                 **kwargs) -> None:
        super().__init__(input_dim=input_dim or 1, latent_dim=latent_dim, **kwargs)
        measured = self._feature_length(tuple(input_size))
        if input_dim is not None and input_dim != measured:
            raise ConfigError(f"model.input_dim={input_dim} does not match the features at {list(input_size)} px "
                              f"({measured}); set model.input_dim=null to have it worked out")
        self.model.fre_model = TiedAE(measured, latent_dim)

    def _feature_length(self, input_size: tuple[int, int]) -> int:
        torch_model = self.model
        with torch.no_grad():
            features = torch_model.feature_extractor(torch.zeros(1, 3, *input_size))[torch_model.layer]
            if torch_model.pooling_kernel_size > 1:
                features = functional.avg_pool2d(features, kernel_size=torch_model.pooling_kernel_size)
        return int(features[0].numel())
