"""The training run's deployment folder as an MLflow model: logged, registered, loaded by URI, served."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from quadra_ad.deploy import Predictor
from quadra_ad.deploy.model_uri import CACHE_ENV, CACHE_LIMIT_ENV
from quadra_ad.errors import ConfigError
from quadra_ad.run import run
from quadra_ad.tracking.mlflow_model import encode_image_file
from tests.conftest import training_config


@pytest.fixture(scope="module", autouse=True)
def model_cache(tmp_path_factory):
    """Models fetched by URI are cached in a temporary folder, not the user's cache folder."""
    folder = tmp_path_factory.mktemp("model_cache")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV)
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(scope="module")
def registered(segmentation_dataset, tmp_path_factory):
    """A PaDiM run logged to its own store and registered as 'bottle'; returns (task, tracking URI)."""
    workdir = tmp_path_factory.mktemp("registered")
    cfg = training_config("base/anomaly/padim", segmentation_dataset, workdir, "logger.mlflow.registered_model_name=bottle")
    task = run(cfg, output_dir=workdir / "run")
    assert task.tracking_error is None, task.tracking_error
    return task, f"sqlite:///{workdir}/mlflow.db"


def _labelled_rows(run_dir: Path) -> list[dict]:
    with (run_dir / "predictions.csv").open() as handle:
        return [row for row in csv.DictReader(handle) if row["label"] != ""]


def test_the_run_logs_and_registers_its_model_which_mlflow_loads_and_predicts_with(registered):
    task, tracking_uri = registered
    client = MlflowClient(tracking_uri)
    (version,) = client.search_model_versions("name='bottle'")
    assert version.run_id == task.tracked_run.run_id
    rows = _labelled_rows(task.output_dir)[:5]
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model("models:/bottle/1")
        assert [p.name for p in model.metadata.get_params_schema().params] == ["array_dtype"]
        out = model.predict(pd.DataFrame({"image": [encode_image_file(r["image_path"]) for r in rows]}))
        # The same images as pixels: 8-bit (the default), 16-bit and float, mixed with files in one table.
        rgb = [_rgb8(r["image_path"]) for r in rows]
        mixed = model.predict(pd.DataFrame({"image": [encode_image_file(rows[0]["image_path"])] + [None] * 4,
                                            "array": [None] + [a.tolist() for a in rgb[1:]]}))
        wide = model.predict(pd.DataFrame({"array": [(a.astype("uint16") * 257).tolist() for a in rgb]}),
                             params={"array_dtype": "uint16"})
        unit = model.predict(pd.DataFrame({"array": [(a / 255.0).tolist() for a in rgb]}), params={"array_dtype": "float"})
    finally:
        mlflow.set_tracking_uri(None)
    assert list(out.columns) == ["raw_score", "normalized_score", "predicted_label", "threshold"]
    expected = [float(r["raw_score"]) for r in rows]
    for answer in (out, mixed, wide, unit):
        assert list(answer["raw_score"]) == pytest.approx(expected, rel=1e-4)


def _rgb8(path: str):
    import cv2

    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize(("table", "params", "message"), [
    ({"image": ["bm90IGFuIGltYWdl"]}, None, "cannot read row 0 ('image' must be a base64-encoded image file)"),
    ({"image": ["***"]}, None, "it is not base64"),
    ({"image": [None], "array": [None]}, None, "row 0: give exactly one of 'image'"),
    ({"array": [[[300] + [0] * 7] * 8]}, None, "values must lie in 0-255 for array_dtype=uint8 (found 0 to 300)"),
    ({"array": [[[1, 2], [3]]]}, None, "'array' must be nested lists of numbers"),
    ({"array": [[[0.5, 0.5], [0.5, 0.5]]]}, {"array_dtype": "int8"}, "params.array_dtype='int8'"),
])
def test_wrong_rows_are_one_line_naming_the_row(registered, table, params, message):
    from mlflow.exceptions import MlflowException

    _, tracking_uri = registered
    mlflow.set_tracking_uri(tracking_uri)
    try:
        model = mlflow.pyfunc.load_model("models:/bottle/1")
        with pytest.raises(MlflowException) as raised:
            model.predict(pd.DataFrame(table), params=params)
    finally:
        mlflow.set_tracking_uri(None)
    assert message in str(raised.value) and "\n" not in str(raised.value).strip()


@pytest.mark.parametrize("uri", ["models:/bottle/1", "models:/bottle@champion", "runs:/{run_id}/model"])
def test_model_uris_work_in_the_predictor_and_as_the_inference_model_path(registered, segmentation_dataset, tmp_path, uri):
    from tests.tasks.test_anomaly_inference import infer

    task, tracking_uri = registered
    MlflowClient(tracking_uri).set_registered_model_alias("bottle", "champion", "1")
    uri = uri.format(run_id=task.tracked_run.run_id)
    rows = _labelled_rows(task.output_dir)
    predictions = Predictor.load(uri, tracking_uri=tracking_uri).predict([r["image_path"] for r in rows])
    assert [p.score for p in predictions] == pytest.approx([float(r["raw_score"]) for r in rows], rel=1e-4)
    inference = infer(uri, segmentation_dataset, tmp_path / "infer", "task.use_training_threshold=true",
                      tracking_dir=Path(tracking_uri.removeprefix("sqlite:///")).parent)
    assert inference.metrics["image_AUROC"] == pytest.approx(task.metrics["image_AUROC"], abs=1e-12)
    assert inference.tracking_tags()["quadra_ad.model_path"] == uri


