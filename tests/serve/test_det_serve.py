"""The service with a detection bundle: /v1/predict answers the Detector's boxes in the upload's own pixels, with
scores, findings at the bundle's threshold and mm for volumes; bad uploads get the same clear errors as for the
other tasks; the key is required; the model card, /v1/explain and feedback know the task."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from det_serve_bundles import CLASSES, FINDINGS, make_detection_bundle, make_volume_bundle, square_png
from image_bombs import png_of_zeros
from PIL import Image

from medsight.inference.detector import Detector
from medsight.inference.domain import NO_RECORD
from medsight.io import read_image

PNG = square_png()


@pytest.fixture(scope="module")
def det_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_detection_bundle(tmp_path_factory.mktemp("det"), PNG)


@pytest.fixture(scope="module")
def det_feedback(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("det-feedback")


@pytest.fixture(scope="module")
def det_client(det_bundle: Path, det_feedback: Path, api_key: str):
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(bundle=det_bundle, api_keys=(api_key,), max_body_bytes=2**20,
                                   feedback=det_feedback))
    with TestClient(app, headers={"X-API-Key": api_key}) as client:
        yield client


def _offline(data: bytes, name: str, folder: Path, bundle: Path):
    path = folder / name
    path.write_bytes(data)
    sample = read_image(path)
    return sample, Detector.from_bundle(bundle).predict([sample])[0]


def test_the_answer_is_the_detectors_boxes_in_the_images_own_pixels(det_client, det_bundle: Path,
                                                                    tmp_path: Path) -> None:
    answer = det_client.post("/v1/predict", files={"file": ("case.png", PNG, "image/png")})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    _, boxes = _offline(PNG, "case.png", tmp_path, det_bundle)
    detector = Detector.from_bundle(det_bundle)
    assert body["task"] == "detection" and body["label_names"] == CLASSES
    assert body["threshold"] == detector.score_threshold and body["threshold_note"] == detector.threshold_note
    assert body["image_size"] == {"width": 72, "height": 48} and body["box_slice"] is None
    assert body["n_boxes"] == len(boxes) == len(body["boxes"]) > FINDINGS
    got = np.array([[b["x1"], b["y1"], b["x2"], b["y2"]] for b in body["boxes"]])
    np.testing.assert_allclose(got, boxes.xy(), rtol=0, atol=1e-6)  # x the column, y the row
    np.testing.assert_allclose([b["score"] for b in body["boxes"]], boxes.scores, rtol=0, atol=1e-6)
    assert [b["label"] for b in body["boxes"]] == [CLASSES[i] for i in boxes.labels]
    assert [b["finding"] for b in body["boxes"]] == (boxes.scores >= detector.score_threshold).tolist()
    assert body["n_findings"] == FINDINGS == sum(b["finding"] for b in body["boxes"])
    assert (got[:, 2] <= 72).all() and (got[:, 3] <= 48).all() and (got[:, :2] >= 0).all()
    assert (body["out_of_domain"], body["domain_reasons"], body["domain_note"]) == (None, [], NO_RECORD)
    assert set(body["timing_ms"]) == {"decode", "inference", "total"}
    assert body["input"]["shape"] == [1, 48, 72] and body["model"]["name"] == "retinanet"
    assert len(body["input_sha256"]) == 64 and "preview_png" not in body


def test_a_raw_body_and_a_preview_of_the_image_the_boxes_lie_on(det_client) -> None:
    body = det_client.post("/v1/predict?preview=1", content=PNG,
                           headers={"Content-Type": "application/octet-stream"}).json()
    preview = Image.open(io.BytesIO(base64.b64decode(body["preview_png"])))
    assert preview.size == (72, 48)  # the image's own pixels, not the model's 64x64 input
    assert np.asarray(preview)[20, 38] == 255 and np.asarray(preview)[40, 5] < 128  # the square is where it was


def test_a_volume_gets_z_voxel_corners_and_millimetres(tmp_path: Path, api_key: str) -> None:
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    folder = make_volume_bundle(tmp_path)
    affine = np.array([[0.0, 0.0, 0.8, -40.0], [0.0, 0.7, 0.0, 10.0], [2.5, 0.0, 0.0, 5.0], [0, 0, 0, 1]])
    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(20, 40, 30)).astype(np.float32), affine), path)
    sample = read_image(path)
    boxes = Detector.from_bundle(folder).predict([sample])[0]
    with TestClient(create_app(ServeSettings(bundle=folder, api_keys=(api_key,))),
                    headers={"X-API-Key": api_key}) as client:
        body = client.post("/v1/predict", files={"file": ("ct.nii.gz", path.read_bytes())}).json()
    assert body["image_size"] == {"width": 30, "height": 40, "depth": 20} and body["box_slice"] == 10
    assert len(body["boxes"]) == len(boxes) > 0
    voxels = np.array([b["voxel_corners"] for b in body["boxes"]])
    np.testing.assert_allclose(voxels, boxes.corners, rtol=0, atol=1e-6)
    # as boxes.csv: z is voxel axis 0, y axis 1, x axis 2
    zyx = np.array([[b[k] for k in ("z1", "y1", "x1", "z2", "y2", "x2")] for b in body["boxes"]])
    np.testing.assert_allclose(zyx, boxes.corners, rtol=0, atol=1e-6)
    mm = np.array([[b[f"{k}_mm"] for k in ("x1", "y1", "z1", "x2", "y2", "z2")] for b in body["boxes"]])
    np.testing.assert_allclose(mm, boxes.world(sample.affine), rtol=0, atol=1e-6)


def _truncated_png() -> bytes:
    return PNG[: len(PNG) // 2]


@pytest.mark.parametrize(("name", "payload", "status", "error", "problem"), [
    ("cut.png", _truncated_png, 400, "UnreadableFileError", "cut.png"),
    ("scan.dcm", lambda: _dicom()[:-1000], 400, "UnreadableFileError", "the file is truncated"),
    ("huge.png", lambda: png_of_zeros(20000, 20000), 413, "ImageTooLargeError", "20000x20000"),
    ("notes.txt", lambda: b"a clinical letter, not an image " * 4, 415, "UnsupportedFileError", "not a DICOM"),
    ("ct.nii.gz", lambda: _nifti((12, 12, 12)), 422, "InvalidImageError", "this model takes 2D images"),
])
def test_a_hostile_upload_gets_the_clear_error_and_the_service_goes_on(det_client, name, payload, status, error,
                                                                       problem) -> None:
    answer = det_client.post("/v1/predict", files={"file": (name, payload())})
    assert answer.status_code == status, answer.text
    body = answer.json()["error"]
    assert body["type"] == error and body["where"] == name and problem in body["message"] and body["fix"]
    assert "medsight-upload-" not in answer.text and "boxes" not in answer.json()
    assert det_client.post("/v1/predict", files={"file": ("ok.png", PNG)}).json()["n_findings"] == FINDINGS


def _dicom() -> bytes:
    from phi_dicom import phi_dicom_bytes

    return phi_dicom_bytes((np.random.default_rng(0).random((48, 40)) * 200).astype(np.uint8), "Doe^Jane")


def _nifti(shape: tuple[int, ...]) -> bytes:
    image = nib.Nifti1Image(np.random.default_rng(3).random(shape).astype(np.float32), np.eye(4))
    return image.to_bytes()


def test_the_key_is_required_as_for_every_other_endpoint(det_client, api_key: str) -> None:
    from fastapi.testclient import TestClient

    other = TestClient(det_client.app)  # the same started app, no key unless one is given
    for headers in ({}, {"X-API-Key": ""}, {"X-API-Key": "not-the-key-0123456789"}, {"Authorization": "Bearer no"}):
        answer = other.post("/v1/predict", files={"file": ("case.png", PNG)}, headers=headers)
        assert answer.status_code == 401 and answer.json()["error"]["type"] == "UnauthorizedError"
        assert "boxes" not in answer.text
    assert other.get("/v1/model").status_code == 401
    for headers in ({"X-API-Key": api_key}, {"Authorization": f"Bearer {api_key}"}):
        answer = other.post("/v1/predict", files={"file": ("case.png", PNG)}, headers=headers)
        assert answer.status_code == 200 and answer.json()["n_findings"] == FINDINGS


def test_the_card_explain_and_feedback_know_the_task(det_client, det_bundle: Path, det_feedback: Path) -> None:
    from medsight.feedback import FeedbackStore

    card = det_client.get("/v1/model").json()
    detector = Detector.from_bundle(det_bundle)
    assert card["task"] == "detection" and card["label_names"] == CLASSES
    assert card["threshold"] == detector.score_threshold
    assert card["detection"]["score_threshold"] == detector.score_threshold and card["detection"]["max_detections"]
    assert card["domain"] == {"action": "off", "note": NO_RECORD}
    explained = det_client.post("/v1/explain", files={"file": ("case.png", PNG)})
    assert explained.status_code == 422 and "use /v1/predict" in explained.json()["error"]["fix"]
    body = det_client.post("/v1/predict", files={"file": ("case.png", PNG)}).json()
    stored = det_client.post("/v1/feedback", json={"input_sha256": body["input_sha256"], "verdict": "agree"})
    assert stored.status_code == 201, stored.text
    assert stored.json()["kind"] == "agree" and stored.json()["input_sha256"] == body["input_sha256"]
    row = FeedbackStore(det_feedback).rows()[-1]
    assert row["kind"] == "agree" and row["prediction"]["boxes"] == body["boxes"]
    assert row["prediction"]["threshold"] == detector.score_threshold


def test_medsight_serve_serves_a_detection_bundle(det_bundle: Path, api_key: str, tmp_path: Path) -> None:
    """The command itself (a subprocess): the model loads as a detector and answers boxes, the key required."""
    import httpx2
    from live_server import live_service

    keys = tmp_path / "keys.txt"
    keys.write_text(f"{api_key}\n")
    with (live_service(det_bundle, keys) as service,
          httpx2.Client(base_url=service.base, headers={"X-API-Key": api_key}, timeout=30) as client):
        body = client.post("/v1/predict", files={"file": ("case.png", PNG)}).json()
        assert body["task"] == "detection" and body["n_findings"] == FINDINGS
        assert httpx2.post(f"{service.base}/v1/predict", files={"file": ("case.png", PNG)}).status_code == 401
    assert "model loaded: detection retinanet" in service.output


@pytest.mark.parametrize("action", ["flag", "refuse"])
def test_a_bundle_with_a_domain_record_checks_each_upload(tmp_path: Path, api_key: str, action: str) -> None:
    from fastapi.testclient import TestClient

    from medsight.inference.domain import input_domain_record
    from medsight.serve.app import ServeSettings, create_app

    fingerprint = {"channels": {"1": 5}, "sizes": {"min": [48, 72], "max": [48, 72]},
                   "intensity": {"unit": "stored value", "p00_5": 20.0, "p99_5": 200.0, "min": 0.0, "max": 255.0}}
    record = input_domain_record(fingerprint, action=action, no_features="a detector: no feature reference")
    bundle = make_detection_bundle(tmp_path, PNG, domain=record)
    blank = io.BytesIO()
    Image.fromarray(np.full((48, 72), 90, np.uint8)).save(blank, format="PNG")
    app = create_app(ServeSettings(bundle=bundle, api_keys=(api_key,), max_body_bytes=2**20))
    with TestClient(app, headers={"X-API-Key": api_key}) as client:
        fine = client.post("/v1/predict", files={"file": ("case.png", PNG, "image/png")})
        odd = client.post("/v1/predict", files={"file": ("blank.png", blank.getvalue(), "image/png")})
        card = client.get("/v1/model").json()
    assert fine.status_code == 200 and fine.json()["out_of_domain"] is False and fine.json()["n_boxes"] > FINDINGS
    assert card["domain"]["action"] == action and card["domain"]["channels"] == [1]
    if action == "flag":
        assert odd.status_code == 200 and odd.json()["out_of_domain"] is True
        assert odd.json()["domain_reasons"] == ["the image is blank: every pixel is 90"]
    else:
        assert odd.status_code == 422 and "boxes" not in odd.json()
        assert "the image is blank" in odd.json()["error"]["message"]
