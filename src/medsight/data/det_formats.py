"""Detection annotation files with named corners: COCO JSON and Pascal VOC XML.

Both name x (the column) and y (the row); the boxes are turned into the Sample's index order here, at the
file boundary (:meth:`medsight.boxes.Boxes.from_xy`'s swap), so nothing downstream sees x/y.

* **COCO** ``bbox`` is ``[x, y, w, h]`` in continuous pixel edges: the box is ``x .. x + w`` by
  ``y .. y + h``. Class names are the ``categories`` in id order. An image listed without annotations is
  a negative. Duplicate image, annotation or category ids are an error naming the file and the id.
* **Pascal VOC** corners are 1-based inclusive pixel indices (the VOC devkit's convention): the box
  ``xmin..xmax`` covers the pixels numbered ``xmin`` to ``xmax``, whose edges are ``xmin - 1`` and
  ``xmax``. So ``x1 = xmin - 1, x2 = xmax`` (and the same for y). A box with ``xmax <= xmin`` or
  ``ymax <= ymin`` as written is a point or a line, a click without a drag: it is zero-area and dropped
  (BCCD has two). Class names are the sorted ``<name>`` values.

FracAtlas's VOC corners are its COCO corners cut to whole numbers (0-based, measured): read with the
VOC convention their left/top edges sit 1 to 2 px and their right/bottom edges 0 to 1 px before the
COCO ones.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

from medsight.data.det_records import Annotated, DropLog
from medsight.errors import DatasetError

#: Folders that hold a VOC set's XML files, and the images beside them, in the order tried.
VOC_XML_FOLDERS = ("Annotations", "annotations_voc", "annotations", "xml")
IMAGE_FOLDERS = ("JPEGImages", "images", "Images")


def image_index(folders: list[Path]) -> dict[str, Path]:
    """``{name: file}`` for the image files in ``folders`` (recursively), by file name and by stem.

    A name found first wins, so an earlier folder has precedence.
    """
    from medsight.io import is_picture

    index: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        files = (p for p in folder.rglob("*") if p.is_file() and is_picture(p) and not p.name.startswith("."))
        for file in sorted(files):
            index.setdefault(file.name, file)
            index.setdefault(file.stem, file)
    return index


def is_coco_json(path: Path) -> bool:
    """A JSON file whose top level has ``images`` and ``annotations`` lists (read to check)."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(spec, dict) and isinstance(spec.get("images"), list) and "annotations" in spec


def read_coco(path: Path, drops: DropLog) -> tuple[list[str], list[Annotated]]:
    """The class names (categories in id order) and one record per listed image of a COCO file.

    Images are looked up by ``file_name`` beside the JSON, in its ``images/`` folder, or one folder up
    (``annotations/instances.json`` beside ``images/``).

    Raises:
        DatasetError: not COCO JSON; duplicate image, annotation or category ids; a bbox that is not
            four numbers (a 3D box has no place in COCO).
    """
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(path, f"is not valid JSON ({err})", "fix the file (UTF-8 COCO JSON)") from err
    if not isinstance(spec, dict) or not isinstance(spec.get("images"), list):
        raise DatasetError(path, "has no 'images' list", "a COCO file lists images, annotations and categories")
    categories = _unique(path, spec.get("categories") or [], "category")
    names = [str(categories[k].get("name", k)) for k in sorted(categories)]
    images = _unique(path, spec["images"], "image")
    folders = [path.parent, path.parent / "images", path.parent.parent, path.parent.parent / "images"]
    records: dict[int, Annotated] = {}
    seen_files: dict[str, int] = {}
    for image_id, image in images.items():
        file_name = str(image.get("file_name", ""))
        if file_name in seen_files:
            raise DatasetError(path, f"images {seen_files[file_name]} and {image_id} both name {file_name!r}",
                               "list each image once and point every annotation at that id")
        seen_files[file_name] = image_id
        found = next((f / file_name for f in folders if (f / file_name).is_file()), path.parent / file_name)
        declared = (int(image["height"]), int(image["width"])) if image.get("height") and image.get("width") else None
        records[image_id] = Annotated(found, str(path), declared=declared)
    for ann_id, ann in _unique(path, spec.get("annotations") or [], "annotation").items():
        where = f"{path}: annotation id {ann_id}"
        record = records.get(ann.get("image_id"))
        if record is None:
            drops.note("missing_image", where, f"names image id {ann.get('image_id')!r}, which the file does not list")
            continue
        box = ann.get("bbox")
        if not isinstance(box, list) or not all(isinstance(v, (int, float)) for v in box):
            drops.note("bad_box", where, f"bbox {box!r} is not a list of numbers")
            continue
        if len(box) != 4:
            raise DatasetError(where, f"bbox has {len(box)} numbers ({box}); a COCO box is [x, y, w, h] on a 2D image",
                               "write 2D boxes as [x, y, w, h]; give volumes' 3D boxes in a CSV manifest (z1, z2)")
        x, y, w, h = (float(v) for v in box)
        category = ann.get("category_id")
        label = str(categories[category].get("name", category)) if category in categories else f"category {category}"
        record.add([y, x, y + h, x + w], label, where)
    return names, list(records.values())


