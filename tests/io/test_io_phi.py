"""Which patient-identifying fields a DICOM carries: names only, never values."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from medsight.errors import UnreadableFileError
from medsight.io import PHI_KEYWORDS, phi_fields_present


def test_real_ct_lists_its_identifying_fields(shared_data: Path) -> None:
    found = phi_fields_present(shared_data / "dicom/pydicom/CT_small.dcm")
    assert found == ["PatientName", "PatientID", "OtherPatientIDsSequence", "InstitutionName", "StationName", "StudyID"]
    assert all(name in PHI_KEYWORDS for name in found)


def test_synthetic_dataset_empty_values_and_nested_sequences() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = ""  # present but empty: not a finding
    ds.Modality = "CT"
    ds.PatientSex = "F"  # kept on purpose: not identifying on its own
    item = Dataset()
    item.AccessionNumber = "A123"
    ds.RequestAttributesSequence = Sequence([item])
    found = phi_fields_present(ds)
    assert found == ["PatientName", "AccessionNumber"]
    assert "Doe^Jane" not in repr(found) and "A123" not in repr(found)


def test_empty_sequence_is_not_a_finding() -> None:
    ds = Dataset()
    ds.OtherPatientIDsSequence = Sequence([])
    assert phi_fields_present(ds) == []


def test_unreadable_path(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_text("hello")
    with pytest.raises(UnreadableFileError, match="not a DICOM file"):
        phi_fields_present(path)

@pytest.mark.parametrize(("serial", "found"), [("SN-4711", ["DeviceSerialNumber"]), ("ANONYMIZED", [])])
def test_the_anonymisers_serial_placeholder_is_not_a_finding(serial: str, found: list[str]) -> None:
    ds = Dataset()
    ds.DeviceSerialNumber = serial
    assert phi_fields_present(ds) == found
