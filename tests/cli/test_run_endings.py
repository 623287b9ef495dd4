"""How a run ends when it does not end well: a loop in an exception chain does not hang it, a
reader that goes away ends the command quietly, a run folder that cannot be made is one line
before anything runs, and a stopped run's last line says only what really happened."""

import os
import signal
import subprocess
import sys

import pytest

from quadra_ad.errors import ConfigError, exception_chain
from quadra_ad.files import disk_is_full
from quadra_ad.run import build_task, run
from quadra_ad.runtime.signals import stopped_by_sigterm
from tests.cli_runner import QUADRA_AD, quadra_ad, quadra_ad_env, wait_until_training_runs
from tests.conftest import fast_overrides, training_config

#: What a process ended by SIGPIPE reports: 141 from a shell, -13 from subprocess.
ENDED_BY_BROKEN_PIPE = (141, -signal.SIGPIPE)


def _circular_chain() -> BaseException:
    """What instantiate_node leaves: a cause re-raised inside the handler of the error wrapping it."""
    try:
        try:
            raise ValueError("write failed: not an albumentations transform")
        except ValueError as cause:
            raise RuntimeError("Error in call to target") from cause
    except RuntimeError as wrapper:
        cause = wrapper.__cause__
        try:
            raise cause from None
        except ValueError as reraised:
            return reraised


@pytest.mark.timeout(30)
def test_a_circular_exception_chain_is_walked_once_and_ends():
    error = _circular_chain()
    assert error.__context__.__cause__ is error  # the loop the walks must survive
    assert [type(e).__name__ for e in exception_chain(error)] == ["ValueError", "RuntimeError"]
    assert disk_is_full(error, "/") is False
    assert stopped_by_sigterm(error) is False


