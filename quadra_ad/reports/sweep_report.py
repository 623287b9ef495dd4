"""One report for a whole sweep: per job (category × model × settings) metrics, fit time, peak
memory and status; mean ± std per model; CSV, Markdown and a plot in ``<sweep folder>/report/``.

Read from the job folders the jobs wrote (``metrics.json``, ``timings.json``, ``FAILED.txt``,
``config_resolved.yaml``), so it works whichever launcher ran them and wherever they ran.
"""

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from quadra_ad.files import atomic_path, write_text

REPORT_DIR = "report"
REPORT_CSV = "sweep_report.csv"
REPORT_MD = "sweep_report.md"
FAILED_MARKER = "FAILED.txt"
#: ``quadra_ad.task`` tag of a sweep's parent run: it holds the report, it is not a run to compare.
SWEEP_REPORT_TASK = "SweepReport"
_MISTAKE, _CRASH = "quadra-ad: error: ", "quadra-ad: crashed: "


def mark_job_failed(folder: str | Path, line: str, mistake: bool) -> None:
    """Leave ``FAILED.txt`` in a job's folder: the line, and whether it was a user mistake or a crash."""
    write_text(Path(folder) / FAILED_MARKER, f"{_MISTAKE if mistake else _CRASH}{line}\n")
REPORTED_METRICS = ("image_AUROC", "image_F1", "pixel_AUROC", "pixel_AUPRO")


@dataclass
class JobResult:
    """What one job of the sweep left in its folder."""

    job: str
    folder: Path
    category: str
    model: str
    overrides: str
    status: str  # FINISHED, FAILED, or MISSING (no output: killed before it wrote anything)
    error: str = ""
    #: The job stopped on a user mistake (not a crash, not missing).
    mistake: bool = False
    metrics: dict[str, float] = field(default_factory=dict)
    fit_s: float | None = None
    peak_rss_mb: float | None = None
    run_id: str | None = None
    tracking_uri: str | None = None
    experiment_name: str | None = None

    @property
    def label(self) -> str:
        """``job <n> (<its overrides>)``, as Hydra numbers and lists jobs."""
        return f"job {_job_number(self.folder)[0]} ({self.overrides})"


def collect_jobs(sweep_dir: Path) -> list[JobResult]:
    """Every job folder of the sweep (those Hydra made: ``.hydra/`` inside), in job order."""
    folders = [p for p in Path(sweep_dir).iterdir() if (p / ".hydra").is_dir()]
    return [_read_job(folder) for folder in sorted(folders, key=_job_number)]


def _job_number(folder: Path) -> tuple[int, str]:
    head = folder.name.split("_", 1)[0]
    return (int(head) if head.isdigit() else 1 << 30, folder.name)


def _read_job(folder: Path) -> JobResult:
    config = _read_yaml(folder / "config_resolved.yaml") or _read_yaml(folder / ".hydra" / "config.yaml") or {}
    overrides = _read_yaml(folder / ".hydra" / "overrides.yaml") or []
    datamodule = config.get("datamodule") or {}
    category = datamodule.get("category") or Path(str(datamodule.get("data_path") or "")).name
    model = str((config.get("model") or {}).get("_target_", "")).rsplit(".", 1)[-1]
    metrics = _read_json(folder / "metrics.json") or {}
    timings = _read_json(folder / "timings.json") or {}
    tracked = _read_json(folder / "mlflow_run.json") or {}
    failed = folder / FAILED_MARKER
    status = "FAILED" if failed.is_file() else ("FINISHED" if metrics else "MISSING")
    mark = failed.read_text(encoding="utf-8").strip().splitlines()[0] if failed.is_file() else ""
    return JobResult(
        job=folder.name,
        folder=folder,
        category=str(category),
        model=model,
        overrides=" ".join(str(o) for o in overrides),
        status=status,
        error=mark.removeprefix(_MISTAKE).removeprefix(_CRASH),
        mistake=mark.startswith(_MISTAKE),
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)},
        fit_s=timings.get("train"),
        peak_rss_mb=timings.get("peak_rss_mb"),
        run_id=tracked.get("logged_run_id"),
        tracking_uri=tracked.get("tracking_uri"),
        experiment_name=tracked.get("experiment_name"),
    )


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path):
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None


