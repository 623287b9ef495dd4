"""``quadra-ad-compare`` on an embedded MLflow store filled with hand-made runs (no training)."""

import csv

import pytest

from quadra_ad.cli.compare import main as compare_main
from quadra_ad.tracking.mlflow_writer import log_run
from tests.tracking.conftest import free_port


def _log(uri: str, experiment: str, model: str, metrics: dict, params: dict | None = None, status: str = "FINISHED"):
    tags = {"quadra_ad.model": model, "quadra_ad.task": "AnomalyTrainingTask",
            "quadra_ad.model_path": f"/runs/{model}/deployment_model/model.pt", "quadra_ad.run_folder": f"/runs/{model}"}
    return log_run(uri, experiment, f"{model}_run", {"model.backbone": "resnet18", **(params or {})}, metrics, [],
                   tags=tags, status=status)


@pytest.fixture
def store(tmp_path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _log(uri, "bottle", "Padim", {"image_AUROC": 0.91, "pixel_AUROC": 0.95}, {"model.n_features": "100"})
    _log(uri, "bottle", "Patchcore", {"image_AUROC": 0.99, "pixel_AUROC": 0.97}, {"model.n_features": "200"})
    _log(uri, "bottle", "Fastflow", {}, {"model.n_features": "300"}, status="FAILED")
    _log(uri, "screw", "Stfpm", {"image_AUROC": 0.70})
    return uri


def _compare(store, tmp_path, *args):
    return compare_main(["--tracking-uri", store, "--output-dir", str(tmp_path / "out"), *args])


def _csv_rows(tmp_path):
    with (tmp_path / "out" / "runs.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_runs_are_ranked_best_first_with_unscored_runs_last(store, tmp_path, capsys):
    assert _compare(store, tmp_path, "-e", "bottle") == 0
    rows = _csv_rows(tmp_path)
    assert [row["model"] for row in rows] == ["Patchcore", "Padim", "Fastflow"]
    assert rows[0]["image_AUROC"] == "0.99" and rows[2]["image_AUROC"] == ""
    assert rows[0]["model_path"] == "/runs/Patchcore/deployment_model/model.pt"
    assert rows[2]["status"] == "FAILED"
    # The setting that differs between the runs is a column of its own.
    assert "model.n_features" in rows[0]
    printed = capsys.readouterr().out
    assert "best by image_AUROC: Patchcore_run = 0.9900  /runs/Patchcore/deployment_model/model.pt" in printed


def test_sort_by_another_metric_ascending_across_experiments(store, tmp_path):
    assert _compare(store, tmp_path, "--sort-by", "image_AUROC", "--ascending") == 0
    assert [row["model"] for row in _csv_rows(tmp_path)] == ["Stfpm", "Padim", "Patchcore", "Fastflow"]


def test_chosen_columns_from_params_tags_and_metrics(store, tmp_path):
    columns = "run,params.model.n_features,tags.quadra_ad.model,metrics.pixel_AUROC,image_AUROC"
    assert _compare(store, tmp_path, "-e", "bottle", "--columns", columns) == 0
    rows = _csv_rows(tmp_path)
    assert list(rows[0]) == ["run", "model.n_features", "quadra_ad.model", "pixel_AUROC", "image_AUROC"]
    assert rows[0]["model.n_features"] == "200" and rows[0]["pixel_AUROC"] == "0.97"


def test_filter_is_passed_to_mlflow(store, tmp_path):
    assert _compare(store, tmp_path, "--filter", "params.model.n_features = '100'") == 0
    assert [row["model"] for row in _csv_rows(tmp_path)] == ["Padim"]


def test_markdown_and_plot_are_written(store, tmp_path):
    assert _compare(store, tmp_path, "-e", "bottle", "--plot") == 0
    markdown = (tmp_path / "out" / "runs.md").read_text()
    assert markdown.startswith("# Runs ranked by image_AUROC")
    assert "| Patchcore_run | bottle | Patchcore |" in markdown
    assert (tmp_path / "out" / "image_AUROC_by_model.png").stat().st_size > 1000


@pytest.mark.parametrize(("args", "message"), [
    (["-e", "botle"], "--experiment 'botle': no such experiment at sqlite:///"),
    (["--sort-by", "image_AUROCC"], "--sort-by 'image_AUROCC': no such metric in these runs; did you mean 'image_AUROC'"),
    (["--columns", "run,modl"], "--columns 'modl': no such column; did you mean 'model'?"),
    (["--filter", "params.x ==== 3"], "--filter 'params.x ==== 3' is not a valid MLflow filter"),
])
def test_user_mistakes_get_one_line(store, tmp_path, capsys, args, message):
    assert _compare(store, tmp_path, *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("quadra-ad-compare: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_no_store_in_this_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert compare_main([]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists()  # looking must not create an empty store


def test_server_down_fails_fast_in_one_line(tmp_path, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    assert _compare(uri, tmp_path) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"quadra-ad-compare: error: no MLflow server answers at {uri} ([Errno 111] Connection refused): " \
                  "start the server or fix --tracking-uri"


def test_no_matching_runs(store, tmp_path, capsys):
    assert _compare(store, tmp_path, "--filter", "params.model.n_features = '999'") == 1
    assert "no runs match" in capsys.readouterr().err


def test_a_failed_run_with_the_top_metric_is_ranked_after_finished_runs_and_never_best(store, tmp_path, capsys):
    # An export that failed after testing: metrics logged, run FAILED (what the training task does).
    _log(store, "bottle", "Draem", {"image_AUROC": 1.0}, status="FAILED")
    assert _compare(store, tmp_path, "-e", "bottle") == 0
    rows = _csv_rows(tmp_path)
    assert [row["model"] for row in rows] == ["Patchcore", "Padim", "Draem", "Fastflow"]
    assert "best by image_AUROC: Patchcore_run" in capsys.readouterr().out
