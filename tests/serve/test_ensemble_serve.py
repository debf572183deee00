"""Serving a classification fold ensemble: /v1/predict answers with the ensemble's probabilities,
/v1/explain with the average of its members' maps, and the card says what the model is."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from class_ensemble import TEMPERATURE, THRESHOLD, class_ensemble, member_probabilities, phantom_files, prepared
from PIL import Image

from medsight.bundle import load_bundle

#: float32 networks against the same sums in float64 (a few float32 steps)
ATOL = 1e-5


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return class_ensemble(tmp_path_factory)


@pytest.fixture
def ensemble_client(built, api_key: str):
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(bundle=built.bundle, api_keys=(api_key,), max_body_bytes=2**20))
    with TestClient(app, headers={"X-API-Key": api_key}) as test_client:
        yield test_client


def test_predict_answers_with_the_ensembles_probabilities(ensemble_client, built) -> None:
    files = phantom_files(built.data)
    by_hand = member_probabilities(built.members, prepared(files, load_bundle(built.bundle).preprocess))
    for path, expected in zip(files, by_hand, strict=True):
        response = ensemble_client.post("/v1/predict", files={"file": (path.name, path.read_bytes(), "image/png")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert [body["probabilities"]["normal"], body["probabilities"]["nodule"]] == pytest.approx(expected, abs=ATOL)
        assert body["label"] == ("nodule" if expected[1] >= THRESHOLD else "normal") == path.parent.name
        assert body["threshold"] == THRESHOLD and body["model"]["name"] == "fold_ensemble"


def test_the_card_and_the_heatmap_of_an_ensemble(ensemble_client, built) -> None:
    card = ensemble_client.get("/v1/model").json()
    assert card["model"]["name"] == "fold_ensemble" and card["model"]["kwargs"]["members"] == 2
    assert card["temperature"] == TEMPERATURE and card["explain_available"] is True
    path: Path = phantom_files(built.data)[4]
    response = ensemble_client.post("/v1/explain", files={"file": (path.name, path.read_bytes(), "image/png")})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    from medsight.explain.run import explain_sample
    from medsight.io import read_image

    bundle = load_bundle(built.bundle)
    heat = explain_sample(bundle, bundle.build_model(), read_image(path), method="gradcam")["heat"]
    alpha = np.asarray(Image.open(io.BytesIO(response.content)))[..., 3]
    np.testing.assert_allclose(alpha, np.clip(heat, 0, 1) * 255, atol=1.0)  # the members' average map
