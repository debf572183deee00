"""From probabilities to a label map on disk, in the geometry of the source image.

Example:
    >>> labels = keep_largest_component(probs_to_labels(probs, thresholds={1: 0.7}))
    >>> write_mask(labels, sample, Path("liver_mask.nii.gz"))
    PosixPath('liver_mask.nii.gz')
    >>> write_probability_maps(probs, sample, Path("liver_mask.nii.gz"), ["background", "liver"])
    {'liver': PosixPath('liver_prob_liver.nii.gz')}
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from medsight.errors import ConfigError, InvalidImageError
from medsight.io.image import write_png
from medsight.io.nifti import write_nifti
from medsight.sample import Sample

MASK_SUFFIXES = (".nii", ".nii.gz", ".png")


def probs_to_labels(probs: np.ndarray, *, thresholds: dict[int, float] | None = None) -> np.ndarray:
    """Argmax over the class axis of ``(K, *spatial)`` probabilities.

    With ``thresholds``: in a binary task (2 classes) the foreground is ``probs[1] >= t``, so a
    threshold below 0.5 adds voxels and one above removes them (the operating point chosen on
    validation). With more classes, a voxel whose argmax is class ``c`` keeps it only where
    ``probs[c] >= thresholds[c]``; elsewhere it becomes background (0).

    Raises:
        ConfigError: a threshold for a class that is not in ``probs``.
    """
    dtype = np.uint8 if probs.shape[0] <= 256 else np.int32
    for cls in thresholds or {}:
        if not 0 < cls < probs.shape[0]:
            raise ConfigError(
                "thresholds",
                f"class {cls} is not a foreground class of the {probs.shape[0]}-class output",
                f"use class indices 1..{probs.shape[0] - 1}",
            )
    if probs.shape[0] == 2 and thresholds:
        return (probs[1] >= thresholds[1]).astype(dtype)
    labels = np.argmax(probs, axis=0).astype(dtype)
    for cls, threshold in (thresholds or {}).items():
        labels[(labels == cls) & (probs[cls] < threshold)] = 0
    return labels


_EDGE = 1e-7  # probabilities are clipped to [_EDGE, 1 - _EDGE] before their logit


def median_logit(foreground: np.ndarray) -> float:
    """The logit of the median foreground probability over every voxel of one image."""
    median = float(np.clip(np.median(foreground), _EDGE, 1.0 - _EDGE))
    return float(np.log(median) - np.log1p(-median))


def centre_foreground(foreground: np.ndarray, level: float) -> np.ndarray:
    """One image's foreground probabilities with their logits shifted so that their median is ``level``."""
    foreground = np.clip(foreground.astype(np.float32), _EDGE, 1.0 - _EDGE)
    logits = np.log(foreground) - np.log1p(-foreground) + np.float32(level - median_logit(foreground))
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


def require_binary(classes: int, where: str) -> None:
    """``segment.centre_logits`` needs exactly 2 classes (background and one foreground): a ConfigError
    saying ``where`` how many there are otherwise."""
    if classes != 2:
        raise ConfigError(
            "segment.centre_logits",
            f"centres a binary task's foreground logits, but {where} {classes} classes (background included)",
            "set segment.centre_logits=false for a task with more than one foreground class",
        )


def centre_logits(probs: np.ndarray, level: float) -> np.ndarray:
    """Shift a binary ``(2, *spatial)`` probability map's foreground logits so that their median is ``level``.

    One image-wide shift: the voxels keep their order within the image (its AUC is unchanged), but
    an image whose probabilities all run high or low (a dim or blurred photograph) comes into line
    with the others, so that one threshold, and a ranking pooled over images, mean the same on
    every image. The median voxel must be background (foreground under half of the image).

    Raises:
        ConfigError: ``probs`` does not have exactly 2 classes.
    """
    require_binary(probs.shape[0], "the output has")
    foreground = centre_foreground(probs[1], level)
    return np.stack([1.0 - foreground, foreground])


