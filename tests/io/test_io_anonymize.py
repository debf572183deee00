"""`medsight dicom anonymize`: no identifying field left, UIDs remapped consistently, SEG still aligned."""

import errno
import json
import logging
import os
import shutil

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from medsight.cli.main import app
from medsight.errors import ConfigError, OutputWriteError, UnreadableFileError
from medsight.io.anonymize import DUMMY_SERIAL, anonymize_tree
from medsight.io.phi import phi_fields_present


@pytest.fixture
def study(shared_data, tmp_path):
    """The dcmqi 3-slice CT and its liver SEG, with a patient name, birth date and a private tag added."""
    root = tmp_path / "study"
    shutil.copytree(shared_data / "dicom" / "dcmqi" / "segmentations" / "ct-3slice", root / "ct")
    shutil.copy(shared_data / "dicom" / "dcmqi" / "segmentations" / "liver.dcm", root / "liver_seg.dcm")
    for path in (root / "ct").iterdir():
        ds = pydicom.dcmread(path)
        ds.PatientName, ds.PatientBirthDate, ds.InstitutionName = "Doe^Jane", "19700101", "St Elsewhere"
        ds.DeviceSerialNumber = "SN-4711"
        ds.add_new(0x00091001, "LO", "private note")
        ds.save_as(path)
    (root / "notes.txt").write_text("Jane Doe, MRN 12345")
    return root


def test_nothing_identifying_is_left_and_uids_are_remapped(study, tmp_path, caplog):
    out, mapping = tmp_path / "anon", tmp_path / "map.json"
    with caplog.at_level(logging.DEBUG):
        result = CliRunner().invoke(app, ["dicom", "anonymize", str(study), str(out), "--mapping", str(mapping)])
    assert result.exit_code == 0, result.output
    assert "de-identified 4 file(s)" in result.output and "1 non-DICOM file(s) skipped" in result.output
    assert not (out / "notes.txt").exists()
    originals = {p.name: pydicom.dcmread(p) for p in (study / "ct").iterdir()}
    for path in sorted(out.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert phi_fields_present(ds) == ["PatientID"] and ds.PatientID.startswith("ANON-")
        assert ds.DeviceSerialNumber == DUMMY_SERIAL  # every file here had one (the SEG's is Type 1)
        assert ds.PatientName == "" and ds.PatientBirthDate == "" and "InstitutionName" not in ds
        assert ds.PatientIdentityRemoved == "YES" and not any(e.tag.is_private for e in ds)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    for name, before in originals.items():
        after = pydicom.dcmread(out / "ct" / name)
        assert after.SOPInstanceUID != before.SOPInstanceUID and after.SOPInstanceUID.startswith("2.25.")
        assert after.SOPClassUID == before.SOPClassUID  # standard UIDs stay
        np.testing.assert_array_equal(after.pixel_array, before.pixel_array)
    saved = json.loads(mapping.read_text())
    new_study = pydicom.dcmread(out / "ct" / "01.dcm").StudyInstanceUID
    assert saved["uids"][str(originals["01.dcm"].StudyInstanceUID)] == new_study
    assert "Doe^Jane" not in caplog.text and "Doe" not in result.output
    assert not [p for p in out.rglob("*") if p.is_file() and b"SN-4711" in p.read_bytes()]


@pytest.mark.parametrize(("serial", "kept"), [("SN-4711", DUMMY_SERIAL), ("", ""), (None, None)],
                         ids=["value", "empty", "absent"])
def test_a_device_serial_number_becomes_a_dummy_only_where_there_was_one(shared_data, tmp_path, serial, kept):
    """PS3.15 X/Z/D: Type 1 in the SEG's Enhanced General Equipment module, so a value gives way to a dummy."""
    ds = pydicom.dcmread(shared_data / "dicom" / "dcmqi" / "segmentations" / "liver.dcm")
    del ds.DeviceSerialNumber
    if serial is not None:
        ds.DeviceSerialNumber = serial
    ds.save_as(tmp_path / "seg.dcm")
    anonymize_tree(tmp_path / "seg.dcm", tmp_path / "anon", key=b"k")
    after = pydicom.dcmread(tmp_path / "anon" / "seg.dcm")
    assert after.get("DeviceSerialNumber") == kept and after.Manufacturer == ds.Manufacturer


def test_the_seg_still_references_its_series_after_anonymization(study, tmp_path):
    from medsight.io.dicom_seg import read_dicom_seg

    out = tmp_path / "anon"
    anonymize_tree(study, out, key=b"k")
    _, labels_before, _ = read_dicom_seg(study / "liver_seg.dcm", study / "ct")
    _, labels_after, _ = read_dicom_seg(out / "liver_seg.dcm", out / "ct")
    np.testing.assert_array_equal(labels_after, labels_before)


def test_same_key_same_uids_and_no_mapping_unless_asked(study, tmp_path):
    first = anonymize_tree(study, tmp_path / "a", key=b"project key")
    anonymize_tree(study, tmp_path / "b", key=b"project key")
    anonymize_tree(study, tmp_path / "c")  # a fresh random key
    uid = {run: pydicom.dcmread(tmp_path / run / "ct" / "01.dcm").SOPInstanceUID for run in "abc"}
    assert uid["a"] == uid["b"] != uid["c"]
    assert first == {"files": 4, "skipped": 1, "uids": first["uids"], "patients": 1} and first["uids"] >= 6
    assert not list(tmp_path.glob("*.json"))


def test_bad_requests_are_clear_and_write_nothing(study, tmp_path):
    with pytest.raises(ConfigError, match="inside it"):
        anonymize_tree(study, study / "anon")
    with pytest.raises(ConfigError, match="does not exist"):
        anonymize_tree(tmp_path / "missing", tmp_path / "out")
    assert not (study / "anon").exists() and not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["dicom", "anonymize", str(study), str(tmp_path / "x"), "--key-file",
                                      str(tmp_path / "nokey")])
    assert result.exit_code != 0 and "key file not found" in result.output
    (study / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00")
    with pytest.raises(UnreadableFileError, match=r"broken\.dcm: not a readable DICOM file"):
        anonymize_tree(study / "broken.dcm", tmp_path / "y")
    assert not any(p.is_file() for p in (tmp_path / "y").rglob("*"))  # no half-written file left


def test_a_full_disk_is_one_clear_error_and_leaves_no_file(study, tmp_path, monkeypatch):
    def disk_full(descriptor: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OutputWriteError, match=r"could not be written: the disk is full"):
        anonymize_tree(study, tmp_path / "anon")
    assert not any(p.is_file() for p in (tmp_path / "anon").rglob("*"))  # no half-written copy, no .tmp
