"""Deterministic preprocessing (saved in the bundle) and random batch augmentation."""

from medsight.transforms.augment import AugmentParams, BatchAugment
from medsight.transforms.intensity import clahe, denoise, normalize
from medsight.transforms.preprocess import preprocess, resize

__all__ = ["AugmentParams", "BatchAugment", "clahe", "denoise", "normalize", "preprocess", "resize"]
