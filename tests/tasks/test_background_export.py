"""The export step writes the ONNX file in the training process, after the test and the report, in
the order of ``export.types``; a Ctrl-C halfway through leaves no half-written file and ends the
run KILLED. (It was once written by a forked child while the test ran: on two cores that saved
under 1 s of a ~25 s run, measured with scripts' forked-export benchmark, and the fork was removed.)"""

import os

import pytest
import torch
from mlflow.tracking import MlflowClient

from quadra_ad.export import writers
from quadra_ad.run import run
from tests.conftest import training_config


def test_a_training_run_writes_its_onnx_file_in_this_process_in_the_configs_order(segmentation_dataset, tmp_path,
                                                                                 monkeypatch):
    writing = []
    original = writers.export_onnx

    def export_onnx(*args, **kwargs):
        writing.append(os.getpid())
        return original(*args, **kwargs)

    monkeypatch.setattr(writers, "export_onnx", export_onnx)
    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, "export.types=[onnx,torchscript]")
    task = run(cfg, output_dir=tmp_path / "run")
    assert set(writing) == {os.getpid()}
    assert list(task.exported) == ["onnx", "torchscript"]
    assert task.exported["onnx"] == (tmp_path / "run" / "deployment_model" / "model.onnx", None)
    assert not list((tmp_path / "run" / "deployment_model").glob(f"{writers.ONNX_SCRATCH_PREFIX}*"))


def test_ctrl_c_while_the_onnx_file_is_saved_leaves_no_partial_file_and_ends_the_run_killed(
        segmentation_dataset, tmp_path, monkeypatch):
    def save_then_interrupt(self, destination, *args, **kwargs):
        with open(destination, "wb") as half:
            half.write(b"half an onnx file")
        raise KeyboardInterrupt  # Ctrl-C while the file is being written

    monkeypatch.setattr(torch.onnx.ONNXProgram, "save", save_then_interrupt)
    cfg = training_config("base/anomaly/padim", segmentation_dataset, tmp_path, "export.types=[onnx]")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, output_dir=tmp_path / "run")
    folder = tmp_path / "run" / "deployment_model"
    assert not (folder / "model.onnx").exists()
    assert not list(folder.glob(f"{writers.ONNX_SCRATCH_PREFIX}*"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("padim").experiment_id])
    assert mlflow_run.info.status == "KILLED"
