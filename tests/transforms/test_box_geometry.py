"""fit_to_input and Placement: an image and its boxes into the detector's input and back, 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest

from medsight.boxes import Boxes
from medsight.config import PreprocessConfig
from medsight.sample import Sample
from medsight.transforms.box_geometry import fit_sample, fit_to_input, placement
from medsight.transforms.intensity import normalize
from medsight.transforms.preprocess import intensity_steps, preprocess


def test_a_tall_image_is_padded_left_and_right_then_scaled():
    image = np.random.default_rng(0).uniform(2, 3, (1, 100, 50)).astype(np.float32)
    array, boxes, where = fit_to_input(image, Boxes([[10, 10, 30, 20]], [0]), (64, 64))
    assert array.shape == (1, 64, 64)
    assert where.scale == (0.64, 0.64) and where.offset == (0.0, 16.0)  # 25 padded columns each side, times 0.64
    assert boxes.corners[0].tolist() == pytest.approx([6.4, 22.4, 19.2, 28.8])
    # the padding (the input's first 16 columns) is the image's smallest value
    np.testing.assert_allclose(array[0, :, :15], image.min(), rtol=1e-6)


def test_without_keep_aspect_each_axis_has_its_own_scale():
    where = placement((100, 50), (64, 64), keep_aspect=False)
    assert where.scale == (0.64, 1.28) and where.offset == (0.0, 0.0)


@pytest.mark.parametrize(("shape", "size", "keep"), [
    ((373, 454), (512, 512), True), ((2880, 2304), (384, 384), True), ((454, 181), (256, 320), True),
    ((37, 45), (64, 64), False), ((20, 48, 40), (32, 32, 32), True),
])
def test_boxes_go_into_the_input_and_back_to_float_precision(shape, size, keep):
    rng = np.random.default_rng(0)
    d = len(shape)
    lo = rng.uniform(0, 0.5, (20, d)) * shape
    corners = np.concatenate([lo, lo + rng.uniform(1, 0.5 * min(shape), (20, d))], axis=1)
    corners[:, d:] = np.minimum(corners[:, d:], shape)
    boxes = Boxes(corners, rng.integers(0, 3, 20), rng.uniform(0, 1, 20))
    where = placement(shape, size, keep)
    inside = where.to_input(boxes)
    assert (inside.corners >= 0).all() and (inside.corners[:, d:] <= np.asarray(size) + 1e-9).all()
    back = where.to_source(inside)
    # float64 arithmetic on coordinates below 3000: a few ulps (~5e-13) each way
    np.testing.assert_allclose(back.corners, corners, rtol=0, atol=1e-9)
    assert back.labels.tolist() == boxes.labels.tolist() and back.scores.tolist() == boxes.scores.tolist()


def test_a_prediction_reaching_into_the_padding_is_clipped_and_one_inside_it_is_dropped():
    where = placement((100, 50), (64, 64))  # columns 0-16 and 48-64 of the input are padding
    predicted = Boxes([[0.0, 10.0, 32.0, 32.0], [10.0, 2.0, 20.0, 14.0]], [0, 1], [0.9, 0.8])
    back = where.to_source(predicted)
    assert back.corners.tolist() == [[0.0, 0.0, 50.0, 25.0]] and back.scores.tolist() == [0.9]


def test_the_resized_image_puts_a_bright_square_where_its_box_goes():
    image = np.zeros((1, 120, 80), np.float32)
    image[0, 30:60, 20:40] = 1.0
    array, boxes, _ = fit_to_input(image, Boxes([[30, 20, 60, 40]], [0]), (60, 60))
    rows, cols = np.nonzero(array[0] > 0.5)
    # half a pixel on each side: the threshold at half the square's value falls on its moved edge
    np.testing.assert_allclose([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], boxes.corners[0], atol=0.5)


def test_fit_sample_is_preprocess_with_the_placement_beside_it():
    rng = np.random.default_rng(1)
    sample = Sample(rng.uniform(0, 255, (3, 90, 60)).astype(np.float32), (1.0, 1.0))
    cfg = PreprocessConfig(size=[64, 64], channels=1, normalize="zscore", keep_aspect=True)
    image, boxes, where = fit_sample(sample, cfg, Boxes([[9, 6, 45, 30]], [0]))
    np.testing.assert_array_equal(image, preprocess(sample, cfg))
    fitted, moved, same = fit_to_input(intensity_steps(sample, cfg), Boxes([[9, 6, 45, 30]], [0]), cfg.size)
    np.testing.assert_array_equal(image, normalize(fitted, "zscore"))
    assert same == where and moved.corners.tolist() == boxes.corners.tolist()
