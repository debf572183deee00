"""How uncertain a segmentation is: a per-voxel map and one number per case.

The segmenter writes the map next to each mask and reports the case number (``medsight predict``, the
service); evaluation relates the case number to the case Dice. Both come from the one predictive entropy,
:func:`medsight.models.heads.entropy`.

Example:
    >>> entropy_map(np.array([[0.5, 1.0], [0.5, 0.0]]))      # (K=2, 2 pixels)
    array([1., 0.], dtype=float32)
"""

from __future__ import annotations

import numpy as np

from medsight.models.heads import entropy


def entropy_map(probs: np.ndarray) -> np.ndarray:
    """Per-voxel predictive entropy of ``(K, *spatial)`` probabilities, scaled to [0, 1] by log K.

    Computed in the maps' own precision (float32 for a segmenter's probabilities)."""
    return (entropy(probs, axis=0, dtype=probs.dtype) / np.log(probs.shape[0])).astype(np.float32)


def case_uncertainty(entropy_per_voxel: np.ndarray, labels: np.ndarray) -> float:
    """One number per case: the mean entropy over the predicted foreground (the whole image when it is empty)."""
    region = labels > 0
    return float(entropy_per_voxel[region].mean() if region.any() else entropy_per_voxel.mean())
