"""Evaluate a segmentation bundle on cases: metrics.json, per_case.csv and report.html.

Training (on its validation cases) and ``medsight evaluate`` both call
:func:`evaluate_segmentation` with a :class:`~medsight.inference.segmenter.Segmenter`, so the
numbers a run reports are the numbers a later evaluation of its bundle reproduces.

``metrics.json`` holds, at the top level, the mean over cases of the mean over foreground
classes of ``dice``, ``iou``, ``sensitivity``, ``precision``, ``hd95`` and ``assd``, with
``n`` cases; binary tasks add the pooled pixel ``auc``, ``pr_auc``, ``f1`` and ``accuracy``
and the ``threshold`` used. ``summary`` has each class with bootstrap CIs, ``per_case`` each case.
Everything is computed inside the region of interest when the data set has one.

``distance_unit`` says what ``hd95`` and ``assd`` are measured in (:func:`distance_unit`): ``mm`` for
files with physical spacing (DICOM, NIfTI, NRRD), ``px`` for pictures (PNG, JPEG, TIFF, GIF, BMP) and
MedMNIST arrays, which have none. A set that mixes both is ``mixed``: each case keeps its distances and
its unit (``per_case``, per_case.csv), but no mean or CI of ``hd95``/``assd`` is formed over pixels and
millimetres together (they are null).

``uncertainty`` relates the case uncertainty to the case Dice (Spearman's rho, its p-value and a
``reading`` that draws a conclusion only where the p-value supports one:
:func:`medsight.report.evidence.correlation_reading`).

A binary task whose every case has a region of interest is a pixel benchmark (DRIVE and the other
retinal vessel sets score the pixels inside the field of view, pooled over the images): there
``dice`` is the pooled pixel F1 (``f1``, at the bundle's threshold) and the mean over cases moves
to ``dice_mean_case``.

Example:
    >>> metrics = evaluate_segmentation(Segmenter("runs/drive/model"), cases, out=Path("eval"), title="DRIVE")
    >>> metrics["dice"], metrics["auc"]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medsight.atomic_write import replacing
from medsight.errors import DatasetError, InvalidImageError
from medsight.inference.uncertainty import case_uncertainty, entropy_map
from medsight.metric_names import DISTANCE_KEYS
from medsight.result_files import write_csv_table, write_strict_json
from medsight.sample import Sample
from medsight.segmentation.metrics import SEG_METRIC_KEYS, segmentation_case_metrics, summarise_cases
from medsight.segmentation.pixel_scores import PixelScores

#: one case to score: ``(case_id, image, reference labels, region of interest or None)``
Case = tuple[str, Sample, np.ndarray, np.ndarray | None]


def open_split(model_bundle, data: str, split: str):
    """The segmentation data set at ``data`` and its items: every case (``split="all"``), or the cases the
    bundle's training run put in ``split`` (``train`` / ``val``).

    Raises:
        DatasetError: the model has no ``split`` cases (a fold ensemble has no ``val``), or none are in ``data``.
    """
    from medsight.data.seg_layouts import open_seg_dataset

    dataset = open_seg_dataset(data, label_names=dict(enumerate(model_bundle.label_names)))
    items = dataset.items
    if split != "all":
        chosen = set(model_bundle.split.of(split))
        if not chosen:
            note = model_bundle.split.note
            raise DatasetError(data, f"the model has no '{split}' cases" + (f" ({note})" if note else ""),
                               "evaluate it with --split all on held-out data")
        items = [item for item in items if item.case_id in chosen]
        if not items:
            raise DatasetError(data, f"has none of the model's '{split}' cases",
                               "use --split all for a data set other than the one the model was trained on")
    return dataset, items


def distance_unit(sample: Sample) -> str:
    """``"px"`` for a picture (PNG/JPEG/TIFF/GIF/BMP) or a MedMNIST array, which carry no physical spacing
    (the reader's spacing of 1 is one pixel); ``"mm"`` for everything else (DICOM, NIfTI, NRRD)."""
    from medsight.io import is_picture

    path = sample.meta.get("path")
    return "px" if sample.meta.get("format") == "npz" or (path and is_picture(path)) else "mm"


def seg_summary(split: str, metrics: dict) -> str:
    """The line ``train`` and ``evaluate`` print for a segmentation: Dice, IoU, HD95 with its unit,
    and the pooled pixel scores of a binary task."""
    unit = metrics.get("distance_unit", "mm")  # metrics written before the unit was stored: mm
    hd95 = "n/a (the cases mix px and mm)" if unit == "mixed" else f"{metrics['hd95']:.2f} {unit}"
    line = f"{split}: n={metrics['n']} dice={metrics['dice']:.4f} iou={metrics['iou']:.4f} hd95={hd95}"
    if "auc" in metrics:
        line += f" pixel auc={metrics['auc']:.4f} f1={metrics['f1']:.4f} accuracy={metrics['accuracy']:.4f}"
    return line


def probabilities_file(folder: Path, case_id: str) -> Path:
    """Where :func:`evaluate_segmentation` keeps a case's probabilities (``save_probabilities``)."""
    return Path(folder) / f"{case_id.replace('/', '_')}.npy"


def keep_probabilities(path: Path, probs: np.ndarray) -> None:
    """Keep ``probs`` at ``path`` as float16 ``.npy``, whole or not at all (a later run reads it back).

    Raises:
        OutputWriteError: the disk is full, or the folder is not writable; an older file stays as it was.
    """
    with replacing(path) as tmp, open(tmp, "wb") as handle:  # np.save(tmp) would append ".npy" to the name
        np.save(handle, probs.astype(np.float16))


class DatasetCases:
    """Cases of a segmentation data set, decoded one at a time (sized, for the progress bar)."""

    def __init__(self, dataset, items) -> None:
        self.dataset, self.items = dataset, list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Case]:
        return ((item.case_id, *self.dataset.read(item)) for item in self.items)


