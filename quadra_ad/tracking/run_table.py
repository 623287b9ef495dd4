"""MLflow runs → one comparison table: which run is best, with what settings, and where its model is.

Reading is separate from writing: :func:`fetch_runs` asks MLflow, :func:`build_table` turns runs
into rows of plain strings and numbers, and the ``to_*`` functions write the same rows as a
terminal table, CSV or Markdown.
"""

import csv
import difflib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from quadra_ad.errors import QuadraADError
from quadra_ad.files import atomic_path, write_text
from quadra_ad.reports.sweep_report import SWEEP_REPORT_TASK

#: Columns every run has, by the name a user types; value = how to read it from a run.
BUILTIN_COLUMNS = {
    "run": lambda run: run.info.run_name or run.info.run_id,
    "run_id": lambda run: run.info.run_id,
    "experiment": lambda run: run.data.tags.get("quadra_ad.experiment_name", ""),
    "model": lambda run: run.data.tags.get("quadra_ad.model", ""),
    "task": lambda run: _task_kind(run.data.tags.get("quadra_ad.task", "")),
    "status": lambda run: run.info.status,
    "dataset": lambda run: run.data.tags.get("quadra_ad.dataset", ""),
    "sweep": lambda run: run.data.tags.get("quadra_ad.sweep_id", ""),
    "started": lambda run: _timestamp(run.info.start_time),
    "run_folder": lambda run: run.data.tags.get("quadra_ad.run_folder", ""),
    "model_path": lambda run: run.data.tags.get("quadra_ad.model_path", ""),
}
DEFAULT_METRICS = ("image_AUROC", "image_F1", "pixel_AUROC")
#: ``quadra_ad.task`` tag of an inference run.
INFERENCE_TASK = "AnomalyInferenceTask"
#: Params that differ between runs by construction and say nothing about the settings.
_NOISY_PARAM_PARTS = (
    "_target_", "core.name", "logger.", "data_path", "model_path", "enable_progress_bar", "num_workers",
)
MAX_VARYING_PARAMS = 6


class CompareError(QuadraADError):
    """A comparison request that cannot be answered (unknown experiment, metric or column)."""


@dataclass
class RunTable:
    """Rows of one comparison, best first; ``sort_metric`` is the column they are ranked by.

    ``record_columns`` go to the CSV only, after the shown ones: what a later
    ``quadra-ad-compare --baseline runs.csv`` needs (the run's dataset, its id, every metric).
    """

    columns: list[str]
    rows: list[dict[str, object]]
    sort_metric: str
    notes: list[str] = field(default_factory=list)
    record_columns: list[str] = field(default_factory=list)

    @property
    def best(self) -> dict[str, object] | None:
        """The top finished run with the metric; a FAILED or KILLED run is never the best."""
        ranked = [row for row in self.rows if _is_number(row.get(self.sort_metric)) and row.get("status") == "FINISHED"]
        return ranked[0] if ranked else None


