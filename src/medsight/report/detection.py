"""The detection report: metrics with CIs, per-class table, FROC and PR curves, and overlays of the best,
median and worst images with true positives, false positives and misses drawn.

This module sits below the detection task and takes plain numbers: the ``metrics`` dict that
:func:`medsight.detection.metrics.detection_metrics` returns and one :class:`OverlayCase` per image.

Example:
    >>> detection_report(run / "eval", title="FracAtlas valid", metrics=m, cases=cases,
    ...                  operating={"threshold": 0.41, "fp_per_image": 1.0, "iou": 0.1})
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from medsight.atomic_write import atomic_write_text  # noqa: E402
from medsight.report.html import Figure, figures, fmt, page, paragraph, section, table  # noqa: E402
from medsight.report.plots import save_figure  # noqa: E402

#: The metrics table's rows: the key in the metrics dict and how the report names it.
METRIC_LABELS = {"map": "mAP@[.5:.95] (COCO)", "ap50": "AP50", "ap10": "AP at IoU 0.1",
                 "froc_mean": "FROC mean sensitivity (1/8 to 8 FP per image)", "image_auc": "image-level AUC"}
_COLOURS = {"tp": "lime", "fp": "red", "missed": "yellow"}


@dataclass
class OverlayCase:
    """One image for the overlays, in plain arrays.

    Attributes:
        case_id: The image's id (shown in the caption).
        image: The Sample's array: ``(C, H, W)`` or, for a volume, ``(C, D, H, W)`` (the slice drawn is the
            one along D that crosses the most boxes). One channel is drawn grey, three as RGB.
        true_positives: ``(N, 2 * dims)`` corners (the Sample's index order, pixel edges) of the kept
            predictions that found a true box; ``tp_scores`` their scores.
        false_positives: ``(M, 2 * dims)`` corners of the kept predictions that found none; ``fp_scores``.
        missed: ``(K, 2 * dims)`` corners of the true boxes that no kept prediction found.
        rank: What best, median and worst are chosen by (e.g. the image's F1 at the operating threshold);
            NaN leaves the image out of the choice (an image with no true box and no kept prediction).
    """

    case_id: str
    image: np.ndarray
    true_positives: np.ndarray
    tp_scores: np.ndarray
    false_positives: np.ndarray
    fp_scores: np.ndarray
    missed: np.ndarray
    rank: float


def detection_report(out: Path, *, title: str, metrics: dict, cases: list[OverlayCase],
                     operating: dict | None = None, notes: tuple[str, ...] = ()) -> Path:
    """Write ``out/report.html`` (self-contained) and its PNGs (``froc.png``, ``pr.png``, ``overlay_*.png``).

    Args:
        out: The folder (created if missing).
        title: The page's title.
        metrics: What ``detection_metrics`` returns; read: the keys of :data:`METRIC_LABELS`, ``ci``,
            ``per_class`` (each: those keys, ``ci``, ``n_boxes``, ``n_predictions``, ``pr50`` with
            ``recall`` and ``precision``), ``froc`` (``fp_per_image``, ``sensitivity``, ``ci``, ``curve``
            with ``fp_per_image`` and ``sensitivity``), ``n_images``, ``n_boxes``, ``n_predictions``,
            ``bootstrap`` and ``ci_level``.
        cases: One :class:`OverlayCase` per image (at least the ones that may be drawn).
        operating: The shipped operating point, if any: ``threshold`` (score), ``fp_per_image`` (the
            rate it was chosen for), ``iou`` (the overlap the overlays' hits need) and optionally
            ``chosen_on`` (e.g. "validation").
        notes: Extra paragraphs, shown under the title.

    Returns:
        The path of ``report.html``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    curves = [
        Figure(froc_figure(metrics["froc"], out / "froc.png"), "FROC curve",
               "sensitivity (all classes) against false positives per image on a log axis; the dots are the "
               "LUNA16 protocol's points at 1/8 to 8 FP per image, a hit is IoU >= 0.1"),
        Figure(pr_figure(metrics["per_class"], out / "pr.png"), "Precision-recall at IoU 0.5",
               "COCO's interpolated precision at 101 recall points, one line per class; its mean is AP50"),
    ]
    body = [paragraph(text) for text in notes] + [
        paragraph(f"{metrics['n_images']} images, {metrics['n_boxes']} true boxes, {metrics['n_predictions']} "
                  "predicted boxes."),
        section("Metrics", _interval_note(metrics), table(["metric", "value", "CI"], [
            [label, metrics[key], _ci(metrics["ci"][key])] for key, label in METRIC_LABELS.items()])),
        section("Per class", _class_table(metrics["per_class"])),
        section("FROC", table(["false positives per image", "sensitivity", "CI"], [
            [rate, sens, _ci(ci)] for rate, sens, ci in zip(metrics["froc"]["fp_per_image"],
                                                            metrics["froc"]["sensitivity"],
                                                            metrics["froc"]["ci"], strict=True)]),
                figures(curves)),
    ]
    if operating:
        body.append(section("Operating point", paragraph(_operating_text(operating))))
    body.append(section("Best, median and worst images", _overlay_section(cases, out, operating)))
    path = out / "report.html"
    atomic_write_text(path, page(title, "\n".join(body)))
    return path


def froc_figure(froc: dict, path: Path) -> Path:
    """The FROC curve (a step: the best sensitivity with at most x false positives per image) on a log
    axis from 1/16 to 16 FP per image, with the protocol's points marked and labelled."""
    fp = np.asarray(froc["curve"]["fp_per_image"], dtype=float)
    sens = np.asarray(froc["curve"]["sensitivity"], dtype=float)
    low, high = 1 / 16, max(16.0, float(fp.max(initial=0.0)) * 1.1)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.step(np.append(np.maximum(fp, low), high), np.append(sens, sens[-1:] if sens.size else []), where="post",
            lw=2, label="FROC")
    ax.plot(froc["fp_per_image"], froc["sensitivity"], "o", color="black", ms=6, label="protocol points")
    for rate, value in zip(froc["fp_per_image"], froc["sensitivity"], strict=True):
        ax.annotate(fmt(value, 2), (rate, value), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
    ax.set_xscale("log", base=2)
    ticks = [2.0 ** k for k in range(-4, int(np.log2(high)) + 1)]
    ax.set_xticks(ticks, [f"1/{round(1 / t)}" if t < 1 else f"{t:g}" for t in ticks])
    ax.set_xlim(low, high)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("false positives per image")
    ax.set_ylabel("sensitivity")
    ax.set_title("FROC")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def pr_figure(per_class: dict, path: Path) -> Path:
    """Each class's interpolated precision-recall curve at IoU 0.5, labelled with its AP50."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, entry in per_class.items():
        if entry["n_boxes"]:
            ax.step(entry["pr50"]["recall"], entry["pr50"]["precision"], where="post", lw=2,
                    label=f"{name}: AP50 {fmt(entry['ap50'])}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall (IoU 0.5)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, path)


def overlay_figure(case: OverlayCase, path: Path) -> Path:
    """The image with its true positives (green, score), false positives (red, score) and misses (yellow,
    dashed); box edges sit on pixel edges."""
    image, boxes = _plane(case)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(image, cmap=None if image.ndim == 3 else "gray", interpolation="nearest")
    for kind, corners, scores in boxes:
        for (r1, c1, r2, c2), score in zip(corners, scores, strict=True):
            ax.add_patch(Rectangle((c1 - 0.5, r1 - 0.5), c2 - c1, r2 - r1, fill=False, lw=1.5,
                                   edgecolor=_COLOURS[kind], ls="--" if kind == "missed" else "-"))
            if score is not None:
                ax.text(c1 - 0.5, r1 - 1.0, f"{score:.2f}", color=_COLOURS[kind], fontsize=7, va="bottom")
    handles = [Line2D([], [], color=_COLOURS[k], lw=2, ls="--" if k == "missed" else "-", label=label)
               for k, label in (("tp", "true positive"), ("fp", "false positive"), ("missed", "missed"))]
    ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.6)
    ax.set_axis_off()
    return save_figure(fig, path, dpi=100)


def pick_cases(cases: list[OverlayCase]) -> dict[str, OverlayCase]:
    """The worst, median and best ranked images (ties by id; images with a NaN rank left out)."""
    ranked = sorted((c for c in cases if np.isfinite(c.rank)), key=lambda c: (c.rank, c.case_id))
    if not ranked:
        return {}
    return {"best": ranked[-1], "median": ranked[len(ranked) // 2], "worst": ranked[0]}


def _overlay_section(cases: list[OverlayCase], out: Path, operating: dict | None) -> str:
    picks = pick_cases(cases)
    if not picks:
        return paragraph("No image has a true box or a kept prediction, so none is drawn.", note=True)
    where = (f"predictions scoring at least {fmt(operating['threshold'])}, a hit at IoU >= "
             f"{fmt(operating.get('iou', 0.1), 2)}" if operating else "the predictions given")
    figs = [Figure(overlay_figure(case, out / f"overlay_{name}.png"), f"{name} image: {case.case_id}",
                   f"rank {fmt(case.rank)}; {len(case.true_positives)} true positives (green), "
                   f"{len(case.false_positives)} false positives (red), {len(case.missed)} missed (yellow)")
            for name, case in picks.items()]
    return "\n".join([paragraph(f"Images ranked by their rank value (F1 at the operating point); {where}.",
                                note=True), figures(figs)])


def _plane(case: OverlayCase) -> tuple[np.ndarray, list]:
    """The 2D picture to draw and the boxes on it: (kind, (N, 4) corners, scores or Nones)."""
    image = np.asarray(case.image, dtype=np.float64)
    groups = [("tp", case.true_positives, case.tp_scores), ("fp", case.false_positives, case.fp_scores),
              ("missed", case.missed, None)]
    groups = [(k, np.asarray(c, dtype=float).reshape(-1, 6 if image.ndim == 4 else 4), s) for k, c, s in groups]
    if image.ndim == 4:
        everything = np.vstack([c for _, c, _ in groups])
        crossing = [int(((everything[:, 0] <= z) & (z < everything[:, 3])).sum()) for z in range(image.shape[1])]
        z = int(np.argmax(crossing))
        image = image[:, z]
        groups = [(k, c[(c[:, 0] <= z) & (z < c[:, 3])][:, [1, 2, 4, 5]],
                   None if s is None else np.asarray(s)[(c[:, 0] <= z) & (z < c[:, 3])]) for k, c, s in groups]
    lo, hi = np.nanmin(image), np.nanmax(image)
    image = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    picture = np.moveaxis(image, 0, -1) if image.shape[0] == 3 else image[0]
    return picture, [(k, c, [None] * len(c) if s is None else np.asarray(s, dtype=float)) for k, c, s in groups]


def _class_table(per_class: dict) -> str:
    header = ["class", "true boxes", "predictions", *METRIC_LABELS.values()]
    rows = [[name, entry["n_boxes"], entry["n_predictions"],
             *[f"{fmt(entry[key])} {_ci(entry['ci'][key])}" for key in METRIC_LABELS]]
            for name, entry in per_class.items()]
    return table(header, rows)


def _interval_note(metrics: dict) -> str:
    if not metrics["bootstrap"]:
        return paragraph("Confidence intervals were not computed (0 bootstrap resamples).", note=True)
    return paragraph(f"{metrics['ci_level']:.0%} percentile bootstrap intervals over images "
                     f"({metrics['bootstrap']} resamples of the images, with replacement).", note=True)


def _operating_text(operating: dict) -> str:
    text = (f"Predictions scoring at least {fmt(operating['threshold'], 4)} are kept: the lowest threshold "
            f"with at most {fmt(float(operating['fp_per_image']), 3)} false positives per image")
    chosen = operating.get("chosen_on")
    return f"{text} on the {chosen} images." if chosen else f"{text}."


def _ci(interval) -> str:
    low, high = interval
    return "n/a" if not (np.isfinite(low) and np.isfinite(high)) else f"[{low:.3f}, {high:.3f}]"


__all__ = ["METRIC_LABELS", "OverlayCase", "detection_report", "froc_figure", "overlay_figure", "pick_cases",
           "pr_figure"]
