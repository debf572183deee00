"""Classification metrics, operating thresholds, bootstrap confidence intervals and calibration.

Pure NumPy (plus scikit-learn's ROC curve for threshold selection), no torch.

Conventions:

* ``probs`` is ``(N, K)`` class probabilities, ``K >= 2``. Binary is ``K == 2`` and the
  positive class is index 1; a case is predicted positive when ``probs[:, 1] >= threshold``.
  Multi-class predictions are the argmax.
* Multi-class sensitivity, specificity, precision, NPV and F1 are macro averages of the
  one-vs-rest values over the classes where each is defined; ``balanced_accuracy`` is the
  mean recall over classes (for binary this is ``(sensitivity + specificity) / 2``).
* ``auc`` is the ROC-AUC (macro one-vs-rest for multi-class) and ``pr_auc`` the average
  precision (macro for multi-class); both need every class present in ``y_true``.
* An undefined value (one class only, no predicted positives) is NaN, never an exception.

Every metric is computed from per-case weights (all ones for the point estimate, the
number of times a case was drawn for a bootstrap resample), so the point estimate and the
bootstrap share one implementation and the bootstrap is vectorised over resamples.

Example:
    >>> y = np.array([0, 0, 1, 1])
    >>> p1 = np.array([0.1, 0.6, 0.4, 0.9])
    >>> m = classification_metrics(y, np.stack([1 - p1, p1], axis=1))
    >>> m["auc"], m["sensitivity"], m["specificity"]
    (0.75, 0.5, 0.5)
"""

from __future__ import annotations

import warnings

import numpy as np

from medsight.errors import ConfigError, DatasetError
from medsight.metric_names import METRIC_KEYS

THRESHOLD_METHODS = ("youden", "sensitivity", "fixed")
_CHUNK_CELLS = 2_000_000  # resamples x cases handled at once by the bootstrap


def classification_metrics(
    y_true: np.ndarray, probs: np.ndarray, threshold: float | None = None
) -> dict[str, float]:
    """Headline metrics of class probabilities against true labels.

    Args:
        y_true: ``(N,)`` integer labels in ``[0, K)``.
        probs: ``(N, K)`` class probabilities.
        threshold: binary operating point on ``probs[:, 1]`` (default 0.5); ignored for
            multi-class, which predicts the argmax.

    Returns:
        ``accuracy, balanced_accuracy, sensitivity, specificity, precision, npv, f1, auc,
        pr_auc`` and ``n``; binary adds ``threshold``. Undefined values are NaN.

    Raises:
        DatasetError: mismatched shapes or labels outside ``[0, K)``.
    """
    y, p = check_inputs(y_true, probs)
    thr = _binary_threshold(p, threshold)
    values = _weighted_metrics(np.ones((1, len(y))), y, p, predict_labels(p, thr))
    out = {key: float(values[key][0]) for key in METRIC_KEYS}
    out["n"] = len(y)
    if thr is not None:
        out["threshold"] = float(thr)
    return out


def predict_labels(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Predicted class per case: ``probs[:, 1] >= threshold`` for binary (default 0.5), else argmax."""
    probs = np.asarray(probs, dtype=np.float64)
    thr = _binary_threshold(probs, threshold)
    if thr is None:
        return probs.argmax(axis=1)
    return (probs[:, 1] >= thr).astype(np.int64)


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    """``(k, k)`` counts; rows are the true class, columns the predicted class.

    Example:
        >>> confusion(np.array([0, 1, 1]), np.array([0, 0, 1]), 2).tolist()
        [[1, 0], [1, 1]]
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise DatasetError(
            "y_pred", f"has {y_pred.size} entries, y_true has {y_true.size}", "pass one prediction per case"
        )
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            raise DatasetError(name, f"has labels outside 0..{k - 1}", f"pass class indices below k={k}")
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def choose_threshold(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    method: str = "youden",
    target_sensitivity: float = 0.9,
    fixed: float = 0.5,
) -> float:
    """The binary operating threshold on ``probs[:, 1]``, chosen on VALIDATION data.

    Methods:
        ``youden``: the score that maximises Youden's J = TPR - FPR on the ROC curve
        (the highest such score when several tie). ``sensitivity``: the highest score at
        which sensitivity reaches ``target_sensitivity``. ``fixed``: ``fixed``.

    Raises:
        ConfigError: an unknown method, or a multi-class ``probs``.
        DatasetError: ``youden``/``sensitivity`` on labels with a single class.

    Example:
        >>> y = np.array([0, 0, 1, 1]); p1 = np.array([0.2, 0.4, 0.35, 0.8])
        >>> choose_threshold(y, np.stack([1 - p1, p1], 1))
        0.8
    """
    if method not in THRESHOLD_METHODS:
        raise ConfigError(
            f"eval.threshold={method}", "unknown method", f"use one of {', '.join(THRESHOLD_METHODS)}"
        )
    y, p = check_inputs(y_true, probs)
    if p.shape[1] != 2:
        raise ConfigError(
            f"eval.threshold={method}",
            f"a threshold needs binary probabilities, these have {p.shape[1]} classes",
            "multi-class predictions use the argmax; do not choose a threshold",
        )
    if method == "fixed":
        return float(fixed)
    if len(np.unique(y)) < 2:
        raise DatasetError(
            "validation labels",
            f"only class {int(y[0])} is present, so no threshold can be chosen by '{method}'",
            "use a larger or stratified validation split, or eval.threshold: fixed",
        )
    from sklearn.metrics import roc_curve

    fpr, tpr, thr = roc_curve(y, p[:, 1], drop_intermediate=False)
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]  # drop sklearn's "predict nothing" point at +inf
    if method == "youden":
        return float(thr[int(np.argmax(tpr - fpr))])
    return float(thr[int(np.argmax(tpr >= target_sensitivity))])


