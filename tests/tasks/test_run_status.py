"""Every run that got past prepare reaches MLflow with the right status, and a run whose
tracking failed can be uploaded later with quadra-ad-upload."""

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from quadra_ad.cli.upload import main as upload_main
from quadra_ad.run import run
from quadra_ad.tasks.anomaly_training import AnomalyTrainingTask
from tests.cli_runner import QUADRA_AD, quadra_ad_env, signal_mask, wait_until_training_runs
from tests.conftest import fast_overrides, training_config


def _only_run(tracking_dir):
    client = MlflowClient(tracking_uri=f"sqlite:///{tracking_dir}/mlflow.db")
    experiment = client.get_experiment_by_name("padim")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return client, runs[0]


def test_a_step_that_raises_ends_the_run_failed(segmentation_dataset, tmp_path, monkeypatch):
    def broken_test(self):
        raise RuntimeError("boom in test")

    monkeypatch.setattr(AnomalyTrainingTask, "test", broken_test)  # stands in for any crash mid-run
    cfg = training_config("base/anomaly/padim", segmentation_dataset, tmp_path, "export.types=[]")
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg, output_dir=tmp_path / "run")
    _, mlflow_run = _only_run(tmp_path)
    assert mlflow_run.info.status == "FAILED"
    assert mlflow_run.data.tags["quadra_ad.error"] == "RuntimeError: boom in test"
    assert mlflow_run.data.params["model.backbone"] == "resnet18"


def test_ctrl_c_ends_the_run_killed(segmentation_dataset, tmp_path, monkeypatch):
    def interrupted_train(self):
        raise KeyboardInterrupt  # what Ctrl-C raises in the main thread

    monkeypatch.setattr(AnomalyTrainingTask, "train", interrupted_train)
    cfg = training_config("base/anomaly/padim", segmentation_dataset, tmp_path, "export.types=[]")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, output_dir=tmp_path / "run")
    _, mlflow_run = _only_run(tmp_path)
    assert mlflow_run.info.status == "KILLED"


