"""The evaluation plots, each written as a PNG: ROC, precision-recall, confusion matrix,
reliability diagram (before/after calibration), selective prediction and training curves.

Matplotlib runs with the Agg backend, so no display is needed. Every function takes the
numbers to draw and a path, writes the PNG and returns the path.

Example:
    >>> roc_figure(y, probs, ["normal", "pneumonia"], Path("roc.png"), operating_point=(0.1, 0.9))
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from medsight.atomic_write import replacing  # noqa: E402
from medsight.metric_names import METRIC_KEYS  # noqa: E402

_DPI = 110


def roc_figure(
    y_true: np.ndarray,
    probs: np.ndarray,
    label_names: list[str],
    path: Path,
    *,
    operating_point: tuple[float, float] | None = None,
) -> Path:
    """ROC curve(s) with AUC: the positive class for binary, one-vs-rest per class otherwise.

    Args:
        operating_point: ``(1 - specificity, sensitivity)`` at the chosen threshold, marked on
            the binary curve.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance (AUC 0.5)")
    for cls, name, positive in _one_vs_rest(y_true, label_names):
        if positive.all() or not positive.any():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, cls])
        ax.plot(fpr, tpr, lw=2, label=f"{name}: AUC {roc_auc_score(positive, probs[:, cls]):.3f}")
    if operating_point is not None and all(math.isfinite(v) for v in operating_point):
        ax.plot(*operating_point, "o", color="black", ms=8, label="operating point")
    _finish(ax, "1 - specificity (false positive rate)", "sensitivity (true positive rate)", "ROC curve")
    return save_figure(fig, path)


