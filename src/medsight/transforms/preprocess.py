"""Deterministic preprocessing: a pure function of ``(Sample, PreprocessConfig)``.

The same :class:`~medsight.config.PreprocessConfig` is saved in the bundle and replayed at
inference, so a served prediction sees exactly the pixels the network was trained on.

Steps, in order (each skipped when it would do nothing):

1. channels: convert to ``cfg.channels`` (:func:`medsight.io.image.to_channels`);
2. window: with ``normalize="ct_window"``, map the raw values (HU for CT) through
   ``cfg.window`` (a named preset or ``[center, width]``) to ``[0, 1]``; skipped when the
   reader already applied that same window (``sample.meta["window"]``);
3. denoise: median or Gaussian, ``cfg.denoise_size`` pixels, per channel;
4. CLAHE, per channel, on data rescaled to ``[0, 1]``;
5. with ``cfg.keep_aspect``, pad to the aspect ratio of ``cfg.size`` (centred, with the image's
   smallest value; masks with 0), so that the resize does not squash the anatomy;
6. resize to ``cfg.size`` (bilinear/trilinear with anti-aliasing when shrinking; masks nearest);
7. normalise: ``minmax``, ``zscore``, ``ct_window`` (step 2 already gave ``[0, 1]``), ``dataset``
   (clip to ``cfg.intensity_clip``, then one global z-score with ``intensity_mean`` and
   ``intensity_std``: the plan's CT scheme) or ``none``.

Example:
    >>> cfg = PreprocessConfig(size=[32, 32], normalize="minmax")
    >>> image = preprocess(Sample(np.random.rand(1, 64, 64).astype(np.float32), (1.0, 1.0)), cfg)
    >>> image.shape, image.dtype
    ((1, 32, 32), dtype('float32'))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

import numpy as np

from medsight.config import PreprocessConfig
from medsight.errors import ConfigError, InvalidImageError
from medsight.io.image import to_channels
from medsight.io.windowing import apply_window, resolve_window
from medsight.sample import Sample
from medsight.transforms.intensity import clahe, denoise, normalize


@overload
def preprocess(sample: Sample, cfg: PreprocessConfig, *, mask: None = None) -> np.ndarray: ...


@overload
def preprocess(
    sample: Sample, cfg: PreprocessConfig, *, mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]: ...


def preprocess(
    sample: Sample, cfg: PreprocessConfig, *, mask: np.ndarray | None = None
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Turn a decoded sample into the float32 ``(C, *cfg.size)`` array the network sees.

    Args:
        sample: the decoded image (see :class:`~medsight.sample.Sample`).
        cfg: the preprocessing recorded in the run config and the bundle.
        mask: an optional label map on the same grid, ``(*spatial)`` or ``(K, *spatial)``;
            it is only resized (nearest neighbour) and keeps its dtype.

    Returns:
        The image, or ``(image, mask)`` when a mask is given.

    Raises:
        ConfigError: a 2D sample with a 3D ``size`` or the reverse; a channel count that
            cannot be converted; ``normalize="ct_window"`` without a window, a window with
            another ``normalize``, or an unknown window.
        InvalidImageError: the image holds NaN/inf, or the mask is on a different grid.
    """
    where = sample.meta.get("path", "sample")
    size = tuple(int(n) for n in cfg.size)
    image = intensity_steps(sample, cfg)
    padding = aspect_padding(image.shape[1:], size) if cfg.keep_aspect else None
    if padding is not None:
        image = np.pad(image, [(0, 0), *padding], constant_values=float(image.min()))
    image = resize(image, size)
    if cfg.normalize == "dataset":
        image = plan_normalize(image, dataset_normalization(cfg))
    else:
        image = normalize(image, cfg.normalize)
    if image is sample.array:
        image = image.copy()
    image = np.ascontiguousarray(image, dtype=np.float32)
    if mask is None:
        return image
    return image, _resize_mask(mask, sample, size, where, padding)