def evaluate_segmentation(
    segmenter,
    cases: Iterable[Case],
    *,
    out: Path,
    title: str,
    extra: dict[str, Any] | None = None,
    n_boot: int = 1000,
    progress: bool = False,
    segmenter_for: Callable[[str], Any] | None = None,
    save_probabilities: Path | None = None,
) -> dict[str, Any]:
    """Segment and score every case; write ``out/metrics.json``, ``out/per_case.csv``, ``out/report.html``.

    ``segmenter_for(case_id)``, when given, is the segmenter of each case (out-of-fold scoring: each
    case by the fold model that did not train on it); ``segmenter`` still gives the label names and
    the reported threshold. ``save_probabilities`` keeps each case's probabilities there as
    ``<case_id>.npy`` (float16, on the case's own grid).

    Raises:
        DatasetError: no cases, or a case without a reference mask.
        InvalidImageError: a reference whose shape differs from its image.
    """
    from medsight.progress import track
    from medsight.report.segmentation import write_segmentation_report

    tally = _CaseTally(dict(enumerate(segmenter.label_names)))
    for case_id, sample, truth, roi in track(cases, description="evaluating", enabled=progress):
        _check_reference(case_id, sample, truth)
        model = segmenter_for(case_id) if segmenter_for else segmenter
        probs = model.probabilities(sample)
        if save_probabilities is not None:
            keep_probabilities(probabilities_file(save_probabilities, case_id), probs)
        tally.add(case_id, sample, truth, roi, probs, model)
    if not tally.per_case:
        raise DatasetError("cases", "there is nothing to evaluate", "pass cases with images and masks")
    summary = summarise_cases(tally.per_case, label_names=tally.names, n_boot=n_boot)
    metrics = _headline_metrics(tally, summary, segmenter.thresholds.get(1))
    metrics.update(summary=summary, per_case=tally.rows, **(extra or {}))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_strict_json(out / "metrics.json", metrics)
    _write_per_case(out / "per_case.csv", tally.rows, tally.foreground, tally.names)
    write_segmentation_report(
        out, title=title, summary=summary, cases=tally.shown, distance_unit=metrics["distance_unit"],
        pixel={k: metrics[k] for k in ("auc", "pr_auc", "f1", "accuracy", "threshold")} if tally.binary else None,
        uncertainty=metrics["uncertainty"],
    )
    return metrics


def _check_reference(case_id: str, sample: Sample, truth: np.ndarray | None) -> None:
    """A case is scored only against a reference mask on its image's own grid."""
    if truth is None:
        raise DatasetError(case_id, "has no reference mask", "evaluate on cases that have masks")
    if truth.shape != sample.spatial_shape:
        raise InvalidImageError(
            case_id, f"the mask is {truth.shape} but the image is {sample.spatial_shape}",
            "give each image a mask on its own grid",
        )


class _CaseTally:
    """What the scored cases add up to: each case's scores, table row, report view, uncertainty and unit,
    and for a binary task the pooled pixel scores and confusion counts."""

    def __init__(self, names: dict[int, str]) -> None:
        self.names = names
        self.foreground = [k for k in names if k > 0]
        self.binary = len(names) == 2
        self.pixels = PixelScores()
        self.confusion = np.zeros(4, dtype=np.int64)  # tp, fp, fn, tn of the pooled binary masks
        self.per_case: list[dict] = []
        self.rows: list[dict[str, Any]] = []
        self.shown: list = []
        self.uncertainty: list[float] = []
        self.units: list[str] = []
        self.every_case_has_roi = True

    def add(self, case_id: str, sample: Sample, truth: np.ndarray, roi: np.ndarray | None, probs: np.ndarray,
            model) -> None:
        """Score one case from its probabilities; ``model`` turns them into labels and the report's view."""
        self.every_case_has_roi &= roi is not None
        pred = model.labels_from(probs)
        self.uncertainty.append(case_uncertainty(entropy_map(probs), pred))
        scores = segmentation_case_metrics(pred, truth, spacing=sample.spacing, labels=self.foreground, roi=roi)
        self.per_case.append(scores)
        self.units.append(distance_unit(sample))
        dice = float(np.nanmean([scores[k]["dice"] for k in self.foreground]))
        self.rows.append({"case_id": case_id, "dice": dice, "uncertainty": self.uncertainty[-1],
                          "distance_unit": self.units[-1], "metrics": {self.names[k]: v for k, v in scores.items()}})
        self.shown.append(_report_case(case_id, model.prepare(sample), truth, pred, dice))
        if self.binary:
            inside = np.ones(truth.shape, bool) if roi is None else np.asarray(roi, bool)
            self.pixels.add(probs[1], truth, roi=inside)
            self.confusion += _confusion(pred[inside] > 0, truth[inside] > 0)


