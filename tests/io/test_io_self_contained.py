"""Files that refer to other files: refused for uploads, confined to their own folder on the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medsight.errors import UnreadableFileError, UnsupportedFileError
from medsight.io import read_image

OUTSIDE = "the data file its header names is not a readable file inside the header's own folder"


def _nhdr(path: Path, data_file: str, sizes: str = "4 4") -> Path:
    path.write_text(f"NRRD0004\ntype: uint8\ndimension: 2\nsizes: {sizes}\nencoding: raw\ndata file: {data_file}\n")
    return path


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A server-side file outside the upload's folder (the issue used /etc/hostname)."""
    path = tmp_path / "server" / "secret.raw"
    path.parent.mkdir()
    path.write_bytes(bytes(range(16)))
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "upload"
    path.mkdir()
    return path


def test_the_issue_reproduction_is_refused_for_an_upload(folder: Path) -> None:
    path = _nhdr(folder / "evil.nhdr", "/etc/hostname", sizes="64 64")
    with pytest.raises(UnsupportedFileError) as err:
        read_image(path, self_contained=True)
    text = str(err.value)
    assert text.startswith(f"{path}: the NRRD header refers to another file for its data")
    assert "an upload must be one self-contained file" in text and "send a single .nrrd with attached data" in text
    assert "hostname" not in text and "Errno" not in text


def test_a_detached_header_is_refused_for_an_upload_even_next_to_its_data(folder: Path) -> None:
    (folder / "x.raw").write_bytes(bytes(16))
    with pytest.raises(UnsupportedFileError, match="refers to another file"):
        read_image(_nhdr(folder / "x.nhdr", "x.raw"), self_contained=True)


def test_the_cli_reads_a_detached_header_next_to_its_data(folder: Path) -> None:
    data = np.arange(20, dtype=np.uint8).reshape(4, 5)
    nrrd.write(str(folder / "pair.nhdr"), data, detached_header=True, index_order="F")
    assert (folder / "pair.raw.gz").is_file() or (folder / "pair.raw").is_file()
    sample = read_image(folder / "pair.nhdr")
    np.testing.assert_array_equal(sample.array[0], data)


@pytest.mark.parametrize("form", ["absolute", "dotdot", "symlink"])
def test_the_cli_refuses_a_data_file_outside_the_folder(
    folder: Path, secret: Path, form: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if form == "symlink":
        (folder / "inside.raw").symlink_to(secret)
    name = {"absolute": str(secret), "dotdot": "../server/secret.raw", "symlink": "inside.raw"}[form]
    path = _nhdr(folder / "x.nhdr", name)
    monkeypatch.setattr(nrrd, "read_data", _never_read)
    with pytest.raises(UnreadableFileError) as err:
        read_image(path)
    assert str(err.value).startswith(f"{path}: {OUTSIDE}")
    assert "secret" not in str(err.value)


def test_the_message_is_the_same_whatever_the_target_is(folder: Path, secret: Path) -> None:
    """An existing file, a missing one and a folder: one message, so it reveals nothing."""
    path = folder / "x.nhdr"
    messages = []
    for target in (secret, secret.parent / "missing.raw", secret.parent, folder / "missing.raw", folder):
        _nhdr(path, str(target))
        with pytest.raises(UnreadableFileError) as err:
            read_image(path)
        messages.append(str(err.value))
    assert len(set(messages)) == 1, messages
    assert "Errno" not in messages[0] and "No such file" not in messages[0] and "directory" not in messages[0]


def test_a_numbered_list_of_data_files_is_refused(folder: Path) -> None:
    (folder / "slice000.raw").write_bytes(bytes(4))
    with pytest.raises(UnsupportedFileError, match="lists several data files; medsight reads one data file"):
        read_image(_nhdr(folder / "x.nhdr", "slice%03d.raw 0 1 1 2", sizes="2 2 2"))


def test_a_list_form_header_is_a_clear_error(folder: Path) -> None:
    path = folder / "x.nhdr"
    path.write_text("NRRD0004\ntype: uint8\ndimension: 3\nsizes: 2 2 2\nencoding: raw\ndata file: LIST\na.raw\nb.raw\n")
    with pytest.raises(UnreadableFileError, match="cannot be read as NRRD"):  # pynrrd has no LIST form
        read_image(path)


def _never_read(*args: object, **kwargs: object) -> None:
    raise AssertionError("pynrrd was asked to read the data")


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_a_nifti_pair_header_is_refused_for_an_upload(tmp_path: Path, suffix: str) -> None:
    nib.save(nib.Nifti1Pair(np.zeros((2, 3, 4), np.int16), np.eye(4)), tmp_path / "pair.hdr")
    path = tmp_path / f"upload{suffix}"
    raw = (tmp_path / "pair.hdr").read_bytes()
    if suffix == ".nii.gz":
        import gzip

        raw = gzip.compress(raw)
    path.write_bytes(raw)
    with pytest.raises(UnsupportedFileError) as err:
        read_image(path, self_contained=True)
    assert str(err.value).startswith(f"{path}: the NIfTI header says its voxels are in another file")
    assert "an upload must be one self-contained file" in str(err.value)


def test_a_single_file_nifti_is_self_contained(tmp_path: Path) -> None:
    path = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((2, 3, 4), np.int16), np.eye(4)), path)
    assert read_image(path, self_contained=True).array.shape == (1, 2, 3, 4)


def test_a_dicomdir_in_a_study_folder_is_left_out_of_the_series(shared_data: Path, tmp_path: Path) -> None:
    study = Path(shutil.copytree(shared_data / "dicom/dcmqi/segmentations/ct-3slice", tmp_path / "study"))
    shutil.copy(get_testdata_file("DICOMDIR"), study / "DICOMDIR")
    assert read_image(study).array.shape == (1, 3, 512, 512)


def test_a_dicomdir_is_refused_for_an_upload_and_named_on_the_cli(tmp_path: Path) -> None:
    path = Path(shutil.copy(get_testdata_file("DICOMDIR"), tmp_path / "index.dcm"))
    with pytest.raises(UnsupportedFileError) as err:
        read_image(path, self_contained=True)
    assert str(err.value).startswith(f"{path}: it is a DICOMDIR, an index that refers to other files")
    assert "an upload must be one self-contained file" in str(err.value)
    with pytest.raises(UnsupportedFileError, match="it is a DICOMDIR, an index of other files, not an image"):
        read_image(path)
