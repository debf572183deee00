"""Boxes from instance or label masks: one box per connected component of each label value.

The masks are found by the segmentation layouts (:func:`medsight.data.seg_layouts.open_seg_dataset`):
``images/`` with ``masks/`` (or ``labels/``), an MSD ``dataset.json``, or a DICOM series with its SEG;
2D pictures and 3D volumes alike. Each label value's voxels are split into connected components
(``scipy.ndimage.label``, full connectivity: 8 neighbours in 2D, 26 in 3D) and each component gives the
box of its extent (``scipy.ndimage.find_objects``): pixel edges in the image's index order, so a
component covering rows 3..5 has ``r1 = 3, r2 = 6``. Volumes keep their voxel index order; millimetres
come from the image's affine (:meth:`medsight.boxes.Boxes.world`).

Classes: a label mask's value ``v`` is the class the layout names it (dataset.json's labels, the SEG's
segment labels, else ``label_v`` or ``foreground``). An instance mask (one value per object) is read
with a single class name: every non-zero value is then an object of that class.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsight.data.det_records import Annotated, DropLog
from medsight.errors import MedsightError


def component_boxes(labels: np.ndarray) -> list[tuple[int, list[float]]]:
    """``(value, corners)`` for every connected component of every non-zero value of an integer mask.

    Example:
        >>> m = np.zeros((6, 6), int); m[1:3, 2:5] = 1; m[4, 0] = 2
        >>> component_boxes(m)
        [(1, [1.0, 2.0, 3.0, 5.0]), (2, [4.0, 0.0, 5.0, 1.0])]
    """
    from scipy import ndimage

    structure = np.ones((3,) * labels.ndim, dtype=bool)
    found = []
    for value in np.unique(labels):
        if value == 0:
            continue
        components, _ = ndimage.label(labels == value, structure=structure)
        for region in ndimage.find_objects(components):
            lo = [float(s.start) for s in region]
            hi = [float(s.stop) for s in region]
            found.append((int(value), lo + hi))
    return found


def read_masks(path: Path, class_names: list[str] | None, drops: DropLog) -> tuple[list[str], list[Annotated]]:
    """The class names and one record per case of a mask layout, its boxes derived from its mask.

    A case whose image or mask cannot be read is dropped and counted (``unreadable_image``).

    Raises:
        DatasetError: the segmentation layout's own errors (no masks folder, unpaired files).
    """
    from medsight.data.seg_layouts import open_seg_dataset
    from medsight.progress import track

    seg = open_seg_dataset(path)
    named = {v: n for v, n in seg.label_names.items() if v != 0}
    instances = class_names is not None and len(class_names) == 1
    names = list(class_names) if class_names is not None else [named[v] for v in sorted(named)]
    records = []
    for item in track(seg.items, description="boxes from masks"):
        try:
            image, labels, _ = seg.read(item)
        except MedsightError as err:
            drops.note("unreadable_image", item.mask or item.image, str(err))
            continue
        record = Annotated(Path(item.image), str(item.mask), shape=image.spatial_shape, patient_id=item.patient_id,
                           affine=image.affine if image.spatial_dims == 3 else None,
                           series_uid=image.meta.get("SeriesInstanceUID") if Path(item.image).is_dir() else None)
        for value, corners in component_boxes(labels if labels is not None else np.zeros(0, np.int64)):
            label = names[0] if instances else named.get(value, f"label_{value}")
            record.add(corners, label, f"{item.mask}: value {value}")
        records.append(record)
    return names, records
