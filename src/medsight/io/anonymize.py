"""De-identify DICOM files: the commonly used subset of the PS3.15 Basic Confidentiality Profile.

For every file (sequences included):

* the patient-identifying attributes of :data:`medsight.io.phi.PHI_KEYWORDS` are removed,
  except the type-2 ones a valid object must keep, which are emptied (``PatientName``,
  ``PatientBirthDate``, ``ReferringPhysicianName``, ``AccessionNumber``, ``StudyID``), and
  ``PatientID``, which becomes a pseudonym (``ANON-`` + 12 hex digits, the same for the same
  patient);
* ``DeviceSerialNumber``, which PS3.15 removes unless the IOD needs it (Type 1 in the Enhanced General
  Equipment module of SEG, enhanced CT/MR and other multi-frame objects), keeps its place with the
  dummy value :data:`DUMMY_SERIAL` (the same for every device), so no file loses its conformance;
* every UID of the study (study, series, instance, frame of reference and the references to
  them) is replaced by a ``2.25.`` UID derived from it with a keyed hash, so the same input UID
  always gets the same output UID within a key, and references between files still match;
* private tags are removed; ``PatientIdentityRemoved`` is set to ``YES`` and
  ``DeidentificationMethod`` names the profile.

Dates, sex, age, size and weight are kept (research needs them). The old-to-new map is written
only when asked (``mapping=``): it re-identifies the data, so keep it apart. Nothing
identifying is ever logged: the result reports counts only.

Example:
    >>> anonymize_tree(Path("study"), Path("study-anon"), key=b"project secret")
    {'files': 3, 'skipped': 0, 'uids': 5, 'patients': 1}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from pathlib import Path

import pydicom
from pydicom import Dataset

from medsight.atomic_write import atomic_write_text, replacing
from medsight.errors import ConfigError, UnreadableFileError
from medsight.io.phi import DUMMY_SERIAL, PHI_KEYWORDS

#: Type-2 attributes that must stay present: emptied instead of removed.
EMPTIED = ("PatientName", "PatientBirthDate", "ReferringPhysicianName", "AccessionNumber", "StudyID")
METHOD = "medsight PS3.15 basic profile subset, UIDs remapped"  # LO: at most 64 characters


class Anonymizer:
    """Remaps UIDs and patient IDs consistently under one key; holds the map for the run."""

    def __init__(self, key: bytes | None = None) -> None:
        self.key = key or secrets.token_bytes(32)
        self.uids: dict[str, str] = {}
        self.patients: dict[str, str] = {}

    def uid(self, old: str) -> str:
        if old not in self.uids:
            digest = hmac.new(self.key, f"uid:{old}".encode(), hashlib.sha256).digest()
            self.uids[old] = f"2.25.{int.from_bytes(digest[:16], 'big')}"
        return self.uids[old]

    def patient(self, old: str) -> str:
        if old not in self.patients:
            self.patients[old] = "ANON-" + hmac.new(self.key, f"pid:{old}".encode(), hashlib.sha256).hexdigest()[:12]
        return self.patients[old]

    def dataset(self, ds: Dataset) -> Dataset:
        """De-identify ``ds`` in place (and its file meta), and return it."""
        ds.remove_private_tags()
        self._clean(ds)
        meta = getattr(ds, "file_meta", None)
        if meta is not None and "MediaStorageSOPInstanceUID" in meta:
            meta.MediaStorageSOPInstanceUID = self.uid(str(meta.MediaStorageSOPInstanceUID))
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        return ds

    def _clean(self, ds: Dataset) -> None:
        for element in list(ds):
            keyword = element.keyword
            if element.VR == "SQ":
                for item in element.value:
                    self._clean(item)
            elif keyword == "PatientID":
                element.value = self.patient(str(element.value or ""))
            elif keyword in EMPTIED:
                element.value = ""
            elif keyword == "DeviceSerialNumber":
                element.value = DUMMY_SERIAL if str(element.value or "").strip() else element.value
            elif keyword in PHI_KEYWORDS:
                del ds[element.tag]
            elif element.VR == "UI" and element.value and keyword not in _KEPT_UIDS:
                values = element.value if element.VM > 1 else [element.value]
                mapped = [self.uid(str(v)) for v in values]
                element.value = mapped if element.VM > 1 else mapped[0]


#: UIDs that name standards, not patients or studies: kept as they are.
_KEPT_UIDS = {"SOPClassUID", "ReferencedSOPClassUID", "TransferSyntaxUID", "ImplementationClassUID",
              "MediaStorageSOPClassUID", "CodingSchemeUID", "ContextGroupExtensionCreatorUID",
              "MappingResourceUID", "SpecificCharacterSet"}


def anonymize_tree(src: Path, dst: Path, *, key: bytes | None = None, mapping: Path | None = None) -> dict[str, int]:
    """De-identify every DICOM file under ``src`` into ``dst`` (same relative paths).

    Files that are not DICOM are skipped and counted, never copied. ``dst`` must not be inside
    ``src``. With ``mapping``, a JSON map of the old to new UIDs and patient IDs is written.

    Raises:
        ConfigError: ``src`` missing, or ``dst`` equal to or inside ``src``.
        UnreadableFileError: a DICOM file that cannot be parsed (nothing is written for it).
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise ConfigError(src, "does not exist", "pass the folder (or file) to de-identify")
    if dst.resolve() == src.resolve() or src.resolve() in dst.resolve().parents:
        raise ConfigError(dst, "is the input folder or inside it", "write the de-identified copy somewhere else")
    anonymizer = Anonymizer(key)
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    counts = {"files": 0, "skipped": 0}
    for path in files:
        if not _is_dicom(path):
            counts["skipped"] += 1
            continue
        target = dst / (path.name if src.is_file() else path.relative_to(src))
        try:
            ds = anonymizer.dataset(pydicom.dcmread(path))
        except Exception as exc:  # pydicom raises many types on broken files
            raise _unreadable(path, exc) from exc
        with replacing(target) as staging:  # a crash or a full disk never leaves half a file under its name
            try:
                ds.save_as(staging, enforce_file_format=True)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:  # file meta it cannot be written with
                raise _unreadable(path, exc) from exc
        counts["files"] += 1
    if mapping is not None:
        table = {"uids": anonymizer.uids, "patient_ids": anonymizer.patients}
        atomic_write_text(Path(mapping), json.dumps(table, indent=1))
    return {**counts, "uids": len(anonymizer.uids), "patients": len(anonymizer.patients)}


def _is_dicom(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(132)
    return len(head) == 132 and head[128:132] == b"DICM"


def _unreadable(path: Path, exc: Exception) -> UnreadableFileError:
    return UnreadableFileError(path, f"not a readable DICOM file ({type(exc).__name__})",
                               "fix or remove it, then run again")
