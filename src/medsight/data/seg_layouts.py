"""Segmentation data sets: images paired with label masks (and an optional region of interest).

:func:`open_seg_dataset` looks at a path and returns a :class:`SegSet`: the label names and
one :class:`SegItem` per case. Pixels are read later, one case at a time, with
:meth:`SegSet.read`, which returns the image, an ``int64`` label map with the image's spatial
shape and a boolean region-of-interest mask.

Supported layouts:

* **pairs**: ``root/images/`` with ``root/masks/`` (or ``labels/``) and an optional ``roi/``
  (or ``fov/``) folder; files are paired by case id (see :func:`case_id`).
* **drive**: DRIVE retinal vessels, ``images/NN_training.tif`` with
  ``1st_manual/NN_manual1.gif`` and the field of view ``mask/NN_training_mask.gif``.
* **msd**: a Medical Segmentation Decathlon / nnU-Net ``dataset.json`` with a ``training``
  list of ``{"image": ..., "label": ...[, "patient_id": ...]}``; labels as ``{"0": "background"}`` or
  ``{"background": 0}``.
* **dicom_seg**: a folder holding a DICOM series and DICOM SEG file(s) that reference it.

Label names: the ``label_names`` argument, else those of dataset.json / the SEG, else
``{0: "background", 1: "foreground"}`` (several values: ``{v: "label_v"}``) from the masks.

Patients (so that the splitter keeps a patient's cases in one part): a ``patient_id`` in an MSD
``training`` entry; for the pairs and DRIVE layouts a ``patients.csv`` beside ``images/`` with the
header ``case_id,patient_id``; else the DICOM PatientID of a DICOM image or SEG, read when the set
is opened and kept only as a hash (``dicom:`` and 16 hex digits), never in clear. A case with no
patient id is its own patient.

Example:
    >>> ds = open_seg_dataset("drive/training")
    >>> ds.kind, ds.label_names, len(ds.items)
    ('drive', {0: 'background', 1: 'vessel'}, 20)
    >>> image, labels, roi = ds.read(ds.items[0])
    >>> image.array.shape, labels.shape, roi.dtype
    ((3, 584, 565), (584, 565), dtype('bool'))
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsight.errors import DatasetError
from medsight.sample import Sample

SEG_LAYOUTS_HELP = (
    "medsight reads segmentation sets as: images/ with masks/ (or labels/) and an optional roi/ folder; "
    "DRIVE (images/, 1st_manual/, mask/); a Medical Segmentation Decathlon folder with dataset.json; "
    "or a folder holding a DICOM series and its DICOM SEG file"
)
#: Trailing name parts dropped (repeatedly, case-insensitive) to get a case id.
CASE_SUFFIX = re.compile(r"[_-](mask|masks|seg|segmentation|label|labels|gt|roi|fov|manual\d*|training|test)$", re.I)
MASK_FOLDERS = ("masks", "labels")
ROI_FOLDERS = ("roi", "fov")
#: the pairs and DRIVE layouts' optional list of each case's patient (header ``case_id,patient_id``)
PATIENTS_CSV = "patients.csv"
DRIVE_LABELS = {0: "background", 1: "vessel"}


@dataclass
class SegItem:
    """One case: its image (a file or DICOM series folder), mask file, optional ROI file and patient.

    ``patient_id`` is the manifest's patient id or a hash of the DICOM PatientID (None: unknown).
    """

    case_id: str
    image: str
    mask: str | None
    roi: str | None = None
    patient_id: str | None = None


@dataclass
class SegSet:
    """A segmentation data set; see :func:`open_seg_dataset`."""

    kind: str
    root: Path
    label_names: dict[int, str]
    items: list[SegItem]
    modality: str | None = None

    def read(self, item: SegItem) -> tuple[Sample, np.ndarray | None, np.ndarray | None]:
        """Decode one case: ``(image, labels, roi)``.

        ``labels`` is ``int64`` with the image's spatial shape (a 0/255 mask becomes 0/1), or
        None when the case has no mask; ``roi`` is boolean, or None.

        Raises:
            DatasetError: a mask or ROI whose shape differs from the image's, a mask with
                values that are not labels, or a label missing from ``label_names``.
            MedsightError: a file cannot be read (see :func:`medsight.io.read_image`).
        """
        from medsight.io import read_image
        from medsight.io.dicom_seg import read_dicom_seg

        if self.kind == "dicom_seg" and item.mask is not None:
            image, labels, _ = read_dicom_seg(item.mask, item.image)
            return image, labels.astype(np.int64), None
        image = read_image(item.image)
        labels = None if item.mask is None else _read_mask(item.mask, image)
        roi = None if item.roi is None else _read_mask(item.roi, image) > 0
        if labels is not None:
            unknown = sorted(set(np.unique(labels).tolist()) - set(self.label_names))
            if unknown:
                raise DatasetError(
                    item.mask, f"has label value(s) {unknown} not among the labels {self.label_names}",
                    "pass label_names covering every value, or fix the mask",
                )
        return image, labels, roi


def case_id(path: str | Path) -> str:
    """The case a file belongs to: its name without extension(s) and trailing role words.

    Extensions are everything after the first dot; then ``_mask``, ``_seg``, ``_label(s)``,
    ``_gt``, ``_roi``, ``_fov``, ``_manualN``, ``_training`` and ``_test`` (or with ``-``)
    are dropped from the end, repeatedly.

    Example:
        >>> case_id("21_training_mask.gif"), case_id("21_manual1.gif"), case_id("a-seg.nii.gz")
        ('21', '21', 'a')
    """
    stem = Path(path).name.split(".")[0]
    while (shorter := CASE_SUFFIX.sub("", stem)) != stem and shorter:
        stem = shorter
    return stem


def is_drive(path: str | Path) -> bool:
    """``path`` is a folder in the DRIVE layout (``images/`` beside ``1st_manual/``)."""
    path = Path(path)
    return (path / "images").is_dir() and (path / "1st_manual").is_dir()


def open_seg_dataset(
    path: str | Path, *, label_names: dict[int, str] | None = None, require_masks: bool = True
) -> SegSet:
    """Recognise the segmentation layout at ``path`` and list its cases.

    Args:
        path: a data set folder, or an MSD ``dataset.json``.
        label_names: ``{value: name}`` when the caller knows them (e.g. from the config);
            they win over names in the data set. 0 is always ``background`` unless named.
        require_masks: False to accept images without masks (e.g. to predict on them).

    Raises:
        DatasetError: a missing path, an unrecognised layout, an image without a mask (or a
            mask without an image), or a file named in dataset.json that does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "does not exist", f"check the path; {SEG_LAYOUTS_HELP}")
    if path.is_file() and path.name.lower().endswith(".json"):
        found = _open_msd(path)
    elif path.is_file():
        raise DatasetError(path, "is a single file, not a segmentation data set", SEG_LAYOUTS_HELP)
    elif (path / "dataset.json").is_file():
        found = _open_msd(path / "dataset.json")
    elif is_drive(path):
        found = _open_pairs(path, "drive", path / "1st_manual", path / "mask", require_masks)
        found.label_names = dict(DRIVE_LABELS)
    elif (path / "images").is_dir():
        masks = next((path / n for n in MASK_FOLDERS if (path / n).is_dir()), None)
        if masks is None and require_masks:
            raise DatasetError(
                path, "has images/ but no masks/ or labels/ folder", f"add the masks; {SEG_LAYOUTS_HELP}"
            )
        roi = next((path / n for n in ROI_FOLDERS if (path / n).is_dir()), None)
        found = _open_pairs(path, "pairs", masks, roi, require_masks)
    else:
        found = _open_dicom_seg(path)
    if label_names is not None:
        found.label_names = {int(k): str(v) for k, v in label_names.items()}
    elif not found.label_names:
        found.label_names = _names_from_values(found)
    found.label_names = {0: "background", **found.label_names}
    found.label_names = dict(sorted(found.label_names.items()))
    _add_patients(found)
    return found


