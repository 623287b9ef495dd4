"""A disk that fills up during a run: a real, small tmpfs mounted for the test (needs root, as
here and in CI; skipped with the reason elsewhere). Every file is whole or absent, the run ends
FAILED with one line, and the run record can still be uploaded or says why not."""

import json
import shutil
import subprocess

import pytest
import torch
from mlflow.tracking import MlflowClient

from quadra_ad.cli.upload import main as upload_main
from quadra_ad.errors import DiskFullError
from quadra_ad.run import run
from tests.conftest import training_config


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MB filesystem: the run's first files fit, its ~14 MB TorchScript export does not."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.strip()})")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_ends_the_run_failed_in_one_line_and_leaves_only_whole_files(segmentation_dataset, small_disk,
                                                                                  tmp_path):
    run_dir = small_disk / "run"
    cfg = training_config("base/anomaly/padim", segmentation_dataset, tmp_path)  # MLflow store on the big disk
    with pytest.raises(DiskFullError) as error:
        run(cfg, output_dir=run_dir)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"no space left on the disk of '{run_dir}'")
    assert f"quadra-ad-upload {run_dir}" in message and "config_resolved.yaml" in message
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert not [p for p in files if ".partial" in p.name], "a half-written temporary was left behind"
    scripted = run_dir / "deployment_model" / "model.pt"
    assert not scripted.exists() or torch.jit.load(str(scripted)) is not None  # whole, or not there
    record = json.loads((run_dir / "mlflow_run.json").read_text())  # written whole once space was freed
    assert record["status"] == "FAILED"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    (logged,) = client.search_runs([client.get_experiment_by_name("padim").experiment_id])
    assert logged.info.status == "FAILED"
    assert logged.data.tags["quadra_ad.error"].startswith("DiskFullError: no space left")


def test_patchcore_rows_that_fill_the_disk_end_the_run_failed_in_one_line_and_free_their_space(small_disk, tmp_path):
    """PatchCore's training rows wait in the run folder (an unnamed file); 40 images of 128 px make
    15 MB of them, more than the 8 MB disk holds."""
    from quadra_ad.testing.synthetic import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", n_train=40, n_test_good=2, n_test_defect=2, size=128,
                                   with_masks=False)
    run_dir = small_disk / "run"
    cfg = training_config("base/anomaly/patchcore", data, tmp_path, "backbone=resnet18",
                          "transforms.input_size=[128,128]")
    with pytest.raises(DiskFullError) as error:
        run(cfg, output_dir=run_dir)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"no space left on the disk of '{run_dir}'")
    # The rows' file was closed (it has no name: its space is free again), so the record was written.
    record = json.loads((run_dir / "mlflow_run.json").read_text())
    assert record["status"] == "FAILED"
    assert shutil.disk_usage(small_disk).used < 2 * 2**20


def test_upload_of_a_cut_short_record_says_so_in_one_line(tmp_path, capsys):
    (tmp_path / "mlflow_run.json").write_text('{"tracking_uri": "sqlite:///x.db", "para')
    assert upload_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cannot be read as a run record" in err and "cut short" in err


def test_upload_logs_what_is_there_and_names_what_is_not(tmp_path, capsys):
    (tmp_path / "metrics.json").write_text("{}")
    record = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment_name": "x", "run_name": "r",
              "params": {}, "metrics": {"image_AUROC": 0.9}, "artifacts": ["metrics.json", "deployment_model"],
              "tags": {}, "status": "FAILED"}
    (tmp_path / "mlflow_run.json").write_text(json.dumps(record))
    assert upload_main([str(tmp_path)]) == 0
    assert "not in the folder, so not uploaded: deployment_model" in capsys.readouterr().err
    client = MlflowClient(tracking_uri=record["tracking_uri"])
    (logged,) = client.search_runs([client.get_experiment_by_name("x").experiment_id])
    assert [a.path for a in client.list_artifacts(logged.info.run_id)] == ["metrics.json"]
