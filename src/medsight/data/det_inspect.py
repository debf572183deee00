"""``medsight data inspect PATH --task detection``: know a detection set before training on it.

:func:`inspect_detection` opens the set (:func:`medsight.data.det_layouts.open_detection_set`), decodes every
image once (a file that fails is listed with its reason, the rest go on) and reports, as JSON: images, boxes
and negatives per split; boxes per image (a histogram); the box sizes per class (median, 10th and 90th
percentile, min and max of each axis, in pixels, and in millimetres for volumes); every counted drop
(zero-area, outside the image, clipped, unknown label, missing image, ...) with its examples; images whose
annotation file is missing; JPEGs turned by their EXIF orientation; annotations that declare another size
than their image has.

Example:
    >>> report = inspect_detection("detection/bccd")
    >>> report["dropped"], report["box_sizes"]["RBC"]["height_px"]["median"]
    ({'zero_area': 2}, 102.0)
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from medsight.atomic_write import atomic_write_text
from medsight.data.det_layouts import DetectionSet, coco_files, is_detection_layout, open_detection_set
from medsight.data.det_records import DROP_REASONS
from medsight.errors import MedsightError

#: The most examples of one kind of problem the table shows (the JSON report lists them all).
SHOWN = 5
#: The kinds of problem the table always shows, found or not.
ALWAYS_SHOWN = ("zero_area", "outside_image", "clipped_to_image", "unknown_label", "missing_image",
                "missing_annotation")
AXES_2D = ("height", "width")
AXES_3D = ("axis0", "axis1", "axis2")


def wants_detection(path: str | Path) -> bool:
    """Whether ``data inspect`` without ``--task`` should inspect ``path`` as a detection set: a COCO file (or a
    folder holding one, which would otherwise read as a one-class folder), a CSV whose header has the box
    columns x1, y1, x2, y2, or a VOC or YOLO set that the classification opener refuses."""
    from medsight.data.layouts import open_dataset

    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".csv":
        with path.open(encoding="utf-8-sig", errors="replace") as handle:
            header = {name.strip().lower() for name in handle.readline().split(",")}
        return {"x1", "y1", "x2", "y2"} <= header
    if path.is_file():
        return path.suffix.lower() == ".json" and is_detection_layout(path)
    if path.is_dir() and coco_files(path):
        return True
    if not is_detection_layout(path):
        return False
    try:
        open_dataset(path, strict=False)
    except MedsightError:
        return True
    return False


def inspect_detection(
    path: str | Path, *, layout: str | None = None, out: Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Inspect the detection set at ``path``; return (and, given ``out``, write) the JSON report.

    Raises:
        DatasetError: the layout itself is unusable (see ``open_detection_set``); one bad image is listed.
    """
    ds = open_detection_set(path, layout=layout)
    unreadable = _decode_all(ds, progress)
    counts = np.array([len(c.boxes) for c in ds.cases])
    by_kind: dict[str, list[dict[str, str]]] = {}
    for problem in ds.problems:
        by_kind.setdefault(problem.get("kind", "other"), []).append(problem)
    report: dict[str, Any] = {
        "task": "detection",
        "path": str(path),
        "layout": ds.layout,
        "class_names": ds.class_names,
        "spatial_dims": ds.spatial_dims,
        "n_images": len(ds.cases),
        "n_boxes": int(counts.sum()),
        "splits": _splits(ds),
        "boxes_per_image": _boxes_per_image(counts),
        "box_sizes": box_sizes(ds),
        "image_sizes": dict(Counter("x".join(str(n) for n in c.shape) for c in ds.cases).most_common()),
        "dropped": ds.dropped,
        "drop_meanings": {k: DROP_REASONS[k] for k in ds.dropped if k in DROP_REASONS},
        "problems": by_kind,
        "missing_annotations": [p["path"] for p in by_kind.get("missing_annotation", [])],
        "negatives": [c.id for c in ds.cases if not len(c.boxes)],
        "exif_rotated": [{"id": c.id, "orientation": c.exif_orientation} for c in ds.cases if c.exif_orientation != 1],
        "unreadable": unreadable,
    }
    if out is not None:
        atomic_write_text(Path(out), json.dumps(report, indent=2))
    return report


def _decode_all(ds: DetectionSet, progress: bool) -> list[dict[str, str]]:
    from medsight.progress import track

    failed = []
    for case in track(ds.cases, description="inspecting", enabled=progress):
        try:
            ds.read(case)
        except (MedsightError, MemoryError) as err:
            failed.append({"path": case.id, "reason": str(err)})
    return failed


def _splits(ds: DetectionSet) -> dict[str, dict[str, Any]]:
    groups: dict[str, list] = {}
    for case in ds.cases:
        groups.setdefault(case.split or "all", []).append(case)
    found = {}
    for name in ("train", "val", "test", "all"):
        cases = groups.get(name)
        if not cases:
            continue
        labels = np.concatenate([c.boxes.labels for c in cases]) if cases else np.zeros(0, np.int64)
        per_class = np.bincount(labels, minlength=len(ds.class_names))
        found[name] = {"images": len(cases), "boxes": int(len(labels)),
                       "negatives": sum(1 for c in cases if not len(c.boxes)),
                       "boxes_per_class": {n: int(k) for n, k in zip(ds.class_names, per_class, strict=True)}}
    return found


