"""HeatmapVisualizer: the training task's heatmap callback (off by default in the configs).

Draws the test images after ``trainer.test`` with the same code as the inference task, using
the thresholds the :class:`ScoreCollector` measured on the validation set.
"""

from pathlib import Path

from lightning.pytorch import Callback

from quadra_ad.reports.heatmaps import HeatmapSettings, write_heatmaps
from quadra_ad.tasks.score_collector import ScoreCollector


class HeatmapVisualizer(Callback):
    """Write ``heatmaps/`` (and ``raw_outputs/``) into the run folder after testing."""

    def __init__(self, plot_only_wrong: bool = False, plot_raw_outputs: bool = False) -> None:
        self.plot_only_wrong = plot_only_wrong
        self.plot_raw_outputs = plot_raw_outputs

    def on_test_end(self, trainer, pl_module) -> None:
        collector = next((cb for cb in trainer.callbacks if isinstance(cb, ScoreCollector)), None)
        if collector is None or collector.calibration is None:
            return
        calibration = collector.calibration
        settings = HeatmapSettings(
            image_threshold=calibration.image_threshold,
            pixel_threshold=calibration.pixel_threshold if calibration.pixel_threshold is not None else calibration.image_threshold,
            map_min=calibration.pixel_min if calibration.pixel_min is not None else 0.0,
            map_max=calibration.pixel_max if calibration.pixel_max is not None else 1.0,
            only_wrong=self.plot_only_wrong,
            raw_outputs=self.plot_raw_outputs,
        )
        write_heatmaps(collector.test, trainer.datamodule.preparation, Path(trainer.default_root_dir), settings)
