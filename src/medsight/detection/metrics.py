"""Detection metrics over a set of images: COCO mAP, AP50, AP at IoU 0.1, FROC, image AUC, bootstrap CIs.

Every prediction is matched once per IoU threshold (:mod:`medsight.detection.matching`, COCO's greedy
matching); the bootstrap then only re-weights images (:mod:`medsight.detection.curves`), so 1,000
resamples of 100 images take seconds. The same resamples serve every metric.

Example:
    >>> m = detection_metrics(truth, predicted, ["fracture"], bootstrap=1000)
    >>> m["ap50"], m["ci"]["ap50"], m["froc"]["sensitivity"]
    >>> threshold = score_at_fp_rate(truth, predicted, fp_per_image=1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsight.boxes import Boxes
from medsight.detection.curves import (
    COCO_IOUS,
    FROC_RATES,
    average_precision,
    froc_curve,
    froc_sensitivity,
    group_ends,
    image_auc,
    precision_at_recall_points,
)
from medsight.detection.matching import check_pair, match_boxes, match_image
from medsight.errors import ConfigError, DatasetError
from medsight.progress import track
from medsight.report.detection import METRIC_LABELS, OverlayCase

#: Every IoU threshold the metrics match at: COCO's ten, then nnDetection's 0.1 (AP10 and the FROC).
IOUS = (*COCO_IOUS.tolist(), 0.1)
_AP50, _AP10 = 0, len(IOUS) - 1
#: The flat keys (floats, NaN when undefined) that metrics.csv and the report show.
DETECTION_KEYS = tuple(METRIC_LABELS)


@dataclass
class Pool:
    """Every prediction of every image in pooled descending-score order (stable over the images' order),
    with whether it is a true positive at each IoU threshold, and the true boxes per image and class."""

    scores: np.ndarray
    labels: np.ndarray
    image: np.ndarray
    hit: np.ndarray
    truth_counts: np.ndarray

    @property
    def n_images(self) -> int:
        return len(self.truth_counts)


def pool_matches(truth: Sequence[Boxes], predicted: Sequence[Boxes], n_classes: int,
                 ious: Sequence[float] = IOUS, *, progress: bool = False) -> Pool:
    """Match each image's predictions at every IoU in ``ious`` and pool them (see :class:`Pool`).

    Raises:
        DatasetError: different numbers of images, predictions without scores, a label outside the
            class names, or 2D boxes against 3D boxes.
    """
    if not len(truth):
        raise DatasetError("detection metrics", "no images to score", "pass at least one image's boxes")
    if len(truth) != len(predicted):
        raise DatasetError("detection metrics", f"{len(truth)} images of true boxes but {len(predicted)} of "
                           "predictions", "pass one Boxes per image in both lists, in the same order")
    counts = np.zeros((len(truth), n_classes), dtype=np.int64)
    parts: list[tuple] = []
    for i, (true, pred) in enumerate(track(list(zip(truth, predicted, strict=True)), description="matching boxes",
                                           enabled=progress)):
        check_pair(true, pred, f"image {i}")
        for name, labels in (("true", true.labels), ("predicted", pred.labels)):
            if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
                raise DatasetError(f"image {i}", f"a {name} box has label {int(labels.max())} but there are "
                                   f"{n_classes} class names", "pass every class name, in label order")
        counts[i] = np.bincount(true.labels, minlength=n_classes)
        parts.append((pred.scores, pred.labels, np.full(len(pred), i), match_image(true, pred, ious) >= 0))
    scores, labels, image = (np.concatenate([p[k] for p in parts]) if parts else np.zeros(0) for k in range(3))
    hit = np.concatenate([p[3] for p in parts], axis=1) if parts else np.zeros((len(ious), 0), dtype=bool)
    order = np.argsort(-scores, kind="stable")
    return Pool(scores[order], labels[order].astype(np.int64), image[order].astype(np.int64), hit[:, order],
                counts)


def detection_metrics(truth: Sequence[Boxes], predicted: Sequence[Boxes], class_names: list[str], *,
                      bootstrap: int = 1000, ci: float = 0.95, seed: int = 0, progress: bool = False) -> dict:
    """Score predicted boxes against the truth over a set of images, with percentile bootstrap CIs.

    Args:
        truth: One :class:`Boxes` per image, the ground truth (2D or 3D).
        predicted: One scored :class:`Boxes` per image, in the same order and index space.
        class_names: The name of each label.
        bootstrap: Resamples of the images (with replacement); 0 leaves the intervals NaN.
        ci: Confidence level of the intervals.
        seed: Seed of the resampling.
        progress: Show progress bars.

    Returns:
        ``map`` (COCO mAP@[.5:.95]), ``ap50``, ``ap10``, ``froc_mean``, ``image_auc`` (floats, NaN when
        undefined); ``per_class`` ({name: the same five, ``n_boxes``, ``n_predictions``, ``ap_by_iou``,
        ``pr50`` (the interpolated PR curve at IoU 0.5: ``recall``, ``precision``), ``ci``}); ``froc``
        (``fp_per_image``: the protocol's rates, ``sensitivity`` and its ``ci`` at each, ``curve``: see
        :func:`medsight.detection.curves.froc_curve`); ``ci`` ({key: [low, high]}); ``bootstrap``,
        ``ci_level``, ``n_images``, ``n_boxes``, ``n_predictions``.

    Raises:
        ConfigError: ``bootstrap`` < 0 or ``ci`` outside (0, 1).
        DatasetError: see :func:`pool_matches`.
    """
    if bootstrap < 0 or not 0 < ci < 1:
        raise ConfigError(f"bootstrap={bootstrap}, ci={ci}", "resamples must be >= 0 and the level in (0, 1)",
                          "use e.g. bootstrap=1000, ci=0.95")
    pool = pool_matches(truth, predicted, len(class_names), progress=progress)
    weights = np.vstack([np.ones((1, pool.n_images)), _resample_counts(pool.n_images, bootstrap, seed)])
    best = np.zeros((pool.n_images, len(class_names)))
    np.maximum.at(best, (pool.image, pool.labels), np.maximum(pool.scores, 0.0))
    per_class = {}
    for c, name in enumerate(track(class_names, description="detection metrics", enabled=progress)):
        mine = pool.labels == c
        per_class[name] = _scope(pool, mine, pool.truth_counts[:, c], best[:, c], weights)
    overall = {key: _mean_defined(np.stack([v["rows"][key] for v in per_class.values()]))
               for key in ("map", "ap50", "ap10")}
    overall["froc_mean"], sensitivity = _froc(pool, np.ones(pool.scores.size, bool),
                                              pool.truth_counts.sum(axis=1), weights)
    overall["image_auc"] = image_auc(best.max(axis=1, initial=0.0), pool.truth_counts.sum(axis=1) > 0, weights)
    n_boxes = int(pool.truth_counts.sum())
    return {
        **{key: float(overall[key][0]) for key in DETECTION_KEYS},
        "per_class": {name: {k: v for k, v in entry.items() if k != "rows"} | _with_ci(entry["rows"], ci)
                      for name, entry in per_class.items()},
        "froc": {"fp_per_image": list(FROC_RATES), "sensitivity": sensitivity[0].tolist(),
                 "ci": [_interval(sensitivity[1:, j], ci) for j in range(len(FROC_RATES))],
                 "curve": froc_curve(pool.hit[_AP10], pool.scores, pool.n_images, n_boxes)},
        **_with_ci(overall, ci),
        "bootstrap": bootstrap, "ci_level": ci,
        "n_images": pool.n_images, "n_boxes": n_boxes, "n_predictions": int(pool.scores.size),
    }


def score_at_fp_rate(truth: Sequence[Boxes], predicted: Sequence[Boxes], fp_per_image: float,
                     iou: float = 0.1) -> float:
    """The lowest score threshold at which the predictions make at most ``fp_per_image`` false positives per
    image (all classes together; a prediction is kept when its score is >= the threshold).

    The threshold is always one of the predictions' scores, so tied predictions are kept or dropped
    together. When even the top-scoring predictions make more false positives than allowed, it is the next
    float above the highest score (nothing is kept); with no predictions at all, 0.0 (nothing to limit).

    Raises:
        ConfigError: ``fp_per_image`` is negative.
        DatasetError: see :func:`pool_matches`.
    """
    if not fp_per_image >= 0:
        raise ConfigError(f"fp_per_image={fp_per_image}", "a false-positive rate cannot be negative",
                          "use e.g. 1.0 (one false positive per image)")
    n_classes = 1 + max([int(b.labels.max()) for b in (*truth, *predicted) if len(b)], default=0)
    pool = pool_matches(truth, predicted, n_classes, (iou,))
    if pool.scores.size == 0:
        return 0.0
    ends = group_ends(pool.scores)
    fits = np.flatnonzero(np.cumsum(~pool.hit[0])[ends] <= fp_per_image * pool.n_images)
    return float(pool.scores[ends[fits[-1]]]) if fits.size else float(np.nextafter(pool.scores[0], np.inf))


def overlay_case(case_id: str, image: np.ndarray, truth: Boxes, predicted: Boxes, *, iou: float,
                 score_threshold: float) -> OverlayCase:
    """One image for the report's overlays (:func:`medsight.report.detection.detection_report`): its hits,
    false positives and misses at ``score_threshold`` and ``iou``, ranked by the image's F1 there.

    ``image`` is the Sample's array (``(C, H, W)`` or ``(C, D, H, W)``); the boxes are in its index space.
    """
    m = match_boxes(truth, predicted, iou, score_threshold)
    return OverlayCase(case_id, image, predicted.corners[m.tp], predicted.scores[m.tp], predicted.corners[m.fp],
                       predicted.scores[m.fp], truth.corners[m.missed], m.f1)


def _scope(pool: Pool, mine: np.ndarray, truth_counts: np.ndarray, best: np.ndarray, weights: np.ndarray) -> dict:
    """One class's metrics: ``rows`` holds each metric for the estimate (row 0) and every resample."""
    n_truth = weights @ truth_counts
    ap = np.stack([average_precision(pool.hit[k, mine], pool.image[mine], weights, n_truth)
                   for k in range(len(IOUS))])
    froc_mean, _ = _froc(pool, mine, truth_counts, weights)
    rows = {"map": ap[:_AP10].mean(axis=0), "ap50": ap[_AP50], "ap10": ap[_AP10], "froc_mean": froc_mean,
            "image_auc": image_auc(best, truth_counts > 0, weights)}
    return {
        **{key: float(rows[key][0]) for key in DETECTION_KEYS},
        "n_boxes": int(truth_counts.sum()), "n_predictions": int(mine.sum()),
        "ap_by_iou": {f"{iou:.2f}": float(ap[k, 0]) for k, iou in enumerate(IOUS)},
        "pr50": {"recall": np.linspace(0.0, 1.0, 101).tolist(),
                 "precision": precision_at_recall_points(pool.hit[_AP50, mine], int(truth_counts.sum())).tolist()},
        "rows": rows,
    }


def _froc(pool: Pool, mine: np.ndarray, truth_counts: np.ndarray, weights: np.ndarray):
    """The mean FROC sensitivity per row and the sensitivities ``(rows, 7)``, at IoU 0.1."""
    sensitivity = froc_sensitivity(pool.hit[_AP10, mine], pool.image[mine], pool.scores[mine], weights,
                                   weights @ truth_counts)
    return sensitivity.mean(axis=1), sensitivity


def _resample_counts(n_images: int, bootstrap: int, seed: int) -> np.ndarray:
    """``(bootstrap, n_images)``: how many times each image is drawn in each resample."""
    draws = np.random.default_rng(seed).integers(0, n_images, size=(bootstrap, n_images))
    counts = np.zeros((bootstrap, n_images))
    np.add.at(counts, (np.repeat(np.arange(bootstrap), n_images), draws.ravel()), 1.0)
    return counts


def _mean_defined(stack: np.ndarray) -> np.ndarray:
    """The mean over axis 0 of the defined (finite) values; NaN where none is."""
    defined = np.isfinite(stack)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, stack, 0.0).sum(axis=0) / defined.sum(axis=0)


def _with_ci(rows: dict, ci: float) -> dict:
    return {"ci": {key: _interval(rows[key][1:], ci) for key in DETECTION_KEYS}}


def _interval(values: np.ndarray, ci: float) -> list[float]:
    """The percentile interval of the defined resampled values; NaN, NaN without any."""
    defined = values[np.isfinite(values)]
    if not defined.size:
        return [float("nan"), float("nan")]
    tail = (1 - ci) / 2 * 100
    return [float(v) for v in np.percentile(defined, [tail, 100 - tail])]


__all__ = ["DETECTION_KEYS", "IOUS", "Pool", "detection_metrics", "match_boxes", "overlay_case", "pool_matches",
           "score_at_fp_rate"]
