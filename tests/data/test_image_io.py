"""read_image on odd, rotated and broken files (reference files from ../shared/testdata)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from detkit.data.image_io import read_image
from detkit.errors import DataError
from tests.helpers import reference_data

PILLOW = ("Pillow", "Tests", "images")
MMCV = ("mmcv", "tests", "data")


def _mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


@pytest.mark.parametrize(
    "parts, size_hw, gray",
    [
        (MMCV + ("grayscale.jpg",), (300, 400), True),
        (MMCV + ("grayscale_dim3.jpg",), (300, 400), True),
        (MMCV + ("palette.gif",), (300, 400), False),
        (MMCV + ("gray_alpha.png",), (400, 500), True),
        (PILLOW + ("pil123rgba.png",), (150, 162), False),
        (PILLOW + ("hopper_gray.jpg",), (128, 128), True),
        (PILLOW + ("hopper_bad_exif.jpg",), (500, 500), True),
        (PILLOW + ("invalid-exif.jpg",), (200, 200), False),
        (PILLOW + ("pil_sample_cmyk.jpg",), (100, 100), False),
    ],
)
def test_odd_modes_become_uint8_rgb(parts, size_hw, gray):
    image = read_image(reference_data(*parts))
    assert image.dtype == np.uint8 and image.shape == size_hw + (3,)
    if gray:
        assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_rgba_drops_alpha_instead_of_compositing():
    path = reference_data(*PILLOW, "pil123rgba.png")
    rgba = np.asarray(Image.open(path))
    assert (rgba[..., 3] < 255).any()  # the file really has transparency
    np.testing.assert_array_equal(read_image(path), rgba[..., :3])


def test_cmyk_colours():
    image = read_image(reference_data(*PILLOW, "pil_sample_cmyk.jpg"))
    r, g, b = image[0, 0].astype(int)  # CMYK (0, 242, 230, 0) there: red
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_is_scaled_to_eight_bit(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 300]], dtype=np.uint16)
    path = tmp_path / "depth16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = read_image(path)
    assert image.shape == (1, 4, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, :, 0], [0, 100, 255, 1])


@pytest.mark.parametrize("k", range(9))
def test_exif_orientation_examples_come_out_upright(k):
    path = reference_data("exif-orientation-examples", f"Landscape_{k}.jpg")
    upright = read_image(reference_data("exif-orientation-examples", "Landscape_1.jpg"))
    image = read_image(path)
    assert image.shape == (1200, 1800, 3)
    assert _mean_abs_diff(image, upright) < 8  # the same picture, up to JPEG noise
    raw = read_image(path, exif=False)
    if k in (0, 1):
        np.testing.assert_array_equal(raw, image)
    elif k >= 5:
        assert raw.shape == (1800, 1200, 3)
    else:
        assert _mean_abs_diff(raw, upright) > 40


@pytest.mark.parametrize("k", [3, 6])
def test_pillow_orientation_files_match_upright_hopper(k):
    hopper = read_image(reference_data(*PILLOW, "hopper.jpg"))
    path = reference_data(*PILLOW, f"hopper_orientation_{k}.jpg")
    assert _mean_abs_diff(read_image(path), hopper) < 10
    assert _mean_abs_diff(read_image(path, exif=False), hopper) > 40


def test_mmcv_exif_rotated_file():
    color = read_image(reference_data(*MMCV, "color.jpg"))
    rotated = read_image(
        reference_data(*MMCV, "color_exif.jpg")
    )  # orientation 6: 90 degrees clockwise
    assert rotated.shape == (400, 300, 3)
    assert _mean_abs_diff(rotated, np.rot90(color, -1)) < 8


@pytest.mark.parametrize(
    "parts",
    [
        PILLOW + ("broken.png",),
        PILLOW + ("broken_data_stream.png",),
        PILLOW + ("decompression_bomb.gif",),
        MMCV + ("uint16-5channel.tif",),  # 5 channels: refused, clearly
        MMCV + ("test.mp4",),
    ],
)
def test_broken_or_unsupported_files_raise_naming_the_file(parts):
    path = reference_data(*parts)
    with pytest.raises(DataError, match=str(path).replace(".", r"\.")):
        read_image(path)


def test_missing_and_truncated_files(tmp_path):
    with pytest.raises(DataError, match="not found: .*nothing.jpg"):
        read_image(tmp_path / "nothing.jpg")
    data = reference_data(*PILLOW, "hopper.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.jpg"):
        read_image(truncated)


def test_decompression_bomb_message_says_what_to_do():
    with pytest.raises(DataError, match="MAX_IMAGE_PIXELS"):
        read_image(reference_data(*PILLOW, "decompression_bomb.gif"))


def test_image_read_error_survives_a_dataloader_reraise():
    # DataLoader workers re-create the exception from its message alone
    err = DataError("cannot read /x.jpg")
    assert isinstance(type(err)(str(err)), DataError) and "/x.jpg" in str(type(err)(str(err)))
