"""The evaluation and cross-validation reports, written for a clinician reader.

Both take the dicts that :mod:`medsight.classification.evaluate` writes to JSON, so the numbers in
the report are exactly the numbers in ``metrics.json`` / ``cv_metrics.json``.

Example:
    >>> text = render_evaluation(metrics, [Figure(Path("roc.png"), "ROC curve", "...")])
"""

from __future__ import annotations

from medsight.metric_names import DISTANCE_KEYS
from medsight.report.html import Figure, figures, fmt, key_values, page, paragraph, section, table

HEADLINE_ORDER = (
    "auc",
    "sensitivity",
    "specificity",
    "precision",
    "npv",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "pr_auc",
)
DISPLAY_NAMES = {
    "auc": "ROC AUC",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "precision": "Precision (PPV)",
    "npv": "NPV",
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "f1": "F1 score",
    "pr_auc": "PR AUC (average precision)",
    "ece": "Calibration error (ECE)",
    "ece_uncalibrated": "ECE before calibration",
    "threshold": "Threshold",
}


def render_evaluation(metrics: dict, figs: list[Figure]) -> str:
    """The evaluation report: headline metrics with CIs, threshold, cases per class, plots, extras."""
    names = metrics["label_names"]
    binary = len(names) == 2
    ci_pct = f"{metrics['ci_level']:.0%}"
    rows = []
    for key in HEADLINE_ORDER:
        entry = metrics["metrics"][key]
        rows.append([DISPLAY_NAMES[key], entry["value"], _interval(entry), _meaning(key, names)])
    headline = table(["metric", "value", f"{ci_pct} CI", "what it means"], rows)
    ci_note = (
        f"Confidence intervals: percentile bootstrap over cases ({metrics['bootstrap']} resamples), "
        "threshold held fixed. n/a means undefined for these data (for example only one class "
        "present, or no case predicted positive)."
        if metrics["bootstrap"]
        else "Confidence intervals were not computed (bootstrap resamples set to 0)."
    )
    if binary:
        rule = (
            f"A case is called '{names[1]}' when its predicted probability of '{names[1]}' is at least "
            f"{fmt(metrics['threshold'], 4)}. How it was chosen: {metrics['threshold_note']}."
        )
    else:
        rule = (
            f"The predicted class is the most probable one ({metrics['threshold_note']}). Sensitivity, "
            "specificity, precision, NPV and F1 are macro averages of the one-vs-rest values over classes."
        )
    counts = metrics["n_per_class"]
    class_rows = [[name, count, count / metrics["n"]] for name, count in counts.items()]
    class_rows.append(["all", metrics["n"], 1.0])
    body = [
        paragraph(f"Split: {metrics['split']}. Cases: {metrics['n']}."),
        section("Headline metrics", headline, paragraph(ci_note, note=True)),
        section("Operating threshold", paragraph(rule)),
        section("Cases per class", table(["class", "cases", "fraction"], class_rows)),
        section("Calibration", paragraph(_calibration_text(metrics))),
        *_selective_section(metrics),
        section("Plots", figures(figs), *(paragraph(text, note=True) for text in metrics.get("notes", []))),
    ]
    if metrics.get("extra"):
        body.append(section("About this evaluation", key_values(metrics["extra"])))
    return page(metrics["title"], "\n".join(body))


def _calibration_text(metrics: dict) -> str:
    """The ECE, whether temperature scaling was applied and why, and whether it made the figures worse."""
    text = (
        f"Expected calibration error ({metrics['calibration']['mode']}): {fmt(metrics['ece'])}. "
        "0 means the predicted probabilities match the observed frequencies; 0.1 means they are "
        "off by 10 percentage points on average."
    )
    choice = metrics["calibration"].get("temperature_choice")
    if choice:
        text += f" Temperature scaling on the validation split (n = {choice['n']}): {choice['reason']}."
        text += _validation_figures(choice)
    temperature, before = metrics.get("temperature"), metrics.get("ece_uncalibrated")
    if temperature is None:
        return text + " The probabilities are the network's own (no temperature scaling)."
    side = "softens them" if temperature > 1 else "sharpens them"
    text += (
        f" The probabilities are calibrated by temperature scaling: every logit is divided by T = "
        f"{fmt(temperature, 3)}, fitted on the validation split, which {side} without changing which class "
        f"is most probable. Before scaling the ECE was {fmt(before)}."
    )
    if before is not None and metrics["ece"] > before:
        text += (f" On these {metrics['n']} cases temperature scaling made the calibration error worse "
                 f"({fmt(before)} before, {fmt(metrics['ece'])} after).")
    return text


