"""Random training patches with foreground oversampling, as in nnU-Net.

A batch mixes plain random crops with crops centred on a random foreground voxel, so
small structures are seen often enough to be learnt.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x, y = sample_patches([image], [labels], patch_size=[64, 64], batch_size=4, generator=rng)
    >>> x.shape, y.shape  # ((4, C, 64, 64), (4, 64, 64))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from medsight.errors import ConfigError, InvalidImageError


def sample_patches(
    images: list[np.ndarray],
    labels: list[np.ndarray],
    *,
    patch_size: Sequence[int],
    batch_size: int,
    foreground_fraction: float = 0.33,
    generator: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a batch of random patches from channel-first images and their label maps.

    Images smaller than the patch are zero-padded (labels padded with background).
    At least ``ceil(foreground_fraction * batch_size)`` patches are centred on a random
    foreground voxel of a case that has foreground; the rest are uniform random crops.

    Args:
        images: ``(C, *spatial)`` float arrays.
        labels: integer label maps of each image's spatial shape.
        patch_size: one size per spatial axis.
        batch_size: patches per batch.
        foreground_fraction: minimum share of foreground-centred patches, in ``[0, 1]``.
        generator: the source of randomness; the same seed gives the same batch.

    Returns:
        ``(x, y)``: float32 ``(B, C, *patch_size)`` and int64 ``(B, *patch_size)``.

    Raises:
        ConfigError: no images, mismatched lists, a bad patch size, batch size or fraction.
        InvalidImageError: a label map whose shape differs from its image's spatial shape.
    """
    patch = tuple(int(p) for p in patch_size)
    _check_args(images, labels, patch, batch_size, foreground_fraction)
    with_fg = [i for i, label in enumerate(labels) if np.any(label > 0)]
    n_fg = math.ceil(foreground_fraction * batch_size) if with_fg else 0
    xs, ys = [], []
    for index in range(batch_size):
        forced = index < n_fg
        case = int(generator.choice(with_fg)) if forced else int(generator.integers(len(images)))
        image, label = _pad_to(images[case], labels[case], patch)
        if forced:
            start = _centred_start(label, patch, generator)
        else:
            start = [int(generator.integers(s - p + 1)) for s, p in zip(label.shape, patch, strict=True)]
        window = tuple(slice(b, b + p) for b, p in zip(start, patch, strict=True))
        xs.append(image[(slice(None), *window)])
        ys.append(label[window])
    return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.int64)


def _check_args(
    images: list[np.ndarray], labels: list[np.ndarray], patch: tuple[int, ...], batch_size: int, fraction: float
) -> None:
    if not images or len(images) != len(labels):
        raise ConfigError(
            "sample_patches", f"got {len(images)} images and {len(labels)} label maps",
            "pass one label map per image, at least one of each",
        )
    if batch_size < 1:
        raise ConfigError("batch_size", f"is {batch_size}", "use a batch size of at least 1")
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError("foreground_fraction", f"is {fraction}", "use a value in [0, 1], e.g. 0.33")
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        if image.shape[1:] != label.shape:
            raise InvalidImageError(
                f"case {index}", f"image shape {image.shape} does not fit label shape {label.shape}",
                "pass channel-first images (C, *spatial) with labels of the spatial shape",
            )
        if len(patch) != label.ndim or min(patch) < 1:
            raise ConfigError(
                "patch_size", f"{patch} does not give one positive size per axis of {label.shape}",
                f"pass {label.ndim} sizes",
            )


def _pad_to(image: np.ndarray, label: np.ndarray, patch: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Pad both arrays symmetrically so every spatial axis is at least the patch size."""
    extra = [max(p - s, 0) for s, p in zip(label.shape, patch, strict=True)]
    if not any(extra):
        return image, label
    pads = [(e // 2, e - e // 2) for e in extra]
    return np.pad(image, [(0, 0), *pads]), np.pad(label, pads)


def _centred_start(label: np.ndarray, patch: tuple[int, ...], generator: np.random.Generator) -> list[int]:
    """Start of a window centred on a random foreground voxel, kept inside the array."""
    flat = np.flatnonzero(label > 0)
    voxel = np.unravel_index(int(flat[generator.integers(flat.size)]), label.shape)
    return [
        int(min(max(v - p // 2, 0), s - p)) for v, p, s in zip(voxel, patch, label.shape, strict=True)
    ]
