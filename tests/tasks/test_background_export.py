"""The ONNX export written by a forked child while the test step runs: the file, or the child's
error, comes back to the training process; an interrupted run leaves no child and no scratch
files behind. Real forks, real exports."""

import errno
import os
import signal
import time

import pytest
import torch

from quadra_ad.errors import ExportError
from quadra_ad.export import background, writers
from quadra_ad.export.background import BackgroundExport, ExportStalled, can_fork_exports
from quadra_ad.run import run
from quadra_ad.tasks.anomaly_training import AnomalyTrainingTask
from tests.conftest import training_config

pytestmark = pytest.mark.skipif(not can_fork_exports(1), reason="forked exports run on Linux without CUDA only")


def _reaped(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def test_the_childs_file_comes_back_and_this_process_gives_it_a_core_meanwhile(tmp_path):
    threads = torch.get_num_threads()

    def write():
        path = tmp_path / "model.onnx"
        path.write_text(str(os.getpid()))
        return path

    started = BackgroundExport(write)
    assert torch.get_num_threads() == max(1, threads - 1)
    path = started.result()
    assert path == tmp_path / "model.onnx" and int(path.read_text()) != os.getpid()
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("error", [ExportError("export.onnx_opset=7: not this model"),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_the_childs_error_is_raised_here_as_it_was_raised_there(error):
    def write():
        raise error

    with pytest.raises(type(error)) as raised:
        BackgroundExport(write).result()
    assert str(raised.value) == str(error) and getattr(raised.value, "errno", None) == getattr(error, "errno", None)


def test_an_error_that_cannot_be_pickled_comes_back_as_its_text():
    class Unpicklable(RuntimeError):
        def __reduce__(self):
            raise TypeError("no")

    def write():
        raise Unpicklable("tracer gave up")

    with pytest.raises(RuntimeError, match="Unpicklable: tracer gave up"):
        BackgroundExport(write).result()


def test_a_child_that_dies_is_an_error_that_says_how():
    def write():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(RuntimeError, match=r"ended without a result \(killed by signal 9\)"):
        BackgroundExport(write).result()


def test_cancel_kills_and_reaps_a_child_still_writing():
    def write():
        time.sleep(60)

    started = BackgroundExport(write)
    pid = started._pid
    began = time.monotonic()
    started.cancel()
    started.cancel()  # twice is harmless
    assert time.monotonic() - began < 10 and _reaped(pid)


def test_a_child_stuck_without_using_cpu_is_killed_and_said_so(monkeypatch):
    monkeypatch.setattr(background, "STALL_SECONDS", 1.5)

    def write():
        time.sleep(120)  # as a child blocked on a lock held at the fork would

    started = BackgroundExport(write)
    pid = started._pid
    began = time.monotonic()
    with pytest.raises(ExportStalled, match="used no CPU for 2 s"):
        started.result()
    assert time.monotonic() - began < 30 and _reaped(pid)


def _record_writer_pid(monkeypatch, tmp_path, then=None):
    """export_onnx as the child inherits it: notes the writing process, then exports (or ``then``)."""
    original = writers.export_onnx

    def export_onnx(*args, **kwargs):
        (tmp_path / f"writer-{os.getpid()}").touch()
        return (then or original)(*args, **kwargs)

    monkeypatch.setattr(writers, "export_onnx", export_onnx)


def test_a_training_run_writes_its_onnx_file_in_a_forked_child_and_checks_it(segmentation_dataset, tmp_path, monkeypatch):
    _record_writer_pid(monkeypatch, tmp_path)
    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, "export.types=[onnx,torchscript]")
    task = run(cfg, output_dir=tmp_path / "run")
    (writer,) = tmp_path.glob("writer-*")
    assert int(writer.name.split("-")[1]) != os.getpid()
    assert list(task.exported) == ["onnx", "torchscript"]  # the config's order, although ONNX came back last
    assert task.exported["onnx"] == (tmp_path / "run" / "deployment_model" / "model.onnx", None)


def test_ctrl_c_while_the_child_exports_kills_it_and_removes_its_scratch(segmentation_dataset, tmp_path, monkeypatch):
    threads = torch.get_num_threads()

    def slow_export(graph, example, folder, *args, **kwargs):
        (folder / f"{writers.ONNX_SCRATCH_PREFIX}partial").mkdir()
        time.sleep(120)

    _record_writer_pid(monkeypatch, tmp_path, then=slow_export)
    start = AnomalyTrainingTask._start_onnx_export

    def start_then_interrupt(self):
        start(self)
        while not list(tmp_path.glob("writer-*")):
            time.sleep(0.05)
        raise KeyboardInterrupt  # Ctrl-C in the test step, the export half done

    monkeypatch.setattr(AnomalyTrainingTask, "_start_onnx_export", start_then_interrupt)
    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, "export.types=[onnx]")
    began = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run(cfg, output_dir=tmp_path / "run")
    assert time.monotonic() - began < 100
    (writer,) = tmp_path.glob("writer-*")
    assert _reaped(int(writer.name.split("-")[1]))
    assert not list((tmp_path / "run" / "deployment_model").glob(f"{writers.ONNX_SCRATCH_PREFIX}*"))
    assert torch.get_num_threads() == threads


def test_a_stuck_forked_export_is_done_in_the_training_process_instead(segmentation_dataset, tmp_path, monkeypatch,
                                                                      caplog):
    monkeypatch.setattr(background, "STALL_SECONDS", 1.5)
    parent = os.getpid()
    original = writers.export_onnx

    def stuck_in_the_child(*args, **kwargs):
        if os.getpid() != parent:
            time.sleep(120)
        return original(*args, **kwargs)

    _record_writer_pid(monkeypatch, tmp_path, then=stuck_in_the_child)
    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, "export.types=[onnx]")
    task = run(cfg, output_dir=tmp_path / "run")
    writers_seen = {int(path.name.split("-")[1]) for path in tmp_path.glob("writer-*")}
    assert parent in writers_seen and len(writers_seen) == 2  # the child tried, this process wrote it
    assert task.exported["onnx"] == (tmp_path / "run" / "deployment_model" / "model.onnx", None)
    assert "the forked exporter used no CPU for 2 s; exporting onnx in this process instead" in caplog.text
    assert all(_reaped(pid) for pid in writers_seen - {parent})


def test_no_fork_where_it_is_not_safe_or_does_not_pay(monkeypatch):
    assert can_fork_exports(world_size=2) is False  # DDP: the other processes wait on this one
    # One core (a container limited to it): nothing to overlap on. Stands in for such a machine.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0})
    assert can_fork_exports(world_size=1) is False
