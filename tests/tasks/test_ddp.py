"""Distributed training (Lightning DDP, 2 CPU processes over gloo) gives the results of a 1-process
run: the same memory bank, the same test AUROC, thresholds over every test image, and one set
of outputs and one MLflow run, written by process 0.

The 2-process runs go through the real ``quadra-ad`` command: Lightning's ``ddp`` starts the
second process by running that command line again (a pytest session cannot be run again).
"""

import csv
import json
import re
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from quadra_ad.checks.composition import compose_config
from quadra_ad.checks.values import validate_values
from quadra_ad.errors import ConfigError
from quadra_ad.models.patchcore import Patchcore, row_order, subsample_memory_bank
from quadra_ad.run import run
from quadra_ad.runtime.distributed import global_order
from quadra_ad.testing.synthetic import write_synthetic_dataset
from tests.cli_runner import quadra_ad
from tests.conftest import fast_overrides

TRAIN_IMAGES, TEST_GOOD, TEST_DEFECT, UNKNOWN = 15, 15, 15, 3
TWO_PROCESSES = ("trainer=ddp_cpu",)
#: Several training batches per process (15 images: 3 + 3 + 2 on each of two processes).
SMALL_BATCHES = "datamodule.train_batch_size=3"
#: Files a run may hold beyond the 1-process run's: Hydra's logs (the second process's is named
#: by Lightning's Hydra support) and Hydra's record of the command line.
CLI_ONLY = re.compile(r"^(cli\.log|train_ddp_process_1\.log|\.hydra/.*)$")


@pytest.fixture(scope="module")
def odd_dataset(tmp_path_factory) -> Path:
    # Odd split sizes, so the sampler pads the shards of two processes with a repeated image;
    # faint defects, so that AUROC is not 1.0 and a difference would show.
    return write_synthetic_dataset(
        tmp_path_factory.mktemp("ddp_data"), n_train=TRAIN_IMAGES, n_test_good=TEST_GOOD,
        n_test_defect=TEST_DEFECT, size=32, defect_contrast=0.2, n_unknown=UNKNOWN,
    )


def _overrides(experiment: str, data: Path, tracking_dir: Path | None, *extra: str) -> list[str]:
    overrides = fast_overrides(data, tracking_dir, "backbone=resnet18", "export.types=[torchscript]", *extra)
    # The experiment's callbacks stay: a trainable model's best-epoch checkpoint must work under DDP.
    return [f"experiment={experiment}", *(o for o in overrides if o != "callbacks=none")]


def _one_process(experiment: str, data: Path, folder: Path, tracking_dir: Path | None = None, *extra: str):
    return run(compose_config(_overrides(experiment, data, tracking_dir, *extra)), output_dir=folder / "run")


def _two_processes(experiment: str, data: Path, folder: Path, tracking_dir: Path | None = None, *extra: str) -> Path:
    """The run folder of a 2-process ``quadra-ad`` run started in ``folder``."""
    result = quadra_ad(*_overrides(experiment, data, tracking_dir, *TWO_PROCESSES, *extra), cwd=folder)
    assert result.returncode == 0, result.stderr[-3000:]
    # Hydra's default folder is named to the microsecond: the second process must reuse it, not make its own.
    run_dirs = list((folder / "outputs").glob("*/*"))
    assert len(run_dirs) == 1, run_dirs
    return run_dirs[0]


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def _predictions(run_dir: Path) -> list[dict]:
    with (run_dir / "predictions.csv").open() as handle:
        return list(csv.DictReader(handle))


def _buffers(run_dir: Path) -> dict[str, torch.Tensor]:
    return dict(torch.jit.load(str(run_dir / "deployment_model" / "model.pt")).named_buffers())


def _files(run_dir: Path) -> set[str]:
    """The run's files; a checkpoint is named by its epoch, which may differ between the runs."""
    return {re.sub(r"best-\d+\.ckpt$", "best-N.ckpt", p.relative_to(run_dir).as_posix())
            for p in run_dir.rglob("*") if p.is_file()}


def _gathered_images(run_dir: Path) -> list[int]:
    """The image counts process 0 logged when it gathered the memory bank."""
    log = (run_dir / "cli.log").read_text()
    return [int(n) for n in re.findall(r"embeddings of (\d+) training images gathered from 2 processes", log)]