def _add_patients(found: SegSet) -> None:
    """Fill in each case's ``patient_id``: ``patients.csv`` (pairs, DRIVE), else the DICOM PatientID's hash."""
    listed = _patients_csv(found.root / PATIENTS_CSV) if found.kind in ("pairs", "drive") else {}
    for item in found.items:
        if item.patient_id is None:
            item.patient_id = listed.get(item.case_id) or _dicom_patient(item.mask if found.kind == "dicom_seg"
                                                                          else item.image)


def _patients_csv(path: Path) -> dict[str, str]:
    """``{case id: patient id}`` from ``patients.csv`` (header ``case_id,patient_id``); {} when absent."""
    import csv

    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"case_id", "patient_id"} <= set(rows[0]):
        raise DatasetError(path, "has no case_id and patient_id columns",
                           "write the header case_id,patient_id and one row per case")
    return {row["case_id"].strip(): row["patient_id"].strip() for row in rows if (row["patient_id"] or "").strip()}


def _dicom_patient(path: str | None) -> str | None:
    """``dicom:<16 hex digits of the SHA-256 of PatientID>`` of a DICOM file, or None (not DICOM, no PatientID)."""
    import hashlib

    from medsight.io.dicom import is_dicom_file, open_dataset

    if path is None or not Path(path).is_file() or not is_dicom_file(path):
        return None
    patient = str(open_dataset(path, stop_before_pixels=True).get("PatientID", "") or "").strip()
    return "dicom:" + hashlib.sha256(patient.encode("utf-8")).hexdigest()[:16] if patient else None


