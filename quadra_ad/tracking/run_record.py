"""The run record: what a run folder's ``mlflow_run.json`` says to log to MLflow, as one type.

A run writes its record when it starts (status RUNNING) and again when it ends; the final
logging, or ``quadra-ad-upload`` later, logs what it says. The file is anyone's to edit, so
:meth:`RunRecord.from_file` checks every value and every path it names before anything is logged:
nothing outside the run folder is read because a record names it. Records written by earlier
versions (without ``run_name``, ``model``, ``metric_history``, ``status``, ``live_run_id`` …)
read with those keys' defaults.
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from quadra_ad.errors import first_line
from quadra_ad.files import write_text

#: The record's file in a run folder (the name is on users' disks: it stays).
RECORD_FILE = "mlflow_run.json"
#: The status of a record written when the run started and never completed.
RUNNING = "RUNNING"
#: The statuses a record may end a run with (RUNNING: it never completed, logged as FAILED).
RECORD_STATUSES = ("FINISHED", "FAILED", "KILLED", RUNNING)
#: What every record holds, whichever version wrote it; a file without one of them was cut short.
RECORD_KEYS = ("tracking_uri", "experiment_name", "params", "metrics", "artifacts", "tags")


class DamagedRecord(Exception):
    """A ``mlflow_run.json`` that cannot be read (cut short by a full disk, edited by hand)."""


class RefusedRecord(DamagedRecord):
    """A ``mlflow_run.json`` that reads, but names something it may not: a path outside its run
    folder, a FIFO, a value of the wrong type. Nothing of it is logged."""


@dataclass(frozen=True)
class ModelToLog:
    """The deployment folder a finished run logs as its MLflow model."""

    #: Relative to the run folder.
    folder: str
    #: Registered under this name in MLflow's model registry (None: logged, not registered).
    registered_model_name: str | None = None


@dataclass(frozen=True)
class RunRecord:
    """One MLflow run to log: where, under which names, and what it holds.

    Paths (``artifacts``, ``model.folder``) are relative to the run folder the record lies in.
    """

    tracking_uri: str
    experiment_name: str
    #: The composed config, flattened (``model._target_`` → ``anomalib.models.Padim``).
    params: dict[str, str]
    metrics: dict[str, float]
    artifacts: tuple[str, ...]
    tags: dict[str, str]
    run_name: str | None = None
    #: Where the experiment keeps artifacts when it is created (None: beside an embedded store).
    artifact_location: str | None = None
    #: Per-step values, ``{name: [(step, value), …]}``.
    metric_history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    status: str = "FINISHED"
    model: ModelToLog | None = None
    #: The MLflow run opened when training started, which the final logging completes.
    live_run_id: str | None = None
    #: The MLflow run this record was logged as (None until it is).
    logged_run_id: str | None = None

    def replace(self, **changes) -> "RunRecord":
        """This record with ``changes`` (e.g. ``status="FAILED"``)."""
        return dataclasses.replace(self, **changes)

    # -- the file ------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The text of ``mlflow_run.json``."""
        return json.dumps(self._json_object(), indent=2) + "\n"

    def write(self, path: Path) -> Path:
        """Write the record at ``path``, whole or not at all (raises OSError, e.g. on a full disk)."""
        return write_text(path, self.to_json())

    @classmethod
    def from_file(cls, path: Path, *, tracking_uri: str | None = None,
                  experiment_name: str | None = None) -> "RunRecord":
        """The record in ``path``, checked; ``tracking_uri``/``experiment_name``: log it there instead.

        Raises DamagedRecord when the file cannot be read as a record, RefusedRecord when it names a
        path outside its run folder or holds a value of the wrong type.
        """
        path = Path(path)
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise TypeError(f"it holds a JSON {type(loaded).__name__}, not an object")
            missing = [key for key in RECORD_KEYS if key not in loaded]
            if missing:
                raise KeyError(f"no {', '.join(missing)}")
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise DamagedRecord(f"'{path}' cannot be read as a run record ({first_line(error, typed=True)})") from None
        loaded["tracking_uri"] = tracking_uri or loaded["tracking_uri"]
        loaded["experiment_name"] = experiment_name or loaded["experiment_name"]
        problem = _value_problem(loaded) or _paths_problem(loaded, path.parent)
        if problem is not None:
            raise RefusedRecord(f"'{path}': {problem}")
        return cls.from_json_object(loaded)

    @classmethod
    def from_json_object(cls, loaded: Mapping) -> "RunRecord":
        """The record a JSON object of the right types describes (unchecked: use :meth:`from_file`
        for a file); keys that older records lack take their defaults, unknown keys are ignored."""
        model = loaded.get("model")
        return cls(
            tracking_uri=loaded["tracking_uri"],
            experiment_name=loaded["experiment_name"],
            params=dict(loaded["params"]),
            metrics=dict(loaded["metrics"]),
            artifacts=tuple(loaded["artifacts"]),
            tags=dict(loaded["tags"]),
            run_name=loaded.get("run_name"),
            artifact_location=loaded.get("artifact_location"),
            metric_history={name: [(int(step), float(value)) for step, value in points]
                            for name, points in (loaded.get("metric_history") or {}).items()},
            status=loaded.get("status") or "FINISHED",
            model=None if model is None else (
                model if isinstance(model, ModelToLog)
                else ModelToLog(model["folder"], model.get("registered_model_name"))),
            live_run_id=loaded.get("live_run_id"),
            logged_run_id=loaded.get("logged_run_id"),
        )

    def _json_object(self) -> dict:
        return {
            "model": dataclasses.asdict(self.model) if self.model is not None else None,
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.experiment_name,
            "run_name": self.run_name,
            "params": self.params,
            "metrics": self.metrics,
            "artifacts": list(self.artifacts),
            "tags": self.tags,
            "artifact_location": self.artifact_location,
            "metric_history": {name: [list(point) for point in points] for name, points in self.metric_history.items()},
            "status": self.status,
            "live_run_id": self.live_run_id,
            "logged_run_id": self.logged_run_id,
        }



