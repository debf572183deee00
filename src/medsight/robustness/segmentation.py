"""Robustness of a segmentation bundle: Dice and pooled pixel AUC / accuracy under each corruption.

The same corruptions and severities as for classifiers (:mod:`medsight.robustness.corruptions`),
applied to the decoded image before the bundle's preprocessing; the masks are predicted by the
bundle's :class:`~medsight.inference.segmenter.Segmenter` (its thresholds, TTA and
postprocessing) and scored inside the region of interest. Adversarial attacks are not run on
segmenters.

Example:
    >>> rows = segmentation_rows(Segmenter("runs/drive/model"), cases, kinds=["noise"], severities=[1, 3, 5])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medsight.robustness import corruptions
from medsight.sample import Sample
from medsight.segmentation.pixel_scores import PixelScores


def segmentation_rows(segmenter, cases: list[tuple], *, kinds: Sequence[str], severities: Sequence[int],
                      seed: int = 0, progress: bool = False) -> list[dict]:
    """One row per (kind, severity), the clean row first: ``dice`` (mean over cases of the mean foreground
    Dice), ``auc`` and ``accuracy`` (pixels pooled inside the ROI; AUC for binary tasks only)."""
    from medsight.progress import track

    rows = [{"kind": "clean", "severity": 0, **_score(segmenter, [(s, lab, roi) for _, s, lab, roi in cases])}]
    jobs = [(k, s) for k in kinds for s in severities]
    for kind, severity in track(jobs, description="robustness", enabled=progress):
        code = corruptions.KINDS.index(kind)
        corrupted = [
            (Sample(corruptions.corrupt(sample.array, kind, severity, np.random.default_rng((seed, code, severity, i))),
                    spacing=sample.spacing, affine=sample.affine, meta=sample.meta), labels, roi)
            for i, (_, sample, labels, roi) in enumerate(cases)
        ]
        rows.append({"kind": kind, "severity": severity, **_score(segmenter, corrupted)})
    return rows


def _score(segmenter, cases: list[tuple]) -> dict[str, float]:
    foreground = range(1, len(segmenter.label_names))
    pixels, dice, correct, total = PixelScores(), [], 0, 0
    for sample, truth, roi in cases:
        probs = segmenter.probabilities(sample)
        pred = segmenter.labels_from(probs)
        inside = np.ones(truth.shape, bool) if roi is None else np.asarray(roi, bool)
        per_class = []
        for k in foreground:
            p, t = (pred == k) & inside, (truth == k) & inside
            per_class.append(1.0 if not p.any() and not t.any() else 2 * (p & t).sum() / (p.sum() + t.sum()))
        dice.append(float(np.mean(per_class)))
        correct += int((pred[inside] == truth[inside]).sum())
        total += int(inside.sum())
        if len(segmenter.label_names) == 2:
            pixels.add(probs[1], truth, roi=inside)
    return {"dice": float(np.mean(dice)), "auc": pixels.roc_auc() if pixels.defined else float("nan"),
            "accuracy": correct / max(total, 1)}