def pr_figure(
    y_true: np.ndarray,
    probs: np.ndarray,
    label_names: list[str],
    path: Path,
    *,
    operating_point: tuple[float, float] | None = None,
) -> Path:
    """Precision-recall curve(s) with average precision and the prevalence baseline.

    Args:
        operating_point: ``(sensitivity, precision)`` at the chosen threshold (binary).
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    fig, ax = plt.subplots(figsize=(5, 5))
    for cls, name, positive in _one_vs_rest(y_true, label_names):
        if not positive.any():
            continue
        precision, recall, _ = precision_recall_curve(positive, probs[:, cls])
        ap = average_precision_score(positive, probs[:, cls])
        (line,) = ax.step(recall, precision, where="post", lw=2, label=f"{name}: AP {ap:.3f}")
        ax.axhline(positive.mean(), ls="--", lw=1, color=line.get_color(), alpha=0.6)
    if operating_point is not None and all(math.isfinite(v) for v in operating_point):
        ax.plot(*operating_point, "o", color="black", ms=8, label="operating point")
    _finish(ax, "recall (sensitivity)", "precision (PPV)", "Precision-recall curve (dashed: prevalence)")
    return save_figure(fig, path)


def confusion_figure(matrix: np.ndarray, label_names: list[str], path: Path) -> Path:
    """Confusion matrix: counts and the percentage of each true class (row)."""
    matrix = np.asarray(matrix)
    k = len(label_names)
    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = 3.2 + 0.9 * k
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, f"{matrix[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", color=colour)
    ax.set_xticks(range(k), label_names, rotation=30, ha="right")
    ax.set_yticks(range(k), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix\ncount and % of the true class", fontsize=10)
    return save_figure(fig, path)


def reliability_figure(bins: dict, ece: float, path: Path, *, before: dict | None = None) -> Path:
    """Reliability diagram from :func:`medsight.classification.metrics.reliability_bins`, with the ECE.

    Args:
        before: the bins (with their ``ece``) of the probabilities before temperature scaling;
            when given, they are drawn on the left and ``bins`` on the right.
    """
    panels = [("after temperature scaling", bins, ece)] if before is not None else [("", bins, ece)]
    if before is not None:
        panels.insert(0, ("before temperature scaling", before, before["ece"]))
    positive = bins["mode"] == "positive-class"
    fig, axes = plt.subplots(2, len(panels), figsize=(5 * len(panels), 6), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]})
    for column, (label, panel, panel_ece) in enumerate(panels):
        _reliability_panel(axes[0, column], axes[1, column], panel, panel_ece, label, positive)
    return save_figure(fig, path)


def _reliability_panel(ax, hist, bins: dict, ece: float, label: str, positive: bool) -> None:
    edges = np.asarray(bins["edges"])
    accuracy = np.asarray(bins["accuracy"], dtype=np.float64)
    confidence = np.asarray(bins["confidence"], dtype=np.float64)
    count = np.asarray(bins["count"])
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    used = count > 0
    widths = np.diff(edges)
    ax.bar(edges[:-1][used], accuracy[used], width=widths[used], align="edge", alpha=0.7, edgecolor="black",
           label="observed")
    ax.plot(confidence[used], accuracy[used], "o", color="black", ms=4, label="mean predicted")
    ax.set_ylabel("observed fraction positive" if positive else "fraction correct")
    title = f"Reliability diagram ({bins['mode']}), ECE {ece:.3f}"
    ax.set_title(f"{title}\n{label}" if label else title, fontsize=10 if label else None)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=8)
    hist.bar(edges[:-1], count, width=widths, align="edge", color="grey", edgecolor="black")
    hist.set_xlabel("predicted probability of the positive class" if positive else "top-class probability")
    hist.set_ylabel("cases")
    hist.set_xlim(0, 1)


def selective_figure(curve: dict, path: Path) -> Path:
    """Accuracy against coverage from :func:`medsight.classification.uncertainty.selective_curve`."""
    coverage = np.asarray(curve["coverage"], dtype=np.float64)
    accuracy = np.asarray(curve["accuracy"], dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot(coverage, accuracy, lw=2, marker="o" if len(coverage) <= 30 else None, ms=3,
            label=f"kept by lowest entropy: area {curve['area']:.3f}")
    ax.axhline(curve["accuracy_at_full"], ls="--", color="grey", lw=1,
               label=f"all cases: accuracy {curve['accuracy_at_full']:.3f}")
    method = curve.get("method")
    how = {"tta": "flip TTA", "mc_dropout": "MC dropout", "none": "single prediction"}.get(method, method)
    passes = f", {curve['passes']} passes" if curve.get("passes") else ""
    _finish(ax, "coverage (fraction of cases the model answers)", "accuracy on the answered cases",
            f"Selective prediction (entropy from {how}{passes})")
    ax.set_ylim(max(0.0, float(np.nanmin(accuracy)) - 0.05), 1.02)
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def training_curves_figure(history_csv: Path, path: Path) -> Path | None:
    """Loss and validation metrics per epoch from the trainer's ``metrics.csv``.

    Loss columns (names containing ``loss``) go on the left; metric columns (a name in
    ``METRIC_KEYS``, optionally prefixed ``val_`` or ``train_``) on the right.

    Returns:
        The PNG path, or None when the CSV has no ``epoch`` column or no rows.
    """
    with open(history_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "epoch" not in rows[0]:
        return None
    epochs = [_number(row["epoch"]) for row in rows]
    columns = [c for c in rows[0] if c != "epoch"]
    losses = [c for c in columns if "loss" in c]
    metrics = [c for c in columns if c.removeprefix("val_").removeprefix("train_") in METRIC_KEYS]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, names, title in ((left, losses, "Loss"), (right, metrics, "Metrics")):
        for name in names:
            ax.plot(epochs, [_number(row.get(name)) for row in rows], marker="o", ms=3, label=name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish(ax, "epoch", title.lower(), title, square=False)
    return save_figure(fig, path)


def _one_vs_rest(y_true: np.ndarray, label_names: list[str]):
    """``(class index, name, is-positive mask)``: only the positive class when binary."""
    y_true = np.asarray(y_true)
    classes = [1] if len(label_names) == 2 else range(len(label_names))
    for cls in classes:
        yield cls, label_names[cls], y_true == cls


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _finish(ax, xlabel: str, ylabel: str, title: str, *, square: bool = True) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if square:
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right" if square else "best", fontsize=8)


def save_figure(fig, path: str | Path, *, dpi: int = _DPI, **options) -> Path:
    """Lay out ``fig``, write it to ``path`` as PNG whole or not at all, and close it.

    ``options`` go to ``savefig`` (e.g. ``bbox_inches="tight"``).

    Raises:
        OutputWriteError: the disk is full, or the folder is not writable; an older image stays as it was.
    """
    path = Path(path)
    try:
        fig.tight_layout()
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png", **options)
    finally:
        plt.close(fig)
    return path
