"""The curves every detection metric reads, computed for many bootstrap resamples at once.

A resample is a row of ``weights``: how many times each image was drawn (all ones for the plain estimate).
Predictions are pooled over images in descending score order (a stable sort over the images in their
order, as pycocotools sorts them); a prediction counts ``weights[its image]`` times. Counting a drawn-twice
image's prediction twice at once gives the same interpolated precision and the same FROC as listing the
image twice, so no resample is ever expanded.
"""

from __future__ import annotations

import numpy as np

#: COCO's IoU thresholds .50:.05:.95 and 101 recall points, built as pycocotools builds them (the same floats).
COCO_IOUS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: The LUNA16 FROC protocol's false positives per image.
FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

_CELLS = 2_000_000  # resample rows x predictions held in memory at a time


def average_precision(hit: np.ndarray, image: np.ndarray, weights: np.ndarray, n_truth: np.ndarray) -> np.ndarray:
    """``(B,)``: COCO's 101-point interpolated average precision of each resample; NaN without true boxes.

    The precision at each recall point r is the highest precision at any recall >= r (0 where the
    recall never reaches r); the AP is their mean.

    Args:
        hit: ``(P,)`` whether each prediction (in pooled score order) is a true positive.
        image: ``(P,)`` the image index of each prediction.
        weights: ``(B, n_images)`` draws of each image per resample.
        n_truth: ``(B,)`` true boxes in each resample.
    """
    out = np.full(len(weights), np.nan)
    defined = n_truth > 0
    if hit.size == 0:
        out[defined] = 0.0
        return out
    for rows in _chunks(len(weights), hit.size):
        recall, envelope = _precision_envelope(hit, weights[rows][:, image], n_truth[rows])
        for row, b in enumerate(range(rows.start, rows.stop)):
            if defined[b]:
                out[b] = _interpolated(recall[row], envelope[row]).mean()
    return out


def precision_at_recall_points(hit: np.ndarray, n_truth: int) -> np.ndarray:
    """``(101,)``: the interpolated precision at each of :data:`RECALL_POINTS` (the PR curve COCO averages)."""
    if hit.size == 0 or n_truth == 0:
        return np.zeros(len(RECALL_POINTS))
    recall, envelope = _precision_envelope(hit, np.ones((1, hit.size)), np.array([n_truth]))
    return _interpolated(recall[0], envelope[0])


def froc_sensitivity(hit: np.ndarray, image: np.ndarray, scores: np.ndarray, weights: np.ndarray,
                     n_truth: np.ndarray, rates=FROC_RATES) -> np.ndarray:
    """``(B, len(rates))``: the highest sensitivity reached with at most ``rate`` false positives per image.

    Cuts fall between distinct scores only (a score threshold cannot split tied predictions); the cut
    that keeps nothing has sensitivity 0. Where the predictions run out before ``rate``, the sensitivity
    with every prediction kept. NaN for a resample without true boxes.
    """
    n_images = weights.sum(axis=1)
    out = np.full((len(weights), len(rates)), np.nan)
    ends = group_ends(scores)
    for rows in _chunks(len(weights), hit.size + 1):
        ctp, cfp = _cumulative(hit, weights[rows][:, image])
        ctp = np.concatenate([np.zeros((len(ctp), 1)), ctp[:, ends]], axis=1)
        cfp = np.concatenate([np.zeros((len(cfp), 1)), cfp[:, ends]], axis=1)
        for j, rate in enumerate(rates):
            cut = (cfp <= rate * n_images[rows, None]).sum(axis=1) - 1
            with np.errstate(invalid="ignore", divide="ignore"):
                out[rows, j] = np.where(n_truth[rows] > 0, ctp[np.arange(len(ctp)), cut] / n_truth[rows], np.nan)
    return out


def froc_curve(hit: np.ndarray, scores: np.ndarray, n_images: int, n_truth: int) -> dict:
    """The FROC curve's corners: for each number of false positives, the lowest score threshold that makes
    no more, its false positives per image and its sensitivity (lists, JSON-able; the first point keeps
    nothing)."""
    ends = group_ends(scores)
    ctp = np.concatenate([[0.0], np.cumsum(hit)[ends]])
    cfp = np.concatenate([[0.0], np.cumsum(~hit)[ends]])
    threshold = np.concatenate([[np.inf], scores[ends]])
    corner = np.append(cfp[1:] != cfp[:-1], True)  # the last cut before each new false positive
    sensitivity = ctp[corner] / n_truth if n_truth else np.full(int(corner.sum()), np.nan)
    return {"fp_per_image": (cfp[corner] / max(n_images, 1)).tolist(), "sensitivity": sensitivity.tolist(),
            "score": [float(s) if np.isfinite(s) else None for s in threshold[corner]]}


def image_auc(scores: np.ndarray, positive: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``(B,)``: the ROC AUC of image scores, resample by resample (the Mann-Whitney statistic, ties 1/2:
    what ``sklearn.metrics.roc_auc_score`` gives on the drawn images); NaN when a resample has one class."""
    above = scores[positive][:, None] > scores[~positive][None, :]
    tied = scores[positive][:, None] == scores[~positive][None, :]
    wins = above + 0.5 * tied
    w_pos, w_neg = weights[:, positive], weights[:, ~positive]
    pairs = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, np.einsum("bi,ij,bj->b", w_pos, wins, w_neg) / pairs, np.nan)


def group_ends(scores: np.ndarray) -> np.ndarray:
    """Indices of the last prediction of each run of equal scores (``scores`` sorted descending)."""
    return np.flatnonzero(np.append(scores[1:] != scores[:-1], True)) if scores.size else np.zeros(0, np.int64)


def _precision_envelope(hit: np.ndarray, drawn: np.ndarray, n_truth: np.ndarray):
    """Recall and the precision envelope (the highest precision from each point on) along the pooled order."""
    ctp, cfp = _cumulative(hit, drawn)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = ctp / n_truth[:, None]
        precision = np.nan_to_num(ctp / (ctp + cfp), nan=0.0)  # 0/0: before the first drawn prediction
    return recall, np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]


def _interpolated(recall: np.ndarray, envelope: np.ndarray) -> np.ndarray:
    """The envelope at the first point whose recall reaches each recall point; 0 where none does."""
    at = np.searchsorted(recall, RECALL_POINTS, side="left")
    last = recall.size - 1
    return np.where(at <= last, envelope[np.minimum(at, last)], 0.0)


def _cumulative(hit: np.ndarray, drawn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.cumsum(drawn * hit, axis=1), np.cumsum(drawn * ~hit, axis=1)


def _chunks(n_rows: int, width: int):
    step = max(1, _CELLS // max(width, 1))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


__all__ = ["COCO_IOUS", "FROC_RATES", "RECALL_POINTS", "average_precision", "froc_curve", "froc_sensitivity",
           "group_ends", "image_auc", "precision_at_recall_points"]
