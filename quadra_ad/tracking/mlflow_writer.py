"""The one MLflow writer: a finished run folder → one MLflow run.

It is called after everything is on disk, so a tracking failure can never lose a trained model;
it only costs the MLflow copy, and the caller reports it in one line.

What it adds around MLflow (3.17), each where MLflow does not do it, with the measured reason in
its docstring: a reachability probe and a writability check that fail in a second where MLflow
retries for minutes, an embedded store built under another name and copied from a migrated
template, a lock for creating a store or an experiment, hard links instead of copies of
artifacts, and a swap of MLflow's process-wide tracking URI to log a model.
"""

import logging
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

log = logging.getLogger(__name__)

@dataclass
class TrackedRun:
    """Where a run was logged."""

    tracking_uri: str
    experiment_name: str
    experiment_id: str
    run_id: str
    status: str = "FINISHED"
    #: Artifacts the run record named that were no longer in the run folder (not uploaded).
    missing_artifacts: tuple[str, ...] = ()

    def ui_hint(self) -> str:
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"open {self.tracking_uri}/#/experiments/{self.experiment_id}/runs/{self.run_id}"
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"


def sqlite_database(tracking_uri: str) -> Path | None:
    """The database file of an embedded ``sqlite:///<path>`` store; None for any other URI."""
    prefix = "sqlite:///"
    return Path(tracking_uri[len(prefix):]) if tracking_uri.startswith(prefix) else None


SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_store_problem(database: Path) -> str | None:
    """Why ``database`` cannot be an existing MLflow store (None when it may be one).

    Checked before MLflow opens it: MLflow would turn an empty file into a fresh store and
    answer a damaged one with a traceback.
    """
    if not database.is_file():
        return "does not exist"
    if database.stat().st_size == 0:
        return "is empty (0 bytes), not an MLflow store"
    with database.open("rb") as handle:
        if handle.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
            return "is not a SQLite database (damaged, or another kind of file)"
    import sqlite3

    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as error:
        return f"cannot be read as SQLite ({error})"
    if not {"experiments", "runs"} <= tables:
        return "is a SQLite database but not an MLflow store (it has no experiments or runs table)"
    return None


def _local_artifact_location(tracking_uri: str, experiment_name: str) -> str | None:
    """For an embedded SQLite store, keep artifacts in ``mlartifacts/`` beside the database.

    MLflow's default is ``./mlruns`` of whatever directory the run started in, so runs started
    from two directories would scatter one store's artifacts; beside it, they move together.
    """
    db_path = sqlite_database(tracking_uri)
    if db_path is None:
        return None
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in experiment_name)
    return (db_path.parent / "mlartifacts" / safe_name).resolve().as_uri()


def experiment_id_for(client: MlflowClient, tracking_uri: str, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created (one process at a time) when the store lacks it."""
    with one_creator_at_a_time(tracking_uri):
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = artifact_location or _local_artifact_location(tracking_uri, name)
        return client.create_experiment(name, artifact_location=location)


def check_server_reachable(tracking_uri: str, timeout_s: float = 5.0) -> None:
    """Fail in seconds, not minutes, when an HTTP tracking server is down.

    MLflow's client retries a refused connection with exponential back-off (its defaults: 7 retries,
    measured 247 s with MLflow 3.17); one probe first turns "server down" into an immediate
    ConnectionError, and a server that goes down later still gets MLflow's retries.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        return  # something answered: let the MLflow client report what is wrong
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConnectionError(f"no MLflow server answers at {tracking_uri} ({reason})") from error


def check_sqlite_store_writable(tracking_uri: str) -> None:
    """Fail in a second when an embedded store cannot be written.

    MLflow retries opening it 10 times with back-off (measured 102 s with MLflow 3.17 for
    ``sqlite:////proc/mlflow.db``) before it says "unable to open database file".
    """
    database = sqlite_database(tracking_uri)
    if database is None:
        return
    folder = database.parent
    if not folder.is_dir():
        raise ConnectionError(f"the folder of the MLflow store '{database}' does not exist")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
        if database.exists():
            with database.open("r+b"):
                pass
    except OSError:
        raise ConnectionError(f"the MLflow store '{database}' cannot be written (its folder takes no new files, or "
                              f"the file is read-only)") from None


