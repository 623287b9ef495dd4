"""The ``quadra-ad`` command: check the command line and what it asks for, compose the Hydra
config, hand it to :func:`quadra_ad.run.run`, print where the results are, and return the
objective to Hydra (for sweepers such as Optuna).

A plain run is checked before Hydra starts it (group choices, override syntax, composition,
values, working directory, dataset, exported model): a mistake is one line and exit code 2 in
about a second, with no run folder. Runs with Hydra flags (``-m``, ``--cfg`` …) get the same
checks inside each job, whose folder is then marked ``FAILED.txt``. Everything heavy (torch,
anomalib, mlflow) is imported after that, so ``--help``, ``--cfg job`` and errors stay fast.
This module is the only one of ``quadra-ad`` that prints; the package logs.
"""

import logging
import math
import os
import sys
from pathlib import Path
from typing import NoReturn

import hydra
from omegaconf import DictConfig

from quadra_ad.config.experiment_source import register_experiment_sources
from quadra_ad.config.launchers import register_launcher_presets
from quadra_ad.config.locations import config_dir
from quadra_ad.config.preflight import (
    check_group_choices,
    check_plugins,
    compose_checked,
    expand_category_patterns,
    group_options,
)
from quadra_ad.config.quadra_keys import translate_quadra_keys
from quadra_ad.config.resolvers import register_resolvers
from quadra_ad.errors import INTERRUPTED_AT_START, QuadraADError
from quadra_ad.garbage_collection import freeze_imports
from quadra_ad.interrupts import Terminated, install_sigterm_handler, sigterm_received
from quadra_ad.quiet import quiet_third_party
from quadra_ad.reports.sweep_report import mark_job_failed

#: Set once the whole command line was checked before Hydra started the run.
_CHECKED_BEFORE_HYDRA = False
#: Set once Hydra has composed the config and called the task function.
_TASK_FUNCTION_STARTED = False
TERMINATED_AT_START = "quadra-ad: terminated (SIGTERM) before the run started: nothing was written"
TERMINATED = ("quadra-ad: terminated (SIGTERM): what the run wrote so far stays in its run folder; its MLflow run "
              "is marked KILLED")
#: What a process stopped by SIGTERM exits with (128 + 15), as shells report it.
EXIT_TERMINATED = 143


def one_line(error: BaseException) -> str:
    """The user-facing line of an error.

    An error raised in a DataLoader worker comes back re-wrapped with the worker's traceback in
    its message; the line we wrote is the last one, after ``module.ErrorClass: ``.
    """
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(error):
        last = lines[-1]
        prefix = f"{type(error).__module__}.{type(error).__name__}: "
        return last[len(prefix):] if last.startswith(prefix) else last
    return " ".join(line.strip() for line in lines)


def _fail(error: QuadraADError) -> NoReturn:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    for line in getattr(error, "lines", None) or [one_line(error)]:
        print(f"quadra-ad: error: {line}", file=sys.stderr)
    sys.exit(2)


def _print_tracking(task) -> None:
    """Where the run was logged, or the one line saying why it was not and how to log it later."""
    if task is None:
        return
    if task.tracking_error:
        print(f"quadra-ad: {task.tracking_error}", file=sys.stderr)
    elif task.tracked_run is not None:
        tracked = task.tracked_run
        print(f"quadra-ad: logged MLflow run {tracked.run_id} ({tracked.status}) in experiment "
              f"'{tracked.experiment_name}' at {tracked.tracking_uri}")
        print(f"quadra-ad: to browse it: {tracked.ui_hint()}")


def _mark_run_folder_failed(error: BaseException, mistake: bool = True) -> None:
    """A job that stops leaves its (Hydra-made) folder marked, not a silent stub; the sweep report
    reads the mark (``error`` for a mistake, ``crashed`` otherwise)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        folder = HydraConfig.get().runtime.output_dir
        mark_job_failed(folder, one_line(error) if mistake else f"{type(error).__name__}: {one_line(error)}", mistake)
    except (ValueError, OSError):
        pass


def _job_in_sweep() -> str | None:
    """``job <n> (<its overrides>)`` inside a Hydra multirun; None in a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except ValueError:
        return None
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return f"job {hydra_cfg.job.num} ({' '.join(hydra_cfg.overrides.task)})"


