"""The ``quadra-ad`` command: check the command line and what it asks for, compose the Hydra
config, hand it to :func:`quadra_ad.run.run`, print where the results are, and return the
objective to Hydra (for sweepers such as Optuna).

A plain run is checked before Hydra starts it (group choices, override syntax, composition,
values, working directory, dataset, exported model): a mistake is one line and exit code 2 in
about a second, with no run folder. Runs with Hydra flags (``-m``, ``--cfg`` …) get the same
checks inside each job, whose folder is then marked ``FAILED.txt``. Everything heavy (torch,
anomalib, mlflow) is imported after that, so ``--help``, ``--cfg job`` and errors stay fast.
How the command ends (exit code, run status) is :func:`quadra_ad.runtime.run_ending.ending_the_run`'s
to decide; this module says the last lines. It is the only one of ``quadra-ad`` that prints; the
package logs.
"""

import logging
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import hydra
from omegaconf import DictConfig

from quadra_ad.checks.command_line import (
    check_group_choices,
    check_plugins,
    compose_checked,
    expand_category_patterns,
    group_options,
)
from quadra_ad.checks.composition import finish_config
from quadra_ad.checks.run_folder import check_run_folder_can_be_made
from quadra_ad.config.experiment_source import register_experiment_sources
from quadra_ad.config.launchers import register_launcher_presets
from quadra_ad.config.locations import config_dir
from quadra_ad.config.resolvers import register_resolvers
from quadra_ad.errors import INTERRUPTED_AT_START, mistake_line
from quadra_ad.reports.sweep_report import mark_job_failed
from quadra_ad.runtime.closed_output import quiet_broken_pipe
from quadra_ad.runtime.exit_codes import EXIT_CRASH, EXIT_INTERRUPTED, EXIT_MISTAKE
from quadra_ad.runtime.garbage_collection import freeze_imports
from quadra_ad.runtime.quiet_terminal import quiet_third_party
from quadra_ad.runtime.run_ending import Ending, ending_the_run, exit_at_once
from quadra_ad.runtime.signals import (
    die_of_sigpipe,
    install_sigterm_handler,
    keep_sigterm_from_lightning,
    other_ddp_process,
)

TERMINATED_AT_START = "quadra-ad: terminated (SIGTERM) before the run started: nothing was written"


@dataclass
class _Command:
    """What one ``quadra-ad`` command knows on both sides of Hydra's call of the task function."""

    #: The whole command line was checked before Hydra started the run.
    checked_before_hydra: bool = False
    #: Hydra has composed the config and called the task function.
    job_started: bool = False


def _full_error() -> bool:
    """``HYDRA_FULL_ERROR=1``: a mistake is raised on with its traceback, as Hydra does."""
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def _say_mistake(error: BaseException) -> None:
    if _full_error():
        return  # raised on whole
    for line in getattr(error, "lines", None) or [mistake_line(error)]:
        print(f"quadra-ad: error: {line}", file=sys.stderr)


def _say_stopped_before_the_run(ending: Ending) -> None:
    """Nothing was written yet. Ctrl-C ends the process at once: it may have landed inside the
    import of a large library, whose half-initialised state the interpreter's shutdown trips on."""
    if ending.terminated:
        print(TERMINATED_AT_START, file=sys.stderr)
        return
    print(INTERRUPTED_AT_START, file=sys.stderr)
    exit_at_once(EXIT_INTERRUPTED)


def _say_before_the_run(ending: Ending) -> None:
    """The last words of a command stopped or mistaken before Hydra started the run."""
    if ending.stopped:
        _say_stopped_before_the_run(ending)
    elif ending.mistake:
        _say_mistake(ending.error)


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
        mark_job_failed(folder, mistake_line(error) if mistake else f"{type(error).__name__}: {mistake_line(error)}", mistake)
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


def _record_failed_job(job: str, cfg: DictConfig, task, error: BaseException, mistake: bool) -> None:
    """A failed sweep job is logged FAILED and reported; the sweep goes on with the next job."""
    if task is None or (task.tracked_run is None and task.tracking_error is None):
        from hydra.core.hydra_config import HydraConfig

        from quadra_ad.tracking.run_logger import TrackingFailed, track_failed_start

        try:
            track_failed_start(cfg, Path(HydraConfig.get().runtime.output_dir), error)
        except TrackingFailed as failure:
            print(f"quadra-ad: {failure}", file=sys.stderr)
    line = mistake_line(error) if mistake else f"{type(error).__name__}: {mistake_line(error)}"
    print(f"quadra-ad: {job} failed: {line}", file=sys.stderr)


