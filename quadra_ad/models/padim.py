"""PaDiM's ``n_features`` for any timm backbone, so that a backbone swap is one override.

anomalib's Padim keeps a random subset of the chosen layers' channels: 100 for ResNet-18 and
550 for Wide-ResNet-50-2 (the paper's values), and stops every other backbone with "n_features
must be specified". With ``model.n_features: null`` we keep anomalib's value where it has one
that the layers can give, and otherwise keep a quarter of the layers' channels, at most 550:

- a quarter sits between the paper's shares (100 of 448 channels, 22 %; 550 of 1792, 31 %);
- at most 550, the paper's largest: each patch position holds an n_features² covariance, so
  memory grows with the square (ResNet-50's layer1-3 give 1792 channels: 448 kept).

An explicit ``n_features`` above the layers' channels is refused here in one line; for the
backbones the checks before the run know (``BACKBONE_FEATURES``) it was refused earlier.
"""

import logging

from quadra_ad.errors import ConfigError

log = logging.getLogger(__name__)

#: The share of the layers' channels kept when neither the config nor anomalib gives a number.
DEFAULT_SHARE = 0.25
#: The most channels kept by default (the paper's Wide-ResNet-50-2 value).
MAX_DEFAULT_N_FEATURES = 550


def anomalib_defaults() -> dict[str, int]:
    """anomalib's own per-backbone defaults (a private table: empty if a release drops it, and
    then the quarter rule applies to every backbone)."""
    from anomalib.models.image.padim import torch_model

    return dict(getattr(torch_model, "_N_FEATURES_DEFAULTS", {}))


def default_n_features(channels: int) -> int:
    """A quarter of ``channels``, rounded, at least 1 and at most :data:`MAX_DEFAULT_N_FEATURES`."""
    return max(1, min(MAX_DEFAULT_N_FEATURES, round(channels * DEFAULT_SHARE)))


def padim_n_features(n_features: int | None, backbone: str, layers: list[str], channels: int) -> int | None:
    """The ``n_features`` to build PaDiM with, given the ``channels`` its ``layers`` of
    ``backbone`` give; None to leave the choice to anomalib (its default fits)."""
    if n_features is not None:
        if n_features > channels:
            raise ConfigError(f"model.n_features={n_features}: layers {layers} of {backbone} give {channels} "
                              f"features; take at most {channels}, or null for PaDiM's default")
        return None
    anomalib_value = anomalib_defaults().get(backbone)
    if anomalib_value is not None and anomalib_value <= channels:
        return None
    chosen = default_n_features(channels)
    log.info("PaDiM keeps %d of the %d channels of %s %s (a quarter, at most %d); set model.n_features=<n> "
             "to choose", chosen, channels, backbone, layers, MAX_DEFAULT_N_FEATURES)
    return chosen
