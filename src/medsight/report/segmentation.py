"""The segmentation report: metrics with CIs and overlays of the best, median and worst cases."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from medsight.atomic_write import atomic_write_text  # noqa: E402
from medsight.metric_names import DISTANCE_KEYS  # noqa: E402
from medsight.report.html import Figure, figures, page, paragraph, section, table  # noqa: E402
from medsight.report.plots import save_figure  # noqa: E402


@dataclass
class SegCase:
    """One evaluated case: the image (C, *spatial), its truth and predicted label maps, a score."""

    case_id: str
    image: np.ndarray
    truth: np.ndarray
    pred: np.ndarray
    dice: float


#: How each ``distance_unit`` of :mod:`medsight.segmentation.evaluate` is said in the report.
DISTANCE_UNITS = {
    "mm": "Distances (HD95, ASSD) are in millimetres",
    "px": "Distances (HD95, ASSD) are in pixels: these images carry no physical spacing",
    "mixed": "Distances (HD95, ASSD) are not pooled: some cases are pictures without physical spacing "
             "(pixels) and some carry it (millimetres); each case's distances and unit are in per_case.csv",
}


def write_segmentation_report(
    out: Path, *, title: str, summary: dict, cases: list[SegCase], pixel: dict | None = None,
    uncertainty: dict | None = None, distance_unit: str = "mm",
) -> Path:
    """Write ``out/report.html`` (self-contained) with overlays of the best, median and worst cases.

    Overlays: ground truth outlined in green, the prediction filled in red; for a volume, the
    slice with the most ground-truth foreground. ``pixel`` (binary tasks): the pooled pixel-level
    ``auc``, ``pr_auc``, ``f1``, ``accuracy`` and the ``threshold`` they used. ``distance_unit``:
    ``mm``, ``px`` or ``mixed`` (see :data:`DISTANCE_UNITS`); HD95 and ASSD are labelled with it.
    """
    out = Path(out)
    ranked = sorted(cases, key=lambda c: (np.nan_to_num(c.dice, nan=-1.0), c.case_id))
    picks = {"worst": ranked[0], "median": ranked[len(ranked) // 2], "best": ranked[-1]} if ranked else {}
    figs = [
        Figure(_overlay(case, out / f"overlay_{name}.png"), f"{name} case: {case.case_id}",
               f"mean foreground Dice {case.dice:.3f}; green outline = reference, red = prediction")
        for name, case in picks.items()
    ]
    metric_rows = []
    for name, entry in summary.items():
        for metric, value in entry["metrics"].items():
            metric_rows.append([name, _metric_label(metric, distance_unit), value["mean"],
                                f"{_num(value['ci_low'])} – {_num(value['ci_high'])}"])
    body = "\n".join([
        paragraph(f"{len(cases)} cases. {DISTANCE_UNITS[distance_unit]}; overlap metrics are computed "
                  "inside the region of interest when the data set has one."),
        section("Metrics per class (mean over cases, 95% bootstrap CI)",
                table(["class", "metric", "mean", "95% CI"], metric_rows)),
        _pixel_section(pixel) if pixel else "",
        _uncertainty_section(uncertainty) if uncertainty else "",
        section("Best, median and worst cases", figures(figs)),
        section("Per case", table(["case", "mean foreground Dice"], [[c.case_id, c.dice] for c in ranked])),
    ])
    path = out / "report.html"
    atomic_write_text(path, page(title, body))
    return path


def _metric_label(metric: str, distance_unit: str) -> str:
    return f"{metric} ({distance_unit})" if metric in DISTANCE_KEYS and distance_unit != "mixed" else metric


def _uncertainty_section(uncertainty: dict) -> str:
    """The correlation of case uncertainty with Dice and its ``reading``, which draws a conclusion only where
    its n and p-value allow (:func:`medsight.report.evidence.correlation_reading`)."""
    return section("Uncertainty", paragraph(
        f"Case uncertainty: {uncertainty['measure']}. Spearman rank correlation with the case Dice: "
        f"{_num(uncertainty['spearman_vs_dice'])} (p = {_num(uncertainty['p_value'])}, n = {uncertainty['n']}): "
        f"{uncertainty['reading']}."))


def _pixel_section(pixel: dict) -> str:
    threshold = pixel.get("threshold")
    rows = [["ROC-AUC", pixel["auc"]], ["PR-AUC (average precision)", pixel["pr_auc"]],
            ["F1 (= Dice of the pooled pixels)", pixel["f1"]], ["accuracy", pixel["accuracy"]]]
    note = (f"threshold {threshold:.4f} on the foreground probability, chosen on the validation cases"
            if threshold is not None else "the most probable class of each pixel")
    return section(
        "Pixel level, all cases pooled",
        paragraph(f"Every pixel inside the region of interest is one sample; the masks use {note}."),
        table(["metric", "value"], rows),
    )


def _overlay(case: SegCase, path: Path) -> Path:
    image, truth, pred = case.image[0], case.truth, case.pred
    if image.ndim == 3:
        index = int(np.argmax((truth > 0).reshape(truth.shape[0], -1).sum(axis=1)))
        image, truth, pred = image[index], truth[index], pred[index]
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.imshow(image, cmap="gray")
    ax.imshow(np.ma.masked_where(pred == 0, pred), cmap="autumn", alpha=0.45, interpolation="nearest")
    if truth.any():
        ax.contour(truth > 0, levels=[0.5], colors="lime", linewidths=0.8)
    ax.set_axis_off()
    return save_figure(fig, path, dpi=100)


def _num(value: float | None) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.3f}"