def _validation_figures(choice: dict) -> str:
    """The validation ECE with and without the fitted temperature, and which figures it made worse (the
    held-out NLL is in the reason already)."""
    if choice.get("fitted") is None:
        return ""
    nll, ece = (choice["nll_before"], choice["nll_after"]), (choice["ece_before"], choice["ece_after"])
    worse = [name for name, (old, new) in (("NLL", nll), ("ECE", ece)) if new > old]
    return (
        f" With T = {fmt(choice['fitted'], 3)} the validation ECE went from {fmt(ece[0])} to {fmt(ece[1])}"
        + (f": it made the validation {' and '.join(worse)} worse." if worse else ".")
    )


def _selective_section(metrics: dict) -> list[str]:
    curve = metrics.get("selective")
    if not curve:
        return []
    how = {"tta": "the mean of {p} flipped copies of each image (test-time augmentation)",
           "mc_dropout": "{p} passes with dropout switched on (Monte Carlo dropout)",
           "none": "the single prediction"}.get(curve.get("method"), "the given values")
    rows = [[f"{float(c):.0%}", value] for c, value in curve["at_coverage"].items()]
    note = (
        f"Predictive entropy of {how.format(p=curve.get('passes'))} ranks the cases from most to least certain; "
        "the model answers only the most certain fraction (the coverage) and refers the rest. Area under "
        f"the accuracy-coverage curve: {fmt(curve['area'])} (higher is better; the accuracy on all cases is "
        f"{fmt(curve['accuracy_at_full'])})."
    )
    return [section("Uncertainty: selective prediction", paragraph(note),
                    table(["coverage (most certain cases kept)", "accuracy"], rows))]


def render_cv(summary: dict) -> str:
    """The cross-validation report: one row per fold, then mean and standard deviation."""
    keys = list(summary["metrics"])
    unit = summary.get("distance_unit")
    header = ["fold", "cases"] + [_cv_label(k, unit) for k in keys]
    rows: list[list[object]] = []
    for i, n in enumerate(summary["n_per_fold"]):
        rows.append([f"fold {i}", n] + [summary["metrics"][k]["per_fold"][i] for k in keys])
    rows.append(
        ["mean ± sd", sum(n for n in summary["n_per_fold"] if n is not None)]
        + [f"{fmt(summary['metrics'][k]['mean'])} ± {fmt(summary['metrics'][k]['sd'])}" for k in keys]
    )
    note = (
        f"{summary['folds']} folds; each fold's model was evaluated on its own held-out cases. The standard "
        "deviation (n - 1 denominator) shows how much the result depends on the split; n/a values are "
        "left out of the mean."
    )
    if unit == "mixed":
        note += (" HD95 and ASSD have no mean: some folds measured them in pixels (pictures without physical "
                 "spacing) and some in millimetres.")
    body = section("Metrics per fold", table(header, rows), paragraph(note, note=True))
    return page(summary["title"], body)


def _cv_label(key: str, distance_unit: str | None) -> str:
    """A column name; HD95 and ASSD carry their unit (``px`` or ``mm``) when the folds agree on one."""
    name = DISPLAY_NAMES.get(key, key)
    return f"{name} ({distance_unit})" if key in DISTANCE_KEYS and distance_unit in ("px", "mm") else name


def _interval(entry: dict) -> str:
    low, high = entry.get("ci_low"), entry.get("ci_high")
    if low is None or high is None or low != low or high != high:
        return "n/a"
    return f"{fmt(low)} – {fmt(high)}"


def _meaning(key: str, names: list[str]) -> str:
    if len(names) != 2:
        positive, other = "a class", "not that class"
    else:
        positive, other = f"'{names[1]}'", f"'{names[0]}'"
    return {
        "auc": f"chance that a random {positive} case scores above a random {other} case; "
        "0.5 is guessing, 1 is perfect; does not depend on the threshold",
        "sensitivity": f"of the cases that are {positive}, the fraction the model calls {positive}",
        "specificity": f"of the cases that are {other}, the fraction the model calls {other}",
        "precision": f"of the cases the model calls {positive}, the fraction that truly are",
        "npv": f"of the cases the model calls {other}, the fraction that truly are",
        "accuracy": "fraction of all cases classified correctly; misleading when classes are imbalanced",
        "balanced_accuracy": "mean sensitivity over the classes; not inflated by imbalance",
        "f1": "harmonic mean of sensitivity and precision",
        "pr_auc": "precision averaged over all thresholds; compare with the fraction of positive cases",
    }[key]
