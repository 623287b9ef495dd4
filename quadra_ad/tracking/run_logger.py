"""Log a finished task to MLflow from its config, or say in one line why it was not logged.

Nothing here prints: the outcome is returned (a :class:`TrackedRun`) or raised as
:class:`TrackingFailed` with its one-line message, and the command-line tools print it.
"""

import json
import logging
import platform
import shlex
import sys
from pathlib import Path

from omegaconf import DictConfig

import quadra_ad
from quadra_ad.errors import first_line
from quadra_ad.files import write_text
from quadra_ad.tracking.params import flatten_config

log = logging.getLogger(__name__)

REQUEST_FILE = "mlflow_run.json"
#: The status of a record written when the run started and never completed.
RUNNING = "RUNNING"
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
                 model_folder: Path | None = None, live_run_id: str | None = None) -> dict | None:
    """What ``mlflow_run.json`` holds for a run (None when no MLflow logger is configured).

    ``model_folder``: a deployment folder to log as the run's MLflow model (finished training runs).
    ``live_run_id``: the run opened when training started, which the final logging completes.
    """
    mlflow_cfg = (config.get("logger") or {}).get("mlflow")
    if not mlflow_cfg:
        return None
    model = None
    if model_folder is not None and status == "FINISHED" and mlflow_cfg.get("log_model", True):
        model = {"folder": str(Path(model_folder).relative_to(output_dir)),
                 "registered_model_name": mlflow_cfg.get("registered_model_name")}
    return {
        "model": model,
        "tracking_uri": str(mlflow_cfg.tracking_uri),
        "experiment_name": str(mlflow_cfg.experiment_name),
        "run_name": mlflow_cfg.get("run_name") or _default_run_name(tags, output_dir),
        "params": flatten_config(config),
        "metrics": metrics,
        "artifacts": [str(p.relative_to(output_dir)) for p in artifacts if p.exists()]
        if config.core.get("upload_artifacts", True) else [],
        "tags": tags,
        "artifact_location": mlflow_cfg.get("artifact_location"),
        "metric_history": metric_history or {},
        "status": status,
        "live_run_id": live_run_id,
    }


def save_running_record(config: DictConfig, output_dir: Path, tags: dict[str, str]) -> dict | None:
    """Write ``mlflow_run.json`` as RUNNING when the run starts, before any other result: a process
    that dies without a word (SIGKILL, power loss) still leaves a record to upload. Best effort;
    returns the record (None without an MLflow logger)."""
    request = build_record(config, output_dir, {}, [], tags, status=RUNNING)
    if request is not None:
        write_running_record(request, output_dir)
    return request


