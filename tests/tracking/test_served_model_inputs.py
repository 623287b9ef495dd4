"""The served model through MLflow's real scoring server (its request parsing and schema handling):
every request that is not one image per row of the declared type is HTTP 400 with one line naming
the row — never 200 with an empty answer or a label computed from garbage, never 500."""

import base64
import csv
import json
import os
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import cv2
import mlflow
import numpy as np
import pytest

from quadra_ad.run import run
from tests.conftest import IMAGE_SIZE, training_config


@pytest.fixture(scope="module")
def served(segmentation_dataset, tmp_path_factory):
    """(URL of /invocations, the training run's labelled rows) for a PaDiM model registered as 'bottle'
    and served by MLflow's scoring server app (the one ``mlflow models serve`` runs) in this process."""
    import uvicorn
    from mlflow.pyfunc import scoring_server

    workdir = tmp_path_factory.mktemp("served")
    cfg = training_config("base/anomaly/padim", segmentation_dataset, workdir,
                          "logger.mlflow.registered_model_name=bottle")
    task = run(cfg, output_dir=workdir / "run")
    assert task.tracking_error is None, task.tracking_error
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    serving_flag = os.environ.get("_MLFLOW_IS_IN_SERVING_ENVIRONMENT")
    try:
        app = scoring_server.init(mlflow.pyfunc.load_model("models:/bottle/1"))
    finally:
        mlflow.set_tracking_uri(None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the scoring server did not start"
        time.sleep(0.05)
    with (task.output_dir / "predictions.csv").open() as handle:
        rows = [row for row in csv.DictReader(handle) if row["label"] != ""][:3]
    try:
        yield f"http://127.0.0.1:{port}/invocations", rows
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if serving_flag is None:  # the app marks the process as a server; this one is not
            os.environ.pop("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", None)
        else:
            os.environ["_MLFLOW_IS_IN_SERVING_ENVIRONMENT"] = serving_flag


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _request(rows: list[dict], form: str, params: dict | None = None) -> dict:
    """The rows as ``dataframe_records``, ``dataframe_split`` or ``inputs``."""
    if form == "dataframe_split":
        columns = list(dict.fromkeys(name for row in rows for name in row))
        body = {form: {"columns": columns, "data": [[row.get(name) for name in columns] for row in rows]}}
    else:
        body = {form: rows}
    return body if params is None else {**body, "params": params}


FORMS = ["dataframe_records", "dataframe_split", "inputs"]
GREY = [[128] * IMAGE_SIZE] * IMAGE_SIZE


def _png(height: int, width: int) -> str:
    ok, data = cv2.imencode(".png", np.full((height, width), 128, dtype=np.uint8))
    return base64.b64encode(data.tobytes()).decode("ascii")


def _bomb_png(side: int = 16385) -> str:
    """A PNG whose header says side x side pixels (over the limit) in a few bytes: never decode it whole."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return base64.b64encode(data).decode("ascii")


def _pixels(shape, value=128):
    return np.full(shape, value).tolist()


BAD_REQUESTS = [
    # (rows, params, a key part of the one line, or one per form where they differ)
    pytest.param([{}], None, "row 0: give exactly one of 'image'", id="row-with-neither-column"),
    pytest.param([{"array": GREY}, {}], None, "row 1: give exactly one of 'image'", id="second-row-with-neither"),
    pytest.param([{"image": _png(32, 32), "array": GREY}], None, "row 0: give exactly one", id="row-with-both"),
    pytest.param([], None, "the request has no rows", id="no-rows"),
    pytest.param([{"pixels": GREY}], None, "row 0: unknown column 'pixels'", id="only-an-unknown-column"),
    pytest.param([{"array": GREY, "label": 1}], None, "row 0: unknown column 'label'", id="extra-unknown-column"),
    pytest.param([{"array": _pixels((32, 32), 0.5)}], None,
                 "row 0: 'array' holds fractional values (e.g. 0.5) but array_dtype=uint8 takes whole numbers 0-255; "
                 "for pixels in 0-1 set params.array_dtype=float", id="float-pixels-without-array-dtype"),
    pytest.param([{"array": _pixels((32, 32), 0.25)}], {"array_dtype": "uint16"}, "row 0: 'array' holds fractional",
                 id="float-pixels-as-uint16"),
    pytest.param([{"array": [[1, 2, 3, 4], [5, 6, 7]] * 2}], None,
                 {"inputs": "Invalid input. setting an array element with a sequence",  # MLflow's parser refuses it
                  "dataframe_records": "row 0: 'array' must be nested lists of numbers, H×W or H×W×C (its rows have different lengths)",
                  "dataframe_split": "row 0: 'array' must be nested lists of numbers, H×W or H×W×C (its rows have different lengths)"},
                 id="ragged-array"),
    pytest.param([{"array": list(range(64))}], None, "row 0: 'array' has shape (64,)", id="1d-array"),
    pytest.param([{"array": [[]]}], None, "row 0: 'array' has shape (1, 0)", id="0x0-array"),
    pytest.param([{"array": _pixels((32, 32, 5))}], None, "row 0: 'array' has shape (32, 32, 5)", id="5-channels"),
    pytest.param([{"array": _pixels((3, 32, 32))}], None, "row 0: 'array' has shape (3, 32, 32)", id="channels-first"),
    pytest.param([{"array": _pixels((32, 32), float("nan"))}], {"array_dtype": "float"},
                 "row 0: 'array' holds NaN or infinite values", id="nan-pixels"),
    pytest.param([{"array": _pixels((32, 32), float("inf"))}], None, "row 0: 'array' holds NaN or infinite",
                 id="infinite-pixels"),
    pytest.param([{"array": "128"}], None, "row 0: 'array' must be nested lists of numbers, H×W or H×W×C, not a str",
                 id="a-string-for-the-pixels"),
    pytest.param([{"array": _pixels((8, 8), "a")}], None, "row 0: 'array' must be nested lists of numbers, H×W or "
                 "H×W×C; it holds text", id="strings-in-the-pixels"),
    pytest.param([{"array": _pixels((8, 8), True)}], None, "it holds true/false values", id="booleans-in-the-pixels"),
    pytest.param([{"array": [[None] * 8] * 8}], None, "it holds nulls", id="nulls-in-the-pixels"),
    pytest.param([{"array": _pixels((8, 8), 300)}], None, "row 0: 'array' values must lie in 0-255 for array_dtype=uint8",
                 id="pixels-over-255"),
    pytest.param([{"array": _pixels((8, 8), -1)}], None, "values must lie in 0-255", id="negative-pixels"),
    pytest.param([{"array": _pixels((8, 8), 2)}], {"array_dtype": "float"}, "values must lie in 0-1 for array_dtype=float",
                 id="0-255-pixels-as-float"),
    pytest.param([{"array": _pixels((3, 3))}], None, "row 0: the 'array' is 3x3 pixels", id="array-too-small"),
    pytest.param([{"image": base64.b64encode(b"GIF? no, text").decode()}], None,
                 "cannot read row 0 ('image' must be a base64-encoded image file): it is empty, corrupt or not an image",
                 id="base64-of-a-non-image"),
    pytest.param([{"image": "***not base64***"}], None, "row 0 ('image' must be a base64-encoded image file): it is "
                 "not base64", id="not-base64"),
    pytest.param([{"image": 5}], None, "row 0 ('image' must be a base64-encoded image file): it is a int, not a text",
                 id="a-number-for-the-image"),
    pytest.param([{"image": GREY}], None, "it is a list, not a text", id="pixels-in-the-image-column"),
    pytest.param([{"image": _png(3, 3)}], None, "3x3 pixels (WxH); images must be at least 4", id="image-too-small"),
    pytest.param([{"image": _bomb_png()}], None, "row 0", id="oversize-image"),
    pytest.param([{"array": GREY}], {"array_dtype": "int7"}, "params.array_dtype='int7': choose one of uint8, uint16, float",
                 id="unknown-array-dtype"),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("rows", "params", "message"), BAD_REQUESTS)
def test_a_bad_request_is_http_400_with_one_line_naming_the_row(served, rows, params, message, form):
    url, _ = served
    message = message[form] if isinstance(message, dict) else message
    status, answer = _post(url, _request(rows, form, params))
    assert status == 400, answer
    assert "stack_trace" not in answer, answer["stack_trace"][-2000:]
    # The scoring server puts the table it was sent before the model's own line.
    line = answer["message"].rsplit("Error: ", 1)[-1]
    assert message in line and "\n" not in line.strip(), answer["message"][-2000:]


@pytest.mark.parametrize("form", FORMS)
def test_good_rows_in_any_form_get_the_training_runs_scores(served, form):
    url, rows = served
    rgb = [cv2.cvtColor(cv2.imread(row["image_path"]), cv2.COLOR_BGR2RGB) for row in rows]
    files = [{"image": base64.b64encode(Path(row["image_path"]).read_bytes()).decode("ascii")} for row in rows]
    whole_floats = [{"array": a.astype(float).tolist()} for a in rgb]  # 128.0 is a whole number: still 8-bit
    unit = [{"array": (a / 255.0).tolist()} for a in rgb]
    expected = [float(row["raw_score"]) for row in rows]
    for body in (_request(files + whole_floats, form), _request(unit, form, {"array_dtype": "float"})):
        status, answer = _post(url, body)
        assert status == 200, answer
        scores = [p["raw_score"] for p in answer["predictions"]]
        assert scores == pytest.approx(expected * (len(scores) // len(expected)), rel=1e-4)
