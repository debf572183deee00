"""Lesion detectors from MONAI's detection components, 2D and 3D, registered by name.

``retinanet`` is MONAI's ``RetinaNet`` (classification and box-regression heads shared over the levels of a
feature pyramid) on a ResNet-FPN feature extractor: a MONAI ``resnet`` body (no pretrained weights, the data's
input channels) and MONAI's ``FeaturePyramidNetwork`` with one extra max-pooled level. :func:`build_detector`
wraps it in MONAI's ``RetinaNetDetector`` with the anchors (``AnchorGeneratorWithAnchorShape``), the ATSS
matcher, hard-negative sampling, the box coder and the inference post-processing (score floor, NMS, the
number of boxes kept). In train mode the detector maps images and target boxes to losses; in eval mode it
maps images to scored boxes in the input's index space (MONAI's ``StandardMode``: ``[lo_0, .., hi_0, ..]``
along the tensor's spatial axes, exactly :class:`~medsight.boxes.Boxes`' corner order).

Feature levels. Level ``i`` has stride ``finest_stride * 2**i`` input pixels; there are as many levels as
anchor sizes (one anchor size per level, each ``[extent_axis0, extent_axis1(, extent_axis2)]`` in input
pixels). The default ``finest_stride`` 4 (ResNet's ``layer1``) keeps a level fine enough for lesions of
10-30 pixels (FracAtlas' fractures: a median box of about 30 pixels); the body stops at the deepest level's
layer, so unused ResNet layers cost nothing. The FPN is 64 channels wide by default instead of RetinaNet's
256: each head is four 3x3 convolutions at every position of every level, so its cost grows with the square
of the width, and at stride 4 on 256-512 pixel inputs 256 channels would cost ~16 times more on a CPU for
little gain on one- to three-class medical data.

Anchors. In 2D each level has one anchor per ``aspect_ratio`` ``r`` (height/width, i.e. axis 0 over axis 1):
``[s0 * sqrt(r), s1 / sqrt(r)]`` for the level's size ``[s0, s1]`` (the same area). In 3D each level has one
anchor, the level's size (the ratios are not applied). Without sizes a level's anchor is 4 strides wide on
every axis (RetinaNet's 32 pixels at stride 8).

The state dict a bundle saves is the network's (``detector.network.state_dict()``): the anchors, matcher,
sampler and post-processing hold no weights and are rebuilt from the bundle's ``detection`` settings.

Example:
    >>> detector = build_detector(2, 1, ["lesion"], DetectConfig(), [[16, 16], [32, 32], [64, 64]])
    >>> losses = detector(torch.zeros(2, 1, 64, 64), [{"boxes": torch.tensor([[8., 8, 24, 30]]),
    ...                                                "labels": torch.tensor([0])}] * 2)
    >>> sorted(losses)
    ['box_regression', 'classification']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from medsight.bundle_fields import DetectionSettings
from medsight.config import DetectConfig, ModelConfig
from medsight.errors import ConfigError
from medsight.models.registry import create_model, register_model

BACKBONES = ("resnet10", "resnet18", "resnet34", "resnet50")
"""MONAI ResNets a detector can stand on (``monai.networks.nets.resnet``)."""

ATSS_CANDIDATES = 4
"""Anchors per level (nearest to a box's centre) the ATSS matcher considers for each box (MONAI's default)."""

SAMPLED_ANCHORS = 64
"""Anchors per image in the classification loss: the positives and the hardest negatives (MONAI's LUNA16 recipe)."""

POSITIVE_FRACTION = 0.3
"""At most this share of the sampled anchors are positives."""

MIN_NEGATIVES = 16
"""At least this many hard negatives per image, so an image without boxes still teaches the background."""

NEGATIVE_POOL = 20
"""Hard negatives are drawn at random from this many times as many highest-scored negatives."""

TOPK_PER_LEVEL = 1000
"""Boxes per feature level that reach non-maximum suppression (MONAI's default)."""


@dataclass(frozen=True)
class DetectorSpec:
    """What a detector was built from: enough to rebuild it from a bundle (:meth:`model_config`, :meth:`settings`)."""

    spatial_dims: int
    class_names: tuple[str, ...]
    anchor_sizes: tuple[tuple[float, ...], ...]
    aspect_ratios: tuple[float, ...]
    backbone: str
    fpn_channels: int
    finest_stride: int

    def model_config(self) -> ModelConfig:
        """The bundle's ``model``: the registered ``retinanet`` and its keyword arguments."""
        return ModelConfig(name="retinanet", kwargs={
            "anchor_sizes": [list(s) for s in self.anchor_sizes], "aspect_ratios": list(self.aspect_ratios),
            "backbone": self.backbone, "fpn_channels": self.fpn_channels, "finest_stride": self.finest_stride})

    def settings(self, detect: DetectConfig, **threshold: Any) -> DetectionSettings:
        """The bundle's ``detection``: these anchors, ``detect``'s post-processing and, as ``threshold``, the
        shipped ``score_threshold`` and its ``threshold_note`` (left out: :class:`DetectionSettings`' defaults)."""
        return DetectionSettings(
            anchor_sizes=[list(s) for s in self.anchor_sizes], aspect_ratios=list(self.aspect_ratios),
            score_floor=detect.score_floor, nms_iou=detect.nms_iou, max_detections=detect.max_detections,
            backbone=self.backbone, **threshold)


def level_strides(levels: int, finest_stride: int = 4) -> list[int]:
    """The stride in input pixels of each of ``levels`` feature levels (the coarsest: the max-pooled one).

    Example:
        >>> level_strides(4)
        [4, 8, 16, 32]
    """
    return [finest_stride * 2**i for i in range(levels)]


def anchor_shapes(anchor_sizes: Sequence[Sequence[float]], aspect_ratios: Sequence[float]) -> list[list[list[float]]]:
    """Each level's anchor shapes ``[extent_axis0, ..]``: 2D one per aspect ratio, 3D the level's size alone.

    Example:
        >>> anchor_shapes([[16, 16]], [0.25, 1.0])
        [[[8.0, 32.0], [16.0, 16.0]]]
    """
    if len(anchor_sizes[0]) == 3:
        return [[[float(v) for v in size]] for size in anchor_sizes]
    return [[[float(size[0]) * math.sqrt(r), float(size[1]) / math.sqrt(r)] for r in aspect_ratios]
            for size in anchor_sizes]


@register_model("retinanet", task="detection")
def retinanet(
    *,
    in_channels: int,
    num_outputs: int,
    spatial_dims: int,
    anchor_sizes: Sequence[Sequence[float]],
    aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0),
    backbone: str = "resnet18",
    fpn_channels: int = 64,
    finest_stride: int = 4,
) -> nn.Module:
    """MONAI's ``RetinaNet`` on a ResNet-FPN: one level per anchor size, ``num_outputs`` classes (no background).

    Raises:
        ConfigError: an unknown backbone, anchor sizes that do not fit ``spatial_dims``, more levels than the
            ResNet has layers below ``finest_stride``, or a pyramid width that is not a multiple of 8.
    """
    from monai.apps.detection.networks.retinanet_network import RetinaNet
    from monai.networks.nets import resnet

    from medsight.models.monai_detection import ResNetFPN

    layers = _returned_layers(spatial_dims, anchor_sizes, finest_stride)
    if backbone not in BACKBONES:
        raise ConfigError(f"model.kwargs.backbone={backbone}", "not a detector backbone",
                          f"choose one of: {', '.join(BACKBONES)}")
    if fpn_channels < 8 or fpn_channels % 8:
        raise ConfigError(f"model.kwargs.fpn_channels={fpn_channels}", "the detection heads normalise 8 groups",
                          "use a multiple of 8 (64 by default)")
    body = getattr(resnet, backbone)(spatial_dims=spatial_dims, n_input_channels=in_channels,
                                     conv1_t_size=7, conv1_t_stride=2)
    return RetinaNet(
        spatial_dims=spatial_dims, num_classes=num_outputs,
        num_anchors=len(anchor_shapes(anchor_sizes, aspect_ratios)[0]),
        feature_extractor=ResNetFPN(body, layers, fpn_channels, spatial_dims),
        size_divisible=level_strides(len(anchor_sizes), finest_stride)[-1],
    )


