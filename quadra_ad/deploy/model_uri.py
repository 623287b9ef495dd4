"""``models:/<name>/<version>``, ``models:/<name>@<alias>`` and ``runs:/<run id>/model``: an MLflow
model logged by a training run, fetched to a local deployment folder.

A fetched model is kept in a cache folder the user chooses (``QUADRA_AD_MODEL_CACHE``, by default
``~/.cache/quadra_ad/models``), one folder per store and logged model: a registered version's files
never change, so a second load of it downloads nothing. The cache holds at most
``QUADRA_AD_MODEL_CACHE_MB`` megabytes (default 5120); beyond that the least recently used models
are removed. A model is downloaded into a temporary sibling folder and renamed into place whole, so
two processes loading it at once never see half of it, and a failed lookup leaves nothing behind.
The cached folder is checked against its model card at load like any other deployment folder.

MLflow is imported only when such a URI is given (it comes with the training extra).
"""

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path

from quadra_ad.deploy.model_card import MODEL_JSON
from quadra_ad.deploy.runners import first_line
from quadra_ad.errors import ConfigError

MODEL_URI_SCHEMES = ("models:/", "runs:/")
#: Where the deployment folder sits inside a quadra_ad MLflow model.
DEPLOYMENT_ARTIFACT = "deployment_model"
#: The cache folder of fetched models, and its size limit in megabytes.
CACHE_ENV, CACHE_LIMIT_ENV = "QUADRA_AD_MODEL_CACHE", "QUADRA_AD_MODEL_CACHE_MB"
DEFAULT_CACHE_LIMIT_MB = 5120
#: Downloads in progress are ``.partial-*`` folders; one this old was left by a killed process.
STALE_PARTIAL_S = 3600


def is_model_uri(value) -> bool:
    return isinstance(value, str) and value.startswith(MODEL_URI_SCHEMES)


def model_cache_folder() -> Path:
    """Where fetched models are kept (``QUADRA_AD_MODEL_CACHE``, else the user's cache folder)."""
    chosen = os.environ.get(CACHE_ENV)
    if chosen:
        return Path(chosen).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "quadra_ad" / "models"


def model_cache_limit_bytes() -> int:
    text = os.environ.get(CACHE_LIMIT_ENV, str(DEFAULT_CACHE_LIMIT_MB))
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:  # also NaN
        raise ConfigError(f"{CACHE_LIMIT_ENV}={text!r}: give the model cache's size limit in megabytes, "
                          f"a number >= 0 (default {DEFAULT_CACHE_LIMIT_MB})")
    return int(megabytes * 2**20)


def fetch_deployment_folder(model_uri: str, tracking_uri: str | None = None) -> Path:
    """The deployment folder of the MLflow model ``model_uri``, from the cache or downloaded into it;
    one line when it can't."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError(f"'{model_uri}' is an MLflow model URI: it needs MLflow (pip install 'quadra_ad[train]'), or "
                          f"give the deployment_model folder") from None
    from mlflow.tracking import MlflowClient

    cache, limit = model_cache_folder(), model_cache_limit_bytes()
    store = tracking_uri or mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    try:
        key, download = _locate(client, model_uri, store)
    except Exception as error:  # noqa: BLE001 - MLflow raises many kinds for a wrong name, version or store
        raise ConfigError(f"task.model_path '{model_uri}' cannot be fetched from the MLflow store at {store} "
                          f"({first_line(error)})") from None
    cached = cache / key
    if not (cached / MODEL_JSON).is_file():
        _download_into(cached, download, model_uri, store)
    os.utime(cached)  # the least recently used go first
    _evict(cache, limit, keep=cached)
    return cached


def _locate(client, model_uri: str, store: str):
    """(cache key, function downloading the model's deployment folder into a given folder).

    The key names the store and the logged model (its id, or the run's), never a movable name:
    an alias, or a version number of a store that was deleted and made again, gets its own folder.
    """
    import mlflow

    if model_uri.startswith("models:/"):
        name, at, alias = model_uri.removeprefix("models:/").partition("@")
        if at:
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, _, number = name.partition("/")
            version = client.get_model_version(name, number)
        label = f"{name}-v{version.version}"
        model_id = getattr(version, "model_id", None)
        if model_id:  # the deployment folder inside the registered model itself
            location = client.get_logged_model(model_id).artifact_location.rstrip("/")
            return _key(store, label, model_id), lambda folder: mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/artifacts/{DEPLOYMENT_ARTIFACT}", dst_path=str(folder), tracking_uri=store)
        run_id = version.run_id
    else:  # runs:/<run id>/...: the deployment folder the run logged
        run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
        client.get_run(run_id)  # an unknown run fails here, before any folder is made
        label = f"run-{run_id}"
    return _key(store, label, run_id), lambda folder: client.download_artifacts(
        run_id, DEPLOYMENT_ARTIFACT, str(folder))


def _key(store: str, label: str, identity: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:80]
    digest = hashlib.sha256("\n".join((store, identity)).encode()).hexdigest()
    return f"{safe}-{digest[:16]}"


def _download_into(cached: Path, download, model_uri: str, store: str) -> None:
    """Download into a temporary sibling of ``cached``, then rename it into place whole."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"the model cache folder '{cached.parent}' cannot be made ({error.strerror}): set "
                          f"{CACHE_ENV} to a folder you can write") from None
    partial = cached.parent / f".partial-{cached.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        partial.mkdir()
        try:
            local = Path(download(partial))
        except Exception as error:  # noqa: BLE001 - as in _locate
            raise ConfigError(f"task.model_path '{model_uri}' cannot be fetched from the MLflow store at {store} "
                              f"({first_line(error)})") from None
        found = next((c for c in (local / "artifacts" / DEPLOYMENT_ARTIFACT, local / DEPLOYMENT_ARTIFACT, local)
                      if (c / MODEL_JSON).is_file()), None)
        if found is None:
            raise ConfigError(f"task.model_path '{model_uri}' is not a quadra_ad model (no {MODEL_JSON} in it)")
        try:
            os.rename(found, cached)
        except OSError:
            if not (cached / MODEL_JSON).is_file():  # not another process that got there first
                raise
    except OSError as error:
        raise ConfigError(f"task.model_path '{model_uri}' cannot be kept in the model cache '{cached.parent}' "
                          f"({error.strerror or error}): set {CACHE_ENV} to a folder with room") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _evict(cache: Path, limit: int, keep: Path) -> None:
    """Remove the least recently used models until the cache holds at most ``limit`` bytes (never
    ``keep``, the model being loaded), and downloads a killed process left."""
    entries = []
    for entry in cache.iterdir():
        try:
            used = entry.stat().st_mtime
        except OSError:
            continue
        if entry.name.startswith(".partial-"):
            if time.time() - used > STALE_PARTIAL_S:
                shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_dir() and entry != keep:
            entries.append((used, entry))
    total = _size(keep) + sum(_size(entry) for _, entry in entries)
    for _, entry in sorted(entries):
        if total <= limit:
            break
        total -= _size(entry)
        # Renamed away first: a process opening it now finds it whole or not at all.
        doomed = cache / f".partial-evicted-{entry.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(entry, doomed)
        except OSError:
            continue
        shutil.rmtree(doomed, ignore_errors=True)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