def _files(folder: Path | None) -> dict[str, Path]:
    """``{case id: file}`` for the image files in ``folder``; two files of one case is an error."""
    from medsight.io import is_image_file

    by_case: dict[str, Path] = {}
    if folder is None or not folder.is_dir():
        return by_case
    for file in sorted(p for p in folder.iterdir() if is_image_file(p)):
        key = case_id(file)
        if key in by_case:
            raise DatasetError(
                file, f"has the same case id {key!r} as {by_case[key].name}",
                "rename one of them; files pair by name without extension and _mask/_seg/_label suffixes",
            )
        by_case[key] = file
    return by_case


def _open_pairs(root: Path, kind: str, masks: Path | None, roi: Path | None, require_masks: bool) -> SegSet:
    images, mask_files, roi_files = _files(root / "images"), _files(masks), _files(roi)
    if not images:
        raise DatasetError(root / "images", "holds no image files", f"add images; {SEG_LAYOUTS_HELP}")
    checks = (("mask", mask_files, masks, require_masks), ("ROI", roi_files, roi, bool(roi_files)))
    for what, files, folder, needed in checks:
        missing = sorted(set(images) - set(files))
        if needed and missing:
            raise DatasetError(
                images[missing[0]], f"has no {what} in {folder} ({len(missing)} image(s) lack one)",
                f"add a {what} named like the image (e.g. {missing[0]}_mask.png) or remove the image",
            )
        orphans = sorted(set(files) - set(images))
        if orphans:
            raise DatasetError(files[orphans[0]], f"this {what} has no image named like it in {root / 'images'}",
                               "add the image or remove the file")
    items = [
        SegItem(key, str(file), _str(mask_files.get(key)), _str(roi_files.get(key))) for key, file in images.items()
    ]
    return SegSet(kind, root, {}, items)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _open_msd(path: Path) -> SegSet:
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(path, f"is not valid JSON ({err})", "fix the file (it must be UTF-8 JSON)") from err
    training = spec.get("training") if isinstance(spec, dict) else None
    if not isinstance(training, list) or not training:
        raise DatasetError(
            path, "has no 'training' list of {\"image\": ..., \"label\": ...} entries",
            "list the training cases in it, as the Medical Segmentation Decathlon's dataset.json does",
        )
    names = _msd_labels(path, spec.get("labels") or {})
    items = []
    for n, entry in enumerate(training):
        files = {key: path.parent / str(entry.get(key, "")) for key in ("image", "label")}
        for key, file in files.items():
            if not entry.get(key) or not file.is_file():
                raise DatasetError(
                    path, f"training[{n}] names {key} {entry.get(key)!r}, which does not exist ({file})",
                    "fix the path (relative to dataset.json's folder) or remove the entry",
                )
        patient = entry.get("patient_id")
        items.append(SegItem(case_id(files["image"]), str(files["image"]), str(files["label"]),
                             patient_id=None if patient in (None, "") else str(patient)))
    channels = spec.get("modality") or spec.get("channel_names") or {}
    modality = ",".join(str(channels[k]) for k in sorted(channels, key=str)) if isinstance(channels, dict) else None
    return SegSet("msd", path.parent, names, items, modality or None)


