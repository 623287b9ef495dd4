"""Live MLflow: the run opens when training starts, epochs and system metrics appear while it trains,
the batch size the finder chose is the logged param, and a server that dies mid-run neither stops the
training nor splits the run in two (quadra-ad-upload completes the same run later)."""

import json

import pytest
from mlflow.tracking import MlflowClient

from quadra_ad.cli.upload import main as upload_main
from quadra_ad.run import run
from tests.mlflow_processes import free_port, start_mlflow, stop_mlflow
from tests.tasks.test_trainable_models import stfpm_config

PROBE = "+callbacks.live_probe._target_=tests.tracking.live_probe.LiveProbe"


def test_the_run_shows_the_training_while_it_trains(segmentation_dataset, tmp_path):
    probe_file = tmp_path / "seen.json"
    cfg = stfpm_config(segmentation_dataset, tmp_path, PROBE, f"+callbacks.live_probe.out={probe_file}",
                       "callbacks.batch_size_finder.enabled=true", "+callbacks.batch_size_finder.init_val=2",
                       "+callbacks.batch_size_finder.max_trials=3", "logger.mlflow.system_metrics_interval_s=0.5")
    task = run(cfg, output_dir=tmp_path / "run")

    seen = json.loads(probe_file.read_text())  # at the start of the third epoch
    assert seen["status"] == "RUNNING"
    assert seen["loss_steps"] == [0, 1] and seen["auroc_steps"] == [0, 1]
    assert seen["params"]["model._target_"] == "anomalib.models.Stfpm"
    # The finder's choice is logged once it is known, not the configured 4.
    assert seen["params"]["datamodule.train_batch_size"] == "8"

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([task.tracked_run.experiment_id])
    assert [r.info.run_id for r in runs] == [seen["run_id"]] == [task.tracked_run.run_id]
    finished = runs[0]
    assert finished.info.status == "FINISHED"
    # Each epoch once: the final logging does not send again what the live run already has.
    assert [m.step for m in client.get_metric_history(seen["run_id"], "train_loss_epoch")] == [0, 1, 2]
    assert "image_AUROC" in finished.data.metrics
    assert any(key.startswith("system/cpu_utilization") for key in finished.data.metrics)
    assert "system/system_memory_usage_megabytes" in finished.data.metrics
    assert "lr-SGD" in finished.data.metrics  # STFPM's optimizer, once per epoch
    assert finished.data.params["datamodule.train_batch_size"] == "8"
    assert "train_batch_size: 8" in (tmp_path / "run" / "config_resolved.yaml").read_text()
    # The best checkpoint is an artifact of the run.
    artifacts = {a.path for a in client.list_artifacts(seen["run_id"])}
    assert any(path.endswith(".ckpt") for path in artifacts)


def test_live_logging_off_logs_once_at_the_end(segmentation_dataset, tmp_path):
    task = run(stfpm_config(segmentation_dataset, tmp_path, "logger.mlflow.live=false", "trainer.max_epochs=2"),
               output_dir=tmp_path / "run")
    assert task.live_run is None
    record = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())
    assert record["live_run_id"] is None and record["logged_run_id"] == task.tracked_run.run_id
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    assert [m.step for m in client.get_metric_history(task.tracked_run.run_id, "train_loss_epoch")] == [0, 1]


def _start_server(root, port):
    return start_mlflow(["server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
                         str(root / "artifacts")], root, root / f"server_{port}.log", port=port)


@pytest.mark.slow
def test_a_server_that_dies_mid_training_loses_nothing_and_upload_completes_the_same_run(
        segmentation_dataset, tmp_path):
    store = tmp_path / "server"
    store.mkdir()
    port = free_port()
    server, uri = _start_server(store, port)
    pid_file = tmp_path / "server.pid"
    pid_file.write_text(str(server.pid))
    probe_file = tmp_path / "seen.json"
    try:
        cfg = stfpm_config(segmentation_dataset, None, f"+logger.mlflow.tracking_uri={uri}",
                           "+logger.mlflow.experiment_name=live", PROBE, f"+callbacks.live_probe.out={probe_file}",
                           "+callbacks.live_probe.at_epoch=1", f"+callbacks.live_probe.kill_pid_file={pid_file}")
        task = run(cfg, output_dir=tmp_path / "run")  # the server is killed at the start of epoch 1
        server.wait(timeout=30)
        seen = json.loads(probe_file.read_text())
        assert seen["loss_steps"] == [0]
        # Training went on to the end: tested and exported, the record waits for an upload.
        assert "image_AUROC" in task.metrics
        assert task.tracked_run is None and f"quadra-ad-upload {tmp_path / 'run'}" in task.tracking_error
        record = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())
        assert record["live_run_id"] == seen["run_id"] and record["status"] == "FINISHED"

        server, uri = _start_server(store, port)
        assert upload_main([str(tmp_path / "run")]) == 0
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("live")
        runs = client.search_runs([experiment.experiment_id])
        assert [r.info.run_id for r in runs] == [seen["run_id"]]  # completed, not a second run
        assert runs[0].info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(seen["run_id"], "train_loss_epoch")] == [0, 1, 2]
    finally:
        stop_mlflow(server)