def _boxes_per_image(counts: np.ndarray) -> dict[str, Any]:
    histogram = Counter(int(n) for n in counts)
    return {"histogram": {str(k): histogram[k] for k in sorted(histogram)},
            "mean": round(float(counts.mean()), 3) if len(counts) else None,
            "median": float(np.median(counts)) if len(counts) else None,
            "max": int(counts.max()) if len(counts) else None}


def box_sizes(ds: DetectionSet) -> dict[str, dict[str, Any]]:
    """Per class: the number of boxes and, per axis, ``{median, p10, p90, min, max}`` of the box extents in
    pixels (``height_px``, ``width_px``), or for volumes in voxels along each index axis
    (``axis0_vox``, ...) and in millimetres along x, y, z (``x_mm``, ...)."""
    axes = AXES_2D if ds.spatial_dims == 2 else AXES_3D
    unit = "px" if ds.spatial_dims == 2 else "vox"
    extents: dict[int, list[np.ndarray]] = {k: [] for k in range(len(ds.class_names))}
    millimetres: dict[int, list[np.ndarray]] = {k: [] for k in range(len(ds.class_names))}
    for case in ds.cases:
        for k, extent in zip(case.boxes.labels, case.boxes.extents(), strict=True):
            extents[int(k)].append(extent)
        if ds.spatial_dims == 3 and case.affine is not None and len(case.boxes):
            world = case.boxes.world(case.affine)
            for k, mm in zip(case.boxes.labels, world[:, 3:] - world[:, :3], strict=True):
                millimetres[int(k)].append(mm)
    found = {}
    for k, name in enumerate(ds.class_names):
        entry: dict[str, Any] = {"n": len(extents[k])}
        if extents[k]:
            values = np.array(extents[k])
            entry.update({f"{axis}_{unit}": _spread(values[:, a]) for a, axis in enumerate(axes)})
        if millimetres[k]:
            values = np.array(millimetres[k])
            entry.update({f"{axis}_mm": _spread(values[:, a]) for a, axis in enumerate("xyz")})
        found[name] = entry
    return found


def _spread(values: np.ndarray) -> dict[str, float]:
    p10, median, p90 = np.percentile(values, [10, 50, 90])
    return {"median": round(float(median), 2), "p10": round(float(p10), 2), "p90": round(float(p90), 2),
            "min": round(float(values.min()), 2), "max": round(float(values.max()), 2)}


def render_detection_inspection(report: dict[str, Any], console) -> None:
    """Print the report as a Rich table: the counts, the sizes, then one row per kind of problem."""
    from rich.table import Table

    table = Table(title=f"{report['path']} ({report['layout']}, detection)", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("images", f"{report['n_images']} ({len(report['negatives'])} negatives), {report['n_boxes']} boxes")
    table.add_row("classes", ", ".join(report["class_names"]))
    for split, counts in report["splits"].items():
        per_class = ", ".join(f"{n}: {k}" for n, k in counts["boxes_per_class"].items())
        table.add_row(f"  {split}", f"{counts['images']} images ({counts['negatives']} negatives), "
                      f"{counts['boxes']} boxes ({per_class})")
    per_image = report["boxes_per_image"]
    table.add_row("boxes per image", f"median {per_image['median']}, mean {per_image['mean']}, max {per_image['max']}; "
                  + ", ".join(f"{k}: {v}" for k, v in per_image["histogram"].items()))
    for name, sizes in report["box_sizes"].items():
        rows = [f"{axis} {s['median']:g} (p10 {s['p10']:g}, p90 {s['p90']:g}, {s['min']:g}-{s['max']:g})"
                for axis, s in sizes.items() if axis != "n"]
        table.add_row(f"  {name} sizes ({sizes['n']})", "\n".join(rows) or "no boxes")
    shapes = list(report["image_sizes"].items())
    table.add_row("image sizes (rows x columns)", ", ".join(f"{k}: {v}" for k, v in shapes[:5]))
    root = str(report["path"]).rstrip("/") + "/"
    kinds = dict.fromkeys([*ALWAYS_SHOWN, *report["dropped"], *report["problems"]])
    rows = [(kind, report["dropped"].get(kind, len(report["problems"].get(kind, []))), report["problems"].get(kind, []))
            for kind in kinds]
    rows += [("exif_rotated", len(report["exif_rotated"]), report["exif_rotated"]),
             ("unreadable", len(report["unreadable"]), report["unreadable"])]
    for kind, count, examples in rows:
        style = "green" if count == 0 else "yellow"
        lines = [_example(e, root) for e in examples[:SHOWN]]
        if len(examples) > SHOWN:
            lines.append(f"  ... and {len(examples) - SHOWN} more (all in the JSON report)")
        table.add_row(f"[{style}]{kind.replace('_', ' ')}[/{style}]",
                      f"[{style}]{count}[/{style}]" + "".join(f"\n{line}" for line in lines))
    console.print(table)


def _example(example: dict[str, Any], root: str) -> str:
    text = ", ".join(f"{v}" for k, v in example.items() if k != "kind")
    return "  " + text.replace(root, "")


__all__ = ["box_sizes", "inspect_detection", "render_detection_inspection", "wants_detection"]
