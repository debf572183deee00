"""Uploads are one self-contained file, and their declared size is limited before any decoding (issue 31)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from image_bombs import nifti_gz_of_zeros, png_of_zeros

SECRET = b"server-side secret 7f3a9c1e of the host, never to be sent to a client\n"


def _nhdr(data_file: str) -> bytes:
    return ("NRRD0004\ntype: uint8\ndimension: 2\nsizes: 64 64\nencoding: raw\n"
            f"data file: {data_file}\n").encode()


def test_the_issue_reproduction_reads_no_server_file(client) -> None:
    """evil.nhdr naming /etc/hostname, with ?preview=1: refused, and not one byte of the file comes back."""
    hostname = Path("/etc/hostname")
    answer = client.post("/v1/predict?preview=1", files={"file": ("evil.nhdr", _nhdr(str(hostname)))})
    assert answer.status_code == 415, answer.text
    error = answer.json()["error"]
    assert error["where"] == "evil.nhdr" and "one self-contained" in error["fix"]
    assert "preview_png" not in answer.text
    if hostname.is_file() and hostname.read_bytes().strip():
        assert hostname.read_bytes().strip().decode() not in answer.text


@pytest.fixture
def secret_next_to_uploads():
    """A file in the folder where the service writes its temporary upload copies: the one place a header's
    relative ``data file`` would be allowed to point under the command line's rule."""
    handle, name = tempfile.mkstemp(prefix="secret-", suffix=".raw")
    with os.fdopen(handle, "wb") as out:
        out.write(SECRET * 64)  # 4,352 bytes: enough for the 64x64 uint8 image the header declares
    yield Path(name)
    os.unlink(name)


@pytest.mark.parametrize("name", ["evil.nhdr", "evil.nrrd", "scan.png", None])
@pytest.mark.parametrize("absolute", [True, False])
def test_a_nrrd_naming_a_data_file_is_refused_whatever_its_name(client, secret_next_to_uploads: Path,
                                                               name: str | None, absolute: bool) -> None:
    body = _nhdr(str(secret_next_to_uploads) if absolute else secret_next_to_uploads.name)
    answer = (client.post("/v1/predict?preview=1", files={"file": (name, body)}) if name
              else client.post("/v1/predict?preview=1", content=body))
    assert answer.status_code == 415, answer.text
    expected = "one part of a set of files" if name == "evil.nhdr" else "names a separate data file"
    assert expected in answer.json()["error"]["problem"]
    assert b"server-side secret" not in answer.content and "preview_png" not in answer.text
    assert secret_next_to_uploads.name not in answer.text


def test_the_answer_does_not_tell_whether_a_server_path_exists(client, tmp_path: Path) -> None:
    answers = [client.post("/v1/predict", files={"file": ("evil.nrrd", _nhdr(path))}).json()
               for path in ("/no/such/file", str(tmp_path), "/etc/hostname")]
    assert answers[0] == answers[1] == answers[2]  # missing, a folder, a file: the same words


def _nifti_header(magic: bytes) -> bytes:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((4, 4, 4))
    raw = bytearray(header.binaryblock)
    raw[344:348] = magic
    return bytes(raw)


@pytest.mark.parametrize(("name", "body", "problem"), [
    ("scan.hdr", lambda: _nifti_header(b"ni1\x00"), "one part of a set of files"),
    ("scan.img", lambda: bytes(64), "one part of a set of files"),
    ("header", lambda: _nifti_header(b"ni1\x00"), "image is in a separate .img file"),
    ("DICOMDIR", lambda: b"anything", "one part of a set of files"),
    ("index.dcm", lambda: _dicomdir(), "a DICOMDIR"),
])
def test_files_that_refer_to_other_files_are_refused(client, png: bytes, name: str, body, problem: str) -> None:
    answer = client.post("/v1/predict", files={"file": (name, body())})
    assert answer.status_code == 415, answer.text
    assert problem in answer.json()["error"]["problem"]
    assert client.post("/v1/predict", files={"file": ("ok.png", png)}).status_code == 200  # still serving


def _dicomdir() -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.FileSetID = "SCANS"
    ds.DirectoryRecordSequence = []
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_an_attached_nrrd_is_still_read(client) -> None:
    pixels = (np.arange(40 * 48) % 200).astype(np.uint8).reshape(40, 48)
    raw = b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 48 40\nencoding: raw\n\n" + pixels.tobytes()
    answer = client.post("/v1/predict", files={"file": ("scan.nrrd", raw)})
    assert answer.status_code == 200, answer.text
    assert answer.json()["input"]["type"] == "nrrd"


# --- the voxel limit ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"volume.nii.gz": nifti_gz_of_zeros((1024, 1024, 512)), "big.png": png_of_zeros(12000, 12000),
            "huge.png": png_of_zeros(20000, 20000)}


@pytest.mark.parametrize(("name", "declared"), [
    ("volume.nii.gz", "1024x1024x512"),
    ("big.png", "12000x12000"),
    ("huge.png", "20000x20000"),
])
def test_a_small_file_declaring_a_huge_image_is_413(client, png: bytes, bombs: dict[str, bytes], name: str,
                                                    declared: str) -> None:
    assert len(bombs[name]) < 2**20  # under the client's 1 MB body limit: only the voxel limit stops it
    answer = client.post("/v1/predict", files={"file": (name, bombs[name])})
    assert answer.status_code == 413, answer.text
    error = answer.json()["error"]
    assert error["type"] == "ImageTooLargeError" and error["where"] == name
    assert declared in error["problem"] and "67,108,864" in error["problem"]  # the service's default limit
    assert client.post("/v1/predict", files={"file": ("ok.png", png)}).status_code == 200


def test_the_voxel_limit_is_configurable(tiny_bundle: Path, png: bytes, api_key: str) -> None:
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(bundle=tiny_bundle, api_keys=(api_key,), max_voxels=48 * 40 - 1))
    with TestClient(app, headers={"X-API-Key": api_key}) as strict:
        answer = strict.post("/v1/predict", files={"file": ("a.png", png)})  # 48x40 grey = 1,920 values
    assert answer.status_code == 413 and "more than the limit of 1,919" in answer.json()["error"]["problem"]
