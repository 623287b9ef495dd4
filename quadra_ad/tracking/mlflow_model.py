"""The deployment folder as an MLflow model: a pyfunc that wraps the :class:`~quadra_ad.deploy.Predictor`.

Logged with every finished training run that exported a graph (``model`` in the run), optionally
registered (``logger.mlflow.registered_model_name``). Then ``mlflow.pyfunc.load_model``,
``mlflow models serve -m models:/<name>/<version> --env-manager local`` and quadra_ad's own
``task.model_path=models:/…`` / ``Predictor.load("models:/…")`` all use it.

Input: a table with one image per row, in one of two columns:

- ``image``: a base64-encoded image file (PNG, JPEG, TIFF …), read as a file is;
- ``array``: the pixels as nested lists, H×W (grey) or H×W×C (RGB, RGBA), whose values the
  ``array_dtype`` param gives meaning to: ``uint8`` (0-255, the default), ``uint16`` (0-65535)
  or ``float`` (0-1).

``POST /invocations`` carries them as ``{"dataframe_records": [{"image": "iVBOR…"}, {"array": [[…]]}],
"params": {"array_dtype": "uint8"}}`` (or ``dataframe_split`` / ``inputs``). A row with neither,
both, or values outside the type's range is refused with HTTP 400 and one line naming the row.
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
#: ``array_dtype`` → (NumPy type, largest value) of the pixel values in the ``array`` column.
ARRAY_DTYPES = {"uint8": (np.uint8, 255), "uint16": (np.uint16, 65535), "float": (np.float32, 1.0)}


class PredictorModel(mlflow.pyfunc.PythonModel):
    """``predict(DataFrame, one image per row in 'image' (base64 file) or 'array' (pixels)) -> DataFrame
    of scores and labels``."""

    def load_context(self, context) -> None:
        from quadra_ad.deploy import Predictor

        self.predictor = Predictor.load(context.artifacts[DEPLOYMENT_ARTIFACT])

    def predict(self, context, model_input, params=None):
        import pandas as pd
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from quadra_ad.errors import DatasetError

        array_dtype = (params or {}).get("array_dtype", "uint8")
        try:
            if array_dtype not in ARRAY_DTYPES:
                raise DatasetError(f"params.array_dtype={array_dtype!r}: choose one of {sorted(ARRAY_DTYPES)}")
            images = [_row_image(row, index, array_dtype) for index, row in enumerate(model_input.to_dict("records"))]
            predictions = self.predictor.predict(images) if images else []
        except DatasetError as error:  # the caller's input: HTTP 400 with the line, not a server error
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame([[p.score, p.normalized_score, p.label, p.threshold] for p in predictions],
                            columns=OUTPUT_COLUMNS)


def _given(value) -> bool:
    """False for a cell the request left out (None, or NaN where pandas filled the column)."""
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def _row_image(row: dict, index: int, array_dtype: str) -> np.ndarray:
    """One row's image as float RGB in [0, 1]."""
    from quadra_ad.deploy.images import decode_image, to_unit_rgb
    from quadra_ad.errors import DatasetError

    encoded, pixels = row.get("image"), row.get("array")
    if _given(encoded) == _given(pixels):
        raise DatasetError(f"row {index}: give exactly one of 'image' (a base64-encoded image file) and 'array' (pixels)")
    if _given(encoded):
        source = f"row {index} ('image' must be a base64-encoded image file)"
        try:
            data = base64.b64decode(encoded, validate=True)
        except (ValueError, TypeError):
            raise DatasetError(f"cannot read {source}: it is not base64") from None
        return to_unit_rgb(decode_image(data, source), bgr=True, source=source)
    dtype, largest = ARRAY_DTYPES[array_dtype]
    try:
        values = np.asarray(pixels, dtype=np.float64)
    except (ValueError, TypeError):
        raise DatasetError(f"row {index}: 'array' must be nested lists of numbers, H×W or H×W×C") from None
    if values.size and (not np.isfinite(values).all() or values.min() < 0 or values.max() > largest):
        raise DatasetError(f"row {index}: 'array' values must lie in 0-{largest:g} for array_dtype={array_dtype} "
                           f"(found {values.min():g} to {values.max():g}); set params.array_dtype to the pixels' type")
    return to_unit_rgb(values.astype(dtype), bgr=False, source=f"row {index} ('array')")


def encode_image_file(path: str | Path) -> str:
    """An image file as the base64 text the model takes."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def log_deployment_model(run_id: str, folder: Path, registered_model_name: str | None = None):
    """Log ``folder`` (a deployment_model folder) as the run's MLflow model, and register it when named.

    The tracking URI must be set (``mlflow.set_tracking_uri``) by the caller.
    """
    import cv2
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, ParamSchema, ParamSpec, Schema

    from quadra_ad.deploy.model_card import MODEL_JSON, ModelCard

    card = ModelCard.read(Path(folder) / MODEL_JSON)
    height, width = card.input_size
    ok, png = cv2.imencode(".png", np.full((height, width, 3), 128, dtype=np.uint8))
    example = {"image": [base64.b64encode(png.tobytes()).decode("ascii")]}
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image", required=False), ColSpec(AnyType(), "array", required=False)]),
        outputs=Schema([ColSpec("double", "raw_score"), ColSpec("double", "normalized_score"),
                        ColSpec("long", "predicted_label"), ColSpec("double", "threshold")]),
        params=ParamSchema([ParamSpec("array_dtype", "string", "uint8")]),
    )
    with mlflow.start_run(run_id=run_id):
        return mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            python_model=PredictorModel(),
            artifacts={DEPLOYMENT_ARTIFACT: str(folder)},
            signature=signature,
            input_example=example,
            pip_requirements=["quadra_ad"],
            registered_model_name=registered_model_name,
        )