def bootstrap_cis(
    y_true: np.ndarray,
    probs: np.ndarray,
    *,
    threshold: float | None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals over cases for every metric in ``METRIC_KEYS``.

    The threshold is held fixed (it was chosen on validation data). Resamples in which a
    metric is undefined (for AUC and PR-AUC: a class missing from the resample) are skipped
    for that metric; a metric with no defined resample gets ``(nan, nan)``.

    Example:
        >>> cis = bootstrap_cis(y, probs, threshold=0.5, n_boot=200)
        >>> low, high = cis["auc"]
    """
    y, p = check_inputs(y_true, probs)
    if not 0 < ci < 1:
        raise ConfigError(f"eval.ci={ci}", "the confidence level must lie between 0 and 1", "use e.g. 0.95")
    if n_boot < 1:
        return {key: (float("nan"), float("nan")) for key in METRIC_KEYS}
    n = len(y)
    pred = predict_labels(p, _binary_threshold(p, threshold))
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_CELLS // n)
    parts: dict[str, list[np.ndarray]] = {key: [] for key in METRIC_KEYS}
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        draws = rng.integers(0, n, size=(b, n))
        weights = np.bincount((draws + n * np.arange(b)[:, None]).ravel(), minlength=b * n).reshape(b, n)
        for key, vals in _weighted_metrics(weights.astype(np.float64), y, p, pred).items():
            parts[key].append(vals)
    tail = (1 - ci) / 2 * 100
    out: dict[str, tuple[float, float]] = {}
    for key in METRIC_KEYS:
        vals = np.concatenate(parts[key])
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            out[key] = (float("nan"), float("nan"))
        else:
            low, high = np.percentile(vals, [tail, 100 - tail])
            out[key] = (float(low), float(high))
    return out


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict:
    """Per-bin confidence, accuracy and count for a reliability diagram.

    Binary: positive-class calibration -- the confidence is ``probs[:, 1]`` and the
    "accuracy" is the observed fraction of positives in the bin. Multi-class: top-label
    calibration -- the confidence is the highest probability and the accuracy is the
    fraction of cases whose argmax is right. Bins split ``[0, 1]`` into ``n_bins`` equal
    widths; empty bins have NaN confidence and accuracy.

    Returns:
        ``{"mode", "edges", "confidence", "accuracy", "count"}`` (lists, JSON-able).
    """
    y, p = check_inputs(y_true, probs)
    if n_bins < 1:
        raise ConfigError(f"n_bins={n_bins}", "needs at least one bin", "use e.g. 15")
    if p.shape[1] == 2:
        mode, conf, hit = "positive-class", p[:, 1], (y == 1).astype(np.float64)
    else:
        mode, conf, hit = "top-label", p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        mean_hit = np.bincount(idx, weights=hit, minlength=n_bins) / count
    return {
        "mode": mode,
        "edges": edges.tolist(),
        "confidence": mean_conf.tolist(),
        "accuracy": mean_hit.tolist(),
        "count": count.astype(int).tolist(),
    }


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over bins.

    Positive-class ECE for binary, top-label ECE for multi-class (see :func:`reliability_bins`).
    0 is perfectly calibrated; a model that says 0.99 and is right half the time scores ~0.49.
    """
    bins = reliability_bins(y_true, probs, n_bins)
    count = np.asarray(bins["count"], dtype=np.float64)
    used = count > 0
    gap = np.abs(np.asarray(bins["accuracy"])[used] - np.asarray(bins["confidence"])[used])
    return float(np.sum(count[used] * gap) / count.sum())


def check_inputs(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(labels as int64 (N,), probabilities as float64 (N, K))``.

    Raises:
        DatasetError: the shapes disagree, there are no cases, fewer than two columns,
            non-finite probabilities, or labels that are not integers in ``[0, K)``.
    """
    p = np.asarray(probs, dtype=np.float64)
    y_raw = np.asarray(y_true).ravel()
    if p.ndim != 2 or p.shape[1] < 2:
        raise DatasetError(
            "probs",
            f"has shape {p.shape}, expected (cases, classes) with at least 2 classes",
            "for a single positive-class score s pass np.stack([1 - s, s], axis=1)",
        )
    if len(y_raw) != len(p) or len(p) == 0:
        raise DatasetError(
            "y_true", f"has {len(y_raw)} labels for {len(p)} rows of probabilities", "pass one label per case"
        )
    if not np.all(np.isfinite(p)):
        raise DatasetError(
            "probs", "contains NaN or infinite values", "check the model output; training may have diverged"
        )
    try:
        y = y_raw.astype(np.int64)
    except (TypeError, ValueError):
        y = np.full(len(y_raw), -1, dtype=np.int64)  # text labels: reported below
    if not np.array_equal(y, y_raw) or y.min() < 0 or y.max() >= p.shape[1]:
        raise DatasetError(
            "y_true",
            f"has labels outside the class indices 0..{p.shape[1] - 1}",
            "pass integer class indices matching the columns of probs",
        )
    return y, p


def _binary_threshold(probs: np.ndarray, threshold: float | None) -> float | None:
    if probs.shape[1] != 2:
        return None
    return 0.5 if threshold is None else float(threshold)


def _weighted_metrics(w: np.ndarray, y: np.ndarray, p: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric for each row of case weights ``w`` (resamples x cases)."""
    k = p.shape[1]
    onehot = np.zeros((len(y), k * k))
    onehot[np.arange(len(y)), y * k + pred] = 1.0
    counts = (w @ onehot).reshape(-1, k, k)
    out = _count_metrics(counts)
    if k == 2:
        auc, ap = _rank_metrics(w, p[:, 1], y == 1)
    else:
        pairs = [_rank_metrics(w, p[:, c], y == c) for c in range(k)]
        auc = np.mean([a for a, _ in pairs], axis=0)  # NaN when any class is missing
        ap = np.mean([a for _, a in pairs], axis=0)
    out["auc"], out["pr_auc"] = auc, ap
    return out


def _count_metrics(counts: np.ndarray) -> dict[str, np.ndarray]:
    """Count-based metrics from confusion matrices ``(B, K, K)``."""
    k = counts.shape[1]
    total = counts.sum(axis=(1, 2))
    tp = np.diagonal(counts, axis1=1, axis2=2)
    fn = counts.sum(axis=2) - tp
    fp = counts.sum(axis=1) - tp
    tn = total[:, None] - tp - fn - fp
    recall = _ratio(tp, tp + fn)
    per_class = {
        "sensitivity": recall,
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
    }
    if k == 2:
        out = {key: vals[:, 1] for key, vals in per_class.items()}
    else:
        out = {key: _nanmean(vals) for key, vals in per_class.items()}
    out["accuracy"] = _ratio(tp.sum(axis=1), total)
    out["balanced_accuracy"] = _nanmean(recall)
    return out


def _rank_metrics(w: np.ndarray, score: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ROC-AUC (Mann-Whitney, ties count half) and average precision, per row of ``w``.

    Cases are grouped by distinct score, so ties are handled exactly as scikit-learn does.
    """
    order = np.argsort(score, kind="mergesort")
    sorted_score = score[order]
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    ws = w[:, order]
    pos_sorted = positive[order]
    pos_w = np.add.reduceat(ws * pos_sorted, starts, axis=1)  # (B, groups), ascending score
    neg_w = np.add.reduceat(ws * ~pos_sorted, starts, axis=1)
    n_pos, n_neg = pos_w.sum(axis=1), neg_w.sum(axis=1)
    below = np.cumsum(neg_w, axis=1) - neg_w
    auc = _ratio(np.sum(pos_w * (below + 0.5 * neg_w), axis=1), n_pos * n_neg)
    tp = np.cumsum(pos_w[:, ::-1], axis=1)  # thresholds from the highest score down
    fp = np.cumsum(neg_w[:, ::-1], axis=1)
    precision = np.nan_to_num(_ratio(tp, tp + fp))
    ap = _ratio(np.sum(pos_w[:, ::-1] * precision, axis=1), n_pos)
    auc[(n_pos == 0) | (n_neg == 0)] = np.nan
    ap[n_pos == 0] = np.nan
    return auc, ap


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with NaN where ``den`` is 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _nanmean(values: np.ndarray) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (without a warning) when all are NaN."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=-1)
