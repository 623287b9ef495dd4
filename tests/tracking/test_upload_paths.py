"""``quadra-ad-upload`` reads a record anyone can edit: every path it names must stay inside its run
folder (symlinks resolved), and a record it refuses logs nothing at all."""

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from quadra_ad.cli.upload import main as upload_main
from quadra_ad.tracking.mlflow_writer import create_embedded_store


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty MLflow store, built once and copied beside each test's run folder."""
    folder = tmp_path_factory.mktemp("empty_store")
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(folder / "cache")  # its template cache, not the home folder
    try:
        create_embedded_store(f"sqlite:///{folder / 'mlflow.db'}")
    finally:
        if previous is None:
            os.environ.pop("XDG_CACHE_HOME")
        else:
            os.environ["XDG_CACHE_HOME"] = previous
    return folder / "mlflow.db"


@pytest.fixture
def run_folder(tmp_path, empty_store) -> Path:
    """A run folder as training leaves it (a few artifacts, a deployment_model folder) and a valid record
    pointing at a store that already exists, so that a refused upload has a store to not write to."""
    store = tmp_path / "mlflow.db"
    shutil.copyfile(empty_store, store)
    run = tmp_path / "run"
    (run / "deployment_model").mkdir(parents=True)
    (run / "deployment_model" / "model.json").write_text("{}")
    (run / "predicted_masks").mkdir()
    (run / "predicted_masks" / "a.png").write_bytes(b"png")
    (run / "metrics.json").write_text("{}")
    (tmp_path / "outside.txt").write_text("not the run's")
    _write_record(run, {
        "model": None, "tracking_uri": f"sqlite:///{store}", "experiment_name": "upload_paths", "run_name": "r",
        "params": {"model": "padim"}, "metrics": {"image_AUROC": 0.9}, "artifacts": ["metrics.json", "predicted_masks"],
        "tags": {}, "artifact_location": None, "metric_history": {"loss": [[0, 1.0]]}, "status": "FINISHED",
        "live_run_id": None,
    })
    return run


def _write_record(run: Path, record) -> None:
    (run / "mlflow_run.json").write_text(json.dumps(record))


def _record(run: Path) -> dict:
    return json.loads((run / "mlflow_run.json").read_text())


def _runs_in_store(run: Path) -> int:
    with sqlite3.connect(run.parent / "mlflow.db") as connection:
        return connection.execute("SELECT count(*) FROM runs").fetchone()[0]


def test_a_record_naming_only_its_own_files_uploads(run_folder, capsys):
    """The catalogue's control: the same record, unedited (an in-folder symlink included), logs one run."""
    (run_folder / "predicted_masks" / "same.png").symlink_to("a.png")
    record = _record(run_folder)
    record["artifacts"].append("deployment_model")
    record["model"] = {"folder": "deployment_model", "registered_model_name": None}
    record["status"] = "FAILED"  # no MLflow model is logged for a failed run: the placeholder card suffices
    _write_record(run_folder, record)
    assert upload_main([str(run_folder)]) == 0, capsys.readouterr().err
    assert _runs_in_store(run_folder) == 1


def _link(target: str, name: str):
    def make(run: Path) -> None:
        (run / name).symlink_to(target)
    return make


def _fifo(name: str):
    def make(run: Path) -> None:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(run / name)
    return make


def _folder(name: str):
    def make(run: Path) -> None:
        (run / name).mkdir(parents=True)
    return make


def _copy_outside_model(run: Path) -> None:
    shutil.copytree(run / "deployment_model", run.parent / "elsewhere")
    (run / "linked_model").symlink_to(run.parent / "elsewhere", target_is_directory=True)


def _artifacts(*paths):
    return {"artifacts": list(paths)}


def _model(folder):
    return {"model": {"folder": folder, "registered_model_name": None}}