def _assert_one_set_of_outputs(run_dir: Path, one_process_dir: Path) -> None:
    extra = {name for name in _files(run_dir) - _files(one_process_dir) if not CLI_ONLY.match(name)}
    assert not extra, f"files a 1-process run does not write: {sorted(extra)}"
    rows = _predictions(run_dir)
    paths = [row["image_path"] for row in rows]
    assert len(paths) == len(set(paths)) == TEST_GOOD + TEST_DEFECT + UNKNOWN
    assert paths == [row["image_path"] for row in _predictions(one_process_dir)]
    assert len(list((run_dir / "deployment_model").glob("model.json"))) == 1


# -- memory-bank models ---------------------------------------------------------------------
def test_padim_on_two_processes_fits_the_gaussian_of_one_process(odd_dataset, tmp_path):
    (tmp_path / "one").mkdir()
    one = _one_process("base/anomaly/padim", odd_dataset, tmp_path, tmp_path / "one", SMALL_BATCHES)
    run_dir = _two_processes("base/anomaly/padim", odd_dataset, tmp_path, tmp_path, SMALL_BATCHES)

    assert _gathered_images(run_dir) == [TRAIN_IMAGES]
    # The Gaussian is fitted on every training image once: a missing or repeated image would move it.
    gaussian = _buffers(run_dir)
    torch.testing.assert_close(gaussian["model.gaussian.mean"], one.model.model.gaussian.mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gaussian["model.gaussian.inv_covariance"], one.model.model.gaussian.inv_covariance,
                               rtol=1e-3, atol=1e-3)
    assert abs(_metrics(run_dir)["image_AUROC"] - one.metrics["image_AUROC"]) <= 0.005
    assert _metrics(run_dir)["image_threshold"] == pytest.approx(one.metrics["image_threshold"], rel=1e-4)
    _assert_one_set_of_outputs(run_dir, one.output_dir)

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert runs[0].data.params["trainer.strategy"] == "ddp" and runs[0].data.params["trainer.devices"] == "2"


def test_patchcore_on_two_processes_keeps_the_coreset_of_one_process(odd_dataset, tmp_path):
    # The two samplers deal the training images in different orders; a coreset seed makes the
    # coreset independent of that order.
    extra = ("model.coreset_seed=0", SMALL_BATCHES)
    one = _one_process("base/anomaly/patchcore", odd_dataset, tmp_path, None, *extra)
    run_dir = _two_processes("base/anomaly/patchcore", odd_dataset, tmp_path, None, *extra)

    assert _gathered_images(run_dir) == [TRAIN_IMAGES]
    bank, one_bank = _buffers(run_dir)["model.memory_bank"], one.model.model.memory_bank
    assert bank.shape == one_bank.shape
    torch.testing.assert_close(bank[row_order(bank)], one_bank[row_order(one_bank)], rtol=1e-4, atol=1e-5)
    assert abs(_metrics(run_dir)["image_AUROC"] - one.metrics["image_AUROC"]) <= 0.005
    _assert_one_set_of_outputs(run_dir, one.output_dir)


# -- a trainable model ----------------------------------------------------------------------
def test_stfpm_trains_on_two_processes_and_writes_one_set_of_outputs(odd_dataset, tmp_path):
    extra = ("trainer.max_epochs=2",)
    one = _one_process("base/anomaly/stfpm", odd_dataset, tmp_path, None, *extra)
    run_dir = _two_processes("base/anomaly/stfpm", odd_dataset, tmp_path, None, *extra)

    _assert_one_set_of_outputs(run_dir, one.output_dir)
    metrics = _metrics(run_dir)
    assert {"image_AUROC", "image_threshold", "pixel_AUROC"} <= set(metrics)
    assert metrics["image_tp"] + metrics["image_fn"] == TEST_DEFECT
    assert metrics["image_tn"] + metrics["image_fp"] == TEST_GOOD
    assert len(list((run_dir / "lightning_logs").rglob("metrics.csv"))) == 1
    # The best epoch is chosen on the validation AUROC of every image, saved once, and it is what
    # was tested and exported.
    assert len(list(run_dir.rglob("*.ckpt"))) == 1


# -- the parts, and the mistakes ------------------------------------------------------------
def test_global_order_undoes_the_samplers_dealing_and_padding():
    # DistributedSampler over 5 images and 2 processes: positions 0..5, position 5 repeats image a.
    shards = [["a", "c", "e"], ["b", "d", "a"]]
    assert global_order(shards) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]
    # predict's sampler does not pad: shards may differ in length.
    assert global_order([["a", "c"], ["b"]]) == [(0, 0), (1, 0), (0, 1)]


