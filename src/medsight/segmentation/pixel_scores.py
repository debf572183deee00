"""Pooled pixel-level scores of a binary segmenter: ROC-AUC, PR-AUC and the best threshold.

Every pixel inside the region of interest of every case is one sample. The foreground
probabilities are kept as two fine histograms (positives, negatives) instead of a list of
all pixels, so memory stays constant however many volumes are scored; with 10,000 bins the
AUCs agree with the exact ones to about 1e-4.

Example:
    >>> scores = PixelScores()
    >>> for prob, truth, fov in cases:
    ...     scores.add(prob, truth, roi=fov)
    >>> scores.roc_auc(), scores.pr_auc(), scores.best_threshold()
"""

from __future__ import annotations

import numpy as np

from medsight.errors import InvalidImageError


class PixelScores:
    """Histograms of foreground probabilities of positive and negative pixels, pooled over cases."""

    def __init__(self, bins: int = 10_000) -> None:
        self.bins = bins
        self.positive = np.zeros(bins, dtype=np.int64)
        self.negative = np.zeros(bins, dtype=np.int64)

    def add(self, prob: np.ndarray, truth: np.ndarray, roi: np.ndarray | None = None) -> None:
        """Pool one case: ``prob`` in ``[0, 1]``, ``truth`` non-zero on the foreground."""
        prob, truth = np.asarray(prob), np.asarray(truth) != 0
        if prob.shape != truth.shape or (roi is not None and np.shape(roi) != truth.shape):
            raise InvalidImageError(
                "pixel scores", f"shapes differ: prob {prob.shape}, truth {truth.shape}",
                "pass the probability, the reference and the ROI on one grid",
            )
        if roi is not None:
            inside = np.asarray(roi, dtype=bool)
            prob, truth = prob[inside], truth[inside]
        index = np.clip((prob * self.bins).astype(np.int64), 0, self.bins - 1)
        self.positive += np.bincount(index[truth], minlength=self.bins)
        self.negative += np.bincount(index[~truth], minlength=self.bins)

    @property
    def defined(self) -> bool:
        return bool(self.positive.sum() and self.negative.sum())

    def roc_auc(self) -> float:
        """P(score of a positive > score of a negative), ties counted half; NaN with one class."""
        if not self.defined:
            return float("nan")
        negatives_below = np.cumsum(self.negative) - self.negative
        pairs = (self.positive * negatives_below).sum() + 0.5 * (self.positive * self.negative).sum()
        return float(pairs / (self.positive.sum() * self.negative.sum()))

    def pr_auc(self) -> float:
        """Average precision: precision at each threshold weighted by the recall it adds."""
        if not self.defined:
            return float("nan")
        tp, fp = self._above()
        precision = tp / np.maximum(tp + fp, 1)
        recall_gain = self.positive[::-1] / self.positive.sum()
        return float((precision * recall_gain).sum())

    def best_threshold(self) -> tuple[float, float]:
        """The threshold (a bin's lower edge) that maximises the pooled Dice (= F1), and that Dice."""
        if not self.defined:
            return 0.5, float("nan")
        tp, fp = self._above()
        dice = 2 * tp / np.maximum(2 * tp + fp + (self.positive.sum() - tp), 1)
        best = int(np.argmax(dice))
        return float((self.bins - 1 - best) / self.bins), float(dice[best])

    def _above(self) -> tuple[np.ndarray, np.ndarray]:
        """True and false positives when thresholding at each bin's lower edge, from the top bin down."""
        return np.cumsum(self.positive[::-1]).astype(np.float64), np.cumsum(self.negative[::-1]).astype(np.float64)
