"""``quadra-ad-compare --baseline … --fail-on-regression``: the weekly CI gate, on a real embedded MLflow store.

One store per module: last week's category benchmark (experiment ``week_1``) and the ``runs.csv``
quadra-ad-compare wrote for it; each test logs its own week of runs next to it (no training).
"""

import csv
from pathlib import Path

import pytest

from quadra_ad.cli.compare import main as compare_main
from quadra_ad.tracking.mlflow_writer import log_run
from quadra_ad.tracking.regression_gate import Baseline, ScoredRun, compare

#: Last week: bottle/Padim's best FINISHED run scored 0.981; a better FAILED one and a worse one must not count.
WEEK_1 = [
    ("bottle", "Padim", {"image_AUROC": 0.981, "pixel_AUROC": 0.97, "image_AP": 0.99}, "FINISHED"),
    ("bottle", "Padim", {"image_AUROC": 0.95, "pixel_AUROC": 0.90}, "FINISHED"),
    ("bottle", "Padim", {"image_AUROC": 1.0}, "FAILED"),
    ("bottle", "Patchcore", {"image_AUROC": 0.99, "pixel_AUROC": 0.98}, "FINISHED"),
    ("screw", "Padim", {"image_AUROC": 0.80, "pixel_AUROC": 0.90}, "FINISHED"),
]
#: This week, as good as last week: the starting point each test changes one thing in.
SAME = {
    ("bottle", "Padim"): {"image_AUROC": 0.981, "pixel_AUROC": 0.97},
    ("bottle", "Patchcore"): {"image_AUROC": 0.99, "pixel_AUROC": 0.98},
    ("screw", "Padim"): {"image_AUROC": 0.80, "pixel_AUROC": 0.90},
}


def _log(uri: str, experiment: str, category: str, model: str, metrics: dict, status: str = "FINISHED",
         data_root: str = "/data/mvtec"):
    tags = {"quadra_ad.model": model, "quadra_ad.task": "AnomalyTrainingTask",
            "quadra_ad.dataset": f"{data_root}/{category}"}
    log_run(uri, experiment, f"{category}_{model}", {}, metrics, [], tags=tags, status=status)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    uri = f"sqlite:///{tmp_path_factory.mktemp('gate') / 'mlflow.db'}"
    for category, model, metrics, status in WEEK_1:
        _log(uri, "week_1", category, model, metrics, status)
    return uri


@pytest.fixture(scope="module")
def baseline_csv(store, tmp_path_factory) -> Path:
    """Last week's runs.csv, written by quadra-ad-compare itself."""
    out = tmp_path_factory.mktemp("week_1_comparison")
    assert compare_main(["--tracking-uri", store, "-e", "week_1", "--output-dir", str(out)]) == 0
    return out / "runs.csv"


@pytest.fixture
def this_week(store, request):
    """Logs this week's runs in an experiment named after the test and returns its name: SAME with ``changes``,
    without the ``drop`` pairs, the ``failed`` ones FAILED without metrics.

    Trained in another checkout: the data folders have the same names, not the same paths.
    """
    def log_week(changes: dict | None = None, drop=(), failed=()) -> str:
        name = request.node.name
        for key, metrics in {**SAME, **(changes or {})}.items():
            if key in drop:
                continue
            status = "FAILED" if key in failed else "FINISHED"
            _log(store, name, *key, {} if key in failed else metrics, status, data_root="/ci/workspace/datasets")
        return name

    return log_week


def _gate(store, tmp_path, experiment, baseline, *args):
    return compare_main(["--tracking-uri", store, "-e", experiment, "--output-dir", str(tmp_path / "out"),
                         "--baseline", str(baseline), *args])


def _lines(capsys, prefix: str) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith(prefix)]


@pytest.fixture(params=["csv", "experiment"])
def baseline(request, baseline_csv):
    return baseline_csv if request.param == "csv" else "week_1"


def test_the_default_csv_keeps_what_a_later_gate_needs(baseline_csv):
    with baseline_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    # Shown columns first, as before; the dataset, run id and every other metric after them.
    assert list(rows[0])[:5] == ["run", "experiment", "model", "task", "status"]
    assert list(rows[0])[-3:] == ["dataset", "run_id", "image_AP"]
    assert {row["dataset"] for row in rows} == {"/data/mvtec/bottle", "/data/mvtec/screw"}


