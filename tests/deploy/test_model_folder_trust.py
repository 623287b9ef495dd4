"""A deployment folder is trusted only as far as its hashes say (model.json's ``card_sha256`` and
``sha256``): every tampered, damaged or odd folder is one ConfigError line, before any graph is loaded."""

import json
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from quadra_ad.deploy import Predictor
from quadra_ad.deploy.model_card import (
    CARD_HASH,
    MAX_CARD_BYTES,
    MODEL_JSON,
    SCHEMA_VERSION,
    ModelCard,
    card_content_hash,
    file_sha256,
    write_card_json,
)
from quadra_ad.errors import ConfigError
from quadra_ad.evaluation.thresholds import Calibration, choose_threshold
from tests.cli_runner import quadra_ad
from tests.conftest import IMAGE_SIZE, training_config


@pytest.fixture(scope="module")
def exported(segmentation_dataset, tmp_path_factory) -> Path:
    """One tiny PaDiM's deployment folder with every kind of file a card names: model.pt,
    model.onnx with its weights in model.onnx.data, model.xml + model.bin, valid_area_mask.png."""
    import cv2

    from quadra_ad.export import writers
    from quadra_ad.run import run

    folder = tmp_path_factory.mktemp("trust")
    roi = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    roi[2:30, 3:29] = 255
    cv2.imwrite(str(folder / "roi.png"), roi)
    cfg = training_config("base/anomaly/padim", segmentation_dataset, None, "datamodule.crop_area=[2,2,30,30]",
                          f"datamodule.valid_area_mask={folder / 'roi.png'}",
                          "export.types=[torchscript,onnx,openvino]")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(writers, "ONNX_EXTERNAL_DATA_BYTES", 0)  # so model.onnx.data is written too
        task = run(cfg, output_dir=folder / "run")
    deployment = task.output_dir / "deployment_model"
    assert {p.name for p in deployment.iterdir()} >= {"model.pt", "model.onnx", "model.onnx.data", "model.xml",
                                                     "model.bin", "valid_area_mask.png", MODEL_JSON}
    return deployment


@pytest.fixture
def folder(exported, tmp_path) -> Path:
    """This test's own copy of the deployment folder."""
    return Path(shutil.copytree(exported, tmp_path / "deployment_model"))


# -- ways to tamper with a folder ----------------------------------------------------------------
def _values(folder: Path) -> dict:
    return json.loads((folder / MODEL_JSON).read_text())


def _edit(change: Callable[[dict], None], rehash: bool = True) -> Callable[[Path], None]:
    """Change model.json's values; with ``rehash`` its card_sha256 is recomputed (as someone who knows
    the format would), so what is checked is the value itself, not the hash."""
    def tamper(folder: Path) -> None:
        values = _values(folder)
        change(values)
        if rehash:
            write_card_json(values, folder)
        else:
            (folder / MODEL_JSON).write_text(json.dumps(values, indent=2))
    return tamper


def _set(key: str, value) -> Callable[[Path], None]:
    return _edit(lambda values: values.__setitem__(key, value))


def _write_card(content: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / MODEL_JSON).write_bytes(content)


