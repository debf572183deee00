"""read_image: the choice of reader by file type, the shared Sample contract, and unsupported input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medsight.errors import ConfigError, UnreadableFileError, UnsupportedFileError
from medsight.io import SUPPORTED_SUFFIXES, apply_window, is_image_file, read_image

REAL = [
    ("dicom/dcmqi/segmentations/ct-3slice", "dicom", (1, 3, 512, 512)),
    ("dicom/pydicom/CT_small.dcm", "dicom", (1, 128, 128)),
    ("dicom/pydicom/US1_UNCR.dcm", "dicom", (3, 480, 640)),
    ("dicom/pydicom/eCT_Supplemental.dcm", "dicom", (1, 2, 512, 512)),
    ("nifti/example_ct_sm.nii.gz", "nifti", (1, 122, 101, 30)),
    ("brain_mri_tumor/yes/Y100.JPG", "jpeg", None),
    ("drive/training/images/21_training.tif", "tiff", (3, 584, 565)),
    ("drive/training/1st_manual/21_manual1.gif", "gif", (1, 584, 565)),
]


@pytest.mark.parametrize(("relative", "fmt", "shape"), REAL, ids=[r[0].rsplit("/", 1)[-1] for r in REAL])
def test_every_reader_keeps_the_sample_contract(shared_data: Path, relative: str, fmt: str, shape) -> None:
    sample = read_image(shared_data / relative)
    assert sample.meta["format"] == fmt
    if shape is not None:
        assert sample.array.shape == shape
    assert sample.array.dtype == np.float32 and sample.array.ndim in (3, 4)
    assert sample.channels in (1, 3)
    assert sample.affine.shape == (4, 4) and abs(np.linalg.det(sample.affine[:3, :3])) > 0
    assert len(sample.spacing) == sample.spatial_dims and all(s > 0 for s in sample.spacing)
    json.dumps(sample.meta)


def test_dicom_without_suffix_is_sniffed(shared_data: Path, tmp_path: Path) -> None:
    path = shutil.copy(shared_data / "dicom/pydicom/CT_small.dcm", tmp_path / "1.2.840.113619")
    assert read_image(path).meta["format"] == "dicom"


def test_window_applies_to_nifti_too(shared_data: Path) -> None:
    path = shared_data / "nifti/example_ct_sm.nii.gz"
    windowed = read_image(path, window=(40, 400))
    np.testing.assert_allclose(windowed.array, apply_window(read_image(path).array, 40, 400))
    assert windowed.meta["window"] == [40.0, 400.0]
    with pytest.raises(ConfigError, match="only a DICOM file carries its own window"):
        read_image(path, window="file")


def test_series_uid_is_for_folders(shared_data: Path) -> None:
    with pytest.raises(ConfigError, match="series_uid applies to a DICOM folder"):
        read_image(shared_data / "dicom/pydicom/CT_small.dcm", series_uid="1.2.3")


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("notes.txt", b"hello", "unsupported file type .txt"),
        ("table.csv", b"a,b\n1,2\n", "unsupported file type .csv"),
        ("README", b"plain words", "unsupported file type (no suffix)"),
        ("splits.npz", b"PK\x03\x04", "read it with read_medmnist"),
    ],
)
def test_unsupported_types_list_what_is_supported(tmp_path: Path, name: str, content: bytes, needle: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(UnsupportedFileError) as err:
        read_image(path)
    message = str(err.value)
    assert str(path) in message and needle in message
    assert all(suffix in message for suffix in (".nii.gz", ".png", ".tiff", "DICOM"))


@pytest.mark.parametrize("name", ["empty", "gone.png"])
def test_empty_or_missing_files_are_unreadable(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name == "empty":
        path.write_bytes(b"")
    with pytest.raises(UnreadableFileError) as err:
        read_image(path)
    assert str(path) in str(err.value)


def test_supported_suffixes() -> None:
    assert set(SUPPORTED_SUFFIXES) == {
        ".nii",
        ".nii.gz",
        ".nrrd",
        ".nhdr",
        ".png",
        ".jpg",
        ".jpeg",
        ".tif",
        ".tiff",
        ".gif",
        ".bmp",
        ".dcm",
        ".dicom",
    }


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("scan.PNG", b"x", True),
        ("brain.NII.GZ", b"x", True),
        ("slice.dcm", b"x", True),
        ("IM0001", b"\x00" * 128 + b"DICM" + b"\x00" * 8, True),
        ("notes.txt", b"hello", False),
        ("README", b"hello", False),
        (".DS_Store", b"\x00" * 200, False),
        ("._scan.png", b"x", False),
        ("DICOMDIR", b"\x00" * 128 + b"DICM" + b"\x00" * 8, False),
    ],
)
def test_is_image_file(tmp_path: Path, name: str, content: bytes, expected: bool) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert is_image_file(path) is expected


def test_a_folder_is_not_an_image_file(tmp_path: Path) -> None:
    assert is_image_file(tmp_path) is False
