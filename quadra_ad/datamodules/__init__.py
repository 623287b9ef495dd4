"""Datamodules: an MVTec-style folder, MNIST, and the offline digits demo."""

from quadra_ad.datamodules.anomaly import AnomalyDataModule
from quadra_ad.datamodules.digits import DigitsAnomalyDataModule
from quadra_ad.datamodules.mnist import MNISTAnomalyDataModule

__all__ = ["AnomalyDataModule", "DigitsAnomalyDataModule", "MNISTAnomalyDataModule"]
