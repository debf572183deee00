"""Where DICOM pixels sit in the patient: spacing, orientation, positions and the RAS affine.

DICOM describes a pixel at row ``r``, column ``c`` of a plane as
``ImagePositionPatient + c * dc * X + r * dr * Y`` in LPS millimetres, with ``X, Y`` the
two halves of ImageOrientationPatient and ``(dr, dc)`` the PixelSpacing. Enhanced
(multi-frame) files keep the same attributes in their functional groups. This module
reads them wherever they are and builds affines in the RAS+ convention of
:mod:`medsight.sample`, by negating the first two world rows.
"""

from __future__ import annotations

import numpy as np
from pydicom import Dataset

#: Relative tolerance on slice steps before a stack counts as unevenly spaced.
STEP_TOLERANCE = 0.01


def functional_value(ds: Dataset, sequence: str, keyword: str, frame: int = 0) -> object | None:
    """A value from the shared, then the per-frame functional groups of an enhanced file.

    Args:
        ds: the dataset.
        sequence: the functional group macro, e.g. ``"PixelMeasuresSequence"``.
        keyword: the attribute inside it, e.g. ``"PixelSpacing"``.
        frame: which per-frame item to look in.

    Returns:
        The value, or None when no group carries it.
    """
    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    holders = []
    if shared:
        holders.append(shared[0])
    if per_frame and frame < len(per_frame):
        holders.append(per_frame[frame])
    for group in holders:
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0][keyword].value
    return None


def attribute(ds: Dataset, sequence: str, keyword: str, frame: int = 0) -> object | None:
    """A top-level attribute if present, else the same one from the functional groups."""
    if keyword in ds and ds[keyword].value not in (None, ""):
        return ds[keyword].value
    return functional_value(ds, sequence, keyword, frame)


def pixel_spacing(ds: Dataset) -> tuple[float, float]:
    """In-plane spacing ``(between rows, between columns)`` in mm.

    PixelSpacing (top level or functional groups), else ImagerPixelSpacing (projection
    radiographs), else 1.0.
    """
    value = attribute(ds, "PixelMeasuresSequence", "PixelSpacing")
    if value is None:
        value = ds.get("ImagerPixelSpacing")
    if not value:
        return 1.0, 1.0
    return float(value[0]), float(value[1])


def slice_thickness(ds: Dataset) -> float | None:
    """SpacingBetweenSlices, else SliceThickness (top level or functional groups), in mm."""
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        value = attribute(ds, "PixelMeasuresSequence", keyword)
        if value not in (None, "") and float(value) > 0:  # type: ignore[arg-type]
            return float(value)  # type: ignore[arg-type]
    return None


def orientation(ds: Dataset) -> np.ndarray | None:
    """ImageOrientationPatient as a (2, 3) array: the row direction, then the column direction.

    The first vector points along a row (increasing column index), the second down a
    column (increasing row index), both in LPS.
    """
    value = attribute(ds, "PlaneOrientationSequence", "ImageOrientationPatient")
    if not value or len(value) != 6:
        return None
    return np.asarray([float(v) for v in value], dtype=np.float64).reshape(2, 3)


def position(ds: Dataset, frame: int = 0) -> np.ndarray | None:
    """ImagePositionPatient (LPS mm) of the first pixel of ``frame``, if recorded."""
    value = functional_value(ds, "PlanePositionSequence", "ImagePositionPatient", frame)
    if value is None:
        value = ds.get("ImagePositionPatient")
    if not value or len(value) != 3:
        return None
    return np.asarray([float(v) for v in value], dtype=np.float64)


def frame_positions(ds: Dataset, n_frames: int) -> np.ndarray | None:
    """Per-frame positions ``(n_frames, 3)`` of an enhanced file, or None if any is missing."""
    if not ds.get("PerFrameFunctionalGroupsSequence"):
        return None
    points = [
        functional_value(ds, "PlanePositionSequence", "ImagePositionPatient", i) for i in range(n_frames)
    ]
    if any(p is None or len(p) != 3 for p in points):  # type: ignore[arg-type]
        return None
    return np.asarray([[float(v) for v in p] for p in points], dtype=np.float64)  # type: ignore[union-attr]


def normal(iop: np.ndarray) -> np.ndarray:
    """The slice normal: row direction x column direction."""
    return np.cross(iop[0], iop[1])


def slice_step(positions: np.ndarray) -> tuple[np.ndarray, bool]:
    """The mean step between consecutive positions and whether all steps are equal.

    Args:
        positions: ``(S, 3)`` positions in stack order, ``S >= 2``.

    Returns:
        ``(step, uniform)``: the LPS vector from one slice to the next, and False when
        some step differs from the mean by more than :data:`STEP_TOLERANCE`.
    """
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    lengths = np.linalg.norm(np.diff(positions, axis=0), axis=1)
    uniform = bool(np.allclose(lengths, np.linalg.norm(step), rtol=STEP_TOLERANCE, atol=1e-3))
    return step, uniform


def plane_affine(
    iop: np.ndarray, origin: np.ndarray, spacing: tuple[float, float], depth: float
) -> np.ndarray:
    """RAS affine of a single plane indexed ``(row, column, 0)``.

    The third column is the slice normal scaled by ``depth`` so the matrix stays invertible.
    """
    return ras_affine(origin, [iop[1] * spacing[0], iop[0] * spacing[1], normal(iop) * depth])


def stack_affine(
    iop: np.ndarray, origin: np.ndarray, spacing: tuple[float, float], step: np.ndarray
) -> np.ndarray:
    """RAS affine of a stack indexed ``(slice, row, column)`` with ``step`` between slices."""
    return ras_affine(origin, [step, iop[1] * spacing[0], iop[0] * spacing[1]])


def ras_affine(origin: np.ndarray, columns: list[np.ndarray]) -> np.ndarray:
    """A 4x4 RAS affine from an LPS origin and LPS axis vectors (one per array axis)."""
    affine = np.eye(4)
    for axis, vector in enumerate(columns):
        affine[:3, axis] = vector
    affine[:3, 3] = origin
    affine[:2, :] *= -1
    return affine
