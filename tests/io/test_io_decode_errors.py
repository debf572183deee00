"""Whatever a decoding library raises on a damaged file becomes one clear per-file error."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from corrupt_files import with_transfer_syntax

import medsight.io
from medsight.errors import UnreadableFileError, UnsupportedFileError
from medsight.io import read_image

CT_SMALL = "dicom/pydicom/CT_small.dcm"
BODY_MASK = "nifti/example_ct_sm_T300_output.nii.gz"


@pytest.fixture
def ct(shared_data: Path) -> Path:
    return shared_data / CT_SMALL


def _unknown_vr(src: Path, dst: Path) -> None:
    data = src.read_bytes()
    at = data.index(b"\x08\x00\x20\x00DA")  # StudyDate, explicit VR "DA"
    dst.write_bytes(data[: at + 4] + b"CR" + data[at + 6 :])


def _no_bits(src: Path, dst: Path) -> None:
    ds = pydicom.dcmread(src)
    del ds.BitsStored, ds.PixelRepresentation
    ds.save_as(dst)


def _deflate_claimed(src: Path, dst: Path) -> None:
    dst.write_bytes(with_transfer_syntax(src.read_bytes(), "1.2.840.10008.1.2.1.99"))


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (_unknown_vr, "Unknown Value Representation 'CR' in tag (0008,0020)"),
        (_no_bits, "Missing required element: (0028,0101) 'Bits Stored'"),
        (_deflate_claimed, "cannot be parsed, the file is truncated or corrupt (Error -3 while decompressing data"),
    ],
    ids=["unknown-vr", "missing-bits-stored", "zlib-error"],
)
def test_pydicom_failures_become_unreadable_file_errors(ct: Path, tmp_path: Path, make, needle: str) -> None:
    path = tmp_path / "bad.dcm"
    make(ct, path)
    with pytest.raises(UnreadableFileError) as err:
        read_image(path)
    text = str(err.value)
    assert text.startswith(f"{path}: ") and needle in text
    assert text.endswith("re-export the file from the PACS or scanner")


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about every element the corruption broke
def test_a_multi_valued_sop_class_without_pixels_is_no_image_not_a_crash(ct: Path, tmp_path: Path) -> None:
    """pydicom's 'MultiValue' object has no attribute 'name' when a bit flip splits the SOP class."""
    ds = pydicom.dcmread(ct)
    ds.SOPClassUID = ["1.2.840.10008.5.1.4.1.1.2", "1.2.3"]
    del ds.PixelData
    path = tmp_path / "multi.dcm"
    ds.save_as(path)
    with pytest.raises(UnsupportedFileError, match="no pixel data .* it is not an image"):
        read_image(path)


def _nifti_with(shared_data: Path, tmp_path: Path, offset: int, fmt: str, value: float) -> Path:
    raw = bytearray(gzip.decompress((shared_data / BODY_MASK).read_bytes()))
    struct.pack_into(fmt, raw, offset, value)
    path = tmp_path / "bad.nii"
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "needle"),
    [
        (70, "<h", 999, "HeaderDataError: data code 999 not recognized"),
        (108, "<f", 3e38, "OverflowError"),
        (42, "<h", -5, "OverflowError"),
    ],
    ids=["datatype-999", "vox-offset-3e38", "negative-dim"],
)
def test_nibabel_failures_become_unreadable_file_errors(
    shared_data: Path, tmp_path: Path, offset: int, fmt: str, value: float, needle: str
) -> None:
    path = _nifti_with(shared_data, tmp_path, offset, fmt, value)
    with pytest.raises(UnreadableFileError) as err:
        read_image(path)
    text = str(err.value)
    assert text.startswith(f"{path}: cannot be read as NIfTI") and needle in text
    assert text.endswith("write the NIfTI file again")


class _Surprise(Exception):
    """Something no reader expects."""


#: What a library's message might echo from the file (kept off the raising line: tracebacks show source).
_FILE_CONTENT = "PatientName=Doe^Jane"


def test_the_last_safety_net_names_the_file_and_keeps_content_out_of_message_and_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), path)

    def surprise(*args: object, **kwargs: object) -> None:
        raise _Surprise(_FILE_CONTENT)

    monkeypatch.setattr(medsight.io, "read_nifti", surprise)
    with caplog.at_level(logging.DEBUG, logger="medsight.io"), pytest.raises(UnreadableFileError) as err:
        read_image(path)
    assert str(err.value) == (
        f"{path}: could not be decoded (_Surprise); check that it is a complete image file of the type its name "
        "says; export or copy it again"
    )
    assert err.value.__cause__ is None and err.value.__suppress_context__
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "_Surprise while decoding" in logged and "surprise" in logged  # the traceback's frames
    assert "Doe^Jane" not in logged


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_interrupts_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: type[BaseException]) -> None:
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4)), path)

    def interrupted(*args: object, **kwargs: object) -> None:
        raise stop

    monkeypatch.setattr(medsight.io, "read_nifti", interrupted)
    with pytest.raises(stop):
        read_image(path)


def _pixel_data_offset(path: Path) -> int:
    ds = pydicom.dcmread(path)
    return ds.get_item(0x7FE00010).value_tell


def test_a_dicom_cut_inside_its_pixels_says_truncated_with_the_byte_counts(ct: Path, tmp_path: Path) -> None:
    start = _pixel_data_offset(ct)
    cut = start + 10_000
    path = tmp_path / "cut.dcm"
    path.write_bytes(ct.read_bytes()[:cut])
    with pytest.raises(UnreadableFileError) as err:
        read_image(path)
    assert str(err.value) == (
        f"{path}: the pixel data is shorter than its 128 rows x 128 columns x 1 frame(s) x 1 sample(s) x 16 bits "
        "declare (got 10,000 of 32,768 bytes): the file is truncated; export or copy it again"
    )


def test_a_dicom_cut_inside_its_header_is_truncated_not_a_non_image(ct: Path, tmp_path: Path) -> None:
    path = tmp_path / "cut.dcm"
    path.write_bytes(ct.read_bytes()[:1500])  # inside the (0019,1003) value, long before the pixels
    with pytest.raises(UnreadableFileError) as err:
        read_image(path)
    assert str(err.value) == (
        f"{path}: the file ends inside its header, before any pixel data (CT Image Storage): it is truncated; "
        "export or copy it again"
    )


def test_a_complete_dicom_without_pixels_is_still_no_image(ct: Path, tmp_path: Path) -> None:
    ds = pydicom.dcmread(ct)
    del ds.PixelData
    path = tmp_path / "no_pixels.dcm"
    ds.save_as(path)
    with pytest.raises(UnsupportedFileError) as err:
        read_image(path)
    assert "no pixel data (CT Image Storage, modality CT); it is not an image" in str(err.value)
