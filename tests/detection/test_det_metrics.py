"""Detection metrics on scenes small enough to compute by hand (issue 34)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medsight.boxes import Boxes
from medsight.detection.curves import average_precision, froc_sensitivity, image_auc
from medsight.detection.matching import box_iou, match_boxes
from medsight.detection.metrics import DETECTION_KEYS, detection_metrics, pool_matches, score_at_fp_rate
from medsight.errors import ConfigError, DatasetError


def box(r: float, c: float, size: float = 10.0) -> list[float]:
    return [r, c, r + size, c + size]


def interleaved() -> tuple[list[Boxes], list[Boxes]]:
    """4 images, one true box each, found exactly (scores .9 .8 .7 .6) and one false positive each that
    outscores it (.95 .85 .75 .65): pooled, FP TP FP TP FP TP FP TP."""
    truth = [Boxes([box(10, 10)], [0]) for _ in range(4)]
    pairs = [(0.9, 0.95), (0.8, 0.85), (0.7, 0.75), (0.6, 0.65)]
    predicted = [Boxes([box(10, 10), box(50, 50)], [0, 0], scores) for scores in pairs]
    return truth, predicted


def test_a_perfect_prediction_scores_one_everywhere() -> None:
    truth = [Boxes([box(5, 5), box(30, 40, 6)], [0, 1]), Boxes([box(20, 20, 15)], [1]), Boxes.empty()]
    predicted = [Boxes(b.corners, b.labels, np.full(len(b), 0.9)) for b in truth]
    m = detection_metrics(truth, predicted, ["a", "b"], bootstrap=50)
    assert [m[key] for key in DETECTION_KEYS] == [1.0] * 5
    assert m["froc"]["sensitivity"] == [1.0] * 7
    assert m["per_class"]["b"]["ap_by_iou"] == {k: 1.0 for k in m["per_class"]["b"]["ap_by_iou"]}
    assert m["per_class"]["a"]["pr50"]["precision"] == [1.0] * 101
    assert m["ci"]["map"] == [1.0, 1.0] and m["ci"]["ap50"] == [1.0, 1.0]
    assert (m["n_images"], m["n_boxes"], m["n_predictions"]) == (3, 3, 3)


def test_one_false_positive_above_each_hit_gives_the_hand_computed_froc_and_ap() -> None:
    m = detection_metrics(*interleaved(), ["lesion"], bootstrap=0)
    # budgets of 0.5, 1, 2, 4, 8, 16, 32 false positives over 4 images: 0, 1, 2, 4, 4, 4, 4 allowed,
    # so the hits above them: 0, 1, 2, 4 of 4, then all
    assert m["froc"]["sensitivity"] == [0.0, 0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    assert m["froc_mean"] == pytest.approx(4.75 / 7, abs=1e-15)
    # precision 1/2, 2/4, 3/6, 4/8 at recall .25 .. 1: 0.5 at every recall point; the hits are exact (IoU 1)
    assert m["ap50"] == m["ap10"] == m["map"] == 0.5
    assert m["froc"]["curve"] == {"fp_per_image": [0.0, 0.25, 0.5, 0.75, 1.0],
                                  "sensitivity": [0.0, 0.25, 0.5, 0.75, 1.0], "score": [None, 0.9, 0.8, 0.7, 0.6]}
    assert math.isnan(m["image_auc"])  # every image has a true box: one class only


@pytest.mark.parametrize(("fp_per_image", "expected"), [(1.0, 0.6), (0.5, 0.8), (0.25, 0.9), (100.0, 0.6)])
def test_the_operating_threshold_keeps_at_most_the_false_positives_allowed(fp_per_image, expected) -> None:
    assert score_at_fp_rate(*interleaved(), fp_per_image) == pytest.approx(expected, abs=1e-15)


def test_no_threshold_fits_keeps_nothing_and_ties_go_together() -> None:
    truth, predicted = interleaved()
    assert score_at_fp_rate(truth, predicted, 0.0) == np.nextafter(0.95, 1.0)  # the top box is a false positive
    tied = [Boxes([box(10, 10), box(50, 50)], [0, 0], [0.9, 0.9])]
    assert score_at_fp_rate(truth[:1], tied, 0.5) == np.nextafter(0.9, 1.0)  # the hit comes only with the FP
    assert detection_metrics(truth[:1], tied, ["lesion"], bootstrap=0)["froc"]["sensitivity"][:3] == [0.0] * 3


def test_empty_predictions_score_zero() -> None:
    truth = [Boxes([box(10, 10)], [0]), Boxes([box(3, 3, 4)], [0]), Boxes.empty()]
    m = detection_metrics(truth, [Boxes.empty(scored=True)] * 3, ["lesion"], bootstrap=20)
    assert (m["map"], m["ap50"], m["ap10"], m["froc_mean"]) == (0.0, 0.0, 0.0, 0.0)
    assert m["image_auc"] == 0.5  # every image scores 0: positives and negatives tie
    assert score_at_fp_rate(truth, [Boxes.empty(scored=True)] * 3, 1.0) == 0.0


def test_images_without_truth_count_for_false_positives_and_alone_leave_metrics_undefined() -> None:
    truth = [Boxes([box(10, 10)], [0]), Boxes.empty()]
    predicted = [Boxes([box(10, 10)], [0], [0.9]), Boxes([box(40, 40)], [0], [0.8])]
    m = detection_metrics(truth, predicted, ["lesion"], bootstrap=0)
    assert (m["ap50"], m["froc_mean"], m["image_auc"]) == (1.0, 1.0, 1.0)  # the hit outscores the FP
    none = detection_metrics([Boxes.empty()] * 2, predicted, ["lesion"], bootstrap=30)
    assert all(math.isnan(none[key]) for key in DETECTION_KEYS)
    assert all(math.isnan(v) for interval in none["ci"].values() for v in interval)
    assert none["n_boxes"] == 0 and none["n_predictions"] == 2


def test_3d_boxes_use_volume_iou() -> None:
    assert box_iou([[0, 0, 0, 2, 2, 2]], [[1, 0, 0, 3, 2, 2]])[0, 0] == pytest.approx(1 / 3, abs=1e-16)
    truth = [Boxes([[0, 0, 0, 10, 10, 10]], [0])]
    half = [Boxes([[0, 0, 0, 10, 10, 5]], [0], [0.7])]  # IoU exactly 0.5
    m = detection_metrics(truth, half, ["nodule"], bootstrap=0)
    assert (m["ap50"], m["ap10"], m["froc_mean"]) == (1.0, 1.0, 1.0)
    assert m["per_class"]["nodule"]["ap_by_iou"]["0.55"] == 0.0
    assert m["map"] == pytest.approx(0.1, abs=1e-16)  # found at 1 of the 10 COCO thresholds


def test_match_boxes_marks_hits_duplicates_false_positives_and_misses() -> None:
    truth = Boxes([box(0, 0), box(40, 40)], [0, 0])
    predicted = Boxes([box(1, 0), box(0, 1), box(80, 80), box(40, 40)], [0, 0, 0, 0], [0.9, 0.8, 0.7, 0.2])
    m = match_boxes(truth, predicted, iou=0.5, score_threshold=0.5)
    assert m.kept.tolist() == [True, True, True, False]
    assert m.tp.tolist() == [True, False, False, False]  # the second box on the first truth is a duplicate
    assert m.fp.tolist() == [False, True, True, False]
    assert m.truth_index.tolist() == [0, -1, -1, -1]
    assert m.missed.tolist() == [False, True]  # its only prediction scored below the threshold
    assert m.f1 == pytest.approx(2 / 5, abs=1e-16)


def test_a_prediction_takes_the_true_box_it_overlaps_most_and_only_of_its_class() -> None:
    truth = Boxes([box(0, 0), box(0, 4), box(0, 0)], [0, 0, 1])
    predicted = Boxes([box(0, 3), box(0, 0)], [0, 0], [0.9, 0.8])
    m = match_boxes(truth, predicted, iou=0.3, score_threshold=0.0)
    assert m.truth_index.tolist() == [1, 0]  # the first: IoU 90/110 with truth 1 beats 70/130 with truth 0
    assert m.missed.tolist() == [False, False, True]  # the class-1 box is not found by class-0 predictions


def test_bootstrap_weights_equal_expanded_resamples() -> None:
    truth, predicted = interleaved()
    truth.append(Boxes.empty())
    predicted.append(Boxes([box(0, 0)], [0], [0.97]))
    drawn = [0, 0, 2, 4, 4]  # a resample: image 0 and 4 twice, image 2 once
    weights = np.bincount(drawn, minlength=5)[None, :].astype(float)
    pool = pool_matches(truth, predicted, 1)
    expanded = pool_matches([truth[i] for i in drawn], [predicted[i] for i in drawn], 1)
    n_w, n_e = weights @ pool.truth_counts[:, 0], expanded.truth_counts[:, 0].sum(keepdims=True)
    ones = np.ones((1, 5))
    for k in (0, 10):
        assert average_precision(pool.hit[k], pool.image, weights, n_w) == pytest.approx(
            average_precision(expanded.hit[k], expanded.image, ones, n_e), abs=1e-15)
    np.testing.assert_allclose(froc_sensitivity(pool.hit[10], pool.image, pool.scores, weights, n_w),
                               froc_sensitivity(expanded.hit[10], expanded.image, expanded.scores, ones, n_e),
                               atol=1e-15)


def test_image_auc_is_sklearns_with_ties() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(40), 1)
    positive = rng.random(40) < 0.4
    assert image_auc(scores, positive, np.ones((1, 40)))[0] == pytest.approx(
        roc_auc_score(positive, scores), abs=1e-12)


def test_the_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    rng = np.random.default_rng(0)
    truth = [Boxes([box(*rng.uniform(0, 50, 2))], [0]) for _ in range(30)]
    predicted = [Boxes(np.vstack([b.corners + rng.normal(0, 2, (1, 4)), [box(*rng.uniform(60, 90, 2))]]), [0, 0],
                       rng.random(2)) for b in truth]  # a jittered hit and a false positive per image
    first = detection_metrics(truth, predicted, ["x"], bootstrap=200, seed=1)
    assert json.dumps(first) == json.dumps(detection_metrics(truth, predicted, ["x"], bootstrap=200, seed=1))
    assert first["ci"] != detection_metrics(truth, predicted, ["x"], bootstrap=200, seed=2)["ci"]
    for key in ("map", "ap50", "froc_mean"):
        low, high = first["ci"][key]
        assert low <= first[key] <= high and low < high


@pytest.mark.parametrize(("truth", "predicted", "problem"), [
    ([Boxes.empty()], [], "1 images of true boxes but 0"),
    ([Boxes([box(0, 0)], [0])], [Boxes([box(0, 0)], [0])], "no scores"),
    ([Boxes([box(0, 0)], [2])], [Boxes.empty(scored=True)], "label 2 but there are 2 class names"),
    ([Boxes([box(0, 0)], [0])], [Boxes([[0, 0, 0, 1, 1, 1]], [0], [0.5])], "2D true boxes but 3D"),
    ([], [], "no images"),
])
def test_bad_input_names_the_problem(truth, predicted, problem) -> None:
    with pytest.raises(DatasetError, match=problem):
        detection_metrics(truth, predicted, ["a", "b"], bootstrap=0)


@pytest.mark.parametrize("options", [{"bootstrap": -1}, {"ci": 1.5}])
def test_bad_settings_are_config_errors(options) -> None:
    truth, predicted = interleaved()
    with pytest.raises(ConfigError, match="use e.g. bootstrap=1000"):
        detection_metrics(truth, predicted, ["lesion"], **options)
    with pytest.raises(ConfigError, match="cannot be negative"):
        score_at_fp_rate(truth, predicted, -1.0)
