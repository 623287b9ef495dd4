"""The run record is one typed thing: what a run writes is what an upload reads back, and records
written by earlier versions (fewer keys) still read."""

import json

import pytest

from quadra_ad.tracking.run_record import RECORD_FILE, DamagedRecord, ModelToLog, RefusedRecord, RunRecord


def _record(**changes) -> RunRecord:
    return RunRecord(tracking_uri="sqlite:///mlflow.db", experiment_name="padim", params={"model": "padim"},
                     metrics={"image_AUROC": 0.9}, artifacts=("metrics.json",), tags={"quadra_ad.task": "t"},
                     **changes)


def test_a_record_reads_back_as_it_was_written(tmp_path):
    (tmp_path / "deployment_model").mkdir()
    written = _record(run_name="padim_run", metric_history={"loss": [(0, 1.0), (1, 0.5)]}, status="FAILED",
                      model=ModelToLog("deployment_model", "bottle"), live_run_id="abc", logged_run_id="def")
    written.write(tmp_path / RECORD_FILE)
    assert RunRecord.from_file(tmp_path / RECORD_FILE) == written


def test_a_record_of_an_earlier_version_reads_with_defaults(tmp_path):
    """Before run names, models, histories, statuses and live runs were written."""
    (tmp_path / RECORD_FILE).write_text(json.dumps({
        "tracking_uri": "sqlite:///mlflow.db", "experiment_name": "padim", "params": {}, "metrics": {},
        "artifacts": [], "tags": {}}))
    record = RunRecord.from_file(tmp_path / RECORD_FILE)
    assert (record.run_name, record.model, record.metric_history, record.status, record.live_run_id,
            record.logged_run_id) == (None, None, {}, "FINISHED", None, None)


def test_log_it_elsewhere_replaces_where_and_under_which_name(tmp_path):
    _record().write(tmp_path / RECORD_FILE)
    record = RunRecord.from_file(tmp_path / RECORD_FILE, tracking_uri="http://server:5000", experiment_name="x")
    assert (record.tracking_uri, record.experiment_name) == ("http://server:5000", "x")


def test_a_record_without_a_key_every_version_wrote_is_damaged(tmp_path):
    (tmp_path / RECORD_FILE).write_text(json.dumps({"tracking_uri": "sqlite:///mlflow.db"}))
    with pytest.raises(DamagedRecord, match="no experiment_name, params, metrics, artifacts, tags") as error:
        RunRecord.from_file(tmp_path / RECORD_FILE)
    assert not isinstance(error.value, RefusedRecord)


def test_a_logged_run_id_that_is_not_text_is_refused(tmp_path):
    (tmp_path / RECORD_FILE).write_text(json.dumps({**json.loads(_record().to_json()), "logged_run_id": 3}))
    with pytest.raises(RefusedRecord, match="logged_run_id is 3, not a text or null"):
        RunRecord.from_file(tmp_path / RECORD_FILE)
