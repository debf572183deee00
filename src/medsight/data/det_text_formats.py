"""Detection annotations in text: YOLO label files and medsight's CSV box manifest.

* **YOLO**: ``images/`` and ``labels/`` mirror each other (``images/a/b.jpg`` <-> ``labels/a/b.txt``);
  ``images/{train,val,valid,test}/`` sub-folders are the splits. Each line is ``class cx cy w h``, the
  centre and size as fractions of the image's width (x) and height (y), the image as read (EXIF
  orientation applied, as Ultralytics does); a polygon line (``class x1 y1 x2 y2 ...``) gives its
  bounding box. Class names: ``classes.txt`` (one a line) or ``data.yaml``'s ``names`` (a list or
  ``{id: name}``); without them ``"0"``, ``"1"``, ... An image without a label file (or with an empty one)
  is a negative; a class id beyond the names is an ``unknown_label`` drop.
* **CSV manifest**: the header ``path,x1,y1,x2,y2,label[,patient_id][,split]``, paths relative to the CSV's
  folder, one row per box (several rows per image). ``x`` is the column and ``y`` the row, in continuous
  pixel edges (a box over exactly pixel column 3, row 5 is ``3,5,4,6``). For volumes add ``z1,z2``: as in 2D,
  x is the last voxel index axis and y the one before, z the first (a DICOM series: column, row, slice; a
  NIfTI's i, j, k are z, y, x), edges likewise: the same columns ``medsight predict`` writes. A row with the
  box columns and the label empty lists a negative image. A ``z`` box on a 2D image is an error.
"""

from __future__ import annotations

import csv
from pathlib import Path

from medsight.data.det_records import Annotated, DropLog, split_name
from medsight.errors import DatasetError

YOLO_SPLITS = ("train", "val", "valid", "test")
BOX_COLUMNS = ("x1", "y1", "x2", "y2")
MANIFEST_HEADER = "path,x1,y1,x2,y2,label[,patient_id][,split][,z1,z2]"


def is_yolo(root: Path) -> bool:
    """``root`` holds ``images/`` beside a ``labels/`` folder of ``.txt`` files."""
    return (root / "images").is_dir() and (root / "labels").is_dir() and any((root / "labels").rglob("*.txt"))


