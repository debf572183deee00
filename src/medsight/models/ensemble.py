"""An ensemble of segmenters that averages their probabilities: the fold models of a cross-validation.

``fold_ensemble`` builds ``members`` copies of one registered segmenter (``member`` with
``member_kwargs``); its forward returns ``log(mean_k softmax(member_k(x)))``. A softmax of
that is the members' mean probability, and its argmax the ensemble's class, so every caller
that treats a segmenter's output as logits (the sliding window, the service, ONNX export)
uses the ensemble unchanged. The bundle keeps the members' weights under ``members.{k}.``.

Example:
    >>> net = create_model("fold_ensemble", in_channels=1, num_outputs=2, spatial_dims=2,
    ...                    member="unet", members=4, member_kwargs={"base_features": 16})
    >>> torch.softmax(net(x), 1)  # the mean of the 4 members' softmax
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from medsight.errors import ConfigError
from medsight.models.registry import create_model, register_model


class ProbabilityAverage(nn.Module):
    """Logits whose softmax is the mean softmax of ``members`` (a numerically stable log-mean-exp)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        inner = getattr(members[0], "gradcam_layer", None)
        if inner:
            self.gradcam_layer = f"members.0.{inner}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.stack([torch.log_softmax(member(x).float(), dim=1) for member in self.members])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


@register_model("fold_ensemble", task="ensemble")
def fold_ensemble(
    *, in_channels: int, num_outputs: int, spatial_dims: int, member: str, members: int,
    member_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """:class:`ProbabilityAverage` over ``members`` segmenters ``member`` built with ``member_kwargs``."""
    if members < 1 or member == "fold_ensemble":
        raise ConfigError(f"fold_ensemble of {members} x {member}", "needs 1+ members that are not ensembles",
                          "give member the name of a segmenter and members >= 1")
    nets = [create_model(member, in_channels=in_channels, num_outputs=num_outputs, spatial_dims=spatial_dims,
                         **(member_kwargs or {})) for _ in range(members)]
    return ProbabilityAverage(nets)