def best_job(jobs: list[JobResult], metric: str, maximize: bool = True) -> JobResult | None:
    """The finished job with the best finite ``metric``; None when no job has it."""
    scored = [job for job in jobs if job.status == "FINISHED" and math.isfinite(job.metrics.get(metric, math.nan))]
    if not scored:
        return None
    return (max if maximize else min)(scored, key=lambda job: job.metrics[metric])


def model_summary(jobs: list[JobResult], metrics: tuple[str, ...]) -> list[dict[str, object]]:
    """Per model: finished jobs, failed jobs, and mean ± std (over its finished jobs) of each metric."""
    rows = []
    for model in sorted({job.model for job in jobs}):
        mine = [job for job in jobs if job.model == model]
        done = [job for job in mine if job.status == "FINISHED"]
        row: dict[str, object] = {"model": model, "jobs": len(done), "failed": len(mine) - len(done)}
        for metric in metrics:
            values = [job.metrics[metric] for job in done if metric in job.metrics and math.isfinite(job.metrics[metric])]
            row[f"{metric}_mean"] = statistics.fmean(values) if values else None
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        rows.append(row)
    return rows


def reported_metrics(jobs: list[JobResult]) -> tuple[str, ...]:
    """The main metrics any job has, in a fixed order."""
    present = {name for job in jobs for name in job.metrics}
    return tuple(name for name in REPORTED_METRICS if name in present)


def write_sweep_report(sweep_dir: Path, jobs: list[JobResult]) -> list[Path]:
    """``report/sweep_report.csv``, ``.md`` and ``<metric>_by_category.png``; returns the files."""
    folder = Path(sweep_dir) / REPORT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    metrics = reported_metrics(jobs)
    columns = ["job", "category", "model", "status", *metrics, "fit_s", "peak_rss_mb", "overrides", "error"]
    with atomic_path(folder / REPORT_CSV) as temporary, temporary.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for job in jobs:
            writer.writerow([job.job, job.category, job.model, job.status, *[_number(job.metrics.get(m)) for m in metrics],
                             _number(job.fit_s), _number(job.peak_rss_mb), job.overrides, job.error])
    files = [folder / REPORT_CSV, write_text(folder / REPORT_MD, _markdown(jobs, metrics))]
    finished = [job for job in jobs if job.status == "FINISHED"]
    if metrics and finished:
        from quadra_ad.reports.plots import plot_metric_by_category

        files.append(plot_metric_by_category([(j.category, j.model, j.metrics.get(metrics[0])) for j in finished],
                                             metrics[0], folder / f"{metrics[0]}_by_category.png"))
    return files


def _number(value) -> str:
    return "" if value is None else f"{value:.6g}"


def _markdown(jobs: list[JobResult], metrics: tuple[str, ...]) -> str:
    lines = [f"# Sweep report ({len(jobs)} jobs, {sum(j.status != 'FINISHED' for j in jobs)} failed)", "",
             "## Per model (mean ± std over its finished jobs)", "",
             "| model | jobs | failed | " + " | ".join(metrics) + " |",
             "| --- | ---: | ---: | " + " | ".join("---:" for _ in metrics) + " |"]
    for row in model_summary(jobs, metrics):
        cells = [_mean_std(row[f"{m}_mean"], row[f"{m}_std"]) for m in metrics]
        lines.append(f"| {row['model']} | {row['jobs']} | {row['failed']} | " + " | ".join(cells) + " |")
    lines += ["", "## Per job", "",
              "| job | category | model | status | " + " | ".join(metrics) + " | fit s | peak RSS MB |",
              "| --- | --- | --- | --- | " + " | ".join("---:" for _ in metrics) + " | ---: | ---: |"]
    for job in jobs:
        cells = [_cell(job.metrics.get(m)) for m in metrics]
        lines.append(f"| {job.job} | {job.category} | {job.model} | {job.status} | " + " | ".join(cells)
                     + f" | {_cell(job.fit_s, '.1f')} | {_cell(job.peak_rss_mb, '.0f')} |")
    failed = [job for job in jobs if job.status != "FINISHED"]
    if failed:
        lines += ["", "## Failed jobs", ""] + [f"- {job.job}: {job.error or 'no output (the job did not start or was killed)'}"
                                                for job in failed]
    return "\n".join(lines) + "\n"


def _mean_std(mean, std) -> str:
    return "—" if mean is None else f"{mean:.4f} ± {std:.4f}"


def _cell(value, spec: str = ".4f") -> str:
    return "—" if value is None else format(value, spec)
