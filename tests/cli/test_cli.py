"""The ``quadra-ad`` command as a user types it (real subprocesses)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from quadra_ad.testing.synthetic import write_synthetic_dataset
from tests.cli_runner import quadra_ad

ROOT = Path(__file__).resolve().parent.parent.parent


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("quadra-ad: error:")]


def _group_line(help_text: str, group: str) -> list[str]:
    """The options Hydra's --help lists for ``group`` (its ``group: a, b, c`` line)."""
    line = next(line for line in help_text.splitlines() if line.startswith(f"{group}: "))
    return line.removeprefix(f"{group}: ").split(", ")


def test_help_lists_examples_and_groups(tmp_path):
    result = quadra_ad("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "experiment=generic/digits/anomaly/padim" in result.stdout
    assert {"padim", "patchcore", "efficient_ad"} <= set(_group_line(result.stdout, "model"))
    # Every experiment, nested folders included, as an option of the one experiment group.
    assert {"base/anomaly/padim", "generic/digits/anomaly/inference"} <= set(_group_line(result.stdout, "experiment"))


def test_help_lists_only_the_groups_a_user_picks_from_and_composes_the_overrides(tmp_path):
    result = quadra_ad("experiment=base/anomaly/padim", "trainer.max_epochs=3", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    group_lines = [line.split(":")[0] for line in result.stdout.split("== Config groups ==")[1].split("== Config ==")[0]
                   .splitlines() if ": " in line]
    # Quadra's names for our options compose but are not listed; parts other configs include neither.
    assert "model" in group_lines and "trainer" in group_lines
    assert not [g for g in group_lines if "/" in g or g.startswith("_") or g.startswith("hydra")]
    assert "lightning_cpu" not in _group_line(result.stdout, "trainer")
    config = result.stdout.split("== Config ==")[1]
    assert "_target_: anomalib.models.Padim" in config and "max_epochs: 3" in config


def test_help_with_a_wrong_override_is_one_line_and_exit_2(tmp_path):
    result = quadra_ad("nosuch.key=1", "--help", cwd=tmp_path)
    assert result.returncode == 2
    assert _error_lines(result) == [
        "quadra-ad: error: nosuch.key: no such key under 'nosuch'. To add a new key write +nosuch.key=<value>"]


MODELS = {"cflow", "csflow", "dfkde", "dfm", "draem", "efficient_ad", "fastflow", "padim", "patchcore",
          "reverse_distillation", "stfpm", "supersimplenet", "uflow", "anomaly_dino", "cfa", "dinomaly", "dsr",
          "foundad", "fre", "ganomaly", "general_ad", "glass", "inp_former", "l2bt", "mh_patchcore", "patchflow",
          "rad", "super_add", "uninet"}


def test_list_help_and_completion_offer_exactly_the_models(tmp_path):
    listed = quadra_ad("--list", "model", cwd=tmp_path)
    assert listed.returncode == 0 and set(listed.stdout.split()) == MODELS
    assert set(_group_line(quadra_ad("--help", cwd=tmp_path).stdout, "model")) == MODELS
    assert set(_completions("quadra-ad model=", tmp_path)) == {f"model={m}" for m in MODELS}


def _completions(line: str, cwd) -> list[str]:
    result = quadra_ad("-sc", "query=bash", cwd=cwd, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.split()


def test_shell_completion_lists_the_experiments_with_the_users_own(tmp_path):
    (tmp_path / "experiments" / "my_line").mkdir(parents=True)
    (tmp_path / "experiments" / "my_line" / "bottle.yaml").write_text("# @package _global_\ncore:\n  name: b\n")
    assert set(_completions("quadra-ad experiment=base/anomaly/p", tmp_path)) == {
        "experiment=base/anomaly/padim", "experiment=base/anomaly/patchcore", "experiment=base/anomaly/patchflow"}
    everything = _completions("quadra-ad experiment=", tmp_path)
    assert {"experiment=my_line/bottle", "experiment=generic/mnist/anomaly/stfpm"} <= set(everything)
    assert "experiment=" in _completions("quadra-ad exper", tmp_path)


def test_list_experiments(tmp_path):
    result = quadra_ad("--list", "experiment", cwd=tmp_path)
    assert result.returncode == 0
    assert "base/anomaly/padim" in result.stdout.split()


def test_user_experiment_wins_over_a_shipped_one_of_the_same_name(tmp_path):
    (tmp_path / "experiments" / "base" / "anomaly").mkdir(parents=True)
    (tmp_path / "experiments" / "base" / "anomaly" / "padim.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /model: patchcore\ncore:\n  name: mine\n")
    result = quadra_ad("experiment=base/anomaly/padim", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: mine" in result.stdout and "quadra_ad.models.patchcore.Patchcore" in result.stdout


def test_cfg_job_prints_composed_config_without_running(tmp_path):
    result = quadra_ad("experiment=base/anomaly/patchcore", "--cfg", "job", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "quadra_ad.models.patchcore.Patchcore" in result.stdout
    assert not (tmp_path / "outputs").exists()


def test_unknown_experiment_fails_with_one_line(tmp_path):
    result = quadra_ad("experiment=base/anomaly/padimm", cwd=tmp_path)
    assert result.returncode == 2
    lines = _error_lines(result)
    assert len(lines) == 1 and "base/anomaly/padim" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_data_path_fails_with_one_line(tmp_path):
    result = quadra_ad("experiment=base/anomaly/padim", cwd=tmp_path)
    assert result.returncode == 2
    assert _error_lines(result) == [
        "quadra-ad: error: datamodule.data_path is not set: add datamodule.data_path=<value> to the command line or the experiment file"
    ]
    assert "Traceback" not in result.stderr


def test_data_path_that_does_not_exist_fails_with_one_line(tmp_path):
    missing = tmp_path / "nowhere"
    result = quadra_ad("experiment=base/anomaly/padim", f"datamodule.data_path={missing}", cwd=tmp_path)
    assert result.returncode == 2
    lines = _error_lines(result)
    assert len(lines) == 1 and str(missing) in lines[0] and "does not exist" in lines[0]


def test_folder_missing_train_good_names_the_folder(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", n_train=2, n_test_good=1, n_test_defect=1, size=16)
    for image in (data / "train" / "good").iterdir():
        image.unlink()
    (data / "train" / "good").rmdir()
    result = quadra_ad("experiment=base/anomaly/padim", f"datamodule.data_path={data}", cwd=tmp_path)
    lines = _error_lines(result)
    assert result.returncode == 2 and len(lines) == 1 and "'train/good'" in lines[0]


def test_full_error_env_shows_the_traceback(tmp_path):
    result = quadra_ad("experiment=base/anomaly/padim", cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


#: What the demo used to print that no user acts on: the config's instantiation log, Lightning's
#: model summary, device and val_check_interval notes, third-party warnings and adverts, MLflow's
#: database creation, the threshold object's repr.
NOT_ON_THE_TERMINAL = (
    "Instantiating", "Total params", "| Name", "val_check_interval", "GPU available", "TPU available",
    "Trainer already configured", "Initializing Padim model", "Warning", "litlogger",
    "Creating initial MLflow database tables", "Calibration(",
)


def test_offline_demo_runs_end_to_end(tmp_path):
    returned = tmp_path / "returned.json"
    result = quadra_ad(
        "experiment=generic/digits/anomaly/padim",
        f"datamodule.data_path={tmp_path / 'digits'}",
        "datamodule.limit_data=24",
        "transforms.input_size=[32,32]",
        "trainer.enable_progress_bar=false",
        # What Hydra hands a sweeper: the task function's return value.
        "+hydra.callbacks.record._target_=tests.hydra_return_recorder.ReturnRecorder",
        f"+hydra.callbacks.record.path={returned}",
        cwd=tmp_path, env={"PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = list((tmp_path / "outputs" / "digits_padim").iterdir())
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    for name in ("deployment_model/model.pt", "deployment_model/model.onnx", "deployment_model/model.json",
                 "metrics.json", "predictions.csv", ".hydra/config.yaml"):
        assert (run_dir / name).is_file(), name
    written_metrics = json.loads((run_dir / "metrics.json").read_text())
    training_auroc = written_metrics["image_AUROC"]
    assert training_auroc > 0.5
    # Digit masks are whole images: AUPRO is undefined there, so it is null with the reason, not 0.0.
    assert written_metrics["pixel_AUPRO"] is None and "whole image" in written_metrics["not_applicable"]["pixel_AUPRO"]
    assert json.loads(returned.read_text()) == training_auroc  # core.optimized_metric: image_AUROC
    assert (tmp_path / "mlflow.db").is_file()
    assert f"quadra-ad: run folder {run_dir}" in result.stdout
    assert "mlflow ui --backend-store-uri sqlite:///" in result.stdout
    # The terminal shows what a user acts on; how the run was built stays in its log file.
    printed = result.stdout + result.stderr
    for noise in NOT_ON_THE_TERMINAL:
        assert noise not in printed, (noise, printed[-3000:])
    log_file = (run_dir / "cli.log").read_text()
    assert log_file.count("Instantiating ") >= 5  # task, datamodule, model, callbacks, trainer
    assert "Total params" in log_file and "val_check_interval" in log_file
    assert log_file.count("GPU available: False") == 1  # Lightning's lines once, not twice

    # Second half of the round trip: the exported ONNX model on the same data, from the CLI.
    inference = quadra_ad(
        "experiment=generic/digits/anomaly/inference",
        f"task.model_path={run_dir / 'deployment_model' / 'model.onnx'}",
        f"datamodule.data_path={tmp_path / 'digits'}",
        "datamodule.limit_data=24",
        "task.use_training_threshold=true",
        "print_config=true",  # Quadra's key: the resolved config before the run starts
        cwd=tmp_path,
    )
    assert inference.returncode == 0, inference.stderr[-3000:]
    assert f"model_path: {run_dir / 'deployment_model' / 'model.onnx'}" in inference.stdout
    assert "Warning" not in inference.stdout + inference.stderr, inference.stderr[-3000:]
    inference_dir = next((tmp_path / "outputs" / "digits_inference").iterdir())
    inference_metrics = json.loads((inference_dir / "metrics.json").read_text())
    training_metrics = json.loads((run_dir / "metrics.json").read_text())
    assert inference_metrics["image_AUROC"] == training_metrics["image_AUROC"]
    assert (inference_dir / "confusion_matrix.png").is_file()
    assert any((inference_dir / "heatmaps").rglob("*.png"))


def test_inference_without_model_path_fails_with_one_line(tmp_path):
    result = quadra_ad("experiment=generic/digits/anomaly/inference", cwd=tmp_path)
    assert result.returncode == 2
    assert _error_lines(result) == [
        "quadra-ad: error: task.model_path is not set: add task.model_path=<value> to the command line or the experiment file"
    ]


def test_corrupt_image_read_by_a_worker_is_named_in_one_line(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=2, size=16)
    corrupt = data / "test" / "good" / "001.png"
    # Cut in half: the header (all the preflight reads) is intact, the pixels fail to decode later.
    corrupt.write_bytes(corrupt.read_bytes()[: corrupt.stat().st_size // 2])
    result = quadra_ad(
        "experiment=base/anomaly/padim", f"datamodule.data_path={data}", "model.pre_trained=false",
        "transforms.input_size=[32,32]", "datamodule.num_workers=2", "trainer.enable_progress_bar=false",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = _error_lines(result)
    assert lines == [f"quadra-ad: error: cannot read image file '{corrupt}': it is empty, corrupt or not an image"]


@pytest.mark.parametrize("args", [["--help"], ["experiment=base/anomaly/padim", "datamodule.data_path=x", "--cfg", "job"]])
def test_help_and_cfg_job_do_not_import_torch_or_anomalib(tmp_path, args):
    probe = (
        "import sys\n"
        f"sys.argv = ['quadra-ad', *{args!r}]\n"
        "from quadra_ad.cli.train import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'anomalib', 'lightning', 'mlflow', 'onnxruntime') if m in sys.modules)\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY=\n" in result.stdout


def test_tracking_failure_is_one_line_on_stderr_and_the_run_still_succeeds(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nothing listens on once the socket is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data = write_synthetic_dataset(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=2, size=16)
    result = quadra_ad(
        "experiment=base/anomaly/padim", f"datamodule.data_path={data}", "model.pre_trained=false",
        "transforms.input_size=[32,32]", "datamodule.num_workers=0", "trainer.enable_progress_bar=false",
        "export.types=[]", f"logger.mlflow.tracking_uri=http://127.0.0.1:{port}", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next((tmp_path / "outputs" / "padim").iterdir())
    failures = [line for line in result.stderr.splitlines() if "MLflow tracking failed" in line]
    assert len(failures) == 1 and failures[0].startswith("quadra-ad: MLflow tracking failed")
    assert failures[0].endswith(f"quadra-ad-upload {run_dir}")
    assert f"quadra-ad: run folder {run_dir}" in result.stdout


@pytest.mark.parametrize("verbose", [False, True])
def test_third_party_warnings_go_to_the_log_file_unless_verbose(verbose, tmp_path):
    import subprocess
    import sys

    log_file = tmp_path / "run.log"
    # As under Hydra: the root logger writes to the terminal and to the run's log file.
    code = ("import logging, sys, warnings; from quadra_ad.runtime.quiet_terminal import quiet_third_party; "
            f"logging.basicConfig(level=logging.INFO, handlers=[logging.StreamHandler(sys.stderr), "
            f"logging.FileHandler({str(log_file)!r})]); "
            f"quiet_third_party(verbose={verbose}); "
            "warnings.warn_explicit('old API is deprecated', FutureWarning, "
            "'/venv/lib/python3.11/site-packages/timm/models/layers.py', 1, module='timm.models.layers'); "
            "warnings.warn_explicit('our own warning', UserWarning, '/src/quadra_ad/x.py', 1, module='quadra_ad.x'); "
            "logging.getLogger('quadra_ad.config.instantiation').info('Instantiating model <x>'); "
            "logging.getLogger('lightning.pytorch.utilities.rank_zero').info('GPU available: False, used: False'); "
            "logging.getLogger('lightning.pytorch.utilities.rank_zero').warning('a warning from Lightning')")
    stderr = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stderr
    logged = log_file.read_text()
    assert "our own warning" in stderr and "a warning from Lightning" in stderr
    # Either on the terminal (verbose) or in the log file: never lost.
    assert ("old API is deprecated" in stderr) == verbose != ("old API is deprecated" in logged)
    for line in ("Instantiating model", "GPU available"):
        assert (line in stderr) == verbose and line in logged, line


@pytest.mark.parametrize(("category", "folder"), [("bottle", "3_padim_bottle"), ("metal nut", "3_padim_metal-nut"),
                                                  (None, "3_padim"), ("a/b", "3_padim_a-b")])
def test_sweep_job_folders_name_the_experiment_and_category(category, folder):
    from omegaconf import OmegaConf

    from quadra_ad.config.locations import config_dir
    from quadra_ad.config.resolvers import register_resolvers

    register_resolvers()  # what quadra-ad does before Hydra starts
    shipped = OmegaConf.load(config_dir() / "hydra" / "default.yaml").sweep
    job = OmegaConf.create({"hydra": {"job": {"num": 3}, "sweep": shipped}, "core": {"name": "padim"},
                            "datamodule": {"category": category}})
    assert job.hydra.sweep.subdir == folder


@pytest.mark.slow
def test_a_category_sweep_writes_one_named_folder_per_job_and_reports_them(tmp_path):
    for seed, name in enumerate(["bottle", "metal nut"]):
        write_synthetic_dataset(tmp_path / "mvtec" / name, n_train=4, n_test_good=2, n_test_defect=2, size=16,
                                seed=seed)
    result = quadra_ad(
        "-m", "experiment=base/anomaly/padim", f"datamodule.data_path={tmp_path / 'mvtec'}", "datamodule.category=*",
        "backbone.pre_trained=false", "transforms.input_size=[32,32]", "export.types=[]",
        "trainer.enable_progress_bar=false", "datamodule.num_workers=0", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "multirun").iterdir()
    jobs = sorted(path.name for path in sweep.iterdir() if (path / ".hydra").is_dir())
    assert jobs == ["0_padim_bottle", "1_padim_metal-nut"]
    report = (sweep / "report" / "sweep_report.csv").read_text()
    assert "0_padim_bottle,bottle,Padim,FINISHED" in report and "1_padim_metal-nut,metal nut,Padim,FINISHED" in report
    assert "best job by image_AUROC: job 0 (" in result.stderr
