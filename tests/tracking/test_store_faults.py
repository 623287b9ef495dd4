"""The embedded store under faults: a store nobody can write is reported in a second, and several
processes creating a fresh ``mlflow.db`` at once all get their runs logged."""

import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from quadra_ad.tracking.mlflow_writer import log_run

WRITER = (
    "import sys\n"
    "from quadra_ad.tracking.mlflow_writer import log_run\n"
    "log_run(sys.argv[1], 'parallel', 'job_' + sys.argv[2], {'job': sys.argv[2]}, {'image_AUROC': 0.5}, [])\n"
)


def test_a_store_nobody_can_write_is_refused_in_a_second():
    # /proc takes no new files, even from root; MLflow itself retries there for about 100 s.
    started = time.monotonic()
    with pytest.raises(ConnectionError, match=r"the MLflow store '/proc/mlflow.db' cannot be written"):
        log_run("sqlite:////proc/mlflow.db", "x", "r", {}, {}, [])
    assert time.monotonic() - started < 5


def test_a_store_in_a_missing_folder_is_refused_at_once(tmp_path):
    with pytest.raises(ConnectionError, match="does not exist"):
        log_run(f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}", "x", "r", {}, {}, [])


def test_processes_creating_a_fresh_store_at_once_all_log_their_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, uri, str(i)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for i in range(3)]
    results = [(w.wait(timeout=300), w.stderr.read()) for w in writers]
    assert [code for code, _ in results] == [0, 0, 0], [err[-1500:] for _, err in results]
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("parallel").experiment_id])
    assert sorted(run.data.params["job"] for run in runs) == ["0", "1", "2"]


def test_a_metrics_log_cut_short_by_a_stop_still_gives_a_history(tmp_path):
    from quadra_ad.tracking.lightning_history import read_lightning_history

    log = tmp_path / "lightning_logs" / "version_0"
    log.mkdir(parents=True)
    # What a run stopped while Lightning wrote its CSV leaves: a last row cut in the middle.
    (log / "metrics.csv").write_text("epoch,step,train_loss_epoch,val_image_AUROC\n0,1,0.52,0.75\n1,3,0.4")
    history = read_lightning_history(tmp_path)
    assert history["train_loss_epoch"] == [(0, 0.52), (1, 0.4)] and history["val_image_AUROC"] == [(0, 0.75)]
    (log / "metrics.csv").write_text("epoch,step,train_loss_epoch\n0,1,0.52\n1,3,0.4e")
    assert read_lightning_history(tmp_path)["train_loss_epoch"] == [(0, 0.52)]


def test_a_new_store_takes_its_name_only_when_complete(tmp_path):
    """Built under another name: a process killed among MLflow's migrations leaves no broken mlflow.db."""
    from mlflow.tracking import MlflowClient

    from quadra_ad.tracking.mlflow_writer import create_embedded_store

    (tmp_path / ".mlflow.db.1.partial").write_bytes(b"half a store from a killed process")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    create_embedded_store(uri)
    assert [p.name for p in tmp_path.glob("*.partial")] == [".mlflow.db.1.partial"]
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["Default"]
    before = (tmp_path / "mlflow.db").stat().st_mtime_ns
    create_embedded_store(uri)  # an existing store is left alone
    assert (tmp_path / "mlflow.db").stat().st_mtime_ns == before
