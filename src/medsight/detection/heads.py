"""A MONAI RetinaNet as the one training loop wants it: a network that returns one tensor, and a loss on it.

The loop (:func:`medsight.training.loop.fit`) trains ``loss(net(x), y)`` on tensors. A
:class:`~monai.apps.detection.networks.retinanet_detector.RetinaNetDetector` computes its losses inside its own
``forward``, from a dict of per-level head outputs and a list of per-image box dicts. This module splits that
in two, with MONAI doing all the work:

* :class:`FlatHeads` wraps the detector's network: ``images -> (B, anchors, classes + 2 * D)``, the classification
  logits and box regressions of every anchor of every level, in the detector's own order (``_reshape_maps``);
* :class:`DetectorLoss` turns that tensor and the padded targets (:func:`pad_targets`) back into what the detector
  wants and returns its classification + box-regression loss (``compute_loss``: the ATSS matcher, the box coder and
  the hard-negative sampler the detector was built with);
* :func:`decode` is the detector's own post-processing (box decoding, score floor, NMS, top-k) on that tensor.

The input size is fixed during training, so the anchors are generated once (:func:`anchors_for`).

Example:
    >>> net, anchors = FlatHeads(detector), anchors_for(detector, [1, 64, 64])
    >>> loss = DetectorLoss(detector, anchors)(net(images), pad_targets(boxes_per_image, 2))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medsight.boxes import Boxes

#: the label of a padding row in :func:`pad_targets`
PAD = -1


@dataclass
class Anchors:
    """The anchors of one input size: ``(anchors, 2 * D)`` in the input's pixels, and the locations per level."""

    boxes: torch.Tensor
    locations_per_level: list[int]


class FlatHeads(nn.Module):
    """The detector's network with its per-level outputs flattened into one ``(B, anchors, C + 2 * D)`` tensor."""

    def __init__(self, detector) -> None:
        super().__init__()
        self.network = detector.network
        self._reshape = detector._reshape_maps
        self._keys = (detector.cls_key, detector.box_reg_key)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        outputs = self.network(images)
        if isinstance(outputs, (tuple, list)):
            half = len(outputs) // 2
            outputs = {self._keys[0]: list(outputs[:half]), self._keys[1]: list(outputs[half:])}
        return torch.cat([self._reshape(list(outputs[key])) for key in self._keys], dim=-1)


def anchors_for(detector, shape: Sequence[int]) -> Anchors:
    """The anchors of a ``(C, *spatial)`` input ``shape`` (one forward of zeros, no gradients)."""
    images = torch.zeros((1, *shape))
    was_training = detector.network.training
    detector.network.eval()
    with torch.no_grad():
        outputs = detector.network(images)
    detector.network.train(was_training)
    is_list = isinstance(outputs, (tuple, list))
    maps = list(outputs[: len(outputs) // 2] if is_list else outputs[detector.cls_key])
    boxes = detector.anchor_generator(images, maps)[0]
    return Anchors(boxes, [m.shape[2:].numel() for m in maps])


def pad_targets(boxes: Sequence[Boxes], spatial_dims: int) -> torch.Tensor:
    """``(B, M, 2 * D + 1)`` float32: each image's corners and label, padded with label :data:`PAD` rows."""
    width = 2 * spatial_dims + 1
    most = max([len(b) for b in boxes] + [1])
    out = torch.zeros((len(boxes), most, width), dtype=torch.float32)
    out[..., -1] = PAD
    for i, b in enumerate(boxes):
        if len(b):
            out[i, : len(b), :-1] = torch.from_numpy(np.asarray(b.corners, dtype=np.float32))
            out[i, : len(b), -1] = torch.from_numpy(b.labels.astype(np.float32))
    return out


def unpad_targets(targets: torch.Tensor, box_key: str = "boxes", label_key: str = "labels") -> list[dict]:
    """The per-image ``{boxes, labels}`` dicts MONAI's detector takes, from :func:`pad_targets`."""
    out = []
    for rows in targets:
        kept = rows[rows[:, -1] != PAD]
        out.append({box_key: kept[:, :-1], label_key: kept[:, -1].long()})
    return out


class DetectorLoss:
    """The detector's classification + box-regression loss on :class:`FlatHeads` outputs and padded targets."""

    def __init__(self, detector, anchors: Anchors) -> None:
        self.detector, self.anchors = detector, anchors

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        detector = self.detector
        heads = _split(detector, outputs)
        anchors = [self.anchors.boxes.to(outputs.device)] * len(outputs)
        truth = unpad_targets(targets, detector.target_box_key, detector.target_label_key)
        losses = detector.compute_loss(heads, truth, anchors, self.anchors.locations_per_level)
        return losses[detector.cls_key] + losses[detector.box_reg_key]


def decode(detector, outputs: torch.Tensor, anchors: Anchors, spatial: Sequence[int]) -> list[Boxes]:
    """The detector's post-processing on :class:`FlatHeads` outputs: scored :class:`Boxes` in the input's pixels."""
    heads = _split(detector, outputs)
    found = detector.postprocess_detections(heads, [anchors.boxes.to(outputs.device)] * len(outputs),
                                            [list(spatial)] * len(outputs), anchors.locations_per_level)
    return [Boxes(d[detector.target_box_key].detach().cpu().double().numpy(),
                  d[detector.target_label_key].detach().cpu().numpy(),
                  d[detector.pred_score_key].detach().cpu().double().numpy()) for d in found]


def _split(detector, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
    classes = detector.num_classes
    return {detector.cls_key: outputs[..., :classes], detector.box_reg_key: outputs[..., classes:]}
