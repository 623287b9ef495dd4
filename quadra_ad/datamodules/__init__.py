"""Datamodules: an MVTec-style folder, MNIST, and the offline digits demo.

The classes load lazily (configs name them as ``quadra_ad.datamodules.<Class>``), so the folder
layout and the dataset preflight can be used without importing torch or anomalib.
"""

from importlib import import_module

_CLASSES = {
    "AnomalyDataModule": "quadra_ad.datamodules.anomaly",
    "DigitsAnomalyDataModule": "quadra_ad.datamodules.digits",
    "MNISTAnomalyDataModule": "quadra_ad.datamodules.mnist",
}

__all__ = sorted(_CLASSES)


def __getattr__(name: str):
    if name in _CLASSES:
        return getattr(import_module(_CLASSES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
