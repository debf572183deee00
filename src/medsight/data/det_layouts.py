"""Detection data sets: images with boxes, whatever the annotation files.

:func:`open_detection_set` recognises the layout at a path (or takes ``layout=``) and returns a
:class:`DetectionSet`: the class names and one :class:`DetectionCase` per image, its ground-truth
:class:`~medsight.boxes.Boxes` in the Sample's index order (2D: row, column; a volume: its voxel index
order), continuous pixel edges. Pixels are read later, one case at a time, with :meth:`DetectionSet.read`.

Layouts (tried in this order when ``layout`` is None):

* ``coco``: a COCO ``.json``, or a folder holding one (beside its images);
* ``voc``: Pascal VOC XML in ``Annotations/`` (or ``annotations_voc/``, ...) beside ``JPEGImages/`` or
  ``images/``;
* ``yolo``: ``images/`` with ``labels/*.txt`` (``class cx cy w h``, fractions of the image);
* ``csv``: a manifest ``path,x1,y1,x2,y2,label[,patient_id][,split]`` (``z1,z2`` for volumes);
* ``masks``: instance or label masks, as the segmentation layouts hold them (images/ + masks/, an MSD
  dataset.json, a DICOM series with its SEG): one box per connected component of each label value.

Coordinates and conventions per format are in :mod:`medsight.data.det_formats`,
:mod:`medsight.data.det_text_formats` and :mod:`medsight.data.det_masks`.

Checks, once for every layout, with each image's size read from its header (JPEG EXIF orientation
applied, no pixel decoded): a box partly outside its image is clipped (``clipped_to_image``), one wholly
outside is dropped (``outside_image``), a box without extent is dropped (``zero_area``), a class outside
the class names is dropped (``unknown_label``; ``strict=True`` raises instead), an annotation naming a
missing image is dropped (``missing_image``). Each is counted in :attr:`DetectionSet.dropped` and listed
in :attr:`DetectionSet.problems`. A 3D box on a 2D image (or a 2D box on a volume) is an error.

Splits: a layout's own (YOLO ``images/train``, a manifest's ``split`` column), else official split files
at the root: ``ImageSets/Main/{train,val,test}.txt`` (VOC, image stems) or ``splits/{train,valid,val,
test}.{csv,txt}`` (a column ``image_id`` of file names or stems). An image in no split file is left out
and counted (``not_in_split``). :func:`medsight.data.splits.resolve_splits` takes a DetectionSet: it keeps
these splits, carves missing ones stratified by :meth:`DetectionSet.labels` and groups by patient (a
manifest's ``patient_id`` column, a mask set's patients, else ``patients.csv`` at the root with the header
``case_id,patient_id``, ``case_id`` an image's file name or stem).

Example:
    >>> ds = open_detection_set("detection/bccd")
    >>> ds.layout, ds.class_names, len(ds.cases), ds.dropped
    ('voc', ['Platelets', 'RBC', 'WBC'], 292, {'zero_area': 2})
    >>> ds.cases[0].id, ds.cases[0].boxes.corners[0]       # row, column edges
    ('JPEGImages/BloodImage_00000.jpg', array([176., 259., 376., 491.]))
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsight.data.det_records import Annotated, DetectionCase, DropLog, split_name
from medsight.errors import DatasetError, MedsightError
from medsight.sample import Sample

LAYOUTS = ("coco", "voc", "yolo", "csv", "masks")
DET_LAYOUTS_HELP = (
    "medsight reads detection sets as: a COCO .json (or a folder with one beside its images); Pascal VOC "
    "(Annotations/*.xml beside JPEGImages/ or images/); YOLO (images/ with labels/*.txt); a CSV manifest "
    "path,x1,y1,x2,y2,label[,patient_id][,split]; or images/ with masks/ (one box per connected component)"
)
SPLIT_FILE_FOLDERS = ("ImageSets/Main", "splits")
#: each image's patient, for layouts without a patient column: header ``case_id,patient_id``
PATIENTS_CSV = "patients.csv"


@dataclass
class DetectionSet:
    """A detection data set; see :func:`open_detection_set`."""

    root: Path
    layout: str
    class_names: list[str]
    cases: list[DetectionCase]
    spatial_dims: int
    dropped: dict[str, int] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)

    @property
    def items(self) -> list[DetectionCase]:
        """The cases, under the name :func:`medsight.data.splits.resolve_splits` reads."""
        return self.cases

    def read(self, case: DetectionCase) -> Sample:
        """Decode one case's image (JPEG EXIF orientation applied; the voxel limit checked on the header first).

        Raises:
            MedsightError: the file cannot be read (see :func:`medsight.io.read_image`), naming it.
            DatasetError: the decoded image's shape is not the one its boxes were checked against.
        """
        from medsight.io import read_image

        sample = read_image(case.path, series_uid=case.series_uid)
        if case.shape and sample.spatial_shape != tuple(case.shape):
            raise DatasetError(case.path, f"decodes to {sample.spatial_shape}, but its header said {case.shape}",
                               "the file changed since the data set was opened; open it again")
        return sample

    def labels(self) -> np.ndarray:
        """One stratum per image for the splitter: the rarest class (over the whole set) the image holds.

        A negative image (no box) is ``len(class_names)``. Taking the rarest class spreads the images
        carrying a rare class over the splits; the most frequent class would put nearly every image of a
        multi-class set in one stratum (every BCCD image holds red cells).
        """
        totals = np.zeros(len(self.class_names), dtype=np.int64)
        for case in self.cases:
            np.add.at(totals, case.boxes.labels, 1)
        strata = np.full(len(self.cases), len(self.class_names), dtype=np.int64)
        for i, case in enumerate(self.cases):
            if len(case.boxes):
                present = np.unique(case.boxes.labels)
                strata[i] = int(present[np.argmin(totals[present])])
        return strata

    def defined_splits(self) -> dict[str, list[int]] | None:
        """``{split: case indices}`` when every case has a split, else None."""
        if not self.cases or any(c.split is None for c in self.cases):
            return None
        found: dict[str, list[int]] = {}
        for i, case in enumerate(self.cases):
            found.setdefault(case.split, []).append(i)
        return {name: found[name] for name in ("train", "val", "test") if name in found}


def open_detection_set(
    path: str | Path, *, layout: str | None = None, class_names: list[str] | None = None, strict: bool = False
) -> DetectionSet:
    """Recognise the detection layout at ``path`` (or use ``layout``) and list its images and boxes.

    Args:
        path: a data set folder, a COCO ``.json`` or a CSV manifest.
        layout: one of ``coco``, ``voc``, ``yolo``, ``csv``, ``masks`` to force it.
        class_names: the classes, in label order, when the caller knows them (a model's); a box of another
            class is dropped and counted as ``unknown_label``. Masks: one name makes every non-zero value
            an instance of that class.
        strict: raise on an unknown label instead of dropping the box.

    Raises:
        DatasetError: a missing path, no recognised layout, duplicate COCO ids, a 3D box on a 2D image,
            an unknown split name, an empty set.
    """
    from medsight.data.det_checks import finish_cases

    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "does not exist", f"check the path; {DET_LAYOUTS_HELP}")
    layout = layout or detect_layout(path)
    if layout not in LAYOUTS:
        raise DatasetError(path, f"unknown detection layout {layout!r}", f"use one of {', '.join(LAYOUTS)}")
    drops = DropLog(strict=strict)
    found_names, records = _read_layout(path, layout, class_names, drops)
    names = list(class_names) if class_names is not None else found_names
    root = path.parent if path.is_file() else path
    _apply_split_files(root, records, drops)
    _apply_patients(root / PATIENTS_CSV, records)
    cases, dims = finish_cases(root, records, names, drops)
    if not cases:
        raise DatasetError(path, f"holds no usable image ({sum(drops.counts.values())} dropped: "
                           f"{dict(drops.counts)})", "see the problems listed by medsight data inspect")
    return DetectionSet(path, layout, names, cases, dims, dict(sorted(drops.counts.items())), drops.problems)


def detect_layout(path: Path) -> str:
    """The layout of ``path``, from what it holds (see the module's order).

    Raises:
        DatasetError: nothing recognised.
    """
    from medsight.data.det_formats import is_coco_json, voc_folders
    from medsight.data.det_text_formats import is_yolo

    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".json":
            return "coco" if is_coco_json(path) else "masks"
        if suffix == ".csv":
            return "csv"
        raise DatasetError(path, "is a single file, not a detection data set", DET_LAYOUTS_HELP)
    if coco_files(path):
        return "coco"
    if voc_folders(path) is not None:
        return "voc"
    if is_yolo(path):
        return "yolo"
    if (path / "images").is_dir() or (path / "dataset.json").is_file() or _holds_dicom_seg(path):
        return "masks"
    raise DatasetError(path, "matches no detection layout", DET_LAYOUTS_HELP)


def _holds_dicom_seg(folder: Path) -> bool:
    """A DICOM SEG file at the top of ``folder`` (headers only)."""
    from medsight.io.dicom import is_dicom_file, open_dataset

    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            if is_dicom_file(file) and str(open_dataset(file, stop_before_pixels=True).get("Modality", "")) == "SEG":
                return True
        except MedsightError:  # a damaged file is no SEG; the reader names it when the set is read
            continue
    return False


def is_detection_layout(path: str | Path) -> bool:
    """Whether ``path`` holds box annotations: a COCO file (or a folder with one), a VOC or a YOLO set.

    Masks are not counted (they are a segmentation set first), and no DICOM header is read.
    """
    from medsight.data.det_formats import is_coco_json, voc_folders
    from medsight.data.det_text_formats import is_yolo

    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".json" and is_coco_json(path)
    return path.is_dir() and bool(coco_files(path) or voc_folders(path) is not None or is_yolo(path))


def coco_files(folder: Path) -> list[Path]:
    """The COCO annotation files at the top of ``folder``."""
    from medsight.data.det_formats import is_coco_json

    return [p for p in sorted(folder.glob("*.json")) if is_coco_json(p)]


def _read_layout(
    path: Path, layout: str, class_names: list[str] | None, drops: DropLog
) -> tuple[list[str], list[Annotated]]:
    from medsight.data import det_formats, det_masks, det_text_formats

    if layout == "coco":
        files = [path] if path.is_file() else coco_files(path)
        if len(files) != 1:
            raise DatasetError(path, f"holds {len(files)} COCO annotation files, not one",
                               "pass the .json file to use" if files else DET_LAYOUTS_HELP)
        return det_formats.read_coco(files[0], drops)
    if layout == "voc":
        return det_formats.read_voc(path, drops)
    if layout == "yolo":
        return det_text_formats.read_yolo(path, drops)
    if layout == "csv":
        return det_text_formats.read_box_manifest(path, drops)
    return det_masks.read_masks(path, class_names, drops)


def _apply_split_files(root: Path, records: list[Annotated], drops: DropLog) -> None:
    """Give each record its official split from the split files at ``root``; drop those in none.

    Records that already carry a split (the layout's own) are left as they are.
    """
    listed = _split_files(root)
    if not listed or all(r.split is not None for r in records):
        return
    kept = []
    for record in records:
        split = listed.get(record.path.name) or listed.get(record.path.stem)
        if split is None:
            drops.note("not_in_split", record.path, "is in none of the split files "
                       f"({', '.join(sorted({str(f) for f in _split_paths(root)}))})")
            continue
        record.split = split
        kept.append(record)
    records[:] = kept


def _apply_patients(path: Path, records: list[Annotated]) -> None:
    """Fill in each record's patient from ``patients.csv`` (``case_id`` an image's file name or stem)."""
    if not path.is_file():
        return
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"case_id", "patient_id"} <= set(rows[0]):
        raise DatasetError(path, "has no case_id and patient_id columns",
                           "write the header case_id,patient_id and one row per image (its file name or stem)")
    patients = {row["case_id"].strip(): row["patient_id"].strip() for row in rows if (row["patient_id"] or "").strip()}
    for record in records:
        if record.patient_id is None:
            record.patient_id = patients.get(record.path.name) or patients.get(record.path.stem)


def _split_paths(root: Path) -> list[Path]:
    found = []
    for folder in SPLIT_FILE_FOLDERS:
        found += [p for p in sorted((root / folder).glob("*")) if p.suffix.lower() in (".txt", ".csv")
                  and p.stem.lower() in ("train", "training", "val", "valid", "validation", "test", "testing")]
    return found


def _split_files(root: Path) -> dict[str, str]:
    """``{image name or stem: split}`` from the official split files (see the module's list)."""
    listed: dict[str, str] = {}
    for file in _split_paths(root):
        split = split_name(file, file.stem)
        for name in _names_in(file):
            if listed.setdefault(name, split) != split:
                raise DatasetError(file, f"lists {name!r}, which {listed[name]} also lists",
                                   "put every image in one split file only")
    return listed


def _names_in(file: Path) -> list[str]:
    """The image names of a split file: one per line (.txt), or the column image_id / path (.csv)."""
    text = file.read_text(encoding="utf-8-sig")
    if file.suffix.lower() == ".txt":
        return [line.split()[0] for line in text.splitlines() if line.strip()]
    rows = list(csv.DictReader(text.splitlines()))
    column = next((c for c in ("image_id", "path", "file_name", "image") if rows and c in rows[0]), None)
    if column is None:
        raise DatasetError(file, "has no image_id (or path) column", "write the header image_id and one image per row")
    return [Path(row[column].strip()).name for row in rows if (row[column] or "").strip()]


__all__ = ["DetectionCase", "DetectionSet", "detect_layout", "is_detection_layout", "open_detection_set"]
