"""Tiny detection sets for tests: one picture with two boxes and one negative, written in every layout.

The picture is 20 rows x 30 columns. Its boxes, in index order (row, column) pixel edges:
``lesion`` rows 2..6, columns 3..10 and ``nodule`` rows 10..15, columns 20..28. The negative is 20 x 30
too. The volume (for the 3D layouts) is 20 x 30 x 6 voxels of 2 x 1 x 3 mm with one box per class.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image

SHAPE = (20, 30)
CLASSES = ["lesion", "nodule"]
#: (class, [r1, c1, r2, c2]) on ``a.png``; ``b.png`` is a negative.
BOXES = [("lesion", [2, 3, 6, 10]), ("nodule", [10, 20, 15, 28])]
VOLUME_SHAPE = (20, 30, 6)
VOLUME_AFFINE = np.diag([2.0, 1.0, 3.0, 1.0])
VOLUME_BOXES = [("lesion", [2, 3, 1, 6, 10, 4]), ("nodule", [10, 20, 2, 15, 28, 6])]


def picture(
    path: Path, shape: tuple[int, int] = SHAPE, fmt: str = "PNG", exif_orientation: int = 1, offset: int = 0
) -> Path:
    """A grey picture whose pixel values count up from ``offset`` (distinct rows and columns; distinct
    offsets give distinct files, which the splitter does not join as copies)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = ((np.arange(shape[0] * shape[1]).reshape(shape) + offset) % 251).astype(np.uint8)
    image = Image.fromarray(pixels)
    if exif_orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        image.save(path, format=fmt, exif=exif)
    else:
        image.save(path, format=fmt)
    return path


def write_coco(root: Path, boxes=BOXES, **extra) -> Path:
    """``root/images/{a,b}.png`` and ``root/annotations.json``; ``extra`` replaces top-level keys."""
    for k, name in enumerate("ab"):
        picture(root / "images" / f"{name}.png", offset=k)
    spec = {
        "images": [{"id": 1, "file_name": "a.png", "height": SHAPE[0], "width": SHAPE[1]},
                   {"id": 2, "file_name": "b.png", "height": SHAPE[0], "width": SHAPE[1]}],
        "annotations": [{"id": 10 + n, "image_id": 1, "category_id": CLASSES.index(label) + 1,
                         "bbox": [c1, r1, c2 - c1, r2 - r1]} for n, (label, (r1, c1, r2, c2)) in enumerate(boxes)],
        "categories": [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)],
    }
    spec.update(extra)
    path = root / "annotations.json"
    path.write_text(json.dumps(spec))
    return path


def voc_xml(file_name: str, objects: list[tuple[str, list[float]]], shape=SHAPE) -> str:
    """A VOC annotation; ``objects`` give (name, [xmin, ymin, xmax, ymax]) as written (1-based inclusive)."""
    parts = [f"<annotation><filename>{file_name}</filename>"
             f"<size><width>{shape[1]}</width><height>{shape[0]}</height><depth>1</depth></size>"]
    for name, (xmin, ymin, xmax, ymax) in objects:
        parts.append(f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                     f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    return "".join(parts) + "</annotation>"


def write_voc(root: Path, boxes=BOXES, splits: dict[str, list[str]] | None = None) -> Path:
    """BCCD's layout: JPEGImages/, Annotations/ and, given ``splits``, ImageSets/Main/<split>.txt."""
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    for k, name in enumerate("ab"):
        picture(root / "JPEGImages" / f"{name}.png", offset=k)
    objects = [(label, [c1 + 1, r1 + 1, c2, r2]) for label, (r1, c1, r2, c2) in boxes]
    (root / "Annotations" / "a.xml").write_text(voc_xml("a.png", objects))
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.png", []))
    for split, stems in (splits or {}).items():
        (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


def write_yolo(root: Path, boxes=BOXES, names: list[str] | None = CLASSES) -> Path:
    """images/{a,b}.png, labels/a.txt (b has no label file: a negative) and classes.txt."""
    for k, name in enumerate("ab"):
        picture(root / "images" / f"{name}.png", offset=k)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    lines = []
    for label, (r1, c1, r2, c2) in boxes:
        cx, cy = (c1 + c2) / 2 / SHAPE[1], (r1 + r2) / 2 / SHAPE[0]
        lines.append(f"{CLASSES.index(label)} {cx!r} {cy!r} {(c2 - c1) / SHAPE[1]!r} {(r2 - r1) / SHAPE[0]!r}")
    (root / "labels" / "a.txt").write_text("\n".join(lines) + "\n")
    if names is not None:
        (root / "classes.txt").write_text("\n".join(names) + "\n")
    return root


def write_csv(root: Path, rows: list[str] | None = None, header: str = "path,x1,y1,x2,y2,label") -> Path:
    """images/{a,b}.png and boxes.csv (the default rows: a's two boxes, b as a negative)."""
    for k, name in enumerate("ab"):
        picture(root / "images" / f"{name}.png", offset=k)
    if rows is None:
        rows = [f"images/a.png,{c1},{r1},{c2},{r2},{label}" for label, (r1, c1, r2, c2) in BOXES]
        rows.append("images/b.png,,,,,")
    path = root / "boxes.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def write_png_masks(root: Path) -> Path:
    """images/{a,b}.png with masks/{a,b}_mask.png: value 1 fills the lesion box, 2 the nodule box."""
    mask = np.zeros(SHAPE, np.uint8)
    for label, (r1, c1, r2, c2) in BOXES:
        mask[r1:r2, c1:c2] = CLASSES.index(label) + 1
    for k, (name, values) in enumerate((("a", mask), ("b", np.zeros(SHAPE, np.uint8)))):
        picture(root / "images" / f"{name}.png", offset=k)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(values).save(root / "masks" / f"{name}_mask.png")
    return root


def write_nifti_masks(root: Path) -> Path:
    """images/v.nii.gz with masks/v_mask.nii.gz holding one block per class (VOLUME_BOXES)."""
    image = np.arange(np.prod(VOLUME_SHAPE), dtype=np.float32).reshape(VOLUME_SHAPE)
    mask = np.zeros(VOLUME_SHAPE, np.uint8)
    for label, (i1, j1, k1, i2, j2, k2) in VOLUME_BOXES:
        mask[i1:i2, j1:j2, k1:k2] = CLASSES.index(label) + 1
    for folder, name, data in (("images", "v.nii.gz", image), ("masks", "v_mask.nii.gz", mask)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, VOLUME_AFFINE), root / folder / name)
    return root
