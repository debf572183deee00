"""Deterministic preprocessing (saved in the bundle), fixed image operations, and random batch augmentation.

:mod:`medsight.transforms.fixed` holds the fixed operations (blur, contrast, gamma, brightness,
noise, flips, rotation and affine warps); :class:`BatchAugment` samples their parameters.
"""

from medsight.transforms.augment import AugmentParams, BatchAugment
from medsight.transforms.fixed import (
    add_gaussian_noise,
    adjust_gamma,
    gaussian_blur,
    rotate,
    scale_contrast,
    shift_brightness,
)
from medsight.transforms.intensity import clahe, denoise, normalize
from medsight.transforms.preprocess import preprocess, resize

__all__ = [
    "AugmentParams", "BatchAugment", "add_gaussian_noise", "adjust_gamma", "clahe", "denoise", "gaussian_blur",
    "normalize", "preprocess", "resize", "rotate", "scale_contrast", "shift_brightness",
]
