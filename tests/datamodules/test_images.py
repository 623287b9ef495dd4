"""read_image / read_mask / is_image_file: any bit depth and channel count in, float RGB out."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from dm_helpers import assert_one_line, write_image

from quadra_ad.datamodules.images import image_size_of, is_image_file, read_image, read_mask
from quadra_ad.errors import DatasetError

H, W = 8, 12  # non-square so that a transposed (W, H) result would be caught


def _check_float_rgb(tensor: torch.Tensor, height: int = H, width: int = W) -> None:
    assert isinstance(tensor, torch.Tensor)
    assert tensor.dtype == torch.float32
    assert tuple(tensor.shape) == (3, height, width)
    assert float(tensor.min()) >= 0.0
    assert float(tensor.max()) <= 1.0


def test_eight_bit_grayscale_becomes_three_equal_channels_scaled_by_255(tmp_path: Path) -> None:
    gray = np.zeros((H, W), dtype=np.uint8)
    gray[0, 0] = 255
    gray[1, 1] = 128
    path = write_image(tmp_path / "gray.png", gray)

    image = read_image(path)

    _check_float_rgb(image)
    for channel in range(3):
        assert image[channel, 0, 0] == pytest.approx(1.0)
        assert image[channel, 1, 1] == pytest.approx(128 / 255)
        assert image[channel, 2, 2] == 0.0


def test_rgb_channel_order_is_red_green_blue(tmp_path: Path) -> None:
    # OpenCV writes BGR: (0, 0, 255) is pure red.
    red = np.zeros((H, W, 3), dtype=np.uint8)
    red[..., 2] = 255
    image = read_image(write_image(tmp_path / "red.png", red))

    _check_float_rgb(image)
    assert torch.all(image[0] == 1.0)
    assert torch.all(image[1] == 0.0)
    assert torch.all(image[2] == 0.0)


def test_rgb_values_are_scaled_per_channel(tmp_path: Path) -> None:
    bgr = np.empty((H, W, 3), dtype=np.uint8)
    bgr[..., 0], bgr[..., 1], bgr[..., 2] = 10, 100, 200  # B, G, R
    image = read_image(write_image(tmp_path / "rgb.png", bgr))

    _check_float_rgb(image)
    assert torch.allclose(image[0], torch.full((H, W), 200 / 255))
    assert torch.allclose(image[1], torch.full((H, W), 100 / 255))
    assert torch.allclose(image[2], torch.full((H, W), 10 / 255))


def test_rgba_alpha_is_dropped_and_colour_kept(tmp_path: Path) -> None:
    bgra = np.zeros((H, W, 4), dtype=np.uint8)
    bgra[..., 2] = 255  # red
    bgra[..., 1] = 51  # a bit of green
    bgra[..., 3] = 0  # fully transparent: must not darken or otherwise change the colour
    path = write_image(tmp_path / "rgba.png", bgra)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == (H, W, 4)

    image = read_image(path)

    _check_float_rgb(image)
    assert torch.all(image[0] == 1.0)
    assert torch.allclose(image[1], torch.full((H, W), 51 / 255))
    assert torch.all(image[2] == 0.0)


def test_sixteen_bit_png_keeps_full_dynamic_range(tmp_path: Path) -> None:
    gray16 = np.zeros((H, W), dtype=np.uint16)
    gray16[0, 0] = 65535
    gray16[0, 1] = 256
    gray16[0, 2] = 1
    path = write_image(tmp_path / "gray16.png", gray16)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16

    image = read_image(path)

    _check_float_rgb(image)
    for channel in range(3):
        assert image[channel, 0, 0] == pytest.approx(1.0)
        # Not clipped to 8 bits: 256 would become 255/255 = 1.0 (or 1/255) if it were.
        assert image[channel, 0, 1] == pytest.approx(256 / 65535)
        assert image[channel, 0, 2] == pytest.approx(1 / 65535)
        assert image[channel, 1, 1] == 0.0


def test_sixteen_bit_rgb_png_is_scaled_by_65535_in_rgb_order(tmp_path: Path) -> None:
    bgr16 = np.zeros((H, W, 3), dtype=np.uint16)
    bgr16[..., 0] = 0  # blue
    bgr16[..., 1] = 256  # green
    bgr16[..., 2] = 65535  # red
    path = write_image(tmp_path / "rgb16.png", bgr16)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16

    image = read_image(path)

    _check_float_rgb(image)
    assert torch.allclose(image[0], torch.ones(H, W))
    assert torch.allclose(image[1], torch.full((H, W), 256 / 65535))
    assert torch.all(image[2] == 0.0)


def test_non_ascii_path_is_read(tmp_path: Path) -> None:
    path = tmp_path / "ñandú_图像.png"
    ok, encoded = cv2.imencode(".png", np.full((H, W), 255, dtype=np.uint8))
    assert ok
    encoded.tofile(str(path))

    image = read_image(path)

    _check_float_rgb(image)
    assert torch.all(image == 1.0)


def test_read_image_accepts_a_string_path(tmp_path: Path) -> None:
    path = write_image(tmp_path / "gray.png", np.zeros((H, W), dtype=np.uint8))
    _check_float_rgb(read_image(str(path)))


def test_corrupt_file_raises_dataset_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.png"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size=200, dtype=np.uint8).tobytes())

    with pytest.raises(DatasetError) as info:
        read_image(path)

    message = assert_one_line(info.value)
    assert str(path) in message


def test_empty_file_raises_dataset_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")

    with pytest.raises(DatasetError) as info:
        read_image(path)

    message = assert_one_line(info.value)
    assert str(path) in message
    assert "empty" in message


def test_missing_file_raises_dataset_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.png"

    with pytest.raises(DatasetError) as info:
        read_image(path)

    assert str(path) in assert_one_line(info.value)


def test_corrupt_mask_raises_dataset_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mask.png"
    path.write_bytes(b"not a png at all")

    with pytest.raises(DatasetError) as info:
        read_mask(path)

    assert str(path) in assert_one_line(info.value)


def test_mask_non_zero_pixels_are_true(tmp_path: Path) -> None:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[0, 0] = 1
    mask[1, 1] = 128
    mask[2, 2] = 255
    result = read_mask(write_image(tmp_path / "mask.png", mask))

    assert result.dtype == torch.bool
    assert tuple(result.shape) == (H, W)
    assert torch.equal(result, torch.from_numpy(mask > 0))
    assert int(result.sum()) == 3


def test_colour_mask_is_true_where_any_channel_is_non_zero(tmp_path: Path) -> None:
    mask = np.zeros((H, W, 3), dtype=np.uint8)
    mask[0, 0, 0] = 255  # blue only
    mask[1, 1, 1] = 7  # green only
    mask[2, 2, 2] = 255  # red only
    result = read_mask(write_image(tmp_path / "mask_rgb.png", mask))

    assert tuple(result.shape) == (H, W)
    expected = torch.zeros(H, W, dtype=torch.bool)
    expected[0, 0] = expected[1, 1] = expected[2, 2] = True
    assert torch.equal(result, expected)


def test_sixteen_bit_mask_non_zero_pixels_are_true(tmp_path: Path) -> None:
    mask = np.zeros((H, W), dtype=np.uint16)
    mask[3, 4] = 1
    mask[5, 6] = 65535
    result = read_mask(write_image(tmp_path / "mask16.png", mask))

    assert result.dtype == torch.bool
    assert int(result.sum()) == 2
    assert result[3, 4] and result[5, 6]


def test_image_size_of_is_height_then_width(tmp_path: Path) -> None:
    path = write_image(tmp_path / "img.png", np.zeros((H, W, 3), dtype=np.uint8))
    assert image_size_of(path) == (H, W)


@pytest.mark.parametrize("name", [".DS_Store", "Thumbs.db", "notes.txt", ".hidden.png", "labels.csv"])
def test_non_image_and_hidden_files_are_not_images(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"x")
    assert not is_image_file(path)


@pytest.mark.parametrize("name", ["a.png", "b.PNG", "c.jpg", "d.jpeg", "e.bmp", "f.tif", "g.tiff"])
def test_files_with_image_endings_are_images(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"x")
    assert is_image_file(path)


def test_folder_with_image_ending_is_not_an_image(tmp_path: Path) -> None:
    folder = tmp_path / "folder.png"
    folder.mkdir()
    assert not is_image_file(folder)
