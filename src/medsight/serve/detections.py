"""What ``POST /v1/predict`` answers for a detection bundle: the boxes in the image's own pixels, as JSON.

Every box the detector keeps (its score floor, NMS and box limit) is in the answer with its score, and
``finding`` says whether it reaches the bundle's ``threshold`` (the operating point chosen on validation,
``threshold_note`` says how), so a client, or the web page's slider, can move the threshold without asking
again. Coordinates are continuous pixel edges in the uploaded image's own pixels, as ``medsight predict``'s
``boxes.csv`` writes them: x the column, y the row (the box covering exactly row 3, column 5 is x1=5, y1=3,
x2=6, y2=4); not rounded. A volume's box adds ``z1, z2`` (voxel index axis 0; y is axis 1 and x axis 2, as
``boxes.csv``), its corners in the volume's index order (``voxel_corners``) and its bounds in millimetres from
the affine (``x1_mm .. z2_mm``, RAS+); ``box_slice`` names the middle slice along axis 0 that the preview shows.

Example:
    >>> body, seconds = detect_body(service, sample, preview=False)
    >>> body["boxes"][0]
    {'x1': 12.4, 'y1': 30.0, 'x2': 40.1, 'y2': 52.7, 'label': 'fracture', 'score': 0.81, 'finding': True}
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import numpy as np

from medsight.boxes import Boxes
from medsight.sample import Sample
from medsight.serve.model import ModelService
from medsight.serve.pictures import b64

#: A volume's voxel index axes (0, 1, 2) named as ``boxes.csv`` names them: z, y, x.
_VOLUME_AXES = ("z", "y", "x")


def detect_body(service: ModelService, sample: Sample, preview: bool) -> tuple[dict[str, Any], float]:
    """The detection answer (without the input, model and timing that :func:`~medsight.serve.answers.finish`
    adds) and the model's seconds; ``preview`` adds the image as the page shows it (PNG, base64).

    Raises:
        InvalidImageError: a volume for a 2D model or the reverse.
        OutOfDomainError: refused by the bundle's domain record.
    """
    start = perf_counter()
    boxes, domain = service.detect(sample)
    seconds = perf_counter() - start
    settings = service.bundle.detection
    body = boxes_json(boxes, sample, service.bundle.label_names, settings.score_threshold, settings.threshold_note)
    body.update(domain)
    if preview:
        body["preview_png"] = b64(service.preview(sample))
    return body, seconds


def boxes_json(boxes: Boxes, sample: Sample, names: list[str], threshold: float, note: str) -> dict[str, Any]:
    """``task, label_names, threshold, threshold_note, image_size, box_slice, n_boxes, n_findings, boxes``
    for ``boxes`` on ``sample`` (see the module)."""
    shape = sample.spatial_shape
    size = {"width": int(shape[-1]), "height": int(shape[-2])}
    if sample.spatial_dims == 3:
        size["depth"] = int(shape[0])
    listed = [box_entry(boxes, i, names, threshold, sample.affine) for i in range(len(boxes))]
    return {
        "task": "detection",
        "label_names": list(names),
        "threshold": float(threshold),
        "threshold_note": note,
        "image_size": size,
        "box_slice": int(shape[0]) // 2 if sample.spatial_dims == 3 else None,
        "n_boxes": len(listed),
        "n_findings": sum(entry["finding"] for entry in listed),
        "boxes": listed,
    }


def box_entry(boxes: Boxes, i: int, names: list[str], threshold: float, affine: np.ndarray | None) -> dict[str, Any]:
    """Box ``i``: its corners (x/y, and z for a volume), label, score and ``finding``; a volume's voxel corners
    and millimetres."""
    score = float(boxes.scores[i])
    if boxes.spatial_dims == 2:
        x1, y1, x2, y2 = (float(v) for v in boxes.xy()[i])
        corners: dict[str, Any] = {"x1": x1, "y1": y1, "x2": x2, "y2": y2}
    else:
        lo, hi = boxes.corners[i, :3], boxes.corners[i, 3:]
        corners = {f"{axis}1": float(lo[a]) for a, axis in enumerate(_VOLUME_AXES)}
        corners.update({f"{axis}2": float(hi[a]) for a, axis in enumerate(_VOLUME_AXES)})
    entry = {**{k: corners[k] for k in sorted(corners, key=_corner_order)}, "label": names[int(boxes.labels[i])],
             "score": score, "finding": bool(score >= threshold)}
    if boxes.spatial_dims == 3:
        entry["voxel_corners"] = [float(v) for v in boxes.corners[i]]
        if affine is not None:
            world = boxes.select([i]).world(affine)[0]
            entry.update({f"{k}_mm": float(v) for k, v in zip(("x1", "y1", "z1", "x2", "y2", "z2"), world,
                                                              strict=True)})
    return entry


def _corner_order(key: str) -> tuple[str, str]:
    """x1, y1, (z1,) x2, y2, (z2): the low corner first, as ``boxes.csv`` orders its columns."""
    return key[1], key[0]
