"""Sweeps through real launchers (joblib, submitit's local executor, a local Ray), the Optuna
sweeper, and a category benchmark: every job logged to one fresh ``./mlflow.db``, one sweep
report and an MLflow parent run over the jobs, failed jobs listed."""

import csv
import importlib.util
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from quadra_ad.checks.command_line import PLUGINS, check_plugins, expand_category_patterns
from quadra_ad.errors import ConfigError, DatasetError
from quadra_ad.testing.synthetic import write_synthetic_dataset
from tests.cli_runner import quadra_ad

#: Two digits PaDiM jobs of a few seconds each.
TWO_JOBS = ("-m", "experiment=generic/digits/anomaly/padim", "model.n_features=5,10", "++datamodule.limit_data=16",
            "transforms.input_size=[32,32]", "export.types=[onnx]", "trainer.enable_progress_bar=false")


def _sweep_folder(cwd: Path) -> Path:
    (folder,) = (cwd / "outputs" / "multirun").iterdir()
    return folder


def _report_rows(cwd: Path) -> list[dict]:
    with (_sweep_folder(cwd) / "report" / "sweep_report.csv").open() as handle:
        return list(csv.DictReader(handle))


def _assert_two_jobs_logged_under_one_parent(cwd: Path) -> None:
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("sweep_")]
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("quadra_ad.task") == "SweepReport"]
    jobs = [run for run in runs if run is not parent]
    assert sorted(run.data.params["model.n_features"] for run in jobs) == ["10", "5"]
    assert {run.info.status for run in jobs} == {"FINISHED"}
    assert {run.data.tags["mlflow.parentRunId"] for run in jobs} == {parent.info.run_id}
    rows = _report_rows(cwd)
    assert [row["status"] for row in rows] == ["FINISHED", "FINISHED"]
    assert all(float(row["fit_s"]) > 0 and float(row["peak_rss_mb"]) > 100 for row in rows)


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_two_job_sweep_runs_through_the_launcher_and_every_job_is_logged(launcher, tmp_path):
    result = quadra_ad(*TWO_JOBS, f"hydra/launcher={launcher}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_two_jobs_logged_under_one_parent(tmp_path)
    assert "quadra-ad: best job by image_AUROC: job " in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None, reason="hydra-ray-launcher")
