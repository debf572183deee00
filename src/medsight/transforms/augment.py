"""Random augmentation of whole batches of tensors, on CPU or GPU, reproducible from a seed.

Following STYLE rule 5, :class:`BatchAugment` first samples every example's parameters
from the caller's ``torch.Generator`` (:meth:`BatchAugment.sample`), then applies them
(:meth:`BatchAugment.apply`) with the public fixed operations of
:mod:`medsight.transforms.fixed`, which the robustness corruptions share. The same seed gives
the same batch.

What each :class:`~medsight.config.AugmentConfig` knob does, per example:

* ``flip_h`` / ``flip_v``: probability of mirroring left-right (last axis) / up-down
  (second-last axis).
* ``rotate_deg``: an angle uniform in ``[-rotate_deg, rotate_deg]``, in the image plane
  (for 3D: about the slice axis, i.e. within each ``(H, W)`` plane); a positive angle
  turns the image counter-clockwise as displayed, like ``torch.rot90(x, 1, (-2, -1))``.
* ``scale``: a zoom factor uniform in ``[1 - scale, 1 + scale]`` (all spatial axes; > 1 zooms in).
* ``shift``: a translation uniform in ``[-shift, shift]`` times the size, per axis.
* ``elastic``: a smooth random deformation moving each pixel by up to ``elastic`` pixels per
  axis: displacements uniform in ``[-elastic, elastic]`` at control points every
  ``ELASTIC_SPACING`` pixels, interpolated linearly in between (so no pixel moves further), the
  way U-Net's original training bent cell outlines. A list gives each spatial axis, ``(D,) H, W``,
  its own bound: ``[0, 4, 4]`` bends thick-slice volumes within their slices only.
* ``blur_sigma``: a Gaussian blur with sigma uniform in ``[0, blur_sigma]`` pixels.
* ``gamma``: nnU-Net's gamma transform: the image is scaled to ``[0, 1]`` (its own minimum
  and maximum), raised to an exponent drawn log-uniformly in ``[1 / (1 + g), 1 + g]``, and
  given back its mean and standard deviation. It brightens or darkens the mid-tones, so faint
  structures gain or lose contrast against their background, as between dim and bright scans.
* ``contrast``: scaling around the image's mean by a factor uniform in ``[1 - c, 1 + c]``.
* ``color``: the same, with its own factor in ``[1 - c, 1 + c]`` for each channel around that
  channel's mean: a change of colour balance for RGB photographs (fundus, dermoscopy).
* ``brightness``: an offset uniform in ``[-b, b]`` times the image's standard deviation,
  so it means the same after ``minmax`` or ``zscore`` normalisation.
* ``noise_std``: Gaussian noise whose std is uniform in ``[0, noise_std]``, in the units of
  the normalised image.

The geometric knobs form one affine per example (plus the elastic displacement), applied with ``F.affine_grid`` +
``F.grid_sample`` (bilinear for images, nearest for masks, the same grid for both; outside
the image is 0). With only flips on, the flips are done by indexing, which is exact and
fast; with no geometric knob on, no resampling happens at all. Intensity knobs touch
images only, in the order blur, gamma, contrast, color, brightness, noise.

Example:
    >>> aug = BatchAugment(AugmentConfig(flip_h=0.5, rotate_deg=10), spatial_dims=2)
    >>> images, masks = aug(torch.rand(8, 1, 28, 28), generator=torch.Generator().manual_seed(0))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from medsight.config import AugmentConfig
from medsight.errors import ConfigError
from medsight.transforms.fixed import (
    add_gaussian_noise,
    adjust_gamma,
    affine_matrix,
    elastic_displacement,
    flip,
    gaussian_blur,
    sampling_grid,
    scale_contrast,
    shift_brightness,
    warp,
    warp_labels,
)

ELASTIC_SPACING = 32
"""Pixels between the control points of the ``elastic`` deformation."""


@dataclass
class AugmentParams:
    """Per-example parameters of one batch; every field has the batch size as its first axis.

    ``shift`` is ``(N, spatial_dims)`` in the order of ``F.affine_grid`` (W, H[, D]) as a
    fraction of the size; ``color`` is ``(N, C)``; ``noise`` is the standard normal draw
    with the batch's shape (scaled by ``noise_std`` when applied), or None; ``elastic`` is the
    displacement in pixels at the control points,
    ``(N, spatial_dims, *control_grid)`` with its channels in ``F.affine_grid`` order, or None.
    """

    flip_h: Tensor
    flip_v: Tensor
    angle: Tensor
    scale: Tensor
    shift: Tensor
    blur_sigma: Tensor
    noise_std: Tensor
    contrast: Tensor
    brightness: Tensor
    gamma: Tensor
    color: Tensor
    noise: Tensor | None
    elastic: Tensor | None = None


class BatchAugment:
    """Augment ``(N, C, *spatial)`` image batches (and their masks) from an :class:`AugmentConfig`.

    Args:
        cfg: the augmentation knobs (each off at 0).
        spatial_dims: 2 or 3.
    """

    def __init__(self, cfg: AugmentConfig, spatial_dims: int) -> None:
        if spatial_dims not in (2, 3):
            raise ConfigError(
                f"spatial_dims={spatial_dims}", "augmentation works on 2D or 3D images", "pass 2 or 3"
            )
        self.cfg = cfg
        self.spatial_dims = spatial_dims
        self.elastic = _elastic_bounds(cfg.elastic, spatial_dims)

    @property
    def enabled(self) -> bool:
        """False when every knob is 0: then calling it returns its inputs unchanged."""
        scalars = self.cfg.model_dump(exclude={"elastic"}).values()
        return any(value > 0 for value in scalars) or self.elastic is not None

    @property
    def _resamples(self) -> bool:
        c = self.cfg
        return c.rotate_deg > 0 or c.scale > 0 or c.shift > 0 or self.elastic is not None

    def __call__(
        self, images: Tensor, masks: Tensor | None = None, *, generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None]:
        """Sample parameters from ``generator`` and apply them.

        Args:
            images: float ``(N, C, *spatial)``.
            masks: optional labels ``(N, *spatial)`` or ``(N, K, *spatial)``, any dtype;
                they get the same geometric transform (nearest neighbour) and keep their dtype.
            generator: the source of randomness; on GPU, a generator on the images' device
                avoids copying the noise tensor.

        Returns:
            ``(images, masks)``, new tensors (the inputs are not modified).
        """
        if not self.enabled:
            return images, masks
        self._check(images, masks)
        return self.apply(images, masks, self.sample(images.shape, generator))

    def sample(self, shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> AugmentParams:
        """Draw every example's parameters for a batch of ``shape`` ``(N, C, *spatial)``."""
        c, n, dims = self.cfg, int(shape[0]), self.spatial_dims
        u = torch.rand(n, 8 + dims, generator=generator, device=generator.device)
        signed = 2 * u - 1
        noise = None
        if c.noise_std > 0:
            noise = torch.randn(tuple(shape), generator=generator, device=generator.device)
        # gamma and color draw after everything else, so configs without them keep their batches.
        gamma, color = torch.ones(n), torch.ones(n, int(shape[1]))
        if c.gamma > 0:
            gamma = torch.exp((2 * torch.rand(n, generator=generator, device=generator.device) - 1)
                              * math.log1p(c.gamma))
        if c.color > 0:
            color = 1 + (2 * torch.rand(n, int(shape[1]), generator=generator, device=generator.device) - 1) * c.color
        elastic = None
        if self.elastic is not None:
            control = [math.ceil(size / ELASTIC_SPACING) + 1 for size in shape[2:]]
            bounds = torch.tensor(self.elastic, device=generator.device).view(1, dims, *[1] * dims)
            elastic = (2 * torch.rand(n, dims, *control, generator=generator, device=generator.device) - 1) * bounds
        return AugmentParams(
            flip_h=u[:, 0] < c.flip_h,
            flip_v=u[:, 1] < c.flip_v,
            angle=signed[:, 2] * math.radians(c.rotate_deg),
            scale=1 + signed[:, 3] * c.scale,
            shift=signed[:, 8:] * c.shift,
            blur_sigma=u[:, 5] * c.blur_sigma,
            noise_std=u[:, 4] * c.noise_std,
            contrast=1 + signed[:, 6] * c.contrast,
            brightness=signed[:, 7] * c.brightness,
            gamma=gamma,
            color=color,
            noise=noise,
            elastic=elastic,
        )

    def apply(self, images: Tensor, masks: Tensor | None, params: AugmentParams) -> tuple[Tensor, Tensor | None]:
        """Apply fixed, already-sampled parameters (no randomness here), one fixed operation per knob."""
        c = self.cfg
        if self._resamples:
            images, masks = self._affine(images, masks, params)
        elif c.flip_h > 0 or c.flip_v > 0:
            for flags, axis in ((params.flip_h, -1), (params.flip_v, -2)):
                images = flip(images, flags, axis)
                masks = None if masks is None else flip(masks, flags, axis)
        if c.blur_sigma > 0:
            images = gaussian_blur(images, params.blur_sigma, radius=max(1, math.ceil(3 * c.blur_sigma)))
        if c.gamma > 0:
            images = adjust_gamma(images, params.gamma)
        if c.contrast > 0:
            images = scale_contrast(images, params.contrast)
        if c.color > 0:
            images = scale_contrast(images, params.color, per_channel=True)
        if c.brightness > 0:
            std = images.std(dim=tuple(range(1, images.ndim)))
            images = shift_brightness(images, params.brightness.to(images) * std)
        if params.noise is not None:
            images = add_gaussian_noise(images, params.noise_std, params.noise)
        return images, masks

    def _affine(
        self, images: Tensor, masks: Tensor | None, p: AugmentParams
    ) -> tuple[Tensor, Tensor | None]:
        """Flip, rotate, zoom and shift (plus the elastic displacement) on one grid, shared by images and masks."""
        spatial = tuple(images.shape[2:])
        theta = affine_matrix(spatial, p.angle, p.scale, p.shift, p.flip_h, p.flip_v)
        displacement = None if p.elastic is None else elastic_displacement(p.elastic, spatial)
        grid = sampling_grid(theta, images, displacement)
        return warp(images, grid), None if masks is None else warp_labels(masks, grid)

    def _check(self, images: Tensor, masks: Tensor | None) -> None:
        dims = self.spatial_dims
        if images.ndim != dims + 2:
            raise ConfigError(
                f"images of shape {tuple(images.shape)}",
                f"expected a {dims}D batch (N, C, {'D, ' if dims == 3 else ''}H, W)",
                "check preprocess.size against the data, or build BatchAugment with the right spatial_dims",
            )
        if masks is not None and (
            masks.shape[0] != images.shape[0] or tuple(masks.shape[-dims:]) != tuple(images.shape[2:])
        ):
            raise ConfigError(
                f"masks of shape {tuple(masks.shape)}",
                f"they do not fit the images {tuple(images.shape)}",
                "pass one mask per image on the same grid",
            )


def _elastic_bounds(elastic: float | list[float], spatial_dims: int) -> tuple[float, ...] | None:
    """``augment.elastic`` as one bound per axis in ``F.affine_grid`` order (W, H[, D]); None when all are 0.

    Raises:
        ConfigError: a list whose length is not the number of spatial axes.
    """
    bounds = [float(elastic)] * spatial_dims if not isinstance(elastic, list) else [float(b) for b in elastic]
    if len(bounds) != spatial_dims:
        raise ConfigError(
            f"augment.elastic={elastic}",
            f"gives {len(bounds)} bounds for {spatial_dims}D images",
            f"give one number for every axis, or {spatial_dims} ({'D, ' if spatial_dims == 3 else ''}H, W)",
        )
    return tuple(reversed(bounds)) if max(bounds) > 0 else None
