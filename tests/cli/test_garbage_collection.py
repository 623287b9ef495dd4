"""The command keeps Python's collector off what a run holds for its life (``gc.freeze``): after the
heavy imports, once per process, and at exit. Each probe runs in a process of its own: a frozen
object is never collected, which a test session must not inherit."""

import subprocess
import sys


def _probe(code: str, cwd) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_freezing_after_the_imports_happens_once_per_process(tmp_path):
    out = _probe(
        "import gc\n"
        "from quadra_ad.runtime.garbage_collection import freeze_imports\n"
        "freeze_imports(); first = gc.get_freeze_count()\n"
        "class Job: pass\n"
        "garbage = [Job() for _ in range(1000)]\n"
        "for job in garbage: job.cycle = job\n"
        "freeze_imports()\n"
        "print(first > 0, gc.get_freeze_count() == first)\n",
        tmp_path,
    )
    # A second job in the same process (a basic-launcher sweep) would otherwise freeze the first one's garbage.
    assert out.split() == ["True", "True"]


def test_the_console_script_freezes_before_the_interpreter_exits(tmp_path):
    out = _probe(
        "import gc, sys\n"
        "sys.argv = ['quadra-ad', '--help']\n"
        "from quadra_ad.cli.entry_points import quadra_ad\n"
        "before = gc.get_freeze_count()\n"
        "quadra_ad()\n"
        "print('FROZEN', before == 0 and gc.get_freeze_count() > 0)\n",
        tmp_path,
    )
    assert out.strip().endswith("FROZEN True")
