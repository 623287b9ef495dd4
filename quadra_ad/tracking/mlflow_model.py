"""The deployment folder as an MLflow model: a pyfunc that wraps the :class:`~quadra_ad.deploy.Predictor`.

Logged with every finished training run that exported a graph (``model`` in the run), optionally
registered (``logger.mlflow.registered_model_name``). Then ``mlflow.pyfunc.load_model``,
``mlflow models serve -m models:/<name>/<version> --env-manager local`` and quadra_ad's own
``task.model_path=models:/…`` / ``Predictor.load("models:/…")`` all use it.

The model holds no pickle: it is logged as MLflow "models from code", whose code is
:mod:`quadra_ad.tracking.pyfunc_model` (copied into the model; it says what a request may hold).
"""

import base64
from pathlib import Path

import mlflow
import numpy as np

from quadra_ad.deploy.model_uri import DEPLOYMENT_ARTIFACT

#: Where the model sits in its run.
MODEL_ARTIFACT = "model"
#: The "model from code" file: the model's class, run by MLflow when it loads the model.
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


def encode_image_file(path: str | Path) -> str:
    """An image file as the base64 text the model takes."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def log_deployment_model(run_id: str, folder: Path, registered_model_name: str | None = None):
    """Log ``folder`` (a deployment_model folder) as the run's MLflow model, and register it when named.

    The tracking URI must be set (``mlflow.set_tracking_uri``) by the caller.
    """
    import cv2
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from quadra_ad.deploy.model_card import MODEL_JSON, ModelCard

    card = ModelCard.read(Path(folder) / MODEL_JSON)
    height, width = card.input_size
    ok, png = cv2.imencode(".png", np.full((height, width, 3), 128, dtype=np.uint8))
    example = {"image": [base64.b64encode(png.tobytes()).decode("ascii")]}
    # No input schema: MLflow's enforcement would drop unknown columns and rows with neither
    # column before the model sees them (an empty answer, HTTP 200); pyfunc_model checks the table.
    signature = ModelSignature(
        outputs=Schema([ColSpec("double", "raw_score"), ColSpec("double", "normalized_score"),
                        ColSpec("long", "predicted_label"), ColSpec("double", "threshold")]),
        params=ParamSchema([ParamSpec("array_dtype", "string", "uint8")]),
    )
    with mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=str(MODEL_CODE),
            artifacts={DEPLOYMENT_ARTIFACT: str(folder)},
            signature=signature,
            input_example=example,
            pip_requirements=["quadra_ad"],
            registered_model_name=registered_model_name,
        )
