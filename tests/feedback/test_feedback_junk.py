"""Bad feedback requests: a clear 4xx each, and nothing stored, no input copy, no row (issue 31, item 4)."""

from __future__ import annotations

import io
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from feedback_data import KEY, dicom_bytes, pixels, png_bytes
from image_bombs import png_of_zeros
from phi_dicom import phi_dicom_bytes
from PIL import Image

from medsight.feedback import FeedbackStore

SHA = "ab" * 32
MULTIPART_JUNK = "multipart/form-data; boundary=xyz"


def _png(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros(size, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _nifti_3d() -> bytes:
    import nibabel as nib

    return nib.Nifti1Image(np.zeros((12, 12, 12), np.float32), np.eye(4)).to_bytes()


def _requests() -> list[tuple[str, dict, int, str]]:
    """``(what, httpx arguments, status, words in the error)``: a few dozen ways to get feedback wrong."""
    image = png_bytes(5)
    truncated_png = image[: len(image) // 2]
    truncated_dicom = dicom_bytes(6)[:-700]
    evil = b"NRRD0004\ntype: uint8\ndimension: 2\nsizes: 64 64\nencoding: raw\ndata file: /etc/hostname\n"

    def upload(verdict: str | None = "agree", file: bytes | None = image, name: str = "a.png", **extra) -> dict:
        """A multipart form: text fields as parts without a file name, files with one."""
        fields = {"verdict": verdict, **extra} if verdict is not None else extra
        parts = [(k, (None, v) if isinstance(v, str) else (f"{k}.png", v)) for k, v in fields.items()]
        return {"files": parts + ([("file", (name, file))] if file is not None else [])}

    json_type = {"Content-Type": "application/json"}
    return [
        ("JSON that is not UTF-8", {"content": b'{"verdict": "agree", "input_sha256": "\xff\xfe"}',
                                    "headers": json_type}, 422, "not valid UTF-8 JSON"),
        ("JSON cut short", {"content": b'{"verdict": ', "headers": json_type}, 422, "not valid UTF-8 JSON"),
        ("a JSON array", {"json": ["agree"]}, 422, "is not an object"),
        ("JSON null", {"content": b"null", "headers": json_type}, 422, "is not an object"),
        ("a number as verdict", {"json": {"verdict": 1, "input_sha256": SHA}}, 422, "must be strings"),
        ("an object as hash", {"json": {"verdict": "agree", "input_sha256": {"a": 1}}}, 422, "must be strings"),
        ("an empty JSON object", {"json": {}}, 400, "is not one of agree, label, mask"),
        ("no input named", {"json": {"verdict": "agree"}}, 422, "names no input"),
        ("an unknown hash", {"json": {"verdict": "agree", "input_sha256": SHA}}, 404, "send the image itself"),
        ("a path as hash", {"json": {"verdict": "agree", "input_sha256": "../../etc/passwd"}}, 400,
         "not a SHA-256"),
        ("plain text", {"content": b"verdict=agree", "headers": {"Content-Type": "text/plain"}}, 415,
         "is not JSON or multipart"),
        ("no content type", {"content": b"agree"}, 415, "is not JSON or multipart"),
        ("a broken multipart body", {"content": b"--nope\r\n\r\n", "headers": {"Content-Type": MULTIPART_JUNK}},
         400, "could not be parsed"),
        ("three files", {"files": [("file", ("a.png", image)), ("mask", ("b.png", image)), ("x", ("c.png", image))],
                         "data": {"verdict": "agree"}}, 400, "could not be parsed"),
        ("a truncated PNG", upload(file=truncated_png), 400, ""),
        ("a truncated DICOM", upload(file=truncated_dicom, name="scan.dcm"), 400, ""),
        ("an empty file", upload(file=b""), 400, "empty body"),
        ("a text file", upload(file=b"a clinical letter, not an image " * 8, name="letter.png"), 415,
         "not a DICOM, NIfTI"),
        ("a detached NRRD header", upload(file=evil, name="evil.nhdr"), 415, "self-contained"),
        ("an image declaring 12000x12000 pixels", upload(file=png_of_zeros(12000, 12000)), 413, "12000x12000"),
        ("a 3D volume for a 2D classifier", upload(file=_nifti_3d(), name="v.nii"), 422, ""),
        ("an unknown verdict", upload(verdict="maybe"), 400, "is not one of agree, label, mask"),
        ("no verdict", upload(verdict=None), 400, "is not one of agree, label, mask"),
        ("a label verdict without a label", upload(verdict="label"), 400, "needs the correct label"),
        ("a label the model does not have", upload(verdict="label", label="tumour"), 422, "['normal', 'nodule']"),
        ("a mask verdict without a mask", upload(verdict="mask"), 400, "needs the corrected mask"),
        ("a truncated mask", upload(verdict="mask", mask=truncated_png), 400, ""),
        ("a mask that is not an image", upload(verdict="mask", mask=b"\x00" * 64), 415, "not a DICOM, NIfTI"),
        ("a mask on another grid", upload(verdict="mask", mask=_png((20, 20))), 422, "the mask is 20x20"),
        ("a DICOM mask on another grid", upload(verdict="mask", mask=phi_dicom_bytes(np.ones((20, 20), np.uint8))),
         422, "the mask is 20x20"),
        ("the file as a text field", {"files": [("verdict", (None, "agree")), ("file", (None, "a.png"))]}, 422,
         "names no input"),
        ("an unknown hash in a form", upload(file=None, input_sha256=SHA), 404, "send the image itself"),
        ("a body over the limit", {"content": b"{" + b" " * 2**20 + b"}", "headers": json_type}, 413,
         "larger than the service's limit"),
    ]


@pytest.fixture
def strict_client(fb_bundle: Path, tmp_path: Path):
    """Feedback on, with a 1 MB body limit."""
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(bundle=fb_bundle, api_keys=(KEY,), feedback=tmp_path / "feedback",
                                   max_body_bytes=2**20))
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        yield client


def test_bad_feedback_is_a_clear_4xx_and_stores_nothing(strict_client, tmp_path: Path) -> None:
    assert pixels().shape == (40, 36)
    answers = []
    for what, request, status, words in _requests():
        answer = strict_client.post("/v1/feedback", **request)
        answers.append((what, answer.status_code))
        assert answer.status_code == status, f"{what}: {answer.status_code} {answer.text}"
        error = answer.json()["error"]
        assert words in error["message"] and error["fix"], f"{what}: {error}"
        assert answer.headers["cache-control"] == "no-store"
    assert len(answers) >= 30
    root = tmp_path / "feedback"
    assert sorted(p.name for p in (root / "inputs").iterdir()) == []  # no copy left by a refused verdict
    assert FeedbackStore(root).rows() == []
    assert {p.name for p in root.iterdir() if p.is_file()} <= {"feedback.db", "feedback.db-wal", "feedback.db-shm"}
    good = strict_client.post("/v1/feedback", data={"verdict": "agree"}, files={"file": ("a.png", png_bytes(5))})
    assert good.status_code == 201 and len(FeedbackStore(root).rows()) == 1  # and it keeps serving


@contextmanager
def _broken_database():
    raise sqlite3.OperationalError("disk I/O error")
    yield


def test_a_failed_insert_leaves_no_input_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FeedbackStore(tmp_path / "fb")
    data = png_bytes(2)
    monkeypatch.setattr(store, "_connect", _broken_database)
    with pytest.raises(sqlite3.OperationalError):
        store.add(sha256=_sha(data), user_id="u", model_name="m", model_version="v", kind="mask", prediction={},
                  input_data=data, input_kind="png", mask_data=data, mask_kind="png")
    assert list((tmp_path / "fb" / "inputs").iterdir()) == []  # neither the input, the mask nor a .part file


def test_a_stored_input_survives_a_later_failed_verdict(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FeedbackStore(tmp_path / "fb")
    data = png_bytes(2)
    row = store.add(sha256=_sha(data), user_id="u", model_name="m", model_version="v", kind="agree",
                    prediction={}, input_data=data, input_kind="png")
    monkeypatch.setattr(store, "_connect", _broken_database)
    with pytest.raises(sqlite3.OperationalError):
        store.add(sha256=_sha(data), user_id="u", model_name="m", model_version="v", kind="agree", prediction={},
                  input_data=data, input_kind="png")
    assert (tmp_path / "fb" / row["input_path"]).is_file()  # the earlier verdict's copy is not removed


def _sha(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
