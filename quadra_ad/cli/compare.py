"""``quadra-ad-compare``: which run is best, with what settings, and where is its model?

Reads runs from the MLflow store quadra-ad logged to (the embedded ``./mlflow.db`` by default,
or any server URI), ranks them by one metric and prints a table; writes the same table as CSV
and Markdown, and with ``--plot`` a bar chart of the metric per run grouped by model. Where the
selected runs mix training and inference runs, only the training runs are ranked unless
``--include-inference`` is given (an inference run's metric is on other images).

With ``--baseline`` it also holds the runs to an earlier ``runs.csv`` or experiment, per
(category = data folder name, model): ``--fail-on-regression MARGIN`` exits 1 when a metric
dropped by more than MARGIN or a baseline pair has no finished run here (a gate for CI).

Examples:
  quadra-ad-compare                                        (every run in ./mlflow.db)
  quadra-ad-compare -e digits_padim -e digits_patchcore --sort-by pixel_AUROC
  quadra-ad-compare -e sweep_2026-11-25_15-00-00 --plot    (one multirun sweep)
  quadra-ad-compare --filter "params.model.backbone = 'resnet18' and attributes.status = 'FINISHED'"
  quadra-ad-compare --columns run,model,image_AUROC,params.model.n_features,model_path
  quadra-ad-compare --tracking-uri http://127.0.0.1:5000
  quadra-ad-compare -e bottle --register bottle --alias champion   (promote the best run's model)
  quadra-ad-compare -e sweep_2026-12-07_03-00-00 --baseline baseline/runs.csv --fail-on-regression 0.01
  quadra-ad-compare -e sweep_2026-12-07_03-00-00 --baseline sweep_2026-11-30_03-00-00 \\
      --fail-on-regression 0.01 --gate-metrics image_AUROC,pixel_AUROC
                                  (exit 1 naming each category / model / metric that dropped)
"""

import argparse
import os
import sys
from pathlib import Path

from quadra_ad.errors import first_line
from quadra_ad.tracking.mlflow_writer import sqlite_database, sqlite_store_problem
from quadra_ad.tracking.regression_gate import (
    Baseline,
    check_metrics,
    compare,
    load_baseline,
    parse_margin,
    scored_runs,
)
from quadra_ad.tracking.run_table import (
    BUILTIN_COLUMNS,
    CompareError,
    build_table,
    display_path,
    fetch_runs,
    to_csv,
    to_markdown,
    to_terminal,
    without_inference_runs,
)

CSV_FILE = "runs.csv"
MARKDOWN_FILE = "runs.md"


def default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the embedded store quadra-ad writes in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="quadra-ad-compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)")
    parser.add_argument("-e", "--experiment", action="append", default=None,
                        help="experiment name (repeat for several; default: all)")
    parser.add_argument("--filter", default="", help="MLflow filter string, e.g. \"params.model.backbone = 'resnet18'\"")
    parser.add_argument("--sort-by", default="image_AUROC", help="metric to rank by (default: image_AUROC)")
    parser.add_argument("--ascending", action="store_true", help="lower is better for --sort-by")
    parser.add_argument("--columns", default=None,
                        help=f"comma-separated: {', '.join(BUILTIN_COLUMNS)}, a metric name, params.<key>, "
                             "tags.<key> (default: key columns, main metrics and the params that differ)")
    parser.add_argument("--max-runs", type=int, default=1000, help="at most this many runs (default: 1000)")
    parser.add_argument("--output-dir", type=Path, default=Path("comparison"),
                        help=f"where {CSV_FILE}, {MARKDOWN_FILE} and the plot go (default: ./comparison)")
    parser.add_argument("--plot", action="store_true", help="also write <metric>_by_model.png")
    parser.add_argument("--include-inference", action="store_true",
                        help="rank inference runs with the training runs (default: where both are selected, only the "
                             "training runs: an inference run scores other images with another threshold)")
    parser.add_argument("--register", metavar="NAME", help="register the best run's MLflow model as a new version of NAME")
    parser.add_argument("--alias", help="with --register: point this alias (e.g. champion) at the new version")
    gate = parser.add_argument_group(
        "regression gate",
        "Pairs runs by (category, model): category = the data folder's name (tag quadra_ad.dataset),\n"
        "model = tag quadra_ad.model. Where several runs share a pair on one side, the best FINISHED one\n"
        "by --sort-by stands for it. A baseline pair with no FINISHED run here, or whose run lacks a gated\n"
        "metric, is 'missing' and fails the gate like a regression; a pair new here is listed and never\n"
        "fails. Runs that are the baseline's own are not checked against it.")
    gate.add_argument("--baseline", metavar="RUNS_CSV|EXPERIMENT",
                      help=f"the {CSV_FILE} an earlier quadra-ad-compare wrote (without --columns), or an experiment "
                           "in this store (all its runs: --filter picks the checked runs only); alone it reports the changes "
                           "and exits 0")
    gate.add_argument("--fail-on-regression", metavar="MARGIN",
                      help="with --baseline: exit 1 when a metric got worse by more than MARGIN (absolute, in the "
                           "metric's units, e.g. 0.01) or a baseline pair is missing; --register then does nothing")
    gate.add_argument("--gate-metrics", metavar="METRICS",
                      help="comma-separated metrics to compare (default: --sort-by); higher is better unless "
                           "--ascending")
    return parser


