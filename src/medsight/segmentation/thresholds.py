"""The operating point a segmentation bundle keeps: per-class thresholds, and the centring level.

Training (on its validation cases) and the fold ensemble (on the out-of-fold predictions of every
case) choose them the same way: :func:`centring_level` first (``segment.centre_logits``), then
:func:`choose_thresholds` on the centred probabilities.

Example:
    >>> level, centred = centring_level(cfg, probs)  # probs(): (probabilities, labels, roi) per case
    >>> thresholds, note = choose_thresholds(cfg, 2, centred, "the 5 validation cases")
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medsight.config import RunConfig
from medsight.inference.postprocess import centre_foreground, median_logit
from medsight.segmentation.pixel_scores import PixelScores


def choose_thresholds(cfg: RunConfig, n_classes: int, foreground_probs, cases: str) -> tuple[dict[int, float], str]:
    """The per-class thresholds a bundle keeps, and how they were chosen: ``segment.thresholds`` when
    given; for binary tasks (``segment.tune_threshold``) the one maximising the pooled Dice of
    ``foreground_probs()``, an iterable of ``(foreground probability, labels, roi)`` over ``cases``
    (their description); otherwise none (argmax)."""
    if cfg.segment.thresholds:
        return dict(cfg.segment.thresholds), "given in segment.thresholds"
    if n_classes != 2 or not cfg.segment.tune_threshold:
        return {}, "the most probable class of each voxel"
    scores = PixelScores()
    for prob, labels, roi in foreground_probs():
        scores.add(prob, labels, roi=roi)
    threshold, dice = scores.best_threshold()
    return {1: threshold}, (f"foreground probability >= {threshold:.4f}, which maximises the pooled Dice "
                            f"({dice:.4f}) of {cases}")


def centring_level(cfg: RunConfig, probs) -> tuple[float | None, Any]:
    """``(level, centred)`` for the threshold: ``probs()`` yields ``(probabilities, labels, roi)`` per case.

    With ``segment.centre_logits``, ``level`` is the mean over the cases of their median foreground
    logit, and ``centred()`` yields ``(foreground probability, labels, roi)`` with each case centred
    at it (the probabilities are kept in memory, as float16, for the second pass). Otherwise
    ``level`` is None and ``centred()`` yields the foreground probabilities as they come.
    """
    if not cfg.segment.centre_logits:
        return None, lambda: ((p[1], labels, roi) for p, labels, roi in probs())
    kept = [(p[1].astype(np.float16), labels, roi) for p, labels, roi in probs()]
    level = float(np.mean([median_logit(foreground) for foreground, _, _ in kept]))
    return level, lambda: ((centre_foreground(foreground, level), labels, roi) for foreground, labels, roi in kept)