def build_detector(
    spatial_dims: int,
    in_channels: int,
    class_names: Sequence[str],
    detect: DetectConfig,
    anchor_sizes: Sequence[Sequence[float]] | None = None,
    *,
    backbone: str = "resnet18",
    fpn_channels: int = 64,
    finest_stride: int = 4,
) -> Any:
    """A MONAI ``RetinaNetDetector``, ready to train (ATSS matcher, hard negatives) and to predict.

    Args:
        spatial_dims: 2 or 3.
        in_channels: the images' channels.
        class_names: the classes, without a background class; predicted labels index them.
        detect: aspect ratios and the post-processing (``score_floor``, ``nms_iou``, ``max_detections``).
        anchor_sizes: one ``[extent_axis0, ..]`` per feature level in input pixels (the plan's); None:
            ``detect.anchor_sizes``, else four levels of 4 strides each.
        backbone, fpn_channels, finest_stride: the network (see :func:`retinanet`).

    Returns:
        The detector; ``detector.network`` holds every weight, ``detector.spec`` (:class:`DetectorSpec`)
        gives the bundle's ``model`` and ``detection`` fields.

    Raises:
        ConfigError: as :func:`retinanet`, or no class names.
    """
    if not class_names:
        raise ConfigError("class_names", "a detector needs at least one class", "check the data set's labels")
    sizes = anchor_sizes if anchor_sizes is not None else detect.anchor_sizes
    if sizes is None:
        sizes = [[4.0 * stride] * spatial_dims for stride in level_strides(4, finest_stride)]
    spec = DetectorSpec(
        spatial_dims=spatial_dims, class_names=tuple(class_names),
        anchor_sizes=tuple(tuple(float(v) for v in size) for size in sizes),
        aspect_ratios=tuple(float(r) for r in detect.aspect_ratios), backbone=backbone,
        fpn_channels=fpn_channels, finest_stride=finest_stride)
    config = spec.model_config()
    network = create_model(config.name, in_channels=in_channels, num_outputs=len(class_names),
                           spatial_dims=spatial_dims, **config.kwargs)
    detector = wrap_network(network, spec.settings(detect))
    detector.spec = spec
    return detector


