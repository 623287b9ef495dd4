"""Predictor inputs: one unambiguous rule for what an image is, one line for whatever breaks it.

A real PaDiM (32 px, ONNX) scores real files, arrays, bytes and PIL images. Every bad input is
a catalogue entry with the exact exception type and the part of its line that names the fix;
the good inputs must score exactly as the equivalent uint8 PNG does, so the rule refuses
nothing it should take.
"""

import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from quadra_ad.deploy import Predictor
from quadra_ad.errors import ConfigError, DatasetError

SIZE = 32
#: Scores of the same pixels given in another form: float32 rounding of the preparation only.
SAME = 1e-6


@pytest.fixture(scope="module")
def predictor(deployment) -> Predictor:
    return Predictor.load(deployment)


@pytest.fixture(scope="module")
def rgb8(good_png) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(good_png)), cv2.COLOR_BGR2RGB)


def png_bytes(array: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", array)
    assert ok
    return encoded.tobytes()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def huge_png(side: int, pixel_rows: bool = True) -> bytes:
    """A valid 1-bit PNG of ``side`` x ``side`` black pixels, a few hundred KB however big (or,
    without ``pixel_rows``, only the header that claims that size). Built row by row: making it
    never holds the image in memory."""
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    data = b""
    if pixel_rows:
        compressor = zlib.compressobj(1)
        row = b"\0" * (1 + (side + 7) // 8)
        data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _float_tiff(tmp_path: Path, array: np.ndarray) -> Path:
    path = tmp_path / "float.tif"
    assert cv2.imwrite(str(path), array.astype(np.float32))
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.float32  # a real float file
    return path


def _file(tmp_path: Path, name: str, content: bytes) -> Path:
    (tmp_path / name).write_bytes(content)
    return tmp_path / name


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "pipe.png")  # no writer: reading it would block forever
    return tmp_path / "pipe.png"


def _link(path: Path, target: Path) -> Path:
    path.symlink_to(target)
    return path


def _one_pixel(value: float) -> np.ndarray:
    image = np.full((SIZE, SIZE, 3), 0.5, np.float32)
    image[0, 0] = value
    return image


def _pil(mode: str, value) -> Image.Image:
    return Image.new(mode, (SIZE, SIZE), value)


GREY = np.full((SIZE, SIZE), 128, dtype=np.uint8)
RGB = np.full((SIZE, SIZE, 3), 128, dtype=np.uint8)

# (id, input made from tmp_path, the call: "predict" / "stream" / a batch_size, exception, part of the line)
BAD_INPUTS = [
    # Shapes: a 3-D array is one image, channels last; a batch is 4-D.
    ("channels-first", lambda t: RGB.transpose(2, 0, 1), DatasetError, "looks channels-first (C×H×W); the channels come last: pass array.transpose(1, 2, 0)"),
    ("channels-first-grey", lambda t: GREY[None], DatasetError, "looks channels-first"),
    ("2-channels", lambda t: np.zeros((SIZE, SIZE, 2), np.uint8), DatasetError, "has 2 channels"),
    ("5-channels", lambda t: np.zeros((SIZE, SIZE, 5), np.uint8), DatasetError, "has 5 channels"),
    ("300-channels", lambda t: np.zeros((SIZE, SIZE, 300), np.uint8), DatasetError, "has 300 channels"),
    ("grey-stack-3d", lambda t: np.zeros((10, SIZE, SIZE), np.uint8), DatasetError, "N grey images are a batch N×H×W×1: array[..., None]"),
    ("0-d", lambda t: np.array(7, np.uint8), DatasetError, "has shape () (0-D)"),
    ("1-d", lambda t: np.zeros(SIZE * SIZE, np.uint8), DatasetError, "(1-D); one image is H×W or H×W×C"),
    ("5-d", lambda t: np.zeros((1, 1, SIZE, SIZE, 3), np.uint8), DatasetError, "(5-D); give one image"),
    ("batch-channels-first", lambda t: np.zeros((2, 3, SIZE, SIZE), np.uint8), DatasetError, "pass array.transpose(0, 2, 3, 1)"),
    ("batch-5-channels", lambda t: np.zeros((2, SIZE, SIZE, 5), np.uint8), DatasetError, "the images have 5 channels"),
    # Sizes: the one rule of deploy.images.size_problem.
    ("0x0", lambda t: np.zeros((0, 0), np.uint8), DatasetError, "is 0x0 pixels"),
    ("0x0x3", lambda t: np.zeros((0, 0, 3), np.uint8), DatasetError, "is 0x0 pixels"),
    ("1x1", lambda t: np.zeros((1, 1, 3), np.uint8), DatasetError, "at least 4 pixels on each side"),
    ("2x2", lambda t: np.zeros((2, 2), np.uint8), DatasetError, "is 2x2 pixels"),
    ("3x40", lambda t: np.zeros((3, 40, 3), np.uint8), DatasetError, "is 40x3 pixels"),
    ("oversize-array", lambda t: np.broadcast_to(np.uint8(0), (20000, 20000)), DatasetError, "over the 268,435,456 pixels"),
    # Values: never NaN, never clipped from another range.
    ("all-nan", lambda t: np.full((SIZE, SIZE, 3), np.nan, np.float32), DatasetError, "3072 of its 3072 values are NaN or infinite"),
    ("one-inf-pixel", lambda t: _one_pixel(np.inf), DatasetError, "3 of its 3072 values are NaN or infinite"),
    ("one-nan-pixel", lambda t: _one_pixel(np.nan), DatasetError, "3 of its 3072 values are NaN or infinite"),
    ("float-0-255", lambda t: RGB.astype(np.float32), DatasetError, "float pixel values must lie in [0, 1], found 128 to 128; they look 8-bit: divide by 255"),
    ("float64-0-255", lambda t: np.linspace(0, 255, SIZE * SIZE).reshape(SIZE, SIZE), DatasetError, "divide by 255"),
    ("float-0-65535", lambda t: np.full((SIZE, SIZE), 40000.0, np.float32), DatasetError, "they look 16-bit: divide by 65535"),
    ("float-normalised", lambda t: np.full((SIZE, SIZE, 3), -1.5, np.float32), DatasetError, "give it unnormalised: the model normalises"),
    ("float-huge", lambda t: np.full((SIZE, SIZE), 1e6, np.float32), DatasetError, "scale them into [0, 1]"),
    ("float-just-over-tolerance", lambda t: np.full((SIZE, SIZE), 1.01, np.float32), DatasetError, "found 1.01 to 1.01"),
    ("int64-negative", lambda t: np.full((SIZE, SIZE), -3, np.int64), DatasetError, "int64 pixel values are taken as 8-bit and must lie in 0-255, found -3 to -3"),
    ("int32-16-bit", lambda t: np.full((SIZE, SIZE), 4000, np.int32), DatasetError, "pass array.astype(np.uint16) for 16-bit pixels"),
    ("uint32-huge", lambda t: np.full((SIZE, SIZE), 70000, np.uint32), DatasetError, "found 70000 to 70000; scale them into 0-255"),
    ("complex", lambda t: np.zeros((SIZE, SIZE), np.complex64), DatasetError, "unsupported pixel type complex64"),
    ("object", lambda t: np.full((SIZE, SIZE), None, object), DatasetError, "unsupported pixel type object"),
    ("strings", lambda t: np.full((SIZE, SIZE), "a"), DatasetError, "unsupported pixel type <U1"),
    # Other Python values: a ConfigError that says what one image may be.
    ("dict", lambda t: {"image": RGB}, ConfigError, "cannot predict on a value of type dict; give a path"),
    ("none", lambda t: None, ConfigError, "cannot predict on a value of type NoneType"),
    ("int", lambda t: 5, ConfigError, "the image: cannot predict on a value of type int"),
    ("nested-list-of-numbers", lambda t: GREY.tolist(), ConfigError, "image 0: cannot predict on a value of type list; give a path, an image file's bytes, a PIL image or a NumPy array (H×W or H×W×C); pixels as nested lists: pass np.asarray(pixels, dtype=np.uint8)"),
    ("set-of-paths", lambda t: {"a.png", "b.png"}, ConfigError, "several images go in a list, in order"),
    ("torch-tensor", lambda t: __import__("torch").zeros(3, SIZE, SIZE), ConfigError, "type Tensor; give a path, an image file's bytes, a PIL image or a NumPy array (H×W or H×W×C); pass np.asarray(...) of it, channels last"),
    ("none-in-a-list", lambda t: [RGB, None], ConfigError, "image 1: cannot predict on a value of type NoneType"),
    # Encoded bytes: read as a file is.
    ("bytes-not-an-image", lambda t: b"not an image", DatasetError, "cannot read the image: it is empty, corrupt or not an image"),
    ("empty-bytes", lambda t: b"", DatasetError, "it is empty, corrupt or not an image"),
    ("bytes-2x2", lambda t: png_bytes(np.zeros((2, 2), np.uint8)), DatasetError, "is 2x2 pixels"),
    ("bytes-bomb", lambda t: huge_png(30000), DatasetError, "is 30000x30000 pixels (WxH), over the"),
    ("bytes-list-one-bad", lambda t: [png_bytes(RGB), b"junk"], DatasetError, "cannot read image 1: it is empty, corrupt"),
    # Files: only regular image files, sized from their header before decoding.
    ("missing-file", lambda t: t / "nothing.png", DatasetError, "nothing.png': No such file or directory"),
    ("folder", lambda t: t, DatasetError, "it is a folder, not an image file"),
    ("fifo", _fifo, DatasetError, "it is a named pipe (FIFO), not an image file"),
    ("device", lambda t: Path(os.devnull), DatasetError, "it is a device, not an image file"),
    ("dangling-link", lambda t: _link(t / "gone.png", t / "nowhere.png"), DatasetError, "gone.png': No such file or directory"),
    ("link-loop", lambda t: _link(t / "loop.png", t / "loop.png"), DatasetError, "Too many levels of symbolic links"),
    ("text-file", lambda t: _file(t, "notes.png", b"hello"), DatasetError, "notes.png': it is empty, corrupt or not an image"),
    ("empty-file", lambda t: _file(t, "empty.png", b""), DatasetError, "it is empty, corrupt or not an image"),
    ("huge-png-file", lambda t: _file(t, "huge.png", huge_png(30000)), DatasetError, "huge.png': it is 30000x30000 pixels (WxH), over the 268,435,456 pixels"),
    ("png-header-lies", lambda t: _file(t, "liar.png", huge_png(1 << 20, pixel_rows=False)), DatasetError, "is 1048576x1048576 pixels"),
    ("2x2-file", lambda t: _file(t, "tiny.png", png_bytes(np.zeros((2, 2), np.uint8))), DatasetError, "tiny.png': it is 2x2 pixels"),
    ("float-tiff-0-255", lambda t: _float_tiff(t, RGB), DatasetError, "float.tif': float pixel values must lie in [0, 1], found 128 to 128; they look 8-bit: divide by 255"),
    ("float-tiff-nan", lambda t: _float_tiff(t, np.full((SIZE, SIZE), np.nan)), DatasetError, "NaN or infinite"),
    # PIL images, by mode.
    ("pil-F-0-255", lambda t: _pil("F", 200.0), DatasetError, "found 200 to 200; they look 8-bit: divide by 255"),
    ("pil-I-over-16-bit", lambda t: _pil("I", 70000), DatasetError, "a PIL image in mode 'I' is taken as 16-bit, its values must lie in 0-65535, found 70000"),
    ("pil-I-negative", lambda t: _pil("I", -5), DatasetError, "found -5 to -5"),
    ("pil-2x2", lambda t: Image.new("RGB", (2, 2)), DatasetError, "is 2x2 pixels"),
    ("pil-0x0", lambda t: Image.new("RGB", (0, 0)), DatasetError, "is 0x0 pixels"),
]

BAD_ARGUMENTS = [
    ("batch-0", {"batch_size": 0}, "batch_size 0: give a whole number of at least 1"),
    ("batch-negative", {"batch_size": -2}, "batch_size -2"),
    ("batch-float", {"batch_size": 2.5}, "batch_size 2.5"),
    ("batch-string", {"batch_size": "4"}, "batch_size '4'"),
    ("batch-bool", {"batch_size": True}, "batch_size True"),
    ("batch-none", {"batch_size": None}, "batch_size None"),
]


@pytest.mark.timeout(60)  # the FIFO case: a regression blocks in open(), and must fail, not hang
@pytest.mark.parametrize(("make", "error", "message"), [pytest.param(*case[1:], id=case[0]) for case in BAD_INPUTS])
def test_a_bad_input_is_one_line_naming_the_fix(predictor, tmp_path, make, error, message):
    with pytest.raises(error) as raised:
        predictor.predict(make(tmp_path))
    assert type(raised.value) is error
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(("arguments", "message"), [pytest.param(*case[1:], id=case[0]) for case in BAD_ARGUMENTS])
def test_a_bad_batch_size_is_refused_before_any_image_is_read(predictor, good_png, arguments, message):
    with pytest.raises(ConfigError, match=f"^{message}".replace("(", r"\(").replace(")", r"\)")):
        predictor.predict([good_png], **arguments)
    with pytest.raises(ConfigError, match="batch_size"):
        predictor.predict_stream(iter([]), **arguments)  # raised at the call, not at the first next()


@pytest.mark.parametrize("threshold", [float("nan"), float("inf"), float("-inf"), "nan"])
def test_a_non_finite_threshold_is_refused(deployment, threshold):
    with pytest.raises(ConfigError, match="finite"):
        Predictor.load(deployment, threshold=threshold)


@pytest.mark.parametrize("one_image", [
    pytest.param(lambda png: png, id="path"), pytest.param(lambda png: str(png), id="str"),
    pytest.param(lambda png: RGB, id="3-d array"), pytest.param(lambda png: png.read_bytes(), id="bytes"),
])
def test_predict_stream_refuses_one_image_instead_of_iterating_over_it(predictor, good_png, one_image):
    with pytest.raises(ConfigError, match="predict_stream takes several images .*: use predict\\(image\\) or "
                                          "predict_stream\\(\\[image\\]\\)"):
        predictor.predict_stream(one_image(good_png))


def _rgb_forms(png: Path, rgb8: np.ndarray, tmp_path: Path) -> dict:
    rgb16 = rgb8.astype(np.uint16) * 257
    unit = rgb8.astype(np.float32) / 255
    rgba = np.dstack([rgb8, np.full(rgb8.shape[:2], 255, np.uint8)])
    cv2.imwrite(str(tmp_path / "16bit.png"), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    return {
        "str path": str(png),
        "bytes": png.read_bytes(),
        "bytearray": bytearray(png.read_bytes()),
        "memoryview": memoryview(png.read_bytes()),
        "uint8 array": rgb8,
        "uint16 array": rgb16,
        "big-endian uint16 array": rgb16.astype(">u2"),
        "float32 array": unit,
        "float64 array": rgb8 / 255.0,
        "float a hair outside [0, 1]": np.where(unit == 0, -5e-4, np.where(unit == 1, 1 + 5e-4, unit)).astype(np.float32),
        "int64 array": rgb8.astype(np.int64),
        "int32 array": rgb8.astype(np.int32),
        "uint8 RGBA array, opaque": rgba,
        "non-contiguous array": np.ascontiguousarray(rgb8[:, ::-1])[:, ::-1],
        "PIL RGB": Image.fromarray(rgb8),
        "PIL RGBA": Image.fromarray(rgba),
        "PIL CMYK": Image.fromarray(rgb8).convert("CMYK"),
        "PIL opened from the file": Image.open(png),
        "16-bit PNG file": tmp_path / "16bit.png",
        "float TIFF file in [0, 1]": _float_tiff(tmp_path, cv2.cvtColor(unit, cv2.COLOR_RGB2BGR)),
    }


def test_every_good_form_of_an_image_scores_as_its_uint8_file(predictor, good_png, rgb8, tmp_path):
    expected = predictor.predict(good_png).score
    for form, image in _rgb_forms(good_png, rgb8, tmp_path).items():
        assert predictor.predict(image).score == pytest.approx(expected, rel=SAME), form


def test_every_good_form_of_a_grey_image_scores_as_its_uint8_array(predictor, rgb8):
    grey = cv2.cvtColor(rgb8, cv2.COLOR_RGB2GRAY)
    expected = predictor.predict(grey).score
    forms = {
        "H×W×1": grey[:, :, None],
        "three equal channels": np.repeat(grey[:, :, None], 3, axis=2),
        "uint16": grey.astype(np.uint16) * 257,
        "float": grey / 255.0,
        "PNG bytes": png_bytes(grey),
        "PIL L": Image.fromarray(grey),
        "PIL I;16": Image.fromarray(grey.astype(np.uint16) * 257),
        "PIL I (16-bit values)": Image.fromarray(grey.astype(np.int32) * 257),
        "PIL F in [0, 1]": Image.fromarray(grey.astype(np.float32) / 255),
        "PIL P": Image.fromarray(grey).convert("P"),
    }
    for form, image in forms.items():
        assert predictor.predict(image).score == pytest.approx(expected, rel=SAME), form


def test_a_binary_image_is_black_and_white_whatever_its_form(predictor):
    mask = np.zeros((SIZE, SIZE), bool)
    mask[8:24, 8:24] = True
    expected = predictor.predict(mask.astype(np.uint8) * 255).score
    for form in (mask, Image.fromarray(mask), Image.fromarray(mask).convert("1")):
        assert predictor.predict(form).score == pytest.approx(expected, rel=SAME)


def test_the_smallest_image_allowed_is_scored(predictor):
    prediction = predictor.predict(np.full((4, 4, 3), 128, np.uint8))
    assert np.isfinite(prediction.score) and prediction.anomaly_map_original.shape == (4, 4)


def test_several_images_in_any_container_score_one_by_one_in_order(predictor, good_png, rgb8):
    expected = predictor.predict(good_png).score
    grey = cv2.cvtColor(rgb8, cv2.COLOR_RGB2GRAY)
    batches = {
        "N×H×W×C array": np.stack([rgb8] * 3),
        "N×H×W×1 grey array": np.stack([grey] * 3)[..., None],
        "list": [rgb8, good_png, good_png.read_bytes()],
        "tuple": (rgb8, str(good_png), Image.fromarray(rgb8)),
        "generator": (image for image in [good_png] * 3),
        "iterator of str": map(str, [good_png] * 3),
        "list of bytes": [good_png.read_bytes()] * 3,
    }
    for container, images in batches.items():
        predictions = predictor.predict(images, batch_size=2)
        assert len(predictions) == 3, container
        if "grey" not in container:
            assert [p.score for p in predictions] == pytest.approx([expected] * 3, rel=SAME), container
    assert predictor.predict([]) == [] and predictor.predict(np.zeros((0, SIZE, SIZE, 3), np.uint8)) == []


def test_a_stream_with_bad_images_reports_each_and_scores_the_others(predictor, good_png, rgb8, tmp_path):
    skipped: list[tuple[str, str]] = []
    images = [good_png, tmp_path / "missing.png", np.full((SIZE, SIZE, 3), np.nan, np.float32), rgb8,
              rgb8.transpose(2, 0, 1), b"junk", tmp_path]
    predictions = list(predictor.predict_stream(images, batch_size=2,
                                                on_error=lambda source, error: skipped.append((source, str(error)))))
    assert [p.source for p in predictions] == [str(good_png), "image 3"]
    assert predictions[0].score == pytest.approx(predictions[1].score, rel=SAME)
    assert [source for source, _ in skipped] == [str(tmp_path / "missing.png"), "image 2", "image 4", "image 5", str(tmp_path)]
    assert all("\n" not in line for _, line in skipped)
