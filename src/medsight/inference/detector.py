"""Detector: bundle -> the bundle's preprocessing -> RetinaNet -> MONAI's box selection -> boxes on each Sample.

The detection counterpart of :class:`~medsight.inference.predictor.Predictor` and
:class:`~medsight.inference.segmenter.Segmenter`. Every image is brought to the bundle's input size by
:func:`~medsight.transforms.box_geometry.fit_sample` (the bundle's ``preprocess``: channels, window, denoise,
CLAHE, the aspect-keeping pad and resize, the intensity normalisation, exactly as training saw it), batched,
run through the network and MONAI's post-processing (boxes scored below ``score_floor`` dropped, non-maximum
suppression at ``nms_iou`` per class, at most ``max_detections`` kept: the bundle's ``detection`` settings),
and the boxes are mapped back to the Sample's own index space (:meth:`Placement.to_source`), clipped to it.

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
from medsight.errors import BundleError
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
        source: the bundle's folder, for messages.

    Raises:
        BundleError: not a detection bundle, no detection settings, or settings that contradict the network.
    """

    def __init__(self, bundle: Bundle, *, batch_size: int = BATCH_SIZE, source: str | Path | None = None) -> None:
        from medsight.models.detectors import wrap_network

        where = str(source or "bundle")
        if bundle.task != "detection" or bundle.detection is None:
            raise BundleError(where, f"is a {bundle.task} model without detection settings, not a detector",
                              "use Predictor for classifiers and Segmenter for segmenters")
        self.bundle = bundle
        self.settings: DetectionSettings = bundle.detection
        _check_anchors(bundle, where)
        self.batch_size = max(1, int(batch_size))
        self.detector = wrap_network(bundle.build_model(), self.settings).eval()

    @classmethod
    def from_bundle(cls, bundle: Bundle | str | Path, *, batch_size: int = BATCH_SIZE) -> Detector:
        """A Detector for a loaded bundle or a bundle folder."""
        if isinstance(bundle, Bundle):
            return cls(bundle, batch_size=batch_size)
        return cls(load_bundle(bundle), batch_size=batch_size, source=bundle)

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
            with torch.no_grad():
                outputs = self.detector(images)
            for (_, where), out in zip(prepared, outputs, strict=True):
                boxes = Boxes(out["boxes"].double().numpy(), out["labels"].numpy(),
                              out["labels_scores"].double().numpy())
                results.append(where.to_source(boxes))
        return results


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