def _flip_a_byte(name: str) -> Callable[[Path], None]:
    """One byte of ``name`` changed: the same size, another file."""
    def tamper(folder: Path) -> None:
        data = bytearray((folder / name).read_bytes())
        data[len(data) // 2] ^= 1
        (folder / name).write_bytes(bytes(data))
    return tamper


def _replace_by_fifo(name: str) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        (folder / name).unlink()
        os.mkfifo(folder / name)
    return tamper


def _replace_by_folder(name: str) -> Callable[[Path], None]:
    def tamper(folder: Path) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()
    return tamper


def _link_outside(name: str) -> Callable[[Path], None]:
    """``name`` becomes a link to an identical copy outside the folder (its hash still matches)."""
    def tamper(folder: Path) -> None:
        outside = folder.parent / "elsewhere"
        outside.mkdir(exist_ok=True)
        shutil.move(folder / name, outside / name)
        (folder / name).symlink_to(outside / name)
    return tamper


def _point_outside(key: str, name: str) -> Callable[[Path], None]:
    """The card names a file outside the folder (hashes made to match, as an attacker would)."""
    def tamper(folder: Path) -> None:
        outside = folder.parent / "other"
        outside.mkdir(exist_ok=True)
        target = outside / Path(name).name
        shutil.copy(folder / name, target)
        values = _values(folder)
        if key == "valid_area_mask":
            values["valid_area_mask"] = str(target)
        else:
            values["files"][key] = os.path.relpath(target, folder)
        write_card_json(values, folder)
    return tamper


def _remove(*names: str) -> Callable[[Path], None]:
    return lambda folder: [(folder / name).unlink() for name in names]


def _swap_mask(folder: Path) -> None:
    import cv2

    cv2.imwrite(str(folder / "valid_area_mask.png"), np.full((IMAGE_SIZE, IMAGE_SIZE), 255, dtype=np.uint8))


def _copy_over(source: str, target: str) -> Callable[[Path], None]:
    return lambda folder: shutil.copy(folder / source, folder / target)


def _drop_format(export_format: str) -> Callable[[dict], None]:
    def change(values: dict) -> None:
        del values["files"][export_format]
        values["sha256"] = {k: v for k, v in values["sha256"].items() if not k.startswith(export_format)}
    return change


#: (id, what is done to the folder, the file given to Predictor.load, a key part of the one line).
CATALOGUE = [
    # The card's own content.
    ("card hash deleted", _edit(lambda v: v.pop(CARD_HASH), rehash=False), "model.pt", "has no card_sha256"),
    ("sha256 block deleted", _edit(lambda v: v.pop("sha256"), rehash=False), "model.pt", "was changed after export"),
    ("mean edited", _edit(lambda v: v.__setitem__("mean", [0.6, 0.5, 0.4]), rehash=False), "model.onnx",
     "was changed after export"),
    ("std edited", _edit(lambda v: v.__setitem__("std", [0.3, 0.3, 0.3]), rehash=False), "model.onnx",
     "was changed after export"),
    ("threshold edited", _edit(lambda v: v.__setitem__("image_threshold", 0.0), rehash=False), "model.onnx",
     "was changed after export"),
    ("older schema without its hash", _edit(lambda v: (v.pop(CARD_HASH), v.__setitem__("schema_version", 2)),
                                            rehash=False), "model.onnx", "schema 2 model card"),
    ("newer schema", _set("schema_version", SCHEMA_VERSION + 1), "model.onnx", "written by a newer quadra_ad"),
    ("schema version a string", _set("schema_version", "3"), "model.onnx", "schema_version must be a whole number"),
    # Not a card at all.
    ("a JSON list", _write_card(b"[1, 2, 3]"), "model.onnx", "holds a JSON list, not an object"),
    ("a JSON number", _write_card(b"3"), "model.onnx", "holds a JSON number, not an object"),
    ("invalid UTF-8", _write_card(b'{"model_class": "\xff\xfe"}'), "model.onnx", "is not UTF-8 text"),
    ("not JSON", _write_card(b"{model_class: padim"), "model.onnx", "is not valid JSON"),
    ("huge file", _write_card(b" " * (MAX_CARD_BYTES + 1)), "model.onnx", "far larger than any model.json"),
    ("nested too deeply", _write_card(b"[" * 100_000), "model.onnx", "nested too deeply"),
    ("duplicate key", _write_card(b'{"image_threshold": 1.0, "image_threshold": 2.0}'), "model.onnx",
     "'image_threshold' more than once"),
    ("empty file", _write_card(b""), "model.onnx", "is not valid JSON"),
    # Values of a card whose hash matches.
    ("unknown key", _set("colour", "red"), "model.onnx", "unknown key(s) 'colour'"),
    ("missing key", _edit(lambda v: v.pop("std")), "model.onnx", "missing key(s) std"),
    ("NaN image threshold", _set("image_threshold", math.nan), "model.onnx", "image_threshold must be a finite number"),
    ("string image threshold", _set("image_threshold", "0.5"), "model.onnx", "image_threshold must be a finite number"),
    ("infinite pixel max", _set("pixel_max", math.inf), "model.onnx", "pixel_max must be a finite number or null"),
    ("boolean image min", _set("image_min", True), "model.onnx", "image_min must be a finite number"),
    ("image min above max", _edit(lambda v: v.update(image_min=5.0, image_max=1.0)), "model.onnx",
     "image_min 5.0 is above image_max 1.0"),
    ("pixel range half null", _set("pixel_max", None), "model.onnx", "pixel_min and pixel_max must both be"),
    ("input size zero", _set("input_size", [0, 32]), "model.onnx", "input_size must be [height, width]"),
    ("input size one number", _set("input_size", [32]), "model.onnx", "input_size must be [height, width]"),
    ("input size floats", _set("input_size", [32.0, 32.0]), "model.onnx", "input_size must be [height, width]"),
    ("input size enormous", _set("input_size", [100_000, 100_000]), "model.onnx", "input_size must be at most"),
    ("mean of two numbers", _set("mean", [0.5, 0.5]), "model.onnx", "mean must be 3 finite numbers"),
    ("mean NaN", _set("mean", [0.5, math.nan, 0.5]), "model.onnx", "mean must be 3 finite numbers"),
    ("std zero", _set("std", [0.2, 0.0, 0.2]), "model.onnx", "std must be 3 finite numbers above 0"),
    ("std negative", _set("std", [0.2, -0.2, 0.2]), "model.onnx", "std must be 3 finite numbers above 0"),
    ("crop area of three", _set("crop_area", [2, 2, 30]), "model.onnx", "crop_area must be null or [x1, y1, x2, y2]"),
    ("crop area inverted", _set("crop_area", [30, 2, 2, 30]), "model.onnx", "crop_area must be null or"),
    ("crop area negative", _set("crop_area", [-2, 2, 30, 30]), "model.onnx", "crop_area must be null or"),
    ("has_anomaly_map a string", _set("has_anomaly_map", "yes"), "model.onnx", "has_anomaly_map must be true or false"),
    ("fixed batch size negative", _set("fixed_batch_size", {"onnx": -1}), "model.onnx", "fixed_batch_size must be"),
    ("fixed batch size of an unknown format", _set("fixed_batch_size", {"tflite": 1}), "model.onnx",
     "fixed_batch_size must be"),
    ("channel order BGR", _set("channel_order", "BGR"), "model.onnx", "channel_order must be 'RGB'"),
    ("another threshold rule", _set("threshold_rule", "score > threshold is anomalous"), "model.onnx",
     "threshold_rule must be"),
    ("unknown task type", _set("task_type", "detection"), "model.onnx", "task_type must be"),
    ("input channels zero", _set("input_channels", 0), "model.onnx", "input_channels must be a whole number above 0"),
    ("training not an object", _set("training", ["run"]), "model.onnx", "training must be an object"),
    ("a hash that is no hash", _edit(lambda v: v["sha256"].__setitem__("onnx", "abc")), "model.onnx",
     "sha256 must be an object of"),
    ("no hash for the mask", _edit(lambda v: v["sha256"].pop("valid_area_mask")), "model.onnx",
     "sha256 has no hash for valid_area_mask"),
    ("a hash for a file it does not name", _edit(lambda v: v["sha256"].__setitem__("tflite", "0" * 64)), "model.onnx",
     "sha256 names tflite"),
    ("a graph of the wrong ending", _edit(lambda v: v["files"].__setitem__("onnx", "model.pt")), "model.onnx",
     "files.onnx 'model.pt' does not end like a onnx file"),
    ("no onnx graph in the card", _edit(_drop_format("onnx")), "model.onnx", "was written for no onnx graph"),
    # Files named outside the folder.
    ("mask an absolute path elsewhere", _point_outside("valid_area_mask", "valid_area_mask.png"), "model.onnx",
     "valid_area_mask '/"),
    ("graph a relative path out of the folder", _point_outside("onnx", "model.onnx"), "model.onnx",
     "files.onnx '../other/model.onnx' is not a file inside the deployment folder"),
    ("mask a link out of the folder", _link_outside("valid_area_mask.png"), "model.onnx",
     "valid_area_mask 'valid_area_mask.png' is not a file inside"),
    ("graph a link out of the folder", _link_outside("model.pt"), "model.pt",
     "files.torchscript 'model.pt' is not a file inside the deployment folder"),
    ("model.json a link out of the folder", _link_outside(MODEL_JSON), "model.onnx", "is a link to a file outside"),
    ("onnx weights a link out of the folder", _link_outside("model.onnx.data"), "model.onnx",
     "is a link to a file outside"),
    # Files swapped or damaged.
    ("model.pt changed", _flip_a_byte("model.pt"), "model.pt", "was written for other graph files"),
    ("model.onnx replaced by another file the card names", _copy_over("model.pt", "model.onnx"), "model.onnx",
     "was written for other graph files"),
    ("model.onnx.data changed", _flip_a_byte("model.onnx.data"), "model.onnx", "its weights 'model.onnx.data' differ"),
    ("model.bin changed", _flip_a_byte("model.bin"), "model.xml", "its weights 'model.bin' differ"),
    ("mask swapped", _swap_mask, "model.onnx", "was written with another valid area mask"),
    ("mask missing", _remove("valid_area_mask.png"), "model.onnx", "needs its valid area mask"),
    ("onnx weights missing", _remove("model.onnx.data"), "model.onnx", "its weights 'model.onnx.data' are missing"),
    ("openvino weights missing", _remove("model.bin"), "model.xml", "its weights 'model.bin' are missing"),
    # Not regular files (a FIFO would block an open).
    ("model.onnx a FIFO", _replace_by_fifo("model.onnx"), "model.onnx", "is a named pipe (FIFO), not a model file"),
    ("model.onnx a FIFO in the folder", _replace_by_fifo("model.onnx"), ".", "is a named pipe (FIFO)"),
    ("model.onnx a folder", _replace_by_folder("model.onnx"), ".", "is a folder, not a model file"),
    ("model.json a FIFO", _replace_by_fifo(MODEL_JSON), "model.onnx", "is a named pipe (FIFO), not a regular file"),
    ("model.json a folder", _replace_by_folder(MODEL_JSON), "model.onnx", "is a folder, not a regular file"),
    ("model.onnx.data a FIFO", _replace_by_fifo("model.onnx.data"), "model.onnx", "is a named pipe (FIFO)"),
    ("mask a FIFO", _replace_by_fifo("valid_area_mask.png"), "model.onnx", "is a named pipe (FIFO)"),
]


@pytest.mark.parametrize(("tamper", "given", "expected"), [pytest.param(*case[1:], id=case[0]) for case in CATALOGUE])
def test_a_tampered_or_odd_deployment_folder_is_one_line(folder, tamper, given, expected, monkeypatch):
    tamper(folder)
    _refuse_to_load_graphs(monkeypatch)
    with pytest.raises(ConfigError) as error:
        Predictor.load(folder / given)
    message = str(error.value)
    assert "\n" not in message
    assert expected in message, message


def _refuse_to_load_graphs(monkeypatch) -> None:
    """Every check above happens before a runner opens a graph file (loading TorchScript runs it)."""
    from quadra_ad.deploy import runners

    def opened(self, path, *args, **kwargs):
        raise AssertionError(f"a runner opened '{path}' before the folder was verified")

    for runner in (runners.TorchScriptModel, runners.OnnxModel, runners.OpenVinoModel):
        monkeypatch.setattr(runner, "__init__", opened)


@pytest.mark.parametrize("given", ["model.pt", "model.onnx", "model.xml", "."])
def test_the_untouched_folder_loads_with_every_graph(folder, given):
    predictor = Predictor.load(folder / given)
    assert predictor.card.valid_area_mask == "valid_area_mask.png"
    assert predictor.predict(np.full((IMAGE_SIZE, IMAGE_SIZE, 3), 0.5, dtype=np.float32)).label in (0, 1)


def test_the_export_writes_a_hash_of_the_card_and_of_every_file_it_names(exported):
    values = json.loads((exported / MODEL_JSON).read_text())
    assert values["schema_version"] == SCHEMA_VERSION
    names = {"torchscript": "model.pt", "onnx": "model.onnx", "onnx_weights": "model.onnx.data",
             "openvino": "model.xml", "openvino_weights": "model.bin", "valid_area_mask": "valid_area_mask.png"}
    assert values["sha256"] == {role: file_sha256(exported / name) for role, name in names.items()}
    assert values[CARD_HASH] == card_content_hash(values)


def test_a_card_read_and_written_again_is_the_same_card(folder):
    before = (folder / MODEL_JSON).read_bytes()
    ModelCard.read(folder / MODEL_JSON).write(folder)
    assert (folder / MODEL_JSON).read_bytes() == before


def test_a_tampered_preferred_graph_is_refused_not_passed_over(folder):
    # model.onnx is the one a folder loads: its failing check must not fall back to model.pt silently.
    _flip_a_byte("model.onnx")(folder)
    with pytest.raises(ConfigError, match="model.onnx"):
        Predictor.load(folder)


def test_a_tampered_graph_that_is_not_loaded_does_not_stop_the_verified_one(folder):
    _flip_a_byte("model.pt")(folder)
    predictor = Predictor.load(folder)
    assert predictor.model.format == "onnx" and predictor.model.path == folder / "model.onnx"


def test_a_card_from_another_export_of_the_same_folder_shape_is_refused(folder, tmp_path):
    # Another model's card, valid in itself, copied over: the graph hashes give it away.
    other = Path(shutil.copytree(folder, tmp_path / "other"))
    _flip_a_byte("model.onnx")(other)
    card = ModelCard.read(other / MODEL_JSON)
    card.write(other)  # re-exported for the changed graph: a whole, valid card of another model
    shutil.copy(other / MODEL_JSON, folder / MODEL_JSON)
    with pytest.raises(ConfigError, match="was written for other graph files than"):
        Predictor.load(folder)


@pytest.mark.parametrize("threshold", [
    pytest.param("abc", id="a word"), pytest.param("nan", id="NaN text"), pytest.param(math.nan, id="NaN"),
    pytest.param(math.inf, id="infinity"), pytest.param("-inf", id="minus infinity text"),
    pytest.param(True, id="a boolean"), pytest.param(b"1.0", id="bytes"), pytest.param(None, id="None"),
    pytest.param([1.0], id="a list"), pytest.param("Training", id="training capitalised"),
    pytest.param(" training", id="training with a space"), pytest.param("1e999", id="overflowing text"),
])
def test_a_threshold_that_is_not_a_finite_number_or_a_training_one_is_refused(threshold):
    with pytest.raises(ConfigError, match=r"^threshold .*(give 'training'|give a finite number)") as error:
        choose_threshold(Calibration(1.0, 0.0, 2.0), threshold)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("threshold", "expected"), [("training", 1.0), ("training_pixel", 1.5), ("2.5", 2.5), (3, 3.0)])
