"""The ``quadra-ad`` command: compose the Hydra config, hand it to :func:`quadra_ad.run.run`,
print where the results are, and return the objective to Hydra (for sweepers such as Optuna).

Everything heavy (torch, anomalib, mlflow) is imported inside the task, after Hydra has parsed
the command line, so ``--help``, ``--cfg job`` and ``--info`` stay fast. This module is the only
one of ``quadra-ad`` that prints; the package logs.
"""

import os
import sys
from typing import NoReturn

import hydra
from omegaconf import DictConfig

from quadra_ad.config.experiment_source import register_experiment_sources
from quadra_ad.config.locations import config_dir
from quadra_ad.config.preflight import check_group_choices, group_options
from quadra_ad.config.resolvers import register_resolvers
from quadra_ad.errors import QuadraADError


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
    print(f"quadra-ad: error: {one_line(error)}", file=sys.stderr)
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


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _hydra_entry(cfg: DictConfig) -> float | None:
    from quadra_ad.run import build_task, objective  # deferred: pulls in torch and anomalib

    task = None
    try:
        task = build_task(cfg)
        task.execute()
    except QuadraADError as error:
        _print_tracking(task)
        _fail(error)
    except KeyboardInterrupt:
        _print_tracking(task)
        print("quadra-ad: interrupted: what the run wrote so far stays in its run folder; "
              "its MLflow run is marked KILLED", file=sys.stderr)
        sys.exit(130)
    except BaseException:
        _print_tracking(task)
        raise
    print(f"quadra-ad: run folder {task.output_dir}")
    _print_tracking(task)
    return objective(task, cfg)


def _print_group(group: str) -> None:
    options = group_options(group)
    if not options:
        print(f"quadra-ad: error: no config group named '{group}'", file=sys.stderr)
        sys.exit(2)
    print("\n".join(options))


def main() -> None:
    """Console-script entry point."""
    args = sys.argv[1:]
    if args[:1] == ["--list"]:
        _print_group(args[1] if len(args) > 1 else "experiment")
        return
    try:
        check_group_choices(args)
    except QuadraADError as error:
        _fail(error)
    register_experiment_sources()
    register_resolvers()
    _hydra_entry()