def fetch_runs(tracking_uri: str, experiment_names: list[str] | None, filter_string: str = "", max_runs: int = 1000,
               flag: str = "--experiment"):
    """Runs of the named experiments (all experiments with runs when None), tagged with their experiment name.

    ``flag``: the option an unknown experiment name came from, for the error message.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from quadra_ad.tracking.mlflow_writer import check_server_reachable

    check_server_reachable(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    experiments = client.search_experiments()
    by_name = {experiment.name: experiment for experiment in experiments}
    if experiment_names:
        for name in experiment_names:
            if name not in by_name:
                raise CompareError(_unknown("experiment", name, list(by_name), f"at {tracking_uri}", flag))
        chosen = [by_name[name] for name in experiment_names]
    else:
        chosen = experiments
    if not chosen:
        return []
    try:
        runs = client.search_runs(
            [experiment.experiment_id for experiment in chosen], filter_string=filter_string, max_results=max_runs
        )
    except MlflowException as error:
        first = (str(error.message).strip().splitlines() or ["invalid filter"])[0]
        raise CompareError(f"--filter '{filter_string}' is not a valid MLflow filter: {first}") from error
    names = {experiment.experiment_id: experiment.name for experiment in chosen}
    # A sweep's parent run holds its report, not a model: it is not one of the runs compared.
    runs = [run for run in runs if run.data.tags.get("quadra_ad.task") != SWEEP_REPORT_TASK]
    for run in runs:
        run.data.tags["quadra_ad.experiment_name"] = names.get(run.info.experiment_id, "")
    return runs


def without_inference_runs(runs) -> tuple[list, int]:
    """The training runs and how many inference runs were left out, where ``runs`` mix the two:
    an inference run's metric comes from other images and another threshold, so ranking it with
    training runs compares unlike things. Runs that are all inference are kept (nothing is mixed)."""
    kept = [run for run in runs if run.data.tags.get("quadra_ad.task") != INFERENCE_TASK]
    if not kept:
        return list(runs), 0
    return kept, len(runs) - len(kept)


def build_table(runs, sort_metric: str = "image_AUROC", columns: list[str] | None = None, ascending: bool = False) -> RunTable:
    """Rank ``runs`` by ``sort_metric`` (runs without it last) and pick the columns to show.

    ``columns`` entries are a built-in name (see :data:`BUILTIN_COLUMNS`), a metric name,
    ``metrics.<name>``, ``params.<key>`` or ``tags.<key>``. When None: the built-ins that
    matter, the usual metrics, and the params whose values differ between the runs.
    """
    if not runs:
        return RunTable(list(columns or []), [], sort_metric)
    metric_names = sorted({name for run in runs for name in run.data.metrics})
    if sort_metric not in metric_names:
        raise CompareError(_unknown("metric", sort_metric, metric_names, "in these runs", "--sort-by"))
    notes = []
    record_columns = []
    if columns is None:
        varying = _varying_params(runs)
        metrics = [sort_metric] + [m for m in DEFAULT_METRICS if m != sort_metric and m in metric_names]
        columns = ["run", "experiment", "model", "task", "status", *metrics, *varying, "model_path", "run_folder"]
        # A CSV chosen with --columns stays exactly as asked; the default one can serve as a baseline.
        record_columns = ["dataset", "run_id", *(m for m in metric_names if m not in metrics)]
        if varying:
            notes.append(f"params that differ between these runs: {', '.join(_header(c) for c in varying)}")
    # Rows also carry what the "best run" line and the plot need, shown or not.
    carried = ("run", "run_id", "model", "status", "model_path", "run_folder", sort_metric, *record_columns)
    wanted = [*columns, *(c for c in dict.fromkeys(carried) if c not in columns)]
    readers = {column: _reader(column, runs, metric_names) for column in wanted}
    rows = [{column: read(run) for column, read in readers.items()} for run in runs]
    ranked = sorted(rows, key=lambda row: _rank_key(row.get(sort_metric), row.get("status"), ascending))
    return RunTable(list(columns), ranked, sort_metric, notes, record_columns)


def _rank_key(value, status, ascending: bool):
    """Finished runs by the metric first, then unfinished ones (FAILED, KILLED) by the metric, then
    runs without it."""
    if not _is_number(value):
        return (2, 0.0)
    return (0 if status == "FINISHED" else 1, value if ascending else -value)


def _reader(column: str, runs, metric_names: list[str]):
    if column in BUILTIN_COLUMNS:
        return BUILTIN_COLUMNS[column]
    source, _, key = column.partition(".")
    if source == "metrics" and key:
        return lambda run: run.data.metrics.get(key)
    if source == "params" and key:
        return lambda run: run.data.params.get(key, "")
    if source == "tags" and key:
        return lambda run: run.data.tags.get(key, "")
    if column in metric_names:
        return lambda run: run.data.metrics.get(column)
    known = [*BUILTIN_COLUMNS, *metric_names]
    raise CompareError(
        _unknown("column", column, known, "", "--columns")
        + " (or name one as params.<key>, tags.<key> or metrics.<name>)"
    )


def _varying_params(runs) -> list[str]:
    """Params every run has, with more than one value among the runs (the settings being compared)."""
    if len(runs) < 2:
        return []
    shared = set(runs[0].data.params).intersection(*(run.data.params for run in runs[1:]))
    varying = [
        key for key in sorted(shared)
        if len({run.data.params[key] for run in runs}) > 1 and not any(part in key for part in _NOISY_PARAM_PARTS)
    ]
    return [f"params.{key}" for key in varying[:MAX_VARYING_PARAMS]]


def _unknown(kind: str, name: str, known: list[str], where: str, flag: str) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    if close:
        hint = f"did you mean {', '.join(repr(c) for c in close)}?"
    elif known:
        hint = f"known: {', '.join(known[:12])}{' …' if len(known) > 12 else ''}"
    else:
        hint = "there are none"
    return f"{flag} '{name}': no such {kind}{(' ' + where) if where else ''}; {hint}"


def _task_kind(task_class: str) -> str:
    return {"AnomalyTrainingTask": "training", "AnomalyInferenceTask": "inference"}.get(task_class, task_class)


def _timestamp(milliseconds: int | None) -> str:
    if not milliseconds:
        return ""
    from datetime import datetime

    return datetime.fromtimestamp(milliseconds / 1000).strftime("%Y-%m-%d %H:%M")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _header(column: str) -> str:
    return column.removeprefix("metrics.").removeprefix("tags.").removeprefix("params.")


# -- writers ---------------------------------------------------------------------------------
def to_csv(table: RunTable, path: Path) -> Path:
    """Full values (no shortening), one row per run, best first; the shown columns, then the record ones."""
    columns = [*table.columns, *table.record_columns]
    with atomic_path(path) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([_header(c) for c in columns])
        for row in table.rows:
            writer.writerow(["" if row[c] is None else row[c] for c in columns])
    return Path(path)


def to_markdown(table: RunTable, path: Path | None = None, title: str | None = None) -> str:
    """A GitHub-flavoured Markdown table (written to ``path`` when given)."""
    lines = [f"# {title}", ""] if title else []
    lines.append("| " + " | ".join(_header(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---:" if _numeric_column(table, c) else "---" for c in table.columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_cell(row[c]).replace("|", "\\|") for c in table.columns) + " |")
    text = "\n".join(lines) + "\n"
    if path is not None:
        write_text(path, text)
    return text


def to_terminal(table: RunTable, max_width: int = 80) -> str:
    """Aligned columns; paths relative to the working directory when inside it, long values
    shortened in the middle — the CSV and Markdown keep them whole."""
    cells = [[_header(c) for c in table.columns]]
    cells += [[_shorten(display_path(_cell(row[c])), max_width) for c in table.columns] for row in table.rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(table.columns))]
    out = io.StringIO()
    for index, line in enumerate(cells):
        out.write("  ".join(
            text.rjust(width) if _numeric_column(table, column) else text.ljust(width)
            for text, width, column in zip(line, widths, table.columns, strict=True)
        ).rstrip() + "\n")
        if index == 0:
            out.write("  ".join("-" * width for width in widths) + "\n")
    return out.getvalue()


def _numeric_column(table: RunTable, column: str) -> bool:
    values = [row[column] for row in table.rows if row[column] not in (None, "")]
    return bool(values) and all(_is_number(v) for v in values)


def display_path(text: str) -> str:
    """``text`` relative to the working directory when it is an absolute path inside it."""
    if not text.startswith("/"):
        return text
    try:
        return str(Path(text).relative_to(Path.cwd()))
    except ValueError:
        return text


def _shorten(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    keep = width - 1
    return text[: keep // 3] + "…" + text[-(keep - keep // 3):]
