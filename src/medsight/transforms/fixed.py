"""Fixed (deterministic) image operations on ``(N, C, *spatial)`` tensor batches, 2D or 3D.

Each function is a pure function of its inputs and parameters: no randomness, inputs never
modified. :class:`~medsight.transforms.BatchAugment` samples the parameters and calls these;
the robustness corruptions (:mod:`medsight.robustness.corruptions`) call the same ones at
their fixed severities, so a blur, a contrast change or a rotation is written once
(torchio's ``RandomGamma`` -> ``Gamma`` split).

A per-example parameter is a float (every example) or a tensor of shape ``(N,)``; it is
broadcast over the other axes. Geometry follows ``F.affine_grid``: grids run W, H[, D] in
``[-1, 1]`` with ``align_corners=False``; a positive angle turns the image counter-clockwise
as displayed, like ``torch.rot90(x, 1, (-2, -1))`` and ``scipy.ndimage.rotate``.

Example:
    >>> images = torch.tensor([[[[0.0, 2.0], [4.0, 6.0]]]])
    >>> scale_contrast(images, 0.5)
    tensor([[[[1.5000, 2.5000],
              [3.5000, 4.5000]]]])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _per_example(value: float | Tensor, images: Tensor) -> Tensor:
    """``value`` in the images' dtype and device, shaped to broadcast one number per example."""
    value = torch.as_tensor(value, dtype=images.dtype, device=images.device)
    return value.view(-1, *[1] * (images.ndim - 1)) if value.ndim == 1 else value


def flip(images: Tensor, flags: Tensor, axis: int) -> Tensor:
    """Mirror along ``axis`` the examples whose boolean flag is set, by indexing (exact, no resampling).

    Works on any ``(N, ...)`` tensor (images or label masks); returns ``images`` itself when no flag is set.
    """
    if not bool(flags.any()):
        return images
    flags = flags.to(images.device).view(-1, *[1] * (images.ndim - 1))
    return torch.where(flags, images.flip(axis), images)


def gaussian_blur(images: Tensor, sigma: float | Tensor, radius: int) -> Tensor:
    """Separable Gaussian blur of every spatial axis, the edges extended by their nearest pixel.

    The kernel runs from ``-radius`` to ``radius`` pixels and sums to 1; sigmas are floored at
    1e-3, so sigma 0 leaves an example unchanged. Computed in the images' dtype. With
    ``radius = int(4 * sigma + 0.5)`` this is ``scipy.ndimage.gaussian_filter(..., mode="nearest")``.

    Args:
        images: float ``(N, C, *spatial)``.
        sigma: in pixels, one for all or ``(N,)``.
        radius: the kernel's half-width in pixels (at least 1).
    """
    n, c, *spatial = images.shape
    offsets = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    sigma = torch.as_tensor(sigma, dtype=images.dtype, device=images.device).clamp_min(1e-3).view(-1, 1)
    kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).expand(n, -1).repeat_interleave(c, dim=0)
    flat = F.pad(images.reshape(1, n * c, *spatial), [radius] * (2 * len(spatial)), mode="replicate")
    conv = F.conv2d if len(spatial) == 2 else F.conv3d
    for axis in range(len(spatial)):
        shape = [n * c, 1] + [1] * len(spatial)
        shape[2 + axis] = 2 * radius + 1
        flat = conv(flat, kernel.view(shape), groups=n * c)
    return flat.reshape(images.shape)


def scale_contrast(images: Tensor, factor: float | Tensor, *, per_channel: bool = False) -> Tensor:
    """Scale each example's deviations from its mean by ``factor``: ``(x - mean) * factor + mean``.

    Args:
        images: float ``(N, C, *spatial)``.
        factor: one for all, ``(N,)``, or with ``per_channel`` ``(N, C)``.
        per_channel: take the mean (and the factor) per channel, a change of colour balance;
            otherwise the mean is over the whole example.
    """
    if per_channel:
        factor = torch.as_tensor(factor, dtype=images.dtype, device=images.device)
        factor = factor.view(*factor.shape, *[1] * (images.ndim - factor.ndim))
        dims = tuple(range(2, images.ndim))
    else:
        factor, dims = _per_example(factor, images), tuple(range(1, images.ndim))
    mean = images.mean(dim=dims, keepdim=True)
    return (images - mean) * factor + mean


def shift_brightness(images: Tensor, offset: float | Tensor) -> Tensor:
    """Add ``offset`` (in the images' units; one for all or ``(N,)``) to every pixel of each example."""
    return images + _per_example(offset, images)


def add_gaussian_noise(images: Tensor, std: float | Tensor, standard_normal: Tensor) -> Tensor:
    """Add ``standard_normal * std``: Gaussian noise whose draw the caller made (so it owns the seed).

    Args:
        images: ``(N, ...)``.
        std: one for all or ``(N,)``.
        standard_normal: draws from N(0, 1) with the images' shape.
    """
    std = torch.as_tensor(std, dtype=standard_normal.dtype, device=standard_normal.device)
    std = std.view(-1, *[1] * (standard_normal.ndim - 1)) if std.ndim == 1 else std
    return images + (standard_normal * std).to(images)


