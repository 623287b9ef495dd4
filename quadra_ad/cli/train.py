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
import signal
import sys
from pathlib import Path
from typing import NoReturn

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
from quadra_ad.config.experiment_source import register_experiment_sources
from quadra_ad.config.launchers import register_launcher_presets
from quadra_ad.config.locations import config_dir
from quadra_ad.config.resolvers import register_resolvers
from quadra_ad.errors import INTERRUPTED_AT_START, QuadraADError, mistake_line
from quadra_ad.reports.sweep_report import mark_job_failed
from quadra_ad.runtime.garbage_collection import freeze_imports
from quadra_ad.runtime.interrupts import (
    OutputClosed,
    Terminated,
    install_sigterm_handler,
    keep_sigterm_from_lightning,
    output_reader_gone,
    quiet_broken_pipe,
    sigterm_received,
    wait_for_ddp_processes,
)
from quadra_ad.runtime.quiet_terminal import quiet_third_party

#: Set once the whole command line was checked before Hydra started the run.
_CHECKED_BEFORE_HYDRA = False
#: Set once Hydra has composed the config and called the task function.
_TASK_FUNCTION_STARTED = False
TERMINATED_AT_START = "quadra-ad: terminated (SIGTERM) before the run started: nothing was written"
#: What a process stopped by SIGTERM exits with (128 + 15), as shells report it.
EXIT_TERMINATED = 143


def _fail(error: QuadraADError) -> NoReturn:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise error
    for line in getattr(error, "lines", None) or [mistake_line(error)]:
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


def _record_failed_job(job: str, cfg: DictConfig, task, error: BaseException, mistake: bool) -> float:
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
    return math.nan


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_entry(cfg: DictConfig) -> float | None:
    # Inside Hydra's task function: Hydra would print a BrokenPipeError's traceback itself.
    with quiet_broken_pipe():
        return _run_job(cfg)


def _run_job(cfg: DictConfig) -> float | None:
    global _TASK_FUNCTION_STARTED
    _TASK_FUNCTION_STARTED = True
    task = None
    try:
        # Again: Hydra composed this config itself. The CPU-fallback line is logged here, where the
        # run's log file records it too, rather than by the check before Hydra.
        if cpu_fallback := finish_config(cfg):
            logging.getLogger(__name__).warning(cpu_fallback)
        if cfg.get("print_config"):
            from omegaconf import OmegaConf

            print(OmegaConf.to_yaml(cfg, resolve=True), end="")
        if not _CHECKED_BEFORE_HYDRA:
            from quadra_ad.checks.before_run import check_before_run

            check_before_run(cfg)
        from quadra_ad.run import build_task, objective  # deferred: pulls in torch and anomalib

        keep_sigterm_from_lightning()
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
        _stopped(task)
    except BaseException as error:
        if sigterm_received():
            _stopped(task)
        if isinstance(error, OutputClosed) or (isinstance(error, BrokenPipeError) and output_reader_gone()):
            raise  # nobody reads the sweep's output any more: its next jobs must not run either
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


def _stopped(task) -> NoReturn:
    """End a run stopped by SIGTERM (exit 143) or Ctrl-C (130) with one line that says what was kept."""
    terminated = sigterm_received()
    code = EXIT_TERMINATED if terminated else 130
    if _other_ddp_process():
        sys.exit(code)  # process 0 reports the run
    wait_for_ddp_processes()
    _print_tracking(task)
    if task is None:
        if not terminated:
            _interrupted_at_start()
        print(TERMINATED_AT_START, file=sys.stderr)
        sys.exit(code)
    how = "terminated (SIGTERM)" if terminated else "interrupted"
    print(f"quadra-ad: {how}: what the run wrote so far stays in its run folder; {task.tracking_outcome()}",
          file=sys.stderr)
    sys.exit(code)


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
        sys.exit(2)
    if not isinstance(node, Container):
        print(node)
        return
    if package not in (None, "_global_"):
        print(f"# @package {package}")
    if resolve:
        OmegaConf.resolve(node)
    sys.stdout.write(OmegaConf.to_yaml(node))


def _check_plain_run(args: list[str]) -> None:
    global _CHECKED_BEFORE_HYDRA
    from quadra_ad.checks.before_run import check_before_run

    # Hydra's own settings (run folder, callbacks) do not change what the task gets.
    overrides = [arg for arg in args if not arg.lstrip("+~").startswith("hydra.")]
    check_before_run(compose_checked(overrides))
    _CHECKED_BEFORE_HYDRA = True


def _run_folder_setting(args: list[str]) -> tuple[str, str]:
    """The key that places this command's run folder and its value as given (interpolations unresolved)."""
    key = "hydra.sweep.dir" if any(arg in ("-m", "--multirun") for arg in args) else "hydra.run.dir"
    for arg in args:
        if arg.startswith(f"{key}="):
            return key, arg.split("=", 1)[1]
    from omegaconf import OmegaConf

    defaults = OmegaConf.to_container(OmegaConf.load(config_dir() / "hydra" / "default.yaml"), resolve=False)
    return key, str(defaults[key.split(".")[1]]["dir"])


def _check_run_folder_can_be_made(args: list[str]) -> None:
    """Hydra makes the run folder before anything of ours runs, and a folder it cannot make ends in
    its traceback: refuse that here, in one line, before the run starts."""
    from quadra_ad.errors import ConfigError

    key, value = _run_folder_setting(args)
    fixed = Path(value.split("${", 1)[0] or ".")  # the part that does not depend on the time or the config
    if not value.split("${", 1)[0].endswith("/") and "${" in value:
        fixed = fixed.parent
    folder = fixed if fixed.is_absolute() else Path.cwd() / fixed
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    fix = f"or put the run folders elsewhere with {key}=<folder>"
    if not existing.is_dir():
        raise ConfigError(f"cannot make the run folder in '{folder}': '{existing}' is a file, not a folder; move it "
                          f"away {fix}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot make the run folder in '{folder}': '{existing}' is not writable; give write "
                          f"permission on it {fix}")


def main() -> None:
    """Console-script entry point."""
    args = sys.argv[1:]
    if args[:1] == ["--list"]:
        _print_group(args[1] if len(args) > 1 else "experiment")
        return
    if _only_prints(args):
        # Hydra prints these itself, and would print a BrokenPipeError's traceback as well when the
        # reader has gone (``quadra-ad --cfg job | head``): end as ``cat`` would, of the SIGPIPE.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    # A log line whose reader went away (``quadra-ad … | head``) would print logging's own traceback
    # on stderr, once per line, until the command's next print ends it quietly.
    logging.raiseExceptions = False
    install_sigterm_handler()
    try:
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
            _check_run_folder_can_be_made(args)
        if _is_plain_run(args):
            _check_plain_run(args)
        elif _is_help(args):
            from quadra_ad.cli.help_text import help_text

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
