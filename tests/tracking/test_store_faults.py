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


def test_new_stores_are_copied_from_an_empty_one_kept_per_mlflow_version(tmp_path, monkeypatch):
    """The schema migrations run once per MLflow version; each new store is a copy that MLflow
    opens and writes like one it built (Default experiment's artifacts in ./mlruns of the cwd)."""
    from mlflow.tracking import MlflowClient

    from quadra_ad.tracking.mlflow_writer import _store_template, create_embedded_store, log_run

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    template = _store_template()
    assert not template.exists()
    (tmp_path / "a").mkdir()
    create_embedded_store(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}")
    assert template.is_file()  # built by migrations the first time, then kept

    monkeypatch.chdir(tmp_path)
    (tmp_path / "b").mkdir()
    uri = f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    tracked = log_run(uri, "copied", None, {"p": "1"}, {"m": 0.5}, [])
    client = MlflowClient(uri)
    assert client.get_run(tracked.run_id).data.metrics == {"m": 0.5}
    assert client.get_experiment("0").artifact_location == str(tmp_path / "mlruns" / "0")

    template.write_bytes(b"damaged")  # a damaged template is not used: the store is built
    (tmp_path / "c").mkdir()
    create_embedded_store(f"sqlite:///{tmp_path / 'c' / 'mlflow.db'}")
    assert [e.name for e in MlflowClient(f"sqlite:///{tmp_path / 'c' / 'mlflow.db'}").search_experiments()] == ["Default"]
