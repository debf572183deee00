"""A classifier's logits into class probabilities, and the entropy of probabilities, the same way everywhere.

:func:`entropy` is the one predictive entropy: a classifier's per-case uncertainty
(:mod:`medsight.classification.uncertainty`), the triage state's uncertainty feature and a
segmentation's per-voxel uncertainty map (:func:`medsight.inference.segmenter.entropy_map`) all call it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch


def logits_to_probs(logits: torch.Tensor, head: str) -> torch.Tensor:
    """``(N, K)`` logits -> ``(N, K)`` probabilities; a sigmoid head's one logit -> ``[1 - p, p]``.

    Example:
        >>> logits_to_probs(torch.zeros(1, 1), "sigmoid")
        tensor([[0.5000, 0.5000]])
    """
    logits = logits.float()
    if head == "sigmoid":
        positive = torch.sigmoid(logits.reshape(-1, 1))
        return torch.cat([1 - positive, positive], dim=1)
    return torch.softmax(logits, dim=1)


def entropy(probs: npt.ArrayLike, *, axis: int, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
    """Entropy in nats of the probability distributions along ``axis`` (``0 log 0 = 0``).

    ``probs`` is clipped to [0, 1] and computed in ``dtype``: float64 for a few cases' probabilities,
    the maps' own float32 for a segmentation's ``(K, *spatial)`` volume, which float64 would double.

    Example:
        >>> entropy(np.array([[1.0, 0.0], [0.5, 0.5]]), axis=1)
        array([0.        , 0.69314718])
    """
    p = np.clip(np.asarray(probs, dtype=dtype), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, -p * np.log(p), 0.0).sum(axis=axis)
