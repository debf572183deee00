"""Segmentation metrics against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medsight.errors import ConfigError, DatasetError, InvalidImageError
from medsight.segmentation.metrics import pixel_auc, segmentation_case_metrics, summarise_cases


def _square(shape: tuple[int, int], rows: slice, cols: slice, label: int = 1) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int64)
    out[rows, cols] = label
    return out


def _sphere(radius_mm: float, spacing: tuple[float, float, float], shape=(24, 40, 40)) -> np.ndarray:
    """A ball of ``radius_mm`` in physical space, centred in the grid."""
    grids = np.meshgrid(*[(np.arange(n) - n // 2) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    return (sum(g**2 for g in grids) <= radius_mm**2).astype(np.int64)


@pytest.mark.parametrize(
    ("pred_rows", "pred_cols", "dice", "iou", "sensitivity", "precision"),
    [
        (slice(4, 8), slice(2, 6), 0.5, 1 / 3, 0.5, 0.5),  # 16 px each, 8 shared
        (slice(3, 6), slice(3, 6), 18 / 25, 9 / 16, 9 / 16, 1.0),  # 9 px inside the 16 px truth
        (slice(2, 6), slice(2, 6), 1.0, 1.0, 1.0, 1.0),
    ],
)
def test_overlap_of_two_squares(pred_rows, pred_cols, dice, iou, sensitivity, precision):
    truth = _square((10, 10), slice(2, 6), slice(2, 6))
    pred = _square((10, 10), pred_rows, pred_cols)
    m = segmentation_case_metrics(pred, truth, spacing=(1.0, 1.0), labels=[1])[1]
    assert m["dice"] == pytest.approx(dice)
    assert m["iou"] == pytest.approx(iou)
    assert m["sensitivity"] == pytest.approx(sensitivity)
    assert m["precision"] == pytest.approx(precision)


@pytest.mark.parametrize(("spacing", "hd95"), [((2.0, 1.0, 1.0), 4.0), ((1.0, 1.0, 1.0), 2.0), ((3.0, 1.0, 1.0), 6.0)])
def test_sphere_shifted_two_voxels_along_axis0(spacing, hd95):
    truth = _sphere(10.0, spacing)
    pred = np.roll(truth, 2, axis=0)
    m = segmentation_case_metrics(pred, truth, spacing=spacing, labels=[1])[1]
    assert m["hd95"] == pytest.approx(hd95)
    assert 0 < m["assd"] < hd95


@pytest.mark.parametrize(("offset", "spacing", "distance"), [((0, 3), (1.0, 0.5), 1.5), ((3, 0), (2.0, 0.5), 6.0)])
def test_single_pixels_give_hand_computed_distance(offset, spacing, distance):
    truth = _square((8, 8), slice(1, 2), slice(1, 2))
    pred = _square((8, 8), slice(1 + offset[0], 2 + offset[0]), slice(1 + offset[1], 2 + offset[1]))
    m = segmentation_case_metrics(pred, truth, spacing=spacing, labels=[1])[1]
    assert m["hd95"] == pytest.approx(distance)
    assert m["assd"] == pytest.approx(distance)


def test_roi_ignores_false_positive_outside_it():
    truth = _square((16, 16), slice(2, 6), slice(2, 6))
    pred = truth.copy()
    pred[12:14, 12:14] = 1  # 4 px false positive far from the truth
    roi = np.zeros((16, 16), dtype=bool)
    roi[:10, :10] = True
    outside = segmentation_case_metrics(pred, truth, spacing=(1.0, 1.0), labels=[1])[1]
    inside = segmentation_case_metrics(pred, truth, spacing=(1.0, 1.0), labels=[1], roi=roi)[1]
    assert outside["dice"] == pytest.approx(32 / 36)
    assert outside["hd95"] > 5
    assert inside["dice"] == 1.0
    assert inside["hd95"] == 0.0
    assert inside["precision"] == 1.0


def test_both_empty_is_perfect_and_undefined_ratios_are_nan():
    empty = np.zeros((6, 6), dtype=np.int64)
    m = segmentation_case_metrics(empty, empty, spacing=(1.0, 1.0), labels=[1])[1]
    assert (m["dice"], m["iou"], m["hd95"], m["assd"]) == (1.0, 1.0, 0.0, 0.0)
    assert math.isnan(m["sensitivity"]) and math.isnan(m["precision"])


@pytest.mark.parametrize("empty_side", ["pred", "truth"])
def test_one_empty_gives_zero_overlap_and_nan_distance(empty_side):
    mask = _square((6, 6), slice(1, 3), slice(1, 3))
    empty = np.zeros_like(mask)
    pred, truth = (empty, mask) if empty_side == "pred" else (mask, empty)
    m = segmentation_case_metrics(pred, truth, spacing=(1.0, 1.0), labels=[1])[1]
    assert (m["dice"], m["iou"]) == (0.0, 0.0)
    assert math.isnan(m["hd95"]) and math.isnan(m["assd"])


def test_labels_are_scored_separately():
    truth = _square((10, 10), slice(0, 4), slice(0, 4), label=1)
    truth[6:10, 6:10] = 2
    pred = truth.copy()
    pred[6:8, 6:10] = 0  # half of label 2 missed
    m = segmentation_case_metrics(pred, truth, spacing=(1.0, 1.0), labels=[1, 2, 3])
    assert m[1]["dice"] == 1.0
    assert m[2]["dice"] == pytest.approx(16 / 24)
    assert m[2]["sensitivity"] == pytest.approx(0.5)
    assert m[3]["dice"] == 1.0  # absent from both


@pytest.mark.parametrize(
    ("kwargs", "error", "where", "fix"),
    [
        ({"pred": np.zeros((4, 5), dtype=int)}, InvalidImageError, "pred", "resample"),
        ({"pred": np.zeros((4, 4), dtype=float)}, InvalidImageError, "pred", "argmax"),
        ({"truth": np.zeros((1, 1, 4, 4), dtype=int)}, InvalidImageError, "truth", "drop the batch"),
        ({"spacing": (1.0,)}, ConfigError, "spacing", "one voxel size"),
        ({"spacing": (1.0, -1.0)}, ConfigError, "spacing", "image's spacing"),
        ({"roi": np.ones((3, 3), dtype=bool)}, InvalidImageError, "roi", "same grid"),
        ({"labels": []}, ConfigError, "labels", "labels=[1]"),
    ],
)
def test_bad_inputs_name_the_argument_and_the_fix(kwargs, error, where, fix):
    args = {"pred": np.zeros((4, 4), dtype=int), "truth": np.zeros((4, 4), dtype=int), "spacing": (1.0, 1.0)}
    args["labels"] = [1]
    args.update(kwargs)
    with pytest.raises(error) as info:
        segmentation_case_metrics(args.pop("pred"), args.pop("truth"), **args)
    assert where in str(info.value) and fix in str(info.value)


def test_pixel_auc_of_perfect_map_is_one():
    truth = _square((8, 8), slice(2, 5), slice(2, 5))
    prob = np.where(truth == 1, 0.9, 0.1)
    assert pixel_auc(prob, truth) == (1.0, 1.0)


def test_pixel_auc_of_known_ranking():
    roc, pr = pixel_auc(np.array([[0.1, 0.6], [0.4, 0.9]]), np.array([[0, 0], [1, 1]]))
    assert roc == pytest.approx(0.75)
    assert pr == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_pixel_auc_ignores_pixels_outside_roi():
    truth = np.array([[0, 1, 0, 1]])
    prob = np.array([[0.1, 0.9, 0.95, 0.8]])  # the misranked negative lies outside the roi
    roi = np.array([[True, True, False, True]])
    assert pixel_auc(prob, truth)[0] == pytest.approx(0.5)
    assert pixel_auc(prob, truth, roi=roi) == (1.0, 1.0)


def test_pixel_auc_with_one_class_is_nan():
    roc, pr = pixel_auc(np.full((3, 3), 0.5), np.zeros((3, 3)))
    assert math.isnan(roc) and math.isnan(pr)


@pytest.mark.parametrize(
    ("prob", "truth", "fix"),
    [(np.zeros((2, 3)), np.zeros((3, 2)), "reference grid"), (np.full((2, 2), np.nan), np.eye(2), "model output")],
)
def test_pixel_auc_bad_inputs(prob, truth, fix):
    with pytest.raises(InvalidImageError) as info:
        pixel_auc(prob, truth)
    assert "prob" in str(info.value) and fix in str(info.value)


def _case(dice: float, hd95: float) -> dict[int, dict[str, float]]:
    overlap = {"dice": dice, "iou": dice / (2 - dice), "sensitivity": dice, "precision": dice}
    return {1: {**overlap, "hd95": hd95, "assd": 1.0}}


def test_summary_means_skip_nan_and_ci_contains_mean():
    cases = [_case(0.5, 1.0), _case(0.7, math.nan), _case(0.9, 3.0), _case(0.8, 2.0)]
    s = summarise_cases(cases, label_names={0: "background", 1: "liver"}, n_boot=500)
    assert list(s) == ["liver"]
    assert s["liver"]["n"] == 4 and s["liver"]["label"] == 1
    dice = s["liver"]["metrics"]["dice"]
    assert dice["mean"] == pytest.approx(0.725)
    assert 0.5 <= dice["ci_low"] <= dice["mean"] <= dice["ci_high"] <= 0.9
    hd = s["liver"]["metrics"]["hd95"]
    assert hd["mean"] == pytest.approx(2.0)
    assert hd["ci_low"] <= 2.0 <= hd["ci_high"]
    assert s == summarise_cases(cases, label_names={1: "liver"}, n_boot=500)  # same seed, same intervals


def test_summary_of_all_nan_metric_is_nan():
    s = summarise_cases([_case(0.5, math.nan), _case(0.6, math.nan)], label_names={1: "liver"}, n_boot=50)
    assert all(math.isnan(v) for v in s["liver"]["metrics"]["hd95"].values())


@pytest.mark.parametrize(
    ("cases", "kwargs", "error", "text"),
    [
        ([], {}, DatasetError, "score at least one case"),
        ([_case(0.5, 1.0)], {"label_names": {2: "kidney"}}, ConfigError, "add a name"),
        ([_case(0.5, 1.0)], {"ci": 1.5}, ConfigError, "0.95"),
        ([_case(0.5, 1.0)], {"n_boot": -1}, ConfigError, "n_boot=-1"),
    ],
)
def test_summary_bad_inputs(cases, kwargs, error, text):
    args = {"label_names": {1: "liver"}, **kwargs}
    with pytest.raises(error) as info:
        summarise_cases(cases, **args)
    assert text in str(info.value)
