"""Deterministic intensity steps on channel-first numpy arrays: window, denoise, CLAHE, normalise.

Every function takes and returns a float32 array shaped ``(C, *spatial)`` (2D or 3D) and
works per channel where that matters. They are the building blocks of
:func:`medsight.transforms.preprocess`, which calls them in a fixed order.

Example:
    >>> x = np.array([[[0.0, 5.0], [10.0, 10.0]]], np.float32)
    >>> normalize(x, "minmax")
    array([[[0. , 0.5],
            [1. , 1. ]]], dtype=float32)
"""

from __future__ import annotations

import numpy as np

#: Standard deviations below this are treated as this, so a flat channel z-scores to 0.
STD_FLOOR = 1e-6


def normalize(array: np.ndarray, mode: str) -> np.ndarray:
    """Normalise one image.

    Args:
        array: float32 ``(C, *spatial)``.
        mode: ``"minmax"`` (the whole image to ``[0, 1]``; a constant image becomes 0),
            ``"zscore"`` (each channel to mean 0, std 1, with std floored at
            :data:`STD_FLOOR`), ``"ct_window"`` or ``"none"`` (returned unchanged:
            a CT window already mapped the image to ``[0, 1]``).

    Returns:
        A float32 array of the same shape.
    """
    if mode == "minmax":
        low, high = float(array.min()), float(array.max())
        if high <= low:
            return np.zeros_like(array)
        return ((array - low) * np.float32(1.0 / (high - low))).astype(np.float32, copy=False)
    if mode == "zscore":
        axes = tuple(range(1, array.ndim))
        mean = array.mean(axis=axes, keepdims=True, dtype=np.float64)
        std = np.maximum(array.std(axis=axes, keepdims=True, dtype=np.float64), STD_FLOOR)
        return ((array - mean) / std).astype(np.float32, copy=False)
    return array


def denoise(array: np.ndarray, method: str, size: float) -> np.ndarray:
    """Smooth each channel with a median or Gaussian filter (2D or 3D).

    Args:
        array: float32 ``(C, *spatial)``.
        method: ``"median"`` (a cubic window ``2 * round(size) + 1`` pixels wide, so
            ``size=1`` is the classic 3x3 median) or ``"gaussian"`` (``size`` is sigma in pixels).
        size: the radius (median) or sigma (Gaussian), in pixels.

    Returns:
        A float32 array of the same shape.
    """
    from scipy import ndimage

    if method == "median":
        width = 2 * max(0, round(size)) + 1
        if width == 1:
            return array
        return ndimage.median_filter(array, size=(1,) + (width,) * (array.ndim - 1), mode="reflect")
    if size <= 0:
        return array
    return ndimage.gaussian_filter(array, sigma=(0.0,) + (float(size),) * (array.ndim - 1), mode="reflect")


def clahe(array: np.ndarray, clip_limit: float = 0.01) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation, per channel, 2D or 3D.

    Each channel is first rescaled to ``[0, 1]`` (a constant channel becomes 0), then
    equalised with :func:`skimage.exposure.equalize_adapthist` (tiles of 1/8 of each axis,
    256 bins) at ``clip_limit``, its default 0.01 unless given.

    Returns:
        A float32 array of the same shape with values in ``[0, 1]``.
    """
    from skimage.exposure import equalize_adapthist

    out = np.empty_like(array)
    for c, channel in enumerate(array):
        scaled = np.clip(normalize(channel[None], "minmax")[0], 0.0, 1.0)  # float rounding can pass 1
        out[c] = equalize_adapthist(scaled, clip_limit=clip_limit) if scaled.max() > 0 else scaled
    return out
