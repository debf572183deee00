"""The REST API: predictions for every input type, the model card, metrics, errors that keep serving."""

from __future__ import annotations

import base64
import hashlib
import io
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medsight.inference.predictor import Predictor

KEY = "test-key-0123456789abcdef"


def _nifti(tmp_path: Path, shape: tuple[int, ...], name: str) -> bytes:
    path = tmp_path / name
    nib.save(nib.Nifti1Image(np.random.default_rng(3).random(shape).astype(np.float32), np.eye(4)), path)
    return path.read_bytes()


def test_served_prediction_equals_the_offline_one(client, tiny_bundle: Path, png: bytes, tmp_path: Path) -> None:
    response = client.post("/v1/predict", files={"file": ("case.png", png, "image/png")})
    assert response.status_code == 200
    body = response.json()
    (tmp_path / "case.png").write_bytes(png)
    offline = Predictor(tiny_bundle).predict_file(tmp_path / "case.png")
    assert body["label"] == offline["label"]
    assert body["probabilities"] == pytest.approx(offline["probabilities"], abs=1e-6)
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["threshold"] == 0.42
    assert body["input"] == {"type": "png", "bytes": len(png), "shape": [1, 48, 40], "spacing": [1.0, 1.0]}
    digest = hashlib.sha256((tiny_bundle / "bundle.json").read_bytes() + (tiny_bundle / "weights.safetensors")
                            .read_bytes()).hexdigest()
    assert body["model"]["name"] == "compact_cnn" and body["model"]["backend"] == "torch"
    assert body["model"]["hash"] == f"sha256:{digest[:16]}"
    assert body["model"]["created"]
    assert set(body["timing_ms"]) == {"decode", "inference", "total"}
    assert body["timing_ms"]["total"] >= body["timing_ms"]["inference"] > 0