def test_a_threshold_may_be_a_training_one_a_number_or_its_text(threshold, expected):
    assert choose_threshold(Calibration(1.0, 0.0, 2.0, pixel_threshold=1.5), threshold)[0] == expected


def test_a_nan_training_threshold_in_a_hand_made_calibration_is_refused():
    with pytest.raises(ConfigError, match="image_threshold is nan, not a finite number"):
        choose_threshold(Calibration(math.nan, 0.0, 2.0), "training")


def test_the_inference_command_refuses_a_tampered_folder_in_one_line(folder, segmentation_dataset, tmp_path):
    _edit(lambda v: v.__setitem__("image_threshold", math.nan))(folder)
    result = quadra_ad("experiment=base/anomaly/inference", f"task.model_path={folder}",
                       f"datamodule.data_path={segmentation_dataset}", "~logger", cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "image_threshold must be a finite number" in lines[0] and str(folder / MODEL_JSON) in lines[0]


def test_the_export_writes_a_card_from_plain_values_that_names_and_hashes_its_files(tmp_path):
    from quadra_ad.deploy.model_card import MODEL_JSON, VALID_AREA_MASK, file_sha256
    from quadra_ad.export.model_card import write_model_card

    (tmp_path / "model.onnx").write_bytes(b"a graph")
    valid_area = np.zeros((8, 8), dtype=bool)
    valid_area[2:6, 2:6] = True
    path = write_model_card(
        tmp_path, model_type=ModelCard, input_size=[8, 8], mean=[0.5] * 3, std=[0.2] * 3,
        calibration=Calibration(1.0, 0.0, 2.0), task_type="classification", valid_area=valid_area, crop_area=None,
        exported={"onnx": (tmp_path / "model.onnx", 1)}, has_anomaly_map=False, training={"seed": 3},
    )
    assert path == tmp_path / MODEL_JSON
    card = ModelCard.read(path)
    assert card.model_class == "quadra_ad.deploy.model_card.ModelCard"
    assert (card.files, card.fixed_batch_size, card.valid_area_mask) == ({"onnx": "model.onnx"}, {"onnx": 1}, VALID_AREA_MASK)
    assert card.sha256 == {"onnx": file_sha256(tmp_path / "model.onnx"), "valid_area_mask": file_sha256(tmp_path / VALID_AREA_MASK)}
    assert "quadra_ad" in card.versions and card.training == {"seed": 3}
