"""Detector: bundle -> the bundle's preprocessing -> RetinaNet -> MONAI's box selection -> boxes on each Sample.

The detection counterpart of :class:`~medsight.inference.predictor.Predictor` and
:class:`~medsight.inference.segmenter.Segmenter`. Every image is brought to the bundle's input size by
:func:`~medsight.transforms.box_geometry.fit_sample` (the bundle's ``preprocess``: channels, window, denoise,
CLAHE, the aspect-keeping pad and resize, the intensity normalisation, exactly as training saw it), batched,
run through the network and MONAI's post-processing (boxes scored below ``score_floor`` dropped, non-maximum
suppression at ``nms_iou`` per class, at most ``max_detections`` kept: the bundle's ``detection`` settings),
and the boxes are mapped back to the Sample's own index space (:meth:`Placement.to_source`), clipped to it.

Two backends run the network, as for the classifier's :class:`~medsight.inference.predictor.Predictor`:

* ``"torch"``: the bundle's weights in PyTorch, through MONAI's ``RetinaNetDetector``;
* ``"onnx"``: the ``model.onnx`` that ``medsight export BUNDLE --format onnx`` wrote into the bundle folder, on
  ONNX Runtime (:mod:`medsight.inference.detector_onnx`): the graph gives the raw head outputs and
  :meth:`Detector.boxes_from_heads` (MONAI's anchors, box coder and box selection, as in the torch path) makes
  the boxes.

``backend="auto"`` (the default) takes ``"onnx"`` when the Detector is given a bundle folder whose
``export.json`` records an ONNX export of the very weights in that folder, made for its detection settings
(classes, input size, anchors), and ONNX Runtime is installed; otherwise ``"torch"``, with a warning when an export
exists but does not fit. ``"onnx"`` raises instead. The export command checked that both give the same boxes.

:meth:`Detector.predict` returns every box above the score floor with its score; the findings are those at
or above :attr:`Detector.score_threshold`, the operating point the bundle ships (:meth:`Detector.findings`).
``medsight evaluate``, ``predict`` and the service all call this one class, so their boxes agree.

Example:
    >>> detector = Detector.from_bundle("runs/fractures/model")
    >>> boxes = detector.predict([read_image("IMG0000019.jpg")])[0]
    >>> detector.findings(boxes).xy()          # x1, y1, x2, y2 of the boxes at the shipped threshold
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medsight.boxes import Boxes
from medsight.bundle import Bundle, load_bundle
from medsight.bundle_fields import DetectionSettings
from medsight.errors import BundleError, ConfigError
from medsight.inference.onnx_backend import BACKENDS, onnx_export_record
from medsight.inference.predictor import check_spatial_dims
from medsight.sample import Sample
from medsight.transforms.box_geometry import Placement, fit_sample

BATCH_SIZE = 8
"""Images per forward pass."""


class Detector:
    """Loads a detection bundle once and predicts scored boxes for Samples, on the CPU.

    Args:
        bundle: a loaded bundle (``task`` "detection", with its ``detection`` settings and weights).
        batch_size: images per forward pass.
        source: the bundle's folder: named in messages, and where an ONNX export is looked for.
        backend: ``"auto"``, ``"torch"`` or ``"onnx"`` (see the module).

    Raises:
        BundleError: not a detection bundle, no detection settings, settings that contradict the network, or
            ``"onnx"`` without a current export made for this bundle.
        ConfigError: an unknown backend.
    """

    def __init__(self, bundle: Bundle, *, batch_size: int = BATCH_SIZE, source: str | Path | None = None,
                 backend: str = "auto") -> None:
        from medsight.inference.detector_onnx import OnnxHeads, export_mismatch
        from medsight.models.detectors import level_strides, wrap_network

        where = str(source or "bundle")
        if bundle.task != "detection" or bundle.detection is None:
            raise BundleError(where, f"is a {bundle.task} model without detection settings, not a detector",
                              "use Predictor for classifiers and Segmenter for segmenters")
        self.bundle = bundle
        self.settings: DetectionSettings = bundle.detection
        _check_anchors(bundle, where)
        self.batch_size = max(1, int(batch_size))
        self.detector = wrap_network(bundle.build_model(), self.settings).eval()
        #: each feature level's stride in input pixels, finest first
        self.strides = level_strides(len(self.settings.anchor_sizes), bundle.model.kwargs.get("finest_stride", 4))
        if backend not in BACKENDS:
            raise ConfigError(f"backend={backend}", "unknown backend", f"use one of {', '.join(BACKENDS)}")
        folder = Path(source) if source is not None and Path(source).is_dir() else None
        record = onnx_export_record(folder, backend, check=lambda found: export_mismatch(found, bundle))
        #: the backend that runs the network: "torch" or "onnx"
        self.backend = "torch" if record is None else "onnx"
        self._onnx = None if record is None else OnnxHeads(folder / record["file"], threads=_torch_threads())
        self._anchors: dict[tuple[int, ...], tuple] = {}

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | Path, *, batch_size: int = BATCH_SIZE,
                    backend: str = "auto") -> Detector:
        """A Detector for a loaded bundle (PyTorch: it has no folder) or a bundle folder."""
        if isinstance(bundle, Bundle):
            return cls(bundle, batch_size=batch_size, backend=backend)
        return cls(load_bundle(bundle), batch_size=batch_size, source=bundle, backend=backend)

    @property
    def label_names(self) -> list[str]:
        return self.bundle.label_names

    @property
    def score_threshold(self) -> float:
        """The shipped operating point: boxes scored at or above it are the findings."""
        return self.settings.score_threshold

    @property
    def threshold_note(self) -> str:
        """How :attr:`score_threshold` was chosen."""
        return self.settings.threshold_note

    def findings(self, boxes: Boxes) -> Boxes:
        """The boxes scored at or above :attr:`score_threshold`."""
        return boxes.select(boxes.scores >= self.score_threshold)

    def prepare(self, sample: Sample) -> tuple[np.ndarray, Placement]:
        """The network input for ``sample`` and where the sample sits in it.

        Raises:
            InvalidImageError: a volume for a 2D model or the reverse, or an image holding NaN.
            ConfigError: a channel count the bundle's preprocessing cannot convert.
        """
        check_spatial_dims(sample, self.bundle.spatial_dims)
        image, _, where = fit_sample(sample, self.bundle.preprocess)
        return image, where

    def predict(self, samples: Sequence[Sample]) -> list[Boxes]:
        """Scored boxes for each sample, in that sample's own index space, every box above the score floor.

        Raises:
            InvalidImageError, ConfigError: as :meth:`prepare`, naming the file.
        """
        import torch

        results: list[Boxes] = []
        for start in range(0, len(samples), self.batch_size):
            prepared = [self.prepare(sample) for sample in samples[start:start + self.batch_size]]
            images = torch.from_numpy(np.stack([image for image, _ in prepared]))
            if self._onnx is None:
                with torch.no_grad():
                    found = [_boxes(out) for out in self.detector(images)]
            else:
                padded = self.pad(images)
                found = self.boxes_from_heads(*self._onnx(padded), padded.shape[2:], images.shape[2:])
            results += [where.to_source(boxes) for (_, where), boxes in zip(prepared, found, strict=True)]
        return results

    def pad(self, images):
        """A ``(B, C, *size)`` batch padded at the end of each axis with zeros to a multiple of the coarsest stride,
        as MONAI's detector pads its input (``preprocess_images``)."""
        from monai.apps.detection.utils.detector_utils import preprocess_images

        return preprocess_images(images, self.bundle.spatial_dims, self.detector.size_divisible)[0]

    def boxes_from_heads(self, classification, box_regression, padded: Sequence[int],
                         size: Sequence[int]) -> list[Boxes]:
        """Scored boxes in the input's pixels from the raw head outputs of a padded batch: MONAI's post-processing
        (anchors, box decoding, score floor, top-k per level, clipping to ``size``, per-class NMS, box limit).

        Args:
            classification: ``(B, anchors, classes)`` logits, in the order of ``detector_onnx.ANCHOR_ORDER``.
            box_regression: ``(B, anchors, 2 * D)`` box-coder offsets from each anchor.
            padded: the spatial size the network saw (see :meth:`pad`).
            size: the input's spatial size before the padding (boxes are clipped to it).
        """
        import torch

        anchors, locations = self._anchors_of(tuple(int(n) for n in padded))
        heads = {self.detector.cls_key: classification, self.detector.box_reg_key: box_regression}
        with torch.no_grad():
            found = self.detector.postprocess_detections(heads, [anchors] * len(classification),
                                                         [list(size)] * len(classification), locations)
        return [_boxes(out) for out in found]

    def _anchors_of(self, padded: tuple[int, ...]) -> tuple:
        """The anchors of a padded input size and the positions per level (MONAI's anchor generator on maps of
        the pyramid's sizes), computed once per size."""
        import torch

        if padded not in self._anchors:
            maps = [torch.zeros((1, 1, *(n // stride for n in padded))) for stride in self.strides]
            anchors = self.detector.anchor_generator(torch.zeros((1, 1, *padded)), maps)[0]
            self._anchors[padded] = (anchors, [m.shape[2:].numel() for m in maps])
        return self._anchors[padded]


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _boxes(found: dict) -> Boxes:
    """MONAI's detection dict of one image as scored :class:`Boxes` (float64 corners and scores)."""
    return Boxes(found["boxes"].double().numpy(), found["labels"].numpy(), found["labels_scores"].double().numpy())


def _check_anchors(bundle: Bundle, where: str) -> None:
    """The ``detection`` anchors are those the network was built with (``model.kwargs``), where it records them.

    Raises:
        BundleError: they differ.
    """
    kwargs, settings = bundle.model.kwargs, bundle.detection
    for key in ("anchor_sizes", "aspect_ratios"):
        if key in kwargs and np.ravel(kwargs[key]).tolist() != np.ravel(getattr(settings, key)).tolist():
            raise BundleError(where, f"detection.{key} {getattr(settings, key)} is not the network's "
                              f"model.kwargs.{key} {kwargs[key]}", "re-export the bundle from its training run")


__all__ = ["Detector"]
