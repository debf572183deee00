"""Per-image statistics written so that ONNX Runtime computes them as precisely as PyTorch.

ONNX Runtime's float32 ``ReduceMean`` and ``InstanceNormalization`` over a whole feature map
lose precision that PyTorch's reductions keep. On maps with large near-constant areas (a
zero-padded patch, a black background) the centred values ``x - mean`` are then off by far
more than their size, and a U-Net with instance normalisation drifts by up to 1e-3 in its
probabilities (DRIVE, 512 x 512 patch, padded). Reducing one axis at a time and centring
twice (the second pass removes the rounding error of the first mean) brings it back to
about 1e-6. The graph computes the same function; only the order of the sums changes.

Group norms go the same way (the exporter writes them as an InstanceNormalization of the grouped map): on a
detector's stride-4 level (BCCD, 320 x 448 input: 8 channels x 80 x 112 per group) ONNX Runtime's float32 error in
the head outputs was 2-7 times PyTorch's, largest on a constant image; :class:`PreciseGroupNorm` brings it back
to PyTorch's (``with_precise_norms(..., group_norms=True)``, which the detection export uses).

Example:
    >>> net = with_precise_norms(bundle.build_model())   # a copy; the bundle's network is untouched
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn


def axis_mean(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """The mean over ``axes`` (kept as size 1), one axis at a time."""
    for axis in sorted(axes, reverse=True):
        x = x.mean(dim=axis, keepdim=True)
    return x


def centre(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    """``x`` minus its mean over ``axes``, centred twice."""
    x = x - axis_mean(x, axes)
    return x - axis_mean(x, axes)


class PreciseInstanceNorm(nn.Module):
    """:class:`torch.nn.InstanceNorm2d`/``3d`` (no running statistics) with :func:`centre`."""

    def __init__(self, norm: nn.InstanceNorm1d | nn.InstanceNorm2d | nn.InstanceNorm3d) -> None:
        super().__init__()
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = tuple(range(2, x.ndim))
        centred = centre(x, axes)
        y = centred / torch.sqrt(axis_mean(centred * centred, axes) + self.eps)
        if self.weight is None:
            return y
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)


class PreciseGroupNorm(nn.Module):
    """:class:`torch.nn.GroupNorm` with :func:`centre` over each group's channels and spatial axes."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.groups = norm.num_groups
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = x.reshape(x.shape[0], self.groups, x.shape[1] // self.groups, *x.shape[2:])
        axes = tuple(range(2, grouped.ndim))
        centred = centre(grouped, axes)
        y = (centred / torch.sqrt(axis_mean(centred * centred, axes) + self.eps)).reshape(x.shape)
        if self.weight is None:
            return y
        shape = (1, -1) + (1,) * (x.ndim - 2)
        return y * self.weight.reshape(shape) + self.bias.reshape(shape)


def with_precise_norms(network: nn.Module, *, group_norms: bool = False) -> nn.Module:
    """A copy of ``network`` with every instance norm that uses per-image statistics made precise, and with
    ``group_norms`` every group norm too."""
    network = copy.deepcopy(network)
    norms = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, norms) and not child.track_running_stats:
                setattr(parent, name, PreciseInstanceNorm(child))
            elif group_norms and isinstance(child, nn.GroupNorm):
                setattr(parent, name, PreciseGroupNorm(child))
    return network.eval()
