"""One context manager decides how a run ends: inside a task, the status it is logged with and the
error raised on; around a command, its last words and its exit code. Real signals, in processes
of their own where the process ends."""

import signal
import subprocess
import sys
import textwrap

import pytest

from quadra_ad.errors import ConfigError, DiskFullError
from quadra_ad.runtime.closed_output import OutputClosed
from quadra_ad.runtime.exit_codes import (
    EXIT_BROKEN_PIPE,
    EXIT_CRASH,
    EXIT_INTERRUPTED,
    EXIT_MISTAKE,
    EXIT_TERMINATED,
)
from quadra_ad.runtime.run_ending import FAILED, FINISHED, KILLED, ending_the_run


def _inside_a_task(raised: BaseException, explain=None):
    """What the block raised on and the ending the task recorded."""
    recorded = []
    with pytest.raises(BaseException) as out, ending_the_run(record=recorded.append, explain=explain):
        raise raised
    (ending,) = recorded
    return out.value, ending


def test_exit_codes_are_what_shells_report_for_the_same_stop():
    assert (EXIT_CRASH, EXIT_MISTAKE) == (1, 2)
    assert EXIT_INTERRUPTED == 128 + signal.SIGINT
    assert EXIT_BROKEN_PIPE == 128 + signal.SIGPIPE
    assert EXIT_TERMINATED == 128 + signal.SIGTERM


def test_a_task_that_ends_normally_records_nothing_and_is_finished():
    recorded = []
    with ending_the_run(record=recorded.append) as ending:
        pass
    assert recorded == [] and ending.status == FINISHED and ending.exit_code == 0


def test_ctrl_c_inside_a_task_is_killed_and_raised_on_as_it_came():
    interrupt = KeyboardInterrupt()
    raised, ending = _inside_a_task(interrupt)
    assert raised is interrupt and (ending.status, ending.exit_code) == (KILLED, EXIT_INTERRUPTED)


def test_lightnings_exit_after_a_ctrl_c_is_a_ctrl_c_again():
    raised, ending = _inside_a_task(SystemExit(1))
    assert type(raised) is KeyboardInterrupt and isinstance(raised.__cause__, SystemExit)
    assert (ending.status, ending.exit_code) == (KILLED, EXIT_INTERRUPTED)


def test_a_mistake_fails_the_run_and_a_crash_too_with_their_own_codes():
    mistake = ConfigError("datamodule.data_path: missing")
    raised, ending = _inside_a_task(mistake)
    assert raised is mistake and (ending.status, ending.exit_code, ending.error) == (FAILED, EXIT_MISTAKE, mistake)
    crash = RuntimeError("boom")
    raised, ending = _inside_a_task(crash)
    assert raised is crash and (ending.status, ending.exit_code) == (FAILED, EXIT_CRASH)


def test_explain_turns_a_low_level_error_into_the_users_one():
    full = OSError(28, "No space left on device")
    raised, ending = _inside_a_task(full, explain=lambda error: DiskFullError("no space left on the disk"))
    assert isinstance(raised, DiskFullError) and raised.__cause__ is full
    assert ending.error is raised and ending.exit_code == EXIT_MISTAKE


def test_a_record_that_fails_is_a_warning_and_the_runs_own_error_goes_on(caplog):
    def broken_record(ending):
        raise ValueError("store down")

    with pytest.raises(RuntimeError, match="boom"), ending_the_run(record=broken_record):
        raise RuntimeError("boom")
    assert "could not log the FAILED run" in caplog.text


def test_a_command_says_its_mistake_and_exits_2():
    said = []
    with pytest.raises(SystemExit) as out, ending_the_run(say=said.append, exits=True):
        raise ConfigError("model: unknown")
    assert out.value.code == EXIT_MISTAKE and said[0].mistake


def test_a_mistake_shown_whole_is_raised_on():
    with pytest.raises(ConfigError), ending_the_run(exits=True, traceback_for_mistakes=True):
        raise ConfigError("model: unknown")


def test_a_crash_around_a_command_is_raised_on_for_its_traceback():
    with pytest.raises(RuntimeError), ending_the_run(exits=True):
        raise RuntimeError("boom")


def test_a_failure_the_command_dealt_with_lets_it_go_on():
    with ending_the_run(say=lambda ending: True, exits=True) as ending:
        raise RuntimeError("a sweep job crashed")
    assert ending.went_on and ending.status == FAILED


def test_the_commands_own_exit_goes_through_untouched():
    said = []
    with pytest.raises(SystemExit) as out, ending_the_run(say=said.append, exits=True):
        sys.exit(0)
    assert out.value.code == 0 and said == []


def test_a_closed_output_inside_a_task_is_a_stop_not_a_failure():
    raised, ending = _inside_a_task(OutputClosed("reader gone"))
    assert isinstance(raised, OutputClosed) and (ending.status, ending.exit_code) == (KILLED, EXIT_BROKEN_PIPE)


# -- whole processes: the exit code a shell sees ---------------------------------------------------
_COMMAND = textwrap.dedent("""
    import os, signal, sys, time
    from quadra_ad.runtime.run_ending import ending_the_run
    from quadra_ad.runtime.signals import install_sigterm_handler

    install_sigterm_handler()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a shell, whatever the test runner left
    recorded = []

    def say(ending):
        print("said", ending.status, ending.exit_code, "recorded", *recorded, file=sys.stderr, flush=True)

    with ending_the_run(say=say, exits=True):
        with ending_the_run(record=lambda ending: recorded.append(ending.status)):
            {stop}
            time.sleep(30)
""")


@pytest.mark.parametrize(("stop", "code"), [
    pytest.param("os.kill(os.getpid(), signal.SIGTERM)", EXIT_TERMINATED, id="sigterm"),
    pytest.param("os.kill(os.getpid(), signal.SIGINT)", EXIT_INTERRUPTED, id="ctrl-c"),
    pytest.param("raise RuntimeError('DataLoader worker (pid 7) is killed by signal: Terminated. ')", EXIT_TERMINATED,
                 id="worker-killed-by-sigterm"),
    # Python drops what a destructor raises: the SIGTERM must not be lost with it.
    pytest.param("type('Collected', (), {'__del__': lambda self: (os.kill(os.getpid(), signal.SIGTERM), "
                 "sum(range(10**5)))})()", EXIT_TERMINATED, id="sigterm-inside-a-destructor"),
])
def test_a_stopped_command_records_its_run_killed_and_exits_as_the_signal_would(stop, code, tmp_path):
    done = subprocess.run([sys.executable, "-c", _COMMAND.replace("{stop}", stop)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert done.stderr.strip().splitlines()[-1] == f"said KILLED {code} recorded KILLED"


def test_a_command_whose_reader_went_away_ends_quietly_with_141(tmp_path):
    code = "from quadra_ad.runtime.run_ending import ending_the_run\nwith ending_the_run(exits=True):\n" \
           "    while True:\n        print('line' * 100, flush=True)\n"
    with (tmp_path / "stderr").open("w") as err:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=err, cwd=tmp_path)
        process.stdout.read(10)
        process.stdout.close()
        assert process.wait(timeout=60) == EXIT_BROKEN_PIPE
    assert (tmp_path / "stderr").read_text() == ""