def aspect_padding(shape: Sequence[int], size: Sequence[int]) -> list[tuple[int, int]] | None:
    """``np.pad`` widths that bring a ``shape`` grid to the aspect ratio of ``size``, centred; None when
    it already has it (within one pixel).

    Example:
        >>> aspect_padding((100, 50), (64, 64))
        [(0, 0), (25, 25)]
    """
    scale = max(n / s for n, s in zip(shape, size, strict=True))
    target = [max(n, round(s * scale)) for n, s in zip(shape, size, strict=True)]
    if all(t - n <= 1 for n, t in zip(shape, target, strict=True)):
        return None
    return [((t - n) // 2, t - n - (t - n) // 2) for n, t in zip(shape, target, strict=True)]


def dataset_normalization(cfg: PreprocessConfig) -> dict:
    """``normalize: dataset`` as the plan's CT scheme (see :func:`plan_normalize`).

    Raises:
        ConfigError: no ``intensity_clip``.
    """
    if cfg.intensity_clip is None or len(cfg.intensity_clip) != 2:
        raise ConfigError("preprocess.normalize=dataset", "needs preprocess.intensity_clip [low, high]",
                          "run medsight plan on the data (it sets them), or set intensity_clip, intensity_mean "
                          "and intensity_std")
    return {"scheme": "ct", "clip": list(cfg.intensity_clip), "mean": cfg.intensity_mean, "std": cfg.intensity_std}


def preprocess_for_segmentation(sample: Sample, cfg: PreprocessConfig, normalization: dict) -> np.ndarray:
    """Preprocess a whole image for segmentation: steps 1-4, no resize, then the plan's normalisation.

    The image keeps its own grid, so a predicted mask overlays the source voxel for voxel.

    Args:
        normalization: the plan's scheme, ``{"scheme": "zscore"}`` (per image) or
            ``{"scheme": "ct", "clip": [low, high], "mean": m, "std": s}`` (clip to the data
            set's foreground percentiles, then one global z-score).
    """
    return plan_normalize(intensity_steps(sample, cfg), normalization)


def plan_normalize(image: np.ndarray, normalization: dict) -> np.ndarray:
    """The plan's intensity normalisation (see :func:`preprocess_for_segmentation`)."""
    image = np.asarray(image, dtype=np.float32)
    if normalization.get("scheme") == "ct":
        low, high = normalization["clip"]
        image = (np.clip(image, low, high) - normalization["mean"]) / max(float(normalization["std"]), 1e-8)
    else:
        image = (image - image.mean()) / max(float(image.std()), 1e-8)
    return np.ascontiguousarray(image, dtype=np.float32)


def spacing_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float] | None) -> tuple[int, ...]:
    """The grid shape of ``shape`` at ``spacing`` resampled to ``target`` (unchanged without a target).

    Axes within 1% of the target keep their size, so a data set already at the target spacing
    is never interpolated.

    Example:
        >>> spacing_shape((40, 100, 100), (3.0, 1.0, 1.0), (1.5, 1.0, 1.0))
        (80, 100, 100)
    """
    if target is None:
        return tuple(int(n) for n in shape)
    return tuple(
        int(n) if abs(s - t) <= 0.01 * t else max(1, round(n * s / t))
        for n, s, t in zip(shape, spacing, target, strict=True)
    )


def intensity_steps(sample: Sample, cfg: PreprocessConfig) -> np.ndarray:
    """Steps 1-4 (channels, window, denoise, CLAHE) on the sample's own grid.

    Raises:
        ConfigError, InvalidImageError: as :func:`preprocess`.
    """
    where = sample.meta.get("path", "sample")
    if len(cfg.size) != sample.spatial_dims:
        raise ConfigError(
            where,
            f"the image is {sample.spatial_dims}D {sample.spatial_shape} but preprocess.size "
            f"{list(cfg.size)} is {len(cfg.size)}D",
            f"set preprocess.size to {sample.spatial_dims} values for {sample.spatial_dims}D images",
        )
    image = np.asarray(sample.array, dtype=np.float32)
    if not np.isfinite(image).all():
        raise InvalidImageError(
            where, "the image contains NaN or infinite values", "fix or exclude this file"
        )
    if image.shape[0] != cfg.channels:
        try:
            image = to_channels(image, cfg.channels)
        except ConfigError as exc:
            raise ConfigError(where, exc.problem, exc.fix) from exc
    window = _window(sample, cfg, where)
    if window is not None:
        image = apply_window(image, *window)
    if cfg.denoise is not None:
        image = denoise(image, cfg.denoise, cfg.denoise_size)
    if cfg.clahe:
        image = clahe(image, cfg.clahe_clip)
    return image


