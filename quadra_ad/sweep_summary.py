"""After a sweep (``quadra-ad -m``), whichever launcher ran its jobs: one report of all jobs, an
MLflow parent run holding it, and the list of failed jobs for the command's exit code.

A Hydra callback (``hydra.callbacks.sweep_report`` in the shipped ``hydra`` config): it runs in
the process that launched the sweep, after the last job, and reads what the jobs left in their
folders — jobs run by joblib, submitit or Ray report back nothing else.
"""

import logging
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from quadra_ad.reports.sweep_report import JobResult, best_job, collect_jobs, write_sweep_report

log = logging.getLogger(__name__)

#: The jobs of the sweeps this process ran (the CLI reads them for its exit code).
FINISHED_SWEEPS: list[list[JobResult]] = []


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        jobs = collect_jobs(sweep_dir)
        FINISHED_SWEEPS.append(jobs)
        if not jobs:
            return
        files = write_sweep_report(sweep_dir, jobs)
        print(f"quadra-ad: sweep report {files[1]} ({len(jobs)} jobs)", file=sys.stderr)
        _print_best(config, jobs)
        try:
            from quadra_ad.tracking.sweep_parent import log_sweep_parent

            parent = log_sweep_parent(sweep_dir, jobs, files)
        except Exception as error:  # noqa: BLE001 - the jobs and the report on disk are what matter
            log.debug("sweep parent run not logged", exc_info=True)
            print(f"quadra-ad: the sweep's parent MLflow run was not logged ({type(error).__name__}: "
                  f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}); the report is on disk",
                  file=sys.stderr)
            return
        if parent is not None:
            print(f"quadra-ad: sweep logged as MLflow run {parent.run_id} in experiment '{parent.experiment_name}', "
                  f"the jobs' runs under it", file=sys.stderr)


def _print_best(config: DictConfig, jobs: list[JobResult]) -> None:
    """The best job by ``core.optimized_metric`` (the value a sweeper optimises): its settings,
    MLflow run and model, so the result of a search is one line away."""
    from omegaconf import OmegaConf

    metric = OmegaConf.select(config, "core.optimized_metric", default=None)
    if not metric:
        return
    direction = str(OmegaConf.select(config, "hydra.sweeper.direction", default="maximize") or "maximize")
    best = best_job(jobs, str(metric), maximize=not direction.lower().startswith("min"))
    if best is None:
        print(f"quadra-ad: no job of the sweep has {metric}", file=sys.stderr)
        return
    model = best.folder / "deployment_model"
    print(f"quadra-ad: best job by {metric}: {best.label} = {best.metrics[metric]:.4f}; MLflow run "
          f"{best.run_id or 'not logged'}; model {model.resolve() if model.is_dir() else 'not exported'}", file=sys.stderr)