def _msd_labels(path: Path, labels: dict) -> dict[int, str]:
    """``{"0": "background"}`` (MSD) or ``{"background": 0}`` (nnU-Net v2) -> ``{0: "background"}``."""
    names: dict[int, str] = {}
    for key, value in labels.items():
        if str(key).isdigit():
            names[int(key)] = str(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            names[value] = str(key)
        else:
            raise DatasetError(
                path, f"label {key!r}: {value!r} is neither value: name nor name: value (regions are not supported)",
                "write labels as {\"0\": \"background\", \"1\": \"liver\"} or {\"background\": 0, \"liver\": 1}",
            )
    return names


def _open_dicom_seg(root: Path) -> SegSet:
    from medsight.io.dicom import is_dicom_file, open_dataset

    segs = []
    for file in sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith(".") and is_dicom_file(p)):
        header = open_dataset(file, stop_before_pixels=True)
        if str(header.get("Modality", "")) == "SEG":
            segs.append((file, header))
    if not segs:
        raise DatasetError(root, "matches no segmentation layout", SEG_LAYOUTS_HELP)
    names: dict[int, str] = {}
    for _, header in segs:
        for segment in header.get("SegmentSequence") or []:
            names.setdefault(int(segment.SegmentNumber), str(segment.get("SegmentLabel", "")))
    items = [SegItem(case_id(file), str(root), str(file)) for file, _ in segs]
    return SegSet("dicom_seg", root, names, items, "SEG")


def _read_mask(path: str, image: Sample | None) -> np.ndarray:
    """An integer label map from a mask file (0/255 -> 0/1); shape and geometry checked against ``image``."""
    from medsight.io import read_image

    mask = read_image(path)
    array = mask.array
    shape = None if image is None else image.spatial_shape
    if array.shape[0] > 1 and not all(np.array_equal(array[0], ch) for ch in array[1:]):
        raise DatasetError(path, f"the mask has {array.shape[0]} differing colour channels",
                           "save the mask as a single-channel (grey or palette) image of label values")
    array = array[0]
    if shape is not None and array.shape != shape:
        raise DatasetError(path, f"the mask is {array.shape} but its image is {shape}",
                           "use the mask drawn on this image, at the image's size (no resampling)")
    if not np.array_equal(array, np.rint(array)) or array.min(initial=0) < 0:
        raise DatasetError(path, "the mask holds values that are not labels (fractions or negatives)",
                           "save masks losslessly (PNG, not JPEG) with integer labels; resample with nearest neighbour")
    if image is not None and not _same_grid(mask, image):
        raise DatasetError(
            path, f"the mask lies on another grid than its image (mask affine {np.round(mask.affine[:3], 3).tolist()}"
            f", image affine {np.round(image.affine[:3], 3).tolist()})",
            "resample the mask onto the image grid (nearest neighbour) or pair it with the image it was drawn on",
        )
    labels = array.astype(np.int64)
    if set(np.unique(labels).tolist()) <= {0, 255}:
        labels //= 255
    return labels


def _same_grid(a: Sample, b: Sample) -> bool:
    """Both voxel-to-world affines agree to a hundredth of a voxel (or either has none)."""
    if a.affine is None or b.affine is None:
        return True
    tolerance = 0.01 * float(min(min(a.spacing), min(b.spacing)))
    return bool(np.allclose(a.affine, b.affine, atol=max(tolerance, 1e-4)))


def _names_from_values(found: SegSet) -> dict[int, str]:
    """Label names from the values in every mask: one value -> foreground, several -> label_v."""
    values: set[int] = set()
    for item in found.items:
        if item.mask is not None:
            values |= set(np.unique(_read_mask(item.mask, None)).tolist())
    values.discard(0)
    if values <= {1}:
        return {1: "foreground"}
    return {v: f"label_{v}" for v in sorted(values)}

