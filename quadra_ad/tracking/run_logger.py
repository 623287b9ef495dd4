"""Log a finished task to MLflow from its config, or say in one line why it was not logged."""

import logging
import platform
import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig

import quadra_ad
from quadra_ad.tracking.params import flatten_config

log = logging.getLogger(__name__)


def base_tags(config: DictConfig, output_dir: Path, task_name: str) -> dict[str, str]:
    """Tags every run carries: version, task, run folder, command line, host, user tag."""
    return {
        "quadra_ad.version": quadra_ad.__version__,
        "quadra_ad.task": task_name,
        "quadra_ad.run_folder": str(output_dir),
        "quadra_ad.command": shlex.join(["quadra-ad", *sys.argv[1:]]),
        "quadra_ad.host": platform.node(),
        "quadra_ad.tag": str(config.core.get("tag") or ""),
    }


def track_run(
    config: DictConfig,
    output_dir: Path,
    metrics: dict[str, float],
    artifacts: list[Path],
    tags: dict[str, str],
    metric_history: dict[str, list[tuple[int, float]]] | None = None,
):
    """Log one run as ``logger.mlflow`` says; return the TrackedRun, or None when not logged.

    Never raises: the outputs are already on disk and stay there whatever happens here.
    """
    mlflow_cfg = (config.get("logger") or {}).get("mlflow")
    if not mlflow_cfg:
        log.info("No logger.mlflow configured: the run is on disk only.")
        return None
    try:
        from quadra_ad.tracking.mlflow_writer import log_run

        tracked = log_run(
            tracking_uri=str(mlflow_cfg.tracking_uri),
            experiment_name=str(mlflow_cfg.experiment_name),
            run_name=mlflow_cfg.get("run_name"),
            params=flatten_config(config),
            metrics=metrics,
            artifacts=[p for p in artifacts if p.exists()] if config.core.get("upload_artifacts", True) else [],
            tags=tags,
            artifact_location=mlflow_cfg.get("artifact_location"),
            metric_history=metric_history,
        )
    except Exception as error:  # noqa: BLE001 - tracking must never lose a finished run
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        print(
            f"quadra-ad: MLflow tracking failed ({type(error).__name__}: {first_line}); "
            f"all outputs are safe in {output_dir}",
            file=sys.stderr,
        )
        log.debug("tracking failure", exc_info=True)
        return None
    print(f"quadra-ad: logged MLflow run {tracked.run_id} in experiment '{tracked.experiment_name}' at {tracked.tracking_uri}")
    print(f"quadra-ad: to browse it: {tracked.ui_hint()}")
    return tracked
