"""2D images through Pillow: every mode to the channel contract, real files, EXIF, errors, PNG writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.errors import ConfigError, InvalidImageError, UnreadableFileError
from medsight.io import read_image, read_image_file, to_channels, write_png

GRID = np.array([[0, 60], [120, 250]], dtype=np.uint8)


def _grey() -> tuple[Image.Image, np.ndarray]:
    return Image.fromarray(GRID), GRID[None]


def _grey16() -> tuple[Image.Image, np.ndarray]:
    data = np.array([[0, 1000], [40000, 65535]], dtype=np.uint16)
    return Image.fromarray(data), data[None]


def _int32() -> tuple[Image.Image, np.ndarray]:
    data = np.array([[-5, 0], [70000, 123456]], dtype=np.int32)
    return Image.fromarray(data), data[None]


def _float() -> tuple[Image.Image, np.ndarray]:
    data = np.array([[-1.5, 0.0], [0.25, 1e4]], dtype=np.float32)
    return Image.fromarray(data), data[None]


def _bilevel() -> tuple[Image.Image, np.ndarray]:
    data = np.array([[True, False], [False, True]])
    return Image.fromarray(data), data[None] * 255


def _grey_alpha() -> tuple[Image.Image, np.ndarray]:
    alpha = np.array([[255, 0], [128, 255]], dtype=np.uint8)
    image = Image.merge("LA", [Image.fromarray(GRID), Image.fromarray(alpha)])
    return image, (GRID * (alpha / 255.0))[None]


def _rgb() -> tuple[Image.Image, np.ndarray]:
    data = np.stack([GRID, 255 - GRID, GRID // 2], axis=-1)
    return Image.fromarray(data), np.moveaxis(data, -1, 0)


def _rgba() -> tuple[Image.Image, np.ndarray]:
    data = np.zeros((2, 2, 4), dtype=np.uint8)
    data[..., :3] = [200, 100, 50]
    data[..., 3] = [[255, 0], [128, 64]]
    expected = np.moveaxis(data[..., :3] * (data[..., 3:] / 255.0), -1, 0)
    return Image.fromarray(data), expected


def _palette(grey: bool) -> tuple[Image.Image, np.ndarray]:
    colours = [(10, 10, 10), (90, 90, 90), (200, 200, 200)] if grey else [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    image = Image.new("P", (2, 2))
    image.putpalette([c for colour in colours for c in colour])
    index = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    image.putdata(index.ravel().tolist())
    rgb = np.moveaxis(np.asarray(colours, dtype=np.float32)[index], -1, 0)
    return image, rgb[:1] if grey else rgb


def _cmyk() -> tuple[Image.Image, np.ndarray]:
    # no ink is white, full black ink is black
    image = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 0, 255))
    return image, np.array([[[255, 0]], [[255, 0]], [[255, 0]]], dtype=np.float32)


MODES = [
    pytest.param("L", _grey, ".png", id="L"),
    pytest.param("I;16", _grey16, ".png", id="I;16"),
    pytest.param("I", _int32, ".tif", id="I"),
    pytest.param("F", _float, ".tiff", id="F"),
    pytest.param("1", _bilevel, ".png", id="1"),
    pytest.param("LA", _grey_alpha, ".png", id="LA"),
    pytest.param("RGB", _rgb, ".bmp", id="RGB"),
    pytest.param("RGBA", _rgba, ".png", id="RGBA"),
    pytest.param("P", lambda: _palette(grey=True), ".png", id="P-grey"),
    pytest.param("P", lambda: _palette(grey=False), ".gif", id="P-colour"),
    pytest.param("CMYK", _cmyk, ".tif", id="CMYK"),
]


@pytest.mark.parametrize(("mode", "make", "suffix"), MODES)
def test_each_mode_maps_to_the_channel_contract(tmp_path: Path, mode: str, make, suffix: str) -> None:
    image, expected = make()
    assert image.mode == mode
    path = tmp_path / f"image{suffix}"
    image.save(path)
    sample = read_image(path)
    assert sample.array.dtype == np.float32 and sample.spacing == (1.0, 1.0)
    assert sample.meta["mode"] == Image.open(path).mode
    np.testing.assert_allclose(sample.array, expected, atol=1e-3)


@pytest.mark.parametrize(
    ("name", "mode", "shape"),
    [
        ("yes/Y92.png", "L", (1, 300, 240)),
        ("no/1 no.jpeg", "L", (1, 630, 630)),
        ("no/10 no.jpg", "RGB", (3, 201, 173)),
        ("no/no 9.png", "RGB", (3, 1080, 1920)),
        ("no/No15.jpg", "RGBA", (3, 400, 393)),  # a PNG named .jpg
        ("no/no 98.jpg", "P", (1, 725, 728)),  # palette of greys (within 2 levels): one channel
    ],
)
def test_real_brain_mri_files(shared_data: Path, name: str, mode: str, shape: tuple[int, ...]) -> None:
    sample = read_image(shared_data / "brain_mri_tumor" / name)
    assert sample.meta["mode"] == mode and sample.array.shape == shape
    assert sample.array.min() >= 0 and sample.array.max() <= 255


def test_multipage_tiff_gives_the_first_page(tmp_path: Path) -> None:
    pages = [Image.fromarray(np.full((3, 4), value, dtype=np.uint8)) for value in (7, 8, 9)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    sample = read_image_file(tmp_path / "stack.tif")
    assert sample.meta["n_frames"] == 3
    np.testing.assert_array_equal(sample.array, np.full((1, 3, 4), 7.0))


def test_jpeg_exif_orientation_is_applied(tmp_path: Path) -> None:
    data = np.zeros((10, 20), dtype=np.uint8)
    data[:, :10] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display after turning 90 degrees clockwise
    Image.fromarray(data).save(tmp_path / "photo.jpg", exif=exif, quality=100)
    sample = read_image(tmp_path / "photo.jpg")
    assert sample.array.shape == (1, 20, 10) and sample.meta["size"] == [20, 10]
    # the white left half is now the top half
    assert sample.array[0, :8].mean() > 240 and sample.array[0, 12:].mean() < 15


def _corrupt_png(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)


def _truncated_png(path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    Image.fromarray(noise).save(path)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def _empty_png(path: Path) -> None:
    path.write_bytes(b"")


@pytest.mark.parametrize(
    ("make", "needle"),
    [(_empty_png, "empty (0 bytes)"), (_corrupt_png, "truncated or corrupt"), (_truncated_png, "truncated or corrupt")],
    ids=["empty", "corrupt", "truncated"],
)
def test_bad_png_names_the_file_and_the_fix(tmp_path: Path, make, needle: str) -> None:
    path = tmp_path / "scan.png"
    make(path)
    with pytest.raises(UnreadableFileError) as err:
        read_image(path)
    assert str(path) in str(err.value) and needle in str(err.value) and "save it again" in str(err.value)


def test_write_png_round_trips_uint8_uint16_and_bool(tmp_path: Path) -> None:
    write_png(GRID, tmp_path / "grid.png")
    np.testing.assert_array_equal(read_image(tmp_path / "grid.png").array[0], GRID)
    write_png(GRID > 100, tmp_path / "mask.png")
    np.testing.assert_array_equal(read_image(tmp_path / "mask.png").array[0], [[0, 0], [255, 255]])
    deep = np.array([[0, 1], [40000, 65535]], np.uint16)
    write_png(deep, tmp_path / "deep.png")
    np.testing.assert_array_equal(read_image(tmp_path / "deep.png").array[0], deep)  # all 16 bits kept


@pytest.mark.parametrize("array", [GRID.astype(np.float32), GRID[None]], ids=["float", "3D"])
def test_write_png_refuses_other_arrays(tmp_path: Path, array: np.ndarray) -> None:
    with pytest.raises(InvalidImageError, match=r"out\.png: write_png takes a 2D uint8, uint16 or bool array"):
        write_png(array, tmp_path / "out.png")


PIXEL = np.array([255.0, 0.0, 0.0, 128.0], dtype=np.float32).reshape(4, 1, 1)


@pytest.mark.parametrize(
    ("array", "channels", "expected"),
    [
        (PIXEL[:1], 3, [255.0, 255.0, 255.0]),
        (PIXEL[:3], 1, [0.299 * 255]),
        (PIXEL, 3, [255.0, 0.0, 0.0]),
        (PIXEL[:3], 3, [255.0, 0.0, 0.0]),
    ],
    ids=["1to3", "3to1-luminance", "4to3-drop-alpha", "3to3"],
)
def test_to_channels(array: np.ndarray, channels: int, expected: list[float]) -> None:
    out = to_channels(array, channels)
    assert out.shape == (channels, 1, 1)
    np.testing.assert_allclose(out.ravel(), expected, rtol=1e-6)


@pytest.mark.parametrize(("have", "want"), [(2, 3), (3, 4), (4, 1)])
def test_to_channels_refuses_other_counts(have: int, want: int) -> None:
    with pytest.raises(ConfigError, match=f"{have} channel\\(s\\) to {want}; set the model's input channels"):
        to_channels(np.zeros((have, 2, 2), np.float32), want)
