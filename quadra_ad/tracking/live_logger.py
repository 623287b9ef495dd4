"""A Lightning logger that forwards what the training logs to the live MLflow run.

Steps follow the run-folder history (``lightning_history``): epoch-level values by epoch, the
rest by global step, so the final logging recognises the points already sent.
"""

import math
from argparse import Namespace
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from quadra_ad.tracking.lightning_history import indexed_by_epoch
from quadra_ad.tracking.live_run import LiveRun


class LiveMLflowLogger(Logger):
    """Sends each ``log_metrics`` call of Lightning to :class:`LiveRun` (params come from the config)."""

    def __init__(self, live_run: LiveRun) -> None:
        super().__init__()
        self.live_run = live_run

    @property
    def name(self) -> str:
        return "mlflow_live"

    @property
    def version(self) -> str:
        return self.live_run.run_id

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        """The run's params are the composed config, logged when the run opened."""

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        epoch = metrics.get("epoch")
        values, steps = {}, {}
        for name, value in metrics.items():
            value = float(value.item() if hasattr(value, "item") else value)
            if name == "epoch" or not math.isfinite(value):
                continue
            values[name] = value
            steps[name] = int(epoch) if indexed_by_epoch(name) and epoch is not None else int(step or 0)
        self.live_run.log_metrics(values, steps)