def test_a_two_job_sweep_runs_on_a_local_ray(tmp_path):
    result = quadra_ad(*TWO_JOBS, "hydra/launcher=ray", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_two_jobs_logged_under_one_parent(tmp_path)


@pytest.mark.slow
def test_optuna_search_prints_the_best_trial_which_compare_finds(tmp_path, capsys):
    from quadra_ad.cli.compare import main as compare_main

    result = quadra_ad("-m", "experiment=hpo/padim", "hydra.sweeper.n_trials=3", "++datamodule.limit_data=16",
                       "export.types=[onnx]", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (best_line,) = [line for line in result.stderr.splitlines() if line.startswith("quadra-ad: best job by image_AUROC")]
    rows = [row for row in _report_rows(tmp_path) if row["status"] == "FINISHED"]
    assert len(rows) == 3
    best = max(rows, key=lambda row: float(row["image_AUROC"]))
    assert f"= {float(best['image_AUROC']):.4f}" in best_line and str(tmp_path) in best_line
    capsys.readouterr()
    assert compare_main(["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--output-dir", str(tmp_path / "cmp")]) == 0
    assert f"= {float(best['image_AUROC']):.4f}" in capsys.readouterr().out


def _categories(root: Path, broken: str | None = None) -> Path:
    for seed, name in enumerate(["bottle", "cable", "screw"]):
        write_synthetic_dataset(root / name, n_train=4, n_test_good=2, n_test_defect=2, size=32, seed=seed)
    if broken:  # a category without training images: its job fails, the others run
        for image in (root / broken / "train" / "good").iterdir():
            image.unlink()
    return root


def test_a_category_benchmark_is_one_command_and_reports_a_failed_category(tmp_path):
    root = _categories(tmp_path / "mvtec", broken="cable")
    result = quadra_ad("-m", "experiment=base/anomaly/padim", f"datamodule.data_path={root}", "datamodule.category=*",
                       "backbone.pre_trained=false", "transforms.input_size=[32,32]", "export.types=[onnx]",
                       "trainer.enable_progress_bar=false", "datamodule.num_workers=0", "hydra/launcher=joblib",
                       cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]  # the failed job was a data mistake
    rows = {row["category"]: row for row in _report_rows(tmp_path)}
    assert set(rows) == {"bottle", "cable", "screw"}
    assert rows["cable"]["status"] == "FAILED" and "holds no images" in rows["cable"]["error"]
    assert rows["bottle"]["status"] == rows["screw"]["status"] == "FINISHED"
    report = (_sweep_folder(tmp_path) / "report" / "sweep_report.md").read_text()
    assert "| Padim | 2 | 1 |" in report and "## Failed jobs" in report
    assert (_sweep_folder(tmp_path) / "report" / "image_AUROC_by_category.png").stat().st_size > 0
    (summary,) = [line for line in result.stderr.splitlines() if line.startswith("quadra-ad: failed: ")]
    assert "datamodule.category=cable" in summary
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name.startswith("sweep_")]
    (parent,) = client.search_runs([experiment.experiment_id], "tags.quadra_ad.task = 'SweepReport'")
    cable_job = next(row["job"] for row in _report_rows(tmp_path) if row["category"] == "cable")
    assert parent.info.status == "FAILED" and parent.data.tags["quadra_ad.failed_jobs"] == cable_job


def test_category_patterns_expand_to_the_category_folders(tmp_path):
    root = _categories(tmp_path / "mvtec")
    (tmp_path / "mvtec" / "notes").mkdir()  # no train/good: not a category
    args = ["-m", f"datamodule.data_path={root}", "datamodule.category=*"]
    assert expand_category_patterns(args)[-1] == "datamodule.category=bottle,cable,screw"
    assert expand_category_patterns([*args[:2], "datamodule.category=[bs]*"])[-1] == "datamodule.category=bottle,screw"
    assert expand_category_patterns([*args[:2], "datamodule.category=cable"])[-1] == "datamodule.category=cable"


@pytest.mark.parametrize(("args", "message"), [
    (["-m", "datamodule.category=*"], "datamodule.category=* needs datamodule.data_path=<folder of categories>"),
    (["-m", "datamodule.data_path={root}", "datamodule.category=z*"], "datamodule.category=z*: no category folder"),
    (["datamodule.data_path={root}", "datamodule.category=*"], "datamodule.category=* matches 3 categories (bottle, cable, screw): add -m"),
])
def test_category_pattern_mistakes_are_one_line(tmp_path, args, message):
    root = _categories(tmp_path / "mvtec")
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")):
        expand_category_patterns([arg.format(root=root) for arg in args])


def test_an_unknown_category_names_the_ones_there(tmp_path):
    from quadra_ad.datamodules.layout import category_folder

    root = _categories(tmp_path / "mvtec")
    with pytest.raises(DatasetError, match=r"^datamodule.category 'bottel': no folder .* \(categories there: bottle, cable, screw\)$"):
        category_folder(root, "bottel")
    result = quadra_ad("experiment=base/anomaly/padim", f"datamodule.data_path={root}", "datamodule.category=bottel",
                       cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().endswith("(categories there: bottle, cable, screw)")


def test_a_launcher_whose_plugin_is_missing_is_one_line(monkeypatch):
    # The plugins are installed here: point one choice at a module that does not exist.
    monkeypatch.setitem(PLUGINS, "hydra/launcher=joblib", ("hydra_plugins.not_installed_launcher", "hydra-joblib-launcher"))
    with pytest.raises(ConfigError, match=r"^hydra/launcher=joblib needs hydra-joblib-launcher, which is not installed: "
                                          r"pip install 'quadra_ad\[scale\]'$"):
        check_plugins(["-m", "hydra/launcher=joblib"])


@pytest.mark.parametrize(("launcher", "expected"), [
    ("joblib", ["n_jobs: 2"]),
    ("submitit_slurm", ["cpus_per_task: 8", "gpus_per_node: 1", "mem_gb: 32", "timeout_min: 240", "name: ${core.name}"]),
    ("submitit_local", ["timeout_min: 60", "name: ${core.name}"]),
])
def test_launcher_presets_are_the_plugins_configs_with_our_defaults(tmp_path, launcher, expected):
    result = quadra_ad("experiment=generic/digits/anomaly/padim", f"hydra/launcher={launcher}", "--cfg", "hydra",
                       cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    launcher_block = result.stdout.split("launcher:", 1)[1].split("sweeper:", 1)[0]
    assert all(line in launcher_block for line in expected), launcher_block
    assert "is validated against ConfigStore schema" not in result.stderr
