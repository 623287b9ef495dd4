"""The served model: MLflow's "model from code" file of every quadra_ad MLflow model.

:func:`~quadra_ad.tracking.mlflow_model.log_deployment_model` logs this file (not a pickle): MLflow
copies it into the model and runs it on load (``mlflow.pyfunc.load_model``, ``mlflow models
serve``); it defines :class:`PredictorModel` and hands it to ``mlflow.models.set_model``.

Input: a table with one image per row, in one of two columns:

- ``image``: a base64-encoded image file (PNG, JPEG, TIFF …), read as a file is;
- ``array``: the pixels as nested lists, H×W (grey) or H×W×C (C = 1, 3 or 4, channels last), whose
  values the ``array_dtype`` param gives meaning to: ``uint8`` (whole numbers 0-255, the default),
  ``uint16`` (whole numbers 0-65535) or ``float`` (0-1).

``POST /invocations`` carries them as ``{"dataframe_records": [{"image": "iVBOR…"}, {"array": [[…]]}],
"params": {"array_dtype": "uint8"}}`` (or ``dataframe_split`` / ``inputs``). The model has no MLflow
input schema on purpose: MLflow's enforcement drops unknown columns and turns rows that have
neither column into no rows at all (an empty answer with HTTP 200), so this file checks the table
itself. An empty table, an unknown column, a row with neither or both columns, pixels that are not
an image of the declared type: HTTP 400 and one line naming the row.
Output: one row per image — raw_score, normalized_score, predicted_label, threshold.
"""

import base64
import binascii

import mlflow
import numpy as np

from quadra_ad.deploy.model_uri import DEPLOYMENT_ARTIFACT

#: The columns a row may have; exactly one of them is given per row.
INPUT_COLUMNS = ("image", "array")
OUTPUT_COLUMNS = ["raw_score", "normalized_score", "predicted_label", "threshold"]
#: ``array_dtype`` → (NumPy type, largest value) of the pixel values in the ``array`` column.
ARRAY_DTYPES = {"uint8": (np.uint8, 255), "uint16": (np.uint16, 65535), "float": (np.float32, 1.0)}


class PredictorModel(mlflow.pyfunc.PythonModel):
    """``predict(table, one image per row in 'image' (base64 file) or 'array' (pixels)) -> DataFrame
    of scores and labels``."""

    def load_context(self, context) -> None:
        from quadra_ad.deploy import Predictor

        self.predictor = Predictor.load(context.artifacts[DEPLOYMENT_ARTIFACT])

    def predict(self, context, model_input, params=None):
        import pandas as pd
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from quadra_ad.errors import DatasetError

        try:
            images = request_images(model_input, params)
            predictions = self.predictor.predict(images)
        except DatasetError as error:  # the caller's input: HTTP 400 with the line, not a server error
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None
        return pd.DataFrame([[p.score, p.normalized_score, p.label, p.threshold] for p in predictions],
                            columns=OUTPUT_COLUMNS)


def request_images(model_input, params: dict | None) -> list[np.ndarray]:
    """The request's images as float RGB in [0, 1]; DatasetError (one line naming the row) for any
    row that is not exactly one image of the declared type."""
    from quadra_ad.errors import DatasetError

    array_dtype = (params or {}).get("array_dtype", "uint8")
    if not isinstance(array_dtype, str) or array_dtype not in ARRAY_DTYPES:
        raise DatasetError(f"params.array_dtype={array_dtype!r}: choose one of {', '.join(ARRAY_DTYPES)}")
    rows = _rows(model_input)
    if not rows:
        raise DatasetError("the request has no rows: send one row per image, each with an 'image' "
                           "(a base64-encoded image file) or an 'array' (pixels)")
    return [_row_image(row, index, array_dtype) for index, row in enumerate(rows)]


def _rows(model_input) -> list[dict]:
    """The request's rows as dicts, whichever way MLflow parsed it (a DataFrame from
    ``dataframe_split`` / ``dataframe_records``; a list of dicts or a dict of columns from ``inputs``)."""
    import pandas as pd

    from quadra_ad.errors import DatasetError

    if isinstance(model_input, pd.DataFrame):
        return model_input.to_dict("records")
    if isinstance(model_input, dict):
        try:
            return pd.DataFrame({name: list(np.atleast_1d(np.asarray(values, dtype=object)))
                                 if not isinstance(values, list) else values
                                 for name, values in model_input.items()}).to_dict("records")
        except ValueError:
            raise DatasetError("the request's columns have different lengths: give one value per row in each") from None
    if isinstance(model_input, list) and all(isinstance(row, dict) for row in model_input):
        # ``inputs`` rows come with each value made a NumPy array, a text or a null one of no dimension.
        return [{name: value.item() if isinstance(value, np.ndarray) and value.ndim == 0 else value
                 for name, value in row.items()} for row in model_input]
    raise DatasetError("the request is not a table: send rows with an 'image' or an 'array' column "
                       "(dataframe_records, dataframe_split, or inputs as a list of rows)")


