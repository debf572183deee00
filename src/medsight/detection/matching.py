"""Which predicted boxes found which true boxes: IoU in 2D and 3D and the greedy matching by score.

The matching is COCO's: within one image and one class, predictions are taken in descending score order
(a stable sort, so tied scores keep the predictions' order); each takes the unmatched true box of the same
class with the highest IoU, if that IoU is at least the threshold (ties between true boxes: the first
one); a prediction that takes none is a false positive, a true box that nobody takes is missed. A second
prediction on a box already found is therefore a false positive (a duplicate).

Example:
    >>> m = match_boxes(truth, predicted, iou=0.5, score_threshold=0.3)
    >>> predicted.select(m.tp).corners, predicted.select(m.fp).scores, truth.select(m.missed).corners
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsight.boxes import Boxes
from medsight.errors import DatasetError


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(N, M)`` intersection over union of boxes ``a`` ``(N, 2D)`` and ``b`` ``(M, 2D)`` (corners, D = 2 or 3).

    Continuous edges, float64 (MONAI's ``box_iou`` computes in float32, whose rounding can move an IoU
    across a threshold): the intersection is the product of the overlaps along each axis, the union
    ``area_a + area_b - intersection``, as pycocotools computes it.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = a.shape[1] // 2
    overlap = np.minimum(a[:, None, d:], b[None, :, d:]) - np.maximum(a[:, None, :d], b[None, :, :d])
    inter = np.prod(np.clip(overlap, 0.0, None), axis=2)
    area_a = np.prod(a[:, d:] - a[:, :d], axis=1)
    area_b = np.prod(b[:, d:] - b[:, :d], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(inter > 0, inter / union, 0.0)


def greedy_match(ious: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """``(len(thresholds), P)``: the true box each prediction takes at each IoU threshold, -1 for none.

    ``ious`` is ``(P, T)`` for one image and one class, its rows in descending score order.
    """
    out = np.full((len(thresholds), ious.shape[0]), -1, dtype=np.int64)
    if ious.size == 0:
        return out
    for k, threshold in enumerate(thresholds):
        free = np.ones(ious.shape[1], dtype=bool)
        for p, row in enumerate(ious):
            candidates = np.where(free, row, -1.0)
            best = int(np.argmax(candidates))
            if candidates[best] >= threshold:
                out[k, p] = best
                free[best] = False
                if not free.any():
                    break
    return out


def match_image(truth: Boxes, predicted: Boxes, thresholds: Sequence[float]) -> np.ndarray:
    """``(len(thresholds), P)``: the index into ``truth`` that each prediction takes, -1 for a false positive,
    with every class matched on its own (predictions in their given order; scores rank them)."""
    out = np.full((len(thresholds), len(predicted)), -1, dtype=np.int64)
    order = np.argsort(-predicted.scores, kind="stable")
    for label in np.unique(predicted.labels):
        mine = order[predicted.labels[order] == label]
        targets = np.flatnonzero(truth.labels == label)
        if targets.size == 0:
            continue
        taken = greedy_match(box_iou(predicted.corners[mine], truth.corners[targets]), thresholds)
        out[:, mine] = np.where(taken >= 0, targets[np.maximum(taken, 0)], -1)
    return out


@dataclass
class BoxMatch:
    """One image's predictions against its true boxes at one IoU threshold and one score threshold.

    ``kept``, ``tp``, ``fp`` and ``truth_index`` have one entry per prediction (a prediction below the score
    threshold is neither a true nor a false positive and has ``truth_index`` -1); ``missed`` one per true box.
    """

    kept: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    truth_index: np.ndarray
    missed: np.ndarray

    @property
    def f1(self) -> float:
        """``2 TP / (2 TP + FP + missed)``; NaN for an image with no true box and no kept prediction."""
        tp, fp, fn = int(self.tp.sum()), int(self.fp.sum()), int(self.missed.sum())
        return float("nan") if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def match_boxes(truth: Boxes, predicted: Boxes, iou: float, score_threshold: float) -> BoxMatch:
    """Match one image's predictions with a score of at least ``score_threshold`` to its true boxes.

    Args:
        truth: The image's true boxes (scores are ignored).
        predicted: The image's predicted boxes, with scores, in the same index space.
        iou: A prediction finds a true box of its class when their IoU is at least this.
        score_threshold: Predictions scoring below it are left out (``kept`` False).

    Raises:
        DatasetError: the predictions have no scores, or the two sets have different dimensions.
    """
    check_pair(truth, predicted, "image")
    kept = predicted.scores >= score_threshold
    index = np.full(len(predicted), -1, dtype=np.int64)
    index[kept] = match_image(truth, predicted.select(kept), [iou])[0]
    tp = index >= 0
    missed = np.ones(len(truth), dtype=bool)
    missed[index[tp]] = False
    return BoxMatch(kept=kept, tp=tp, fp=kept & ~tp, truth_index=index, missed=missed)


def check_pair(truth: Boxes, predicted: Boxes, where: str) -> None:
    """Raise a :class:`DatasetError` naming ``where`` if ``predicted`` has no scores or other dimensions."""
    if predicted.scores is None:
        raise DatasetError(where, "the predicted boxes have no scores",
                           "pass the detector's output (Boxes with scores), not ground truth")
    if len(truth) and len(predicted) and truth.spatial_dims != predicted.spatial_dims:
        raise DatasetError(where, f"{truth.spatial_dims}D true boxes but {predicted.spatial_dims}D predicted "
                           "boxes", "predict on the same images the truth describes")


__all__ = ["BoxMatch", "box_iou", "check_pair", "greedy_match", "match_boxes", "match_image"]
