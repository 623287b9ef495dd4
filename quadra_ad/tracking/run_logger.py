"""Log a task to MLflow from its config, through its run record, or say in one line why it was not logged.

The run record (:class:`~quadra_ad.tracking.run_record.RunRecord`, the run folder's
``mlflow_run.json``) is written first, so a run whose logging failed can be uploaded later.
Nothing here prints: the outcome is returned (a :class:`TrackedRun`) or raised as
:class:`TrackingFailed` with its one-line message, and the command-line tools print it.
"""

import logging
import platform
import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig

import quadra_ad
from quadra_ad.errors import first_line
from quadra_ad.tracking.params import flatten_config
from quadra_ad.tracking.run_record import RECORD_FILE, RUNNING, ModelToLog, RunRecord

log = logging.getLogger(__name__)

#: What a record still RUNNING is logged as: the process stopped without saying how.
STOPPED_WITHOUT_A_WORD = "the run stopped without finishing (process killed, or the machine went down)"


def _git_commit(folder: Path) -> str:
    """Commit of the git checkout ``folder`` is in, or '' when there is none."""
    import subprocess

    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def _sweep_tags() -> dict[str, str]:
    """Sweep id (the sweep folder's name), sweep folder and job number inside a Hydra multirun."""
    from quadra_ad.config.resolvers import sweep_id

    sweep = sweep_id()
    if sweep is None:
        return {}
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    return {
        "quadra_ad.sweep_id": sweep,
        "quadra_ad.sweep": str(Path(hydra_cfg.sweep.dir).resolve()),
        "quadra_ad.sweep_job": str(hydra_cfg.job.num),
    }


def base_tags(config: DictConfig, output_dir: Path, task_name: str) -> dict[str, str]:
    """Tags every run carries: versions, task, run folder, command line, git commit, host, sweep, user tag."""
    from quadra_ad.versions import package_versions

    tags = {
        "quadra_ad.version": quadra_ad.__version__,
        "quadra_ad.task": task_name,
        "quadra_ad.run_folder": str(output_dir),
        "quadra_ad.command": shlex.join(["quadra-ad", *sys.argv[1:]]),
        "quadra_ad.host": platform.node(),
        "quadra_ad.tag": str(config.core.get("tag") or ""),
        "quadra_ad.git_commit": _git_commit(Path.cwd()),
    }
    tags.update({f"version.{name}": value for name, value in package_versions().items()})
    tags.update(_sweep_tags())
    return tags


def build_record(config: DictConfig, output_dir: Path, metrics: dict[str, float], artifacts: list[Path],
                 tags: dict[str, str], metric_history: dict | None = None, status: str = "FINISHED",
                 model_folder: Path | None = None, live_run_id: str | None = None) -> RunRecord | None:
    """The run record of a run (None when no MLflow logger is configured).

    ``model_folder``: a deployment folder to log as the run's MLflow model (finished training runs).
    ``live_run_id``: the run opened when training started, which the final logging completes.
    """
    mlflow_cfg = (config.get("logger") or {}).get("mlflow")
    if not mlflow_cfg:
        return None
    model = None
    if model_folder is not None and status == "FINISHED" and mlflow_cfg.get("log_model", True):
        model = ModelToLog(str(Path(model_folder).relative_to(output_dir)), mlflow_cfg.get("registered_model_name"))
    return RunRecord(
        tracking_uri=str(mlflow_cfg.tracking_uri),
        experiment_name=str(mlflow_cfg.experiment_name),
        run_name=mlflow_cfg.get("run_name") or _default_run_name(tags, output_dir),
        params=flatten_config(config),
        metrics=dict(metrics),
        artifacts=tuple(str(p.relative_to(output_dir)) for p in artifacts if p.exists())
        if config.core.get("upload_artifacts", True) else (),
        tags=dict(tags),
        artifact_location=mlflow_cfg.get("artifact_location"),
        metric_history=dict(metric_history or {}),
        status=status,
        model=model,
        live_run_id=live_run_id,
    )


def save_running_record(config: DictConfig, output_dir: Path, tags: dict[str, str]) -> RunRecord | None:
    """Write the run record as RUNNING when the run starts, before any other result: a process
    that dies without a word (SIGKILL, power loss) still leaves a record to upload. Best effort;
    returns the record (None without an MLflow logger)."""
    record = build_record(config, output_dir, {}, [], tags, status=RUNNING)
    if record is not None:
        write_running_record(record, output_dir)
    return record


def write_running_record(record: RunRecord, output_dir: Path) -> None:
    """(Re)write a RUNNING record, e.g. once it names the live run. Best effort."""
    try:
        record.write(Path(output_dir) / RECORD_FILE)
    except OSError as error:
        log.warning("could not save the run record in %s (%s)", output_dir, error)