def test_no_regression_passes_with_one_summary_line(store, this_week, tmp_path, capsys, baseline):
    week = this_week({("screw", "Padim"): {"image_AUROC": 0.85, "pixel_AUROC": 0.91}})
    assert _gate(store, tmp_path, week, baseline, "--fail-on-regression", "0.01") == 0
    out = capsys.readouterr().out
    assert "regression:" not in out and "missing:" not in out
    assert out.splitlines()[-1].startswith("gate passed: 0 regressions, 0 missing, 0 new; 3 category/model pairs")


def test_a_drop_beyond_the_margin_fails_naming_category_model_and_metric(store, this_week, tmp_path, capsys, baseline):
    week = this_week({("bottle", "Padim"): {"image_AUROC": 0.962, "pixel_AUROC": 0.97}})
    assert _gate(store, tmp_path, week, baseline, "--fail-on-regression", "0.01") == 1
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith("regression:")] == [
        "regression: bottle / Padim / image_AUROC 0.981 -> 0.962 (-0.019 > 0.01)"]
    assert out[-1].startswith("gate failed: 1 regression, 0 missing, 0 new; 3 category/model pairs of baseline ")


def test_a_drop_within_the_margin_passes(store, this_week, tmp_path, capsys, baseline_csv):
    # 0.981 - 0.971 is 0.0100000000000000089 in floats: exactly the margin, so it passes.
    week = this_week({("bottle", "Padim"): {"image_AUROC": 0.971, "pixel_AUROC": 0.97}})
    assert _gate(store, tmp_path, week, baseline_csv, "--fail-on-regression", "0.01") == 0
    assert _lines(capsys, "gate passed")


def test_a_missing_or_failed_pair_fails_the_gate(store, this_week, tmp_path, capsys, baseline):
    week = this_week(drop=[("screw", "Padim")],
                 failed=[("bottle", "Patchcore")])
    assert _gate(store, tmp_path, week, baseline, "--fail-on-regression", "0.01") == 1
    assert _lines(capsys, "missing:") == ["missing: bottle / Patchcore (no FINISHED run: FAILED)",
                                          "missing: screw / Padim (no run)"]


def test_a_week_where_every_job_crashed_is_a_gate_failure_not_a_usage_error(store, this_week, tmp_path, capsys,
                                                                            baseline_csv):
    week = this_week(failed=list(SAME))
    assert _gate(store, tmp_path, week, baseline_csv, "--fail-on-regression", "0.01") == 1
    out = capsys.readouterr().out
    assert "(no checked run at sqlite:///" in out and out.count("missing: ") == 3


def test_a_new_pair_is_listed_and_does_not_fail(store, this_week, tmp_path, capsys, baseline_csv):
    week = this_week({("carpet", "Padim"): {"image_AUROC": 0.5, "pixel_AUROC": 0.5}})
    assert _gate(store, tmp_path, week, baseline_csv, "--fail-on-regression", "0.01") == 0
    assert _lines(capsys, "new:") == ["new: carpet / Padim"]


def test_gate_metrics_compare_each_metric_and_a_metric_not_logged_is_missing(store, this_week, tmp_path, capsys,
                                                                             baseline):
    week = this_week({
        ("bottle", "Patchcore"): {"image_AUROC": 0.99, "pixel_AUROC": 0.90},
        ("screw", "Padim"): {"image_AUROC": 0.80},
    })
    args = ("--fail-on-regression", "0.01", "--gate-metrics", "image_AUROC,pixel_AUROC")
    assert _gate(store, tmp_path, week, baseline, *args) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line for line in out if line.startswith(("regression:", "missing:"))] == [
        "regression: bottle / Patchcore / pixel_AUROC 0.98 -> 0.9 (-0.08 > 0.01)",
        "missing: screw / Padim / pixel_AUROC (not logged; baseline 0.9)",
    ]


