"""Score a detection bundle on images with true boxes: ``metrics.json``, ``per_image.csv``, ``report.html``.

:func:`evaluate_boxes` scores predictions made in each image's own pixel space (the bundle's
:class:`~medsight.inference.detector.Detector`: what ``medsight predict`` writes) against the truth with
:func:`~medsight.detection.metrics.detection_metrics` (mAP@[.5:.95], AP50, AP at IoU 0.1, the FROC and its mean,
the image-level AUC; per class; bootstrap CIs over images), and says per image what the shipped score threshold
keeps: true positives, false positives and missed boxes at IoU 0.1 (the FROC's criterion).
:func:`evaluate_detector` is ``medsight evaluate`` for a detection bundle: it picks the cases (``--split``) and
predicts them. Training calls :func:`evaluate_boxes` on its validation images.

Example:
    >>> metrics = evaluate_detector(load_bundle("runs/fractures/model"), data="data/fractures", split="val",
    ...                             out=Path("eval"))
    >>> metrics["ap50"], metrics["ci"]["ap50"]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medsight.boxes import Boxes
from medsight.errors import DatasetError
from medsight.progress import track
from medsight.result_files import write_csv_table, write_strict_json

#: the IoU at which per_image.csv counts a found box (the FROC's, LUNA16's and nnDetection's criterion)
MATCH_IOU = 0.1
PER_IMAGE_FIELDS = ("id", "path", "n_true", "n_found", "true_positives", "false_positives", "missed", "top_score",
                    "error")


def evaluate_boxes(truth: list[Boxes], predicted: list[Boxes], *, cases: list, class_names: list[str],
                   threshold: float, out: Path, title: str, extra: dict[str, Any], bootstrap: int = 1000,
                   ci: float = 0.95, errors: list[dict[str, str]] | None = None, reader=None,
                   progress: bool = False) -> dict:
    """Score ``predicted`` against ``truth`` (one Boxes per case, the image's own pixels) and write the files.

    Args:
        cases: the scored cases (``id`` and ``path``), in the order of ``truth``.
        threshold: the bundle's score threshold (per_image.csv counts what it keeps).
        extra: shown in the report and kept in metrics.json (split, data, model, ...).
        errors: ``{"path", "reason"}`` of images that could not be read (a row each in per_image.csv).
        reader: ``reader(case) -> Sample`` for the report's overlays (None: no overlays).

    Returns:
        metrics.json's content.
    """
    from medsight.detection.matching import match_boxes
    from medsight.detection.metrics import detection_metrics, overlay_case

    if not truth:
        raise DatasetError(extra.get("data", "detection evaluation"), "has no readable image to score",
                           "check the image files (per_image.csv lists why each failed)")
    scores = detection_metrics(truth, predicted, class_names, bootstrap=bootstrap, ci=ci, progress=progress)
    rows, overlays = [], []
    for case, true, found in zip(cases, truth, predicted, strict=True):
        match = match_boxes(true, found, MATCH_IOU, threshold)
        rows.append({"id": case.id, "path": str(case.path), "n_true": len(true), "n_found": int(match.kept.sum()),
                     "true_positives": int(match.tp.sum()), "false_positives": int(match.fp.sum()),
                     "missed": int(match.missed.sum()),
                     "top_score": f"{float(found.scores.max()):.6f}" if len(found) else "", "error": ""})
        overlays.append(overlay_case(case.id, np.zeros((1, 1, 1)), true, found, iou=MATCH_IOU,
                                     score_threshold=threshold))  # the pixels are read for the three drawn
    rows += [{"id": e["path"], "path": e["path"], "error": e["reason"]} for e in errors or []]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {"task": "detection", **scores, "threshold": float(threshold), "match_iou": MATCH_IOU,
               "ci_level": ci, "bootstrap": bootstrap, "n": len(truth), "errors": len(errors or []),
               "found_at_threshold": {"true_positives": sum(r["true_positives"] for r in rows if not r["error"]),
                                      "false_positives": sum(r["false_positives"] for r in rows if not r["error"]),
                                      "missed": sum(r["missed"] for r in rows if not r["error"])},
               "extra": extra, **{key: extra[key] for key in ("split",) if key in extra}}
    write_strict_json(out / "metrics.json", metrics)
    write_csv_table(out / "per_image.csv", rows, PER_IMAGE_FIELDS)
    _report(metrics, overlays, dict(zip([c.id for c in cases], cases, strict=True)), out, title, reader)
    return metrics


def _report(metrics: dict, overlays: list, cases: dict, out: Path, title: str, reader) -> None:
    """report.html with the curves and the best, median and worst images (:func:`medsight.report.detection`);
    only those three images are read again, for their pixels."""
    from dataclasses import replace

    from medsight.errors import MedsightError
    from medsight.report.detection import detection_report, pick_cases

    picked = []
    if reader is not None:
        for overlay in {id(c): c for c in pick_cases(overlays).values()}.values():
            try:
                picked.append(replace(overlay, image=reader(cases[overlay.case_id]).array))
            except MedsightError:  # read once already: a file changed since is left out of the overlays
                continue
    rate = metrics["extra"].get("operating_fp_per_image")
    operating = None if rate is None else {"threshold": metrics["threshold"], "iou": MATCH_IOU,
                                           "chosen_on": "validation", "fp_per_image": float(rate)}
    detection_report(out, title=title, metrics=metrics, cases=picked, operating=operating,
                     notes=tuple(f"{k}: {v}" for k, v in metrics["extra"].items() if k in ("cases scored",
                                                                                            "threshold_note")))


def predict_cases(detector, dataset, cases: list, *, progress: bool, desc: str = "predicting"):
    """The bundle's boxes for each readable case (its own pixel space); unreadable ones as errors.

    Returns:
        ``(kept cases, their true boxes, their predicted boxes, errors as {"path", "reason"})``.
    """
    from medsight.data.file_errors import one_line
    from medsight.errors import MedsightError

    kept, truth, predicted, errors = [], [], [], []
    for case in track(cases, description=desc, enabled=progress):
        try:
            found = detector.predict([dataset.read(case)])[0]
        except MedsightError as err:
            errors.append({"path": str(case.path), "reason": one_line(err)})
            continue
        kept.append(case)
        truth.append(case.boxes)
        predicted.append(found)
    return kept, truth, predicted, errors


def evaluate_detector(model_bundle, *, bundle: Path, data: str, split: str, out: Path, progress: bool,
                      scored: str) -> dict:
    """``medsight evaluate`` for a detection bundle: score ``split`` (``train``, ``val``, ``test`` or ``all``) of
    ``data`` (the bundle's own class names; the data set's splits, else its training split rebuilt)."""
    from medsight.config import EvalConfig
    from medsight.data.det_layouts import open_detection_set
    from medsight.inference.detector import Detector

    dataset = open_detection_set(data, class_names=list(model_bundle.label_names))
    cases = _split_cases(model_bundle, dataset, split)
    kept, truth, predicted, errors = predict_cases(Detector.from_bundle(model_bundle), dataset, cases,
                                                   progress=progress, desc=f"predicting {split}")
    settings = model_bundle.detection
    eval_cfg = model_bundle.threshold_choice.evaluation or EvalConfig()
    return evaluate_boxes(
        truth, predicted, cases=kept, class_names=list(model_bundle.label_names),
        threshold=settings.score_threshold, out=out, bootstrap=eval_cfg.bootstrap, ci=eval_cfg.ci, errors=errors,
        reader=dataset.read, progress=progress,
        title=f"{Path(bundle).resolve().parent.name}: {split} images of {Path(data).name}",
        extra={"split": split, "bundle": str(bundle), "data": str(data), "cases scored": scored,
               "threshold_note": settings.threshold_note,
               "operating_fp_per_image": model_bundle.provenance.get("operating_fp_per_image")})


def _split_cases(model_bundle, dataset, split: str) -> list:
    """The cases of ``split``: every case for ``all``, else the split the bundle's data settings rebuild."""
    if split == "all":
        return list(dataset.cases)
    if split not in ("train", "val", "test"):
        raise DatasetError(f"--split {split}", "is not a split", "use train, val, test or all")
    from medsight.data.splits import resolve_splits

    indices = resolve_splits(dataset, model_bundle.data.split_config(dataset.root))[split]
    if not len(indices):
        raise DatasetError(dataset.root, f"has no {split} images under the model's split settings",
                           "pick another --split (all scores every image)")
    return [dataset.cases[i] for i in np.sort(indices)]
