"""quadra-ad-predict on inputs that used to hang, crash or answer wrongly: the real command in a
subprocess, a real exported model, real files (a 30000 x 30000 PNG, a named pipe, float TIFFs)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.deploy.test_predictor_inputs import huge_png, png_bytes

PREDICT = [sys.executable, "-m", "quadra_ad.cli.predict"]


def _predict(*args, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*PREDICT, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def _float_tiff(path: Path, values: np.ndarray) -> Path:
    cv2.imwrite(str(path), values.astype(np.float32))
    return path


#: Files that must each be skipped with one line while the good images beside them are scored.
UNUSABLE_FILES = {
    "huge.png": (lambda p: p.write_bytes(huge_png(30000)), "it is 30000x30000 pixels (WxH), over the 268,435,456 pixels"),
    "liar.png": (lambda p: p.write_bytes(huge_png(1 << 20, pixel_rows=False)), "it is 1048576x1048576 pixels"),
    "pipe.png": (os.mkfifo, "it is a named pipe (FIFO), not an image file"),
    "tiny.png": (lambda p: p.write_bytes(png_bytes(np.zeros((2, 2), np.uint8))), "it is 2x2 pixels"),
    "text.png": (lambda p: p.write_text("hello"), "it is empty, corrupt or not an image"),
    "float255.tif": (lambda p: _float_tiff(p, np.full((32, 32, 3), 200.0)), "they look 8-bit: divide by 255"),
    "nan.tif": (lambda p: _float_tiff(p, np.full((32, 32), np.nan)), "NaN or infinite"),
    "missing.png": (lambda p: None, "No such file or directory"),
}


@pytest.mark.timeout(180)  # the named pipe: a regression blocks on it, and must fail, not hang
def test_each_unusable_file_is_one_skipped_line_and_the_good_images_are_scored(deployment, good_png, tmp_path):
    for name, (make, _) in UNUSABLE_FILES.items():
        make(tmp_path / name)
    good = [shutil.copy(good_png, tmp_path / f"good_{i}.png") for i in range(2)]
    done = _predict(deployment, good[0], *[tmp_path / name for name in UNUSABLE_FILES], good[1], timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "DecompressionBomb" not in done.stderr
    skipped = [line for line in done.stderr.splitlines() if line.startswith("quadra-ad-predict: skipped: ")]
    assert len(skipped) == len(UNUSABLE_FILES), done.stderr
    for line, (name, (_, message)) in zip(skipped, UNUSABLE_FILES.items(), strict=True):
        assert line.startswith(f"quadra-ad-predict: skipped: cannot read image file '{tmp_path / name}': ") and message in line
    assert [row.split(",")[0] for row in done.stdout.splitlines()[1:]] == [str(path) for path in good]
    assert done.stderr.splitlines()[-1].endswith(f", {len(UNUSABLE_FILES)} unreadable")


def test_a_named_pipe_inside_a_folder_is_not_an_image_and_is_passed_over(deployment, good_png, tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    shutil.copy(good_png, tmp_path / "good.png")
    done = _predict(deployment, tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 2


def _heatmap_names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def test_heatmaps_are_unique_visible_inside_their_folder_and_stable(deployment, good_png, tmp_path):
    # Two images whose last three path parts match, and one reached through "..".
    images = [tmp_path / "line_a" / "cam" / "good" / "000.png", tmp_path / "line_b" / "cam" / "good" / "000.png",
              tmp_path / "up.png"]
    for image in images:
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(good_png, image)
    work = tmp_path / "work"
    work.mkdir()
    arguments = [deployment, images[0], images[1], "../up.png", "--heatmaps", "maps", "--threshold=1e9"]
    first = _predict(*arguments, cwd=work)
    assert first.returncode == 0, first.stderr
    names = _heatmap_names(work / "maps")
    assert len(names) == 3 and not any(name.startswith(".") for name in names)
    assert all(name.endswith("_good.png") for name in names)
    assert [name.rsplit("_", 2)[0] for name in names] == ["cam__good__000", "cam__good__000", "up"]
    assert _heatmap_names(work) == ["maps"]  # nothing written beside the folder
    assert all(cv2.imread(str(work / "maps" / name)).shape == (32, 32, 3) for name in names)

    again = _predict(*arguments, cwd=work)
    assert again.returncode == 0 and _heatmap_names(work / "maps") == names
    relabelled = _predict(*arguments[:-1], "--threshold=-1e9", cwd=work)
    assert relabelled.returncode == 0, relabelled.stderr
    assert _heatmap_names(work / "maps") == [name.replace("_good.png", "_anomalous.png") for name in names]


@pytest.mark.timeout(180)
def test_a_reader_that_stops_early_ends_the_command_quietly(deployment, good_png, tmp_path):
    """``quadra-ad-predict … | head -n 2``: the reader goes away while results are still coming."""
    with (tmp_path / "stderr").open("w") as errors:
        process = subprocess.Popen([*PREDICT, str(deployment), *[str(good_png)] * 400, "--batch", "1"],
                                   stdout=subprocess.PIPE, stderr=errors, text=True)
        assert process.stdout.readline().startswith("image_path,")
        assert process.stdout.readline().startswith(str(good_png))
        process.stdout.close()
        returncode = process.wait(timeout=120)
    stderr = (tmp_path / "stderr").read_text()
    assert returncode == 141, stderr  # the shell's code for a writer that SIGPIPE stopped
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr and "Exception ignored" not in stderr


@pytest.mark.parametrize(("args", "message"), [
    pytest.param(["--out", "{tmp}/no/such/folder/out.csv"], "quadra-ad-predict: --out {tmp}/no/such/folder/out.csv: cannot write it (No such file or directory)", id="out-in-a-missing-folder"),
    pytest.param(["--heatmaps", "{tmp}/a_file"], "quadra-ad-predict: --heatmaps {tmp}/a_file: cannot make the folder (File exists)", id="heatmaps-is-a-file"),
    pytest.param(["--batch", "2.5"], "quadra-ad-predict: argument --batch: invalid int value: '2.5' (see quadra-ad-predict --help)", id="batch-float"),
    pytest.param(["--batch", "many"], "quadra-ad-predict: argument --batch: invalid int value: 'many' (see quadra-ad-predict --help)", id="batch-string"),
    pytest.param(["--batch=-3"], "quadra-ad-predict: --batch -3: give a whole number of at least 1", id="batch-negative"),
    pytest.param(["--threshold", "nan"], "quadra-ad-predict: threshold 'nan': give a finite number", id="threshold-nan"),
    pytest.param(["--threshold", "inf"], "quadra-ad-predict: threshold 'inf': give a finite number", id="threshold-inf"),
])
def test_argument_mistakes_are_one_line_and_exit_2(deployment, good_png, tmp_path, args, message):
    (tmp_path / "a_file").write_text("")
    done = _predict(deployment, good_png, *[a.format(tmp=tmp_path) for a in args])
    assert done.returncode == 2
    assert done.stderr.strip() == message.format(tmp=tmp_path), done.stderr
