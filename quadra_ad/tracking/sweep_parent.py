"""A sweep as one MLflow run: the parent of its jobs' runs, holding the sweep report.

The jobs log their own runs (wherever a launcher ran them); once all are done, the parent run is
created in the jobs' experiment with the per-model mean ± std as metrics and the report files as
artifacts, and each job's run is put under it.
"""

import logging
from pathlib import Path

from quadra_ad.reports.sweep_report import SWEEP_REPORT_TASK, JobResult, model_summary, reported_metrics
from quadra_ad.tracking.mlflow_writer import TrackedRun, adopt_runs, log_run

log = logging.getLogger(__name__)



def log_sweep_parent(sweep_dir: Path, jobs: list[JobResult], files: list[Path]) -> TrackedRun | None:
    """The parent run, or None when no job was logged (no store to put it in)."""
    logged = [job for job in jobs if job.run_id and job.tracking_uri and job.experiment_name]
    if not logged:
        return None
    tracking_uri, experiment_name = logged[0].tracking_uri, logged[0].experiment_name
    metrics: dict[str, float] = {}
    for row in model_summary(jobs, reported_metrics(jobs)):
        for key, value in row.items():
            if key != "model" and value is not None:
                metrics[f"{row['model']}.{key}"] = float(value)
    failed = [job for job in jobs if job.status != "FINISHED"]
    tracked = log_run(
        tracking_uri, experiment_name, f"sweep_{Path(sweep_dir).name}",
        params={"jobs": str(len(jobs)), "failed_jobs": str(len(failed))},
        metrics=metrics, artifacts=files,
        tags={"quadra_ad.task": SWEEP_REPORT_TASK, "quadra_ad.sweep_id": Path(sweep_dir).name,
              "quadra_ad.sweep": str(Path(sweep_dir).resolve()),
              "quadra_ad.failed_jobs": ", ".join(job.job for job in failed)[:500]},
        status="FAILED" if failed else "FINISHED",
    )
    adopt_runs(tracking_uri, tracked.run_id,
               [job.run_id for job in logged if (job.tracking_uri, job.experiment_name) == (tracking_uri, experiment_name)])
    return tracked