def track_run(
    config: DictConfig,
    output_dir: Path,
    metrics: dict[str, float],
    artifacts: list[Path],
    tags: dict[str, str],
    metric_history: dict[str, list[tuple[int, float]]] | None = None,
    status: str = "FINISHED",
    model_folder: Path | None = None,
    live_run_id: str | None = None,
):
    """Log one run as ``logger.mlflow`` says; return the TrackedRun, or None when no logger is configured.

    Everything the run needs is first written to its run record (``<run folder>/mlflow_run.json``),
    so a run that could not be logged (server down) can be uploaded later with ``quadra-ad-upload``;
    then :class:`TrackingFailed` says so. The outputs are already on disk and stay there whatever
    happens here.
    """
    record = build_record(config, output_dir, metrics, artifacts, tags, metric_history, status, model_folder,
                          live_run_id)
    if record is None:
        log.info("No logger.mlflow configured: the run is on disk only.")
        return None
    record_path = Path(output_dir) / RECORD_FILE
    try:
        record.write(record_path)
    except OSError as error:
        # A full disk in the run folder must not also cost the MLflow run: log it from memory.
        log.warning("could not save %s (%s): logging the run without it", record_path, error)
        return _log_record(record, Path(output_dir), None)
    # Read back as an upload reads it: what is logged is what the run folder says, checked alike.
    return upload_record(RunRecord.from_file(record_path), record_path)


def track_failed_start(config: DictConfig, output_dir: Path, error: BaseException):
    """Log a FAILED run for a job that stopped before its task could log anything (a sweep job
    whose data or settings were refused), so a sweep's experiment lists every job it ran."""
    target = str((config.get("task") or {}).get("_target_", "task"))
    tags = base_tags(config, output_dir, target.rsplit(".", 1)[-1])
    model = (config.get("model") or {}).get("_target_")
    if model:
        tags["quadra_ad.model"] = str(model).rsplit(".", 1)[-1]
    tags["quadra_ad.error"] = first_line(error, typed=True, limit=500)
    return track_run(config, output_dir, {}, [], tags, status="FAILED")


class TrackingFailed(Exception):
    """A run could not be logged; its message is one line saying how to log it later."""


def _default_run_name(tags: dict[str, str], output_dir: Path) -> str:
    """``<model>_<run folder name>``: readable in the MLflow UI and unique per run folder."""
    return f"{tags.get('quadra_ad.model') or tags.get('quadra_ad.task', 'run')}_{Path(output_dir).name}"


def upload_record(record: RunRecord, record_path: Path):
    """Log the run ``record`` (read by :meth:`RunRecord.from_file` from ``record_path``); return its
    TrackedRun and note its run id in the record's file.

    A record still RUNNING is logged FAILED (its process stopped without a word). Raises
    TrackingFailed (with the one line to show) when the run cannot be logged. Artifacts the record
    names but the folder no longer holds are left out and listed in ``TrackedRun.missing_artifacts``.
    """
    if record.status == RUNNING:
        record = record.replace(status="FAILED", tags={**record.tags, "quadra_ad.error": STOPPED_WITHOUT_A_WORD})
    return _log_record(record, Path(record_path).parent, Path(record_path))


def _model_to_log(record: RunRecord, run_dir: Path) -> tuple[Path, str | None] | None:
    """(deployment folder, registered model name) when the record asks for an MLflow model and the folder is there."""
    model = record.model
    if model is None or record.status != "FINISHED" or not (run_dir / model.folder).is_dir():
        return None
    return run_dir / model.folder, model.registered_model_name


def _log_record(record: RunRecord, run_dir: Path, record_path: Path | None):
    try:
        from quadra_ad.tracking.mlflow_writer import log_run

        present = [p for p in record.artifacts if (run_dir / p).exists()]
        tracked = log_run(
            tracking_uri=record.tracking_uri,
            experiment_name=record.experiment_name,
            run_name=record.run_name,
            params=record.params,
            metrics=record.metrics,
            artifacts=[run_dir / p for p in present],
            tags=record.tags,
            artifact_location=record.artifact_location,
            metric_history=record.metric_history,
            status=record.status,
            model=_model_to_log(record, run_dir),
            live_run_id=record.live_run_id,
        )
    except Exception as error:  # tracking must never lose a finished run
        log.debug("tracking failure", exc_info=True)
        raise TrackingFailed(
            f"MLflow tracking failed ({first_line(error, typed=True)}); all outputs are safe in "
            f"{run_dir}; log them later with: quadra-ad-upload {run_dir}"
        ) from error
    tracked.missing_artifacts = tuple(p for p in record.artifacts if p not in present)
    if record_path is not None:
        try:
            record.replace(logged_run_id=tracked.run_id).write(record_path)
        except OSError:
            log.warning("run %s is logged, but %s could not note it (disk full?)", tracked.run_id, record_path)
    log.debug("Logged MLflow run %s (%s) in experiment '%s' at %s", tracked.run_id, tracked.status,
              tracked.experiment_name, tracked.tracking_uri)
    return tracked