def keep_largest_component(labels: np.ndarray, classes: Sequence[int] | None = None) -> np.ndarray:
    """Keep only the largest connected region of each class (full connectivity); the rest becomes 0.

    Args:
        labels: a spatial label map (no channel axis).
        classes: the classes to clean; default every non-zero label present.
    """
    out = labels.copy()
    structure = ndimage.generate_binary_structure(labels.ndim, labels.ndim)
    for cls in np.unique(labels) if classes is None else classes:
        if cls == 0:
            continue
        components, count = ndimage.label(labels == cls, structure=structure)
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[(components > 0) & (components != np.argmax(sizes) + 1)] = 0
    return out


def write_mask(labels: np.ndarray, sample_like: Sample, path: Path) -> Path:
    """Write a label map so it overlays ``sample_like`` voxel for voxel.

    NIfTI (``.nii``, ``.nii.gz``) gets the sample's own affine. PNG (2D only) gets 0/255
    for a binary mask and the label values otherwise.

    Raises:
        InvalidImageError: ``labels`` does not have the sample's spatial shape, or a PNG
            is asked for a volume or labels above 255.
        ConfigError: any other suffix.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.shape != sample_like.spatial_shape:
        raise InvalidImageError(
            path,
            f"the labels have shape {labels.shape} but the image is {sample_like.spatial_shape}",
            "pass the prediction before any resampling or cropping, without the channel axis",
        )
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        dtype = np.uint8 if labels.max(initial=0) <= 255 else np.int16
        return write_nifti(labels.astype(dtype), sample_like.affine, path)
    if name.endswith(".png"):
        if labels.ndim != 2 or labels.max(initial=0) > 255:
            raise InvalidImageError(
                path,
                f"a PNG mask holds a 2D map with labels 0..255, got shape {labels.shape}",
                "write volumes or many labels as .nii.gz",
            )
        binary = labels.max(initial=0) <= 1
        return write_png(labels > 0 if binary else labels.astype(np.uint8), path)
    raise ConfigError(
        path,
        f"cannot write a mask as {path.suffix or '(no suffix)'}",
        f"use one of {', '.join(MASK_SUFFIXES)}",
    )


def write_probability_maps(
    probs: np.ndarray, sample_like: Sample, mask: Path, label_names: Sequence[str]
) -> dict[str, Path]:
    """Next to ``mask`` (``<stem>_mask.png`` / ``.nii.gz``), each foreground class's probability map.

    ``<stem>_prob_<class>.png`` is a 16-bit grey PNG holding ``round(p * 65535)`` (a PNG mask),
    ``<stem>_prob_<class>.nii.gz`` float32 probabilities with the sample's affine (a NIfTI mask);
    either overlays the image voxel for voxel. Class names are made file-safe (``left kidney``
    -> ``left_kidney``).

    Returns:
        ``{class name: path}`` for classes 1..K-1.

    Raises:
        InvalidImageError: ``probs`` is not ``(len(label_names), *sample_like.spatial_shape)``.
    """
    probs = np.asarray(probs)
    if probs.shape != (len(label_names), *sample_like.spatial_shape):
        raise InvalidImageError(
            mask, f"the probabilities have shape {probs.shape}, not "
            f"{(len(label_names), *sample_like.spatial_shape)} (classes, image)",
            "pass the (K, *spatial) probabilities on the image's own grid",
        )
    written = {}
    for k, name in enumerate(label_names[1:], start=1):
        path = beside_mask(mask, f"prob_{re.sub(r'[^A-Za-z0-9_-]+', '_', name)}")
        p = np.clip(probs[k], 0.0, 1.0)
        written[name] = write_png(np.round(p * 65535).astype(np.uint16), path) if path.suffix == ".png" else (
            write_nifti(p.astype(np.float32), sample_like.affine, path))
    return written


def beside_mask(mask: Path, tag: str, suffix: str | None = None) -> Path:
    """``<stem>_<tag>.png`` (or ``.nii.gz``, or ``suffix``) next to ``<stem>_mask.png`` (or ``.nii.gz``)."""
    mask = Path(mask)
    own = ".png" if mask.name.endswith(".png") else ".nii.gz"
    return mask.with_name(f"{mask.name.removesuffix(own).removesuffix('_mask')}_{tag}{suffix or own}")