def _hydra_entry(command: _Command):
    """Hydra's task function for this command (Hydra calls it with the composed config, once per job)."""

    @hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
    def job(cfg: DictConfig) -> float | None:
        # Inside Hydra's task function: Hydra would print a BrokenPipeError's traceback itself.
        with quiet_broken_pipe():
            return _run_job(cfg, command)

    return job


class _Job:
    """One Hydra job: its config, and the task built from it (None until it is built)."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.task = None

    def run(self, checked_before_hydra: bool) -> None:
        cfg = self.cfg
        # Again: Hydra composed this config itself. The CPU-fallback line is logged here, where the
        # run's log file records it too, rather than by the check before Hydra.
        if cpu_fallback := finish_config(cfg):
            logging.getLogger(__name__).warning(cpu_fallback)
        if cfg.get("print_config"):
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        if not checked_before_hydra:
            from quadra_ad.checks.before_run import check_before_run

            check_before_run(cfg)
        from quadra_ad.run import build_task  # deferred: pulls in torch and anomalib

        keep_sigterm_from_lightning()
        freeze_imports()
        quiet_third_party(bool(cfg.core.get("verbose", False)))
        self.task = build_task(cfg)
        self.task.execute()

    def say_how_it_ended(self, ending: Ending) -> bool:
        """The job's last lines; True when it failed inside a sweep (recorded: the sweep goes on)."""
        task = self.task
        if ending.stopped:
            _print_tracking(task)
            if task is None:
                _say_stopped_before_the_run(ending)
                return False
            how = "terminated (SIGTERM)" if ending.terminated else "interrupted"
            print(f"quadra-ad: {how}: what the run wrote so far stays in its run folder; {task.tracking_outcome()}",
                  file=sys.stderr)
            return False
        job = _job_in_sweep()
        if ending.mistake:
            _print_tracking(task)
            _mark_run_folder_failed(ending.error)
            if job:
                _record_failed_job(job, self.cfg, task, ending.error, mistake=True)
                return True
            _say_mistake(ending.error)
            return False
        if job:  # a crash: the job's log keeps the trace, the sweep goes on
            logging.getLogger(__name__).error("%s crashed", job, exc_info=ending.error)
            _mark_run_folder_failed(ending.error, mistake=False)
            _record_failed_job(job, self.cfg, task, ending.error, mistake=False)
            return True
        return False


def _run_job(cfg: DictConfig, command: _Command) -> float | None:
    command.job_started = True
    job = _Job(cfg)
    with ending_the_run(say=job.say_how_it_ended, exits=True, traceback_for_mistakes=_full_error()) as ending:
        job.run(command.checked_before_hydra)
    if ending.went_on:
        return math.nan
    from quadra_ad.run import objective

    if other_ddp_process():
        return objective(job.task, cfg)  # process 0 reports the run
    print(f"quadra-ad: run folder {job.task.output_dir}")
    _print_tracking(job.task)
    return objective(job.task, cfg)


def _print_group(group: str) -> None:
    options = group_options(group)
    if not options:
        print(f"quadra-ad: error: no config group named '{group}'", file=sys.stderr)
        sys.exit(EXIT_MISTAKE)
    print("\n".join(options))


def _is_plain_run(args: list[str]) -> bool:
    """Only overrides: no Hydra flag (``-m``, ``--cfg``, ``--help`` …) that changes what runs."""
    return all(not arg.startswith("-") for arg in args)


HELP_FLAGS = ("--help", "-h")
#: Hydra flags with which nothing runs: the command prints a config, help or its settings.
PRINT_ONLY_FLAGS = ("--cfg", "-c", "--info", "-i", "--hydra-help", "--shell-completion", "-sc", *HELP_FLAGS)


def _only_prints(args: list[str]) -> bool:
    return any(arg.split("=", 1)[0] in PRINT_ONLY_FLAGS for arg in args)


def _is_help(args: list[str]) -> bool:
    """``--help`` with overrides only (any other Hydra flag: Hydra's own handling)."""
    return any(arg in HELP_FLAGS for arg in args) and all(not arg.startswith("-") or arg in HELP_FLAGS for arg in args)


