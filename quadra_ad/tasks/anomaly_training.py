"""AnomalyTrainingTask: fit an anomalib model, test it, export it, report and track the run.

Which model, data and trainer are used is decided by the config alone.
"""

import logging
import platform
import shlex
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

import quadra_ad
from quadra_ad.config.instantiation import instantiate_node
from quadra_ad.errors import DatasetError, QuadraADError
from quadra_ad.export.graph import AnomalyGraph
from quadra_ad.export.model_json import ModelCard, package_versions
from quadra_ad.export.writers import export_graph
from quadra_ad.metrics import image_metrics, pixel_metrics
from quadra_ad.models.backbones import build_model
from quadra_ad.reports.predictions import METRICS_JSON, PREDICTIONS_CSV, write_metrics, write_predictions
from quadra_ad.scored_set import ScoredSet
from quadra_ad.tasks.base import Task
from quadra_ad.tasks.score_collector import ScoreCollector
from quadra_ad.thresholds import Calibration, calibrate

log = logging.getLogger(__name__)

DEPLOYMENT_FOLDER = "deployment_model"
RESOLVED_CONFIG = "config_resolved.yaml"


class AnomalyTrainingTask(Task):
    """Train → test → export (TorchScript, ONNX + model.json) → report → MLflow."""

    def __init__(self, config: DictConfig, output_dir: Path) -> None:
        super().__init__(config, output_dir)
        self.calibration: Calibration | None = None
        self.metrics: dict[str, float] = {}
        self.exported: dict[str, Path] = {}
        self.export_errors: list[QuadraADError] = []
        self.tracked_run = None

    # -- lifecycle -------------------------------------------------------------------------
    def prepare(self) -> None:
        cfg = self.config
        OmegaConf.save(cfg, self.output_dir / RESOLVED_CONFIG, resolve=True)
        self.datamodule = instantiate_node(cfg, "datamodule")
        self.datamodule.setup()
        if not any(s.label is not None for s in self.datamodule.layout.test):
            raise DatasetError(
                f"datamodule.data_path '{self.datamodule.layout.root}': no labelled test images to set "
                f"thresholds on; add images to test/good and test/<defect>/"
            )
        self.model = build_model(cfg)
        self.collector = ScoreCollector()
        callbacks = [self.collector]
        for name, node in (cfg.get("callbacks") or {}).items():
            if node is not None and "_target_" in node:
                callbacks.append(instantiate_node(cfg, f"callbacks.{name}"))
        self.trainer = instantiate_node(
            cfg,
            "trainer",
            callbacks=callbacks,
            logger=CSVLogger(save_dir=str(self.output_dir), name="lightning_logs"),
            default_root_dir=str(self.output_dir),
        )

    def train(self) -> None:
        self.trainer.fit(self.model, datamodule=self.datamodule)
        validation = self.collector.validation
        if len(validation) == 0:
            # Models that skip validation during fit (e.g. a trainer with limit_val_batches=0).
            self.trainer.validate(self.model, datamodule=self.datamodule, verbose=False)
            validation = self.collector.validation
        self.calibration = calibrate(validation)
        log.info("Thresholds from validation: %s", self.calibration)

    def test(self) -> None:
        if not self.config.core.test_after_training:
            return
        self.trainer.test(self.model, datamodule=self.datamodule, verbose=False)
        if self.datamodule.layout.unknown:
            self.trainer.predict(self.model, dataloaders=self.datamodule.predict_dataloader(), return_predictions=False)
        self.metrics = self._test_metrics(self.collector.test)
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
        self._model_card().write(folder)

    def report(self) -> None:
        write_metrics(self.metrics, self.output_dir / METRICS_JSON)
        if len(self.collector.test) or len(self.collector.predict):
            combined = _concat(self.collector.test, self.collector.predict)
            cal = self.calibration
            write_predictions(combined, self.output_dir / PREDICTIONS_CSV, cal.image_threshold, cal.image_min, cal.image_max)

    def finalize(self) -> None:
        print(f"quadra-ad: run folder {self.output_dir}")
        self._track()
        if self.export_errors:
            raise self.export_errors[0]

    # -- helpers ---------------------------------------------------------------------------
    def _test_metrics(self, scored: ScoredSet) -> dict[str, float]:
        labelled = scored.labelled
        if not labelled:
            return {}
        cal = self.calibration
        metrics = image_metrics(scored.score_tensor(labelled), scored.label_tensor(labelled), cal.image_threshold)
        if scored.has_masks and scored.has_maps and cal.pixel_threshold is not None:
            maps = torch.stack([scored.maps[i] for i in labelled])
            masks = torch.stack([scored.masks[i] for i in labelled])
            metrics.update(pixel_metrics(maps, masks, cal.pixel_threshold))
        metrics["image_threshold"] = cal.image_threshold
        if cal.pixel_threshold is not None:
            metrics["pixel_threshold"] = cal.pixel_threshold
        return metrics

    def _model_card(self) -> ModelCard:
        dm = self.datamodule
        cal = self.calibration
        return ModelCard(
            model_class=f"{type(self.model).__module__}.{type(self.model).__name__}",
            input_size=list(dm.image_size),
            mean=list(dm.mean),
            std=list(dm.std),
            task_type=dm.layout.task_type,
            files={k: p.name for k, p in self.exported.items()},
            versions=package_versions(),
            training={
                "experiment_name": _tracking_value(self.config, "experiment_name"),
                "run_folder": str(self.output_dir),
                "dataset": str(dm.layout.root),
                "seed": int(self.config.core.seed),
            },
            **asdict(cal),
        )

    def _artifacts(self) -> list[Path]:
        candidates = [
            self.output_dir / RESOLVED_CONFIG,
            self.output_dir / ".hydra",
            self.output_dir / DEPLOYMENT_FOLDER,
            self.output_dir / METRICS_JSON,
            self.output_dir / PREDICTIONS_CSV,
        ]
        return [p for p in candidates if p.exists()]

    def _track(self) -> None:
        from quadra_ad.tracking.params import flatten_config

        mlflow_cfg = (self.config.get("logger") or {}).get("mlflow")
        if not mlflow_cfg:
            log.info("No logger.mlflow configured: the run is on disk only.")
            return
        try:
            from quadra_ad.tracking.mlflow_writer import log_run

            self.tracked_run = log_run(
                tracking_uri=str(mlflow_cfg.tracking_uri),
                experiment_name=str(mlflow_cfg.experiment_name),
                run_name=mlflow_cfg.get("run_name"),
                params=flatten_config(self.config),
                metrics=self.metrics,
                artifacts=self._artifacts() if self.config.core.get("upload_artifacts", True) else [],
                tags=self._tags(),
                artifact_location=mlflow_cfg.get("artifact_location"),
            )
        except Exception as error:  # noqa: BLE001 - tracking must never lose a finished run
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            print(
                f"quadra-ad: MLflow tracking failed ({type(error).__name__}: {first_line}); "
                f"all outputs are safe in {self.output_dir}",
                file=sys.stderr,
            )
            log.debug("tracking failure", exc_info=True)
            return
        run = self.tracked_run
        print(f"quadra-ad: logged MLflow run {run.run_id} in experiment '{run.experiment_name}' at {run.tracking_uri}")
        print(f"quadra-ad: to browse it: {run.ui_hint()}")

    def _tags(self) -> dict[str, str]:
        return {
            "quadra_ad.version": quadra_ad.__version__,
            "quadra_ad.task": type(self).__name__,
            "quadra_ad.model": type(self.model).__name__,
            "quadra_ad.dataset": str(self.datamodule.layout.root),
            "quadra_ad.run_folder": str(self.output_dir),
            "quadra_ad.command": shlex.join(["quadra-ad", *sys.argv[1:]]),
            "quadra_ad.host": platform.node(),
            "quadra_ad.tag": str(self.config.core.get("tag") or ""),
        }


def _tracking_value(cfg: DictConfig, key: str):
    logger_cfg = cfg.get("logger") or {}
    mlflow_cfg = logger_cfg.get("mlflow") or {}
    return mlflow_cfg.get(key)


def _concat(first: ScoredSet, second: ScoredSet) -> ScoredSet:
    combined = ScoredSet()
    for part in (first, second):
        combined.image_paths += part.image_paths
        combined.labels += part.labels
        combined.defect_types += part.defect_types
        combined.scores += part.scores
    return combined
