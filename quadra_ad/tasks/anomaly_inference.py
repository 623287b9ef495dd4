"""AnomalyInferenceTask: run an exported model on new images, pick a threshold, report.

The threshold is either recomputed (F1-optimal on the labelled images given) or reused from
``model.json``, as :func:`quadra_ad.evaluation.thresholds.inference_calibration` decides. Scores
are always normalised with the training statistics, so 0.5 means the training threshold whichever
threshold decides the labels.
"""

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from quadra_ad.config.instantiation import instantiate_node
from quadra_ad.deploy.model_card import check_input_size, preparation_from_card
from quadra_ad.deploy.model_uri import is_model_uri
from quadra_ad.deploy.predictor import Predictor
from quadra_ad.errors import ConfigError
from quadra_ad.evaluation.metrics import scored_set_metrics
from quadra_ad.evaluation.scored_set import ScoredSet, concat_scored_sets
from quadra_ad.evaluation.thresholds import Calibration, inference_calibration, training_threshold_mistake
from quadra_ad.reports.heatmaps import HEATMAPS_DIR, RAW_OUTPUTS_DIR, HeatmapSettings, write_heatmaps
from quadra_ad.reports.report import write_report
from quadra_ad.tasks.base import RESOLVED_CONFIG, Task

log = logging.getLogger(__name__)


