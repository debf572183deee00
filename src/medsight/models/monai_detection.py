"""MONAI's detection classes where they reach for torchvision, which has no CPU build here.

Two places in MONAI 1.6's detection need torchvision without saying so up front:

* ``resnet_fpn_feature_extractor`` builds its ResNet body with torchvision's ``IntermediateLayerGetter``:
  :class:`ResNetFPN` is that extractor (a MONAI ResNet body, MONAI's ``FeaturePyramidNetwork`` and its
  max-pooled extra level) with the same state-dict layout (``body.*``, ``fpn.*``) and outputs;
* ``RetinaNetDetector.compute_anchor_matched_idxs`` first checks whether its matcher is torchvision's
  ``Matcher``, and that check itself raises without torchvision, even with MONAI's own ATSS matcher set:
  :class:`ATSSRetinaNetDetector` matches with the ATSS matcher directly, and is otherwise MONAI's detector.

This module imports MONAI (about 400 modules) when it is imported: :mod:`medsight.models.detectors` imports it
only when a detector is built.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.apps.detection.networks.retinanet_detector import RetinaNetDetector
from monai.apps.detection.utils.ATSS_matcher import ATSSMatcher
from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool
from torch import Tensor, nn


class ResNetFPN(nn.Module):
    """A MONAI ResNet body up to its deepest returned layer, MONAI's feature pyramid and a max-pooled level.

    Args:
        backbone: a MONAI ``ResNet``; its layers after the deepest returned one are not kept.
        returned_layers: ResNet layers (1-4) whose outputs feed the pyramid, in increasing order.
        out_channels: channels of every pyramid level.
        spatial_dims: 2 or 3.
    """

    def __init__(self, backbone: nn.Module, returned_layers: Sequence[int], out_channels: int, spatial_dims: int):
        super().__init__()
        deepest = f"layer{max(returned_layers)}"
        body: OrderedDict[str, nn.Module] = OrderedDict()
        for name, child in backbone.named_children():
            body[name] = child
            if name == deepest:
                break
        self.body = nn.ModuleDict(body)
        self.return_layers = {f"layer{k}": str(i) for i, k in enumerate(returned_layers)}
        widest = backbone.in_planes  # layer4's channels; layer k has 1/8 * 2**(k-1) of them (MONAI's count)
        in_channels = [widest // 8 * 2 ** (k - 1) for k in returned_layers]
        self.fpn = FeaturePyramidNetwork(spatial_dims, in_channels, out_channels, LastLevelMaxPool(spatial_dims))
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """The pyramid's maps, highest resolution first, the max-pooled level (``pool``) last."""
        features: OrderedDict[str, Tensor] = OrderedDict()
        for name, module in self.body.items():
            x = module(x)
            if name in self.return_layers:
                features[self.return_layers[name]] = x
        return self.fpn(features)


class ATSSRetinaNetDetector(RetinaNetDetector):
    """MONAI's ``RetinaNetDetector`` matching anchors with its ATSS matcher (``set_atss_matcher``) only."""

    def compute_anchor_matched_idxs(
        self, anchors: list[Tensor], targets: list[dict[str, Tensor]], num_anchor_locs_per_level: Sequence[int]
    ) -> list[Tensor]:
        """Each image's matched box index per anchor (-1: background), as MONAI's method returns them.

        Raises:
            TypeError: the matcher is not MONAI's ATSS matcher.
        """
        if not isinstance(self.proposal_matcher, ATSSMatcher):
            raise TypeError("this detector matches anchors with set_atss_matcher() only")
        matched = []
        for anchors_per_image, targets_per_image in zip(anchors, targets, strict=True):
            boxes = targets_per_image[self.target_box_key].to(anchors_per_image.device)
            if boxes.numel() == 0:
                matched.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64,
                                          device=anchors_per_image.device))
                continue
            _, idxs = self.proposal_matcher(boxes, anchors_per_image, num_anchor_locs_per_level,
                                            self.num_anchors_per_loc)
            matched.append(idxs)
        return matched
