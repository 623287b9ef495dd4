"""Dinomaly and INP-Former with checkpoints that load under ``weights_only=True``.

Both save their ``precision`` argument (an ``anomalib.PrecisionType`` enum) among their
hyperparameters, and schedule their learning rate with anomalib's ``WarmCosineScheduler``, which
keeps its schedule as a numpy array and hands numpy floats to the optimiser. Lightning saves all
of it into the checkpoint, and torch refuses to load enums and numpy objects with
``weights_only=True`` — so the best epoch was saved but could not be loaded back for testing and
export. Here those values are written as plain Python values (an enum as its value, an array as a
list: the scheduler indexes a list just as it indexed the array).
"""

from enum import Enum
from typing import Any

import numpy as np
from anomalib.models import Dinomaly as AnomalibDinomaly
from anomalib.models import InpFormer as AnomalibInpFormer


def plain_values(value: Any) -> Any:
    """``value`` with enums, numpy arrays and numpy scalars replaced by plain Python values, recursively."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: plain_values(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain_values(item) for item in value)
    return value


class _PlainCheckpoint:
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        for key in ("hyper_parameters", "lr_schedulers", "optimizer_states"):
            if key in checkpoint:
                checkpoint[key] = plain_values(checkpoint[key])


class Dinomaly(_PlainCheckpoint, AnomalibDinomaly):
    """anomalib's Dinomaly; its checkpoints hold plain values only."""


class InpFormer(_PlainCheckpoint, AnomalibInpFormer):
    """anomalib's INP-Former; its checkpoints hold plain values only."""