class AnomalyInferenceTask(Task):
    """Exported model + folder of images → predictions, metrics, plots, MLflow run.

    Args:
        model_path: ``model.pt`` (TorchScript) or ``model.onnx`` with ``model.json`` beside it.
        use_training_threshold: reuse the threshold from ``model.json`` instead of recomputing.
        training_threshold_type: which training threshold decides image labels, ``image`` or
            ``pixel`` (as in Quadra); pixel masks always use the pixel threshold.
        device: ``cpu`` or ``cuda[:N]``.
        plot_heatmaps: write heatmap overlays; ``plot_only_wrong`` limits them to mistakes.
        plot_raw_outputs: also write full-resolution anomaly maps and predicted masks.
    """

    def __init__(
        self,
        config: DictConfig,
        output_dir: Path,
        model_path: str,
        use_training_threshold: bool = False,
        training_threshold_type: str = "image",
        device: str = "cpu",
        plot_heatmaps: bool = True,
        plot_only_wrong: bool = False,
        plot_raw_outputs: bool = False,
        custom_normalized_threshold: float | None = None,
    ) -> None:
        super().__init__(config, output_dir)
        self.custom_normalized_threshold = custom_normalized_threshold
        if mistake := training_threshold_mistake(None, use_training_threshold, training_threshold_type):
            raise ConfigError(mistake)
        self.model_path = model_path
        self.use_training_threshold = use_training_threshold
        self.training_threshold_type = training_threshold_type
        self.device = device
        self.plot_heatmaps = plot_heatmaps
        self.plot_only_wrong = plot_only_wrong
        self.plot_raw_outputs = plot_raw_outputs
        self.labelled = ScoredSet()
        self.unknown = ScoredSet()
        #: The thresholds that label images and pixels here, with the training score ranges.
        self.calibration: Calibration | None = None
        self.threshold_source = ""
        self.report_files: list[Path] = []

    def prepare(self) -> None:
        self.save_resolved_config()
        # The one runner of exported models; the datamodule reads labels and masks beside the images.
        self.predictor = Predictor.load(self.model_path, device=self.device, tracking_uri=self._tracking_uri(),
                                        key_names={})
        self.model = self.predictor.model
        card = self.model.card
        if card.input_channels != 3:
            raise ConfigError(
                f"the model takes {card.input_channels}-channel images (model.json input_channels) but quadra_ad "
                f"reads every image as 3-channel RGB; export the model with 3-channel input"
            )
        if mistake := training_threshold_mistake(card.calibration, self.use_training_threshold, self.training_threshold_type):
            raise ConfigError(mistake)
        self.datamodule = instantiate_node(self.config, "datamodule", **self._transforms_from_card())
        self.datamodule.setup()

    def _tracking_uri(self) -> str | None:
        """Where ``models:/`` and ``runs:/`` model paths are looked up: this run's MLflow store."""
        return OmegaConf.select(self.config, "logger.mlflow.tracking_uri")

    def _transforms_from_card(self) -> dict:
        """Everything the graph's input depends on, from model.json, unless the user set it.

        An input size other than the graph's is refused; other settings of the user's win with a
        warning (a camera that moved may need another crop).
        """
        node = self.config.datamodule
        check_input_size(node.get("image_size"), self.model.card)
        chosen = {}
        for key, value in preparation_from_card(self.model.card, Path(self.model.path).parent).items():
            given = node.get(key)
            if given is None:
                chosen[key] = value
            elif value is None or _as_plain(given) != _as_plain(value):
                log.warning("datamodule.%s=%s differs from the model's (%s, model.json): using yours", key,
                            _as_plain(given), value)
        return chosen

    def test(self) -> None:
        for loader, target in ((self.datamodule.test_dataloader(), self.labelled), (self.datamodule.predict_dataloader(), self.unknown)):
            for batch in loader:
                # Image-level models export a placeholder map: the predictor gives None, never scored or drawn.
                scores, maps = self.predictor.run(batch.image.numpy())
                target.add_batch(batch.image_path, batch.gt_label, torch.from_numpy(scores),
                                 None if maps is None else torch.from_numpy(maps), batch.gt_mask)
        self.calibration, self.threshold_source = inference_calibration(
            self.model.card.calibration, self.labelled, self.use_training_threshold, self.training_threshold_type,
            self.custom_normalized_threshold)
        self.metrics = scored_set_metrics(self.labelled, self.calibration)
        if self.metrics:
            self.metrics["image_threshold_normalized"] = float(self.model.card.calibration.normalize(self.calibration.image_threshold))
        log.info("Threshold: %.6g (%s); %d labelled, %d unknown images", self.calibration.image_threshold,
                 self.threshold_source, len(self.labelled), len(self.unknown))

    def report(self) -> None:
        scored = concat_scored_sets(self.labelled, self.unknown)
        if self.metrics:  # metrics.json's thresholds block: where the threshold behind the metrics came from
            self.metrics.provenance.setdefault("image_threshold", self.threshold_source)
        self.report_files = write_report(scored, self.metrics, self.output_dir, self.model.card.calibration,
                                         calibration=self.calibration, preparation=self.datamodule.preparation,
                                         about=self.tracking_tags())
        if self.plot_heatmaps or self.plot_raw_outputs:
            settings = HeatmapSettings(self.calibration, only_wrong=self.plot_only_wrong, raw_outputs=self.plot_raw_outputs)
            for part in (self.labelled, self.unknown):
                write_heatmaps(part, self.datamodule.preparation, self.output_dir, settings)

    def tracking_tags(self) -> dict[str, str]:
        card = self.model.card
        tags = super().tracking_tags()
        tags.update({
            "quadra_ad.model": card.model_class.rsplit(".", 1)[-1],
            "quadra_ad.model_path": self.model_path if is_model_uri(self.model_path)
            else str(Path(self.model_path).expanduser().resolve()),
            "quadra_ad.model_format": self.model.format,
            "quadra_ad.dataset": str(self.datamodule.layout.root),
            "quadra_ad.dataset_hash": self.datamodule.layout.fingerprint(),
            "quadra_ad.threshold_source": self.threshold_source,
            "quadra_ad.training_run_folder": str(card.training.get("run_folder", "")),
        })
        return tags

    def tracking_artifacts(self) -> list[Path]:
        return [self.output_dir / RESOLVED_CONFIG, self.output_dir / ".hydra", self.output_dir / HEATMAPS_DIR,
                self.output_dir / RAW_OUTPUTS_DIR, *self.report_files]


def _as_plain(value):
    return list(value) if isinstance(value, (list, tuple)) or OmegaConf.is_list(value) else value
