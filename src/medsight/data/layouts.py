"""Labelled data sets, whatever the files: class folders, a CSV manifest, a MedMNIST ``.npz``.

:func:`open_dataset` looks at a path and returns a :class:`LabelledSet`: the class names
and one :class:`Item` per image (its source, label, patient and split where the data set
says). Pixels are read later, one item at a time, with :meth:`LabelledSet.read`.

Supported layouts:

* **class folders**: ``root/<class>/**/<image>``; or ``root/{train,val,test}/<class>/...``,
  which also fixes the splits. Class names are the sorted folder names.
* **CSV manifest**: a ``.csv`` with the header ``path,label[,patient_id][,split]``; paths are
  relative to the CSV's folder and may name image files or DICOM series folders.
* **MedMNIST** ``.npz``: ``{train,val,test}_images`` / ``_labels``; every present split.
* **DICOM folder** without labels: its series (or files), e.g. to inspect or predict on.

Example:
    >>> ds = open_dataset("brain_mri_tumor")
    >>> ds.kind, ds.class_names, len(ds.items)
    ('folder', ['no', 'yes'], 253)
    >>> ds.read(ds.items[0]).array.shape
    (1, 630, 630)
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsight.errors import DatasetError
from medsight.sample import Sample

SPLIT_NAMES = ("train", "val", "test")
MANIFEST_COLUMNS = ("path", "label", "patient_id", "split")
LAYOUTS_HELP = (
    "medsight reads: a folder with one sub-folder per class (optionally inside train/ val/ test/), "
    "a CSV manifest with the header path,label[,patient_id][,split], a MedMNIST .npz, "
    "or a folder of DICOM files"
)
#: Class names of MedMNIST sets, keyed by the file stem; others are named '0', '1', ...
MEDMNIST_CLASSES = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal_or_benign"],
}


@dataclass
class Item:
    """One labelled image of a data set.

    ``source`` is a file, a DICOM series folder (with ``series_uid`` when the folder holds
    several) or the ``.npz`` (with ``index``, the row in the ``split`` arrays).
    """

    source: str
    label: int | None
    patient_id: str | None = None
    split: str | None = None
    index: int | None = None
    series_uid: str | None = None


@dataclass
class LabelledSet:
    """A data set as a list of items with class names; see :func:`open_dataset`."""

    kind: str
    root: Path
    class_names: list[str]
    items: list[Item]
    skipped_files: list[str] = field(default_factory=list)
    #: ``{"path", "reason"}`` of each manifest row left out when opened with ``strict=False``
    problems: list[dict[str, str]] = field(default_factory=list)
    _arrays: dict[str, tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False, compare=False)

    def read(self, item: Item) -> Sample:
        """Decode one item (npz rows come from arrays loaded once and kept in memory).

        Raises:
            MedsightError: the file cannot be read (see :func:`medsight.io.read_image`).
        """
        from medsight.io import medmnist_sample, read_image

        if item.index is None:
            sample = read_image(item.source, series_uid=item.series_uid)
        else:
            sample = medmnist_sample(self.arrays()[item.split or "train"][0], item.index)
            sample.meta["path"] = item_id(item)
        return sample

    def arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """For an npz data set, ``{split: (images, labels)}`` as stored (read once)."""
        from medsight.io import read_medmnist

        if self.kind != "npz":
            raise DatasetError(self.root, f"is a {self.kind} data set, not an npz", "use read() per item")
        if self._arrays is None:
            self._arrays = read_medmnist(self.root)
        return self._arrays

    def labels(self) -> np.ndarray:
        """The label of every item as int64; -1 for an unlabelled item."""
        return np.array([-1 if it.label is None else it.label for it in self.items], dtype=np.int64)

    def defined_splits(self) -> dict[str, list[int]] | None:
        """``{split: item indices}`` when every item has a split, else None."""
        if not self.items or any(it.split is None for it in self.items):
            return None
        splits: dict[str, list[int]] = {}
        for i, it in enumerate(self.items):
            splits.setdefault(it.split, []).append(i)
        return {name: splits[name] for name in SPLIT_NAMES if name in splits}


def item_id(item: Item) -> str:
    """A stable name for an item: its path, ``folder#series_uid``, or ``file.npz#split/index``."""
    if item.index is not None:
        return f"{item.source}#{item.split or 'all'}/{item.index}"
    if item.series_uid is not None:
        return f"{item.source}#{item.series_uid}"
    return item.source


