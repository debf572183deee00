"""augment_with_boxes: a box drawn as a bright rectangle stays on the rectangle through every augmentation.

The check: the pixels brighter than half the rectangle's value, after the transform, have the moved box as their
bounding box within half a pixel, or 1 pixel with a rotation. Why: bilinear interpolation of a 0/1 rectangle is
above 1/2 exactly where a pixel centre's pre-image lies inside the rectangle along an edge, so the bright pixels'
edges fall within half a pixel of the moved box's; a rotated rectangle's extreme along an axis is a corner, a point
the nearest bright pixel centre can miss by more than half a pixel but less than 1 (interpolation rounds the
corner off).
"""

from __future__ import annotations

import numpy as np
import pytest

from medsight.boxes import Boxes
from medsight.config import AugmentConfig
from medsight.errors import ConfigError
from medsight.transforms.box_augment import augment_with_boxes, clip_boxes

SHAPE = {2: (60, 80), 3: (24, 40, 36)}
BOX = {2: [14.0, 22.0, 40.0, 36.0], 3: [6.0, 10.0, 9.0, 17.0, 26.0, 21.0]}


def _rectangle(dims: int) -> tuple[np.ndarray, Boxes]:
    """A 0/1 image with the box's pixels at 1 (the box lies on pixel edges, so it covers whole pixels)."""
    image = np.zeros((1, *SHAPE[dims]), np.float32)
    lo, hi = [int(v) for v in BOX[dims][:dims]], [int(v) for v in BOX[dims][dims:]]
    image[(0, *[slice(a, b) for a, b in zip(lo, hi, strict=True)])] = 1.0
    return image, Boxes([BOX[dims]], [2])


def _bright_box(image: np.ndarray, level: float = 0.5) -> np.ndarray:
    """The pixel-edge bounding box of the pixels above ``level``."""
    where = np.nonzero(image[0] > level)
    return np.array([w.min() for w in where] + [w.max() + 1 for w in where], dtype=np.float64)


GEOMETRIC = {
    "flip_h": AugmentConfig(flip_h=0.5),
    "flip_v": AugmentConfig(flip_v=0.5),
    "scale": AugmentConfig(scale=0.3),
    "shift": AugmentConfig(shift=0.15),
    "rotate": AugmentConfig(rotate_deg=20),
    "all": AugmentConfig(flip_h=0.5, flip_v=0.5, scale=0.2, shift=0.1, rotate_deg=15),
}


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("name", list(GEOMETRIC))
def test_the_moved_box_stays_on_the_bright_rectangle(name, dims):
    image, boxes = _rectangle(dims)
    rng = np.random.default_rng(0)
    for _ in range(12):
        out, moved = augment_with_boxes(image, boxes, GEOMETRIC[name], rng)
        assert out.shape == image.shape and moved.labels.tolist() == [2]
        tolerance = 1.0 if GEOMETRIC[name].rotate_deg else 0.5 + 1e-6
        np.testing.assert_allclose(_bright_box(out), moved.corners[0], rtol=0, atol=tolerance)


@pytest.mark.parametrize("dims", [2, 3])
def test_flips_move_the_box_exactly(dims):
    image, boxes = _rectangle(dims)
    out, moved = augment_with_boxes(image, boxes, AugmentConfig(flip_h=1.0, flip_v=1.0), np.random.default_rng(0))
    np.testing.assert_allclose(_bright_box(out), moved.corners[0], rtol=0, atol=1e-9)  # float64 through the affine
    size = SHAPE[dims]
    lo, hi = np.array(BOX[dims][:dims]), np.array(BOX[dims][dims:])
    flipped_lo, flipped_hi = lo.copy(), hi.copy()
    for axis in (dims - 1, dims - 2):  # the last two axes: left-right and up-down
        flipped_lo[axis], flipped_hi[axis] = size[axis] - hi[axis], size[axis] - lo[axis]
    np.testing.assert_allclose(moved.corners[0], [*flipped_lo, *flipped_hi], rtol=0, atol=1e-9)


def test_a_rotated_ellipse_is_fitted_by_the_ellipse_rule_and_the_corners_box_holds_it():
    rows, cols = np.mgrid[0:64, 0:64] + 0.5
    image = ((((rows - 32) / 14) ** 2 + ((cols - 30) / 6) ** 2) <= 1).astype(np.float32)[None]
    box = Boxes([[18.0, 24.0, 46.0, 36.0]], [0])
    augment = AugmentConfig(rotate_deg=30)
    for seed in range(6):
        out, ellipse = augment_with_boxes(image, box, augment, np.random.default_rng(seed), refit="ellipse")
        _, corners = augment_with_boxes(image, box, augment, np.random.default_rng(seed), refit="corners")
        np.testing.assert_allclose(_bright_box(out), ellipse.corners[0], atol=1.0)
        inner, outer = ellipse.corners[0], corners.corners[0]
        assert (outer[:2] <= inner[:2] + 1e-9).all() and (outer[2:] >= inner[2:] - 1e-9).all()


def test_intensity_augmentation_changes_the_pixels_and_leaves_the_boxes():
    image, boxes = _rectangle(2)
    image = image * 100 + 20
    augment = AugmentConfig(contrast=0.3, gamma=0.3, noise_std=2.0, brightness=0.2)
    out, same = augment_with_boxes(image, boxes, augment, np.random.default_rng(3))
    assert same.corners.tolist() == boxes.corners.tolist()
    assert not np.allclose(out, image)
    np.testing.assert_array_equal(_bright_box(out, 70.0), boxes.corners[0])  # the rectangle is still where it was


def test_the_same_generator_state_gives_the_same_image_and_boxes():
    image, boxes = _rectangle(2)
    augment = AugmentConfig(flip_h=0.5, rotate_deg=10, scale=0.1, shift=0.1, noise_std=0.1, gamma=0.2)
    first = augment_with_boxes(image, boxes, augment, np.random.default_rng(7))
    second = augment_with_boxes(image, boxes, augment, np.random.default_rng(7))
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1].corners.tolist() == second[1].corners.tolist()


def test_no_knob_on_returns_the_inputs_themselves():
    image, boxes = _rectangle(2)
    out, same = augment_with_boxes(image, boxes, AugmentConfig(), np.random.default_rng(0))
    assert out is image and same is boxes


def test_a_box_is_clipped_to_the_image_and_dropped_when_less_than_half_stays():
    boxes = Boxes([[-10.0, 5.0, 30.0, 25.0], [-30.0, 5.0, 10.0, 25.0], [50.0, 70.0, 70.0, 90.0]], [0, 1, 2], None)
    kept = clip_boxes(boxes, (60, 80))
    # 30/40 of the first box stays; 10/40 of the second; none of the third (it lies beyond the corner)
    assert kept.corners.tolist() == [[0.0, 5.0, 30.0, 25.0]] and kept.labels.tolist() == [0]


def test_a_negative_image_stays_negative():
    image, _ = _rectangle(2)
    out, boxes = augment_with_boxes(image, Boxes.empty(2), GEOMETRIC["all"], np.random.default_rng(0))
    assert len(boxes) == 0 and out.shape == image.shape


def test_elastic_deformation_and_boxes_of_the_wrong_dimensions_are_refused():
    image, boxes = _rectangle(2)
    with pytest.raises(ConfigError, match="augment.elastic=4.0: a detector's boxes cannot follow"):
        augment_with_boxes(image, boxes, AugmentConfig(elastic=4.0), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="3D boxes on a 2D image"):
        augment_with_boxes(image, Boxes([BOX[3]], [0]), AugmentConfig(flip_h=1.0), np.random.default_rng(0))