def _fail(message: str) -> int:
    print(f"quadra-ad-compare: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tracking_uri = args.tracking_uri or default_tracking_uri()
    database = sqlite_database(tracking_uri)
    if database is not None and not database.is_file():
        return _fail(f"no MLflow store at {database}: run quadra-ad in this folder first, or pass --tracking-uri <uri>")
    problem = sqlite_store_problem(database) if database is not None else None
    if problem:
        return _fail(f"'{database}' {problem}: move it away (quadra-ad makes a fresh one on its next run) or pass "
                     f"--tracking-uri <uri>")
    columns = [c.strip() for c in args.columns.split(",") if c.strip()] if args.columns else None
    skipped = 0
    try:
        margin = _gate_arguments(args)
        runs = fetch_runs(tracking_uri, args.experiment, args.filter, args.max_runs)
        runs, hidden = (runs, 0) if args.include_inference else without_inference_runs(runs)
        baseline = load_baseline(args.baseline, tracking_uri, args.max_runs) if args.baseline else None
        if baseline is not None:
            runs, skipped = _without_baseline_runs(runs, baseline)
            check_metrics(baseline, _metric_names(runs), _gate_metrics(args), _gate_flag(args), args.sort_by)
        # A gated job that crashed logged no metric: the gate, not a --sort-by error, must say so.
        rankable = baseline is None or args.sort_by in _metric_names(runs)
        table = build_table(runs, args.sort_by, columns, args.ascending) if rankable else None
    except CompareError as error:
        return _fail(str(error))
    except ConnectionError as error:
        return _fail(f"{error}: start the server or fix --tracking-uri")
    except Exception as error:  # a store MLflow cannot read: one line, not its traceback
        if database is None:
            raise
        return _fail(f"'{database}' is not a readable MLflow store ({first_line(error, typed=True)}); pass "
                     f"--tracking-uri <uri> for another one")
    if baseline is None and not table.rows:
        print(f"quadra-ad-compare: no runs match at {tracking_uri}", file=sys.stderr)
        return 1
    if table is not None and table.rows:
        _show_and_write(table, args)
    elif baseline is not None:
        print(f"(no checked run at {tracking_uri} has {args.sort_by}: no table written)")
    if skipped:
        print(f"({skipped} run{'s' * (skipped != 1)} of the baseline itself not checked against it)")
    if hidden:
        print(f"({hidden} inference run{'s' * (hidden != 1)} not shown: --include-inference ranks them with the "
              f"training runs)")
    if baseline is not None and _gate_fails(baseline, runs, margin, args):
        return 1  # and registers nothing: a regressed model must not become the champion
    if args.register:
        return _register(tracking_uri, table.rows if table is not None else [], args.register, args.alias)
    return 0


def _show_and_write(table, args) -> None:
    print(to_terminal(table), end="")
    for note in table.notes:
        print(f"({note})")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    markdown = args.output_dir / MARKDOWN_FILE
    to_markdown(table, markdown, title=f"Runs ranked by {table.sort_metric}")
    written = [to_csv(table, args.output_dir / CSV_FILE), markdown]
    if args.plot:
        written.append(_plot(table, args.output_dir))
    best = table.best
    if best is not None:
        where = display_path(str(best.get("model_path") or best.get("run_folder") or ""))
        print(f"best by {table.sort_metric}: {best.get('run', '')} = {best[table.sort_metric]:.4f}"
              + (f"  {where}" if where else ""))
    print("wrote " + ", ".join(str(path) for path in written if path is not None))


def _gate_fails(baseline: Baseline, runs, margin: float | None, args) -> bool:
    """Print what changed against the baseline; True when that fails the gate (only with a margin)."""
    report = compare(baseline, scored_runs(runs), _gate_metrics(args), margin or 0.0, args.sort_by, args.ascending)
    for line in report.lines():
        print(line)
    print(report.summary(gating=margin is not None))
    return margin is not None and report.failed


def _gate_arguments(args) -> float | None:
    """The margin when gating, None when not; refuses gate flags that cannot work as given."""
    written = args.output_dir / CSV_FILE
    if args.baseline and Path(args.baseline).is_file() and Path(args.baseline).resolve() == written.resolve():
        # Overwriting it would make this week's runs, regressed or not, next week's baseline.
        raise CompareError(f"--baseline '{args.baseline}' is the {CSV_FILE} this run writes: keep the baseline "
                           f"elsewhere (copy it) or pass another --output-dir")
    if args.fail_on_regression is None:
        return None
    if not args.baseline:
        raise CompareError(f"--fail-on-regression {args.fail_on_regression}: needs --baseline {CSV_FILE}|EXPERIMENT "
                           f"to compare against")
    return parse_margin(args.fail_on_regression)


def _gate_metrics(args) -> list[str]:
    if not args.gate_metrics:
        return [args.sort_by]
    return list(dict.fromkeys(m.strip() for m in args.gate_metrics.split(",") if m.strip())) or [args.sort_by]


def _gate_flag(args) -> str:
    return "--gate-metrics" if args.gate_metrics else "--sort-by"


def _metric_names(runs) -> set[str]:
    return {name for run in runs for name in run.data.metrics}


def _without_baseline_runs(runs, baseline: Baseline):
    """The checked runs minus the baseline's own: with every experiment selected (the default) a store holding
    last week's runs would otherwise hold them to themselves, and the gate could never fail."""
    own = baseline.run_ids
    kept = [run for run in runs if run.info.run_id not in own]
    return kept, len(runs) - len(kept)


def _register(tracking_uri: str, rows: list[dict], name: str, alias: str | None) -> int:
    """A new version of ``name`` from the logged model of the best finished run that has one (inference
    runs log none), and the alias on it."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    for row in rows:
        if row.get("status") != "FINISHED":
            continue
        run = client.get_run(row["run_id"])
        models = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                             filter_string=f"source_run_id = '{run.info.run_id}'")
        if models:
            break
    else:
        return _fail(f"--register {name}: no finished run here logged an MLflow model (training runs log one "
                     f"unless logger.mlflow.log_model=false)")
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name)
    # The model's own location as source: a models:/ URI would be resolved against the default store.
    version = client.create_model_version(name, source=models[0].artifact_location, run_id=run.info.run_id,
                                          model_id=models[0].model_id)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    print(f"registered {row.get('run', '')} as models:/{name}/{version.version}"
          + (f" (models:/{name}@{alias})" if alias else ""))
    return 0


def _plot(table, output_dir: Path) -> Path | None:
    from quadra_ad.reports.plots import plot_metric_by_model

    metric = table.sort_metric
    bars = [(str(row.get("run", "")), str(row.get("model") or "?"), row[metric])
            for row in table.rows if isinstance(row.get(metric), (int, float))]
    if not bars:
        return None
    return plot_metric_by_model(bars, metric, output_dir / f"{metric}_by_model.png")


if __name__ == "__main__":
    sys.exit(main())
