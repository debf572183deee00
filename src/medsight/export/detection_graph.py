"""The exported graph of a detection bundle, and ``export.json``'s account of everything around it.

The graph is the part of the detector with weights: MONAI's ``RetinaNet`` (ResNet-FPN and the two heads) from
``image (batch, C, *spatial)`` to the raw head outputs of every anchor, flattened into
``classification (batch, anchors, classes)`` and ``box_regression (batch, anchors, 2 * D)`` in MONAI's anchor order
(:data:`~medsight.inference.detector_onnx.ANCHOR_ORDER`). The spatial axes are dynamic (any size that is a multiple
of the coarsest stride); the Detector feeds the bundle's input size.

Outside the graph, before it: decoding, the bundle's preprocessing
(:func:`~medsight.transforms.box_geometry.fit_sample`: channels, window, denoise, CLAHE, the aspect-keeping pad, the
resize, the intensity normalisation) and MONAI's zero padding to a multiple of the coarsest stride. After it: the
anchors, MONAI's ``BoxCoder`` decoding, the score floor, the top-k per level, clipping, per-class NMS and the box
limit (the Detector's Python post-processing, which both backends share), then the way back to the image's own
pixels. :func:`describe_detection` writes every number these steps need into ``export.json`` so that another runtime
can reproduce them.

Example:
    >>> graph = DetectionHeads(detector.detector)
    >>> classification, box_regression = graph(torch.zeros(2, 1, 64, 64))
    >>> classification.shape, box_regression.shape        # 3 levels at strides 4, 8, 16; 3 anchor shapes each
    (torch.Size([2, 1008, 1]), torch.Size([2, 1008, 4]))
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medsight.export.graph import _normalize_text, describe_preprocessing
from medsight.inference.detector_onnx import ANCHOR_ORDER, HEAD_OUTPUTS, LAYOUT_VERSION, export_settings


class DetectionHeads(nn.Module):
    """A MONAI ``RetinaNetDetector``'s network with its per-level maps flattened as the detector flattens them.

    MONAI's own flattening (``_reshape_maps``) checks its result for NaN, a data-dependent branch the exporter
    cannot trace; this is the same reshape and permutation without the check. ``network`` replaces the
    detector's (the export's copy with precise group norms, :mod:`medsight.export.precise`).
    """

    def __init__(self, detector, network: nn.Module | None = None) -> None:
        super().__init__()
        self.network = (detector.network if network is None else network).eval()
        self.keys = (detector.cls_key, detector.box_reg_key)
        self.channels = (detector.num_classes, 2 * detector.spatial_dims)
        self.anchors = detector.num_anchors_per_loc

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = self.network(image)
        classification, box_regression = (flatten_maps(list(outputs[key]), channels, self.anchors)
                                          for key, channels in zip(self.keys, self.channels, strict=True))
        return classification, box_regression


def flatten_maps(maps: list[torch.Tensor], channels: int, anchors: int) -> torch.Tensor:
    """``(B, anchors * channels, *spatial)`` maps -> ``(B, sum(positions * anchors), channels)``, MONAI's order."""
    flat = []
    for result in maps:
        batch, spatial = result.shape[0], result.shape[2:]
        grouped = result.reshape(batch, anchors, channels, *spatial)
        order = (0, *range(3, 3 + len(spatial)), 1, 2)  # (B, *spatial, anchors, channels)
        flat.append(grouped.permute(order).reshape(batch, -1, channels))
    return torch.cat(flat, dim=1)


