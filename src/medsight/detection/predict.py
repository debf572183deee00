"""``medsight predict`` for a detection bundle: boxes with scores (CSV and JSON) and overlay PNGs.

:func:`predict_boxes` runs the bundle's :class:`~medsight.inference.detector.Detector` on every input image and
writes into ``out/``:

* ``boxes.csv``: one row per box the detector keeps (its score floor, NMS and box limit): ``path, x1, y1, x2, y2,
  label, score, finding`` with x the column and y the row in the image's own pixels (continuous pixel edges: the box
  covering exactly pixel (row 3, column 5) is x1=5, y1=3, x2=6, y2=4); volumes give ``z1, z2`` (the first voxel
  axis) and the box in millimetres from the image's affine (``x1_mm .. z2_mm``, RAS+). ``finding`` is 1 for a box
  scored at or above the bundle's threshold (chosen on validation). An image without a box gets one row with
  empty box columns; an image that fails gets one row with its ``error`` and the others go on.
* ``boxes.json``: per image, its boxes (corners as above, label, score, finding) or its error, ``out_of_domain``
  and ``domain_reasons``, and the threshold.

Each image is checked against the bundle's domain record (:func:`~medsight.inference.domain.input_domain_record`:
modality, body part, channels, size, intensity, blank) with ``out_of_domain`` (the bundle's
``predict.out_of_domain`` unless given): ``flag`` answers and sets ``out_of_domain`` to 1 on the image's rows,
with the reasons in ``boxes.json``; ``refuse`` gives the image an error row naming the reasons; ``off`` (or a bundle
without a record) leaves ``out_of_domain`` empty: not checked.
* ``overlays/<name>.png``: 2D images with the findings drawn (the boxes at or above the threshold), each with its
  label and score.

Example:
    >>> counts = predict_boxes(bundle=Path("runs/fractures/model"), inputs=[Path("xrays/")], out=Path("found"))
    >>> counts
    {'ok': 12, 'errors': 0, 'skipped': 0}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medsight.boxes import Boxes
from medsight.result_files import write_csv_table, write_strict_json

FIELDS_2D = ("path", "x1", "y1", "x2", "y2", "label", "score", "finding", "out_of_domain", "error")
FIELDS_3D = ("path", "x1", "y1", "z1", "x2", "y2", "z2", "label", "score", "finding",
             "x1_mm", "y1_mm", "z1_mm", "x2_mm", "y2_mm", "z2_mm", "out_of_domain", "error")
OVERLAYS = "overlays"


def predict_boxes(*, bundle: str | Path, inputs: list[Path], out: Path, progress: bool = True,
                  backend: str = "auto", out_of_domain: str | None = None) -> dict[str, int]:
    """Detect boxes in every input and write ``boxes.csv``, ``boxes.json`` and overlays into ``out`` (see the
    module), with the Detector's ``backend`` (``auto``: the bundle's ONNX export when it has a current one) and the
    domain check's action ``out_of_domain`` (None: the bundle's).
    Returns ``{"ok", "errors", "skipped"}`` (skipped is always 0: no resume)."""
    from medsight.bundle import load_bundle
    from medsight.data.file_errors import one_line
    from medsight.errors import MedsightError
    from medsight.inference.detector import Detector
    from medsight.inference.domain import domain_check, unchecked
    from medsight.inference.predictor import expand_inputs
    from medsight.io import read_image
    from medsight.progress import track

    model_bundle = load_bundle(bundle)
    detector = Detector(model_bundle, source=bundle, backend=backend)
    check = domain_check(model_bundle.domain, out_of_domain)
    names, threshold = list(model_bundle.label_names), float(model_bundle.detection.score_threshold)
    dims = model_bundle.spatial_dims
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    images: dict[str, Any] = {}
    counts = {"ok": 0, "errors": 0, "skipped": 0}
    for path in track(expand_inputs(inputs), description="detecting", enabled=progress):
        try:
            sample = read_image(path)
            domain = unchecked() if check is None else check.verdict(str(path), check.input_reasons(sample))
            found = detector.predict([sample])[0]
        except MedsightError as err:
            counts["errors"] += 1
            rows.append({"path": str(path), "error": one_line(err)})
            images[str(path)] = {"error": one_line(err)}
            continue
        counts["ok"] += 1
        flag = "" if domain["out_of_domain"] is None else int(domain["out_of_domain"])
        image_rows = box_rows(str(path), found, names, threshold, affine=sample.affine if dims == 3 else None)
        rows += [{**row, "out_of_domain": flag} for row in image_rows or [{"path": str(path), "error": ""}]]
        images[str(path)] = {"boxes": [{k: v for k, v in r.items() if k not in ("path", "error")} for r in image_rows],
                             **domain, "error": None}
        if dims == 2:
            _overlay(sample.array, found.select(found.scores >= threshold), names, out / OVERLAYS / f"{path.stem}.png")
    write_csv_table(out / "boxes.csv", rows, FIELDS_3D if dims == 3 else FIELDS_2D)
    write_strict_json(out / "boxes.json", {"threshold": threshold, "threshold_note": model_bundle.detection.
                                           threshold_note, "label_names": names, "images": images})
    return counts


def box_rows(path: str, boxes: Boxes, names: list[str], threshold: float, *,
             affine: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One CSV row per box: x/y (and z) corners in the image's pixels, label name, score, finding (and mm)."""
    if boxes.spatial_dims == 2:
        corners = boxes.xy()
        keys = ("x1", "y1", "x2", "y2")
    else:  # a volume's voxel index order (i, j, k) is written as z (axis 0), y (axis 1), x (axis 2)
        corners = boxes.corners[:, [2, 1, 0, 5, 4, 3]]
        keys = ("x1", "y1", "z1", "x2", "y2", "z2")
    world = boxes.world(affine) if affine is not None and len(boxes) else None
    rows = []
    for i in range(len(boxes)):
        row: dict[str, Any] = {"path": path, **{k: _num(v) for k, v in zip(keys, corners[i], strict=True)},
                               "label": names[int(boxes.labels[i])], "score": f"{float(boxes.scores[i]):.6f}",
                               "finding": int(boxes.scores[i] >= threshold), "error": ""}
        if world is not None:
            row.update({f"{k}_mm": _num(v) for k, v in zip(("x1", "y1", "z1", "x2", "y2", "z2"), world[i],
                                                           strict=True)})
        rows.append(row)
    return rows


def _num(value: float) -> str:
    return f"{float(value):.3f}".rstrip("0").rstrip(".")


def _overlay(array: np.ndarray, boxes: Boxes, names: list[str], path: Path) -> None:
    """The image (8-bit, grey or colour) with each box drawn and labelled with its class and score."""
    from PIL import Image, ImageDraw

    from medsight.atomic_write import replacing

    pixels = array[:3] if array.shape[0] >= 3 else array[:1]
    low, high = float(pixels.min()), float(pixels.max())
    scaled = ((pixels - low) / (high - low or 1.0) * 255).astype(np.uint8)
    image = Image.fromarray(scaled[0]).convert("RGB") if scaled.shape[0] == 1 else \
        Image.fromarray(np.moveaxis(scaled, 0, -1), "RGB")
    draw = ImageDraw.Draw(image)
    for (x1, y1, x2, y2), label, score in zip(boxes.xy(), boxes.labels, boxes.scores, strict=True):
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=(255, 40, 40), width=2)
        draw.text((x1 + 2, max(0, y1 - 12)), f"{names[int(label)]} {score:.2f}", fill=(255, 255, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp:
        image.save(tmp, format="PNG")
