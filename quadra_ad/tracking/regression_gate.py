"""Regression gate: did any (category, model) get worse than a baseline, or go missing?

A run's category is the name of its data folder (tag ``quadra_ad.dataset``; a category benchmark
trains one run per folder) and its model is the ``quadra_ad.model`` tag. The baseline is a
``runs.csv`` an earlier ``quadra-ad-compare`` wrote, or an MLflow experiment. On each side the
best FINISHED run of a (category, model) stands for it. :func:`load_baseline` reads the baseline,
:func:`check_metrics` refuses a request the baseline cannot answer, and :func:`compare` returns a
:class:`GateReport` whose lines name every regression, missing pair and new pair.
"""

import csv
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

from quadra_ad.tracking.run_table import BUILTIN_COLUMNS, CompareError, fetch_runs

FINISHED = "FINISHED"
#: Columns a baseline CSV must have besides the gated metrics.
KEY_COLUMNS = ("dataset", "model")
#: A float difference this small is rounding, not a drop (0.981 - 0.971 is 0.0100000000000000089).
_ROUNDING = 1e-9


@dataclass(frozen=True)
class ScoredRun:
    """One run as the gate sees it: whose it is, how it ended, what it scored."""

    category: str
    model: str
    status: str
    metrics: dict[str, float]
    run_id: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.category, self.model)


@dataclass
class Baseline:
    """The runs to compare against; ``metric_names``: every metric the baseline can answer for."""

    source: str
    runs: list[ScoredRun]
    metric_names: set[str]

    @property
    def run_ids(self) -> set[str]:
        """Runs that are the baseline itself: never checked against themselves."""
        return {run.run_id for run in self.runs if run.run_id}


@dataclass(frozen=True)
class Change:
    """A metric of one (category, model) that got worse by more than the margin."""

    key: tuple[str, str]
    metric: str
    baseline: float
    current: float
    margin: float

    def line(self) -> str:
        change = self.current - self.baseline
        return (f"regression: {_pair(self.key)} / {self.metric} {_number(self.baseline)} -> {_number(self.current)} "
                f"({'+' if change > 0 else ''}{_number(change)} > {self.margin:g})")


@dataclass
class GateReport:
    """What the gate found; it fails on any regression or missing pair, never on a new one."""

    baseline_source: str
    metrics: list[str]
    margin: float
    pairs: int
    regressions: list[Change] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.regressions or self.missing)

    def lines(self) -> list[str]:
        return ([change.line() for change in self.regressions] + [f"missing: {text}" for text in self.missing]
                + [f"new: {text}" for text in self.new])

    def summary(self, gating: bool) -> str:
        """One line: the verdict, what was found, and what was held to what."""
        scope = (f"{_count(self.pairs, 'category/model pair')} of baseline {self.baseline_source} on "
                 f"{', '.join(self.metrics)}, margin {self.margin:g}")
        found = f"{_count(len(self.regressions), 'regression')}, {len(self.missing)} missing, {len(self.new)} new"
        if not gating:
            return f"gate report (exit 0 without --fail-on-regression): {found}; {scope}"
        return f"gate {'failed' if self.failed else 'passed'}: {found}; {scope}"


def category_of(dataset: str) -> str:
    """The data folder's name: a baseline trained in another checkout still matches."""
    return dataset.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]


def scored_runs(runs) -> list[ScoredRun]:
    """MLflow runs as the gate sees them; runs without a model tag are not quadra-ad runs and are left out."""
    return [
        ScoredRun(category_of(run.data.tags.get("quadra_ad.dataset", "")), run.data.tags["quadra_ad.model"],
                  run.info.status, dict(run.data.metrics), run.info.run_id)
        for run in runs if run.data.tags.get("quadra_ad.model")
    ]


def load_baseline(spec: str, tracking_uri: str, max_runs: int = 1000) -> Baseline:
    """``spec`` is a CSV file when one exists at that path, else an experiment name in the store."""
    path = Path(spec)
    if path.is_file():
        return _baseline_from_csv(path)
    if path.suffix.lower() == ".csv":  # experiment names may hold "/", so only a .csv is surely meant as a file
        problem = "is a folder" if path.is_dir() else "no such file"
        raise CompareError(f"--baseline '{spec}': {problem}; pass the runs.csv an earlier quadra-ad-compare wrote "
                           f"(in its --output-dir) or the name of an MLflow experiment")
    try:
        runs = fetch_runs(tracking_uri, [spec], max_runs=max_runs, flag="--baseline")
    except CompareError as error:
        raise CompareError(f"{error} (or pass the path of a runs.csv written by quadra-ad-compare)") from error
    scored = scored_runs(runs)
    if not scored:
        raise CompareError(f"--baseline '{spec}': experiment has no quadra-ad runs to compare against; "
                           f"pass another experiment or a runs.csv")
    return Baseline(f"experiment '{spec}'", scored, {name for run in scored for name in run.metrics})