def _given(value) -> bool:
    """False for a cell the request left out (None, or NaN where pandas filled the column)."""
    return value is not None and not (isinstance(value, float) and np.isnan(value))


def _row_image(row: dict, index: int, array_dtype: str) -> np.ndarray:
    """One row's image as float RGB in [0, 1]."""
    from quadra_ad.errors import DatasetError

    unknown = [str(name) for name, value in row.items() if name not in INPUT_COLUMNS and _given(value)]
    if unknown:
        raise DatasetError(f"row {index}: unknown column {unknown[0]!r}: a row holds 'image' (a base64-encoded "
                           f"image file) or 'array' (pixels), nothing else")
    encoded, pixels = row.get("image"), row.get("array")
    if _given(encoded) == _given(pixels):
        raise DatasetError(f"row {index}: give exactly one of 'image' (a base64-encoded image file) and "
                           f"'array' (pixels)")
    return _decoded_image(encoded, index) if _given(encoded) else _pixel_image(pixels, index, array_dtype)


def _decoded_image(encoded, index: int) -> np.ndarray:
    from quadra_ad.deploy.images import decode_image, to_unit_rgb
    from quadra_ad.errors import DatasetError

    source = f"row {index} ('image' must be a base64-encoded image file)"
    if not isinstance(encoded, str):
        kind = "list" if isinstance(encoded, (list, np.ndarray)) else type(encoded).__name__
        raise DatasetError(f"cannot read {source}: it is a {kind}, not a text")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (ValueError, binascii.Error):
        raise DatasetError(f"cannot read {source}: it is not base64") from None
    # decode_image refuses a size outside the rule from the file's header, to_unit_rgb a bad shape.
    return to_unit_rgb(decode_image(data, source), bgr=True, source=source)


def _pixel_image(pixels, index: int, array_dtype: str) -> np.ndarray:
    from quadra_ad.deploy.images import size_problem, to_unit_rgb
    from quadra_ad.errors import DatasetError

    values = _numbers(pixels, index)
    if values.ndim not in (2, 3) or values.size == 0 or (values.ndim == 3 and values.shape[2] not in (1, 3, 4)):
        raise DatasetError(f"row {index}: 'array' has shape {values.shape}; give H×W (grey) or H×W×C with C = 1, 3 "
                           f"or 4 channels last")
    problem = size_problem(values.shape[1], values.shape[0])
    if problem:
        raise DatasetError(f"row {index}: the 'array' {problem}")
    dtype, largest = ARRAY_DTYPES[array_dtype]
    if not np.isfinite(values).all():
        raise DatasetError(f"row {index}: 'array' holds NaN or infinite values; pixels are finite numbers")
    if values.min() < 0 or values.max() > largest:
        raise DatasetError(f"row {index}: 'array' values must lie in 0-{largest:g} for array_dtype={array_dtype} "
                           f"(found {values.min():g} to {values.max():g}); set params.array_dtype to the pixels' type")
    if np.issubdtype(dtype, np.integer) and not np.equal(np.round(values), values).all():
        fraction = values[np.round(values) != values].flat[0]
        raise DatasetError(f"row {index}: 'array' holds fractional values (e.g. {fraction:g}) but array_dtype="
                           f"{array_dtype} takes whole numbers 0-{largest:g}; for pixels in 0-1 set "
                           f"params.array_dtype=float")
    return to_unit_rgb(values.astype(dtype), bgr=False, source=f"row {index} ('array')")


def _numbers(pixels, index: int) -> np.ndarray:
    """The nested lists of numbers in an ``array`` cell, as float64; DatasetError for anything else
    (text, booleans, ragged lists, missing values)."""
    from quadra_ad.errors import DatasetError

    wrong = f"row {index}: 'array' must be nested lists of numbers, H×W or H×W×C"
    if isinstance(pixels, (str, bytes, dict)) or np.isscalar(pixels):
        raise DatasetError(f"{wrong}, not a {type(pixels).__name__}")
    try:
        values = np.array(pixels)
    except (ValueError, TypeError):  # ragged: rows of different lengths
        raise DatasetError(f"{wrong} (its rows have different lengths)") from None
    if values.dtype.kind == "O":  # nulls, mixed types, or integers past 64 bits
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values.flat):
            raise DatasetError(f"{wrong}; it holds nulls or values of mixed types")
        values = values.astype(np.float64)
    if values.dtype.kind not in "iuf":
        raise DatasetError(f"{wrong}; it holds {_kind_name(values.dtype)}")
    return values.astype(np.float64)


def _kind_name(dtype: np.dtype) -> str:
    return {"b": "true/false values", "U": "text", "S": "text"}.get(
        dtype.kind, f"values of type {dtype}")


mlflow.models.set_model(PredictorModel())