BAD_RECORDS = [
    # (what the folder gets, what the record says, a key part of the one line)
    pytest.param(None, _artifacts("/etc/hostname"), "artifacts[0] '/etc/hostname' is not a relative path",
                 id="absolute-path"),
    pytest.param(None, _artifacts("metrics.json", "/etc/os-release"), "artifacts[1] '/etc/os-release'",
                 id="absolute-path-after-a-good-one"),
    pytest.param(None, _artifacts("../outside.txt"), "artifacts[0] '../outside.txt' is outside the run folder",
                 id="dot-dot-path"),
    pytest.param(None, _artifacts("predicted_masks/../../outside.txt"), "is outside the run folder",
                 id="dot-dot-inside-a-path"),
    pytest.param(_link("/etc/hostname", "hostname"), _artifacts("hostname"), "'hostname' is outside the run folder",
                 id="symlink-to-a-system-file"),
    pytest.param(_link("/etc", "etc"), _artifacts("etc/os-release"), "'etc/os-release' is outside the run folder",
                 id="through-a-symlinked-folder"),
    pytest.param(_link("/etc/hostname", "predicted_masks/leak.png"), _artifacts("predicted_masks"),
                 "holds 'predicted_masks/leak.png', which links outside the run folder", id="symlink-inside-a-folder"),
    pytest.param(_link("loop", "loop"), _artifacts("loop"), "cannot be resolved", id="symlink-loop"),
    pytest.param(None, _artifacts("."), "is the run folder itself", id="the-run-folder-itself"),
    pytest.param(None, _artifacts(""), "is not a relative path", id="empty-path"),
    pytest.param(None, _artifacts("metrics\x00.json"), "holds a NUL byte", id="nul-byte"),
    pytest.param(None, _artifacts(42), "artifacts[0] 42 is a int, not a path", id="path-is-a-number"),
    pytest.param(None, _artifacts({"path": "metrics.json"}), "is a dict, not a path", id="path-is-an-object"),
    pytest.param(None, {"artifacts": "metrics.json"}, "artifacts is a str, not a list of paths",
                 id="artifacts-not-a-list"),
    pytest.param(_fifo("pipe.csv"), _artifacts("pipe.csv"), "'pipe.csv' is neither a regular file nor a folder",
                 id="fifo-artifact"),
    pytest.param(_fifo("predicted_masks/pipe.png"), _artifacts("predicted_masks"),
                 "holds 'predicted_masks/pipe.png', neither a regular file", id="fifo-inside-a-folder"),
    pytest.param(_folder("predictions.csv"), _artifacts("predictions.csv"),
                 "'predictions.csv' is a folder, but its name is a file's", id="folder-named-as-a-file"),
    pytest.param(None, _model("../elsewhere"), "model.folder '../elsewhere' is outside the run folder",
                 id="model-folder-dot-dot"),
    pytest.param(None, _model("/etc"), "model.folder '/etc' is not a relative path", id="model-folder-absolute"),
    pytest.param(_copy_outside_model, _model("linked_model"), "model.folder 'linked_model' is outside the run folder",
                 id="model-folder-symlinked-outside"),
    pytest.param(None, _model("metrics.json"), "model.folder 'metrics.json' is not a folder", id="model-folder-a-file"),
    pytest.param(None, _model(["deployment_model"]), "model.folder ['deployment_model'] is a list, not a path",
                 id="model-folder-not-a-string"),
    pytest.param(None, {"model": "deployment_model"}, "model is not null nor an object", id="model-not-an-object"),
    pytest.param(None, {"metrics": {"image_AUROC": "high"}}, "metrics['image_AUROC'] is 'high', not a number",
                 id="metric-not-a-number"),
    pytest.param(None, {"metric_history": {"loss": [[0]]}}, "metric_history['loss'] is not a list of [step, value]",
                 id="metric-history-not-pairs"),
    pytest.param(None, {"params": ["a"]}, "params is a list, not a JSON object", id="params-not-an-object"),
    pytest.param(None, {"status": "DONE"}, "status is 'DONE', not one of", id="unknown-status"),
    pytest.param(None, {"tracking_uri": 5}, "tracking_uri is 5, not a non-empty text", id="tracking-uri-not-text"),
]


@pytest.mark.timeout(60)  # a FIFO that were opened would block forever
@pytest.mark.parametrize(("prepare", "change", "message"), BAD_RECORDS)
def test_a_record_naming_what_it_may_not_is_refused_in_one_line_and_logs_nothing(
        run_folder, capsys, prepare, change, message):
    if prepare is not None:
        prepare(run_folder)
    _write_record(run_folder, {**_record(run_folder), **change})
    assert upload_main([str(run_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("quadra-ad-upload: error: ") and message in err, err
    assert _runs_in_store(run_folder) == 0
    assert not (run_folder.parent / "mlartifacts").exists()


@pytest.mark.parametrize("content", [pytest.param("[]", id="list"), pytest.param('"run"', id="string"),
                                     pytest.param("null", id="null"), pytest.param("3", id="number")])
def test_a_record_that_is_not_a_json_object_is_refused_in_one_line(run_folder, capsys, content):
    (run_folder / "mlflow_run.json").write_text(content)
    assert upload_main([str(run_folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not an object" in err, err
    assert _runs_in_store(run_folder) == 0
