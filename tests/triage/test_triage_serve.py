"""The service adds the triage decision to a classification when the bundle has a policy, and only then."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medsight.errors import BundleError
from medsight.triage.costs import ACTIONS, CostTable

KEY = "triage-test-key-0123456789"


def _png(seed: int = 0) -> bytes:
    pixels = (np.random.default_rng(seed).random((40, 40)) * 60).astype(np.uint8)
    pixels[12:22, 14:26] = 220
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bundles(trained_run: Path, small_phantoms: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two copies of the trained bundle: one with a triage policy, one without."""
    from medsight.triage.agent import AgentConfig
    from medsight.triage.train import train_policy

    root = tmp_path_factory.mktemp("served")
    plain = shutil.copytree(trained_run / "model", root / "plain")
    triaged = shutil.copytree(trained_run / "model", root / "triaged")
    train_policy(bundle=triaged, data=small_phantoms, costs=CostTable(), agent=AgentConfig(epochs=5), progress=False)
    return {"plain": plain, "triaged": triaged}


def _predict(bundle: Path, png: bytes) -> dict:
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(bundle=bundle, api_keys=(KEY,), max_body_bytes=2**20))
    with TestClient(app, headers={"X-API-Key": KEY}) as client:
        response = client.post("/v1/predict", files={"file": ("case.png", png, "image/png")})
    assert response.status_code == 200, response.text
    return response.json()


def test_prediction_carries_the_policy_decision(bundles: dict[str, Path], tmp_path: Path) -> None:
    from medsight.inference.predictor import Predictor
    from medsight.io import read_image
    from medsight.transforms import preprocess
    from medsight.triage.features import case_outputs
    from medsight.triage.policy import load_policy

    png = _png()
    body = _predict(bundles["triaged"], png)
    triage = body["triage"]
    record = json.loads((bundles["triaged"] / "triage" / "triage.json").read_text())
    assert triage["policy_version"] == record["policy_version"]
    assert triage["action"] in ACTIONS and set(triage["expected_costs"]) == set(ACTIONS)
    assert record["model_hash"] == body["model"]["hash"]  # the policy names the model the service reports
    (tmp_path / "case.png").write_bytes(png)
    predictor = Predictor(bundles["triaged"])
    batch = preprocess(read_image(tmp_path / "case.png"), predictor.bundle.preprocess)[None]
    offline = load_policy(bundles["triaged"]).decide(case_outputs(predictor, batch, tta_passes=2))[0]
    assert triage == offline


def test_prediction_without_a_policy_has_no_triage(bundles: dict[str, Path]) -> None:
    body = _predict(bundles["plain"], _png(1))
    assert "triage" not in body and body["label"] in ("normal", "nodule")


def test_a_stale_policy_stops_the_service_from_loading(bundles: dict[str, Path], tmp_path: Path) -> None:
    from medsight.serve.model import ModelService

    stale = shutil.copytree(bundles["plain"], tmp_path / "model")
    shutil.copytree(bundles["triaged"] / "triage", stale / "triage")
    weights = stale / "weights.safetensors"
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(weights))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 1  # retrained weights, same bundle.json
    save_file(tensors, str(weights))
    with pytest.raises(BundleError, match="the triage policy was trained for model sha256:.*retrain the policy"):
        ModelService(stale)