def write_running_record(request: dict, output_dir: Path) -> None:
    """(Re)write a RUNNING record, e.g. once it names the live run. Best effort."""
    try:
        write_text(Path(output_dir) / REQUEST_FILE, json.dumps(request, indent=2) + "\n")
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

    Everything the run needs is first written to ``<run folder>/mlflow_run.json``, so a run that
    could not be logged (server down) can be uploaded later with ``quadra-ad-upload``; then
    :class:`TrackingFailed` says so. The outputs are already on disk and stay there whatever
    happens here.
    """
    request = build_record(config, output_dir, metrics, artifacts, tags, metric_history, status, model_folder,
                           live_run_id)
    if request is None:
        log.info("No logger.mlflow configured: the run is on disk only.")
        return None
    request_path = Path(output_dir) / REQUEST_FILE
    try:
        write_text(request_path, json.dumps(request, indent=2) + "\n")
    except OSError as error:
        # A full disk in the run folder must not also cost the MLflow run: log it from memory.
        log.warning("could not save %s (%s): logging the run without it", request_path, error)
        return _log_request(request, Path(output_dir), None)
    return upload_request(request_path)


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


#: What a run record must hold to be uploaded.
RECORD_KEYS = ("tracking_uri", "experiment_name", "params", "metrics", "artifacts", "tags")
#: The statuses a record may end a run with (RUNNING: it never completed, logged as FAILED).
RECORD_STATUSES = ("FINISHED", "FAILED", "KILLED", RUNNING)


class DamagedRecord(Exception):
    """A ``mlflow_run.json`` that cannot be read (cut short by a full disk, edited by hand)."""


class RefusedRecord(DamagedRecord):
    """A ``mlflow_run.json`` that reads, but names something it may not: a path outside its run
    folder, a FIFO, a value of the wrong type. Nothing of it is logged."""


def upload_request(request_path: Path, tracking_uri: str | None = None, experiment_name: str | None = None):
    """Log the run described by a ``mlflow_run.json``; return its TrackedRun.

    Raises DamagedRecord when the file cannot be read, RefusedRecord when it names a path outside
    its run folder or holds a value of the wrong type (both before anything is logged),
    TrackingFailed (with the one line to show) when the run cannot be logged. Artifacts the record
    names but the folder no longer holds are left out and listed in ``TrackedRun.missing_artifacts``.
    """
    try:
        request = json.loads(Path(request_path).read_text(encoding="utf-8"))
        if not isinstance(request, dict):
            raise TypeError(f"it holds a JSON {type(request).__name__}, not an object")
        missing = [key for key in RECORD_KEYS if key not in request]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DamagedRecord(f"'{request_path}' cannot be read as a run record "
                            f"({first_line(error, typed=True)})") from None
    request["tracking_uri"] = tracking_uri or request["tracking_uri"]
    request["experiment_name"] = experiment_name or request["experiment_name"]
    problem = record_problem(request, Path(request_path).parent)
    if problem is not None:
        raise RefusedRecord(f"'{request_path}': {problem}")
    if request.get("status") == RUNNING:
        request["status"] = "FAILED"
        request["tags"] = {**request["tags"], "quadra_ad.error": STOPPED_WITHOUT_A_WORD}
    return _log_request(request, Path(request_path).parent, Path(request_path))


def record_problem(request: dict, run_dir: Path) -> str | None:
    """Why a run record cannot be uploaded as it is (one line naming the key), or None.

    A record is a file anyone can edit: every path it names must stay inside its run folder once
    symlinks are resolved, or an upload would copy (hard-link) files such as ``/etc/hostname``
    into the MLflow store.
    """
    return _value_problem(request) or _paths_problem(request, run_dir)


def _value_problem(request: dict) -> str | None:
    """The first key of the record whose value has the wrong type."""
    def is_number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def is_str_or_none(value) -> bool:
        return value is None or isinstance(value, str)

    for key in ("tracking_uri", "experiment_name"):
        if not isinstance(request[key], str) or not request[key].strip():
            return f"{key} is {request[key]!r}, not a non-empty text"
    for key in ("run_name", "artifact_location", "live_run_id"):
        if not is_str_or_none(request.get(key)):
            return f"{key} is {request[key]!r}, not a text or null"
    for key in ("params", "tags", "metrics", "metric_history"):
        if not isinstance(request.get(key, {}), dict):
            return f"{key} is a {type(request[key]).__name__}, not a JSON object"
    for name, value in request["metrics"].items():
        if not is_number(value):
            return f"metrics[{name!r}] is {value!r}, not a number"
    for name, points in request.get("metric_history", {}).items():
        if not isinstance(points, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(map(is_number, p)) for p in points):
            return f"metric_history[{name!r}] is not a list of [step, value] number pairs"
    if not isinstance(request["artifacts"], list):
        return f"artifacts is a {type(request['artifacts']).__name__}, not a list of paths"
    if request.get("status", "FINISHED") not in RECORD_STATUSES:
        return f"status is {request['status']!r}, not one of {', '.join(RECORD_STATUSES)}"
    model = request.get("model")
    if model is not None and (not isinstance(model, dict) or "folder" not in model
                              or not is_str_or_none(model.get("registered_model_name"))):
        return "model is not null nor an object with a 'folder' path (and a registered_model_name text or null)"
    return None


def _paths_problem(request: dict, run_dir: Path) -> str | None:
    """The first path the record names that is not a file or folder inside ``run_dir``."""
    root = run_dir.resolve()
    named = [(f"artifacts[{index}]", path) for index, path in enumerate(request["artifacts"])]
    if request.get("model") is not None:
        named.append(("model.folder", request["model"]["folder"]))
    for key, value in named:
        problem = _path_problem(value, root)
        if problem is None and key == "model.folder" and (root / value).exists() and not (root / value).is_dir():
            problem = "is not a folder (a deployment_model folder is expected)"
        if problem is None and key != "model.folder" and Path(value).suffix and (root / value).is_dir():
            problem = "is a folder, but its name is a file's (a file artifact was expected)"
        if problem is not None:
            return (f"{key} {value!r} {problem}: a run record may only name files and folders inside its run folder "
                    f"'{run_dir}'; remove that entry from the record")
    return None


def _path_problem(value, root: Path) -> str | None:
    """Why ``value`` (a path relative to the run folder ``root``) may not be uploaded, or None.

    A path that does not exist is no problem here: it is left out and reported as missing.
    """
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a path"
    if "\x00" in value:
        return "holds a NUL byte"
    if not value.strip() or Path(value).is_absolute():
        return "is not a relative path"
    path = root / value
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return "cannot be resolved (a symlink loop?)"
    if resolved == root or not resolved.is_relative_to(root):
        return "is outside the run folder (symlinks resolved)" if resolved != root else "is the run folder itself"
    if not path.exists():
        return None
    if path.is_dir():
        return _folder_problem(path, root)
    return None if path.is_file() else "is neither a regular file nor a folder (a FIFO, socket or device)"


def _folder_problem(folder: Path, root: Path) -> str | None:
    """Why a folder artifact may not be uploaded: an entry in it that links outside the run folder,
    or that is not a regular file (walked without opening any file)."""
    import os

    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            entry = Path(parent) / name
            try:
                resolved = entry.resolve()
            except (OSError, RuntimeError):
                return f"holds '{entry.relative_to(root)}', which cannot be resolved (a symlink loop?)"
            if not resolved.is_relative_to(root):
                return f"holds '{entry.relative_to(root)}', which links outside the run folder"
            if name in files and entry.exists() and not entry.is_file():
                return (f"holds '{entry.relative_to(root)}', neither a regular file nor a folder "
                        f"(a FIFO, socket or device)")
    return None


def _model_to_log(request: dict, run_dir: Path) -> tuple[Path, str | None] | None:
    """(deployment folder, registered model name) when the record asks for an MLflow model and the folder is there."""
    model = request.get("model")
    if not model or request.get("status", "FINISHED") != "FINISHED" or not (run_dir / model["folder"]).is_dir():
        return None
    return run_dir / model["folder"], model.get("registered_model_name")


def _log_request(request: dict, run_dir: Path, request_path: Path | None):
    try:
        from quadra_ad.tracking.mlflow_writer import log_run

        present = [p for p in request["artifacts"] if (run_dir / p).exists()]
        tracked = log_run(
            tracking_uri=request["tracking_uri"],
            experiment_name=request["experiment_name"],
            run_name=request.get("run_name"),
            params=request["params"],
            metrics=request["metrics"],
            artifacts=[run_dir / p for p in present],
            tags=request["tags"],
            artifact_location=request.get("artifact_location"),
            metric_history={k: [tuple(p) for p in v] for k, v in request.get("metric_history", {}).items()},
            status=request.get("status", "FINISHED"),
            model=_model_to_log(request, run_dir),
            live_run_id=request.get("live_run_id"),
        )
    except Exception as error:
        log.debug("tracking failure", exc_info=True)
        raise TrackingFailed(
            f"MLflow tracking failed ({first_line(error, typed=True)}); all outputs are safe in "
            f"{run_dir}; log them later with: quadra-ad-upload {run_dir}"
        ) from error
    tracked.missing_artifacts = tuple(p for p in request["artifacts"] if p not in present)
    if request_path is not None:
        request["logged_run_id"] = tracked.run_id
        try:
            write_text(request_path, json.dumps(request, indent=2) + "\n")
        except OSError:
            log.warning("run %s is logged, but %s could not note it (disk full?)", tracked.run_id, request_path)
    log.debug("Logged MLflow run %s (%s) in experiment '%s' at %s", tracked.run_id, tracked.status,
              tracked.experiment_name, tracked.tracking_uri)
    return tracked

