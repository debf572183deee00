"""A corrected mask sent to POST /v1/feedback: stored next to its input, exported as a training pair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def test_a_corrected_mask_round_trips_into_a_training_pair(seg_bundle: Path, disc_images: Path,
                                                           tmp_path: Path, api_key: str) -> None:
    from fastapi.testclient import TestClient

    from medsight.data.seg_layouts import open_seg_dataset
    from medsight.feedback import FeedbackStore
    from medsight.feedback.store import export_dataset
    from medsight.serve.app import ServeSettings, create_app

    image = (disc_images / "images" / "c1.png").read_bytes()
    corrected = np.zeros((40, 48), np.uint8)
    corrected[10:30, 12:30] = 255
    mask_file = tmp_path / "fixed.png"
    Image.fromarray(corrected).save(mask_file)
    app = create_app(ServeSettings(bundle=seg_bundle, api_keys=(api_key,), feedback=tmp_path / "feedback"))
    with TestClient(app, headers={"X-API-Key": api_key}) as client:
        answer = client.post("/v1/feedback", data={"verdict": "mask"},
                             files={"file": ("patient_scan.png", image, "image/png"),
                                    "mask": ("fixed.png", mask_file.read_bytes(), "image/png")})
        assert answer.status_code == 201, answer.text
        missing = client.post("/v1/feedback", data={"verdict": "mask"},
                              files={"file": ("scan.png", image, "image/png")})
        assert missing.status_code == 400 and "mask" in missing.json()["error"]["fix"]

    store = FeedbackStore(tmp_path / "feedback")
    (row,) = store.rows()  # the refused one left nothing behind
    assert row["kind"] == "mask" and row["mask_path"].endswith("_mask.png") and "patient" not in row["input_path"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "feedback" / row["mask_path"])), corrected)

    manifest = export_dataset(tmp_path / "feedback", tmp_path / "export")
    assert len(manifest["cases"]) == 1
    exported = open_seg_dataset(tmp_path / "export")  # the trainers' reader takes it as image/mask pairs
    (item,) = exported.items
    sample, labels, _ = exported.read(item)
    np.testing.assert_array_equal(sample.array.squeeze(), np.asarray(Image.open(disc_images / "images" / "c1.png")))
    np.testing.assert_array_equal(labels.squeeze(), corrected // 255)
