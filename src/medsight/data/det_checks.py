"""The checks every detection layout shares: the image exists, its size (from the header), boxes against it.

Sizes come from headers only: Pillow opens lazily (JPEG EXIF orientation applied, see
:func:`medsight.io.image.picture_size`), nibabel reads a NIfTI header; other files (a DICOM series) are read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsight.boxes import Boxes
from medsight.data.det_records import Annotated, DetectionCase, DropLog
from medsight.errors import DatasetError, MedsightError

#: A box edge past the image by at most this many pixels is float rounding (COCO's x + w), clipped uncounted.
EDGE_SLACK = 1e-6


def header_geometry(path: Path) -> tuple[tuple[int, ...], int, np.ndarray | None]:
    """``(spatial shape, EXIF orientation, affine or None)`` of an image, read from its header.

    Raises:
        MedsightError: the header cannot be read.
    """
    from medsight.io import is_picture
    from medsight.io.image import picture_size

    name = path.name.lower()
    if path.is_file() and is_picture(path):
        rows, columns, orientation = picture_size(path)
        return (rows, columns), orientation, None
    if path.is_file() and (name.endswith(".nii") or name.endswith(".nii.gz")):
        import nibabel as nib

        try:
            image = nib.load(path)
            shape = tuple(int(n) for n in image.shape)
        except Exception as err:  # nibabel raises many kinds on a bad header; the file is named
            raise DatasetError(path, f"the NIfTI header cannot be read ({type(err).__name__})",
                               "export the file again") from err
        return shape[: min(len(shape), 3)], 1, np.asarray(image.affine, dtype=np.float64)
    from medsight.io import read_image

    sample = read_image(path)
    return sample.spatial_shape, 1, (sample.affine if sample.spatial_dims == 3 else None)


def finish_cases(root: Path, records: list[Annotated], names: list[str], drops: DropLog) -> tuple[list, int]:
    """The :class:`~medsight.data.det_layouts.DetectionCase` of every usable record, and the spatial dims.

    Raises:
        DatasetError: 2D and 3D images in one set; a box with another number of axes than its image;
            two records for one image.
    """
    cases, seen = [], {}
    for record in records:
        case_id = _relative(record.path, root)
        if case_id == ".":     # a DICOM series folder that is the data set itself: named by its SEG
            case_id = _relative(Path(record.source), root)
        if case_id in seen:
            raise DatasetError(record.source, f"annotates {case_id}, which {seen[case_id]} annotates too",
                               "annotate each image once")
        if not record.path.exists():
            drops.note("missing_image", record.source, f"names the image {record.path}, which does not exist "
                       f"({len(record.corners)} box(es) dropped)")
            continue
        try:
            shape, orientation, affine = (record.shape, 1, record.affine) if record.shape else header_geometry(
                record.path)
        except MedsightError as err:
            drops.note("unreadable_image", record.path, f"{err} ({len(record.corners)} box(es) dropped)")
            continue
        seen[case_id] = record.source
        _check_declared(record, shape, orientation, drops)
        boxes = checked_boxes(record, shape, names, drops)
        cases.append(DetectionCase(case_id, record.path, boxes, record.patient_id, record.split, tuple(shape),
                                   orientation, affine, record.series_uid))
    dims = {len(c.shape) for c in cases}
    if len(dims) > 1:
        raise DatasetError(root, "mixes 2D images and volumes", "keep one kind of image per data set")
    return cases, dims.pop() if dims else 2


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def checked_boxes(record: Annotated, shape: tuple[int, ...], names: list[str], drops: DropLog) -> Boxes:
    """The record's boxes as :class:`Boxes`: unknown labels, zero-area and outside boxes dropped, the rest
    clipped to ``shape``; each drop (and clip) noted.

    Raises:
        DatasetError: a box with another number of axes than the image (a 3D box on a 2D image).
    """
    dims = len(shape)
    size = np.asarray(shape, dtype=np.float64)
    kept, labels = [], []
    for corners, label, where in zip(record.corners, record.labels, record.wheres, strict=True):
        if len(corners) != 2 * dims:
            raise DatasetError(where, f"a {len(corners) // 2}D box ({len(corners)} numbers) on the "
                               f"{dims}D image {record.path} ({'x'.join(str(n) for n in shape)})",
                               "give 2D boxes (x1, y1, x2, y2) for 2D images; z1, z2 only for volumes")
        box = np.asarray(corners, dtype=np.float64)
        if record.normalised:
            box = box * np.concatenate([size, size])
        if label not in names:
            drops.note("unknown_label", where, f"label {label!r} is not one of the classes {names}")
            continue
        lo, hi = box[:dims], box[dims:]
        if np.any(hi <= lo):
            drops.note("zero_area", where, f"{label} box {_text(box)} has no extent")
            continue
        if np.any(hi <= 0) or np.any(lo >= size):
            drops.note("outside_image", where, f"{label} box {_text(box)} lies outside the image "
                       f"{'x'.join(str(n) for n in shape)} ({record.path.name})")
            continue
        clipped = np.concatenate([np.clip(lo, 0, size), np.clip(hi, 0, size)])
        if np.abs(clipped - box).max() > EDGE_SLACK:
            drops.note("clipped_to_image", where, f"{label} box {_text(box)} clipped to {_text(clipped)}, the "
                       f"image being {'x'.join(str(n) for n in shape)} ({record.path.name})")
        kept.append(clipped)
        labels.append(names.index(label))
    if not kept:
        return Boxes.empty(dims)
    return Boxes(np.array(kept), np.array(labels, dtype=np.int64))


def _text(box: np.ndarray) -> str:
    """A box in index order as text, e.g. ``[r 1-5, c 2-9]``."""
    dims = len(box) // 2
    axes = ("r", "c") if dims == 2 else ("i", "j", "k")
    return "[" + ", ".join(f"{a} {box[n]:g}-{box[dims + n]:g}" for n, a in enumerate(axes)) + "]"


def _check_declared(record: Annotated, shape: tuple[int, ...], orientation: int, drops: DropLog) -> None:
    """List (not drop) an image whose size differs from the size its annotation declares."""
    if record.declared is None or tuple(record.declared) == tuple(shape):
        return
    note = " (EXIF orientation applied)" if orientation != 1 else ""
    drops.note("size_mismatch", record.path, f"the annotation {record.source} declares "
               f"{'x'.join(str(n) for n in record.declared)} (rows x columns), the image is "
               f"{'x'.join(str(n) for n in shape)}{note}; boxes are checked against the image", count=False)