def test_a_model_uri_that_is_not_there_is_one_line(registered):
    _, tracking_uri = registered
    with pytest.raises(ConfigError, match=r"^Predictor.load path 'models:/bottle/7' cannot be fetched from the MLflow store"):
        Predictor.load("models:/bottle/7", tracking_uri=tracking_uri)


def test_no_model_is_logged_when_asked_not_to(segmentation_dataset, tmp_path):
    cfg = training_config("base/anomaly/padim", segmentation_dataset, tmp_path, "logger.mlflow.log_model=false")
    task = run(cfg, output_dir=tmp_path / "run")
    assert json.loads((task.output_dir / "mlflow_run.json").read_text())["model"] is None
    assert MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").search_logged_models(
        experiment_ids=[task.tracked_run.experiment_id]) == []


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_training_runs_scores(registered, tmp_path):
    from tests.mlflow_processes import free_port

    task, tracking_uri = registered
    port = free_port()
    # mlflow runs `uvicorn` from PATH: the environment's bin folder first, as when it is activated.
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/bottle/1", "--env-manager", "local",
               "-h", "127.0.0.1", "-p", str(port)]
    with (tmp_path / "serve.log").open("w") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the served model did not answer within 120 s"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        rows = _labelled_rows(task.output_dir)
        files = {"dataframe_split": {"columns": ["image"], "data": [[encode_image_file(r["image_path"])] for r in rows]}}
        arrays = {"dataframe_records": [{"array": (_rgb8(r["image_path"]) / 255.0).tolist()} for r in rows],
                  "params": {"array_dtype": "float"}}
        answers = [_post(port, body) for body in (files, arrays)]
        status, refusal = _post(port, {"dataframe_records": [{"array": [[256] * 8] * 8}]})
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    for status_code, answer in answers:
        assert status_code == 200
        scores = [row["raw_score"] for row in answer["predictions"]]
        assert scores == pytest.approx([float(r["raw_score"]) for r in rows], rel=1e-4)
    assert status == 400 and "row 0: 'array' values must lie in 0-255" in refusal["message"]


def _post(port: int, body: dict) -> tuple[int, dict]:
    """(HTTP status, JSON answer) of POST /invocations."""
    import urllib.error

    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_compare_registers_the_best_run_with_an_alias(registered, tmp_path, capsys):
    from quadra_ad.cli.compare import main as compare_main

    task, tracking_uri = registered
    # Inference runs in the same store (other tests here) may rank above it: they log no model.
    assert compare_main(["--tracking-uri", tracking_uri, "--output-dir", str(tmp_path), "--register", "line_3",
                         "--alias", "champion"]) == 0
    assert "registered" in capsys.readouterr().out
    version = MlflowClient(tracking_uri).get_model_version_by_alias("line_3", "champion")
    assert version.run_id == task.tracked_run.run_id
    rows = _labelled_rows(task.output_dir)[:3]
    got = Predictor.load("models:/line_3@champion", tracking_uri=tracking_uri).predict([r["image_path"] for r in rows])
    assert [p.score for p in got] == pytest.approx([float(r["raw_score"]) for r in rows], rel=1e-4)


def test_the_embedded_store_keeps_one_copy_of_every_file(registered):
    """Run artifacts and the logged model are hard links to the run folder's files, not copies."""
    from quadra_ad.tracking.mlflow_writer import local_artifact_path

    task, tracking_uri = registered
    client = MlflowClient(tracking_uri)
    run = client.get_run(task.tracked_run.run_id)
    run_artifacts = local_artifact_path(run.info.artifact_uri)
    (model,) = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    model_files = local_artifact_path(model.artifact_location) / "artifacts" / "deployment_model"
    folder = task.output_dir / "deployment_model"
    for name in ("model.onnx", "model.pt", "model.json"):
        assert os.path.samefile(folder / name, run_artifacts / "deployment_model" / name)
        assert os.path.samefile(folder / name, model_files / name)
    assert os.path.samefile(task.output_dir / "metrics.json", run_artifacts / "metrics.json")
    # Still an ordinary MLflow artifact: downloaded as a file with the same bytes.
    downloaded = client.download_artifacts(run.info.run_id, "deployment_model/model.json", str(task.output_dir.parent / "dl"))
    assert Path(downloaded).read_bytes() == (folder / "model.json").read_bytes()


