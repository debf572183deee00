"""Where an image and its boxes sit in the detector's input, and the way back.

A detector sees every image at one input size. :func:`fit_to_input` brings an image there the way
:func:`~medsight.transforms.preprocess.preprocess` does for every task: with ``keep_aspect`` it first pads the
image (centred, with its smallest value) to the aspect ratio of the input (:func:`aspect_padding`), then resizes
it; without, it resizes it alone (the anatomy squashed). The boxes go along, and the :class:`Placement` records
the mapping, per spatial axis, on continuous pixel edges::

    input = source * scale + offset        (scale = input size / padded size, offset = leading pad * scale)

so a box drawn on the source, moved into the input and back (:meth:`Placement.to_source`) comes back to within
float precision. Predicted boxes are clipped to the source image on the way back; a box left without area there
(it lay in the padding) is dropped.

Example:
    >>> array, boxes, placement = fit_to_input(np.zeros((1, 100, 50), np.float32),
    ...                                        Boxes([[10, 10, 30, 20]], [0]), (64, 64))
    >>> placement.scale, placement.offset, boxes.corners.tolist()
    ((0.64, 0.64), (0.0, 16.0), [[6.4, 22.4, 19.2, 28.8]])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from medsight.boxes import Boxes
from medsight.config import PreprocessConfig
from medsight.sample import Sample
from medsight.transforms.preprocess import aspect_padding, preprocess, resize


@dataclass(frozen=True)
class Placement:
    """How a source image sits in the network input: ``input = source * scale + offset`` per spatial axis.

    ``source_shape`` and ``input_shape`` are the spatial sizes of the source image and of the input.
    """

    scale: tuple[float, ...]
    offset: tuple[float, ...]
    source_shape: tuple[int, ...]
    input_shape: tuple[int, ...]

    def to_input(self, boxes: Boxes) -> Boxes:
        """Source boxes moved into the input (labels and scores kept)."""
        scale, offset = self._factors()
        return Boxes(boxes.corners * scale + offset, boxes.labels, boxes.scores)

    def to_source(self, boxes: Boxes) -> Boxes:
        """Input boxes (a prediction) moved back into the source image, clipped to it; those left without
        area (they lay in the padding) are dropped."""
        scale, offset = self._factors()
        corners = (boxes.corners - offset) / scale
        d = len(self.source_shape)
        corners = np.clip(corners, 0.0, np.tile(np.asarray(self.source_shape, dtype=np.float64), 2))
        keep = np.all(corners[:, d:] > corners[:, :d], axis=1)
        return Boxes(corners, boxes.labels, boxes.scores).select(keep)

    def _factors(self) -> tuple[np.ndarray, np.ndarray]:
        """Scale and offset tiled over a box's low and high corners."""
        return np.tile(np.asarray(self.scale), 2), np.tile(np.asarray(self.offset), 2)


def placement(shape: Sequence[int], size: Sequence[int], keep_aspect: bool = True) -> Placement:
    """Where an image of spatial ``shape`` sits in an input of ``size`` (see the module).

    Example:
        >>> placement((100, 50), (64, 64)).offset
        (0.0, 16.0)
    """
    shape, size = tuple(int(n) for n in shape), tuple(int(n) for n in size)
    padding = aspect_padding(shape, size) if keep_aspect else None
    lead = [lo for lo, _ in padding] if padding else [0] * len(shape)
    padded = [n + lo + hi for n, (lo, hi) in zip(shape, padding or [(0, 0)] * len(shape), strict=True)]
    scale = tuple(s / p for s, p in zip(size, padded, strict=True))
    return Placement(scale=scale, offset=tuple(lo * f for lo, f in zip(lead, scale, strict=True)),
                     source_shape=shape, input_shape=size)


def fit_to_input(
    array: np.ndarray, boxes: Boxes | None, size: Sequence[int], keep_aspect: bool = True
) -> tuple[np.ndarray, Boxes | None, Placement]:
    """Bring a ``(C, *spatial)`` image and its boxes to the input ``size`` (2 or 3 values).

    Args:
        array: the image, channel first.
        boxes: its boxes in its own index space, or None.
        size: the input's spatial size.
        keep_aspect: pad to the input's aspect ratio first (centred, with the image's smallest value), as
            ``preprocess.keep_aspect`` does; otherwise resize alone.

    Returns:
        ``(array, boxes, placement)``: the float32 input-sized image, the boxes moved into it (None for None)
        and the :class:`Placement` that maps predictions back.
    """
    where = placement(array.shape[1:], size, keep_aspect)
    padding = aspect_padding(array.shape[1:], where.input_shape) if keep_aspect else None
    if padding is not None:
        array = np.pad(array, [(0, 0), *padding], constant_values=float(array.min()))
    array = np.ascontiguousarray(resize(array, where.input_shape), dtype=np.float32)
    return array, None if boxes is None else where.to_input(boxes), where


def fit_sample(sample: Sample, cfg: PreprocessConfig, boxes: Boxes | None = None) -> tuple[np.ndarray, Boxes | None,
                                                                                           Placement]:
    """A Sample as the detector sees it: :func:`~medsight.transforms.preprocess.preprocess` with ``cfg`` (channels,
    window, denoise, CLAHE, :func:`fit_to_input`'s padding and resize, the intensity normalisation), its boxes moved
    along and the :class:`Placement`. Training and prediction both call this, so they see the same pixels.

    Raises:
        ConfigError, InvalidImageError: as :func:`~medsight.transforms.preprocess.preprocess`.
    """
    image = preprocess(sample, cfg)
    where = placement(sample.spatial_shape, cfg.size, cfg.keep_aspect)
    return image, None if boxes is None else where.to_input(boxes), where


__all__ = ["Placement", "fit_sample", "fit_to_input", "placement"]