def adjust_gamma(images: Tensor, exponent: float | Tensor) -> Tensor:
    """nnU-Net's gamma: each example, scaled to ``[0, 1]``, raised to ``exponent``, then given back its mean and std.

    An exponent below 1 brightens the mid-tones, above 1 darkens them; a constant example is returned unchanged.
    """
    reduce = tuple(range(1, images.ndim))
    exponent = _per_example(exponent, images)
    low, high = images.amin(dim=reduce, keepdim=True), images.amax(dim=reduce, keepdim=True)
    mean, std = images.mean(dim=reduce, keepdim=True), images.std(dim=reduce, keepdim=True)
    unit = ((images - low) / (high - low).clamp_min(1e-6)).clamp(0, 1) ** exponent
    out = (unit - unit.mean(dim=reduce, keepdim=True)) / unit.std(dim=reduce, keepdim=True).clamp_min(1e-6)
    return torch.where(high > low, out * std + mean, images)


def affine_matrix(
    spatial: tuple[int, ...],
    angle: Tensor,
    scale: Tensor,
    shift: Tensor,
    flip_h: Tensor,
    flip_v: Tensor,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """``(N, d, d + 1)`` matrices mapping output to input coordinates, as ``F.affine_grid`` wants (on CPU).

    Built in pixel units (so a rotation stays a rotation on a non-square image) and converted to
    the normalised ``[-1, 1]`` grid: ``A = D^-1 R D diag(flip) / scale``; rotations are in the
    ``(H, W)`` plane (about the slice axis for 3D).

    Args:
        spatial: the image size ``(D,) H, W``.
        angle: ``(N,)`` radians, counter-clockwise as displayed.
        scale: ``(N,)`` zoom factors (> 1 zooms in).
        shift: ``(N, d)`` translations as a fraction of the size, in grid order W, H[, D].
        flip_h: ``(N,)`` booleans, mirror left-right; flip_v: up-down.
        dtype: the matrices' dtype (float64 for float64 images).
    """
    n, dims = angle.shape[0], len(spatial)
    angle, scale = angle.to(dtype).cpu(), scale.to(dtype).cpu()
    half = torch.tensor([s / 2 for s in reversed(spatial)], dtype=dtype)
    rot = torch.eye(dims, dtype=dtype).repeat(n, 1, 1)
    rot[:, 0, 0], rot[:, 0, 1] = torch.cos(angle), -torch.sin(angle)
    rot[:, 1, 0], rot[:, 1, 1] = torch.sin(angle), torch.cos(angle)
    diag = torch.ones(n, dims, dtype=dtype)
    diag[:, 0] = torch.where(flip_h.cpu(), -1.0, 1.0)
    diag[:, 1] = torch.where(flip_v.cpu(), -1.0, 1.0)
    diag = diag / scale.view(-1, 1)
    matrix = rot / half.view(1, -1, 1) * half.view(1, 1, -1) * diag.view(n, 1, dims)
    return torch.cat([matrix, 2 * shift.to(dtype).cpu().view(n, dims, 1)], dim=2)


def elastic_displacement(control: Tensor, spatial: tuple[int, ...]) -> Tensor:
    """Pixel displacements at control points, interpolated (linearly) over ``spatial``, in grid units.

    Args:
        control: ``(N, d, *control_grid)`` displacements in pixels, channels in grid order W, H[, D].
        spatial: the image size ``(D,) H, W``.

    Returns:
        ``(N, *spatial, d)``, to add to an ``F.affine_grid`` grid (one pixel is ``2 / size`` there).
    """
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    field = F.interpolate(control.float(), size=tuple(spatial), mode=mode, align_corners=True)
    pixel = torch.tensor([2.0 / s for s in reversed(spatial)], device=field.device)
    return field.movedim(1, -1) * pixel


def sampling_grid(theta: Tensor, images: Tensor, displacement: Tensor | None = None) -> Tensor:
    """The ``F.affine_grid`` grid of ``theta`` over the images' spatial size, plus an optional displacement."""
    spatial = images.shape[2:]
    dtype = images.dtype if images.dtype.is_floating_point else torch.float32
    grid = F.affine_grid(theta.to(device=images.device, dtype=dtype), [images.shape[0], 1, *spatial],
                         align_corners=False)
    return grid if displacement is None else grid + displacement.to(grid)


def warp(images: Tensor, grid: Tensor, *, padding: str = "zeros") -> Tensor:
    """Resample float images at ``grid`` with bilinear interpolation.

    ``padding`` is ``"zeros"`` (outside the image is 0) or ``"border"`` (the nearest edge pixel,
    ``scipy.ndimage``'s ``mode="nearest"``).
    """
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=padding, align_corners=False)


def warp_labels(masks: Tensor, grid: Tensor) -> Tensor:
    """Resample label masks ``(N, *spatial)`` or ``(N, K, *spatial)`` at ``grid``: nearest label, 0 outside.

    The masks keep their dtype.
    """
    squeeze = masks.ndim == grid.ndim - 1
    m = (masks.unsqueeze(1) if squeeze else masks).to(grid.dtype)
    m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return (m.squeeze(1) if squeeze else m).to(masks.dtype)


def rotate(images: Tensor, degrees: float | Tensor, *, padding: str = "zeros") -> Tensor:
    """Rotate every example by ``degrees`` (counter-clockwise as displayed) about its centre, bilinear.

    With ``padding="border"`` this is ``scipy.ndimage.rotate(..., reshape=False, order=1, mode="nearest")``.
    """
    n = images.shape[0]
    dtype = images.dtype if images.dtype.is_floating_point else torch.float32
    angle = torch.deg2rad(torch.as_tensor(degrees, dtype=dtype).expand(n))
    off = torch.zeros(n, dtype=torch.bool)
    theta = affine_matrix(tuple(images.shape[2:]), angle, torch.ones(n, dtype=dtype),
                          torch.zeros(n, images.ndim - 2, dtype=dtype), off, off, dtype=dtype)
    return warp(images, sampling_grid(theta, images), padding=padding)