@pytest.mark.parametrize("kind", ["dicom", "jpeg", "nifti_gz", "nifti"])
def test_every_input_type_is_sniffed_from_a_raw_body(client, kind: str, make_dicom, make_png,
                                                     tmp_path: Path) -> None:
    data = {
        "dicom": lambda: make_dicom(),
        "jpeg": lambda: make_png(fmt="JPEG"),
        "nifti_gz": lambda: _nifti(tmp_path, (40, 36), "x.nii.gz"),
        "nifti": lambda: _nifti(tmp_path, (40, 36), "x.nii"),
    }[kind]()
    response = client.post("/v1/predict", content=data, headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["input"]["type"] == kind.removesuffix("_gz")
    assert body["label"] in ("normal", "nodule")
    if kind == "dicom":
        assert body["input"]["spacing"] == [0.7, 0.7]


def test_preview_is_the_model_input_as_png(client, png: bytes) -> None:
    body = client.post("/v1/predict?preview=1", files={"file": ("a.png", png)}).json()
    preview = Image.open(io.BytesIO(base64.b64decode(body["preview_png"])))
    assert preview.size == (32, 32) and preview.mode == "L"
    pixels = np.asarray(preview)
    assert pixels.min() == 0 and pixels.max() == 255  # min-max scaled
    assert "preview_png" not in client.post("/v1/predict", files={"file": ("a.png", png)}).json()


def _truncated_dicom(make_dicom, name: str = "Doe^Jane") -> bytes:
    return make_dicom(name)[:-1000]  # cut inside the pixel data


@pytest.mark.parametrize(
    ("name", "payload", "status", "error", "problem"),
    [
        ("notes.txt", lambda _, __: b"this is a clinical letter, not an image" * 4, 415, "UnsupportedFileError",
         "not a DICOM, NIfTI, NRRD, PNG, JPEG"),
        ("scan.dcm", lambda mk, _: _truncated_dicom(mk), 400, "UnreadableFileError", "the file is truncated"),
        ("empty.png", lambda _, __: b"", 400, "UnreadableFileError", "empty body"),
        ("volume.nii.gz", lambda _, tmp: _nifti(tmp, (12, 12, 12), "v.nii.gz"), 422, "InvalidImageError",
         "this model takes 2D images, and this is a 3D volume"),
    ],
)
def test_bad_input_gets_a_clear_error_and_the_service_keeps_serving(
    client, png: bytes, make_dicom, tmp_path: Path, name, payload, status, error, problem
) -> None:
    response = client.post("/v1/predict", files={"file": (name, payload(make_dicom, tmp_path))})
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["type"] == error
    assert body["where"] == name  # the client's file name, not the server's temp file
    assert problem in body["problem"] and body["fix"]
    assert body["message"].startswith(f"{name}: ")
    assert "medsight-upload-" not in response.text
    assert client.post("/v1/predict", files={"file": ("ok.png", png)}).status_code == 200


def test_multipart_without_the_file_field_is_422(client, png: bytes) -> None:
    response = client.post("/v1/predict", files={"image": ("a.png", png)})
    assert response.status_code == 422
    error = response.json()["error"]
    assert "no file field 'file'" in error["problem"] and "image" in error["problem"]
    assert "curl -F file=@" in error["fix"]


def test_body_over_the_limit_is_413_from_content_length_and_while_streaming(client) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(2**20)  # the client's limit is 1 MB
    declared = client.post("/v1/predict", content=big)
    assert declared.status_code == 413
    assert "larger than the service's limit of 1 MB" in declared.json()["error"]["problem"]
    assert "--max-body-mb" in declared.json()["error"]["fix"]

    def chunks():  # no Content-Length: the server counts while reading
        for _ in range(20):
            yield bytes(100_000)

    streamed = client.post("/v1/predict", content=chunks())
    assert streamed.status_code == 413
    assert streamed.json()["error"]["type"] == "PayloadTooLargeError"


def test_patient_fields_never_reach_the_logs(client, make_dicom, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    good = client.post("/v1/predict", files={"file": ("scan.dcm", make_dicom("Doe^Jane"))})
    bad = client.post("/v1/predict", content=_truncated_dicom(make_dicom, "Doe^Jane"))
    assert good.status_code == 200 and bad.status_code == 400
    assert "classification ok: dicom upload" in caplog.text  # something was logged ...
    for secret in ("Doe", "Jane", "MRN-7731", "19610203"):
        assert secret not in caplog.text  # ... but no patient field


def test_model_card(client) -> None:
    card = client.get("/v1/model").json()
    assert card["task"] == "classification"
    assert card["label_names"] == ["normal", "nodule"]
    assert card["preprocess"]["size"] == [32, 32] and card["preprocess"]["normalize"] == "minmax"
    assert card["threshold"] == 0.42
    assert card["metrics"] == {"val_auc": 0.91, "val_accuracy": 0.85}
    assert card["provenance"]["data"] == "/data/chest" and card["provenance"]["n_train"] == 10
    assert card["provenance"]["split"] == {"train": 2, "val": 1}  # counts, not case names
    assert "skipped_files" not in card["provenance"] and "Doe_Jane" not in str(card)
    assert card["version"]["hash"].startswith("sha256:")
    assert card["explain_available"] is True


def test_explain_returns_a_grad_cam_heatmap_on_the_image_grid(client, png: bytes) -> None:
    import io

    from PIL import Image

    response = client.post("/v1/explain", files={"file": ("a.png", png)})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    heat = Image.open(io.BytesIO(response.content))
    assert heat.mode == "RGBA" and heat.size == (40, 48)  # the uploaded image's own width x height
    alpha = np.asarray(heat)[..., 3]
    assert alpha.max() == 255  # the map's peak is opaque, its zeros transparent


def test_explain_is_501_when_no_explainer_is_installed(client, png: bytes, monkeypatch) -> None:
    monkeypatch.setattr(client.app.state.service, "explainer", None)
    response = client.post("/v1/explain", files={"file": ("a.png", png)})
    assert response.status_code == 501
    error = response.json()["error"]
    assert "not available" in error["problem"] and "/v1/predict" in error["fix"]


def test_explain_plugs_in_medsight_explain(client, png: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def explain_png(runner, sample, *, target=None) -> bytes:
        calls.append((type(runner).__name__, sample.spatial_shape, target))
        return b"\x89PNG fake heatmap"

    monkeypatch.setattr(client.app.state.service, "explainer", explain_png)
    response = client.post("/v1/explain?target=nodule", files={"file": ("a.png", png)})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == b"\x89PNG fake heatmap"
    assert calls == [("Predictor", (48, 40), "nodule")]


def test_model_loads_once_per_app_not_per_request(tiny_bundle: Path, png: bytes,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from fastapi.testclient import TestClient

    import medsight.serve.model as model_module
    from medsight.serve.app import ServeSettings, create_app

    loads = []

    class CountingPredictor(Predictor):
        def __init__(self, *args, **kwargs) -> None:
            loads.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(model_module, "Predictor", CountingPredictor)
    app = create_app(ServeSettings(bundle=tiny_bundle, no_auth=True))
    assert loads == []  # building the app loads nothing; the lifespan does
    with TestClient(app) as client:
        for _ in range(4):
            assert client.post("/v1/predict", files={"file": ("a.png", png)}).status_code == 200
        assert "medsight_model_loads_total 1" in client.get("/metrics").text
    assert len(loads) == 1


def test_metrics_count_requests_by_endpoint_and_status(client, png: bytes) -> None:
    client.post("/v1/predict", files={"file": ("a.png", png)})
    client.post("/v1/predict", files={"file": ("a.txt", b"plain text, no image here")})
    client.get("/healthz")
    text = client.get("/metrics").text
    assert 'medsight_requests_total{endpoint="/v1/predict",method="POST",status="200"} 1' in text
    assert 'medsight_requests_total{endpoint="/v1/predict",method="POST",status="415"} 1' in text
    assert 'medsight_requests_total{endpoint="/healthz",method="GET",status="200"} 1' in text
    assert 'medsight_request_duration_seconds_bucket{endpoint="/v1/predict",le="+Inf"} 2' in text
    assert 'medsight_request_duration_seconds_count{endpoint="/v1/predict"} 2' in text
    assert 'medsight_inference_seconds_count{task="classification"} 1' in text
    assert "# TYPE medsight_request_duration_seconds histogram" in text
    load = next(line for line in text.splitlines() if line.startswith("medsight_model_load_seconds "))
    assert float(load.split()[1]) > 0


def test_health_ready_page_and_openapi(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}  # nothing about the model: that is on /v1/model
    page = client.get("/")
    assert page.status_code == 200 and 'id="file"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # works offline
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/predict", "/v1/explain", "/v1/model", "/healthz", "/readyz", "/metrics"} <= set(paths)
    assert "multipart/form-data" in paths["/v1/predict"]["post"]["requestBody"]["content"]


def test_an_unexpected_failure_is_a_500_without_patient_data_in_the_log(
    client, png: bytes, make_dicom, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    service = client.app.state.service
    real = service.classify

    def broken(sample):
        raise RuntimeError("PatientName=Doe^Jane in a bug's message")

    monkeypatch.setattr(service, "classify", broken)
    response = client.post("/v1/predict", files={"file": ("scan.dcm", make_dicom())})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "InternalError" and "Doe" not in response.text
    assert "RuntimeError" in caplog.text and "Doe" not in caplog.text
    monkeypatch.setattr(service, "classify", real)
    assert client.post("/v1/predict", files={"file": ("a.png", png)}).status_code == 200
    assert 'endpoint="/v1/predict",method="POST",status="500"} 1' in client.get("/metrics").text