def _headline_metrics(tally: _CaseTally, summary: dict, threshold: float | None) -> dict[str, Any]:
    """metrics.json's top level: the mean over classes of each metric's case mean, the distance unit, the
    pooled pixel scores of a binary task and how the case uncertainty relates to Dice."""
    unit = tally.units[0] if len(set(tally.units)) == 1 else "mixed"
    if unit == "mixed":
        _drop_pooled_distances(summary)
    metrics: dict[str, Any] = {"task": "segmentation", "n": len(tally.per_case), "distance_unit": unit}
    for key in SEG_METRIC_KEYS:
        means = np.array([entry["metrics"][key]["mean"] for entry in summary.values()])
        metrics[key] = float(np.nanmean(means)) if np.isfinite(means).any() else float("nan")
    if tally.binary:
        metrics.update(_pooled(tally.pixels, tally.confusion, threshold))
        if tally.every_case_has_roi:
            metrics["dice_mean_case"], metrics["dice"] = metrics["dice"], metrics["f1"]
    metrics["uncertainty"] = uncertainty_vs_dice(tally.uncertainty, [row["dice"] for row in tally.rows])
    return metrics


def _drop_pooled_distances(summary: dict) -> None:
    """No mean or CI of HD95/ASSD over cases measured partly in pixels and partly in millimetres."""
    nothing = {"mean": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    for entry in summary.values():
        entry["metrics"].update({key: dict(nothing) for key in DISTANCE_KEYS})


def uncertainty_vs_dice(uncertainty: list[float], dice: list[float]) -> dict[str, float | str]:
    """Do the uncertain cases score worse? Spearman's rank correlation of case uncertainty with Dice, and
    what it supports (``reading``: too few cases, no evidence either way, or the conclusion)."""
    from scipy.stats import spearmanr

    from medsight.report.evidence import correlation_reading

    finite = [(u, d) for u, d in zip(uncertainty, dice, strict=True) if np.isfinite(u) and np.isfinite(d)]
    rho, p_value = spearmanr(*zip(*finite, strict=True)) if len(finite) >= 3 else (float("nan"), float("nan"))
    reading = correlation_reading(float(rho), float(p_value), len(finite),
                                  negative="the more uncertain cases are the lower-Dice ones",
                                  positive="the more uncertain cases are the higher-Dice ones: the uncertainty "
                                           "does not flag the low-Dice cases")
    return {"measure": "mean per-voxel predictive entropy (0-1) over the predicted foreground",
            "mean": float(np.mean(uncertainty)) if uncertainty else float("nan"),
            "spearman_vs_dice": float(rho), "p_value": float(p_value), "n": len(finite), "reading": reading}


def _pooled(pixels: PixelScores, confusion: np.ndarray, threshold: float | None) -> dict[str, float | None]:
    tp, fp, fn, tn = (int(v) for v in confusion)
    return {
        "auc": pixels.roc_auc(),
        "pr_auc": pixels.pr_auc(),
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "accuracy": (tp + tn) / max(tp + fp + fn + tn, 1),
        "threshold": threshold,
    }


def _confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    return np.array([(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum(), (~pred & ~truth).sum()])


def _report_case(case_id: str, image: np.ndarray, truth: np.ndarray, pred: np.ndarray, dice: float):
    """Keep one 2D view per case for the report: a volume keeps its slice with the most foreground."""
    from medsight.report.segmentation import SegCase

    if truth.ndim == 3:
        index = int(np.argmax((truth > 0).reshape(truth.shape[0], -1).sum(axis=1)))
        image, truth, pred = image[:, index], truth[index], pred[index]
    return SegCase(case_id, image.copy(), truth.copy(), pred.copy(), dice)


def _write_per_case(path: Path, rows: list[dict], foreground: list[int], names: dict[int, str]) -> None:
    """One row per case; ``distance_unit`` (last column) is the unit of that row's ``*_hd95`` and ``*_assd``."""
    fields = ["case_id", "dice", "uncertainty", *(f"{names[k]}_{m}" for k in foreground for m in SEG_METRIC_KEYS),
              "distance_unit"]
    write_csv_table(path, (
        {"case_id": row["case_id"], "dice": row["dice"], "uncertainty": row["uncertainty"],
         **{f"{name}_{m}": v for name, values in row["metrics"].items() for m, v in values.items()},
         "distance_unit": row["distance_unit"]}
        for row in rows
    ), fields)
