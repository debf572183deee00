"""Segmentation networks, 2D and 3D, registered by name.

Every factory takes ``(*, in_channels, num_outputs, spatial_dims, **kwargs)`` and returns a
module mapping ``(N, in_channels, *spatial)`` to logits ``(N, num_outputs, *spatial)``; the
softmax is applied by the caller (or by the loss). ``num_outputs`` counts the background, so a
foreground/background task has two outputs. Each model names its bottleneck in
``model.gradcam_layer`` (a dotted path for ``model.get_submodule``), for Grad-CAM.

``depth`` is the number of resolution levels in every model here, so an input side must be a
multiple of ``2 ** (depth - 1)`` (8 at the default depth 4).

Example:
    >>> model = create_model("unet", in_channels=1, num_outputs=2, spatial_dims=2)
    >>> model(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 2, 64, 64])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medsight.errors import ConfigError
from medsight.models.registry import register_model


def _check(spatial_dims: int, depth: int) -> None:
    """Reject settings no segmenter here can build, with the fix."""
    if spatial_dims not in (2, 3):
        raise ConfigError(
            f"spatial_dims={spatial_dims}", "segmenters are 2D or 3D", "use a 2- or 3-value preprocess.size"
        )
    if depth < 2:
        raise ConfigError(f"model.kwargs.depth={depth}", "a U-Net needs at least 2 levels", "use depth >= 2")


def _double_conv(spatial_dims: int, cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolution + BatchNorm + ReLU, as in every level of the classic U-Net."""
    from monai.networks.layers.factories import Conv, Norm  # MONAI loads ~400 modules: only when a segmenter is built

    conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
    return nn.Sequential(
        conv(cin, cout, kernel_size=3, padding=1, bias=False),
        norm(cout),
        nn.ReLU(inplace=True),
        conv(cout, cout, kernel_size=3, padding=1, bias=False),
        norm(cout),
        nn.ReLU(inplace=True),
    )


class ClassicUNet(nn.Module):
    """The classic U-Net (Ronneberger et al. 2015) with padded convolutions and BatchNorm.

    Each level is two 3x3 conv-BN-ReLU; max-pooling goes down, a stride-2 transposed
    convolution goes up and its output is concatenated with the encoder features of the same
    level; a 1x1 convolution makes the logits. ``depth=5`` with ``base_features=64`` is the
    network of the paper.

    Args:
        in_channels: input channels.
        num_outputs: logits per pixel (classes including background).
        spatial_dims: 2 or 3.
        base_features: channels of the first level; each level below doubles them.
        depth: resolution levels, the bottleneck included.
    """

    gradcam_layer = "bottleneck"

    def __init__(
        self, *, in_channels: int, num_outputs: int, spatial_dims: int, base_features: int = 32, depth: int = 4
    ) -> None:
        from monai.networks.layers.factories import Conv, Pool

        super().__init__()
        _check(spatial_dims, depth)
        widths = [base_features * 2**i for i in range(depth)]
        conv, up = Conv[Conv.CONV, spatial_dims], Conv[Conv.CONVTRANS, spatial_dims]
        self.multiple = 2 ** (depth - 1)
        inputs = [in_channels, *widths[:-2]]
        self.encoders = nn.ModuleList(
            _double_conv(spatial_dims, cin, cout) for cin, cout in zip(inputs, widths[:-1], strict=True)
        )
        self.pool = Pool[Pool.MAX, spatial_dims](2)
        self.bottleneck = _double_conv(spatial_dims, widths[-2], widths[-1])
        self.upsamplers = nn.ModuleList(up(w * 2, w, kernel_size=2, stride=2) for w in reversed(widths[:-1]))
        self.decoders = nn.ModuleList(_double_conv(spatial_dims, w * 2, w) for w in reversed(widths[:-1]))
        self.head = conv(widths[0], num_outputs, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(side % self.multiple for side in x.shape[2:]):
            raise ConfigError(
                f"input of size {tuple(x.shape[2:])}",
                f"classic_unet needs every side to be a multiple of {self.multiple}",
                "set preprocess.size (or the patch size) to such a multiple, or lower model.kwargs.depth",
            )
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for upsample, decoder, skip in zip(self.upsamplers, self.decoders, reversed(skips), strict=True):
            x = decoder(torch.cat([skip, upsample(x)], dim=1))
        return self.head(x)


@register_model("unet", task="segmentation")
def unet(
    *, in_channels: int, num_outputs: int, spatial_dims: int, base_features: int = 16, depth: int = 4, **kwargs: Any
) -> nn.Module:
    """MONAI's ``UNet`` with channels ``base_features * 2**i`` for ``depth`` levels, stride 2.

    Other kwargs (``num_res_units``, ``dropout``, ``norm``...) go to ``monai.networks.nets.UNet``.
    """
    from monai.networks.nets import UNet

    _check(spatial_dims, depth)
    model = UNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_outputs,
        channels=tuple(base_features * 2**i for i in range(depth)),
        strides=(2,) * (depth - 1),
        **kwargs,
    )
    model.gradcam_layer = "model" + ".1.submodule" * (depth - 1)
    return model


