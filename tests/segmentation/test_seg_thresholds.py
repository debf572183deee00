"""The operating point a segmentation bundle keeps: thresholds and the centring level, on known maps."""

import numpy as np
import pytest

from medsight.config import load_config
from medsight.inference.postprocess import median_logit
from medsight.segmentation.thresholds import centring_level, choose_thresholds


def _cfg(**overrides):
    return load_config(overrides={"task": "segmentation", **overrides})


def _case(vessel_p: float, background_p: float, stray_p: float):
    """A 10x10 image: 20 foreground pixels at ``vessel_p``, 75 background at ``background_p``, and 5
    background pixels at ``stray_p``, which lie outside the region of interest."""
    labels = np.zeros((10, 10), np.int64)
    labels[:2] = 1
    prob = np.full((10, 10), background_p, np.float32)
    prob[:2] = vessel_p
    prob[9, :5] = stray_p
    roi = np.ones((10, 10), bool)
    roi[9, :5] = False
    return prob, labels, roi


def test_the_binary_threshold_separates_the_pooled_pixels_inside_the_roi():
    cases = [_case(0.8, 0.1, 0.95), _case(0.7, 0.6, 0.95)]
    thresholds, note = choose_thresholds(_cfg(), 2, lambda: iter(cases), "the 2 test cases")
    # every foreground pixel (0.7, 0.8) above, every background pixel in the ROIs (0.1, 0.6) below;
    # the strays at 0.95 would cost precision, but they lie outside the ROIs
    assert 0.6 < thresholds[1] <= 0.7
    assert note.startswith(f"foreground probability >= {thresholds[1]:.4f}") and "(1.0000) of the 2 test cases" in note


def test_given_thresholds_win_and_multi_class_tasks_use_argmax():
    never = lambda: pytest.fail("the probabilities must not be read")  # noqa: E731
    assert choose_thresholds(_cfg(**{"segment.thresholds": {1: 0.3}}), 2, never, "x") == (
        {1: 0.3}, "given in segment.thresholds")
    assert choose_thresholds(_cfg(), 3, never, "x") == ({}, "the most probable class of each voxel")


def test_centring_sets_each_case_median_logit_to_the_cases_mean_and_keeps_the_order():
    cases = [_case(0.8, 0.1, 0.95), _case(0.7, 0.6, 0.95)]
    probs = lambda: ((np.stack([1 - p, p]), labels, roi) for p, labels, roi in cases)  # noqa: E731
    level, centred = centring_level(_cfg(**{"segment.centre_logits": True}), probs)
    # the probabilities are kept as float16 for the second pass: 0.1 is 0.0999755859375 there
    assert level == pytest.approx(np.mean([median_logit(0.1), median_logit(0.6)]), abs=2e-4)
    for (foreground, labels, roi), (raw, raw_labels, raw_roi) in zip(centred(), cases, strict=True):
        assert median_logit(foreground) == pytest.approx(level, abs=1e-5)
        assert (np.argsort(foreground, axis=None, kind="stable") == np.argsort(raw, axis=None, kind="stable")).all()
        assert labels is raw_labels and roi is raw_roi

    level, plain = centring_level(_cfg(), probs)
    assert level is None
    assert all(np.array_equal(foreground, raw) for (foreground, _, _), (raw, _, _) in zip(plain(), cases, strict=True))
