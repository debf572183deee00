"""Feedback round trip through the API: predict, send a verdict, find it stored without patient data."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from feedback_data import KEY, PHI, dicom_bytes, pixels, png_bytes
from PIL import Image

from medsight.feedback import FeedbackStore


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_label_feedback_on_an_earlier_prediction(feedback_client, tmp_path: Path) -> None:
    data = png_bytes(3)
    predicted = feedback_client.post("/v1/predict", files={"file": ("Doe_Jane.png", data, "image/png")}).json()
    sha = predicted["input_sha256"]
    assert len(sha) == 64
    answer = feedback_client.post("/v1/feedback", json={"input_sha256": sha, "verdict": "correct", "label": "nodule"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["kind"] == "label" and answer.json()["model"]["hash"] == predicted["model"]["hash"]

    store = FeedbackStore(tmp_path / "feedback")
    (row,) = store.rows()
    assert row["input_sha256"] == sha and row["kind"] == "label" and row["label"] == "nodule"
    assert row["model_name"] == "compact_cnn" and row["model_version"] == predicted["model"]["hash"]
    assert row["user_id"].startswith("key-") and KEY not in row["user_id"]
    assert abs((datetime.fromisoformat(row["created_utc"]) - datetime.now().astimezone()).total_seconds()) < 600
    assert row["prediction"]["label"] == predicted["label"]
    assert row["prediction"]["probabilities"] == pytest.approx(predicted["probabilities"])
    assert row["input_path"] == f"inputs/{sha}.png"  # named by hash, never the uploaded name
    stored = np.asarray(Image.open(tmp_path / "feedback" / row["input_path"]))
    np.testing.assert_array_equal(stored, pixels(3))
    assert not any(s.encode() in _all_bytes(tmp_path / "feedback") for s in PHI)  # the PNG text chunk is gone


def test_dicom_feedback_keeps_the_pixels_and_no_phi(feedback_client, tmp_path: Path) -> None:
    from medsight.io import read_image

    data = dicom_bytes(5)
    answer = feedback_client.post("/v1/feedback", data={"verdict": "agree"},
                                  files={"file": ("Doe_Jane_MRN-7731.dcm", data, "application/dicom")})
    assert answer.status_code == 201, answer.text
    (row,) = FeedbackStore(tmp_path / "feedback").rows()
    assert row["kind"] == "agree" and row["prediction"]["label"] in ("normal", "nodule")
    assert row["input_path"].endswith(".dcm")
    original = tmp_path / "original.dcm"
    original.write_bytes(data)
    stored = read_image(tmp_path / "feedback" / row["input_path"])
    np.testing.assert_array_equal(stored.array, read_image(original).array)
    assert stored.spacing == pytest.approx((0.7, 0.7))
    everything = _all_bytes(tmp_path / "feedback")
    assert [s for s in PHI if s.encode() in everything] == []


def test_agree_twice_on_the_same_input_reuses_the_copy(feedback_client, tmp_path: Path) -> None:
    data = png_bytes(1)
    for _ in range(2):
        files = {"file": ("a.png", data, "image/png")}
        assert feedback_client.post("/v1/feedback", data={"verdict": "agree"}, files=files).status_code == 201
    rows = FeedbackStore(tmp_path / "feedback").rows()
    assert len(rows) == 2 and rows[0]["input_path"] == rows[1]["input_path"]
    assert len(list((tmp_path / "feedback" / "inputs").iterdir())) == 1


@pytest.mark.parametrize(("body", "status", "text"), [
    ({"input_sha256": "ab" * 32, "verdict": "agree"}, 404, "send the image itself"),
    ({"input_sha256": "not-a-hash", "verdict": "agree"}, 400, "not a SHA-256 hex digest"),
    ({"verdict": "agree"}, 422, "attach the image"),
])
def test_feedback_errors_name_the_fix(feedback_client, body: dict, status: int, text: str) -> None:
    answer = feedback_client.post("/v1/feedback", json=body)
    assert answer.status_code == status and text in answer.json()["error"]["message"]


def test_bad_verdict_and_label(feedback_client) -> None:
    files = {"file": ("a.png", png_bytes(), "image/png")}
    bad = feedback_client.post("/v1/feedback", data={"verdict": "maybe"}, files=files)
    assert bad.status_code == 400 and "is not one of agree, label, mask" in bad.json()["error"]["message"]
    wrong = feedback_client.post("/v1/feedback", data={"verdict": "label", "label": "tumour"}, files=files)
    assert wrong.status_code == 422 and "['normal', 'nodule']" in wrong.json()["error"]["message"]
    assert feedback_client.post("/v1/feedback", json={}, headers={"X-API-Key": "nope"}).status_code == 401


def test_feedback_off_is_a_404(fb_bundle: Path) -> None:
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    with TestClient(create_app(ServeSettings(bundle=fb_bundle, api_keys=(KEY,))),
                    headers={"X-API-Key": KEY}) as client:
        answer = client.post("/v1/feedback", json={"verdict": "agree"})
    assert answer.status_code == 404 and "--feedback DIR" in answer.json()["error"]["message"]


def test_store_rejects_a_bad_hash(tmp_path: Path) -> None:
    from medsight.feedback import FeedbackError

    with pytest.raises(FeedbackError, match="not a SHA-256"):
        FeedbackStore(tmp_path).has_input("../../etc/passwd")
