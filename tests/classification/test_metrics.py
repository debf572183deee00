"""Classification metrics, thresholds, bootstrap CIs and calibration on values a person can check."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from medsight.classification.metrics import (
    METRIC_KEYS,
    bootstrap_cis,
    choose_threshold,
    classification_metrics,
    confusion,
    expected_calibration_error,
    predict_labels,
    reliability_bins,
)
from medsight.errors import ConfigError, DatasetError


def binary(p1) -> np.ndarray:
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1 - p1, p1], axis=1)


def synthetic(n: int, k: int, seed: int = 0, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities with some signal; rounded logits give tied scores."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += signal
    probs = np.exp(np.round(logits, 1))
    return y, probs / probs.sum(axis=1, keepdims=True)


# 4 positives, 6 negatives; at 0.5: TP 3, FN 1, FP 2, TN 4.
HAND_Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
HAND_P1 = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.55, 0.4, 0.3, 0.1, 0.05])


def test_hand_computed_binary_example():
    m = classification_metrics(HAND_Y, binary(HAND_P1))
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(3 / 5)
    assert m["npv"] == pytest.approx(4 / 5)
    assert m["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert m["auc"] == pytest.approx(20 / 24)  # the 0.2 positive beats only 2 of 6 negatives
    assert m["n"] == 10 and m["threshold"] == 0.5


def test_threshold_moves_the_operating_point():
    m = classification_metrics(HAND_Y, binary(HAND_P1), threshold=0.15)
    assert m["sensitivity"] == 1.0 and m["specificity"] == pytest.approx(2 / 6)  # only 0.1 and 0.05 cleared
    assert m["auc"] == pytest.approx(20 / 24)  # AUC does not depend on the threshold


def test_perfect_ranking_gives_auc_one():
    m = classification_metrics([0, 0, 0, 1, 1], binary([0.1, 0.2, 0.3, 0.8, 0.9]))
    assert m["auc"] == 1.0 and m["pr_auc"] == 1.0 and m["accuracy"] == 1.0


@pytest.mark.parametrize("k", [2, 3, 5])
def test_auc_and_average_precision_equal_sklearn(k):
    y, probs = synthetic(400, k, seed=k)
    m = classification_metrics(y, probs)
    if k == 2:
        assert m["auc"] == pytest.approx(roc_auc_score(y, probs[:, 1]))
        assert m["pr_auc"] == pytest.approx(average_precision_score(y, probs[:, 1]))
    else:
        assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
        assert m["pr_auc"] == pytest.approx(average_precision_score(np.eye(k)[y], probs, average="macro"))
        assert "threshold" not in m


def test_multiclass_counts_are_macro_averages():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[[0, 1, 1, 1, 2, 0]]  # predictions 0 1 1 1 2 0
    m = classification_metrics(y, probs)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["sensitivity"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["balanced_accuracy"] == pytest.approx(m["sensitivity"])
    assert m["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["specificity"] == pytest.approx((3 / 4 + 3 / 4 + 1) / 3)


def test_confusion_rows_are_true_columns_predicted():
    assert confusion([0, 1, 1, 2], [0, 0, 1, 2], 3).tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize(
    ("y", "p1", "threshold", "undefined"),
    [
        ([1, 1, 1], [0.2, 0.7, 0.9], 0.5, {"auc", "specificity"}),  # positives only
        ([0, 0, 0], [0.2, 0.7, 0.9], 0.5, {"auc", "pr_auc", "sensitivity"}),  # negatives only
        ([0, 1, 0, 1], [0.2, 0.7, 0.4, 0.9], 0.95, {"precision"}),  # nothing predicted positive
    ],
)
def test_undefined_values_are_nan_not_errors(y, p1, threshold, undefined):
    m = classification_metrics(y, binary(p1), threshold)
    assert {key for key in METRIC_KEYS if np.isnan(m[key])} == undefined


def test_multiclass_auc_is_nan_when_a_class_is_missing():
    y = np.array([0, 1, 0, 1])
    probs = np.full((4, 3), 1 / 3)
    assert np.isnan(classification_metrics(y, probs)["auc"])


# negatives 0.1 0.2 0.3 0.6, positives 0.35 0.5 0.8 0.9: Youden's J peaks (0.75) only at 0.35.
THR_Y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
THR_P1 = np.array([0.1, 0.2, 0.3, 0.6, 0.35, 0.5, 0.8, 0.9])


def test_youden_threshold_on_hand_made_example():
    assert choose_threshold(THR_Y, binary(THR_P1)) == pytest.approx(0.35)


@pytest.mark.parametrize(("target", "expected"), [(0.5, 0.8), (0.75, 0.5), (1.0, 0.35)])
def test_sensitivity_threshold_is_the_highest_reaching_target(target, expected):
    thr = choose_threshold(THR_Y, binary(THR_P1), method="sensitivity", target_sensitivity=target)
    assert thr == pytest.approx(expected)
    assert classification_metrics(THR_Y, binary(THR_P1), thr)["sensitivity"] >= target
    assert classification_metrics(THR_Y, binary(THR_P1), thr + 1e-6)["sensitivity"] < target


def test_fixed_threshold_is_returned_as_given():
    assert choose_threshold(THR_Y, binary(THR_P1), method="fixed", fixed=0.3) == 0.3


def test_predict_labels_binary_uses_threshold_and_multiclass_argmax():
    assert predict_labels(binary([0.3, 0.5, 0.7]), 0.5).tolist() == [0, 1, 1]
    assert predict_labels(np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])).tolist() == [1, 0]


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"y_true": [1, 1, 1], "probs": binary([0.2, 0.6, 0.9])}, DatasetError, ["validation", "fixed"]),
        ({"y_true": THR_Y, "probs": binary(THR_P1), "method": "best"}, ConfigError, ["threshold", "youden"]),
        ({"y_true": [0, 1, 2], "probs": np.eye(3)}, ConfigError, ["3 classes", "argmax"]),
    ],
)
def test_choose_threshold_bad_input(kwargs, error, words):
    with pytest.raises(error) as info:
        choose_threshold(**kwargs)
    assert all(word in str(info.value) for word in words)


@pytest.mark.parametrize(
    ("y", "probs", "words"),
    [
        ([0, 1], np.array([0.2, 0.8]), ["probs", "np.stack"]),  # 1-D scores
        ([0, 1, 1], binary([0.2, 0.8]), ["y_true", "one label per case"]),
        ([0, 2], binary([0.2, 0.8]), ["y_true", "class indices"]),
        ([0, 0.5], binary([0.2, 0.8]), ["y_true", "integer"]),
        (["normal", "pneumonia"], binary([0.2, 0.8]), ["y_true", "integer"]),
        ([0, 1], binary([0.2, np.nan]), ["probs", "NaN"]),
    ],
)
def test_bad_inputs_name_the_argument_and_the_fix(y, probs, words):
    with pytest.raises(DatasetError) as info:
        classification_metrics(np.asarray(y), probs)
    assert all(word in str(info.value) for word in words)


def test_bootstrap_equals_a_plain_loop_over_the_same_resamples():
    y, probs = synthetic(60, 2, seed=3)
    cis = bootstrap_cis(y, probs, threshold=0.4, n_boot=200, seed=7)
    draws = np.random.default_rng(7).integers(0, 60, size=(200, 60))
    per_resample = [classification_metrics(y[d], probs[d], 0.4) for d in draws]
    for key in METRIC_KEYS:
        vals = np.array([m[key] for m in per_resample])
        vals = vals[np.isfinite(vals)]
        assert cis[key] == pytest.approx(tuple(np.percentile(vals, [2.5, 97.5])))


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_more_cases():
    widths = []
    for n in (100, 2000):
        y, probs = synthetic(n, 2, seed=n)
        point = classification_metrics(y, probs)
        cis = bootstrap_cis(y, probs, threshold=0.5, n_boot=200)
        for key in METRIC_KEYS:
            assert cis[key][0] <= point[key] <= cis[key][1], key
        widths.append(cis["auc"][1] - cis["auc"][0])
    assert widths[1] < widths[0] / 2


def test_bootstrap_skips_single_class_resamples_for_auc():
    y = np.array([0] * 19 + [1])  # many resamples miss the only positive
    probs = binary(np.linspace(0.05, 0.95, 20))
    cis = bootstrap_cis(y, probs, threshold=0.5, n_boot=200)
    assert cis["auc"] == (1.0, 1.0)


def test_bootstrap_of_5000_cases_is_fast():
    y, probs = synthetic(5000, 2)
    start = time.perf_counter()
    bootstrap_cis(y, probs, threshold=0.5, n_boot=1000)
    assert time.perf_counter() - start < 10


def test_ece_of_calibrated_probabilities_is_near_zero():
    rng = np.random.default_rng(0)
    p1 = rng.random(20000)
    y = (rng.random(20000) < p1).astype(int)
    assert expected_calibration_error(y, binary(p1)) < 0.02


def test_ece_of_overconfident_probabilities_is_large():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    p1 = np.where(rng.random(4000) < 0.5, 0.99, 0.01)  # confident, but unrelated to y
    assert expected_calibration_error(y, binary(p1)) == pytest.approx(0.49, abs=0.03)


def test_top_label_ece_for_multiclass():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 3000)
    probs = np.full((3000, 3), 0.005)
    probs[np.arange(3000), rng.integers(0, 3, 3000)] = 0.99  # 99% sure, right a third of the time
    bins = reliability_bins(y, probs)
    assert bins["mode"] == "top-label" and sum(bins["count"]) == 3000
    assert expected_calibration_error(y, probs) == pytest.approx(0.99 - 1 / 3, abs=0.03)
