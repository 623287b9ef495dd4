"""``quadra-ad-compare`` ranks training runs alone unless asked to mix in inference runs."""

import csv

from quadra_ad.cli.compare import main as compare_main
from quadra_ad.tracking.mlflow_writer import log_run


def _log(uri: str, experiment: str, name: str, task: str, auroc: float) -> None:
    tags = {"quadra_ad.model": "Padim", "quadra_ad.task": task}
    log_run(uri, experiment, name, {}, {"image_AUROC": auroc}, [], tags=tags, status="FINISHED")


def _ranked(tmp_path, uri, *args) -> list[str]:
    assert compare_main(["--tracking-uri", uri, "--output-dir", str(tmp_path / "out"), *args]) == 0
    with (tmp_path / "out" / "runs.csv").open() as handle:
        return [row["run"] for row in csv.DictReader(handle)]


def test_inference_runs_are_left_out_unless_asked_and_shown_when_alone(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _log(uri, "bottle", "trained_a", "AnomalyTrainingTask", 0.95)
    _log(uri, "bottle", "trained_b", "AnomalyTrainingTask", 0.90)
    _log(uri, "bottle", "inferred_on_new_data", "AnomalyInferenceTask", 0.99)
    _log(uri, "line_check", "inferred_alone", "AnomalyInferenceTask", 0.80)

    assert _ranked(tmp_path, uri, "-e", "bottle") == ["trained_a", "trained_b"]
    assert "(1 inference run not shown: --include-inference ranks them with the training runs)" in capsys.readouterr().out
    assert _ranked(tmp_path, uri, "-e", "bottle", "--include-inference") == ["inferred_on_new_data", "trained_a", "trained_b"]
    # nothing to mix: an experiment of inference runs only is shown as it is
    assert _ranked(tmp_path, uri, "-e", "line_check") == ["inferred_alone"]
    assert "not shown" not in capsys.readouterr().out
