"""quadra-ad-predict: a real subprocess on a real exported model and real image files."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PREDICT = [sys.executable, "-m", "quadra_ad.cli.predict"]


def _predict(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([*PREDICT, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _training_scores(run_dir: Path) -> dict[str, float]:
    with (run_dir / "predictions.csv").open() as handle:
        return {row["image_path"]: float(row["raw_score"]) for row in csv.DictReader(handle)}


def test_scores_a_folder_to_csv_with_the_training_runs_scores(trained, tmp_path):
    training, _ = trained
    test_folder = Path(training.datamodule.layout.root) / "test"
    done = _predict(training.output_dir / "deployment_model", test_folder, "--out", tmp_path / "out.csv", "--batch", 4)
    assert done.returncode == 0, done.stderr
    with (tmp_path / "out.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    expected = _training_scores(training.output_dir)
    assert {row["image_path"] for row in rows} == set(expected)  # test/ and test/unknown/, recursively
    for row in rows:
        assert float(row["raw_score"]) == pytest.approx(expected[row["image_path"]], rel=1e-4)
    anomalous = sum(int(row["predicted_label"]) for row in rows)
    assert done.stderr.strip().splitlines()[-1].startswith(f"quadra-ad-predict: {len(rows)} images scored, {anomalous} anomalous")


def test_jsonl_heatmaps_and_fail_on_anomaly_for_line_scripts(trained, tmp_path):
    training, _ = trained
    defects = sorted(p for p in (Path(training.datamodule.layout.root) / "test").iterdir() if p.name not in ("good", "unknown"))
    done = _predict(training.output_dir / "deployment_model" / "model.onnx", defects[0], "--out", tmp_path / "out.jsonl",
                    "--heatmaps", tmp_path / "maps", "--threshold=-1e9", "--fail-on-anomaly")
    assert done.returncode == 1, done.stderr  # every image is anomalous under that threshold
    records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert records and all(r["predicted_label"] == 1 and r["threshold_source"] == "given" for r in records)
    assert len(list((tmp_path / "maps").glob("*_anomalous.png"))) == len(records)
    good = _predict(training.output_dir / "deployment_model", defects[0], "--threshold", "1e9", "--fail-on-anomaly")
    assert good.returncode == 0, good.stderr
    assert good.stdout.splitlines()[0] == "image_path,raw_score,normalized_score,predicted_label,threshold"


def test_an_unreadable_image_is_one_line_and_the_others_are_scored(trained, tmp_path):
    training, _ = trained
    folder = tmp_path / "images"
    shutil.copytree(Path(training.datamodule.layout.root) / "test" / "good", folder)
    (folder / "broken.png").write_bytes(b"not a png")
    done = _predict(training.output_dir / "deployment_model", folder)
    assert done.returncode == 2
    assert f"quadra-ad-predict: skipped: cannot read image file '{folder / 'broken.png'}'" in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stdout.splitlines()) == 1 + len(list(folder.glob("*.png"))) - 1  # a header, every other image


@pytest.mark.parametrize(("args", "message"), [
    (["{missing}", "{images}"], "quadra-ad-predict: MODEL '{missing}' does not exist"),
    (["{model}", "{images}", "--threshold", "high"], "quadra-ad-predict: threshold 'high': give 'training'"),
    (["{model}", "{images}", "--batch", "0"], "quadra-ad-predict: --batch 0: give a whole number of at least 1"),
    (["{model}", "{images}", "--out", "x.txt"], "quadra-ad-predict: --out x.txt: give a .csv or .jsonl file name"),
    (["{model}", "{empty}"], "quadra-ad-predict: no image files in {empty}"),
    (["{model}"], "quadra-ad-predict: the following arguments are required: images (see quadra-ad-predict --help)"),
])
def test_mistakes_are_one_line_and_exit_2(trained, tmp_path, args, message):
    training, _ = trained
    (tmp_path / "empty").mkdir()
    values = {"missing": tmp_path / "nothing.onnx", "model": training.output_dir / "deployment_model",
              "images": Path(training.datamodule.layout.root) / "test" / "good", "empty": tmp_path / "empty"}
    done = _predict(*[a.format(**values) for a in args])
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and done.stderr.startswith(message.format(**values)), done.stderr
