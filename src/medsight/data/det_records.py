"""Detection records: the case (:class:`DetectionCase`, exported by :mod:`medsight.data.det_layouts`), and
what the parsers hand to the opener: one :class:`Annotated` record per image, and the drop log.

Every parser (COCO, VOC, YOLO, the CSV manifest, masks) turns its files into :class:`Annotated`
records, boxes already in the Sample's index order (:mod:`medsight.boxes`), and notes each box or
image it cannot use in a :class:`DropLog`, with its reason. The checks that need the image (its size,
its existence) and the class names are done once, for every format, by the opener.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsight.boxes import Boxes
from medsight.errors import DatasetError

#: The counted drops (and clips) of :attr:`DetectionSet.dropped`, with what each means.
DROP_REASONS = {
    "zero_area": "a box with no extent on some axis (dropped)",
    "outside_image": "a box wholly outside its image (dropped)",
    "clipped_to_image": "a box partly outside its image, clipped to it (kept)",
    "unknown_label": "a box whose class is not among the class names (dropped)",
    "missing_image": "an annotation naming an image file that does not exist (dropped with its boxes)",
    "unreadable_image": "an image whose header cannot be read (dropped with its boxes)",
    "missing_annotation": "an image file without its annotation file (left out; YOLO: a negative instead)",
    "bad_box": "a box that is not numbers in the format's layout (dropped)",
    "unreadable_annotation": "an annotation file that cannot be parsed (its image left out)",
    "not_in_split": "an image missing from every official split file (left out)",
}
#: The word files use for a split, per split name.
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}


@dataclass
class Annotated:
    """One image as its annotation file describes it, before the checks against the image.

    ``corners`` are in the Sample's index order, pixel edges (2D ``[r1, c1, r2, c2]``); with ``normalised``
    (YOLO) they are fractions of the image's size, scaled once the size is read. ``wheres`` names each
    box's place in its file (for problems). ``declared`` is the size the annotation states (rows, columns),
    when it does; ``shape`` the image's spatial shape when the parser already read it (masks).
    """

    path: Path
    source: str
    corners: list[list[float]] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    wheres: list[str] = field(default_factory=list)
    declared: tuple[int, ...] | None = None
    shape: tuple[int, ...] | None = None
    affine: object | None = None
    series_uid: str | None = None
    normalised: bool = False
    patient_id: str | None = None
    split: str | None = None

    def add(self, corners: list[float], label: str, where: str) -> None:
        self.corners.append([float(v) for v in corners])
        self.labels.append(str(label))
        self.wheres.append(where)


@dataclass
class DropLog:
    """Counted drops by reason, and each dropped item as ``{"path", "reason", "kind"}``.

    With ``strict``, an unknown label raises a :class:`DatasetError` instead of being dropped.
    """

    strict: bool = False
    counts: Counter = field(default_factory=Counter)
    problems: list[dict[str, str]] = field(default_factory=list)

    def note(self, kind: str, where: str | Path, reason: str, *, count: bool = True) -> None:
        """Record one dropped (or clipped) item; ``count=False`` lists a problem that drops nothing."""
        if self.strict and kind == "unknown_label":
            raise DatasetError(where, reason, "pass class names covering every label, or fix the label")
        if count:
            self.counts[kind] += 1
        self.problems.append({"path": str(where), "reason": reason, "kind": kind})


@dataclass
class DetectionCase:
    """One image and its ground-truth boxes.

    ``id`` is the image's path relative to the data set's folder (stable, unique); ``shape`` its spatial
    shape as read (EXIF orientation applied); ``exif_orientation`` the JPEG's tag (1: none);
    ``affine`` the voxel-to-mm matrix for volumes (None for pictures). A DICOM series read with its SEG has
    the series folder as ``path`` and, when that folder is the data set's, the SEG file's path as ``id``.
    """

    id: str
    path: Path
    boxes: Boxes
    patient_id: str | None = None
    split: str | None = None
    shape: tuple[int, ...] = ()
    exif_orientation: int = 1
    affine: np.ndarray | None = field(default=None, repr=False)
    #: the DICOM series to read when ``path`` is a folder holding several (a series beside its SEG)
    series_uid: str | None = None

    @property
    def source(self) -> str:
        """The image file, as :class:`medsight.data.layouts.Item` names it (the splitter groups copies by it)."""
        return str(self.path)

    @property
    def index(self) -> None:
        """Never an array row (the splitter's :class:`~medsight.data.layouts.Item` interface)."""
        return None



def split_name(where: str | Path, text: str) -> str:
    """``train``, ``val`` or ``test`` for a split word (``valid`` and ``validation`` are ``val``).

    Raises:
        DatasetError: any other word.
    """
    name = SPLIT_ALIASES.get(text.strip().lower())
    if name is None:
        raise DatasetError(where, f"unknown split {text!r}", "use train, val (or valid) or test")
    return name
