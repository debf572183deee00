"""Boxes on one image: what every detection reader returns and every detector predicts.

Contract:
    * ``corners`` is float64 ``(N, 2 * D)`` in the **index space of the Sample** the boxes belong to:
      ``[lo_0, .., lo_{D-1}, hi_0, .., hi_{D-1}]`` along the Sample's spatial axes (2D: row, column; a
      volume: the file's own voxel index order, as :mod:`medsight.sample` keeps it). That is MONAI's
      ``StandardMode`` for a channel-first tensor, so boxes go to ``monai.apps.detection`` unchanged.
    * Coordinates are continuous pixel edges: the box that covers exactly pixel ``(r, c)`` is
      ``[r, c, r + 1, c + 1]``. ``lo < hi`` on every axis of a kept box (readers drop zero-area boxes and
      count them).
    * ``labels`` is int64 ``(N,)``, an index into the data set's class names; ``scores`` is float64 ``(N,)``
      for predictions and ``None`` for ground truth.
    * File formats that name x (the column) and y (the row): COCO, Pascal VOC, YOLO, the CSV manifest and
      medsight's own box CSV/JSON, convert at the file boundary only, with :meth:`Boxes.from_xy` and
      :meth:`Boxes.xy` (2D). Millimetres for volumes come from the Sample's affine: :meth:`Boxes.world`.

Example:
    >>> b = Boxes.from_xy([[10, 20, 30, 60]], labels=[0])   # x1, y1, x2, y2 as COCO/VOC write them
    >>> b.corners.tolist(), b.xy().tolist()
    ([[20.0, 10.0, 60.0, 30.0]], [[10.0, 20.0, 30.0, 60.0]])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Boxes:
    """Boxes of one image, in the Sample's index order (see the module's contract)."""

    corners: np.ndarray
    labels: np.ndarray
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.corners = np.asarray(self.corners, dtype=np.float64).reshape(-1, self.corners_width())
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if len(self.labels) != len(self.corners) or (self.scores is not None and len(self.scores) != len(self.corners)):
            raise ValueError(f"{len(self.corners)} boxes but {len(self.labels)} labels"
                             f"{'' if self.scores is None else f' and {len(self.scores)} scores'}")

    def corners_width(self) -> int:
        corners = np.asarray(self.corners)
        width = corners.shape[-1] if corners.ndim == 2 or corners.size else 4
        if width not in (4, 6):
            raise ValueError(f"box corners have {width} numbers; a 2D box has 4, a 3D box 6")
        return width

    @classmethod
    def empty(cls, spatial_dims: int = 2, *, scored: bool = False) -> Boxes:
        """No boxes (a negative image), for ``spatial_dims`` 2 or 3."""
        return cls(np.zeros((0, 2 * spatial_dims)), np.zeros(0, np.int64), np.zeros(0) if scored else None)

    @classmethod
    def from_xy(cls, xyxy, labels, scores=None) -> Boxes:
        """2D boxes given as ``x1, y1, x2, y2`` (x the column, y the row, pixel edges), as files write them."""
        xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
        return cls(xyxy[:, [1, 0, 3, 2]], labels, scores)

    def xy(self) -> np.ndarray:
        """2D boxes as ``x1, y1, x2, y2`` (x the column, y the row), for the files medsight writes."""
        if self.spatial_dims != 2:
            raise ValueError("x/y corners are for 2D boxes; a volume's boxes keep the voxel index order")
        return self.corners[:, [1, 0, 3, 2]]

    @property
    def spatial_dims(self) -> int:
        return self.corners.shape[1] // 2

    def __len__(self) -> int:
        return len(self.corners)

    def extents(self) -> np.ndarray:
        """``(N, D)``: each box's size along each spatial axis, in pixels (voxels)."""
        d = self.spatial_dims
        return self.corners[:, d:] - self.corners[:, :d]

    def world(self, affine: np.ndarray) -> np.ndarray:
        """``(N, 6)``: each box's axis-aligned bounds in millimetres (``x1, y1, z1, x2, y2, z2``, RAS+), the
        extremes of its corner points mapped through the Sample's 4x4 ``affine``. The affine maps a voxel's
        index to its centre, so a box edge ``e`` (pixel edges) is the index ``e - 0.5``."""
        d = self.spatial_dims
        out = np.zeros((len(self), 6))
        for i, box in enumerate(self.corners):
            lo, hi = box[:d], box[d:]
            grid = np.array(np.meshgrid(*[[lo[a], hi[a]] for a in range(d)], indexing="ij")).reshape(d, -1).T
            points = np.zeros((len(grid), 4))
            points[:, :d], points[:, 3] = grid - 0.5, 1.0
            world = (np.asarray(affine, dtype=np.float64) @ points.T).T[:, :3]
            out[i] = np.concatenate([world.min(axis=0), world.max(axis=0)])
        return out

    def select(self, keep) -> Boxes:
        """The boxes where ``keep`` (a boolean mask or an index array) says so."""
        return Boxes(self.corners[keep], self.labels[keep], None if self.scores is None else self.scores[keep])


__all__ = ["Boxes"]
