"""After a sweep (``quadra-ad -m``), whichever launcher ran its jobs: one report of all jobs, an
MLflow parent run holding it, the best job, and the failed jobs for the command's exit code.

A Hydra callback (``hydra.callbacks.sweep_report`` in the shipped ``hydra`` config): it runs in
the process that launched the sweep, after the last job, and reads what the jobs left in their
folders — jobs run by joblib, submitit or Ray report back nothing else. The command line prints
the outcome (:data:`FINISHED_SWEEPS`).
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from quadra_ad.errors import first_line
from quadra_ad.reports.sweep_report import JobResult, best_job, collect_jobs, write_sweep_report

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    """What one sweep left: its jobs, the report, the parent run, the best job."""

    folder: Path
    jobs: list[JobResult]
    report: Path | None = None
    parent_run_id: str | None = None
    parent_experiment: str | None = None
    tracking_error: str | None = None
    metric: str | None = None
    best: JobResult | None = None
    failed: list[JobResult] = field(default_factory=list)


#: The sweeps this process ran, in order.
FINISHED_SWEEPS: list[SweepOutcome] = []


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        jobs = collect_jobs(sweep_dir)
        outcome = SweepOutcome(sweep_dir, jobs, failed=[job for job in jobs if job.status != "FINISHED"])
        FINISHED_SWEEPS.append(outcome)
        if not jobs:
            return
        files = write_sweep_report(sweep_dir, jobs)
        outcome.report = files[1]
        outcome.metric = OmegaConf.select(config, "core.optimized_metric", default=None)
        if outcome.metric:
            direction = str(OmegaConf.select(config, "hydra.sweeper.direction", default="maximize") or "maximize")
            outcome.best = best_job(jobs, str(outcome.metric), maximize=not direction.lower().startswith("min"))
        try:
            from quadra_ad.tracking.sweep_parent import log_sweep_parent

            parent = log_sweep_parent(sweep_dir, jobs, files)
        except Exception as error:  # the jobs and the report on disk are what matter
            log.debug("sweep parent run not logged", exc_info=True)
            outcome.tracking_error = first_line(error, typed=True)
            return
        if parent is not None:
            outcome.parent_run_id, outcome.parent_experiment = parent.run_id, parent.experiment_name