@contextmanager
def one_creator_at_a_time(tracking_uri: str) -> Iterator[None]:
    """Across processes, one at a time creates an embedded store or an experiment in it (a lock
    file beside the store). Other URIs need no lock.

    MLflow 3.17 migrates a fresh store without a lock (its own file lock guards its job and
    workspace stores only): of 6 processes opening one fresh store at once, 5 failed (``duplicate
    column name: step``). Its experiments are looked up, then created: of 6 processes creating one
    new experiment at once, up to 2 failed (``already exists``). Other writes need no lock:
    MLflow sets SQLite's busy timeout (20 s), and 12 processes each logging 150 params and 3000
    metric points into one store at once all succeeded without it.
    """
    database = sqlite_database(tracking_uri)
    if database is None:
        yield
        return
    import fcntl

    with open(database.with_name(database.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _log_model(tracking_uri: str, run_id: str, folder: Path, registered_model_name: str | None) -> None:
    """Log ``folder`` as the MLflow model of run ``run_id`` in the store at ``tracking_uri``.

    ``mlflow.pyfunc.log_model`` logs to the process-wide tracking URI and takes no client or URI;
    MLflow's own temporary swap (``_use_tracking_uri``) is private, so the URI is swapped here and
    put back. MLflow copies the model's files: :func:`share_copies` makes them links again.
    """
    import mlflow

    from quadra_ad.tracking.mlflow_model import log_deployment_model

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    # MLflow's pyfunc notices, its artifact progress bars and the load of the model it checks the
    # input example with are noise in a run's output.
    pyfunc_log, loader_log = logging.getLogger("mlflow.pyfunc"), logging.getLogger("quadra_ad.deploy.loader")
    level, loader_level = pyfunc_log.level, loader_log.level
    progress = os.environ.get("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")
    pyfunc_log.setLevel(logging.ERROR)
    loader_log.setLevel(logging.WARNING)
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    try:
        info = log_deployment_model(run_id, folder, registered_model_name)
        logged = MlflowClient(tracking_uri=tracking_uri).get_logged_model(info.model_id)
        model_root = local_artifact_path(logged.artifact_location)
        if model_root is not None:
            share_copies(folder, model_root / "artifacts" / folder.name)
    finally:
        mlflow.set_tracking_uri(previous)
        pyfunc_log.setLevel(level)
        loader_log.setLevel(loader_level)
        if progress is None:
            os.environ.pop("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", None)
        else:
            os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = progress


def log_run(
    tracking_uri: str,
    experiment_name: str,
    run_name: str | None,
    params: dict[str, str],
    metrics: dict[str, float],
    artifacts: list[Path],
    tags: dict[str, str] | None = None,
    artifact_location: str | None = None,
    metric_history: dict[str, list[tuple[int, float]]] | None = None,
    status: str = "FINISHED",
    model: tuple[Path, str | None] | None = None,
    live_run_id: str | None = None,
) -> TrackedRun:
    """Create one run holding params, metrics (plus per-step histories), tags and artifacts.

    The run ends with ``status`` (FINISHED, FAILED or KILLED). ``model``: (deployment folder,
    registered model name or None) to log as the run's MLflow model before it ends.
    ``live_run_id``: the run opened when training started (see ``live_run``); when this store
    still has it, that run is completed (params and history points it already has are not sent
    twice) instead of a new one created.

    A failure after the run exists marks it FAILED before re-raising.
    """
    check_server_reachable(tracking_uri)
    check_sqlite_store_writable(tracking_uri)
    create_embedded_store(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    run = _live_run(client, live_run_id)
    if run is None:
        experiment_id = experiment_id_for(client, tracking_uri, experiment_name, artifact_location)
        run = client.create_run(experiment_id, run_name=run_name, tags=tags or {})
    else:
        experiment_id = run.info.experiment_id
    run_id = run.info.run_id
    try:
        logged_params = run.data.params
        param_items = [Param(k, v) for k, v in params.items() if k not in logged_params]
        now_ms = int(time.time() * 1000)
        metric_items = [Metric(k, float(v), now_ms, 0) for k, v in metrics.items()]
        for name, points in (metric_history or {}).items():
            sent = _logged_steps(client, run, name)
            metric_items += [Metric(name, float(value), now_ms, int(step)) for step, value in points
                             if int(step) not in sent]
        # Tags gained since a live run opened (model path, error); MLflow's log_batch sends them,
        # the params and the metrics in as many requests as its per-request limits ask.
        tag_items = [RunTag(k, str(v)) for k, v in (tags or {}).items()] if run_id == live_run_id else []
        client.log_batch(run_id, metrics=metric_items, params=param_items, tags=tag_items)
        local_root = local_artifact_path(run.info.artifact_uri)
        for artifact in artifacts:
            if local_root is not None and artifact.exists():
                link_or_copy(artifact, local_root / artifact.name)
            elif artifact.is_dir():
                client.log_artifacts(run_id, str(artifact), artifact_path=artifact.name)
            elif artifact.is_file():
                client.log_artifact(run_id, str(artifact))
        if model is not None:
            _log_model(tracking_uri, run_id, *model)
        client.set_terminated(run_id, status)
    except BaseException:
        try:
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        except Exception:  # noqa: BLE001 - the original error is the one to report
            log.debug("could not mark run %s FAILED", run_id)
        raise
    return TrackedRun(tracking_uri, experiment_name, experiment_id, run_id, status)


def _live_run(client: MlflowClient, run_id: str | None):
    """The live run ``run_id`` when this store has it and it is not deleted; else None."""
    if not run_id:
        return None
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - another store (uploaded elsewhere), or deleted for good
        return None
    return run if run.info.lifecycle_stage == "active" else None


def _logged_steps(client: MlflowClient, run, name: str) -> set[int]:
    """Steps of metric ``name`` the run already holds (a live run logged them while training)."""
    if name not in run.data.metrics:
        return set()
    return {metric.step for metric in client.get_metric_history(run.info.run_id, name)}


def adopt_runs(tracking_uri: str, parent_run_id: str, child_run_ids: list[str]) -> None:
    """Show ``child_run_ids`` under ``parent_run_id`` in the MLflow UI (its parent-run tag)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    for run_id in child_run_ids:
        client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)


def local_artifact_path(uri: str | None) -> Path | None:
    """The folder of a ``file:`` (or plain path) artifact location; None for a server or a bucket."""
    if not uri:
        return None
    from urllib.parse import unquote, urlparse

    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and uri[1:3] in (":\\", ":/")):  # a path (or C:\…)
        return Path(uri)
    return None


def link_or_copy(source: Path, destination: Path) -> None:
    """``source`` (a file or a folder) at ``destination`` without a second copy of its bytes.

    With the embedded store the artifacts sit on the same disk as the run folder: hard links
    make them the same files (either can be deleted, the other stays whole; our writers replace
    files, never rewrite them in place). Across disks, or where links are refused, a copy.
    MLflow's local artifact store only copies (``shutil.copy2``): each run would take its disk twice
    (a deployment folder of 53 MB; in the stores the tracking tests leave, 402 of 420 MB are links).
    """
    import shutil

    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
    for file in files:
        target = destination if file == source else destination / file.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.unlink(missing_ok=True)
        try:
            os.link(file, target)
        except OSError:
            shutil.copy2(file, target)


def share_copies(original: Path, copy: Path) -> None:
    """Replace each file under ``copy`` that is byte-identical to the one at the same place under
    ``original`` by a hard link to it: MLflow copies a logged model's files (its pyfunc artifacts),
    with no option to link them."""
    import filecmp

    if not copy.is_dir():
        return
    for file in original.rglob("*"):
        twin = copy / file.relative_to(original)
        if not file.is_file() or not twin.is_file() or os.path.samefile(file, twin):
            continue
        if not filecmp.cmp(file, twin, shallow=False):
            continue
        temporary = twin.with_name(f".{twin.name}.link")
        try:
            os.link(file, temporary)
            os.replace(temporary, twin)
        except OSError:
            temporary.unlink(missing_ok=True)


def create_embedded_store(tracking_uri: str) -> None:
    """Create the SQLite store at ``tracking_uri`` if it does not exist yet (other URIs: nothing).

    MLflow 3.17 migrates a new store in place, and a process killed among its 67 migrations
    leaves one no later run or upload can open (6 of 10 killed at moments among them: ``table
    datasets already exists``). So the store is built under another name and takes its own only
    when complete.
    """
    database = sqlite_database(tracking_uri)
    if database is None or database.exists():
        return
    with one_creator_at_a_time(tracking_uri):
        if database.exists():
            return
        partial = database.with_name(f".{database.name}.{os.getpid()}.partial")
        partial.unlink(missing_ok=True)
        if not _copy_store_template(partial):
            MlflowClient(tracking_uri=f"sqlite:///{partial}").search_experiments(max_results=1)
            _save_store_template(partial)
        os.replace(partial, database)


def _store_template() -> Path | None:
    """Where an empty store of this MLflow version is kept (None: no user cache folder).

    MLflow has no template of its own: each new store runs its 67 schema migrations, 1.8–2.1 s
    (MLflow 3.17), where copying the migrated empty store takes 3 ms; either then opens in
    ~0.65 s. The empty store built once is copied for every new folder.
    """
    import mlflow

    root = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(root) / "quadra_ad" / f"mlflow-{mlflow.__version__}-empty.db"


def _copy_store_template(destination: Path) -> bool:
    """Copy the empty store into ``destination``, its Default experiment's artifact folder set as
    MLflow sets it for a store it creates (``./mlruns/0`` of the working directory). False when
    there is no usable template."""
    import shutil
    import sqlite3

    template = _store_template()
    if template is None or not template.is_file() or sqlite_store_problem(template) is not None:
        return False
    try:
        shutil.copyfile(template, destination)
        with sqlite3.connect(destination) as connection:
            connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                               (str(Path.cwd() / "mlruns" / "0"),))
        connection.close()
    except (OSError, sqlite3.Error):
        destination.unlink(missing_ok=True)
        return False
    return True


def _save_store_template(store: Path) -> None:
    """Keep a copy of a freshly built empty store as the template (best effort, atomic)."""
    import shutil

    template = _store_template()
    if template is None or template.exists():
        return
    temporary = template.with_name(f".{template.name}.{os.getpid()}")
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(store, temporary)
        os.replace(temporary, template)
    except OSError:
        temporary.unlink(missing_ok=True)
