"""What goes into an exported graph, and what stays outside it.

The exported graph maps an image batch to ``probabilities`` (and the raw ``logits``):

* classification: ``image (N, C, *size)`` -> final intensity normalisation -> network (a fold
  ensemble's members and flipped views, their probabilities averaged, all in the one graph) ->
  division of the logits by the bundle's calibration temperature ``T`` (when it has one) ->
  probability head, so ``probabilities`` are the calibrated ones the bundle's threshold was
  chosen on; ``logits`` are the network's own, before the division. The normalisation is in
  the graph when it is a pure function of the resized image (``minmax``: per image to
  ``[0, 1]``; ``zscore``: per image and channel, std floored at
  :data:`~medsight.transforms.intensity.STD_FLOOR`). ``ct_window`` and ``none`` leave nothing to
  do in the graph (the window is applied before denoise, CLAHE and the resize, and clipping does
  not commute with them).
* segmentation: ``image (N, C, *patch)`` (any patch size the network accepts) -> network ->
  softmax over classes. The plan's normalisation is per whole image, not per patch, so it
  stays outside with the sliding window, which remains in Python.

Decoding, channel conversion, CT windowing, denoising, CLAHE and resizing stay outside
the graph: they need file formats, SciPy or scikit-image, or anti-aliased resampling that
ONNX does not express identically. :func:`describe_preprocessing` writes them down so that
any runtime can reproduce them, and :func:`split_preprocess` gives the
:class:`~medsight.config.PreprocessConfig` that medsight itself applies before the graph.

Example:
    >>> outside, in_graph = split_preprocess(PreprocessConfig(size=[64, 64], normalize="zscore"))
    >>> outside.normalize, in_graph
    ('none', 'zscore')
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medsight.bundle import Bundle
from medsight.config import PreprocessConfig
from medsight.export.precise import axis_mean, centre, with_precise_norms
from medsight.io.windowing import resolve_window
from medsight.models.heads import logits_to_probs
from medsight.transforms.intensity import STD_FLOOR

IN_GRAPH_NORMALIZE = ("minmax", "zscore")
INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "logits")


class InferenceGraph(nn.Module):
    """The network between an in-graph normalisation and its probability head.

    Args:
        network: the bundle's network in eval mode.
        task: ``"classification"`` or ``"segmentation"``.
        head: the classifier head (``"softmax"`` or ``"sigmoid"``); segmentation uses softmax.
        normalize: ``"minmax"``, ``"zscore"`` or ``"none"``: done on the input first.
        temperature: the classifier's calibration temperature; the logits are divided by it before the
            head (the ``logits`` output stays undivided).
    """

    def __init__(self, network: nn.Module, *, task: str, head: str = "softmax", normalize: str = "none",
                 temperature: float = 1.0) -> None:
        super().__init__()
        self.network = network.eval()
        self.task = task
        self.head = head
        self.normalize = normalize
        self.temperature = float(temperature)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.network(normalize_batch(image, self.normalize))
        if self.task == "segmentation":
            return torch.softmax(logits.float(), dim=1), logits
        scaled = logits if self.temperature == 1.0 else logits / self.temperature
        return logits_to_probs(scaled, self.head), logits


def normalize_batch(image: torch.Tensor, mode: str) -> torch.Tensor:
    """:func:`medsight.transforms.intensity.normalize` for each image of a batch, in torch ops.

    ``minmax`` maps each image (all channels together) to ``[0, 1]``, a constant image to 0;
    ``zscore`` gives each channel of each image mean 0 and (population) std 1, the std
    floored at ``STD_FLOOR``; anything else returns the input.
    """
    if mode == "minmax":
        axes = tuple(range(1, image.ndim))
        low = torch.amin(image, dim=axes, keepdim=True)
        span = torch.amax(image, dim=axes, keepdim=True) - low
        scale = torch.where(span > 0, 1.0 / span, torch.zeros_like(span))
        return (image - low) * scale
    if mode == "zscore":
        axes = tuple(range(2, image.ndim))
        centred = centre(image, axes)
        std = torch.sqrt(axis_mean(centred * centred, axes))
        return centred / torch.clamp(std, min=STD_FLOOR)
    return image


def split_preprocess(cfg: PreprocessConfig) -> tuple[PreprocessConfig, str]:
    """``(the preprocessing to run before the graph, the normalisation the graph does)``."""
    if cfg.normalize in IN_GRAPH_NORMALIZE:
        return cfg.model_copy(update={"normalize": "none"}), cfg.normalize
    return cfg, "none"


def build_graph(bundle: Bundle) -> tuple[InferenceGraph, PreprocessConfig]:
    """The bundle's exportable graph and the preprocessing its input needs.

    The network's instance norms are rewritten as in :mod:`medsight.export.precise`.
    """
    network = with_precise_norms(bundle.build_model())
    if bundle.task == "segmentation":
        return InferenceGraph(network, task="segmentation"), bundle.preprocess
    outside, in_graph = split_preprocess(bundle.preprocess)
    return InferenceGraph(network, task=bundle.task, head=bundle.model.head, normalize=in_graph,
                          temperature=bundle.temperature or 1.0), outside


def describe_preprocessing(bundle: Bundle) -> dict[str, Any]:
    """The whole path from a file to a decision, split into outside the graph / in it / after it."""
    cfg = bundle.preprocess
    outside: list[str] = [
        "decode with medsight.io.read_image: float32 channel-first (C, *spatial); pictures keep their "
        "range (8-bit 0..255, 16-bit 0..65535, alpha composited on black); DICOM rescale slope/intercept "
        "applied (CT in HU), MONOCHROME1 inverted, no VOI window",
        f"channels -> {cfg.channels}: 1->3 repeats grey, 3->1 is luminance 0.299 R + 0.587 G + 0.114 B, "
        "4->3 drops alpha",
    ]
    if cfg.normalize == "ct_window":
        center, width = resolve_window(cfg.window)
        outside.append(
            f"CT window {cfg.window} (center {center}, width {width}): "
            f"clip((x - ({center} - 0.5)) / ({width} - 1) + 0.5, 0, 1)"
        )
    if cfg.denoise == "median":
        side = 2 * max(0, round(cfg.denoise_size)) + 1
        outside.append(f"median filter {side} pixels wide per axis, per channel (scipy.ndimage, mode reflect)")
    elif cfg.denoise == "gaussian":
        outside.append(f"Gaussian filter sigma {cfg.denoise_size} pixels per channel (scipy.ndimage, mode reflect)")
    if cfg.clahe:
        outside.append("CLAHE per channel: min-max to [0, 1], then skimage.exposure.equalize_adapthist defaults")
    after: list[str]
    if bundle.task == "segmentation":
        settings = bundle.segmentation
        plan = _plan_text(settings.normalization)
        outside.append(f"the plan's normalisation of the whole image: {plan}")
        outside.append(
            f"Gaussian-weighted sliding window of {cfg.size} patches (overlap {settings.overlap}, "
            f"mirror TTA {settings.mirror_tta}, transpose TTA {settings.transpose_tta}), "
            "averaging 'probabilities'"
        )
        in_graph = ["network", "softmax over the class axis"]
        level = settings.logit_median
        if level is not None:
            members = bundle.model.kwargs.get("members") if bundle.model.name == "fold_ensemble" else None
            outside.append(
                f"centre the foreground logits of the whole image: p1 = sigmoid(logit(p1) - median(logit(p1)) + "
                f"{level:.6g}), p0 = 1 - p1 (probabilities clipped to [1e-7, 1 - 1e-7] first)"
                + (f"; medsight does this to each of the {members} members' probabilities and then averages them, "
                   "while this graph outputs their average, so centring its output is an approximation"
                   if members else "")
            )
        after = [
            f"argmax over classes {bundle.label_names}",
            f"per-class thresholds {settings.thresholds} (below: background)",
            f"largest connected component only: {settings.largest_component}",
        ]
    else:
        dims = "bilinear" if len(cfg.size) == 2 else "trilinear"
        outside.append(
            f"resize to {cfg.size}: {dims}, align_corners=False; when shrinking, 2D uses PyTorch's "
            "anti-aliased bilinear and 3D a Gaussian pre-filter with sigma (factor - 1) / 2 per shrunk axis"
        )
        in_graph = [_normalize_text(split_preprocess(cfg)[1], cfg.normalize), _network_text(bundle)]
        if bundle.temperature is not None:
            in_graph.append(calibration_text(bundle.temperature))
        in_graph.append(
            "sigmoid head: probabilities = [1 - sigmoid(logit), sigmoid(logit)]"
            if bundle.model.head == "sigmoid"
            else "softmax over the classes"
        )
        after = [
            f"binary: '{bundle.label_names[1]}' when probabilities[1] >= {bundle.threshold}"
            + (" (the calibrated probability)" if bundle.temperature is not None else "")
            if bundle.threshold is not None and len(bundle.label_names) == 2
            else "the most probable class",
            f"labels in order: {bundle.label_names}",
        ]
    return {
        "outside_graph": outside,
        "in_graph": in_graph,
        "after_graph": after,
    }


def calibration_text(temperature: float) -> str:
    """How the graph applies a calibration temperature, in words (export.json)."""
    return (f"temperature scaling: logits / {temperature!r} before the head (the 'logits' output is the "
            "network's, before this division)")


def _network_text(bundle: Bundle) -> str:
    """The network in words; a fold ensemble's members and views averaged inside the one graph."""
    if bundle.model.name != "fold_ensemble":
        return "network"
    kwargs = bundle.model.kwargs
    views = kwargs.get("flips") or []
    flips = f", each on the image and flipped along axes {views}" if views else ""
    mean = ("the logit of the mean of their sigmoid probabilities" if bundle.model.head == "sigmoid"
            else "the log of the mean of their softmax probabilities")
    return (f"fold ensemble: the {kwargs.get('members')} member networks ({kwargs.get('member')}){flips}, "
            f"averaged in the graph; 'logits' is {mean}")


def _plan_text(scheme: dict[str, Any]) -> str:
    if scheme.get("scheme") == "ct":
        return f"clip to {scheme['clip']}, then (x - {scheme['mean']}) / {scheme['std']}"
    return "z-score over all voxels and channels: (x - mean) / max(std, 1e-8)"


def _normalize_text(in_graph: str, configured: str) -> str:
    if in_graph == "minmax":
        return "min-max per image to [0, 1] over all channels (a constant image becomes 0)"
    if in_graph == "zscore":
        return f"z-score per image and channel: (x - mean) / max(std, {STD_FLOOR}) (population std)"
    if configured == "ct_window":
        return "no normalisation (the CT window already mapped the image to [0, 1])"
    return "no normalisation"
