"""``models:/<name>/<version>``, ``models:/<name>@<alias>`` and ``runs:/<run id>/model``: an MLflow
model logged by a training run, fetched to a local deployment folder.

MLflow is imported only when such a URI is given (it comes with the training extra).
"""

from pathlib import Path

from quadra_ad.deploy.model_card import MODEL_JSON
from quadra_ad.errors import ConfigError

MODEL_URI_SCHEMES = ("models:/", "runs:/")
#: Where the deployment folder sits inside a quadra_ad MLflow model.
DEPLOYMENT_ARTIFACT = "deployment_model"


def is_model_uri(value) -> bool:
    return isinstance(value, str) and value.startswith(MODEL_URI_SCHEMES)


def fetch_deployment_folder(model_uri: str, tracking_uri: str | None = None) -> Path:
    """Download the MLflow model ``model_uri`` and return its deployment folder; one line when it can't."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError(f"'{model_uri}' is an MLflow model URI: it needs MLflow (pip install 'quadra_ad[train]'), or "
                          f"give the deployment_model folder") from None
    import tempfile

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    destination = tempfile.mkdtemp(prefix="quadra_ad_model_")
    try:
        if model_uri.startswith("models:/"):
            name, at, alias = model_uri.removeprefix("models:/").partition("@")
            if at:
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, _, number = name.partition("/")
                version = client.get_model_version(name, number)
            model_id = getattr(version, "model_id", None)
            if model_id:  # the deployment folder inside the registered model itself
                location = client.get_logged_model(model_id).artifact_location.rstrip("/")
                local = Path(mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{location}/artifacts/{DEPLOYMENT_ARTIFACT}", dst_path=destination, tracking_uri=tracking_uri))
            else:
                local = Path(client.download_artifacts(version.run_id, DEPLOYMENT_ARTIFACT, destination))
        else:  # runs:/<run id>/...: the deployment folder the run logged
            run_id = model_uri.removeprefix("runs:/").split("/", 1)[0]
            local = Path(client.download_artifacts(run_id, DEPLOYMENT_ARTIFACT, destination))
    except Exception as error:  # noqa: BLE001 - MLflow raises many kinds for a wrong name, version or store
        text = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise ConfigError(f"task.model_path '{model_uri}' cannot be fetched from the MLflow store at "
                          f"{tracking_uri or mlflow.get_tracking_uri()} ({text})") from None
    for candidate in (local / "artifacts" / DEPLOYMENT_ARTIFACT, local / DEPLOYMENT_ARTIFACT, local):
        if (candidate / MODEL_JSON).is_file():
            return candidate
    raise ConfigError(f"task.model_path '{model_uri}' is not a quadra_ad model (no {MODEL_JSON} in it)")
