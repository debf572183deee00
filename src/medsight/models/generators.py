"""The GAN generator networks and sampling from them: a class-conditional DCGAN generator
(noise + label -> image) and a U-Net Pix2Pix generator (one-hot mask -> image).

Both end in ``tanh``; :func:`to_unit_range` maps their output to ``[0, 1]``, the range of
medsight's ``minmax`` preprocessing the GANs were trained on, so samples sit on the same scale
as real training images. Their adversarial training (discriminators, the loop) is
:mod:`medsight.gan`; the generator folder is :mod:`medsight.models.generator_store`.

Example:
    >>> net, info = load_generator("runs/gan/generator")
    >>> images = generate(net, torch.tensor([0, 1, 1]), seed=0)   # (3, C, H, W) in [0, 1]
"""

from __future__ import annotations

import math

import torch
from torch import nn

from medsight.errors import ConfigError

SIZE_RANGE = (28, 64)
DEPTH = 3


def check_size(size: tuple[int, ...]) -> tuple[int, int]:
    """A 2D size within :data:`SIZE_RANGE`.

    Raises:
        ConfigError: not two values, or a side outside 28..64.
    """
    if len(size) != 2 or not all(SIZE_RANGE[0] <= int(n) <= SIZE_RANGE[1] for n in size):
        raise ConfigError(
            f"size={list(size)}", f"the GANs make 2D images of {SIZE_RANGE[0]} to {SIZE_RANGE[1]} pixels a side",
            "pass --size with one or two values in that range (e.g. 28 for MedMNIST, 64 otherwise)",
        )
    return int(size[0]), int(size[1])


def sampling_stages(size: tuple[int, int]) -> int:
    """Up/down-sampling stages: 2 up to 32 pixels, 3 above."""
    return 2 if max(size) <= 32 else 3


class DCGANGenerator(nn.Module):
    """Noise + label -> image in ``[-1, 1]``.

    Args:
        num_classes: number of labels.
        channels: image channels.
        size: ``(height, width)``, 28..64 each.
        latent_dim: noise dimension.
        width: channels of the last upsampling stage (the first has ``width * 2**(stages - 1)``).
    """

    def __init__(self, *, num_classes: int, channels: int, size: tuple[int, int], latent_dim: int = 64,
                 width: int = 64) -> None:
        super().__init__()
        self.size = check_size(size)
        self.latent_dim = latent_dim
        stages = sampling_stages(self.size)
        self.start = tuple(math.ceil(n / 2**stages) for n in self.size)
        top = width * 2 ** (stages - 1)
        self.embed = nn.Embedding(num_classes, latent_dim)
        self.project = nn.Sequential(
            nn.Linear(2 * latent_dim, top * self.start[0] * self.start[1], bias=False),
            nn.BatchNorm1d(top * self.start[0] * self.start[1]),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        for i in range(stages):
            cin, cout = top // 2**i, max(top // 2 ** (i + 1), width // 2)
            blocks += [nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True)]
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Sequential(nn.Conv2d(cout, channels, 3, padding=1), nn.Tanh())
        self.top = top

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = self.project(torch.cat([z, self.embed(labels)], dim=1))
        x = self.out(self.blocks(x.view(len(z), self.top, *self.start)))
        return x[..., : self.size[0], : self.size[1]]


def down_block(cin: int, cout: int, norm: bool = True) -> nn.Sequential:
    """A stride-2 convolution halving the size, instance norm (unless ``norm`` is False), LeakyReLU 0.2."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=not norm)]
    if norm:
        layers.append(nn.InstanceNorm2d(cout, affine=True))
    return nn.Sequential(*layers, nn.LeakyReLU(0.2))


class UNetGenerator(nn.Module):
    """One-hot mask ``(N, num_labels, H, W)`` -> image ``(N, channels, H, W)`` in ``[-1, 1]``.

    ``DEPTH`` stride-2 encoder stages and transposed-convolution decoder stages with skip
    connections; ``H`` and ``W`` must be multiples of ``2**DEPTH``.
    """

    def __init__(self, *, num_labels: int, channels: int, width: int = 32) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(DEPTH)]
        self.downs = nn.ModuleList(
            down_block(num_labels if i == 0 else widths[i - 1], widths[i], norm=i > 0) for i in range(DEPTH)
        )
        self.ups = nn.ModuleList()
        for i in reversed(range(DEPTH)):
            cin = widths[i] if i == DEPTH - 1 else 2 * widths[i]
            cout = widths[i - 1] if i else width
            self.ups.append(nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=False),
                                          nn.InstanceNorm2d(cout, affine=True), nn.ReLU(inplace=True)))
        self.out = nn.Sequential(nn.Conv2d(width + num_labels, channels, 3, padding=1), nn.Tanh())

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        skips, x = [], masks
        for down in self.downs:
            x = down(x)
            skips.append(x)
        skips.pop()
        for up in self.ups:
            x = up(x)
            if skips:
                x = torch.cat([x, skips.pop()], dim=1)
        return self.out(torch.cat([x, masks], dim=1))


def to_unit_range(images):
    """Generator output in ``[-1, 1]`` to the ``[0, 1]`` range of minmax preprocessing."""
    return ((images + 1.0) * 0.5).clamp(0.0, 1.0)


def generate(net: DCGANGenerator, labels: torch.Tensor, *, seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """Images for ``labels`` from a loaded generator, ``(N, C, H, W)`` in ``[0, 1]``; reproducible from ``seed``."""
    rng = torch.Generator().manual_seed(seed)
    parts = []
    net.eval()
    with torch.no_grad():
        for start in range(0, len(labels), batch_size):
            chunk = labels[start: start + batch_size]
            parts.append(to_unit_range(net(torch.randn(len(chunk), net.latent_dim, generator=rng), chunk)))
    if not parts:
        return torch.zeros(0, net.out[0].out_channels, *net.size)
    return torch.cat(parts)