@register_model("classic_unet", task="segmentation")
def classic_unet(*, in_channels: int, num_outputs: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    """:class:`ClassicUNet`; kwargs: ``base_features`` (32), ``depth`` (4)."""
    return ClassicUNet(in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims, **kwargs)


def _dynunet_strides(spatial_dims: int, depth: int, patch_size: Sequence[int] | None) -> list[list[int]]:
    """Per-level strides: 1 at the top, then 2 per axis, except along an axis of ``patch_size``
    that would fall below 8 voxels (it keeps stride 1 from there on, as nnU-Net plans)."""
    sizes = list(patch_size) if patch_size is not None else [None] * spatial_dims
    if len(sizes) != spatial_dims:
        raise ConfigError(
            f"model.kwargs.patch_size={list(sizes)}",
            f"needs {spatial_dims} values for a {spatial_dims}D model",
            "give one size per spatial axis",
        )
    strides = [[1] * spatial_dims]
    for _ in range(depth - 1):
        level = [1 if size is not None and size < 16 else 2 for size in sizes]
        sizes = [size if size is None else size // s for size, s in zip(sizes, level, strict=True)]
        strides.append(level)
    return strides


@register_model("dynunet", task="segmentation")
def dynunet(
    *,
    in_channels: int,
    num_outputs: int,
    spatial_dims: int,
    depth: int = 4,
    patch_size: Sequence[int] | None = None,
    deep_supervision: bool = False,
    deep_supr_num: int | None = None,
    **kwargs: Any,
) -> nn.Module:
    """MONAI's ``DynUNet`` (the nnU-Net network) with 3x3 kernels and ``depth`` levels.

    Strides are 2 per level; with ``patch_size`` an axis stops being halved once it would
    fall below 8 voxels. Other kwargs (``filters``, ``res_block``, ``dropout``...) go to
    ``monai.networks.nets.DynUNet``.

    Forward returns logits ``(N, num_outputs, *spatial)`` in eval mode, and also in train mode
    without deep supervision. With ``deep_supervision=True`` in train mode it returns
    ``(N, 1 + deep_supr_num, num_outputs, *spatial)``: the full-resolution output first, then
    the lower decoder heads, each upsampled to full size; feed it to a loss made with
    ``make_seg_loss(..., deep_supervision=True)``.

    Args:
        depth: resolution levels, the bottleneck included.
        patch_size: training patch size, used only to plan anisotropic strides.
        deep_supervision: add the lower-resolution heads in train mode.
        deep_supr_num: number of extra heads (default ``min(2, depth - 2)``).
    """
    from monai.networks.nets import DynUNet

    _check(spatial_dims, depth)
    strides = _dynunet_strides(spatial_dims, depth, patch_size)
    heads = min(2, depth - 2) if deep_supr_num is None else deep_supr_num
    if deep_supervision and not 1 <= heads <= depth - 2:
        raise ConfigError(
            f"model.kwargs.deep_supr_num={heads}",
            f"a depth-{depth} DynUNet has room for 1 to {depth - 2} extra heads",
            "lower deep_supr_num or raise depth (deep supervision needs depth >= 3)",
        )
    model = DynUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_outputs,
        kernel_size=[3] * depth,
        strides=strides,
        upsample_kernel_size=strides[1:],
        deep_supervision=deep_supervision,
        deep_supr_num=max(heads, 1),
        **kwargs,
    )
    model.gradcam_layer = "bottleneck"
    return model
