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
Python session, whose command line (a pytest session, a notebook) is not the run.
"""

import logging
import shutil
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from quadra_ad.callbacks.from_config import build_callbacks, without_auroc_checkpoints
from quadra_ad.callbacks.memory_bank_gather import MemoryBankGather
from quadra_ad.callbacks.score_collector import ScoreCollector
from quadra_ad.callbacks.training_start import OnTrainingStart
from quadra_ad.config.instantiation import instantiate_node
from quadra_ad.deploy.model_card import ModelCard
from quadra_ad.errors import ConfigError, DatasetError, QuadraADError
from quadra_ad.evaluation.metrics import scored_set_metrics
from quadra_ad.evaluation.scored_set import concat_scored_sets
from quadra_ad.evaluation.thresholds import IMAGE_RULES, Calibration, ThresholdRule
from quadra_ad.export.background import BackgroundExport, can_fork_exports
from quadra_ad.export.graph import AnomalyGraph
from quadra_ad.export.writers import (
    ONNX_SCRATCH_PREFIX,
    check_export_config,
    export_graph,
    start_onnx_export,
    write_valid_area_mask,
)
from quadra_ad.models.factory import build_model
from quadra_ad.models.trainer_arguments import merge_trainer_arguments
from quadra_ad.reports.heatmaps import HEATMAPS_DIR, RAW_OUTPUTS_DIR
from quadra_ad.reports.report import write_report
from quadra_ad.tasks.base import RESOLVED_CONFIG, Task
from quadra_ad.tracking.lightning_history import read_lightning_history
from quadra_ad.versions import package_versions

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
        self.exports_started: dict[str, BackgroundExport] = {}

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
        if self.threshold_rule.image in ("target_fpr", "good_percentile") and not any(s.label == 0 for s in validation):
            raise DatasetError(f"task.threshold_rule={self.threshold_rule.image} sets the threshold on good images, and "
                               f"'{self.datamodule.layout.root}' has none among the validation images "
                               f"({self.datamodule.layout.val_source}); add some or use another rule")
        callbacks = [self.collector, MemoryBankGather(), *build_callbacks(cfg)]
        if self._finds_batch_size():
            callbacks.append(OnTrainingStart(self._record_found_batch_size))
        labels = {s.label for s in validation if s.label is not None}
        if labels != {0, 1}:
            callbacks = without_auroc_checkpoints(callbacks)
        self.checkpoint = next((cb for cb in callbacks if isinstance(cb, ModelCheckpoint)), None)
        # What the Trainer really gets goes back into the config: MLflow params and
        # config_resolved.yaml then say what ran, not "null".
        with open_dict(cfg):
            cfg.trainer = merge_trainer_arguments(cfg.trainer, self.model)
        self.save_resolved_config()
        self.trainer = instantiate_node(
            cfg,
            "trainer",
            callbacks=callbacks,
            logger=CSVLogger(save_dir=str(self.output_dir), name="lightning_logs"),
            default_root_dir=str(self.output_dir),
            # Checkpoints only when a checkpoint callback is configured: one-pass models would
            # otherwise write their whole memory bank for nothing.
            enable_checkpointing=self.checkpoint is not None,
        )
        _check_processes_can_start(self.trainer, cfg.trainer.get("strategy"))

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
        self._start_onnx_export()
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        if self.datamodule.layout.unknown:
            self.trainer.predict(self.model, dataloaders=self.datamodule.predict_dataloader(), return_predictions=False)
        self.metrics = scored_set_metrics(self.collector.test, self.calibration)
        # How each threshold was really set, as the calibration says (not the rule asked for: F1 needs anomalous images).
        self.metrics.provenance["image_threshold"] = self.calibration.image_threshold_rule
        self.metrics.provenance["validation_images"] = self.datamodule.layout.val_source
        if self.calibration.pixel_threshold_rule is not None:
            self.metrics.provenance["pixel_threshold"] = self.calibration.pixel_threshold_rule
        summary = ", ".join(f"{k}={v:.4f}" for k, v in sorted(self.metrics.items()) if "AUROC" in k or k.endswith("F1"))
        log.info("Test metrics: %s", summary)

    def _start_onnx_export(self) -> None:
        """The weights are final here: the ONNX file is written by a forked copy of this process
        while the test runs (:mod:`quadra_ad.export.background`); :meth:`export` collects and checks it."""
        export_cfg = self.config.get("export") or {}
        if "onnx" in (export_cfg.get("types") or []) and can_fork_exports(self.trainer.world_size):
            self.exports_started["onnx"] = start_onnx_export(
                AnomalyGraph(self.model.model), self.datamodule.image_size, self.output_dir / DEPLOYMENT_FOLDER,
                export_cfg.get("onnx_opset"),
            )

    def stop_background_work(self) -> None:
        for started in self.exports_started.values():
            started.cancel()
        self.exports_started.clear()
        for scratch in (self.output_dir / DEPLOYMENT_FOLDER).glob(f"{ONNX_SCRATCH_PREFIX}*"):
            shutil.rmtree(scratch, ignore_errors=True)  # a writer killed before its files took their names

    def export(self) -> None:
        export_cfg = self.config.get("export") or {}
        types = list(export_cfg.get("types") or [])
        folder = self.output_dir / DEPLOYMENT_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        graph = AnomalyGraph(self.model.model)
        # Types written in the background last: the others are written while it finishes.
        for export_type in sorted(types, key=lambda export_type: export_type in self.exports_started):
            try:
                self.exported.update(
                    export_graph(graph, self.datamodule.image_size, folder, [export_type], export_cfg.get("onnx_opset"),
                                 started=self.exports_started)
                )
            except QuadraADError as error:
                log.error("%s", error)
                self.export_errors.append(error)
        self.exported = {export_type: self.exported[export_type] for export_type in types if export_type in self.exported}
        mask_file = write_valid_area_mask(self.datamodule.preparation, folder)
        self._model_card(mask_file).write(folder)

    def report(self) -> None:
        scored = concat_scored_sets(self.collector.test, self.collector.predict)
        self.report_files = write_report(scored, self.metrics, self.output_dir, self.calibration,
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
            "quadra_ad.threshold_rule": self._threshold_rule_words(),
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
        return ("datamodule.train_batch_size",) if self._finds_batch_size() else ()

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

    def _finds_batch_size(self) -> bool:
        return bool(OmegaConf.select(self.config, "callbacks.batch_size_finder.enabled", default=False))

    def _record_found_batch_size(self, trainer=None) -> None:
        """The batch size the finder chose is the one the params and config_resolved.yaml report."""
        found = int(self.datamodule.train_batch_size)
        with open_dict(self.config):
            self.config.datamodule.train_batch_size = found
        self.save_resolved_config()
        if self.live_run is not None:
            self.live_run.log_params({"datamodule.train_batch_size": str(found)})
        log.info("Training batch size found: %d", found)

    def _threshold_rule_words(self) -> str:
        """How the image threshold was set once it is; before, the rule asked for."""
        if self.calibration is not None and self.calibration.image_threshold_rule:
            return self.calibration.image_threshold_rule
        return self.threshold_rule.describe()

    def _model_card(self, valid_area_mask: Path | None) -> ModelCard:
        dm = self.datamodule
        return ModelCard(
            model_class=f"{type(self.model).__module__}.{type(self.model).__name__}",
            input_size=list(dm.image_size),
            mean=list(dm.mean),
            std=list(dm.std),
            calibration=self.calibration,
            task_type=dm.layout.task_type,
            valid_area_mask=valid_area_mask.name if valid_area_mask is not None else None,
            crop_area=dm.preparation.crop_area,
            files={k: p.name for k, (p, _) in self.exported.items()},
            fixed_batch_size={k: b for k, (_, b) in self.exported.items() if b is not None},
            has_anomaly_map=self.collector.test.has_maps or self.collector.validation.has_maps,
            versions=package_versions(),
            training={
                "experiment_name": _tracking_value(self.config, "experiment_name"),
                "run_folder": str(self.output_dir),
                "dataset": str(dm.layout.root),
                "seed": int(self.config.core.seed),
            },
        )


def threshold_rule_from_settings(rule: str, manual_image, manual_pixel, normalized, target_fpr,
                                 good_percentile) -> ThresholdRule:
    """The task's threshold keys as one rule; settings that contradict each other are one line.

    A manual image threshold alone means ``threshold_rule=manual`` (as in Quadra)."""
    if rule == "f1" and manual_image is not None:
        rule = "manual"
    if rule not in IMAGE_RULES:
        raise ConfigError(f"task.threshold_rule={rule!r}: choose one of {', '.join(IMAGE_RULES)}")
    if rule == "manual" and manual_image is None:
        raise ConfigError("task.threshold_rule=manual needs task.manual_image_threshold=<score>")
    if rule != "manual" and manual_image is not None:
        raise ConfigError(f"task.manual_image_threshold is set but task.threshold_rule={rule}: give one of the two")
    if normalized and manual_image is None:
        raise ConfigError("task.manual_threshold_normalized=true applies to task.manual_image_threshold, which is not set")
    return ThresholdRule(image=rule, manual_image=None if manual_image is None else float(manual_image),
                         manual_pixel=None if manual_pixel is None else float(manual_pixel),
                         normalized=bool(normalized), target_fpr=float(target_fpr), good_percentile=float(good_percentile))


def _relaunches_command_line(trainer) -> bool:
    """True when fitting will start the other DDP processes by running this command line again."""
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    return (trainer.world_size > 1 and isinstance(launcher, _SubprocessScriptLauncher)
            and not launcher.cluster_environment.creates_processes_externally)


def _check_processes_can_start(trainer, strategy) -> None:
    """Refuse a DDP run whose command line cannot be run again as the other processes."""
    if not _relaunches_command_line(trainer):
        return
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        raise ConfigError(
            f"trainer.strategy={strategy} with {trainer.world_size} processes starts the others by "
            f"running the command line again: start the run with the quadra-ad command (or torchrun), not from "
            f"quadra_ad.run.run() in a Python session")
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        raise ConfigError(
            f"trainer.strategy={strategy} cannot run inside a multirun (-m): its other processes "
            f"would run the whole sweep again; run each configuration as its own quadra-ad command")


def _tracking_value(cfg: DictConfig, key: str):
    logger_cfg = cfg.get("logger") or {}
    mlflow_cfg = logger_cfg.get("mlflow") or {}
    return mlflow_cfg.get(key)
