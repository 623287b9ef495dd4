"""The deployment folder as an MLflow model: a pyfunc that wraps the :class:`~quadra_ad.deploy.Predictor`.

Logged with every finished training run that exported a graph (``model`` in the run), optionally
registered (``logger.mlflow.registered_model_name``). Then ``mlflow.pyfunc.load_model``,
``mlflow models serve -m models:/<name>/<version> --env-manager local`` and quadra_ad's own
``task.model_path=models:/…`` / ``Predictor.load("models:/…")`` all use it.

Input: a table with an ``image`` column of base64-encoded image files (PNG, JPEG, … — what
``POST /invocations`` carries as ``{"dataframe_split": {"columns": ["image"], "data": [[…]]}}``).
Output: one row per image — raw_score, normalized_score, predicted_label, threshold.
"""

import base64
from pathlib import Path

import mlflow
import numpy as np

from quadra_ad.deploy.model_uri import DEPLOYMENT_ARTIFACT

#: Where the model sits in its run.
MODEL_ARTIFACT = "model"
OUTPUT_COLUMNS = ["raw_score", "normalized_score", "predicted_label", "threshold"]


class PredictorModel(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame with 'image': base64 image files) -> DataFrame of scores and labels``."""

    def load_context(self, context) -> None:
        from quadra_ad.deploy import Predictor

        self.predictor = Predictor.load(context.artifacts[DEPLOYMENT_ARTIFACT])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        from quadra_ad.deploy.images import decode_image, to_unit_rgb

        images = []
        for index, encoded in enumerate(model_input["image"]):
            source = f"row {index} ('image' must be a base64-encoded image file)"
            images.append(to_unit_rgb(decode_image(base64.b64decode(encoded), source), bgr=True, source=source))
        predictions = self.predictor.predict(images) if images else []
        return pd.DataFrame([[p.score, p.normalized_score, p.label, p.threshold] for p in predictions],
                            columns=OUTPUT_COLUMNS)


def encode_image_file(path: str | Path) -> str:
    """An image file as the base64 text the model takes."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def log_deployment_model(run_id: str, folder: Path, registered_model_name: str | None = None) -> None:
    """Log ``folder`` (a deployment_model folder) as the run's MLflow model, and register it when named.

    The tracking URI must be set (``mlflow.set_tracking_uri``) by the caller.
    """
    import cv2
    import pandas as pd
    from mlflow.models import infer_signature

    from quadra_ad.deploy.model_card import MODEL_JSON, ModelCard

    card = ModelCard.read(Path(folder) / MODEL_JSON)
    height, width = card.input_size
    ok, png = cv2.imencode(".png", np.full((height, width, 3), 128, dtype=np.uint8))
    example = pd.DataFrame({"image": [base64.b64encode(png.tobytes()).decode("ascii")]})
    output = pd.DataFrame({"raw_score": [0.0], "normalized_score": [0.0], "predicted_label": [0], "threshold": [0.0]})
    with mlflow.start_run(run_id=run_id):
        mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=PredictorModel(),
            artifacts={DEPLOYMENT_ARTIFACT: str(folder)},
            signature=infer_signature(example, output),
            input_example=example,
            pip_requirements=["quadra_ad"],
            registered_model_name=registered_model_name,
        )