def _baseline_from_csv(path: Path) -> Baseline:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error) as error:
        raise CompareError(f"--baseline '{path}' is not a CSV file ({error}); pass the runs.csv quadra-ad-compare "
                           f"wrote") from error
    absent = [column for column in KEY_COLUMNS if column not in header]
    if absent:
        raise CompareError(f"--baseline '{path}' has no {', '.join(repr(c) for c in absent)} column: write it again "
                           f"with quadra-ad-compare (without --columns), or pass the baseline's experiment name")
    # A CSV has no types: numeric columns that are not built-in ones are the metrics (or params, harmlessly).
    metric_columns = [c for c in header
                      if c not in BUILTIN_COLUMNS and any(_float(row.get(c)) is not None for row in rows)]
    runs = [
        ScoredRun(category_of(row["dataset"] or ""), row["model"] or "", row.get("status") or FINISHED,
                  {c: value for c in metric_columns if (value := _float(row.get(c))) is not None},
                  row.get("run_id") or "")
        for row in rows if row.get("model")
    ]
    if not runs:
        raise CompareError(f"--baseline '{path}' has no runs with a model: pass a runs.csv that lists some")
    return Baseline(str(path), runs, set(metric_columns))


def check_metrics(baseline: Baseline, current_metric_names: set[str], metrics: list[str], flag: str,
                  rank_metric: str) -> None:
    """Every gated metric must be one the baseline has: otherwise there is nothing to hold the runs to.

    A metric the baseline has but the checked runs lack is no mistake: those pairs are reported missing.
    ``rank_metric`` (--sort-by) picks the best run of a pair and only has to be known on one side.
    """
    known = baseline.metric_names | current_metric_names
    if rank_metric not in known:
        raise CompareError(_unknown_metric("--sort-by", rank_metric, known))
    for metric in metrics:
        if metric in baseline.metric_names:
            continue
        if metric not in current_metric_names:
            raise CompareError(_unknown_metric(flag, metric, known))
        raise CompareError(f"{flag} '{metric}': baseline {baseline.source} has no values of it; gate on a metric it "
                           f"has ({', '.join(sorted(baseline.metric_names)[:12])}) or pass a baseline that logged it")


def _unknown_metric(flag: str, metric: str, known: set[str]) -> str:
    close = difflib.get_close_matches(metric, sorted(known), n=3)
    hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else f"known: {', '.join(sorted(known)[:12])}"
    return f"{flag} '{metric}': no such metric in the checked runs nor in the baseline; {hint}"


def compare(baseline: Baseline, current: list[ScoredRun], metrics: list[str], margin: float,
            rank_metric: str, ascending: bool = False) -> GateReport:
    """Hold the best FINISHED current run of each (category, model) to the baseline's best."""
    reference = best_finished(baseline.runs, rank_metric, ascending)
    candidates = best_finished(current, rank_metric, ascending)
    statuses = _statuses(current)
    report = GateReport(baseline.source, metrics, margin, len(reference))
    for key in sorted(reference):
        if key not in candidates:
            ended = ", ".join(sorted(statuses.get(key, ())))
            report.missing.append(f"{_pair(key)} ({f'no FINISHED run: {ended}' if ended else 'no run'})")
            continue
        for metric in metrics:
            before, after = reference[key].metrics.get(metric), candidates[key].metrics.get(metric)
            if before is None:
                continue  # the baseline run did not log it: nothing to hold this pair to
            if after is None:
                report.missing.append(f"{_pair(key)} / {metric} (not logged; baseline {_number(before)})")
            elif _worsened_by(before, after, ascending) > margin + _ROUNDING:
                report.regressions.append(Change(key, metric, before, after, margin))
    report.new = [_pair(key) for key in sorted(set(candidates) - set(reference))]
    return report


def best_finished(runs: list[ScoredRun], rank_metric: str, ascending: bool = False) -> dict[tuple[str, str], ScoredRun]:
    """Per (category, model), the FINISHED run ranked first by ``rank_metric`` (the one the table ranks by)."""
    best: dict[tuple[str, str], ScoredRun] = {}
    for run in runs:
        if run.status != FINISHED:
            continue
        held = best.get(run.key)
        if held is None or _rank(run, rank_metric, ascending) < _rank(held, rank_metric, ascending):
            best[run.key] = run
    return best


def parse_margin(text: str) -> float:
    """The largest drop that still passes, in the metric's own units."""
    try:
        margin = float(text)
    except ValueError:
        margin = math.nan
    if not margin >= 0:  # also refuses nan
        raise CompareError(f"--fail-on-regression '{text}': not a margin; give the largest drop that still passes as "
                           f"a number >= 0, in the metric's units (e.g. 0.01)")
    return margin


def _rank(run: ScoredRun, metric: str, ascending: bool) -> tuple[int, float]:
    value = run.metrics.get(metric)
    if value is None:
        return (1, 0.0)
    return (0, value if ascending else -value)


def _worsened_by(before: float, after: float, ascending: bool) -> float:
    return after - before if ascending else before - after


def _statuses(runs: list[ScoredRun]) -> dict[tuple[str, str], set[str]]:
    statuses: dict[tuple[str, str], set[str]] = {}
    for run in runs:
        statuses.setdefault(run.key, set()).add(run.status)
    return statuses


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return None if value is None or math.isnan(value) else value


def _pair(key: tuple[str, str]) -> str:
    category, model = key
    return f"{category or '(no dataset)'} / {model}"


def _number(value: float) -> str:
    text = f"{value:.4f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"
