"""PNG bytes for the web page: a preview of the model's input and label masks.

Example:
    >>> png = preview_png(np.random.rand(1, 64, 64).astype(np.float32))
    >>> png[:4]
    b'\\x89PNG'
"""

from __future__ import annotations

import base64
import io

import numpy as np


def middle_slice(array: np.ndarray, spatial_dims: int) -> np.ndarray:
    """The middle slice along the first spatial axis of a volume; a 2D array unchanged.

    ``array`` is channel-first ``(C, *spatial)`` when it has ``spatial_dims + 1`` axes,
    otherwise spatial only.
    """
    if spatial_dims == 3:
        axis = array.ndim - 3
        return np.take(array, array.shape[axis] // 2, axis=axis)
    return array


def preview_png(image: np.ndarray) -> bytes:
    """A channel-first ``(C, H, W)`` float image, min-max scaled to 8 bits: grey for 1 channel, RGB for 3+."""
    from PIL import Image

    data = np.asarray(image, dtype=np.float32)
    data = data[:3] if data.shape[0] >= 3 else data[:1]
    low, high = float(data.min()), float(data.max())
    scaled = np.zeros_like(data) if high <= low else (data - low) / (high - low)
    pixels = np.round(scaled * 255).astype(np.uint8)
    picture = Image.fromarray(pixels[0], "L") if pixels.shape[0] == 1 else Image.fromarray(np.moveaxis(pixels, 0, -1))
    return _png(picture)


def mask_png(labels: np.ndarray) -> bytes:
    """A 2D label map as an 8-bit grey PNG, by the rule of ``write_mask``: binary 0/255, else the label values."""
    from PIL import Image

    labels = np.asarray(labels)
    pixels = (labels > 0).astype(np.uint8) * 255 if labels.max(initial=0) <= 1 else labels.astype(np.uint8)
    return _png(Image.fromarray(pixels, "L"))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _png(picture) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