def test_ctrl_c_sent_to_the_command_during_training_ends_the_run_killed(segmentation_dataset, tmp_path):
    command = [*QUADRA_AD, "experiment=base/anomaly/stfpm", "trainer.max_epochs=100000", "export.types=[]",
               *fast_overrides(segmentation_dataset, tmp_path)]
    # Output to files, not pipes: a pipe nobody reads fills up and blocks the command.
    with (tmp_path / "stdout.txt").open("w") as out, (tmp_path / "stderr.txt").open("w") as err_file:
        # As typed in a shell: SIGINT at its default, whatever this test process inherited.
        process = subprocess.Popen(command, cwd=tmp_path, env=quadra_ad_env(), stdout=out, stderr=err_file,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            wait_until_training_runs(process, tmp_path)
            ignored = hex(signal_mask(process.pid, "SigIgn"))
            process.send_signal(signal.SIGINT)
            process.wait(timeout=180)
        finally:
            if process.poll() is None:
                process.kill()
    err = (tmp_path / "stderr.txt").read_text()

    assert process.returncode == 130, f"ignored signals mask {ignored}\n" + err[-3000:]
    assert err.strip().splitlines()[-1].startswith("quadra-ad: interrupted:")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("stfpm").experiment_id])
    assert mlflow_run.info.status == "KILLED"
    assert list(client.get_metric_history(mlflow_run.info.run_id, "train_loss_epoch"))  # the epochs it did run


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_down_keeps_outputs_and_the_run_uploads_later(segmentation_dataset, tmp_path, capsys):
    started = time.monotonic()
    cfg = training_config(
        "base/anomaly/padim", segmentation_dataset, None, "export.types=[torchscript]",
        f"+logger.mlflow.tracking_uri=http://127.0.0.1:{_closed_port()}", "+logger.mlflow.experiment_name=padim",
    )
    task = run(cfg, output_dir=tmp_path / "run")
    assert time.monotonic() - started < 60  # a refused connection is not retried for minutes
    assert task.tracked_run is None and (tmp_path / "run" / "deployment_model" / "model.pt").is_file()
    assert f"quadra-ad-upload {tmp_path / 'run'}" in task.tracking_error

    assert upload_main([str(tmp_path / "run"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 0
    client, mlflow_run = _only_run(tmp_path)
    assert mlflow_run.info.status == "FINISHED"
    assert f"logged MLflow run {mlflow_run.info.run_id} (FINISHED)" in capsys.readouterr().out
    assert mlflow_run.data.metrics["image_AUROC"] == pytest.approx(task.metrics["image_AUROC"])
    assert "deployment_model" in {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
    request = json.loads((tmp_path / "run" / "mlflow_run.json").read_text())
    assert request["logged_run_id"] == mlflow_run.info.run_id
    # A second upload is refused unless forced.
    assert upload_main([str(tmp_path / "run"), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db"]) == 2


def test_upload_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert upload_main([str(tmp_path)]) == 2
    assert "no mlflow_run.json" in capsys.readouterr().err


def _start_in_own_group(command, cwd, out, err):
    # Own session: the test can signal the whole process group (the command and its DataLoader
    # workers), as systemd, Docker and SLURM do.
    return subprocess.Popen(command, cwd=cwd, env=quadra_ad_env(), stdout=out, stderr=err, start_new_session=True)


def _signal_group_once_training_runs(command, tmp_path, signum) -> tuple[int, str]:
    """Start ``command`` in its own process group, send ``signum`` to the group once an epoch is
    logged; return the exit code and stderr."""
    with (tmp_path / "stdout.txt").open("w") as out, (tmp_path / "stderr.txt").open("w") as err_file:
        process = _start_in_own_group(command, tmp_path, out, err_file)
        try:
            wait_until_training_runs(process, tmp_path)
            os.killpg(process.pid, signum)
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    return process.returncode, (tmp_path / "stderr.txt").read_text()


def test_sigterm_to_the_process_group_during_training_ends_the_run_killed(segmentation_dataset, tmp_path):
    command = [*QUADRA_AD, "experiment=base/anomaly/stfpm", "trainer.max_epochs=100000", "export.types=[]",
               *fast_overrides(segmentation_dataset, tmp_path), "datamodule.num_workers=2"]
    code, err = _signal_group_once_training_runs(command, tmp_path, signal.SIGTERM)
    assert code == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == ("quadra-ad: terminated (SIGTERM): what the run wrote so far stays in its "
                                            "run folder; its MLflow run is marked KILLED")
    assert "Traceback" not in err and "MLflow tracking failed" not in err, err[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("stfpm")
    assert experiment is not None, (tmp_path / "stdout.txt").read_text()[-3000:] + err[-2000:]
    (mlflow_run,) = client.search_runs([experiment.experiment_id])
    assert mlflow_run.info.status == "KILLED"
    assert mlflow_run.data.tags["quadra_ad.error"].startswith("Terminated")


def _wait_until_sigterm_is_caught(pid: int, timeout: float = 60) -> None:
    """Until the process has its own SIGTERM handler. A fixed sleep is not enough on a loaded
    machine: a signal sent before the handler exists finds whatever disposition the process
    inherited (ignored, when the test runner ignores it)."""
    deadline = time.monotonic() + timeout
    while not signal_mask(pid, "SigCgt") & (1 << (signal.SIGTERM - 1)):
        assert time.monotonic() < deadline, "the command never installed its SIGTERM handler"
        time.sleep(0.05)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc to see the signal handler")
def test_sigterm_during_start_up_is_one_line(segmentation_dataset, tmp_path):
    command = [*QUADRA_AD, "experiment=base/anomaly/padim", *fast_overrides(segmentation_dataset, None)]
    with (tmp_path / "stdout.txt").open("w") as out, (tmp_path / "stderr.txt").open("w") as err_file:
        process = _start_in_own_group(command, tmp_path, out, err_file)
        _wait_until_sigterm_is_caught(process.pid)
        time.sleep(1.0)  # past the checks, inside the imports of torch and anomalib
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=120)
    err = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == "quadra-ad: terminated (SIGTERM) before the run started: nothing was written"
    assert "Traceback" not in err


def test_a_run_killed_without_a_word_leaves_a_record_that_uploads_as_failed(segmentation_dataset, tmp_path):
    command = [*QUADRA_AD, "experiment=base/anomaly/stfpm", "trainer.max_epochs=100000", "export.types=[]",
               *fast_overrides(segmentation_dataset, None),
               f"+logger.mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "+logger.mlflow.experiment_name=stfpm"]
    # Nothing can be done on SIGKILL: the record must already be there.
    code, err = _signal_group_once_training_runs(command, tmp_path, signal.SIGKILL)
    assert code == -signal.SIGKILL, err[-3000:]
    (run_dir,) = [p.parent for p in tmp_path.glob("outputs/stfpm/*/mlflow_run.json")]
    assert json.loads((run_dir / "mlflow_run.json").read_text())["status"] == "RUNNING"
    assert upload_main([str(run_dir)]) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("stfpm").experiment_id])
    assert mlflow_run.info.status == "FAILED"
    assert mlflow_run.data.tags["quadra_ad.error"].startswith("the run stopped without finishing")


def test_signals_wait_while_an_unfinished_run_is_logged():
    from quadra_ad.runtime.signals import signals_deferred

    # Ctrl-C arriving while the block runs takes effect when it ends, not halfway through it.
    steps = []
    with pytest.raises(KeyboardInterrupt), signals_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler has run by now, and held the signal back
        steps.append("logged")
    assert steps == ["logged"]


def test_a_dataloader_worker_killed_by_sigterm_counts_as_the_sigterm(monkeypatch):
    import sys

    from quadra_ad.runtime import signals as runtime_signals

    # torch's SIGCHLD check can raise this inside Lightning's SIGTERM handler, before ours runs:
    # the run was stopped, not broken. The bookkeeping it triggers is undone after the test.
    monkeypatch.setattr(runtime_signals, "_received", False)
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    previous_sigchld = signal.getsignal(signal.SIGCHLD)
    try:
        assert not runtime_signals.stopped_by_sigterm(RuntimeError("DataLoader worker (pid 12) exited unexpectedly"))
        assert not runtime_signals.sigterm_received()
        try:
            raise RuntimeError("DataLoader worker (pid 3365) is killed by signal: Terminated. ")
        except RuntimeError as worker_error:
            during_logging = OSError("logging failed")
            during_logging.__context__ = worker_error
        assert runtime_signals.stopped_by_sigterm(during_logging)
        assert runtime_signals.sigterm_received()
    finally:
        signal.signal(signal.SIGCHLD, previous_sigchld)


def test_a_logging_lock_left_by_an_interrupt_is_released_and_other_threads_log_again():
    import logging
    import threading

    from quadra_ad.runtime.signals import release_logging_lock_left_by_interrupt

    logging._acquireLock()  # what a Ctrl-C between logging's lock and its ``try`` leaves behind
    logged = threading.Event()
    other = threading.Thread(target=lambda: (logging.getLogger("probe").isEnabledFor(10), logged.set()), daemon=True)
    logging.getLogger("probe").manager._clear_cache()
    other.start()
    assert not logged.wait(0.5)  # the other thread waits on the leftover lock
    release_logging_lock_left_by_interrupt()
    assert logged.wait(5)


def test_stopping_system_metrics_does_not_wait_for_a_stuck_monitor_thread(tmp_path):
    import threading

    from quadra_ad.tracking.live_run import LiveRun

    class StuckMonitor:  # stands in for MLflow's monitor with its thread stuck on a lock (as seen under SIGTERM)
        _shutdown_event = threading.Event()
        _process = threading.Thread(target=threading.Event().wait, daemon=True)

        def finish(self):
            raise AssertionError("finish() joins without a limit and must not be reached")

    StuckMonitor._process.start()
    live = LiveRun.__new__(LiveRun)
    live._monitor = StuckMonitor()
    began = time.monotonic()
    live.stop_system_metrics(wait_s=0.5)
    assert time.monotonic() - began < 5 and live._monitor is None