def test_the_logged_model_holds_no_pickle_but_our_model_from_code_file(registered):
    """Loading a model runs no pickle: MLflow runs the copied pyfunc_model.py instead (it is code, as TorchScript is)."""
    from quadra_ad.tracking.mlflow_writer import local_artifact_path

    task, tracking_uri = registered
    client = MlflowClient(tracking_uri)
    (model,) = client.search_logged_models(experiment_ids=[task.tracked_run.experiment_id])
    root = local_artifact_path(model.artifact_location)  # MLmodel, the code, artifacts/deployment_model/…
    files = [p for p in root.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert "pyfunc_model.py" in names and "MLmodel" in names
    assert not [p for p in files if p.suffix in (".pkl", ".pickle") or "pickle" in p.name.lower()]
    config = mlflow.models.Model.load(str(root))
    assert config.flavors["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"


def _new_folders_and_bytes(folder: Path) -> tuple[int, int]:
    entries = list(folder.rglob("*"))
    return sum(p.is_dir() for p in entries), sum(p.stat().st_size for p in entries if p.is_file())


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """(model cache, temp folder), both empty: what a load leaves behind is all there is in them."""
    import tempfile

    cache, temp = tmp_path / "cache", tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return cache, temp


def test_a_second_load_of_a_version_downloads_nothing_and_the_temp_folder_keeps_nothing(registered, empty_cache):
    task, tracking_uri = registered
    cache, temp = empty_cache
    rows = _labelled_rows(task.output_dir)[:3]
    first = Predictor.load("models:/bottle/1", tracking_uri=tracking_uri)
    (entry,) = cache.iterdir()
    graph = entry / "model.onnx"
    downloaded = graph.stat()
    MlflowClient(tracking_uri).set_registered_model_alias("bottle", "champion", "1")
    for uri in ("models:/bottle/1", "models:/bottle@champion"):  # an alias of the same version: the same files
        again = Predictor.load(uri, tracking_uri=tracking_uri)
        assert [p.score for p in again.predict([r["image_path"] for r in rows])] == \
            [p.score for p in first.predict([r["image_path"] for r in rows])]
    assert list(cache.iterdir()) == [entry]
    assert (graph.stat().st_ino, graph.stat().st_mtime_ns) == (downloaded.st_ino, downloaded.st_mtime_ns)
    assert _new_folders_and_bytes(temp)[0] == 0 and _new_folders_and_bytes(temp)[1] < 4096


@pytest.mark.parametrize("uri", ["models:/bottle/7", "models:/no_such_model/1", "models:/bottle@no_alias",
                                 "runs:/0123456789abcdef/model"])
def test_a_failed_lookup_leaves_nothing_in_the_cache_or_the_temp_folder(registered, empty_cache, uri):
    _, tracking_uri = registered
    cache, temp = empty_cache
    with pytest.raises(ConfigError, match="cannot be fetched from the MLflow store"):
        Predictor.load(uri, tracking_uri=tracking_uri)
    assert not cache.exists() or list(cache.iterdir()) == []
    assert _new_folders_and_bytes(temp)[0] == 0


def test_the_cache_keeps_the_recently_used_models_within_its_size_limit(registered, empty_cache, monkeypatch):
    task, tracking_uri = registered
    cache, _ = empty_cache
    by_run = f"runs:/{task.tracked_run.run_id}/model"  # the same files under another key
    Predictor.load("models:/bottle/1", tracking_uri=tracking_uri)
    Predictor.load(by_run, tracking_uri=tracking_uri)
    assert len(list(cache.iterdir())) == 2
    monkeypatch.setenv(CACHE_LIMIT_ENV, "0")  # room for the model in use only
    newest = Predictor.load(by_run, tracking_uri=tracking_uri)
    assert list(cache.iterdir()) == [Path(newest.model.path).parent]
    monkeypatch.setenv(CACHE_LIMIT_ENV, "lots")
    with pytest.raises(ConfigError, match=f"^{CACHE_LIMIT_ENV}='lots': give the model cache's size limit in megabytes"):
        Predictor.load(by_run, tracking_uri=tracking_uri)


def test_a_cached_model_is_still_checked_against_its_card(registered, empty_cache):
    _, tracking_uri = registered
    cache, _ = empty_cache
    Predictor.load("models:/bottle/1", tracking_uri=tracking_uri)
    (graph,) = cache.glob("*/model.onnx")
    tampered = graph.read_bytes() + b"\0"
    graph.unlink()  # a new file: the download may share its bytes with the run folder
    graph.write_bytes(tampered)
    with pytest.raises(ConfigError, match="content hash differs"):
        Predictor.load("models:/bottle/1", tracking_uri=tracking_uri)


def test_two_processes_loading_one_model_at_once_share_one_whole_copy(registered, empty_cache):
    _, tracking_uri = registered
    cache, _ = empty_cache
    script = ("import sys; from quadra_ad.deploy import Predictor; "
              "print(Predictor.load(sys.argv[1], tracking_uri=sys.argv[2]).model.path)")
    env = {**os.environ, CACHE_ENV: str(cache)}
    loads = [subprocess.Popen([sys.executable, "-c", script, "models:/bottle/1", tracking_uri], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    answers = [load.communicate(timeout=120) for load in loads]
    assert [load.returncode for load in loads] == [0, 0], [err[-2000:] for _, err in answers]
    paths = {out.strip().splitlines()[-1] for out, _ in answers}
    (entry,) = cache.iterdir()
    assert paths == {str(entry / "model.onnx")}
