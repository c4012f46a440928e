"""Image reading: EXIF orientation, mode conversion to RGB, corrupt files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from idip.data.image_io import ImageReadError, read_image


def _pattern() -> np.ndarray:
    """A 2x3 pattern of distinct colours (h=2, w=3)."""
    return np.array(
        [[[255, 0, 0], [0, 255, 0], [0, 0, 255]], [[255, 255, 0], [0, 255, 255], [255, 0, 255]]],
        dtype=np.uint8,
    )


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = str(tmp_path / "rotated.png")
    Image.fromarray(_pattern()).save(path, exif=exif)
    image = read_image(path)
    expected = np.rot90(_pattern(), k=-1)  # clockwise: the bottom-left pixel goes to the top-left
    assert image.shape == (3, 2, 3)
    assert np.array_equal(image, expected)
    assert tuple(image[0, 0]) == (255, 255, 0)


def test_grayscale_rgba_palette_cmyk_become_rgb(tmp_path):
    gray = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "gray.png")
    assert np.array_equal(
        read_image(str(tmp_path / "gray.png")), np.repeat(gray[..., None], 3, axis=2)
    )

    rgba = np.concatenate([_pattern(), np.full((2, 3, 1), 7, np.uint8)], axis=2)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(str(tmp_path / "rgba.png")), _pattern())

    palette_image = Image.new("P", (2, 1))
    palette_image.putpalette([10, 20, 30, 40, 50, 60] + [0] * 762)
    palette_image.putdata([1, 0])
    palette_image.save(tmp_path / "palette.png")
    assert read_image(str(tmp_path / "palette.png")).tolist() == [[[40, 50, 60], [10, 20, 30]]]

    cmyk = Image.new("CMYK", (3, 1))
    cmyk.putdata([(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255)])  # white, cyan, black
    cmyk.save(tmp_path / "cmyk.tif")
    assert read_image(str(tmp_path / "cmyk.tif")).tolist() == [
        [[255, 255, 255], [0, 255, 255], [0, 0, 0]]
    ]


def test_truncated_garbage_and_missing_files_name_the_file(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageReadError, match="truncated.png"):
        read_image(str(truncated))

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all")
    with pytest.raises(ImageReadError, match="garbage.jpg") as info:
        read_image(str(garbage))
    assert info.value.file_name == str(garbage)

    with pytest.raises(ImageReadError, match="absent.png"):
        read_image(str(tmp_path / "absent.png"))
