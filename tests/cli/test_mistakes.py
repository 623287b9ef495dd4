"""Every user mistake: one line naming the key or file, exit code 2, before anything is trained or
imported (no torch, no anomalib), in about a second, and no run folder left behind."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from quadra_ad.cli.compare import main as compare_main
from quadra_ad.testing.synthetic import write_synthetic_dataset
from tests.cli_runner import QUADRA_AD, quadra_ad, quadra_ad_env

HEAVY = ("torch", "anomalib", "lightning", "mlflow", "onnxruntime")
#: A generous bound for a loaded 2-core machine; the checks take about 0.5 s here.
FAST_S = 5.0


def _probe(args: list[str], cwd: Path) -> tuple[int, str, list[str], float]:
    """Run the CLI in a fresh interpreter: exit code, stderr, heavy modules imported, seconds."""
    probe = (
        "import sys, time\n"
        f"sys.argv = ['quadra-ad', *{args!r}]\n"
        "started = time.perf_counter()\n"
        "from quadra_ad.cli.train import main\n"
        "code = 0\n"
        "try:\n    main()\nexcept SystemExit as stop:\n    code = stop.code\n"
        f"heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)\n"
        "print('RESULT|%s|%s|%.3f' % (code, ','.join(heavy), time.perf_counter() - started))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=quadra_ad_env(), capture_output=True,
                            text=True, timeout=120)
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT|"))
    _, code, heavy, seconds = line.split("|")
    return int(code), result.stderr, [m for m in heavy.split(",") if m], float(seconds)


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("quadra-ad: error: "), stderr[-2000:]
    return lines[0].removeprefix("quadra-ad: error: ")


def _refused(tmp_path: Path, *args: str) -> str:
    code, stderr, heavy, seconds = _probe(list(args), tmp_path)
    assert code == 2, stderr[-2000:]
    assert heavy == [], f"imported {heavy} before refusing"
    assert seconds < FAST_S
    assert not (tmp_path / "outputs").exists(), "a refused run left a run folder"
    return _one_error_line(stderr)


@pytest.fixture
def data(tmp_path) -> Path:
    return write_synthetic_dataset(tmp_path / "data", n_train=4, n_test_good=2, n_test_defect=2, size=32)


def test_epochs_that_are_not_a_number(tmp_path, data):
    message = _refused(tmp_path, "experiment=base/anomaly/padim", f"datamodule.data_path={data}", "trainer.max_epochs=abc")
    assert message.startswith("trainer.max_epochs='abc' (takes a whole number >= 1)")


def test_zero_and_negative_batch_sizes_are_named_together(tmp_path, data):
    message = _refused(tmp_path, "experiment=base/anomaly/padim", f"datamodule.data_path={data}",
                       "datamodule.train_batch_size=0", "datamodule.test_batch_size=-3")
    assert "datamodule.train_batch_size=0" in message and "datamodule.test_batch_size=-3" in message


@pytest.mark.parametrize("size", ["64", "[8,8]"])
def test_input_size_that_is_a_scalar_or_too_small(tmp_path, data, size):
    message = _refused(tmp_path, "experiment=base/anomaly/padim", f"datamodule.data_path={data}",
                       f"transforms.input_size={size}")
    assert message.startswith("transforms.input_size=") and "[height, width], whole numbers >= 32" in message


def test_a_wrong_value_and_a_missing_one_in_one_line(tmp_path):
    message = _refused(tmp_path, "experiment=base/anomaly/padim", "trainer.max_epochs=0")
    assert message.startswith("trainer.max_epochs=0") and "datamodule.data_path is not set" in message


def test_one_training_image(tmp_path):
    data = write_synthetic_dataset(tmp_path / "one", n_train=1, n_test_good=2, n_test_defect=2, size=32)
    message = _refused(tmp_path, "experiment=base/anomaly/padim", f"datamodule.data_path={data}")
    assert "train/good holds 1 image; at least 2 are needed" in message


def test_every_dataset_problem_at_once(tmp_path):
    data = write_synthetic_dataset(tmp_path / "bad", n_train=4, n_test_good=3, n_test_defect=2, size=32)
    (data / "train" / "good" / "000.png").write_bytes(b"")                        # empty
    (data / "test" / "good" / "001.png").write_bytes(b"\x89PNG not really")       # corrupt
    cv2.imwrite(str(data / "ground_truth" / "blob" / "000_mask.png"), np.zeros((20, 20), np.uint8))  # wrong size
    roi = tmp_path / "roi.png"
    cv2.imwrite(str(roi), np.full((16, 16), 255, np.uint8))                         # fits no image
    message = _refused(tmp_path, "experiment=base/anomaly/padim", f"datamodule.data_path={data}",
                       f"datamodule.valid_area_mask={roi}")
    assert message.startswith(f"datamodule.data_path '{data}': ")
    assert "'train/good/000.png' is empty (0 bytes)" in message
    assert "'test/good/001.png' is not an image, or is corrupt" in message
    assert "mask 'ground_truth/blob/000_mask.png' is 20x20 but its image is 32x32 (WxH)" in message
    assert "datamodule.valid_area_mask is 16x16" in message and "more" in message


def test_a_large_folder_is_checked_in_seconds(tmp_path):
    from quadra_ad.checks.dataset import check_dataset

    data = write_synthetic_dataset(tmp_path / "big", n_train=1, n_test_good=1, n_test_defect=1, size=64)
    image = (data / "train" / "good" / "000.png").read_bytes()
    for i in range(3000):
        (data / "train" / "good" / f"copy_{i:04d}.png").write_bytes(image)
    started = time.perf_counter()
    layout = check_dataset(data)
    assert len(layout.train) == 3001
    assert time.perf_counter() - started < 10.0  # about 1 s here on 2 cores


def test_yaml_syntax_error_in_a_users_experiment(tmp_path, data):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /experiment/base/anomaly/padim\n  - _self_\ncore:\n  name: [mine\n")
    message = _refused(tmp_path, "experiment=mine", f"datamodule.data_path={data}")
    assert message.startswith(f"YAML syntax error in '{tmp_path / 'experiments' / 'mine.yaml'}' line 7")
    assert "started at line 6" in message


@pytest.mark.parametrize("override, expected", [
    ("model.foo=1", "model.foo: no such key under 'model'. To add a new key write +model.foo=<value>"),
    ("model.n_featurs=10", "model.n_featurs: no such key under 'model'. Did you mean: model.n_features?"),
])
def test_override_of_a_key_that_does_not_exist(tmp_path, data, override, expected):
    assert _refused(tmp_path, "experiment=base/anomaly/padim", f"datamodule.data_path={data}", override).startswith(expected)


def test_non_ascii_path_gets_the_quoting_it_needs(tmp_path, data):
    accented = data.rename(tmp_path / "bottiglia_è")
    message = _refused(tmp_path, "experiment=base/anomaly/padim", f"datamodule.data_path={accented}")
    assert f"write it as datamodule.data_path=\"{accented}\"" in message
    # ... and quoted as it says, the same path runs its checks (here: refused for its epochs only).
    message = _refused(tmp_path, "experiment=base/anomaly/padim", f'datamodule.data_path="{accented}"',
                       "trainer.max_epochs=-1")
    assert message.startswith("trainer.max_epochs=-1")


def test_working_directory_that_is_not_writable(data):
    # /proc takes no new files, even from root (who passes every permission check).
    code, stderr, heavy, _ = _probe(["experiment=base/anomaly/padim", f"datamodule.data_path={data}"], Path("/proc"))
    assert code == 2 and heavy == []
    assert _one_error_line(stderr) == ("the working directory '/proc' is not writable: quadra-ad writes outputs/ and "
                                       "mlflow.db there; run it from a folder you can write to")


def test_inference_input_size_the_graph_cannot_take(tmp_path, data):
    # A card is enough: the check reads model.json before any graph is loaded.
    from quadra_ad.deploy.model_card import ModelCard
    from quadra_ad.evaluation.thresholds import Calibration

    folder = tmp_path / "deployment_model"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"graph")
    ModelCard(model_class="anomalib.models.Padim", input_size=[32, 32], mean=[0.5] * 3, std=[0.2] * 3,
              calibration=Calibration(1.0, 0.0, 2.0), task_type="classification", files={"onnx": "model.onnx"}).write(folder)
    message = _refused(tmp_path, "experiment=base/anomaly/inference", f"task.model_path={folder / 'model.onnx'}",
                       f"datamodule.data_path={data}", "transforms.input_size=[64,64]")
    assert message.startswith("transforms.input_size=[64, 64] but the model was exported for [32, 32]")


def test_a_sweep_job_with_a_mistake_leaves_its_folder_marked_failed(tmp_path):
    result = quadra_ad("-m", "experiment=base/anomaly/padim", f"datamodule.data_path={tmp_path / 'nowhere'}",
                       cwd=tmp_path)
    assert result.returncode == 2
    (marker,) = (tmp_path / "outputs" / "multirun").glob("*/*/FAILED.txt")
    assert "does not exist" in marker.read_text()


def test_ctrl_c_during_start_up_is_one_line(tmp_path, data):
    command = [*QUADRA_AD, "experiment=base/anomaly/padim", f"datamodule.data_path={data}", "~logger"]
    process = subprocess.Popen(command, cwd=tmp_path, env=quadra_ad_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(1.5)  # past the checks, inside the imports of torch and anomalib (several seconds)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert [line for line in stderr.splitlines() if line.strip()][-1] == \
        "quadra-ad: interrupted before the run started: nothing was written"
    assert "Traceback" not in stderr


@pytest.mark.parametrize("content, reason", [
    (b"", "is empty (0 bytes), not an MLflow store"),
    (b"not a database at all", "is not a SQLite database"),
])
def test_compare_refuses_an_empty_or_damaged_store_and_leaves_it_alone(tmp_path, capsys, content, reason):
    store = tmp_path / "mlflow.db"
    store.write_bytes(content)
    assert compare_main(["--tracking-uri", f"sqlite:///{store}", "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"quadra-ad-compare: error: '{store}' {reason}") and "\n" not in err
    assert store.read_bytes() == content  # not turned into a store


def test_compare_refuses_a_sqlite_file_that_is_not_an_mlflow_store(tmp_path, capsys):
    import sqlite3

    store = tmp_path / "other.db"
    with sqlite3.connect(store) as connection:
        connection.execute("CREATE TABLE parts (id INTEGER)")
    assert compare_main(["--tracking-uri", f"sqlite:///{store}", "--output-dir", str(tmp_path / "out")]) == 2
    assert "is a SQLite database but not an MLflow store" in capsys.readouterr().err
    with sqlite3.connect(store) as connection:
        assert [row[0] for row in connection.execute("SELECT name FROM sqlite_master")] == ["parts"]
