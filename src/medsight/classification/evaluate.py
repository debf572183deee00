"""Evaluate class probabilities: metrics with bootstrap CIs, per-case table, plots and report.

``evaluate_predictions`` writes into ``out/``::

    metrics.json        every metric as {"value", "ci_low", "ci_high"} under "metrics", plus flat
                        top-level keys (accuracy, auc, sensitivity, specificity, f1, precision, npv,
                        balanced_accuracy, pr_auc, threshold, n, ece), the confusion matrix,
                        calibration bins, label names, split and how the threshold was chosen;
                        ece_uncalibrated and temperature (temperature scaling), under "calibration"
                        the bins and ``temperature_choice`` (whether a temperature was fitted and
                        kept, and why), ``selective`` (accuracy against coverage when keeping the
                        most certain cases)
    per_case.csv        case_id, true_label, predicted_label, prob_<class>..., correct[, entropy]
    roc.png pr.png confusion.png calibration.png [selective.png] [training_curves.png]
    report.html         self-contained, opens offline

``aggregate_folds`` writes ``cv_metrics.json`` and ``cv_report.html`` for k-fold runs (with the folds'
``distance_unit`` when they are segmentations).

Undefined values are ``null`` in the JSON files and NaN in the returned dicts.

Example:
    >>> m = evaluate_predictions(y, probs, label_names=["normal", "pneumonia"], case_ids=ids,
    ...                          threshold=0.42, threshold_note="Youden on validation (n=78)",
    ...                          cfg=EvalConfig(), out=Path("runs/x"), title="x: test", split="test")
    >>> m["auc"], m["metrics"]["auc"]["ci_low"]
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from medsight.atomic_write import atomic_write_text
from medsight.classification.metrics import (
    bootstrap_cis,
    check_inputs,
    classification_metrics,
    confusion,
    expected_calibration_error,
    predict_labels,
    reliability_bins,
)
from medsight.config import EvalConfig
from medsight.errors import DatasetError
from medsight.metric_names import DISTANCE_KEYS, METRIC_KEYS
from medsight.result_files import write_csv_table, write_strict_json

CV_KEYS = (*METRIC_KEYS, "ece", "ece_uncalibrated")
_CALIBRATION_BINS = 15


def evaluate_predictions(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    label_names: list[str],
    case_ids: list[str],
    threshold: float | None,
    threshold_note: str,
    cfg: EvalConfig,
    out: Path,
    title: str,
    split: str,
    history_csv: Path | None = None,
    extra: dict | None = None,
    uncalibrated: np.ndarray | None = None,
    temperature: float | None = None,
    temperature_choice: dict | None = None,
    entropy: np.ndarray | None = None,
    uncertainty: dict | None = None,
) -> dict:
    """Compute every metric with its CI and write metrics.json, per_case.csv, plots and report.html.

    Args:
        y_true: ``(N,)`` class indices.
        probs: ``(N, K)`` class probabilities (binary: K == 2, positive class index 1).
        label_names: one name per class, in column order.
        case_ids: one id per case (a file path or ``file.npz#split/index``).
        threshold: binary operating threshold (None means 0.5); ignored for multi-class.
        threshold_note: how the threshold was chosen, shown in the report.
        cfg: bootstrap resamples and confidence level.
        out: output folder (created).
        title: report title.
        split: which split these cases are (shown and stored).
        history_csv: the trainer's ``metrics.csv`` for the training-curves plot.
        extra: facts for the report's "About this evaluation" table (data, model, provenance).
        uncalibrated: ``(N, K)`` probabilities before temperature scaling (``probs`` are after);
            adds ``ece_uncalibrated`` and a before/after reliability diagram.
        temperature: the temperature that turned ``uncalibrated`` into ``probs`` (stored and shown).
        temperature_choice: :meth:`medsight.classification.calibration.TemperatureChoice.as_dict` of the
            training run: whether a temperature was fitted and kept on the validation split, and why.
        entropy: ``(N,)`` per-case predictive entropy (:mod:`medsight.classification.uncertainty`); adds an
            ``entropy`` column to per_case.csv, ``selective`` to metrics.json and the
            selective-prediction plot.
        uncertainty: how ``entropy`` was made, e.g. ``{"method": "tta", "passes": 4}``.

    Returns:
        The metrics dict written to ``metrics.json`` (NaN where the file has null).

    Raises:
        DatasetError: shapes disagree, or label names / case ids do not match the data.
    """
    y, p = check_inputs(y_true, probs)
    _check_names_and_ids(label_names, case_ids, y, p)
    thr = (0.5 if threshold is None else float(threshold)) if p.shape[1] == 2 else None
    pred = predict_labels(p, thr)
    selective = _selective(y, pred, entropy, uncertainty)
    metrics = {
        "title": title,
        "split": split,
        **_scores(y, p, pred, thr, cfg, label_names, threshold_note, uncalibrated, temperature, temperature_choice),
        "selective": selective,
        "extra": extra or {},
        "notes": [],
    }
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_per_case(out / "per_case.csv", y, p, pred, label_names, case_ids, entropy if selective else None)
    figs = _plots(y, p, metrics, out)
    curves = _training_curves(history_csv, out)
    if isinstance(curves, str):
        metrics["notes"].append(curves)
    elif curves is not None:
        figs.append(curves)
    write_strict_json(out / "metrics.json", metrics)
    from medsight.report.evaluation import render_evaluation

    atomic_write_text(out / "report.html", render_evaluation(metrics, figs))
    return metrics


def _check_names_and_ids(label_names: list[str], case_ids: list[str], y: np.ndarray, p: np.ndarray) -> None:
    """One label name per probability column and one case id per case."""
    if len(label_names) != p.shape[1]:
        raise DatasetError(
            "label_names",
            f"has {len(label_names)} names for {p.shape[1]} probability columns",
            "pass one name per class, in the model's output order",
        )
    if len(case_ids) != len(y):
        raise DatasetError("case_ids", f"has {len(case_ids)} ids for {len(y)} cases", "pass one id per case")


def _scores(
    y: np.ndarray, p: np.ndarray, pred: np.ndarray, thr: float | None, cfg: EvalConfig, label_names: list[str],
    threshold_note: str, uncalibrated: np.ndarray | None, temperature: float | None, temperature_choice: dict | None,
) -> dict:
    """metrics.json's scores: the point metrics, their bootstrap CIs, confusion matrix and calibration."""
    point = classification_metrics(y, p, thr)
    cis = bootstrap_cis(y, p, threshold=thr, n_boot=cfg.bootstrap, ci=cfg.ci)
    bins = reliability_bins(y, p, _CALIBRATION_BINS)
    ece = expected_calibration_error(y, p, _CALIBRATION_BINS)
    before = _uncalibrated(y, p, uncalibrated)
    return {
        **{key: point[key] for key in METRIC_KEYS},
        "threshold": thr,
        "n": len(y),
        "ece": ece,
        "ece_uncalibrated": before["ece"] if before else None,
        "temperature": temperature,
        "threshold_note": threshold_note,
        "label_names": list(label_names),
        "n_per_class": dict(zip(label_names, np.bincount(y, minlength=p.shape[1]).tolist(), strict=True)),
        "metrics": {
            key: {"value": point[key], "ci_low": cis[key][0], "ci_high": cis[key][1]} for key in METRIC_KEYS
        },
        "ci_level": cfg.ci,
        "bootstrap": cfg.bootstrap,
        "confusion": {
            "rows": "true class",
            "columns": "predicted class",
            "matrix": confusion(y, pred, p.shape[1]).tolist(),
        },
        "calibration": {"ece": ece, **bins, "uncalibrated": before, "temperature_choice": temperature_choice},
    }


def aggregate_folds(fold_metrics: list[dict], out: Path, title: str, keys: tuple[str, ...] = CV_KEYS) -> dict:
    """Mean, standard deviation (n - 1) and per-fold values of each headline metric (``keys``: the
    classification metrics unless given, e.g. the segmentation ones).

    Folds where a metric is undefined (NaN/None) are left out of its mean and sd; a metric
    defined in fewer than two folds has sd NaN. Segmentation folds pass on their ``distance_unit``;
    when they measured HD95/ASSD in different units (``mixed``) those two get no mean or sd.
    Writes ``out/cv_metrics.json`` and ``out/cv_report.html``.

    Returns:
        ``{"title", "folds", "n_per_fold", "metrics": {key: {"mean", "sd", "per_fold"}}}`` plus a
        flat ``key: mean`` for each metric.

    Raises:
        DatasetError: an empty fold list.
    """
    from medsight.training.folds import summarise_folds

    summary = summarise_folds(fold_metrics, title, keys, DISTANCE_KEYS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_strict_json(out / "cv_metrics.json", summary)
    from medsight.report.evaluation import render_cv

    atomic_write_text(out / "cv_report.html", render_cv(summary))
    return summary


def _write_per_case(
    path: Path, y: np.ndarray, p: np.ndarray, pred: np.ndarray, names: list[str], case_ids: list[str],
    entropy: np.ndarray | None,
) -> None:
    fields = ["case_id", "true_label", "predicted_label", *(f"prob_{name}" for name in names), "correct"]
    rows = []
    for i, (case, true, guess, row) in enumerate(zip(case_ids, y, pred, p, strict=True)):
        rows.append({"case_id": case, "true_label": names[true], "predicted_label": names[guess],
                     **{f"prob_{name}": f"{v:.6f}" for name, v in zip(names, row, strict=True)},
                     "correct": "true" if true == guess else "false"})
        if entropy is not None:
            rows[-1]["entropy"] = f"{entropy[i]:.6f}"
    write_csv_table(path, rows, fields + (["entropy"] if entropy is not None else []))


def _uncalibrated(y: np.ndarray, p: np.ndarray, uncalibrated: np.ndarray | None) -> dict | None:
    """ECE and reliability bins of the probabilities before temperature scaling (None when not given)."""
    if uncalibrated is None:
        return None
    _, raw = check_inputs(y, uncalibrated)
    if raw.shape != p.shape:
        raise DatasetError("uncalibrated", f"has shape {raw.shape}, probs {p.shape}", "pass both for the same cases")
    return {"ece": expected_calibration_error(y, raw, _CALIBRATION_BINS), **reliability_bins(y, raw, _CALIBRATION_BINS)}


def _selective(y: np.ndarray, pred: np.ndarray, entropy: np.ndarray | None, uncertainty: dict | None) -> dict | None:
    """The selective-prediction curve of the predicted labels ranked by ``entropy`` (None when not given)."""
    from medsight.classification.uncertainty import selective_curve

    if entropy is None:
        return None
    entropy = np.asarray(entropy, dtype=np.float64).ravel()
    if len(entropy) != len(y) or not np.all(np.isfinite(entropy)):
        raise DatasetError("entropy", f"needs {len(y)} finite values, got {len(entropy)}", "pass one entropy per case")
    info = uncertainty or {"method": "given", "passes": None}
    return {**info, **selective_curve(pred == y, entropy), "mean_entropy": float(entropy.mean())}


def _plots(y: np.ndarray, p: np.ndarray, metrics: dict, out: Path) -> list:
    from medsight.report import plots
    from medsight.report.html import Figure

    names = metrics["label_names"]
    sens, spec, prec = (metrics[k] for k in ("sensitivity", "specificity", "precision"))
    binary = len(names) == 2
    positive = f"'{names[1]}'" if binary else "each class"
    roc_point, pr_point = ((1 - spec, sens), (sens, prec)) if binary else (None, None)
    figs = [
        Figure(
            plots.roc_figure(y, p, names, out / "roc.png", operating_point=roc_point),
            "ROC curve",
            f"Each point is one threshold: how many {positive} cases are caught (up) against how many "
            "others are falsely flagged (right). Closer to the top-left corner is better; the dot is the "
            "threshold used for the table.",
        ),
        Figure(
            plots.pr_figure(y, p, names, out / "pr.png", operating_point=pr_point),
            "Precision-recall curve",
            f"Of the cases flagged as {positive}, the fraction that truly are (up), against the fraction of "
            f"{positive} cases caught (right). The dashed line is what guessing achieves.",
        ),
        Figure(
            plots.confusion_figure(np.asarray(metrics["confusion"]["matrix"]), names, out / "confusion.png"),
            "Confusion matrix",
            "Rows are the true class, columns the model's call; the diagonal is correct. Each cell shows "
            "the count and the percentage of its true class.",
        ),
        Figure(
            plots.reliability_figure(metrics["calibration"], metrics["ece"], out / "calibration.png",
                                     before=metrics["calibration"]["uncalibrated"]),
            "Reliability diagram" + (" before and after temperature scaling" if metrics["ece_uncalibrated"]
                                     is not None else ""),
            "Bars on the diagonal mean a predicted 70% comes true 70% of the time. "
            + (
                f"Bars below the line: the model over-estimates the chance of {positive}; above: it "
                "under-estimates it. "
                if binary
                else "Bars below the line: the model is over-confident; above: under-confident. "
            )
            + "The grey histogram shows how many cases fall in each bin.",
        ),
    ]
    if metrics["selective"] is not None:
        figs.append(Figure(
            plots.selective_figure(metrics["selective"], out / "selective.png"),
            "Selective prediction",
            "Accuracy when the model answers only for the cases it is most certain about (lowest predictive "
            "entropy, right to left) and refers the rest to a reader. A curve rising to the left means its "
            "uncertainty is useful: the cases it is sure about are the ones it gets right.",
        ))
    return figs


def _training_curves(history_csv: Path | None, out: Path):
    """The training-curves Figure, None when no history was given, or a note saying why it is missing."""
    from medsight.report import plots
    from medsight.report.html import Figure

    if history_csv is None:
        return None
    history_csv = Path(history_csv)
    if not history_csv.is_file():
        return f"No training curves: the training history {history_csv} was not found."
    png = plots.training_curves_figure(history_csv, out / "training_curves.png")
    if png is None:
        return f"No training curves: {history_csv} has no rows or no 'epoch' column."
    return Figure(
        png,
        "Training curves",
        "Loss (left) should fall; a validation loss that rises while training loss falls "
        "means over-fitting. Validation metrics per epoch are on the right.",
    )


def _as_float(value: object) -> float:
    return math.nan if value is None else float(value)