def _value_problem(loaded: dict) -> str | None:
    """The first key of the record whose value has the wrong type (one line naming it), or None."""
    def is_number(value) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool)

    def is_str_or_none(value) -> bool:
        return value is None or isinstance(value, str)

    for key in ("tracking_uri", "experiment_name"):
        if not isinstance(loaded[key], str) or not loaded[key].strip():
            return f"{key} is {loaded[key]!r}, not a non-empty text"
    for key in ("run_name", "artifact_location", "live_run_id", "logged_run_id"):
        if not is_str_or_none(loaded.get(key)):
            return f"{key} is {loaded[key]!r}, not a text or null"
    for key in ("params", "tags", "metrics", "metric_history"):
        if not isinstance(loaded.get(key, {}), dict):
            return f"{key} is a {type(loaded[key]).__name__}, not a JSON object"
    for name, value in loaded["metrics"].items():
        if not is_number(value):
            return f"metrics[{name!r}] is {value!r}, not a number"
    for name, points in loaded.get("metric_history", {}).items():
        if not isinstance(points, list) or not all(
                isinstance(p, list) and len(p) == 2 and all(map(is_number, p)) for p in points):
            return f"metric_history[{name!r}] is not a list of [step, value] number pairs"
    if not isinstance(loaded["artifacts"], list):
        return f"artifacts is a {type(loaded['artifacts']).__name__}, not a list of paths"
    if loaded.get("status", "FINISHED") not in RECORD_STATUSES:
        return f"status is {loaded['status']!r}, not one of {', '.join(RECORD_STATUSES)}"
    model = loaded.get("model")
    if model is not None and (not isinstance(model, dict) or "folder" not in model
                              or not is_str_or_none(model.get("registered_model_name"))):
        return "model is not null nor an object with a 'folder' path (and a registered_model_name text or null)"
    return None


def _paths_problem(loaded: dict, run_dir: Path) -> str | None:
    """The first path the record names that is not a file or folder inside ``run_dir``.

    Every path must stay inside the run folder once symlinks are resolved, or an upload would copy
    (hard-link) files such as ``/etc/hostname`` into the MLflow store.
    """
    root = run_dir.resolve()
    named = [(f"artifacts[{index}]", path) for index, path in enumerate(loaded["artifacts"])]
    if loaded.get("model") is not None:
        named.append(("model.folder", loaded["model"]["folder"]))
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