def _record_failed_job(job: str, cfg: DictConfig, task, error: BaseException, mistake: bool) -> float:
    """A failed sweep job is logged FAILED and reported; the sweep goes on with the next job."""
    if task is None or (task.tracked_run is None and task.tracking_error is None):
        from hydra.core.hydra_config import HydraConfig

        from quadra_ad.tracking.run_logger import TrackingFailed, track_failed_start

        try:
            track_failed_start(cfg, Path(HydraConfig.get().runtime.output_dir), error)
        except TrackingFailed as failure:
            print(f"quadra-ad: {failure}", file=sys.stderr)
    line = one_line(error) if mistake else f"{type(error).__name__}: {one_line(error)}"
    print(f"quadra-ad: {job} failed: {line}", file=sys.stderr)
    return math.nan


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_entry(cfg: DictConfig) -> float | None:
    global _TASK_FUNCTION_STARTED
    _TASK_FUNCTION_STARTED = True
    task = None
    try:
        translate_quadra_keys(cfg)  # again: Hydra composed this config itself
        if cfg.get("print_config"):
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        if not _CHECKED_BEFORE_HYDRA:
            from quadra_ad.startup_checks import check_before_run

            check_before_run(cfg)
        from quadra_ad.run import build_task, objective  # deferred: pulls in torch and anomalib

        freeze_imports()
        quiet_third_party(bool(cfg.core.get("verbose", False)))
        task = build_task(cfg)
        task.execute()
    except QuadraADError as error:
        _print_tracking(task)
        _mark_run_folder_failed(error)
        if job := _job_in_sweep():
            return _record_failed_job(job, cfg, task, error, mistake=True)
        _fail(error)
    except KeyboardInterrupt:
        _print_tracking(task)
        if sigterm_received():
            print(TERMINATED_AT_START if task is None else TERMINATED, file=sys.stderr)
            sys.exit(EXIT_TERMINATED)
        if task is None:
            _interrupted_at_start()
        print("quadra-ad: interrupted: what the run wrote so far stays in its run folder; "
              "its MLflow run is marked KILLED", file=sys.stderr)
        sys.exit(130)
    except BaseException as error:
        _print_tracking(task)
        if sigterm_received():
            print(TERMINATED_AT_START if task is None else TERMINATED, file=sys.stderr)
            sys.exit(EXIT_TERMINATED)
        if isinstance(error, Exception) and (job := _job_in_sweep()):
            logging.getLogger(__name__).error("%s crashed", job, exc_info=True)  # the job's log keeps the trace
            _mark_run_folder_failed(error, mistake=False)
            return _record_failed_job(job, cfg, task, error, mistake=False)
        raise
    if _other_ddp_process():
        return objective(task, cfg)  # process 0 reports the run
    print(f"quadra-ad: run folder {task.output_dir}")
    _print_tracking(task)
    return objective(task, cfg)


def _other_ddp_process() -> bool:
    """True in the processes Lightning's ``ddp`` strategy started besides the first (it sets their rank)."""
    return any(os.environ.get(name, "0") not in ("", "0") for name in ("RANK", "LOCAL_RANK"))


def _print_group(group: str) -> None:
    options = group_options(group)
    if not options:
        print(f"quadra-ad: error: no config group named '{group}'", file=sys.stderr)
        sys.exit(2)
    print("\n".join(options))


def _is_plain_run(args: list[str]) -> bool:
    """Only overrides: no Hydra flag (``-m``, ``--cfg``, ``--help`` …) that changes what runs."""
    return all(not arg.startswith("-") for arg in args)


HELP_FLAGS = ("--help", "-h")


def _is_help(args: list[str]) -> bool:
    """``--help`` with overrides only (any other Hydra flag: Hydra's own handling)."""
    return any(arg in HELP_FLAGS for arg in args) and all(not arg.startswith("-") or arg in HELP_FLAGS for arg in args)