def resize(array: np.ndarray, size: Sequence[int], *, nearest: bool = False) -> np.ndarray:
    """Resize a ``(C, *spatial)`` array to ``size`` (2 or 3 values); a no-op when it already fits.

    Images use bilinear (2D) or trilinear (3D) interpolation with ``align_corners=False``;
    when an axis shrinks, 2D uses PyTorch's anti-aliased bilinear filter and 3D applies a
    Gaussian pre-filter with sigma ``(factor - 1) / 2`` per shrunk axis (as scikit-image does).
    ``nearest=True`` (for label maps) picks the nearest source voxel and keeps the dtype.

    Example:
        >>> resize(np.ones((1, 8, 8), np.float32), (4, 4)).shape
        (1, 4, 4)
    """
    size = tuple(int(n) for n in size)
    if tuple(array.shape[1:]) == size:
        return array
    import torch
    import torch.nn.functional as F

    if nearest:
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
        out = F.interpolate(tensor, size=size, mode="nearest-exact")[0].numpy()
        return out.astype(array.dtype, copy=False)
    shrink = [old / new for old, new in zip(array.shape[1:], size, strict=True)]
    if len(size) == 3 and max(shrink) > 1:
        from scipy import ndimage

        sigma = (0.0,) + tuple(max(0.0, (f - 1) / 2) for f in shrink)
        array = ndimage.gaussian_filter(array, sigma=sigma, mode="nearest")
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    mode = "bilinear" if len(size) == 2 else "trilinear"
    antialias = len(size) == 2 and max(shrink) > 1
    out = F.interpolate(tensor, size=size, mode=mode, align_corners=False, antialias=antialias)
    return out[0].numpy()


def _window(sample: Sample, cfg: PreprocessConfig, where: str) -> tuple[float, float] | None:
    """The ``(center, width)`` still to apply, or None.

    Raises:
        ConfigError: ``ct_window`` without a window, a window with another ``normalize``,
            or a sample that its reader already windowed differently.
    """
    if cfg.normalize != "ct_window":
        if cfg.window is not None:
            raise ConfigError(
                f"preprocess.window={cfg.window}",
                f"a window is only applied with normalize=ct_window, not {cfg.normalize}",
                "set preprocess.normalize to ct_window, or remove preprocess.window",
            )
        return None
    if cfg.window is None:
        raise ConfigError(
            "preprocess.normalize=ct_window",
            "no window is set",
            "set preprocess.window to a preset (lung, mediastinum, bone, brain, abdomen, liver, "
            "soft_tissue) or [center, width], or choose another normalize",
        )
    window = resolve_window(cfg.window)
    applied = sample.meta.get("window")
    if applied is None:
        return window
    if [float(v) for v in applied] != list(window):
        raise ConfigError(
            where,
            f"the reader already applied the window {list(applied)}, not preprocess.window {list(window)}",
            "read the file without a window (window=None) so preprocessing applies its own",
        )
    return None


def _resize_mask(
    mask: np.ndarray, sample: Sample, size: tuple[int, ...], where: str, padding: list[tuple[int, int]] | None
) -> np.ndarray:
    """The label map on the network's grid: padded as the image was (with 0), then nearest-neighbour resized."""
    mask = np.asarray(mask)
    spatial = sample.spatial_shape
    no_channel = mask.shape == spatial
    if not no_channel and not (mask.ndim == len(spatial) + 1 and mask.shape[1:] == spatial):
        raise InvalidImageError(
            where,
            f"the mask's shape {mask.shape} does not fit the image's grid {spatial}",
            "pair each image with the mask drawn on it (same rows, columns and slices)",
        )
    if no_channel:
        mask = mask[None]
    if padding is not None:
        mask = np.pad(mask, [(0, 0), *padding])
    resized = resize(mask, size, nearest=True)
    return resized[0] if no_channel else resized
