"""The task lifecycle shared by training and inference.

A task is ``prepare → train → test → report → export → finalize``; the CLI only builds the task
named in the config and calls :meth:`Task.execute`. Steps a task does not need stay no-ops.
Once ``prepare`` has succeeded, every run reaches the tracker: FINISHED after ``finalize``,
FAILED when a step raises, KILLED on Ctrl-C or SIGTERM — never left RUNNING. Which status an
ending gets is :func:`quadra_ad.runtime.run_ending.ending_the_run`'s to decide.
"""

import json
import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from quadra_ad.errors import DiskFullError, first_line
from quadra_ad.evaluation.metrics import Metrics
from quadra_ad.files import disk_is_full, write_text
from quadra_ad.runtime.resources import peak_memory_mb, reset_peak_memory
from quadra_ad.runtime.run_ending import Ending, ending_the_run

log = logging.getLogger(__name__)

TIMINGS_FILE = "timings.json"
RESOLVED_CONFIG = "config_resolved.yaml"


class Task:
    """Base class: holds the composed config and the run folder."""

    #: Open the MLflow run when the task starts and feed it while it runs (``logger.mlflow.live``).
    live_tracking = False

    def __init__(self, config: DictConfig, output_dir: Path) -> None:
        self.config = config
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics: Metrics = Metrics()
        #: Wall seconds per lifecycle step, written to ``timings.json`` and logged as ``time_<step>_s``.
        self.timings: dict[str, float] = {}
        #: This job's peak resident memory (MB), in ``timings.json`` and logged as ``peak_rss_mb``.
        self.peak_rss_mb: float | None = None
        reset_peak_memory()
        #: Where the run was logged (None when it was not); ``tracking_error`` says why not, in one line.
        self.tracked_run = None
        self.tracking_error: str | None = None
        #: The MLflow run opened at the start (None: logged once, at the end).
        self.live_run = None
        #: What ``mlflow_run.json`` held when the run started (None without an MLflow logger).
        self._running_record = None  # a tracking.run_record.RunRecord once written
        #: True once ``prepare`` has succeeded: from then on the run reaches the tracker.
        self.prepared = False

    def prepare(self) -> None:
        """Build everything the later steps need (data, model, trainer)."""

    def train(self) -> None:
        """Fit the model."""

    def test(self) -> None:
        """Score the test data."""

    def export(self) -> None:
        """Write deployable artifacts."""

    def report(self) -> None:
        """Write human-readable results (tables, metrics) into the run folder."""

    def finalize(self) -> None:
        """Log the run to the tracker. Must never lose what is already on disk."""
        self.track("FINISHED")

    # -- tracking --------------------------------------------------------------------------
    def tracking_tags(self) -> dict[str, str]:
        from quadra_ad.tracking.run_logger import base_tags

        return base_tags(self.config, self.output_dir, type(self).__name__)

    def tracking_artifacts(self) -> list[Path]:
        return []

    def tracking_history(self) -> dict | None:
        return None

    def tracking_model(self) -> Path | None:
        """A deployment folder to log as the run's MLflow model when it finishes."""
        return None

    def params_known_later(self) -> tuple[str, ...]:
        """Config keys whose value the run decides once it started (not logged when it opens)."""
        return ()

    def tracking_outcome(self) -> str:
        """Where the run stands in MLflow, in words, for the line a run that was stopped ends with."""
        if self.tracked_run is not None:
            return f"its MLflow run is marked {self.tracked_run.status}"
        if not self.prepared:
            return "no MLflow run was started (it stopped while the run was being prepared)"
        if not (self.config.get("logger") or {}).get("mlflow"):
            return "no MLflow run is logged (no logger.mlflow configured)"
        if self.tracking_error:
            return "its MLflow run could not be marked (see above)"
        return f"its MLflow run was not marked; log it with: quadra-ad-upload {self.output_dir}"

    def attach_live_run(self, live_run) -> None:
        """Route what the task logs while it runs to ``live_run``."""

    def track(self, status: str, error: BaseException | None = None) -> None:
        """Log the run with ``status``; an error's first line becomes the ``quadra_ad.error`` tag.

        A tracking failure never raises: its one line is kept in ``tracking_error`` (the CLI prints
        it, as it prints where a logged run is).
        """
        from quadra_ad.tracking.run_logger import TrackingFailed, track_run

        if self.live_run is not None:
            self.live_run.stop_system_metrics()
        tags = self.tracking_tags()
        if error is not None:
            tags["quadra_ad.error"] = first_line(error, typed=True, limit=500)
        metrics = {**self.metrics, **{f"time_{step}_s": seconds for step, seconds in self.timings.items()}}
        if self.peak_rss_mb is not None:
            metrics["peak_rss_mb"] = self.peak_rss_mb
        try:
            self.tracked_run = track_run(
                self.config, self.output_dir, metrics, self.tracking_artifacts(), tags, self.tracking_history(),
                status=status, model_folder=self.tracking_model(),
                live_run_id=self.live_run.run_id if self.live_run is not None else None,
            )
        except TrackingFailed as failure:
            self.tracked_run, self.tracking_error = None, str(failure)
            log.debug("%s", failure)

    def execute(self) -> None:
        """Run every step in order; an interrupted or failed run is still tracked."""
        with ending_the_run(record=self._track_unfinished, explain=self._explain):
            self._timed(self.prepare)
            self.prepared = True
            self._save_running_record()
            self._open_live_run()
            for step in (self.train, self.test, self.report, self.export):
                log.debug("Task step: %s", step.__name__)
                self._timed(step)
        self.finalize()

    def _save_running_record(self) -> None:
        """The run record, as RUNNING, before any result: a run killed without a word can still be uploaded."""
        from quadra_ad.tracking.run_logger import save_running_record

        try:
            self._running_record = save_running_record(self.config, self.output_dir, self.tracking_tags())
        except Exception:  # a record is a safety net, never a reason to stop
            log.debug("could not save the RUNNING run record", exc_info=True)

    def _open_live_run(self) -> None:
        """Open the MLflow run now, so that it shows the task while it runs. Never a reason to stop:
        when the store cannot take it, the run is logged at the end as before."""
        mlflow_cfg = (self.config.get("logger") or {}).get("mlflow")
        record = self._running_record
        if not self.live_tracking or record is None or not mlflow_cfg.get("live", True):
            return
        from quadra_ad.tracking.live_run import LiveRun
        from quadra_ad.tracking.run_logger import write_running_record

        try:
            live_run = LiveRun.open(record, self.params_known_later())
        except Exception as error:  # noqa: BLE001 - the run folder keeps the record either way
            log.warning("The MLflow run could not be opened at the start (%s); training goes on and the run is "
                        "logged when it ends", first_line(error, typed=True))
            return
        self.live_run = live_run
        write_running_record(record.replace(live_run_id=live_run.run_id), self.output_dir)
        interval = mlflow_cfg.get("system_metrics_interval_s")
        if interval:
            live_run.start_system_metrics(float(interval))
        self.attach_live_run(live_run)
        log.info("MLflow run %s is open: it shows the training while it runs", live_run.run_id)

    def save_resolved_config(self) -> Path:
        """``config_resolved.yaml``: the config with every interpolation resolved, as run."""
        return write_text(self.output_dir / RESOLVED_CONFIG, OmegaConf.to_yaml(self.config, resolve=True))

    def _disk_full(self, error: BaseException) -> DiskFullError:
        kept = sorted(p.relative_to(self.output_dir).as_posix() for p in self.output_dir.rglob("*")
                      if p.is_file() and not p.name.startswith("."))
        shown = ", ".join(kept[:6]) + (f" and {len(kept) - 6} more" if len(kept) > 6 else "")
        return DiskFullError(
            f"no space left on the disk of '{self.output_dir}' ({first_line(error, typed=True)}); the files written "
            f"before are complete and kept ({shown or 'none'}); free space, then log the run with: "
            f"quadra-ad-upload {self.output_dir}"
        )

    def _timed(self, step) -> None:
        started = time.perf_counter()
        try:
            step()
        finally:
            self.timings[step.__name__] = round(time.perf_counter() - started, 3)
            self.peak_rss_mb = round(peak_memory_mb(), 1)
            write_text(self.output_dir / TIMINGS_FILE,
                       json.dumps({**self.timings, "peak_rss_mb": self.peak_rss_mb}, indent=2) + "\n")

    def _track_unfinished(self, ending: Ending) -> None:
        """Log a run that did not finish (from ``prepare`` on: before, no run was started)."""
        if self.prepared:
            self.track(ending.status, ending.error)

    def _explain(self, error: Exception) -> Exception:
        return self._disk_full(error) if disk_is_full(error, self.output_dir) else error
