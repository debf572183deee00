"""2D images (PNG, JPEG, TIFF, GIF, BMP) via Pillow, and the channel contract of the readers.

The file's content decides how it is decoded, not its suffix (a PNG named ``.jpg`` reads
fine). Values keep their range: 8-bit stays 0..255, 16-bit stays 0..65535.

=============================  ===========================================================
Pillow mode                    array
=============================  ===========================================================
L, I;16*, I, F, 1 (as 0/255)   ``(1, H, W)``
LA                             ``(1, H, W)``, composited on black
RGB, CMYK, YCbCr, ...          ``(3, H, W)`` RGB
RGBA                           ``(3, H, W)``, composited on black
P (palette)                    ``(3, H, W)``, or ``(1, H, W)`` luminance if the colours are grey
=============================  ===========================================================

EXIF orientation is applied (``meta["exif_orientation"]`` keeps the tag, 1 when there is none, and
:func:`picture_size` gives the oriented size from the header alone); a multi-page TIFF/GIF gives its
first page (``meta["n_frames"]`` says how many there are).

Size: :func:`read_image_file` reads the size from the header (Pillow opens lazily) and
checks width x height x bands against medsight's voxel limit (:mod:`medsight.io.limits`)
before anything is decoded. That limit replaces Pillow's own ``MAX_IMAGE_PIXELS``, which
this module switches off: Pillow would refuse, with a bare ``DecompressionBombError``, a
14000x14000 radiograph that the command line's limit allows. Should Pillow's check be
switched back on and fire, its error becomes the same :class:`ImageTooLargeError`.

Example:
    >>> s = read_image_file("xray.png")
    >>> s.array.shape, s.meta["mode"]
    ((1, 512, 512), 'L')
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from medsight.errors import ConfigError, ImageTooLargeError, InvalidImageError, UnreadableFileError
from medsight.io.limits import DECODE_ERRORS, check_voxels
from medsight.sample import Sample

#: medsight's voxel limit, checked on the header before decoding, decides instead (see above).
Image.MAX_IMAGE_PIXELS = None

_GREY_MODES = ("L", "I", "F", "I;16", "I;16L", "I;16B", "I;16N")
#: A palette whose colours differ by at most this many levels between R, G and B is grey
#: (quantised grey scans often carry such palettes).
GREY_PALETTE_TOLERANCE = 2.0
#: ITU-R BT.601 luma weights for RGB -> grey.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
_RESAVE = "open and save it again in an image editor, or export it again from the source"
_PILLOW_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)


def read_image_file(path: str | Path, *, max_voxels: int | None = None) -> Sample:
    """Read a 2D image into a float32 ``(C, H, W)`` :class:`Sample` with spacing 1.0.

    Args:
        path: a PNG, JPEG, TIFF, GIF or BMP file.
        max_voxels: the most values (width x height x bands) to decode; None for the default limit.

    Raises:
        UnreadableFileError: empty, truncated, corrupt or not an image Pillow knows.
        ImageTooLargeError: the header declares more values than ``max_voxels``.
    """
    path = Path(path)
    if not path.is_file():
        raise UnreadableFileError(path, "no such file", "check the path")
    if path.stat().st_size == 0:
        raise UnreadableFileError(path, "the file is empty (0 bytes)", _RESAVE)
    try:
        with Image.open(path) as opened:  # reads the header only
            mode, fmt, size = opened.mode, opened.format, opened.size
            check_voxels(path, (size[1], size[0], len(opened.getbands())), max_voxels)
            n_frames = int(getattr(opened, "n_frames", 1))
            orientation = exif_orientation(opened)
            image = ImageOps.exif_transpose(opened)
            image.load()
    except _PILLOW_BOMB as err:
        raise ImageTooLargeError(
            path,
            f"Pillow's own limit refuses it as a decompression bomb ({err})",
            "crop or downsample it; medsight's limit decides when Pillow's Image.MAX_IMAGE_PIXELS is None",
        ) from err
    except (SyntaxError, *DECODE_ERRORS) as err:
        raise UnreadableFileError(
            path, f"the image cannot be decoded, it is truncated or corrupt ({err})", _RESAVE
        ) from err
    meta = {
        "path": str(path),
        "format": (fmt or path.suffix.lstrip(".")).lower(),
        "mode": mode,
        "size": [int(size[0]), int(size[1])],
        "n_frames": n_frames,
        "exif_orientation": orientation,
    }
    return Sample(_pixels(image), spacing=(1.0, 1.0), meta=meta)


def picture_size(path: str | Path) -> tuple[int, int, int]:
    """``(rows, columns, EXIF orientation)`` of a picture as :func:`read_image_file` returns it, from the header.

    Pillow opens lazily, so no pixel is decoded. EXIF orientations 5 to 8 turn the image a quarter, so
    rows and columns are those of the stored image swapped (what ``ImageOps.exif_transpose`` does).

    Raises:
        UnreadableFileError: missing, empty, or a header Pillow cannot read.

    Example:
        >>> picture_size("IMG0002628.jpg")   # stored 373 wide, 454 high, EXIF orientation 8
        (373, 454, 8)
    """
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        raise UnreadableFileError(path, "no such file" if not path.is_file() else "the file is empty (0 bytes)",
                                  "check the path" if not path.is_file() else _RESAVE)
    try:
        with Image.open(path) as opened:  # reads the header only
            width, height = opened.size
            orientation = exif_orientation(opened)
    except (SyntaxError, *DECODE_ERRORS) as err:
        raise UnreadableFileError(path, f"the image header cannot be read ({err})", _RESAVE) from err
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return int(height), int(width), orientation


def exif_orientation(image: Image.Image) -> int:
    """The EXIF Orientation tag (1 to 8) of an opened image; 1 when it has none or an invalid one."""
    try:
        value = int(image.getexif().get(0x0112, 1))
    except (TypeError, ValueError, SyntaxError, OSError):
        return 1
    return value if 1 <= value <= 8 else 1


def _pixels(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode in _GREY_MODES:
        return np.asarray(image, dtype=np.float32)[np.newaxis]
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.float32)[np.newaxis]
    if mode == "LA":
        grey_alpha = np.asarray(image, dtype=np.float32)
        return (grey_alpha[..., 0] * grey_alpha[..., 1] / 255.0)[np.newaxis]
    if mode in ("P", "PA", "RGBA"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        rgb = np.ascontiguousarray(np.moveaxis(rgba[..., :3] * (rgba[..., 3:] / 255.0), -1, 0))
        if mode != "RGBA" and np.ptp(rgb, axis=0).max() <= GREY_PALETTE_TOLERANCE:
            return to_channels(rgb, 1)
        return rgb
    return np.ascontiguousarray(np.moveaxis(np.asarray(image.convert("RGB"), dtype=np.float32), -1, 0))


def write_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a 2D uint8 array, or a bool mask as 0/255, as an 8-bit grey PNG; uint16 as a 16-bit one.

    Example:
        >>> write_png(mask > 0, "mask.png")
        PosixPath('mask.png')
    """
    path = Path(path)
    data = np.asarray(array)
    if data.ndim != 2 or data.dtype not in (np.uint8, np.uint16, np.bool_):
        raise InvalidImageError(
            path,
            f"write_png takes a 2D uint8, uint16 or bool array, got {data.dtype} with shape {data.shape}",
            "pass one channel, e.g. array[0], converted with .astype(np.uint8) or (array > 0)",
        )
    if data.dtype == np.bool_:
        data = data.astype(np.uint8) * 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data).save(path, format="PNG")  # 2D uint8 -> "L", uint16 -> "I;16"
    return path


def to_channels(array: np.ndarray, channels: int) -> np.ndarray:
    """Convert a channel-first ``(C, ...)`` array to ``channels`` channels.

    1 -> 3 repeats the grey channel; 3 -> 1 is the ITU-R 601 luminance; 4 -> 3 drops
    the alpha channel; an equal count is returned unchanged.

    Raises:
        ConfigError: any other pair of counts.

    Example:
        >>> to_channels(np.ones((1, 2, 2), np.float32), 3).shape
        (3, 2, 2)
    """
    have = int(array.shape[0])
    if have == channels:
        return array
    if have == 1 and channels == 3:
        return np.repeat(array, 3, axis=0)
    if have == 3 and channels == 1:
        weights = np.asarray(LUMA_WEIGHTS, dtype=np.float32).reshape(3, *([1] * (array.ndim - 1)))
        return (array * weights).sum(axis=0, keepdims=True).astype(np.float32)
    if have == 4 and channels == 3:
        return array[:3]
    raise ConfigError(
        "channels",
        f"cannot convert an image with {have} channel(s) to {channels}",
        "set the model's input channels to 1 or 3 to match the images (1<->3 and 4->3 are converted)",
    )