def wrap_network(network: nn.Module, settings: DetectionSettings) -> Any:
    """``network`` (a ``retinanet``) in a ``RetinaNetDetector`` with ``settings``' anchors and post-processing.

    Raises:
        ConfigError: the anchors give another number of anchors per position than the network predicts.
    """
    from monai.apps.detection.utils.anchor_utils import AnchorGeneratorWithAnchorShape

    from medsight.models.monai_detection import ATSSRetinaNetDetector

    shapes = anchor_shapes(settings.anchor_sizes, settings.aspect_ratios)
    if len(shapes[0]) != network.num_anchors:
        raise ConfigError("detection.anchor_sizes", f"{len(shapes[0])} anchors per position, the network predicts "
                          f"{network.num_anchors}", "use the aspect ratios the network was built with")
    anchors = AnchorGeneratorWithAnchorShape(feature_map_scales=[1] * len(shapes), base_anchor_shapes=shapes[0])
    # MONAI scales one set of shapes per level; the plan gives every level its own sizes.
    anchors.cell_anchors = [anchors.generate_anchors_using_shape(torch.tensor(level)) for level in shapes]
    detector = ATSSRetinaNetDetector(network, anchors)
    detector.set_atss_matcher(num_candidates=ATSS_CANDIDATES, center_in_gt=False)
    detector.set_hard_negative_sampler(batch_size_per_image=SAMPLED_ANCHORS, positive_fraction=POSITIVE_FRACTION,
                                       min_neg=MIN_NEGATIVES, pool_size=NEGATIVE_POOL)
    detector.set_box_selector_parameters(score_thresh=settings.score_floor, topk_candidates_per_level=TOPK_PER_LEVEL,
                                         nms_thresh=settings.nms_iou, detections_per_img=settings.max_detections)
    return detector


def _returned_layers(spatial_dims: int, anchor_sizes: Sequence[Sequence[float]], finest_stride: int) -> list[int]:
    """The ResNet layers feeding the pyramid: the one at ``finest_stride`` and the next, one level per anchor
    size but the last (the max-pooled level).

    Raises:
        ConfigError: see :func:`retinanet`.
    """
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims={spatial_dims}", "detectors are 2D or 3D",
                          "use a 2- or 3-value preprocess.size")
    where = f"detect.anchor_sizes={[list(s) for s in anchor_sizes]}"
    if not anchor_sizes or any(len(s) != spatial_dims or min(s) <= 0 for s in anchor_sizes):
        raise ConfigError(where, f"each feature level needs {spatial_dims} positive anchor extents",
                          f"give one [{', '.join(['extent'] * spatial_dims)}] per level, in input pixels")
    if finest_stride not in (4, 8, 16):
        raise ConfigError(f"finest_stride={finest_stride}", "the ResNet's layers are at strides 4, 8, 16 and 32",
                          "use 4, 8 or 16")
    first = int(math.log2(finest_stride)) - 1
    deepest = first + len(anchor_sizes) - 2
    if len(anchor_sizes) < 2 or deepest > 4:
        raise ConfigError(where, f"{len(anchor_sizes)} levels from stride {finest_stride}: a ResNet gives 2 to "
                          f"{6 - first} (its layers {first}-4 and one max-pooled level)", "give fewer anchor sizes")
    return list(range(first, deepest + 1))


__all__ = ["BACKBONES", "DetectorSpec", "anchor_shapes", "build_detector", "level_strides",
           "retinanet", "wrap_network"]
