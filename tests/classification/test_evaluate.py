"""evaluate_predictions and aggregate_folds: the files written and the numbers in them."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from medsight.classification.evaluate import aggregate_folds, evaluate_predictions
from medsight.classification.metrics import classification_metrics, expected_calibration_error
from medsight.config import EvalConfig
from medsight.errors import DatasetError

CFG = EvalConfig(bootstrap=200)
FLAT = ("accuracy", "auc", "sensitivity", "specificity", "f1", "precision", "npv", "balanced_accuracy",
        "pr_auc")


def cases(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs, [f"scan_{i:03d}.dcm" for i in range(n)]


def run(tmp_path, k=2, names=None, threshold=0.4, **kwargs):
    y, probs, ids = cases(120, k)
    names = names or [f"class{i}" for i in range(k)]
    out = tmp_path / "eval"
    metrics = evaluate_predictions(
        y,
        probs,
        label_names=names,
        case_ids=ids,
        threshold=threshold,
        threshold_note="Youden on validation (n=78)",
        cfg=CFG,
        out=out,
        title="demo: test split",
        split="test",
        **kwargs,
    )
    return y, probs, out, metrics


@pytest.mark.parametrize("k", [2, 3])
def test_writes_every_file_and_flat_keys_match(tmp_path, k):
    y, probs, out, metrics = run(tmp_path, k=k)
    for name in ("metrics.json", "per_case.csv", "report.html", "roc.png", "pr.png", "confusion.png",
                 "calibration.png"):
        assert (out / name).stat().st_size > 0, name
    written = json.loads((out / "metrics.json").read_text())
    expected = classification_metrics(y, probs, 0.4)
    for key in FLAT:
        assert written[key] == pytest.approx(expected[key]), key
        entry = written["metrics"][key]
        assert entry["value"] == pytest.approx(expected[key])
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"]
    assert written["n"] == 120 and sum(written["n_per_class"].values()) == 120
    assert written["threshold"] == (0.4 if k == 2 else None)
    assert written["ece"] == pytest.approx(expected_calibration_error(y, probs))
    assert written["threshold_note"] == "Youden on validation (n=78)"
    assert np.array(written["confusion"]["matrix"]).sum() == 120
    assert metrics["auc"] == written["auc"]


def test_per_case_csv_has_one_row_per_case(tmp_path):
    y, probs, out, _ = run(tmp_path, names=["normal", "pneumonia"])
    with open(out / "per_case.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 120
    header = ["case_id", "true_label", "predicted_label", "prob_normal", "prob_pneumonia", "correct"]
    assert list(rows[0]) == header
    first = rows[0]
    assert first["case_id"] == "scan_000.dcm"
    assert first["true_label"] == ["normal", "pneumonia"][y[0]]
    assert float(first["prob_pneumonia"]) == pytest.approx(probs[0, 1], abs=1e-6)
    assert first["predicted_label"] == ("pneumonia" if probs[0, 1] >= 0.4 else "normal")
    assert first["correct"] == ("true" if first["true_label"] == first["predicted_label"] else "false")


def test_report_is_offline_and_embeds_the_plots(tmp_path):
    _, _, out, _ = run(tmp_path)
    text = (out / "report.html").read_text()
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "<link" not in text
    assert text.count('src="data:image/png;base64,') == 4
    assert "Youden on validation (n=78)" in text and "95% CI" in text


def test_user_strings_are_escaped(tmp_path):
    names = ["<script>alert(1)</script>", "a & b"]
    _, _, out, _ = run(tmp_path, names=names, extra={"data": "/x/<img src=y>"})
    text = (out / "report.html").read_text()
    assert "<script>" not in text and "<img src=y>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "a &amp; b" in text


def test_training_curves_from_history(tmp_path):
    history = tmp_path / "metrics.csv"
    history.write_text("epoch,train_loss,val_loss,val_auc,val_accuracy,lr\n1,0.7,0.69,0.6,0.55,0.001\n"
                       "2,0.5,0.55,0.75,0.7,0.0009\n3,0.4,0.5,0.8,0.74,0.0005\n")
    _, _, out, _ = run(tmp_path, history_csv=history)
    assert (out / "training_curves.png").stat().st_size > 0
    assert (out / "report.html").read_text().count("data:image/png;base64,") == 5


def test_missing_history_is_said_in_the_report(tmp_path):
    _, _, out, metrics = run(tmp_path, history_csv=tmp_path / "nope.csv")
    assert not (out / "training_curves.png").exists()
    assert "nope.csv was not found" in (out / "report.html").read_text()
    assert metrics["notes"]


def test_undefined_metrics_are_null_in_json(tmp_path):
    out = tmp_path / "eval"
    evaluate_predictions(
        np.zeros(5, dtype=int), np.tile([0.8, 0.2], (5, 1)), label_names=["neg", "pos"],
        case_ids=[str(i) for i in range(5)], threshold=None, threshold_note="default 0.5", cfg=CFG,
        out=out, title="one class", split="test",
    )
    written = json.loads((out / "metrics.json").read_text())
    assert written["auc"] is None and written["metrics"]["auc"]["ci_low"] is None
    assert written["specificity"] == 1.0 and written["threshold"] == 0.5
    assert "n/a" in (out / "report.html").read_text()


def test_no_bootstrap_leaves_cis_empty(tmp_path):
    y, probs, ids = cases(30, 2)
    metrics = evaluate_predictions(y, probs, label_names=["a", "b"], case_ids=ids, threshold=0.5,
                                   threshold_note="fixed", cfg=EvalConfig(bootstrap=0), out=tmp_path,
                                   title="t", split="val")
    assert math.isnan(metrics["metrics"]["auc"]["ci_low"]) and not math.isnan(metrics["auc"])
    assert "not computed" in (tmp_path / "report.html").read_text()


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"label_names": ["only"]}, ["label_names", "one name per class"]),
        ({"case_ids": ["a", "b"]}, ["case_ids", "one id per case"]),
    ],
)
def test_mismatched_names_or_ids(tmp_path, kwargs, words):
    y, probs, ids = cases(10, 2)
    args = {"label_names": ["a", "b"], "case_ids": ids, **kwargs}
    with pytest.raises(DatasetError) as info:
        evaluate_predictions(y, probs, threshold=0.5, threshold_note="", cfg=CFG, out=tmp_path, title="t",
                             split="test", **args)
    assert all(word in str(info.value) for word in words)


def test_aggregate_folds_mean_and_sd(tmp_path):
    folds = [
        {"n": 10, "auc": 0.8, "accuracy": 0.7, "sensitivity": 0.6},
        {"n": 12, "auc": 0.9, "accuracy": 0.8, "sensitivity": math.nan},
        {"n": 11, "auc": 0.7, "accuracy": 0.9, "sensitivity": 0.8},
    ]
    summary = aggregate_folds(folds, tmp_path, title="3-fold <cv>")
    assert summary["metrics"]["auc"]["mean"] == pytest.approx(0.8)
    assert summary["metrics"]["auc"]["sd"] == pytest.approx(0.1)
    assert summary["metrics"]["accuracy"]["per_fold"] == [0.7, 0.8, 0.9]
    assert summary["metrics"]["sensitivity"]["mean"] == pytest.approx(0.7)  # the NaN fold is left out
    assert summary["auc"] == pytest.approx(0.8)
    written = json.loads((tmp_path / "cv_metrics.json").read_text())
    assert written["metrics"]["sensitivity"]["per_fold"] == [0.6, None, 0.8]
    assert math.isnan(summary["metrics"]["f1"]["mean"]) and written["f1"] is None
    html_text = (tmp_path / "cv_report.html").read_text()
    assert "0.800 ± 0.100" in html_text and "3-fold &lt;cv&gt;" in html_text and "fold 2" in html_text


def test_aggregate_folds_needs_folds(tmp_path):
    with pytest.raises(DatasetError, match="fold_metrics"):
        aggregate_folds([], tmp_path, title="none")
