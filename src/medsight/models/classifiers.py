"""Classification networks, 2D and 3D, registered by name.

Every factory takes ``(*, in_channels, num_outputs, spatial_dims, **kwargs)`` and returns a
module mapping ``(N, in_channels, *spatial)`` to logits ``(N, num_outputs)``; the sigmoid or
softmax is applied by the caller. Each model names its last convolutional block in
``model.gradcam_layer`` (a dotted path for ``model.get_submodule``), for Grad-CAM.

Example:
    >>> model = create_model("compact_cnn", in_channels=1, num_outputs=2, spatial_dims=2)
    >>> model(torch.zeros(4, 1, 28, 28)).shape
    torch.Size([4, 2])
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from medsight.errors import ConfigError
from medsight.models.registry import register_model


def _layers(spatial_dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module], type[nn.Module]]:
    """``(Conv, BatchNorm, MaxPool, AdaptiveAvgPool)`` for 2D or 3D.

    The segmenters take these from MONAI's layer factories; a classifier does not, because importing MONAI
    (about 430 modules, longer than torch itself) would be paid by every classifier prediction, service
    worker and ``predict --workers`` process, none of which otherwise loads MONAI."""
    if spatial_dims == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d
    if spatial_dims == 3:
        return nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d
    raise ConfigError(f"spatial_dims={spatial_dims}", "classifiers are 2D or 3D", "use a 2- or 3-value preprocess.size")


def _conv_bn_relu(spatial_dims: int, cin: int, cout: int, batch_norm: bool = True) -> list[nn.Module]:
    conv, norm, _, _ = _layers(spatial_dims)
    layers: list[nn.Module] = [conv(cin, cout, kernel_size=3, padding=1, bias=not batch_norm)]
    if batch_norm:
        layers.append(norm(cout))
    layers.append(nn.ReLU(inplace=True))
    return layers


class ClassicCNN(nn.Module):
    """The classic small CNN: three conv stages (64, 128, 256) with pooling, FC 512, dropout, head.

    Args:
        in_channels: input channels.
        num_outputs: logits per example.
        spatial_dims: 2 or 3.
        batch_norm: BatchNorm after every convolution.
        dropout: dropout before the head.
        grid: side of the adaptive average pooling grid before the FC layer (default 4 in
            2D, 2 in 3D), so any input of at least 8 pixels per axis works.
    """

    gradcam_layer = "features.conv3"

    def __init__(
        self,
        *,
        in_channels: int,
        num_outputs: int,
        spatial_dims: int,
        batch_norm: bool = True,
        dropout: float = 0.25,
        grid: int | None = None,
    ) -> None:
        super().__init__()
        grid = grid or (4 if spatial_dims == 2 else 2)
        _, _, pool, avg = _layers(spatial_dims)
        widths = (in_channels, 64, 128, 256)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i in range(3):
            stages[f"conv{i + 1}"] = nn.Sequential(
                *_conv_bn_relu(spatial_dims, widths[i], widths[i + 1], batch_norm)
            )
            stages[f"pool{i + 1}"] = pool(2)
        self.features = nn.Sequential(stages)
        self.pool = avg(grid)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * grid**spatial_dims, 512),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(512, num_outputs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class CompactCNN(nn.Module):
    """A fast compact CNN for 28 to 64 px inputs (about 0.29M parameters in 2D at width 32).

    Three stages of two 3x3 conv-BN-ReLU (widths ``width``, ``2 * width``, ``4 * width``),
    max-pooling between stages, global average pooling, dropout and a linear head. Only
    ops that keep ``channels_last`` memory format in 2D.

    Args:
        in_channels: input channels.
        num_outputs: logits per example.
        spatial_dims: 2 or 3.
        width: channels of the first stage.
        dropout: dropout before the head.
    """

    gradcam_layer = "features.stage3"

    def __init__(
        self, *, in_channels: int, num_outputs: int, spatial_dims: int, width: int = 32, dropout: float = 0.2
    ) -> None:
        super().__init__()
        _, _, pool, avg = _layers(spatial_dims)
        widths = (in_channels, width, 2 * width, 4 * width)
        stages: OrderedDict[str, nn.Module] = OrderedDict()
        for i in range(3):
            if i:
                stages[f"pool{i}"] = pool(2)
            stages[f"stage{i + 1}"] = nn.Sequential(
                *_conv_bn_relu(spatial_dims, widths[i], widths[i + 1]),
                *_conv_bn_relu(spatial_dims, widths[i + 1], widths[i + 1]),
            )
        self.features = nn.Sequential(stages)
        self.pool = avg(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(widths[-1], num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(torch.flatten(self.pool(self.features(x)), 1)))


@register_model("classic_cnn")
def classic_cnn(*, in_channels: int, num_outputs: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    """:class:`ClassicCNN`; kwargs: ``batch_norm`` (True), ``dropout`` (0.25), ``grid``."""
    return ClassicCNN(in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims, **kwargs)


@register_model("compact_cnn")
def compact_cnn(*, in_channels: int, num_outputs: int, spatial_dims: int, **kwargs: Any) -> nn.Module:
    """:class:`CompactCNN`; kwargs: ``width`` (32), ``dropout`` (0.2)."""
    return CompactCNN(in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims, **kwargs)


def _monai_resnet(
    depth: int, *, in_channels: int, num_outputs: int, spatial_dims: int, small_input: bool, **kwargs: Any
) -> nn.Module:
    from monai.networks import nets

    _layers(spatial_dims)
    if small_input:
        kwargs = {"conv1_t_size": 3, "conv1_t_stride": 1, "no_max_pool": True, **kwargs}
    factory = nets.resnet18 if depth == 18 else nets.resnet50
    model = factory(spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_outputs, **kwargs)
    model.gradcam_layer = "layer4"
    return model


@register_model("resnet18")
def resnet18(
    *, in_channels: int, num_outputs: int, spatial_dims: int, small_input: bool = False, **kwargs: Any
) -> nn.Module:
    """MONAI's ResNet-18. ``small_input=True`` (for inputs up to ~64 px) uses a 3x3 stride-1
    first convolution and no max-pool; other kwargs go to ``monai.networks.nets.resnet18``."""
    return _monai_resnet(
        18, in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims,
        small_input=small_input, **kwargs,
    )


@register_model("resnet50")
def resnet50(
    *, in_channels: int, num_outputs: int, spatial_dims: int, small_input: bool = False, **kwargs: Any
) -> nn.Module:
    """MONAI's ResNet-50; ``small_input`` as for :func:`resnet18`."""
    return _monai_resnet(
        50, in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims,
        small_input=small_input, **kwargs,
    )


@register_model("densenet121")
def densenet121(
    *, in_channels: int, num_outputs: int, spatial_dims: int, small_input: bool = False, **kwargs: Any
) -> nn.Module:
    """MONAI's DenseNet-121; other kwargs go to ``monai.networks.nets.DenseNet121``.

    ``small_input=True`` replaces the 7x7 stride-2 stem and its max-pool with a 3x3
    stride-1 convolution, so 28 px inputs survive the three transition poolings.
    """
    from monai.networks.nets import DenseNet121

    conv, _, _, _ = _layers(spatial_dims)
    model = DenseNet121(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_outputs, **kwargs)
    if small_input:
        stem = model.features.conv0
        model.features.conv0 = conv(in_channels, stem.out_channels, kernel_size=3, padding=1, bias=False)
        model.features.pool0 = nn.Identity()
    model.gradcam_layer = "features.denseblock4"
    return model

