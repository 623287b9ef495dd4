"""AnomalyTrainingTask: fit an anomalib model, test it, export it, report and track the run.

Which model, data and trainer are used is decided by the config alone.

Distributed training (``trainer.strategy=ddp``, ``trainer.devices=N``): Lightning's ``ddp`` starts
the N-1 other processes by running the same ``quadra-ad`` command line again (its Hydra support
gives them this run folder), and each runs this task. Every process prepares, trains and tests
(the callbacks gather embeddings and scores across them); only process 0 writes: the resolved
config, the run record, exports, ``model.json``, reports and the MLflow run. ``ddp`` is the one
strategy supported: ``ddp_spawn``/``ddp_fork`` run only ``fit``/``test`` in their processes and
hand back only the weights, not the collected scores; so a ``ddp`` run must start from the CLI
(or from torchrun/SLURM, which start the processes themselves), never from ``run()`` inside a
Python session, whose command line (a pytest session, a notebook) is not the run
(:mod:`quadra_ad.runtime.ddp_processes` refuses it when the Trainer is built).

The task orchestrates: thresholds are decided by :mod:`quadra_ad.evaluation.thresholds`, the
Trainer and the config values it records by :mod:`quadra_ad.models.trainer_arguments` and
:mod:`quadra_ad.config.recorded_values`, the model card by :mod:`quadra_ad.export.model_card`.
"""

import logging
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from quadra_ad.callbacks.from_config import training_callbacks
from quadra_ad.callbacks.score_collector import ScoreCollector
from quadra_ad.config.instantiation import instantiate_node
from quadra_ad.config.recorded_values import FOUND_BATCH_SIZE_KEY, finds_batch_size, record_value
from quadra_ad.errors import DatasetError, QuadraADError
from quadra_ad.evaluation.thresholds import Calibration, image_threshold_words, threshold_rule_from_settings
from quadra_ad.export.graph import AnomalyGraph
from quadra_ad.export.model_card import write_model_card
from quadra_ad.export.writers import (
    check_export_config,
    export_graph,
)
from quadra_ad.models.factory import build_model
from quadra_ad.models.trainer_arguments import build_trainer, record_trainer_arguments
from quadra_ad.reports.heatmaps import HEATMAPS_DIR, RAW_OUTPUTS_DIR
from quadra_ad.reports.report import write_report
from quadra_ad.tasks.base import RESOLVED_CONFIG, Task
from quadra_ad.tracking.lightning_history import read_lightning_history

log = logging.getLogger(__name__)

DEPLOYMENT_FOLDER = "deployment_model"


