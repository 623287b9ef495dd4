"""A two-model sweep, then inference, logged to a real MLflow store and compared — once against a
real ``mlflow server`` on loopback and once against the embedded default (``./mlflow.db``)."""

import csv
import json
from pathlib import Path

import pytest
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

from quadra_ad.cli.compare import main as compare_main
from tests.cli_runner import quadra_ad

FAST = (
    "++datamodule.limit_data=16",  # the key only exists once an experiment is applied
    "transforms.input_size=[32,32]",
    "export.types=[torchscript]",
    "trainer.enable_progress_bar=false",
)


@pytest.fixture(params=["server", "embedded"])
def tracking_uri(request, tmp_path) -> str:
    if request.param == "server":
        return request.getfixturevalue("mlflow_server")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"  # what quadra-ad uses when run in tmp_path


def _uri_override(tracking_uri: str) -> list[str]:
    return [] if tracking_uri.startswith("sqlite") else [f"logger.mlflow.tracking_uri={tracking_uri}"]


def test_two_model_sweep_is_logged_read_back_and_compared(tracking_uri, tmp_path, capsys):
    data_path = tmp_path / "digits"
    sweep = quadra_ad(
        "-m", "experiment=generic/digits/anomaly/padim,generic/digits/anomaly/patchcore",
        f"datamodule.data_path={data_path}", *FAST, *_uri_override(tracking_uri), cwd=tmp_path,
    )
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    assert "MLflow tracking failed" not in sweep.stderr

    # One experiment for the sweep, one run per job, all tagged with the sweep id.
    client = MlflowClient(tracking_uri=tracking_uri)
    sweep_experiments = [e for e in client.search_experiments() if e.name.startswith("sweep_")]
    experiment = max(sweep_experiments, key=lambda e: e.creation_time)
    sweep_runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in sweep_runs if run.data.tags.get("quadra_ad.task") == "SweepReport"]
    runs = {run.data.tags["quadra_ad.model"]: run for run in sweep_runs if run is not parent}
    assert set(runs) == {"Padim", "Patchcore"}
    # The sweep as one parent run over the jobs' runs, holding the sweep report.
    assert {run.data.tags["mlflow.parentRunId"] for run in runs.values()} == {parent.info.run_id}
    assert parent.data.metrics["Padim.image_AUROC_mean"] == pytest.approx(runs["Padim"].data.metrics["image_AUROC"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"sweep_report.csv", "sweep_report.md"}
    assert {run.data.tags["quadra_ad.sweep_id"] for run in runs.values()} == {experiment.name.removeprefix("sweep_")}
    padim = runs["Padim"]
    assert padim.info.status == "FINISHED"
    assert padim.data.params["model._target_"] == "anomalib.models.Padim"
    assert padim.data.params["datamodule.limit_data"] == "16"
    assert padim.data.metrics["image_AUROC"] > 0.5  # better than chance on the digits
    run_folder = Path(padim.data.tags["quadra_ad.run_folder"])
    assert json.loads((run_folder / "metrics.json").read_text())["image_AUROC"] == pytest.approx(
        padim.data.metrics["image_AUROC"])
    logged = {a.path for a in client.list_artifacts(padim.info.run_id, "deployment_model")}
    assert {"deployment_model/model.pt", "deployment_model/model.json"} <= logged
    card = download_artifacts(run_id=padim.info.run_id, artifact_path="deployment_model/model.json",
                              tracking_uri=tracking_uri, dst_path=str(tmp_path / "downloaded"))
    assert Path(card).read_text() == (run_folder / "deployment_model" / "model.json").read_text()

    # Inference with the PaDiM export is linked to the training run that made it.
    model_path = padim.data.tags["quadra_ad.model_path"]
    inference = quadra_ad(
        "experiment=generic/digits/anomaly/inference", f"task.model_path={model_path}",
        f"datamodule.data_path={data_path}", "datamodule.limit_data=16", *_uri_override(tracking_uri), cwd=tmp_path,
    )
    assert inference.returncode == 0, inference.stderr[-3000:]
    inference_experiment = client.get_experiment_by_name("digits_inference")
    (inference_run,) = client.search_runs([inference_experiment.experiment_id])
    assert inference_run.data.tags["quadra_ad.training_run_folder"] == str(run_folder)
    assert inference_run.data.tags["quadra_ad.model_path"] == model_path

    # The compare command ranks the sweep's runs and points at their models.
    out = tmp_path / "comparison"
    assert compare_main(["--tracking-uri", tracking_uri, "-e", experiment.name, "--output-dir", str(out), "--plot"]) == 0
    printed = capsys.readouterr().out
    assert "Padim" in printed and "Patchcore" in printed
    with (out / "runs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["model"] for row in rows} == {"Padim", "Patchcore"}
    aurocs = [float(row["image_AUROC"]) for row in rows]
    assert aurocs == sorted(aurocs, reverse=True)
    assert all(Path(row["model_path"]).is_file() for row in rows)
    markdown_rows = [line for line in (out / "runs.md").read_text().splitlines() if line.startswith("| Pa")]
    assert len(markdown_rows) == 2
    assert (out / "image_AUROC_by_model.png").stat().st_size > 0


def test_a_failing_job_is_logged_failed_and_the_sweep_goes_on(tmp_path):
    from quadra_ad.testing.synthetic import write_synthetic_dataset

    good = write_synthetic_dataset(tmp_path / "good", n_train=4, n_test_good=2, n_test_defect=2, size=32)
    missing = tmp_path / "missing"
    sweep = quadra_ad(
        "-m", "experiment=base/anomaly/padim", f"datamodule.data_path={missing},{good}", "backbone.pre_trained=false",
        "transforms.input_size=[32,32]", "export.types=[]", "trainer.enable_progress_bar=false",
        "datamodule.num_workers=0", cwd=tmp_path,
    )
    assert sweep.returncode == 2, sweep.stderr[-3000:]  # a job failed on a user mistake
    summary = [line for line in sweep.stderr.splitlines() if line.startswith("quadra-ad: failed: ")]
    assert len(summary) == 1 and summary[0].startswith("quadra-ad: failed: job 0 (")
    assert f"datamodule.data_path '{missing}' does not exist" in summary[0]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("sweep_")]
    runs = {run.info.status: run for run in client.search_runs([experiment.experiment_id])
            if run.data.tags.get("quadra_ad.task") != "SweepReport"}
    assert set(runs) == {"FAILED", "FINISHED"}  # the second job ran after the first failed
    # The sweep report lists the failed job with its line.
    report = next((tmp_path / "outputs" / "multirun").glob("*/report/sweep_report.md")).read_text()
    assert "## Failed jobs" in report and "does not exist" in report
    assert runs["FAILED"].data.tags["quadra_ad.error"].startswith("DatasetError: datamodule.data_path")
    assert runs["FINISHED"].data.params["datamodule.data_path"] == str(good)