def open_dataset(
    path: str | Path, *, series_uid: str | None = None, class_names: list[str] | None = None, strict: bool = True
) -> LabelledSet:
    """Recognise the layout at ``path`` and list its labelled items.

    Args:
        path: a class folder tree, a ``.csv`` manifest, a MedMNIST ``.npz`` or a DICOM folder.
        series_uid: open a DICOM folder as that one series (or pick that series in the
            manifest's series folders).
        class_names: the classes, in label order, when the caller knows them (e.g. a model's
            labels); a label or class folder outside them is an error.
        strict: refuse a manifest at its first bad row (training). ``False`` (inspection)
            leaves every bad row out and lists it, with its reason, in ``problems``.

    Raises:
        DatasetError: a missing path, an unrecognised layout, an empty class folder; with
            ``strict``, a manifest row naming a missing file, an unknown label or split, or
            an empty cell.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(path, "does not exist", f"check the path; {LAYOUTS_HELP}")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".csv":
            return _open_manifest(path, series_uid, class_names, None if strict else [])
        if suffix == ".npz":
            return _open_npz(path, class_names)
        raise DatasetError(path, "is a single file, not a data set", LAYOUTS_HELP)
    if series_uid is not None:
        return _open_dicom_folder(path, series_uid)
    return _open_folder(path, class_names, strict)


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def _open_folder(root: Path, class_names: list[str] | None, strict: bool = True) -> LabelledSet:
    from medsight.io import is_dicom_file, is_image_file

    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    skipped = [str(p) for p in sorted(root.iterdir()) if _loose_file(p)]
    if not folders:
        images = [Path(p) for p in skipped if is_image_file(p)]
        if not images:
            raise DatasetError(root, "holds no class sub-folders and no images", LAYOUTS_HELP)
        if all(is_dicom_file(p) for p in images):
            return _open_dicom_folder(root, None, strict)
        extra = sorted(set(skipped) - {str(p) for p in images})
        return LabelledSet("folder", root, [], [Item(str(p), None) for p in images], extra)
    if {p.name for p in folders} <= set(SPLIT_NAMES):
        split_classes = {split: _class_folders(split) for split in folders}
        skipped += [str(p) for split in folders for p in sorted(split.iterdir()) if _loose_file(p)]
        names = sorted({p.name for found in split_classes.values() for p in found})
    else:
        split_classes = {None: folders}
        names = [p.name for p in folders]
    names = _check_names(root, names, class_names, "class folder")
    items: list[Item] = []
    for split, class_dirs in split_classes.items():
        for folder in class_dirs:
            files = sorted(p for p in folder.rglob("*") if p.is_file() and _visible(p, folder))
            readable = [is_image_file(p) for p in files]
            images = [p for p, ok in zip(files, readable, strict=True) if ok]
            skipped += [str(p) for p, ok in zip(files, readable, strict=True) if not ok]
            if not images:
                raise DatasetError(
                    folder,
                    f"the class folder holds no image files ({len(files)} other files)",
                    "add images to it or remove the folder",
                )
            label = names.index(folder.name)
            split_name = None if split is None else split.name
            items += [Item(str(p), label, split=split_name) for p in images]
    return LabelledSet("folder", root, names, items, skipped)


def _loose_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".")


def _class_folders(split: Path) -> list[Path]:
    found = sorted(p for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not found:
        raise DatasetError(split, "the split folder holds no class sub-folders", "put one folder per class in it")
    return found


def _check_names(where: Path, found: list[str], known: list[str] | None, what: str) -> list[str]:
    """The class names: ``known`` when given (then every found name must be in it), else ``found``."""
    if known is None:
        return found
    unknown = [name for name in found if name not in known]
    if unknown:
        raise DatasetError(
            where, f"{what}(s) {unknown} are not among the known classes {list(known)}",
            "rename them or pass the matching class names",
        )
    return list(known)


def _open_dicom_folder(root: Path, series_uid: str | None, strict: bool = True) -> LabelledSet:
    """An unlabelled DICOM folder: one item per series (or per file when each file is its own series).

    A file whose header cannot be scanned stops a ``strict`` opening; otherwise (inspection)
    the folder is opened file by file, so that each file's own problem is reported.
    """
    from medsight.io import is_dicom_file, list_series

    try:
        series = list_series(root)
    except Exception:
        if strict or series_uid is not None:
            raise
        series = []
    if series_uid is not None:
        if series_uid not in {s.series_uid for s in series}:
            listing = ", ".join(f"{s.series_uid} ({s.modality} {s.description!r}, {s.n_files} files)" for s in series)
            raise DatasetError(root, f"has no series {series_uid!r}; it holds {listing}", "pass one of these")
        return LabelledSet("dicom", root, [], [Item(str(root), None, series_uid=series_uid)])
    if any(s.n_files > 1 for s in series):
        return LabelledSet("dicom", root, [], [Item(str(root), None, series_uid=s.series_uid) for s in series])
    files = sorted(p for p in root.rglob("*") if p.is_file() and _visible(p, root))
    is_dicom = [is_dicom_file(p) for p in files]
    items = [Item(str(p), None) for p, yes in zip(files, is_dicom, strict=True) if yes]
    skipped = [str(p) for p, yes in zip(files, is_dicom, strict=True) if not yes]
    return LabelledSet("dicom", root, [], items, skipped)


def _open_manifest(
    path: Path, series_uid: str | None, class_names: list[str] | None, problems: list[dict[str, str]] | None
) -> LabelledSet:
    """The manifest's items; a bad row raises, or (given a ``problems`` list) is listed there and left out."""
    rows = _manifest_rows(path, problems)
    if class_names is not None:
        names = list(class_names)
        rows = [(line, row) for line, row in rows if _row_ok(
            problems, row["label"] in names, f"{path}:{line}",
            f"label {row['label']!r} is not one of the known labels {names}",
            "fix the label or pass the matching class names",
        )]
    elif rows and all(re.fullmatch(r"-?\d+", row["label"]) for _, row in rows):
        names = [str(v) for v in sorted({int(row["label"]) for _, row in rows})]
        rows = [(line, {**row, "label": str(int(row["label"]))}) for line, row in rows]
    else:
        names = sorted({row["label"] for _, row in rows})
    with_split = any(row["split"] for _, row in rows)
    items = []
    for line, row in rows:
        source = Path(row["path"]) if Path(row["path"]).is_absolute() else path.parent / row["path"]
        split = row["split"] or None
        if not (
            _row_ok(problems, source.exists(), f"{path}:{line}",
                    f"names {row['path']}, which does not exist ({source})",
                    "fix the path (relative to the CSV's folder) or remove the row")
            and _row_ok(problems, split is not None or not with_split, f"{path}:{line}",
                        "has no split while other rows have one",
                        "give every row a split (train, val or test) or leave the whole column empty")
            and _row_ok(problems, split is None or split in SPLIT_NAMES, f"{path}:{line}",
                        f"unknown split {split!r}", f"use one of {', '.join(SPLIT_NAMES)}")
        ):
            continue
        items.append(Item(
            str(source), names.index(row["label"]), patient_id=row.get("patient_id") or None, split=split,
            series_uid=series_uid if source.is_dir() else None,
        ))
    listed = sorted(problems or [], key=lambda problem: int(problem["path"].rpartition(":")[2]))  # in line order
    return LabelledSet("csv", path, names, items, problems=listed)