def test_baseline_alone_reports_and_exits_0(store, this_week, tmp_path, capsys, baseline_csv):
    week = this_week({("bottle", "Padim"): {"image_AUROC": 0.962}})
    assert _gate(store, tmp_path, week, baseline_csv) == 0
    out = capsys.readouterr().out.splitlines()
    assert "regression: bottle / Padim / image_AUROC 0.981 -> 0.962 (-0.019 > 0)" in out
    assert out[-1].startswith("gate report (exit 0 without --fail-on-regression): 1 regression")


def test_the_baseline_runs_are_not_held_to_themselves(store, this_week, tmp_path, capsys, baseline_csv):
    # Both weeks selected: last week's better bottle/Padim run must not stand in for this week's.
    week = this_week({("bottle", "Padim"): {"image_AUROC": 0.962}})
    args = ["--tracking-uri", store, "-e", "week_1", "-e", week, "--output-dir", str(tmp_path / "out"),
            "--baseline", str(baseline_csv), "--fail-on-regression", "0.01"]
    assert compare_main(args) == 1
    out = capsys.readouterr().out
    assert "(5 runs of the baseline itself not checked against it)" in out
    assert "regression: bottle / Padim / image_AUROC 0.981 -> 0.962" in out


def test_lower_is_better_with_ascending():
    baseline = Baseline("runs.csv", [ScoredRun("bottle", "Padim", "FINISHED", {"loss": 0.10})], {"loss"})
    current = [ScoredRun("bottle", "Padim", "FINISHED", {"loss": 0.13})]
    report = compare(baseline, current, ["loss"], 0.01, "loss", ascending=True)
    assert [change.line() for change in report.regressions] == [
        "regression: bottle / Padim / loss 0.1 -> 0.13 (+0.03 > 0.01)"]


@pytest.fixture
def csv_without_dataset(store, tmp_path) -> Path:
    """A runs.csv written with --columns (as an older quadra-ad-compare wrote every CSV): no dataset column."""
    out = tmp_path / "old"
    assert compare_main(["--tracking-uri", store, "-e", "week_1", "--output-dir", str(out),
                         "--columns", "run,model,status,image_AUROC"]) == 0
    return out / "runs.csv"


@pytest.mark.parametrize(("args", "message"), [
    (["--baseline", "nowhere/runs.csv", "--fail-on-regression", "0.01"],
     "--baseline 'nowhere/runs.csv': no such file; pass the runs.csv an earlier quadra-ad-compare wrote"),
    (["--baseline", "week_l", "--fail-on-regression", "0.01"],
     "--baseline 'week_l': no such experiment at sqlite:///"),
    (["--baseline", "{old_csv}", "--fail-on-regression", "0.01"],
     "has no 'dataset' column: write it again with quadra-ad-compare (without --columns)"),
    (["--baseline", "week_1", "--fail-on-regression", "-0.01"],
     "--fail-on-regression '-0.01': not a margin; give the largest drop that still passes as a number >= 0"),
    (["--baseline", "week_1", "--fail-on-regression", "one percent"],
     "--fail-on-regression 'one percent': not a margin"),
    (["--fail-on-regression", "0.01"], "--fail-on-regression 0.01: needs --baseline runs.csv|EXPERIMENT"),
    (["--baseline", "week_1", "--gate-metrics", "image_AUROC,pixel_AUROCC"],
     "--gate-metrics 'pixel_AUROCC': no such metric in the checked runs nor in the baseline; did you mean "
     "'pixel_AUROC'"),
    (["--baseline", "week_1", "--sort-by", "image_AUROCC"], "--sort-by 'image_AUROCC': no such metric"),
])
def test_user_mistakes_get_one_line_and_exit_2(store, tmp_path, capsys, csv_without_dataset, args, message):
    args = [arg.replace("{old_csv}", str(csv_without_dataset)) for arg in args]
    assert compare_main(["--tracking-uri", store, "-e", "week_1", "--output-dir", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("quadra-ad-compare: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_the_baseline_csv_is_never_overwritten_by_the_run_it_gates(store, baseline_csv, capsys):
    args = ["--tracking-uri", store, "-e", "week_1", "--output-dir", str(baseline_csv.parent),
            "--baseline", str(baseline_csv), "--fail-on-regression", "0.01"]
    before = baseline_csv.read_text()
    assert compare_main(args) == 2
    assert "is the runs.csv this run writes: keep the baseline elsewhere" in capsys.readouterr().err
    assert baseline_csv.read_text() == before