def test_a_coreset_seed_picks_the_same_coreset_whatever_the_order_of_the_images():
    images = list(torch.randn(12, 16, 8, generator=torch.Generator().manual_seed(0)).unbind(0))  # 16 patches each
    coresets = []
    for order in ([*range(12)], [5, 0, 11, 3, 8, 1, 10, 2, 7, 4, 9, 6]):
        model = Patchcore(backbone="resnet18", pre_trained=False).model
        model.embedding_store.extend(torch.cat([images[i] for i in order]).split(5))
        subsample_memory_bank(model, 0.25, seed=3)
        coresets.append(model.memory_bank[row_order(model.memory_bank)])
    torch.testing.assert_close(coresets[0], coresets[1], rtol=0, atol=0)


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer.devices=2"], r"trainer\.devices=2 needs trainer\.strategy=ddp"),
    (["trainer.strategy=ddp"], r"trainer\.strategy=ddp with trainer\.devices=1 starts a single process"),
    (["trainer=ddp_cpu", "trainer.strategy=dpp"], r"trainer\.strategy='dpp' \(takes .*did you mean ddp\?"),
    (["trainer=ddp_cpu", "trainer.strategy=ddp_spawn"], r"trainer\.strategy='ddp_spawn' \(takes .*not supported"),
    (["trainer=ddp_cpu", "trainer.devices=[0,1]"], r"trainer\.devices=\[0, 1\] \(on CPU it takes the number"),
    (["trainer=ddp_cpu", "callbacks=default", "callbacks.batch_size_finder.enabled=true"],
     r"batch size finder does not run under trainer\.strategy=ddp"),
])
def test_distributed_mistakes_are_one_line(overrides, message, odd_dataset):
    cfg = compose_config(_overrides("base/anomaly/padim", odd_dataset, None, *overrides))
    with pytest.raises(ConfigError, match=message):
        validate_values(cfg)


def test_distributed_mistake_on_the_command_line_exits_2_before_training(odd_dataset, tmp_path):
    result = quadra_ad(*_overrides("base/anomaly/padim", odd_dataset, None, "trainer.devices=2"), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "trainer.strategy=ddp" in result.stderr
    assert not (tmp_path / "outputs").exists()


def test_ddp_inside_a_multirun_is_refused_as_a_mistake(odd_dataset, tmp_path):
    result = quadra_ad("-m", *_overrides("base/anomaly/padim", odd_dataset, None, *TWO_PROCESSES), cwd=tmp_path)
    assert result.returncode == 2
    assert "cannot run inside a multirun (-m)" in result.stderr
    assert not list(tmp_path.rglob("lightning_logs"))


def test_ddp_from_a_python_session_is_refused_before_training(odd_dataset, tmp_path):
    cfg = compose_config(_overrides("base/anomaly/padim", odd_dataset, None, *TWO_PROCESSES))
    with pytest.raises(ConfigError, match=r"start the run with the quadra-ad command"):
        run(cfg, output_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "lightning_logs").exists()


# -- stopping it ----------------------------------------------------------------------------
def test_sigterm_to_the_launching_process_ends_every_process_and_marks_the_run_killed(odd_dataset, tmp_path):
    import os
    import signal
    import subprocess

    import psutil

    from tests.cli_runner import QUADRA_AD, quadra_ad_env, wait_until_training_runs

    command = [*QUADRA_AD, *_overrides("base/anomaly/stfpm", odd_dataset, tmp_path, *TWO_PROCESSES,
                                       "trainer.max_epochs=100000", "export.types=[]")]
    with (tmp_path / "stdout.txt").open("w") as out, (tmp_path / "stderr.txt").open("w") as err_file:
        process = subprocess.Popen(command, cwd=tmp_path, env=quadra_ad_env(), stdout=out, stderr=err_file,
                                   start_new_session=True)
        try:
            wait_until_training_runs(process, tmp_path, timeout=240)
            others = psutil.Process(process.pid).children()
            assert others, "the second process of the run is not there"
            process.send_signal(signal.SIGTERM)  # to the launching process only, as `kill <pid>` does
            process.wait(timeout=120)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    err = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 143, err[-3000:]
    assert not [p for p in others if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "a DDP process was left"
    lines = [line for line in err.splitlines() if line.startswith("quadra-ad:")]
    assert lines == ["quadra-ad: terminated (SIGTERM): what the run wrote so far stays in its run folder; its MLflow "
                     "run is marked KILLED"], err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["KILLED"]