@pytest.mark.timeout(120)
def test_an_augmentation_that_is_not_a_transform_ends_the_run_with_one_config_error(classification_dataset, tmp_path):
    # Hydra builds the entry, our check refuses it, instantiate_node re-raises: the circular chain
    # reaches the disk-full test of a failed prepare at run time.
    cfg = training_config("base/anomaly/padim", classification_dataset, None,
                          "transforms.train_augmentations=[{_target_:builtins.str}]")
    with pytest.raises(ConfigError, match=r"transforms\.train_augmentations\[0\]") as raised:
        run(cfg, output_dir=tmp_path / "run")
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("entry", [
    pytest.param("[{_target_:builtins.str}]", id="target-not-a-transform"),
    pytest.param("[Blur]", id="plain-string"),
    pytest.param("[{_target_:builtins.dict}]", id="target-builds-a-dict"),
])
def test_an_augmentation_entry_that_is_not_a_transform_exits_2_in_one_line(entry, classification_dataset, tmp_path):
    result = quadra_ad("experiment=base/anomaly/padim", *fast_overrides(classification_dataset, None),
                       f"transforms.train_augmentations={entry}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("quadra-ad: error:") and "transforms.train_augmentations" in last
    assert "Traceback" not in result.stderr


# -- a reader that goes away (quadra-ad … | head) -------------------------------------------------
def _with_closed_stdout(command: list[str], cwd, timeout: int = 180) -> tuple[int, str]:
    """Run ``command`` with its stdout a pipe whose reader has gone, as after ``| head``."""
    err_path = cwd / "stderr.txt"
    with err_path.open("w") as err:
        process = subprocess.Popen(command, cwd=cwd, env=quadra_ad_env(), stdout=subprocess.PIPE, stderr=err)
        process.stdout.close()
        process.wait(timeout=timeout)
    return process.returncode, err_path.read_text()


def _console_script(function: str, *args: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.argv = ['x', *{list(args)!r}]; "
                                  f"from quadra_ad.cli.entry_points import {function}; sys.exit({function}())"]


@pytest.mark.parametrize("command", [
    pytest.param([*QUADRA_AD, "--help"], id="quadra-ad-help"),
    pytest.param([*QUADRA_AD, "--list"], id="quadra-ad-list"),
    pytest.param([*QUADRA_AD, "--list", "model"], id="quadra-ad-list-models"),
    pytest.param([*QUADRA_AD, "experiment=base/anomaly/padim", "--cfg", "job"], id="quadra-ad-cfg-job"),
    pytest.param([*QUADRA_AD, "--info"], id="quadra-ad-info"),
    pytest.param([*QUADRA_AD, "--hydra-help"], id="quadra-ad-hydra-help"),
    pytest.param(_console_script("quadra_ad_compare", "--help"), id="compare-help"),
    pytest.param(_console_script("quadra_ad_upload", "--help"), id="upload-help"),
])
def test_output_to_a_closed_pipe_ends_quietly(command, tmp_path):
    code, err = _with_closed_stdout(command, tmp_path)
    assert code in (0, *ENDED_BY_BROKEN_PIPE), err[-2000:]
    assert "Traceback" not in err and "Exception ignored" not in err and "BrokenPipe" not in err, err[-2000:]


def test_a_training_whose_reader_went_away_ends_quietly(classification_dataset, tmp_path):
    command = [*QUADRA_AD, "experiment=base/anomaly/padim", "export.types=[]",
               *fast_overrides(classification_dataset, None)]
    code, err = _with_closed_stdout(command, tmp_path)
    assert code in ENDED_BY_BROKEN_PIPE, err[-2000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]


# -- a run folder that cannot be made --------------------------------------------------------------
def _outputs_is_a_file(tmp_path) -> list[str]:
    (tmp_path / "outputs").write_text("not a folder")
    return []


def _run_dir_under_a_file(tmp_path) -> list[str]:
    (tmp_path / "taken").write_text("not a folder")
    return [f"hydra.run.dir={tmp_path / 'taken' / 'run'}"]


def _run_dir_is_a_file(tmp_path) -> list[str]:
    (tmp_path / "taken").write_text("not a folder")
    return [f"hydra.run.dir={tmp_path / 'taken'}"]


def _outputs_read_only(tmp_path) -> list[str]:
    if os.geteuid() == 0:
        pytest.skip("running as root: a folder without write permission is still writable")
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs").chmod(0o500)
    return []


@pytest.mark.parametrize(("make", "flags", "message"), [
    pytest.param(_outputs_is_a_file, [], r"'[^']*/outputs' is a file, not a folder.*hydra\.run\.dir=",
                 id="outputs-is-a-file"),
    pytest.param(_outputs_is_a_file, ["-m"], r"'[^']*/outputs' is a file, not a folder.*hydra\.sweep\.dir=",
                 id="outputs-is-a-file-multirun"),
    pytest.param(_run_dir_under_a_file, [], r"'[^']*/taken' is a file, not a folder", id="run-dir-under-a-file"),
    pytest.param(_run_dir_is_a_file, [], r"'[^']*/taken' is a file, not a folder", id="run-dir-is-a-file"),
    pytest.param(_outputs_read_only, [], r"'[^']*/outputs' is not writable.*hydra\.run\.dir=", id="outputs-read-only"),
])
def test_a_run_folder_that_cannot_be_made_is_one_line_before_the_run(make, flags, message, classification_dataset,
                                                                      tmp_path):
    import re

    extra = make(tmp_path)
    try:
        result = quadra_ad(*flags, "experiment=base/anomaly/padim", *fast_overrides(classification_dataset, None),
                           *extra, cwd=tmp_path, timeout=120)
    finally:
        if (tmp_path / "outputs").is_dir():
            (tmp_path / "outputs").chmod(0o700)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quadra-ad: error: cannot make the run folder"), result.stderr
    assert re.search(message, lines[0]), lines[0]


# -- what a stopped run's last line says ----------------------------------------------------------
def test_a_run_stopped_while_it_was_prepared_claims_no_mlflow_run(segmentation_dataset, tmp_path):
    cfg = training_config("base/anomaly/padim", segmentation_dataset, tmp_path)
    task = build_task(cfg, output_dir=tmp_path / "run")
    assert task.tracking_outcome() == "no MLflow run was started (it stopped while the run was being prepared)"


def test_sigterm_to_a_run_without_mlflow_says_no_run_was_logged(segmentation_dataset, tmp_path):
    command = [*QUADRA_AD, "experiment=base/anomaly/stfpm", "trainer.max_epochs=100000", "export.types=[]",
               *fast_overrides(segmentation_dataset, None)]
    with (tmp_path / "stdout.txt").open("w") as out, (tmp_path / "stderr.txt").open("w") as err_file:
        process = subprocess.Popen(command, cwd=tmp_path, env=quadra_ad_env(), stdout=out, stderr=err_file)
        try:
            wait_until_training_runs(process, tmp_path)
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    err = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 143, err[-2000:]
    assert err.strip().splitlines()[-1] == ("quadra-ad: terminated (SIGTERM): what the run wrote so far stays in its "
                                            "run folder; no MLflow run is logged (no logger.mlflow configured)")
    assert "marked KILLED" not in err