def _row_ok(problems: list[dict[str, str]] | None, ok: bool, where: str, problem: str, fix: str) -> bool:
    """``ok``, or a bad manifest row: raised as a :class:`DatasetError`, or listed in ``problems`` (False)."""
    if ok:
        return True
    error = DatasetError(where, problem, fix)
    if problems is None:
        raise error
    problems.append({"path": where, "reason": str(error)})
    return False


def _manifest_rows(path: Path, problems: list[dict[str, str]] | None = None) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` for each non-empty row, with stripped values and lower-case keys.

    A row with an empty path or label raises, or (given ``problems``) is listed there and left out.
    """
    fix = f"the first line must be the header {','.join(MANIFEST_COLUMNS[:2])}[,patient_id][,split]"
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [(name or "").strip().lower() for name in reader.fieldnames or []]
            missing = [col for col in MANIFEST_COLUMNS[:2] if col not in header]
            if missing:
                raise DatasetError(path, f"the header lacks the column(s) {', '.join(missing)}", fix)
            reader.fieldnames = header
            rows = []
            for row in reader:
                values = {k: (v or "").strip() for k, v in row.items() if k in MANIFEST_COLUMNS}
                if not any(values.values()):
                    continue
                empty = next((col for col in MANIFEST_COLUMNS[:2] if not values.get(col)), None)
                if _row_ok(problems, empty is None, f"{path}:{reader.line_num}", f"the {empty} is empty",
                           f"fill in the {empty}"):
                    values["split"] = values.get("split", "").lower()
                    rows.append((reader.line_num, values))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(path, f"is not a readable CSV text file ({err})", "save it as UTF-8 CSV") from err
    if not rows and not problems:
        raise DatasetError(path, "lists no images", "add one row per image under the header")
    return rows


def _open_npz(path: Path, class_names: list[str] | None) -> LabelledSet:
    from medsight.io import read_medmnist

    arrays = read_medmnist(path)
    if any(labels.ndim != 1 for _, labels in arrays.values()):
        raise DatasetError(
            path, "has multi-label targets (one row of labels per image)",
            "medsight classifies one label per image; use a single-label MedMNIST set",
        )
    top = max(int(labels.max(initial=0)) for _, labels in arrays.values())
    names = class_names or MEDMNIST_CLASSES.get(path.stem.lower(), [str(i) for i in range(top + 1)])
    if top >= len(names):
        raise DatasetError(path, f"has label {top} but only the classes {names}", "pass all the class names")
    items = [
        Item(str(path), int(label), split=split, index=i)
        for split, (_, labels) in arrays.items()
        for i, label in enumerate(labels)
    ]
    return LabelledSet("npz", path, list(names), items, _arrays=arrays)
