"""What a fingerprint keeps of an image's pixels: whether it is colour, and a seeded draw of its values.

Both fingerprints (classification's and detection's) summarise the decoded images with these, so "colour" and
the intensity percentiles mean the same thing for every task and for the bundle's domain record built from them.

Example:
    >>> is_colour(np.stack([grey, grey, grey]))   # grey stored as RGB
    False
    >>> draw_values(image.reshape(-1), np.random.default_rng([1234, 0])).size <= VALUES_PER_IMAGE
    True
"""

from __future__ import annotations

import numpy as np

#: values kept per image for the intensity percentiles (drawn with a fixed seed)
VALUES_PER_IMAGE = 4096
#: an image with channels is colour when its channels differ, on average, by more than this share of its range
COLOUR_SHARE = 0.01


def is_colour(array: np.ndarray) -> bool:
    """True for a ``(C, *spatial)`` image of 3 or more channels whose first three really differ (not grey stored
    as RGB): their mean per-pixel spread is above ``COLOUR_SHARE`` of the image's range."""
    if array.shape[0] < 3:
        return False
    rgb = array[:3].astype(np.float32)
    spread = float(np.mean(rgb.max(axis=0) - rgb.min(axis=0)))
    value_range = float(rgb.max() - rgb.min())
    return value_range > 0 and spread > COLOUR_SHARE * value_range


def draw_values(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """At most ``VALUES_PER_IMAGE`` of the flat ``values`` (seeded), with the extremes always kept (float32)."""
    if values.size <= VALUES_PER_IMAGE:
        return values.astype(np.float32)
    pick = rng.choice(values.size, VALUES_PER_IMAGE - 2, replace=False)
    return np.concatenate([values[pick], [values.min(), values.max()]]).astype(np.float32)


def value_summary(values: np.ndarray, *, unit: str, region: str) -> dict:
    """The intensity entry of a fingerprint: ``unit``, ``region``, min, max, mean, std, median, p00_5, p99_5."""
    values = values.astype(np.float64)
    return {
        "unit": unit,
        "region": region,
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "p00_5": float(np.percentile(values, 0.5)),
        "p99_5": float(np.percentile(values, 99.5)),
    }
