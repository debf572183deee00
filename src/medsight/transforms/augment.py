"""Random augmentation of whole batches of tensors, on CPU or GPU, reproducible from a seed.

Following STYLE rule 5, :class:`BatchAugment` first samples every example's parameters
from the caller's ``torch.Generator`` (:meth:`BatchAugment.sample`), then applies a fixed
transform (:meth:`BatchAugment.apply`). The same seed gives the same batch.

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
import torch.nn.functional as F
from torch import Tensor

from medsight.config import AugmentConfig
from medsight.errors import ConfigError

ELASTIC_SPACING = 32
"""Pixels between the control points of the ``elastic`` deformation."""


@dataclass
class AugmentParams:
    """Per-example parameters of one batch; every field has the batch size as its first axis.

    ``shift`` is ``(N, spatial_dims)`` in the order of ``F.affine_grid`` (W, H[, D]) as a
    fraction of the size; ``color`` is ``(N, C)``; ``noise`` is the noise tensor itself
    (already scaled), or None; ``elastic`` is the displacement in pixels at the control points,
    ``(N, spatial_dims, *control_grid)`` with its channels in ``F.affine_grid`` order, or None.
    """

    flip_h: Tensor
    flip_v: Tensor
    angle: Tensor
    scale: Tensor
    shift: Tensor
    blur_sigma: Tensor
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
            noise = noise * (u[:, 4] * c.noise_std).view(-1, *[1] * (len(shape) - 1))
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
            contrast=1 + signed[:, 6] * c.contrast,
            brightness=signed[:, 7] * c.brightness,
            gamma=gamma,
            color=color,
            noise=noise,
            elastic=elastic,
        )

    def apply(self, images: Tensor, masks: Tensor | None, params: AugmentParams) -> tuple[Tensor, Tensor | None]:
        """Apply fixed, already-sampled parameters (no randomness here)."""
        c = self.cfg
        if self._resamples:
            images, masks = self._affine(images, masks, params)
        elif c.flip_h > 0 or c.flip_v > 0:
            images, masks = _flip(images, masks, params)
        if c.blur_sigma > 0:
            images = _blur(images, params.blur_sigma.to(images.device), c.blur_sigma)
        reduce = tuple(range(1, images.ndim))
        view = (-1,) + (1,) * (images.ndim - 1)
        if c.gamma > 0:
            images = _gamma(images, params.gamma.to(images).view(view))
        if c.contrast > 0:
            images = _scale_around_mean(images, params.contrast.to(images).view(view), reduce)
        if c.color > 0:
            spatial = tuple(range(2, images.ndim))
            images = _scale_around_mean(images, params.color.to(images).view(*params.color.shape, *view[2:]), spatial)
        if c.brightness > 0:
            std = images.std(dim=reduce, keepdim=True)
            images = images + params.brightness.to(images).view(view) * std
        if params.noise is not None:
            images = images + params.noise.to(images)
        return images, masks

    def _affine(
        self, images: Tensor, masks: Tensor | None, p: AugmentParams
    ) -> tuple[Tensor, Tensor | None]:
        spatial = images.shape[2:]
        dtype = images.dtype if images.dtype.is_floating_point else torch.float32
        theta = _theta(p, spatial).to(device=images.device, dtype=dtype)
        grid = F.affine_grid(theta, [images.shape[0], 1, *spatial], align_corners=False)
        if p.elastic is not None:
            grid = grid + _displacement(p.elastic, spatial).to(grid)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if masks is not None:
            squeeze = masks.ndim == images.ndim - 1
            m = (masks.unsqueeze(1) if squeeze else masks).to(dtype)
            m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
            m = m.squeeze(1) if squeeze else m
            masks = m.to(masks.dtype)
        return images, masks

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


def _theta(p: AugmentParams, spatial: torch.Size) -> Tensor:
    """``(N, d, d + 1)`` matrices mapping output to input coordinates, as ``F.affine_grid`` wants.

    Built in pixel units (so a rotation stays a rotation on a non-square image) and
    converted to the normalised ``[-1, 1]`` grid: ``A = D^-1 R D diag(flip) / scale``.
    """
    n, dims = p.angle.shape[0], len(spatial)
    angle, scale = p.angle.float().cpu(), p.scale.float().cpu()
    half = torch.tensor([s / 2 for s in reversed(spatial)])
    rot = torch.eye(dims).repeat(n, 1, 1)
    rot[:, 0, 0], rot[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
    rot[:, 1, 0], rot[:, 1, 1] = torch.sin(angle), torch.cos(angle)
    diag = torch.ones(n, dims)
    diag[:, 0] = torch.where(p.flip_h.cpu(), -1.0, 1.0)
    diag[:, 1] = torch.where(p.flip_v.cpu(), -1.0, 1.0)
    diag = diag / scale.view(-1, 1)
    matrix = rot / half.view(1, -1, 1) * half.view(1, 1, -1) * diag.view(n, 1, dims)
    return torch.cat([matrix, 2 * p.shift.float().cpu().view(n, dims, 1)], dim=2)


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


def _displacement(control: Tensor, spatial: torch.Size) -> Tensor:
    """The control points' pixel displacements interpolated over ``spatial``, in grid units.

    Returns ``(N, *spatial, d)``, to add to an ``F.affine_grid`` grid (whose last axis runs
    W, H[, D]; one pixel is ``2 / size`` there).
    """
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    field = F.interpolate(control.float(), size=tuple(spatial), mode=mode, align_corners=True)
    pixel = torch.tensor([2.0 / s for s in reversed(spatial)], device=field.device)
    return field.movedim(1, -1) * pixel


def _flip(images: Tensor, masks: Tensor | None, p: AugmentParams) -> tuple[Tensor, Tensor | None]:
    """Mirror the examples whose flip flag is set, by indexing (exact, no resampling)."""
    for flags, axis in ((p.flip_h, -1), (p.flip_v, -2)):
        if not bool(flags.any()):
            continue
        flags = flags.to(images.device)
        images = torch.where(flags.view(-1, *[1] * (images.ndim - 1)), images.flip(axis), images)
        if masks is not None:
            masks = torch.where(flags.view(-1, *[1] * (masks.ndim - 1)), masks.flip(axis), masks)
    return images, masks


def _blur(images: Tensor, sigma: Tensor, max_sigma: float) -> Tensor:
    """Separable Gaussian blur with one sigma per example (0 leaves the example unchanged)."""
    n, c, *spatial = images.shape
    radius = max(1, math.ceil(3 * max_sigma))
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    sigma = sigma.to(images.dtype).clamp_min(1e-3).view(-1, 1)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)
    flat = F.pad(images.reshape(1, n * c, *spatial), [radius] * (2 * len(spatial)), mode="replicate")
    conv = F.conv2d if len(spatial) == 2 else F.conv3d
    for axis in range(len(spatial)):
        shape = [n * c, 1] + [1] * len(spatial)
        shape[2 + axis] = 2 * radius + 1
        flat = conv(flat, kernel.view(shape), groups=n * c)
    return flat.reshape(images.shape)


def _scale_around_mean(images: Tensor, factor: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Scale the spread around the mean over ``dims`` by ``factor`` (broadcast to the images)."""
    mean = images.mean(dim=dims, keepdim=True)
    return (images - mean) * factor + mean


def _gamma(images: Tensor, exponent: Tensor) -> Tensor:
    """Raise each example, scaled to ``[0, 1]``, to its exponent; keep its mean and std."""
    reduce = tuple(range(1, images.ndim))
    low, high = images.amin(dim=reduce, keepdim=True), images.amax(dim=reduce, keepdim=True)
    mean, std = images.mean(dim=reduce, keepdim=True), images.std(dim=reduce, keepdim=True)
    unit = ((images - low) / (high - low).clamp_min(1e-6)).clamp(0, 1) ** exponent
    out = (unit - unit.mean(dim=reduce, keepdim=True)) / unit.std(dim=reduce, keepdim=True).clamp_min(1e-6)
    return torch.where(high > low, out * std + mean, images)
