"""The one record every reader returns.

Contract:
    * ``array`` is float32 and channel-first: ``(C, H, W)`` for 2D images and
      ``(C, D, H, W)`` for volumes. The spatial axes keep the order of the file's own
      voxel index (NIfTI: i, j, k; a DICOM series: slice, row, column; a 2D image: row, column).
    * ``affine`` is a 4x4 matrix mapping the spatial index of ``array`` (padded to three
      axes with a zero) to world coordinates in millimetres, RAS+ (the nibabel convention).
      DICOM's LPS is converted on reading. So a prediction written with the same affine
      overlays the source voxel for voxel.
    * ``spacing`` is the voxel size in mm along each spatial axis of ``array``.
    * ``meta`` holds JSON-able facts about the source: ``path``, ``format``, ``modality``,
      photometric interpretation, the window applied, DICOM UIDs. Never patient-identifying
      fields (name, birth date, patient id, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Sample:
    """A decoded image with its geometry and source metadata.

    Example:
        >>> s = Sample(np.zeros((1, 28, 28), np.float32), spacing=(1.0, 1.0))
        >>> s.spatial_dims, s.channels
        (2, 1)
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.affine is None:
            self.affine = affine_from_spacing(self.spacing)

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.array.shape[1:])

    @property
    def spatial_dims(self) -> int:
        return self.array.ndim - 1


def affine_from_spacing(spacing: tuple[float, ...]) -> np.ndarray:
    """A diagonal 4x4 affine for an axis-aligned grid with the given spacing."""
    affine = np.eye(4)
    for axis, step in enumerate(spacing[:3]):
        affine[axis, axis] = float(step)
    return affine
