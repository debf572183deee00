"""Segmentation metrics: per-case overlap and surface distances, pixel AUCs, bootstrap summary.

Pure NumPy/SciPy (plus scikit-learn for the pixel AUCs), no torch.

Conventions:

* ``pred`` and ``truth`` are integer label maps (2D or 3D) on the same grid; each label in
  ``labels`` is scored one-vs-rest. Distances are in the unit of ``spacing`` per array axis:
  millimetres for images with physical spacing, pixels for pictures (whose reader spacing of 1
  is one pixel; :func:`medsight.segmentation.evaluate.distance_unit` says which).
* When an ``roi`` (boolean field-of-view mask) is given, voxels outside it are ignored:
  overlap counts only use voxels inside it and surfaces are those of the masks restricted
  to it.
* A surface is the set of mask voxels with at least one face neighbour outside the mask
  (voxels on the array edge count as surface). ``hd95`` is the larger of the two directed
  95th-percentile surface distances (the MONAI convention); ``assd`` is the mean of all
  surface distances in both directions.
* Both masks empty: ``dice`` and ``iou`` are 1 and ``hd95``/``assd`` are 0. Exactly one
  empty: ``dice`` and ``iou`` are 0 and ``hd95``/``assd`` are NaN (infinity is not valid
  JSON). ``sensitivity`` is NaN when the truth is empty and ``precision`` is NaN when the
  prediction is empty (0/0); summaries skip NaN values.

Example:
    >>> truth = np.zeros((8, 8), dtype=np.int64)
    >>> truth[2:6, 2:6] = 1
    >>> m = segmentation_case_metrics(truth, truth, spacing=(1.0, 1.0), labels=[1])
    >>> m[1]["dice"], m[1]["hd95"]
    (1.0, 0.0)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from medsight.errors import ConfigError, DatasetError, InvalidImageError

SEG_METRIC_KEYS = ("dice", "iou", "sensitivity", "precision", "hd95", "assd")


def segmentation_case_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    *,
    spacing: Sequence[float],
    labels: Sequence[int],
    roi: np.ndarray | None = None,
) -> dict[int, dict[str, float]]:
    """Overlap and surface-distance metrics of one case, per foreground label.

    Args:
        pred: Predicted integer label map, 2D or 3D.
        truth: Reference integer label map with the same shape.
        spacing: Voxel size along each array axis (same order as the array axes), in mm; 1 per
            pixel for pictures, which makes the distances pixels.
        labels: Label values to score (normally the foreground labels, not 0).
        roi: Optional boolean field-of-view mask with the same shape; voxels outside it
            are ignored.

    Returns:
        ``{label: {"dice", "iou", "sensitivity", "precision", "hd95", "assd"}}`` as floats;
        see the module docstring for the empty-mask conventions.

    Raises:
        InvalidImageError: The arrays are not integer label maps of one shape, 2D or 3D.
        ConfigError: ``spacing`` does not match the number of axes or ``labels`` is empty.

    Example:
        >>> m = segmentation_case_metrics(pred, truth, spacing=(2.0, 1.0, 1.0), labels=[1, 2])
        >>> m[2]["hd95"]  # mm, since the spacing is in mm
    """
    pred_arr = _label_map(pred, "pred")
    truth_arr = _label_map(truth, "truth")
    if pred_arr.shape != truth_arr.shape:
        raise InvalidImageError(
            "pred",
            f"shape {pred_arr.shape} does not match the truth shape {truth_arr.shape}",
            "resample the prediction onto the reference grid before scoring",
        )
    sampling = _spacing(spacing, pred_arr.ndim)
    inside = _roi_mask(roi, pred_arr.shape)
    if len(labels) == 0:
        raise ConfigError("labels", "no labels to score", "pass the foreground label values, e.g. labels=[1]")
    return {
        int(label): _label_metrics(pred_arr == label, truth_arr == label, sampling, inside) for label in labels
    }


def pixel_auc(prob: np.ndarray, truth: np.ndarray, roi: np.ndarray | None = None) -> tuple[float, float]:
    """Pixel-level ROC-AUC and PR-AUC (average precision) of a binary probability map.

    Every pixel inside ``roi`` (all pixels when ``roi`` is None) is one sample; ``truth``
    is positive where it is non-zero. When only one class is present inside the roi both
    values are NaN.

    Args:
        prob: Foreground probability (or any score) per pixel.
        truth: Binary reference mask with the same shape.
        roi: Optional boolean field-of-view mask with the same shape.

    Returns:
        ``(roc_auc, pr_auc)``.

    Raises:
        InvalidImageError: Shapes differ or ``prob`` holds NaN/infinite values.

    Example:
        >>> roc, pr = pixel_auc(vessel_prob, vessel_mask, roi=fov_mask)
    """
    scores = np.asarray(prob, dtype=np.float64)
    positive = np.asarray(truth) != 0
    if scores.shape != positive.shape:
        raise InvalidImageError(
            "prob",
            f"shape {scores.shape} does not match the truth shape {positive.shape}",
            "pass the probability map on the reference grid",
        )
    inside = _roi_mask(roi, scores.shape)
    if inside is not None:
        scores, positive = scores[inside], positive[inside]
    scores, positive = scores.ravel(), positive.ravel()
    if not np.all(np.isfinite(scores)):
        raise InvalidImageError("prob", "the probability map holds NaN or infinite values", "check the model output")
    if positive.all() or not positive.any():
        return float("nan"), float("nan")
    return float(roc_auc_score(positive, scores)), float(average_precision_score(positive, scores))


def summarise_cases(
    per_case: list[dict[int, dict[str, float]]],
    *,
    label_names: dict[int, str],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict:
    """Mean of each metric over cases with a percentile bootstrap confidence interval.

    Means skip NaN values (a metric undefined for a case). Cases are resampled with
    replacement ``n_boot`` times; the interval is the ``(1 - ci) / 2`` and ``(1 + ci) / 2``
    percentiles of the resampled means. Labels in ``label_names`` that no case scored
    (such as background) are left out.

    Args:
        per_case: One :func:`segmentation_case_metrics` result per case.
        label_names: Name of each label, used as the key of the result.
        n_boot: Number of bootstrap resamples (0 gives NaN intervals).
        ci: Confidence level, between 0 and 1.
        seed: Seed of the resampling, so the intervals are reproducible.

    Returns:
        ``{name: {"label": int, "n": cases, "metrics": {metric: {"mean", "ci_low",
        "ci_high"}}}}``, JSON-able (undefined values are NaN).

    Raises:
        DatasetError: ``per_case`` is empty.
        ConfigError: A label has no name, or ``n_boot``/``ci`` is out of range.

    Example:
        >>> s = summarise_cases(cases, label_names={1: "liver"}, n_boot=200)
        >>> s["liver"]["metrics"]["dice"]["mean"], s["liver"]["n"]
    """
    if not per_case:
        raise DatasetError("per_case", "no cases to summarise", "score at least one case first")
    if not 0 < ci < 1:
        raise ConfigError(f"ci={ci}", "the confidence level must lie between 0 and 1", "use e.g. 0.95")
    if n_boot < 0:
        raise ConfigError(f"n_boot={n_boot}", "the number of resamples cannot be negative", "use e.g. 1000")
    labels = sorted({label for case in per_case for label in case})
    missing = [label for label in labels if label not in label_names]
    if missing:
        raise ConfigError("label_names", f"labels {missing} have no name", "add a name for each scored label")
    rng = np.random.default_rng(seed)
    tail = (1 - ci) / 2 * 100
    out: dict = {}
    for label in labels:
        cases = [case[label] for case in per_case if label in case]
        values = np.array([[case.get(key, np.nan) for key in SEG_METRIC_KEYS] for case in cases], dtype=np.float64)
        means = _nanmean(values, axis=0)
        if n_boot > 0:
            draws = rng.integers(0, len(cases), size=(n_boot, len(cases)))
            boot = _nanmean(values[draws], axis=1)
        else:
            boot = np.full((0, len(SEG_METRIC_KEYS)), np.nan)
        metrics = {}
        for j, key in enumerate(SEG_METRIC_KEYS):
            defined = boot[:, j][np.isfinite(boot[:, j])]
            low, high = np.percentile(defined, [tail, 100 - tail]) if defined.size else (np.nan, np.nan)
            metrics[key] = {"mean": float(means[j]), "ci_low": float(low), "ci_high": float(high)}
        out[label_names[label]] = {"label": int(label), "n": len(cases), "metrics": metrics}
    return out


def _label_metrics(
    pred: np.ndarray, truth: np.ndarray, sampling: tuple[float, ...], roi: np.ndarray | None
) -> dict[str, float]:
    """All metrics of one pair of binary masks, restricted to the roi when one is given."""
    if roi is not None:
        pred, truth = pred & roi, truth & roi
    tp = float(np.count_nonzero(pred & truth))
    n_pred, n_truth = float(np.count_nonzero(pred)), float(np.count_nonzero(truth))
    if n_pred == 0 and n_truth == 0:
        dice = iou = 1.0
        hd95 = assd = 0.0
    elif n_pred == 0 or n_truth == 0:
        dice = iou = 0.0
        hd95 = assd = float("nan")
    else:
        dice = 2 * tp / (n_pred + n_truth)
        iou = tp / (n_pred + n_truth - tp)
        hd95, assd = _surface_distances(pred, truth, sampling)
    return {
        "dice": dice,
        "iou": iou,
        "sensitivity": tp / n_truth if n_truth else float("nan"),
        "precision": tp / n_pred if n_pred else float("nan"),
        "hd95": hd95,
        "assd": assd,
    }


def _surface_distances(a: np.ndarray, b: np.ndarray, sampling: tuple[float, ...]) -> tuple[float, float]:
    """HD95 and ASSD, in the unit of ``sampling``, between the surfaces of two non-empty masks."""
    surf_a, surf_b = _surface(a), _surface(b)
    a_to_b = ndimage.distance_transform_edt(~surf_b, sampling=sampling)[surf_a]
    b_to_a = ndimage.distance_transform_edt(~surf_a, sampling=sampling)[surf_b]
    hd95 = max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))
    assd = np.concatenate([a_to_b, b_to_a]).mean()
    return float(hd95), float(assd)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Mask voxels with a face neighbour outside the mask (array-edge voxels included)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _label_map(array: np.ndarray, name: str) -> np.ndarray:
    """Check one label map: integer or boolean, 2D or 3D."""
    arr = np.asarray(array)
    if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidImageError(
            name,
            f"expected an integer label map, got dtype {arr.dtype}",
            "pass the argmax (or thresholded) labels, e.g. probs.argmax(0)",
        )
    if arr.ndim not in (2, 3):
        raise InvalidImageError(
            name,
            f"expected a 2D or 3D label map, got shape {arr.shape}",
            "drop the batch and channel axes before scoring",
        )
    return arr


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """Check the voxel spacing: one positive, finite value per axis."""
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim:
        raise ConfigError(
            f"spacing={values}",
            f"{len(values)} values for a {ndim}D label map",
            "give one voxel size in mm per array axis",
        )
    if not all(np.isfinite(s) and s > 0 for s in values):
        raise ConfigError(f"spacing={values}", "voxel sizes must be positive and finite", "use the image's spacing")
    return values


def _roi_mask(roi: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """The roi as a boolean mask of ``shape``, or None."""
    if roi is None:
        return None
    mask = np.asarray(roi).astype(bool)
    if mask.shape != shape:
        raise InvalidImageError(
            "roi",
            f"shape {mask.shape} does not match the label map shape {shape}",
            "pass the field-of-view mask on the same grid",
        )
    return mask


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean that skips NaN and gives NaN (without a warning) where nothing is defined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)