def _unique(path: Path, entries: list, what: str) -> dict:
    """``{id: entry}``; a duplicate id is an error naming the file and the id."""
    found: dict = {}
    for entry in entries:
        key = entry.get("id") if isinstance(entry, dict) else None
        if key is None:
            raise DatasetError(path, f"a {what} entry has no id ({str(entry)[:80]})", f"give every {what} an id")
        if key in found:
            raise DatasetError(path, f"{what} id {key!r} appears twice", f"give every {what} a unique id")
        found[key] = entry
    return found


def voc_folders(root: Path) -> tuple[Path, list[Path]] | None:
    """``(XML folder, image folders)`` of a VOC set at ``root``, or None when it holds no XML."""
    for name in VOC_XML_FOLDERS:
        if (root / name).is_dir() and any((root / name).glob("*.xml")):
            return root / name, [root / n for n in IMAGE_FOLDERS if (root / n).is_dir()] or [root]
    if any(root.glob("*.xml")):
        return root, [root]
    return None


def read_voc(root: Path, drops: DropLog) -> tuple[list[str], list[Annotated]]:
    """The sorted class names and one record per XML file of a VOC set; see the module's convention.

    An XML's image is the image file with the XML's stem (its ``<filename>`` when none has): a missing
    one is a counted ``missing_image``; an image file without an XML is ``missing_annotation``.
    """
    folders = voc_folders(root)
    if folders is None:
        raise DatasetError(root, "holds no Pascal VOC XML files", "put them in Annotations/ beside JPEGImages/")
    xml_folder, image_folders = folders
    images = image_index(image_folders)
    records: list[Annotated] = []
    annotated: set[Path] = set()
    for xml in sorted(xml_folder.glob("*.xml")):
        try:
            tree = ET.parse(xml).getroot()
        except ET.ParseError as err:
            drops.note("unreadable_annotation", xml, f"is not well-formed XML ({err}); its image is left out")
            continue
        file_name = (tree.findtext("filename") or "").strip()
        image = images.get(xml.stem) or images.get(file_name)
        if image is None:
            drops.note("missing_image", xml, f"names the image {file_name or xml.stem!r}, which is not in "
                       f"{', '.join(str(f) for f in image_folders)}")
            continue
        annotated.add(image)
        records.append(_voc_record(xml, tree, image, drops))
    for image in sorted(set(images.values()) - annotated):
        drops.note("missing_annotation", image, f"has no annotation file {xml_folder / (image.stem + '.xml')}")
    return sorted({label for r in records for label in r.labels}), records


def _voc_record(xml: Path, tree: ET.Element, image: Path, drops: DropLog) -> Annotated:
    size = tree.find("size")
    declared = None
    if size is not None:
        try:
            height, width = int(float(size.findtext("height") or 0)), int(float(size.findtext("width") or 0))
            declared = (height, width) if height > 0 and width > 0 else None
        except ValueError:
            declared = None
    record = Annotated(image, str(xml), declared=declared)
    for n, obj in enumerate(tree.iter("object"), start=1):
        where = f"{xml}: object {n}"
        label = (obj.findtext("name") or "").strip()
        try:
            box = obj.find("bndbox")
            xmin, ymin, xmax, ymax = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            drops.note("bad_box", where, "has no bndbox with numeric xmin, ymin, xmax, ymax")
            continue
        if xmax <= xmin or ymax <= ymin:
            drops.note("zero_area", where, f"{label} box xmin={xmin:g} xmax={xmax:g} ymin={ymin:g} ymax={ymax:g} "
                       "has no extent (a point or a line)")
            continue
        record.add([ymin - 1, xmin - 1, ymax, xmax], label, where)
    return record