class AnomalyTrainingTask(Task):
    """Train → test → export (TorchScript, ONNX + model.json) → report → MLflow."""

    live_tracking = True

    def __init__(self, config: DictConfig, output_dir: Path, threshold_rule: str = "f1",
                 manual_image_threshold: float | None = None, manual_pixel_threshold: float | None = None,
                 manual_threshold_normalized: bool = False, target_fpr: float = 0.01,
                 good_percentile: float = 99.0) -> None:
        super().__init__(config, output_dir)
        self.threshold_rule = threshold_rule_from_settings(threshold_rule, manual_image_threshold, manual_pixel_threshold,
                                                           manual_threshold_normalized, target_fpr, good_percentile)
        self.calibration: Calibration | None = None
        self.exported: dict[str, tuple[Path, int | None]] = {}
        self.export_errors: list[QuadraADError] = []
        self.report_files: list[Path] = []

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def writes_outputs(self) -> bool:
        """False in the other processes of a DDP run: they only take part in fit and test.

        Lightning sets the rank from the environment it starts those processes with, so this is
        known before the Trainer exists.
        """
        return rank_zero_only.rank == 0

    def execute(self) -> None:
        if self.writes_outputs:
            super().execute()
            return
        # No run record, timings, exports, reports or MLflow run: process 0 writes them once.
        self.prepare()
        self.train()
        self.test()

    def save_resolved_config(self) -> Path:
        path = self.output_dir / RESOLVED_CONFIG
        return super().save_resolved_config() if self.writes_outputs else path

    def prepare(self) -> None:
        cfg = self.config
        self.save_resolved_config()
        export_cfg = cfg.get("export") or {}
        check_export_config(list(export_cfg.get("types") or []), export_cfg.get("onnx_opset"))
        self.datamodule = instantiate_node(cfg, "datamodule")
        self.datamodule.setup()
        validation = self.datamodule.layout.val
        if not any(s.label is not None for s in validation):
            raise DatasetError(
                f"datamodule.data_path '{self.datamodule.layout.root}': no labelled test images to set "
                f"thresholds on; add images to test/good and test/<defect>/"
            )
        self.model = build_model(cfg)
        self.collector = ScoreCollector(self.threshold_rule)
        if self.threshold_rule.needs_good_images and not any(s.label == 0 for s in validation):
            raise DatasetError(f"task.threshold_rule={self.threshold_rule.image} sets the threshold on good images, and "
                               f"'{self.datamodule.layout.root}' has none among the validation images "
                               f"({self.datamodule.layout.val_source}); add some or use another rule")
        labels = {s.label for s in validation if s.label is not None}
        callbacks = training_callbacks(cfg, self.collector, both_labels=labels == {0, 1},
                                       on_training_start=self._record_found_batch_size if finds_batch_size(cfg) else None)
        self.checkpoint = next((cb for cb in callbacks if isinstance(cb, ModelCheckpoint)), None)
        # What the Trainer really gets goes back into the config: MLflow params and
        # config_resolved.yaml then say what ran, not "null".
        record_trainer_arguments(cfg, self.model)
        self.save_resolved_config()
        # Checkpoints only when a checkpoint callback is configured: one-pass models would
        # otherwise write their whole memory bank for nothing.
        self.trainer = build_trainer(cfg, callbacks, self.output_dir, enable_checkpointing=self.checkpoint is not None)

    def train(self) -> None:
        self.trainer.fit(self.model, datamodule=self.datamodule)
        if self.collector.calibration is None:
            # Models that skip validation during fit (e.g. a trainer with limit_val_batches=0).
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
        self.calibration = self.collector.calibration
        log.info("Image threshold from validation: %.6g, %s", self.calibration.image_threshold,
                 self.calibration.image_threshold_rule)
        if self.calibration.pixel_threshold is not None:
            log.info("Pixel threshold from validation: %.6g, %s", self.calibration.pixel_threshold,
                     self.calibration.pixel_threshold_rule)

    def test(self) -> None:
        if not self.config.core.test_after_training:
            return
        best = self.checkpoint.best_model_path if self.checkpoint is not None else ""
        if best:
            log.info("Testing and exporting the best epoch: %s", best)
            # Thresholds must belong to the weights that are tested and exported, not the last epoch's.
            # validate() loads the best weights into the model; test() then uses them as they are
            # (loading the checkpoint a second time fails on buffers made in inference mode).
            self.trainer.validate(self.model, datamodule=self.datamodule, ckpt_path=best, verbose=False)
            self.calibration = self.collector.calibration
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        if self.datamodule.layout.unknown:
            self.trainer.predict(self.model, dataloaders=self.datamodule.predict_dataloader(), return_predictions=False)
        self.metrics = self.collector.test_metrics()
        self.metrics.provenance["validation_images"] = self.datamodule.layout.val_source
        summary = ", ".join(f"{k}={v:.4f}" for k, v in sorted(self.metrics.items()) if "AUROC" in k or k.endswith("F1"))
        log.info("Test metrics: %s", summary)

    def export(self) -> None:
        export_cfg = self.config.get("export") or {}
        types = list(export_cfg.get("types") or [])
        folder = self.output_dir / DEPLOYMENT_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        graph = AnomalyGraph(self.model.model)
        for export_type in types:
            try:
                self.exported.update(
                    export_graph(graph, self.datamodule.image_size, folder, [export_type], export_cfg.get("onnx_opset"))
                )
            except QuadraADError as error:
                log.error("%s", error)
                self.export_errors.append(error)
        self.exported = {export_type: self.exported[export_type] for export_type in types if export_type in self.exported}
        dm = self.datamodule
        write_model_card(
            folder, model_type=type(self.model), input_size=dm.image_size, mean=dm.mean, std=dm.std,
            calibration=self.calibration, task_type=dm.layout.task_type, valid_area=dm.preparation.valid_area,
            crop_area=dm.preparation.crop_area, exported=self.exported, has_anomaly_map=self.collector.has_anomaly_maps,
            training={
                "experiment_name": OmegaConf.select(self.config, "logger.mlflow.experiment_name", default=None),
                "run_folder": str(self.output_dir),
                "dataset": str(dm.layout.root),
                "seed": int(self.config.core.seed),
            },
        )

    def report(self) -> None:
        self.report_files = write_report(self.collector.tested, self.metrics, self.output_dir, self.calibration,
                                         preparation=self.datamodule.preparation, about=self.tracking_tags())

    def finalize(self) -> None:
        if self.export_errors:
            # Everything else is on disk and logged, but the run did not deliver what it was asked for.
            self.track("FAILED", self.export_errors[0])
            raise self.export_errors[0]
        super().finalize()

    def tracking_tags(self) -> dict[str, str]:
        tags = super().tracking_tags()
        tags.update({
            "quadra_ad.model": type(self.model).__name__,
            "quadra_ad.dataset": str(self.datamodule.layout.root),
            "quadra_ad.dataset_hash": self.datamodule.layout.fingerprint(),
            "quadra_ad.threshold_rule": image_threshold_words(self.threshold_rule, self.calibration),
            "quadra_ad.validation_images": self.datamodule.layout.val_source,
        })
        if self.exported:  # the first file of export.types: what a run comparison points to
            tags["quadra_ad.model_path"] = str(next(iter(self.exported.values()))[0].resolve())
        return tags

    def tracking_artifacts(self) -> list[Path]:
        return [
            self.output_dir / RESOLVED_CONFIG,
            self.output_dir / ".hydra",
            self.output_dir / DEPLOYMENT_FOLDER,
            self.output_dir / HEATMAPS_DIR,
            self.output_dir / RAW_OUTPUTS_DIR,
            *self.report_files,
            *self._best_checkpoint(),
        ]

    def params_known_later(self) -> tuple[str, ...]:
        return (FOUND_BATCH_SIZE_KEY,) if finds_batch_size(self.config) else ()

    def attach_live_run(self, live_run) -> None:
        from quadra_ad.tracking.live_logger import LiveMLflowLogger

        self.trainer.loggers = [*self.trainer.loggers, LiveMLflowLogger(live_run)]

    def tracking_history(self) -> dict:
        return read_lightning_history(self.output_dir)

    def tracking_model(self) -> Path | None:
        if not self.exported or self.export_errors:
            return None
        return self.output_dir / DEPLOYMENT_FOLDER

    # -- helpers ---------------------------------------------------------------------------
    def _best_checkpoint(self) -> list[Path]:
        """The checkpoint of the epoch that was tested and exported, when one was kept."""
        best = self.checkpoint.best_model_path if getattr(self, "checkpoint", None) is not None else ""
        return [Path(best)] if best and Path(best).is_file() else []

    def _record_found_batch_size(self, trainer=None) -> None:
        """The batch size the finder chose is the one the params and config_resolved.yaml report."""
        found = int(self.datamodule.train_batch_size)
        record_value(self.config, FOUND_BATCH_SIZE_KEY, found)
        self.save_resolved_config()
        if self.live_run is not None:
            self.live_run.log_params({FOUND_BATCH_SIZE_KEY: str(found)})
        log.info("Training batch size found: %d", found)