def describe_detection(bundle, detector, padded: list[int]) -> dict[str, Any]:
    """``export.json``'s ``detection``: the graph's layout and each post-processing step with its numbers.

    Args:
        bundle: the detection bundle.
        detector: its :class:`~medsight.inference.detector.Detector`.
        padded: the input size the graph is fed (the bundle's, padded to a multiple of the coarsest stride).
    """
    monai = detector.detector
    settings = bundle.detection
    anchors, locations = detector._anchors_of(tuple(padded))
    levels, first = [], 0
    for stride, count, cell, sizes in zip(detector.strides, locations, monai.anchor_generator.cell_anchors,
                                          _shapes(settings), strict=True):
        levels.append({"stride": stride, "feature_shape": [n // stride for n in padded], "first_anchor": first,
                       "anchors": count * len(cell), "anchor_shapes": sizes, "cell_anchors": cell.tolist()})
        first += count * len(cell)
    selector = monai.box_selector
    return {
        "made_for": export_settings(bundle),
        "layout_version": LAYOUT_VERSION,
        "outputs": {HEAD_OUTPUTS[0]: "(batch, anchors, classes) logits; a box's score for a class is their sigmoid",
                    HEAD_OUTPUTS[1]: f"(batch, anchors, {2 * bundle.spatial_dims}) BoxCoder offsets from each "
                                     "anchor: the centre on each axis, then the log-extent on each axis"},
        "anchor_order": ANCHOR_ORDER,
        "input_size": [int(n) for n in bundle.preprocess.size],
        "size_divisible": [int(n) for n in monai.size_divisible],
        "padded_input_size": list(padded),
        "anchor_count": int(anchors.shape[0]),
        "levels": levels,
        "anchor_rule": ("at feature-map position p (an index per axis) of a level with stride s, the centre is "
                        "p * s + s // 2 (integer division) on each axis and the anchor is [centre, centre] + each "
                        "cell anchor: corners [lo_0, .., hi_0, ..] in the padded input's pixels (index order)"),
        "box_coder": {"weights": [float(w) for w in monai.box_coder.weights],
                      "clip": float(monai.box_coder.boxes_xform_clip),
                      "decode": ("per axis i, from the anchor's centre c_i and extent e_i: centre = d_i / w_i * e_i + "
                                 "c_i, extent = exp(min(d_{D+i} / w_{D+i}, clip)) * e_i, corners = centre -+ extent / "
                                 "2 (MONAI BoxCoder.decode_single)")},
        "selection": {"score_floor": float(selector.score_thresh),
                      "topk_candidates_per_level": int(selector.topk_candidates_per_level),
                      "nms_iou": float(selector.nms_thresh), "max_detections": int(selector.detections_per_img),
                      "steps": [
                          "per level: scores = sigmoid(classification) of every (anchor, class); keep those above "
                          "score_floor (strictly); keep the topk_candidates_per_level highest",
                          "decode their boxes; clip them to the input size before the padding; drop boxes "
                          "left without area",
                          "all levels together: non-maximum suppression per class at nms_iou (IoU in the input's "
                          "pixels, greedy by descending score); keep the max_detections highest scored"]},
        "score_threshold": float(settings.score_threshold),
        "threshold_note": settings.threshold_note,
        "class_names": list(bundle.label_names),
    }


def detection_preprocessing(bundle, padded: list[int]) -> dict[str, list[str]]:
    """``export.json``'s ``preprocessing`` of a detection bundle: outside the graph, in it, after it."""
    cfg = bundle.preprocess
    base = describe_preprocessing(bundle)["outside_graph"]
    resize = [step for step in base if step.startswith("resize")]
    pad = ("keep_aspect: first pad the image, centred, with its smallest value, to the aspect ratio of "
           f"{list(cfg.size)} (medsight.transforms.preprocess.aspect_padding)" if cfg.keep_aspect else
           "keep_aspect off: no padding before the resize (the image is squashed)")
    outside = [*[step for step in base if not step.startswith("resize")], pad, *resize,
               f"intensity: {_intensity_text(cfg.normalize)}",
               f"pad each spatial axis at its end with zeros to {padded} (a multiple of the coarsest stride)"]
    return {
        "outside_graph": outside,
        "in_graph": ["RetinaNet: ResNet-FPN feature pyramid and the classification and box-regression heads, their "
                     "maps flattened (see detection.anchor_order); the heads' group norms are written as a "
                     "two-pass centring (the same function, summed in an order ONNX Runtime keeps precise)"],
        "after_graph": ["anchors, box decoding and box selection as detection.levels, detection.box_coder and "
                        "detection.selection say",
                        "back to the image's own pixels: source = (input - offset) / scale per axis, with scale = "
                        "input size / aspect-padded size and offset = leading pad * scale; clipped to the image; "
                        "boxes left without area (in the padding) dropped",
                        f"findings: boxes scored at or above {bundle.detection.score_threshold:.6g} "
                        f"({bundle.detection.threshold_note})",
                        f"labels index {list(bundle.label_names)}"],
    }


def _intensity_text(normalize: str) -> str:
    if normalize in ("minmax", "zscore", "ct_window", "none"):
        return _normalize_text(normalize, normalize)
    return f"the '{normalize}' normalisation, as medsight.transforms.preprocess applies it after the resize"


def _shapes(settings) -> list[list[list[float]]]:
    from medsight.models.detectors import anchor_shapes

    return anchor_shapes(settings.anchor_sizes, settings.aspect_ratios)