def yolo_names(root: Path) -> list[str] | None:
    """The class names of a YOLO set: ``classes.txt`` (root or labels/), else ``data.yaml``'s ``names``."""
    for file in (root / "classes.txt", root / "labels" / "classes.txt"):
        if file.is_file():
            return [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    for file in (root / "data.yaml", root / "dataset.yaml"):
        if file.is_file():
            import yaml

            try:
                names = (yaml.safe_load(file.read_text(encoding="utf-8")) or {}).get("names")
            except (yaml.YAMLError, AttributeError) as err:
                raise DatasetError(file, f"is not a YAML mapping with names ({err})",
                                   "write names: [class0, class1, ...]") from err
            if isinstance(names, dict):
                return [str(names[k]) for k in sorted(names, key=int)]
            if isinstance(names, list):
                return [str(n) for n in names]
    return None


def read_yolo(root: Path, drops: DropLog) -> tuple[list[str], list[Annotated]]:
    """The class names and one record per image of a YOLO set (see the module's format)."""
    from medsight.io import is_picture

    names = yolo_names(root)
    images_dir, labels_dir = root / "images", root / "labels"
    records, top = [], -1
    for image in sorted(p for p in images_dir.rglob("*") if p.is_file() and is_picture(p)):
        relative = image.relative_to(images_dir)
        split = relative.parts[0].lower() if len(relative.parts) > 1 and relative.parts[0].lower() in YOLO_SPLITS \
            else None
        record = Annotated(image, str(labels_dir / relative.with_suffix(".txt")), normalised=True,
                           split=None if split is None else split_name(image, split))
        label_file = labels_dir / relative.with_suffix(".txt")
        if label_file.is_file():
            top = max(top, _yolo_lines(label_file, record, names, drops))
        records.append(record)
    found = names if names is not None else [str(k) for k in range(top + 1)]
    if any(r.split is not None for r in records) and any(r.split is None for r in records):
        raise DatasetError(images_dir, "holds images both in split folders and outside them",
                           f"put every image in one of {', '.join(YOLO_SPLITS)} or none")
    return found, records


def _yolo_lines(file: Path, record: Annotated, names: list[str] | None, drops: DropLog) -> int:
    """Add the boxes of one label file to ``record``; the highest class id seen."""
    top = -1
    for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{file}:{n}"
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            drops.note("bad_box", where, f"{line.strip()!r} is not numbers (class cx cy w h)")
            continue
        if len(values) < 5 or (len(values) > 5 and len(values) % 2 == 0) or values[0] != int(values[0]):
            drops.note("bad_box", where, f"{line.strip()!r} is not 'class cx cy w h' (or 'class x1 y1 x2 y2 ...')")
            continue
        cls = int(values[0])
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            corners = [cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2]
        else:
            xs, ys = values[1::2], values[2::2]
            corners = [min(ys), min(xs), max(ys), max(xs)]
        if names is not None and not 0 <= cls < len(names):
            drops.note("unknown_label", where, f"class id {cls} is beyond the {len(names)} class names {names}")
            continue
        top = max(top, cls)
        record.add(corners, names[cls] if names is not None else str(cls), where)
    return top


def read_box_manifest(path: Path, drops: DropLog) -> tuple[list[str], list[Annotated]]:
    """The class names and one record per image of a CSV box manifest (see the module's format).

    Raises:
        DatasetError: a header without the box columns; an unknown split; one image with two patients
            or two splits; only one of z1, z2.
    """
    rows = _manifest_rows(path)
    has_z = "z1" in rows[0][1] if rows else False
    records: dict[str, Annotated] = {}
    labels: list[str] = []
    for line, row in rows:
        where = f"{path}:{line}"
        source = Path(row["path"]) if Path(row["path"]).is_absolute() else path.parent / row["path"]
        split = split_name(where, row["split"]) if row.get("split") else None
        record = records.setdefault(row["path"], Annotated(source, str(path), patient_id=row.get("patient_id") or None,
                                                           split=split))
        for key, value in (("patient_id", row.get("patient_id") or None), ("split", split)):
            if getattr(record, key) != value:
                raise DatasetError(where, f"gives {row['path']} the {key} {value!r}, an earlier row "
                                   f"{getattr(record, key)!r}", f"give every row of one image the same {key}")
        columns = BOX_COLUMNS + (("z1", "z2") if has_z and (row.get("z1") or row.get("z2")) else ())
        if not any(row.get(c) for c in columns) and not row["label"]:
            continue  # a negative image
        try:
            v = {c: float(row[c]) for c in columns}
        except (KeyError, ValueError):
            drops.note("bad_box", where, f"the box columns {', '.join(columns)} are not all numbers "
                       f"({', '.join(repr(row.get(c, '')) for c in columns)})")
            continue
        if not row["label"]:
            drops.note("bad_box", where, "has a box but no label")
            continue
        labels.append(row["label"])
        corners = [v["y1"], v["x1"], v["y2"], v["x2"]] if len(columns) == 4 else \
            [v["z1"], v["y1"], v["x1"], v["z2"], v["y2"], v["x2"]]
        record.add(corners, row["label"], where)
    splits = {r.split for r in records.values()}
    if None in splits and len(splits) > 1:
        raise DatasetError(path, "gives some images a split and others none",
                           "give every row a split (train, val or test) or leave the whole column empty")
    unique = sorted(set(labels))
    if unique and all(label.lstrip("-").isdigit() for label in unique):
        unique = sorted(unique, key=int)
    return unique, list(records.values())


def _manifest_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` with stripped values and lower-case column names."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [(name or "").strip().lower() for name in reader.fieldnames or []]
            missing = [c for c in ("path", *BOX_COLUMNS, "label") if c not in header]
            if missing:
                raise DatasetError(path, f"the header lacks the column(s) {', '.join(missing)}",
                                   f"the first line must be {MANIFEST_HEADER}")
            if ("z1" in header) != ("z2" in header):
                raise DatasetError(path, "has only one of the columns z1, z2", "give both, or neither for 2D images")
            reader.fieldnames = header
            rows = [(reader.line_num, {k: (v or "").strip() for k, v in row.items() if k})
                    for row in reader if any((v or "").strip() for v in row.values() if isinstance(v, str))]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(path, f"is not a readable CSV text file ({err})", "save it as UTF-8 CSV") from err
    if not rows:
        raise DatasetError(path, "lists no images", f"add rows under the header {MANIFEST_HEADER}")
    empty_paths = [line for line, row in rows if not row.get("path")]
    if empty_paths:
        raise DatasetError(f"{path}:{empty_paths[0]}", "has an empty path", "fill in the image's path")
    return rows