def _config_request(args: list[str]) -> tuple[str, str | None, bool, list[str]] | None:
    """``--cfg job|all`` (with ``--resolve`` / ``--package``) and overrides only: (what to show,
    package, resolve, overrides). None for anything else, which Hydra answers itself."""
    shown, package, resolve, overrides = None, None, False, []
    rest = iter(args)
    for arg in rest:
        flag, has_value, value = arg.partition("=")
        if flag in ("--cfg", "-c", "--package", "-p"):
            value = value if has_value else next(rest, "")
            if flag in ("--cfg", "-c"):
                shown = value
            else:
                package = value
        elif arg == "--resolve":
            resolve = True
        elif arg.startswith("-"):
            return None
        else:
            overrides.append(arg)
    if shown not in ("job", "all"):
        return None
    return shown, package, resolve, overrides


def _print_config(shown: str, package: str | None, resolve: bool, overrides: list[str]) -> None:
    """Print the config that will run: Hydra's ``--cfg`` would print it before a Quadra file's keys
    are translated and before a GPU trainer falls back to the CPU."""
    from omegaconf import Container, OmegaConf

    cfg = compose_checked(overrides, with_hydra=shown == "all")
    if shown == "all":
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(cfg)  # for ${hydra:...} when resolving
    node = cfg if package in (None, "_global_") else OmegaConf.select(cfg, package)
    if node is None:
        print(f"quadra-ad: error: package '{package}' not found in config", file=sys.stderr)
        sys.exit(EXIT_MISTAKE)
    if not isinstance(node, Container):
        print(node)
        return
    if package not in (None, "_global_"):
        print(f"# @package {package}")
    if resolve:
        OmegaConf.resolve(node)
    sys.stdout.write(OmegaConf.to_yaml(node))


def _check_plain_run(args: list[str]) -> None:
    from quadra_ad.checks.before_run import check_before_run

    # Hydra's own settings (run folder, callbacks) do not change what the task gets.
    overrides = [arg for arg in args if not arg.lstrip("+~").startswith("hydra.")]
    check_before_run(compose_checked(overrides))


def main() -> None:
    """Console-script entry point."""
    args = sys.argv[1:]
    if args[:1] == ["--list"]:
        _print_group(args[1] if len(args) > 1 else "experiment")
        return
    if _only_prints(args):
        # Hydra prints these itself, and would print a BrokenPipeError's traceback as well when the
        # reader has gone (``quadra-ad --cfg job | head``): end as ``cat`` would, of the SIGPIPE.
        die_of_sigpipe()
    # A log line whose reader went away (``quadra-ad … | head``) would print logging's own traceback
    # on stderr, once per line, until the command's next print ends it quietly.
    logging.raiseExceptions = False
    install_sigterm_handler()
    command = _Command()
    with ending_the_run(say=_say_before_the_run, exits=True, traceback_for_mistakes=_full_error()):
        args = sys.argv[1:] = expand_category_patterns(args)
        check_plugins(args)
        check_group_choices(args)
        register_experiment_sources()
        register_launcher_presets()
        register_resolvers()
        if request := _config_request(args):
            _print_config(*request)
            return
        if not _only_prints(args):
            check_run_folder_can_be_made(args)
        if _is_plain_run(args):
            _check_plain_run(args)
            command.checked_before_hydra = True
        elif _is_help(args):
            from quadra_ad.cli.help_text import help_text

            print(help_text([arg for arg in args if arg not in HELP_FLAGS]))
            return

    def say_in_hydra(ending: Ending) -> None:
        # Landed in Hydra's own composition, before the task function (which says its own).
        if ending.stopped and not command.job_started:
            _say_stopped_before_the_run(ending)

    with ending_the_run(say=say_in_hydra, exits=True):
        _hydra_entry(command)()
    _exit_for_failed_jobs()


def _exit_for_failed_jobs() -> None:
    """After a sweep: where its report and parent run are, its best job, its failed jobs
    (whichever launcher ran them); exit 2 when all failures were mistakes, 1 when any crashed or
    left nothing."""
    from quadra_ad.cli.sweep_summary import FINISHED_SWEEPS

    for outcome in FINISHED_SWEEPS:
        _print_sweep(outcome)
    failed = [job for outcome in FINISHED_SWEEPS for job in outcome.failed]
    if not failed:
        return
    print(f"quadra-ad: {len(failed)} sweep job{'s' if len(failed) > 1 else ''} failed; the others ran:", file=sys.stderr)
    for job in failed:
        print(f"quadra-ad: failed: {job.label}: {job.error or 'no output (the job did not start or was killed)'}",
              file=sys.stderr)
    sys.exit(EXIT_MISTAKE if all(job.mistake for job in failed) else EXIT_CRASH)


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
