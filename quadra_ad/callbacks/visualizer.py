"""HeatmapVisualizer: the training task's heatmap callback (off by default in the configs).

Draws the test images after ``trainer.test`` with the same code as the inference task, using
the calibration the :class:`~quadra_ad.callbacks.score_collector.ScoreCollector` measured on the
validation set.
"""

from pathlib import Path

from lightning.pytorch import Callback

from quadra_ad.callbacks.score_collector import ScoreCollector
from quadra_ad.reports.heatmaps import HeatmapSettings, write_heatmaps


class HeatmapVisualizer(Callback):
    """Write ``heatmaps/`` (and ``raw_outputs/``) into the run folder after testing."""

    def __init__(self, plot_only_wrong: bool = False, plot_raw_outputs: bool = False) -> None:
        self.plot_only_wrong = plot_only_wrong
        self.plot_raw_outputs = plot_raw_outputs

    def on_test_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:  # under DDP every process holds every test image: one draws them
            return
        collector = next((cb for cb in trainer.callbacks if isinstance(cb, ScoreCollector)), None)
        if collector is None or collector.calibration is None:
            return
        settings = HeatmapSettings(collector.calibration, only_wrong=self.plot_only_wrong, raw_outputs=self.plot_raw_outputs)
        write_heatmaps(collector.test, trainer.datamodule.preparation, Path(trainer.default_root_dir), settings)
