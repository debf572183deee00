"""The data set fingerprint a segmentation plan is derived from (nnU-Net style).

A fingerprint summarises a labelled data set in a few numbers: the voxel spacings and
shapes of every case, their medians, the intensity distribution inside the foreground
(``label > 0``) and how often each label occurs. :func:`medsight.segmentation.plan.make_plan`
turns it into target spacing, normalisation, patch size and batch size.

Example:
    >>> img = Sample(np.arange(16, dtype=np.float32).reshape(1, 4, 4), spacing=(1.0, 1.0))
    >>> lab = (np.arange(16).reshape(4, 4) >= 8).astype(np.uint8)
    >>> fp = fingerprint([(img, lab)], modality="CT")
    >>> fp["median_shape"], fp["labels"], fp["foreground_intensity"][0]["median"]
    ([4.0, 4.0], [0, 1], 11.5)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

from medsight.errors import DatasetError, InvalidImageError
from medsight.sample import Sample

FOREGROUND_SAMPLES_PER_CASE = 10_000
SEED = 1234


def fingerprint(cases: Iterable[tuple[Sample, np.ndarray]], *, modality: str | None = None) -> dict:
    """Summarise labelled cases into the JSON-able fingerprint a plan is made from.

    Args:
        cases: ``(image, label_map)`` pairs; the label map is an integer array with the
            image's spatial shape (no channel axis).
        modality: e.g. ``"CT"`` or ``"MR"``; default: ``meta["modality"]`` of the first
            case, else ``"other"``.

    Returns:
        ``n_cases``, ``spatial_dims``, ``n_channels``, ``spacings``, ``shapes``,
        ``median_spacing``, ``median_shape``, ``modality``, ``foreground_intensity`` (one
        dict per channel: ``mean``, ``std``, ``median``, ``percentile_00_5``,
        ``percentile_99_5``, from at most 10,000 foreground voxels per case drawn with a
        fixed seed), ``class_frequencies`` (``{"label": fraction of all voxels}``) and
        ``labels`` (sorted labels present).

    Raises:
        InvalidImageError: a label map whose shape differs from its image, a spacing of
            the wrong length, or cases of mixed dimensionality or channel count.
        DatasetError: no cases, or no foreground voxel in any case.
    """
    rng = np.random.default_rng(SEED)
    spacings: list[list[float]] = []
    shapes: list[list[int]] = []
    foreground: list[list[np.ndarray]] = []
    counts: Counter[int] = Counter()
    found_modality: str | None = None
    for index, (image, label) in enumerate(cases):
        where = image.meta.get("path", f"case {index}")
        label = np.asarray(label)
        _check_case(image, label, where, shapes, len(foreground))
        if found_modality is None and image.meta.get("modality"):
            found_modality = str(image.meta["modality"])
        spacings.append([float(s) for s in image.spacing])
        shapes.append(list(image.spatial_shape))
        values, n_voxels = np.unique(label, return_counts=True)
        counts.update({int(v): int(n) for v, n in zip(values, n_voxels, strict=True)})
        voxels = image.array[:, label > 0]
        if voxels.shape[1] > FOREGROUND_SAMPLES_PER_CASE:
            pick = rng.choice(voxels.shape[1], FOREGROUND_SAMPLES_PER_CASE, replace=False)
            voxels = voxels[:, np.sort(pick)]
        if not foreground:
            foreground = [[] for _ in range(image.channels)]
        for channel, values_c in zip(foreground, voxels, strict=True):
            channel.append(values_c.astype(np.float64))
    if not shapes:
        raise DatasetError(None, "fingerprint got no cases", "pass at least one (image, label) pair")
    total = sum(counts.values())
    return {
        "n_cases": len(shapes),
        "spatial_dims": len(shapes[0]),
        "n_channels": len(foreground),
        "spacings": spacings,
        "shapes": shapes,
        "median_spacing": [float(v) for v in np.median(spacings, axis=0)],
        "median_shape": [float(v) for v in np.median(shapes, axis=0)],
        "modality": modality or found_modality or "other",
        "foreground_intensity": [_intensity_stats(np.concatenate(c)) for c in foreground],
        "class_frequencies": {str(k): counts[k] / total for k in sorted(counts)},
        "labels": sorted(counts),
    }


def _check_case(image: Sample, label: np.ndarray, where: str, shapes: list, n_channels: int) -> None:
    """Raise InvalidImageError when a case does not fit the fingerprint's contract."""
    if label.shape != image.spatial_shape:
        raise InvalidImageError(
            where,
            f"label map shape {label.shape} differs from the image's spatial shape {image.spatial_shape}",
            "pass the label map that belongs to this image, without a channel axis",
        )
    if len(image.spacing) != image.spatial_dims:
        raise InvalidImageError(
            where,
            f"spacing {tuple(image.spacing)} has {len(image.spacing)} values for {image.spatial_dims} spatial axes",
            "give one spacing per spatial axis",
        )
    if shapes and (len(shapes[0]) != image.spatial_dims or n_channels != image.channels):
        raise InvalidImageError(
            where,
            f"has {image.spatial_dims} spatial axes and {image.channels} channels, unlike the first case "
            f"({len(shapes[0])} axes, {n_channels} channels)",
            "fingerprint 2D and 3D data (or different channel sets) separately",
        )


def _intensity_stats(values: np.ndarray) -> dict[str, float]:
    """Mean, std, median and the 0.5 / 99.5 percentiles of foreground intensities."""
    if values.size == 0:
        raise DatasetError(
            None,
            "no foreground voxel (label > 0) in any case",
            "check that the label maps are not empty and belong to the images",
        )
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "median": float(np.median(values)),
        "percentile_00_5": float(np.percentile(values, 0.5)),
        "percentile_99_5": float(np.percentile(values, 99.5)),
    }
