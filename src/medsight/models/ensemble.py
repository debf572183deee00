"""An ensemble that averages probabilities: the fold models of a cross-validation, over flipped views.

``fold_ensemble`` builds ``members`` copies of one registered network (``member`` with
``member_kwargs``: a segmenter or a classifier) and averages their probabilities over the members
and, with ``flips``, over flipped views of the input (test-time augmentation): each member sees the
image as it is and flipped along each list of spatial axes in ``flips`` (``[[-1]]``: the horizontal
flip; ``[[-1], [-2], [-2, -1]]``: every mirror of a 2D image). A segmenter's output is flipped back
before it is averaged; a classifier's is not (its class does not move).

The forward returns logits of that mean probability, so every caller that treats the output as
logits (the sliding window, ``Predictor``, the service, ONNX export) uses the ensemble unchanged:

- a softmax head (``num_outputs`` >= 2): ``log(mean softmax)``; a softmax of it is the mean
  probability and its argmax the ensemble's class;
- a sigmoid head (``num_outputs`` == 1, a binary classifier): the mean of the members' sigmoid
  probabilities ``p`` as its logit ``log(p / (1 - p))``; a sigmoid of it is ``p``.

A single model with test-time augmentation is a one-member ensemble. The bundle keeps the members'
weights under ``members.{k}.``; Grad-CAM's layer is member 0's.

Example:
    >>> net = create_model("fold_ensemble", in_channels=1, num_outputs=2, spatial_dims=2,
    ...                    member="unet", members=4, member_kwargs={"base_features": 16}, flips=[[-1]])
    >>> torch.softmax(net(x), 1)  # the mean of 4 members x 2 views of their softmax
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from medsight.errors import ConfigError
from medsight.models.registry import create_model, register_model


def mean_probability_logits(outputs: Sequence[torch.Tensor], *, sigmoid: bool | None = None) -> torch.Tensor:
    """Logits of the mean probability of ``outputs`` (each ``(N, K, ...)`` logits of one member or view).

    ``sigmoid`` (by default: ``K == 1``) is a sigmoid output: the mean sigmoid probability ``p`` comes back
    as ``log(p / (1 - p))``; otherwise ``log(mean softmax)`` over dim 1. Both are computed with
    log-sum-exp, so they stay finite for large logits.

    Example:
        >>> mean_probability_logits([torch.tensor([[0.0]]), torch.tensor([[math.log(3)]])])  # p = (0.5 + 0.75) / 2
        tensor([[0.5108]])
    """
    stacked = torch.stack([out.float() for out in outputs])
    log_n = math.log(len(outputs))
    if stacked.shape[2] == 1 if sigmoid is None else sigmoid:
        log_p = torch.logsumexp(nn.functional.logsigmoid(stacked), dim=0) - log_n
        log_q = torch.logsumexp(nn.functional.logsigmoid(-stacked), dim=0) - log_n
        return log_p - log_q
    return torch.logsumexp(torch.log_softmax(stacked, dim=2), dim=0) - log_n


class ProbabilityAverage(nn.Module):
    """Logits of the mean probability of ``members`` over the input and its ``flips`` (see the module);
    ``sigmoid``: the members have one sigmoid output."""

    def __init__(self, members: list[nn.Module], flips: Sequence[Sequence[int]] = (), *, sigmoid: bool = False) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.sigmoid = sigmoid
        self.flips = [tuple(int(axis) for axis in axes) for axes in flips]
        inner = getattr(members[0], "gradcam_layer", None)
        if inner:
            self.gradcam_layer = f"members.0.{inner}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for axes in [(), *self.flips]:
            view = torch.flip(x, axes) if axes else x
            for member in self.members:
                out = member(view)
                outputs.append(torch.flip(out, axes) if axes and out.ndim == x.ndim else out)
        return mean_probability_logits(outputs, sigmoid=self.sigmoid)


def check_flips(flips: Sequence[Sequence[int]], spatial_dims: int) -> list[list[int]]:
    """``flips`` as lists of distinct negative spatial axes (``-1`` is the last, ``-spatial_dims`` the first).

    Raises:
        ConfigError: an empty view, a repeated axis, or an axis that is not one of the image's spatial axes.
    """
    checked = []
    for axes in flips:
        axes = [int(axis) for axis in axes]
        if not axes or len(set(axes)) != len(axes) or any(not -spatial_dims <= a <= -1 for a in axes):
            raise ConfigError(f"flips={[list(v) for v in flips]}", f"view {axes} is not a set of spatial axes "
                              f"{list(range(-spatial_dims, 0))} of a {spatial_dims}D image",
                              "give each view as a list of distinct negative axes, e.g. [[-1]] for a horizontal flip")
        checked.append(sorted(axes))
    return checked


@register_model("fold_ensemble", task="ensemble")
def fold_ensemble(
    *, in_channels: int, num_outputs: int, spatial_dims: int, member: str, members: int,
    member_kwargs: dict[str, Any] | None = None, flips: Sequence[Sequence[int]] | None = None,
) -> nn.Module:
    """:class:`ProbabilityAverage` over ``members`` networks ``member`` built with ``member_kwargs``, and
    over the views ``flips`` (none: the input alone)."""
    if members < 1 or member == "fold_ensemble":
        raise ConfigError(f"fold_ensemble of {members} x {member}", "needs 1+ members that are not ensembles",
                          "give member the name of a segmenter or classifier and members >= 1")
    views = check_flips(flips or [], spatial_dims)
    nets = [create_model(member, in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims,
                         **(member_kwargs or {})) for _ in range(members)]
    return ProbabilityAverage(nets, views, sigmoid=num_outputs == 1)
