"""Augmentation for detection: the image is flipped, rotated, zoomed and shifted, and its boxes move with it.

:func:`augment_with_boxes` draws one example's parameters with :class:`~medsight.transforms.BatchAugment` (the
same knobs, ranges and fixed operations as every other task: :mod:`medsight.transforms.augment` says what each
:class:`~medsight.config.AugmentConfig` knob does), applies them to the image, and moves the boxes through the
same affine map. The geometric knobs (``flip_h``, ``flip_v``, ``rotate_deg``, ``scale``, ``shift``) work in 2D
and 3D (a volume turns within its ``(H, W)`` planes, as :class:`BatchAugment` turns it); the intensity knobs
(``blur_sigma``, ``gamma``, ``contrast``, ``color``, ``brightness``, ``noise_std``) change the pixels only.
``elastic`` is refused: a bent box is no longer a box.

The box rule. Each box is mapped through the affine map's linear part ``M`` (in pixels) about its centre, and
re-fitted as an axis-aligned box:

* ``refit="corners"`` (the default): the bounding box of the moved corners, half-extents ``|M| @ half`` (``half``:
  the box's half-extents). Exact for a rectangular object; around a rounded one it grows with the angle (a
  square box turned by θ grows ``1 + sin 2θ`` times in area: 1.17 times at 5 degrees, 1.87 at 30).
* ``refit="ellipse"``: the bounding box of the moved ellipse inscribed in the box, half-extents
  ``sqrt(M**2 @ half**2)``: the growth a rounded finding (a nodule, a cell) really has. It is the corners box
  without rotation, and inside it with one.

A moved box is clipped to the image; one with less than ``min_visible`` (default :data:`MIN_VISIBLE`) of its
area (volume) left inside is dropped: what remains shows too little of the finding to be called one.

Seeded by the caller's ``numpy.random.Generator``: the same generator state gives the same image and boxes.

Example:
    >>> image = np.zeros((1, 64, 64), np.float32)
    >>> image, boxes = augment_with_boxes(image, Boxes([[10, 20, 30, 40]], [0]), AugmentConfig(flip_h=1.0),
    ...                                   np.random.default_rng(0))
    >>> boxes.corners.tolist()
    [[10.0, 24.0, 30.0, 44.0]]
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from medsight.boxes import Boxes
from medsight.config import AugmentConfig
from medsight.errors import ConfigError
from medsight.transforms.augment import AugmentParams, BatchAugment
from medsight.transforms.fixed import affine_matrix

MIN_VISIBLE = 0.5
"""A moved box with less than this share of its area inside the image is dropped."""


def augment_with_boxes(
    array: np.ndarray,
    boxes: Boxes,
    augment: AugmentConfig,
    rng: np.random.Generator,
    *,
    refit: Literal["corners", "ellipse"] = "corners",
    min_visible: float = MIN_VISIBLE,
) -> tuple[np.ndarray, Boxes]:
    """One randomly augmented copy of a ``(C, *spatial)`` image and its boxes (see the module for the rules).

    Args:
        array: the image, float, 2D or 3D, channel first.
        boxes: its boxes, in its index space.
        augment: the knobs (each off at 0); ``elastic`` must be 0.
        rng: the source of randomness (one draw seeds the image's parameters).
        refit: how a rotated box is re-fitted: ``corners`` or ``ellipse``.
        min_visible: the share of a moved box that must stay inside the image for it to be kept.

    Returns:
        ``(array, boxes)``: a new float32 image and the moved boxes (labels and scores kept); the inputs
        themselves when every knob is 0.

    Raises:
        ConfigError: ``augment.elastic`` is set, or the boxes are not of the image's dimensions.
    """
    if max(np.atleast_1d(augment.elastic)) > 0:
        raise ConfigError(f"augment.elastic={augment.elastic}", "a detector's boxes cannot follow an elastic "
                          "deformation (a bent box is no longer a box)", "set augment.elastic to 0 for detection")
    dims = array.ndim - 1
    if len(boxes) and boxes.spatial_dims != dims:
        raise ConfigError("boxes", f"{boxes.spatial_dims}D boxes on a {dims}D image", "pass the image's own boxes")
    augmenter = BatchAugment(augment, dims)
    if not augmenter.enabled:
        return array, boxes
    images = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
    params = augmenter.sample(images.shape, generator)
    out, _ = augmenter.apply(images, None, params)
    spatial = tuple(int(n) for n in array.shape[1:])
    moved = move_boxes(boxes, params, spatial, refit=refit)
    return out[0].numpy(), clip_boxes(moved, spatial, min_visible)


def move_boxes(boxes: Boxes, params: AugmentParams, spatial: tuple[int, ...], *,
               refit: Literal["corners", "ellipse"] = "corners") -> Boxes:
    """Boxes through the affine map of the first example of ``params`` (as :class:`BatchAugment` applies it to an
    image of ``spatial`` size), re-fitted by ``refit``; not clipped."""
    if refit not in ("corners", "ellipse"):
        raise ConfigError(f"refit={refit}", "unknown box re-fit", "use corners or ellipse")
    if not len(boxes):
        return boxes
    d = len(spatial)
    first = slice(0, 1)
    theta = affine_matrix(spatial, params.angle[first], params.scale[first], params.shift[first],
                          params.flip_h[first], params.flip_v[first], dtype=torch.float64)[0].numpy()
    # theta maps output to input in F.affine_grid's [-1, 1] grid (axes W, H[, D]); a pixel edge p sits at p / half - 1
    half = np.asarray(spatial[::-1], dtype=np.float64) / 2
    inverse = np.linalg.inv(theta[:, :d])
    linear = half[:, None] * inverse / half[None, :]  # output pixels per input pixel, grid order
    flip = [*range(d - 1, -1, -1), *range(2 * d - 1, d - 1, -1)]  # index order <-> grid order, both ways
    corners = boxes.corners[:, flip]
    centre, extent = (corners[:, :d] + corners[:, d:]) / 2, (corners[:, d:] - corners[:, :d]) / 2
    moved = ((centre / half - 1 - theta[:, d]) @ inverse.T + 1) * half
    reach = extent @ np.abs(linear).T if refit == "corners" else np.sqrt(extent**2 @ (linear**2).T)
    grid = np.concatenate([moved - reach, moved + reach], axis=1)
    return Boxes(grid[:, flip], boxes.labels, boxes.scores)


def clip_boxes(boxes: Boxes, spatial: tuple[int, ...], min_visible: float = MIN_VISIBLE) -> Boxes:
    """Boxes clipped to an image of ``spatial`` size; those with less than ``min_visible`` of their area (volume)
    inside it dropped."""
    d = len(spatial)
    if not len(boxes):
        return boxes
    clipped = np.clip(boxes.corners, 0.0, np.tile(np.asarray(spatial, dtype=np.float64), 2))
    whole = np.prod(boxes.corners[:, d:] - boxes.corners[:, :d], axis=1)
    inside = np.prod(np.maximum(clipped[:, d:] - clipped[:, :d], 0.0), axis=1)
    keep = inside >= min_visible * whole
    return Boxes(clipped, boxes.labels, boxes.scores).select(keep & (inside > 0))


__all__ = ["MIN_VISIBLE", "augment_with_boxes", "clip_boxes", "move_boxes"]
