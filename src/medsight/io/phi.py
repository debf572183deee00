"""Which patient-identifying DICOM attributes a file carries (names only, never values).

:data:`PHI_KEYWORDS` is the commonly used subset of the DICOM PS3.15 Annex E Basic
Application Level Confidentiality Profile that identifies a person directly: the
patient's names, identifiers, birth date, address and contacts, the people who saw
them, where they were seen, and the numbers that link the study back to the hospital's
records. Left out on purpose, because research needs them and they do not name anyone
on their own: sex, age, size and weight, study/series dates and the DICOM UIDs (the
de-identifier, not this inspector, shifts dates and remaps UIDs).

Example:
    >>> phi_fields_present("scan.dcm")
    ['PatientName', 'PatientID', 'PatientBirthDate', 'InstitutionName']
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pydicom import Dataset

from medsight.io.dicom import open_dataset

#: The DeviceSerialNumber the anonymiser writes (PS3.15 action X/Z/D: a dummy where a value was,
#: since it is Type 1 in some IODs), the same for every device; not an identifier.
DUMMY_SERIAL = "ANONYMIZED"

#: Patient-identifying keywords checked by :func:`phi_fields_present`.
PHI_KEYWORDS: tuple[str, ...] = (
    # the patient
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "OtherPatientNames",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "CountryOfResidence",
    "RegionOfResidence",
    "MedicalRecordLocator",
    "MilitaryRank",
    "BranchOfService",
    "Occupation",
    "PatientComments",
    # the people who saw the patient
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "PhysiciansOfRecord",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
    "OperatorsName",
    # where, and the record numbers that lead back to the patient
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "AccessionNumber",
    "StudyID",
    "AdmissionID",
    "DeviceSerialNumber",
)


def phi_fields_present(dataset_or_path: Dataset | str | Path) -> list[str]:
    """The :data:`PHI_KEYWORDS` present with a non-empty value, in that order.

    Nested sequences are searched too (identifiers hide in referenced-patient and
    request-attribute sequences). Only keyword names are returned, never values.

    Args:
        dataset_or_path: a pydicom dataset, or a DICOM file (read without pixels).

    Raises:
        UnreadableFileError: a path that is not a readable DICOM file.
    """
    ds = (
        dataset_or_path
        if isinstance(dataset_or_path, Dataset)
        else open_dataset(dataset_or_path, stop_before_pixels=True)
    )
    found = {
        element.keyword
        for element in ds.iterall()
        if element.keyword in PHI_KEYWORDS and _filled(element.value) and not _placeholder(element)
    }
    return [keyword for keyword in PHI_KEYWORDS if keyword in found]


def _placeholder(element: object) -> bool:
    """True for the anonymiser's own DeviceSerialNumber placeholder, which identifies no device."""
    return element.keyword == "DeviceSerialNumber" and str(element.value) == DUMMY_SERIAL


def _filled(value: object) -> bool:
    """True for a value with content: a non-blank text, a non-empty list or sequence."""
    if value is None:
        return False
    if isinstance(value, bytes):
        return value.strip(b" \x00") != b""
    if isinstance(value, Sequence) and not isinstance(value, str):
        return len(value) > 0
    return str(value).strip() != ""


@contextmanager
def no_patient_warnings() -> Iterator[None]:
    """Silence highdicom's warnings that quote patient fields (e.g. a one-part PatientName), to keep logs PHI-free."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*person name.*", category=UserWarning)
        yield