def _check_plain_run(args: list[str]) -> None:
    global _CHECKED_BEFORE_HYDRA
    from quadra_ad.startup_checks import check_before_run

    # Hydra's own settings (run folder, callbacks) do not change what the task gets.
    overrides = [arg for arg in args if not arg.lstrip("+~").startswith("hydra.")]
    check_before_run(compose_checked(overrides))
    _CHECKED_BEFORE_HYDRA = True


def main() -> None:
    """Console-script entry point."""
    args = sys.argv[1:]
    if args[:1] == ["--list"]:
        _print_group(args[1] if len(args) > 1 else "experiment")
        return
    install_sigterm_handler()
    try:
        args = sys.argv[1:] = expand_category_patterns(args)
        check_plugins(args)
        check_group_choices(args)
        register_experiment_sources()
        register_launcher_presets()
        register_resolvers()
        if _is_plain_run(args):
            _check_plain_run(args)
        elif _is_help(args):
            from quadra_ad.config.help_text import help_text

            print(help_text([arg for arg in args if arg not in HELP_FLAGS]))
            return
    except QuadraADError as error:
        _fail(error)
    except KeyboardInterrupt:
        _interrupted_at_start()
    except Terminated:
        print(TERMINATED_AT_START, file=sys.stderr)
        sys.exit(EXIT_TERMINATED)
    try:
        _hydra_entry()
    except KeyboardInterrupt:
        # Landed in Hydra's own composition, before the task function (which handles its own).
        if not _TASK_FUNCTION_STARTED:
            _interrupted_at_start()
        raise
    _exit_for_failed_jobs()


def _interrupted_at_start() -> None:
    """Exit 130 at once: nothing is written yet, and a Ctrl-C that landed inside the import of a
    large library can leave it half-initialised, so that the interpreter's own shutdown was seen
    to end the process with the signal (-2) instead of the exit code."""
    print(INTERRUPTED_AT_START, file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _exit_for_failed_jobs() -> None:
    """After a sweep: where its report and parent run are, its best job, its failed jobs
    (whichever launcher ran them); exit 2 when all failures were mistakes, 1 when any crashed or
    left nothing."""
    from quadra_ad.sweep_summary import FINISHED_SWEEPS

    for outcome in FINISHED_SWEEPS:
        _print_sweep(outcome)
    failed = [job for outcome in FINISHED_SWEEPS for job in outcome.failed]
    if not failed:
        return
    print(f"quadra-ad: {len(failed)} sweep job{'s' if len(failed) > 1 else ''} failed; the others ran:", file=sys.stderr)
    for job in failed:
        print(f"quadra-ad: failed: {job.label}: {job.error or 'no output (the job did not start or was killed)'}",
              file=sys.stderr)
    sys.exit(2 if all(job.mistake for job in failed) else 1)


def _print_sweep(outcome) -> None:
    if outcome.report is None:
        return
    print(f"quadra-ad: sweep report {outcome.report} ({len(outcome.jobs)} jobs)", file=sys.stderr)
    if outcome.tracking_error:
        print(f"quadra-ad: the sweep's parent MLflow run was not logged ({outcome.tracking_error}); the report is on disk",
              file=sys.stderr)
    elif outcome.parent_run_id:
        print(f"quadra-ad: sweep logged as MLflow run {outcome.parent_run_id} in experiment "
              f"'{outcome.parent_experiment}', the jobs' runs under it", file=sys.stderr)
    if outcome.metric and outcome.best is None:
        print(f"quadra-ad: no job of the sweep has {outcome.metric}", file=sys.stderr)
    elif outcome.best is not None:
        best = outcome.best
        model = best.folder / "deployment_model"
        print(f"quadra-ad: best job by {outcome.metric}: {best.label} = {best.metrics[outcome.metric]:.4f}; MLflow run "
              f"{best.run_id or 'not logged'}; model {model.resolve() if model.is_dir() else 'not exported'}",
              file=sys.stderr)
